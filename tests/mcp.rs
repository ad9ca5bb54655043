//! End to end through memgate's MCP listener (docs/design.md §3, §5): a real
//! memgate process in front of an MCP server shaped like the mem0 MCP servers
//! (`support::mcp_server::McpServer`, rmcp over Streamable HTTP plus a legacy
//! SSE pair) and a fake mem0 REST server (`support::mem0::Mem0`) that memgate
//! asks for memory owners. Clients are rmcp's own Streamable HTTP client or raw
//! reqwest; every test checks what the client got AND what the upstream MCP
//! server actually received.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderName, HeaderValue};
use futures::{Stream, StreamExt};
use rmcp::model::{CallToolRequestParams, CallToolResult, ProgressNotificationParam};
use rmcp::service::{ClientInitializeError, NotificationContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, ServiceError, ServiceExt};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use support::mcp_server::{McpEnv, McpServer};
use support::mem0::Mem0;
use support::*;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Longest any single network step may take (streams excepted).
const STEP: Duration = Duration::from_secs(10);

type Env = McpEnv;

/// A memgate whose MCP listener fronts a fresh fake MCP server and whose
/// owner lookups go to a fresh fake mem0. `mcp_extra` goes inside `[mcp]`,
/// `extra` is appended as whole sections.
async fn env_with(mcp_extra: &str, extra: &str) -> Env {
    McpEnv::start(mcp_extra, extra).await
}

async fn env() -> Env {
    env_with("", "").await
}

const RW: &[&str] = &[];
const READ_ONLY: &[&str] = &["--permissions", "read"];

const WRITE_TOOLS: [&str; 5] = [
    "add_memory",
    "update_memory",
    "delete_memory",
    "delete_all_memories",
    "add_coding_preference",
];
const READ_TOOLS: [&str; 4] = [
    "search_memories",
    "get_all_memories",
    "get_memory",
    "get_memory_history",
];
/// The stand-in's tools that act on one mem0 id per server process (like
/// the Mem0 MCP Server stack's): refused and hidden on a shared upstream.
const PER_PROCESS_TOOLS: [&str; 3] = [
    "add_coding_preference",
    "search_coding_preferences",
    "get_all_coding_preferences",
];

/// The rule a test needs to call the stand-in's `slow_progress` (a tool no
/// shipped rule names).
const SLOW_PROGRESS_RULE: &str =
    "[mcp.tools.slow_progress]\npermission = \"read\"\nscoped_by = \"none\"\n";

/// Runs `fut`, failing the test if it takes longer than `limit`.
async fn bounded<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {limit:?}"))
}

fn project_hash(user: &str, project: &str) -> String {
    let digest = Sha256::digest(format!("{user}\0{project}").as_bytes());
    hex::encode(digest)[..12].to_string()
}

fn args(value: Value) -> Map<String, Value> {
    value.as_object().cloned().expect("arguments are an object")
}

/// An error and every error under it, as one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{error} ({error:?})");
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(&format!(" <- {inner}"));
        source = inner.source();
    }
    text
}

// --- rmcp client -------------------------------------------------------------

/// A client handler that records progress notifications and when they came.
#[derive(Clone, Default)]
struct Recorder {
    progress: Arc<Mutex<Vec<(Instant, ProgressNotificationParam)>>>,
}

impl ClientHandler for Recorder {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress
            .lock()
            .expect("progress")
            .push((Instant::now(), params));
    }
}

type Client = RunningService<RoleClient, Recorder>;

/// Connects rmcp's Streamable HTTP client to memgate's `/mcp` with these
/// headers on every request, and runs `initialize`.
async fn try_connect(
    gate: &Memgate,
    headers: &[(&str, &str)],
) -> Result<Client, ClientInitializeError> {
    let headers: HashMap<HeaderName, HeaderValue> = headers
        .iter()
        .map(|(n, v)| {
            (
                HeaderName::from_bytes(n.as_bytes()).expect("header name"),
                HeaderValue::from_str(v).expect("header value"),
            )
        })
        .collect();
    let config = StreamableHttpClientTransportConfig::with_uri(gate.mcp_url("/mcp"))
        .custom_headers(headers)
        .reinit_on_expired_session(false);
    let transport = StreamableHttpClientTransport::from_config(config);
    bounded(STEP, "initialize", Recorder::default().serve(transport)).await
}

async fn connect(gate: &Memgate, token: &str) -> Client {
    connect_with(gate, &[("X-MCP-Token", token)]).await
}

async fn connect_with(gate: &Memgate, headers: &[(&str, &str)]) -> Client {
    match try_connect(gate, headers).await {
        Ok(client) => client,
        Err(e) => panic!(
            "rmcp client could not initialise through memgate: {}",
            chain(&e)
        ),
    }
}

async fn call(
    client: &Client,
    tool: &str,
    arguments: Value,
) -> Result<CallToolResult, ServiceError> {
    let params = CallToolRequestParams::new(tool.to_string()).with_arguments(args(arguments));
    bounded(STEP, tool, client.call_tool(params)).await
}

/// A call that must succeed; returns the tool's JSON result.
async fn call_ok(client: &Client, tool: &str, arguments: Value) -> Value {
    let result = match call(client, tool, arguments.clone()).await {
        Ok(result) => result,
        Err(e) => panic!("{tool} {arguments} failed: {}", chain(&e)),
    };
    assert_ne!(
        result.is_error,
        Some(true),
        "{tool} {arguments}: {result:?}"
    );
    first_text_json(&result)
}

/// A call memgate must refuse; returns the whole error text.
async fn call_refused(client: &Client, tool: &str, arguments: Value) -> String {
    match call(client, tool, arguments.clone()).await {
        Ok(result) => panic!("{tool} {arguments} was not refused: {result:?}"),
        Err(e) => chain(&e),
    }
}

async fn tool_names(client: &Client) -> BTreeSet<String> {
    bounded(STEP, "tools/list", client.list_all_tools())
        .await
        .expect("tools/list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect()
}

async fn close(client: Client) {
    let _ = bounded(STEP, "client close", client.cancel()).await;
}

// --- raw HTTP ----------------------------------------------------------------

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(STEP)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    /// Every JSON-RPC message of the body (a JSON body, or the `data` of each
    /// SSE event).
    messages: Vec<Value>,
    text: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_string())
    }

    /// The one JSON value of a JSON body (`Null` when there is none).
    fn json(&self) -> Value {
        self.messages.first().cloned().unwrap_or(Value::Null)
    }

    /// The message answering request `id`.
    fn answer(&self, id: i64) -> Option<&Value> {
        self.messages.iter().find(|m| m["id"] == json!(id))
    }
}

/// The JSON-RPC messages of a body: plain JSON, or an event stream.
fn rpc_messages(text: &str) -> Vec<Value> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        return serde_json::from_str(trimmed).map_or_else(|_| Vec::new(), |v| vec![v]);
    }
    sse_events(text)
        .into_iter()
        .filter_map(|(_, data)| serde_json::from_str(&data).ok())
        .collect()
}

/// (event, data) of each event of an SSE text.
fn sse_events(text: &str) -> Vec<(String, String)> {
    let text = text.replace("\r\n", "\n");
    text.split("\n\n").filter_map(parse_event).collect()
}

fn parse_event(block: &str) -> Option<(String, String)> {
    let mut event = String::from("message");
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    (!data.is_empty()).then(|| (event, data.join("\n")))
}

async fn reply_of(resp: reqwest::Response) -> Reply {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = bounded(STEP, "response body", resp.text())
        .await
        .unwrap_or_default();
    Reply {
        status,
        headers,
        messages: rpc_messages(&text),
        text,
    }
}

/// An environment with alice's token and an MCP session of hers; the
/// server's records of the set-up are cleared.
async fn alice_in_session() -> (Env, String, String) {
    let env = env().await;
    let alice = env.gate.create_token("alice", RW);
    let session = raw_session(&env.gate, &alice, &[]).await;
    env.mcp.clear();
    (env, alice, session)
}

/// POSTs `body` (raw bytes) to `path` on the MCP listener.
async fn post_raw(gate: &Memgate, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
    let mut req = http()
        .post(gate.mcp_url(path))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    reply_of(req.body(body).send().await.expect("POST")).await
}

/// POSTs a JSON-RPC body to `/mcp` with a token and an optional session.
async fn post_rpc(gate: &Memgate, token: &str, session: Option<&str>, body: &Value) -> Reply {
    post_rpc_with(gate, token, session, &[], body).await
}

/// [`post_rpc`] with more headers.
async fn post_rpc_with(
    gate: &Memgate,
    token: &str,
    session: Option<&str>,
    extra: &[(&str, &str)],
    body: &Value,
) -> Reply {
    let mut headers = vec![("X-MCP-Token", token)];
    if let Some(session) = session {
        headers.push(("Mcp-Session-Id", session));
    }
    headers.extend_from_slice(extra);
    post_raw(gate, "/mcp", &headers, body.to_string().into_bytes()).await
}

fn initialize_body(id: i64) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "memgate-tests", "version": "0"},
        },
    })
}

fn tool_call(id: i64, tool: &str, arguments: Value) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    })
}

fn ping(id: i64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "ping"})
}

/// Initialises a Streamable HTTP session with raw requests (initialize, then
/// `notifications/initialized`) and returns its `Mcp-Session-Id`.
async fn raw_session(gate: &Memgate, token: &str, headers: &[(&str, &str)]) -> String {
    let mut all = vec![("X-MCP-Token", token)];
    all.extend_from_slice(headers);
    let reply = post_raw(
        gate,
        "/mcp",
        &all,
        initialize_body(1).to_string().into_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "initialize: {}", reply.text);
    assert!(
        reply.answer(1).is_some_and(|m| m["result"].is_object()),
        "initialize answer: {}",
        reply.text
    );
    let session = reply
        .header("mcp-session-id")
        .unwrap_or_else(|| panic!("no Mcp-Session-Id on the initialize answer: {reply:?}"));
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let mut with_session = all.clone();
    with_session.push(("Mcp-Session-Id", &session));
    let reply = post_raw(
        gate,
        "/mcp",
        &with_session,
        initialized.to_string().into_bytes(),
    )
    .await;
    assert_eq!(
        reply.status, 202,
        "notifications/initialized: {}",
        reply.text
    );
    session
}

/// A JSON-RPC refusal carrying the request's id.
fn assert_refusal(reply: &Reply, status: u16, id: i64, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.text);
    let body = reply.json();
    assert_eq!(body["jsonrpc"], "2.0", "{what}: {}", reply.text);
    assert_eq!(body["id"], json!(id), "{what}: {}", reply.text);
    assert!(body["error"]["code"].is_i64(), "{what}: {}", reply.text);
    assert!(
        body["error"]["message"].is_string(),
        "{what}: {}",
        reply.text
    );
}

/// Requests the upstream received carrying `Mcp-Session-Id: session`.
fn with_session<'a>(log: &'a [Recorded], session: &str) -> Vec<&'a Recorded> {
    log.iter()
        .filter(|r| r.header("mcp-session-id").as_deref() == Some(session))
        .collect()
}

/// Reads SSE events off a response body as they come.
struct SseReader {
    stream: Pin<Box<dyn Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>,
    buf: String,
}

impl SseReader {
    fn new(resp: reqwest::Response) -> SseReader {
        SseReader {
            stream: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next event with data, or `None` when the stream ends or stays
    /// silent for `limit`.
    async fn next_event(&mut self, limit: Duration) -> Option<(String, String)> {
        loop {
            self.buf = self.buf.replace("\r\n", "\n");
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                if let Some(event) = parse_event(&block) {
                    return Some(event);
                }
                continue;
            }
            match tokio::time::timeout(limit, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }
}

/// Opens a GET stream on the MCP listener.
async fn open_stream(gate: &Memgate, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    // No overall timeout: the stream may legitimately stay open for long.
    let client = reqwest::Client::builder()
        .connect_timeout(STEP)
        .build()
        .unwrap();
    let mut req = client
        .get(gate.mcp_url(path))
        .header("accept", "text/event-stream");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    bounded(STEP, "stream headers", req.send())
        .await
        .expect("GET stream")
}

// ---------------------------------------------------------------------------
// Streamable HTTP with rmcp's client
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_initializes_lists_and_calls_tools_through_memgate() {
    let env = env().await;
    let Env { mcp, gate, .. } = &env;
    let alice = gate.create_token("alice", RW);
    let client = connect_with(gate, &[("X-MCP-Token", &alice), ("X-MCP-UserID", "alice")]).await;
    assert!(client.peer_info().is_some(), "no initialize result");

    let listed = tool_names(&client).await;
    let callable: BTreeSet<String> = support::mcp_server::tool_names()
        .into_iter()
        .filter(|tool| !PER_PROCESS_TOOLS.contains(tool) && *tool != "slow_progress")
        .map(String::from)
        .collect();
    assert_eq!(
        listed, callable,
        "a read-write token sees every tool it may call on a shared upstream"
    );

    let added = call_ok(&client, "add_memory", json!({"text": "I drink green tea"})).await;
    assert_eq!(added["results"][0]["event"], "ADD", "{added}");
    let found = call_ok(
        &client,
        "search_memories",
        json!({"query": "tea", "user_id": "alice"}),
    )
    .await;
    assert_eq!(
        found["results"][0]["memory"], "I drink green tea",
        "{found}"
    );
    assert_eq!(found["results"][0]["user_id"], "alice", "{found}");
    let all = call_ok(&client, "get_all_memories", json!({})).await;
    assert_eq!(all["results"].as_array().map(Vec::len), Some(1), "{all}");

    assert_eq!(
        mcp.calls_of("add_memory"),
        [json!({"text": "I drink green tea", "user_id": "alice"})]
    );
    assert_eq!(
        mcp.calls_of("search_memories"),
        [json!({"query": "tea", "user_id": "alice"})]
    );
    assert_eq!(
        mcp.calls_of("get_all_memories"),
        [json!({"user_id": "alice"})]
    );

    // What the upstream saw: one session, trusted identity, no credentials.
    let log = mcp.http_requests();
    let posts: Vec<&Recorded> = log.iter().filter(|r| r.method == "POST").collect();
    assert!(posts.len() >= 5, "{posts:?}");
    let session = posts[1]
        .header("mcp-session-id")
        .expect("requests after initialize carry the session");
    for r in &posts[1..] {
        assert_eq!(
            r.header("mcp-session-id").as_deref(),
            Some(session.as_str())
        );
    }
    for r in &log {
        assert_eq!(r.header_all("x-mcp-userid"), ["alice"], "{r:?}");
        assert!(r.header("x-mcp-token").is_none(), "token forwarded: {r:?}");
        assert!(
            r.header("authorization").is_none(),
            "token forwarded: {r:?}"
        );
    }
    close(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_notification_is_streamed_before_the_result() {
    let env = env_with("", SLOW_PROGRESS_RULE).await;
    let Env { mcp, gate, .. } = &env;
    let alice = gate.create_token("alice", RW);
    let client = connect(gate, &alice).await;
    let progress = client.service().progress.clone();

    let result = call_ok(&client, "slow_progress", json!({})).await;
    let returned = Instant::now();
    assert_eq!(result, json!({"done": true}));
    assert_eq!(mcp.calls_of("slow_progress").len(), 1);

    let seen = progress.lock().expect("progress").clone();
    assert_eq!(seen.len(), 1, "progress notifications: {seen:?}");
    let (at, params) = &seen[0];
    assert_eq!(params.message.as_deref(), Some("halfway"));
    assert_eq!(params.progress, 1.0);
    // The server waits 300 ms between the two: a proxy that buffered the
    // response would deliver them together.
    let ahead = returned.duration_since(*at);
    assert!(
        ahead >= Duration::from_millis(200),
        "the progress notification arrived only {ahead:?} before the result"
    );
    close(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_client_deletes_its_session_upstream() {
    let env = env().await;
    let Env { mcp, gate, .. } = &env;
    let alice = gate.create_token("alice", RW);
    let client = connect(gate, &alice).await;
    call_ok(&client, "get_all_memories", json!({})).await;
    let session = mcp
        .http_requests()
        .iter()
        .find_map(|r| r.header("mcp-session-id"))
        .expect("a request carried the session");
    close(client).await;

    let deleted = within(Duration::from_secs(5), || async {
        mcp.http_requests().iter().any(|r| {
            r.method == "DELETE" && r.header("mcp-session-id").as_deref() == Some(&session)
        })
    })
    .await;
    assert!(
        deleted.is_some(),
        "no DELETE with the session reached the upstream: {:?}",
        mcp.http_requests()
    );
    // The session is gone upstream: using it again is a 404 from the server.
    let reply = post_rpc(gate, &alice, Some(&session), &ping(9)).await;
    assert_eq!(reply.status, 404, "{}", reply.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_token_gets_401_with_a_bearer_challenge() {
    let env = env().await;
    let Env { mcp, gate, .. } = &env;
    let _alice = gate.create_token("alice", RW);

    let error = match try_connect(gate, &[]).await {
        Ok(_) => panic!("a client without a token was let in"),
        Err(e) => e,
    };
    assert_eq!(
        error.auth_challenge(),
        Some("Bearer realm=\"memgate\""),
        "{}",
        chain(&error)
    );

    let reply = post_raw(
        gate,
        "/mcp",
        &[],
        initialize_body(1).to_string().into_bytes(),
    )
    .await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    assert_eq!(
        reply.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"memgate\"")
    );
    let body = reply.json();
    assert_eq!(body["jsonrpc"], "2.0", "{}", reply.text);
    assert!(body["error"]["code"].is_i64(), "{}", reply.text);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        reply.text
    );
    assert!(
        mcp.http_requests().is_empty(),
        "an unauthenticated request reached the server: {:?}",
        mcp.http_requests()
    );
}

// ---------------------------------------------------------------------------
// Tool arguments: users and memory ids
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_argument_naming_another_user_is_refused_and_never_reaches_the_tool() {
    let env = env().await;
    let Env { mcp, gate, .. } = &env;
    let alice = gate.create_token("alice", RW);
    let client = connect(gate, &alice).await;

    for (tool, arguments) in [
        ("search_memories", json!({"query": "x", "user_id": "bob"})),
        ("get_all_memories", json!({"userId": "bob"})),
        ("add_memory", json!({"text": "planted", "user_id": "bob"})),
        ("delete_all_memories", json!({"user_id": "bob"})),
        (
            "get_memory",
            json!({"memory_id": "whatever", "user_id": "bob"}),
        ),
    ] {
        let error = call_refused(&client, tool, arguments.clone()).await;
        assert!(error.contains("-32003"), "{tool} {arguments}: {error}");
    }
    assert!(
        mcp.tool_calls().is_empty(),
        "a refused call reached a tool: {:?}",
        mcp.tool_calls()
    );
    // The session survives a refusal.
    call_ok(&client, "get_all_memories", json!({"user_id": "alice"})).await;
    assert_eq!(
        mcp.calls_of("get_all_memories"),
        [json!({"user_id": "alice"})]
    );
    close(client).await;

    // The refusal itself: a JSON-RPC error for the request's id, in a 200.
    let session = raw_session(gate, &alice, &[]).await;
    mcp.clear();
    let reply = post_rpc(
        gate,
        &alice,
        Some(&session),
        &tool_call(
            7,
            "search_memories",
            json!({"query": "x", "user_id": "bob"}),
        ),
    )
    .await;
    assert_refusal(&reply, 200, 7, "user_id of another user");
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("alice"),
        "names the token's user: {message}"
    );
    assert!(mcp.tool_calls().is_empty(), "{:?}", mcp.tool_calls());
    assert!(
        !mcp.http_requests()
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("bob")),
        "the refused body reached the server: {:?}",
        mcp.http_requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_user_arguments_are_injected_and_the_callers_own_id_is_kept() {
    let env = env().await;
    let Env { mcp, gate, .. } = &env;
    let alice = gate.create_token("alice", RW);
    let client = connect(gate, &alice).await;

    call_ok(&client, "add_memory", json!({"text": "likes rust"})).await;
    call_ok(&client, "search_memories", json!({"query": "rust"})).await;
    call_ok(&client, "get_all_memories", json!({})).await;
    call_ok(&client, "delete_all_memories", json!({})).await;
    call_ok(
        &client,
        "add_memory",
        json!({"text": "own id", "user_id": "alice"}),
    )
    .await;
    assert_eq!(
        mcp.tool_calls(),
        [
            (
                "add_memory".to_string(),
                json!({"text": "likes rust", "user_id": "alice"})
            ),
            (
                "search_memories".to_string(),
                json!({"query": "rust", "user_id": "alice"})
            ),
            ("get_all_memories".to_string(), json!({"user_id": "alice"})),
            (
                "delete_all_memories".to_string(),
                json!({"user_id": "alice"})
            ),
            (
                "add_memory".to_string(),
                json!({"text": "own id", "user_id": "alice"})
            ),
        ]
    );
    // Nothing fell back to the server's default user.
    let everything = call_ok(&client, "get_all_memories", json!({})).await;
    assert_eq!(everything["results"][0]["user_id"], "alice", "{everything}");
    close(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_isolation_rewrites_user_arguments_to_the_project_scope() {
    let env = env_with("", "[isolation]\nmode = \"auto\"\n").await;
    let Env { mcp, gate, .. } = &env;
    let alice = gate.create_token("alice", RW);
    let project = "/home/alice/projects/MyApp";
    let scope = format!("project_myapp_{}", project_hash("alice", project));
    let client = connect_with(gate, &[("X-MCP-Token", &alice), ("X-MCP-Project", project)]).await;

    call_ok(
        &client,
        "add_memory",
        json!({"text": "scoped", "user_id": "alice"}),
    )
    .await;
    call_ok(&client, "search_memories", json!({"query": "scoped"})).await;
    call_ok(&client, "get_all_memories", json!({"user_id": scope})).await;
    assert_eq!(
        mcp.tool_calls(),
        [
            (
                "add_memory".to_string(),
                json!({"text": "scoped", "user_id": scope})
            ),
            (
                "search_memories".to_string(),
                json!({"query": "scoped", "user_id": scope})
            ),
            ("get_all_memories".to_string(), json!({"user_id": scope})),
        ]
    );
    // Another user's id (or another project's scope) is still refused.
    let other = format!("project_myapp_{}", project_hash("bob", project));
    for user in ["bob", other.as_str()] {
        let error = call_refused(&client, "get_all_memories", json!({"user_id": user})).await;
        assert!(error.contains("-32003"), "{user}: {error}");
    }
    assert_eq!(mcp.tool_calls().len(), 3, "{:?}", mcp.tool_calls());
    close(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_ids_of_another_user_are_refused_and_never_reach_the_tool() {
    let env = env().await;
    let Env {
        mem0, mcp, gate, ..
    } = &env;
    let alice = gate.create_token("alice", RW);
    let bobs = mem0.seed("bob", "bob's secret");
    let alices = mem0.seed("alice", "alice's note");
    let client = connect(gate, &alice).await;

    let denied = format!("Access denied: Memory {bobs} does not belong to user alice");
    for (tool, arguments) in [
        ("get_memory", json!({"memory_id": bobs})),
        (
            "update_memory",
            json!({"memory_id": bobs, "text": "overwritten"}),
        ),
        ("get_memory_history", json!({"memory_id": bobs})),
        ("delete_memory", json!({"memory_id": bobs})),
    ] {
        let error = call_refused(&client, tool, arguments.clone()).await;
        assert!(error.contains("-32003"), "{tool}: {error}");
        assert!(error.contains(&denied), "{tool}: {error}");
    }
    assert!(
        mcp.tool_calls().is_empty(),
        "a call on bob's memory reached a tool: {:?}",
        mcp.tool_calls()
    );

    // Her own memory goes through.
    call_ok(&client, "delete_memory", json!({"memory_id": alices})).await;
    let deletes = mcp.calls_of("delete_memory");
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(deletes[0]["memory_id"], json!(alices));
    close(client).await;

    // The refusal on the wire: a 200, the request's id, the §4 message.
    let session = raw_session(gate, &alice, &[]).await;
    let reply = post_rpc(
        gate,
        &alice,
        Some(&session),
        &tool_call(11, "delete_memory", json!({"memory_id": bobs})),
    )
    .await;
    assert_refusal(&reply, 200, 11, "delete_memory of bob's memory");
    assert_eq!(
        reply.json()["error"]["message"],
        json!(denied),
        "{}",
        reply.text
    );
    assert_eq!(mcp.calls_of("delete_memory").len(), 1);
    assert!(mem0.memory(&bobs).is_some(), "bob's memory is still there");
    assert!(
        gate.metric("memgate_ownership_denials_total{route=\"tools/call\"}")
            .await
            >= 1.0,
        "ownership refusals on the MCP listener are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_neither_sees_nor_calls_write_tools() {
    let env = env().await;
    let Env {
        mem0, mcp, gate, ..
    } = &env;
    let reader = gate.create_token("alice", READ_ONLY);
    let own = mem0.seed("alice", "mine");
    let client = connect(gate, &reader).await;

    let listed = tool_names(&client).await;
    for tool in WRITE_TOOLS {
        assert!(
            !listed.contains(tool),
            "{tool} listed for read-only: {listed:?}"
        );
    }
    for tool in READ_TOOLS {
        assert!(
            listed.contains(tool),
            "{tool} hidden from read-only: {listed:?}"
        );
    }
    // The upstream listed them all: memgate trimmed the answer.
    assert!(
        mcp.http_requests()
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("tools/list"))
    );

    for (tool, arguments) in [
        ("add_memory", json!({"text": "nope"})),
        ("update_memory", json!({"memory_id": own, "text": "nope"})),
        ("delete_memory", json!({"memory_id": own})),
        ("delete_all_memories", json!({})),
        ("add_coding_preference", json!({"text": "tabs"})),
    ] {
        let error = call_refused(&client, tool, arguments).await;
        assert!(error.contains("-32003"), "{tool}: {error}");
    }
    assert!(
        mcp.tool_calls().is_empty(),
        "a write tool ran for a read-only token: {:?}",
        mcp.tool_calls()
    );
    call_ok(&client, "search_memories", json!({"query": "mine"})).await;
    call_ok(&client, "get_memory", json!({"memory_id": own})).await;
    assert_eq!(mcp.tool_calls().len(), 2, "{:?}", mcp.tool_calls());
    close(client).await;

    let session = raw_session(gate, &reader, &[]).await;
    let reply = post_rpc(
        gate,
        &reader,
        Some(&session),
        &tool_call(3, "add_memory", json!({"text": "nope"})),
    )
    .await;
    assert_refusal(&reply, 200, 3, "write tool with a read-only token");
    assert_eq!(mcp.calls_of("add_memory").len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tools_follow_the_configured_mode_and_rules() {
    // By default a tool with no rule is hidden and refused, with the fix.
    let env = env().await;
    let Env { mcp, gate, .. } = &env;
    let alice = gate.create_token("alice", RW);
    let client = connect(gate, &alice).await;
    let listed = tool_names(&client).await;
    assert!(!listed.contains("slow_progress"), "{listed:?}");
    assert!(listed.contains("add_memory"), "{listed:?}");
    let error = call_refused(&client, "slow_progress", json!({})).await;
    assert!(error.contains("-32003"), "{error}");
    assert!(
        error.contains("[mcp.tools.slow_progress]") && error.contains("mcp.unknown_tools"),
        "the refusal says how to add a rule: {error}"
    );
    assert!(mcp.calls_of("slow_progress").is_empty());
    // The session survived the refusal: the next call goes through.
    call_ok(&client, "get_all_memories", json!({})).await;
    close(client).await;
    drop(env);

    // allow: forwarded, with the standard user arguments still forced.
    let env = env_with("unknown_tools = \"allow\"", "").await;
    let Env { mcp, gate, .. } = &env;
    let alice = gate.create_token("alice", RW);
    let client = connect(gate, &alice).await;
    assert!(tool_names(&client).await.contains("slow_progress"));
    let error = call_refused(&client, "slow_progress", json!({"user_id": "bob"})).await;
    assert!(error.contains("-32003"), "{error}");
    assert!(mcp.calls_of("slow_progress").is_empty());
    close(client).await;
    drop(env);

    // A configured rule: readable, and its own user argument forced/injected.
    let rule = "[mcp.tools.slow_progress]\npermission = \"read\"\nuser_args = [\"owner\"]\ninject_user = true\n";
    let env = env_with("unknown_tools = \"deny\"", rule).await;
    let Env { mcp, gate, .. } = &env;
    let reader = gate.create_token("alice", READ_ONLY);
    let client = connect(gate, &reader).await;
    assert!(tool_names(&client).await.contains("slow_progress"));
    call_ok(&client, "slow_progress", json!({})).await;
    let error = call_refused(&client, "slow_progress", json!({"owner": "bob"})).await;
    assert!(error.contains("-32003"), "{error}");
    assert_eq!(mcp.calls_of("slow_progress"), [json!({"owner": "alice"})]);
    close(client).await;
}

// ---------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_presenting_a_session_id_gets_404_and_never_reaches_the_server() {
    let env = env().await;
    let Env { mcp, gate, .. } = &env;
    let alice = gate.create_token("alice", RW);
    let bob = gate.create_token("bob", RW);
    let session = raw_session(gate, &alice, &[]).await;
    mcp.clear();

    let post = post_rpc(
        gate,
        &bob,
        Some(&session),
        &tool_call(2, "get_all_memories", json!({})),
    )
    .await;
    assert_eq!(post.status, 404, "POST with alice's session: {}", post.text);
    let get = open_stream(
        gate,
        "/mcp",
        &[("X-MCP-Token", &bob), ("Mcp-Session-Id", &session)],
    )
    .await;
    assert_eq!(get.status(), 404, "GET with alice's session");
    drop(get);
    let delete = bounded(
        STEP,
        "DELETE",
        http()
            .delete(gate.mcp_url("/mcp"))
            .header("X-MCP-Token", &bob)
            .header("Mcp-Session-Id", &session)
            .send(),
    )
    .await
    .expect("DELETE");
    assert_eq!(delete.status(), 404, "DELETE with alice's session");

    let log = mcp.http_requests();
    assert!(
        with_session(&log, &session).is_empty(),
        "bob's requests with alice's session reached the server: {log:?}"
    );
    assert!(mcp.tool_calls().is_empty(), "{:?}", mcp.tool_calls());

    // Alice's session is intact.
    let reply = post_rpc(gate, &alice, Some(&session), &ping(3)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(
        reply.answer(3).is_some_and(|m| m["result"].is_object()),
        "{}",
        reply.text
    );

    // And the attempt is audited.
    let audited = within(Duration::from_secs(5), || async {
        let out = gate.cli(&["audit", "--json", "--event", "session_denied"]);
        let events: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        events.as_array().is_some_and(|a| {
            a.iter()
                .any(|e| e["user_id"] == "bob" && e["event"] == "session_denied")
        })
    })
    .await;
    assert!(
        audited.is_some(),
        "no session_denied audit row for bob: {}",
        String::from_utf8_lossy(&gate.cli(&["audit", "--json"]).stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sse_sessions_carry_answers_and_refuse_other_users() {
    let env = env().await;
    let Env { mcp, gate, .. } = &env;
    let alice = gate.create_token("alice", RW);
    let bob = gate.create_token("bob", RW);

    let stream = open_stream(gate, "/sse", &[("X-MCP-Token", &alice)]).await;
    assert_eq!(stream.status(), 200);
    let mut events = SseReader::new(stream);
    let (kind, endpoint) = events.next_event(STEP).await.expect("endpoint event");
    assert_eq!(kind, "endpoint");
    assert!(endpoint.starts_with("/messages/?session_id="), "{endpoint}");

    let post = |token: &str, body: Value| {
        let (gate, endpoint, token) = (gate, endpoint.clone(), token.to_string());
        async move {
            post_raw(
                gate,
                &endpoint,
                &[("X-MCP-Token", &token)],
                body.to_string().into_bytes(),
            )
            .await
        }
    };
    let reply = post(&alice, initialize_body(1)).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let (kind, data) = events.next_event(STEP).await.expect("initialize answer");
    assert_eq!(kind, "message");
    let answer: Value = serde_json::from_str(&data).expect("JSON-RPC on the stream");
    assert_eq!(answer["id"], 1);
    assert!(answer["result"]["serverInfo"].is_object(), "{answer}");

    let reply = post(
        &alice,
        tool_call(2, "add_memory", json!({"text": "legacy"})),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let (_, data) = events.next_event(STEP).await.expect("tools/call answer");
    let answer: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(answer["id"], 2);
    assert!(answer["result"]["content"].is_array(), "{answer}");
    assert_eq!(
        mcp.calls_of("add_memory"),
        [json!({"text": "legacy", "user_id": "alice"})]
    );

    // The legacy transport is policed like the new one.
    let reply = post(
        &alice,
        tool_call(3, "get_all_memories", json!({"user_id": "bob"})),
    )
    .await;
    // Its refusal comes where a legacy client waits for every answer: on the
    // session's stream, in place of a harmless ping the upstream answered.
    assert_eq!(reply.status, 202, "{}", reply.text);
    let (_, data) = events.next_event(STEP).await.expect("the refusal");
    let refusal: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(refusal["id"], 3, "{refusal}");
    assert_eq!(refusal["error"]["code"], -32003, "{refusal}");
    assert!(
        refusal["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("alice")),
        "{refusal}"
    );
    assert!(mcp.calls_of("get_all_memories").is_empty());
    // A refused notification is owed no answer and reaches nothing.
    let mut notification = tool_call(0, "get_all_memories", json!({"user_id": "bob"}));
    notification.as_object_mut().unwrap().remove("id");
    let reply = post(&alice, notification).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert!(mcp.calls_of("get_all_memories").is_empty());

    // Bob cannot post into alice's session.
    let reply = post(&bob, tool_call(4, "get_all_memories", json!({}))).await;
    assert_eq!(
        reply.status, 404,
        "bob on alice's legacy session: {}",
        reply.text
    );
    let log = mcp.http_requests();
    assert!(
        !log.iter()
            .any(|r| r.method == "POST" && r.header("x-mcp-userid").as_deref() == Some("bob")),
        "bob's message reached the server: {log:?}"
    );
    assert!(mcp.calls_of("get_all_memories").is_empty());

    // Alice's stream still works afterwards.
    let reply = post(&alice, ping(5)).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let (_, data) = events.next_event(STEP).await.expect("ping answer");
    let answer: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(answer["id"], 5, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_protocol_version_and_last_event_id_headers_pass_unchanged() {
    let (env, alice, session) = alice_in_session().await;
    let Env { mcp, gate, .. } = &env;

    let reply = post_rpc_with(
        gate,
        &alice,
        Some(&session),
        &[("MCP-Protocol-Version", "2025-06-18")],
        &ping(4),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    let stream = open_stream(
        gate,
        "/mcp",
        &[
            ("X-MCP-Token", &alice),
            ("Mcp-Session-Id", &session),
            ("MCP-Protocol-Version", "2025-06-18"),
            ("Last-Event-ID", "0"),
        ],
    )
    .await;
    drop(stream);

    let log = mcp.http_requests();
    let post = log
        .iter()
        .find(|r| r.method == "POST")
        .unwrap_or_else(|| panic!("the ping did not reach the server: {log:?}"));
    assert_eq!(post.header_all("mcp-session-id"), [session.as_str()]);
    assert_eq!(post.header_all("mcp-protocol-version"), ["2025-06-18"]);
    let get = log
        .iter()
        .find(|r| r.method == "GET")
        .unwrap_or_else(|| panic!("the GET did not reach the server: {log:?}"));
    assert_eq!(get.header_all("mcp-session-id"), [session.as_str()]);
    assert_eq!(get.header_all("mcp-protocol-version"), ["2025-06-18"]);
    assert_eq!(get.header_all("last-event-id"), ["0"]);
}

// ---------------------------------------------------------------------------
// Streams, origins, bodies
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_silent_for_20_seconds_at_a_time_is_not_cut() {
    let env = env_with(r#"allowed_paths = ["/quiet-stream"]"#, "").await;
    let Env { gate, .. } = &env;
    let alice = gate.create_token("alice", RW);
    let started = Instant::now();
    let stream = open_stream(gate, "/quiet-stream", &[("X-MCP-Token", &alice)]).await;
    assert_eq!(stream.status(), 200);
    let mut events = SseReader::new(stream);
    for n in 1..=3 {
        let event = events.next_event(Duration::from_secs(30)).await;
        assert_eq!(
            event,
            Some(("tick".to_string(), n.to_string())),
            "event {n} after {:?}",
            started.elapsed()
        );
    }
    assert!(
        started.elapsed() >= Duration::from_secs(55),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_browser_origins_may_call() {
    let env = env_with("allowed_origins = [\"http://localhost:3000\"]", "").await;
    let Env { mcp, gate, .. } = &env;
    let alice = gate.create_token("alice", RW);
    let init = || initialize_body(1).to_string().into_bytes();

    let evil = post_raw(
        gate,
        "/mcp",
        &[("X-MCP-Token", &alice), ("Origin", "http://evil.example")],
        init(),
    )
    .await;
    assert_eq!(evil.status, 403, "{}", evil.text);
    assert!(
        mcp.http_requests().is_empty(),
        "a foreign origin reached the server: {:?}",
        mcp.http_requests()
    );

    let allowed = post_raw(
        gate,
        "/mcp",
        &[("X-MCP-Token", &alice), ("Origin", "http://localhost:3000")],
        init(),
    )
    .await;
    assert_eq!(allowed.status, 200, "{}", allowed.text);
    assert!(allowed.answer(1).is_some(), "{}", allowed.text);
    assert_eq!(
        allowed.header("access-control-allow-origin").as_deref(),
        Some("http://localhost:3000")
    );

    let none = post_raw(gate, "/mcp", &[("X-MCP-Token", &alice)], init()).await;
    assert_eq!(none.status, 200, "no Origin header: {}", none.text);
    assert_eq!(mcp.http_requests().len(), 2, "{:?}", mcp.http_requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cors_preflight_from_an_allowed_origin_is_answered_without_a_token() {
    let env = env_with("allowed_origins = [\"http://localhost:3000\"]", "").await;
    let Env { mcp, gate, .. } = &env;
    let preflight = |origin: &'static str| {
        http()
            .request(reqwest::Method::OPTIONS, gate.mcp_url("/mcp"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "content-type, x-mcp-token, mcp-session-id",
            )
            .send()
    };
    let resp = bounded(STEP, "preflight", preflight("http://localhost:3000"))
        .await
        .expect("OPTIONS");
    assert!(resp.status().is_success(), "{}", resp.status());
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_ascii_lowercase())
            .unwrap_or_default()
    };
    assert_eq!(
        header("access-control-allow-origin"),
        "http://localhost:3000"
    );
    assert!(
        header("access-control-allow-methods").contains("post"),
        "{resp:?}"
    );
    for name in ["x-mcp-token", "mcp-session-id", "content-type"] {
        assert!(
            header("access-control-allow-headers").contains(name),
            "{name} not allowed: {resp:?}"
        );
    }
    let evil = bounded(STEP, "preflight", preflight("http://evil.example"))
        .await
        .expect("OPTIONS");
    assert_eq!(evil.status(), 403);
    assert!(
        mcp.http_requests().is_empty(),
        "a preflight reached the server: {:?}",
        mcp.http_requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_refused_with_400_and_never_reaches_the_server() {
    let env = env().await;
    let Env {
        mem0, mcp, gate, ..
    } = &env;
    let alice = gate.create_token("alice", RW);
    let bobs = mem0.seed("bob", "bob's");
    let alices = mem0.seed("alice", "alice's");
    let session = raw_session(gate, &alice, &[]).await;
    mcp.clear();

    for (what, batch) in [
        (
            "allowed calls",
            json!([
                tool_call(1, "get_all_memories", json!({})),
                tool_call(2, "get_memory", json!({"memory_id": alices})),
            ]),
        ),
        (
            "a forbidden call",
            json!([
                tool_call(3, "get_all_memories", json!({})),
                tool_call(4, "delete_memory", json!({"memory_id": bobs})),
            ]),
        ),
    ] {
        let reply = post_rpc(gate, &alice, Some(&session), &batch).await;
        assert_eq!(reply.status, 400, "{what}: {}", reply.text);
        let error = reply.json();
        assert_eq!(error["id"], Value::Null, "{what}");
        assert_eq!(error["error"]["code"], -32600, "{what}");
        assert!(
            mcp.http_requests().is_empty(),
            "{what}: a batch reached the server: {:?}",
            mcp.http_requests()
        );
    }
    assert!(mem0.memory(&bobs).is_some());
    // The session is still usable for single messages.
    let reply = post_rpc(
        gate,
        &alice,
        Some(&session),
        &tool_call(5, "get_all_memories", json!({})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_json_keys_are_rejected_with_400() {
    let (env, alice, session) = alice_in_session().await;
    let Env { mcp, gate, .. } = &env;

    for body in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_all_memories","arguments":{"user_id":"alice","user_id":"bob"}}}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get_all_memories","name":"delete_all_memories","arguments":{}}}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"ping","method":"tools/call","params":{"name":"delete_all_memories","arguments":{"user_id":"bob"}}}"#,
    ] {
        let reply = post_raw(
            gate,
            "/mcp",
            &[("X-MCP-Token", &alice), ("Mcp-Session-Id", &session)],
            body.as_bytes().to_vec(),
        )
        .await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        assert!(reply.json()["error"].is_object(), "{body}: {}", reply.text);
    }
    assert!(mcp.tool_calls().is_empty(), "{:?}", mcp.tool_calls());
    assert!(
        mcp.http_requests().is_empty(),
        "an ambiguous body reached the server: {:?}",
        mcp.http_requests()
    );
}

/// Headers memgate would have to guess about: a repeated `X-MCP-Project` is
/// refused (as on the mem0 listener); an `Mcp-Param-*` mirror it cannot read
/// is dropped, and a readable one is made to say what the body says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_project_and_unreadable_argument_mirrors_never_reach_the_server() {
    let (env, alice, session) = alice_in_session().await;
    let Env { mcp, gate, .. } = &env;

    let reply = post_rpc_with(
        gate,
        &alice,
        Some(&session),
        &[
            ("X-MCP-Project", "/src/app"),
            ("X-MCP-Project", "/src/other"),
        ],
        &ping(1),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert!(reply.json()["error"].is_object(), "{}", reply.text);
    // One header with raw (possibly non-ASCII) bytes, on alice's session.
    let (alice, session) = (&alice, &session);
    let send = |name: &'static str, value: &'static [u8], body: Value| async move {
        let resp = http()
            .post(gate.mcp_url("/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("X-MCP-Token", alice)
            .header("Mcp-Session-Id", session)
            .header(name, HeaderValue::from_bytes(value).unwrap())
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        reply_of(resp).await
    };
    let reply = send("X-MCP-Project", b"/src/\xe9t\xe9", ping(3)).await;
    assert_eq!(reply.status, 400, "an unreadable project: {}", reply.text);
    assert!(reply.json()["error"].is_object(), "{}", reply.text);
    assert!(mcp.http_requests().is_empty(), "{:?}", mcp.http_requests());

    let read_alices = || tool_call(2, "get_all_memories", json!({"user_id": "alice"}));
    let reply = send("Mcp-Param-user_id", b"b\xffob", read_alices()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let reply = send("Mcp-Param-user_id", b"bob", read_alices()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    let log = mcp.http_requests();
    let mirrors: Vec<Vec<String>> = log
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.header_all("mcp-param-user_id"))
        .collect();
    assert_eq!(
        mirrors,
        [vec![], vec!["alice".to_owned()]],
        "dropped, then rewritten to the body's user"
    );
    let users: Vec<Value> = mcp
        .calls_of("get_all_memories")
        .into_iter()
        .map(|args| args["user_id"].clone())
        .collect();
    assert_eq!(users, [json!("alice"), json!("alice")]);
}

/// Found by the `admission` fuzz target: endpoints were matched on the raw
/// path, so `/%6Dcp` (which the upstream decodes to `/mcp`) skipped the tool
/// policy, and a sub-path of a mounted endpoint would too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_or_extended_endpoint_paths_never_reach_the_mcp_server() {
    let env = env().await;
    let reader = env.gate.create_token("alice", READ_ONLY);
    let call = json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "delete_all_memories", "arguments": {"user_id": "bob"}}
    });
    let body = call.to_string().into_bytes();
    let auth = [("X-MCP-Token", reader.as_str())];
    for (path, status) in [
        ("/%6Dcp", 400),
        ("/%6dcp/", 400),
        ("/%6Dessages/?session_id=abc", 400),
        ("/messages/x?session_id=abc", 404),
        ("/mcp/x", 404),
    ] {
        let reply = post_raw(&env.gate, path, &auth, body.clone()).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.text);
    }
    assert!(
        env.mcp.http_requests().is_empty(),
        "reached the MCP server: {:?}",
        env.mcp.http_requests()
    );
    // The canonical spelling is policed as before: a reader may not delete.
    let reply = post_raw(&env.gate, "/mcp", &auth, body).await;
    assert_refusal(&reply, 200, 7, "delete_all_memories for a reader");
    assert!(env.mcp.tool_calls().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_endpoints_refuse_methods_that_would_skip_the_tool_rules() {
    let env = env().await;
    let Env { mcp, gate, .. } = &env;
    let alice = gate.create_token("alice", RW);
    let stream = open_stream(gate, "/sse", &[("X-MCP-Token", &alice)]).await;
    let mut events = SseReader::new(stream);
    let (_, endpoint) = events.next_event(STEP).await.expect("endpoint event");
    mcp.clear();

    // Only POSTs are checked against the tool rules; a PUT carrying a call
    // naming bob would reach a handler that ignores the method.
    let call = tool_call(7, "get_all_memories", json!({"user_id": "bob"})).to_string();
    for (method, path, allow) in [
        (reqwest::Method::PUT, endpoint.as_str(), "POST"),
        (reqwest::Method::PATCH, endpoint.as_str(), "POST"),
        (reqwest::Method::PUT, "/mcp", "GET, POST, DELETE"),
        (reqwest::Method::POST, "/sse", "GET"),
    ] {
        let resp = http()
            .request(method.clone(), gate.mcp_url(path))
            .header("X-MCP-Token", &alice)
            .header("content-type", "application/json")
            .body(call.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(resp.headers()["allow"], allow, "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    assert!(
        mcp.http_requests().is_empty(),
        "reached the server: {:?}",
        mcp.http_requests()
    );
    assert!(mcp.calls_of("get_all_memories").is_empty());
}

// ---------------------------------------------------------------------------
// Servers that serve one user per process
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_process_tools_are_refused_in_band_on_a_shared_upstream() {
    let env = env().await;
    let Env { mcp, gate, .. } = &env;
    let alice = gate.create_token("alice", RW);
    let bob = gate.create_token("bob", RW);
    let client = connect(gate, &alice).await;
    let listed = tool_names(&client).await;
    for tool in PER_PROCESS_TOOLS {
        assert!(!listed.contains(tool), "{tool} listed: {listed:?}");
        let error = call_refused(&client, tool, json!({"text": "tabs", "query": "tabs"})).await;
        assert!(
            error.contains("-32003") && error.contains("[mcp.spawn]"),
            "{tool}: the refusal names the fix: {error}"
        );
        // The session survives each refusal.
        call_ok(&client, "get_all_memories", json!({})).await;
    }
    assert!(
        PER_PROCESS_TOOLS
            .iter()
            .all(|tool| mcp.calls_of(tool).is_empty()),
        "a per-process tool reached the shared server: {:?}",
        mcp.tool_calls()
    );
    close(client).await;

    // A client that reads only event streams gets the refusal as an event.
    let session = raw_session(gate, &bob, &[]).await;
    let sent = http()
        .post(gate.mcp_url("/mcp"))
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .header("X-MCP-Token", &bob)
        .header("Mcp-Session-Id", &session)
        .body(tool_call(9, "search_coding_preferences", json!({"query": "q"})).to_string())
        .send();
    let reply = reply_of(bounded(STEP, "POST", sent).await.expect("POST")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    let events = sse_events(&reply.text);
    assert_eq!(events.len(), 1, "{}", reply.text);
    let error: Value = serde_json::from_str(&events[0].1).expect("JSON-RPC in the event");
    assert_eq!(error["id"], 9);
    assert_eq!(error["error"]["code"], -32003);
    assert!(mcp.calls_of("search_coding_preferences").is_empty());

    // Refusals are audited like any other.
    let audited = within(Duration::from_secs(5), || async {
        let out = gate.cli(&["audit", "--json", "--event", "permission_denied"]);
        let events: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        events.as_array().is_some_and(|a| {
            a.iter()
                .any(|e| e["user_id"] == "bob" && e["tool"] == "search_coding_preferences")
        })
    })
    .await;
    assert!(audited.is_some(), "no audit row for bob's refused call");
    assert!(
        gate.log()
            .contains("add_coding_preference, get_all_coding_preferences"),
        "serve warns once at start, naming the tools: {}",
        gate.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_process_tools_work_when_everyone_shares_one_scope() {
    let env = env_with("", "[isolation]\nmode = \"global\"\n").await;
    let Env { mcp, gate, .. } = &env;
    let alice = gate.create_token("alice", RW);
    let client = connect(gate, &alice).await;
    let listed = tool_names(&client).await;
    for tool in PER_PROCESS_TOOLS {
        assert!(listed.contains(tool), "{tool} hidden: {listed:?}");
    }
    call_ok(&client, "add_coding_preference", json!({"text": "tabs"})).await;
    let found = call_ok(&client, "get_all_coding_preferences", json!({})).await;
    assert_eq!(found["results"][0]["memory"], "tabs", "{found}");
    assert_eq!(
        mcp.calls_of("add_coding_preference"),
        [json!({"text": "tabs"})]
    );
    close(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_ids_never_handed_out_are_404() {
    let env = env().await;
    let Env { mcp, gate, .. } = &env;
    let alice = gate.create_token("alice", RW);
    // An id the upstream never handed to anyone is not claimed by its
    // first presenter.
    for id in ["made-up", "0f1e2d3c4b5a69788796a5b4c3d2e1f0"] {
        let reply = post_rpc(gate, &alice, Some(id), &ping(1)).await;
        assert_eq!(reply.status, 404, "{id}: {}", reply.text);
    }
    // The spelling the upstream handed out is the one that counts.
    let session = raw_session(gate, &alice, &[]).await;
    let other_case = if session.to_ascii_uppercase() == session {
        session.to_ascii_lowercase()
    } else {
        session.to_ascii_uppercase()
    };
    let reply = post_rpc(gate, &alice, Some(&other_case), &ping(2)).await;
    assert_eq!(reply.status, 404, "{}", reply.text);
    let reply = post_rpc(gate, &alice, Some(&session), &ping(3)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let log = mcp.http_requests();
    assert!(
        !log.iter().any(|r| {
            let id = r.header("mcp-session-id");
            id.as_deref() == Some("made-up") || id.as_deref() == Some(other_case.as_str())
        }),
        "an id memgate never saw handed out reached the server: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_session_ids_are_read_as_the_upstream_reads_them() {
    let env = env().await;
    let Env { mcp, gate, .. } = &env;
    let alice = gate.create_token("alice", RW);
    let bob = gate.create_token("bob", RW);
    let stream = open_stream(gate, "/sse", &[("X-MCP-Token", &alice)]).await;
    let mut events = SseReader::new(stream);
    let (_, endpoint) = events.next_event(STEP).await.expect("endpoint event");
    let id = endpoint
        .split_once("session_id=")
        .map(|(_, id)| id.to_string())
        .expect("a session id");
    assert_eq!(id.len(), 32, "{id}");
    let hyphenated = format!(
        "{}-{}-{}-{}-{}",
        &id[..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..]
    );
    let spellings = [
        id.to_ascii_uppercase(),
        hyphenated.clone(),
        format!("{{{hyphenated}}}"),
        format!("urn:uuid:{hyphenated}"),
    ];
    mcp.clear();
    for spelling in &spellings {
        let path = format!(
            "/messages/?session_id={}",
            spelling.replace('{', "%7B").replace('}', "%7D")
        );
        let reply = post_raw(
            gate,
            &path,
            &[("X-MCP-Token", &bob)],
            tool_call(4, "get_all_memories", json!({}))
                .to_string()
                .into_bytes(),
        )
        .await;
        assert_eq!(reply.status, 404, "bob with {spelling}: {}", reply.text);
    }
    assert!(
        mcp.http_requests().is_empty(),
        "bob reached alice's session: {:?}",
        mcp.http_requests()
    );
    // Alice may spell her own session any way the upstream reads it.
    let path = format!("/messages/?session_id={}", id.to_ascii_uppercase());
    let reply = post_raw(
        gate,
        &path,
        &[("X-MCP-Token", &alice)],
        initialize_body(1).to_string().into_bytes(),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let (_, data) = events.next_event(STEP).await.expect("initialize answer");
    let answer: Value = serde_json::from_str(&data).expect("JSON-RPC");
    assert_eq!(answer["id"], 1, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templated_upstream_sends_each_user_to_their_own_server() {
    // One server per user on 127.0.0.N: the users "2" and "3" are their
    // own host labels, so `127.0.0.{user}` names each one's server.
    let port = free_port();
    let two = McpServer::start_on(format!("127.0.0.2:{port}").parse().unwrap()).await;
    let three = McpServer::start_on(format!("127.0.0.3:{port}").parse().unwrap()).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let mem0 = Mem0::start().await;
    let mut cfg = MemgateConfig::new(&db.url, &mem0.url());
    cfg.mcp_upstream = format!("http://127.0.0.{{user}}:{port}");
    let gate = Memgate::start(cfg).await;
    let (user_two, user_three) = (gate.create_token("2", RW), gate.create_token("3", RW));

    let client = connect(&gate, &user_two).await;
    let listed = tool_names(&client).await;
    for tool in PER_PROCESS_TOOLS {
        assert!(listed.contains(tool), "{tool} hidden: {listed:?}");
    }
    call_ok(&client, "add_coding_preference", json!({"text": "tabs"})).await;
    close(client).await;

    let client = connect(&gate, &user_three).await;
    let found = call_ok(&client, "get_all_coding_preferences", json!({})).await;
    assert_eq!(found["results"], json!([]), "user 3 sees user 2's: {found}");
    call_ok(&client, "add_memory", json!({"text": "spaces"})).await;
    close(client).await;

    assert_eq!(
        two.calls_of("add_coding_preference"),
        [json!({"text": "tabs"})]
    );
    assert!(two.calls_of("get_all_coding_preferences").is_empty());
    assert_eq!(three.calls_of("get_all_coding_preferences").len(), 1);
    assert!(three.calls_of("add_coding_preference").is_empty());
    for (server, user) in [(&two, "2"), (&three, "3")] {
        for request in server.http_requests() {
            assert_eq!(
                request.header("x-mcp-userid").as_deref(),
                Some(user),
                "a request of another user reached {user}'s server: {request:?}"
            );
        }
    }

    // A user id that is not a host label is hashed into one: it can only
    // ever name a host of its own (here, none that resolves).
    let odd = gate.create_token("9/../2", RW);
    let reply = post_raw(
        &gate,
        "/mcp",
        &[("X-MCP-Token", &odd)],
        initialize_body(1).to_string().into_bytes(),
    )
    .await;
    assert!(reply.status >= 500, "{}: {}", reply.status, reply.text);
    assert_eq!(
        two.http_requests()
            .iter()
            .filter(|r| r.header("x-mcp-userid").as_deref() != Some("2"))
            .count(),
        0
    );

    let printed = gate.cli(&["upstream-name", "--user", "2"]);
    let printed = String::from_utf8_lossy(&printed.stdout).to_string();
    assert!(
        printed.contains(&format!("http://127.0.0.2:{port}")),
        "{printed}"
    );
}
