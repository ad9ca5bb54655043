//! Connection-level defences in front of pingora's HTTP handling: a cap on
//! open connections per listener and a deadline for every request head
//! (slow-loris). pingora only times out each read (60 s), so a client trickling
//! one byte a minute could otherwise hold a connection, and its task, forever.
//!
//! `Guarded` wraps the proxy app. A new connection takes a permit or is turned
//! away with 503. Its first HTTP/1 request head is read here under the deadline
//! (408 when late) and replayed to pingora unchanged; later heads on a
//! kept-alive connection are read by pingora through `Counted`, which fails the
//! read once the deadline passes. HTTP/2 connections (ALPN) only take a permit:
//! their frames are pingora's business.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::metrics::METRICS;

/// The connection rules of one listener.
#[derive(Clone, Debug)]
pub struct ConnectionRules {
    /// Open connections allowed at once; 0 means no cap.
    pub max_connections: usize,
    /// Time a client gets to send a complete request head.
    pub header_timeout: Duration,
    /// Bytes of request head read here before pingora takes over (its own
    /// limits answer heads larger than this).
    pub max_head_bytes: usize,
}

/// The proxy app behind a connection cap and a request-head deadline.
pub struct Guarded<A> {
    inner: Arc<A>,
    rules: ConnectionRules,
    permits: Option<Arc<Semaphore>>,
    listener: &'static str,
}

impl<A> Guarded<A> {
    pub fn new(inner: A, rules: ConnectionRules, listener: &'static str) -> Self {
        let permits =
            (rules.max_connections > 0).then(|| Arc::new(Semaphore::new(rules.max_connections)));
        Guarded {
            inner: Arc::new(inner),
            rules,
            permits,
            listener,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // pingora keeps HTTP/1 connections inside one call; a stream handed
        // back is already counted.
        if stream.as_any().is::<Counted>() {
            return self.inner.process_new(stream, shutdown).await;
        }
        let permit = match &self.permits {
            None => None,
            Some(permits) => match permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    self.refused("limit");
                    refuse(stream, 503, "too many connections").await;
                    return None;
                }
            },
        };
        let http1 = !matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let mut conn = Box::new(Counted {
            inner: stream,
            replay: BytesMut::new(),
            phase: Phase::Body,
            watch_heads: http1,
            header_timeout: self.rules.header_timeout,
            listener: self.listener,
            _permit: permit,
            _open: OpenGauge::new(self.listener),
        });
        if http1 {
            match read_first_head(&mut conn, &self.rules, shutdown).await {
                Head::Ready => {}
                Head::Closed => return None,
                Head::TimedOut => {
                    self.refused("header_timeout");
                    tracing::info!(
                        listener = self.listener,
                        "request head not complete in time; connection closed"
                    );
                    refuse(conn, 408, "request header timeout").await;
                    return None;
                }
            }
        }
        self.inner.process_new(conn, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

impl<A> Guarded<A> {
    fn refused(&self, reason: &str) {
        count_refused(self.listener, reason);
    }
}

fn count_refused(listener: &str, reason: &str) {
    METRICS
        .connections_refused
        .with_label_values(&[listener, reason])
        .inc();
}

enum Head {
    /// A complete head (or as much as this layer reads) is buffered.
    Ready,
    /// The client went away, or the server is stopping, before sending anything.
    Closed,
    TimedOut,
}

/// Reads a new connection's first request head, which must be complete within
/// `header_timeout` of the connection being accepted.
async fn read_first_head(
    conn: &mut Counted,
    rules: &ConnectionRules,
    shutdown: &ShutdownWatch,
) -> Head {
    let deadline = Instant::now() + rules.header_timeout;
    let mut blank = BlankLine::default();
    let mut stopping = shutdown.clone();
    loop {
        conn.replay.reserve(1024);
        let before = conn.replay.len();
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, conn.inner.read_buf(&mut conn.replay)) => read,
            _ = stopping.changed(), if conn.replay.is_empty() => return Head::Closed,
        };
        match read {
            Err(_) => return Head::TimedOut,
            // Let pingora see (and answer) a head cut short by a half-close.
            Ok(Ok(0)) if !conn.replay.is_empty() => return Head::Ready,
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Closed,
            Ok(Ok(_)) => {
                if blank.feed(&conn.replay[before..]) || conn.replay.len() >= rules.max_head_bytes {
                    return Head::Ready;
                }
            }
        }
    }
}

/// Finds the blank line that ends a request head, across reads. A bare-LF
/// blank line counts too, so a head the parser would take (or refuse) is
/// never held back. Empty lines before any head content do not count: the
/// parser skips them, and a client sending them first must not escape the
/// head deadline.
#[derive(Default)]
struct BlankLine {
    after_newline: bool,
    content: bool,
}

impl BlankLine {
    /// Only line ends matter: found with `memchr`, and the bytes between
    /// two of them only asked whether they hold more than `\r` (this reads
    /// every request head a kept-alive connection receives).
    fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut start = 0;
        for newline in memchr::memchr_iter(b'\n', bytes) {
            self.line(&bytes[start..newline]);
            if self.after_newline && self.content {
                return true;
            }
            self.after_newline = true;
            start = newline + 1;
        }
        self.line(&bytes[start..]);
        false
    }

    /// Bytes of a line (no `\n` among them).
    fn line(&mut self, bytes: &[u8]) {
        if bytes.iter().any(|&b| b != b'\r') {
            self.after_newline = false;
            self.content = true;
        }
    }
}

/// Answers with a small JSON error and closes, without waiting long on a
/// client that does not read.
async fn refuse(mut stream: Stream, status: u16, message: &str) {
    let reason = match status {
        408 => "Request Timeout",
        _ => "Service Unavailable",
    };
    let body = format!("{{\"error\":\"{message}\"}}");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.flush().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    Shutdown::shutdown(stream.as_mut()).await;
}

/// Keeps the open-connection gauge right however the connection ends.
#[derive(Debug)]
struct OpenGauge(&'static str);

impl OpenGauge {
    fn new(listener: &'static str) -> Self {
        METRICS
            .connections_open
            .with_label_values(&[listener])
            .inc();
        OpenGauge(listener)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        METRICS.connections_open.with_label_values(&[self.0]).dec();
    }
}

/// Where an HTTP/1 connection is between requests, as seen from its bytes.
enum Phase {
    /// A response was written; the next byte read starts a new request head.
    Idle,
    /// A request head is arriving and must be complete by the deadline.
    Head {
        blank: BlankLine,
        deadline: Pin<Box<Sleep>>,
    },
    /// The head is complete: body bytes (or HTTP/2 frames) are not timed here.
    Body,
}

/// Whether written bytes start an interim (1xx) response head.
fn is_interim_head(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && (bytes.starts_with(b"HTTP/1.1 1") || bytes.starts_with(b"HTTP/1.0 1"))
}

/// A client connection holding its permit. It replays the first head read by
/// `read_first_head`, then times each later request head on a kept-alive
/// connection, which pingora reads itself.
struct Counted {
    inner: Stream,
    replay: BytesMut,
    phase: Phase,
    watch_heads: bool,
    header_timeout: Duration,
    listener: &'static str,
    _permit: Option<OwnedSemaphorePermit>,
    _open: OpenGauge,
}

impl std::fmt::Debug for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted")
            .field("inner", &self.inner)
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Counted {
    /// Once a response is on its way, the next bytes read are a new request;
    /// not after an interim `100 Continue`, which asks for the body.
    fn wrote(&mut self, first: &[u8], written: &Poll<io::Result<usize>>) {
        if self.watch_heads
            && matches!(written, Poll::Ready(Ok(n)) if *n > 0)
            && !is_interim_head(first)
        {
            self.phase = Phase::Idle;
        }
    }

    fn observe_read(&mut self, bytes: &[u8]) {
        if !self.watch_heads || bytes.is_empty() {
            return;
        }
        if matches!(self.phase, Phase::Idle) {
            self.phase = Phase::Head {
                blank: BlankLine::default(),
                deadline: Box::pin(tokio::time::sleep(self.header_timeout)),
            };
        }
        if let Phase::Head { blank, .. } = &mut self.phase
            && blank.feed(bytes)
        {
            self.phase = Phase::Body;
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.observe_read(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Phase::Head { deadline, .. } = &mut this.phase
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    count_refused(this.listener, "header_timeout");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not complete in time",
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(buf, &written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        this.wrote(first, &written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Counted {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(self.inner.as_mut()).await
    }
}

impl UniqueID for Counted {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Counted {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Counted {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Counted {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Counted {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Counted {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.replay.len() >= buf.len() {
            buf.copy_from_slice(&self.replay[..buf.len()]);
            return Ok(true);
        }
        if self.replay.is_empty() {
            return self.inner.try_peek(buf).await;
        }
        // Part of what a peek would see is already buffered here.
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::{BlankLine, is_interim_head};

    #[test]
    fn only_interim_answers_leave_the_body_untimed() {
        assert!(is_interim_head(b"HTTP/1.1 100 Continue\r\n\r\n"));
        assert!(is_interim_head(b"HTTP/1.0 103 Early Hints\r\n"));
        assert!(!is_interim_head(b"HTTP/1.1 200 OK\r\n"));
        assert!(!is_interim_head(b"HTTP/1.1 1"));
        assert!(!is_interim_head(b"{\"results\":[]}"));
    }

    fn ends(chunks: &[&[u8]]) -> bool {
        let mut blank = BlankLine::default();
        chunks.iter().any(|c| blank.feed(c))
    }

    #[test]
    fn a_head_ends_at_the_first_blank_line_with_or_without_cr() {
        assert!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]));
        assert!(ends(&[b"GET / HTTP/1.1\nHost: a\n\n"]));
        assert!(ends(&[b"GET / HTTP/1.1\r\nHost: a\n\r\n"]));
        assert!(!ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]));
        assert!(!ends(&[b"GET / HTTP/1.1\r\nX-Slow: aaaa"]));
        assert!(!ends(&[b""]));
    }

    #[test]
    fn empty_lines_before_a_head_do_not_end_it() {
        assert!(!ends(&[b"\r\n\r\n"]));
        assert!(!ends(&[b"\n\n", b"\r\n"]));
        assert!(!ends(&[b"\r\n\r\nGET / HTTP/1.1\r\n"]));
        assert!(ends(&[b"\r\n\r\nGET / HTTP/1.1\r\n", b"\r\n"]));
    }

    proptest::proptest! {
        /// The same answer as reading byte by byte, however the bytes are split.
        #[test]
        fn line_ends_are_found_as_byte_by_byte(
            bytes in proptest::collection::vec(proptest::sample::select(b"\r\nA ".to_vec()), 0..40),
            cut in 0usize..40,
        ) {
            let mut after_newline = false;
            let mut content = false;
            let mut expected = false;
            for &b in &bytes {
                match b {
                    b'\n' if after_newline && content => { expected = true; break; }
                    b'\n' => after_newline = true,
                    b'\r' => {}
                    _ => { after_newline = false; content = true; }
                }
            }
            let cut = cut.min(bytes.len());
            proptest::prop_assert_eq!(ends(&[&bytes[..cut], &bytes[cut..]]), expected);
        }
    }

    #[test]
    fn a_blank_line_split_across_reads_is_found() {
        assert!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n", b"\r", b"\n"]));
        assert!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n", b"\r\n"]));
        assert!(!ends(&[b"GET / HTTP/1.1\r\n", b"Host: a\r\n", b"X: b"]));
    }
}
