//! The JSON-RPC side of the bridge: ids rewritten and restored, sessions,
//! and where each message from the child goes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Bridge, CHILD_GONE, MAX_LINE_BYTES};

/// Sessions one child serves at once (as many as the proxy remembers
/// for it).
pub(super) const MAX_SESSIONS: usize = super::super::MAX_NOTED_SESSIONS;
/// How much of a non-JSON line the log shows.
const LOGGED_LINE_CHARS: usize = 200;

/// What a request waiting on the child hears.
pub(super) enum Heard {
    /// A message the child sent about this request before answering it.
    Related(Value),
    /// The answer (its id restored).
    Answer(Value),
}

/// Where a request's messages go.
pub(super) enum Destination {
    /// The POST that carried it waits for them.
    Post(mpsc::UnboundedSender<Heard>),
    /// A legacy session: its event stream.
    Stream(String),
}

struct Pending {
    /// The id the client gave it.
    original: Value,
    session: String,
    destination: Destination,
    /// The progress token the client gave, and the one the child was sent.
    progress: Option<(Value, String)>,
}

pub(super) struct SessionState {
    pub(super) legacy: bool,
    /// The session's open event stream, if any.
    pub(super) stream: Option<mpsc::Sender<Bytes>>,
}

#[derive(Default)]
pub(super) struct State {
    pending: HashMap<u64, Pending>,
    pub(super) sessions: HashMap<String, SessionState>,
    /// Session ids, oldest first (some may have ended).
    opened: VecDeque<String>,
    pub(super) closed: bool,
}

impl State {
    /// Adds a session; past [`MAX_SESSIONS`] the oldest ones without an
    /// open stream are forgotten (their requests then get 404).
    pub(super) fn open(&mut self, id: String, session: SessionState) {
        self.sessions.insert(id.clone(), session);
        self.opened.push_back(id);
        let mut kept = VecDeque::new();
        while self.sessions.len() > MAX_SESSIONS
            && let Some(old) = self.opened.pop_front()
        {
            match self.sessions.get(&old) {
                Some(s) if s.stream.as_ref().is_some_and(|s| !s.is_closed()) => kept.push_back(old),
                _ => {
                    self.sessions.remove(&old);
                }
            }
        }
        while let Some(old) = kept.pop_back() {
            self.opened.push_front(old);
        }
        if self.opened.len() > 2 * MAX_SESSIONS {
            let sessions = &self.sessions;
            self.opened.retain(|id| sessions.contains_key(id));
        }
    }
}

impl Bridge {
    /// The child is gone: every waiting request gets an error, every
    /// session and stream ends, and the listener stops.
    pub fn close(&self) {
        let (pending, sessions) = {
            let mut state = self.state();
            if state.closed {
                return;
            }
            state.closed = true;
            (
                std::mem::take(&mut state.pending),
                std::mem::take(&mut state.sessions),
            )
        };
        self.to_child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        for (_, pending) in pending {
            // A POST learns it from its closed channel; a legacy session's
            // stream gets the error before it ends.
            if let Destination::Stream(id) = &pending.destination
                && let Some(stream) = sessions.get(id).and_then(|s| s.stream.as_ref())
            {
                let _ = stream.try_send(message_event(&child_gone(pending.original)));
            }
        }
        drop(sessions);
        self.closed.send_replace(true);
    }

    /// One line the child wrote on stdout.
    pub fn route_child_line(&self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let message = match serde_json::from_slice::<Value>(line) {
            Ok(message @ (Value::Object(_) | Value::Array(_))) => message,
            _ => {
                let text = String::from_utf8_lossy(line);
                let shown: String = text.chars().take(LOGGED_LINE_CHARS).collect();
                tracing::warn!(scope = %self.scope, line = %shown, bytes = line.len(), "the MCP server wrote a line on stdout that is not JSON-RPC; dropped");
                return;
            }
        };
        if !self.answered.swap(true, Ordering::AcqRel) {
            (self.hooks.answered)();
        }
        match message {
            Value::Array(batch) => batch.into_iter().for_each(|m| self.route_child_message(m)),
            message => self.route_child_message(message),
        }
    }

    /// A line longer than [`MAX_LINE_BYTES`] was dropped.
    pub fn overlong_line(&self) {
        tracing::warn!(scope = %self.scope, limit = MAX_LINE_BYTES, "the MCP server wrote a line on stdout over the limit; dropped");
    }

    fn route_child_message(&self, mut message: Value) {
        let is_answer = message.get("method").is_none()
            && (message.get("result").is_some() || message.get("error").is_some());
        let mut state = self.state();
        if is_answer {
            let Some(pending) = message
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|id| state.pending.remove(&id))
            else {
                tracing::debug!(scope = %self.scope, "an answer from the MCP server matches no request; dropped");
                return;
            };
            message["id"] = pending.original;
            deliver(&state, &pending.destination, Heard::Answer(message));
            return;
        }
        // A progress notification goes with the request that named its token.
        let token = (message.get("method").and_then(Value::as_str)
            == Some("notifications/progress"))
        .then(|| message.pointer("/params/progressToken").cloned())
        .flatten();
        if let Some(Value::String(token)) = token
            && let Some(pending) = state
                .pending
                .values()
                .find(|p| p.progress.as_ref().is_some_and(|(_, t)| *t == token))
        {
            if let Some((original, _)) = &pending.progress {
                message["params"]["progressToken"] = original.clone();
            }
            deliver(&state, &pending.destination, Heard::Related(message));
            return;
        }
        if state.pending.len() == 1
            && let Some(pending) = state.pending.values().next()
        {
            deliver(&state, &pending.destination, Heard::Related(message));
            return;
        }
        let event = message_event(&message);
        let mut delivered = false;
        for session in state.sessions.values() {
            if let Some(stream) = &session.stream {
                delivered |= stream.try_send(event.clone()).is_ok();
            }
        }
        if !delivered {
            tracing::debug!(scope = %self.scope, "a message from the MCP server has no open stream; dropped");
        }
    }

    /// Registers `request` (which has an id) and sends it to the child with
    /// a bridge-unique id, which it returns; `None` when the child cannot be
    /// written to (the destination has its error answer then).
    pub(super) fn forward_request(
        &self,
        mut request: Value,
        session: &str,
        destination: Destination,
    ) -> Option<u64> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let original = std::mem::replace(&mut request["id"], Value::from(id));
        let mut progress = None;
        if let Some(meta) = request
            .get_mut("params")
            .and_then(|p| p.get_mut("_meta"))
            .and_then(Value::as_object_mut)
            && let Some(token) = meta.get("progressToken").cloned()
        {
            let mine = format!("memgate-{id}");
            meta.insert("progressToken".into(), Value::from(mine.clone()));
            progress = Some((token, mine));
        }
        {
            let mut state = self.state();
            if state.closed {
                drop(state);
                deliver_gone(self, original, &destination);
                return None;
            }
            state.pending.insert(
                id,
                Pending {
                    original: original.clone(),
                    session: session.to_owned(),
                    destination,
                    progress,
                },
            );
        }
        if self.send_to_child(&request) {
            return Some(id);
        }
        if let Some(pending) = self.state().pending.remove(&id) {
            deliver_gone(self, pending.original, &pending.destination);
        }
        None
    }

    /// Forwards a notification or a response from a client; a later
    /// session's `notifications/initialized` stays here, and a cancellation
    /// names the request by the id the child knows.
    pub(super) fn forward_other(&self, mut message: Value, session: &str) {
        let method = message.get("method").and_then(Value::as_str);
        if method == Some("notifications/initialized")
            && self.initialized_sent.swap(true, Ordering::AcqRel)
        {
            return;
        }
        if method == Some("notifications/cancelled") {
            let named = message.pointer("/params/requestId").cloned();
            let state = self.state();
            let Some((id, _)) = state
                .pending
                .iter()
                .find(|(_, p)| p.session == session && Some(&p.original) == named.as_ref())
            else {
                return;
            };
            message["params"]["requestId"] = Value::from(*id);
        }
        self.send_to_child(&message);
    }

    /// The request `id` was given up by its client: forgotten, and the
    /// child is told.
    pub(super) fn abandon(&self, id: u64) {
        if self.state().pending.remove(&id).is_some() {
            self.send_to_child(
                &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": id, "reason": "the client left"}}),
            );
        }
    }

    /// A fresh session id: 32 hex digits, read the same way as a legacy
    /// session's UUID or a Streamable HTTP header.
    pub(super) fn new_session(
        &self,
        legacy: bool,
        stream: Option<mpsc::Sender<Bytes>>,
    ) -> Option<String> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).ok()?;
        let id = hex::encode(bytes);
        let mut state = self.state();
        if state.closed {
            return None;
        }
        state.open(id.clone(), SessionState { legacy, stream });
        Some(id)
    }

    /// The answer to an `initialize`: the child's own to the first that
    /// succeeds, its remembered result (with this request's id) to later ones.
    pub(super) async fn initialize(&self, request: Value) -> Option<Value> {
        let original = request.get("id").cloned().unwrap_or(Value::Null);
        let mut remembered = self.initialized.lock().await;
        if let Some(result) = remembered.as_ref() {
            return Some(json!({"jsonrpc": "2.0", "id": original, "result": result}));
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let id = self.forward_request(request, "", Destination::Post(tx));
        let deadline = tokio::time::Instant::now() + self.hooks.ready_timeout;
        loop {
            let heard = if self.answered() {
                rx.recv().await
            } else {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(heard) => heard,
                    Err(_) => {
                        if let Some(id) = id {
                            self.abandon(id);
                        }
                        (self.hooks.silent)();
                        return None;
                    }
                }
            };
            match heard {
                Some(Heard::Answer(answer)) => {
                    if let Some(result) = answer.get("result") {
                        *remembered = Some(result.clone());
                    }
                    return Some(answer);
                }
                Some(Heard::Related(_)) => {}
                None => return None,
            }
        }
    }
}

/// Hands `heard` to its destination; a legacy session's stream gets it as
/// an event (related messages and answers alike).
pub(super) fn deliver(state: &State, destination: &Destination, heard: Heard) {
    match destination {
        Destination::Post(tx) => {
            let _ = tx.send(heard);
        }
        Destination::Stream(session) => {
            let message = match heard {
                Heard::Related(m) | Heard::Answer(m) => m,
            };
            let stream = state.sessions.get(session).and_then(|s| s.stream.as_ref());
            if stream.is_none_or(|s| s.try_send(message_event(&message)).is_err()) {
                tracing::warn!(
                    "a legacy SSE session's stream is gone or full; a message was dropped"
                );
            }
        }
    }
}

fn deliver_gone(bridge: &Bridge, original: Value, destination: &Destination) {
    let state = bridge.state();
    deliver(&state, destination, Heard::Answer(child_gone(original)));
}

pub(super) fn child_gone(id: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id,
           "error": {"code": CHILD_GONE, "message": "The MCP server exited"}})
}

pub(super) fn message_event(message: &Value) -> Bytes {
    let mut out = b"event: message\ndata: ".to_vec();
    serde_json::to_writer(&mut out, message).unwrap_or_default();
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}
