//! HTTP/1.x message heads: parsed with `httparse` straight into `http`
//! parts (values sliced from the received bytes, not copied), and how the
//! body after each head is delimited (RFC 9112 §6).
//!
//! Strict where two readings of a request could differ (request smuggling):
//! a `Content-Length` is one plain number without leading zeros, a
//! `Transfer-Encoding` is plain `chunked` and is refused on HTTP/1.0, exactly
//! one `Host` on HTTP/1.1 (at most one on HTTP/1.0), and the request target
//! is origin-form, absolute-form, `*` or (CONNECT only) authority-form.
//! A request with both a length and an encoding keeps both headers so that
//! the gate refuses it by name; it is never kept alive.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};

use super::{
    has_token, is_hop_by_hop, is_visible_ascii, parse_length, parse_request_length, values,
};

/// More header lines than this make a head malformed.
pub const MAX_HEADERS: usize = 256;

/// Why a head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadError(pub String);

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn refuse<T>(why: impl Into<String>) -> Result<T, HeadError> {
    Err(HeadError(why.into()))
}

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (also the answer to HEAD, 1xx, 204 and 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

#[derive(Debug)]
pub struct Request {
    pub parts: http::request::Parts,
    pub framing: Framing,
    /// The client lets the connection carry another request.
    pub keep_alive: bool,
}

/// A response head as received: its end-to-end header lines stay where they
/// lie in the head's bytes (a proxy relays them; no header map is built).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub version: Version,
    head: Bytes,
    /// The end-to-end header lines (see [`take_response`]): where each
    /// name and value lies in `head`.
    fields: Vec<Field>,
    pub framing: Framing,
    /// The `Content-Length` the upstream declared (also on HEAD answers).
    pub length: Option<u64>,
    /// The server lets the connection carry another request.
    pub keep_alive: bool,
}

#[derive(Debug, Clone, Copy)]
struct Field {
    name: (usize, usize),
    value: (usize, usize),
}

impl Response {
    /// The end-to-end headers in the order received: (name as sent, value).
    /// Names are tokens and values hold no CR, LF or NUL (`httparse`).
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(|f| {
            (
                &self.head[f.name.0..f.name.1],
                &self.head[f.value.0..f.value.1],
            )
        })
    }

    /// The first value of header `name` (any case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Drops every header `name` (any case).
    pub fn remove(&mut self, name: &str) {
        let head = &self.head;
        self.fields
            .retain(|f| !head[f.name.0..f.name.1].eq_ignore_ascii_case(name.as_bytes()));
    }
}

/// Where one header's name and value lie in the head.
struct Noted {
    name: HeaderName,
    value: (usize, usize),
}

fn note(headers: &[httparse::Header<'_>], base: usize) -> Result<Vec<Noted>, HeadError> {
    headers
        .iter()
        .map(|h| {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| HeadError("invalid header name".into()))?;
            let start = h.value.as_ptr() as usize - base;
            Ok(Noted {
                name,
                value: (start, start + h.value.len()),
            })
        })
        .collect()
}

fn header_map(noted: Vec<Noted>, head: &Bytes) -> Result<HeaderMap, HeadError> {
    let mut headers = HeaderMap::with_capacity(noted.len());
    for Noted { name, value } in noted {
        let value = HeaderValue::from_maybe_shared(head.slice(value.0..value.1))
            .map_err(|_| HeadError("invalid header value".into()))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn version(minor: Option<u8>) -> Version {
    match minor {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    }
}

/// Takes a complete request head from the front of `buf`; `Ok(None)` while
/// it is incomplete (nothing is taken then).
pub fn take_request(buf: &mut BytesMut) -> Result<Option<Request>, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let base = buf.as_ptr() as usize;
    let len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return refuse(format!("invalid request head: {e}")),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError("invalid method".into()))?;
    let target = parsed.path.unwrap_or_default();
    let target_at = target.as_ptr() as usize - base;
    let target_at = (target_at, target_at + target.len());
    let version = version(parsed.version);
    let noted = note(parsed.headers, base)?;
    let head = buf.split_to(len).freeze();
    let uri = request_target(&method, head.slice(target_at.0..target_at.1))?;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = header_map(noted, &head)?;
    let (framing, ambiguous) = request_framing(&parts)?;
    let keep_alive = !ambiguous && keeps_alive(version, &parts.headers);
    Ok(Some(Request {
        parts,
        framing,
        keep_alive,
    }))
}

/// The request target in one of the forms RFC 9112 §3.2 allows for the
/// method, in visible ASCII; anything else (a relative path, a scheme other than http(s)) is
/// refused rather than routed on a guess.
fn request_target(method: &Method, target: Bytes) -> Result<Uri, HeadError> {
    if !is_visible_ascii(&target) {
        return refuse("request target is not visible ASCII");
    }
    let first = target.first().copied();
    let uri =
        Uri::from_maybe_shared(target).map_err(|_| HeadError("invalid request target".into()))?;
    let fits = match first {
        Some(b'/') => uri.scheme().is_none() && uri.authority().is_none(),
        Some(b'*') => uri.path() == "*" && *method == Method::OPTIONS,
        _ if *method == Method::CONNECT => uri.scheme().is_none() && uri.authority().is_some(),
        _ => {
            matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.authority().is_some()
                && uri.path().starts_with('/')
        }
    };
    if !fits {
        return refuse("request target not in a form the method allows");
    }
    Ok(uri)
}

/// How the request body is delimited, and whether both a length and an
/// encoding were sent (the encoding wins; the gate refuses the request).
fn request_framing(req: &http::request::Parts) -> Result<(Framing, bool), HeadError> {
    let headers = &req.headers;
    match values(headers, &HOST).count() {
        // RFC 9112 §3.2: a server must answer 400 to an HTTP/1.1 request
        // without Host. HTTP/1.0 predates the header.
        0 if req.version == Version::HTTP_11 => return refuse("an HTTP/1.1 request without Host"),
        0 | 1 => {}
        _ => return refuse("several Host headers"),
    }
    let mut lengths = values(headers, &CONTENT_LENGTH);
    let length = match (lengths.next(), lengths.next()) {
        (None, _) => None,
        (Some(value), None) => Some(
            parse_request_length(value.as_bytes())
                .ok_or_else(|| HeadError("invalid Content-Length".into()))?,
        ),
        (Some(_), Some(_)) => return refuse("several Content-Length headers"),
    };
    if values(headers, &TRANSFER_ENCODING).next().is_none() {
        let framing = match length {
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        };
        return Ok((framing, false));
    }
    if req.version == Version::HTTP_10 {
        return refuse("HTTP/1.0 requests cannot use Transfer-Encoding");
    }
    // Only plain `chunked`: memgate would have to undo any other coding
    // before the policy could read the body (RFC 9112 §6.1).
    let mut codings = values(headers, &TRANSFER_ENCODING);
    let plain = matches!(
        (codings.next(), codings.next()),
        (Some(value), None) if value.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked")
    );
    if !plain {
        return refuse("a Transfer-Encoding other than chunked");
    }
    Ok((Framing::Chunked, length.is_some()))
}

/// Keep-alive is HTTP/1.1's default and HTTP/1.0's exception; `close`
/// wins over `keep-alive` when both are sent.
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    if has_token(headers, &CONNECTION, "close") {
        return false;
    }
    version == Version::HTTP_11 || has_token(headers, &CONNECTION, "keep-alive")
}

/// Takes a complete response head from the front of `buf`; `Ok(None)` while
/// it is incomplete. `head_request`: the request was HEAD (no body follows).
///
/// The parts hold the response's end-to-end headers only: the hop-by-hop
/// ones ([`super::HOP_BY_HOP`] and those its `Connection` header names) are
/// read here for framing and keep-alive and left out, as a proxy must not
/// pass them on (RFC 9110 §7.6.1). The declared `Content-Length` is kept in
/// [`Response::length`].
pub fn take_response(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<Response>, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let base = buf.as_ptr() as usize;
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return refuse(format!("invalid response head: {e}")),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| HeadError("invalid status".into()))?;
    let version = version(parsed.version);
    let fields = ResponseFields(parsed.headers);
    // A bodiless answer's length frames nothing: one that cannot be read is
    // left out rather than refused.
    let bodiless = head_request || is_bodiless(status);
    let length = match fields.length() {
        Err(_) if bodiless => None,
        length => length?,
    };
    // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty
    // framing, whatever else it says.
    if version == Version::HTTP_10 && fields.values("transfer-encoding").next().is_some() {
        return refuse("an HTTP/1.0 answer with Transfer-Encoding");
    }
    let framing = fields.framing(status, head_request, length)?;
    let keep_alive = version == Version::HTTP_11
        && framing != Framing::UntilClose
        && !fields.connection_lists(b"close");
    // Usually `Connection` names nothing but keep-alive or close.
    let nominating = fields.connection_tokens().any(|t| {
        !t.is_empty() && !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"close")
    });
    let at = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        (start, start + part.len())
    };
    let end_to_end = fields
        .0
        .iter()
        .filter(|h| !(is_hop_by_hop(h.name.as_bytes()) || nominating && fields.nominates(h.name)))
        .map(|h| Field {
            name: at(h.name.as_bytes()),
            value: at(h.value),
        })
        .collect();
    let head = buf.split_to(len).freeze();
    Ok(Some(Response {
        status,
        version,
        head,
        fields: end_to_end,
        framing,
        length,
        keep_alive,
    }))
}

/// 1xx, 204 and 304 answers have no body (RFC 9112 §6.3).
fn is_bodiless(status: StatusCode) -> bool {
    let code = status.as_u16();
    code < 200 || code == 204 || code == 304
}

/// A response head's header lines as `httparse` found them.
#[derive(Clone, Copy)]
struct ResponseFields<'h, 'b>(&'h [httparse::Header<'b>]);

impl<'b> ResponseFields<'_, 'b> {
    fn values(self, name: &'static str) -> impl Iterator<Item = &'b [u8]> {
        self.0
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The tokens of the `Connection` header(s).
    fn connection_tokens(self) -> impl Iterator<Item = &'b [u8]> {
        self.values("connection")
            .flat_map(|v| v.split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
    }

    fn connection_lists(self, token: &[u8]) -> bool {
        self.connection_tokens()
            .any(|t| t.eq_ignore_ascii_case(token))
    }

    /// Whether `Connection` names the header `name` as hop-by-hop.
    fn nominates(self, name: &str) -> bool {
        self.connection_lists(name.as_bytes())
    }

    /// The declared `Content-Length`; several that disagree, or one that
    /// is not a plain number, are refused.
    fn length(self) -> Result<Option<u64>, HeadError> {
        let mut length = None;
        for value in self.values("content-length") {
            let n =
                parse_length(value).ok_or_else(|| HeadError("invalid Content-Length".into()))?;
            if length.is_some_and(|l| l != n) {
                return refuse("conflicting Content-Length headers");
            }
            length = Some(n);
        }
        Ok(length)
    }

    /// How the body is delimited, given the declared [`Self::length`]. A
    /// length sent with an encoding is refused: where the next response starts would be in doubt.
    fn framing(
        self,
        status: StatusCode,
        head_request: bool,
        length: Option<u64>,
    ) -> Result<Framing, HeadError> {
        if head_request || is_bodiless(status) {
            return Ok(Framing::Empty);
        }
        // A coding list in other bytes than ASCII is read as chunked by one
        // reader and as no coding at all by another.
        let ascii = |v: &[u8]| {
            v.iter()
                .all(|b| b.is_ascii() && (*b == b'\t' || !b.is_ascii_control()))
        };
        if !self.values("transfer-encoding").all(ascii) {
            return refuse("Transfer-Encoding is not ASCII");
        }
        if let Some(last) = self.values("transfer-encoding").last() {
            if length.is_some() {
                return refuse("Transfer-Encoding and Content-Length in one response");
            }
            let chunked = last
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            return Ok(if chunked {
                Framing::Chunked
            } else {
                Framing::UntilClose
            });
        }
        Ok(match length {
            None => Framing::UntilClose,
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &str) -> Result<Request, HeadError> {
        let mut buf = BytesMut::from(head);
        take_request(&mut buf).map(|r| r.expect("a complete head"))
    }

    fn response(head: &str, head_request: bool) -> Result<Framing, HeadError> {
        let mut buf = BytesMut::from(head);
        take_response(&mut buf, head_request).map(|r| r.expect("a complete head").framing)
    }

    #[test]
    fn a_head_is_taken_and_what_follows_left() {
        let mut buf = BytesMut::from(
            "POST /memories?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhelloGET",
        );
        let req = take_request(&mut buf).unwrap().unwrap();
        assert_eq!(req.parts.method, Method::POST);
        assert_eq!(
            req.parts.uri.path_and_query().unwrap().as_str(),
            "/memories?x=1"
        );
        assert_eq!(req.parts.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(req.framing, Framing::Length(5));
        assert!(req.keep_alive);
        assert_eq!(&buf[..], b"helloGET");
        let mut partial = BytesMut::from("GET / HTTP/1.1\r\nHost: a\r\n");
        assert!(take_request(&mut partial).unwrap().is_none());
        assert_eq!(
            partial.len(),
            25,
            "nothing is taken from an incomplete head"
        );
    }

    #[test]
    fn request_bodies_are_framed_strictly() {
        let framing = |head: &str| request(head).map(|r| (r.framing, r.keep_alive));
        assert_eq!(
            framing("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok((Framing::Empty, true))
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked \r\n\r\n"),
            Ok((Framing::Chunked, true))
        );
        assert_eq!(
            framing(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
            ),
            Ok((Framing::Chunked, false)),
            "both kept for the gate to refuse, and never kept alive"
        );
        for bad in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n",
        ] {
            assert!(request(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn request_lengths_with_leading_zeros_are_refused() {
        let framing = |head: &str| request(head).map(|r| r.framing);
        assert_eq!(
            framing("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n"),
            Ok(Framing::Length(10))
        );
        for padded in ["007", "00", "01", "0000000000000000"] {
            let head = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {padded}\r\n\r\n");
            assert!(framing(&head).is_err(), "{padded:?} was accepted");
        }
        // An upstream's answer may still pad its length.
        assert_eq!(
            response("HTTP/1.1 200 OK\r\nContent-Length: 007\r\n\r\n", false),
            Ok(Framing::Length(7))
        );
    }

    #[test]
    fn http_1_1_requests_need_a_host_and_http_1_0_ones_do_not() {
        for missing in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET http://mem0:8000/a HTTP/1.1\r\n\r\n",
            "POST /mcp HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nX-Host: a\r\n\r\n",
        ] {
            let err = request(missing).expect_err(missing);
            assert!(err.0.contains("Host"), "{err}");
        }
        assert!(request("GET / HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
        assert!(request("GET / HTTP/1.1\r\nhOsT: a\r\n\r\n").is_ok());
        // Empty is what RFC 9112 §3.2 prescribes for a target without authority.
        assert!(request("GET / HTTP/1.1\r\nHost:\r\n\r\n").is_ok());
        assert!(request("GET / HTTP/1.0\r\n\r\n").is_ok());
        assert!(request("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n").is_err());
    }

    #[test]
    fn request_targets_must_take_a_form_the_method_allows() {
        let target = |head: &str| {
            let head = head.replacen("\r\n", "\r\nHost: a\r\n", 1);
            request(&head).map(|r| r.parts.uri.to_string())
        };
        assert_eq!(target("GET /a/b?c HTTP/1.1\r\n\r\n").unwrap(), "/a/b?c");
        assert_eq!(
            target("GET http://mem0:8000/a?c HTTP/1.1\r\n\r\n").unwrap(),
            "http://mem0:8000/a?c"
        );
        assert!(target("OPTIONS * HTTP/1.1\r\n\r\n").is_ok());
        assert!(target("CONNECT mem0:443 HTTP/1.1\r\n\r\n").is_ok());
        for bad in [
            "GET memories HTTP/1.1\r\n\r\n",
            "GET mem0:8000 HTTP/1.1\r\n\r\n",
            "GET * HTTP/1.1\r\n\r\n",
            "GET ftp://mem0/a HTTP/1.1\r\n\r\n",
            "GET /a b HTTP/1.1\r\n\r\n",
            "GET /caf\u{e9} HTTP/1.1\r\n\r\n",
        ] {
            assert!(target(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        let keeps = |head: &str| request(head).unwrap().keep_alive;
        assert!(!keeps(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        ));
        assert!(!keeps("GET / HTTP/1.0\r\n\r\n"));
        assert!(keeps("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        // As hyper reads it (found by tests/codec_differential.rs).
        assert!(!keeps(
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
    }

    #[test]
    fn responses_keep_their_end_to_end_headers_only() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 200 OK\r\nCONNECTION: keep-alive, x-Hop\r\nContent-Type: text/plain\r\n\
             Content-Length: 7\r\nKeep-Alive: timeout=5\r\nX-HOP: 1\r\nUpgrade: h2c\r\n\
             Proxy-Authenticate: Basic\r\nX-Kept: 2\r\n\r\n",
        );
        let r = take_response(&mut buf, true).unwrap().unwrap();
        let names: Vec<&[u8]> = r.headers().map(|(n, _)| n).collect();
        assert_eq!(names, [&b"Content-Type"[..], b"X-Kept"]);
        assert_eq!(r.get("x-kept"), Some(&b"2"[..]));
        let mut r = r;
        r.remove("CONTENT-type");
        assert_eq!(r.get("content-type"), None);
        assert_eq!(r.headers().count(), 1);
        // Declared even where no body follows (the answer to HEAD).
        assert_eq!((r.framing, r.length), (Framing::Empty, Some(7)));
        assert!(r.keep_alive);
        // An unreadable length on a bodiless answer is left out, not refused.
        for bodiless in [
            "HTTP/1.1 304 Not Modified\r\nContent-Length: abc\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(bodiless);
            let r = take_response(&mut buf, true).unwrap().unwrap();
            assert_eq!(
                (r.framing, r.length),
                (Framing::Empty, None),
                "{bodiless:?}"
            );
        }
        let mut close =
            BytesMut::from("HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n");
        assert!(
            !take_response(&mut close, false)
                .unwrap()
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn response_bodies_are_delimited_as_rfc_9112_says() {
        let ok = |head: &str| response(head, false).unwrap();
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Framing::UntilClose
        );
        assert_eq!(ok("HTTP/1.1 200 OK\r\n\r\n"), Framing::UntilClose);
        for bodiless in [
            "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\n\r\n",
            "HTTP/1.1 100 Continue\r\n\r\n",
        ] {
            assert_eq!(ok(bodiless), Framing::Empty, "{bodiless}");
        }
        assert_eq!(
            response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            Ok(Framing::Empty)
        );
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            // Read otherwise by hyper (found by tests/codec_differential.rs).
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: \u{e9}gzip, chunked\r\n\r\n",
        ] {
            assert!(response(bad, false).is_err(), "{bad:?} was accepted");
        }
    }
}
