//! End to end: several memgate replicas sharing one PostgreSQL (and Redis).

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

async fn status(url: String, token: &str) -> u16 {
    reqwest::Client::new()
        .get(url)
        .header("X-MCP-Token", token)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn replicas(
    db: &TestDb,
    upstream: &Upstream,
    rate_limit: &str,
    extra: &str,
) -> (Memgate, Memgate) {
    let make = || {
        let mut cfg = MemgateConfig::new(&db.url, &upstream.url());
        cfg.auth = "cache_ttl_secs = 600".into();
        if !rate_limit.is_empty() {
            cfg.rate_limit = rate_limit.into();
        }
        cfg.extra = extra.into();
        cfg
    };
    (Memgate::start(make()).await, Memgate::start(make()).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_every_replica_within_a_second() {
    let db = TestDb::new(Backend::Postgres).await;
    let upstream = Upstream::start().await;
    let (one, two) = replicas(&db, &upstream, "", "").await;
    let token = one.create_token("alice", &[]);
    for gate in [&one, &two] {
        assert_eq!(status(gate.mem0_url("/memories"), &token).await, 200);
    }
    // Revoked through replica two's configuration (any process sharing the store).
    let out = two.cli(&[
        "token",
        "revoke",
        memgate::token::display_prefix(&token),
        "--yes",
    ]);
    assert!(out.status.success());
    for gate in [&one, &two] {
        let took = within(Duration::from_secs(1), || async {
            status(gate.mem0_url("/memories"), &token).await == 401
        })
        .await;
        assert!(
            took.is_some(),
            "a replica still accepts a revoked token after 1 s"
        );
    }
}

/// A private Redis server on a free port, stopped when dropped.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    async fn start() -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the fleet tests");
        let up = within(Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(up.is_some(), "redis-server did not start");
        Redis { port, child }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_limit_holds_across_replicas_and_degrades_without_redis() {
    let mut redis = Redis::start().await;
    let db = TestDb::new(Backend::Postgres).await;
    let upstream = Upstream::start().await;
    let limits = "backend = \"redis\"\nper_token_rps = 1\nper_token_burst = 3\nfailed_auth_per_ip_per_min = 1000000";
    let extra = format!(
        "[redis]\nurl = \"redis://127.0.0.1:{}\"\ntimeout_ms = 200\n",
        redis.port
    );
    let (one, two) = replicas(&db, &upstream, limits, &extra).await;
    let token = one.create_token("alice", &[]);
    // The burst of 3 is shared: two on replica one, one on two, then both refuse.
    assert_eq!(status(one.mem0_url("/memories"), &token).await, 200);
    assert_eq!(status(one.mem0_url("/memories"), &token).await, 200);
    assert_eq!(status(two.mem0_url("/memories"), &token).await, 200);
    assert_eq!(status(two.mem0_url("/memories"), &token).await, 429);
    assert_eq!(status(one.mem0_url("/memories"), &token).await, 429);
    assert_eq!(one.metric("memgate_rate_limit_fallback_total").await, 0.0);

    redis.stop();
    // Without Redis each replica limits on its own; nothing fails open or closed.
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(status(two.mem0_url("/memories"), &token).await);
    }
    assert!(
        answers.contains(&200),
        "requests must still be served without Redis: {answers:?}"
    );
    assert!(
        answers.contains(&429),
        "the local limit must still apply: {answers:?}"
    );
    assert!(two.metric("memgate_rate_limit_fallback_total").await >= 5.0);
    assert!(two.log().contains("Redis unreachable"), "{}", two.log());
}

async fn post_mcp(
    gate: &Memgate,
    token: &str,
    session: Option<&str>,
    body: serde_json::Value,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(gate.mcp_url("/mcp"))
        .header("X-MCP-Token", token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    if let Some(id) = session {
        req = req.header("mcp-session-id", id);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_bound_on_one_replica_is_refused_to_another_user_on_the_next() {
    use serde_json::json;
    let db = TestDb::new(Backend::Postgres).await;
    let mcp = support::mcp_server::McpServer::start().await;
    let make = || MemgateConfig::new(&db.url, &mcp.url());
    let (one, two) = (Memgate::start(make()).await, Memgate::start(make()).await);
    let alice = one.create_token("alice", &[]);
    let bob = one.create_token("bob", &[]);

    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "fleet", "version": "0"}}});
    let resp = post_mcp(&one, &alice, None, init).await;
    assert_eq!(resp.status(), 200);
    let session = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    drop(resp.bytes().await);
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(
        post_mcp(&one, &alice, Some(&session), initialized)
            .await
            .status(),
        202
    );

    let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
    let before = mcp.http_requests().len();
    let stolen = post_mcp(&two, &bob, Some(&session), ping.clone()).await;
    assert_eq!(
        stolen.status(),
        404,
        "replica two must know whose session it is"
    );
    assert_eq!(
        mcp.http_requests().len(),
        before,
        "the stolen session reached the server"
    );
    let owner = post_mcp(&two, &alice, Some(&session), ping).await;
    assert_eq!(
        owner.status(),
        200,
        "the owner may use her session on any replica"
    );
}
