//! Header names memgate reads, sets or strips, and how an upstream or a
//! framework in front of it matches them: case, `-` and `_` do not make
//! another header. Pure: the listeners, the gate and the CLI share these.

use http::{HeaderMap, HeaderName};

use super::deny::Deny;

/// Header names memgate reads on every request, parsed once.
pub const X_MCP_TOKEN: HeaderName = HeaderName::from_static("x-mcp-token");
pub const X_MCP_USERID: HeaderName = HeaderName::from_static("x-mcp-userid");
pub const X_MCP_PROJECT: HeaderName = HeaderName::from_static("x-mcp-project");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The one value of a header, trimmed; several values are ambiguous and refused.
pub fn single<'r>(headers: &'r HeaderMap, name: &HeaderName) -> Result<Option<&'r str>, Deny> {
    let mut values = crate::http1::values(headers, name);
    let first = values.next();
    if values.next().is_some() {
        return Err(Deny::bad_request(format!(
            "The {name} header was sent more than once"
        )));
    }
    first
        .map(|v| {
            v.to_str()
                .map(str::trim)
                .map_err(|_| Deny::bad_request(format!("The {name} header is not valid text")))
        })
        .transpose()
}

/// Which scope a forwarded request acts for (docs/design.md §3).
pub const X_MEMGATE_SCOPE: HeaderName = HeaderName::from_static("x-memgate-scope");

/// Header names compare lower-cased with `-` and `_` removed, so
/// `X_MCP_UserID`, `x-mcp-user-id` and `X-MCP-UserID` all compare equal.
/// Header names are ASCII; the targets (lower-case, no separators) are too,
/// so bytes suffice. This runs for every header of every request, so it is a
/// plain loop that stops at the first difference.
///
/// What is left of `name` after `prefix`'s letters, from its next letter
/// (empty when no letter follows); `None` when the squashed name does not
/// start with `prefix`.
fn after_squashed<'n>(name: &'n str, prefix: &str) -> Option<&'n [u8]> {
    let (name, mut wanted) = (name.as_bytes(), prefix.bytes());
    for (at, &b) in name.iter().enumerate() {
        if is_separator(b) {
            continue;
        }
        match wanted.next() {
            Some(w) if w == b.to_ascii_lowercase() => {}
            Some(_) => return None,
            None => return Some(&name[at..]),
        }
    }
    wanted.next().is_none().then_some(&[])
}

fn is_separator(b: u8) -> bool {
    b == b'-' || b == b'_'
}

fn squashed_is(name: &str, target: &str) -> bool {
    after_squashed(name, target).is_some_and(<[u8]>::is_empty)
}

fn squashed_starts_with(name: &str, prefix: &str) -> bool {
    after_squashed(name, prefix).is_some()
}

/// Headers that claim an identity: memgate sets these itself.
pub fn is_identity_header(name: &str) -> bool {
    squashed_is(name, "xmcpuserid") || squashed_starts_with(name, "xmemgate")
}

/// Headers that would make an upstream (or a framework in front of it) treat
/// the request as another method than the one memgate authorised.
pub fn is_method_override(name: &str) -> bool {
    ["xhttpmethodoverride", "xhttpmethod", "xmethodoverride"]
        .iter()
        .any(|t| squashed_is(name, t))
}

/// Headers that carry a credential.
pub fn is_credential_header(name: &str) -> bool {
    squashed_is(name, "xmcptoken") || squashed_is(name, "authorization")
}

/// mem0's API key: the upstream's own credential, which only memgate's
/// `upstream_headers` may supply.
pub fn is_upstream_key(name: &str) -> bool {
    squashed_is(name, "xapikey")
}

/// Whether two header names are one header to an upstream or a framework in
/// front of it: equal but for case, `-` and `_`.
pub fn same_header(a: &str, b: &str) -> bool {
    fn squash(n: &str) -> impl Iterator<Item = u8> + '_ {
        n.bytes()
            .filter(|b| !is_separator(*b))
            .map(|b| b.to_ascii_lowercase())
    }
    squash(a).eq(squash(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squashed_comparisons_match_squashing_the_name() {
        let squash = |n: &str| {
            n.chars()
                .filter(|c| *c != '-' && *c != '_')
                .map(|c| c.to_ascii_lowercase())
                .collect::<String>()
        };
        let names = [
            "",
            "-",
            "_x_",
            "x",
            "X-MCP-UserID",
            "x-mcp-userid-2",
            "xmcpuser",
            "X_Memgate",
            "x-memgate-scope",
            "xmemgat",
            "-X-HTTP-Method",
            "x-http-method-override",
            "Host",
        ];
        let targets = [
            "xmcpuserid",
            "xmemgate",
            "xhttpmethod",
            "xhttpmethodoverride",
            "x",
        ];
        for name in names {
            for target in targets {
                assert_eq!(
                    squashed_is(name, target),
                    squash(name) == target,
                    "{name} {target}"
                );
                assert_eq!(
                    squashed_starts_with(name, target),
                    squash(name).starts_with(target),
                    "{name} {target}"
                );
            }
        }
    }

    #[test]
    fn one_header_in_any_case_and_separator() {
        assert!(same_header("X_MCP-UserID", "x-mcp-userid"));
        assert!(!same_header("x-mcp-user", "x-mcp-userid"));
    }
}
