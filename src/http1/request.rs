//! A request head for the upstream, written as HTTP/1.1 bytes while it is
//! built: no header map in between, since memgate sends exactly what it
//! decided and the upstream reads it once.

use bytes::BytesMut;
use http::{HeaderName, Method};

/// Why a head could not be built; memgate's own values are checked here so
/// that nothing it derived (a user id, a scope) can split a header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidHead(pub &'static str);

impl std::error::Error for InvalidHead {}

impl std::fmt::Display for InvalidHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

#[derive(Clone)]
pub struct RequestHead {
    method: Method,
    /// The request line and header lines, without the blank line that ends
    /// the head.
    bytes: BytesMut,
    chunked: bool,
}

/// The request line only: header values hold credentials (the client's,
/// and the `upstream_headers` memgate adds).
impl std::fmt::Debug for RequestHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let line = self.bytes[..]
            .split(|&b| b == b'\r')
            .next()
            .unwrap_or_default();
        f.debug_struct("RequestHead")
            .field("request_line", &String::from_utf8_lossy(line))
            .finish_non_exhaustive()
    }
}

/// What a header value may hold (as `http::HeaderValue` allows): visible
/// ASCII, spaces, tabs and obs-text; never CR, LF, NUL or another control.
pub fn is_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
}

impl RequestHead {
    /// `target` is origin-form (`/path?query`), visible ASCII.
    pub fn new(method: &Method, target: &str) -> Result<Self, InvalidHead> {
        if !target.starts_with('/') || !super::is_visible_ascii(target.as_bytes()) {
            return Err(InvalidHead("upstream request target is invalid"));
        }
        let mut bytes = BytesMut::with_capacity(256 + target.len());
        bytes.extend_from_slice(method.as_str().as_bytes());
        bytes.extend_from_slice(b" ");
        bytes.extend_from_slice(target.as_bytes());
        bytes.extend_from_slice(b" HTTP/1.1\r\n");
        Ok(RequestHead {
            method: method.clone(),
            bytes,
            chunked: false,
        })
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Appends a header line; `value` is checked.
    pub fn header(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), InvalidHead> {
        if !is_value(value) {
            return Err(InvalidHead("header value is not valid"));
        }
        self.line(name.as_str().as_bytes(), value);
        Ok(())
    }

    /// Appends a header whose value `http` already checked (one the client
    /// sent, as parsed).
    pub fn copy(&mut self, name: &HeaderName, value: &http::HeaderValue) {
        self.line(name.as_str().as_bytes(), value.as_bytes());
    }

    /// Drops every header line whose name `drop` matches; the request line
    /// stays. Nothing is copied when no line matches.
    pub fn remove_where(&mut self, drop: impl Fn(&[u8]) -> bool) {
        // The request line ends at the first CRLF: targets are visible ASCII.
        let Some(first) = self.bytes.windows(2).position(|w| w == b"\r\n") else {
            return;
        };
        let start = first + 2;
        let lines = || {
            self.bytes[start..]
                .split_inclusive(|&b| b == b'\n')
                .map(|line| (line, line.split(|&b| b == b':').next().unwrap_or(line)))
        };
        if !lines().any(|(_, name)| drop(name)) {
            return;
        }
        let mut kept = BytesMut::with_capacity(self.bytes.len());
        kept.extend_from_slice(&self.bytes[..start]);
        for (line, name) in lines() {
            if !drop(name) {
                kept.extend_from_slice(line);
            }
        }
        self.bytes = kept;
    }

    pub fn content_length(&mut self, length: u64) {
        let mut digits = itoa::Buffer::new();
        self.line(b"content-length", digits.format(length).as_bytes());
    }

    /// The body follows chunked.
    pub fn chunked(&mut self) {
        self.line(b"transfer-encoding", b"chunked");
        self.chunked = true;
    }

    pub fn is_chunked(&self) -> bool {
        self.chunked
    }

    fn line(&mut self, name: &[u8], value: &[u8]) {
        self.bytes.reserve(name.len() + value.len() + 4);
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(b": ");
        self.bytes.extend_from_slice(value);
        self.bytes.extend_from_slice(b"\r\n");
    }

    /// The whole head, blank line included, appended to `out`.
    pub fn write_to(&self, out: &mut BytesMut) {
        out.extend_from_slice(&self.bytes);
        out.extend_from_slice(b"\r\n");
    }

    /// The head's length on the wire.
    pub fn wire_len(&self) -> usize {
        self.bytes.len() + 2
    }

    /// The head parsed back, as the upstream reads it (tests).
    #[cfg(test)]
    pub fn parsed(&self) -> http::request::Parts {
        let mut out = BytesMut::new();
        self.write_to(&mut out);
        super::head::take_request(&mut out)
            .expect("a head memgate wrote parses")
            .expect("and is complete")
            .parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_written_as_built_and_read_back() {
        let mut head = RequestHead::new(&Method::POST, "/memories?user_id=a%20b").unwrap();
        head.header(&http::header::HOST, b"mem0:8000").unwrap();
        head.copy(
            &HeaderName::from_static("x-client"),
            &http::HeaderValue::from_static("kept"),
        );
        head.content_length(12);
        let mut out = BytesMut::new();
        head.write_to(&mut out);
        assert_eq!(
            &out[..],
            b"POST /memories?user_id=a%20b HTTP/1.1\r\nhost: mem0:8000\r\nx-client: kept\r\ncontent-length: 12\r\n\r\n"
        );
        assert_eq!(head.wire_len(), out.len());
        let parts = head.parsed();
        assert_eq!(parts.headers["content-length"], "12");
        assert!(!head.is_chunked());
        head.chunked();
        assert!(head.is_chunked());
    }

    #[test]
    fn lines_can_be_removed_by_name_and_debug_shows_no_value() {
        let mut head = RequestHead::new(&Method::GET, "/m?x=1").unwrap();
        head.header(&http::header::HOST, b"mem0").unwrap();
        head.header(&HeaderName::from_static("x-api-key"), b"secret")
            .unwrap();
        head.header(&http::header::ACCEPT, b"a:b").unwrap();
        head.remove_where(|n| n.eq_ignore_ascii_case(b"nothing"));
        head.remove_where(|n| n.eq_ignore_ascii_case(b"x-api-key"));
        let mut out = BytesMut::new();
        head.write_to(&mut out);
        assert_eq!(
            &out[..],
            b"GET /m?x=1 HTTP/1.1\r\nhost: mem0\r\naccept: a:b\r\n\r\n"
        );
        head.header(&HeaderName::from_static("x-api-key"), b"secret")
            .unwrap();
        let shown = format!("{head:?}");
        assert!(
            shown.contains("GET /m?x=1") && !shown.contains("secret"),
            "{shown}"
        );
    }

    #[test]
    fn nothing_can_split_a_line_or_the_request_line() {
        let mut head = RequestHead::new(&Method::GET, "/").unwrap();
        for bad in [&b"a\r\nx-mcp-userid: victim"[..], b"a\nb", b"a\0", b"\x7f"] {
            assert!(head.header(&http::header::HOST, bad).is_err(), "{bad:?}");
        }
        assert!(
            head.header(&http::header::HOST, b"tab\tand obs-text \xe9")
                .is_ok()
        );
        for bad in ["", "memories", "/a b", "/a\r\n", "/\u{e9}"] {
            assert!(RequestHead::new(&Method::GET, bad).is_err(), "{bad:?}");
        }
    }
}
