//! Connection-level abuse: clients that trickle their headers (slow-loris),
//! more connections than `server.max_connections`, and ten thousand idle
//! connections held open at once.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes (or `limit` passes) and returns what arrived
/// and whether the connection was closed.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&all).into(), true),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&all).into(), false),
        }
    }
}

/// Reads one response head and body of known length from a kept-alive connection.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&all)
        );
        all.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&all).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if all.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn gate_with(server: &str) -> (TestDb, Upstream, Memgate) {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    let mut cfg = MemgateConfig::new(&db.url, &upstream.url());
    cfg.server = format!("grace_period_secs = 1\n{server}");
    let gate = Memgate::start(cfg).await;
    (db, upstream, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_heads_are_cut_off_and_honest_slow_clients_are_not() {
    let (_db, upstream, gate) = gate_with("header_timeout_secs = 2").await;
    let token = gate.create_token("alice", &[]);
    let request_line = "GET /memories?user_id=alice HTTP/1.1\r\nHost: x\r\n";

    // A head trickled one header every 400 ms never completes: 408, closed.
    let mut loris = TcpStream::connect(gate.mem0).await.unwrap();
    loris.write_all(request_line.as_bytes()).await.unwrap();
    let started = Instant::now();
    let trickle = async {
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            if loris
                .write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    trickle.await;
    let (answer, closed) = read_to_close(&mut loris, Duration::from_secs(5)).await;
    assert!(closed, "slow-loris connection still open");
    assert!(answer.starts_with("HTTP/1.1 408"), "answer: {answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "cut off only after {:?}",
        started.elapsed()
    );

    // A connection that never sends anything is closed too.
    let mut silent = TcpStream::connect(gate.mem0).await.unwrap();
    let (answer, closed) = read_to_close(&mut silent, Duration::from_secs(8)).await;
    assert!(
        closed && answer.starts_with("HTTP/1.1 408"),
        "answer: {answer:?}"
    );

    // A slow but honest client (head in three pieces within the limit) is served.
    let mut honest = TcpStream::connect(gate.mem0).await.unwrap();
    for piece in [
        "GET /memories?user_id=alice HTTP/1.1\r\n".to_string(),
        format!("Host: x\r\nX-MCP-Token: {token}\r\n"),
        "\r\n".to_string(),
    ] {
        honest.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let response = read_response(&mut honest).await;
    assert_eq!(status_of(&response), 200, "{response}");

    // On the same kept-alive connection, a second head trickled slowly is cut off as well.
    honest.write_all(request_line.as_bytes()).await.unwrap();
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        if honest
            .write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
    let (_, closed) = read_to_close(&mut honest, Duration::from_secs(5)).await;
    assert!(
        closed,
        "slow second head on a kept-alive connection not cut off"
    );

    // Nothing of the slow heads reached the upstream; the honest request did.
    let forwarded = upstream.requests();
    assert_eq!(forwarded.len(), 1, "forwarded: {forwarded:?}");
    assert!(
        gate.metric(
            "memgate_connections_refused_total{listener=\"mem0\",reason=\"header_timeout\"}"
        )
        .await
            >= 3.0
    );
}

/// Sends `prefix`, then a head trickled one header every 400 ms; returns
/// whether memgate closed the connection before the trickle ended.
async fn trickled_head_cut_off(stream: &mut TcpStream, prefix: &str) -> bool {
    let request_line = "GET /memories?user_id=alice HTTP/1.1\r\nHost: x\r\n";
    if stream
        .write_all(format!("{prefix}{request_line}").as_bytes())
        .await
        .is_err()
    {
        return true;
    }
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        if stream
            .write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
            .await
            .is_err()
        {
            return true;
        }
    }
    read_to_close(stream, Duration::from_secs(5)).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_lines_before_a_head_do_not_stop_its_deadline() {
    let (_db, upstream, gate) = gate_with("header_timeout_secs = 2").await;
    let token = gate.create_token("alice", &[]);

    // On a new connection.
    let mut first = TcpStream::connect(gate.mem0).await.unwrap();
    assert!(
        trickled_head_cut_off(&mut first, "\r\n\r\n").await,
        "a slow head after empty lines was not cut off"
    );

    // On a kept-alive connection, after an answered request.
    let mut kept = TcpStream::connect(gate.mem0).await.unwrap();
    kept.write_all(
        format!("GET /memories?user_id=alice HTTP/1.1\r\nHost: x\r\nX-MCP-Token: {token}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let response = read_response(&mut kept).await;
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(
        trickled_head_cut_off(&mut kept, "\n\n").await,
        "a slow second head after empty lines was not cut off"
    );
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the honest request was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_get_503_until_one_closes() {
    let (_db, _upstream, gate) = gate_with("max_connections = 5\nheader_timeout_secs = 30").await;
    let token = gate.create_token("alice", &[]);
    let get =
        format!("GET /memories?user_id=alice HTTP/1.1\r\nHost: x\r\nX-MCP-Token: {token}\r\n\r\n");
    // Connections left by the start-up probe must be gone before counting.
    within(Duration::from_secs(5), || async {
        gate.metric("memgate_connections_open{listener=\"mem0\"}")
            .await
            == 0.0
    })
    .await
    .expect("start-up probe connections closed");

    let mut held = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(gate.mem0).await.unwrap();
        stream.write_all(get.as_bytes()).await.unwrap();
        assert_eq!(status_of(&read_response(&mut stream).await), 200);
        held.push(stream);
    }
    assert_eq!(
        gate.metric("memgate_connections_open{listener=\"mem0\"}")
            .await,
        5.0
    );

    let mut sixth = TcpStream::connect(gate.mem0).await.unwrap();
    let (answer, closed) = read_to_close(&mut sixth, Duration::from_secs(5)).await;
    assert!(
        closed && answer.starts_with("HTTP/1.1 503"),
        "answer: {answer:?}"
    );
    assert!(
        answer.contains("too many connections"),
        "answer: {answer:?}"
    );
    assert_eq!(
        gate.metric("memgate_connections_refused_total{listener=\"mem0\",reason=\"limit\"}")
            .await,
        1.0
    );
    // The limit is per listener: the MCP listener still accepts.
    let other = reqwest::get(gate.mcp_url("/mcp")).await.unwrap();
    assert_eq!(other.status(), 401);

    // The kept-alive connections still work, and one closing frees a slot.
    held[0].write_all(get.as_bytes()).await.unwrap();
    assert_eq!(status_of(&read_response(&mut held[0]).await), 200);
    drop(held.pop());
    let served = within(Duration::from_secs(5), || async {
        let Ok(mut stream) = TcpStream::connect(gate.mem0).await else {
            return false;
        };
        if stream.write_all(get.as_bytes()).await.is_err() {
            return false;
        }
        let (answer, _) = read_to_close(&mut stream, Duration::from_millis(500)).await;
        answer.starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(served.is_some(), "a freed slot was not reused");
}

/// Raises this process's open-file limit to its hard limit; children (memgate)
/// inherit it.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

async fn connect_many(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    // In waves, so the listen backlog never overflows into SYN retries.
    for wave in 0..count.div_ceil(500) {
        let n = 500.min(count - wave * 500);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            set.spawn(TcpStream::connect(addr));
        }
        while let Some(done) = set.join_next().await {
            streams.push(done.unwrap().expect("connect"));
        }
    }
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_leave_memgate_responsive_and_bounded() {
    const IDLE: usize = 10_000;
    let fd_limit = raise_fd_limit();
    // Each side (this test and memgate) holds one descriptor per connection.
    assert!(
        fd_limit >= IDLE as u64 + 1_000,
        "this test needs an open-file limit of at least {} (ulimit -Hn is {fd_limit})",
        IDLE + 1_000
    );
    let (_db, _upstream, gate) =
        gate_with("max_connections = 10100\nheader_timeout_secs = 60").await;
    let token = gate.create_token("alice", &[]);
    let client = reqwest::Client::new();
    // Reads the whole body so that the one pooled connection is reused.
    let get = || async {
        let response = client
            .get(gate.mem0_url("/memories?user_id=alice"))
            .header("X-MCP-Token", &token)
            .send()
            .await
            .expect("request");
        let status = response.status();
        response.bytes().await.expect("body");
        status
    };
    assert_eq!(get().await, 200);
    let pid = gate.pid();
    let (rss_before, fds_before) = (rss_kib(pid), open_fds(pid));
    let open = || gate.metric("memgate_connections_open{listener=\"mem0\"}");
    let open_before = open().await;

    let idle = connect_many(gate.mem0, IDLE).await;
    within(Duration::from_secs(20), || async {
        open().await >= open_before + IDLE as f64
    })
    .await
    .expect("memgate accepted every idle connection");

    // Still answers promptly with ten thousand connections parked on it.
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(get().await, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "slow answer: {:?}",
            started.elapsed()
        );
    }
    let rss_held = rss_kib(pid);
    let per_connection = (rss_held.saturating_sub(rss_before) * 1024) / IDLE as u64;
    eprintln!(
        "{IDLE} idle connections: RSS {rss_before} → {rss_held} KiB, {per_connection} bytes each"
    );
    assert!(
        per_connection < 16 * 1024,
        "{per_connection} bytes per idle connection (RSS {rss_before} → {rss_held} KiB)"
    );

    drop(idle);
    within(Duration::from_secs(20), || async {
        // (+1: reqwest may have opened a second pooled connection meanwhile)
        open().await <= open_before + 1.0 && open_fds(pid) <= fds_before + 10
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "connections not released: {} fds (was {fds_before}), memgate_connections_open {}",
            open_fds(pid),
            futures::executor::block_on(open())
        )
    });
    assert_eq!(get().await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_kept_alive_connections_are_closed_and_busy_ones_are_not() {
    let (_db, _upstream, gate) = gate_with("keepalive_idle_secs = 1").await;
    let token = gate.create_token("alice", &[]);
    let request =
        format!("GET /memories?user_id=alice HTTP/1.1\r\nHost: x\r\nX-MCP-Token: {token}\r\n\r\n");
    let open_before = gate
        .metric("memgate_connections_open{listener=\"mem0\"}")
        .await;

    // Requests every 400 ms keep a connection in use well past the idle limit.
    let mut busy = TcpStream::connect(gate.mem0).await.unwrap();
    for _ in 0..6 {
        busy.write_all(request.as_bytes()).await.unwrap();
        assert!(read_response(&mut busy).await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    assert_eq!(
        gate.metric("memgate_connections_open{listener=\"mem0\"}")
            .await,
        open_before + 1.0,
        "the busy connection is counted"
    );

    // Left idle after its requests, it is closed (not after the head timeout
    // of 10 s: the idle limit), and no longer counted.
    let idle_from = Instant::now();
    let (rest, closed) = read_to_close(&mut busy, Duration::from_secs(5)).await;
    assert!(closed && rest.is_empty(), "idle connection: {rest:?}");
    assert!(
        idle_from.elapsed() < Duration::from_secs(4),
        "{:?}",
        idle_from.elapsed()
    );
    let released = within(Duration::from_secs(2), || async {
        gate.metric("memgate_connections_open{listener=\"mem0\"}")
            .await
            <= open_before
    })
    .await;
    assert!(released.is_some(), "the closed connection is still counted");
}

/// Names of the threads of process `pid`.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|name| name.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The default serving model: each of `threads` worker threads has its own
/// listening socket on the address (SO_REUSEPORT) and serves the connections
/// it accepts. All of them are served, and no other process can bind the
/// port beside them and take a share of the clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_thread_listens_and_the_port_stays_memgates_alone() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    let mut cfg = MemgateConfig::new(&db.url, &upstream.url());
    cfg.threads = 2;
    let gate = Memgate::start(cfg).await;
    let token = gate.create_token("alice", &[]);

    let names = thread_names(gate.pid());
    for worker in ["mem0-0", "mem0-1", "mcp-0", "mcp-1"] {
        assert!(
            names.iter().any(|n| n == worker),
            "no thread {worker}: {names:?}"
        );
    }

    let request =
        format!("GET /memories?user_id=alice HTTP/1.1\r\nHost: x\r\nX-MCP-Token: {token}\r\n\r\n");
    let mut clients = connect_many(gate.mem0, 32).await;
    for round in 0..3 {
        for client in clients.iter_mut() {
            client.write_all(request.as_bytes()).await.unwrap();
        }
        for client in clients.iter_mut() {
            let answer = read_response(client).await;
            assert_eq!(status_of(&answer), 200, "round {round}: {answer}");
        }
    }
    // Each open connection is a live task on its thread's runtime; the gauge
    // adds up the threads (one thread's count alone would be about half).
    let tasks = gate
        .metric("memgate_runtime_tasks{listener=\"mem0\"}")
        .await;
    assert!(
        tasks >= 32.0,
        "runtime tasks {tasks} for 32 open connections"
    );
    let seen = upstream.requests();
    assert_eq!(seen.len(), 96, "the upstream got {} requests", seen.len());
    assert!(
        seen.iter().all(|r| r.uri == "/memories?user_id=alice"),
        "{:?}",
        seen.iter().map(|r| &r.uri).collect::<Vec<_>>()
    );

    // A second memgate for the same mem0 address refuses to start.
    let [mcp, admin] = free_ports::<2>();
    let second = gate.config_path.with_file_name("second.toml");
    let text = std::fs::read_to_string(&gate.config_path)
        .unwrap()
        .replace(&gate.mcp.to_string(), &format!("127.0.0.1:{mcp}"))
        .replace(&gate.admin.to_string(), &format!("127.0.0.1:{admin}"));
    std::fs::write(&second, text).unwrap();
    let refused = err(&cli_within(&second, &["serve"], Duration::from_secs(20)));
    assert!(
        refused.contains(&format!("mem0.listen: cannot listen on {}", gate.mem0)),
        "{refused}"
    );

    // The first one still serves.
    let client = &mut clients[0];
    client.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(status_of(&read_response(client).await), 200);
}

/// `work_stealing = true` serves through pingora's listening service and one
/// shared runtime: the same requests, the same ownership rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_work_stealing_runtime_serves_the_same_requests() {
    let (_db, upstream, gate) = gate_with("work_stealing = true").await;
    let token = gate.create_token("alice", &[]);
    let names = thread_names(gate.pid());
    assert!(
        !names.iter().any(|n| n == "mem0-0"),
        "per-thread workers with work_stealing = true: {names:?}"
    );

    let client = reqwest::Client::new();
    let listed = client
        .get(gate.mem0_url("/memories?user_id=bob"))
        .header("X-MCP-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 403, "another user's memories");
    let created = client
        .post(gate.mem0_url("/memories"))
        .header("X-MCP-Token", &token)
        .json(&serde_json::json!({"messages": [{"role": "user", "content": "tea"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let pinged = client
        .post(gate.mcp_url("/mcp"))
        .header("X-MCP-Token", &token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(pinged.status(), 200);

    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(seen[0].uri, "/memories");
    assert_eq!(body["user_id"], "alice", "{body}");
    assert_eq!(seen[1].uri, "/mcp");
}
