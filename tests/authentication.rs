//! End to end: a real memgate process in front of a recording upstream, on
//! SQLite and on PostgreSQL. Every denial is checked on both listeners, and on
//! what the upstream did (not) receive.

mod support;

use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use serde_json::Value;
use support::*;

async fn gate_on(backend: Backend, auth: &str) -> (TestDb, Upstream, Memgate) {
    let db = TestDb::new(backend).await;
    let upstream = Upstream::start().await;
    let mut cfg = MemgateConfig::new(&db.url, &upstream.url());
    cfg.auth = auth.to_string();
    let gate = Memgate::start(cfg).await;
    (db, upstream, gate)
}

/// Inserts a token straight into the store (for states the CLI cannot create).
async fn insert_token(db: &TestDb, user: &str, expires_in_days: i64) -> String {
    let secret = memgate::token::generate().unwrap();
    let now = Utc::now();
    db.store()
        .await
        .insert_token(&memgate::store::NewToken {
            token_hash: memgate::token::hash_hex(&secret),
            prefix: memgate::token::display_prefix(&secret).to_string(),
            user_id: user.into(),
            name: None,
            email: None,
            permissions: memgate::identity::Permissions::READ_WRITE,
            created_at: now - chrono::Duration::days(400),
            created_by: Some("test".into()),
            expires_at: Some(now + chrono::Duration::days(expires_in_days)),
            rate_limit_rps: None,
        })
        .await
        .unwrap();
    secret
}

struct Denied {
    status: StatusCode,
    www_authenticate: Option<String>,
    body: Value,
}

async fn send(url: &str, headers: &[(&str, &str)]) -> Denied {
    let mut req = reqwest::Client::new().get(url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req.send().await.unwrap();
    Denied {
        status: resp.status(),
        www_authenticate: resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string()),
        body: resp.json().await.unwrap_or(Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_denial_kind_is_refused_on_both_listeners_and_never_forwarded() {
    for backend in BACKENDS {
        let (db, upstream, gate) = gate_on(backend, "").await;
        let valid = gate.create_token("alice", &[]);
        let revoked = gate.create_token("alice", &[]);
        let out = gate.cli(&[
            "token",
            "revoke",
            memgate::token::display_prefix(&revoked),
            "--yes",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expired = insert_token(&db, "alice", -1).await;
        let unknown = memgate::token::generate().unwrap();
        let bearer_unknown = format!("Bearer {unknown}");

        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
        let cases: Vec<Case> = vec![
            ("missing", vec![], "Missing authentication token"),
            (
                "malformed",
                vec![("X-MCP-Token", "mcp_tooshort")],
                "Invalid authentication token",
            ),
            (
                "malformed scheme",
                vec![("Authorization", "Basic YWxpY2U6cHc=")],
                "Invalid authentication token",
            ),
            (
                "unknown",
                vec![("X-MCP-Token", &unknown)],
                "Invalid authentication token",
            ),
            (
                "unknown bearer",
                vec![("Authorization", &bearer_unknown)],
                "Invalid authentication token",
            ),
            ("revoked", vec![("X-MCP-Token", &revoked)], "disabled"),
            ("expired", vec![("X-MCP-Token", &expired)], "expired on"),
            (
                "user mismatch",
                vec![("X-MCP-Token", &valid), ("X-MCP-UserID", "mallory")],
                "User ID mismatch",
            ),
        ];
        for (what, headers, phrase) in &cases {
            let r = send(&gate.mem0_url("/memories?user_id=alice"), headers).await;
            assert_eq!(r.status, 401, "{backend:?} mem0 {what}");
            let detail = r.body["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains(phrase),
                "{backend:?} mem0 {what}: {detail:?}"
            );

            let r = send(&gate.mcp_url("/mcp"), headers).await;
            assert_eq!(r.status, 401, "{backend:?} mcp {what}");
            assert_eq!(
                r.www_authenticate.as_deref(),
                Some("Bearer realm=\"memgate\""),
                "{what}"
            );
            assert_eq!(r.body["jsonrpc"], "2.0", "{what}");
            let message = r.body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(phrase),
                "{backend:?} mcp {what}: {message:?}"
            );
            assert!(r.body["error"]["code"].is_i64());
        }
        assert!(
            upstream.requests().is_empty(),
            "{backend:?}: a denied request reached the upstream"
        );

        // The valid token, with and without a matching user id, gets through.
        for headers in [
            vec![("X-MCP-Token", valid.as_str())],
            vec![("X-MCP-Token", valid.as_str()), ("X-MCP-UserID", "alice")],
        ] {
            assert_eq!(
                send(&gate.mem0_url("/memories"), &headers).await.status,
                200
            );
        }
        let bearer = format!("Bearer {valid}");
        assert_eq!(
            send(&gate.mcp_url("/mcp"), &[("Authorization", &bearer)])
                .await
                .status,
            200
        );
        assert_eq!(upstream.requests().len(), 3);
        drop(db);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_are_replaced_and_credentials_stripped() {
    let (_db, upstream, gate) = gate_on(Backend::Sqlite, "").await;
    let token = gate.create_token("alice", &[]);
    let prefix = memgate::token::display_prefix(&token).to_string();
    let client = reqwest::Client::new();
    let resp = client
        .post(gate.mem0_url("/memories"))
        .header("X-MCP-Token", &token)
        .header("X-MCP-UserID", "alice")
        .header("x_mcp_userid", "mallory")
        .header("X-Mcp-User-Id", "mallory")
        .header("X-Memgate-Scope", "mallory")
        .header("x_memgate_token_prefix", "mcp_forged00")
        .header("X-Memgate-Admin", "true")
        .header("Authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(r#"{"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.header_all("x-mcp-userid"), ["alice"]);
    assert_eq!(r.header_all("x-memgate-scope"), ["alice"]);
    assert_eq!(r.header_all("x-memgate-token-prefix"), [prefix]);
    for gone in [
        "x_mcp_userid",
        "x-mcp-user-id",
        "x_memgate_token_prefix",
        "x-memgate-admin",
        "x-mcp-token",
        "authorization",
    ] {
        assert!(
            r.header_all(gone).is_empty(),
            "{gone} reached the upstream: {:?}",
            r.headers
        );
    }
    let sent: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        sent["messages"],
        serde_json::json!([{"role": "user", "content": "hi"}])
    );
    assert_eq!(
        sent["user_id"], "alice",
        "the owner is injected into the body"
    );
    assert!(
        !format!("{:?}", r.headers).contains(&token),
        "the token reached the upstream"
    );
    let host = r.header("host").unwrap();
    assert_eq!(host, upstream.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_forwarded_only_when_configured() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    let mut cfg = MemgateConfig::new(&db.url, &upstream.url());
    cfg.forward_credentials = true;
    let gate = Memgate::start(cfg).await;
    let token = gate.create_token("alice", &[]);
    let resp = reqwest::Client::new()
        .get(gate.mcp_url("/mcp"))
        .header("X-MCP-Token", &token)
        .header("X-MCP-UserID", "mallory-but-stripped")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        401,
        "a wrong user id is refused even when forwarding"
    );
    reqwest::Client::new()
        .get(gate.mcp_url("/mcp"))
        .header("X-MCP-Token", &token)
        .send()
        .await
        .unwrap();
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header_all("x-mcp-token"), [token]);
    assert_eq!(seen[0].header_all("x-mcp-userid"), ["alice"]);
}

async fn status_with(gate: &Memgate, token: &str) -> u16 {
    reqwest::Client::new()
        .get(gate.mem0_url("/memories"))
        .header("X-MCP-Token", token)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_delete_and_rotate_apply_to_a_running_server_within_a_second() {
    for backend in BACKENDS {
        // A long cache TTL: only invalidation can make the change visible in time.
        let (_db, _upstream, gate) = gate_on(backend, "cache_ttl_secs = 600").await;
        let a = gate.create_token("alice", &[]);
        let b = gate.create_token("bob", &[]);
        let c = gate.create_token("carol", &[]);
        for t in [&a, &b, &c] {
            assert_eq!(status_with(&gate, t).await, 200, "{backend:?}");
        }

        let cases: [(&str, &String, Vec<&str>); 3] = [
            (
                "revoke",
                &a,
                vec![
                    "token",
                    "revoke",
                    memgate::token::display_prefix(&a),
                    "--yes",
                ],
            ),
            (
                "delete",
                &b,
                vec![
                    "token",
                    "delete",
                    memgate::token::display_prefix(&b),
                    "--yes",
                ],
            ),
            (
                "rotate",
                &c,
                vec![
                    "token",
                    "rotate",
                    memgate::token::display_prefix(&c),
                    "--json",
                ],
            ),
        ];
        for (what, token, args) in cases {
            let out = gate.cli(&args);
            assert!(
                out.status.success(),
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let took = within(Duration::from_secs(1), || async {
                status_with(&gate, token).await == 401
            })
            .await;
            assert!(
                took.is_some(),
                "{backend:?}: {what} not enforced within 1 s"
            );
            if what == "rotate" {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(v["revoked_prefix"], memgate::token::display_prefix(token));
                let new = v["token"].as_str().unwrap();
                assert_eq!(
                    status_with(&gate, new).await,
                    200,
                    "{backend:?}: rotated token works"
                );
            }
        }
        // Enabling the revoked token again is seen as quickly.
        let out = gate.cli(&["token", "enable", memgate::token::display_prefix(&a)]);
        assert!(out.status.success());
        let took = within(Duration::from_secs(1), || async {
            status_with(&gate, &a).await == 200
        })
        .await;
        assert!(took.is_some(), "{backend:?}: enable not seen within 1 s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_with_one_token_cause_one_store_query() {
    for backend in BACKENDS {
        let (_db, upstream, gate) = gate_on(backend, "").await;
        let token = gate.create_token("alice", &[]);
        // Let the creation's own change notification pass first.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let metric = "memgate_store_queries_total{op=\"token_by_hash\"}";
        let before = gate.metric(metric).await;
        let client = reqwest::Client::new();
        let requests = (0..100).map(|_| {
            let req = client
                .get(gate.mem0_url("/memories"))
                .header("X-MCP-Token", &token);
            async move { req.send().await.map(|r| r.status().as_u16()) }
        });
        let statuses = futures::future::join_all(requests).await;
        assert!(
            statuses.iter().all(|s| matches!(s, Ok(200))),
            "{statuses:?}"
        );
        let after = gate.metric(metric).await;
        assert_eq!(
            after - before,
            1.0,
            "{backend:?}: 100 first requests must cost one query"
        );
        assert_eq!(upstream.requests().len(), 100);

        // A flood of one unknown token costs one query per negative TTL too.
        let unknown = memgate::token::generate().unwrap();
        let before = gate.metric(metric).await;
        for _ in 0..50 {
            assert_eq!(status_with(&gate, &unknown).await, 401);
        }
        assert_eq!(
            gate.metric(metric).await - before,
            1.0,
            "{backend:?}: unknown token flood"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_keeps_cached_tokens_within_grace_and_refuses_unknown_ones() {
    let db = TestDb::new(Backend::Postgres).await;
    db.store().await; // migrate directly, not through the relay
    let relay = Relay::start(pg_addr()).await;
    let upstream = Upstream::start().await;
    let mut cfg = MemgateConfig::new(&db.url_via(relay.addr), &upstream.url());
    cfg.auth = "cache_ttl_secs = 1\nstale_grace_secs = 30".into();
    let gate = Memgate::start(cfg).await;
    let seen = gate.create_token("alice", &[]);
    let never_used = gate.create_token("bob", &[]);
    // The creations' own change notifications drop the tokens from the cache
    // when they arrive; let them pass before alice's is cached.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(status_with(&gate, &seen).await, 200);
    let ready = || async {
        reqwest::get(format!("http://{}/ready", gate.admin))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(ready().await, 200);

    relay.cut();
    tokio::time::sleep(Duration::from_millis(1200)).await; // past the fresh TTL
    assert_eq!(
        status_with(&gate, &seen).await,
        200,
        "a recently seen token works in the grace period"
    );
    assert_eq!(status_with(&gate, &seen).await, 200);
    let resp = reqwest::Client::new()
        .get(gate.mem0_url("/memories"))
        .header("X-MCP-Token", &never_used)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        503,
        "an uncached token must never be let through while the store is down"
    );
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("unavailable"));
    assert_eq!(ready().await, 503);
    let forwarded: Vec<_> = upstream
        .requests()
        .iter()
        .filter_map(|r| r.header("x-mcp-userid"))
        .collect();
    assert!(!forwarded.contains(&"bob".to_string()));

    relay.restore();
    let back = within(Duration::from_secs(10), || async {
        status_with(&gate, &never_used).await == 200
    })
    .await;
    assert!(
        back.is_some(),
        "the store came back but bob is still refused"
    );
    assert_eq!(ready().await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_grace_ends() {
    let db = TestDb::new(Backend::Postgres).await;
    db.store().await;
    let relay = Relay::start(pg_addr()).await;
    let upstream = Upstream::start().await;
    let mut cfg = MemgateConfig::new(&db.url_via(relay.addr), &upstream.url());
    cfg.auth = "cache_ttl_secs = 1\nstale_grace_secs = 1".into();
    let gate = Memgate::start(cfg).await;
    let token = gate.create_token("alice", &[]);
    assert_eq!(status_with(&gate, &token).await, 200);
    relay.cut();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        status_with(&gate, &token).await,
        503,
        "past the grace period the store must answer"
    );
}
