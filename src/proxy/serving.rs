//! Serving connections: pingora hands each accepted connection to the gate,
//! which reads HTTP/1 requests with memgate's own code (HTTP/2 through
//! pingora) and stops keep-alive connections when the listener stops.

use super::*;

/// Waking keep-alive connections that wait for their next request when the
/// listener stops (pingora calls `http_cleanup`), so they close at once.
#[derive(Default)]
pub struct Stopping {
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

/// A listener's connections: HTTP/1 through memgate's own codec and request
/// loop, HTTP/2 (ALPN) through pingora's HTTP app machinery. pingora still
/// accepts the connections, terminates TLS and runs the graceful stop.
///
/// memgate does not use pingora's `ProxyHttp`: every request here is either
/// answered by memgate (refusals, the buffered mem0 and JSON-RPC exchanges)
/// or streamed through its own upstream client. Nor pingora's HTTP/1 codec:
/// its case-preserving header copies and per-call timers cost more than
/// memgate's own decisions on a request (bench/results/analysis.md).
pub struct Listening(Arc<Gate>);

impl Listening {
    pub fn new(gate: Gate) -> Self {
        Listening(Arc::new(gate))
    }
}

#[async_trait]
impl ServerApp for Listening {
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
impl HttpServerApp for Gate {
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
                self.refuse_unreadable(&mut session, &e).await;
                return None;
            }
        }
        if self.serve(&mut session, shutdown).await
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

impl Gate {
    /// Every request of an HTTP/1 connection, until either side closes, the
    /// connection idles past `server.keepalive_idle_secs`, or the listener stops.
    pub(super) async fn serve_http1(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let idle = std::time::Duration::from_secs(self.shared.keepalive_idle_secs);
        let max_head = self.shared.max_uri_bytes + self.shared.max_header_bytes + 4096;
        let mut h1 = Box::new(h1::server::H1Session::new(stream, max_head));
        let mut first = true;
        loop {
            // The first request's head was read by the connection guard.
            if !first {
                let next = tokio::select! {
                    biased;
                    next = h1.wait_for_next(idle) => next,
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
                Ok(h1::server::NextRequest::Ready) => {}
                Ok(h1::server::NextRequest::Closed) => return,
                Err(e) => {
                    self.refuse_unreadable(&mut session, &e).await;
                    return;
                }
            }
            let reuse = self.serve(&mut session, shutdown).await;
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

    /// A request head that could not be read: 400 when it was malformed,
    /// then the connection is closed.
    pub(super) async fn refuse_unreadable(&self, session: &mut Session, e: &Error) {
        session.set_keepalive(None);
        let answer = match e.etype() {
            ErrorType::InvalidHTTPHeader => Some((400, "Malformed request")),
            ErrorType::HTTPStatus(431) => {
                Some((431, "Request headers too large (limits.max_header_bytes)"))
            }
            _ => None,
        };
        if let Some((status, message)) = answer {
            let _ = errors::respond_error(session, self.listener, status, message).await;
        }
        tracing::debug!(listener = self.listener.as_str(), error = %e, "unreadable request head");
        session.shutdown().await;
    }

    /// One request whose head was read, answered or streamed, counted and
    /// logged. Whether the connection may carry another request.
    pub(super) async fn serve(&self, session: &mut Session, shutdown: &ShutdownWatch) -> bool {
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        let mut ctx = RequestCtx::new(&self.shared, self.client_ip(session));
        let outcome = self.handle(session, &mut ctx).await;
        let started = session.response_status().is_some();
        if let Err(e) = &outcome {
            self.fail(session, e).await;
        }
        self.log(session, outcome.as_ref().err().map(|e| &**e), &ctx);
        // An answer cut short must not look complete: no final chunk (HTTP/1
        // closes, HTTP/2 resets the stream), and the connection is not reused.
        if ctx.cut_short || (outcome.is_err() && started) {
            session.shutdown().await;
            return false;
        }
        session.get_keepalive().is_some() || session.is_http2()
    }
}
