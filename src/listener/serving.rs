//! Serving connections: pingora hands each accepted connection over, HTTP/1
//! requests are read with memgate's own code (HTTP/2 through pingora), each
//! goes to the listener's [`Handler`], and keep-alive connections stop when
//! the listener stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::prelude::*;
use pingora::protocols::{ALPN, Stream};
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use super::Session;
use super::h1::{H1Session, NextRequest};

/// Waking keep-alive connections that wait for their next request when the
/// listener stops (pingora calls `http_cleanup`), so they close at once.
#[derive(Default)]
struct Stopping {
    stopped: AtomicBool,
    notify: Notify,
}

impl Stopping {
    fn begin(&self) {
        self.stopped.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    async fn wait(&self) {
        let notified = self.notify.notified();
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

/// What a listener does with each request whose head it read. Called with
/// static dispatch: a request's future is not boxed on its way in.
pub trait Handler: Send + Sync + 'static {
    /// Answers or streams one request. Whether the connection may carry
    /// another request.
    fn serve(
        &self,
        session: &mut Session,
        shutdown: &ShutdownWatch,
    ) -> impl Future<Output = bool> + Send;

    /// Answers a request head that could not be read (the connection is then
    /// closed).
    fn refuse_unreadable(
        &self,
        session: &mut Session,
        e: &Error,
    ) -> impl Future<Output = ()> + Send;
}

/// A listener's connections: HTTP/1 through memgate's own codec and request
/// loop, HTTP/2 (ALPN) through pingora's HTTP app machinery. pingora still
/// accepts the connections, terminates TLS and runs the graceful stop.
///
/// memgate does not use pingora's `ProxyHttp`: every request here is either
/// answered by memgate (refusals, the buffered mem0 and JSON-RPC exchanges)
/// or streamed through its own upstream client. Nor pingora's HTTP/1 codec:
/// its case-preserving header copies and per-call timers cost more than
/// memgate's own decisions on a request (bench/results/analysis.md).
pub struct Listening<H>(Arc<Connections<H>>);

struct Connections<H> {
    handler: H,
    stopping: Stopping,
    /// How long a kept-alive connection may wait for its next request.
    keepalive_idle: Duration,
    /// The largest request head read, in bytes.
    max_head: usize,
}

impl<H: Handler> Listening<H> {
    pub fn new(handler: H, keepalive_idle: Duration, max_head: usize) -> Self {
        Listening(Arc::new(Connections {
            handler,
            stopping: Stopping::default(),
            keepalive_idle,
            max_head,
        }))
    }
}

#[async_trait]
impl<H: Handler> ServerApp for Listening<H> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return ServerApp::process_new(&self.0, stream, shutdown).await;
        }
        self.0.serve_http1(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.0.stopping.begin();
    }
}

/// HTTP/2 streams, as pingora hands them over one by one.
#[async_trait]
impl<H: Handler> HttpServerApp for Connections<H> {
    async fn process_new_http(
        self: &Arc<Self>,
        mut h2: pingora::protocols::http::ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let read = tokio::select! {
            biased;
            read = h2.read_request() => read,
            () = self.stopping.wait() => return None,
        };
        let mut session = Session::H2(Box::new(h2));
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                self.handler.refuse_unreadable(&mut session, &e).await;
                return None;
            }
        }
        if self.handler.serve(&mut session, shutdown).await
            && let Session::H2(h2) = session
        {
            let _ = h2.finish().await;
        }
        None
    }

    async fn http_cleanup(&self) {
        self.stopping.begin();
    }
}

impl<H: Handler> Connections<H> {
    /// Every request of an HTTP/1 connection, until either side closes, the
    /// connection idles past `server.keepalive_idle_secs`, or the listener stops.
    async fn serve_http1(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let mut h1 = Box::new(H1Session::new(stream, self.max_head));
        let mut first = true;
        loop {
            // The first request's head was read by the connection guard.
            if !first {
                let next = tokio::select! {
                    biased;
                    next = h1.wait_for_next(self.keepalive_idle) => next,
                    () = self.stopping.wait() => false,
                };
                if !next {
                    break;
                }
            }
            first = false;
            let read = tokio::select! {
                biased;
                read = h1.read_request() => read,
                () = self.stopping.wait() => break,
            };
            let mut session = Session::H1(h1);
            match read {
                Ok(NextRequest::Ready) => {}
                Ok(NextRequest::Closed) => return,
                Err(e) => {
                    self.handler.refuse_unreadable(&mut session, &e).await;
                    return;
                }
            }
            let reuse = self.handler.serve(&mut session, shutdown).await;
            let Session::H1(back) = session else {
                unreachable!("an HTTP/1 session stays one")
            };
            h1 = back;
            if !reuse || !h1.finish().await {
                break;
            }
        }
        h1.shutdown().await;
    }
}
