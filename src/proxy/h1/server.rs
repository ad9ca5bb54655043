//! The client side of an HTTP/1.x connection: request heads parsed with
//! `httparse` straight into `http` parts, bodies read by their length or
//! de-chunked, responses framed and written (a fixed-length answer in one
//! write). One `H1Session` serves every request of its connection.
//!
//! Framing is strict where a proxy's reading could differ from the
//! upstream's (request smuggling): a `Content-Length` must be one plain
//! number, a `Transfer-Encoding` must end in `chunked` and is refused on
//! HTTP/1.0, several `Host` headers are refused. A request with both a length
//! and an encoding keeps both headers, so the gate refuses it by name
//! (`body::ambiguous_framing`), and the connection is not reused.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::Stream;
use pingora::protocols::l4::socket::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::chunked::{ChunkedDecoder, Decoded, LAST_CHUNK, encode_chunk};

/// The largest request head read (the gate answers 414/431 for the
/// configured, smaller limits once a head is parsed).
pub const MAX_HEAD: usize = 1024 * 1024;
/// More header lines than this is a malformed request.
const MAX_HEADERS: usize = 256;
const READ_SIZE: usize = 16 * 1024;
/// Each read and write of a request in progress must finish within this.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Request body left unread by the gate that is drained to keep the
/// connection; beyond it (or after DRAIN_TIME) the connection is closed.
const DRAIN_LIMIT: u64 = 64 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(2);

#[derive(Debug)]
enum RequestBody {
    Length(u64),
    Chunked(ChunkedDecoder),
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseBody {
    /// Nothing written yet.
    NotStarted,
    Length,
    Chunked,
    /// Delimited by the close (HTTP/1.0 clients, answers without a length).
    UntilClose,
    /// Complete; anything written now is dropped (also HEAD answers, 1xx,
    /// 204 and 304, which have no body).
    Done,
}

pub struct H1Session {
    stream: Stream,
    peer: Option<SocketAddr>,
    /// Bytes read from the client and not yet used.
    buf: BytesMut,
    /// Bytes of the response not yet written (a head waiting for its body).
    out: BytesMut,
    req: Option<RequestHeader>,
    body: RequestBody,
    response: Option<Box<ResponseHeader>>,
    response_body: ResponseBody,
    /// Keep-alive as pingora's sessions express it: `Some(idle seconds)`
    /// keeps the connection, `None` closes it after this request.
    keepalive: Option<u64>,
}

/// What reading the next request found.
pub enum NextRequest {
    Ready,
    /// The client closed (or sent nothing) before a request.
    Closed,
}

impl H1Session {
    pub fn new(stream: Stream) -> Self {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned());
        H1Session {
            stream,
            peer,
            buf: BytesMut::with_capacity(READ_SIZE),
            out: BytesMut::new(),
            req: None,
            body: RequestBody::Done,
            response: None,
            response_body: ResponseBody::NotStarted,
            keepalive: None,
        }
    }

    /// Reads and parses the next request head. Errors are malformed or
    /// oversized heads (`InvalidHTTPHeader`) or a failed read.
    pub async fn read_request(&mut self) -> Result<NextRequest> {
        self.req = None;
        self.response = None;
        self.response_body = ResponseBody::NotStarted;
        self.body = RequestBody::Done;
        self.out.clear();
        loop {
            if !self.buf.is_empty() && self.parse_head()? {
                return Ok(NextRequest::Ready);
            }
            if self.buf.len() >= MAX_HEAD {
                return Error::e_explain(ErrorType::InvalidHTTPHeader, "request head too large");
            }
            let had = self.buf.len();
            if self.fill().await? == 0 {
                if had == 0 {
                    return Ok(NextRequest::Closed);
                }
                return Error::e_explain(
                    ErrorType::InvalidHTTPHeader,
                    "the client closed in the middle of a request head",
                );
            }
        }
    }

    /// Parses a complete head at the front of the buffer and takes it;
    /// `false` while it is incomplete.
    fn parse_head(&mut self) -> Result<bool> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut slots);
        let base = self.buf.as_ptr() as usize;
        let len = match parsed.parse(&self.buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(false),
            Err(e) => {
                return Error::e_explain(
                    ErrorType::InvalidHTTPHeader,
                    format!("invalid request head: {e}"),
                );
            }
        };
        let method = http::Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
            .or_err(ErrorType::InvalidHTTPHeader, "invalid method")?;
        let version = match parsed.version {
            Some(1) => http::Version::HTTP_11,
            _ => http::Version::HTTP_10,
        };
        let target = parsed.path.unwrap_or_default();
        let target_at = target.as_ptr() as usize - base;
        let target_end = target_at + target.len();
        // Values are slices of the head, not copies: their places are noted
        // while httparse borrows the buffer.
        let mut names = Vec::with_capacity(parsed.headers.len());
        for h in parsed.headers.iter() {
            let name = http::HeaderName::from_bytes(h.name.as_bytes())
                .or_err(ErrorType::InvalidHTTPHeader, "invalid header name")?;
            let start = h.value.as_ptr() as usize - base;
            names.push((name, start, start + h.value.len()));
        }
        let head = self.buf.split_to(len).freeze();
        let uri = http::Uri::from_maybe_shared(head.slice(target_at..target_end))
            .or_err(ErrorType::InvalidHTTPHeader, "invalid request target")?;
        let mut headers = http::HeaderMap::with_capacity(names.len());
        for (name, start, end) in names {
            let value = http::HeaderValue::from_maybe_shared(head.slice(start..end))
                .or_err(ErrorType::InvalidHTTPHeader, "invalid header value")?;
            headers.append(name, value);
        }
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = method;
        parts.uri = uri;
        parts.version = version;
        parts.headers = headers;
        let framing = request_framing(&parts)?;
        self.keepalive = keeps_alive(&parts, framing.ambiguous).then_some(0);
        self.body = framing.body;
        self.req = Some(RequestHeader::from(parts));
        Ok(true)
    }

    /// The head read by the last [`Self::read_request`].
    pub fn req_header(&self) -> &RequestHeader {
        self.req
            .as_ref()
            .expect("req_header is only called once a request was read")
    }

    pub fn client_addr(&self) -> Option<&SocketAddr> {
        self.peer.as_ref()
    }

    async fn fill(&mut self) -> Result<usize> {
        self.buf.reserve(READ_SIZE);
        match tokio::time::timeout(IO_TIMEOUT, self.stream.read_buf(&mut self.buf)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Error::e_because(ErrorType::ReadError, "reading from the client", e),
            Err(_) => Error::e_explain(ErrorType::ReadTimedout, "the client went quiet"),
        }
    }

    /// The next piece of the request body; `None` at its end.
    pub async fn read_request_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            match &mut self.body {
                RequestBody::Done | RequestBody::Length(0) => {
                    self.body = RequestBody::Done;
                    return Ok(None);
                }
                RequestBody::Length(left) if !self.buf.is_empty() => {
                    let n = self
                        .buf
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= n as u64;
                    return Ok(Some(self.buf.split_to(n).freeze()));
                }
                RequestBody::Chunked(decoder) => match decoder.decode(&mut self.buf) {
                    Ok(Decoded::Data(data)) => return Ok(Some(data)),
                    Ok(Decoded::Done) => {
                        self.body = RequestBody::Done;
                        return Ok(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => {
                        self.keepalive = None;
                        return Error::e_explain(ErrorType::H1Error, format!("request body: {e}"));
                    }
                },
                RequestBody::Length(_) => {}
            }
            if self.fill().await? == 0 {
                self.keepalive = None;
                return Error::e_explain(
                    ErrorType::ConnectionClosed,
                    "the client closed before the end of its body",
                );
            }
        }
    }

    pub fn is_body_done(&self) -> bool {
        matches!(self.body, RequestBody::Done | RequestBody::Length(0))
    }

    /// Once the body was read, waits for the client to do anything: more
    /// bytes or a close both end the wait (with an error), which is how a
    /// streamed answer notices a client that left.
    pub async fn read_body_or_idle(&mut self) -> Result<Option<Bytes>> {
        if !self.is_body_done() {
            return self.read_request_body().await;
        }
        self.buf.reserve(1);
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Error::e_explain(ErrorType::ConnectionClosed, "the client closed"),
            Ok(_) => {
                self.keepalive = None;
                Error::e_explain(
                    ErrorType::H1Error,
                    "the client sent data before the answer ended",
                )
            }
            Err(e) => Error::e_because(ErrorType::ReadError, "reading from the client", e),
        }
    }

    pub fn set_keepalive(&mut self, seconds: Option<u64>) {
        // A request that asked to close (or cannot be followed) stays closed.
        if self.keepalive.is_some() || seconds.is_none() {
            self.keepalive = seconds;
        }
    }

    pub fn get_keepalive(&self) -> Option<u64> {
        self.keepalive
    }

    pub fn response_written(&self) -> Option<&ResponseHeader> {
        self.response.as_deref()
    }

    /// `100 Continue`, for a client that waits for it before its body.
    pub async fn write_continue_response(&mut self) -> Result<()> {
        self.write_now(b"HTTP/1.1 100 Continue\r\n\r\n").await
    }

    /// Writes the response head; a fixed-length one waits for its body so
    /// that both go out in one write.
    pub async fn write_response_header(&mut self, mut header: Box<ResponseHeader>) -> Result<()> {
        let status = header.status.as_u16();
        // An unreadable request is answered too, before any head was parsed.
        let (head_request, version) = self
            .req
            .as_ref()
            .map_or((false, http::Version::HTTP_11), |r| {
                (r.method == http::Method::HEAD, r.version)
            });
        let bodiless = head_request || status < 200 || status == 204 || status == 304;
        let chunked = header
            .headers
            .get(http::header::TRANSFER_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
        let length = header
            .headers
            .get(http::header::CONTENT_LENGTH)
            .map(|v| v.as_bytes() != b"0");
        self.response_body = if bodiless || length == Some(false) {
            ResponseBody::Done
        } else if chunked && version == http::Version::HTTP_11 {
            ResponseBody::Chunked
        } else if length.is_some() {
            ResponseBody::Length
        } else {
            ResponseBody::UntilClose
        };
        if chunked && self.response_body != ResponseBody::Chunked {
            header.remove_header(&http::header::TRANSFER_ENCODING);
        }
        if self.response_body == ResponseBody::UntilClose {
            self.keepalive = None;
        }
        let connection = match (self.keepalive, version) {
            (None, _) => Some("close"),
            (Some(_), http::Version::HTTP_10) => Some("keep-alive"),
            _ => None,
        };
        if let Some(value) = connection {
            header.insert_header(http::header::CONNECTION, value)?;
        }
        self.out.reserve(256);
        self.out.extend_from_slice(b"HTTP/1.1 ");
        self.out
            .extend_from_slice(header.status.as_str().as_bytes());
        self.out.extend_from_slice(b" ");
        self.out.extend_from_slice(
            header
                .status
                .canonical_reason()
                .unwrap_or("Unknown")
                .as_bytes(),
        );
        self.out.extend_from_slice(b"\r\n");
        header.header_to_h1_wire(&mut self.out);
        self.out.extend_from_slice(b"\r\n");
        self.response = Some(header);
        if self.response_body == ResponseBody::Length {
            return Ok(());
        }
        self.flush_out().await
    }

    /// Writes a piece of the body (chunked when the head said so); `end`
    /// finishes the answer.
    pub async fn write_response_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        match self.response_body {
            ResponseBody::Done => {}
            ResponseBody::Chunked => {
                encode_chunk(&data, &mut self.out);
                if end {
                    self.out.extend_from_slice(LAST_CHUNK);
                }
            }
            ResponseBody::Length | ResponseBody::UntilClose => {
                self.out.extend_from_slice(&data);
            }
            ResponseBody::NotStarted => {
                return Error::e_explain(ErrorType::InternalError, "body written before its head");
            }
        }
        if end {
            self.response_body = ResponseBody::Done;
        }
        self.flush_out().await
    }

    async fn flush_out(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let result = self.write_now(&out).await;
        // Keep the buffer's allocation for the next answer.
        self.out = out;
        self.out.clear();
        result
    }

    async fn write_now(&mut self, bytes: &[u8]) -> Result<()> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(IO_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Error::e_because(ErrorType::WriteError, "writing to the client", e),
            Err(_) => Error::e_explain(ErrorType::WriteTimedout, "the client stopped reading"),
        }
    }

    /// After an answer: whether the connection can carry the next request.
    /// Body the gate left unread is drained first (a little, briefly).
    pub async fn finish(&mut self) -> bool {
        if self.flush_out().await.is_err()
            || self.keepalive.is_none()
            || self.response_body != ResponseBody::Done
        {
            return false;
        }
        let drain = async {
            let mut drained = 0u64;
            while let Some(chunk) = self.read_request_body().await? {
                drained += chunk.len() as u64;
                if drained > DRAIN_LIMIT {
                    return Ok(false);
                }
            }
            Ok::<bool, Box<Error>>(true)
        };
        matches!(tokio::time::timeout(DRAIN_TIME, drain).await, Ok(Ok(true)))
    }

    /// Waits up to `idle` for the first byte of the next request.
    pub async fn wait_for_next(&mut self, idle: Duration) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        self.buf.reserve(READ_SIZE);
        matches!(
            tokio::time::timeout(idle, self.stream.read_buf(&mut self.buf)).await,
            Ok(Ok(n)) if n > 0
        )
    }

    pub async fn shutdown(&mut self) {
        let _ = self.flush_out().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }
}

struct Framing {
    body: RequestBody,
    /// Both a length and an encoding were sent.
    ambiguous: bool,
}

/// How the request body is delimited (RFC 9112 §6), strictly.
fn request_framing(req: &http::request::Parts) -> Result<Framing> {
    let headers = &req.headers;
    if headers.get_all(http::header::HOST).iter().count() > 1 {
        return Error::e_explain(ErrorType::InvalidHTTPHeader, "several Host headers");
    }
    let mut length = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        let n = super::parse_length(value.as_bytes())
            .or_err(ErrorType::InvalidHTTPHeader, "invalid Content-Length")?;
        if length.is_some() {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                "several Content-Length headers",
            );
        }
        length = Some(n);
    }
    if !headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Ok(Framing {
            body: length.map_or(RequestBody::Done, RequestBody::Length),
            ambiguous: false,
        });
    }
    if req.version == http::Version::HTTP_10 {
        return Error::e_explain(
            ErrorType::InvalidHTTPHeader,
            "HTTP/1.0 requests cannot use Transfer-Encoding",
        );
    }
    let last = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .map(str::trim);
    if !last.is_some_and(|c| c.eq_ignore_ascii_case("chunked")) {
        return Error::e_explain(
            ErrorType::InvalidHTTPHeader,
            "non-chunked final Transfer-Encoding",
        );
    }
    Ok(Framing {
        body: RequestBody::Chunked(ChunkedDecoder::default()),
        ambiguous: length.is_some(),
    })
}

/// Whether the client lets the connection carry another request.
fn keeps_alive(req: &http::request::Parts, ambiguous: bool) -> bool {
    if ambiguous {
        return false;
    }
    let connection = &http::header::CONNECTION;
    match req.version {
        http::Version::HTTP_11 => !super::has_token(&req.headers, connection, "close"),
        _ => super::has_token(&req.headers, connection, "keep-alive"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(head: &str) -> http::request::Parts {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Request::new(&mut slots);
        assert!(r.parse(head.as_bytes()).unwrap().is_complete());
        let mut b = http::Request::builder()
            .method(r.method.unwrap())
            .uri(r.path.unwrap())
            .version(if r.version == Some(1) {
                http::Version::HTTP_11
            } else {
                http::Version::HTTP_10
            });
        for h in r.headers.iter() {
            b = b.header(h.name, h.value);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn request_bodies_are_framed_strictly() {
        let framing = |head: &str| request_framing(&parts(head));
        let ok = |head: &str| framing(head).unwrap();
        assert!(matches!(
            ok("GET / HTTP/1.1\r\n\r\n").body,
            RequestBody::Done
        ));
        assert!(matches!(
            ok("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n").body,
            RequestBody::Length(12)
        ));
        assert!(matches!(
            ok("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").body,
            RequestBody::Chunked(_)
        ));
        let both = ok("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert!(both.ambiguous && matches!(both.body, RequestBody::Chunked(_)));
        for bad in [
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            assert!(framing(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        let keeps = |head: &str| keeps_alive(&parts(head), false);
        assert!(keeps("GET / HTTP/1.1\r\n\r\n"));
        assert!(!keeps("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!keeps("GET / HTTP/1.0\r\n\r\n"));
        assert!(keeps("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!keeps_alive(&parts("GET / HTTP/1.1\r\n\r\n"), true));
    }
}
