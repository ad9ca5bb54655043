//! Hostile input at the HTTP layer: request smuggling attempts, oversized
//! headers, odd credentials. Each is refused and none reaches the upstream.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes and returns the status code of the first response (0 if the
/// connection was closed without one).
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_and_malformed_framing_never_reach_the_upstream() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    let gate = Memgate::start(MemgateConfig::new(&db.url, &upstream.url())).await;
    let token = gate.create_token("alice", &[]);
    let h = format!("X-MCP-Token: {token}\r\nHost: x\r\n");
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let cases: Vec<(&str, String)> = vec![
        (
            "CL and TE together",
            format!(
                "POST /mcp HTTP/1.1\r\n{h}Content-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
            ),
        ),
        (
            "two different Content-Lengths",
            format!(
                "POST /mcp HTTP/1.1\r\n{h}Content-Type: application/json\r\nContent-Length: {}\r\nContent-Length: 5\r\n\r\n{body}",
                body.len()
            ),
        ),
        (
            "obs-fold header continuation",
            format!(
                "POST /mcp HTTP/1.1\r\n{h}Content-Type: application/json\r\nX-Folded: a\r\n b\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        ),
        (
            "space before the colon",
            format!(
                "POST /mcp HTTP/1.1\r\n{h}Content-Length : {}\r\n\r\n{body}",
                body.len()
            ),
        ),
        (
            "invalid chunk size",
            format!(
                "POST /mcp HTTP/1.1\r\n{h}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{body}\r\n0\r\n\r\n"
            ),
        ),
        (
            "Transfer-Encoding other than chunked",
            format!(
                "POST /mcp HTTP/1.1\r\n{h}Content-Type: application/json\r\nTransfer-Encoding: gzip\r\n\r\n{body}"
            ),
        ),
    ];
    for (what, request) in &cases {
        upstream.clear();
        let status = raw(gate.mcp, request.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reached: Vec<_> = upstream.requests().iter().map(|r| r.uri.clone()).collect();
        assert!(
            status == 0 || (400..500).contains(&status),
            "{what}: answered {status}"
        );
        assert!(
            reached.is_empty(),
            "{what}: reached the upstream: {reached:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_odd_credentials_are_refused() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    let gate = Memgate::start(MemgateConfig::new(&db.url, &upstream.url())).await;
    let token = gate.create_token("alice", &[]);
    let huge = "a".repeat(200 * 1024);
    let status = raw(
        gate.mem0,
        format!(
            "GET /memories HTTP/1.1\r\nHost: x\r\nX-MCP-Token: {token}\r\nX-Big: {huge}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(
        status == 0 || (400..500).contains(&status),
        "a 200 KiB header was answered {status}"
    );
    let long_uri = format!("/memories?q={}", "b".repeat(200 * 1024));
    let status = raw(
        gate.mem0,
        format!("GET {long_uri} HTTP/1.1\r\nHost: x\r\nX-MCP-Token: {token}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        status == 0 || (400..500).contains(&status),
        "a 200 KiB URI was answered {status}"
    );
    for auth in [
        format!("Basic {token}"),
        format!("Bearer  {token} x"),
        format!("Bearer\t{token}"),
        "Bearer".to_string(),
        format!("bearer {token}\u{0}"),
        format!("Token {token}"),
    ] {
        let request = format!("GET /memories HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n");
        let status = raw(gate.mem0, request.as_bytes()).await;
        assert!(
            status == 0 || (400..500).contains(&status),
            "{auth:?} answered {status}"
        );
    }
    let invalid_utf8 = b"GET /memories HTTP/1.1\r\nHost: x\r\nX-MCP-Token: mcp_\xff\xfe\r\n\r\n";
    assert_eq!(raw(gate.mem0, invalid_utf8).await, 401);
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
}
