//! The official MCP client SDKs' own OAuth clients against memgate, end to
//! end: each starts with no credentials, meets memgate's 401, follows its
//! `WWW-Authenticate` to the Protected Resource Metadata, from there to the
//! authorization server (oidc-provider, tests/support/oidc.rs), registers
//! itself, signs the user in (login and consent pages) with PKCE, exchanges
//! the code for an access token for memgate's resource, and then uses the
//! MCP listener with it. The scripts are tests/clients/oauth_client.py (the
//! Python SDK, 1.x and 2.x) and tests/clients/oauth_client.mjs (the
//! TypeScript SDK). alice and bob each sign in; what the upstream received,
//! the provider's record, the audit trail and `/metrics` must show each
//! acting as themselves only.
//!
//! Both SDKs ask for the scope memgate's 401 names, else for every scope the
//! metadata offers, and the provider here grants whatever its users consent
//! to, as many do. So memgate's 401 on the MCP listener names an ordinary
//! session's `mcp:read mcp:write`, and the metadata offers no scope that
//! grants admin: with memgate's default `[oauth.scopes]`, which map
//! `mcp:admin` too, a user who signs in through an SDK is never an admin
//! ([`with_the_default_scopes_an_sdk_user_is_not_an_admin`]).
//!
//! Skipped without the SDKs (unless `MEMGATE_REQUIRE_SDK_CLIENTS=1`) or
//! without oidc-provider (unless `MEMGATE_REQUIRE_OIDC=1`).

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::mcp_server::McpEnv;
use support::oidc::{Options, Provider};
use support::sdk::{SdkClient, SdkRun};
use support::*;

/// Where the scripts have the browser sent back (they read the redirect;
/// nothing listens there).
const REDIRECT_URI: &str = "http://127.0.0.1:4711/callback";

/// How long one client run may take: discovery, registration, two
/// interaction pages, the token, then a handful of calls.
const RUN_LIMIT: Duration = Duration::from_secs(25);

struct Env {
    provider: Provider,
    env: McpEnv,
}

/// oidc-provider with dynamic registration, the stand-in upstreams, and
/// memgate trusting the provider with its default `[oauth.scopes]`; `None`
/// when the provider cannot run here.
///
/// `oauth.audience` is left out: memgate then names its resources after its
/// listen addresses (`http://127.0.0.1:PORT/mcp` for the MCP listener),
/// which is exactly the URL the SDKs connect to, and both SDKs refuse
/// metadata whose `resource` does not match that URL. Those ports are picked
/// when memgate starts, after the provider, so the provider takes any port.
async fn start() -> Option<Env> {
    let provider = Provider::start_with(
        &["http://127.0.0.1:*/mcp", "http://127.0.0.1:*"],
        &[],
        Options {
            dynamic_registration: true,
            ..Options::default()
        },
    )?;
    let db = TestDb::new(Backend::Sqlite).await;
    let mem0 = support::mem0::Mem0::start().await;
    let mcp = support::mcp_server::McpServer::start().await;
    let mut cfg = MemgateConfig::new(&db.url, &mcp.url());
    cfg.mem0_upstream = mem0.url();
    cfg.extra = format!(
        "[oauth]\nenabled = true\nissuer = {issuer:?}\n",
        issuer = provider.issuer
    );
    let gate = Memgate::start(cfg).await;
    let env = McpEnv {
        db,
        mem0,
        mcp,
        gate,
    };
    Some(Env { provider, env })
}

/// What memgate's 401 asks for on the MCP listener, and so all an SDK
/// asks for: reading and writing one's own memories.
const USER_SCOPES: &str = "mcp:read mcp:write";

/// What a user's run asks for: a write, a listing of their own memories,
/// and a search.
fn own_calls(text: &str) -> Value {
    json!([
        {"tool": "add_memory", "arguments": {"text": text}},
        {"tool": "get_all_memories", "arguments": {}},
        {"tool": "search_memories", "arguments": {"query": "likes"}},
    ])
}

/// The text of a tool result (all its text content, joined).
fn result_text(call: &Value) -> String {
    call["result"]["content"]
        .as_array()
        .map(|content| {
            content
                .iter()
                .filter_map(|c| c["text"].as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The (method, URL, status) exchanges the SDK made, from its `oauth` line.
fn trail(run: &SdkRun) -> Vec<(String, String, u64)> {
    let out = run.describe();
    let oauth = run.step("oauth").unwrap_or_else(|| panic!("{out}"));
    oauth["requests"]
        .as_array()
        .unwrap_or_else(|| panic!("{out}"))
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_string(),
                r[1].as_str().unwrap().to_string(),
                r[2].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Where in `trail` the first exchange matching `what` is, after `after`.
fn position(
    trail: &[(String, String, u64)],
    after: usize,
    what: &str,
    matches: impl Fn(&str, &str, u64) -> bool,
) -> usize {
    trail
        .iter()
        .enumerate()
        .skip(after)
        .find(|(_, (method, url, status))| matches(method, url, *status))
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("no {what} after exchange {after} in {trail:#?}"))
}

/// Checks that the SDK found everything by itself, in the order discovery
/// goes: memgate's 401, the metadata it names, the provider's metadata,
/// registration, the code exchange, then the MCP request again with the
/// token. Returns the client id the SDK registered.
fn assert_discovered(run: &SdkRun, env: &Env, user: &str) -> String {
    let out = run.describe();
    let gate = &env.env.gate;
    let issuer = &env.provider.issuer;
    let endpoint = gate.mcp_url("/mcp");
    let metadata = gate.mcp_url("/.well-known/oauth-protected-resource/mcp");
    let trail = trail(run);

    let refused = position(&trail, 0, "401 from memgate", |m, u, s| {
        m == "POST" && u == endpoint && s == 401
    });
    let prm = position(&trail, refused, "PRM fetch", |m, u, s| {
        m == "GET" && u == metadata && s == 200
    });
    let asm = position(&trail, prm, "authorization server metadata", |m, u, s| {
        m == "GET"
            && s == 200
            && (u == format!("{issuer}/.well-known/oauth-authorization-server")
                || u == format!("{issuer}/.well-known/openid-configuration"))
    });
    let registered = position(&trail, asm, "registration", |m, u, s| {
        m == "POST" && u == format!("{issuer}/reg") && s == 201
    });
    let token = position(&trail, registered, "token request", |m, u, s| {
        m == "POST" && u == format!("{issuer}/token") && s == 200
    });
    position(&trail, token, "MCP request with the token", |m, u, s| {
        m == "POST" && u == endpoint && s == 200
    });
    // Nothing but the first attempt was refused.
    let refusals: Vec<_> = trail.iter().filter(|(_, _, s)| *s == 401).collect();
    assert_eq!(refusals.len(), 1, "{trail:#?}\n{out}");

    // The authorization request the SDK built: PKCE, and memgate's resource.
    let authorize = run.step("authorize").unwrap_or_else(|| panic!("{out}"));
    let authorize = url::Url::parse(authorize["url"].as_str().unwrap()).unwrap();
    let query: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(
        authorize.as_str().split('?').next(),
        Some(&*format!("{issuer}/auth"))
    );
    assert_eq!(
        query.get("code_challenge_method").map(String::as_str),
        Some("S256"),
        "{out}"
    );
    assert!(query.contains_key("code_challenge"), "{out}");
    assert_eq!(query.get("resource"), Some(&endpoint), "{out}");
    assert_eq!(
        query.get("redirect_uri").map(String::as_str),
        Some(REDIRECT_URI),
        "{out}"
    );

    // The access token the SDK got: the provider's, for memgate's MCP
    // endpoint, naming the user who signed in.
    let oauth = run.step("oauth").unwrap();
    let claims = &oauth["token_claims"];
    assert_eq!(claims["iss"], json!(issuer), "{out}");
    assert_eq!(claims["sub"], user, "{out}");
    let aud = match &claims["aud"] {
        Value::Array(list) => list.clone(),
        one => vec![one.clone()],
    };
    assert_eq!(aud, [json!(endpoint)], "{out}");
    let client_id = oauth["client_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(claims["client_id"], client_id, "{out}");

    // The provider's side: that client registered itself, the user
    // authorized it for memgate's resource, and it redeemed the code.
    let registrations = env.provider.events("registration");
    let registration = registrations
        .iter()
        .find(|e| e["client_id"] == client_id)
        .unwrap_or_else(|| panic!("no registration of {client_id}: {registrations:?}\n{out}"));
    assert_eq!(registration["redirect_uris"], json!([REDIRECT_URI]));
    assert_eq!(registration["token_endpoint_auth_method"], "none");
    let authorizations = env.provider.events("authorization");
    assert!(
        authorizations.iter().any(|e| e["client_id"] == client_id
            && e["account"] == user
            && e["resource"] == json!(endpoint)
            && e["code_challenge_method"] == "S256"),
        "{authorizations:?}\n{out}"
    );
    let grants = env.provider.events("grant");
    assert!(
        grants.iter().any(|e| e["client_id"] == client_id
            && e["grant_type"] == "authorization_code"
            && e["resource"] == json!(endpoint)),
        "{grants:?}\n{out}"
    );
    client_id.to_string()
}

/// The SDK asked for exactly the scopes memgate's 401 names, and got them.
fn assert_scope(run: &SdkRun, scopes: &str) {
    let out = run.describe();
    let sorted = |list: &str| {
        let mut words: Vec<String> = list
            .split(' ')
            .filter(|w| !w.is_empty() && *w != "offline_access")
            .map(String::from)
            .collect();
        words.sort();
        words
    };
    let authorize = run.step("authorize").unwrap_or_else(|| panic!("{out}"));
    let authorize = url::Url::parse(authorize["url"].as_str().unwrap()).unwrap();
    let requested = authorize
        .query_pairs()
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    // The Python SDK 2.x adds offline_access when the provider offers it.
    assert_eq!(sorted(&requested), sorted(scopes), "requested: {out}");
    let granted = run.step("oauth").unwrap()["token_claims"]["scope"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(sorted(&granted), sorted(scopes), "granted: {out}");
}

/// The run worked: signed in, initialized, listed the tools, and every
/// call but the last `refused` ones answered.
fn assert_session(run: &SdkRun, calls: usize, refused: usize) {
    let out = run.describe();
    assert!(run.success && run.fatal().is_none(), "{out}");
    assert_eq!(run.step("oauth").unwrap()["ok"], true, "{out}");
    assert_eq!(run.step("initialize").unwrap()["ok"], true, "{out}");
    let tools = &run.step("tools/list").unwrap_or_else(|| panic!("{out}"))["result"];
    assert!(
        tools
            .as_array()
            .is_some_and(|t| t.contains(&json!("add_memory"))),
        "{out}"
    );
    let results = run.calls();
    assert_eq!(results.len(), calls, "{out}");
    let (answered, refusals) = results.split_at(calls - refused);
    assert!(answered.iter().all(|c| c["ok"] == true), "{out}");
    assert!(refusals.iter().all(|c| c["ok"] == false), "{out}");
}

/// Audit events of `event` in the store, once the writer stored one for
/// each of `users` (memgate records after it answers), or after 10 s.
async fn audit_rows(db: &TestDb, event: &str, users: &[&str]) -> Vec<memgate::audit::AuditEvent> {
    db.audit_rows_until(event, |rows| {
        users
            .iter()
            .all(|user| rows.iter().any(|e| e.user_id.as_deref() == Some(*user)))
    })
    .await
}

/// A `/metrics` sample once it reaches `at_least` (memgate counts after it
/// answers), or its last value after 10 s.
async fn metric_at_least(gate: &Memgate, sample: &str, at_least: f64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let value = gate.metric(sample).await;
        if value >= at_least || std::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sdk_signs_in_and_each_user_stays_in_their_own_memories(client: SdkClient) {
    if !client.ready() {
        return;
    }
    let Some(env) = start().await else {
        return;
    };
    let gate = &env.env.gate;
    let upstream = &env.env.mcp;
    let endpoint = gate.mcp_url("/mcp");

    // alice signs in and writes.
    let alice = client
        .run_oauth(&endpoint, "alice", &own_calls("alice likes tea"), RUN_LIMIT)
        .await;
    assert_session(&alice, 3, 0);
    let alice_client = assert_discovered(&alice, &env, "alice");
    assert_scope(&alice, USER_SCOPES);
    let added = upstream.calls_of("add_memory");
    assert_eq!(
        added,
        [json!({"text": "alice likes tea", "user_id": "alice"})],
        "{}",
        alice.describe()
    );
    let reached = upstream.tool_calls();
    assert_eq!(reached.len(), 3, "{reached:?}");
    for (tool, arguments) in &reached {
        assert_eq!(arguments["user_id"], "alice", "{tool}: {reached:?}");
    }
    let listed = &alice.calls()[1];
    assert!(
        result_text(listed).contains("alice likes tea"),
        "{}",
        alice.describe()
    );

    // bob signs in through his own registration and authorization, writes,
    // lists and searches, and then asks for alice's memories by name.
    let mut calls = own_calls("bob likes coffee");
    calls.as_array_mut().unwrap().push(json!(
        {"tool": "get_all_memories", "arguments": {"user_id": "alice"}}
    ));
    upstream.clear();
    let bob = client.run_oauth(&endpoint, "bob", &calls, RUN_LIMIT).await;
    let out = bob.describe();
    assert_session(&bob, 4, 1);
    let bob_client = assert_discovered(&bob, &env, "bob");
    assert_scope(&bob, USER_SCOPES);
    assert_ne!(alice_client, bob_client, "each run registers itself");
    let results = bob.calls();
    for seen in &results[1..3] {
        let text = result_text(seen);
        assert!(text.contains("bob likes coffee"), "{out}");
        assert!(!text.contains("alice"), "bob saw alice's memories: {out}");
    }
    assert_eq!(
        results[3]["error_kind"],
        client.protocol_error_kind(),
        "asking for alice's memories is refused in-band: {out}"
    );
    // Everything bob's session asked the upstream for was scoped to bob;
    // the refused call never reached it.
    let reached = upstream.tool_calls();
    assert_eq!(reached.len(), 3, "{reached:?}\n{out}");
    for (tool, arguments) in &reached {
        assert_eq!(arguments["user_id"], "bob", "{tool}: {reached:?}");
    }
    // The upstream never sees an access token.
    for request in upstream.http_requests() {
        assert!(request.header("authorization").is_none(), "{request:?}");
    }

    // memgate's record: each user authenticated by a JWT, under their name.
    let successes = audit_rows(&env.env.db, "auth_success", &["alice", "bob"]).await;
    for user in ["alice", "bob"] {
        let theirs: Vec<_> = successes
            .iter()
            .filter(|e| e.user_id.as_deref() == Some(user))
            .collect();
        assert!(!theirs.is_empty(), "{user}: {successes:?}");
        assert!(
            theirs
                .iter()
                .all(|e| e.auth_method.as_deref() == Some("jwt")
                    && e.token_prefix
                        .as_deref()
                        .is_some_and(|p| p.starts_with("jwt:"))),
            "{user}: {theirs:?}"
        );
    }
    assert!(
        successes
            .iter()
            .all(|e| matches!(e.user_id.as_deref(), Some("alice" | "bob"))),
        "{successes:?}"
    );
    // Every MCP request after sign-in was a JWT allowed: at least the
    // initialize, initialized, tools/list and calls of both runs.
    let allowed =
        "memgate_auth_decisions_total{auth_method=\"jwt\",reason=\"ok\",result=\"allow\"}";
    let jwt_allowed = metric_at_least(gate, allowed, 12.0).await;
    assert!(jwt_allowed >= 12.0, "{allowed} = {jwt_allowed}");
    // And each run's first request, without credentials, was refused.
    let missing =
        "memgate_auth_decisions_total{auth_method=\"none\",reason=\"missing\",result=\"deny\"}";
    let refused = metric_at_least(gate, missing, 2.0).await;
    assert!(refused >= 2.0, "{missing} = {refused}");
}

#[tokio::test]
async fn python_sdk_1_oauth_client_signs_in_through_discovery() {
    sdk_signs_in_and_each_user_stays_in_their_own_memories(SdkClient::Python1).await;
}

#[tokio::test]
async fn python_sdk_2_oauth_client_signs_in_through_discovery() {
    sdk_signs_in_and_each_user_stays_in_their_own_memories(SdkClient::Python2).await;
}

#[tokio::test]
async fn typescript_sdk_oauth_client_signs_in_through_discovery() {
    sdk_signs_in_and_each_user_stays_in_their_own_memories(SdkClient::TypeScript).await;
}

/// memgate's default `[oauth.scopes]` map `mcp:admin` too; an SDK that
/// signs bob in must still not be given a token that lets him name alice.
#[tokio::test]
async fn with_the_default_scopes_an_sdk_user_is_not_an_admin() {
    let clients: Vec<SdkClient> = [
        SdkClient::Python1,
        SdkClient::Python2,
        SdkClient::TypeScript,
    ]
    .into_iter()
    .filter(|c| c.ready())
    .collect();
    if clients.is_empty() {
        return;
    }
    let Some(env) = start().await else {
        return;
    };
    let endpoint = env.env.gate.mcp_url("/mcp");
    let upstream = &env.env.mcp;
    let calls = json!([{"tool": "get_all_memories", "arguments": {"user_id": "alice"}}]);
    for client in clients {
        let bob = client.run_oauth(&endpoint, "bob", &calls, RUN_LIMIT).await;
        let out = bob.describe();
        assert!(bob.success && bob.fatal().is_none(), "{out}");
        assert_discovered(&bob, &env, "bob");
        assert_scope(&bob, USER_SCOPES);
        let reached: Vec<_> = upstream
            .tool_calls()
            .into_iter()
            .filter(|(_, arguments)| arguments["user_id"] != "bob")
            .collect();
        assert!(
            reached.is_empty(),
            "{}: bob, signed in with the scopes memgate asks for ({}), read alice's \
             memories: {reached:?}\n{out}",
            client.name(),
            bob.step("oauth").unwrap()["scope"]
        );
        assert_eq!(
            bob.calls()[0]["error_kind"],
            client.protocol_error_kind(),
            "{out}"
        );
    }
}
