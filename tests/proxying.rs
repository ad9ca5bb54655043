//! End to end: streaming and upstream failures through a real memgate.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_reach_the_client_one_by_one() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    let mut cfg = MemgateConfig::new(&db.url, &upstream.url());
    cfg.mem0_extra = "allowed_routes = [\"GET /sse\"]".into();
    let gate = Memgate::start(cfg).await;
    let token = gate.create_token("alice", &[]);
    for url in [gate.mcp_url("/sse"), gate.mem0_url("/sse")] {
        let start = Instant::now();
        let resp = reqwest::Client::new()
            .get(&url)
            .header("X-MCP-Token", &token)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut stream = resp.bytes_stream();
        let mut received = String::new();
        let mut first_at = None;
        while let Some(chunk) = stream.next().await {
            received.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if first_at.is_none() && received.contains("data: first") {
                first_at = Some(start.elapsed());
            }
        }
        let first_at = first_at.expect("first event");
        assert!(
            first_at < Duration::from_millis(500),
            "{url}: first event after {first_at:?}"
        );
        assert!(received.contains("data: second"), "{received}");
        assert!(start.elapsed() >= SSE_PAUSE);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_gives_502_in_each_listeners_format() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gate = Memgate::start(MemgateConfig::new(&db.url, &dead)).await;
    let token = gate.create_token("alice", &[]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let start = Instant::now();
    let resp = client
        .get(gate.mem0_url("/memories"))
        .header("X-MCP-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("upstream"),
        "{body}"
    );

    let resp = client
        .post(gate.mcp_url("/mcp"))
        .header("X-MCP-Token", &token)
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["jsonrpc"], "2.0");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream")
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "502 took {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_times_out_with_504() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    // The harness sets mem0.read_timeout_secs = 2; the upstream answers after 3 s.
    let mut cfg = MemgateConfig::new(&db.url, &upstream.url());
    cfg.mem0_extra = "allowed_routes = [\"GET /slow\"]".into();
    let gate = Memgate::start(cfg).await;
    let token = gate.create_token("alice", &[]);
    // Both paths: a policy route (buffered exchange) and an allow-listed one (streamed).
    for (path, slow) in [("/memories", true), ("/slow", false)] {
        let mut req = reqwest::Client::new()
            .get(gate.mem0_url(path))
            .header("X-MCP-Token", &token);
        if slow {
            req = req.header("x-test-slow", "1");
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 504, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["detail"].as_str().unwrap().contains("in time"),
            "{path}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_reports_health_readiness_and_metrics() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    let gate = Memgate::start(MemgateConfig::new(&db.url, &upstream.url())).await;
    let get = |path: &str| reqwest::get(format!("http://{}{path}", gate.admin));
    assert_eq!(get("/health").await.unwrap().status(), 200);
    assert_eq!(get("/ready").await.unwrap().status(), 200);
    let _ = reqwest::get(gate.mem0_url("/memories")).await.unwrap();
    // A request is counted once its answer is written, which may be just
    // after the client has read it.
    let counted = "memgate_requests_total{listener=\"mem0\",route=\"denied\",status=\"401\"} 1";
    let metrics = || async { get("/metrics").await.unwrap().text().await.unwrap() };
    within(Duration::from_secs(2), || async {
        metrics().await.contains(counted)
    })
    .await;
    let text = metrics().await;
    for name in [
        "memgate_requests_total{listener=\"mem0\",route=\"denied\",status=\"401\"} 1",
        "memgate_auth_decisions_total{auth_method=\"none\",reason=\"missing\",result=\"deny\"} 1",
        "# HELP memgate_request_duration_seconds",
        "memgate_build_info{version=",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert_eq!(get("/nope").await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_stream_finish_and_an_idle_memgate_exits_at_once() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    let mut cfg = MemgateConfig::new(&db.url, &upstream.url());
    cfg.server = "grace_period_secs = 10".into();
    let mut gate = Memgate::start(cfg).await;
    let token = gate.create_token("alice", &[]);
    let resp = reqwest::Client::new()
        .get(gate.mcp_url("/sse"))
        .header("X-MCP-Token", &token)
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("first"));
    // Mid-stream: SIGTERM. The stream still delivers its second event.
    let started = Instant::now();
    let pid = gate.pid();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let mut rest = String::new();
    while let Some(chunk) = stream.next().await {
        rest.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(rest.contains("second"), "the stream was cut: {rest:?}");
    let status = gate.terminate().await;
    assert!(status.success(), "{status:?}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM with a 2 s stream"
    );

    // Idle: gone within 2 s.
    let mut idle = Memgate::start(MemgateConfig::new(&db.url, &upstream.url())).await;
    let started = Instant::now();
    let status = idle.terminate().await;
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "idle exit took {:?}",
        started.elapsed()
    );
}

/// Reads from `stream` until a whole response head is in; returns it.
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut byte))
            .await
            .expect("a response head within 3 s")
            .expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_expect_100_continue_get_it_before_they_send_their_body() {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    let mut cfg = MemgateConfig::new(&db.url, &upstream.url());
    cfg.mem0_extra = "allowed_routes = [\"POST /upload\"]".into();
    cfg.mcp_extra = "allowed_paths = [\"/stream/upload\"]".into();
    let gate = Memgate::start(cfg).await;
    let token = gate.create_token("alice", &[]);
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    // A streamed route on each listener, and a JSON-RPC POST memgate reads whole.
    for (addr, path, body) in [
        (gate.mcp, "/stream/upload", "streamed body"),
        (gate.mem0, "/upload", "streamed body"),
        (gate.mcp, "/mcp", ping),
    ] {
        upstream.clear();
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nX-MCP-Token: {token}\r\n\
             Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let interim = read_head(&mut conn).await;
        assert!(interim.starts_with("HTTP/1.1 100"), "{path}: {interim:?}");
        conn.write_all(body.as_bytes()).await.unwrap();
        let last = read_head(&mut conn).await;
        assert!(last.starts_with("HTTP/1.1 200"), "{path}: {last:?}");
        let seen = upstream.requests();
        assert_eq!(seen.len(), 1, "{path}: {seen:?}");
        assert_eq!(seen[0].body, body.as_bytes(), "{path}");
        assert_eq!(
            seen[0].header("expect"),
            None,
            "{path}: Expect is hop-by-hop"
        );
    }
}
