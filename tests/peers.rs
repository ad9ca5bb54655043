//! End to end against stand-ins shaped like the real peers memgate joins:
//! the Mem0 MCP Server stack's uvicorn/Starlette server, which answers
//! `POST /mcp` with a 307 to `/mcp/` built from the request's Host, and
//! mem0's 2026 server, which wants its `X-API-Key` on every request.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use support::*;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// mem0's API key as the stand-in mem0 expects it.
const MEM0_KEY: &str = "mem0-key-4f9c2a7e";
/// The stack's service token as its stand-in MCP server receives it.
const STACK_TOKEN: &str = "stack-service-token-81d3b6";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Like Starlette's `redirect_slashes`: a path without its trailing
    /// slash gets `307` to `{scheme}://{Host}{path}/?{query}`; paths ending
    /// in `/` are served (JSON-RPC answers to POSTs, JSON otherwise).
    Starlette,
    /// Like mem0 2026: 401 without `X-API-Key: MEM0_KEY`; `GET
    /// /memories/{id}` answers a memory of `alice`, `GET /memories` none.
    Mem0,
}

/// An in-process upstream that records every request it gets.
struct StandIn {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl StandIn {
    async fn start(kind: Kind) -> StandIn {
        let log: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sink = log.clone();
        let app = axum::Router::new().fallback(move |req: Request| {
            let sink = sink.clone();
            async move { answer(kind, sink, req).await }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        StandIn { addr, log, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.log.lock().expect("log").clone()
    }

    fn clear(&self) {
        self.log.lock().expect("log").clear();
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(kind: Kind, sink: Arc<Mutex<Vec<Recorded>>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    sink.lock()
        .expect("log")
        .push(Recorded::new(&parts, body.clone()));
    let path = parts.uri.path();
    match kind {
        Kind::Starlette if !path.ends_with('/') => {
            // starlette.datastructures.URL(scope=…): the Host header as
            // sent, the scheme the server was reached with.
            let host = parts
                .headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            let query = parts
                .uri
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            Response::builder()
                .status(307)
                .header("location", format!("http://{host}{path}/{query}"))
                .header("content-length", "0")
                .body(Body::empty())
                .expect("redirect")
        }
        Kind::Starlette if parts.method == "POST" => {
            let call: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            axum::Json(json!({"jsonrpc": "2.0", "id": call["id"], "result": {"served": path}}))
                .into_response()
        }
        Kind::Starlette => axum::Json(json!({"served": path})).into_response(),
        Kind::Mem0 => {
            let key = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok());
            if key != Some(MEM0_KEY) {
                return (
                    axum::http::StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"detail": "Invalid or missing API key"})),
                )
                    .into_response();
            }
            match path {
                "/memories" => axum::Json(json!({"results": []})).into_response(),
                _ => match path.strip_prefix("/memories/") {
                    Some(id) if !id.contains('/') => {
                        axum::Json(json!({"id": id, "memory": "likes tea", "user_id": "alice"}))
                            .into_response()
                    }
                    _ => axum::Json(json!({"ok": true})).into_response(),
                },
            }
        }
    }
}

struct Env {
    _db: TestDb,
    mcp: StandIn,
    mem0: StandIn,
    gate: Memgate,
    _secrets: tempfile::TempDir,
}

/// memgate in front of a Starlette-like MCP server and a mem0 of `mem0_kind`;
/// `mcp_extra` / `mem0_extra` go into their sections. `{secrets}` in either
/// is replaced by a directory holding `stack-token` and `mem0-key`.
async fn env(mcp_extra: &str, mem0_kind: Kind, mem0_extra: &str) -> Env {
    env_with(mcp_extra, mem0_kind, mem0_extra, false).await
}

async fn env_with(
    mcp_extra: &str,
    mem0_kind: Kind,
    mem0_extra: &str,
    forward_credentials: bool,
) -> Env {
    let db = TestDb::new(Backend::Sqlite).await;
    let secrets = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        secrets.path().join("stack-token"),
        format!("{STACK_TOKEN}\n"),
    )
    .expect("write secret");
    std::fs::write(secrets.path().join("mem0-key"), format!("{MEM0_KEY}\n")).expect("write secret");
    let dir = secrets.path().display().to_string();
    let mcp = StandIn::start(Kind::Starlette).await;
    let mem0 = StandIn::start(mem0_kind).await;
    let mut cfg = MemgateConfig::new(&db.url, &mem0.url());
    cfg.mcp_upstream = mcp.url();
    cfg.mcp_extra = mcp_extra.replace("{secrets}", &dir);
    cfg.mem0_extra = mem0_extra.replace("{secrets}", &dir);
    cfg.forward_credentials = forward_credentials;
    let gate = Memgate::start(cfg).await;
    Env {
        _db: db,
        mcp,
        mem0,
        gate,
        _secrets: secrets,
    }
}

fn client(follow: bool) -> reqwest::Client {
    let policy = if follow {
        reqwest::redirect::Policy::limited(3)
    } else {
        reqwest::redirect::Policy::none()
    };
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(policy)
        .build()
        .unwrap()
}

fn ping() -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": "ping"})
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_redirect_to_the_upstream_points_at_memgate_on_both_listeners() {
    let e = env("", Kind::Starlette, "allowed_routes = [\"GET /docs\"]").await;
    let token = e.gate.create_token("alice", &[]);
    let c = client(false);

    // MCP, buffered (a JSON-RPC POST): uvicorn's 307 to its own /mcp/.
    let resp = c
        .post(e.gate.mcp_url("/mcp?x=1"))
        .header("X-MCP-Token", &token)
        .header("Accept", "application/json, text/event-stream")
        .json(&ping())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    assert_eq!(
        location(&resp),
        format!("http://{}/mcp/?x=1", e.gate.mcp),
        "the upstream said http://{}/mcp/?x=1",
        e.mcp.addr
    );
    let seen = e.mcp.requests();
    assert_eq!(
        seen[0].header("host"),
        Some(e.mcp.addr.to_string()),
        "without preserve_host the upstream gets its own authority"
    );

    // mem0, buffered (a policy route) and streamed (an allow-listed route).
    for path in ["/memories?user_id=alice", "/docs"] {
        let resp = c
            .get(e.gate.mem0_url(path))
            .header("X-MCP-Token", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 307, "{path}");
        let at = location(&resp);
        assert!(
            at.starts_with(&format!("http://{}/", e.gate.mem0)),
            "{path}: {at}"
        );
        assert!(!at.contains(&e.mem0.addr.to_string()), "{path}: {at}");
    }

    // A Host the client chose is the one it is sent back to.
    let resp = c
        .get(e.gate.mem0_url("/docs"))
        .header("X-MCP-Token", &token)
        .header("Host", "memgate.example:8443")
        .send()
        .await
        .unwrap();
    assert_eq!(location(&resp), "http://memgate.example:8443/docs/");
}

#[tokio::test]
async fn preserve_host_sends_the_client_s_host_upstream() {
    let e = env("preserve_host = true", Kind::Starlette, "").await;
    let token = e.gate.create_token("alice", &[]);
    let resp = client(false)
        .post(e.gate.mcp_url("/mcp"))
        .header("X-MCP-Token", &token)
        .json(&ping())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    let host = e.gate.mcp.to_string();
    assert_eq!(e.mcp.requests()[0].header_all("host"), [host.as_str()]);
    // The upstream built the URL from memgate's address already.
    assert_eq!(location(&resp), format!("http://{host}/mcp/"));
}

#[tokio::test]
async fn a_client_configured_with_mcp_without_slash_stays_on_memgate() {
    let e = env("", Kind::Starlette, "").await;
    let token = e.gate.create_token("alice", &[]);
    let resp = client(true)
        .post(e.gate.mcp_url("/mcp"))
        .header("X-MCP-Token", &token)
        .header("Accept", "application/json, text/event-stream")
        .json(&ping())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.url().as_str(), e.gate.mcp_url("/mcp/"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["result"]["served"], "/mcp/");
    assert_eq!(body["id"], 7);
    // Both requests went through memgate: each carries its scope header.
    let seen = e.mcp.requests();
    let paths: Vec<&str> = seen.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(paths, ["/mcp", "/mcp/"]);
    for r in &seen {
        assert_eq!(r.header_all("x-memgate-scope"), ["alice"], "{}", r.uri);
        assert_eq!(r.method, "POST");
        assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap(), ping());
    }
    // Counted once the answer is out: polled, not read at once.
    let name = "memgate_requests_total{listener=\"mcp\",route=\"mcp\",status=\"200\"}";
    let counted = within(Duration::from_secs(5), || async {
        e.gate.metric(name).await == 1.0
    })
    .await;
    assert!(counted.is_some(), "memgate counted no 200 on /mcp/");
}

#[tokio::test]
async fn mem0_s_api_key_goes_on_every_request_and_a_client_s_never() {
    let e = env(
        "",
        Kind::Mem0,
        "upstream_headers = { \"X-API-Key\" = { file = \"{secrets}/mem0-key\" } }",
    )
    .await;
    let token = e.gate.create_token("alice", &[]);
    // A per-id route: memgate first asks mem0 who owns m1, then forwards.
    let resp = client(false)
        .get(e.gate.mem0_url("/memories/m1"))
        .header("X-MCP-Token", &token)
        .header("X-API-Key", "evil")
        .header("x_api_key", "evil")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["user_id"], "alice");
    let seen = e.mem0.requests();
    assert_eq!(seen.len(), 2, "the owner lookup and the request: {seen:?}");
    for r in &seen {
        assert_eq!(r.header_all("x-api-key"), [MEM0_KEY], "{}", r.uri);
        assert!(r.headers.iter().all(|(_, v)| v != "evil"), "{r:?}");
    }

    // memgate's own CLI talks to mem0 with the key too.
    e.mem0.clear();
    // The CLI blocks; the stand-in answers on this test's runtime meanwhile.
    let config = e.gate.config_path.clone();
    let out = tokio::task::spawn_blocking(move || {
        cli(&config, &["user", "export", "--user-id", "alice"])
    })
    .await
    .unwrap();
    ok(&out);
    let seen = e.mem0.requests();
    assert!(!seen.is_empty());
    for r in &seen {
        assert_eq!(r.header_all("x-api-key"), [MEM0_KEY], "{}", r.uri);
    }
    assert!(!e.gate.log().contains(MEM0_KEY), "the key was logged");
}

#[tokio::test]
async fn the_stack_s_service_token_wins_over_memgate_s_identity_headers() {
    // Even a listener that forwards the client's credentials sends the
    // configured ones instead.
    let e = env_with(
        "upstream_headers = { \"X-MCP-Token\" = { file = \"{secrets}/stack-token\" }, \
         \"X-MCP-UserID\" = \"memgate-service\" }",
        Kind::Starlette,
        "",
        true,
    )
    .await;
    let token = e.gate.create_token("alice", &[]);
    let resp = client(false)
        .post(e.gate.mcp_url("/mcp/"))
        .header("X-MCP-Token", &token)
        .header("X-MCP-UserID", "alice")
        .json(&ping())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = e.mcp.requests();
    let r = &seen[0];
    assert_eq!(r.header_all("x-mcp-userid"), ["memgate-service"]);
    assert_eq!(r.header_all("x-mcp-token"), [STACK_TOKEN]);
    assert_eq!(r.header_all("x-memgate-scope"), ["alice"]);
    assert!(!e.gate.log().contains(STACK_TOKEN), "the token was logged");

    // check-config shows where the values come from, never what they are.
    let shown = ok(&e.gate.cli(&["check-config"]));
    assert!(shown.contains("upstream_headers"), "{shown}");
    assert!(!shown.contains(STACK_TOKEN) && !shown.contains("memgate-service"));
    assert!(shown.contains("****"), "{shown}");
}

#[tokio::test]
async fn an_unset_upstream_header_variable_stops_memgate_and_is_named() {
    let e = env("", Kind::Starlette, "").await;
    let run = |args: &[&str], secret: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&e.gate.config_path)
            .args(args)
            .env(
                "MEMGATE_MEM0__UPSTREAM_HEADERS",
                "{ \"X-API-Key\" = { env = \"PEERS_TEST_MEM0_KEY\" } }",
            )
            .env_remove("PEERS_TEST_MEM0_KEY")
            .stdin(Stdio::null());
        if let Some(secret) = secret {
            cmd.env("PEERS_TEST_MEM0_KEY", secret);
        }
        cmd.output().expect("run memgate")
    };
    let shown = ok(&run(&["check-config"], Some(MEM0_KEY)));
    assert!(shown.contains("PEERS_TEST_MEM0_KEY") && !shown.contains(MEM0_KEY));
    let expected =
        "mem0.upstream_headers.X-API-Key: environment variable PEERS_TEST_MEM0_KEY is not set";
    for args in [&["check-config"][..], &["serve"]] {
        let out = run(args, None);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // Commands that never call an upstream do not need the secret.
    ok(&run(&["token", "list"], None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_and_http2_the_redirect_names_https_and_the_authority() {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let db = TestDb::new(Backend::Sqlite).await;
    let mcp = StandIn::start(Kind::Starlette).await;
    let mut cfg = MemgateConfig::new(&db.url, &mcp.url());
    cfg.extra = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let gate = Memgate::start(cfg).await;
    let token = gate.create_token("alice", &[]);
    let client = |follow: bool| {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(made.cert.pem().as_bytes()).unwrap(),
            )
            .redirect(if follow {
                reqwest::redirect::Policy::limited(3)
            } else {
                reqwest::redirect::Policy::none()
            })
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let url = format!("https://localhost:{}/mcp", gate.mcp.port());
    let resp = client(false)
        .post(&url)
        .header("X-MCP-Token", &token)
        .json(&ping())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 307);
    assert_eq!(
        location(&resp),
        format!("https://localhost:{}/mcp/", gate.mcp.port())
    );
    let resp = client(true)
        .post(&url)
        .header("X-MCP-Token", &token)
        .json(&ping())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["result"]["served"],
        "/mcp/"
    );
    assert_eq!(
        mcp.requests().len(),
        3,
        "every request went through memgate"
    );
}
