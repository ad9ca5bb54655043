//! The gate as a proxied listener's [`Handler`]: each request whose head was
//! read is answered or streamed, counted and logged.

use super::*;

/// The gate is what a proxied listener does with each request.
impl Handler for Gate {
    /// One request whose head was read, answered or streamed, counted and
    /// logged. Whether the connection may carry another request.
    async fn serve(&self, session: &mut Session, shutdown: &ShutdownWatch) -> bool {
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

    /// A request head that could not be read: 400 when it was malformed,
    /// then the connection is closed.
    async fn refuse_unreadable(&self, session: &mut Session, e: &Error) {
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
}
