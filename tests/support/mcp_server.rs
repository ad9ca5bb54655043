//! An MCP server shaped like the mem0 MCP servers memgate sits in front of:
//! a real rmcp server over Streamable HTTP (stateful sessions, so `initialize`
//! answers carry an `Mcp-Session-Id`) plus a hand-rolled legacy SSE pair, on
//! one axum app that records what it received.
//!
//! | path | what |
//! |---|---|
//! | `POST/GET/DELETE /mcp` (and `/mcp/`) | rmcp `StreamableHttpService`, `text/event-stream` answers |
//! | `GET /sse` | legacy stream: `event: endpoint` naming `/messages/?session_id=…`, then `event: message` answers |
//! | `POST /messages/?session_id=…` | legacy messages: `202 Accepted`, the answer goes out on that session's stream; unknown session → 404 |
//! | `GET /quiet-stream` | `text/event-stream`, one event every 20 s, three in all (long-idle test) |
//!
//! Tools (both transports): `add_memory {text, user_id?}`, `search_memories
//! {query, user_id?}`, `get_all_memories {user_id?}`, `get_memory
//! {memory_id}`, `update_memory {memory_id, text}`, `delete_memory
//! {memory_id}`, `get_memory_history {memory_id}`, `delete_all_memories
//! {user_id?}`, `add_coding_preference {text}`, `search_coding_preferences
//! {query}`, `get_all_coding_preferences {}` and `slow_progress {}` (Streamable
//! HTTP only: one progress notification, 300 ms, then the result). Like the
//! real servers, a missing `user_id` falls back to `default_user`, and like
//! the Mem0 MCP Server stack's server the coding-preference tools take no
//! user at all: they act on one mem0 id fixed for the process
//! ([`PROCESS_USER`]), whoever calls. Legacy session ids are read as the MCP
//! Python SDK reads them: parsed as a UUID (any case, hyphens, braces,
//! `urn:uuid:`), 400 when unreadable, 404 when unknown. Every call is recorded with the exact arguments the tool received
//! ([`McpServer::tool_calls`]); every HTTP request with its method, URI,
//! headers and body ([`McpServer::http_requests`]).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Recorded;

/// The user the real servers fall back to when a call names none.
pub const DEFAULT_USER: &str = "default_user";

/// The one mem0 id the stack's server uses for every caller (its
/// `project_{dirname}_{hash}` of the directory it runs in).
pub const PROCESS_USER: &str = "project_stand-in_5e1f0c2a";

/// The tools both transports list: (name, description, properties, required).
const TOOLS: &[(&str, &str, &[&str], &[&str])] = &[
    (
        "add_memory",
        "Store a memory",
        &["text", "user_id"],
        &["text"],
    ),
    (
        "search_memories",
        "Search memories",
        &["query", "user_id"],
        &["query"],
    ),
    ("get_all_memories", "List every memory", &["user_id"], &[]),
    ("get_memory", "One memory", &["memory_id"], &["memory_id"]),
    (
        "update_memory",
        "Change a memory's text",
        &["memory_id", "text"],
        &["memory_id", "text"],
    ),
    (
        "delete_memory",
        "Delete one memory",
        &["memory_id"],
        &["memory_id"],
    ),
    (
        "get_memory_history",
        "A memory's history",
        &["memory_id"],
        &["memory_id"],
    ),
    (
        "delete_all_memories",
        "Delete every memory of a user",
        &["user_id"],
        &[],
    ),
    (
        "add_coding_preference",
        "Store a coding preference",
        &["text"],
        &["text"],
    ),
    (
        "search_coding_preferences",
        "Search coding preferences",
        &["query"],
        &["query"],
    ),
    (
        "get_all_coding_preferences",
        "List coding preferences",
        &[],
        &[],
    ),
    (
        "slow_progress",
        "Reports progress once, then answers 300 ms later",
        &[],
        &[],
    ),
];

/// Every tool name the server lists, in order.
pub fn tool_names() -> Vec<&'static str> {
    TOOLS.iter().map(|(name, ..)| *name).collect()
}

fn input_schema(properties: &[&str], required: &[&str]) -> Map<String, Value> {
    let props: Map<String, Value> = properties
        .iter()
        .map(|p| ((*p).to_owned(), json!({"type": "string"})))
        .collect();
    let schema = json!({"type": "object", "properties": props, "required": required});
    schema.as_object().cloned().unwrap_or_default()
}

fn rmcp_tools() -> Vec<Tool> {
    TOOLS
        .iter()
        .map(|(name, description, properties, required)| {
            Tool::new(
                *name,
                *description,
                Arc::new(input_schema(properties, required)),
            )
        })
        .collect()
}

fn json_tools() -> Vec<Value> {
    TOOLS
        .iter()
        .map(|(name, description, properties, required)| {
            json!({
                "name": name,
                "description": description,
                "inputSchema": input_schema(properties, required),
            })
        })
        .collect()
}

#[derive(Clone, Debug)]
struct StoredMemory {
    id: String,
    text: String,
    user_id: String,
    history: Vec<Value>,
}

impl StoredMemory {
    fn item(&self) -> Value {
        json!({"id": self.id, "memory": self.text, "user_id": self.user_id})
    }
}

#[derive(Default)]
struct Shared {
    calls: Mutex<Vec<(String, Value)>>,
    requests: Mutex<Vec<Recorded>>,
    memories: Mutex<BTreeMap<String, StoredMemory>>,
    /// Legacy SSE sessions: id → the sender feeding that session's stream.
    legacy: Mutex<HashMap<String, mpsc::UnboundedSender<Bytes>>>,
}

static IDS: AtomicU64 = AtomicU64::new(0);

/// A unique, random-looking id (hex of two hashed values).
fn new_id(prefix: &str) -> String {
    use std::hash::BuildHasher;
    let n = IDS.fetch_add(1, Ordering::SeqCst);
    let a = std::collections::hash_map::RandomState::new().hash_one(n);
    let b = std::collections::hash_map::RandomState::new().hash_one(!n);
    format!("{prefix}{a:016x}{b:016x}")
}

impl Shared {
    fn record_call(&self, name: &str, args: &Map<String, Value>) {
        self.calls
            .lock()
            .expect("calls")
            .push((name.to_owned(), Value::Object(args.clone())));
    }

    /// Runs a tool of the in-memory store: `Ok(result JSON)` or `Err(message)`.
    fn run_tool(&self, name: &str, args: &Map<String, Value>) -> Result<Value, String> {
        let text = |key: &str| args.get(key).and_then(Value::as_str).map(str::to_owned);
        let required = |key: &str| text(key).ok_or_else(|| format!("missing argument {key}"));
        let user = || text("user_id").unwrap_or_else(|| DEFAULT_USER.to_owned());
        let prefs_user = || PROCESS_USER.to_owned();
        let mut memories = self.memories.lock().expect("memories");
        let search = |memories: &BTreeMap<String, StoredMemory>, owner: &str, query: &str| {
            let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
            let hits: Vec<Value> = memories
                .values()
                .filter(|m| m.user_id == owner)
                .filter(|m| {
                    let text = m.text.to_lowercase();
                    words.is_empty() || words.iter().any(|w| text.contains(w.as_str()))
                })
                .map(StoredMemory::item)
                .collect();
            json!({ "results": hits })
        };
        let all = |memories: &BTreeMap<String, StoredMemory>, owner: &str| {
            let items: Vec<Value> = memories
                .values()
                .filter(|m| m.user_id == owner)
                .map(StoredMemory::item)
                .collect();
            json!({ "results": items })
        };
        let mut add = |owner: String, body: String| {
            let id = new_id("");
            let memory = StoredMemory {
                id: id.clone(),
                text: body.clone(),
                user_id: owner,
                history: vec![json!({"event": "ADD", "new_memory": body})],
            };
            memories.insert(id.clone(), memory);
            json!({"results": [{"id": id, "memory": body, "event": "ADD"}]})
        };
        match name {
            "add_memory" => Ok(add(user(), required("text")?)),
            "add_coding_preference" => Ok(add(prefs_user(), required("text")?)),
            "search_memories" => Ok(search(&memories, &user(), &required("query")?)),
            "search_coding_preferences" => {
                Ok(search(&memories, &prefs_user(), &required("query")?))
            }
            "get_all_memories" => Ok(all(&memories, &user())),
            "get_all_coding_preferences" => Ok(all(&memories, &prefs_user())),
            "get_memory" => {
                let id = required("memory_id")?;
                Ok(memories.get(&id).map_or(Value::Null, StoredMemory::item))
            }
            // Like the real servers, memory ids are taken on trust: any id is
            // "found" (memgate is the one that checks owners).
            "update_memory" => {
                let id = required("memory_id")?;
                let body = required("text")?;
                if let Some(m) = memories.get_mut(&id) {
                    m.history
                        .push(json!({"event": "UPDATE", "old_memory": m.text, "new_memory": body}));
                    m.text = body;
                }
                Ok(json!({"message": "Memory updated successfully!"}))
            }
            "delete_memory" => {
                let id = required("memory_id")?;
                memories.remove(&id);
                Ok(json!({"message": "Memory deleted successfully"}))
            }
            "get_memory_history" => {
                let id = required("memory_id")?;
                Ok(Value::Array(
                    memories
                        .get(&id)
                        .map(|m| m.history.clone())
                        .unwrap_or_default(),
                ))
            }
            "delete_all_memories" => {
                let owner = user();
                memories.retain(|_, m| m.user_id != owner);
                Ok(json!({"message": "All relevant memories deleted"}))
            }
            "slow_progress" => Ok(json!({"done": true})),
            other => Err(format!("Unknown tool: {other}")),
        }
    }
}

/// The rmcp handler: one per session, all sharing the recorder and store.
#[derive(Clone)]
struct Handler {
    shared: Arc<Shared>,
}

impl ServerHandler for Handler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(rmcp_tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.clone().unwrap_or_default();
        self.shared.record_call(&request.name, &args);
        if request.name == "slow_progress" {
            let token = context
                .meta
                .get_progress_token()
                .or_else(|| request.meta.as_ref().and_then(|m| m.get_progress_token()))
                .ok_or_else(|| ErrorData::invalid_params("a progress token is required", None))?;
            context
                .peer
                .notify_progress(
                    ProgressNotificationParam::new(token, 1.0)
                        .with_total(2.0)
                        .with_message("halfway"),
                )
                .await
                .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        match self.shared.run_tool(&request.name, &args) {
            Ok(value) => {
                Ok(CallToolResult::success(vec![ContentBlock::text(value.to_string())]).into())
            }
            Err(message) => Err(ErrorData::invalid_params(message, None)),
        }
    }
}

/// The fake MCP server, stopped when dropped.
pub struct McpServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Box<dyn Fn() + Send + Sync>,
    task: JoinHandle<()>,
}

impl McpServer {
    pub async fn start() -> McpServer {
        McpServer::start_on("127.0.0.1:0".parse().expect("address")).await
    }

    /// [`McpServer::start`] on a chosen address (one server per user on
    /// 127.0.0.N, for templated upstreams).
    pub async fn start_on(addr: SocketAddr) -> McpServer {
        let shared: Arc<Shared> = Arc::default();
        let listener = TcpListener::bind(addr).await.expect("bind MCP server");
        let addr = listener.local_addr().expect("addr");
        // memgate names itself in Host; the Origin check is memgate's job here.
        let config = StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            .disable_allowed_origins()
            .with_legacy_session_mode(true)
            .with_json_response(false);
        let ct = config.cancellation_token.clone();
        let for_sessions = shared.clone();
        let service: StreamableHttpService<Handler, LocalSessionManager> =
            StreamableHttpService::new(
                move || {
                    Ok(Handler {
                        shared: for_sessions.clone(),
                    })
                },
                Arc::default(),
                config,
            );
        let app = axum::Router::new()
            .route_service("/mcp", service.clone())
            .route_service("/mcp/", service)
            .route("/sse", get(legacy_stream))
            .route("/messages/", post(legacy_message))
            .route("/messages", post(legacy_message))
            .route("/quiet-stream", get(quiet_stream))
            .layer(middleware::from_fn_with_state(shared.clone(), record))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        McpServer {
            addr,
            shared,
            stop: Box::new(move || ct.cancel()),
            task,
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every tool call that reached a tool: (tool name, arguments as received).
    pub fn tool_calls(&self) -> Vec<(String, Value)> {
        self.shared.calls.lock().expect("calls").clone()
    }

    /// The arguments of every call of tool `name`, in order.
    pub fn calls_of(&self, name: &str) -> Vec<Value> {
        self.tool_calls()
            .into_iter()
            .filter(|(n, _)| n == name)
            .map(|(_, args)| args)
            .collect()
    }

    /// Every HTTP request received, in order (bodies included).
    pub fn http_requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().expect("requests").clone()
    }

    /// Forgets the recorded tool calls and HTTP requests (sessions and the
    /// store stay).
    pub fn clear(&self) {
        self.shared.calls.lock().expect("calls").clear();
        self.shared.requests.lock().expect("requests").clear();
    }

    /// Number of legacy SSE sessions opened so far.
    pub fn legacy_sessions(&self) -> usize {
        self.shared.legacy.lock().expect("legacy").len()
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        (self.stop)();
        self.task.abort();
    }
}

/// Records every request (method, URI, headers, body) before it is handled.
async fn record(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    shared
        .requests
        .lock()
        .expect("requests")
        .push(Recorded::new(&parts, body.clone()));
    next.run(Request::from_parts(parts, Body::from(body))).await
}

fn event_stream(body: Body) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body)
        .expect("event stream")
}

/// `GET /sse`: a new legacy session; its stream names the message endpoint,
/// then carries the answers to what is posted there.
async fn legacy_stream(State(shared): State<Arc<Shared>>) -> Response {
    let session_id = new_id("");
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let endpoint = format!("event: endpoint\ndata: /messages/?session_id={session_id}\n\n");
    let _ = tx.send(Bytes::from(endpoint));
    shared.legacy.lock().expect("legacy").insert(session_id, tx);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    });
    event_stream(Body::from_stream(stream))
}

/// `POST /messages/?session_id=…`: 202, and the answer on the session's stream.
async fn legacy_message(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some(id) = query.get("session_id").and_then(|id| python_uuid_hex(id)) else {
        return (StatusCode::BAD_REQUEST, "Invalid session ID").into_response();
    };
    let Some(sender) = shared.legacy.lock().expect("legacy").get(&id).cloned() else {
        return (StatusCode::NOT_FOUND, "Could not find session").into_response();
    };
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "Could not parse message").into_response();
    };
    let messages = match message {
        Value::Array(items) => items,
        one => vec![one],
    };
    for message in messages {
        if let Some(answer) = legacy_answer(&shared, &message) {
            let event = format!("event: message\ndata: {answer}\n\n");
            let _ = sender.send(Bytes::from(event));
        }
    }
    (StatusCode::ACCEPTED, "Accepted").into_response()
}

/// The JSON-RPC answer to one legacy message (`None` for notifications and
/// responses).
fn legacy_answer(shared: &Shared, message: &Value) -> Option<Value> {
    let id = message.get("id")?.clone();
    let method = message.get("method")?.as_str()?;
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "initialize" => Ok(json!({
            "protocolVersion": params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or("2024-11-05"),
            "capabilities": {"tools": {"listChanged": false}},
            "serverInfo": {"name": "fake-mem0-mcp", "version": "0.1.0"},
        })),
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({ "tools": json_tools() })),
        "tools/call" => {
            let name = params.get("name").and_then(Value::as_str).unwrap_or("");
            let args = params
                .get("arguments")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            shared.record_call(name, &args);
            shared
                .run_tool(name, &args)
                .map(|value| {
                    json!({"content": [{"type": "text", "text": value.to_string()}], "isError": false})
                })
                .map_err(|message| (-32602, message))
        }
        other => Err((-32601, format!("Method not found: {other}"))),
    };
    Some(match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err((code, message)) => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
        }
    })
}

/// The session id as the MCP Python SDK's legacy transport reads it,
/// `uuid.UUID(hex=text).hex`: `urn:` and `uuid:` removed, braces stripped
/// from both ends, hyphens dropped, then 32 hex digits in any case. (Python's
/// `int()` would also take a sign, `0x` or `_`; ids are never sent so.)
fn python_uuid_hex(text: &str) -> Option<String> {
    let text = text.replace("urn:", "").replace("uuid:", "");
    let hex: String = text
        .trim_matches(|c| c == '{' || c == '}')
        .chars()
        .filter(|c| *c != '-')
        .collect();
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// `GET /quiet-stream`: three events, 20 s apart, the first after 20 s.
async fn quiet_stream() -> Response {
    let stream = futures::stream::unfold(1u32, |n| async move {
        if n > 3 {
            return None;
        }
        tokio::time::sleep(Duration::from_secs(20)).await;
        let event = format!("event: tick\ndata: {n}\n\n");
        Some((Ok::<_, Infallible>(Bytes::from(event)), n + 1))
    });
    event_stream(Body::from_stream(stream))
}

/// A memgate whose MCP listener fronts a fresh [`McpServer`] and whose owner
/// lookups go to a fresh stand-in mem0, each dropped with it.
pub struct McpEnv {
    pub db: super::TestDb,
    pub mem0: super::mem0::Mem0,
    pub mcp: McpServer,
    pub gate: super::Memgate,
}

impl McpEnv {
    /// `mcp_extra` goes inside `[mcp]`; `extra` is appended as whole sections.
    pub async fn start(mcp_extra: &str, extra: &str) -> McpEnv {
        let db = super::TestDb::new(super::Backend::Sqlite).await;
        let mem0 = super::mem0::Mem0::start().await;
        let mcp = McpServer::start().await;
        let mut cfg = super::MemgateConfig::new(&db.url, &mcp.url());
        cfg.mcp_upstream = mcp.url();
        cfg.mem0_upstream = mem0.url();
        cfg.mcp_extra = mcp_extra.to_string();
        cfg.extra = extra.to_string();
        let gate = super::Memgate::start(cfg).await;
        McpEnv {
            db,
            mem0,
            mcp,
            gate,
        }
    }
}
