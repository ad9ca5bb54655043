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

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};

use crate::http1::body::{BodyReader, Step};
use crate::http1::chunked::{LAST_CHUNK, encode_chunk};
use crate::http1::head::take_request;
use crate::policy::mcp::{session_id_from_query, session_key};

/// Longest line read from a child's stdout; a longer one is dropped
/// without being held in memory.
pub const MAX_LINE_BYTES: usize = 16 << 20;
/// Largest request head and body the bridge reads (the proxy's limits are
/// lower; this only bounds a misbehaving peer).
const MAX_HEAD_BYTES: usize = 64 << 10;
const MAX_BODY_BYTES: usize = 16 << 20;
/// Events queued for one open stream; past this the stream's reader is too
/// slow and new events are dropped (with a log line).
const STREAM_QUEUE: usize = 1024;
/// Sessions one child serves at once (as many as the proxy remembers
/// for it).
const MAX_SESSIONS: usize = super::MAX_NOTED_SESSIONS;
/// How much of a non-JSON line the log shows.
const LOGGED_LINE_CHARS: usize = 200;
/// The head of an answer that is an event stream.
const EVENT_STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
    cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
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

/// What a request waiting on the child hears.
enum Heard {
    /// A message the child sent about this request before answering it.
    Related(Value),
    /// The answer (its id restored).
    Answer(Value),
}

/// Where a request's messages go.
enum Destination {
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

struct SessionState {
    legacy: bool,
    /// The session's open event stream, if any.
    stream: Option<mpsc::Sender<Bytes>>,
}

#[derive(Default)]
struct State {
    pending: HashMap<u64, Pending>,
    sessions: HashMap<String, SessionState>,
    /// Session ids, oldest first (some may have ended).
    opened: VecDeque<String>,
    closed: bool,
}

impl State {
    /// Adds a session; past [`MAX_SESSIONS`] the oldest ones without an
    /// open stream are forgotten (their requests then get 404).
    fn open(&mut self, id: String, session: SessionState) {
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

/// One child's bridge; lives as long as the child.
pub struct Bridge {
    scope: String,
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
    ) -> Arc<Bridge> {
        Arc::new(Bridge {
            scope: scope.to_owned(),
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

    /// Serves connections on `listener` until the child is gone.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut closed = self.closed.subscribe();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(self.clone().connection(stream));
                    }
                    Err(e) => {
                        tracing::debug!(scope = %self.scope, error = %e, "bridge accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                },
                _ = async { let _ = closed.wait_for(|c| *c).await; } => return,
            }
        }
    }

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
    fn forward_request(
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
    fn forward_other(&self, mut message: Value, session: &str) {
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
    fn abandon(&self, id: u64) {
        if self.state().pending.remove(&id).is_some() {
            self.send_to_child(
                &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": id, "reason": "the client left"}}),
            );
        }
    }

    /// A fresh session id: 32 hex digits, read the same way as a legacy
    /// session's UUID or a Streamable HTTP header.
    fn new_session(&self, legacy: bool, stream: Option<mpsc::Sender<Bytes>>) -> Option<String> {
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
    async fn initialize(&self, request: Value) -> Option<Value> {
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

    async fn connection(self: Arc<Self>, stream: tokio::net::TcpStream) {
        let (mut rd, mut wr) = stream.into_split();
        let mut buf = BytesMut::with_capacity(8 << 10);
        loop {
            let request = loop {
                match take_request(&mut buf) {
                    Ok(Some(request)) => break request,
                    Ok(None) if buf.len() <= MAX_HEAD_BYTES => {}
                    _ => {
                        let _ = respond(
                            &mut wr,
                            400,
                            &error_body(Value::Null, -32700, "Bad request"),
                            None,
                        )
                        .await;
                        return;
                    }
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            };
            let mut reader = BodyReader::of_request(request.framing);
            let mut body = BytesMut::new();
            loop {
                match reader.next(&mut buf) {
                    Ok(Step::Data(data)) if body.len() + data.len() <= MAX_BODY_BYTES => {
                        body.extend_from_slice(&data)
                    }
                    Ok(Step::End) => break,
                    Ok(Step::NeedMore) => match rd.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    },
                    _ => {
                        let _ = respond(
                            &mut wr,
                            400,
                            &error_body(Value::Null, -32700, "Bad request body"),
                            None,
                        )
                        .await;
                        return;
                    }
                }
            }
            let keep_alive = request.keep_alive && buf.is_empty();
            let kept = self
                .handle(request.parts, body.freeze(), &mut rd, &mut wr)
                .await;
            if !kept || !keep_alive {
                let _ = wr.shutdown().await;
                return;
            }
        }
    }

    /// Answers one request; false when the connection must end.
    async fn handle(
        &self,
        parts: http::request::Parts,
        body: Bytes,
        rd: &mut OwnedReadHalf,
        wr: &mut OwnedWriteHalf,
    ) -> bool {
        if self.state().closed {
            let _ = respond(
                wr,
                502,
                &error_body(Value::Null, CHILD_GONE, "The MCP server exited"),
                None,
            )
            .await;
            return false;
        }
        let header_session = parts
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Read as the proxy reads it when it checks the session's owner.
        let query_session = match session_id_from_query(parts.uri.query()) {
            Ok(id) => id.map(|id| session_key(&id, true)),
            Err(_) => {
                let _ = respond(wr, 400, b"Invalid session_id", None).await;
                return false;
            }
        };
        let result = match (parts.method.as_str(), query_session, header_session) {
            ("POST", Some(session), _) => self.post_legacy(&session, &body, wr).await,
            ("POST", None, session) => self.post(session, &body, rd, wr).await,
            ("GET", _, Some(session)) => self.stream(&session, rd, wr).await,
            ("GET", _, None) if parts.uri.path() == self.paths.sse => {
                self.legacy_stream(rd, wr).await
            }
            ("DELETE", _, Some(session)) => {
                let known = self.state().sessions.remove(&session).is_some();
                let status = if known { 200 } else { 404 };
                respond(wr, status, b"", None).await.map(|_| true)
            }
            ("GET" | "DELETE", _, None) => respond(
                wr,
                400,
                &error_body(Value::Null, -32600, "Mcp-Session-Id header required"),
                None,
            )
            .await
            .map(|_| true),
            _ => respond(wr, 405, b"", None).await.map(|_| true),
        };
        result.unwrap_or(false)
    }

    /// A Streamable HTTP POST: one message or a batch.
    async fn post(
        &self,
        session: Option<String>,
        body: &[u8],
        rd: &mut OwnedReadHalf,
        wr: &mut OwnedWriteHalf,
    ) -> std::io::Result<bool> {
        let Some(messages) = parse_messages(body) else {
            respond(
                wr,
                400,
                &error_body(Value::Null, -32700, "Parse error"),
                None,
            )
            .await?;
            return Ok(true);
        };
        if let [one] = messages.as_slice()
            && one.get("method").and_then(Value::as_str) == Some("initialize")
        {
            let Some(answer) = self.initialize(one.clone()).await else {
                let original = one.get("id").cloned().unwrap_or(Value::Null);
                respond(wr, 502, &to_bytes(&child_gone(original)), None).await?;
                return Ok(true);
            };
            let session = match answer.get("result") {
                Some(_) => self.new_session(false, None),
                None => None,
            };
            respond(wr, 200, &to_bytes(&answer), session.as_deref()).await?;
            return Ok(true);
        }
        let Some(session) = session else {
            respond(
                wr,
                400,
                &error_body(Value::Null, -32600, "Mcp-Session-Id header required"),
                None,
            )
            .await?;
            return Ok(true);
        };
        if !self.state().sessions.contains_key(&session) {
            respond(
                wr,
                404,
                &error_body(Value::Null, -32001, "Session not found"),
                None,
            )
            .await?;
            return Ok(true);
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut waiting = 0;
        let mut sent = Vec::new();
        let mut last_id = Value::Null;
        for message in messages {
            if message.get("method").is_some() && message.get("id").is_some() {
                waiting += 1;
                last_id = message["id"].clone();
                sent.extend(self.forward_request(message, &session, Destination::Post(tx.clone())));
            } else {
                self.forward_other(message, &session);
            }
        }
        drop(tx);
        if waiting == 0 {
            respond(wr, 202, b"", None).await?;
            return Ok(true);
        }
        let batch = body.trim_ascii_start().starts_with(b"[");
        // The id an error about the whole POST names: the request's own
        // when there is one.
        let failed_id = if batch { Value::Null } else { last_id };
        let mut answers = Vec::new();
        let mut streaming = false;
        let mut watch_client = true;
        let mut peek = [0u8; 1];
        while answers.len() < waiting {
            let heard = tokio::select! {
                heard = rx.recv() => heard,
                gone = rd.peek(&mut peek), if watch_client => {
                    if matches!(gone, Ok(0) | Err(_)) {
                        // The client left: its requests are abandoned.
                        for id in &sent {
                            self.abandon(*id);
                        }
                        return Ok(false);
                    }
                    watch_client = false;
                    continue;
                }
            };
            match heard {
                Some(Heard::Answer(answer)) if streaming => {
                    write_chunk(wr, &message_event(&answer)).await?;
                    answers.push(Value::Null);
                }
                Some(Heard::Answer(answer)) => answers.push(answer),
                Some(Heard::Related(message)) => {
                    if !streaming {
                        streaming = true;
                        wr.write_all(EVENT_STREAM_HEAD).await?;
                        for answer in answers.iter_mut() {
                            write_chunk(wr, &message_event(answer)).await?;
                            *answer = Value::Null;
                        }
                    }
                    write_chunk(wr, &message_event(&message)).await?;
                }
                None => {
                    // The child is gone: whatever was not answered fails.
                    let error = child_gone(failed_id);
                    if streaming {
                        write_chunk(wr, &message_event(&error)).await?;
                        wr.write_all(LAST_CHUNK).await?;
                    } else {
                        respond(wr, 502, &to_bytes(&error), None).await?;
                    }
                    return Ok(false);
                }
            }
        }
        if streaming {
            wr.write_all(LAST_CHUNK).await?;
        } else if batch {
            respond(wr, 200, &to_bytes(&Value::Array(answers)), None).await?;
        } else {
            let answer = answers.pop().unwrap_or(Value::Null);
            respond(wr, 200, &to_bytes(&answer), None).await?;
        }
        Ok(true)
    }

    /// A legacy POST: accepted at once, answered on the session's stream.
    async fn post_legacy(
        &self,
        session: &str,
        body: &[u8],
        wr: &mut OwnedWriteHalf,
    ) -> std::io::Result<bool> {
        let known = self.state().sessions.get(session).is_some_and(|s| s.legacy);
        if !known {
            respond(wr, 404, b"Could not find session", None).await?;
            return Ok(true);
        }
        let Some(messages) = parse_messages(body) else {
            respond(wr, 400, b"Could not parse message", None).await?;
            return Ok(true);
        };
        for message in messages {
            let is_request = message.get("method").is_some() && message.get("id").is_some();
            if is_request && message["method"] == "initialize" {
                let answer = self.initialize(message.clone()).await;
                let answer = answer.unwrap_or_else(|| child_gone(message["id"].clone()));
                let state = self.state();
                deliver(
                    &state,
                    &Destination::Stream(session.to_owned()),
                    Heard::Answer(answer),
                );
            } else if is_request {
                self.forward_request(message, session, Destination::Stream(session.to_owned()));
            } else {
                self.forward_other(message, session);
            }
        }
        respond(wr, 202, b"Accepted", None).await?;
        Ok(true)
    }

    /// `GET` with a session: that session's stream of messages the child
    /// starts.
    async fn stream(
        &self,
        session: &str,
        rd: &mut OwnedReadHalf,
        wr: &mut OwnedWriteHalf,
    ) -> std::io::Result<bool> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let refusal = {
            let mut state = self.state();
            match state.sessions.get_mut(session) {
                None => Some((404, -32001, "Session not found")),
                Some(s) if s.stream.as_ref().is_some_and(|s| !s.is_closed()) => {
                    Some((409, -32600, "Only one stream per session"))
                }
                Some(s) => {
                    s.stream = Some(tx);
                    None
                }
            }
        };
        if let Some((status, code, message)) = refusal {
            respond(wr, status, &error_body(Value::Null, code, message), None).await?;
            return Ok(true);
        }
        self.run_stream(None, rx, rd, wr).await?;
        Ok(false)
    }

    /// Legacy SSE: a new session whose stream carries every answer.
    async fn legacy_stream(
        &self,
        rd: &mut OwnedReadHalf,
        wr: &mut OwnedWriteHalf,
    ) -> std::io::Result<bool> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let Some(session) = self.new_session(true, Some(tx)) else {
            respond(
                wr,
                502,
                &error_body(Value::Null, CHILD_GONE, "The MCP server exited"),
                None,
            )
            .await?;
            return Ok(false);
        };
        let endpoint = format!(
            "event: endpoint\ndata: {}?session_id={session}\n\n",
            self.paths.messages
        );
        let result = self.run_stream(Some(endpoint), rx, rd, wr).await;
        self.state().sessions.remove(&session);
        result.map(|_| false)
    }

    /// Relays queued events until the client leaves or the child is gone.
    async fn run_stream(
        &self,
        first: Option<String>,
        mut rx: mpsc::Receiver<Bytes>,
        rd: &mut OwnedReadHalf,
        wr: &mut OwnedWriteHalf,
    ) -> std::io::Result<()> {
        wr.write_all(EVENT_STREAM_HEAD).await?;
        if let Some(first) = first {
            write_chunk(wr, first.as_bytes()).await?;
        } else {
            wr.flush().await?;
        }
        let mut peek = [0u8; 1];
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Some(event) => write_chunk(wr, &event).await?,
                    None => {
                        wr.write_all(LAST_CHUNK).await?;
                        return Ok(());
                    }
                },
                _ = rd.peek(&mut peek) => return Ok(()),
            }
        }
    }
}

/// Hands `heard` to its destination; a legacy session's stream gets it as
/// an event (related messages and answers alike).
fn deliver(state: &State, destination: &Destination, heard: Heard) {
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

fn child_gone(id: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id,
           "error": {"code": CHILD_GONE, "message": "The MCP server exited"}})
}

fn error_body(id: Value, code: i64, message: &str) -> Vec<u8> {
    to_bytes(&json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}))
}

fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// The messages in a POST body: one object or a non-empty batch of them.
fn parse_messages(body: &[u8]) -> Option<Vec<Value>> {
    match serde_json::from_slice::<Value>(body).ok()? {
        message @ Value::Object(_) => Some(vec![message]),
        Value::Array(batch) if !batch.is_empty() && batch.iter().all(Value::is_object) => {
            Some(batch)
        }
        _ => None,
    }
}

fn message_event(message: &Value) -> Bytes {
    let mut out = b"event: message\ndata: ".to_vec();
    serde_json::to_writer(&mut out, message).unwrap_or_default();
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

async fn write_chunk(wr: &mut OwnedWriteHalf, data: &[u8]) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(data.len() + 16);
    encode_chunk(data, &mut out);
    wr.write_all(&out).await?;
    wr.flush().await
}

async fn respond(
    wr: &mut OwnedWriteHalf,
    status: u16,
    body: &[u8],
    session: Option<&str>,
) -> std::io::Result<()> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        let kind = if body.starts_with(b"{") || body.starts_with(b"[") {
            "application/json"
        } else {
            "text/plain"
        };
        head.push_str(&format!("content-type: {kind}\r\n"));
    }
    if let Some(session) = session {
        head.push_str(&format!("mcp-session-id: {session}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
    wr.write_all(&out).await?;
    wr.flush().await
}

/// Reads the child's stdout line by line into `bridge` until it closes;
/// then the bridge closes. A line over [`MAX_LINE_BYTES`] is skipped as it
/// streams by.
pub fn read_stdout(stdout: impl std::io::Read, bridge: &Bridge) {
    let mut reader = BufReader::with_capacity(64 << 10, stdout);
    let mut line = Vec::new();
    let mut overlong = false;
    loop {
        let buf = match reader.fill_buf() {
            Ok([]) => break,
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let (piece, used, ends) = match memchr::memchr(b'\n', buf) {
            Some(at) => (&buf[..at], at + 1, true),
            None => (buf, buf.len(), false),
        };
        if !overlong {
            if line.len() + piece.len() > MAX_LINE_BYTES {
                overlong = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(piece);
            }
        }
        reader.consume(used);
        if ends {
            if overlong {
                bridge.overlong_line();
            } else {
                bridge.route_child_line(&line);
            }
            line.clear();
            overlong = false;
        }
    }
    bridge.close();
}

/// Writes queued lines to the child's stdin until either side is gone.
pub fn write_stdin(mut stdin: impl Write, lines: std::sync::mpsc::Receiver<Vec<u8>>) {
    for line in lines {
        if stdin.write_all(&line).and_then(|()| stdin.flush()).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge() -> (Arc<Bridge>, std::sync::mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (
            Bridge::new(
                "s",
                BridgePaths::default(),
                tx,
                Hooks {
                    answered: Box::new(|| {}),
                    silent: Box::new(|| {}),
                    ready_timeout: std::time::Duration::from_secs(1),
                },
            ),
            rx,
        )
    }

    fn sent(rx: &std::sync::mpsc::Receiver<Vec<u8>>) -> Value {
        serde_json::from_slice(&rx.try_recv().expect("a line for the child")).unwrap()
    }

    #[test]
    fn colliding_ids_of_two_sessions_get_their_own_answers() {
        let (bridge, lines) = bridge();
        let (a, mut a_rx) = mpsc::unbounded_channel();
        let (b, mut b_rx) = mpsc::unbounded_channel();
        let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
        assert!(
            bridge
                .forward_request(ping.clone(), "a", Destination::Post(a))
                .is_some()
        );
        assert!(
            bridge
                .forward_request(ping, "b", Destination::Post(b))
                .is_some()
        );
        let (first, second) = (sent(&lines), sent(&lines));
        assert_ne!(first["id"], second["id"]);
        for (sent, answer) in [(&second, "for b"), (&first, "for a")] {
            let line = json!({"jsonrpc": "2.0", "id": sent["id"], "result": {"who": answer}});
            bridge.route_child_line(line.to_string().as_bytes());
        }
        let Ok(Heard::Answer(got_a)) = a_rx.try_recv() else {
            panic!("a got nothing")
        };
        let Ok(Heard::Answer(got_b)) = b_rx.try_recv() else {
            panic!("b got nothing")
        };
        assert_eq!(
            got_a,
            json!({"jsonrpc": "2.0", "id": 1, "result": {"who": "for a"}})
        );
        assert_eq!(
            got_b,
            json!({"jsonrpc": "2.0", "id": 1, "result": {"who": "for b"}})
        );
    }

    #[test]
    fn progress_goes_with_its_request_and_the_token_is_restored() {
        let (bridge, lines) = bridge();
        let (a, mut a_rx) = mpsc::unbounded_channel();
        let (b, _b_rx) = mpsc::unbounded_channel();
        let call = |token: &str| {
            json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
            "params": {"name": "t", "_meta": {"progressToken": token}}})
        };
        bridge.forward_request(call("tok"), "a", Destination::Post(a));
        bridge.forward_request(call("tok"), "b", Destination::Post(b));
        let to_child = sent(&lines);
        let mine = to_child["params"]["_meta"]["progressToken"].clone();
        assert_ne!(mine, json!("tok"));
        let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": mine, "progress": 1}});
        bridge.route_child_line(progress.to_string().as_bytes());
        let Ok(Heard::Related(got)) = a_rx.try_recv() else {
            panic!("progress lost")
        };
        assert_eq!(got["params"]["progressToken"], "tok");
    }

    #[test]
    fn non_json_lines_are_dropped_and_the_close_fails_what_waits() {
        let (bridge, _lines) = bridge();
        bridge.route_child_line(b"Starting server...");
        assert!(!bridge.answered());
        let (a, mut a_rx) = mpsc::unbounded_channel();
        bridge.forward_request(
            json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
            "a",
            Destination::Post(a),
        );
        bridge.close();
        assert!(
            a_rx.try_recv().is_err(),
            "the waiting POST sees its channel closed"
        );
        assert!(
            bridge
                .forward_request(
                    json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}),
                    "a",
                    Destination::Stream("x".into())
                )
                .is_none()
        );
    }

    #[test]
    fn past_the_session_limit_the_oldest_without_a_stream_go() {
        let mut state = State::default();
        let (tx, _rx) = mpsc::channel(1);
        let with_stream = SessionState {
            legacy: true,
            stream: Some(tx),
        };
        state.open("streaming".into(), with_stream);
        for i in 0..MAX_SESSIONS {
            let plain = SessionState {
                legacy: false,
                stream: None,
            };
            state.open(format!("s{i}"), plain);
        }
        assert_eq!(state.sessions.len(), MAX_SESSIONS);
        assert!(state.sessions.contains_key("streaming"));
        assert!(!state.sessions.contains_key("s0"));
        assert!(
            state
                .sessions
                .contains_key(&format!("s{}", MAX_SESSIONS - 1))
        );
    }

    #[test]
    fn an_overlong_line_is_skipped_and_the_next_one_read() {
        let (bridge, _lines) = bridge();
        let (a, mut a_rx) = mpsc::unbounded_channel();
        bridge.forward_request(
            json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}),
            "a",
            Destination::Post(a),
        );
        let mut out = vec![b'x'; MAX_LINE_BYTES + 10];
        out.push(b'\n');
        out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n");
        read_stdout(&out[..], &bridge);
        let Ok(Heard::Answer(got)) = a_rx.try_recv() else {
            panic!("the answer after the long line was lost")
        };
        assert_eq!(got["id"], 9);
    }
}
