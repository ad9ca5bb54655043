//! Child processes: forking them on the spawner thread, waiting until they
//! serve, copying their output to the log, reaping and stopping them.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use super::command::Launch;
use super::listening::group_listens_on;
use super::{Child, Phase, Readiness, SMALL_STACK, Supervisor, stdio};

pub(super) struct Job {
    launch: Launch,
    reply: oneshot::Sender<std::io::Result<Spawned>>,
}

/// A started process and the read end of its output pipe (a stdio child's
/// stdin and stdout are in `process`).
pub(super) struct Spawned {
    pub(super) process: std::process::Child,
    output: std::io::PipeReader,
}

impl Supervisor {
    /// Hands `launch` to the spawner thread.
    pub(super) async fn run(&self, launch: Launch) -> std::io::Result<Spawned> {
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
    pub(super) async fn open_bridge(
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
        let bridge = stdio::Bridge::new(
            &child.key,
            self.paths.clone(),
            lines,
            hooks,
            child.bridge_secret.clone(),
        );
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

    /// Polls until the child (or a process it forked into its group)
    /// listens on its port, the child exits, or `ready_timeout_secs` pass.
    /// The socket's owner is checked, not only that the port answers: a port
    /// held by another process must never receive the scope's requests.
    pub(super) async fn await_port(&self, child: &Child) -> Result<(), &'static str> {
        let deadline = Instant::now() + Duration::from_secs(self.spawn.ready_timeout_secs);
        let Some(pgid) = child.pid.get().map(|p| p.as_raw()) else {
            return Err("failed");
        };
        let mut pause = Duration::from_millis(5);
        let mut squatted = false;
        loop {
            if *child.exited.borrow() {
                tracing::warn!(scope = %child.key, "the MCP server exited before accepting connections");
                return Err("failed");
            }
            let port = child.port;
            let (ours, answers) = tokio::task::spawn_blocking(move || {
                let ours = group_listens_on(pgid, port);
                (
                    ours,
                    ours || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
                )
            })
            .await
            .unwrap_or((false, false));
            if ours {
                return Ok(());
            }
            if answers && !squatted {
                squatted = true;
                tracing::error!(scope = %child.key, port, "another process listens on the port given to the MCP server; its requests will not go there");
            }
            if Instant::now() >= deadline {
                return Err("timeout");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Starts the threads that copy the child's output to the log and reap it.
    pub(super) fn watch(self: &Arc<Self>, child: &Arc<Child>, spawned: Spawned) {
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
}

/// SIGTERM to the child's group, SIGKILL after `grace`; returns once it is
/// reaped (or, for a child that never ran, at once).
pub(super) async fn stop(child: Arc<Child>, grace: Duration) {
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

/// The spawner thread: forks every child, so that their parent-death
/// signal is tied to a thread that lives as long as memgate.
pub(super) fn spawner(queue: mpsc::Receiver<Job>) {
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
