//! One HTTP/1.1 exchange with an upstream over a connection memgate dialled
//! or took from its pool: the request head and body written (one write when
//! the body is held whole), the response head parsed (`http1::head`), and the
//! body read by its length, de-chunked, or read to the close.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::prelude::*;
use pingora::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http1::body::{BodyReader, Step};
use crate::http1::chunked::{LAST_CHUNK, encode_chunk};
use crate::http1::head;
use crate::http1::request::RequestHead;

/// A response head larger than this is refused (mem0's are a few hundred bytes).
const MAX_HEAD: usize = 64 * 1024;
/// Bodies held whole are written with their head in one write up to this size.
const COALESCE: usize = 64 * 1024;
const READ_SIZE: usize = 16 * 1024;

pub struct ClientConn {
    stream: Stream,
    buf: BytesMut,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    request_chunked: bool,
    header: Option<head::Response>,
    body: BodyReader,
    /// The response allows the connection to carry another request.
    keep_alive: bool,
}

impl ClientConn {
    pub fn new(
        stream: Stream,
        read_timeout: Option<Duration>,
        write_timeout: Option<Duration>,
    ) -> Self {
        ClientConn {
            stream,
            buf: BytesMut::new(),
            read_timeout,
            write_timeout,
            request_chunked: false,
            header: None,
            body: BodyReader::Done,
            keep_alive: false,
        }
    }

    /// Writes the request head, and `body` with it when it is small. A
    /// chunked head makes later [`Self::write_body`] calls chunk what they send.
    pub async fn write_head(&mut self, req: &RequestHead, body: Option<&[u8]>) -> Result<()> {
        self.request_chunked = req.is_chunked();
        let body = body.filter(|b| !b.is_empty());
        let inline = body.filter(|b| b.len() <= COALESCE && !self.request_chunked);
        let mut out = BytesMut::with_capacity(req.wire_len() + inline.map_or(0, <[u8]>::len));
        req.write_to(&mut out);
        if let Some(body) = inline {
            out.extend_from_slice(body);
        }
        self.write_all(&out).await?;
        match body {
            Some(body) if inline.is_none() => self.write_body(body).await,
            _ => Ok(()),
        }
    }

    /// Sends a piece of the request body (chunked when the head said so).
    pub async fn write_body(&mut self, data: &[u8]) -> Result<()> {
        if !self.request_chunked {
            return self.write_all(data).await;
        }
        let mut out = BytesMut::with_capacity(data.len() + 20);
        encode_chunk(data, &mut out);
        self.write_all(&out).await
    }

    /// Ends the request body (the last chunk when chunked) and flushes.
    pub async fn finish_body(&mut self) -> Result<()> {
        if self.request_chunked {
            self.write_all(LAST_CHUNK).await?;
        }
        let flush = self.stream.flush();
        with_timeout(self.write_timeout, flush, ErrorType::WriteTimedout)
            .await?
            .or_err(ErrorType::WriteError, "flushing the upstream request")
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let write = self.stream.write_all(bytes);
        with_timeout(self.write_timeout, write, ErrorType::WriteTimedout)
            .await?
            .or_err(ErrorType::WriteError, "writing to the upstream")
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the upstream's close.
    async fn fill(&mut self) -> Result<usize> {
        self.buf.reserve(READ_SIZE);
        let read = self.stream.read_buf(&mut self.buf);
        with_timeout(self.read_timeout, read, ErrorType::ReadTimedout)
            .await?
            .or_err(ErrorType::ReadError, "reading from the upstream")
    }

    /// Reads the next response head (interim ones too: the caller skips 1xx).
    /// `head_request`: the request was `HEAD`, so the answer has no body.
    pub async fn read_response(&mut self, head_request: bool) -> Result<()> {
        loop {
            if !self.buf.is_empty() && self.parse_head(head_request)? {
                return Ok(());
            }
            if self.buf.len() >= MAX_HEAD {
                return Error::e_explain(
                    ErrorType::InvalidHTTPHeader,
                    "upstream response head too large",
                );
            }
            if self.fill().await? == 0 {
                return Error::e_explain(
                    ErrorType::ConnectionClosed,
                    "the upstream closed the connection before its response head",
                );
            }
        }
    }

    /// Parses and takes a complete head from the front of the buffer;
    /// `false` while it is incomplete.
    fn parse_head(&mut self, head_request: bool) -> Result<bool> {
        let parsed = match head::take_response(&mut self.buf, head_request) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(false),
            Err(e) => {
                return Error::e_explain(ErrorType::InvalidHTTPHeader, format!("upstream: {e}"));
            }
        };
        self.body = BodyReader::of(parsed.framing);
        self.keep_alive = parsed.keep_alive;
        self.header = Some(parsed);
        Ok(true)
    }

    pub fn read_timeout(&self) -> Option<Duration> {
        self.read_timeout
    }

    pub fn resp_header(&self) -> Option<&head::Response> {
        self.header.as_ref()
    }

    /// The response head, taken out (the body is still read from here).
    pub fn take_header(&mut self) -> Option<head::Response> {
        self.header.take()
    }

    /// The next piece of the response body; `None` at its end.
    pub async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.body.next(&mut self.buf) {
                Ok(Step::Data(data)) => return Ok(Some(data)),
                Ok(Step::End) => return Ok(None),
                Ok(Step::NeedMore) => {}
                Err(e) => {
                    return Error::e_explain(ErrorType::H1Error, format!("upstream body: {e}"));
                }
            }
            if self.fill().await? == 0 && !self.body.closed() {
                return Error::e_explain(
                    ErrorType::ConnectionClosed,
                    "the upstream closed the connection before the end of its body",
                );
            }
        }
    }

    pub fn is_body_done(&self) -> bool {
        self.body.is_done()
    }

    /// The connection, when it may carry another request: the response was
    /// read to its end, allowed keep-alive, and nothing followed it.
    pub fn reusable(self) -> Option<Stream> {
        (self.is_body_done() && self.keep_alive && self.buf.is_empty()).then_some(self.stream)
    }

    pub async fn shutdown(mut self) {
        let _ = self.stream.shutdown().await;
    }
}

async fn with_timeout<F: std::future::Future>(
    limit: Option<Duration>,
    fut: F,
    kind: ErrorType,
) -> Result<F::Output> {
    match limit {
        Some(limit) => crate::deadline::within(limit, fut)
            .await
            .or_err(kind, "upstream did not answer in time"),
        None => Ok(fut.await),
    }
}
