//! `[mcp.spawn]` (docs/design.md §5a): one MCP server process per scope, started
//! on the scope's first request and stopped when idle, when another scope
//! needs its place, or when memgate stops.
//!
//! Processes are forked by one dedicated thread that lives as long as
//! memgate: the parent-death signal of a child fires when the thread that
//! forked it ends, so a tokio worker that retires must never be that thread.
//! Each child has a waiter thread (it reaps the child and forgets the
//! sessions it handed out) and an output thread (its lines go to the log).
//! Requests hold a [`ChildLease`] while they use a child, so a child with a
//! request in flight or a stream open is never chosen to be stopped.
//!
//! A child with `transport = "stdio"` gets a bridge ([`stdio`]) that serves
//! it on the loopback port an `http` child would listen on, so the proxy
//! reaches both the same way. A scope whose child failed to start is not
//! started again for a growing delay ([`Backoff`]).

mod stdio;

pub use stdio::BridgePaths;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use tokio::sync::{oneshot, watch};

use super::exchange::UpstreamClient;
use super::upstream::UpstreamTarget;
use crate::config::{
    ConfigError, ListenerConfig, PORT_PLACEHOLDER, SpawnConfig, SpawnTransport, Upstream,
};
use crate::metrics::METRICS;
use crate::policy::upstream_name::{SCOPE_PLACEHOLDER, USER_PLACEHOLDER, host_label};
use crate::sessions::SessionBindings;

/// The only variables of memgate's environment every child gets.
const BASE_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];
/// Seconds a client is told to wait when no child can serve it now.
const RETRY_AFTER_SECS: u64 = 2;
/// Sessions remembered per child, so a long-lived child's list stays
/// bounded; an older one left bound is unknown to the next child, which
/// refuses it itself.
const MAX_NOTED_SESSIONS: usize = 4096;
/// Stack of the waiter and output threads: they only wait and copy lines.
const SMALL_STACK: usize = 128 * 1024;
/// The first wait after a failed start, doubled on each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between starts of a scope whose child keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Scopes whose failures are remembered; past this the oldest waits end.
const MAX_BACKOFFS: usize = 10_000;

/// Why a request cannot have its scope's child now: 503 + `Retry-After`.
#[derive(Debug)]
pub struct NotReady {
    pub message: String,
    pub retry_after_secs: u64,
}

impl NotReady {
    fn new(message: impl Into<String>) -> NotReady {
        NotReady {
            message: message.into(),
            retry_after_secs: RETRY_AFTER_SECS,
        }
    }
}

/// The wait before a scope's child may start again after failures in a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub until: Instant,
    pub delay: Duration,
}

impl Backoff {
    /// The wait after one more failure at `now`: [`FIRST_BACKOFF`], then
    /// double the last, at most [`MAX_BACKOFF`].
    pub fn after(previous: Option<Backoff>, now: Instant) -> Backoff {
        let delay = previous.map_or(FIRST_BACKOFF, |b| (b.delay * 2).min(MAX_BACKOFF));
        Backoff {
            until: now + delay,
            delay,
        }
    }

    /// Whole seconds left at `now` (at least 1), or none when it is over.
    pub fn remaining_secs(&self, now: Instant) -> Option<u64> {
        let left = self.until.checked_duration_since(now)?;
        (!left.is_zero()).then(|| left.as_secs_f64().ceil().max(1.0) as u64)
    }
}

/// What `{scope}`, `{user}` and `{port}` stand for in one child's command.
pub struct Vars<'a> {
    pub scope: &'a str,
    pub user: &'a str,
    pub port: u16,
}

/// `template` with each placeholder replaced: scope and user by their host
/// labels (a value cannot smuggle a path, an option or a `{port}` in).
pub fn fill(template: &str, vars: &Vars) -> String {
    template
        .replace(SCOPE_PLACEHOLDER, &host_label(vars.scope))
        .replace(USER_PLACEHOLDER, &host_label(vars.user))
        .replace(PORT_PLACEHOLDER, &vars.port.to_string())
}

/// An `env` value with each placeholder replaced by the value itself: the
/// scope is the mem0 user id memgate forces on the REST listener and records
/// for `user export`/`user delete`, so a server that takes its mem0 id from
/// the environment must get exactly that, not its host label. One pass, so a
/// value that holds a placeholder's text is never expanded again.
pub fn fill_env(template: &str, vars: &Vars) -> String {
    let port = vars.port.to_string();
    let placeholders = [
        (SCOPE_PLACEHOLDER, vars.scope),
        (USER_PLACEHOLDER, vars.user),
        (PORT_PLACEHOLDER, port.as_str()),
    ];
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while !rest.is_empty() {
        match placeholders
            .iter()
            .find(|(placeholder, _)| rest.starts_with(placeholder))
        {
            Some((placeholder, value)) => {
                out.push_str(value);
                rest = &rest[placeholder.len()..];
            }
            None => {
                let next = rest.chars().next().map_or(1, char::len_utf8);
                out.push_str(&rest[..next]);
                rest = &rest[next..];
            }
        }
    }
    out
}

/// The child's whole environment: the base names and `inherit` from
/// memgate's (through `get`), then `env` filled in.
pub fn child_env(
    inherit: &[String],
    env: &BTreeMap<String, String>,
    vars: &Vars,
    get: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for name in BASE_ENV
        .iter()
        .copied()
        .chain(inherit.iter().map(String::as_str))
    {
        if let Some(value) = get(name) {
            out.insert(name.to_string(), value);
        }
    }
    for (name, value) in env {
        out.insert(name.clone(), fill_env(value, vars));
    }
    out
}

/// One child as the stop policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Requests in flight plus streams open.
    pub busy: usize,
    /// Milliseconds since the supervisor started, at the last lease's end.
    pub last_used: u64,
    /// Accepting connections (neither starting nor on its way out).
    pub running: bool,
}

impl Usage {
    fn stoppable(&self) -> bool {
        self.running && self.busy == 0
    }
}

/// The child to stop to make room: the least recently used of those with no
/// request and no stream; none when all are busy.
pub fn least_recently_used<K>(children: impl Iterator<Item = (K, Usage)>) -> Option<K> {
    children
        .filter(|(_, usage)| usage.stoppable())
        .min_by_key(|(_, usage)| usage.last_used)
        .map(|(key, _)| key)
}

/// Children unused for `idle_ms` at `now`.
pub fn idle<K>(children: impl Iterator<Item = (K, Usage)>, now: u64, idle_ms: u64) -> Vec<K> {
    children
        .filter(|(_, usage)| usage.stoppable() && now.saturating_sub(usage.last_used) >= idle_ms)
        .map(|(key, _)| key)
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Starting,
    Running,
    Stopping,
    Exited,
}

impl Phase {
    fn label(self) -> Option<&'static str> {
        match self {
            Phase::Starting => Some("starting"),
            Phase::Running => Some("running"),
            Phase::Stopping => Some("stopping"),
            Phase::Exited => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Readiness {
    Pending,
    Ready,
    Failed,
}

/// One child process (one instance: a restarted scope gets a new one).
struct Child {
    /// The scope's key: its host label (and the user's, when templates use it).
    key: String,
    port: u16,
    client: Arc<UpstreamClient>,
    phase: Mutex<Phase>,
    pid: OnceLock<Pid>,
    busy: AtomicUsize,
    last_used: AtomicU64,
    ready: watch::Sender<Readiness>,
    exited: watch::Sender<bool>,
    /// The bridge serving a stdio child.
    bridge: OnceLock<Arc<stdio::Bridge>>,
    /// Its failure to start was counted (once per child).
    failed: AtomicBool,
    /// Session ids this child handed out, the latest [`MAX_NOTED_SESSIONS`]:
    /// they die with it.
    sessions: Mutex<std::collections::VecDeque<String>>,
}

impl Child {
    fn new(key: String, port: u16, client: Arc<UpstreamClient>, now: u64) -> Child {
        METRICS
            .upstream_processes
            .with_label_values(&["starting"])
            .inc();
        Child {
            key,
            port,
            client,
            phase: Mutex::new(Phase::Starting),
            pid: OnceLock::new(),
            busy: AtomicUsize::new(0),
            last_used: AtomicU64::new(now),
            ready: watch::Sender::new(Readiness::Pending),
            exited: watch::Sender::new(false),
            bridge: OnceLock::new(),
            failed: AtomicBool::new(false),
            sessions: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves to `next` (never back from `Exited`); the gauge follows.
    fn set_phase(phase: &mut Phase, next: Phase) {
        if *phase == Phase::Exited || *phase == next {
            return;
        }
        if let Some(label) = phase.label() {
            METRICS.upstream_processes.with_label_values(&[label]).dec();
        }
        if let Some(label) = next.label() {
            METRICS.upstream_processes.with_label_values(&[label]).inc();
        }
        *phase = next;
    }

    fn usage(&self) -> Usage {
        Usage {
            busy: self.busy.load(Ordering::Acquire),
            last_used: self.last_used.load(Ordering::Acquire),
            running: *self.phase() == Phase::Running,
        }
    }

    /// Signals the child's process group unless the child was reaped: until
    /// the waiter marks it exited, its pid (and group id) cannot be reused.
    fn signal(&self, phase: &Phase, signal: Signal) {
        if *phase == Phase::Exited {
            return;
        }
        if let Some(pid) = self.pid.get()
            && let Err(e) = killpg(*pid, signal)
        {
            tracing::debug!(scope = %self.key, pid = pid.as_raw(), error = %e, "signal not delivered");
        }
    }
}

/// A child held by one request or stream; dropping it ends the hold.
pub struct ChildLease {
    child: Arc<Child>,
    epoch: Instant,
}

impl ChildLease {
    fn new(child: Arc<Child>, epoch: Instant) -> ChildLease {
        child.busy.fetch_add(1, Ordering::AcqRel);
        ChildLease { child, epoch }
    }

    pub fn client(&self) -> &Arc<UpstreamClient> {
        &self.child.client
    }

    /// Remembers a session id this child handed out, to forget it when the
    /// child goes (a new process would not know it).
    pub fn note_session(&self, session_key: &str) {
        if let Ok(mut sessions) = self.child.sessions.lock() {
            if sessions.len() >= MAX_NOTED_SESSIONS {
                sessions.pop_front();
            }
            sessions.push_back(session_key.to_string());
        }
    }
}

impl Drop for ChildLease {
    fn drop(&mut self) {
        // Last use first: an idle check that sees no lease sees this time.
        self.child
            .last_used
            .store(millis(self.epoch), Ordering::Release);
        self.child.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

fn millis(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A command ready to run.
struct Launch {
    program: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    /// MCP over its stdin and stdout (else both are the log's).
    stdio: bool,
}

struct Job {
    launch: Launch,
    reply: oneshot::Sender<std::io::Result<Spawned>>,
}

/// A started process and the read end of its output pipe (a stdio child's
/// stdin and stdout are in `process`).
struct Spawned {
    process: std::process::Child,
    output: std::io::PipeReader,
}

#[derive(Default)]
struct Table {
    /// The child serving each scope now.
    current: HashMap<String, Arc<Child>>,
    /// Every child not yet reaped, by pid-independent id (stopping ones too).
    live: HashMap<u64, Arc<Child>>,
    next_id: u64,
}

pub struct Supervisor {
    spawn: SpawnConfig,
    key: String,
    listener: ListenerConfig,
    /// Whether the templates name the user (then a child per scope and user).
    per_user: bool,
    jobs: mpsc::Sender<Job>,
    table: Mutex<Table>,
    runtime: tokio::runtime::Handle,
    sessions: Arc<SessionBindings>,
    epoch: Instant,
    closing: AtomicBool,
    /// Where a stdio child's bridge sends legacy SSE clients.
    paths: BridgePaths,
    /// Scopes whose child failed to start, by scope key.
    backoffs: Mutex<HashMap<String, Backoff>>,
}

impl Supervisor {
    /// Starts the spawner thread and the idle reaper (on `runtime`, which
    /// must live as long as memgate).
    pub fn start(
        key: &str,
        listener: &ListenerConfig,
        spawn: &SpawnConfig,
        runtime: tokio::runtime::Handle,
        sessions: Arc<SessionBindings>,
        paths: BridgePaths,
    ) -> Result<Arc<Supervisor>, ConfigError> {
        let section = key.strip_suffix(".upstream").unwrap_or(key);
        listener.resolved_upstream_headers(section)?;
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("memgate-spawner".into())
            .spawn(move || spawner(queue))
            .map_err(|e| {
                ConfigError::Unsupported(format!("cannot start the spawner thread: {e}"))
            })?;
        let per_user = std::iter::once(&spawn.command)
            .chain(&spawn.args)
            .chain(spawn.env.values())
            .chain(std::iter::once(&spawn.cwd))
            .any(|t| t.contains(USER_PLACEHOLDER));
        let supervisor = Arc::new(Supervisor {
            spawn: spawn.clone(),
            key: key.to_owned(),
            listener: listener.clone(),
            per_user,
            jobs,
            table: Mutex::new(Table::default()),
            runtime: runtime.clone(),
            sessions,
            epoch: Instant::now(),
            closing: AtomicBool::new(false),
            paths,
            backoffs: Mutex::new(HashMap::new()),
        });
        runtime.spawn(reap_idle(Arc::downgrade(&supervisor)));
        Ok(supervisor)
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn scope_key(&self, scope: &str, user: &str) -> String {
        if self.per_user {
            format!("{}/{}", host_label(scope), host_label(user))
        } else {
            host_label(scope)
        }
    }

    /// The scope's child, started if need be, held until the lease drops.
    pub async fn lease(self: &Arc<Self>, scope: &str, user: &str) -> Result<ChildLease, NotReady> {
        let (lease, new) = self.find_or_add(scope, user)?;
        if new {
            let (this, child) = (self.clone(), lease.child.clone());
            let (scope, user) = (scope.to_owned(), user.to_owned());
            self.runtime
                .spawn(async move { this.bring_up(child, &scope, &user).await });
        }
        let mut ready = lease.child.ready.subscribe();
        let limit = Duration::from_secs(self.spawn.ready_timeout_secs + 1);
        match tokio::time::timeout(limit, ready.wait_for(|r| *r != Readiness::Pending)).await {
            Ok(Ok(r)) if *r == Readiness::Ready => Ok(lease),
            _ => Err(NotReady::new(
                "This scope's MCP server is not ready; retry shortly",
            )),
        }
    }

    /// The scope's usable child with a lease on it, or a new one (true) in
    /// its place; at `max_processes`, the least recently used idle child
    /// makes room.
    fn find_or_add(&self, scope: &str, user: &str) -> Result<(ChildLease, bool), NotReady> {
        if self.closing.load(Ordering::Acquire) {
            return Err(NotReady::new("memgate is stopping"));
        }
        let key = self.scope_key(scope, user);
        let mut table = self.table();
        if let Some(child) = table.current.get(&key)
            && matches!(*child.phase(), Phase::Starting | Phase::Running)
        {
            return Ok((ChildLease::new(child.clone(), self.epoch), false));
        }
        table.current.remove(&key);
        if let Some(secs) = self
            .backoffs()
            .get(&key)
            .and_then(|b| b.remaining_secs(Instant::now()))
        {
            return Err(NotReady {
                message: "This scope's MCP server failed to start; retry later".into(),
                retry_after_secs: secs,
            });
        }
        if table.current.len() >= self.spawn.max_processes {
            let usage = table.current.iter().map(|(k, c)| (k.clone(), c.usage()));
            let Some(victim) = least_recently_used(usage) else {
                return Err(NotReady::new(
                    "Every MCP server memgate may run is busy (mcp.spawn.max_processes); retry shortly",
                ));
            };
            if let Some(child) = table.current.remove(&victim) {
                tracing::info!(scope = %child.key, "stopping the least recently used MCP server to make room");
                self.runtime.spawn(stop(child, self.grace()));
            }
        }
        let port = free_port(&table).map_err(|e| {
            tracing::error!(error = %e, "no free loopback port for an MCP server");
            NotReady::new("No port for this scope's MCP server; retry shortly")
        })?;
        let client = self.client_for(scope, user, port).map_err(|e| {
            tracing::error!(error = %e, "a spawned MCP server's address is invalid");
            NotReady::new("This scope's MCP server cannot be addressed")
        })?;
        let child = Arc::new(Child::new(key.clone(), port, client, millis(self.epoch)));
        table.next_id += 1;
        let id = table.next_id;
        table.live.insert(id, child.clone());
        table.current.insert(key, child.clone());
        Ok((ChildLease::new(child, self.epoch), true))
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(self.spawn.stop_grace_secs)
    }

    fn backoffs(&self) -> MutexGuard<'_, HashMap<String, Backoff>> {
        self.backoffs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `child` failed to start: its scope waits before the next start. Once
    /// per child, so the log has one line per failure.
    fn note_failure(&self, child: &Child) {
        if child.failed.swap(true, Ordering::AcqRel) {
            return;
        }
        let now = Instant::now();
        let mut backoffs = self.backoffs();
        if backoffs.len() >= MAX_BACKOFFS {
            backoffs.retain(|_, b| b.until > now);
        }
        let backoff = Backoff::after(backoffs.get(&child.key).copied(), now);
        backoffs.insert(child.key.clone(), backoff);
        tracing::warn!(
            scope = %child.key,
            retry_after_secs = backoff.delay.as_secs(),
            "the MCP server failed to start; the scope's next start waits (doubling up to {} s while it keeps failing)",
            MAX_BACKOFF.as_secs()
        );
    }

    /// `key`'s child started properly: its failures are forgotten.
    fn note_success(&self, key: &str) {
        self.backoffs().remove(key);
    }

    fn stdio(&self) -> bool {
        self.spawn.transport == SpawnTransport::Stdio
    }

    fn client_for(
        &self,
        scope: &str,
        user: &str,
        port: u16,
    ) -> Result<Arc<UpstreamClient>, ConfigError> {
        let vars = Vars { scope, user, port };
        let listener = ListenerConfig {
            upstream: fill(&self.listener.upstream, &vars),
            ..self.listener.clone()
        };
        let target = UpstreamTarget::new(&self.key, &listener)?;
        Ok(Arc::new(UpstreamClient::new(Arc::new(target))))
    }

    fn launch(&self, vars: &Vars) -> Launch {
        let cwd = (!self.spawn.cwd.is_empty()).then(|| PathBuf::from(fill(&self.spawn.cwd, vars)));
        Launch {
            program: fill(&self.spawn.command, vars),
            args: self.spawn.args.iter().map(|a| fill(a, vars)).collect(),
            env: child_env(&self.spawn.inherit_env, &self.spawn.env, vars, |name| {
                std::env::var(name).ok()
            }),
            cwd,
            stdio: self.stdio(),
        }
    }

    /// Starts `child`'s process and waits until it accepts connections;
    /// every request waiting on it learns the outcome.
    async fn bring_up(self: Arc<Self>, child: Arc<Child>, scope: &str, user: &str) {
        let vars = Vars {
            scope,
            user,
            port: child.port,
        };
        let launch = self.launch(&vars);
        let outcome = match self.run(launch).await {
            Ok(mut spawned) => {
                let pipes = (spawned.process.stdin.take(), spawned.process.stdout.take());
                self.watch(&child, spawned);
                match pipes {
                    (Some(stdin), Some(stdout)) => self.open_bridge(&child, stdin, stdout).await,
                    _ => self.await_port(&child).await,
                }
            }
            Err(e) => {
                tracing::error!(scope = %child.key, error = %e, "cannot start the MCP server");
                self.forget(&child);
                Err("failed")
            }
        };
        // Counted before the waiting requests are answered, so the count
        // already holds when they see the outcome.
        let result = outcome.err().unwrap_or("ok");
        METRICS.upstream_spawns.with_label_values(&[result]).inc();
        if result == "ok" {
            // A stdio child has started properly once it answers.
            if !self.stdio() {
                self.note_success(&child.key);
            }
            Child::set_phase(&mut child.phase(), Phase::Running);
            child.ready.send_replace(Readiness::Ready);
            // The waiter marks the exit before it reads the readiness: one
            // of the two sees the other and counts a stdio child that ended
            // before it answered.
            if *child.phase() == Phase::Exited && child.bridge.get().is_some_and(|b| !b.answered())
            {
                self.note_failure(&child);
            }
            if self.closing.load(Ordering::Acquire) {
                self.runtime.spawn(stop(child.clone(), self.grace()));
            }
            return;
        }
        child.ready.send_replace(Readiness::Failed);
        self.note_failure(&child);
        if result == "timeout" {
            tracing::warn!(scope = %child.key, "the MCP server did not accept connections in time (mcp.spawn.ready_timeout_secs); stopping it");
        }
        self.table_drop_current(&child);
        stop(child, self.grace()).await;
    }

    /// Hands `launch` to the spawner thread.
    async fn run(&self, launch: Launch) -> std::io::Result<Spawned> {
        if let Some(cwd) = &launch.cwd {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(cwd)?;
        }
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { launch, reply })
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        answer
            .await
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }

    /// Serves a stdio child on its port: a thread writes its stdin, one
    /// reads its stdout into the bridge, and the bridge listens.
    async fn open_bridge(
        self: &Arc<Self>,
        child: &Arc<Child>,
        stdin: std::process::ChildStdin,
        stdout: std::process::ChildStdout,
    ) -> Result<(), &'static str> {
        let listener = match tokio::net::TcpListener::bind(("127.0.0.1", child.port)).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(scope = %child.key, port = child.port, error = %e, "cannot listen for a stdio MCP server");
                return Err("failed");
            }
        };
        let (lines, queue) = mpsc::channel();
        let (this, key) = (Arc::downgrade(self), child.key.clone());
        let answered = Box::new(move || {
            if let Some(this) = this.upgrade() {
                this.note_success(&key);
            }
        });
        let (this, silent_child) = (Arc::downgrade(self), Arc::downgrade(child));
        let silent = Box::new(move || {
            let (Some(this), Some(child)) = (this.upgrade(), silent_child.upgrade()) else {
                return;
            };
            tracing::warn!(scope = %child.key, "the MCP server did not answer its first request in time (mcp.spawn.ready_timeout_secs); stopping it");
            this.note_failure(&child);
            this.table_drop_current(&child);
            this.runtime.spawn(stop(child, this.grace()));
        });
        let hooks = stdio::Hooks {
            answered,
            silent,
            ready_timeout: Duration::from_secs(self.spawn.ready_timeout_secs),
        };
        let bridge = stdio::Bridge::new(&child.key, self.paths.clone(), lines, hooks);
        let _ = child.bridge.set(bridge.clone());
        let writer = std::thread::Builder::new()
            .name("memgate-child-in".into())
            .stack_size(SMALL_STACK)
            .spawn(move || stdio::write_stdin(stdin, queue));
        let reading = bridge.clone();
        let reader = std::thread::Builder::new()
            .name("memgate-child-out".into())
            .stack_size(SMALL_STACK)
            .spawn(move || stdio::read_stdout(stdout, &reading));
        if let Err(e) = writer.and(reader) {
            tracing::error!(scope = %child.key, error = %e, "cannot start the threads of a stdio MCP server");
            bridge.close();
            return Err("failed");
        }
        self.runtime.spawn(bridge.serve(listener));
        if *child.exited.borrow() {
            tracing::warn!(scope = %child.key, "the MCP server exited at once");
            return Err("failed");
        }
        Ok(())
    }

    /// Polls the child's port until it accepts a connection, the child
    /// exits, or `ready_timeout_secs` pass.
    async fn await_port(&self, child: &Child) -> Result<(), &'static str> {
        let deadline = Instant::now() + Duration::from_secs(self.spawn.ready_timeout_secs);
        let host = Upstream::parse(
            &self.key,
            &fill(
                &self.listener.upstream,
                &Vars {
                    scope: "",
                    user: "",
                    port: child.port,
                },
            ),
        )
        .map(|u| u.host)
        .unwrap_or_else(|_| "127.0.0.1".into());
        let mut pause = Duration::from_millis(5);
        loop {
            if *child.exited.borrow() {
                tracing::warn!(scope = %child.key, "the MCP server exited before accepting connections");
                return Err("failed");
            }
            if tokio::net::TcpStream::connect((host.as_str(), child.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err("timeout");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Starts the threads that copy the child's output to the log and reap it.
    fn watch(self: &Arc<Self>, child: &Arc<Child>, spawned: Spawned) {
        let Spawned { process, output } = spawned;
        let pid = Pid::from_raw(process.id() as i32);
        let _ = child.pid.set(pid);
        tracing::info!(scope = %child.key, pid = pid.as_raw(), port = child.port, "MCP server started");
        let key = child.key.clone();
        let logger = std::thread::Builder::new()
            .name("memgate-child-log".into())
            .stack_size(SMALL_STACK)
            .spawn(move || log_lines(output, &key, pid));
        if let Err(e) = logger {
            tracing::warn!(error = %e, "the MCP server's output will not be logged");
        }
        let (this, watched) = (self.clone(), child.clone());
        let spawned = std::thread::Builder::new()
            .name("memgate-child-wait".into())
            .stack_size(SMALL_STACK)
            .spawn(move || this.await_exit(&watched, process));
        if let Err(e) = spawned {
            // Without a waiter nobody would notice its end: stop it now.
            tracing::error!(error = %e, "cannot watch the MCP server; stopping it");
            let _ = killpg(pid, Signal::SIGKILL);
        }
    }

    /// Waits for the child's end, sweeps what is left of its process group,
    /// reaps it and forgets the sessions it handed out.
    fn await_exit(&self, child: &Arc<Child>, mut process: std::process::Child) {
        let Some(pid) = child.pid.get().copied() else {
            return;
        };
        // WNOWAIT leaves the zombie in place: its pid cannot be reused while
        // the group is signalled below.
        while let Err(nix::errno::Errno::EINTR) =
            waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
        {}
        let stopped = {
            let mut phase = child.phase();
            let _ = killpg(pid, Signal::SIGKILL);
            let stopped = *phase == Phase::Stopping;
            Child::set_phase(&mut phase, Phase::Exited);
            stopped
        };
        let status = process.wait();
        tracing::info!(scope = %child.key, pid = pid.as_raw(), status = ?status.ok(), "MCP server exited");
        if let Some(bridge) = child.bridge.get() {
            bridge.close();
            // A stdio child that ended by itself before it ever answered
            // did not start properly.
            if !stopped && !bridge.answered() && *child.ready.borrow() == Readiness::Ready {
                self.note_failure(child);
            }
        }
        self.forget(child);
        let sessions =
            std::mem::take(&mut *child.sessions.lock().unwrap_or_else(|e| e.into_inner()));
        if !sessions.is_empty() {
            let bindings = self.sessions.clone();
            self.runtime.block_on(async move {
                for id in &sessions {
                    bindings.end(id).await;
                }
            });
        }
        child.exited.send_replace(true);
    }

    /// Takes `child` out of the tables (it is gone or going).
    fn forget(&self, child: &Arc<Child>) {
        let mut table = self.table();
        table.current.retain(|_, c| !Arc::ptr_eq(c, child));
        table.live.retain(|_, c| !Arc::ptr_eq(c, child));
        let mut phase = child.phase();
        if child.pid.get().is_none() {
            Child::set_phase(&mut phase, Phase::Exited);
        }
    }

    fn table_drop_current(&self, child: &Arc<Child>) {
        self.table().current.retain(|_, c| !Arc::ptr_eq(c, child));
    }

    /// Stops children unused for `idle_secs`.
    fn stop_idle(&self) {
        let idle_ms = self.spawn.idle_secs.saturating_mul(1000);
        let mut table = self.table();
        let usage = table.current.iter().map(|(k, c)| (k.clone(), c.usage()));
        for key in idle(usage, millis(self.epoch), idle_ms) {
            if let Some(child) = table.current.remove(&key) {
                tracing::info!(scope = %child.key, "stopping an idle MCP server (mcp.spawn.idle_secs)");
                self.runtime.spawn(stop(child, self.grace()));
            }
        }
    }

    /// Stops every child (memgate is stopping); no new one starts.
    pub async fn stop_all(&self) {
        self.closing.store(true, Ordering::Release);
        let children: Vec<Arc<Child>> = {
            let mut table = self.table();
            table.current.clear();
            table.live.values().cloned().collect()
        };
        if children.is_empty() {
            return;
        }
        tracing::info!(
            children = children.len(),
            "stopping the spawned MCP servers"
        );
        let mut stops = tokio::task::JoinSet::new();
        for child in children {
            stops.spawn_on(stop(child, self.grace()), &self.runtime);
        }
        while stops.join_next().await.is_some() {}
    }
}

/// SIGTERM to the child's group, SIGKILL after `grace`; returns once it is
/// reaped (or, for a child that never ran, at once).
async fn stop(child: Arc<Child>, grace: Duration) {
    {
        let mut phase = child.phase();
        if child.pid.get().is_none() {
            return;
        }
        child.signal(&phase, Signal::SIGTERM);
        Child::set_phase(&mut phase, Phase::Stopping);
    }
    let mut exited = child.exited.subscribe();
    if tokio::time::timeout(grace, exited.wait_for(|e| *e))
        .await
        .is_err()
    {
        tracing::warn!(scope = %child.key, "the MCP server ignored SIGTERM; killing it");
        child.signal(&child.phase(), Signal::SIGKILL);
        let _ = exited.wait_for(|e| *e).await;
    }
}

/// Runs the idle check until the supervisor is gone.
async fn reap_idle(supervisor: std::sync::Weak<Supervisor>) {
    let every = match supervisor.upgrade() {
        Some(s) => Duration::from_millis(s.spawn.idle_secs.saturating_mul(250).clamp(100, 5000)),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Some(supervisor) = supervisor.upgrade() else {
            return;
        };
        supervisor.stop_idle();
    }
}

/// A loopback port no live child uses, free when asked.
fn free_port(table: &Table) -> std::io::Result<u16> {
    for _ in 0..16 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if !table.live.values().any(|c| c.port == port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::other(
        "every port offered is in use by a child",
    ))
}

/// The spawner thread: forks every child, so that their parent-death
/// signal is tied to a thread that lives as long as memgate.
fn spawner(queue: mpsc::Receiver<Job>) {
    for job in queue {
        let spawned = spawn_child(job.launch);
        if let Err(Ok(mut orphan)) = job.reply.send(spawned) {
            // Nobody waits for it any more: it must not run untracked.
            let _ = orphan.process.kill();
            let _ = orphan.process.wait();
        }
    }
}

fn spawn_child(launch: Launch) -> std::io::Result<Spawned> {
    let (reader, writer) = std::io::pipe()?;
    let mut command = Command::new(&launch.program);
    command
        .args(&launch.args)
        .env_clear()
        .envs(&launch.env)
        .process_group(0);
    if launch.stdio {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(writer);
    } else {
        command
            .stdin(Stdio::null())
            .stdout(writer.try_clone()?)
            .stderr(writer);
    }
    if let Some(cwd) = &launch.cwd {
        command.current_dir(cwd);
    }
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // two system calls (prctl, getppid); it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // memgate may have died before the signal was asked for.
            if nix::unistd::getppid() != parent {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
    let process = command.spawn()?;
    Ok(Spawned {
        process,
        output: reader,
    })
}

/// Copies the child's output lines (stdout and stderr share one pipe; a
/// stdio child's stderr alone) to memgate's log.
fn log_lines(out: std::io::PipeReader, scope: &str, pid: Pid) {
    let reader = BufReader::new(out);
    for line in reader.split(b'\n') {
        let Ok(line) = line else {
            return;
        };
        let line = String::from_utf8_lossy(&line);
        tracing::info!(scope, pid = pid.as_raw(), "{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars<'static> {
        Vars {
            scope: "alice",
            user: "Bob Smith",
            port: 4100,
        }
    }

    #[test]
    fn env_values_get_the_scope_itself_in_one_pass() {
        let vars = Vars {
            scope: "project_api_0123456789ab",
            user: "Bob {port} {scope}",
            port: 4100,
        };
        assert_eq!(
            fill_env("{scope}|{user}|{port}", &vars),
            "project_api_0123456789ab|Bob {port} {scope}|4100"
        );
        assert_eq!(fill_env("plain é", &vars), "plain é");
        assert_ne!(fill("{scope}", &vars), fill_env("{scope}", &vars));
    }

    #[test]
    fn templates_take_labels_and_the_port() {
        assert_eq!(
            fill("--user={scope} --port {port} {user}", &vars()),
            format!("--user=alice --port 4100 {}", host_label("Bob Smith"))
        );
        let sneaky = Vars {
            scope: "{port}/../x",
            user: "u",
            port: 1,
        };
        let filled = fill("/srv/{scope}", &sneaky);
        assert!(!filled.contains(".."), "{filled}");
        assert!(filled.starts_with("/srv/x-"), "{filled}");
    }

    #[test]
    fn the_child_environment_holds_only_what_is_named() {
        let outside: BTreeMap<&str, &str> = [
            ("PATH", "/bin"),
            ("HOME", "/root"),
            ("TZ", "UTC"),
            ("SECRET", "s3cr3t"),
            ("MEM0_API_KEY", "k"),
        ]
        .into();
        let env: BTreeMap<String, String> = [
            ("MEM0_USER".to_string(), "{scope}".to_string()),
            ("PORT".to_string(), "{port}".to_string()),
            ("TZ".to_string(), "Europe/Paris".to_string()),
        ]
        .into();
        let got = child_env(
            &["MEM0_API_KEY".into(), "ABSENT".into()],
            &env,
            &vars(),
            |n| outside.get(n).map(|v| v.to_string()),
        );
        let want: BTreeMap<String, String> = [
            ("PATH", "/bin"),
            ("HOME", "/root"),
            ("TZ", "Europe/Paris"),
            ("MEM0_API_KEY", "k"),
            ("MEM0_USER", "alice"),
            ("PORT", "4100"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn failed_starts_wait_twice_as_long_each_time_up_to_a_minute() {
        let now = Instant::now();
        let mut backoff = None;
        let mut delays = Vec::new();
        for _ in 0..9 {
            let next = Backoff::after(backoff, now);
            delays.push(next.delay.as_secs());
            backoff = Some(next);
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        let one = Backoff::after(None, now);
        assert_eq!(one.remaining_secs(now), Some(1));
        assert_eq!(
            one.remaining_secs(now + Duration::from_millis(200)),
            Some(1)
        );
        assert_eq!(one.remaining_secs(now + Duration::from_secs(1)), None);
        let long = Backoff::after(Some(one), now);
        assert_eq!(
            long.remaining_secs(now + Duration::from_millis(500)),
            Some(2)
        );
    }

    fn usage(busy: usize, last_used: u64, running: bool) -> Usage {
        Usage {
            busy,
            last_used,
            running,
        }
    }

    #[test]
    fn the_least_recently_used_idle_child_makes_room() {
        let children = [
            ("busy-old", usage(1, 10, true)),
            ("idle-mid", usage(0, 50, true)),
            ("starting", usage(0, 5, false)),
            ("idle-new", usage(0, 90, true)),
        ];
        assert_eq!(least_recently_used(children.into_iter()), Some("idle-mid"));
        let all_busy = [("a", usage(1, 1, true)), ("b", usage(2, 2, true))];
        assert_eq!(least_recently_used(all_busy.into_iter()), None);
        assert_eq!(
            idle(children.into_iter(), 100, 40),
            vec!["idle-mid"],
            "only unused children past the idle time"
        );
    }
}
