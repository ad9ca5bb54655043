//! Which check a bearer token goes to, decided by its shape alone. Pure.

use crate::token;

/// The longest JWT memgate parses; real access tokens are a few KiB.
pub const MAX_JWT_LEN: usize = 16 * 1024;

/// What a presented bearer token looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BearerShape {
    /// memgate's own `mcp_…` token: the token store decides.
    Memgate,
    /// Three base64url segments (JWS compact serialization): verified locally.
    Jwt,
    /// Another RFC 6750 token (`b64token`): only introspection can decide.
    Opaque,
    /// Not a bearer token at all.
    Malformed,
}

fn is_base64url(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 6750 §2.1 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(text: &str) -> bool {
    let body = text.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

pub fn bearer_shape(bearer: &str) -> BearerShape {
    if token::is_well_formed(bearer) {
        return BearerShape::Memgate;
    }
    if bearer.starts_with(token::TOKEN_PREFIX) && !bearer.contains('.') {
        // A mangled memgate token: never sent to an authorization server.
        return BearerShape::Malformed;
    }
    let mut segments = bearer.split('.');
    if bearer.len() <= MAX_JWT_LEN
        && segments
            .by_ref()
            .take(3)
            .filter(|s| is_base64url(s))
            .count()
            == 3
        && segments.next().is_none()
    {
        return BearerShape::Jwt;
    }
    if bearer.len() <= MAX_JWT_LEN && is_b64token(bearer) {
        return BearerShape::Opaque;
    }
    BearerShape::Malformed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_decides_the_path() {
        let ours = format!("mcp_{}", "A".repeat(43));
        assert_eq!(bearer_shape(&ours), BearerShape::Memgate);
        assert_eq!(
            bearer_shape("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"),
            BearerShape::Jwt
        );
        // Two segments, an empty signature, padding: not a JWS.
        for opaque in [
            "a.b",
            "eyJh.eyJz.",
            "SlAV32hkKG",
            "2YotnFZFEjr1zCsicMWpAA==",
            "a.b.c.d",
        ] {
            assert_eq!(bearer_shape(opaque), BearerShape::Opaque, "{opaque}");
        }
        for bad in [
            "",
            "mcp_short",
            "a b",
            "a\"b",
            "é",
            "===",
            &"a".repeat(MAX_JWT_LEN + 1),
        ] {
            assert_eq!(bearer_shape(bad), BearerShape::Malformed, "{bad:?}");
        }
        let huge_jwt = format!("{}.b.c", "a".repeat(MAX_JWT_LEN));
        assert_eq!(bearer_shape(&huge_jwt), BearerShape::Malformed);
    }
}
