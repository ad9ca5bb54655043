//! Shared harness for the end-to-end tests: a real memgate process, a fresh
//! database per test (SQLite file or PostgreSQL database), an in-process
//! upstream that records what it received, and a TCP relay that can cut the
//! store's connections to simulate an outage.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub mod mcp_server;
pub mod mem0;
pub mod oidc;
pub mod sdk;

pub const BIN: &str = env!("CARGO_BIN_EXE_memgate");

/// PostgreSQL server used for per-test databases.
fn pg_admin_url() -> String {
    std::env::var("MEMGATE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// A database that exists for one test only.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pg_name: Option<String>,
    _dir: tempfile::TempDir,
}

static DB_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        match backend {
            Backend::Sqlite => TestDb {
                backend,
                url: format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("memgate.db").display()
                ),
                pg_name: None,
                _dir: dir,
            },
            Backend::Postgres => {
                let name = format!(
                    "memgate_test_{}_{}_{}",
                    std::process::id(),
                    DB_COUNTER.fetch_add(1, Ordering::SeqCst),
                    Instant::now().elapsed().subsec_nanos() % 100_000
                );
                let admin = pg_admin_url();
                let mut conn =
                    <sqlx::PgConnection as sqlx::Connection>::connect(&format!("{admin}/postgres"))
                        .await
                        .expect("PostgreSQL must be reachable for the tests (see README)");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                TestDb {
                    backend,
                    url: format!("{admin}/{name}"),
                    pg_name: Some(name),
                    _dir: dir,
                }
            }
        }
    }

    /// The store, opened and migrated, for arranging data directly.
    pub async fn store(&self) -> Arc<dyn memgate::store::Store> {
        let store = memgate::store::connect(&self.url, 2, Duration::from_secs(5))
            .await
            .expect("open store");
        store.migrate().await.expect("migrate");
        store
    }

    /// The audit events of `event`, once `done` says enough are stored
    /// (memgate records after it answers), or whatever is there after 10 s.
    pub async fn audit_rows_until(
        &self,
        event: &str,
        done: impl Fn(&[memgate::audit::AuditEvent]) -> bool,
    ) -> Vec<memgate::audit::AuditEvent> {
        let store = self.store().await;
        let filter = memgate::store::AuditFilter {
            since: chrono::Utc::now() - chrono::Duration::days(1),
            until: None,
            user_id: None,
            event: Some(event.into()),
            limit: 1000,
            newest_first: false,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let rows = store.audit_events(&filter).await.unwrap();
            if done(&rows) || std::time::Instant::now() > deadline {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The same database reached through `relay` (for outage tests).
    pub fn url_via(&self, relay: SocketAddr) -> String {
        let name = self
            .pg_name
            .as_deref()
            .expect("only PostgreSQL databases can be relayed");
        format!("postgres://postgres@{relay}/{name}")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        let admin = pg_admin_url();
        // Drop runs inside a runtime; do the cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn =
                    <sqlx::PgConnection as sqlx::Connection>::connect(&format!("{admin}/postgres"))
                        .await
                        .ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .ok()
            })
        })
        .join();
    }
}

/// Open file descriptors of a process (Linux `/proc`), for leak checks.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A free local port (bound, then released for the process under test).
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free local ports: all are held until every one is chosen,
/// since a port released at once may be handed out again by the next bind.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<StdListener> = (0..N)
        .map(|_| StdListener::bind("127.0.0.1:0").expect("free port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("bound port").port())
}

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Recorded {
    /// What a test upstream saw of one request.
    pub fn new(parts: &axum::http::request::Parts, body: Bytes) -> Recorded {
        Recorded {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
        }
    }

    /// Every value of header `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.header_all(name).into_iter().next()
    }
}

/// An in-process upstream that records every request. `/sse` streams two
/// events 1.5 s apart (under the mem0 listener's 2 s read timeout, by a
/// margin a busy machine keeps); `/slow` (or any request with an `x-test-slow`
/// header) answers after 3 s; anything else echoes
/// a small JSON document.
pub struct Upstream {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let log: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let sink = log.clone();
        let app = axum::Router::new().fallback(move |req: Request| {
            let sink = sink.clone();
            async move { record_and_answer(sink, req).await }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream { addr, log, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().expect("log").clone()
    }

    pub fn clear(&self) {
        self.log.lock().expect("log").clear();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record_and_answer(sink: Arc<Mutex<Vec<Recorded>>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let slow = path == "/slow" || parts.headers.contains_key("x-test-slow");
    sink.lock().expect("log").push(Recorded::new(&parts, body));
    match path.as_str() {
        "/sse" => {
            let events = async_stream_events();
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(Body::from_stream(events))
                .expect("sse response")
        }
        _ if slow => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            axum::Json(serde_json::json!({"slow": true})).into_response()
        }
        _ => axum::Json(serde_json::json!({"ok": true, "path": path})).into_response(),
    }
}

/// The pause between the two events of the test upstream's `/sse`.
pub const SSE_PAUSE: Duration = Duration::from_millis(1500);

fn async_stream_events() -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::unfold(0u8, |n| async move {
        match n {
            0 => Some((
                Ok(Bytes::from_static(b"event: message\ndata: first\n\n")),
                1,
            )),
            1 => {
                tokio::time::sleep(SSE_PAUSE).await;
                Some((
                    Ok(Bytes::from_static(b"event: message\ndata: second\n\n")),
                    2,
                ))
            }
            _ => None,
        }
    })
}

/// Settings for one memgate process.
pub struct MemgateConfig {
    pub database_url: String,
    pub mcp_upstream: String,
    pub mem0_upstream: String,
    /// Extra TOML appended to the generated file (whole sections).
    pub extra: String,
    /// Extra keys for `[auth]`.
    pub auth: String,
    /// The `[rate_limit]` section's keys. By default limits are out of the way
    /// (tests about them set their own).
    pub rate_limit: String,
    /// Extra keys for `[audit]` (the spool always lives in the test's directory).
    pub audit: String,
    /// `[server] threads` (default 1).
    pub threads: usize,
    /// Keys for `[server]` besides `threads` (default: a 1 s grace period).
    pub server: String,
    /// Extra keys for `[mem0]` (e.g. `allowed_routes = ["GET /sse"]`).
    pub mem0_extra: String,
    /// Extra keys for `[mcp]` (e.g. `allowed_origins = ["http://localhost:3000"]`).
    /// Tool rules go in `extra` as `[mcp.tools.NAME]` tables.
    pub mcp_extra: String,
    pub forward_credentials: bool,
    /// Variables set in memgate's environment (beside the test's own).
    pub env: Vec<(String, String)>,
}

impl MemgateConfig {
    pub fn new(database_url: &str, upstream: &str) -> MemgateConfig {
        MemgateConfig {
            database_url: database_url.into(),
            mcp_upstream: upstream.into(),
            mem0_upstream: upstream.into(),
            extra: String::new(),
            auth: String::new(),
            rate_limit: "per_token_rps = 0\nfailed_auth_per_ip_per_min = 1000000".into(),
            audit: String::new(),
            threads: 1,
            server: "grace_period_secs = 1".into(),
            mem0_extra: String::new(),
            mcp_extra: String::new(),
            forward_credentials: false,
            env: Vec::new(),
        }
    }
}

/// A running `memgate serve`, killed when dropped.
pub struct Memgate {
    pub mcp: SocketAddr,
    pub mem0: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Memgate {
    /// Starts memgate and waits until it answers. A port chosen free can be
    /// taken by a parallel test before memgate binds it; that start is retried
    /// on fresh ports.
    pub async fn start(cfg: MemgateConfig) -> Memgate {
        let mut attempts = 0;
        loop {
            let mut gate = Memgate::spawn(&cfg);
            match gate.wait_healthy().await {
                Ok(()) => return gate,
                Err(log) if log.contains("Address already in use") && attempts < 5 => {
                    attempts += 1;
                }
                Err(log) => panic!("memgate exited instead of starting:\n{log}"),
            }
        }
    }

    fn spawn(cfg: &MemgateConfig) -> Memgate {
        let dir = tempfile::tempdir().expect("tempdir");
        let [mcp, mem0, admin] = free_ports::<3>();
        let text = format!(
            "[database]\nurl = {db:?}\nconnect_timeout_secs = {db_wait}\n\n\
             [mcp]\nlisten = \"127.0.0.1:{mcp}\"\nupstream = {mu:?}\nconnect_timeout_secs = 2\nforward_credentials = {fc}\n{mcpx}\n\n\
             [mem0]\nlisten = \"127.0.0.1:{mem0}\"\nupstream = {m0:?}\nconnect_timeout_secs = 2\nread_timeout_secs = 2\nforward_credentials = {fc}\n{m0x}\n\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
             [auth]\n{auth}\n\n\
             [rate_limit]\n{rate_limit}\n\n\
             [audit]\nspool_dir = {spool:?}\n{audit}\n\n\
             [server]\nthreads = {threads}\n{server}\n\n{extra}\n",
            db = cfg.database_url,
            // PostgreSQL outages should fail fast; opening a local SQLite
            // file can take over a second on a 2-core machine under load.
            db_wait = if cfg.database_url.starts_with("sqlite:") {
                5
            } else {
                1
            },
            mu = cfg.mcp_upstream,
            m0 = cfg.mem0_upstream,
            fc = cfg.forward_credentials,
            auth = cfg.auth,
            rate_limit = cfg.rate_limit,
            spool = dir.path().join("spool").display().to_string(),
            audit = cfg.audit,
            threads = cfg.threads,
            server = cfg.server,
            m0x = cfg.mem0_extra,
            mcpx = cfg.mcp_extra,
            extra = cfg.extra,
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, text).expect("write config");
        let log = std::fs::File::create(dir.path().join("memgate.log")).expect("log file");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&config_path)
            .arg("serve")
            .env("MEMGATE_LOG", "info,pingora_core=warn,pingora_proxy=warn")
            .envs(cfg.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn memgate");
        Memgate {
            mcp: SocketAddr::from(([127, 0, 0, 1], mcp)),
            mem0: SocketAddr::from(([127, 0, 0, 1], mem0)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            config_path,
            child,
            _dir: dir,
        }
    }

    /// Waits for `/health`; `Err` carries the log of a memgate that exited.
    async fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = reqwest::Client::new();
        loop {
            let mcp_up = TcpStream::connect(self.mcp).await.is_ok();
            let mem0_up = TcpStream::connect(self.mem0).await.is_ok();
            let healthy = mcp_up
                && mem0_up
                && client
                    .get(format!("http://{}/health", self.admin))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
            if healthy {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("({status})\n{}", self.log()));
            }
            assert!(
                Instant::now() < deadline,
                "memgate did not start:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("memgate.log")).unwrap_or_default()
    }

    pub fn mem0_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.mem0)
    }

    pub fn mcp_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.mcp)
    }

    /// Runs a CLI command against this memgate's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.config_path, args)
    }

    /// Creates a token through the CLI and returns it.
    pub fn create_token(&self, user_id: &str, extra: &[&str]) -> String {
        let mut args = vec!["token", "create", "--user-id", user_id, "--json"];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("token create --json");
        v["token"].as_str().expect("token field").to_string()
    }

    /// The value of a counter/gauge sample on `/metrics`, 0 when absent.
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name_and_labels)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

impl Memgate {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (at most 30 s) for the process to exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "memgate did not exit after SIGTERM:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Memgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `memgate --config FILE args…`.
pub fn cli(config: &std::path::Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run memgate")
}

/// Like [`cli`], for a command that should end by itself (e.g. a `serve`
/// that must refuse to start): killed if still running after `limit`.
pub fn cli_within(config: &std::path::Path, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run memgate");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait for memgate").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("memgate output")
}

/// A command's stdout, asserting it succeeded.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

/// A command's stderr, asserting it failed.
pub fn err(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr.clone()).expect("utf-8 stderr")
}

/// A TCP relay in front of a server that can drop every connection and refuse
/// new ones (`cut`) and then accept again (`restore`): a store outage.
pub struct Relay {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let down = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (d, c) = (down.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().expect("conns").push(handle);
            }
        });
        Relay {
            addr,
            down,
            conns,
            task,
        }
    }

    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for h in self.conns.lock().expect("conns").drain(..) {
            h.abort();
        }
    }

    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// PostgreSQL's address for relaying.
pub fn pg_addr() -> SocketAddr {
    let url = url::Url::parse(&pg_admin_url()).expect("MEMGATE_TEST_PG is a URL");
    let host = url.host_str().unwrap_or("127.0.0.1");
    let port = url.port().unwrap_or(5432);
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .ok()
        .and_then(|mut a| a.next())
        .expect("resolve PostgreSQL host")
}

/// Polls `check` every 20 ms until it is true or `limit` passes; returns the time taken.
pub async fn within<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first text of an rmcp tool result, parsed as JSON (the text itself
/// when it is not JSON).
pub fn first_text_json(result: &rmcp::model::CallToolResult) -> Value {
    let text = result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}
