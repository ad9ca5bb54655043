//! Faults with real processes: upstreams that reset, stall, refuse or close
//! their streams, clients that vanish mid-request, and a store outage under
//! sustained load. memgate answers what it can in each listener's format,
//! fails closed, keeps its audit trail, stays responsive and leaks no
//! connections.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that answers every request with a header and half a body, then
/// closes the connection.
async fn resetting_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"results\":[")
                    .await;
                drop(stream);
            });
        }
    });
    format!("http://{addr}")
}

/// Live tasks on the mem0 and MCP listeners' runtimes, as reported by a
/// request on each (on a connection of its own, closed before returning).
async fn tasks_after_a_request(gate: &Memgate, token: &str) -> (f64, f64) {
    for url in [gate.mem0_url("/memories"), gate.mcp_url("/health-probe")] {
        let client = reqwest::Client::new();
        let _ = client.get(url).header("X-MCP-Token", token).send().await;
    }
    (
        gate.metric("memgate_runtime_tasks{listener=\"mem0\"}")
            .await,
        gate.metric("memgate_runtime_tasks{listener=\"mcp\"}").await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_mid_response_does_not_take_memgate_down() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = resetting_upstream().await;
    let gate = Memgate::start(MemgateConfig::new(&db.url, &upstream)).await;
    let token = gate.create_token("alice", &[]);
    let client = reqwest::Client::new();
    for path in ["/memories", "/sse"] {
        let url = if path == "/sse" {
            gate.mcp_url(path)
        } else {
            gate.mem0_url(path)
        };
        let outcome = client.get(url).header("X-MCP-Token", &token).send().await;
        match outcome {
            // The buffered mem0 path answers 502; a streamed answer may be cut short.
            Ok(resp) if path == "/memories" => assert_eq!(resp.status(), 502),
            Ok(resp) => assert!(resp.bytes().await.map(|b| b.len() < 100).unwrap_or(true)),
            Err(_) => {}
        }
    }
    let health = reqwest::get(format!("http://{}/health", gate.admin))
        .await
        .unwrap();
    assert_eq!(
        health.status(),
        200,
        "memgate must survive an upstream that breaks off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_mid_body_or_mid_stream_leak_nothing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    let gate = Memgate::start(MemgateConfig::new(&db.url, &upstream.url())).await;
    let token = gate.create_token("alice", &[]);
    // Warm up so pools and caches exist before counting descriptors.
    let client = reqwest::Client::new();
    let ok = client
        .get(gate.mem0_url("/memories"))
        .header("X-MCP-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = open_fds(gate.pid());
    let tasks_before = tasks_after_a_request(&gate, &token).await;

    for _ in 0..50 {
        // Half a body, then gone.
        let mut s = TcpStream::connect(gate.mem0).await.unwrap();
        let head = format!(
            "POST /memories HTTP/1.1\r\nHost: x\r\nX-MCP-Token: {token}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"messages\":"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        drop(s);
        // A stream, left after its first event.
        let mut s = TcpStream::connect(gate.mcp).await.unwrap();
        s.write_all(
            format!("GET /sse HTTP/1.1\r\nHost: x\r\nX-MCP-Token: {token}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = [0u8; 512];
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
        drop(s);
    }
    // The abandoned streams end upstream after 2 s; give memgate time to notice.
    let settled = within(Duration::from_secs(10), || async {
        open_fds(gate.pid()) <= before + 4
    })
    .await;
    assert!(
        settled.is_some(),
        "descriptors grew from {before} to {} after 100 abandoned requests",
        open_fds(gate.pid())
    );
    // Every abandoned connection's task is gone too (one task per connection,
    // stream and stream watcher while they live).
    let tasks = within(Duration::from_secs(10), || async {
        let now = tasks_after_a_request(&gate, &token).await;
        now.0 <= tasks_before.0 + 2.0 && now.1 <= tasks_before.1 + 2.0
    })
    .await;
    assert!(
        tasks.is_some(),
        "tasks (mem0, mcp) grew from {tasks_before:?} to {:?}",
        tasks_after_a_request(&gate, &token).await
    );
    for listener in ["mem0", "mcp"] {
        let open = gate
            .metric(&format!(
                "memgate_connections_open{{listener=\"{listener}\"}}"
            ))
            .await;
        assert!(open <= 1.0, "{listener}: {open} connections still open");
    }
    assert!(
        upstream.requests().iter().all(|r| r.method != "POST"),
        "a half-sent body must never be forwarded"
    );
}

// ---------------------------------------------------------------------------
// A store outage under sustained concurrent load
// ---------------------------------------------------------------------------

/// Which listener a probe talks to; each answers errors in its own format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Mem0,
    Mcp,
}

/// One kind of request the load clients keep sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// The cached valid token: must always be let through.
    Alice(Side),
    /// A fresh, never-seen token each time: 401 from the store, 503 without it.
    Unknown(Side),
    /// No credential at all: 401 whatever the store does.
    Missing(Side),
    /// The valid token on an admin-only route: an audited 403.
    Reset,
    /// The admin listener's readiness.
    Ready,
}

/// What a client observed for one request.
#[derive(Clone, Debug)]
struct Outcome {
    probe: Probe,
    request_id: String,
    started: Instant,
    ended: Instant,
    /// 0: no HTTP answer at all (transport error).
    status: u16,
    /// The error message, read in the listener's format (`detail` on mem0,
    /// a JSON-RPC `error.message` on MCP); `None` when the body has neither.
    message: Option<String>,
    retry_after: bool,
    error: Option<String>,
}

impl Outcome {
    /// Whether memgate audits this decision (docs/design.md §6): every
    /// authentication failure and every permission refusal. Successes are
    /// sampled and counted separately.
    fn audited(&self) -> bool {
        match self.probe {
            Probe::Unknown(_) | Probe::Missing(_) => matches!(self.status, 401 | 503),
            Probe::Reset => self.status == 403,
            _ => false,
        }
    }
}

#[derive(Clone, Copy)]
struct Targets {
    mem0: std::net::SocketAddr,
    mcp: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;

async fn probe(
    client: &reqwest::Client,
    at: Targets,
    alice: &str,
    probe: Probe,
    request_id: String,
) -> Outcome {
    let unknown = memgate::token::generate().unwrap();
    let (side, token) = match probe {
        Probe::Alice(side) => (Some(side), Some(alice)),
        Probe::Unknown(side) => (Some(side), Some(unknown.as_str())),
        Probe::Missing(side) => (Some(side), None),
        Probe::Reset => (Some(Side::Mem0), Some(alice)),
        Probe::Ready => (None, None),
    };
    let mut req = match (probe, side) {
        (Probe::Ready, _) => client.get(format!("http://{}/ready", at.admin)),
        (Probe::Reset, _) => client
            .post(format!("http://{}/reset", at.mem0))
            .header("content-type", "application/json")
            .body("{}"),
        (_, Some(Side::Mcp)) => client
            .post(format!("http://{}/mcp", at.mcp))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(PING),
        _ => client.get(format!("http://{}/memories", at.mem0)),
    };
    req = req.header("x-request-id", &request_id);
    if let Some(token) = token {
        req = req.header("X-MCP-Token", token);
    }
    let started = Instant::now();
    let answer = req.send().await;
    let (status, retry_after, body, error) = match answer {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp.headers().contains_key("retry-after");
            match resp.json::<serde_json::Value>().await {
                Ok(body) => (status, retry_after, body, None),
                Err(e) => (
                    status,
                    retry_after,
                    serde_json::Value::Null,
                    Some(e.to_string()),
                ),
            }
        }
        Err(e) => (0, false, serde_json::Value::Null, Some(e.to_string())),
    };
    let message = match side {
        Some(Side::Mcp) if body["jsonrpc"] == "2.0" => body["error"]["message"].as_str(),
        Some(Side::Mcp) => None,
        _ => body["detail"].as_str(),
    }
    .map(str::to_string);
    Outcome {
        probe,
        request_id,
        started,
        ended: Instant::now(),
        status,
        message,
        retry_after,
        error,
    }
}

/// Every audit row in the store (read directly, not through the relay).
async fn all_audit_rows(db: &TestDb) -> Vec<memgate::audit::AuditEvent> {
    db.store()
        .await
        .audit_events(&memgate::store::AuditFilter {
            since: chrono::Utc::now() - chrono::Duration::days(1),
            until: None,
            user_id: None,
            event: None,
            limit: 1_000_000,
            newest_first: false,
        })
        .await
        .unwrap()
}

/// The reason an audited outcome must carry in its row.
fn expected_reason(o: &Outcome) -> (&'static str, Option<&'static str>) {
    match (o.probe, o.status) {
        (Probe::Unknown(_), 401) => ("auth_failure", Some("unknown")),
        (Probe::Unknown(_), 503) => ("auth_failure", Some("store_unavailable")),
        (Probe::Missing(_), _) => ("auth_failure", Some("missing")),
        (Probe::Reset, _) => ("permission_denied", None),
        _ => unreachable!("not audited: {o:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_under_load_fails_closed_keeps_cached_tokens_and_loses_no_audit_event() {
    let test_started = Instant::now();
    let db = TestDb::new(Backend::Postgres).await;
    db.store().await; // migrate directly, not through the relay
    let relay = Relay::start(pg_addr()).await;
    let upstream = Upstream::start().await;
    let mut cfg = MemgateConfig::new(&db.url_via(relay.addr), &upstream.url());
    // Fresh entries for 1 s, so the 3 s outage runs on stale copies.
    cfg.auth = "cache_ttl_secs = 1\nstale_grace_secs = 30".into();
    // One success row per token for the whole test (sampling is per window).
    cfg.audit = "success_sample_secs = 3600".into();
    let gate = Memgate::start(cfg).await;
    let alice = gate.create_token("alice", &[]);
    // The creation's own change notification drops the token from the cache
    // when it arrives; let it pass before the token is cached.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let at = Targets {
        mem0: gate.mem0,
        mcp: gate.mcp,
        admin: gate.admin,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let first = probe(&client, at, &alice, Probe::Alice(Side::Mem0), "warm".into()).await;
    assert_eq!(first.status, 200, "{first:?}");
    let first = probe(&client, at, &alice, Probe::Ready, "warm-ready".into()).await;
    assert_eq!(first.status, 200, "{first:?}");

    let log: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let kinds = [
        Probe::Alice(Side::Mem0),
        Probe::Alice(Side::Mcp),
        Probe::Unknown(Side::Mem0),
        Probe::Unknown(Side::Mcp),
        Probe::Missing(Side::Mem0),
        Probe::Missing(Side::Mcp),
        Probe::Reset,
        Probe::Ready,
    ];
    let mut clients = Vec::new();
    for (k, kind) in kinds.into_iter().enumerate() {
        let (client, alice, log, stop) = (client.clone(), alice.clone(), log.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let outcome = probe(&client, at, &alice, kind, format!("load-{k}-{n}")).await;
                log.lock().unwrap().push(outcome);
                n += 1;
                let pause = if kind == Probe::Ready { 100 } else { 10 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }));
    }
    let seen = |check: &dyn Fn(&Outcome) -> bool| log.lock().unwrap().iter().any(check);

    tokio::time::sleep(Duration::from_secs(1)).await;
    relay.cut();
    let cut_at = Instant::now();
    // Longer than the fresh TTL: the cached token lives on its stale copy.
    tokio::time::sleep(Duration::from_secs(3)).await;
    relay.restore();
    let restored_at = Instant::now();
    // Keep the load on until the store answers again: ready, and a
    // never-seen token is judged unknown (401) rather than 503.
    let recovered = within(Duration::from_secs(10), || async {
        seen(&|o| o.probe == Probe::Ready && o.started > restored_at && o.status == 200)
            && seen(&|o| {
                matches!(o.probe, Probe::Unknown(_)) && o.started > restored_at && o.status == 401
            })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(15), c)
            .await
            .expect("a load client hung")
            .unwrap();
    }
    assert!(
        recovered.is_some(),
        "memgate did not recover within 10 s of the store's return:\n{}",
        gate.log()
    );
    let outcomes = log.lock().unwrap().clone();
    // Strictly inside the outage: started well after the cut, answered before the restore.
    let during =
        |o: &Outcome| o.started > cut_at + Duration::from_millis(200) && o.ended < restored_at;
    let of = |p: &dyn Fn(Probe) -> bool| outcomes.iter().filter(|o| p(o.probe)).collect::<Vec<_>>();

    // memgate answered every request.
    let unanswered: Vec<_> = outcomes
        .iter()
        .filter(|o| o.status == 0)
        .map(|o| (o.probe, &o.request_id, &o.error))
        .collect();
    assert!(
        unanswered.is_empty(),
        "requests without an answer: {unanswered:?}"
    );

    // The cached valid token never failed, on either listener, before, during or after.
    let alice_all = of(&|p| matches!(p, Probe::Alice(_)));
    let failed: Vec<_> = alice_all.iter().filter(|o| o.status != 200).collect();
    assert!(
        failed.is_empty(),
        "the cached token failed {} of {} times within its grace period: {:?}",
        failed.len(),
        alice_all.len(),
        &failed[..failed.len().min(5)]
    );
    for side in [Side::Mem0, Side::Mcp] {
        assert!(
            alice_all
                .iter()
                .filter(|o| o.probe == Probe::Alice(side) && during(o))
                .count()
                >= 3,
            "{side:?}: too few requests with the cached token during the outage"
        );
    }

    // Unknown tokens: never let through; 503 (fail closed, with Retry-After)
    // whenever the store is unreachable, never a 401 claiming the token is bad.
    for side in [Side::Mem0, Side::Mcp] {
        let unknown = of(&|p| p == Probe::Unknown(side));
        for o in &unknown {
            match o.status {
                401 => assert!(
                    o.message
                        .as_deref()
                        .is_some_and(|m| m.contains("Invalid authentication token")),
                    "{o:?}"
                ),
                503 => assert!(
                    o.retry_after
                        && o.message
                            .as_deref()
                            .is_some_and(|m| m.contains("unavailable")),
                    "503 without Retry-After or in the wrong format: {o:?}"
                ),
                _ => panic!("an unknown token got {}: {o:?}", o.status),
            }
        }
        let inside: Vec<_> = unknown.iter().filter(|o| during(o)).collect();
        assert!(
            inside.len() >= 3,
            "{side:?}: too few unknown-token requests during the outage"
        );
        let wrong: Vec<_> = inside.iter().filter(|o| o.status != 503).collect();
        assert!(
            wrong.is_empty(),
            "{side:?}: while the store was down: {wrong:?}"
        );
        assert!(
            unknown.iter().any(|o| o.ended < cut_at && o.status == 401),
            "{side:?}: no 401 before the outage"
        );
    }

    // Refusals that need no store keep working, and keep being audited.
    for o in of(&|p| matches!(p, Probe::Missing(_))) {
        assert_eq!(o.status, 401, "{o:?}");
        assert!(
            o.message
                .as_deref()
                .is_some_and(|m| m.contains("Missing authentication token")),
            "{o:?}"
        );
    }
    let resets = of(&|p| p == Probe::Reset);
    for o in &resets {
        assert_eq!(o.status, 403, "{o:?}");
        assert!(o.message.is_some(), "{o:?}");
    }
    assert!(resets.iter().filter(|o| during(o)).count() >= 3);

    // Readiness follows the store: 503 throughout the outage, 200 after.
    let ready = of(&|p| p == Probe::Ready);
    assert!(ready.iter().any(|o| o.ended < cut_at && o.status == 200));
    let inside: Vec<_> = ready.iter().filter(|o| during(o)).collect();
    assert!(
        !inside.is_empty(),
        "/ready was not polled during the outage"
    );
    assert!(
        inside.iter().all(|o| o.status == 503),
        "/ready during the outage: {:?}",
        inside.iter().map(|o| o.status).collect::<Vec<_>>()
    );
    assert_eq!(ready.last().map(|o| o.status), Some(200));

    // The audit trail: exactly one row per audited decision the clients saw,
    // matched by request id, with the right event and reason; the spool empty.
    let audited: Vec<&Outcome> = outcomes.iter().filter(|o| o.audited()).collect();
    let decisions = |rows: &[memgate::audit::AuditEvent]| {
        rows.iter()
            .filter(|r| r.event == "auth_failure" || r.event == "permission_denied")
            .count()
    };
    let flushed = within(Duration::from_secs(10), || async {
        decisions(&all_audit_rows(&db).await) >= audited.len()
            && gate.metric("memgate_audit_spool_depth").await == 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows = all_audit_rows(&db).await;
    assert!(
        flushed.is_some(),
        "audit not flushed within 10 s: {} of {} rows, spool depth {}",
        decisions(&rows),
        audited.len(),
        gate.metric("memgate_audit_spool_depth").await
    );
    let mut by_request: std::collections::HashMap<&str, Vec<&memgate::audit::AuditEvent>> =
        std::collections::HashMap::new();
    for row in &rows {
        if let Some(id) = row.request_id.as_deref() {
            by_request.entry(id).or_default().push(row);
        }
    }
    for o in &audited {
        let found = by_request
            .get(o.request_id.as_str())
            .cloned()
            .unwrap_or_default();
        assert_eq!(found.len(), 1, "rows for {o:?}: {found:?}");
        let (event, reason) = expected_reason(o);
        assert_eq!(found[0].event, event, "{o:?}: {:?}", found[0]);
        if let Some(reason) = reason {
            assert_eq!(
                found[0].reason.as_deref(),
                Some(reason),
                "{o:?}: {:?}",
                found[0]
            );
        }
    }
    assert_eq!(
        decisions(&rows),
        audited.len(),
        "rows for decisions no client saw"
    );
    let in_outage = audited.iter().filter(|o| during(o)).count();
    assert!(
        in_outage > 10,
        "only {in_outage} audited decisions during the outage"
    );
    let successes: Vec<_> = rows.iter().filter(|r| r.event == "auth_success").collect();
    assert_eq!(
        successes.len(),
        1,
        "one sampled success for the one token: {successes:?}"
    );
    assert_eq!(successes[0].user_id.as_deref(), Some("alice"));
    let ids: std::collections::HashSet<_> = rows.iter().map(|r| &r.event_id).collect();
    assert_eq!(ids.len(), rows.len(), "an event was written twice");
    eprintln!(
        "store outage under load: {} requests ({} audited, {in_outage} of them during \
         the outage), {:?} in all",
        outcomes.len(),
        audited.len(),
        test_started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// The MCP listener's upstream: slow, refusing, closing its streams
// ---------------------------------------------------------------------------

/// Reads a JSON-RPC error answer from the MCP listener.
async fn jsonrpc_error(resp: reqwest::Response, what: &str) -> (u16, i64, String) {
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp
        .json()
        .await
        .unwrap_or_else(|e| panic!("{what}: no JSON body: {e}"));
    assert_eq!(body["jsonrpc"], "2.0", "{what}: {body}");
    let code = body["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("{what}: no error code: {body}"));
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error message: {body}"))
        .to_string();
    (status, code, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_listener_answers_a_slow_or_refusing_upstream_with_json_rpc_504_and_502() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    // The upstream answers `x-test-slow` requests and `/slow` after 3 s, and
    // pauses 1.5 s between the two events of `/sse`.
    let mut cfg = MemgateConfig::new(&db.url, &upstream.url());
    cfg.mcp_extra = "read_timeout_secs = 1\nallowed_paths = [\"/slow\"]".into();
    let gate = Memgate::start(cfg).await;
    let token = gate.create_token("alice", &[]);
    // A connection per request: see the keep-alive test below.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    // A JSON-RPC POST (the buffered exchange) and a streamed GET on another path.
    let started = Instant::now();
    let resp = client
        .post(gate.mcp_url("/mcp"))
        .header("X-MCP-Token", &token)
        .header("x-test-slow", "1")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(PING)
        .send()
        .await
        .unwrap();
    let (status, code, message) = jsonrpc_error(resp, "slow POST /mcp").await;
    assert_eq!((status, code), (504, -32054), "{message}");
    assert!(message.contains("in time"), "{message}");
    let resp = client
        .get(gate.mcp_url("/slow"))
        .header("X-MCP-Token", &token)
        .send()
        .await
        .unwrap();
    let (status, code, message) = jsonrpc_error(resp, "slow GET /slow").await;
    assert_eq!((status, code), (504, -32054), "{message}");
    assert!(message.contains("in time"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "two 1 s timeouts took {:?}",
        started.elapsed()
    );

    // A stream that falls silent for longer than the read timeout after its
    // first event: the event arrives, then the stream is given up (it cannot
    // become a 504 any more), well before the late second event.
    let started = Instant::now();
    let resp = client
        .get(gate.mcp_url("/sse"))
        .header("X-MCP-Token", &token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut received = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(received.contains("data: first"), "{received:?}");
    assert!(
        !received.contains("data: second"),
        "a 2 s silence outlived read_timeout_secs = 1: {received:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // An upstream refusing connections, on the streamed MCP paths (POST /mcp
    // is covered in proxying.rs): 502 in JSON-RPC, promptly.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let refused = Memgate::start(MemgateConfig::new(&db.url, &dead)).await;
    let started = Instant::now();
    for (path, accept) in [("/sse", "text/event-stream"), ("/mcp", "text/event-stream")] {
        let resp = client
            .get(refused.mcp_url(path))
            .header("X-MCP-Token", &token)
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        let (status, code, message) = jsonrpc_error(resp, path).await;
        assert_eq!((status, code), (502, -32052), "{path}: {message}");
        assert!(message.contains("upstream"), "{path}: {message}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    for gate in [&gate, &refused] {
        let health = client
            .get(format!("http://{}/health", gate.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
    }
}

/// An MCP upstream whose event streams (legacy `GET /sse`, Streamable `GET
/// /mcp`) send one event and stay open until `close` is set, then end
/// cleanly (last chunk) and close the connection. A `POST /mcp` is taken for
/// an `initialize` and answered with a new `Mcp-Session-Id`; other requests
/// get 202.
async fn closing_streams() -> (String, tokio::sync::watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (close, closed) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut n = 0u32;
        while let Ok((mut stream, _)) = listener.accept().await {
            n += 1;
            let mut closed = closed.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                let event = if head.starts_with(b"GET /sse") {
                    format!("event: endpoint\ndata: /messages/?session_id=closing{n}\n\n")
                } else if head.starts_with(b"GET /mcp") {
                    let data = serde_json::json!({
                        "jsonrpc": "2.0",
                        "method": "notifications/message",
                        "params": {"level": "info", "data": format!("stream {n}")},
                    });
                    format!("id: {n}\nevent: message\ndata: {data}\n\n")
                } else if head.starts_with(b"POST /mcp") {
                    let body = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Mcp-Session-Id: closing-session-{n}\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    return;
                } else {
                    let accepted = b"HTTP/1.1 202 Accepted\r\nContent-Length: 8\r\n\
                                     Connection: close\r\n\r\nAccepted";
                    let _ = stream.write_all(accepted).await;
                    return;
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                     Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n\
                     {:x}\r\n{event}\r\n",
                    event.len()
                );
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
                let _ = closed.wait_for(|c| *c).await;
                let _ = stream.write_all(b"0\r\n\r\n").await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), close)
}

/// Sockets `pid` holds open.
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
            })
            .count()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_the_upstream_closes_end_cleanly_and_release_their_connections() {
    const LEGACY: usize = 20;
    const STREAMABLE: usize = 10;
    let db = TestDb::new(Backend::Sqlite).await;
    let (upstream, close) = closing_streams().await;
    let gate = Memgate::start(MemgateConfig::new(&db.url, &upstream)).await;
    let token = gate.create_token("alice", &[]);
    // Warm up the store path that binds sessions.
    let client = reqwest::Client::new();
    let initialize = |client: &reqwest::Client| {
        client
            .post(gate.mcp_url("/mcp"))
            .header("X-MCP-Token", &token)
            .header("content-type", "application/json")
            .body(INITIALIZE)
            .send()
    };
    let warm = futures::future::join_all((0..10).map(|_| initialize(&client))).await;
    for resp in warm {
        assert_eq!(resp.unwrap().status(), 200);
    }
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = open_sockets(gate.pid());

    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut streams = Vec::new();
    for i in 0..LEGACY + STREAMABLE {
        let mut req = client
            .get(gate.mcp_url(if i < LEGACY { "/sse" } else { "/mcp" }))
            .header("X-MCP-Token", &token)
            .header("accept", "text/event-stream");
        if i >= LEGACY {
            let answer = initialize(&client).await.unwrap();
            assert_eq!(answer.status(), 200, "initialize {i}");
            let session = answer.headers()["mcp-session-id"].clone();
            req = req.header("mcp-session-id", session);
        }
        let resp = tokio::time::timeout(Duration::from_secs(5), req.send())
            .await
            .expect("stream headers within 5 s")
            .unwrap();
        assert_eq!(resp.status(), 200, "stream {i}");
        let mut body = resp.bytes_stream();
        let mut first = String::new();
        while !first.contains("\n\n") {
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
                .await
                .expect("first event within 5 s")
                .expect("stream open")
                .expect("first event");
            first.push_str(&String::from_utf8_lossy(&chunk));
        }
        let expected = if i < LEGACY {
            "event: endpoint\ndata: /messages/?session_id=closing"
        } else {
            "event: message"
        };
        assert!(first.contains(expected), "stream {i}: {first:?}");
        streams.push(body);
    }
    let open = open_sockets(gate.pid());
    assert!(
        open >= before + LEGACY + STREAMABLE,
        "{} streams open but sockets only went from {before} to {open}",
        LEGACY + STREAMABLE
    );

    // The upstream ends every stream: each client sees a clean end (the last
    // chunk, no error, nothing after the first event).
    close.send(true).unwrap();
    let ends = futures::future::join_all(streams.into_iter().enumerate().map(
        |(i, mut body)| async move {
            let mut rest = String::new();
            let ended = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(chunk) = body.next().await {
                    match chunk {
                        Ok(chunk) => rest.push_str(&String::from_utf8_lossy(&chunk)),
                        Err(e) => return Err(format!("stream {i} ended with an error: {e}")),
                    }
                }
                Ok(())
            })
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "stream {i} still open 5 s after the upstream closed it"
                ))
            });
            ended.and_then(|()| {
                if rest.trim().is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "stream {i}: unexpected data after the close: {rest:?}"
                    ))
                }
            })
        },
    ))
    .await;
    let failures: Vec<_> = ends.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{failures:#?}");
    drop(client);

    // Both sides of every stream are released.
    let settled = within(Duration::from_secs(10), || async {
        open_sockets(gate.pid()) <= before + 2
    })
    .await;
    assert!(
        settled.is_some(),
        "sockets: {before} before, {open} with the streams open, {} 10 s after they closed",
        open_sockets(gate.pid())
    );

    // memgate is healthy and serves a new stream (which the upstream, now
    // closing everything, ends at once after its first event).
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let health = client
        .get(format!("http://{}/health", gate.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let resp = client
        .get(gate.mcp_url("/sse"))
        .header("X-MCP-Token", &token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("a complete stream");
    assert!(text.contains("event: endpoint"), "{text:?}");
}

/// Sends `request` on one connection and reads the answer; then, unless it
/// said `Connection: close`, sends it again on the same connection and expects
/// an answer there too (a keep-alive client reuses the connection).
async fn keep_alive_kept(addr: std::net::SocketAddr, request: &str) -> Result<String, String> {
    async fn answer(s: &mut TcpStream) -> Result<String, String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| format!("no content-length: {text:?}"))?;
                if got.len() >= end + 4 + length {
                    return Ok(text);
                }
            }
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(0)) => return Err(format!("connection closed after {got:?}")),
                Ok(Ok(k)) => got.extend_from_slice(&buf[..k]),
                Ok(Err(e)) => return Err(format!("{e} after {got:?}")),
                Err(_) => return Err(format!("no answer within 5 s after {got:?}")),
            }
        }
    }
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let first = answer(&mut s).await?;
    let status = first.lines().next().unwrap_or_default().to_string();
    if first.contains("\r\nconnection: close\r\n") {
        return Ok(status);
    }
    // Give memgate time to close the connection if it is going to.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = async {
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        answer(&mut s).await
    };
    again.await.map(|_| status.clone()).map_err(|e| {
        format!(
            "{status} said Connection: keep-alive, yet the next request on the \
             connection failed: {e}"
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_failure_answer_keeps_its_keep_alive_promise() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut cfg = MemgateConfig::new(&db.url, &dead);
    cfg.mem0_extra = "allowed_routes = [\"GET /sse\"]".into();
    let refused = Memgate::start(cfg).await;
    let mut cfg = MemgateConfig::new(&db.url, &upstream.url());
    cfg.mcp_extra = "read_timeout_secs = 1\nallowed_paths = [\"/slow\"]".into();
    let slow = Memgate::start(cfg).await;
    let token = refused.create_token("alice", &[]);
    let get = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: memgate\r\nX-MCP-Token: {token}\r\n\
             Accept: text/event-stream\r\n\r\n"
        )
    };
    let mut failures = Vec::new();
    for (what, addr, request, status) in [
        (
            "MCP GET /sse, upstream refusing",
            refused.mcp,
            get("/sse"),
            "502",
        ),
        (
            "mem0 GET /sse (allow-listed), upstream refusing",
            refused.mem0,
            get("/sse"),
            "502",
        ),
        (
            "mem0 GET /memories, upstream refusing",
            refused.mem0,
            get("/memories"),
            "502",
        ),
        (
            "MCP GET /slow, upstream silent",
            slow.mcp,
            get("/slow"),
            "504",
        ),
    ] {
        match keep_alive_kept(addr, &request).await {
            Ok(line) if line.contains(status) => {}
            Ok(line) => failures.push(format!("{what}: {line}")),
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// An upstream that answers the first request on each connection (keep-alive)
/// and reads the second one whole, counts it, then closes without answering:
/// what an upstream dying while it handles a request looks like.
async fn dying_on_second_request(seen: Arc<Mutex<Vec<String>>>) -> String {
    async fn read_request(stream: &mut TcpStream) -> Option<String> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buf.len() >= end + 4 + length {
                    return head.lines().next().map(str::to_owned);
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(first) = read_request(&mut stream).await else {
                    return;
                };
                seen.lock().unwrap().push(first);
                let body = r#"{"results":[]}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(answer.as_bytes()).await.unwrap();
                if let Some(second) = read_request(&mut stream).await {
                    seen.lock().unwrap().push(second);
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_upstream_may_have_handled_is_never_sent_twice() {
    let db = TestDb::new(Backend::Sqlite).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = dying_on_second_request(seen.clone()).await;
    let gate = Memgate::start(MemgateConfig::new(&db.url, &upstream)).await;
    let token = gate.create_token("alice", &[]);
    let client = reqwest::Client::new();
    let list = || {
        client
            .get(gate.mem0_url("/memories"))
            .header("X-MCP-Token", &token)
            .send()
    };
    let count = |prefix: &str| {
        let seen = seen.lock().unwrap();
        seen.iter().filter(|r| r.starts_with(prefix)).count()
    };

    // A read on a fresh connection, which memgate then keeps.
    assert_eq!(list().await.unwrap().status(), 200);
    // A write on that kept connection reaches the upstream, which dies on it.
    let added = client
        .post(gate.mem0_url("/memories"))
        .header("X-MCP-Token", &token)
        .json(&serde_json::json!({"messages": [{"role": "user", "content": "likes tea"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        added.status(),
        502,
        "the client learns the write may be lost"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count("post /memories"), 1, "and it was not repeated");

    // A read on a kept connection that dies is repeated on a fresh one.
    assert_eq!(list().await.unwrap().status(), 200);
    assert_eq!(list().await.unwrap().status(), 200, "retried");
    assert_eq!(count("get /memories"), 4, "two reads, the second one twice");
}
