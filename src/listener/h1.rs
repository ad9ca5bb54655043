//! The client side of an HTTP/1.x connection: request heads read and parsed
//! (`http1::head`, strict framing), bodies read by their length or
//! de-chunked, responses framed and written (a fixed-length answer in one
//! write). One `H1Session` serves every request of its connection.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::Stream;
use pingora::protocols::l4::socket::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http1::body::{BodyReader, Step};
use crate::http1::chunked::{LAST_CHUNK, encode_chunk};
use crate::http1::head::{self, Framing};
use crate::listener::Relayed;

const READ_SIZE: usize = 16 * 1024;
/// Each read and write of a request in progress must finish within this.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// A request body left unread when the connection closes is read and
/// dropped for up to this long (and this much), so that the close does not
/// reset the connection before the client has read the answer.
const LINGER_TIME: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseBody {
    /// Nothing written yet.
    NotStarted,
    /// A declared length; the bytes still due.
    Length(u64),
    Chunked,
    /// Delimited by the close (HTTP/1.0 clients, answers without a length).
    UntilClose,
    /// Complete; anything written now is dropped (also HEAD answers, 1xx,
    /// 204 and 304, which have no body).
    Done,
}

pub struct H1Session {
    stream: Stream,
    /// The largest request head read; larger ones are answered 431.
    max_head: usize,
    peer: Option<SocketAddr>,
    /// Bytes read from the client and not yet used.
    buf: BytesMut,
    /// Bytes of the response not yet written (a head waiting for its body).
    out: BytesMut,
    req: Option<RequestHeader>,
    body: BodyReader,
    /// The status of the answer written to this request, once it was.
    response: Option<http::StatusCode>,
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
    pub fn new(stream: Stream, max_head: usize) -> Self {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned());
        H1Session {
            stream,
            max_head,
            peer,
            buf: BytesMut::with_capacity(READ_SIZE),
            out: BytesMut::new(),
            req: None,
            body: BodyReader::Done,
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
        self.body = BodyReader::Done;
        self.out.clear();
        // Parsed again only when a new line arrived: a head trickled in
        // small pieces must not cost a full parse per piece.
        let mut new_line = !self.buf.is_empty();
        loop {
            if new_line && self.parse_head()? {
                return Ok(NextRequest::Ready);
            }
            if self.buf.len() >= self.max_head {
                return Error::e_explain(ErrorType::HTTPStatus(431), "request head too large");
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
            new_line = self.buf[had..].contains(&b'\n');
        }
    }

    /// Parses a complete head at the front of the buffer and takes it;
    /// `false` while it is incomplete.
    fn parse_head(&mut self) -> Result<bool> {
        let parsed = match head::take_request(&mut self.buf) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(false),
            Err(e) => return Error::e_explain(ErrorType::InvalidHTTPHeader, e.0),
        };
        // A request without a length or chunks has no body (RFC 9112 §6.3).
        self.body = match parsed.framing {
            Framing::UntilClose => BodyReader::Done,
            framing => BodyReader::of_request(framing),
        };
        self.keepalive = parsed.keep_alive.then_some(0);
        self.req = Some(RequestHeader::from(parsed.parts));
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
        match crate::deadline::within(IO_TIMEOUT, self.stream.read_buf(&mut self.buf)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Error::e_because(ErrorType::ReadError, "reading from the client", e),
            Err(_) => Error::e_explain(ErrorType::ReadTimedout, "the client went quiet"),
        }
    }

    /// The next piece of the request body; `None` at its end.
    pub async fn read_request_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.body.next(&mut self.buf) {
                Ok(Step::Data(data)) => return Ok(Some(data)),
                Ok(Step::End) => return Ok(None),
                Ok(Step::NeedMore) => {}
                Err(e) => {
                    self.keepalive = None;
                    return Error::e_explain(ErrorType::H1Error, format!("request body: {e}"));
                }
            }
            if self.fill().await? == 0 && !self.body.closed() {
                self.keepalive = None;
                return Error::e_explain(
                    ErrorType::ConnectionClosed,
                    "the client closed before the end of its body",
                );
            }
        }
    }

    pub fn is_body_done(&self) -> bool {
        self.body.is_done()
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

    pub fn response_status(&self) -> Option<u16> {
        self.response.map(|s| s.as_u16())
    }

    /// `100 Continue`, for a client that waits for it before its body.
    pub async fn write_continue_response(&mut self) -> Result<()> {
        self.write_now(b"HTTP/1.1 100 Continue\r\n\r\n").await
    }

    /// Writes the response head; a fixed-length one waits for its body so
    /// that both go out in one write.
    pub async fn write_response_header(&mut self, mut header: Box<ResponseHeader>) -> Result<()> {
        let chunked = header
            .headers
            .get(http::header::TRANSFER_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
        let length = header
            .headers
            .get(http::header::CONTENT_LENGTH)
            .map(http::HeaderValue::as_bytes);
        let connection = self.begin_response(header.status, chunked, length)?;
        if chunked && self.response_body != ResponseBody::Chunked {
            header.remove_header(&http::header::TRANSFER_ENCODING);
        }
        if let Some(value) = connection {
            header.insert_header(http::header::CONNECTION, value)?;
        }
        header.header_to_h1_wire(&mut self.out);
        self.end_head().await
    }

    /// Writes an upstream's answer: its header lines as they came, then
    /// memgate's (see [`Self::write_response_header`]).
    pub async fn write_relayed(&mut self, header: &Relayed) -> Result<()> {
        let chunked = header
            .get(&http::header::TRANSFER_ENCODING)
            .is_some_and(|v| v.eq_ignore_ascii_case(b"chunked"));
        let length = header.get(&http::header::CONTENT_LENGTH);
        let connection = self.begin_response(header.status(), chunked, length)?;
        let unchunked = chunked && self.response_body != ResponseBody::Chunked;
        for (name, value) in header.lines() {
            if (unchunked && name.eq_ignore_ascii_case(b"transfer-encoding"))
                || name.eq_ignore_ascii_case(b"connection")
            {
                continue;
            }
            self.out.reserve(name.len() + value.len() + 4);
            self.out.extend_from_slice(name);
            self.out.extend_from_slice(b": ");
            self.out.extend_from_slice(value);
            self.out.extend_from_slice(b"\r\n");
        }
        if let Some(value) = connection {
            self.out.extend_from_slice(b"connection: ");
            self.out.extend_from_slice(value.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        self.end_head().await
    }

    /// Decides how the answer's body is framed and whether the connection
    /// stays open, and starts the head with its status line. Returns the
    /// `Connection` value the head must carry, if any.
    fn begin_response(
        &mut self,
        status: http::StatusCode,
        chunked: bool,
        length: Option<&[u8]>,
    ) -> Result<Option<&'static str>> {
        // An unreadable request is answered too, before any head was parsed.
        let (head_request, version) = self
            .req
            .as_ref()
            .map_or((false, http::Version::HTTP_11), |r| {
                (r.method == http::Method::HEAD, r.version)
            });
        let code = status.as_u16();
        let bodiless = head_request || code < 200 || code == 204 || code == 304;
        let length = match length {
            None => None,
            Some(value) => Some(
                crate::http1::parse_length(value)
                    .or_err(ErrorType::InternalError, "an answer with an invalid length")?,
            ),
        };
        self.response_body = if bodiless || length == Some(0) {
            ResponseBody::Done
        } else if chunked && version == http::Version::HTTP_11 {
            ResponseBody::Chunked
        } else if let Some(length) = length {
            ResponseBody::Length(length)
        } else {
            ResponseBody::UntilClose
        };
        // Answered before its body was read (a refusal): the rest of the
        // body may never come (a client waiting for `100 Continue`), so
        // nothing after it can be trusted to start a request. Closed, as
        // pingora did.
        if self.response_body == ResponseBody::UntilClose || !self.is_body_done() {
            self.keepalive = None;
        }
        self.response = Some(status);
        self.out.reserve(256);
        self.out.extend_from_slice(b"HTTP/1.1 ");
        self.out.extend_from_slice(status.as_str().as_bytes());
        self.out.extend_from_slice(b" ");
        self.out
            .extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
        self.out.extend_from_slice(b"\r\n");
        Ok(match (self.keepalive, version) {
            (None, _) => Some("close"),
            (Some(_), http::Version::HTTP_10) => Some("keep-alive"),
            _ => None,
        })
    }

    /// Ends the head; sends it unless a fixed-length body will follow.
    async fn end_head(&mut self) -> Result<()> {
        self.out.extend_from_slice(b"\r\n");
        if matches!(self.response_body, ResponseBody::Length(_)) {
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
            // Never more than the declared length (the rest would be read
            // as the next answer); an answer that ends short closes.
            ResponseBody::Length(left) => {
                let Some(left) = left.checked_sub(data.len() as u64) else {
                    self.keepalive = None;
                    return Error::e_explain(
                        ErrorType::InternalError,
                        "an answer longer than its Content-Length",
                    );
                };
                self.response_body = ResponseBody::Length(left);
                self.out.extend_from_slice(&data);
                if end && left > 0 {
                    self.keepalive = None;
                }
            }
            ResponseBody::UntilClose => {
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
        match crate::deadline::within(IO_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Error::e_because(ErrorType::WriteError, "writing to the client", e),
            Err(_) => Error::e_explain(ErrorType::WriteTimedout, "the client stopped reading"),
        }
    }

    /// After an answer: whether the connection can carry the next request
    /// (the answer is complete, keep-alive stands, the body was read).
    pub async fn finish(&mut self) -> bool {
        self.flush_out().await.is_ok()
            && self.keepalive.is_some()
            && self.response_body == ResponseBody::Done
            && self.is_body_done()
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

    /// Flushes what is pending and closes. A request body still arriving is
    /// read and dropped briefly first (RFC 9112 §9.6): closing with unread
    /// data resets the connection, and the client could lose the answer.
    pub async fn shutdown(&mut self) {
        let _ = self.flush_out().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
        if !self.is_body_done() {
            let linger = async {
                let mut dropped = 0;
                while dropped < LINGER_BYTES {
                    self.buf.clear();
                    match self.stream.read_buf(&mut self.buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => dropped += n,
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER_TIME, linger).await;
        }
    }
}
