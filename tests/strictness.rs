//! Unknown paths, parameters and framings are refused, not forwarded: each
//! request here is answered by memgate (status and error shape checked) and
//! the upstream is checked to have received nothing but the controls.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::mem0::Mem0;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

/// Sends raw bytes on a fresh connection and returns everything answered
/// until memgate closes it (or 5 s pass).
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A memgate whose mem0 listener fronts a fake mem0, with the given `[mem0]`
/// keys, and tokens for alice (read, write) and root (admin).
async fn mem0_gate(mem0_extra: &str) -> (TestDb, Mem0, Memgate, String, String) {
    let db = TestDb::new(Backend::Sqlite).await;
    let mem0 = Mem0::start().await;
    let mut cfg = MemgateConfig::new(&db.url, &mem0.url());
    cfg.mem0_extra = mem0_extra.to_string();
    let gate = Memgate::start(cfg).await;
    let alice = gate.create_token("alice", &[]);
    let root = gate.create_token("root", &["--permissions", "admin"]);
    (db, mem0, gate, alice, root)
}

/// `(status, detail)` of a mem0-listener answer, which must be FastAPI-shaped.
async fn detail(resp: reqwest::Response, what: &str) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp
        .json()
        .await
        .unwrap_or_else(|e| panic!("{what}: no JSON body: {e}"));
    let detail = body["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not {{\"detail\": ...}}: {body}"))
        .to_string();
    (status, detail)
}

/// `(status, message)` of an MCP-listener refusal, which must be JSON-RPC.
async fn jsonrpc_error(resp: reqwest::Response, what: &str) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp
        .json()
        .await
        .unwrap_or_else(|e| panic!("{what}: no JSON body: {e}"));
    assert_eq!(body["jsonrpc"], "2.0", "{what}: {body}");
    assert!(body["error"]["code"].is_i64(), "{what}: {body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error message: {body}"))
        .to_string();
    (status, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem0_routes_forward_only_the_query_parameters_mem0_defines() {
    let (_db, mem0, gate, alice, root) = mem0_gate("").await;
    let memory = mem0.seed("alice", "alice's note");
    mem0.clear();
    let client = http();
    let get = |path: String, token: &str| {
        client
            .get(gate.mem0_url(&path))
            .header("X-MCP-Token", token)
            .send()
    };

    // The filter that would pick the owner on mem0's side never gets there.
    let filters = "filters=%7B%22user_id%22%3A%22bob%22%7D";
    let resp = get(format!("/memories?{filters}"), &alice).await.unwrap();
    let (status, detail_text) = detail(resp, "filters").await;
    assert_eq!(status, 400, "{detail_text}");
    assert!(detail_text.contains("\"filters\""), "{detail_text}");
    for query in [
        "user_id=alice&filters=x",
        "user_id=alice&limit=5",
        "user_id=alice&page=2",
        "USER_ID=alice",
        "user_id=alice&_method=DELETE",
    ] {
        let resp = get(format!("/memories?{query}"), &alice).await.unwrap();
        let (status, detail_text) = detail(resp, query).await;
        assert_eq!(status, 400, "{query}: {detail_text}");
    }
    // Routes that take no query parameter refuse even a harmless one,
    // before the owner is looked up.
    let resp = get(format!("/memories/{memory}?user_id=alice"), &alice)
        .await
        .unwrap();
    let (status, detail_text) = detail(resp, "GET /memories/{id}?user_id").await;
    assert_eq!(status, 400, "{detail_text}");
    assert!(
        detail_text.contains("\"user_id\"") && detail_text.contains("no query parameters"),
        "{detail_text}"
    );
    let resp = client
        .post(gate.mem0_url("/search?top_k=3"))
        .header("X-MCP-Token", &alice)
        .json(&serde_json::json!({"query": "note"}))
        .send()
        .await
        .unwrap();
    let (status, detail_text) = detail(resp, "POST /search?top_k").await;
    assert_eq!(status, 400, "{detail_text}");
    assert!(detail_text.contains("\"top_k\""), "{detail_text}");
    // The route's permission is decided before its query: 403, then 400.
    let delete = |token: &str| {
        client
            .delete(gate.mem0_url("/memories?user_id=alice&top_k=1"))
            .header("X-MCP-Token", token)
            .send()
    };
    assert_eq!(delete(&alice).await.unwrap().status(), 403);
    let (status, detail_text) = detail(delete(&root).await.unwrap(), "admin delete").await;
    assert_eq!(status, 400, "{detail_text}");
    assert!(
        mem0.requests().is_empty(),
        "refused requests reached mem0: {:?}",
        mem0.requests()
    );

    // What mem0 defines goes through, in memgate's canonical spelling.
    let resp = get(
        "/memories?user_id=alice&agent_id=a&run_id=r&top_k=5&show_expired=true".into(),
        &alice,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = mem0.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].uri,
        "/memories?user_id=alice&agent_id=a&run_id=r&top_k=5&show_expired=true"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem0_2026_routes_are_404_unless_allow_listed() {
    let routes = [
        ("GET", "/entities"),
        ("DELETE", "/entities/user/bob"),
        ("GET", "/api-keys"),
        ("POST", "/api-keys"),
        ("POST", "/auth/login"),
        ("POST", "/auth/register"),
        ("GET", "/auth/me"),
        ("GET", "/requests"),
        ("GET", "/configure/providers"),
        ("POST", "/generate-instructions"),
    ];
    let (_db, mem0, gate, _alice, root) = mem0_gate("").await;
    let client = http();
    for (method, path) in routes {
        let resp = client
            .request(method.parse().unwrap(), gate.mem0_url(path))
            .header("X-MCP-Token", &root)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let (status, detail_text) = detail(resp, path).await;
        assert_eq!(
            (status, detail_text.as_str()),
            (404, "Not Found"),
            "{method} {path}"
        );
    }
    assert!(mem0.requests().is_empty(), "{:?}", mem0.requests());
    drop(gate);

    let (_db, mem0, gate, alice, _root) =
        mem0_gate(r#"allowed_routes = ["GET /entities", "* /auth"]"#).await;
    for (method, path) in [
        ("GET", "/entities"),
        ("POST", "/auth/login"),
        ("GET", "/auth/me"),
    ] {
        mem0.clear();
        let resp = client
            .request(method.parse().unwrap(), gate.mem0_url(path))
            .header("X-MCP-Token", &alice)
            .send()
            .await
            .unwrap();
        // The fake mem0 has no such route: its own 404 proves it was asked.
        assert_eq!(resp.status(), 404, "{method} {path}");
        let seen = mem0.requests();
        assert_eq!(seen.len(), 1, "{method} {path}: {seen:?}");
        assert_eq!(
            (seen[0].method.as_str(), seen[0].uri.as_str()),
            (method, path)
        );
    }
    mem0.clear();
    let resp = client
        .delete(gate.mem0_url("/entities/user/bob"))
        .header("X-MCP-Token", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(mem0.requests().is_empty(), "{:?}", mem0.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_overrides_are_refused_on_both_listeners() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    let mut cfg = MemgateConfig::new(&db.url, &upstream.url());
    cfg.mem0_extra = r#"allowed_routes = ["GET /docs"]"#.into();
    cfg.mcp_extra = r#"allowed_paths = ["/health"]"#.into();
    let gate = Memgate::start(cfg).await;
    let token = gate.create_token("alice", &[]);
    let client = http();
    let headers = [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
        "X-Original-Method",
        "x_original_method",
        "X-Http-Method_Override",
    ];
    for name in headers {
        for path in ["/memories", "/docs"] {
            let resp = client
                .get(gate.mem0_url(path))
                .header("X-MCP-Token", &token)
                .header(name, "DELETE")
                .send()
                .await
                .unwrap();
            let (status, detail_text) = detail(resp, name).await;
            assert_eq!(status, 400, "mem0 {path} {name}: {detail_text}");
            assert!(detail_text.contains("override"), "{detail_text}");
        }
        let resp = client
            .post(gate.mcp_url("/mcp"))
            .header("X-MCP-Token", &token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header(name, "DELETE")
            .body(PING)
            .send()
            .await
            .unwrap();
        let (status, message) = jsonrpc_error(resp, name).await;
        assert_eq!(status, 400, "mcp {name}: {message}");
    }
    for query in ["_method=DELETE", "x=1&%5Fmethod=PUT", "_METHOD=delete"] {
        for path in ["/memories", "/docs"] {
            let resp = client
                .get(gate.mem0_url(&format!("{path}?{query}")))
                .header("X-MCP-Token", &token)
                .send()
                .await
                .unwrap();
            let (status, detail_text) = detail(resp, query).await;
            assert_eq!(status, 400, "mem0 {path}?{query}: {detail_text}");
            assert!(detail_text.contains("_method"), "{detail_text}");
        }
        for path in ["/mcp", "/health"] {
            let resp = client
                .get(gate.mcp_url(&format!("{path}?{query}")))
                .header("X-MCP-Token", &token)
                .send()
                .await
                .unwrap();
            let (status, message) = jsonrpc_error(resp, query).await;
            assert_eq!(status, 400, "mcp {path}?{query}: {message}");
        }
    }
    assert!(
        upstream.requests().is_empty(),
        "overrides reached the upstream: {:?}",
        upstream.requests()
    );

    // Controls: the same requests without an override are forwarded.
    for url in [gate.mem0_url("/docs?x=1"), gate.mcp_url("/health?x=1")] {
        let resp = client
            .get(&url)
            .header("X-MCP-Token", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{url}");
    }
    let seen: Vec<_> = upstream.requests().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(seen, ["/docs?x=1", "/health?x=1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_paths_that_are_not_endpoints_are_404_unless_allowed() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    let mut cfg = MemgateConfig::new(&db.url, &upstream.url());
    cfg.mcp_extra =
        r#"allowed_paths = ["/health", "/.well-known/oauth-protected-resource"]"#.into();
    let gate = Memgate::start(cfg).await;
    let token = gate.create_token("alice", &[]);
    let client = http();
    for path in [
        "/MCP",
        "/Mcp/",
        "/mcp;x",
        "/mcpx",
        "/other",
        "/",
        "/health/",
        "/Health",
        "/health/x",
        "/healthz",
        "/.well-known/oauth-authorization-server",
        "/stream/upload",
    ] {
        let resp = client
            .get(gate.mcp_url(path))
            .header("X-MCP-Token", &token)
            .send()
            .await
            .unwrap();
        let (status, message) = jsonrpc_error(resp, path).await;
        assert_eq!(status, 404, "{path}: {message}");
        let resp = client
            .post(gate.mcp_url(path))
            .header("X-MCP-Token", &token)
            .header("content-type", "application/json")
            .body(PING)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "POST {path}");
    }
    // Authentication still comes first.
    let resp = client.get(gate.mcp_url("/other")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        upstream.requests().is_empty(),
        "unknown paths reached the upstream: {:?}",
        upstream.requests()
    );

    // Listed paths are forwarded, authenticated, as they were sent.
    for path in ["/health", "/.well-known/oauth-protected-resource"] {
        let resp = client
            .get(gate.mcp_url(path))
            .header("X-MCP-Token", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let unauthenticated = client.get(gate.mcp_url("/health")).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let seen: Vec<_> = upstream.requests().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(seen, ["/health", "/.well-known/oauth-protected-resource"]);
}

/// Framings RFC 9112 tolerates but that a server or filter in front of
/// memgate may read otherwise: memgate refuses them in requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_framings_two_parsers_could_read_differently_are_400() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    let mut cfg = MemgateConfig::new(&db.url, &upstream.url());
    cfg.mcp_extra = r#"allowed_paths = ["/health"]"#.into();
    let gate = Memgate::start(cfg).await;
    let token = gate.create_token("alice", &[]);
    let auth = format!("X-MCP-Token: {token}\r\nConnection: close\r\n");
    let json = "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n";
    let host = "Host: memgate\r\n";
    let chunked = |sizes: (&str, &str)| {
        format!(
            "POST /mcp HTTP/1.1\r\n{host}{auth}{json}Transfer-Encoding: chunked\r\n\r\n\
             {}\r\n{PING}\r\n{}\r\n\r\n",
            sizes.0, sizes.1
        )
    };
    let size = format!("{:x}", PING.len());
    let cases: Vec<(&str, SocketAddr, String)> = vec![
        (
            "Content-Length with leading zeros",
            gate.mcp,
            format!(
                "POST /mcp HTTP/1.1\r\n{host}{auth}{json}Content-Length: 0{}\r\n\r\n{PING}",
                PING.len()
            ),
        ),
        (
            "Content-Length 007 on mem0",
            gate.mem0,
            format!(
                "POST /memories HTTP/1.1\r\n{host}{auth}{json}Content-Length: 007\r\n\r\n{{\"a\":1}}"
            ),
        ),
        (
            "Content-Length 00",
            gate.mcp,
            format!("GET /health HTTP/1.1\r\n{host}{auth}Content-Length: 00\r\n\r\n"),
        ),
        (
            "chunk size with a leading zero",
            gate.mcp,
            chunked((&format!("0{size}"), "0")),
        ),
        ("last chunk 00", gate.mcp, chunked((&size, "00"))),
        (
            "space after a chunk size",
            gate.mcp,
            chunked((&format!("{size} "), "0")),
        ),
        (
            "tab after a chunk size",
            gate.mcp,
            chunked((&format!("{size}\t"), "0")),
        ),
        (
            "space before a chunk extension",
            gate.mcp,
            chunked((&format!("{size} ;a=b"), "0")),
        ),
        (
            "space after the last chunk",
            gate.mcp,
            chunked((&size, "0 ")),
        ),
        (
            "HTTP/1.1 without Host on mcp",
            gate.mcp,
            format!("GET /health HTTP/1.1\r\n{auth}\r\n"),
        ),
        (
            "HTTP/1.1 without Host on mem0",
            gate.mem0,
            format!("GET /memories HTTP/1.1\r\n{auth}\r\n"),
        ),
        (
            "absolute-form HTTP/1.1 without Host",
            gate.mcp,
            format!("GET http://memgate/health HTTP/1.1\r\n{auth}\r\n"),
        ),
    ];
    for (what, addr, request) in &cases {
        let answer = exchange(*addr, request.as_bytes()).await;
        assert_eq!(status_of(&answer), 400, "{what}: {answer:?}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        upstream.requests().is_empty(),
        "refused framings reached the upstream: {:?}",
        upstream.requests()
    );

    // Controls: plain spellings of the same requests, and HTTP/1.0 without Host.
    let controls = [
        format!(
            "POST /mcp HTTP/1.1\r\n{host}{auth}{json}Content-Length: {}\r\n\r\n{PING}",
            PING.len()
        ),
        chunked((&size, "0")),
        chunked((&format!("{size};a=b"), "0;c")),
        format!("GET /health HTTP/1.1\r\n{host}{auth}Content-Length: 0\r\n\r\n"),
        format!("GET /health HTTP/1.0\r\n{auth}\r\n"),
    ];
    for request in &controls {
        let answer = exchange(gate.mcp, request.as_bytes()).await;
        assert_eq!(status_of(&answer), 200, "{request:?}: {answer:?}");
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), controls.len(), "{seen:?}");
    for posted in seen.iter().filter(|r| r.method == "POST") {
        assert_eq!(posted.body, PING.as_bytes(), "{posted:?}");
    }
}

/// The request-side rules are not applied to answers: an upstream that pads
/// its lengths and chunk sizes, as RFC 9112 allows, is still relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answers_keep_the_lenient_reading() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head);
                let answer: &[u8] = if text.starts_with("GET /padded-length") {
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                      Content-Length: 007\r\nConnection: close\r\n\r\n{\"a\":1}"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                      Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                      03 \r\n{\"a\r\n04;x\r\n\":1}\r\n00\r\n\r\n"
                };
                let _ = stream.write_all(answer).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    let db = TestDb::new(Backend::Sqlite).await;
    let mut cfg = MemgateConfig::new(&db.url, &format!("http://{addr}"));
    cfg.mcp_extra = r#"allowed_paths = ["/padded-length", "/padded-chunks"]"#.into();
    let gate = Memgate::start(cfg).await;
    let token = gate.create_token("alice", &[]);
    for path in ["/padded-length", "/padded-chunks"] {
        let resp = http()
            .get(gate.mcp_url(path))
            .header("X-MCP-Token", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.text().await.unwrap(), r#"{"a":1}"#, "{path}");
    }
}
