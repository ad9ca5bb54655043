//! End to end: the secret guard in memgate's request path. A real memgate
//! process in front of recording upstreams; each test checks what the client
//! got, what the upstream received (never the secret), the audit trail and
//! the metric (docs/design.md §12). The guard's rules themselves are tested
//! on their own in `tests/secret_guard.rs`.

mod support;

#[path = "secrets/corpus.rs"]
mod corpus;

use serde_json::{Value, json};
use support::*;

struct Env {
    _db: TestDb,
    upstream: Upstream,
    gate: Memgate,
    token: String,
}

/// A memgate whose both listeners forward to one recording upstream, with
/// `[secret_guard] mode = mode`.
async fn env(mode: &str) -> Env {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    let mut cfg = MemgateConfig::new(&db.url, &upstream.url());
    cfg.mem0_upstream = upstream.url();
    cfg.mcp_upstream = upstream.url();
    cfg.extra = format!("[secret_guard]\nmode = \"{mode}\"\n");
    let gate = Memgate::start(cfg).await;
    let token = gate.create_token("alice", &[]);
    Env {
        _db: db,
        upstream,
        gate,
        token,
    }
}

/// A synthetic GitHub token, drawn as the guard's corpus draws them.
fn github_token() -> corpus::Secret {
    let mut rng = corpus::Rng::new(7);
    corpus::secrets(&mut rng)
        .into_iter()
        .find(|s| s.rule.starts_with("github"))
        .expect("the corpus has a GitHub token")
}

fn add_body(secret: &str) -> Value {
    json!({
        "messages": [{"role": "user", "content": format!("my token for the CI is {secret}, keep it")}],
        "user_id": "alice",
        "metadata": {"topic": "ci"},
    })
}

fn tool_call(secret: &str) -> Value {
    json!({
        "jsonrpc": "2.0", "id": 11, "method": "tools/call",
        "params": {"name": "add_memory", "arguments": {"text": format!("deploy key {secret}"), "user_id": "alice"}},
    })
}

async fn post(env: &Env, url: String, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("x-mcp-token", &env.token)
        .header("accept", "application/json, text/event-stream")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `POST /memories` of a message that mentions `secret`.
async fn add_memory(env: &Env, secret: &str) -> (u16, Value) {
    post(env, env.gate.mem0_url("/memories"), &add_body(secret)).await
}

/// Every body the upstream received, as text.
fn received(env: &Env) -> Vec<String> {
    env.upstream
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect()
}

/// The `secret_blocked` events of the audit trail, as JSON.
fn secret_events(env: &Env) -> Vec<Value> {
    let out = ok(&env
        .gate
        .cli(&["audit", "--event", "secret_blocked", "--json"]));
    match serde_json::from_str(&out).unwrap() {
        Value::Array(events) => events,
        other => panic!("not a list of events: {other}"),
    }
}

/// `metric` once it reaches `value` (the gate counts after it answered), or
/// what it is after ten seconds.
async fn metric_reaches(env: &Env, metric: &str, value: f64) -> f64 {
    let mut seen = 0.0;
    for _ in 0..100 {
        seen = env.gate.metric(metric).await;
        if seen == value {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    seen
}

async fn wait_for_events(env: &Env, n: usize) -> Vec<Value> {
    let mut events = Vec::new();
    within(std::time::Duration::from_secs(10), || {
        events = secret_events(env);
        let enough = events.len() >= n;
        async move { enough }
    })
    .await;
    events
}

#[tokio::test]
async fn a_secret_in_a_mem0_write_is_redacted_before_mem0_sees_it() {
    let env = env("redact").await;
    let secret = github_token();
    let (status, _) = add_memory(&env, &secret.value).await;
    assert_eq!(status, 200);
    let bodies = received(&env);
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(!bodies[0].contains(&secret.value), "{}", bodies[0]);
    let sent: Value = serde_json::from_str(&bodies[0]).unwrap();
    let content = sent["messages"][0]["content"].as_str().unwrap();
    assert!(
        content.starts_with("my token for the CI is [REDACTED:"),
        "{content}"
    );
    assert!(content.ends_with(", keep it"), "{content}");
    assert_eq!(sent["metadata"]["topic"], "ci", "the rest is left as sent");
    let metric = format!(
        "memgate_secrets_found_total{{action=\"redacted\",rule=\"{}\"}}",
        secret.rule
    );
    assert_eq!(metric_reaches(&env, &metric, 1.0).await, 1.0);
    let events = wait_for_events(&env, 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = events[0].to_string();
    assert!(
        event.contains(secret.rule) && event.contains("messages[0].content"),
        "{event}"
    );
    assert!(
        !event.contains(&secret.value),
        "the audit trail never holds the secret"
    );
    assert!(!env.gate.log().contains(&secret.value), "nor does the log");
}

#[tokio::test]
async fn a_secret_in_a_mem0_write_is_refused_in_refuse_mode_and_nothing_is_sent() {
    let env = env("refuse").await;
    let secret = github_token();
    let (status, body) = add_memory(&env, &secret.value).await;
    assert_eq!(status, 403, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains(secret.rule) && detail.contains("messages[0].content"),
        "{detail}"
    );
    assert!(!detail.contains(&secret.value));
    assert!(
        received(&env).is_empty(),
        "mem0 received {:?}",
        received(&env)
    );
    let metric = format!(
        "memgate_secrets_found_total{{action=\"refused\",rule=\"{}\"}}",
        secret.rule
    );
    assert_eq!(metric_reaches(&env, &metric, 1.0).await, 1.0);
    let events = wait_for_events(&env, 1).await;
    assert!(!events[0].to_string().contains(&secret.value));
}

#[tokio::test]
async fn a_clean_write_reaches_mem0_as_sent() {
    let env = env("refuse").await;
    let body = add_body("nothing secret here: commit 3f2a9c1e8b7d6054a1b2c3d4e5f60718293a4b5c");
    let (status, _) = post(&env, env.gate.mem0_url("/memories"), &body).await;
    assert_eq!(status, 200);
    let sent: Value = serde_json::from_str(&received(&env)[0]).unwrap();
    assert_eq!(sent["messages"], body["messages"]);
    let out = ok(&env
        .gate
        .cli(&["audit", "--event", "secret_blocked", "--json"]));
    assert_eq!(out.trim(), "[]");
}

#[tokio::test]
async fn a_secret_in_an_mcp_tool_argument_is_redacted_or_refused_in_band() {
    let secret = github_token();

    let env_redact = env("redact").await;
    let (status, _) = post(
        &env_redact,
        env_redact.gate.mcp_url("/mcp"),
        &tool_call(&secret.value),
    )
    .await;
    assert_eq!(status, 200);
    let bodies = received(&env_redact);
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(!bodies[0].contains(&secret.value), "{}", bodies[0]);
    let sent: Value = serde_json::from_str(&bodies[0]).unwrap();
    let text = sent["params"]["arguments"]["text"].as_str().unwrap();
    assert!(text.starts_with("deploy key [REDACTED:"), "{text}");

    let env_refuse = env("refuse").await;
    let (status, answer) = post(
        &env_refuse,
        env_refuse.gate.mcp_url("/mcp"),
        &tool_call(&secret.value),
    )
    .await;
    assert_eq!(
        status, 200,
        "in-band, so the client's session survives: {answer}"
    );
    assert_eq!(answer["id"], 11);
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(secret.rule) && message.contains("arguments.text"),
        "{message}"
    );
    assert!(!message.contains(&secret.value));
    assert!(
        received(&env_refuse).is_empty(),
        "the MCP server received {:?}",
        received(&env_refuse)
    );
    let events = wait_for_events(&env_refuse, 1).await;
    assert!(events[0].to_string().contains("add_memory"), "{events:?}");
}

#[tokio::test]
async fn mode_off_forwards_secrets_untouched() {
    let env = env("off").await;
    let secret = github_token();
    let (status, _) = add_memory(&env, &secret.value).await;
    assert_eq!(status, 200);
    assert!(received(&env)[0].contains(&secret.value));
}

#[tokio::test]
async fn with_scan_responses_a_memory_stored_before_the_guard_comes_back_redacted() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mem0 = support::mem0::Mem0::start().await;
    let mut cfg = MemgateConfig::new(&db.url, &mem0.url());
    cfg.mem0_upstream = mem0.url();
    cfg.extra = "[secret_guard]\nscan_responses = true\n".into();
    let gate = Memgate::start(cfg).await;
    let token = gate.create_token("alice", &[]);
    let secret = github_token();
    mem0.seed("alice", &format!("the CI token is {}", secret.value));
    let listing = reqwest::Client::new()
        .get(gate.mem0_url("/memories?user_id=alice"))
        .header("x-mcp-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status().as_u16(), 200);
    let text = listing.text().await.unwrap();
    assert!(!text.contains(&secret.value), "{text}");
    assert!(text.contains("the CI token is [REDACTED:"), "{text}");
    let metric = format!(
        "memgate_secrets_found_total{{action=\"redacted\",rule=\"{}\"}}",
        secret.rule
    );
    let env = Env {
        _db: db,
        upstream: Upstream::start().await,
        gate,
        token,
    };
    assert_eq!(metric_reaches(&env, &metric, 1.0).await, 1.0);
    assert_eq!(wait_for_events(&env, 1).await.len(), 1);
}

/// One write of `text` in `place`: a message, a metadata value, or an MCP
/// tool argument. The URL it goes to and its body.
fn write_in(env: &Env, place: &str, text: &str) -> (String, Value) {
    match place {
        "message" => (
            env.gate.mem0_url("/memories"),
            json!({"messages": [{"role": "user", "content": text}], "user_id": "alice"}),
        ),
        "metadata" => (
            env.gate.mem0_url("/memories"),
            json!({
                "messages": [{"role": "user", "content": "a note about the deploy"}],
                "user_id": "alice",
                "metadata": {"notes": {"deploy": text}},
            }),
        ),
        _ => (
            env.gate.mcp_url("/mcp"),
            json!({
                "jsonrpc": "2.0", "id": 3, "method": "tools/call",
                "params": {"name": "add_memory", "arguments": {"text": text}},
            }),
        ),
    }
}

#[tokio::test]
async fn every_corpus_secret_in_every_context_and_place_is_kept_from_the_upstream() {
    let redact = env("redact").await;
    let refuse = env("refuse").await;
    let mut rng = corpus::Rng::new(2026);
    let mut writes = 0;
    let secrets = corpus::secrets(&mut rng);
    for secret in &secrets {
        for (context, text) in corpus::contexts(secret) {
            for place in ["message", "metadata", "tool"] {
                let what = format!("{} in {context} as {place}", secret.rule);
                for env in [&redact, &refuse] {
                    env.upstream.clear();
                    let (url, body) = write_in(env, place, &text);
                    let (status, answer) = post(env, url, &body).await;
                    let received = received(env);
                    assert!(
                        received.iter().all(|b| !b.contains(&secret.value)),
                        "{what}: the upstream received the secret"
                    );
                    assert!(!answer.to_string().contains(&secret.value), "{what}");
                    if std::ptr::eq(env, &redact) {
                        assert_eq!(status, 200, "{what}: {answer}");
                        assert_eq!(received.len(), 1, "{what}: forwarded once");
                    } else {
                        let refused = match place {
                            "tool" => status == 200 && answer["error"]["code"].is_i64(),
                            _ => status == 403,
                        };
                        assert!(refused, "{what}: {status} {answer}");
                        assert!(received.is_empty(), "{what}: nothing forwarded");
                    }
                }
                writes += 1;
            }
        }
    }
    assert!(writes >= 300, "{writes} writes");
    for env in [&redact, &refuse] {
        let log = env.gate.log();
        assert!(
            secrets.iter().all(|s| !log.contains(&s.value)),
            "a secret was logged"
        );
    }
}
