//! One request on a client connection: HTTP/1 through memgate's own codec
//! (`h1`), HTTP/2 (ALPN) through pingora's. The gate and the flows
//! see one set of calls either way.

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::socket::SocketAddr;

use super::Relayed;
use super::h1::H1Session;

pub enum Session {
    H1(Box<H1Session>),
    H2(Box<ServerSession>),
}

impl Session {
    pub fn req_header(&self) -> &RequestHeader {
        match self {
            Session::H1(s) => s.req_header(),
            Session::H2(s) => s.req_header(),
        }
    }

    pub fn is_http2(&self) -> bool {
        matches!(self, Session::H2(_))
    }

    pub fn client_addr(&self) -> Option<&SocketAddr> {
        match self {
            Session::H1(s) => s.client_addr(),
            Session::H2(s) => s.client_addr(),
        }
    }

    pub async fn read_request_body(&mut self) -> Result<Option<Bytes>> {
        match self {
            Session::H1(s) => s.read_request_body().await,
            Session::H2(s) => s.read_request_body().await,
        }
    }

    /// Whether the request has no body at all.
    pub fn is_body_empty(&mut self) -> bool {
        match self {
            Session::H1(s) => s.is_body_done(),
            Session::H2(s) => s.is_body_empty(),
        }
    }

    /// Resolves when the client does anything once its body was read (a
    /// close, more bytes, a reset): a streamed answer's sign it left.
    pub async fn read_body_or_idle(&mut self) -> Result<Option<Bytes>> {
        match self {
            Session::H1(s) => s.read_body_or_idle().await,
            Session::H2(s) => s.read_body_or_idle(true).await,
        }
    }

    pub async fn write_continue_response(&mut self) -> Result<()> {
        match self {
            Session::H1(s) => s.write_continue_response().await,
            Session::H2(s) => s.write_continue_response().await,
        }
    }

    pub async fn write_response_header(&mut self, header: Box<ResponseHeader>) -> Result<()> {
        match self {
            Session::H1(s) => s.write_response_header(header).await,
            Session::H2(s) => s.write_response_header(header).await,
        }
    }

    /// Writes an upstream's answer (memgate's HTTP/1 writes its lines as
    /// they are; HTTP/2 gets a header map).
    pub async fn write_relayed(&mut self, header: Relayed) -> Result<()> {
        match self {
            Session::H1(s) => s.write_relayed(&header).await,
            Session::H2(s) => {
                let header = header.into_response_header()?;
                s.write_response_header(Box::new(header)).await
            }
        }
    }

    pub async fn write_response_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        match self {
            Session::H1(s) => s.write_response_body(data, end).await,
            Session::H2(s) => s.write_response_body(data, end).await,
        }
    }

    /// The status of the answer written, if one was.
    pub fn response_status(&self) -> Option<u16> {
        match self {
            Session::H1(s) => s.response_status(),
            Session::H2(s) => s.response_written().map(|r| r.status.as_u16()),
        }
    }

    pub fn set_keepalive(&mut self, seconds: Option<u64>) {
        match self {
            Session::H1(s) => s.set_keepalive(seconds),
            Session::H2(s) => s.set_keepalive(seconds),
        }
    }

    pub fn get_keepalive(&self) -> Option<u64> {
        match self {
            Session::H1(s) => s.get_keepalive(),
            Session::H2(s) => s.get_keepalive(),
        }
    }

    pub async fn shutdown(&mut self) {
        match self {
            Session::H1(s) => s.shutdown().await,
            Session::H2(s) => s.shutdown().await,
        }
    }
}
