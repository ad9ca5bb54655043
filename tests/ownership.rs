//! End to end: a real memgate process in front of a mem0-shaped upstream
//! (`support::mem0::Mem0`). Every test checks what the client got AND what the
//! upstream actually received (docs/design.md §3, §4).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::Uri;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::mem0::Mem0;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

struct Env {
    _db: TestDb,
    mem0: Mem0,
    gate: Memgate,
}

/// A memgate in front of a fresh fake mem0; `extra` is appended as whole TOML
/// sections, `mem0_extra` inside `[mem0]`.
async fn env_with(extra: &str, mem0_extra: &str) -> Env {
    let db = TestDb::new(Backend::Sqlite).await;
    let mem0 = Mem0::start().await;
    let mut cfg = MemgateConfig::new(&db.url, &mem0.url());
    cfg.mem0_upstream = mem0.url();
    cfg.mcp_upstream = mem0.url();
    cfg.extra = extra.to_string();
    cfg.mem0_extra = mem0_extra.to_string();
    let gate = Memgate::start(cfg).await;
    Env {
        _db: db,
        mem0,
        gate,
    }
}

async fn env() -> Env {
    env_with("", "").await
}

const RW: &[&str] = &[];
const READ_ONLY: &[&str] = &["--permissions", "read"];
const ADMIN: &[&str] = &["--permissions", "read,write,admin"];

#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn call_with(
    gate: &Memgate,
    token: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client()
        .request(method, gate.mem0_url(path))
        .header("X-MCP-Token", token);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply { status, body }
}

async fn call(gate: &Memgate, token: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
    call_with(gate, token, method, path, &[], body).await
}

/// The path of a recorded request.
fn path_of(r: &Recorded) -> String {
    r.uri.parse::<Uri>().unwrap().path().to_string()
}

/// Every decoded value of query key `key` of a recorded request.
fn query_values(r: &Recorded, key: &str) -> Vec<String> {
    let uri: Uri = r.uri.parse().unwrap();
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// The JSON body of a recorded request (`Null` when empty or not JSON).
fn body_of(r: &Recorded) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

/// Recorded requests with `method` on exactly `path`.
fn sent<'a>(log: &'a [Recorded], method: &str, path: &str) -> Vec<&'a Recorded> {
    log.iter()
        .filter(|r| r.method == method && path_of(r) == path)
        .collect()
}

/// Requests that would change or reveal memory `id` beyond memgate's own
/// owner lookup (`GET /memories/{id}`): anything but that GET.
fn acting_on<'a>(log: &'a [Recorded], id: &str) -> Vec<&'a Recorded> {
    let one = format!("/memories/{id}");
    log.iter()
        .filter(|r| {
            let path = path_of(r);
            path.contains(id) && !(r.method == "GET" && path == one)
        })
        .collect()
}

fn access_denied(id: &str, user: &str) -> Value {
    json!({ "detail": format!("Access denied: Memory {id} does not belong to user {user}") })
}

fn detail(reply: &Reply) -> &str {
    reply.body["detail"].as_str().unwrap_or_default()
}

fn result_users(reply: &Reply) -> Vec<String> {
    reply.body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {:?}", reply.body))
        .iter()
        .map(|item| item["user_id"].as_str().unwrap_or("<none>").to_string())
        .collect()
}

fn project_hash(user: &str, project: &str) -> String {
    let digest = Sha256::digest(format!("{user}\0{project}").as_bytes());
    hex::encode(digest)[..12].to_string()
}

// ---------------------------------------------------------------------------
// The fake itself: as permissive as the real mem0, so the tests below mean something
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_mem0_leaks_like_the_real_one_without_memgate() {
    let mem0 = Mem0::start().await;
    let base = mem0.url();
    let http = client();
    mem0.seed("alice", "alice likes tea");
    let bob_id = mem0.seed("bob", "bob likes tea");
    let get = |path: &str| {
        let req = http.get(format!("{base}{path}"));
        async move {
            let resp = req.send().await.unwrap();
            (
                resp.status().as_u16(),
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let post = |path: &str, body: Value| {
        let req = http.post(format!("{base}{path}")).json(&body);
        async move {
            let resp = req.send().await.unwrap();
            (
                resp.status().as_u16(),
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let users = |v: &Value| -> Vec<String> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["user_id"].as_str().unwrap_or("").to_string())
            .collect()
    };

    // Parameter pollution: Starlette takes the last value.
    let (status, body) = get("/memories?user_id=alice&user_id=bob").await;
    assert_eq!(status, 200);
    assert_eq!(users(&body), ["bob"]);
    // Anyone may read anyone's memory and history.
    let (status, body) = get(&format!("/memories/{bob_id}")).await;
    assert_eq!((status, body["user_id"].clone()), (200, json!("bob")));
    assert_eq!(get("/memories/nope").await, (200, Value::Null));
    let (_, history) = get(&format!("/memories/{bob_id}/history")).await;
    assert_eq!(history[0]["event"], "ADD");
    assert!(history[0].get("user_id").is_none());
    // 2.x filters select other users through operators.
    // (mem0 1.x wants an identifier key at the top of the filters.)
    let (status, _) = post(
        "/search",
        json!({"query": "tea", "filters": {"OR": [{"user_id": "alice"}, {"user_id": "bob"}]}}),
    )
    .await;
    assert_eq!(status, 400);
    for filters in [
        json!({"user_id": "*", "OR": [{"user_id": "alice"}, {"user_id": "bob"}]}),
        json!({"user_id": {"in": ["alice", "bob"]}}),
        json!({"user_id": "*"}),
    ] {
        let (status, body) = post("/search", json!({"query": "tea", "filters": filters})).await;
        assert_eq!(status, 200, "{filters}");
        assert_eq!(users(&body).len(), 2, "{filters}: {body}");
    }
    let (_, body) = post(
        "/search",
        json!({"query": "tea", "filters": {"user_id": {"ne": "alice"}}}),
    )
    .await;
    assert_eq!(users(&body), ["bob"]);
    let (_, body) = post(
        "/search",
        json!({"query": "tea", "filters": {"user_id": "alice", "NOT": [{"user_id": "alice"}]}}),
    )
    .await;
    assert!(users(&body).is_empty());
    // The top-level user_id wins over filters.user_id.
    let (_, body) = post(
        "/search",
        json!({"query": "tea", "user_id": "bob", "filters": {"user_id": "alice"}}),
    )
    .await;
    assert_eq!(users(&body), ["bob"]);
    // A user_id only in metadata becomes the owner.
    let (status, body) = post(
        "/memories",
        json!({"messages": [{"role": "user", "content": "planted"}], "agent_id": "a1", "metadata": {"user_id": "bob"}}),
    )
    .await;
    assert_eq!(status, 200);
    let planted = body["results"][0]["id"].as_str().unwrap();
    assert_eq!(mem0.memory(planted).unwrap()["user_id"], "bob");
    // No identifier: 400 on create and list.
    let (status, body) = post(
        "/memories",
        json!({"messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["detail"],
        "At least one identifier (user_id, agent_id, run_id) is required."
    );
    assert_eq!(get("/memories").await.0, 400);
    assert_eq!(get("/nope").await, (404, json!({"detail": "Not Found"})));
    // DELETE /memories without an identifier wipes everyone (0.1.118–1.0.5).
    let resp = http
        .delete(format!("{base}/memories"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(mem0.memories().is_empty());
    assert_eq!(mem0.requests().len(), 16);
}

// ---------------------------------------------------------------------------
// Owner: every route works, and the upstream sees only the caller's scope
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_succeeds_on_every_route_and_the_upstream_sees_only_their_user_id() {
    let Env { _db, mem0, gate } = env().await;
    let alice = gate.create_token("alice", RW);
    mem0.seed("bob", "bob likes coffee");

    // POST /memories: user_id injected when missing, kept when it is the caller's.
    let created = call(
        &gate,
        &alice,
        "POST",
        "/memories",
        Some(json!({"messages": [{"role": "user", "content": "alice likes tea"}]})),
    )
    .await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    let id = created.body["results"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(created.body["results"][0]["event"], "ADD");
    let created2 = call(
        &gate,
        &alice,
        "POST",
        "/memories",
        Some(json!({"messages": [{"role": "user", "content": "alice likes green tea"}], "user_id": "alice", "metadata": {"topic": "drinks"}})),
    )
    .await;
    assert_eq!(created2.status, 200, "{:?}", created2.body);
    let log = mem0.requests();
    let posts = sent(&log, "POST", "/memories");
    assert_eq!(posts.len(), 2);
    for post in &posts {
        assert_eq!(body_of(post)["user_id"], "alice", "{:?}", body_of(post));
    }
    assert_eq!(
        body_of(posts[0])["messages"][0]["content"],
        "alice likes tea"
    );
    assert_eq!(mem0.memory(&id).unwrap()["user_id"], "alice");

    // GET /memories: the query user_id is forced.
    mem0.clear();
    let list = call(&gate, &alice, "GET", "/memories", None).await;
    assert_eq!(list.status, 200, "{:?}", list.body);
    assert_eq!(result_users(&list), ["alice", "alice"]);
    let log = mem0.requests();
    let gets = sent(&log, "GET", "/memories");
    assert_eq!(gets.len(), 1);
    assert_eq!(query_values(gets[0], "user_id"), ["alice"]);

    // ... also when the caller names themself.
    mem0.clear();
    let list = call(&gate, &alice, "GET", "/memories?user_id=alice", None).await;
    assert_eq!(list.status, 200);
    assert_eq!(
        query_values(sent(&mem0.requests(), "GET", "/memories")[0], "user_id"),
        ["alice"]
    );

    // POST /search: top-level user_id and filters.user_id are the scope.
    for body in [
        json!({"query": "tea"}),
        json!({"query": "tea", "user_id": "alice"}),
        json!({"query": "tea", "filters": {"user_id": "alice"}}),
        json!({"query": "tea", "filters": {"AND": [{"topic": "drinks"}]}}),
    ] {
        mem0.clear();
        let found = call(&gate, &alice, "POST", "/search", Some(body.clone())).await;
        assert_eq!(found.status, 200, "{body}: {:?}", found.body);
        assert!(!result_users(&found).is_empty(), "{body}");
        assert!(result_users(&found).iter().all(|u| u == "alice"));
        let log = mem0.requests();
        let searches = sent(&log, "POST", "/search");
        assert_eq!(searches.len(), 1);
        let upstream = body_of(searches[0]);
        assert_eq!(upstream["user_id"], "alice", "{body} -> {upstream}");
        assert_eq!(
            upstream["filters"]["user_id"], "alice",
            "{body} -> {upstream}"
        );
        assert_eq!(upstream["query"], "tea");
    }

    // GET /memories/{id}
    mem0.clear();
    let one = call(&gate, &alice, "GET", &format!("/memories/{id}"), None).await;
    assert_eq!(one.status, 200, "{:?}", one.body);
    assert_eq!(one.body["id"], id.as_str());
    assert_eq!(one.body["memory"], "alice likes tea");
    assert_eq!(one.body["user_id"], "alice");

    // PUT /memories/{id}
    mem0.clear();
    let updated = call(
        &gate,
        &alice,
        "PUT",
        &format!("/memories/{id}"),
        Some(json!({"text": "alice likes oolong"})),
    )
    .await;
    assert_eq!(updated.status, 200, "{:?}", updated.body);
    assert_eq!(updated.body["message"], "Memory updated successfully!");
    let log = mem0.requests();
    let puts = sent(&log, "PUT", &format!("/memories/{id}"));
    assert_eq!(puts.len(), 1);
    assert_eq!(body_of(puts[0])["text"], "alice likes oolong");
    assert_eq!(mem0.memory(&id).unwrap()["memory"], "alice likes oolong");

    // GET /memories/{id}/history: a bare list.
    let history = call(
        &gate,
        &alice,
        "GET",
        &format!("/memories/{id}/history"),
        None,
    )
    .await;
    assert_eq!(history.status, 200, "{:?}", history.body);
    let rows = history.body.as_array().expect("history is a list");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["event"], "UPDATE");
    assert_eq!(rows[1]["new_memory"], "alice likes oolong");

    // DELETE /memories/{id}
    mem0.clear();
    let deleted = call(&gate, &alice, "DELETE", &format!("/memories/{id}"), None).await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    assert_eq!(deleted.body["message"], "Memory deleted successfully");
    assert_eq!(
        sent(&mem0.requests(), "DELETE", &format!("/memories/{id}")).len(),
        1
    );
    assert!(mem0.memory(&id).is_none());

    // Once deleted, the memory is unknown: 404, not a stale owner-cache hit.
    let gone = call(&gate, &alice, "GET", &format!("/memories/{id}"), None).await;
    assert_eq!(gone.status, 404, "{:?}", gone.body);
    let gone = call(
        &gate,
        &alice,
        "PUT",
        &format!("/memories/{id}"),
        Some(json!({"text": "again"})),
    )
    .await;
    assert_eq!(gone.status, 404, "{:?}", gone.body);

    // Bob's memory was never touched.
    assert_eq!(
        mem0.memories()
            .iter()
            .filter(|m| m["user_id"] == "bob")
            .count(),
        1
    );
}

// ---------------------------------------------------------------------------
// Another user
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_gets_403_with_the_exact_detail_and_nothing_reaches_the_memory() {
    let Env { _db, mem0, gate } = env().await;
    let bob = gate.create_token("bob", RW);
    let id = mem0.seed("alice", "alice's secret");
    let before = mem0.memory(&id).unwrap();

    let attempts: [(&str, String, Option<Value>); 4] = [
        ("GET", format!("/memories/{id}"), None),
        (
            "PUT",
            format!("/memories/{id}"),
            Some(json!({"text": "pwned"})),
        ),
        ("DELETE", format!("/memories/{id}"), None),
        ("GET", format!("/memories/{id}/history"), None),
    ];
    for (method, path, body) in attempts {
        let r = call(&gate, &bob, method, &path, body).await;
        assert_eq!(r.status, 403, "{method} {path}: {:?}", r.body);
        assert_eq!(r.body, access_denied(&id, "bob"), "{method} {path}");
    }
    // Repeated (owner now cached), still denied the same way.
    let r = call(&gate, &bob, "DELETE", &format!("/memories/{id}"), None).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body, access_denied(&id, "bob"));

    let log = mem0.requests();
    assert!(
        acting_on(&log, &id).is_empty(),
        "only owner lookups may reach the upstream: {:?}",
        acting_on(&log, &id)
    );
    assert!(
        log.iter().all(|r| r.method == "GET"),
        "{:?}",
        log.iter()
            .map(|r| format!("{} {}", r.method, r.uri))
            .collect::<Vec<_>>()
    );
    assert_eq!(mem0.memory(&id).unwrap(), before, "the memory changed");
    assert_eq!(mem0.history(&id).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_stack_demo_a_memory_created_by_alice_is_denied_to_bob() {
    let Env { _db, mem0, gate } = env().await;
    let alice = gate.create_token("alice", RW);
    let bob = gate.create_token("bob", RW);
    let created = call(
        &gate,
        &alice,
        "POST",
        "/memories",
        Some(json!({"messages": [{"role": "user", "content": "My bank PIN is 1234"}], "user_id": "alice"})),
    )
    .await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    let id = created.body["results"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(mem0.memory(&id).unwrap()["user_id"], "alice");

    let r = call(&gate, &bob, "GET", &format!("/memories/{id}"), None).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.body, access_denied(&id, "bob"));
    assert!(!r.body.to_string().contains("1234"));
    assert!(
        mem0.requests()
            .iter()
            .all(|r| r.method != "GET" || !path_of(r).ends_with("/history")),
    );

    // Bob's own list and search do not show it either.
    let list = call(&gate, &bob, "GET", "/memories", None).await;
    assert_eq!(list.status, 200);
    assert!(result_users(&list).is_empty());
    let found = call(
        &gate,
        &bob,
        "POST",
        "/search",
        Some(json!({"query": "bank PIN"})),
    )
    .await;
    assert_eq!(found.status, 200);
    assert!(result_users(&found).is_empty());

    // Alice still reads it.
    let r = call(&gate, &alice, "GET", &format!("/memories/{id}"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["memory"], "My bank PIN is 1234");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_from_a_create_response_are_owned_without_an_upstream_lookup() {
    let Env { _db, mem0, gate } = env().await;
    let alice = gate.create_token("alice", RW);
    let bob = gate.create_token("bob", RW);
    let created = call(
        &gate,
        &alice,
        "POST",
        "/memories",
        Some(json!({"messages": [{"role": "user", "content": "alice note"}]})),
    )
    .await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    let id = created.body["results"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    mem0.clear();

    let r = call(
        &gate,
        &alice,
        "PUT",
        &format!("/memories/{id}"),
        Some(json!({"text": "alice note v2"})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = call(&gate, &bob, "DELETE", &format!("/memories/{id}"), None).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.body, access_denied(&id, "bob"));
    let seen: Vec<String> = mem0
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, path_of(r)))
        .collect();
    assert_eq!(
        seen,
        [format!("PUT /memories/{id}")],
        "the owner of a memory created through memgate is known without asking mem0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_memory_id_is_404_on_every_per_memory_route() {
    let Env { _db, mem0, gate } = env().await;
    let alice = gate.create_token("alice", RW);
    mem0.seed("alice", "exists");
    let unknown = "3f1e2d4c-0000-4000-8000-000000000000";
    for (method, path, body) in [
        ("GET", format!("/memories/{unknown}"), None),
        (
            "PUT",
            format!("/memories/{unknown}"),
            Some(json!({"text": "x"})),
        ),
        ("DELETE", format!("/memories/{unknown}"), None),
        ("GET", format!("/memories/{unknown}/history"), None),
    ] {
        let r = call(&gate, &alice, method, &path, body).await;
        assert_eq!(r.status, 404, "{method} {path}: {:?}", r.body);
        assert!(!detail(&r).is_empty(), "{:?}", r.body);
    }
    assert!(acting_on(&mem0.requests(), unknown).is_empty());
}

// ---------------------------------------------------------------------------
// Permissions
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_tokens_cannot_write_and_writes_are_never_forwarded() {
    let Env { _db, mem0, gate } = env().await;
    let reader = gate.create_token("alice", READ_ONLY);
    let id = mem0.seed("alice", "alice's memory");

    for (method, path, body) in [
        (
            "POST",
            "/memories".to_string(),
            Some(json!({"messages": [{"role": "user", "content": "x"}]})),
        ),
        (
            "PUT",
            format!("/memories/{id}"),
            Some(json!({"text": "changed"})),
        ),
        ("DELETE", format!("/memories/{id}"), None),
        ("DELETE", "/memories?user_id=alice".to_string(), None),
    ] {
        let r = call(&gate, &reader, method, &path, body).await;
        assert_eq!(r.status, 403, "{method} {path}: {:?}", r.body);
        assert!(detail(&r).contains("ccess denied") || detail(&r).contains("permission"));
    }
    assert!(
        mem0.requests().is_empty(),
        "the permission is checked before any lookup or forwarding: {:?}",
        mem0.requests()
    );
    assert_eq!(mem0.memory(&id).unwrap()["memory"], "alice's memory");

    // Reads work.
    assert_eq!(
        call(&gate, &reader, "GET", "/memories", None).await.status,
        200
    );
    assert_eq!(
        call(&gate, &reader, "GET", &format!("/memories/{id}"), None)
            .await
            .status,
        200
    );
    assert_eq!(
        call(
            &gate,
            &reader,
            "GET",
            &format!("/memories/{id}/history"),
            None
        )
        .await
        .status,
        200
    );
    let found = call(
        &gate,
        &reader,
        "POST",
        "/search",
        Some(json!({"query": "memory"})),
    )
    .await;
    assert_eq!(found.status, 200, "{:?}", found.body);
    assert_eq!(result_users(&found), ["alice"]);
    assert!(
        mem0.requests()
            .iter()
            .all(|r| r.method == "GET" || path_of(r) == "/search")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_and_configure_are_admin_only() {
    let Env { _db, mem0, gate } = env().await;
    let writer = gate.create_token("alice", RW);
    let reader = gate.create_token("alice", READ_ONLY);
    let admin = gate.create_token("root", ADMIN);
    mem0.seed("alice", "a");
    mem0.seed("bob", "b");

    for token in [&writer, &reader] {
        let r = call(&gate, token, "POST", "/reset", None).await;
        assert_eq!(r.status, 403, "{:?}", r.body);
        let r = call(
            &gate,
            token,
            "POST",
            "/configure",
            Some(json!({"vector_store": {"provider": "qdrant"}})),
        )
        .await;
        assert_eq!(r.status, 403, "{:?}", r.body);
    }
    assert!(mem0.requests().is_empty(), "{:?}", mem0.requests());
    assert_eq!(mem0.memories().len(), 2);

    let r = call(
        &gate,
        &admin,
        "POST",
        "/configure",
        Some(json!({"vector_store": {"provider": "qdrant"}})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["message"], "Configuration set successfully");
    let r = call(&gate, &admin, "POST", "/reset", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let log = mem0.requests();
    assert_eq!(sent(&log, "POST", "/configure").len(), 1);
    assert_eq!(
        body_of(sent(&log, "POST", "/configure")[0]),
        json!({"vector_store": {"provider": "qdrant"}})
    );
    assert_eq!(sent(&log, "POST", "/reset").len(), 1);
    assert!(mem0.memories().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_all_without_user_id_is_refused_and_every_memory_survives() {
    let Env { _db, mem0, gate } = env().await;
    let writer = gate.create_token("alice", RW);
    let admin = gate.create_token("root", ADMIN);
    mem0.seed("alice", "a1");
    mem0.seed("bob", "b1");
    mem0.seed("root", "r1");
    mem0.seed("root", "r2");

    for (token, path) in [
        (&writer, "/memories"),
        (&writer, "/memories?user_id=alice"),
        (&writer, "/memories?user_id=bob"),
        (&writer, "/memories?agent_id=x"),
        (&writer, "/memories?user_id="),
        (&admin, "/memories"),
        (&admin, "/memories?user_id="),
    ] {
        let r = call(&gate, token, "DELETE", path, None).await;
        assert_eq!(r.status, 403, "DELETE {path}: {:?}", r.body);
    }
    assert!(
        mem0.requests().iter().all(|r| r.method != "DELETE"),
        "{:?}",
        mem0.requests()
    );
    assert_eq!(
        mem0.memories().len(),
        4,
        "a refused delete deleted something"
    );

    // An admin may delete their own memories explicitly.
    let r = call(&gate, &admin, "DELETE", "/memories?user_id=root", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["message"], "All relevant memories deleted");
    let log = mem0.requests();
    let deletes = sent(&log, "DELETE", "/memories");
    assert_eq!(deletes.len(), 1);
    assert_eq!(query_values(deletes[0], "user_id"), ["root"]);
    let left: Vec<Value> = mem0
        .memories()
        .iter()
        .map(|m| m["user_id"].clone())
        .collect();
    assert_eq!(left, [json!("alice"), json!("bob")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_delete_all_lets_writers_delete_only_their_own_memories() {
    let Env { _db, mem0, gate } = env_with("", "allow_delete_all = true").await;
    let alice = gate.create_token("alice", RW);
    let reader = gate.create_token("carol", READ_ONLY);
    mem0.seed("alice", "a1");
    mem0.seed("alice", "a2");
    mem0.seed("bob", "b1");
    mem0.seed("carol", "c1");

    for (token, path) in [
        (&alice, "/memories"),
        (&alice, "/memories?user_id=bob"),
        (&alice, "/memories?user_id=alice&user_id=bob"),
        (&reader, "/memories?user_id=carol"),
    ] {
        let r = call(&gate, token, "DELETE", path, None).await;
        assert!(
            matches!(r.status, 400 | 403),
            "DELETE {path}: {} {:?}",
            r.status,
            r.body
        );
    }
    assert!(mem0.requests().iter().all(|r| r.method != "DELETE"));
    assert_eq!(mem0.memories().len(), 4);

    let r = call(&gate, &alice, "DELETE", "/memories?user_id=alice", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let log = mem0.requests();
    let deletes = sent(&log, "DELETE", "/memories");
    assert_eq!(deletes.len(), 1);
    assert_eq!(query_values(deletes[0], "user_id"), ["alice"]);
    let left: Vec<Value> = mem0
        .memories()
        .iter()
        .map(|m| m["user_id"].clone())
        .collect();
    assert_eq!(left, [json!("bob"), json!("carol")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_may_name_another_user() {
    let Env { _db, mem0, gate } = env().await;
    let admin = gate.create_token("root", ADMIN);
    let bob_id = mem0.seed("bob", "bob's memory");
    mem0.seed("alice", "alice's memory");

    let list = call(&gate, &admin, "GET", "/memories?user_id=bob", None).await;
    assert_eq!(list.status, 200, "{:?}", list.body);
    assert_eq!(result_users(&list), ["bob"]);
    let log = mem0.requests();
    assert_eq!(
        query_values(sent(&log, "GET", "/memories")[0], "user_id"),
        ["bob"]
    );
    let one = call(&gate, &admin, "GET", &format!("/memories/{bob_id}"), None).await;
    assert_eq!(one.status, 200, "{:?}", one.body);
    assert_eq!(one.body["memory"], "bob's memory");
}

// ---------------------------------------------------------------------------
// Order of checks (docs/design.md §4): 401 → 404/405 → 403 permission → 413/415/400 → 403 owner
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_run_in_the_documented_order() {
    let Env { _db, mem0, gate } = env_with("[limits]\nmax_body_bytes = 1024\n", "").await;
    let writer = gate.create_token("alice", RW);
    let reader = gate.create_token("alice", READ_ONLY);
    let bob_id = mem0.seed("bob", "bob's");
    let bob_path = format!("/memories/{bob_id}");
    let big = "x".repeat(2048);

    let json = "application/json";
    // (token, case): 401 before everything.
    let cases: Vec<(Option<&str>, Case)> = vec![
        (
            None,
            case("no token, admin route", "POST", "/reset").expect(&[401]),
        ),
        (
            None,
            case("no token, unknown route", "GET", "/nope").expect(&[401]),
        ),
        (
            None,
            case("no token, bad body", "POST", "/memories")
                .json("{")
                .expect(&[401]),
        ),
        // 404/405 before the permission.
        (
            Some(reader.as_str()),
            case("unknown route", "POST", "/nope").expect(&[404]),
        ),
        (
            Some(reader.as_str()),
            case("wrong method", "PATCH", "/memories").expect(&[405]),
        ),
        (
            Some(reader.as_str()),
            case("wrong method on search", "GET", "/search").expect(&[405]),
        ),
        // 403 permission before the body.
        (
            Some(reader.as_str()),
            case("reader writes garbage", "POST", "/memories")
                .json("{")
                .expect(&[403]),
        ),
        (
            Some(reader.as_str()),
            case("reader writes huge", "POST", "/memories")
                .json(big.clone())
                .expect(&[403]),
        ),
        (
            Some(reader.as_str()),
            case("reader puts on another's", "PUT", bob_path.clone())
                .header("Content-Type", "text/plain")
                .bytes(b"x".to_vec())
                .expect(&[403]),
        ),
        (
            Some(writer.as_str()),
            case("writer resets with garbage", "POST", "/reset")
                .header("Content-Type", "text/plain")
                .bytes(b"{".to_vec())
                .expect(&[403]),
        ),
        // 413/415/400 before the owner.
        (
            Some(writer.as_str()),
            case("huge, naming bob", "POST", "/memories")
                .json(format!(r#"{{"user_id":"bob","pad":"{big}"}}"#))
                .expect(&[413]),
        ),
        (
            Some(writer.as_str()),
            case("text/plain, naming bob", "POST", "/memories")
                .header("Content-Type", "text/plain")
                .bytes(br#"{"user_id":"bob","messages":[]}"#.to_vec())
                .expect(&[415]),
        ),
        (
            Some(writer.as_str()),
            case("invalid JSON on another's memory", "PUT", bob_path.clone())
                .json("{not json")
                .expect(&[400]),
        ),
        (
            Some(writer.as_str()),
            case("huge on another's memory", "PUT", bob_path.clone())
                .json(format!(r#"{{"text":"{big}"}}"#))
                .expect(&[413]),
        ),
        (
            Some(writer.as_str()),
            case("wrong type on another's memory", "PUT", bob_path.clone())
                .header("Content-Type", "text/plain")
                .bytes(b"x".to_vec())
                .expect(&[415]),
        ),
        (
            Some(writer.as_str()),
            case("non-object on another's memory", "PUT", bob_path.clone())
                .header("Content-Type", json)
                .bytes(b"[]".to_vec())
                .expect(&[400]),
        ),
    ];
    for (token, c) in &cases {
        let (status, body) = raw_send(gate.mem0, *token, c).await;
        assert!(c.expect.contains(&status), "{}: {status} {body}", c.name);
        let reply: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(
            reply["detail"].is_string(),
            "{}: errors are FastAPI-shaped: {body}",
            c.name
        );
    }
    assert!(
        mem0.requests().is_empty(),
        "nothing refused before the owner check may reach mem0: {:?}",
        mem0.requests()
    );
    // Only then the owner check (which may look the memory up).
    let r = call(
        &gate,
        &writer,
        "PUT",
        &bob_path,
        Some(json!({"text": "pwned"})),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body, access_denied(&bob_id, "alice"));
    assert!(acting_on(&mem0.requests(), &bob_id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_404_unless_allow_listed() {
    let Env { _db, mem0, gate } = env().await;
    let alice = gate.create_token("alice", RW);
    for path in ["/docs", "/openapi.json", "/graph/relations", "/"] {
        let r = call(&gate, &alice, "GET", path, None).await;
        assert_eq!(r.status, 404, "{path}: {:?}", r.body);
        assert_eq!(r.body, json!({"detail": "Not Found"}), "{path}");
    }
    assert!(mem0.requests().is_empty(), "{:?}", mem0.requests());
    drop(gate);

    let Env { _db, mem0, gate } =
        env_with("", r#"allowed_routes = ["GET /docs", "GET /openapi.json"]"#).await;
    let alice = gate.create_token("alice", READ_ONLY);
    let r = call(&gate, &alice, "GET", "/openapi.json", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["info"]["title"], "Mem0 REST APIs");
    let r = call(&gate, &alice, "GET", "/docs", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let log = mem0.requests();
    assert_eq!(sent(&log, "GET", "/openapi.json").len(), 1);
    assert_eq!(sent(&log, "GET", "/docs").len(), 1);
    // Only what is listed.
    for (method, path) in [("POST", "/docs"), ("GET", "/graph/relations")] {
        let r = call(&gate, &alice, method, path, None).await;
        assert!(
            matches!(r.status, 404 | 405),
            "{method} {path}: {} {:?}",
            r.status,
            r.body
        );
    }
    // Still authenticated.
    let r = client().get(gate.mem0_url("/docs")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(mem0.requests().len(), 2);
}

// ---------------------------------------------------------------------------
// Isolation modes (docs/design.md §3)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_isolation_scopes_each_user_and_project_separately() {
    let Env { _db, mem0, gate } = env_with("[isolation]\nmode = \"auto\"\n", "").await;
    let alice = gate.create_token("alice", RW);
    let bob = gate.create_token("bob", RW);
    let project = "/home/alice/projects/MyApp";
    let scope = format!("project_myapp_{}", project_hash("alice", project));
    // The formula, spelled out independently of memgate's code.
    let hash = &scope["project_myapp_".len()..];
    assert_eq!(hash.len(), 12);
    assert!(
        hash.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(
        scope,
        memgate::policy::scope::project_scope("alice", project)
    );
    let in_project = [("X-MCP-Project", project)];

    // Created without a user_id, and with the caller's own: both go to the project scope.
    let mut ids = Vec::new();
    for body in [
        json!({"messages": [{"role": "user", "content": "uses axum"}]}),
        json!({"messages": [{"role": "user", "content": "uses tokio"}], "user_id": "alice"}),
    ] {
        let r = call_with(&gate, &alice, "POST", "/memories", &in_project, Some(body)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        ids.push(r.body["results"][0]["id"].as_str().unwrap().to_string());
    }
    let log = mem0.requests();
    for post in sent(&log, "POST", "/memories") {
        assert_eq!(body_of(post)["user_id"], scope.as_str());
    }
    for id in &ids {
        assert_eq!(mem0.memory(id).unwrap()["user_id"], scope.as_str());
    }

    // The project's list and search.
    mem0.clear();
    let list = call_with(&gate, &alice, "GET", "/memories", &in_project, None).await;
    assert_eq!(list.status, 200);
    assert_eq!(result_users(&list), [scope.clone(), scope.clone()]);
    let found = call_with(
        &gate,
        &alice,
        "POST",
        "/search",
        &in_project,
        Some(json!({"query": "uses", "user_id": "alice"})),
    )
    .await;
    assert_eq!(found.status, 200, "{:?}", found.body);
    assert_eq!(result_users(&found).len(), 2);
    let log = mem0.requests();
    assert_eq!(
        query_values(sent(&log, "GET", "/memories")[0], "user_id"),
        std::slice::from_ref(&scope)
    );
    let search = body_of(sent(&log, "POST", "/search")[0]);
    assert_eq!(search["user_id"], scope.as_str());
    assert_eq!(search["filters"]["user_id"], scope.as_str());

    // Without the header the scope is the user: the project's memories are not theirs.
    mem0.clear();
    mem0.seed("alice", "alice outside any project");
    let list = call(&gate, &alice, "GET", "/memories", None).await;
    assert_eq!(list.status, 200);
    assert_eq!(result_users(&list), ["alice"]);
    assert_eq!(
        query_values(sent(&mem0.requests(), "GET", "/memories")[0], "user_id"),
        ["alice"]
    );
    let r = call(&gate, &alice, "GET", &format!("/memories/{}", ids[0]), None).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(
        r.body,
        access_denied(&ids[0], "alice"),
        "denials name the user, never the derived scope"
    );
    let r = call_with(
        &gate,
        &alice,
        "GET",
        &format!("/memories/{}", ids[0]),
        &in_project,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Bob in a project with the same path gets a different scope.
    mem0.clear();
    let r = call_with(
        &gate,
        &bob,
        "GET",
        &format!("/memories/{}", ids[0]),
        &in_project,
        None,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body, access_denied(&ids[0], "bob"));
    let r = call_with(&gate, &bob, "GET", "/memories", &in_project, None).await;
    assert_eq!(r.status, 200);
    assert!(result_users(&r).is_empty());
    let bob_scope = format!("project_myapp_{}", project_hash("bob", project));
    assert_ne!(bob_scope, scope);
    assert_eq!(
        query_values(sent(&mem0.requests(), "GET", "/memories")[0], "user_id"),
        [bob_scope]
    );

    // Naming someone else is still refused in auto mode.
    let r = call_with(
        &gate,
        &alice,
        "GET",
        "/memories?user_id=bob",
        &in_project,
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_isolation_shares_one_pool_but_keeps_permissions() {
    let Env { _db, mem0, gate } = env_with(
        "[isolation]\nmode = \"global\"\nshared_user_id = \"team_pool\"\n",
        "",
    )
    .await;
    let alice = gate.create_token("alice", RW);
    let bob = gate.create_token("bob", READ_ONLY);

    for body in [
        json!({"messages": [{"role": "user", "content": "deploys on fridays"}]}),
        json!({"messages": [{"role": "user", "content": "uses postgres"}], "user_id": "alice"}),
    ] {
        let r = call(&gate, &alice, "POST", "/memories", Some(body)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let log = mem0.requests();
    for post in sent(&log, "POST", "/memories") {
        assert_eq!(body_of(post)["user_id"], "team_pool");
    }
    let id = mem0.memories()[0]["id"].as_str().unwrap().to_string();

    // Bob reads the shared pool.
    mem0.clear();
    let list = call(&gate, &bob, "GET", "/memories", None).await;
    assert_eq!(list.status, 200);
    assert_eq!(result_users(&list), ["team_pool", "team_pool"]);
    assert_eq!(
        query_values(sent(&mem0.requests(), "GET", "/memories")[0], "user_id"),
        ["team_pool"]
    );
    let r = call(&gate, &bob, "GET", &format!("/memories/{id}"), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // But a read-only token still cannot write to it.
    mem0.clear();
    for (method, path, body) in [
        (
            "POST",
            "/memories".to_string(),
            Some(json!({"messages": [{"role": "user", "content": "x"}]})),
        ),
        (
            "PUT",
            format!("/memories/{id}"),
            Some(json!({"text": "changed"})),
        ),
        ("DELETE", format!("/memories/{id}"), None),
    ] {
        let r = call(&gate, &bob, method, &path, body).await;
        assert_eq!(r.status, 403, "{method} {path}: {:?}", r.body);
    }
    assert!(mem0.requests().is_empty(), "{:?}", mem0.requests());
    assert_eq!(mem0.memories().len(), 2);

    // Naming a user who is neither the pool nor oneself is refused.
    let r = call(&gate, &alice, "GET", "/memories?user_id=bob", None).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
}

// ---------------------------------------------------------------------------
// Defence in depth
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_search_drop_other_users_results_even_when_mem0_ignores_filters() {
    let Env { _db, mem0, gate } = env().await;
    let alice = gate.create_token("alice", RW);
    mem0.seed("alice", "alice likes tea");
    mem0.seed("bob", "bob likes coffee");
    mem0.seed("bob", "bob likes tea too");
    mem0.seed_with(None, Some("agent-7"), None, None, "an agent likes tea");
    mem0.set_ignore_filters(true);

    // The fake really does leak when asked directly.
    let direct: Value = client()
        .get(format!("{}/memories?user_id=alice", mem0.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(direct["results"].as_array().unwrap().len(), 4);
    mem0.clear();

    let list = call(&gate, &alice, "GET", "/memories", None).await;
    assert_eq!(list.status, 200, "{:?}", list.body);
    assert_eq!(result_users(&list), ["alice"]);
    assert_eq!(list.body["results"][0]["memory"], "alice likes tea");

    let found = call(
        &gate,
        &alice,
        "POST",
        "/search",
        Some(json!({"query": "likes tea"})),
    )
    .await;
    assert_eq!(found.status, 200, "{:?}", found.body);
    assert_eq!(result_users(&found), ["alice"]);
    assert!(!found.body.to_string().contains("bob"));
    assert!(!found.body.to_string().contains("agent"));
}

// ---------------------------------------------------------------------------
// Adversarial table, sent as raw HTTP/1.1 so that nothing normalises the request
// ---------------------------------------------------------------------------

struct Case {
    name: &'static str,
    method: &'static str,
    target: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    chunked: bool,
    expect: &'static [u16],
}

fn case(name: &'static str, method: &'static str, target: impl Into<String>) -> Case {
    Case {
        name,
        method,
        target: target.into(),
        headers: Vec::new(),
        body: None,
        chunked: false,
        expect: &[],
    }
}

impl Case {
    fn header(mut self, name: &str, value: &str) -> Case {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// A body sent as `Content-Type: application/json`.
    fn json(self, body: impl Into<String>) -> Case {
        self.header("Content-Type", "application/json")
            .bytes(body.into().into_bytes())
    }

    fn bytes(mut self, body: Vec<u8>) -> Case {
        self.body = Some(body);
        self
    }

    fn chunked(mut self) -> Case {
        self.chunked = true;
        self
    }

    fn expect(mut self, statuses: &'static [u16]) -> Case {
        self.expect = statuses;
        self
    }
}

/// Sends one request byte for byte and returns (status, body).
async fn raw_send(addr: SocketAddr, token: Option<&str>, case: &Case) -> (u16, String) {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n",
        case.method, case.target
    );
    if let Some(token) = token {
        head.push_str(&format!("X-MCP-Token: {token}\r\n"));
    }
    for (name, value) in &case.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let mut payload = Vec::new();
    if let Some(body) = &case.body {
        if case.chunked {
            head.push_str("Transfer-Encoding: chunked\r\n");
            for chunk in body.chunks(1000) {
                payload.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                payload.extend_from_slice(chunk);
                payload.extend_from_slice(b"\r\n");
            }
            payload.extend_from_slice(b"0\r\n\r\n");
        } else {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            payload.extend_from_slice(body);
        }
    }
    head.push_str("\r\n");

    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        if payload.len() > 4096 {
            // memgate may answer 413 on Content-Length alone and close: give
            // it the chance before sending a body it will not read.
            let mut chunk = [0u8; 8192];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(300), stream.read(&mut chunk)).await
            {
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        if buf.is_empty() {
            // A write error means memgate already answered and closed.
            let _ = stream.write_all(&payload).await;
        }
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(done) = parse_response(&buf) {
                return done;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        parse_response(&buf).unwrap_or((0, String::from_utf8_lossy(&buf).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("{}: no complete response within 10 s", case.name))
}

/// A complete HTTP/1.1 response in `buf`, if there is one.
fn parse_response(buf: &[u8]) -> Option<(u16, String)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let rest = &buf[end + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.eq_ignore_ascii_case("chunked")
        {
            chunked = true;
        }
    }
    if chunked {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let line_end = rest[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size_text = String::from_utf8_lossy(&rest[at..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                return Some((status, String::from_utf8_lossy(&body).into_owned()));
            }
            if rest.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
        }
    }
    match length {
        Some(n) if rest.len() >= n => {
            Some((status, String::from_utf8_lossy(&rest[..n]).into_owned()))
        }
        Some(_) => None,
        // No framing: complete only at EOF (the caller's fallback).
        None if status == 204 || status == 304 => Some((status, String::new())),
        None => None,
    }
}

/// Every value found under a `user_id` key in `value`, at any depth (the
/// search stops at the first `user_id` of a branch: its value is the condition).
fn user_ids_below(value: &Value, found: &mut Vec<Value>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "user_id" {
                    found.push(child.clone());
                } else {
                    user_ids_below(child, found);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| user_ids_below(i, found)),
        _ => {}
    }
}

/// A `user_id` condition that selects only `scope`.
fn selects_only(condition: &Value, scope: &str) -> bool {
    match condition {
        Value::String(s) => s == scope,
        Value::Object(ops) if ops.len() == 1 => match ops.iter().next() {
            Some((op, Value::String(s))) if op == "eq" => s == scope,
            Some((op, Value::Array(list))) if op == "in" => {
                !list.is_empty() && list.iter().all(|i| i == scope)
            }
            _ => false,
        },
        _ => false,
    }
}

/// What must hold of everything the upstream received from a caller whose
/// scope is `scope` (and who is no admin); every violation is listed.
fn assert_upstream_only_saw(log: &[Recorded], scope: &str, protected: &[&str]) {
    let mut violations = Vec::new();
    for r in log {
        let mut bad = |what: String| {
            violations.push(format!(
                "{what}: {} {} {:?} {}",
                r.method,
                r.uri,
                r.headers,
                String::from_utf8_lossy(&r.body)
            ))
        };
        let path = path_of(r);
        if r.method == "DELETE" {
            bad("a DELETE reached mem0".into());
        }
        if ["/reset", "/configure"].contains(&path.as_str()) {
            bad("an admin route reached mem0".into());
        }
        // Decoded, so `user%5Fid` counts; Starlette's keys are case-sensitive,
        // so a forwarded `USER_ID=…` is inert and not checked.
        for value in query_values(r, "user_id") {
            if value != scope {
                bad(format!("query user_id {value:?}"));
            }
        }
        if !r.body.is_empty() {
            match serde_json::from_slice::<Value>(&r.body) {
                Ok(body @ Value::Object(_)) => {
                    if let Some(v) = body.get("user_id")
                        && v != scope
                    {
                        bad(format!("body user_id {v}"));
                    }
                    for key in ["metadata", "filters"] {
                        let mut found = Vec::new();
                        if let Some(sub) = body.get(key) {
                            user_ids_below(sub, &mut found);
                        }
                        for condition in found {
                            if !selects_only(&condition, scope) {
                                bad(format!("{key} user_id {condition}"));
                            }
                        }
                    }
                    if let Some(filters) = body.get("filters")
                        && filters.get("user_id") != Some(&json!(scope))
                    {
                        bad("filters.user_id is not the scope".into());
                    }
                }
                Ok(_) => bad("a non-object body reached mem0".into()),
                Err(_) => bad("a body that is not JSON reached mem0".into()),
            }
        }
        for (name, value) in &r.headers {
            let canonical = name.to_ascii_lowercase().replace('_', "-");
            if [
                "x-http-method-override",
                "x-method-override",
                "x-http-method",
            ]
            .contains(&canonical.as_str())
            {
                bad(format!("method override header {name} reached mem0"));
            }
            if (canonical.contains("userid")
                || canonical.contains("user-id")
                || canonical.contains("memgate-scope"))
                && value != scope
            {
                bad(format!("header {name}: {value}"));
            }
        }
        for id in protected {
            if path.contains(id) && !(r.method == "GET" && path == format!("/memories/{id}")) {
                bad("a protected memory was acted on".into());
            }
        }
    }
    assert!(
        violations.is_empty(),
        "{} upstream request(s) broke the rules:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_requests_never_reach_another_users_memories() {
    let Env { _db, mem0, gate } = env_with("[limits]\nmax_body_bytes = 4096\n", "").await;
    let alice = gate.create_token("alice", RW);
    let alice_id = mem0.seed("alice", "alice's note");
    let bob_id = mem0.seed("bob", "bob's secret");
    let bob_id2 = mem0.seed("bob", "bob's other secret");
    let bob_snapshot = (mem0.memory(&bob_id), mem0.memory(&bob_id2));
    let a = alice_id.as_str();
    let b = bob_id.as_str();
    let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
    let big_pad = "x".repeat(5000);
    let deep = format!(
        "{{{msgs},\"metadata\":{}1{}}}",
        "{\"a\":".repeat(40),
        "}".repeat(40)
    );

    const OK: &[u16] = &[200];
    const DENIED: &[u16] = &[403];
    const BAD: &[u16] = &[400];
    const REFUSED: &[u16] = &[400, 403];
    const PATH_REFUSED: &[u16] = &[400, 404];
    const OVERRIDE: &[u16] = &[200, 400];

    let cases: Vec<Case> = vec![
        // --- positive controls: the caller's own requests work
        case("own list", "GET", "/memories").expect(OK),
        case("own list, named", "GET", "/memories?user_id=alice").expect(OK),
        case("agent selector is ANDed with the scope", "GET", "/memories?agent_id=x").expect(OK),
        case("empty user_id is injected", "GET", "/memories?run_id=r1&user_id=").expect(OK),
        case("own search with filters in", "POST", "/search")
            .json(r#"{"query":"note","filters":{"user_id":{"in":["alice"]}}}"#)
            .expect(OK),
        case("create with run_id only", "POST", "/memories")
            .json(format!(r#"{{{msgs},"run_id":"r1"}}"#))
            .expect(OK),
        case("json with charset", "POST", "/memories")
            .header("Content-Type", "application/json; charset=utf-8")
            .bytes(format!("{{{msgs}}}").into_bytes())
            .expect(OK),
        // --- parameter pollution and query tricks
        case("pollution alice then bob", "GET", "/memories?user_id=alice&user_id=bob").expect(BAD),
        case("pollution bob then alice", "GET", "/memories?user_id=bob&user_id=alice").expect(BAD),
        case("another user in the query", "GET", "/memories?user_id=bob").expect(DENIED),
        case("another user, different case", "GET", "/memories?user_id=Alice").expect(DENIED),
        case("encoded key user%5Fid", "GET", "/memories?user%5Fid=bob").expect(REFUSED),
        case("encoded ampersand in value", "GET", "/memories?user_id=alice%26user_id%3Dbob")
            .expect(REFUSED),
        case("semicolon separator", "GET", "/memories?user_id=alice;user_id=bob").expect(REFUSED),
        case("NUL in value", "GET", "/memories?user_id=alice%00").expect(REFUSED),
        case("upper-case key", "GET", "/memories?USER_ID=bob").expect(&[200, 400, 403]),
        case("user_id in the query of search", "POST", "/search?user_id=bob")
            .json(r#"{"query":"x"}"#)
            .expect(REFUSED),
        case("user_id in the query of a memory", "GET", format!("/memories/{a}?user_id=bob"))
            .expect(REFUSED),
        case("absolute-form target", "GET", format!("http://{}/memories?user_id=bob", gate.mem0))
            .expect(REFUSED),
        // --- another user in the body
        case("top-level user_id", "POST", "/memories")
            .json(format!(r#"{{{msgs},"user_id":"bob"}}"#))
            .expect(DENIED),
        case("metadata user_id", "POST", "/memories")
            .json(format!(r#"{{{msgs},"metadata":{{"user_id":"bob"}}}}"#))
            .expect(DENIED),
        case("metadata user_id with agent_id only", "POST", "/memories")
            .json(format!(r#"{{{msgs},"agent_id":"a1","metadata":{{"user_id":"bob"}}}}"#))
            .expect(DENIED),
        case("filters user_id on create", "POST", "/memories")
            .json(format!(r#"{{{msgs},"filters":{{"user_id":"bob"}}}}"#))
            .expect(DENIED),
        case("user_id inside a message", "POST", "/memories")
            .json(r#"{"messages":[{"role":"user","content":"hi","user_id":"bob"}]}"#)
            .expect(&[200, 403]),
        case("escaped key user\\u005fid", "POST", "/memories")
            .json(format!(r#"{{{msgs},"user\u005fid":"bob"}}"#))
            .expect(DENIED),
        case("user_id with a NUL", "POST", "/memories")
            .json(format!(r#"{{{msgs},"user_id":"alice\u0000"}}"#))
            .expect(DENIED),
        case("user_id as a number", "POST", "/memories")
            .json(format!(r#"{{{msgs},"user_id":123}}"#))
            .expect(REFUSED),
        case("user_id as an operator", "POST", "/memories")
            .json(format!(r#"{{{msgs},"user_id":{{"eq":"bob"}}}}"#))
            .expect(REFUSED),
        case("search top-level user_id", "POST", "/search")
            .json(r#"{"query":"secret","user_id":"bob"}"#)
            .expect(DENIED),
        case("search user_id as a list", "POST", "/search")
            .json(r#"{"query":"secret","user_id":["bob"]}"#)
            .expect(REFUSED),
        case("filters plain", "POST", "/search")
            .json(r#"{"query":"secret","filters":{"user_id":"bob"}}"#)
            .expect(DENIED),
        case("filters eq", "POST", "/search")
            .json(r#"{"query":"secret","filters":{"user_id":{"eq":"bob"}}}"#)
            .expect(DENIED),
        case("filters OR", "POST", "/search")
            .json(r#"{"query":"secret","filters":{"OR":[{"user_id":"alice"},{"user_id":"bob"}]}}"#)
            .expect(DENIED),
        case("filters OR beside own user_id", "POST", "/search")
            .json(r#"{"query":"secret","filters":{"user_id":"alice","OR":[{"user_id":"bob"}]}}"#)
            .expect(DENIED),
        case("filters NOT other", "POST", "/search")
            .json(r#"{"query":"secret","filters":{"NOT":[{"user_id":"bob"}]}}"#)
            .expect(DENIED),
        case("filters NOT own", "POST", "/search")
            .json(r#"{"query":"secret","filters":{"NOT":[{"user_id":"alice"}]}}"#)
            .expect(&[200, 403]),
        case("filters in", "POST", "/search")
            .json(r#"{"query":"secret","filters":{"user_id":{"in":["alice","bob"]}}}"#)
            .expect(DENIED),
        case("filters ne", "POST", "/search")
            .json(r#"{"query":"secret","filters":{"user_id":{"ne":"alice"}}}"#)
            .expect(DENIED),
        case("filters nin", "POST", "/search")
            .json(r#"{"query":"secret","filters":{"user_id":{"nin":["alice"]}}}"#)
            .expect(DENIED),
        case("filters wildcard", "POST", "/search")
            .json(r#"{"query":"secret","filters":{"user_id":"*"}}"#)
            .expect(DENIED),
        case("filters eq and ne together", "POST", "/search")
            .json(r#"{"query":"secret","filters":{"user_id":{"eq":"alice","ne":"alice"}}}"#)
            .expect(DENIED),
        case("filters deep AND/OR", "POST", "/search")
            .json(r#"{"query":"secret","filters":{"AND":[{"agent_id":"x"},{"OR":[{"run_id":"r"},{"user_id":"bob"}]}]}}"#)
            .expect(DENIED),
        case("filters metadata user_id", "POST", "/search")
            .json(r#"{"query":"secret","filters":{"metadata":{"user_id":"bob"}}}"#)
            .expect(DENIED),
        case("filters own, top-level other", "POST", "/search")
            .json(r#"{"query":"secret","filters":{"user_id":"alice"},"user_id":"bob"}"#)
            .expect(DENIED),
        case("update naming another user", "PUT", format!("/memories/{a}"))
            .json(r#"{"text":"x","user_id":"bob"}"#)
            .expect(DENIED),
        case("update with metadata of another user", "PUT", format!("/memories/{a}"))
            .json(r#"{"text":"x","metadata":{"user_id":"bob"}}"#)
            .expect(DENIED),
        case("chunked body naming another user", "POST", "/memories")
            .json(format!(r#"{{{msgs},"user_id":"bob"}}"#))
            .chunked()
            .expect(DENIED),
        // --- duplicate keys
        case("duplicate top-level user_id", "POST", "/memories")
            .json(format!(r#"{{{msgs},"user_id":"alice","user_id":"bob"}}"#))
            .expect(BAD),
        case("duplicate after unescaping", "POST", "/memories")
            .json(format!(r#"{{{msgs},"user_id":"alice","user\u005fid":"bob"}}"#))
            .expect(BAD),
        case("duplicate nested in filters", "POST", "/search")
            .json(r#"{"query":"x","filters":{"user_id":"alice","user_id":"bob"}}"#)
            .expect(BAD),
        case("duplicate nested in metadata", "POST", "/memories")
            .json(format!(r#"{{{msgs},"metadata":{{"user_id":"alice","user_id":"bob"}}}}"#))
            .expect(BAD),
        // --- the other user's memories
        case("get another's memory", "GET", format!("/memories/{b}")).expect(DENIED),
        case("update another's memory", "PUT", format!("/memories/{b}"))
            .json(r#"{"text":"pwned"}"#)
            .expect(DENIED),
        case("delete another's memory", "DELETE", format!("/memories/{b}")).expect(DENIED),
        case("history of another's memory", "GET", format!("/memories/{b}/history")).expect(DENIED),
        case("another's memory, trailing slash", "GET", format!("/memories/{b}/")).expect(&[403, 404]),
        case("another's history, trailing slash", "GET", format!("/memories/{b}/history/"))
            .expect(&[403, 404]),
        case("another's memory, upper-case id", "GET", format!("/memories/{}", b.to_uppercase()))
            .expect(&[403, 404]),
        case("another's memory, encoded", "GET", format!("/memories/%{:02X}{}", b.as_bytes()[0], &b[1..]))
            .expect(&[400, 403]),
        // --- identity headers
        case("X-MCP-UserID of another user", "GET", "/memories")
            .header("X-MCP-UserID", "bob")
            .expect(&[401]),
        case("x-mcp-userid lower-case", "GET", "/memories")
            .header("x-mcp-userid", "bob")
            .expect(&[401]),
        case("X_MCP_UserID underscore variant", "GET", "/memories")
            .header("X_MCP_UserID", "bob")
            .expect(&[200, 400, 401]),
        case("X-Mcp-User-Id dash variant", "GET", "/memories")
            .header("X-Mcp-User-Id", "bob")
            .expect(&[200, 400, 401]),
        case("two X-MCP-UserID headers", "GET", "/memories")
            .header("X-MCP-UserID", "alice")
            .header("X-MCP-UserID", "bob")
            .expect(&[400, 401]),
        case("forged X-Memgate-Scope", "GET", "/memories")
            .header("X-Memgate-Scope", "bob")
            .expect(OK),
        case("project header in manual mode", "GET", "/memories")
            .header("X-MCP-Project", "/home/bob/app")
            .expect(OK),
        // --- method override must never turn into a delete
        // memgate may refuse the header (400) or ignore it; either way mem0
        // never sees a DELETE, nor the header (checked on the log below).
        case("override to DELETE on a GET", "GET", format!("/memories/{a}"))
            .header("X-HTTP-Method-Override", "DELETE")
            .expect(OVERRIDE),
        case("override, underscore spelling", "GET", format!("/memories/{a}"))
            .header("x_http_method_override", "DELETE")
            .expect(OVERRIDE),
        case("override headers on a list", "GET", "/memories")
            .header("X-HTTP-Method-Override", "DELETE")
            .header("X-Method-Override", "DELETE")
            .header("X-HTTP-Method", "DELETE")
            .expect(OVERRIDE),
        case("override on another's memory", "GET", format!("/memories/{b}"))
            .header("X-HTTP-Method-Override", "DELETE")
            .expect(REFUSED),
        case("override on search", "POST", "/search")
            .header("X-HTTP-Method-Override", "DELETE")
            .json(r#"{"query":"note"}"#)
            .expect(OVERRIDE),
        // --- paths
        case("encoded traversal", "POST", "/memories/%2e%2e/reset").expect(PATH_REFUSED),
        case("mixed-case encoded traversal", "POST", "/memories/%2E%2e/reset").expect(PATH_REFUSED),
        case("traversal with encoded slash", "POST", "/memories/..%2freset").expect(PATH_REFUSED),
        case("plain traversal", "POST", "/memories/../reset").expect(PATH_REFUSED),
        case("dot segment", "GET", "/./memories").expect(PATH_REFUSED),
        case("encoded slash in a segment", "GET", format!("/memories/{a}%2Fhistory"))
            .expect(PATH_REFUSED),
        case("encoded slash to another's", "GET", format!("/memories/{a}%2F..%2F{b}"))
            .expect(PATH_REFUSED),
        case("double encoding", "POST", "/memories/%252e%252e/reset").expect(PATH_REFUSED),
        case("double-encoded slash", "GET", format!("/memories/{b}%252Fhistory")).expect(PATH_REFUSED),
        case("NUL in the path", "GET", "/memories/%00").expect(PATH_REFUSED),
        case("empty segment", "GET", "//memories").expect(PATH_REFUSED),
        case("backslash", "GET", format!("/memories\\{b}")).expect(PATH_REFUSED),
        case("case-sensitive paths", "GET", "/MEMORIES").expect(&[404]),
        case("trailing slash on the list", "GET", "/memories/").expect(&[200, 404]),
        case("trailing slash on reset", "POST", "/reset/").expect(&[403, 404]),
        case("space after reset", "POST", "/reset%20").expect(PATH_REFUSED),
        case("unknown route", "GET", "/graph/relations").expect(&[404]),
        case("docs are not allow-listed", "GET", "/docs").expect(&[404]),
        case("wrong method", "PATCH", format!("/memories/{a}"))
            .json(r#"{"text":"x"}"#)
            .expect(&[405]),
        // --- bodies
        case("over max_body_bytes", "POST", "/memories")
            .json(format!(r#"{{{msgs},"metadata":{{"pad":"{big_pad}"}}}}"#))
            .expect(&[413]),
        case("over max_body_bytes naming bob", "POST", "/search")
            .json(format!(r#"{{"query":"x","user_id":"bob","pad":"{big_pad}"}}"#))
            .expect(&[413]),
        case("over max_body_bytes chunked", "POST", "/memories")
            .json(format!(r#"{{{msgs},"metadata":{{"pad":"{big_pad}"}}}}"#))
            .chunked()
            .expect(&[413]),
        case("invalid UTF-8", "POST", "/memories")
            .header("Content-Type", "application/json")
            .bytes(b"{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}".to_vec())
            .expect(BAD),
        case("UTF-8 BOM", "POST", "/memories")
            .header("Content-Type", "application/json")
            .bytes([b"\xef\xbb\xbf".as_slice(), format!("{{{msgs}}}").as_bytes()].concat())
            .expect(BAD),
        case("not JSON", "POST", "/memories").json("user_id=bob").expect(BAD),
        case("truncated JSON", "POST", "/search").json(r#"{"query":"x""#).expect(BAD),
        case("trailing data after JSON", "POST", "/search")
            .json(r#"{"query":"x"} {"user_id":"bob"}"#)
            .expect(BAD),
        case("JSON array", "POST", "/memories").json(r#"[{"user_id":"bob"}]"#).expect(BAD),
        case("JSON string", "POST", "/search").json(r#""bob""#).expect(BAD),
        case("JSON null", "POST", "/memories").json("null").expect(BAD),
        case("too deep", "POST", "/memories").json(deep.clone()).expect(BAD),
        case("text/plain", "POST", "/memories")
            .header("Content-Type", "text/plain")
            .bytes(format!("{{{msgs}}}").into_bytes())
            .expect(&[415]),
        case("no content type", "POST", "/memories")
            .bytes(format!("{{{msgs},\"user_id\":\"bob\"}}").into_bytes())
            .expect(&[415]),
        case("form encoded", "POST", "/memories")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .bytes(b"user_id=bob&messages=hi".to_vec())
            .expect(&[415]),
        case("+json subtype", "POST", "/search")
            .header("Content-Type", "application/merge-patch+json")
            .bytes(br#"{"query":"x","user_id":"bob"}"#.to_vec())
            .expect(&[403, 415]),
        case("body on a GET", "GET", "/memories")
            .json(r#"{"user_id":"bob"}"#)
            .expect(BAD),
        case("body on a DELETE of another's", "DELETE", format!("/memories/{b}"))
            .json(r#"{"user_id":"bob"}"#)
            .expect(&[400, 403]),
        // --- destructive routes
        case("delete all", "DELETE", "/memories").expect(DENIED),
        case("delete all, own user", "DELETE", "/memories?user_id=alice").expect(DENIED),
        case("delete all, another user", "DELETE", "/memories?user_id=bob").expect(DENIED),
        case("delete all by agent", "DELETE", "/memories?agent_id=x").expect(DENIED),
        case("reset", "POST", "/reset").expect(DENIED),
        case("configure", "POST", "/configure").json("{}").expect(DENIED),
    ];
    assert!(cases.len() >= 40);
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        assert!(!c.expect.is_empty(), "{}: no expectation", c.name);
        assert!(names.insert(c.name), "duplicate case name {}", c.name);
    }

    let mut failures = Vec::new();
    for c in &cases {
        let (status, body) = raw_send(gate.mem0, Some(&alice), c).await;
        if !c.expect.contains(&status) {
            failures.push(format!(
                "{}: {} {} -> {status} (want {:?}) {body}",
                c.name, c.method, c.target, c.expect
            ));
            continue;
        }
        if status >= 400 && status != 401 {
            let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if !parsed["detail"].is_string() {
                failures.push(format!(
                    "{}: error body is not {{\"detail\"}}: {body}",
                    c.name
                ));
            }
        }
        if status == 403 && c.target.contains(b) && c.name.contains("another's") {
            let want = access_denied(b, "alice");
            if serde_json::from_str::<Value>(&body).ok() != Some(want.clone()) {
                failures.push(format!("{}: {body} != {want}", c.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}\n--- memgate log ---\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        gate.log()
    );

    // Whatever got through, bob's memories are intact and mem0 only ever saw alice.
    assert_eq!(
        (mem0.memory(&bob_id), mem0.memory(&bob_id2)),
        bob_snapshot,
        "bob's memories changed"
    );
    assert!(
        mem0.memory(&alice_id).is_some(),
        "alice's memory was deleted"
    );
    assert!(
        mem0.memories()
            .iter()
            .all(|m| m["user_id"] == "alice" || m["user_id"] == "bob"),
        "a memory was created for someone else: {:?}",
        mem0.memories()
    );
    assert_upstream_only_saw(&mem0.requests(), "alice", &[b, &bob_id2]);
}
