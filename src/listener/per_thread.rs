//! A proxied listener served by `server.threads` threads that share nothing
//! per request: each thread has its own single-threaded tokio runtime and its
//! own listening socket on the same address (`SO_REUSEPORT`, so the kernel
//! spreads new connections over them), and serves every connection it
//! accepted from start to finish, upstream connections included
//! (`proxy::pool` keeps idle ones per thread).
//!
//! A shared work-stealing runtime (`server.work_stealing = true`, pingora's
//! own listening service) hands readiness events and tasks between threads
//! and parks and wakes workers that a proxy's short requests keep busy only
//! in bursts; pingora's no-steal mode accepts on one thread and spawns each
//! connection on a random other one. Both cost CPU on every request
//! (measured in bench/results/analysis.md).
//!
//! pingora still runs the process: this is one of its services, started and
//! stopped with the others, and TLS is its rustls acceptor.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::Stream;
use pingora::protocols::l4::listener::Listener;
use pingora::server::ListenFds;
use pingora::server::ShutdownWatch;
use pingora::services::Service;
use pingora::services::listening::Service as ListeningService;
use prometheus::IntGauge;
use socket2::{Domain, Protocol, Socket, Type};

/// Connections waiting to be accepted, per socket (pingora's value).
const BACKLOG: i32 = 65535;
/// A TLS handshake not done by then is dropped (pingora's value).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Linux's errno for "too many open files".
const EMFILE: i32 = 24;

thread_local! {
    /// This thread's place among its listener's workers; `None` on threads
    /// that are not per-thread workers (a shared runtime's, the background's).
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// `memgate_runtime_tasks` for one listener: the live tasks of the runtime a
/// request ran on, or with a runtime per thread, the sum over the listener's
/// threads as each last reported (a leak shows whichever thread has it).
pub struct RuntimeTasks {
    gauge: IntGauge,
    per_worker: Box<[AtomicI64]>,
}

impl RuntimeTasks {
    pub fn new(gauge: IntGauge, threads: usize) -> Self {
        RuntimeTasks {
            gauge,
            per_worker: (0..threads).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    /// Called after each request, on the runtime that served it.
    pub fn record(&self) {
        let alive = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks() as i64;
        match WORKER.get().and_then(|i| self.per_worker.get(i)) {
            Some(slot) => {
                slot.store(alive, Ordering::Relaxed);
                self.gauge.set(
                    self.per_worker
                        .iter()
                        .map(|n| n.load(Ordering::Relaxed))
                        .sum(),
                );
            }
            None => self.gauge.set(alive),
        }
    }
}

/// `count` listening sockets on `addr`, all with `SO_REUSEPORT`.
///
/// The address is first bound once without that option and released: any
/// other socket on the port fails that bind, so memgate does not quietly
/// share the port and its clients with a program already listening there.
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    drop(std::net::TcpListener::bind(addr)?);
    (0..count)
        .map(|_| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            // IPV6_V6ONLY stays the system's default, as with pingora's
            // listeners: `[::]` also takes IPv4 clients on Linux.
            socket.bind(&addr.into())?;
            socket.listen(BACKLOG)?;
            socket.set_nonblocking(true)?;
            Ok(socket.into())
        })
        .collect()
}

/// The pingora service that runs one listener's threads.
pub struct PerThread<A> {
    name: String,
    sockets: Vec<std::net::TcpListener>,
    tls: Option<Arc<pingora::listeners::tls::Acceptor>>,
    app: Arc<A>,
}

impl<A> PerThread<A> {
    /// One thread per socket in `sockets` (from [`bind`]).
    pub fn new(
        name: &str,
        sockets: Vec<std::net::TcpListener>,
        tls: Option<TlsSettings>,
        app: A,
    ) -> Self {
        PerThread {
            name: name.to_string(),
            sockets,
            tls: tls.map(|settings| Arc::new(settings.build())),
            app: Arc::new(app),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Service for PerThread<A> {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        for (index, socket) in std::mem::take(&mut self.sockets).into_iter().enumerate() {
            let (app, tls, stop) = (self.app.clone(), self.tls.clone(), shutdown.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{index}", self.name))
                .spawn(move || serve_thread(socket, tls, app, stop, index));
            if let Err(e) = spawned {
                // Without its threads the listener would accept nothing.
                tracing::error!(listener = %self.name, error = %e, "cannot start a worker thread");
                std::process::exit(1);
            }
        }
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        // As pingora's own listening service does once its accept loops end:
        // kept-alive connections waiting for a request close now.
        self.app.cleanup().await;
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// The service's own runtime only waits for the stop; the work is done
    /// on the threads started above.
    fn threads(&self) -> Option<usize> {
        Some(1)
    }
}

/// One worker thread: accepts on its socket until the stop, and keeps running
/// the connections it has until the process ends (the graceful stop in
/// `server` waits for in-flight requests, then exits).
fn serve_thread<A: ServerApp + Send + Sync + 'static>(
    socket: std::net::TcpListener,
    tls: Option<Arc<pingora::listeners::tls::Acceptor>>,
    app: Arc<A>,
    shutdown: ShutdownWatch,
    index: usize,
) {
    WORKER.set(Some(index));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a worker thread's runtime");
            std::process::exit(1);
        }
    };
    runtime.block_on(async move {
        match tokio::net::TcpListener::from_std(socket) {
            Ok(listener) => accept_loop(Listener::from(listener), tls, app, shutdown).await,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch a listening socket");
                std::process::exit(1);
            }
        }
        std::future::pending::<()>().await;
    });
}

async fn accept_loop<A: ServerApp + Send + Sync + 'static>(
    listener: Listener,
    tls: Option<Arc<pingora::listeners::tls::Acceptor>>,
    app: Arc<A>,
    mut shutdown: ShutdownWatch,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
                continue;
            }
        };
        let mut stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // Out of file descriptors: accept would fail again at once.
                if e.raw_os_error() == Some(EMFILE) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay() {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let (app, tls, shutdown) = (app.clone(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            let stream = match tls {
                None => Box::new(stream) as Stream,
                Some(tls) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.tls_handshake(stream)).await {
                        Ok(Ok(tls_stream)) => Box::new(tls_stream),
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            // pingora's own per-connection loop (a stream handed back is
            // served again).
            ListeningService::<A>::handle_event(stream, app, shutdown).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sockets_share_the_port_with_each_other_only() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = taken.local_addr().unwrap();
        assert!(bind(busy, 2).is_err(), "joined a port another socket holds");
        drop(taken);

        let sockets = bind(busy, 2).unwrap();
        assert_eq!(sockets.len(), 2);
        assert!(
            std::net::TcpListener::bind(busy).is_err(),
            "another socket bound beside the workers"
        );
        assert!(
            bind(busy, 1).is_err(),
            "a second set joined the workers' port"
        );
    }
}
