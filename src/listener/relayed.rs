//! An answer on its way to the client: the heads memgate builds
//! (`ResponseHeader`) and the upstream answers it relays ([`Relayed`]), with
//! one way to set memgate's own headers on either.

use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::*;

use crate::http1::head::Response as UpstreamHead;

/// Whether a `Content-Type` value names a server-sent event stream.
fn is_event_stream_type(value: Option<&[u8]>) -> bool {
    value.is_some_and(|ct| {
        ct.trim_ascii_start()
            .get(..17)
            .is_some_and(|t| t.eq_ignore_ascii_case(b"text/event-stream"))
    })
}

/// Where memgate's own response headers go: the answers it builds
/// (`ResponseHeader`) and the upstream answers it relays ([`Relayed`]).
pub trait SetHeaders {
    /// Sets `name` to `value`, replacing every earlier value.
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
    /// Adds a value of `name`, keeping earlier ones.
    fn add(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
}

impl SetHeaders for ResponseHeader {
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
        self.insert_header(name, value)
    }

    fn add(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
        self.append_header(name, value).map(|_| ())
    }
}

/// An upstream answer on its way to the client: the upstream's end-to-end
/// header lines as received, plus the headers memgate sets. Written to an
/// HTTP/1 client line by line, without a header map in between.
#[derive(Debug)]
pub struct Relayed {
    upstream: UpstreamHead,
    added: Vec<(HeaderName, HeaderValue)>,
}

impl Relayed {
    pub fn new(upstream: UpstreamHead) -> Self {
        Relayed {
            upstream,
            added: Vec::with_capacity(6),
        }
    }

    /// Sets `name` to `value` over the upstream's and memgate's earlier values.
    pub fn replace(&mut self, name: HeaderName, value: HeaderValue) {
        self.upstream.remove(name.as_str());
        self.added.retain(|(n, _)| *n != name);
        self.added.push((name, value));
    }

    /// Sets `name` to `values` over the upstream's and memgate's earlier values.
    pub fn replace_all(&mut self, name: HeaderName, values: Vec<HeaderValue>) {
        self.upstream.remove(name.as_str());
        self.added.retain(|(n, _)| *n != name);
        self.added
            .extend(values.into_iter().map(|v| (name.clone(), v)));
    }

    /// The header lines as the upstream sent them (names as sent).
    pub fn upstream_lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.upstream.headers()
    }

    /// Adds a value of `name`, keeping earlier ones.
    pub fn append(&mut self, name: HeaderName, value: HeaderValue) {
        self.added.push((name, value));
    }

    pub fn status(&self) -> http::StatusCode {
        self.upstream.status
    }

    /// The first value of `name`: memgate's own if it set one.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        self.added
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_bytes())
            .or_else(|| self.upstream.get(name.as_str()))
    }

    pub fn is_event_stream(&self) -> bool {
        is_event_stream_type(self.get(&http::header::CONTENT_TYPE))
    }

    /// Every header line: the upstream's (names as sent), then memgate's.
    pub fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.upstream.headers().chain(
            self.added
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        )
    }

    /// The same answer as a `ResponseHeader` (for HTTP/2 clients).
    pub fn into_response_header(self) -> Result<ResponseHeader> {
        let mut header = ResponseHeader::build(self.status(), Some(self.added.len() + 8))?;
        for (name, value) in self.lines() {
            let name = HeaderName::from_bytes(name)
                .or_err(ErrorType::InvalidHTTPHeader, "an upstream header name")?;
            let value = HeaderValue::from_bytes(value)
                .or_err(ErrorType::InvalidHTTPHeader, "an upstream header value")?;
            header.append_header(name, value)?;
        }
        Ok(header)
    }
}

impl SetHeaders for Relayed {
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
        self.replace(name, value);
        Ok(())
    }

    fn add(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
        self.append(name, value);
        Ok(())
    }
}
