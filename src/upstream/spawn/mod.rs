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

mod backoff;
mod choice;
mod command;
mod listening;
mod process;
mod stdio;
#[cfg(test)]
mod tests;

pub use backoff::Backoff;
pub use choice::{Usage, idle, least_recently_used};
pub use command::{Vars, child_env, fill, fill_env};
pub use stdio::BridgePaths;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

use super::exchange::UpstreamClient;
use super::target::UpstreamTarget;
use crate::config::{ConfigError, ListenerConfig, SpawnConfig, SpawnTransport};
use crate::metrics::METRICS;
use crate::policy::upstream_name::{USER_PLACEHOLDER, host_label};
use crate::sessions::SessionBindings;
use process::{Job, spawner, stop};

/// Seconds a client is told to wait when no child can serve it now.
const RETRY_AFTER_SECS: u64 = 2;
/// Sessions remembered per child, so a long-lived child's list stays
/// bounded; an older one left bound is unknown to the next child, which
/// refuses it itself.
const MAX_NOTED_SESSIONS: usize = 4096;
/// Stack of the waiter and output threads: they only wait and copy lines.
const SMALL_STACK: usize = 128 * 1024;

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
    /// What the bridge requires in [`stdio::SECRET_HEADER`] (empty for an
    /// http child).
    bridge_secret: String,
    /// Its failure to start was counted (once per child).
    failed: AtomicBool,
    /// Session ids this child handed out, the latest [`MAX_NOTED_SESSIONS`]:
    /// they die with it.
    sessions: Mutex<std::collections::VecDeque<String>>,
}

impl Child {
    fn new(
        key: String,
        port: u16,
        client: Arc<UpstreamClient>,
        bridge_secret: String,
        now: u64,
    ) -> Child {
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
            bridge_secret,
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
        let secret = match self.stdio() {
            true => crate::token::generate().map_err(|e| {
                tracing::error!(error = %e, "no randomness for a stdio MCP server's bridge");
                NotReady::new("This scope's MCP server cannot be started; retry shortly")
            })?,
            false => String::new(),
        };
        let client = self.client_for(scope, user, port, &secret).map_err(|e| {
            tracing::error!(error = %e, "a spawned MCP server's address is invalid");
            NotReady::new("This scope's MCP server cannot be addressed")
        })?;
        let child = Arc::new(Child::new(
            key.clone(),
            port,
            client,
            secret,
            millis(self.epoch),
        ));
        table.next_id += 1;
        let id = table.next_id;
        table.live.insert(id, child.clone());
        table.current.insert(key, child.clone());
        Ok((ChildLease::new(child, self.epoch), true))
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(self.spawn.stop_grace_secs)
    }

    fn stdio(&self) -> bool {
        self.spawn.transport == SpawnTransport::Stdio
    }

    /// The client for a child on `port`; a stdio child's bridge is sent
    /// `bridge_secret` with every request (empty for an http child).
    fn client_for(
        &self,
        scope: &str,
        user: &str,
        port: u16,
        bridge_secret: &str,
    ) -> Result<Arc<UpstreamClient>, ConfigError> {
        let vars = Vars { scope, user, port };
        let listener = ListenerConfig {
            upstream: fill(&self.listener.upstream, &vars),
            ..self.listener.clone()
        };
        let mut target = UpstreamTarget::new(&self.key, &listener)?;
        if !bridge_secret.is_empty()
            && let Ok(value) = http::HeaderValue::from_str(bridge_secret)
        {
            target.add_header(http::HeaderName::from_static(stdio::SECRET_HEADER), value);
        }
        Ok(Arc::new(UpstreamClient::new(Arc::new(target))))
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
