//! A mem0-shaped upstream: an in-memory stand-in for the self-hosted mem0 REST
//! server (`server/main.py`, 0.1.x–1.x, plus the 2.x `filters` form) that
//! records every request it receives, as [`super::Upstream`] does.
//!
//! It answers with the real server's shapes and status codes:
//!
//! | request | answer |
//! |---|---|
//! | `POST /memories` | `{"results":[{"id","memory","event":"ADD"}]}`, one memory per user message; 400 without any identifier |
//! | `GET /memories?user_id=&agent_id=&run_id=` | `{"results":[item…]}` (identifiers ANDed); 400 without any |
//! | `GET /memories/{id}` | the item, or `null` (200) when unknown |
//! | `PUT /memories/{id}` `{"text"}` / `{"data"}` | `{"message":"Memory updated successfully!"}` |
//! | `DELETE /memories/{id}` | `{"message":"Memory deleted successfully"}` |
//! | `GET /memories/{id}/history` | a bare list of history rows (no user_id) |
//! | `POST /search` | `{"results":[item + "score"…]}`: top-level ids AND `filters` (plain value, `eq`/`ne`/`in`/`nin`/`gt`…/`contains`, `*`, `AND`/`OR`/`NOT`) |
//! | `DELETE /memories?user_id=…` | `{"message":"All relevant memories deleted"}`; with no identifier it deletes **everything** (mem0 0.1.118–1.0.5) |
//! | `POST /reset` | deletes everything, `{"message":"All memories reset"}` |
//! | `POST /configure` | `{"message":"Configuration set successfully"}` |
//! | `GET /docs`, `GET /openapi.json`, `GET /` (307 to `/docs`) | small bodies |
//! | anything else | 404 `{"detail":"Not Found"}`, 405 `{"detail":"Method Not Allowed"}` on a known path, 307 for a trailing slash (Starlette) |
//!
//! Like Starlette, it routes on the percent-decoded path and, for a repeated
//! query parameter, uses the LAST value (`?user_id=a&user_id=b` is `b`): the
//! classic parameter-pollution disagreement with a proxy that reads the first.
//! Like mem0, a memory created without a top-level `user_id` takes the one in
//! `metadata`, and bodies that are not JSON objects are 422s.
//!
//! [`Mem0::set_ignore_filters`] makes list and search return every user's
//! memories, to test memgate's own response filtering.
//!
//! `GET /memories` lists every match unless [`Mem0::set_listing`] picks a real
//! server's limit ([`Listing`]); none of them pages.

// Handlers return ready-made error responses as their `Err` side; boxing them
// would only add noise to a test fake.
#![allow(clippy::result_large_err)]

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::Recorded;

/// The owner keys mem0 promotes from a memory's payload to the item.
const OWNER_KEYS: [&str; 3] = ["user_id", "agent_id", "run_id"];

#[derive(Clone, Debug)]
struct Memory {
    id: String,
    memory: String,
    user_id: Option<String>,
    agent_id: Option<String>,
    run_id: Option<String>,
    metadata: Option<Map<String, Value>>,
    hash: String,
    created_at: String,
    updated_at: Option<String>,
}

impl Memory {
    /// The item as mem0's `get`/`get_all` render it.
    fn item(&self) -> Value {
        let mut item = Map::new();
        item.insert("id".into(), json!(self.id));
        item.insert("memory".into(), json!(self.memory));
        item.insert("hash".into(), json!(self.hash));
        item.insert(
            "metadata".into(),
            self.metadata.clone().map_or(Value::Null, Value::Object),
        );
        item.insert("created_at".into(), json!(self.created_at));
        item.insert("updated_at".into(), json!(self.updated_at));
        for (key, value) in [
            ("user_id", &self.user_id),
            ("agent_id", &self.agent_id),
            ("run_id", &self.run_id),
        ] {
            if let Some(value) = value {
                item.insert(key.into(), json!(value));
            }
        }
        Value::Object(item)
    }

    fn owner(&self, key: &str) -> Option<&str> {
        match key {
            "user_id" => self.user_id.as_deref(),
            "agent_id" => self.agent_id.as_deref(),
            "run_id" => self.run_id.as_deref(),
            _ => None,
        }
    }

    /// The value a filter key names: an owner, the text, or a metadata key.
    fn field(&self, key: &str) -> Option<Value> {
        match key {
            "user_id" | "agent_id" | "run_id" => self.owner(key).map(|v| json!(v)),
            "id" => Some(json!(self.id)),
            "memory" | "data" => Some(json!(self.memory)),
            "hash" => Some(json!(self.hash)),
            "created_at" => Some(json!(self.created_at)),
            _ => self.metadata.as_ref().and_then(|m| m.get(key).cloned()),
        }
    }
}

#[derive(Clone, Debug)]
struct HistoryRow {
    id: String,
    memory_id: String,
    old_memory: Option<String>,
    new_memory: Option<String>,
    event: &'static str,
    created_at: String,
}

impl HistoryRow {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "memory_id": self.memory_id,
            "old_memory": self.old_memory,
            "new_memory": self.new_memory,
            "event": self.event,
            "created_at": self.created_at,
            "updated_at": null,
            "is_deleted": self.event == "DELETE",
            "actor_id": null,
            "role": null,
        })
    }
}

/// How many memories `GET /memories` answers, as each mem0 server does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Listing {
    /// Every match: no real server, but what tests of the policy want.
    #[default]
    Unlimited,
    /// mem0ai 1.0.x (October 2025): the route takes no `top_k` (FastAPI drops
    /// it) and `Memory.get_all` defaults to `limit=100`.
    V1,
    /// mem0ai 2.0.0–2.0.7: still no `top_k` on the route; `get_all` defaults
    /// to `top_k=20`.
    V2Early,
    /// mem0ai 2.0.8 and later (2026): `top_k: Query(None, ge=0, le=1000)`,
    /// 20 without it, 422 outside the range. (The stand-in has no expiry, so
    /// `show_expired` hides nothing.)
    V2,
}

/// `ALL_MEMORIES_LIMIT` of mem0 2.x's `server/main.py`.
pub const V2_TOP_K_MAX: usize = 1000;

#[derive(Default)]
struct State {
    memories: Vec<Memory>,
    history: Vec<HistoryRow>,
    log: Vec<Recorded>,
    ignore_filters: bool,
    listing: Listing,
}

impl State {
    fn insert(
        &mut self,
        text: &str,
        owners: [Option<String>; 3],
        metadata: Option<Map<String, Value>>,
    ) -> String {
        let [user_id, agent_id, run_id] = owners;
        let now = now();
        let memory = Memory {
            id: new_id(),
            memory: text.to_owned(),
            user_id,
            agent_id,
            run_id,
            metadata,
            hash: text_hash(text),
            created_at: now.clone(),
            updated_at: None,
        };
        let id = memory.id.clone();
        self.history.push(HistoryRow {
            id: new_id(),
            memory_id: id.clone(),
            old_memory: None,
            new_memory: Some(text.to_owned()),
            event: "ADD",
            created_at: now,
        });
        self.memories.push(memory);
        id
    }

    fn delete_where(&mut self, keep: impl Fn(&Memory) -> bool) -> usize {
        let (kept, gone): (Vec<_>, Vec<_>) = self.memories.drain(..).partition(|m| keep(m));
        self.memories = kept;
        for memory in &gone {
            self.history.push(HistoryRow {
                id: new_id(),
                memory_id: memory.id.clone(),
                old_memory: Some(memory.memory.clone()),
                new_memory: None,
                event: "DELETE",
                created_at: now(),
            });
        }
        gone.len()
    }
}

/// An in-process fake of the self-hosted mem0 REST server.
pub struct Mem0 {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Mem0 {
    pub async fn start() -> Mem0 {
        let state: Arc<Mutex<State>> = Arc::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mem0");
        let addr = listener.local_addr().expect("addr");
        let shared = state.clone();
        let app = axum::Router::new().fallback(move |req: Request| {
            let shared = shared.clone();
            async move { handle(shared, req).await }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Mem0 { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("mem0 state")
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().log.clone()
    }

    /// Forgets the recorded requests (the memories stay).
    pub fn clear(&self) {
        self.lock().log.clear();
    }

    /// Stores a memory for `user_id` directly (not recorded); returns its id.
    pub fn seed(&self, user_id: &str, text: &str) -> String {
        self.lock()
            .insert(text, [Some(user_id.to_owned()), None, None], None)
    }

    /// Stores a memory with any owners and metadata directly; returns its id.
    pub fn seed_with(
        &self,
        user_id: Option<&str>,
        agent_id: Option<&str>,
        run_id: Option<&str>,
        metadata: Option<Value>,
        text: &str,
    ) -> String {
        let metadata = metadata.and_then(|m| m.as_object().cloned());
        self.lock().insert(
            text,
            [user_id, agent_id, run_id].map(|o| o.map(str::to_owned)),
            metadata,
        )
    }

    /// Every stored memory, rendered as `GET /memories/{id}` would.
    pub fn memories(&self) -> Vec<Value> {
        self.lock().memories.iter().map(Memory::item).collect()
    }

    /// One stored memory, or `None`.
    pub fn memory(&self, id: &str) -> Option<Value> {
        self.lock()
            .memories
            .iter()
            .find(|m| m.id == id)
            .map(Memory::item)
    }

    /// The history rows of one memory, as `GET /memories/{id}/history` renders them.
    pub fn history(&self, id: &str) -> Vec<Value> {
        self.lock()
            .history
            .iter()
            .filter(|h| h.memory_id == id)
            .map(HistoryRow::json)
            .collect()
    }

    /// When on, `GET /memories` and `POST /search` return every memory, whoever
    /// owns it and whatever was asked.
    pub fn set_ignore_filters(&self, on: bool) {
        self.lock().ignore_filters = on;
    }

    /// Which server's `GET /memories` limit to copy.
    pub fn set_listing(&self, listing: Listing) {
        self.lock().listing = listing;
    }
}

impl Drop for Mem0 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What mem0 serves, by decoded path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Endpoint {
    Home,
    Docs,
    OpenApi,
    Memories,
    Memory(String),
    History(String),
    Search,
    Reset,
    Configure,
}

impl Endpoint {
    fn methods(&self) -> &'static [&'static str] {
        match self {
            Endpoint::Home | Endpoint::Docs | Endpoint::OpenApi | Endpoint::History(_) => &["GET"],
            Endpoint::Memories => &["GET", "POST", "DELETE"],
            Endpoint::Memory(_) => &["GET", "PUT", "DELETE"],
            Endpoint::Search | Endpoint::Reset | Endpoint::Configure => &["POST"],
        }
    }
}

fn endpoint(path: &str) -> Option<Endpoint> {
    if path == "/" {
        return Some(Endpoint::Home);
    }
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    // Starlette's `{param}` matches `[^/]+`.
    match segments.as_slice() {
        ["docs"] => Some(Endpoint::Docs),
        ["openapi.json"] => Some(Endpoint::OpenApi),
        ["memories"] => Some(Endpoint::Memories),
        ["memories", id] if !id.is_empty() => Some(Endpoint::Memory((*id).to_owned())),
        ["memories", id, "history"] if !id.is_empty() => Some(Endpoint::History((*id).to_owned())),
        ["search"] => Some(Endpoint::Search),
        ["reset"] => Some(Endpoint::Reset),
        ["configure"] => Some(Endpoint::Configure),
        _ => None,
    }
}

async fn handle(state: Arc<Mutex<State>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    state
        .lock()
        .expect("mem0 state")
        .log
        .push(Recorded::new(&parts, body.clone()));

    let Some(path) = percent_decode(parts.uri.path()) else {
        return not_found();
    };
    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let method = parts.method.as_str();

    let Some(found) = endpoint(&path) else {
        // Starlette's redirect_slashes.
        if let Some(stripped) = path.strip_suffix('/').filter(|p| !p.is_empty())
            && endpoint(stripped).is_some()
        {
            let location = match parts.uri.query() {
                Some(q) => format!("{stripped}?{q}"),
                None => stripped.to_owned(),
            };
            return Response::builder()
                .status(307)
                .header("location", location)
                .body(Body::empty())
                .expect("redirect");
        }
        return not_found();
    };
    if !found.methods().contains(&method) {
        return reply(405, json!({"detail": "Method Not Allowed"}));
    }
    let mut state = state.lock().expect("mem0 state");
    match (method, found) {
        (_, Endpoint::Home) => Response::builder()
            .status(307)
            .header("location", "/docs")
            .body(Body::empty())
            .expect("redirect"),
        (_, Endpoint::Docs) => Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .body(Body::from(
                "<!DOCTYPE html><html><head><title>Mem0 REST APIs - Swagger UI</title></head><body></body></html>",
            ))
            .expect("docs"),
        (_, Endpoint::OpenApi) => reply(
            200,
            json!({"openapi": "3.1.0", "info": {"title": "Mem0 REST APIs", "version": "1.0.0"}, "paths": {}}),
        ),
        ("POST", Endpoint::Memories) => match json_body(&parts.headers, &body) {
            Ok(body) => add_memories(&mut state, body),
            Err(resp) => resp,
        },
        ("GET", Endpoint::Memories) => list_memories(&state, &query),
        ("DELETE", Endpoint::Memories) => delete_memories(&mut state, &query),
        ("GET", Endpoint::Memory(id)) => reply(
            200,
            state
                .memories
                .iter()
                .find(|m| m.id == id)
                .map_or(Value::Null, Memory::item),
        ),
        ("PUT", Endpoint::Memory(id)) => match json_body(&parts.headers, &body) {
            Ok(body) => update_memory(&mut state, &id, body),
            Err(resp) => resp,
        },
        ("DELETE", Endpoint::Memory(id)) => {
            if state.delete_where(|m| m.id != id) == 0 {
                return memory_not_found(&id);
            }
            reply(200, json!({"message": "Memory deleted successfully"}))
        }
        (_, Endpoint::History(id)) => reply(
            200,
            Value::Array(
                state
                    .history
                    .iter()
                    .filter(|h| h.memory_id == id)
                    .map(HistoryRow::json)
                    .collect(),
            ),
        ),
        (_, Endpoint::Search) => match json_body(&parts.headers, &body) {
            Ok(body) => search(&state, body),
            Err(resp) => resp,
        },
        (_, Endpoint::Reset) => {
            state.memories.clear();
            state.history.clear();
            reply(200, json!({"message": "All memories reset"}))
        }
        (_, Endpoint::Configure) => match json_body(&parts.headers, &body) {
            Ok(_) => reply(200, json!({"message": "Configuration set successfully"})),
            Err(resp) => resp,
        },
        _ => not_found(),
    }
}

fn add_memories(state: &mut State, body: Map<String, Value>) -> Response {
    let owners = match owners_from(&body) {
        Ok(owners) => owners,
        Err(resp) => return resp,
    };
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return unprocessable("messages", "Input should be a valid list");
    };
    let mut parsed = Vec::new();
    for message in messages {
        match (
            message.get("role").and_then(Value::as_str),
            message.get("content").and_then(Value::as_str),
        ) {
            (Some(role), Some(content)) => parsed.push((role.to_owned(), content.to_owned())),
            _ => return unprocessable("messages", "Input should be a valid dictionary"),
        }
    }
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => return unprocessable("metadata", "Input should be a valid dictionary"),
    };
    if owners.iter().all(Option::is_none) {
        return reply(
            400,
            json!({"detail": "At least one identifier (user_id, agent_id, run_id) is required."}),
        );
    }
    // mem0 starts the payload from the metadata and sets the top-level
    // identifiers over it: an identifier only in `metadata` is kept.
    let mut metadata = metadata.unwrap_or_default();
    let owners: [Option<String>; 3] = std::array::from_fn(|i| {
        let from_metadata = metadata
            .remove(OWNER_KEYS[i])
            .and_then(|v| v.as_str().map(str::to_owned))
            .filter(|v| !v.is_empty());
        owners[i].clone().or(from_metadata)
    });
    let metadata = (!metadata.is_empty()).then_some(metadata);
    let results: Vec<Value> = parsed
        .iter()
        .filter(|(role, _)| role == "user")
        .map(|(_, content)| {
            let id = state.insert(content, owners.clone(), metadata.clone());
            json!({"id": id, "memory": content, "event": "ADD"})
        })
        .collect();
    reply(200, json!({ "results": results }))
}

fn list_memories(state: &State, query: &[(String, String)]) -> Response {
    let limit = match list_limit(state.listing, query) {
        Ok(limit) => limit,
        Err(resp) => return resp,
    };
    let owners = query_owners(query);
    if state.ignore_filters {
        return results(
            state
                .memories
                .iter()
                .take(limit)
                .map(Memory::item)
                .collect(),
        );
    }
    if owners.iter().all(Option::is_none) {
        return reply(
            400,
            json!({"detail": "At least one identifier is required."}),
        );
    }
    results(
        state
            .memories
            .iter()
            .filter(|m| owned_by(m, &owners))
            .take(limit)
            .map(Memory::item)
            .collect(),
    )
}

/// The most `GET /memories` answers under `listing`, or FastAPI's 422 for a
/// `top_k` the 2.x route refuses.
fn list_limit(listing: Listing, query: &[(String, String)]) -> Result<usize, Response> {
    match listing {
        Listing::Unlimited => Ok(usize::MAX),
        Listing::V1 => Ok(100),
        Listing::V2Early => Ok(20),
        Listing::V2 => {
            let Some((_, raw)) = query.iter().rev().find(|(k, _)| k == "top_k") else {
                return Ok(20);
            };
            let refuse = |kind: &str, msg: &str, ctx: Value| {
                let mut error =
                    json!({"type": kind, "loc": ["query", "top_k"], "msg": msg, "input": raw});
                if !ctx.is_null() {
                    error["ctx"] = ctx;
                }
                reply(422, json!({"detail": [error]}))
            };
            let Ok(top_k) = raw.trim().parse::<i64>() else {
                return Err(refuse(
                    "int_parsing",
                    "Input should be a valid integer, unable to parse string as an integer",
                    Value::Null,
                ));
            };
            if top_k < 0 {
                return Err(refuse(
                    "greater_than_equal",
                    "Input should be greater than or equal to 0",
                    json!({"ge": 0}),
                ));
            }
            if top_k > V2_TOP_K_MAX as i64 {
                return Err(refuse(
                    "less_than_equal",
                    &format!("Input should be less than or equal to {V2_TOP_K_MAX}"),
                    json!({"le": V2_TOP_K_MAX}),
                ));
            }
            // Without `show_expired`, `_get_all_from_vector_store` fetches at
            // least 60 and appends before it compares with the limit:
            // `top_k=0` answers one memory.
            let show_expired = query
                .iter()
                .rev()
                .find(|(k, _)| k == "show_expired")
                .is_some_and(|(_, v)| {
                    matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on")
                });
            Ok(if show_expired {
                top_k as usize
            } else {
                (top_k as usize).max(1)
            })
        }
    }
}

fn delete_memories(state: &mut State, query: &[(String, String)]) -> Response {
    let owners = query_owners(query);
    if owners.iter().all(Option::is_none) {
        // mem0 0.1.118–1.0.5: delete_all ends in vector_store.reset(), which
        // drops the whole collection.
        state.delete_where(|_| false);
    } else {
        state.delete_where(|m| !owned_by(m, &owners));
    }
    reply(200, json!({"message": "All relevant memories deleted"}))
}

fn update_memory(state: &mut State, id: &str, body: Map<String, Value>) -> Response {
    let Some(text) = ["text", "data", "memory"]
        .iter()
        .find_map(|key| body.get(*key).and_then(Value::as_str))
        .map(str::to_owned)
    else {
        return unprocessable("text", "Field required");
    };
    let Some(memory) = state.memories.iter_mut().find(|m| m.id == id) else {
        return memory_not_found(id);
    };
    let old = std::mem::replace(&mut memory.memory, text.clone());
    memory.hash = text_hash(&text);
    memory.updated_at = Some(now());
    state.history.push(HistoryRow {
        id: new_id(),
        memory_id: id.to_owned(),
        old_memory: Some(old),
        new_memory: Some(text),
        event: "UPDATE",
        created_at: now(),
    });
    reply(200, json!({"message": "Memory updated successfully!"}))
}

fn search(state: &State, body: Map<String, Value>) -> Response {
    let Some(query) = body.get("query").and_then(Value::as_str) else {
        return unprocessable("query", "Input should be a valid string");
    };
    let owners = match owners_from(&body) {
        Ok(owners) => owners,
        Err(resp) => return resp,
    };
    let mut filters = match body.get("filters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(f)) => f.clone(),
        Some(_) => return unprocessable("filters", "Input should be a valid dictionary"),
    };
    // mem0 copies `filters` and sets the top-level identifiers over it.
    for (key, owner) in OWNER_KEYS.iter().zip(&owners) {
        if let Some(owner) = owner {
            filters.insert((*key).to_owned(), json!(owner));
        }
    }
    let limit = body
        .get("limit")
        .and_then(Value::as_u64)
        .unwrap_or(100)
        .min(1000) as usize;
    if !state.ignore_filters && !OWNER_KEYS.iter().any(|k| filters.contains_key(*k)) {
        return reply(
            400,
            json!({"detail": "At least one of 'user_id', 'agent_id', or 'run_id' must be provided."}),
        );
    }
    let words: Vec<String> = query
        .split_whitespace()
        .map(str::to_lowercase)
        .filter(|w| !w.is_empty())
        .collect();
    let mut hits: Vec<(f64, Value)> = state
        .memories
        .iter()
        .filter(|m| state.ignore_filters || matches_filters(m, &filters))
        .filter_map(|m| {
            let text = m.memory.to_lowercase();
            let score = if words.is_empty() {
                1.0
            } else {
                words.iter().filter(|w| text.contains(w.as_str())).count() as f64
                    / words.len() as f64
            };
            (state.ignore_filters || score > 0.0).then(|| {
                let mut item = m.item();
                item["score"] = json!(score);
                (score, item)
            })
        })
        .collect();
    hits.sort_by(|a, b| b.0.total_cmp(&a.0));
    results(hits.into_iter().take(limit).map(|(_, item)| item).collect())
}

/// mem0 2.x filter semantics: keys are ANDed; `AND`/`OR`/`NOT` take lists of
/// filter objects (`NOT`: none of them holds).
fn matches_filters(memory: &Memory, filters: &Map<String, Value>) -> bool {
    filters.iter().all(|(key, condition)| {
        let nested = |v: &Value| -> Vec<Map<String, Value>> {
            match v {
                Value::Array(items) => items
                    .iter()
                    .filter_map(|i| i.as_object().cloned())
                    .collect(),
                Value::Object(o) => vec![o.clone()],
                _ => Vec::new(),
            }
        };
        match key.as_str() {
            "AND" | "$and" => nested(condition).iter().all(|f| matches_filters(memory, f)),
            "OR" | "$or" => nested(condition).iter().any(|f| matches_filters(memory, f)),
            "NOT" | "$not" => !nested(condition).iter().any(|f| matches_filters(memory, f)),
            field => condition_holds(memory.field(field).as_ref(), condition),
        }
    })
}

const OPERATORS: [&str; 10] = [
    "eq",
    "ne",
    "in",
    "nin",
    "gt",
    "gte",
    "lt",
    "lte",
    "contains",
    "icontains",
];

fn condition_holds(field: Option<&Value>, condition: &Value) -> bool {
    match condition {
        Value::String(s) if s == "*" => field.is_some(),
        Value::Object(ops)
            if !ops.is_empty() && ops.keys().all(|k| OPERATORS.contains(&k.as_str())) =>
        {
            ops.iter()
                .all(|(op, operand)| operator_holds(field, op, operand))
        }
        other => field == Some(other),
    }
}

fn operator_holds(field: Option<&Value>, op: &str, operand: &Value) -> bool {
    let number = |v: Option<&Value>| v.and_then(Value::as_f64);
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    match op {
        "eq" => field == Some(operand),
        "ne" => field != Some(operand),
        "in" => operand
            .as_array()
            .is_some_and(|list| field.is_some_and(|f| list.contains(f))),
        "nin" => operand
            .as_array()
            .is_some_and(|list| !field.is_some_and(|f| list.contains(f))),
        "gt" | "gte" | "lt" | "lte" => match (number(field), operand.as_f64()) {
            (Some(a), Some(b)) => match op {
                "gt" => a > b,
                "gte" => a >= b,
                "lt" => a < b,
                _ => a <= b,
            },
            _ => false,
        },
        "contains" => match (text(field), operand.as_str()) {
            (Some(a), Some(b)) => a.contains(b),
            _ => false,
        },
        "icontains" => match (text(field), operand.as_str()) {
            (Some(a), Some(b)) => a.to_lowercase().contains(&b.to_lowercase()),
            _ => false,
        },
        _ => false,
    }
}

fn owned_by(memory: &Memory, owners: &[Option<String>; 3]) -> bool {
    OWNER_KEYS
        .iter()
        .zip(owners)
        .all(|(key, wanted)| wanted.is_none() || memory.owner(key) == wanted.as_deref())
}

/// The identifiers of a query; the last value of a repeated key wins and an
/// empty one counts as absent (Starlette and mem0).
fn query_owners(query: &[(String, String)]) -> [Option<String>; 3] {
    OWNER_KEYS.map(|key| {
        query
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    })
}

/// The top-level identifiers of a body (`Optional[str]` in mem0's models).
fn owners_from(body: &Map<String, Value>) -> Result<[Option<String>; 3], Response> {
    let mut owners: [Option<String>; 3] = Default::default();
    for (slot, key) in owners.iter_mut().zip(OWNER_KEYS) {
        *slot = match body.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()).filter(|s| !s.is_empty()),
            Some(_) => return Err(unprocessable(key, "Input should be a valid string")),
        };
    }
    Ok(owners)
}

/// FastAPI's body handling: JSON when the content type is absent or JSON,
/// else the model fails validation; a body that is not an object is a 422.
fn json_body(headers: &HeaderMap, body: &Bytes) -> Result<Map<String, Value>, Response> {
    let json_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let media = v
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            media == "application/json"
                || (media.starts_with("application/") && media.ends_with("+json"))
        })
        .unwrap_or(true);
    if !json_type {
        return Err(unprocessable("body", "Input should be a valid dictionary"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(unprocessable("body", "Input should be a valid dictionary")),
        Err(_) => Err(reply(
            422,
            json!({"detail": [{"type": "json_invalid", "loc": ["body", 0], "msg": "JSON decode error", "input": {}}]}),
        )),
    }
}

fn reply(status: u16, body: Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("response")
}

fn results(items: Vec<Value>) -> Response {
    reply(200, json!({ "results": items }))
}

fn not_found() -> Response {
    reply(404, json!({"detail": "Not Found"}))
}

fn memory_not_found(id: &str) -> Response {
    reply(
        404,
        json!({"detail": format!("Memory with id {id} not found")}),
    )
}

fn unprocessable(field: &str, msg: &str) -> Response {
    reply(
        422,
        json!({"detail": [{"type": "value_error", "loc": ["body", field], "msg": msg}]}),
    )
}

/// Decodes `%XX` escapes (uvicorn hands Starlette the decoded path).
fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = raw.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// A random UUIDv4-shaped id (a counter hashed with per-call random keys).
fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let a = RandomState::new().hash_one(n);
    let b = RandomState::new().hash_one(!n);
    let hex = format!("{a:016x}{b:016x}");
    let variant = ["8", "9", "a", "b"][(b & 3) as usize];
    format!(
        "{}-{}-4{}-{variant}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// A stable 32-hex digest of a memory's text (mem0 uses md5).
fn text_hash(text: &str) -> String {
    let mut first = DefaultHasher::new();
    text.hash(&mut first);
    let mut second = DefaultHasher::new();
    (text, 1u8).hash(&mut second);
    format!("{:016x}{:016x}", first.finish(), second.finish())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}
