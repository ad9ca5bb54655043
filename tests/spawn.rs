//! End to end with `[mcp.spawn]` (docs/design.md §5a): memgate starts one
//! single-tenant MCP server per scope (`support/single_tenant_mcp.py`, which
//! serves the user named by `MEM0_USER` in its environment, like the Mem0 MCP
//! Server stack's server) and stops it when idle, to make room, when it
//! crashed, and when memgate stops or is killed. With `transport = "stdio"`
//! the same server speaks over its stdin and stdout
//! (`support/single_tenant_mcp_stdio.py`), and so does the published
//! reference server `@modelcontextprotocol/server-memory`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::sdk::SdkClient;
use support::*;

const STEP: Duration = Duration::from_secs(20);

/// A secret in memgate's environment that no child may see.
const SECRET: (&str, &str) = ("SPAWN_TEST_SECRET", "do-not-leak");
/// A variable the children inherit because `inherit_env` names it.
const SHARED: (&str, &str) = ("SPAWN_TEST_SHARED", "shared-value");

struct Env {
    _db: TestDb,
    gate: Memgate,
    dir: tempfile::TempDir,
}

impl Env {
    /// Pids the children wrote at start, by the user they serve.
    fn pids(&self) -> BTreeMap<String, Vec<i32>> {
        let text = std::fs::read_to_string(self.dir.path().join("pids")).unwrap_or_default();
        let mut pids: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for line in text.lines() {
            if let Some((user, pid)) = line.split_once(' ') {
                pids.entry(user.to_string())
                    .or_default()
                    .push(pid.parse().expect("pid"));
            }
        }
        pids
    }

    fn pid_of(&self, user: &str) -> i32 {
        *self.pids()[user].last().expect("a pid")
    }
}

/// The interpreter itself, not a wrapper script that may re-exec.
fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 must be installed for the spawn tests");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/single_tenant_mcp.py")
}

/// A memgate spawning the test server per scope; `spawn_extra` adds keys to
/// `[mcp.spawn]`.
async fn env_with(spawn_extra: &str) -> Env {
    let args = format!("[{:?}, \"{{port}}\"]", script().display().to_string());
    env_running(&args, spawn_extra).await
}

/// Like [`env_with`], with the interpreter running `args` (a TOML list).
async fn env_running(args: &str, spawn_extra: &str) -> Env {
    env_command(&python(), args, spawn_extra).await
}

/// Like [`env_with`], running `command` with `args` (a TOML list).
async fn env_command(command: &str, args: &str, spawn_extra: &str) -> Env {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = MemgateConfig::new(&db.url, "http://127.0.0.1:9");
    cfg.mcp_upstream = "http://127.0.0.1:{port}".into();
    cfg.env = vec![
        (SECRET.0.into(), SECRET.1.into()),
        (SHARED.0.into(), SHARED.1.into()),
    ];
    let dir_path = dir.path().display().to_string();
    let rules: String = [
        ("env_names", "read"),
        ("echo_after", "read"),
        ("announce", "read"),
        ("read_graph", "read"),
        ("search_nodes", "read"),
        ("create_entities", "write"),
    ]
    .iter()
    .map(|(tool, permission)| {
        format!("[mcp.tools.{tool}]\npermission = \"{permission}\"\nscoped_by = \"upstream\"\n\n")
    })
    .collect();
    cfg.extra = format!(
        "{rules}[mcp.spawn]\ncommand = {command:?}\nargs = {args}\n\
         env = {{ MEM0_USER = \"{{scope}}\", PID_LOG = \"{dir_path}/pids\", \
         RECEIVED_LOG = \"{dir_path}/received-{{scope}}\", FAIL_IF_EXISTS = \"{dir_path}/fail\" }}\n\
         cwd = \"{dir_path}/scopes/{{scope}}\"\ninherit_env = [{shared:?}]\n\
         stop_grace_secs = 2\n{spawn_extra}\n",
        shared = SHARED.0,
    );
    let gate = Memgate::start(cfg).await;
    Env { _db: db, gate, dir }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(STEP).build().unwrap()
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn post(gate: &Memgate, token: &str, session: Option<&str>, body: &Value) -> Reply {
    let mut req = http()
        .post(gate.mcp_url("/mcp"))
        .header("X-MCP-Token", token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    if let Some(session) = session {
        req = req.header("Mcp-Session-Id", session);
    }
    let resp = req.send().await.expect("POST /mcp");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    Reply {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "spawn-tests", "version": "0"}}})
}

/// Starts a session (initialize, then initialized) and returns its id.
async fn session(gate: &Memgate, token: &str) -> String {
    let reply = post(gate, token, None, &initialize()).await;
    assert_eq!(reply.status, 200, "initialize: {:?}", reply.body);
    let id = reply.headers["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(post(gate, token, Some(&id), &initialized).await.status, 202);
    id
}

/// Calls a tool and returns its structured result.
async fn call(gate: &Memgate, token: &str, session: &str, tool: &str, args: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                      "params": {"name": tool, "arguments": args}});
    let reply = post(gate, token, Some(session), &body).await;
    assert_eq!(reply.status, 200, "{tool}: {:?}", reply.body);
    assert!(
        reply.body["result"].is_object(),
        "{tool} refused: {}",
        reply.body
    );
    reply.body["result"]["structuredContent"].clone()
}

/// Whether a process runs (a zombie has ended).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

async fn gone_within(pid: i32, limit: Duration) -> bool {
    within(limit, || async move { !alive(pid) }).await.is_some()
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Opens the session's GET event stream; it stays open while the response lives.
async fn open_stream(gate: &Memgate, token: &str, session: &str) -> reqwest::Response {
    let resp = reqwest::Client::new()
        .get(gate.mcp_url("/mcp"))
        .header("X-MCP-Token", token)
        .header("Mcp-Session-Id", session)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET /mcp");
    assert_eq!(resp.status(), 200);
    resp
}

#[tokio::test]
async fn each_scope_gets_its_own_process_with_only_the_environment_it_is_given() {
    let env = env_with("").await;
    let gate = &env.gate;
    let (alice, bob) = (
        gate.create_token("alice", &[]),
        gate.create_token("bob", &[]),
    );
    let started = Instant::now();
    let alice_session = session(gate, &alice).await;
    let first_request = started.elapsed();
    let bob_session = session(gate, &bob).await;

    let added = call(
        gate,
        &alice,
        &alice_session,
        "add_coding_preference",
        json!({"text": "tabs"}),
    )
    .await;
    assert_eq!(added["user"], "alice");
    let bobs = call(
        gate,
        &bob,
        &bob_session,
        "get_all_coding_preferences",
        json!({}),
    )
    .await;
    assert_eq!(
        bobs,
        json!({"user": "bob", "results": []}),
        "bob sees alice's"
    );
    let alices = call(
        gate,
        &alice,
        &alice_session,
        "get_all_coding_preferences",
        json!({}),
    )
    .await;
    assert_eq!(alices["results"], json!(["tabs"]));
    // A session of one scope's server means nothing to another's.
    let foreign = post(
        gate,
        &bob,
        Some(&alice_session),
        &json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}),
    )
    .await;
    assert_eq!(foreign.status, 404);

    let names = call(gate, &alice, &alice_session, "env_names", json!({})).await;
    let names: BTreeSet<String> = serde_json::from_value(names["names"].clone()).unwrap();
    let allowed: BTreeSet<&str> = [
        "PATH",
        "HOME",
        "LANG",
        "TZ",
        "MEM0_USER",
        "PID_LOG",
        "RECEIVED_LOG",
        "FAIL_IF_EXISTS",
        SHARED.0,
    ]
    .into();
    for name in &names {
        assert!(
            allowed.contains(name.as_str()),
            "child got {name}: {names:?}"
        );
    }
    for name in ["PATH", "MEM0_USER", SHARED.0] {
        assert!(names.contains(name), "child lacks {name}: {names:?}");
    }
    assert!(!names.contains(SECRET.0) && !names.contains("MEMGATE_LOG"));

    use std::os::unix::fs::PermissionsExt;
    let cwd = env.dir.path().join("scopes/alice");
    assert_eq!(
        std::fs::metadata(&cwd).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let pids = env.pids();
    assert_eq!(pids["alice"].len(), 1);
    assert_eq!(pids["bob"].len(), 1);
    let log = gate.log();
    let pid = pids["alice"][0];
    assert!(
        log.lines()
            .any(|l| l.contains("single-tenant MCP server for 'alice'")
                && l.contains(&format!("pid={pid}"))),
        "child output not logged with its pid:\n{log}"
    );
    assert_eq!(
        gate.metric("memgate_upstream_spawns_total{result=\"ok\"}")
            .await,
        2.0
    );
    assert_eq!(
        gate.metric("memgate_upstream_processes{state=\"running\"}")
            .await,
        2.0
    );
    eprintln!("first request of a spawned scope: {first_request:?}");
}

#[tokio::test]
async fn concurrent_first_requests_of_a_scope_share_one_start() {
    let env = env_with("").await;
    let tokens: Vec<(String, String)> = (0..20)
        .map(|i| {
            let user = format!("user{i}");
            let token = env.gate.create_token(&user, &[]);
            (user, token)
        })
        .collect();
    let mut requests = Vec::new();
    for (_, token) in &tokens {
        for _ in 0..5 {
            let (url, token) = (env.gate.mcp_url("/mcp"), token.clone());
            requests.push(tokio::spawn(async move {
                http()
                    .post(url)
                    .header("X-MCP-Token", token)
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .body(initialize().to_string())
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }));
        }
    }
    for request in requests {
        assert_eq!(request.await.unwrap().unwrap(), 200);
    }
    let pids = env.pids();
    assert_eq!(pids.len(), 20, "{pids:?}");
    assert!(pids.values().all(|p| p.len() == 1), "{pids:?}");
    assert_eq!(
        env.gate
            .metric("memgate_upstream_spawns_total{result=\"ok\"}")
            .await,
        20.0
    );
}

#[tokio::test]
async fn at_the_limit_an_idle_child_gives_way_and_busy_ones_refuse() {
    let env = env_with("max_processes = 2").await;
    let gate = &env.gate;
    let [alice, bob, carol, dave] =
        ["alice", "bob", "carol", "dave"].map(|u| gate.create_token(u, &[]));
    session(gate, &alice).await;
    let bob_session = session(gate, &bob).await;
    let carol_session = session(gate, &carol).await;
    assert!(
        gone_within(env.pid_of("alice"), STEP).await,
        "the least recently used child was not stopped"
    );
    assert!(alive(env.pid_of("bob")));

    let bob_stream = open_stream(gate, &bob, &bob_session).await;
    let carol_stream = open_stream(gate, &carol, &carol_session).await;
    let refused = post(gate, &dave, None, &initialize()).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert!(refused.headers.contains_key("retry-after"));
    assert!(alive(env.pid_of("bob")) && alive(env.pid_of("carol")));
    assert!(!env.pids().contains_key("dave"));

    drop(bob_stream);
    drop(carol_stream);
    let served = within(STEP, || async {
        post(gate, &dave, None, &initialize()).await.status == 200
    })
    .await;
    assert!(
        served.is_some(),
        "dave never got a server once one was free"
    );
}

#[tokio::test]
async fn an_idle_child_is_stopped_and_started_again_when_needed() {
    let env = env_with("idle_secs = 1").await;
    let gate = &env.gate;
    let alice = gate.create_token("alice", &[]);
    session(gate, &alice).await;
    let first = env.pid_of("alice");
    assert!(
        gone_within(first, Duration::from_secs(10)).await,
        "idle child kept"
    );
    let running = within(STEP, || async {
        gate.metric("memgate_upstream_processes{state=\"running\"}")
            .await
            == 0.0
    })
    .await;
    assert!(running.is_some());
    session(gate, &alice).await;
    assert_ne!(env.pid_of("alice"), first);
}

#[tokio::test]
async fn a_crashed_child_is_restarted_and_its_sessions_are_forgotten() {
    let env = env_with("").await;
    let gate = &env.gate;
    let alice = gate.create_token("alice", &[]);
    let old = session(gate, &alice).await;
    call(
        gate,
        &alice,
        &old,
        "add_coding_preference",
        json!({"text": "tabs"}),
    )
    .await;
    let first = env.pid_of("alice");
    kill(first, libc::SIGKILL);
    assert!(gone_within(first, STEP).await);

    let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
    let forgotten = within(STEP, || async {
        post(gate, &alice, Some(&old), &ping).await.status == 404
    })
    .await;
    assert!(
        forgotten.is_some(),
        "the crashed child's session still works"
    );
    let new = session(gate, &alice).await;
    assert_ne!(new, old);
    assert_ne!(env.pid_of("alice"), first, "not restarted");
    let found = call(gate, &alice, &new, "get_all_coding_preferences", json!({})).await;
    assert_eq!(found["user"], "alice");
    assert_eq!(
        post(gate, &alice, Some(&old), &ping).await.status,
        404,
        "the old session id reached the new child"
    );
}

#[tokio::test]
async fn no_child_outlives_memgate_stopped_or_killed() {
    let runs = [libc::SIGTERM, libc::SIGKILL].map(|signal| (signal, false));
    let stdio_runs = [libc::SIGTERM, libc::SIGKILL].map(|signal| (signal, true));
    for (signal, stdio) in runs.into_iter().chain(stdio_runs) {
        let mut env = if stdio {
            stdio_env("").await
        } else {
            env_with("").await
        };
        let (alice, bob) = (
            env.gate.create_token("alice", &[]),
            env.gate.create_token("bob", &[]),
        );
        let alice_session = session(&env.gate, &alice).await;
        session(&env.gate, &bob).await;
        let _stream = open_stream(&env.gate, &alice, &alice_session).await;
        let pids = [env.pid_of("alice"), env.pid_of("bob")];
        if signal == libc::SIGTERM {
            env.gate.terminate().await;
        } else {
            kill(env.gate.pid() as i32, libc::SIGKILL);
        }
        for pid in pids {
            assert!(
                gone_within(pid, Duration::from_secs(8)).await,
                "child {pid} outlived memgate (signal {signal}, stdio {stdio})"
            );
        }
    }
}

#[tokio::test]
async fn a_port_held_by_a_process_outside_the_child_s_group_gets_no_request() {
    // The child hands the port to a server in a session of its own: the
    // port answers, but not from the process memgate started.
    let detach = "import subprocess, sys, time; \
                  subprocess.Popen([sys.executable] + sys.argv[1:], start_new_session=True); \
                  time.sleep(60)";
    let args = format!(
        "[\"-c\", {detach:?}, {:?}, \"{{port}}\"]",
        script().display().to_string()
    );
    let env = env_running(&args, "ready_timeout_secs = 2").await;
    let alice = env.gate.create_token("alice", &[]);
    let refused = post(&env.gate, &alice, None, &initialize()).await;
    let stranger = env.pids().get("alice").and_then(|p| p.last().copied());
    if let Some(pid) = stranger {
        kill(pid, libc::SIGKILL);
    }
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert!(stranger.is_some(), "the stranger never listened");
    assert_eq!(
        env.gate
            .metric("memgate_upstream_spawns_total{result=\"timeout\"}")
            .await,
        1.0
    );
    assert!(
        env.gate
            .log()
            .contains("another process listens on the port"),
        "{}",
        env.gate.log()
    );
}

#[tokio::test]
async fn a_child_that_never_listens_or_cannot_start_gets_503() {
    let env = env_running(
        "[\"-c\", \"import time; time.sleep(60)\"]",
        "ready_timeout_secs = 1",
    )
    .await;
    let alice = env.gate.create_token("alice", &[]);
    let started = Instant::now();
    let refused = post(&env.gate, &alice, None, &initialize()).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert!(refused.headers.contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        env.gate
            .metric("memgate_upstream_spawns_total{result=\"timeout\"}")
            .await,
        1.0
    );
    let stopped = within(STEP, || async {
        env.gate
            .metric("memgate_upstream_processes{state=\"stopping\"}")
            .await
            == 0.0
            && env
                .gate
                .metric("memgate_upstream_processes{state=\"starting\"}")
                .await
                == 0.0
    })
    .await;
    assert!(stopped.is_some(), "the child that never listened was kept");

    let env = env_running("[\"/nonexistent/script.py\"]", "").await;
    let alice = env.gate.create_token("alice", &[]);
    let refused = post(&env.gate, &alice, None, &initialize()).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(
        env.gate
            .metric("memgate_upstream_spawns_total{result=\"failed\"}")
            .await,
        1.0
    );
}

// --- transport = "stdio" -----------------------------------------------------

fn stdio_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/single_tenant_mcp_stdio.py")
}

/// A memgate spawning the stdio test server per scope; each child logs what
/// it reads to `received-<scope>` in the test's directory.
async fn stdio_env(spawn_extra: &str) -> Env {
    let args = format!("[{:?}]", stdio_script().display().to_string());
    env_running(&args, &format!("transport = \"stdio\"\n{spawn_extra}")).await
}

impl Env {
    /// The messages the scope's children read, in order.
    fn received(&self, scope: &str) -> Vec<Value> {
        let path = self.dir.path().join(format!("received-{scope}"));
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }
}

type RmcpClient = rmcp::service::RunningService<rmcp::RoleClient, ()>;

/// rmcp's Streamable HTTP client, initialized through memgate with `token`.
async fn rmcp_client(gate: &Memgate, token: &str) -> RmcpClient {
    use rmcp::ServiceExt;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let headers = [(
        reqwest::header::HeaderName::from_static("x-mcp-token"),
        reqwest::header::HeaderValue::from_str(token).unwrap(),
    )]
    .into_iter()
    .collect();
    let config =
        StreamableHttpClientTransportConfig::with_uri(gate.mcp_url("/mcp")).custom_headers(headers);
    tokio::time::timeout(
        STEP,
        ().serve(StreamableHttpClientTransport::from_config(config)),
    )
    .await
    .expect("rmcp initialize in time")
    .expect("rmcp initialize through memgate")
}

/// An rmcp tool call that must succeed: its structured result, else its
/// first text parsed as JSON.
async fn rmcp_call(client: &RmcpClient, tool: &str, arguments: Value) -> Value {
    let params = rmcp::model::CallToolRequestParams::new(tool.to_string())
        .with_arguments(arguments.as_object().cloned().expect("object arguments"));
    let result = tokio::time::timeout(STEP, client.call_tool(params))
        .await
        .expect("tool call in time")
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert_ne!(result.is_error, Some(true), "{tool}: {result:?}");
    if let Some(structured) = result.structured_content {
        return structured;
    }
    first_text_json(&result)
}

#[tokio::test]
async fn stdio_scopes_get_their_own_processes_and_data_through_real_clients() {
    let env = stdio_env("").await;
    let gate = &env.gate;
    let (alice, bob) = (
        gate.create_token("alice", &[]),
        gate.create_token("bob", &[]),
    );
    let alice_client = rmcp_client(gate, &alice).await;
    let bob_client = rmcp_client(gate, &bob).await;
    let tools = alice_client.list_all_tools().await.expect("tools/list");
    assert!(tools.iter().any(|t| t.name == "add_coding_preference"));

    let added = rmcp_call(
        &alice_client,
        "add_coding_preference",
        json!({"text": "tabs"}),
    )
    .await;
    assert_eq!(added, json!({"user": "alice", "added": "tabs"}));
    let bobs = rmcp_call(&bob_client, "get_all_coding_preferences", json!({})).await;
    assert_eq!(
        bobs,
        json!({"user": "bob", "results": []}),
        "bob sees alice's"
    );
    let alices = rmcp_call(&alice_client, "get_all_coding_preferences", json!({})).await;
    assert_eq!(alices, json!({"user": "alice", "results": ["tabs"]}));

    let pids = env.pids();
    assert_eq!((pids["alice"].len(), pids["bob"].len()), (1, 1), "{pids:?}");
    assert_ne!(pids["alice"][0], pids["bob"][0]);
    let bob_read = serde_json::to_string(&env.received("bob")).unwrap();
    assert!(!bob_read.contains("tabs"), "bob's child saw {bob_read}");
    assert!(
        env.received("alice")
            .iter()
            .any(|m| m["params"]["arguments"]["text"] == "tabs")
    );
    let names = rmcp_call(&alice_client, "env_names", json!({})).await;
    let names: BTreeSet<String> = serde_json::from_value(names["names"].clone()).unwrap();
    assert!(
        names.contains("MEM0_USER") && !names.contains(SECRET.0),
        "{names:?}"
    );

    // The official Python SDK, in a session of its own on bob's child.
    if SdkClient::Python1.ready() {
        let calls = json!([{"tool": "get_all_coding_preferences", "arguments": {}}]);
        let run = SdkClient::Python1
            .run(&gate.mcp_url("/mcp"), &bob, &calls, &[], STEP)
            .await;
        assert!(run.success, "{}", run.describe());
        let results = run.calls();
        assert_eq!(
            results[0]["result"]["structuredContent"],
            json!({"user": "bob", "results": []}),
            "{}",
            run.describe()
        );
        assert_eq!(
            env.pids()["bob"].len(),
            1,
            "a second session started a second child"
        );
    }
    alice_client.cancel().await.ok();
    bob_client.cancel().await.ok();

    let log = gate.log();
    let pid = pids["alice"][0];
    assert!(
        log.lines()
            .any(|l| l.contains("single-tenant stdio MCP server for 'alice'")
                && l.contains(&format!("pid={pid}"))),
        "the child's stderr is not logged with its pid:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("not JSON-RPC") && l.contains("starting up")),
        "the non-JSON stdout line is not logged:\n{log}"
    );
}

/// Posts one message on `session` and returns the reply's content type and
/// body text.
async fn post_raw(
    gate: &Memgate,
    token: &str,
    session: &str,
    body: &Value,
) -> (u16, String, String) {
    let resp = http()
        .post(gate.mcp_url("/mcp"))
        .header("X-MCP-Token", token)
        .header("Mcp-Session-Id", session)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string())
        .send()
        .await
        .expect("POST /mcp");
    let status = resp.status().as_u16();
    let kind = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, kind, resp.text().await.unwrap_or_default())
}

fn echo_after(id: u64, text: &str, ms: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "echo_after", "arguments": {"text": text, "ms": ms}}})
}

#[tokio::test]
async fn two_sessions_of_one_stdio_child_with_colliding_ids_get_their_own_answers() {
    let env = stdio_env("").await;
    let gate = &env.gate;
    let alice = gate.create_token("alice", &[]);
    let first = session(gate, &alice).await;
    let second = session(gate, &alice).await;
    assert_ne!(first, second);

    // Same id on both sessions; the first one's answer comes last.
    let (slow_call, fast_call) = (echo_after(7, "slow", 400), echo_after(7, "fast", 0));
    let (slow, fast) = tokio::join!(post(gate, &alice, Some(&first), &slow_call), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        post(gate, &alice, Some(&second), &fast_call).await
    });
    for (reply, text) in [(&slow, "slow"), (&fast, "fast")] {
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.body["id"], 7);
        assert_eq!(
            reply.body["result"]["structuredContent"]["echo"], text,
            "{:?}",
            reply.body
        );
    }

    // A notification about a request before its answer: the answer is an
    // event stream, with the client's own progress token.
    let mut with_progress = echo_after(8, "p", 0);
    with_progress["params"]["_meta"] = json!({"progressToken": "mine"});
    let (status, kind, text) = post_raw(gate, &alice, &first, &with_progress).await;
    assert_eq!(status, 200, "{text}");
    assert!(kind.starts_with("text/event-stream"), "{kind}: {text}");
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{text}");
    assert_eq!(events[0]["method"], "notifications/progress");
    assert_eq!(events[0]["params"]["progressToken"], "mine");
    assert_eq!(events[1]["id"], 8);

    // A message the child starts on its own goes to the scope's open streams.
    let mut stream = open_stream(gate, &alice, &first).await;
    let announce = json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call",
        "params": {"name": "announce", "arguments": {"text": "hello streams"}}});
    assert_eq!(
        post(gate, &alice, Some(&second), &announce).await.status,
        200
    );
    read_until(&mut stream, "hellostreams").await;
    drop(stream);

    // A batch is refused before it reaches the child.
    let batch = json!([echo_after(1, "a", 50), echo_after(2, "b", 0)]);
    let reply = post(gate, &alice, Some(&second), &batch).await;
    assert_eq!(reply.status, 400, "{:?}", reply.body);
    assert_eq!(reply.body["error"]["code"], -32600);

    // The child was initialized once, and never saw a client's own ids.
    let received = env.received("alice");
    let count = |method: &str| received.iter().filter(|m| m["method"] == method).count();
    assert_eq!(count("initialize"), 1, "{received:?}");
    assert_eq!(count("notifications/initialized"), 1, "{received:?}");
    let calls: Vec<&Value> = received
        .iter()
        .filter(|m| m["method"] == "tools/call")
        .collect();
    let ids: BTreeSet<String> = calls.iter().map(|m| m["id"].to_string()).collect();
    assert_eq!(
        ids.len(),
        calls.len(),
        "ids repeated at the child: {calls:?}"
    );
    assert_ne!(
        calls[2]["params"]["_meta"]["progressToken"], "mine",
        "progress tokens are the bridge's at the child"
    );
    assert_eq!(env.pids()["alice"].len(), 1);

    // Ending one session leaves the other working.
    let ended = http()
        .delete(gate.mcp_url("/mcp"))
        .header("X-MCP-Token", &alice)
        .header("Mcp-Session-Id", &first)
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200);
    let ping = json!({"jsonrpc": "2.0", "id": 3, "method": "ping"});
    assert_eq!(post(gate, &alice, Some(&first), &ping).await.status, 404);
    assert_eq!(post(gate, &alice, Some(&second), &ping).await.status, 200);

    // A request in flight when the child dies gets an error at once.
    let pid = env.pid_of("alice");
    let stuck_call = echo_after(9, "never", 30_000);
    let started = Instant::now();
    let (stuck, ()) = tokio::join!(post(gate, &alice, Some(&second), &stuck_call), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        kill(pid, libc::SIGKILL);
    });
    assert_eq!(stuck.status, 502, "{:?}", stuck.body);
    assert_eq!(stuck.body["error"]["code"], -32603, "{:?}", stuck.body);
    assert_eq!(stuck.body["id"], 9, "{:?}", stuck.body);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn legacy_sse_reaches_a_stdio_child() {
    if !SdkClient::Python1.ready() {
        return;
    }
    let env = stdio_env("").await;
    let gate = &env.gate;
    let alice = gate.create_token("alice", &[]);
    let calls = json!([
        {"tool": "add_coding_preference", "arguments": {"text": "spaces"}},
        {"tool": "get_all_coding_preferences", "arguments": {}},
    ]);
    let run = SdkClient::Python1
        .run(&gate.mcp_url("/sse"), &alice, &calls, &["--sse"], STEP)
        .await;
    assert!(run.success, "{}", run.describe());
    let results = run.calls();
    assert_eq!(
        results[1]["result"]["structuredContent"],
        json!({"user": "alice", "results": ["spaces"]}),
        "{}",
        run.describe()
    );
    let received = env.received("alice");
    assert!(
        received
            .iter()
            .any(|m| m["params"]["arguments"]["text"] == "spaces"),
        "{received:?}"
    );
}

/// Reads `stream` until its text, spaces removed, holds `needle`; returns
/// all it read.
async fn read_until(stream: &mut reqwest::Response, needle: &str) -> String {
    let mut text = String::new();
    let found = |text: &str| text.replace(' ', "").contains(needle);
    let read = tokio::time::timeout(STEP, async {
        while !found(&text) {
            match stream.chunk().await {
                Ok(Some(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return,
            }
        }
    })
    .await;
    assert!(read.is_ok() && found(&text), "no {needle:?} in {text:?}");
    text
}

/// Opens a legacy SSE session: the stream and the path its `endpoint`
/// event (the first) names.
async fn legacy_session(gate: &Memgate, token: &str) -> (reqwest::Response, String) {
    let mut stream = reqwest::Client::new()
        .get(gate.mcp_url("/sse"))
        .header("X-MCP-Token", token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET /sse");
    assert_eq!(stream.status(), 200);
    let text = read_until(&mut stream, "\n\n").await;
    let endpoint = text
        .lines()
        .skip_while(|l| *l != "event: endpoint")
        .find_map(|l| l.strip_prefix("data: "))
        .filter(|e| e.contains("session_id="))
        .unwrap_or_else(|| panic!("no endpoint event in {text:?}"))
        .trim()
        .to_string();
    (stream, endpoint)
}

async fn post_legacy(gate: &Memgate, token: &str, endpoint: &str, body: &Value) -> u16 {
    http()
        .post(gate.mcp_url(endpoint))
        .header("X-MCP-Token", token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST /messages/")
        .status()
        .as_u16()
}

async fn legacy_session_is_forgotten_when_its_child_exits(stdio: bool) {
    let env = if stdio {
        stdio_env("").await
    } else {
        env_with("").await
    };
    let gate = &env.gate;
    let alice = gate.create_token("alice", &[]);
    let (mut stream, old) = legacy_session(gate, &alice).await;
    let ping = |id: u64| json!({"jsonrpc": "2.0", "id": id, "method": "ping"});
    assert_eq!(post_legacy(gate, &alice, &old, &ping(41)).await, 202);
    read_until(&mut stream, "\"id\":41").await;
    let first = env.pid_of("alice");
    kill(first, libc::SIGKILL);
    assert!(gone_within(first, STEP).await);
    let forgotten = within(STEP, || async {
        post_legacy(gate, &alice, &old, &ping(42)).await == 404
    })
    .await;
    assert!(
        forgotten.is_some(),
        "the dead child's legacy session still works"
    );

    let (mut stream, new) = legacy_session(gate, &alice).await;
    assert_ne!(new, old);
    assert_eq!(post_legacy(gate, &alice, &new, &ping(43)).await, 202);
    read_until(&mut stream, "\"id\":43").await;
    assert_ne!(env.pid_of("alice"), first, "not restarted");
    assert_eq!(post_legacy(gate, &alice, &old, &ping(44)).await, 404);
}

#[tokio::test]
async fn a_legacy_session_is_forgotten_when_its_http_child_exits() {
    legacy_session_is_forgotten_when_its_child_exits(false).await;
}

#[tokio::test]
async fn a_legacy_session_is_forgotten_when_its_stdio_child_exits() {
    legacy_session_is_forgotten_when_its_child_exits(true).await;
}

#[tokio::test]
async fn a_child_that_keeps_failing_to_start_backs_off_until_one_starts() {
    let env = stdio_env("").await;
    let gate = &env.gate;
    let alice = gate.create_token("alice", &[]);
    let fail = env.dir.path().join("fail");
    std::fs::write(&fail, "").unwrap();
    let started = Instant::now();
    let mut retry_after = Vec::new();
    while started.elapsed() < Duration::from_millis(3500) {
        let reply = post(gate, &alice, None, &initialize()).await;
        assert_ne!(reply.status, 200, "{:?}", reply.body);
        if reply.status == 503 {
            let secs: u64 = reply.headers["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            retry_after.push(secs);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Starts at about 0 s, 1 s and 3 s: each failure doubles the wait.
    let starts = env.pids()["alice"].len();
    assert!((2..=3).contains(&starts), "{starts} starts in 3.5 s");
    assert!(retry_after.len() > 20, "{retry_after:?}");
    assert!(retry_after.iter().any(|s| *s >= 2), "{retry_after:?}");
    let failures = || {
        gate.log()
            .lines()
            .filter(|l| l.contains("failed to start"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let logged = within(STEP, || async {
        failures().len() == env.pids()["alice"].len()
    })
    .await;
    assert!(
        logged.is_some(),
        "one log line per failure: {:?}",
        failures()
    );

    std::fs::remove_file(&fail).unwrap();
    let served = within(Duration::from_secs(10), || async {
        post(gate, &alice, None, &initialize()).await.status == 200
    })
    .await;
    assert!(served.is_some(), "no start once the command works");

    // The good start forgot the failures: the next failure waits 1 s.
    std::fs::write(&fail, "").unwrap();
    let before = failures().len();
    kill(env.pid_of("alice"), libc::SIGKILL);
    let failed = within(STEP, || async {
        post(gate, &alice, None, &initialize()).await;
        failures().len() > before
    })
    .await;
    assert!(failed.is_some());
    let last = failures().pop().unwrap();
    assert!(last.contains("retry_after_secs=1"), "{last}");
}

#[tokio::test]
async fn a_stdio_child_that_never_answers_is_stopped_and_backs_off() {
    let env = env_running(
        "[\"-c\", \"import time; time.sleep(60)\"]",
        "transport = \"stdio\"\nready_timeout_secs = 1",
    )
    .await;
    let gate = &env.gate;
    let alice = gate.create_token("alice", &[]);
    let started = Instant::now();
    let silent = post(gate, &alice, None, &initialize()).await;
    assert_eq!(silent.status, 502, "{:?}", silent.body);
    assert!(silent.body["error"].is_object(), "{:?}", silent.body);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let refused = post(gate, &alice, None, &initialize()).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert!(refused.headers.contains_key("retry-after"));
    let stopped = within(STEP, || async {
        gate.metric("memgate_upstream_processes{state=\"running\"}")
            .await
            == 0.0
            && gate
                .metric("memgate_upstream_processes{state=\"stopping\"}")
                .await
                == 0.0
    })
    .await;
    assert!(stopped.is_some(), "the silent child was kept");
    let log = gate.log();
    assert_eq!(
        log.matches("did not answer its first request in time")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("failed to start").count(), 1, "{log}");
}

fn server_memory() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients/node_modules/@modelcontextprotocol/server-memory/dist/index.js")
}

#[tokio::test]
async fn the_reference_memory_server_keeps_alice_and_bob_apart() {
    // `.ci/run` installs it with the TypeScript SDK (tests/clients).
    if !SdkClient::TypeScript.ready() {
        return;
    }
    assert!(
        server_memory().exists(),
        "{} is missing: run `npm ci` in tests/clients",
        server_memory().display()
    );
    // Its file goes in the scope's own directory (`cwd` takes the scope's
    // host label, so no user id can point it elsewhere).
    let args = format!(
        "[\"-c\", \"MEMORY_FILE_PATH=\\\"$PWD/memory.jsonl\\\" exec node {}\"]",
        server_memory().display()
    );
    let env = env_command("sh", &args, "transport = \"stdio\"").await;
    let gate = &env.gate;
    let (alice, bob) = (
        gate.create_token("alice", &[]),
        gate.create_token("bob", &[]),
    );
    let alice_client = rmcp_client(gate, &alice).await;
    let bob_client = rmcp_client(gate, &bob).await;
    let created = rmcp_call(
        &alice_client,
        "create_entities",
        json!({"entities": [{"name": "alice-secret", "entityType": "note",
                             "observations": ["prefers tabs"]}]}),
    )
    .await;
    assert!(created.to_string().contains("alice-secret"), "{created}");
    rmcp_call(
        &bob_client,
        "create_entities",
        json!({"entities": [{"name": "bob-note", "entityType": "note", "observations": []}]}),
    )
    .await;

    let bob_graph = rmcp_call(&bob_client, "read_graph", json!({}))
        .await
        .to_string();
    assert!(bob_graph.contains("bob-note"), "{bob_graph}");
    assert!(
        !bob_graph.contains("alice-secret"),
        "bob sees alice's: {bob_graph}"
    );
    let bob_search = rmcp_call(&bob_client, "search_nodes", json!({"query": "tabs"}))
        .await
        .to_string();
    assert!(!bob_search.contains("alice-secret"), "{bob_search}");
    let alice_search = rmcp_call(&alice_client, "search_nodes", json!({"query": "tabs"}))
        .await
        .to_string();
    assert!(alice_search.contains("alice-secret"), "{alice_search}");
    let alice_graph = rmcp_call(&alice_client, "read_graph", json!({}))
        .await
        .to_string();
    assert!(!alice_graph.contains("bob-note"), "{alice_graph}");

    let file = |scope: &str| {
        std::fs::read_to_string(env.dir.path().join(format!("scopes/{scope}/memory.jsonl")))
            .unwrap_or_default()
    };
    assert!(file("alice").contains("alice-secret") && !file("alice").contains("bob-note"));
    assert!(file("bob").contains("bob-note") && !file("bob").contains("alice-secret"));
    alice_client.cancel().await.ok();
    bob_client.cancel().await.ok();
}
