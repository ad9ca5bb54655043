//! A complete request/response exchange with an upstream, for requests memgate
//! must rewrite or inspect whole (mem0 JSON routes, owner lookups), and for
//! the streams the listeners pass on as they are.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pingora::connectors::TransportConnector;
use pingora::prelude::*;

use super::client::ClientConn;
use super::pool::IdlePool;
use super::target::{IDLE_TIMEOUT, UpstreamTarget};
use crate::http1::request::RequestHead;
use crate::listener::Session;

/// What follows the request header.
pub enum Outgoing<'a> {
    /// A body memgate holds, or none.
    Whole(Option<Bytes>),
    /// The client's body, streamed up as it arrives.
    From(&'a mut Session),
}

/// How far a failed send got: whether the whole request was written, and
/// whether any of the client's body was taken (it cannot be sent again).
#[derive(Default)]
struct Progress {
    sent: bool,
    pulled: bool,
}

/// Interim (1xx) answers skipped before a final one; more is an error.
const MAX_INTERIM: usize = 16;

/// Idle connections kept per upstream and thread: more than a busy listener
/// keeps in flight, so bursts reuse rather than dial.
const MAX_IDLE: usize = 256;

/// A response head from the upstream: its status and end-to-end header
/// lines as received (`http1::head::take_response`).
pub type UpstreamHead = crate::http1::head::Response;

pub struct Exchanged {
    pub header: UpstreamHead,
    pub body: Bytes,
}

/// An exchange whose response body is read chunk by chunk (streams); its
/// head is handed out beside it.
pub struct OpenExchange<'a> {
    client: &'a UpstreamClient,
    http: ClientConn,
    /// The peer's `reuse_hash`, for the pool.
    peer: u64,
}

impl OpenExchange<'_> {
    /// The next piece of the body as it arrives; `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        self.http.read_body_bytes().await
    }

    /// Closes the connection rather than keeping it: an event stream's
    /// upstream usually hangs up after it, and the idle list would hold the
    /// half-closed socket until its next use.
    pub async fn close(self) {
        self.http.shutdown().await;
    }

    /// Returns the connection to the pool if the response was read to its
    /// end and the upstream allows another request on it; else closes it.
    pub async fn finish(self) {
        let (client, peer) = (self.client, self.peer);
        if let Some(stream) = self.http.reusable() {
            client.pool.put(stream, peer);
        }
    }
}

pub struct UpstreamClient {
    /// Dials new connections (and TLS); idle ones are kept in `pool`.
    connector: TransportConnector,
    pool: IdlePool,
    target: Arc<UpstreamTarget>,
}

impl UpstreamClient {
    pub fn new(target: Arc<UpstreamTarget>) -> Self {
        UpstreamClient {
            connector: TransportConnector::new(None),
            pool: IdlePool::new(MAX_IDLE, IDLE_TIMEOUT),
            target,
        }
    }

    pub fn target(&self) -> &UpstreamTarget {
        &self.target
    }

    /// Sends `req` with `body` and reads the whole response, at most
    /// `max_response` bytes of body.
    pub async fn exchange(
        &self,
        req: RequestHead,
        body: Option<Bytes>,
        max_response: usize,
    ) -> Result<Exchanged> {
        let (header, mut open) = self.open(req, body).await?;
        let mut buf = BytesMut::new();
        while let Some(chunk) = open.next_chunk().await? {
            if buf.len() + chunk.len() > max_response {
                open.finish().await;
                return Error::e_explain(
                    ErrorType::HTTPStatus(502),
                    format!("upstream response larger than {max_response} bytes"),
                );
            }
            buf.extend_from_slice(&chunk);
        }
        open.finish().await;
        Ok(Exchanged {
            header,
            body: buf.freeze(),
        })
    }

    /// Sends `req` with `body` and returns the response head once it is in;
    /// the body is then read with [`OpenExchange::next_chunk`].
    pub async fn open(
        &self,
        req: RequestHead,
        body: Option<Bytes>,
    ) -> Result<(UpstreamHead, OpenExchange<'_>)> {
        self.open_with(req, Outgoing::Whole(body)).await
    }

    /// As [`Self::open`], with the body from `body`. A pooled connection the
    /// upstream closed while idle is retried once on a fresh one, unless the
    /// client's body was already taken; see [`retry_on_fresh`] for the rest.
    /// Every request leaves here, so the configured `upstream_headers` are
    /// set here: proxied requests, owner lookups and the CLI's alike.
    pub async fn open_with<'s>(
        &'s self,
        mut req: RequestHead,
        mut body: Outgoing<'_>,
    ) -> Result<(UpstreamHead, OpenExchange<'s>)> {
        self.target.headers().apply(&mut req);
        let shared = self.target.shared_peer().await?;
        let (peer, key) = (shared.peer, shared.key);
        // The common case, an idle pooled connection, stays a small future;
        // dialling (and maybe a TLS handshake) is boxed, paid only when needed.
        let (read_timeout, write_timeout) = (peer.options.read_timeout, peer.options.write_timeout);
        if let Some(stream) = self.pool.take(key) {
            let http = ClientConn::new(stream, read_timeout, write_timeout);
            let mut progress = Progress::default();
            let idempotent = is_idempotent(req.method());
            match self.send(http, &req, &mut body, key, &mut progress).await {
                Err(e) if retry_on_fresh(&e, &progress, idempotent) => {
                    tracing::debug!(error = %e, "pooled upstream connection was closed; retrying once");
                }
                done => return done,
            }
        }
        let stream = Box::pin(self.connector.new_stream(&*peer)).await?;
        let http = ClientConn::new(stream, read_timeout, write_timeout);
        let mut progress = Progress::default();
        Box::pin(self.send(http, &req, &mut body, key, &mut progress)).await
    }

    async fn send(
        &self,
        mut http: ClientConn,
        req: &RequestHead,
        body: &mut Outgoing<'_>,
        key: u64,
        progress: &mut Progress,
    ) -> Result<(UpstreamHead, OpenExchange<'_>)> {
        match body {
            Outgoing::Whole(body) => http.write_head(req, body.as_deref()).await?,
            // Each piece of the client's body must come within the listener's
            // read timeout, or the request ends with 408.
            Outgoing::From(client) => {
                http.write_head(req, None).await?;
                let limit = http.read_timeout();
                loop {
                    let read = client.read_request_body();
                    let chunk = match limit {
                        Some(limit) => tokio::time::timeout(limit, read).await.map_err(|_| {
                            Error::explain(ErrorType::ReadTimedout, "the client's body stalled")
                                .into_down()
                        })?,
                        None => read.await,
                    }
                    .map_err(|e| e.into_down())?;
                    let Some(chunk) = chunk else { break };
                    progress.pulled = true;
                    http.write_body(&chunk).await?;
                }
            }
        }
        http.finish_body().await?;
        progress.sent = true;
        // Interim answers (100, 102, 103) are skipped; a switch of
        // protocols nobody asked for (Upgrade is never forwarded) is refused.
        let head_request = req.method() == http::Method::HEAD;
        // A few interim answers are normal; an endless series is not.
        let mut interim = 0;
        loop {
            http.read_response(head_request).await?;
            match http.resp_header().map(|h| h.status.as_u16()) {
                None => {
                    return Error::e_explain(ErrorType::InvalidHTTPHeader, "no response header");
                }
                Some(101) => {
                    return Error::e_explain(
                        ErrorType::InvalidHTTPHeader,
                        "the upstream switched protocols unasked",
                    );
                }
                Some(100..=199) if interim < MAX_INTERIM => interim += 1,
                Some(100..=199) => {
                    return Error::e_explain(
                        ErrorType::InvalidHTTPHeader,
                        "the upstream sent interim answers without end",
                    );
                }
                Some(_) => break,
            }
        }
        let head = http
            .take_header()
            .or_err(ErrorType::InvalidHTTPHeader, "no response header")?;
        Ok((
            head,
            OpenExchange {
                client: self,
                http,
                peer: key,
            },
        ))
    }
}

/// Whether a request that failed on a pooled connection may be sent again on
/// a fresh one. A kept-alive connection the upstream closed while idle fails
/// like this before the request is read; but once the whole request was
/// written, the same errors can also mean the upstream died while handling
/// it, so only requests that are safe to repeat are retried then: a second
/// `POST /memories` would add every memory twice. Never when the client's
/// side failed (a fresh connection would not help) or when part of the
/// client's streamed body was taken (it cannot be sent again).
fn retry_on_fresh(e: &Error, progress: &Progress, idempotent: bool) -> bool {
    let closed = matches!(
        e.etype(),
        ErrorType::ConnectionClosed | ErrorType::WriteError | ErrorType::ReadError
    );
    let client_failed = *e.esource() == pingora::ErrorSource::Downstream;
    closed && !client_failed && !progress.pulled && (!progress.sent || idempotent)
}

/// RFC 9110 §9.2.2: methods whose repetition has the effect of one request.
fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_safe_to_repeat_are_retried_after_they_were_sent() {
        let closed = Error::new(ErrorType::ConnectionClosed);
        let read = Error::new(ErrorType::ReadError);
        let write = Error::new(ErrorType::WriteError);
        let timeout = Error::new(ErrorType::ReadTimedout);
        let at = |sent, pulled| Progress { sent, pulled };
        for e in [&closed, &read, &write] {
            assert!(
                retry_on_fresh(e, &at(false, false), false),
                "never reached the upstream"
            );
            assert!(retry_on_fresh(e, &at(true, false), true), "safe to repeat");
            assert!(
                !retry_on_fresh(e, &at(true, false), false),
                "may have been handled"
            );
            assert!(
                !retry_on_fresh(e, &at(false, true), true),
                "the client's body was partly taken"
            );
        }
        assert!(
            !retry_on_fresh(&timeout, &at(false, false), true),
            "not an idle close"
        );
        let client_closed = Error::new(ErrorType::ConnectionClosed).into_down();
        assert!(
            !retry_on_fresh(&client_closed, &at(false, false), true),
            "the client's side failed"
        );
        assert!(is_idempotent(&http::Method::GET) && is_idempotent(&http::Method::DELETE));
        assert!(!is_idempotent(&http::Method::POST) && !is_idempotent(&http::Method::PATCH));
    }
}
