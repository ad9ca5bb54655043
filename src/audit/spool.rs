//! The on-disk spool: audit events that could not reach the store, as JSON
//! lines in arrival order, replayed when the store is back. Bounded in size; a
//! full spool is reported loudly, never silently.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::AuditEvent;
use crate::metrics::METRICS;

const FILE_NAME: &str = "audit-spool.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("audit spool {path} is full ({max} bytes); events are being lost")]
    Full { path: String, max: u64 },
    #[error("audit spool {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

struct State {
    events: u64,
    bytes: u64,
}

pub struct Spool {
    path: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
}

impl Spool {
    /// Opens (creating the directory if needed) and counts what is already spooled.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let path = dir.join(FILE_NAME);
        let io = |source| SpoolError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let (events, bytes) = match File::open(&path) {
            Ok(file) => {
                let bytes = file.metadata().map_err(io)?.len();
                let lines = BufReader::new(file).lines().map_while(Result::ok).count();
                (lines as u64, bytes)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, 0),
            Err(e) => return Err(io(e)),
        };
        METRICS.audit_spool_depth.set(events as i64);
        Ok(Spool {
            path,
            max_bytes,
            state: Mutex::new(State { events, bytes }),
        })
    }

    fn io(&self, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn depth(&self) -> u64 {
        self.lock().events
    }

    /// Appends events in order and syncs them to disk.
    pub fn append(&self, events: &[AuditEvent]) -> Result<(), SpoolError> {
        let mut text = String::new();
        for event in events {
            match serde_json::to_string(event) {
                Ok(line) => {
                    text.push_str(&line);
                    text.push('\n');
                }
                Err(e) => tracing::error!(error = %e, "cannot serialise an audit event"),
            }
        }
        let mut state = self.lock();
        if state.bytes + text.len() as u64 > self.max_bytes {
            return Err(SpoolError::Full {
                path: self.path.display().to_string(),
                max: self.max_bytes,
            });
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        file.write_all(text.as_bytes()).map_err(|e| self.io(e))?;
        file.sync_data().map_err(|e| self.io(e))?;
        state.events += events.len() as u64;
        state.bytes += text.len() as u64;
        METRICS.audit_spool_depth.set(state.events as i64);
        Ok(())
    }

    /// Everything spooled, oldest first. Unreadable lines are logged and skipped.
    pub fn read_all(&self) -> Result<Vec<AuditEvent>, SpoolError> {
        let _state = self.lock();
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut events = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| self.io(e))?;
            match serde_json::from_str(&line) {
                Ok(event) => events.push(event),
                Err(e) => tracing::error!(error = %e, "skipping a corrupt line in the audit spool"),
            }
        }
        Ok(events)
    }

    /// Forgets the first `replayed` events (they are in the store now).
    pub fn drop_replayed(&self, replayed: usize) -> Result<(), SpoolError> {
        let mut state = self.lock();
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io(e)),
        };
        let rest: Vec<String> = BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .skip(replayed)
            .collect();
        if rest.is_empty() {
            std::fs::remove_file(&self.path).map_err(|e| self.io(e))?;
            state.events = 0;
            state.bytes = 0;
        } else {
            // Write the remainder beside the spool, then rename over it, so a
            // crash leaves either the old spool or the new one, never half.
            let tmp = self.path.with_extension("jsonl.tmp");
            let mut text = rest.join("\n");
            text.push('\n');
            std::fs::write(&tmp, &text).map_err(|e| self.io(e))?;
            std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
            state.events = rest.len() as u64;
            state.bytes = text.len() as u64;
        }
        METRICS.audit_spool_depth.set(state.events as i64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_replays_in_order_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let events: Vec<AuditEvent> = (0..5)
            .map(|i| {
                let mut e = AuditEvent::new("auth_failure", false);
                e.reason = Some(format!("r{i}"));
                e
            })
            .collect();
        spool.append(&events[..3]).unwrap();
        spool.append(&events[3..]).unwrap();
        assert_eq!(spool.depth(), 5);
        let reopened = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(reopened.depth(), 5);
        assert_eq!(reopened.read_all().unwrap(), events);
        reopened.drop_replayed(2).unwrap();
        assert_eq!(reopened.read_all().unwrap(), events[2..]);
        reopened.drop_replayed(3).unwrap();
        assert_eq!(reopened.depth(), 0);
        assert!(reopened.read_all().unwrap().is_empty());
    }

    #[test]
    fn a_full_spool_refuses_loudly() {
        let dir = tempfile::tempdir().unwrap();
        let e = AuditEvent::new("auth_failure", false);
        let line = serde_json::to_string(&e).unwrap().len() as u64 + 1;
        let spool = Spool::open(dir.path(), line * 2).unwrap();
        spool.append(std::slice::from_ref(&e)).unwrap();
        let err = spool.append(&[e.clone(), e]).unwrap_err();
        assert!(matches!(err, SpoolError::Full { .. }), "{err}");
    }
}
