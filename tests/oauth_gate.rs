//! OAuth access tokens through a running memgate, end to end: tokens from a
//! real authorization server (oidc-provider, tests/support/oidc.rs) on both
//! proxied listeners, the Protected Resource Metadata memgate serves, the
//! challenges of every refusal, and what the upstreams, the audit trail and
//! `/metrics` saw. memgate's own tokens keep working beside them.
//!
//! Without `node` or tests/oidc/node_modules these tests are skipped unless
//! `MEMGATE_REQUIRE_OIDC=1`.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest;
use support::mcp_server::McpEnv;
use support::oidc::{Provider, authorization_code, client_credentials};
use support::sdk::SdkClient;
use support::*;

/// The resources memgate names in `oauth.audience`: clients reach it under
/// these names whatever ports the test binds.
const MCP_RESOURCE: &str = "http://memgate.test/mcp";
const MEM0_RESOURCE: &str = "http://memgate.test:8000";
const MCP_METADATA: &str = "http://memgate.test/.well-known/oauth-protected-resource/mcp";
const MEM0_METADATA: &str = "http://memgate.test:8000/.well-known/oauth-protected-resource";
/// Another resource server at the same authorization server.
const OTHER: &str = "https://other.example.com/api";
/// The user client-credentials tokens name (`sub` is the client id).
const M2M_USER: &str = "memgate-m2m";

struct Env {
    provider: Provider,
    env: McpEnv,
}

/// oidc-provider, stand-in upstreams and memgate trusting the provider;
/// `None` when the provider cannot run here (see the module docs).
async fn start(ttl_secs: Option<u64>, oauth_extra: &str) -> Option<Env> {
    let provider = Provider::start_with_ttl(&[MCP_RESOURCE, MEM0_RESOURCE, OTHER], &[], ttl_secs)?;
    Some(trusting(provider, oauth_extra).await)
}

/// Stand-in upstreams and memgate trusting `provider`; `oauth_extra` follows
/// the `[oauth]` keys (and may open its subsections).
async fn trusting(provider: Provider, oauth_extra: &str) -> Env {
    let extra = format!(
        "[oauth]\nenabled = true\nissuer = {issuer:?}\naudience = [{MCP_RESOURCE:?}, {MEM0_RESOURCE:?}]\n{oauth_extra}\n",
        issuer = provider.issuer,
    );
    let env = McpEnv::start("", &extra).await;
    Env { provider, env }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

#[derive(Debug)]
struct Reply {
    status: u16,
    challenge: Option<String>,
    session: Option<String>,
    text: String,
}

impl Reply {
    /// The one JSON-RPC message of a JSON or event-stream body.
    fn message(&self) -> Value {
        let text = self.text.trim_start();
        if text.starts_with('{') {
            return serde_json::from_str(text).unwrap_or(Value::Null);
        }
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .find_map(|data| serde_json::from_str(data.trim()).ok())
            .unwrap_or(Value::Null)
    }
}

async fn reply_of(response: reqwest::Response) -> Reply {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let challenge = header("www-authenticate");
    let session = header("mcp-session-id");
    Reply {
        status: response.status().as_u16(),
        challenge,
        session,
        text: response.text().await.unwrap_or_default(),
    }
}

async fn send(request: reqwest::RequestBuilder, headers: &[(&str, String)]) -> Reply {
    let request = headers
        .iter()
        .fold(request, |r, (name, value)| r.header(*name, value));
    reply_of(request.send().await.expect("request")).await
}

/// POSTs one JSON-RPC message to the MCP endpoint.
async fn rpc(gate: &Memgate, headers: &[(&str, String)], body: &Value) -> Reply {
    let request = http()
        .post(gate.mcp_url("/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    send(request, headers).await
}

/// An initialised Streamable HTTP session with these credential headers.
async fn session(
    gate: &Memgate,
    headers: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "memgate-tests", "version": "0"},
        },
    });
    let reply = rpc(gate, headers, &initialize).await;
    assert_eq!(reply.status, 200, "initialize: {reply:?}");
    let id = reply.session.clone().expect("Mcp-Session-Id");
    let mut with_session = headers.to_vec();
    with_session.push(("mcp-session-id", id));
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let reply = rpc(gate, &with_session, &initialized).await;
    assert_eq!(reply.status, 202, "notifications/initialized: {reply:?}");
    with_session
}

fn tool_call(id: i64, tool: &str, arguments: Value) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    })
}

fn add_memory_body() -> String {
    json!({"messages": [{"role": "user", "content": "likes tea"}]}).to_string()
}

async fn post_memories(gate: &Memgate, headers: &[(&str, String)]) -> Reply {
    let request = http()
        .post(gate.mem0_url("/memories"))
        .header("content-type", "application/json")
        .body(add_memory_body());
    send(request, headers).await
}

/// Nothing reached either upstream since they had received `mem0_before`
/// and `mcp_before` requests.
fn assert_nothing_forwarded(env: &McpEnv, mem0_before: usize, mcp_before: usize) {
    assert_eq!(
        env.mem0.requests().len(),
        mem0_before,
        "nothing reached mem0"
    );
    assert_eq!(
        env.mcp.http_requests().len(),
        mcp_before,
        "nothing reached the MCP server"
    );
}

/// Audit events of `event` in the store, once the writer stored `at_least`.
async fn audit_rows(db: &TestDb, event: &str, at_least: usize) -> Vec<memgate::audit::AuditEvent> {
    db.audit_rows_until(event, |rows| rows.len() >= at_least)
        .await
}

#[tokio::test]
async fn jwt_callers_use_both_listeners_as_the_user_their_token_names() {
    let Some(Env { provider, env }) = start(None, "").await else {
        return;
    };
    let gate = &env.gate;
    let jwt = client_credentials(&provider.issuer, "mcp:read mcp:write", MCP_RESOURCE).await;
    let auth = [bearer(&jwt)];

    // MCP: a session, tools/list and a write tool, acting as the claim's user.
    let in_session = session(gate, &auth).await;
    let listed = rpc(
        gate,
        &in_session,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    assert_eq!(listed.status, 200, "{listed:?}");
    let tools: Vec<Value> = listed.message()["result"]["tools"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        tools.iter().any(|t| t["name"] == "add_memory"),
        "{listed:?}"
    );
    let called = rpc(
        gate,
        &in_session,
        &tool_call(3, "add_memory", json!({"text": "likes tea"})),
    )
    .await;
    assert_eq!(called.status, 200, "{called:?}");
    assert!(called.message()["result"].is_object(), "{called:?}");
    let calls = env.mcp.calls_of("add_memory");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["user_id"], M2M_USER, "{calls:?}");
    // The upstream never sees the access token.
    for request in env.mcp.http_requests() {
        assert!(request.header("authorization").is_none(), "{request:?}");
    }

    // mem0: the same token, scoped to the same user.
    let added = post_memories(gate, &auth).await;
    assert_eq!(added.status, 200, "{added:?}");
    let listed = send(http().get(gate.mem0_url("/memories")), &auth).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    let seen = env.mem0.requests();
    let post = seen
        .iter()
        .find(|r| r.method == "POST" && r.uri.starts_with("/memories"))
        .expect("POST /memories upstream");
    let body: Value = serde_json::from_slice(&post.body).unwrap();
    assert_eq!(body["user_id"], M2M_USER, "{body}");
    let get = seen
        .iter()
        .find(|r| r.method == "GET" && r.uri.starts_with("/memories"))
        .expect("GET /memories upstream");
    assert!(
        get.uri.contains(&format!("user_id={M2M_USER}")),
        "{}",
        get.uri
    );
    assert!(seen.iter().all(|r| r.header("authorization").is_none()));

    // memgate's own token beside it, unchanged.
    let alice = gate.create_token("alice", &[]);
    let own = post_memories(gate, &[("x-mcp-token", alice)]).await;
    assert_eq!(own.status, 200, "{own:?}");

    let successes = audit_rows(&env.db, "auth_success", 2).await;
    let method_of = |user: &str| {
        successes
            .iter()
            .find(|e| e.user_id.as_deref() == Some(user))
            .and_then(|e| e.auth_method.clone())
    };
    assert_eq!(method_of(M2M_USER).as_deref(), Some("jwt"), "{successes:?}");
    assert_eq!(
        method_of("alice").as_deref(),
        Some("token"),
        "{successes:?}"
    );
    let label = successes
        .iter()
        .find(|e| e.user_id.as_deref() == Some(M2M_USER))
        .and_then(|e| e.token_prefix.clone())
        .unwrap();
    assert!(label.starts_with("jwt:") && label.len() == 12, "{label}");
    assert!(
        !jwt.contains(&label[4..]),
        "the label is not part of the token"
    );

    let allowed = |method: &str| {
        format!(
            "memgate_auth_decisions_total{{auth_method=\"{method}\",reason=\"ok\",result=\"allow\"}}"
        )
    };
    assert!(gate.metric(&allowed("jwt")).await >= 5.0);
    assert!(gate.metric(&allowed("token")).await >= 1.0);
}

#[tokio::test]
async fn metadata_is_served_by_memgate_and_401s_point_at_it() {
    let Some(Env { provider, env }) = start(None, "").await else {
        return;
    };
    let gate = &env.gate;
    for (url, resource) in [
        (
            gate.mcp_url("/.well-known/oauth-protected-resource"),
            MCP_RESOURCE,
        ),
        (
            gate.mcp_url("/.well-known/oauth-protected-resource/mcp"),
            MCP_RESOURCE,
        ),
        (
            gate.mem0_url("/.well-known/oauth-protected-resource"),
            MEM0_RESOURCE,
        ),
    ] {
        let response = http().get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let document: Value = response.json().await.unwrap();
        assert_eq!(document["resource"], resource, "{url}: {document}");
        assert_eq!(
            document["authorization_servers"],
            json!([provider.issuer]),
            "{document}"
        );
        assert_eq!(
            document["scopes_supported"],
            json!(["mcp:read", "mcp:write"]),
            "no scope granting admin is offered: {document}"
        );
    }

    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}});
    let mcp = rpc(gate, &[], &initialize).await;
    let mem0 = send(http().get(gate.mem0_url("/memories")), &[]).await;
    let delete_all = send(http().delete(gate.mem0_url("/memories?user_id=alice")), &[]).await;
    // The scope asked for: what the route needs on the mem0 listener, an
    // ordinary session's read and write on the MCP listener, whose need is
    // in a message memgate reads only after authentication.
    for (reply, metadata, scope) in [
        (&mcp, MCP_METADATA, "mcp:read mcp:write"),
        (&mem0, MEM0_METADATA, "mcp:read"),
        (&delete_all, MEM0_METADATA, "mcp:admin"),
    ] {
        assert_eq!(reply.status, 401, "{reply:?}");
        let challenge = reply.challenge.as_deref().unwrap_or_default();
        assert_eq!(
            challenge,
            format!("Bearer resource_metadata=\"{metadata}\", scope=\"{scope}\""),
            "no token, no error code"
        );
    }
    // A refused memgate token gets the same pointer and says what is wrong.
    let unknown = format!("mcp_{}", "A".repeat(43));
    let refused = send(
        http().get(gate.mem0_url("/memories")),
        &[("x-mcp-token", unknown)],
    )
    .await;
    assert_eq!(refused.status, 401);
    let challenge = refused.challenge.unwrap_or_default();
    assert!(
        challenge.starts_with(&format!(
            "Bearer resource_metadata=\"{MEM0_METADATA}\", scope=\"mcp:read\", \
             error=\"invalid_token\""
        )),
        "{challenge}"
    );

    assert!(env.mcp.http_requests().is_empty());
    assert!(env.mem0.requests().is_empty());
}

/// The `error="invalid_token"` 401 of a refused access token.
fn assert_invalid_token(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {reply:?}");
    let challenge = reply.challenge.as_deref().unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer resource_metadata=\""),
        "{what}: {challenge}"
    );
    assert!(
        challenge.contains("error=\"invalid_token\", error_description=\""),
        "{what}: {challenge}"
    );
}

#[tokio::test]
async fn refused_access_tokens_get_invalid_token_and_reach_no_upstream() {
    let Some(Env { provider, env }) = start(None, "").await else {
        return;
    };
    let gate = &env.gate;
    let issuer = &provider.issuer;
    let other = client_credentials(issuer, "mcp:read mcp:write", OTHER).await;
    let (_, id_token) =
        authorization_code(issuer, "alice", "openid mcp:read mcp:write", MCP_RESOURCE).await;
    let good = client_credentials(issuer, "mcp:read mcp:write", MCP_RESOURCE).await;
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("another resource's token", vec![bearer(&other)]),
        ("an ID token", vec![bearer(&id_token)]),
        (
            "X-MCP-UserID naming another user",
            vec![bearer(&good), ("x-mcp-userid", "bob".into())],
        ),
    ];
    // Without introspection configured an opaque token cannot be checked.
    let opaque = [bearer("2YotnFZFEjr1zCsicMWpAA")];
    let refused = send(http().get(gate.mem0_url("/memories")), &opaque).await;
    assert_invalid_token(&refused, "an opaque token");
    assert!(
        refused
            .challenge
            .unwrap()
            .contains("error_description=\"The access token is not a well-formed JWT\""),
    );
    for (what, headers) in &cases {
        let mem0 = post_memories(gate, headers).await;
        assert_invalid_token(&mem0, what);
        let mcp = rpc(
            gate,
            headers,
            &tool_call(1, "add_memory", json!({"text": "x"})),
        )
        .await;
        assert_invalid_token(&mcp, what);
        assert!(
            mcp.challenge.unwrap().contains(MCP_METADATA),
            "{what}: the MCP listener names its own metadata"
        );
    }
    // A JWT only ever comes in Authorization: memgate's header is for its own tokens.
    let in_own_header = post_memories(gate, &[("x-mcp-token", good.clone())]).await;
    assert_eq!(in_own_header.status, 401, "{in_own_header:?}");
    assert!(env.mcp.http_requests().is_empty());
    assert!(env.mem0.requests().is_empty());

    let failures = audit_rows(&env.db, "auth_failure", 8).await;
    let jwt_failures = failures
        .iter()
        .filter(|e| e.auth_method.as_deref() == Some("jwt"))
        .count();
    assert_eq!(jwt_failures, 6, "{failures:?}");
    assert!(
        gate.metric(
            "memgate_auth_decisions_total{auth_method=\"jwt\",reason=\"wrong_audience\",result=\"deny\"}"
        )
        .await
            >= 2.0
    );

    // Accepted once, the token is remembered; X-MCP-UserID is still checked
    // on every request that carries it.
    let accepted = send(http().get(gate.mem0_url("/memories")), &[bearer(&good)]).await;
    assert_eq!(accepted.status, 200, "{accepted:?}");
    let claimed = [bearer(&good), ("x-mcp-userid", "bob".into())];
    let mismatch = send(http().get(gate.mem0_url("/memories")), &claimed).await;
    assert_invalid_token(
        &mismatch,
        "X-MCP-UserID naming another user, the token remembered",
    );
    assert_eq!(env.mem0.requests().len(), 1, "only the accepted request");
}

#[tokio::test]
async fn an_expired_access_token_is_refused() {
    // Tokens that live a second, and no leeway for the clock.
    let Some(Env { provider, env }) = start(Some(1), "leeway_secs = 0").await else {
        return;
    };
    let jwt = client_credentials(&provider.issuer, "mcp:read", MCP_RESOURCE).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let reply = send(http().get(env.gate.mem0_url("/memories")), &[bearer(&jwt)]).await;
    assert_invalid_token(&reply, "an expired token");
    assert!(
        reply
            .challenge
            .unwrap()
            .contains("error_description=\"The access token expired\""),
    );
    assert!(env.mem0.requests().is_empty());
}

#[tokio::test]
async fn a_token_without_the_scope_a_request_needs_gets_a_step_up_challenge() {
    let Some(Env { provider, env }) = start(None, "").await else {
        return;
    };
    let gate = &env.gate;
    let read_only = client_credentials(&provider.issuer, "mcp:read", MCP_RESOURCE).await;
    let auth = [bearer(&read_only)];
    let step_up = |reply: &Reply, metadata: &str| {
        assert_eq!(reply.status, 403, "{reply:?}");
        let challenge = reply.challenge.as_deref().unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer error=\"insufficient_scope\", scope=\"mcp:write\""),
            "{challenge}"
        );
        assert!(
            challenge.contains(&format!("resource_metadata=\"{metadata}\"")),
            "{challenge}"
        );
    };

    let mem0 = post_memories(gate, &auth).await;
    step_up(&mem0, MEM0_METADATA);
    assert!(env.mem0.requests().is_empty(), "nothing reached mem0");
    // Reading is within the token's scope.
    let read = send(http().get(gate.mem0_url("/memories")), &auth).await;
    assert_eq!(read.status, 200, "{read:?}");

    let in_session = session(gate, &auth).await;
    let refused = rpc(
        gate,
        &in_session,
        &tool_call(7, "add_memory", json!({"text": "x"})),
    )
    .await;
    step_up(&refused, MCP_METADATA);
    let error = refused.message();
    assert_eq!(error["id"], 7, "{refused:?}");
    assert_eq!(error["error"]["code"], -32003, "{refused:?}");
    let allowed = rpc(
        gate,
        &in_session,
        &tool_call(8, "get_all_memories", json!({})),
    )
    .await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert!(allowed.message()["result"].is_object(), "{allowed:?}");
    assert!(env.mcp.calls_of("add_memory").is_empty());
    assert_eq!(env.mcp.calls_of("get_all_memories").len(), 1);

    // A read-only memgate token keeps the in-band refusal.
    let token = gate.create_token("carol", &["--permissions", "read"]);
    let own = session(gate, &[("x-mcp-token", token)]).await;
    let in_band = rpc(
        gate,
        &own,
        &tool_call(9, "add_memory", json!({"text": "x"})),
    )
    .await;
    assert_eq!(in_band.status, 200, "{in_band:?}");
    assert!(in_band.challenge.is_none());
    assert_eq!(in_band.message()["error"]["code"], -32003, "{in_band:?}");
    assert!(env.mcp.calls_of("add_memory").is_empty());

    let refusals = audit_rows(&env.db, "permission_denied", 3).await;
    let jwt_refusals = refusals
        .iter()
        .filter(|e| {
            e.auth_method.as_deref() == Some("jwt") && e.user_id.as_deref() == Some(M2M_USER)
        })
        .count();
    assert_eq!(jwt_refusals, 2, "{refusals:?}");
}

/// How long memgate may reuse an introspection answer in the test below:
/// long enough that a burst of requests is answered from its cache, short
/// enough to wait out.
const INTROSPECTION_CACHE_SECS: u64 = 4;

/// The introspection requests the provider answered, once it reported at
/// least `at_least` (it reports each before memgate gets the answer, but
/// its output is read on another thread).
async fn introspections(provider: &Provider, at_least: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while provider.events("introspection").len() < at_least && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Anything reported after the ones awaited has been written by now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    provider.events("introspection")
}

/// Whether the provider answered introspection requests with these
/// `active` values, in order, always to memgate's client.
fn assert_introspected(seen: &[Value], active: &[bool], what: &str) {
    let answers: Vec<Value> = seen.iter().map(|e| e["active"].clone()).collect();
    let expected: Vec<Value> = active.iter().map(|a| json!(a)).collect();
    assert_eq!(answers, expected, "{what}: {seen:?}");
    for event in seen {
        assert_eq!(event["client_id"], "memgate-m2m", "{what}: {event}");
        assert_eq!(event["status"], 200, "{what}: {event}");
    }
}

/// Revokes `token` at the provider (RFC 7009) as the public client it was
/// issued to.
async fn revoke(issuer: &str, token: &str) {
    let response = http()
        .post(format!("{issuer}/token/revocation"))
        .form(&[
            ("token", token),
            ("token_type_hint", "access_token"),
            ("client_id", "memgate-cli"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "revocation");
}

/// Scrapes `/metrics` until `name` reaches `at_least` (memgate counts a
/// request after answering it) or 10 s passed; the last value seen.
async fn metric_reaching(gate: &Memgate, name: &str, at_least: f64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let value = gate.metric(name).await;
        if value >= at_least || std::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn opaque_access_tokens_are_introspected_at_the_provider_and_the_answers_cached() {
    // The provider issues opaque tokens for memgate's own resources, so only
    // introspection can tell memgate what they are.
    let Some(provider) = Provider::start(&[OTHER], &[MCP_RESOURCE, MEM0_RESOURCE]) else {
        return;
    };
    let issuer = provider.issuer.clone();
    // The secret comes from a file, as in production, never from the config.
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("introspection-secret");
    std::fs::write(&secret_file, "m2m-secret\n").unwrap();
    let introspection = format!(
        "[oauth.introspection]\nurl = \"{issuer}/token/introspection\"\n\
         client_id = \"memgate-m2m\"\nclient_secret = {{ file = {file:?} }}\n\
         cache_secs = {INTROSPECTION_CACHE_SECS}\n",
        file = secret_file.to_str().unwrap(),
    );
    let Env { mut provider, env } = trusting(provider, &introspection).await;
    let gate = &env.gate;
    let scope = "openid mcp:read mcp:write";
    // Introspection answers name the user in `sub` (memgate's user claim):
    // the account that signed in.
    let (alice, _) = authorization_code(&issuer, "alice", scope, MEM0_RESOURCE).await;
    assert!(!alice.contains('.'), "an opaque token: {alice}");
    let auth = [bearer(&alice)];

    // One token, both listeners, several requests: the provider is asked once.
    let listed = send(http().get(gate.mem0_url("/memories")), &auth).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    let first_answered = std::time::Instant::now();
    let added = post_memories(gate, &auth).await;
    assert_eq!(added.status, 200, "{added:?}");
    let in_session = session(gate, &auth).await;
    let called = rpc(
        gate,
        &in_session,
        &tool_call(2, "add_memory", json!({"text": "likes tea"})),
    )
    .await;
    assert_eq!(called.status, 200, "{called:?}");
    assert!(called.message()["result"].is_object(), "{called:?}");
    let in_window = first_answered.elapsed();
    assert!(
        in_window < Duration::from_secs(INTROSPECTION_CACHE_SECS - 1),
        "the requests took {in_window:?}: longer than the answer is surely cached"
    );
    assert_introspected(
        &introspections(&provider, 1).await,
        &[true],
        "five requests with one token",
    );

    // Each upstream saw the requests scoped to alice, and never the token.
    let seen = env.mem0.requests();
    let get = seen
        .iter()
        .find(|r| r.method == "GET" && r.uri.starts_with("/memories"))
        .expect("GET /memories upstream");
    assert!(get.uri.contains("user_id=alice"), "{}", get.uri);
    let post = seen
        .iter()
        .find(|r| r.method == "POST" && r.uri.starts_with("/memories"))
        .expect("POST /memories upstream");
    let body: Value = serde_json::from_slice(&post.body).unwrap();
    assert_eq!(body["user_id"], "alice", "{body}");
    let calls = env.mcp.calls_of("add_memory");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["user_id"], "alice", "{calls:?}");
    assert!(seen.iter().all(|r| r.header("authorization").is_none()));
    assert!(
        env.mcp
            .http_requests()
            .iter()
            .all(|r| r.header("authorization").is_none())
    );

    let allowed = "memgate_auth_decisions_total{auth_method=\"introspection\",reason=\"ok\",result=\"allow\"}";
    let allowed_count = metric_reaching(gate, allowed, 5.0).await;
    assert!(allowed_count >= 5.0, "{allowed} = {allowed_count}");
    let successes = audit_rows(&env.db, "auth_success", 1).await;
    let alices: Vec<_> = successes
        .iter()
        .filter(|e| e.user_id.as_deref() == Some("alice"))
        .collect();
    assert!(!alices.is_empty(), "{successes:?}");
    // The token is named by a digest of it, never by any part of itself.
    let label = format!(
        "oauth:{}",
        &hex::encode(sha2::Sha256::digest(alice.as_bytes()))[..8]
    );
    for row in &alices {
        assert_eq!(row.auth_method.as_deref(), Some("introspection"), "{row:?}");
        assert_eq!(row.token_prefix.as_deref(), Some(label.as_str()), "{row:?}");
    }

    // Refusals: a token the provider never issued, one revoked before its
    // first use, and alice's once memgate's answer about it has aged out.
    // The provider's word that a token is inactive is cached too.
    revoke(&issuer, &alice).await;
    let never_issued = "2YotnFZFEjr1zCsicMWpAAxxxxxxxxxxxxxxxxxxxxx".to_string();
    let (revoked, _) = authorization_code(&issuer, "bob", scope, MEM0_RESOURCE).await;
    revoke(&issuer, &revoked).await;
    let mem0_before = env.mem0.requests().len();
    let mcp_before = env.mcp.http_requests().len();
    for (what, token) in [("never issued", &never_issued), ("revoked", &revoked)] {
        let mem0 = send(http().get(gate.mem0_url("/memories")), &[bearer(token)]).await;
        assert_invalid_token(&mem0, what);
        assert!(
            mem0.challenge
                .unwrap()
                .contains("error_description=\"The access token is not active\""),
            "{what}"
        );
        let mcp = rpc(
            gate,
            &[bearer(token)],
            &tool_call(3, "add_memory", json!({"text": "x"})),
        )
        .await;
        assert_invalid_token(&mcp, what);
        assert!(mcp.challenge.unwrap().contains(MCP_METADATA), "{what}");
    }
    assert_introspected(
        &introspections(&provider, 3).await,
        &[true, false, false],
        "two refused tokens, each on both listeners",
    );
    // Until memgate's answer about alice's token ages out it holds; after,
    // the provider is asked again and the revocation counts, also in the
    // MCP session the token opened.
    let aged = Duration::from_millis(INTROSPECTION_CACHE_SECS * 1000 + 100);
    tokio::time::sleep(aged.saturating_sub(first_answered.elapsed())).await;
    let mem0 = send(http().get(gate.mem0_url("/memories")), &auth).await;
    assert_invalid_token(&mem0, "revoked after use");
    let mcp = rpc(
        gate,
        &in_session,
        &tool_call(4, "add_memory", json!({"text": "x"})),
    )
    .await;
    assert_invalid_token(&mcp, "revoked after use, in its session");
    assert_introspected(
        &introspections(&provider, 4).await,
        &[true, false, false, false],
        "alice's token after revocation",
    );
    assert_nothing_forwarded(&env, mem0_before, mcp_before);
    assert_eq!(env.mcp.calls_of("add_memory").len(), 1);
    let inactive = "memgate_auth_decisions_total{auth_method=\"introspection\",reason=\"inactive\",result=\"deny\"}";
    let inactive_count = metric_reaching(gate, inactive, 6.0).await;
    assert_eq!(inactive_count, 6.0, "{inactive}");

    // The provider unreachable: an answer memgate already has holds, a token
    // it has not seen gets 503 (not the token's fault: no invalid_token).
    let (cached, _) = authorization_code(&issuer, "carol", scope, MEM0_RESOURCE).await;
    let (fresh, _) = authorization_code(&issuer, "dave", scope, MEM0_RESOURCE).await;
    let before_stop = send(http().get(gate.mem0_url("/memories")), &[bearer(&cached)]).await;
    assert_eq!(before_stop.status, 200, "{before_stop:?}");
    provider.stop();
    let after_stop = send(http().get(gate.mem0_url("/memories")), &[bearer(&cached)]).await;
    assert_eq!(after_stop.status, 200, "a cached answer: {after_stop:?}");
    let mem0_before = env.mem0.requests().len();
    let mcp_before = env.mcp.http_requests().len();
    let mem0 = send(http().get(gate.mem0_url("/memories")), &[bearer(&fresh)]).await;
    let mcp = rpc(
        gate,
        &[bearer(&fresh)],
        &tool_call(5, "add_memory", json!({"text": "x"})),
    )
    .await;
    for (listener, reply) in [("mem0", &mem0), ("MCP", &mcp)] {
        assert_eq!(reply.status, 503, "{listener}: {reply:?}");
        assert!(reply.challenge.is_none(), "{listener}: {reply:?}");
    }
    assert_nothing_forwarded(&env, mem0_before, mcp_before);
    let unavailable = "memgate_auth_decisions_total{auth_method=\"introspection\",reason=\"issuer_unavailable\",result=\"error\"}";
    let unavailable_count = metric_reaching(gate, unavailable, 2.0).await;
    assert_eq!(unavailable_count, 2.0, "{unavailable}");

    // The audit says how each refusal authenticated and why, and no record
    // or log line holds a token.
    let failures = audit_rows(&env.db, "auth_failure", 8).await;
    let reasons: Vec<(Option<&str>, Option<&str>)> = failures
        .iter()
        .map(|e| (e.auth_method.as_deref(), e.reason.as_deref()))
        .collect();
    let count = |reason: &str| {
        reasons
            .iter()
            .filter(|r| **r == (Some("introspection"), Some(reason)))
            .count()
    };
    assert_eq!(count("inactive"), 6, "{failures:?}");
    assert_eq!(count("issuer_unavailable"), 2, "{failures:?}");
    let store = env.db.store().await;
    let everything = store
        .audit_events(&memgate::store::AuditFilter {
            since: chrono::Utc::now() - chrono::Duration::days(1),
            until: None,
            user_id: None,
            event: None,
            limit: 1000,
            newest_first: false,
        })
        .await
        .unwrap();
    let log = gate.log();
    for token in [&alice, &never_issued, &revoked, &cached, &fresh] {
        for row in &everything {
            let text = serde_json::to_string(row).unwrap();
            assert!(
                !text.contains(token.as_str()),
                "a token in the audit: {text}"
            );
        }
        assert!(!log.contains(token.as_str()), "a token in memgate's log");
    }
}

async fn python_sdk_calls_tools_with_an_access_token(client: SdkClient) {
    if !client.ready() {
        return;
    }
    let Some(Env { provider, env }) = start(None, "").await else {
        return;
    };
    let jwt = client_credentials(&provider.issuer, "mcp:read mcp:write", MCP_RESOURCE).await;
    let calls = json!([
        {"tool": "add_memory", "arguments": {"text": "x"}},
        {"tool": "get_all_memories", "arguments": {}},
    ]);
    let run = client
        .run(
            &env.gate.mcp_url("/mcp"),
            &jwt,
            &calls,
            &["--bearer"],
            Duration::from_secs(60),
        )
        .await;
    let out = run.describe();
    assert!(run.success && run.fatal().is_none(), "{out}");
    assert_eq!(run.step("initialize").unwrap()["ok"], true, "{out}");
    let results = run.calls();
    assert_eq!(results.len(), 2, "{out}");
    assert!(results.iter().all(|c| c["ok"] == true), "{out}");
    let added = env.mcp.calls_of("add_memory");
    assert_eq!(added.len(), 1, "{out}");
    assert_eq!(added[0]["user_id"], M2M_USER);
}

#[tokio::test]
async fn python_sdk_1_calls_tools_with_an_access_token() {
    python_sdk_calls_tools_with_an_access_token(SdkClient::Python1).await;
}

#[tokio::test]
async fn python_sdk_2_calls_tools_with_an_access_token() {
    python_sdk_calls_tools_with_an_access_token(SdkClient::Python2).await;
}

#[test]
fn check_config_reports_oauth_errors_as_serve_would() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let config = |secret_var: &str| {
        format!(
            "[database]\nurl = \"sqlite://x.db?mode=rwc\"\n\
             [oauth]\nenabled = true\nissuer = \"https://issuer.example.com\"\n\
             [oauth.introspection]\nurl = \"https://issuer.example.com/introspect\"\n\
             client_id = \"memgate\"\nclient_secret = {{ env = \"{secret_var}\" }}\n"
        )
    };
    std::fs::write(&path, config("MEMGATE_TEST_UNSET_INTROSPECTION_SECRET")).unwrap();
    let message = err(&cli(&path, &["check-config"]));
    assert!(
        message.contains("oauth.introspection.client_secret"),
        "{message}"
    );
    // With the secret in the environment the same file passes.
    std::fs::write(&path, config("PATH")).unwrap();
    ok(&cli(&path, &["check-config"]));
}
