//! A diagnosis for `bench/run.sh`: the cheapest HTTP/1 reverse
//! proxy tokio allows, to learn what a hand-written serving layer could reach
//! next to nginx on this machine before anyone proposes one. No auth, no
//! policy, bodies only with `Content-Length`, no chunked encoding: a floor,
//! not a proxy to deploy.
//!
//! Each of `threads` OS threads runs its own single-threaded runtime with its
//! own `SO_REUSEPORT` listener and its own idle upstream connections, as
//! nginx's workers do (`shared` instead: one multi-threaded runtime).
//!
//!   cargo run --release --example tokio_floor -- <listen> <upstream> [threads] [shared]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const MAX_HEAD: usize = 16 * 1024;

/// Reads one message head (and its `Content-Length` body) into `buf`,
/// returning its total length, or `None` at a clean end of stream.
async fn read_message(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    response: bool,
) -> std::io::Result<Option<usize>> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let parsed = if response {
            let mut r = httparse::Response::new(&mut headers);
            match r.parse(buf).map_err(|_| bad("bad response"))? {
                httparse::Status::Complete(head) => Some((head, body_len(r.headers)?)),
                httparse::Status::Partial => None,
            }
        } else {
            let mut r = httparse::Request::new(&mut headers);
            match r.parse(buf).map_err(|_| bad("bad request"))? {
                httparse::Status::Complete(head) => Some((head, body_len(r.headers)?)),
                httparse::Status::Partial => None,
            }
        };
        if let Some((head, body)) = parsed {
            let total = head + body;
            while buf.len() < total {
                if read_more(stream, buf).await? == 0 {
                    return Err(bad("truncated body"));
                }
            }
            return Ok(Some(total));
        }
        if buf.len() > MAX_HEAD {
            return Err(bad("head too large"));
        }
        if read_more(stream, buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(bad("truncated head"))
            };
        }
    }
}

fn body_len(headers: &[httparse::Header<'_>]) -> std::io::Result<usize> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut body = 0;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("bad content-length"))?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("chunked bodies are not supported by this floor"));
        }
    }
    Ok(body)
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.reserve(8192);
    stream.read_buf(buf).await
}

type Idle = Rc<RefCell<Vec<TcpStream>>>;

async fn exchange(
    upstream: SocketAddr,
    idle: &Idle,
    request: &[u8],
    response: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let pooled = idle.borrow_mut().pop();
    let mut conn = match pooled {
        Some(c) => c,
        None => {
            let c = TcpStream::connect(upstream).await?;
            c.set_nodelay(true)?;
            c
        }
    };
    conn.write_all(request).await?;
    let n = read_message(&mut conn, response, true)
        .await?
        .ok_or_else(|| std::io::Error::other("upstream closed"))?;
    idle.borrow_mut().push(conn);
    Ok(n)
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, idle: Idle) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let (mut req, mut resp) = (Vec::with_capacity(4096), Vec::with_capacity(4096));
    while let Some(n) = read_message(&mut client, &mut req, false).await? {
        resp.clear();
        let m = exchange(upstream, &idle, &req[..n], &mut resp).await?;
        client.write_all(&resp[..m]).await?;
        req.drain(..n);
    }
    Ok(())
}

fn listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(listen: SocketAddr, upstream: SocketAddr) {
    let listener = listener(listen).expect("listen");
    let idle: Idle = Rc::default();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        tokio::task::spawn_local(serve(client, upstream, idle.clone()));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: tokio_floor <listen> <upstream> [threads] [shared]");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("listen address");
    let upstream: SocketAddr = upstream.parse().expect("upstream address");
    let threads: usize = args.next().map_or(2, |t| t.parse().expect("threads"));
    if args.next().as_deref() == Some("shared") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = listener(listen).expect("listen");
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    // One upstream connection per client connection: no
                    // shared pool to lock in the multi-threaded variant.
                    let mut up = TcpStream::connect(upstream).await?;
                    up.set_nodelay(true)?;
                    client.set_nodelay(true)?;
                    let (mut req, mut resp) = (Vec::new(), Vec::new());
                    while let Some(n) = read_message(&mut client, &mut req, false).await? {
                        resp.clear();
                        up.write_all(&req[..n]).await?;
                        let m = read_message(&mut up, &mut resp, true)
                            .await?
                            .ok_or_else(|| std::io::Error::other("upstream closed"))?;
                        client.write_all(&resp[..m]).await?;
                        req.drain(..n);
                    }
                    Ok::<_, std::io::Error>(())
                });
            }
        });
        return;
    }
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, accept_loop(listen, upstream));
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}
