//! Idle keep-alive connections to one upstream, for memgate's own exchanges.
//!
//! pingora's pool parks every returned connection in a freshly spawned task
//! that polls it and arms an idle timer, and taking it back wakes that task and
//! waits for it: a spawn, a timer and two cross-task wake-ups per request,
//! plus a `getpeername`. Here an idle connection just sits in a list. Whether
//! the upstream closed it meanwhile is checked when it is taken (one
//! non-blocking read), and connections idle longer than the idle timeout are
//! dropped then or when another connection is returned.
//!
//! Idle connections are kept per thread: a socket is registered with the
//! runtime of the thread that dialled it, and with `server.work_stealing =
//! false` every thread has its own runtime. A connection used from another
//! one would have each of its readiness events cross threads.

use std::pin::pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;

struct Idle {
    stream: Stream,
    /// The peer it was dialled for (`HttpPeer::reuse_hash`): a re-resolved
    /// upstream address must not get the old address's connections.
    peer: u64,
    since: Instant,
}

/// Lists per pool; threads beyond this many share them (still correct, only
/// slower when their runtimes differ).
const SHARDS: usize = 16;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's list, the same in every pool.
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

pub struct IdlePool {
    /// Per thread, oldest first; taken from the back, so busy connections
    /// stay warm and the ones at the front age out.
    shards: [Mutex<Vec<Idle>>; SHARDS],
    /// Idle connections kept per thread.
    max_idle: usize,
    idle_timeout: Duration,
}

impl IdlePool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        IdlePool {
            shards: std::array::from_fn(|_| Mutex::new(Vec::new())),
            max_idle,
            idle_timeout,
        }
    }

    /// The calling thread's list.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.shards[SHARD.with(|s| *s)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently returned connection to `peer` that is still open.
    pub fn take(&self, peer: u64) -> Option<Stream> {
        loop {
            let idle = self.lock().pop()?;
            if idle.peer != peer || idle.since.elapsed() > self.idle_timeout {
                continue;
            }
            let mut stream = idle.stream;
            if still_open(&mut stream) {
                return Some(stream);
            }
        }
    }

    /// Keeps `stream` for the next request to `peer`.
    pub fn put(&self, stream: Stream, peer: u64) {
        let now = Instant::now();
        let dropped: Vec<Idle>;
        {
            let mut idle = self.lock();
            let expired = idle
                .iter()
                .take_while(|i| now.duration_since(i.since) > self.idle_timeout)
                .count();
            let excess = (idle.len() + 1).saturating_sub(self.max_idle);
            dropped = idle.drain(..expired.max(excess)).collect();
            idle.push(Idle {
                stream,
                peer,
                since: now,
            });
        }
        // Closing sockets outside the lock.
        drop(dropped);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// An idle HTTP/1 connection has nothing to read: data or EOF means the
/// upstream closed it or broke the protocol, and it must not carry a request.
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // `unconstrained`: tokio's cooperative budget must not make a ready read
    // look pending.
    let read = pin!(tokio::task::unconstrained(stream.read(&mut byte)));
    read.poll(&mut Context::from_waker(Waker::noop()))
        .is_pending()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: memgate's end as a pingora stream, and the server's end.
    async fn pair() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (server, _) = accepted.unwrap();
        let client = pingora::protocols::l4::stream::Stream::from(client.unwrap());
        (Box::new(client), server)
    }

    #[tokio::test]
    async fn takes_the_newest_open_connection_for_the_peer() {
        let pool = IdlePool::new(8, Duration::from_secs(60));
        let (a, _sa) = pair().await;
        let (b, _sb) = pair().await;
        let (a_id, b_id) = (a.id(), b.id());
        pool.put(a, 1);
        pool.put(b, 1);
        assert_eq!(pool.take(1).map(|s| s.id()), Some(b_id));
        assert_eq!(pool.take(1).map(|s| s.id()), Some(a_id));
        assert!(pool.take(1).is_none());
    }

    #[tokio::test]
    async fn skips_connections_the_upstream_closed_or_wrote_to() {
        let pool = IdlePool::new(8, Duration::from_secs(60));
        let (open, _keep) = pair().await;
        let open_id = open.id();
        let (closed, server_closed) = pair().await;
        let (chatty, mut server_chatty) = pair().await;
        pool.put(open, 1);
        pool.put(closed, 1);
        pool.put(chatty, 1);
        drop(server_closed);
        server_chatty
            .write_all(b"HTTP/1.1 200 OK\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.take(1).map(|s| s.id()), Some(open_id));
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn another_thread_does_not_get_the_connection() {
        let pool = std::sync::Arc::new(IdlePool::new(8, Duration::from_secs(60)));
        let (a, _sa) = pair().await;
        let a_id = a.id();
        pool.put(a, 1);
        let elsewhere = pool.clone();
        let taken = std::thread::spawn(move || elsewhere.take(1).is_some())
            .join()
            .unwrap();
        assert!(!taken, "each thread has its own idle connections");
        assert_eq!(pool.take(1).map(|s| s.id()), Some(a_id));
    }

    #[tokio::test]
    async fn another_peer_does_not_get_the_connection() {
        let pool = IdlePool::new(8, Duration::from_secs(60));
        let (a, _sa) = pair().await;
        pool.put(a, 1);
        assert!(pool.take(2).is_none());
        assert_eq!(pool.len(), 0, "a connection to an old address is dropped");
    }

    #[tokio::test]
    async fn bounded_and_idle_connections_expire() {
        let pool = IdlePool::new(2, Duration::from_millis(100));
        let mut servers = Vec::new();
        for _ in 0..3 {
            let (s, server) = pair().await;
            servers.push(server);
            pool.put(s, 1);
        }
        assert_eq!(pool.len(), 2, "the oldest is dropped beyond max_idle");
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (fresh, _sf) = pair().await;
        pool.put(fresh, 1);
        assert_eq!(pool.len(), 1, "returning a connection sweeps expired ones");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(pool.take(1).is_none(), "an expired connection is not used");
    }
}
