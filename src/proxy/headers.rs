//! Header hygiene (docs/design.md §1 step 5): identity headers a client sent are
//! never believed or forwarded, in any spelling; the trusted ones are injected.
//! Redirects the upstream makes to its own origin are pointed back at memgate.

use std::net::IpAddr;
use std::sync::OnceLock;

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use crate::config::Upstream;
use crate::http1::request::{InvalidHead, RequestHead};
use crate::identity::Identity;
use crate::listener::{Relayed, Session};
use crate::policy::header_names::{
    X_MCP_USERID, X_MEMGATE_SCOPE, is_credential_header, is_identity_header, is_method_override,
    is_upstream_key, single,
};
use crate::upstream::exchange::UpstreamHead;
use crate::upstream::target::UpstreamTarget;

/// Whether the listeners speak TLS (set once at start): HSTS is only sent then.
static TLS: OnceLock<bool> = OnceLock::new();

pub fn set_tls(enabled: bool) {
    let _ = TLS.set(enabled);
}

/// `server.trusted_proxies` (set once at start): only their
/// `X-Forwarded-Proto` says which scheme the client used.
static TRUSTED_PROXIES: OnceLock<Vec<IpNet>> = OnceLock::new();

pub fn set_trusted_proxies(proxies: Vec<IpNet>) {
    let _ = TRUSTED_PROXIES.set(proxies);
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

/// Headers memgate never passes on from a client: identity claims, method
/// overrides, the upstream's API key, and credentials unless the listener
/// forwards them.
fn is_stripped(name: &str, forward_credentials: bool) -> bool {
    is_identity_header(name)
        || is_method_override(name)
        || is_upstream_key(name)
        || (!forward_credentials && is_credential_header(name))
}

const X_MEMGATE_TOKEN_PREFIX: HeaderName = HeaderName::from_static("x-memgate-token-prefix");

/// Most headers a `Connection` header may name; more is refused.
const MAX_NOMINATED: usize = 16;

/// The names a `Connection` header lists as hop-by-hop (RFC 9110 §7.6.1),
/// but `keep-alive` and `close`; `None` for a value that is not text.
fn nominated(headers: &http::HeaderMap) -> impl Iterator<Item = Option<&str>> {
    crate::http1::values(headers, &http::header::CONNECTION).flat_map(|value| {
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

/// The client's headers that may pass upstream: not hop-by-hop, not
/// stripped, not named by its `Connection` header (refused when that names
/// too many or is unreadable).
pub fn passable(
    client_req: &RequestHeader,
    forward_credentials: bool,
) -> Result<impl Iterator<Item = (&HeaderName, &HeaderValue)>> {
    let nominated = connection_nominated(client_req)?;
    Ok(client_req.headers.iter().filter(move |(name, _)| {
        let n = name.as_str();
        !crate::http1::is_hop_by_hop(n.as_bytes())
            && !is_stripped(n, forward_credentials)
            && !nominated.iter().any(|h| h.eq_ignore_ascii_case(n))
    }))
}

/// The request memgate sends upstream itself: the client's method and
/// headers minus hop-by-hop and stripped ones (and those `keep` refuses),
/// `path_and_query`, memgate's identity headers and the upstream's `host`.
/// The caller adds the body's framing. Written straight to HTTP/1.1 bytes
/// (`http1::request`): no header map is built for a head read once.
pub fn upstream_request(
    client_req: &RequestHeader,
    path_and_query: &str,
    identity: &Identity,
    scope: &str,
    forward_credentials: bool,
    authority: &str,
    keep: impl Fn(&HeaderName, &HeaderValue) -> bool,
) -> Result<RequestHead> {
    let invalid = |e: InvalidHead| Error::explain(ErrorType::InternalError, e.0);
    // A target that is not visible ASCII (HTTP/2 lets UTF-8 through; HTTP/1
    // refused it when reading) is the client's error, and not passed on.
    let mut head = RequestHead::new(&client_req.method, path_and_query)
        .map_err(|e| Error::explain(ErrorType::HTTPStatus(400), e.0))?;
    for (name, value) in passable(client_req, forward_credentials)? {
        if keep(name, value) {
            head.copy(name, value);
        }
    }
    for (name, value) in [
        (&X_MCP_USERID, identity.user_id.as_str()),
        (&X_MEMGATE_SCOPE, scope),
        (&X_MEMGATE_TOKEN_PREFIX, identity.token_prefix.as_str()),
        (&http::header::HOST, authority),
    ] {
        head.header(name, value.as_bytes()).map_err(invalid)?;
    }
    Ok(head)
}

/// The upstream's answer made the client's: memgate frames the body itself
/// (with `length` when it knows it), adds the security headers, and points
/// redirects to the upstream's own origin back at memgate. The upstream's
/// hop-by-hop headers were left out when its head was parsed
/// (`http1::head::take_response`).
pub fn client_response(
    upstream: UpstreamHead,
    length: Option<usize>,
    redirects: &Redirects<'_>,
) -> Relayed {
    let mut relayed = Relayed::new(upstream);
    redirects.rewrite(&mut relayed);
    // 1xx, 204 and 304 answers carry no length (RFC 9110 §8.6).
    let status = relayed.status().as_u16();
    if let Some(length) = length.filter(|_| status >= 200 && status != 204 && status != 304) {
        relayed.append(http::header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    // The upstream's own copies give way to memgate's.
    for (name, value) in security_headers() {
        relayed.replace(name, value);
    }
    relayed
}

/// The authority the client addressed: HTTP/2's `:authority` or an
/// absolute-form target's, else the one `Host` header. `None` when absent,
/// repeated, or not a plain `host[:port]`.
pub fn client_host(req: &RequestHeader) -> Option<&str> {
    let host = match req.uri.authority() {
        Some(authority) => authority.as_str(),
        None => {
            let mut hosts = crate::http1::values(&req.headers, &http::header::HOST);
            let host = hosts.next()?;
            if hosts.next().is_some() {
                return None;
            }
            host.to_str().ok()?
        }
    };
    is_plain_authority(host).then_some(host)
}

/// `host[:port]` (`[v6][:port]`) in the characters RFC 3986 allows a
/// registered name, without userinfo: checked without allocating, since
/// `preserve_host` asks on every request.
fn is_plain_authority(text: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b);
    text.bytes().all(allowed) && split_host_port(text).is_some()
}

/// How a response's redirects are pointed back at memgate: the upstream's
/// origin, and what says which origin the client reached memgate at (read
/// only when a response carries a redirect).
pub struct Redirects<'a> {
    upstream: &'a Upstream,
    req: &'a RequestHeader,
    tls: bool,
    /// The TCP peer is a trusted proxy: its `X-Forwarded-Proto` counts.
    via_trusted_proxy: bool,
}

impl<'a> Redirects<'a> {
    /// For a request on `session` whose upstream is `target`.
    pub fn of(target: &'a UpstreamTarget, session: &'a Session) -> Self {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let tls = TLS.get().copied().unwrap_or(false);
        let trusted = TRUSTED_PROXIES.get().map_or(&[][..], Vec::as_slice);
        Redirects::new(target.upstream(), session.req_header(), tls, peer, trusted)
    }

    pub fn new(
        upstream: &'a Upstream,
        req: &'a RequestHeader,
        tls: bool,
        peer: Option<IpAddr>,
        trusted_proxies: &[IpNet],
    ) -> Self {
        Redirects {
            upstream,
            req,
            tls,
            via_trusted_proxy: peer
                .is_some_and(|ip| super::client_ip::is_trusted(&ip, trusted_proxies)),
        }
    }

    /// The scheme and host the client used; `None` without a usable host.
    fn client_origin(&self) -> Option<(&'static str, &'a str)> {
        let host = client_host(self.req)?;
        let forwarded = self
            .via_trusted_proxy
            .then(|| forwarded_proto(self.req))
            .flatten();
        let scheme = forwarded.unwrap_or(if self.tls { "https" } else { "http" });
        Some((scheme, host))
    }

    /// Rewrites `Location` and `Content-Location` lines that point at the
    /// upstream's origin; the rest stay as the upstream sent them.
    fn rewrite(&self, relayed: &mut Relayed) {
        let is_redirect = |n: &[u8]| {
            n.eq_ignore_ascii_case(b"location") || n.eq_ignore_ascii_case(b"content-location")
        };
        if !relayed.upstream_lines().any(|(n, _)| is_redirect(n)) {
            return;
        }
        let Some((scheme, host)) = self.client_origin() else {
            return;
        };
        for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
            let values: Vec<&[u8]> = relayed
                .upstream_lines()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_str().as_bytes()))
                .map(|(_, v)| v)
                .collect();
            let rewritten: Vec<Option<String>> = values
                .iter()
                .map(|v| {
                    let v = std::str::from_utf8(v).ok()?;
                    rewrite_location(v, self.upstream, scheme, host)
                })
                .collect();
            if rewritten.iter().all(Option::is_none) {
                continue;
            }
            let values: Vec<HeaderValue> = values
                .iter()
                .zip(rewritten)
                .filter_map(|(old, new)| match new {
                    Some(new) => HeaderValue::try_from(new).ok(),
                    None => HeaderValue::from_bytes(old).ok(),
                })
                .collect();
            relayed.replace_all(name, values);
        }
    }
}

/// A trusted proxy's `X-Forwarded-Proto`: one value, `http` or `https`.
fn forwarded_proto(req: &RequestHeader) -> Option<&'static str> {
    let proto = single(&req.headers, &X_FORWARDED_PROTO).ok()??;
    if proto.eq_ignore_ascii_case("https") {
        Some("https")
    } else if proto.eq_ignore_ascii_case("http") {
        Some("http")
    } else {
        None
    }
}

pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// `location` pointed at the client-facing origin (`scheme://host`) when it
/// is an absolute URL (or a `//host` network-path reference) at `upstream`'s
/// origin: same scheme, host (any case; IP addresses compared as addresses)
/// and port (a missing one is the scheme's default). Path, query and
/// fragment are kept as sent. `None` leaves it as it is: relative, foreign,
/// with userinfo, or unreadable.
pub fn rewrite_location(
    location: &str,
    upstream: &Upstream,
    scheme: &str,
    host: &str,
) -> Option<String> {
    let upstream_scheme = if upstream.tls { "https" } else { "http" };
    let (location_scheme, rest) = match location.strip_prefix("//") {
        Some(rest) => (upstream_scheme, rest),
        None => {
            let (location_scheme, rest) = location.split_once("://")?;
            (location_scheme, rest)
        }
    };
    if !location_scheme.eq_ignore_ascii_case(upstream_scheme) {
        return None;
    }
    // Browsers end an http(s) authority at `\` as at `/`.
    let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return None;
    }
    let (location_host, port) = split_host_port(authority)?;
    let default_port = if upstream.tls { 443 } else { 80 };
    let same_host = match (
        location_host.parse::<IpAddr>(),
        upstream.host.parse::<IpAddr>(),
    ) {
        (Ok(a), Ok(b)) => a == b,
        (Err(_), Err(_)) => location_host.eq_ignore_ascii_case(&upstream.host),
        _ => false,
    };
    (same_host && port.unwrap_or(default_port) == upstream.port)
        .then(|| format!("{scheme}://{host}{tail}"))
}

/// `host[:port]` or `[v6][:port]`: the host (brackets removed) and the port
/// if one is given; `None` when it is not that shape.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']')?;
            host.parse::<std::net::Ipv6Addr>().ok()?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':')?)),
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        // `host:` means the default port (RFC 3986 §3.2.3).
        None | Some("") => None,
        Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => Some(digits.parse().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Permissions;

    fn request(method: &str, path: &[u8], headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, path, None).unwrap();
        for (n, v) in headers {
            req.append_header(*n, *v).unwrap();
        }
        req
    }

    fn origin(url: &str) -> Upstream {
        Upstream::parse("test", url).unwrap()
    }

    fn alice() -> Identity {
        Identity {
            user_id: "alice".into(),
            permissions: Permissions::READ_WRITE,
            token_prefix: "mcp_abcdefgh".into(),
        }
    }

    /// Every value of header `name`, in order.
    fn values(req: &http::request::Parts, name: &str) -> Vec<String> {
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
        let mut head = upstream_request(
            &client,
            "/memories",
            &id,
            "alice",
            false,
            "mem0:8000",
            |_, _| true,
        )
        .unwrap();
        head.content_length(12);
        let req = head.parsed();
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

        let forwarded = upstream_request(&client, "/m", &id, "alice", true, "mem0", |_, _| true)
            .unwrap()
            .parsed();
        assert_eq!(values(&forwarded, "x-mcp-token"), ["secret"]);
        assert_eq!(values(&forwarded, "authorization"), ["Bearer secret"]);
        assert!(values(&forwarded, "content-length").is_empty());
        assert_eq!(values(&forwarded, "x-mcp-userid"), ["alice"]);

        // `keep` drops more; memgate's own values cannot split a line.
        let kept = upstream_request(&client, "/m", &id, "alice", false, "mem0", |n, _| {
            n.as_str() != "accept"
        })
        .unwrap()
        .parsed();
        assert!(values(&kept, "accept").is_empty());
        assert!(
            upstream_request(&client, "/m", &id, "a\r\nx-b: c", false, "m", |_, _| true).is_err()
        );
        // A target the upstream could read otherwise is the client's error: 400.
        for target in ["/mcp/\u{e9}", "*"] {
            let e = upstream_request(&client, target, &id, "alice", false, "m", |_, _| true)
                .unwrap_err();
            assert_eq!(e.etype(), &ErrorType::HTTPStatus(400), "{target}");
        }
    }

    #[test]
    fn a_connection_header_naming_too_much_or_unreadable_is_refused() {
        let id = alice();
        let build =
            |req: &RequestHeader| upstream_request(req, "/", &id, "alice", false, "m", |_, _| true);
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
        // As the upstream client reads it: the parser leaves hop-by-hop
        // headers out, client_response frames and secures what is left.
        let mut raw = bytes::BytesMut::from(
            "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: keep-alive, X-Hop\r\n\
             Keep-Alive: timeout=5\r\nX-Hop: 1\r\nMcp-Session-Id: abc\r\n\r\n",
        );
        let upstream = crate::http1::head::take_response(&mut raw, false)
            .unwrap()
            .unwrap();
        let (origin, req) = (origin("http://mcp:8081"), request("GET", b"/", &[]));
        let none = Redirects::new(&origin, &req, false, None, &[]);
        let streamed = client_response(upstream.clone(), None, &none);
        assert_eq!(streamed.status(), 201);
        let names: Vec<&[u8]> = streamed.lines().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                &b"Content-Type"[..],
                b"Mcp-Session-Id",
                b"x-content-type-options",
                b"x-frame-options"
            ]
        );
        assert_eq!(
            streamed.get(&http::header::X_CONTENT_TYPE_OPTIONS),
            Some(&b"nosniff"[..])
        );
        // memgate's own length frames a body it holds.
        let buffered = client_response(upstream, Some(12), &none);
        let lengths: Vec<&[u8]> = buffered
            .lines()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"content-length"))
            .map(|(_, v)| v)
            .collect();
        assert_eq!(lengths, [&b"12"[..]]);
        // The H2 form carries the same lines.
        let h2 = buffered.into_response_header().unwrap();
        assert_eq!(h2.headers["mcp-session-id"], "abc");
        assert_eq!(h2.headers["content-length"], "12");
    }

    #[test]
    fn memgate_s_headers_replace_the_upstream_s() {
        let mut raw = bytes::BytesMut::from(
            "HTTP/1.1 200 OK\r\nX-Frame-Options: ALLOWALL\r\nVary: Accept\r\n\
             Access-Control-Allow-Origin: *\r\n\r\n",
        );
        let upstream = crate::http1::head::take_response(&mut raw, false)
            .unwrap()
            .unwrap();
        let (origin, req) = (origin("http://mcp:8081"), request("GET", b"/", &[]));
        let mut relayed = client_response(
            upstream,
            None,
            &Redirects::new(&origin, &req, false, None, &[]),
        );
        relayed.replace(
            http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("https://app.example"),
        );
        relayed.append(http::header::VARY, HeaderValue::from_static("Origin"));
        let all = |name: &str| -> Vec<&[u8]> {
            relayed
                .lines()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| v)
                .collect()
        };
        assert_eq!(all("x-frame-options"), [&b"DENY"[..]]);
        assert_eq!(
            all("access-control-allow-origin"),
            [&b"https://app.example"[..]]
        );
        assert_eq!(all("vary"), [&b"Accept"[..], b"Origin"]);
    }

    #[test]
    fn locations_at_the_upstream_s_origin_point_at_memgate() {
        let up = origin("http://127.0.0.1:8081");
        let at = |l: &str| rewrite_location(l, &up, "https", "gate.example:8443");
        assert_eq!(
            at("http://127.0.0.1:8081/mcp/").as_deref(),
            Some("https://gate.example:8443/mcp/")
        );
        // Path, query and fragment are kept as sent.
        assert_eq!(
            at("http://127.0.0.1:8081/a%2Fb?x=1&y=%20#frag").as_deref(),
            Some("https://gate.example:8443/a%2Fb?x=1&y=%20#frag")
        );
        assert_eq!(
            at("HTTP://127.0.0.1:8081").as_deref(),
            Some("https://gate.example:8443")
        );
        assert_eq!(
            at("http://127.0.0.1:8081?q").as_deref(),
            Some("https://gate.example:8443?q")
        );
        assert_eq!(
            at("//127.0.0.1:8081/mcp/").as_deref(),
            Some("https://gate.example:8443/mcp/"),
            "a network-path reference reaches the upstream too"
        );
        assert_eq!(
            at("http://127.0.0.1:8081\\evil/").as_deref(),
            Some("https://gate.example:8443\\evil/"),
            "browsers end the authority at a backslash"
        );
        for left in [
            "/mcp/",
            "mcp/",
            "?x=1",
            "http://127.0.0.1:8082/mcp/",
            "https://127.0.0.1:8081/mcp/",
            "http://127.0.0.2:8081/mcp/",
            "http://evil.example/mcp/",
            "http://user@127.0.0.1:8081/mcp/",
            "http://u:p@127.0.0.1:8081/mcp/",
            "http://127.0.0.1:8081@evil.example/",
            "http://127.0.0.1:80x/",
            "http://127.0.0.1:99999/",
            "http://:8081/",
            "http:/127.0.0.1:8081/",
            "ftp://127.0.0.1:8081/",
            "",
        ] {
            assert_eq!(at(left), None, "{left}");
        }

        // Default ports and case.
        let named = origin("http://MCP.internal");
        let at = |l: &str| rewrite_location(l, &named, "http", "gate");
        for same in [
            "http://mcp.internal/x",
            "http://MCP.INTERNAL:80/x",
            "http://mcp.internal:/x",
        ] {
            assert_eq!(at(same).as_deref(), Some("http://gate/x"), "{same}");
        }
        assert_eq!(at("http://mcp.internal:8080/x"), None);
        assert_eq!(at("http://mcp.internal./x"), None, "another name");
        let tls = origin("https://mem0.internal");
        assert_eq!(
            rewrite_location("https://mem0.internal:443/m", &tls, "http", "g").as_deref(),
            Some("http://g/m")
        );
        assert_eq!(
            rewrite_location("http://mem0.internal/m", &tls, "http", "g"),
            None
        );

        // IPv6: bracketed, compared as addresses.
        let v6 = origin("http://[::1]:8081");
        let at = |l: &str| rewrite_location(l, &v6, "http", "[::1]:8080");
        assert_eq!(
            at("http://[0:0:0:0:0:0:0:1]:8081/mcp/").as_deref(),
            Some("http://[::1]:8080/mcp/")
        );
        assert_eq!(at("http://[::1]/mcp/"), None, "port 80");
        assert_eq!(at("http://[::2]:8081/"), None);
        assert_eq!(at("http://[::1:8081/"), None, "malformed");
        assert_eq!(at("http://[zz]:8081/"), None, "malformed");
        assert_eq!(at("http://::1:8081/"), None, "malformed");
    }

    #[test]
    fn the_client_facing_origin_comes_from_the_request_and_trusted_proxies() {
        let up = origin("http://127.0.0.1:8081");
        let mut raw = bytes::BytesMut::from(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:8081/mcp/\r\n\
             Content-Location: http://127.0.0.1:8081/c\r\nLink: <http://127.0.0.1:8081/>\r\n\r\n",
        );
        let answer = crate::http1::head::take_response(&mut raw, false)
            .unwrap()
            .unwrap();
        let relay = |req: &RequestHeader, tls: bool, peer: &str, trusted: &[IpNet]| {
            let redirects = Redirects::new(&up, req, tls, Some(peer.parse().unwrap()), trusted);
            let relayed = client_response(answer.clone(), None, &redirects);
            let get = |n| {
                relayed
                    .get(&n)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            (
                get(http::header::LOCATION),
                get(http::header::CONTENT_LOCATION),
            )
        };
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let plain = request("POST", b"/mcp", &[("Host", "gate:8080")]);
        assert_eq!(
            relay(&plain, false, "203.0.113.1", &proxies),
            (
                Some("http://gate:8080/mcp/".into()),
                Some("http://gate:8080/c".into())
            )
        );
        assert_eq!(
            relay(&plain, true, "203.0.113.1", &proxies).0.as_deref(),
            Some("https://gate:8080/mcp/")
        );
        // X-Forwarded-Proto counts from a trusted proxy only, and only as http|https.
        let forwarded = request(
            "POST",
            b"/mcp",
            &[("Host", "gate.example"), ("X-Forwarded-Proto", "HTTPS")],
        );
        assert_eq!(
            relay(&forwarded, false, "10.1.2.3", &proxies).0.as_deref(),
            Some("https://gate.example/mcp/")
        );
        assert_eq!(
            relay(&forwarded, false, "203.0.113.1", &proxies)
                .0
                .as_deref(),
            Some("http://gate.example/mcp/")
        );
        let odd = request(
            "POST",
            b"/mcp",
            &[
                ("Host", "gate.example"),
                ("X-Forwarded-Proto", "javascript"),
            ],
        );
        assert_eq!(
            relay(&odd, true, "10.1.2.3", &proxies).0.as_deref(),
            Some("https://gate.example/mcp/")
        );
        // An HTTP/2 :authority (or absolute-form target) is the client's host.
        let mut h2 = request("POST", b"/mcp", &[]);
        h2.set_uri("http://gate.h2:9000/mcp".parse().unwrap());
        assert_eq!(
            relay(&h2, false, "203.0.113.1", &[]).0.as_deref(),
            Some("http://gate.h2:9000/mcp/")
        );
        // No usable host: left as it is.
        for headers in [
            &[][..],
            &[("Host", "a"), ("Host", "b")],
            &[("Host", "u@gate")],
            &[("Host", "gate/x")],
            &[("Host", "")],
        ] {
            let req = request("POST", b"/mcp", headers);
            assert_eq!(
                relay(&req, false, "203.0.113.1", &[]).0.as_deref(),
                Some("http://127.0.0.1:8081/mcp/"),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn the_upstream_s_api_key_never_passes_from_a_client() {
        for n in ["X-API-Key", "x_api_key", "X-Api_KEY", "xapikey"] {
            assert!(is_upstream_key(n), "{n}");
        }
        let client = request("GET", b"/", &[("X-API-Key", "evil"), ("x_api_key", "evil")]);
        let head = upstream_request(&client, "/", &alice(), "alice", true, "m", |_, _| true)
            .unwrap()
            .parsed();
        assert!(head.headers.iter().all(|(_, v)| v != "evil"));
    }
}
