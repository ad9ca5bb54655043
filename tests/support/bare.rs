//! A memgate on its built-in defaults (SQLite store in a temporary folder,
//! nothing else running), for tests that only ask its admin listener, and a
//! plain HTTP/1.0 GET, and the repository's files under a folder. Kept apart from the rest of `support` so that those
//! tests need neither PostgreSQL nor an async runtime.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_memgate");

/// A running `memgate serve`, killed when dropped.
pub struct Running {
    child: Child,
    pub admin: u16,
    dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `N` distinct free ports: all held until every one is chosen (a port
/// released at once may be handed out again by the next bind).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// `GET path` on 127.0.0.1:`port`: the status and the whole response.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    Some((status, response))
}

/// memgate with an empty config file and an empty environment, once its
/// `/health` answers. A port chosen free can be taken by a parallel test
/// before memgate binds it; that start is retried on fresh ports.
pub fn start_memgate() -> Running {
    for _ in 0..5 {
        match try_start_memgate() {
            Ok(running) => return running,
            Err(log) if log.contains("Address already in use") => continue,
            Err(log) => panic!("memgate did not come up: {log}"),
        }
    }
    panic!("memgate found no free ports in 5 tries")
}

fn try_start_memgate() -> Result<Running, String> {
    let dir = tempfile::tempdir().unwrap();
    let [admin, mcp, mem0] = free_ports::<3>();
    let listen = |port: u16| format!("127.0.0.1:{port}");
    std::fs::write(dir.path().join("none.toml"), "").unwrap();
    let log = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let child = Command::new(BIN)
        .env_clear()
        .env("MEMGATE_MCP__LISTEN", listen(mcp))
        .env("MEMGATE_MEM0__LISTEN", listen(mem0))
        .env("MEMGATE_ADMIN__LISTEN", listen(admin))
        .args(["--config", "none.toml", "serve"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut running = Running { child, admin, dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(admin, "/health").is_none() {
        let exited = running.child.try_wait().unwrap();
        if exited.is_some() || Instant::now() > deadline {
            let log = std::fs::read_to_string(running.dir.path().join("stderr")).unwrap();
            return Err(format!("({exited:?}) {log}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(running)
}

/// Every file under `dir`, in order.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}
