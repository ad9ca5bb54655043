//! Header hygiene (DESIGN.md §1 step 5): identity headers a client sent are
//! never believed or forwarded, in any spelling; the trusted ones are injected.

use std::sync::OnceLock;

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use crate::policy::Identity;
use crate::policy::deny::Deny;

/// Hop-by-hop and framing headers: never copied between the two connections
/// when memgate builds the upstream request or the client's response itself.
pub static HOP_BY_HOP: [HeaderName; 13] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TRANSFER_ENCODING,
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
    http::header::CONTENT_LENGTH,
    http::header::HOST,
    http::header::EXPECT,
    http::header::PROXY_AUTHORIZATION,
    http::header::PROXY_AUTHENTICATE,
    HeaderName::from_static("http2-settings"),
];

/// Header names memgate reads on every request, parsed once.
pub const X_MCP_TOKEN: HeaderName = HeaderName::from_static("x-mcp-token");
pub const X_MCP_USERID: HeaderName = HeaderName::from_static("x-mcp-userid");
pub const X_MCP_PROJECT: HeaderName = HeaderName::from_static("x-mcp-project");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The one value of a header, trimmed; several values are ambiguous and refused.
pub fn single(req: &RequestHeader, name: &HeaderName) -> std::result::Result<Option<String>, Deny> {
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
    for (name, value) in security_headers() {
        header.insert_header(name, value)?;
    }
    Ok(())
}

fn security_headers() -> impl Iterator<Item = (HeaderName, HeaderValue)> {
    use http::header::{STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS};
    let hsts = TLS.get().copied().unwrap_or(false).then(|| {
        (
            STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        )
    });
    [
        (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ]
    .into_iter()
    .chain(hsts)
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

const X_MEMGATE_SCOPE: HeaderName = HeaderName::from_static("x-memgate-scope");
const X_MEMGATE_TOKEN_PREFIX: HeaderName = HeaderName::from_static("x-memgate-token-prefix");

fn value(text: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(text).or_err(ErrorType::InvalidHTTPHeader, "header value is not valid")
}

/// Most headers a `Connection` header may name; more is refused.
const MAX_NOMINATED: usize = 16;

/// The names a `Connection` header lists as hop-by-hop (RFC 9110 §7.6.1),
/// but `keep-alive` and `close`; `None` for a value that is not text.
fn nominated(headers: &http::HeaderMap) -> impl Iterator<Item = Option<&str>> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|value| {
            let text = value.to_str();
            let unreadable = text.is_err().then_some(None);
            text.unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|t| {
                    !t.is_empty()
                        && !t.eq_ignore_ascii_case("keep-alive")
                        && !t.eq_ignore_ascii_case("close")
                })
                .map(Some)
                .chain(unreadable)
        })
}

/// Headers the client's `Connection` header names: meant for memgate, not
/// passed on. Usually none. A value that is not text, or names too many, is
/// refused rather than half-read.
fn connection_nominated(req: &RequestHeader) -> Result<Vec<&str>> {
    let mut names = Vec::new();
    for token in nominated(&req.headers) {
        let token = token.or_err(
            ErrorType::HTTPStatus(400),
            "the Connection header is not valid text",
        )?;
        if names.len() == MAX_NOMINATED {
            return Error::e_explain(
                ErrorType::HTTPStatus(400),
                "the Connection header names too many headers",
            );
        }
        names.push(token);
    }
    Ok(names)
}

/// The request memgate sends upstream itself: the client's method and
/// headers minus hop-by-hop and stripped ones, `path_and_query`, memgate's
/// identity headers, the upstream's `host`, and the body's length. Built as
/// plain `http` parts: pingora's header setters parse every name again and
/// keep a second, case-preserving map the upstream does not need.
pub fn upstream_request(
    client_req: &RequestHeader,
    path_and_query: &str,
    identity: &Identity,
    scope: &str,
    forward_credentials: bool,
    authority: &str,
    body_len: Option<usize>,
) -> Result<RequestHeader> {
    let nominated = connection_nominated(client_req)?;
    let mut headers = http::HeaderMap::with_capacity(client_req.headers.len() + 5);
    for (name, value) in client_req.headers.iter() {
        let n = name.as_str();
        if !HOP_BY_HOP.contains(name)
            && !is_stripped(n, forward_credentials)
            && !nominated.iter().any(|h| h.eq_ignore_ascii_case(n))
        {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(X_MCP_USERID, value(&identity.user_id)?);
    headers.insert(X_MEMGATE_SCOPE, value(scope)?);
    headers.insert(X_MEMGATE_TOKEN_PREFIX, value(&identity.token_prefix)?);
    headers.insert(http::header::HOST, value(authority)?);
    if let Some(len) = body_len {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = client_req.method.clone();
    parts.uri = http::Uri::try_from(path_and_query).or_err(
        ErrorType::InternalError,
        "upstream request target is invalid",
    )?;
    parts.headers = headers;
    Ok(RequestHeader::from(parts))
}

/// Whether a response is a server-sent event stream.
pub fn is_event_stream(header: &http::response::Parts) -> bool {
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
/// headers removed (memgate frames the body itself, with `length` when it
/// knows it), the security headers added. Edited as plain `http` parts:
/// pingora's setters parse every name again and keep a second,
/// case-preserving map the client does not need.
pub fn client_response(mut parts: http::response::Parts, length: Option<usize>) -> ResponseHeader {
    // Headers the upstream's `Connection` names were meant for memgate.
    let named: Vec<HeaderName> = nominated(&parts.headers)
        .flatten()
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in &named {
        parts.headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        parts.headers.remove(name);
    }
    // 1xx, 204 and 304 answers carry no length (RFC 9110 §8.6).
    let status = parts.status.as_u16();
    if let Some(length) = length.filter(|_| status >= 200 && status != 204 && status != 304) {
        parts
            .headers
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    for (name, value) in security_headers() {
        parts.headers.insert(name, value);
    }
    ResponseHeader::from(parts)
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
    fn upstream_request_copies_only_what_may_pass() {
        let client = request(
            "POST",
            b"/memories?x=1",
            &[
                ("X-MCP-UserID", "mallory"),
                ("x_mcp_userid", "mallory"),
                ("X_Memgate_Scope", "mallory"),
                ("X-HTTP-Method-Override", "DELETE"),
                ("X-MCP-Token", "secret"),
                ("Authorization", "Bearer secret"),
                ("Connection", "keep-alive, x-custom"),
                ("X-Custom", "for the next hop only"),
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
            "x_mcp_userid",
            "x-http-method-override",
            "x-mcp-token",
            "authorization",
            "connection",
            "x-custom",
            "transfer-encoding",
        ] {
            assert!(values(&req, gone).is_empty(), "{gone} was copied");
        }
        assert_eq!(req.headers.len(), 6, "nothing else: {:?}", req.headers);

        let forwarded = upstream_request(&client, "/m", &id, "alice", true, "mem0", None).unwrap();
        assert_eq!(values(&forwarded, "x-mcp-token"), ["secret"]);
        assert_eq!(values(&forwarded, "authorization"), ["Bearer secret"]);
        assert!(values(&forwarded, "content-length").is_empty());
        assert_eq!(values(&forwarded, "x-mcp-userid"), ["alice"]);
    }

    #[test]
    fn a_connection_header_naming_too_much_or_unreadable_is_refused() {
        let id = alice();
        let build =
            |req: &RequestHeader| upstream_request(req, "/", &id, "alice", false, "m", None);
        let names: Vec<String> = (0..17).map(|i| format!("x-h{i}")).collect();
        let many = request("GET", b"/", &[("Connection", &names.join(", "))]);
        assert!(build(&many).is_err(), "17 nominated headers");
        let sixteen = request("GET", b"/", &[("Connection", &names[..16].join(","))]);
        assert!(build(&sixteen).is_ok());
        let mut unreadable = request("GET", b"/", &[]);
        unreadable
            .append_header(
                "connection",
                http::HeaderValue::from_bytes(b"x-a\xff").unwrap(),
            )
            .unwrap();
        assert!(
            build(&unreadable).is_err(),
            "a Connection value that is not text"
        );
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
        let upstream = http::response::Parts::from(upstream);
        let streamed = client_response(upstream.clone(), None);
        assert_eq!(streamed.status, 201);
        let names: Vec<&str> = streamed.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "content-type",
                "mcp-session-id",
                "x-content-type-options",
                "x-frame-options"
            ]
        );
        assert_eq!(streamed.headers["x-content-type-options"], "nosniff");
        // memgate's own length replaces the upstream's.
        let buffered = client_response(upstream, Some(12));
        assert_eq!(buffered.headers.get_all("content-length").iter().count(), 1);
        assert_eq!(buffered.headers["content-length"], "12");
    }
}
