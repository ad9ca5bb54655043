//! `transport = "stdio"`: a child that speaks MCP as newline-delimited
//! JSON-RPC on its stdin and stdout, served on a loopback port as a
//! Streamable HTTP (and legacy SSE) MCP server would serve it. The proxy
//! reaches this bridge exactly as it reaches an `http` child, so policy,
//! session binding, leases, idle stops and crash handling stay the same.
//!
//! All sessions of the scope share the one child. Request ids (and progress
//! tokens) are rewritten to bridge-unique numbers on the way in and restored
//! on the way out, so two sessions that both send id 1 each get their own
//! answer. The child is initialized once: the first `initialize` goes to it
//! and its result is remembered; later sessions get that result without the
//! child seeing a second `initialize` or `notifications/initialized`.
//!
//! Messages the child starts (notifications, requests) carry no session:
//! a progress notification goes with the request that named its token;
//! anything else goes with the one request in flight when there is exactly
//! one, else to every open event stream of the scope (all its sessions see
//! the one process's data anyway).

mod http;
mod pipes;
mod routing;
#[cfg(test)]
mod tests;

pub use pipes::{read_stdout, write_stdin};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::watch;

use routing::State;

/// Longest line read from a child's stdout; a longer one is dropped
/// without being held in memory.
pub const MAX_LINE_BYTES: usize = 16 << 20;
/// JSON-RPC "internal error": the child is gone or cannot be written to.
const CHILD_GONE: i64 = -32603;

/// Where the proxy sends legacy SSE clients: the endpoint event names
/// `messages` (the `mcp.messages_path` clients are allowed to post to).
#[derive(Clone, Debug)]
pub struct BridgePaths {
    pub sse: String,
    pub messages: String,
}

impl Default for BridgePaths {
    fn default() -> Self {
        BridgePaths {
            sse: "/sse".into(),
            messages: "/messages/".into(),
        }
    }
}

/// One child's bridge; lives as long as the child.
/// The header memgate's own requests to a bridge carry its secret in: the
/// bridge listens on loopback, where any local program could otherwise talk
/// to a user's server.
pub const SECRET_HEADER: &str = "x-memgate-bridge";

pub struct Bridge {
    scope: String,
    /// Required in [`SECRET_HEADER`] on every request.
    secret: String,
    paths: BridgePaths,
    to_child: Mutex<Option<std::sync::mpsc::Sender<Vec<u8>>>>,
    state: Mutex<State>,
    /// The child's answer to the first `initialize`, once it succeeded.
    initialized: tokio::sync::Mutex<Option<Value>>,
    initialized_sent: AtomicBool,
    next_id: AtomicU64,
    /// Set once the child wrote a JSON-RPC message: it started properly.
    answered: AtomicBool,
    hooks: Hooks,
    closed: watch::Sender<bool>,
}

/// What a bridge tells whoever runs its child.
pub struct Hooks {
    /// The child wrote its first JSON-RPC message: it started properly.
    pub answered: Box<dyn Fn() + Send + Sync>,
    /// The child, silent so far, did not answer its first `initialize`
    /// within `ready_timeout`: it never got ready.
    pub silent: Box<dyn Fn() + Send + Sync>,
    pub ready_timeout: std::time::Duration,
}

impl Bridge {
    /// A bridge to a child reached through `to_child` (lines, each ending in
    /// a newline, for the stdin writer).
    pub fn new(
        scope: &str,
        paths: BridgePaths,
        to_child: std::sync::mpsc::Sender<Vec<u8>>,
        hooks: Hooks,
        secret: String,
    ) -> Arc<Bridge> {
        Arc::new(Bridge {
            scope: scope.to_owned(),
            secret,
            paths,
            to_child: Mutex::new(Some(to_child)),
            state: Mutex::new(State::default()),
            initialized: tokio::sync::Mutex::new(None),
            initialized_sent: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            answered: AtomicBool::new(false),
            hooks,
            closed: watch::Sender::new(false),
        })
    }

    /// Whether the child ever wrote a JSON-RPC message.
    pub fn answered(&self) -> bool {
        self.answered.load(Ordering::Acquire)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one message for the child's stdin; false when it cannot be
    /// written any more.
    fn send_to_child(&self, message: &Value) -> bool {
        let mut line = serde_json::to_vec(message).unwrap_or_default();
        line.push(b'\n');
        self.to_child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|tx| tx.send(line).is_ok())
    }
}
