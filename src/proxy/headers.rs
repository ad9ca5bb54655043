//! Header hygiene (DESIGN.md §1 step 5): identity headers a client sent are
//! never believed or forwarded, in any spelling; the trusted ones are injected.

use std::sync::OnceLock;

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use crate::policy::Identity;
use crate::policy::deny::Deny;

/// Hop-by-hop and framing headers: never copied between the two connections
/// when memgate builds the upstream request or the client's response itself.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
    "expect",
];

/// The one value of a header, trimmed; several values are ambiguous and refused.
pub fn single(req: &RequestHeader, name: &str) -> std::result::Result<Option<String>, Deny> {
    let mut values = req.headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Deny::bad_request(format!(
            "The {name} header was sent more than once"
        )));
    }
    first
        .map(|v| {
            v.to_str()
                .map(|s| s.trim().to_string())
                .map_err(|_| Deny::bad_request(format!("The {name} header is not valid text")))
        })
        .transpose()
}

/// Whether the listeners speak TLS (set once at start): HSTS is only sent then.
static TLS: OnceLock<bool> = OnceLock::new();

pub fn set_tls(enabled: bool) {
    let _ = TLS.set(enabled);
}

/// Headers every response carries: no MIME sniffing, no framing, and HSTS
/// when memgate terminates TLS.
pub fn secure_response(header: &mut ResponseHeader) -> Result<()> {
    header.insert_header("x-content-type-options", "nosniff")?;
    header.insert_header("x-frame-options", "DENY")?;
    if TLS.get().copied().unwrap_or(false) {
        header.insert_header("strict-transport-security", "max-age=31536000")?;
    }
    Ok(())
}

/// The name lower-cased with `-` and `_` removed, so `X_MCP_UserID`,
/// `x-mcp-user-id` and `X-MCP-UserID` all compare equal. Header names are
/// ASCII; the targets below are too, so bytes suffice (and nothing is
/// allocated: this runs for every header of every request).
fn squashed(name: &str) -> impl Iterator<Item = u8> + '_ {
    name.bytes()
        .filter(|b| *b != b'-' && *b != b'_')
        .map(|b| b.to_ascii_lowercase())
}

fn squashed_is(name: &str, target: &str) -> bool {
    squashed(name).eq(target.bytes())
}

fn squashed_starts_with(name: &str, prefix: &str) -> bool {
    let mut s = squashed(name);
    prefix.bytes().all(|p| s.next() == Some(p))
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

/// Headers memgate never passes on from a client: identity claims, method
/// overrides, and credentials unless the listener forwards them.
fn is_stripped(name: &str, forward_credentials: bool) -> bool {
    is_identity_header(name)
        || is_method_override(name)
        || (!forward_credentials && is_credential_header(name))
}

/// Injects the identity memgate established.
fn inject_identity(req: &mut RequestHeader, identity: &Identity, scope: &str) -> Result<()> {
    req.insert_header("X-MCP-UserID", identity.user_id.as_str())?;
    req.insert_header("X-Memgate-Scope", scope)?;
    req.insert_header("X-Memgate-Token-Prefix", identity.token_prefix.as_str())?;
    Ok(())
}

/// Removes client identity headers (and credentials unless forwarded), then
/// injects the identity memgate established; for requests pingora forwards.
pub fn rewrite(
    req: &mut RequestHeader,
    identity: &Identity,
    scope: &str,
    forward_credentials: bool,
) -> Result<()> {
    let doomed: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|n| is_stripped(n.as_str(), forward_credentials))
        .cloned()
        .collect();
    for name in doomed {
        req.remove_header(&name);
    }
    inject_identity(req, identity, scope)
}

/// The request memgate sends upstream itself: the client's method and
/// headers minus hop-by-hop and stripped ones, `path_and_query`, memgate's
/// identity headers, the upstream's `host`, and the body's length.
pub fn upstream_request(
    client_req: &RequestHeader,
    path_and_query: &str,
    identity: &Identity,
    scope: &str,
    forward_credentials: bool,
    authority: &str,
    body_len: Option<usize>,
) -> Result<RequestHeader> {
    let mut req = RequestHeader::build(
        client_req.method.clone(),
        path_and_query.as_bytes(),
        Some(client_req.headers.len() + 5),
    )?;
    for (name, value) in client_req.headers.iter() {
        let n = name.as_str();
        if !HOP_BY_HOP.contains(&n) && !is_stripped(n, forward_credentials) {
            req.append_header(name.clone(), value.clone())?;
        }
    }
    inject_identity(&mut req, identity, scope)?;
    req.insert_header(http::header::HOST, authority)?;
    if let Some(len) = body_len {
        req.insert_header(http::header::CONTENT_LENGTH, len)?;
    }
    Ok(req)
}

/// Whether a response is a server-sent event stream.
pub fn is_event_stream(header: &ResponseHeader) -> bool {
    header
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .get(..17)
                .is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"))
        })
}

/// The upstream's response header made the client's: hop-by-hop and framing
/// headers removed (memgate frames the body itself), edited in place.
pub fn client_response(mut header: ResponseHeader) -> ResponseHeader {
    for name in HOP_BY_HOP {
        if header.headers.contains_key(*name) {
            header.remove_header(*name);
        }
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Permissions;

    fn request(method: &str, path: &[u8], headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, path, None).unwrap();
        for (n, v) in headers {
            req.append_header(*n, *v).unwrap();
        }
        req
    }

    fn alice() -> Identity {
        Identity {
            user_id: "alice".into(),
            permissions: Permissions::READ_WRITE,
            token_prefix: "mcp_abcdefgh".into(),
        }
    }

    /// Every value of header `name`, in order.
    fn values(req: &RequestHeader, name: &str) -> Vec<String> {
        req.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn recognises_every_spelling() {
        for n in [
            "X-MCP-UserID",
            "x_mcp_userid",
            "X-Mcp-User-Id",
            "X_MEMGATE_SCOPE",
            "x-memgate-anything",
        ] {
            assert!(is_identity_header(n), "{n}");
        }
        for n in ["X-MCP-Token", "x_mcp_token", "Authorization"] {
            assert!(is_credential_header(n), "{n}");
        }
        for n in [
            "X-HTTP-Method-Override",
            "x_http_method_override",
            "X-Method-Override",
            "x-http-method",
        ] {
            assert!(is_method_override(n), "{n}");
        }
        for n in ["x-mcp-project", "content-type", "mcp-session-id"] {
            assert!(!is_identity_header(n) && !is_credential_header(n), "{n}");
        }
    }

    #[test]
    fn strips_and_injects() {
        let mut req = request(
            "GET",
            b"/memories",
            &[
                ("X-MCP-UserID", "mallory"),
                ("x_mcp_userid", "mallory"),
                ("X-Memgate-Scope", "mallory"),
                ("X-MCP-Token", "secret"),
                ("Authorization", "Bearer secret"),
                ("Accept", "application/json"),
            ],
        );
        rewrite(&mut req, &alice(), "alice", false).unwrap();
        let get = |n: &str| values(&req, n);
        assert_eq!(get("x-mcp-userid"), ["alice"]);
        assert_eq!(get("x_mcp_userid"), Vec::<String>::new());
        assert_eq!(get("x-memgate-scope"), ["alice"]);
        assert_eq!(get("x-memgate-token-prefix"), ["mcp_abcdefgh"]);
        assert!(get("x-mcp-token").is_empty() && get("authorization").is_empty());
        assert_eq!(get("accept"), ["application/json"]);
    }

    #[test]
    fn upstream_request_copies_only_what_may_pass() {
        let client = request(
            "POST",
            b"/memories?x=1",
            &[
                ("X-MCP-UserID", "mallory"),
                ("X_Memgate_Scope", "mallory"),
                ("X-HTTP-Method-Override", "DELETE"),
                ("X-MCP-Token", "secret"),
                ("Connection", "keep-alive, x-custom"),
                ("Transfer-Encoding", "chunked"),
                ("Content-Length", "999"),
                ("Host", "evil.example"),
                ("Accept", "application/json"),
            ],
        );
        let id = alice();
        let req = upstream_request(
            &client,
            "/memories",
            &id,
            "alice",
            false,
            "mem0:8000",
            Some(12),
        )
        .unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.uri, "/memories");
        assert_eq!(values(&req, "x-mcp-userid"), ["alice"]);
        assert_eq!(values(&req, "x-memgate-scope"), ["alice"]);
        assert_eq!(values(&req, "x-memgate-token-prefix"), ["mcp_abcdefgh"]);
        assert_eq!(values(&req, "host"), ["mem0:8000"]);
        assert_eq!(values(&req, "content-length"), ["12"]);
        assert_eq!(values(&req, "accept"), ["application/json"]);
        for gone in [
            "x-http-method-override",
            "x-mcp-token",
            "connection",
            "transfer-encoding",
        ] {
            assert!(values(&req, gone).is_empty(), "{gone} was copied");
        }
        assert_eq!(req.headers.len(), 6, "nothing else: {:?}", req.headers);

        let forwarded = upstream_request(&client, "/m", &id, "alice", true, "mem0", None).unwrap();
        assert_eq!(values(&forwarded, "x-mcp-token"), ["secret"]);
        assert!(values(&forwarded, "content-length").is_empty());
        assert_eq!(values(&forwarded, "x-mcp-userid"), ["alice"]);
    }

    #[test]
    fn client_response_drops_framing_and_hop_by_hop_headers() {
        let mut upstream = ResponseHeader::build(201, None).unwrap();
        for (n, v) in [
            ("Content-Type", "application/json"),
            ("Content-Length", "5"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close"),
            ("Keep-Alive", "timeout=5"),
            ("Mcp-Session-Id", "abc"),
        ] {
            upstream.append_header(n, v).unwrap();
        }
        let header = client_response(upstream);
        assert_eq!(header.status, 201);
        let names: Vec<&str> = header.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "mcp-session-id"]);
    }
}
