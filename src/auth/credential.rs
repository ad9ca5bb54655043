//! Pulling the credential and the claimed user id out of request headers.
//! Pure: the proxy hands in the header values, nothing here does I/O.

use super::Denial;
use crate::token;

/// The raw header values a request carried; each list holds every occurrence.
#[derive(Default, Debug)]
pub struct PresentedHeaders<'a> {
    pub x_mcp_token: Vec<&'a [u8]>,
    pub authorization: Vec<&'a [u8]>,
    pub x_mcp_user_id: Vec<&'a [u8]>,
}

/// A well-formed token and the user id the client claims, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Credential<'a> {
    pub token: &'a str,
    pub claimed_user_id: Option<&'a str>,
}

/// Picks the one credential a request presents. Ambiguity is refused: several
/// token headers, or `X-MCP-Token` and a Bearer token that differ.
pub fn extract<'a>(h: &PresentedHeaders<'a>) -> Result<Credential<'a>, Denial> {
    let header_token = single(&h.x_mcp_token)?;
    let bearer = match single(&h.authorization)? {
        None => None,
        Some(value) => Some(bearer_token(value).ok_or(Denial::Malformed)?),
    };
    let token = match (header_token, bearer) {
        (None, None) => return Err(Denial::Missing),
        (Some(a), Some(b)) if a != b => return Err(Denial::Malformed),
        (Some(t), _) | (None, Some(t)) => t,
    };
    let token = std::str::from_utf8(token).map_err(|_| Denial::Malformed)?;
    if !token::is_well_formed(token) {
        return Err(Denial::Malformed);
    }
    Ok(Credential {
        token,
        claimed_user_id: claimed_user_id(h)?,
    })
}

/// A bearer token that is not memgate's own (an OAuth access token), for a
/// request [`extract`] refused as malformed. Such a token is accepted only as
/// the one `Authorization: Bearer` value with no `X-MCP-Token` beside it:
/// memgate's own header carries memgate's own tokens only.
pub fn oauth_bearer<'a>(h: &PresentedHeaders<'a>) -> Result<Credential<'a>, Denial> {
    if !h.x_mcp_token.is_empty() {
        return Err(Denial::Malformed);
    }
    let value = single(&h.authorization)?.ok_or(Denial::Missing)?;
    let token = bearer_token(value).ok_or(Denial::Malformed)?;
    let token = std::str::from_utf8(token).map_err(|_| Denial::Malformed)?;
    if token.starts_with(token::TOKEN_PREFIX) {
        return Err(Denial::Malformed);
    }
    Ok(Credential {
        token,
        claimed_user_id: claimed_user_id(h)?,
    })
}

/// The one `X-MCP-UserID` value, trimmed; one that is not text names nobody.
fn claimed_user_id<'a>(h: &PresentedHeaders<'a>) -> Result<Option<&'a str>, Denial> {
    single(&h.x_mcp_user_id)?
        .map(|raw| {
            std::str::from_utf8(raw)
                .map(str::trim)
                .map_err(|_| Denial::UserMismatch)
        })
        .transpose()
}

fn single<'a>(values: &[&'a [u8]]) -> Result<Option<&'a [u8]>, Denial> {
    match values {
        [] => Ok(None),
        [one] => Ok(Some(trim(one))),
        _ => Err(Denial::Malformed),
    }
}

/// `Bearer <token>`, scheme case-insensitive (RFC 7235), one or more spaces.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at(value.iter().position(|b| *b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = trim(rest);
    (!token.is_empty() && !token.contains(&b' ')).then_some(token)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &v[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> String {
        format!("mcp_{}", "a".repeat(43))
    }

    fn headers<'a>(t: &[&'a str], a: &[&'a str], u: &[&'a str]) -> PresentedHeaders<'a> {
        PresentedHeaders {
            x_mcp_token: t.iter().map(|s| s.as_bytes()).collect(),
            authorization: a.iter().map(|s| s.as_bytes()).collect(),
            x_mcp_user_id: u.iter().map(|s| s.as_bytes()).collect(),
        }
    }

    #[test]
    fn takes_token_from_either_header() {
        let t = tok();
        let bearer = format!("Bearer {t}");
        let lower = format!("bearer   {t} ");
        for h in [
            headers(&[&t], &[], &[]),
            headers(&[], &[&bearer], &[]),
            headers(&[], &[&lower], &[]),
            headers(&[&t], &[&bearer], &[]),
        ] {
            assert_eq!(extract(&h).unwrap().token, t);
        }
    }

    #[test]
    fn refuses_missing_ambiguous_and_malformed() {
        let t = tok();
        let other = format!("Bearer mcp_{}", "b".repeat(43));
        assert_eq!(extract(&headers(&[], &[], &[])), Err(Denial::Missing));
        for h in [
            headers(&[&t, &t], &[], &[]),
            headers(&[&t], &[&other], &[]),
            headers(&["mcp_short"], &[], &[]),
            headers(&[], &["Basic dXNlcjpwYXNz"], &[]),
            headers(&[], &["Bearer"], &[]),
            headers(&[], &[&format!("Bearer {t} extra")], &[]),
            headers(&[&t], &[], &["alice", "bob"]),
        ] {
            assert_eq!(extract(&h), Err(Denial::Malformed), "{h:?}");
        }
    }

    #[test]
    fn oauth_bearers_come_only_from_authorization() {
        let jwt = "eyJh.eyJz.c2ln";
        let bearer = format!("Bearer {jwt}");
        let c = oauth_bearer(&headers(&[], &[&bearer], &[" alice "])).unwrap();
        assert_eq!((c.token, c.claimed_user_id), (jwt, Some("alice")));
        assert_eq!(
            extract(&headers(&[], &[&bearer], &[])),
            Err(Denial::Malformed)
        );
        for h in [
            headers(&[jwt], &[], &[]),
            headers(&[jwt], &[&bearer], &[]),
            headers(&[], &[&bearer, &bearer], &[]),
            headers(&[], &["Basic dXNlcjpwYXNz"], &[]),
            headers(&[], &["Bearer mcp_short"], &[]),
        ] {
            assert_eq!(oauth_bearer(&h), Err(Denial::Malformed), "{h:?}");
        }
        assert_eq!(oauth_bearer(&headers(&[], &[], &[])), Err(Denial::Missing));
    }

    #[test]
    fn reports_claimed_user() {
        let t = tok();
        let c = extract(&headers(&[&t], &[], &[" alice "])).unwrap();
        assert_eq!(c.claimed_user_id, Some("alice"));
    }
}
