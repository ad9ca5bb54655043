//! The HTTP side of the bridge: Streamable HTTP and legacy SSE requests on
//! the loopback port, answered from the child.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use super::routing::{Destination, Heard, child_gone, deliver, message_event};
use super::{Bridge, CHILD_GONE};
use crate::http1::body::{BodyReader, Step};
use crate::http1::chunked::{LAST_CHUNK, encode_chunk};
use crate::http1::head::take_request;
use crate::policy::mcp::{session_id_from_query, session_key};

/// Largest request head and body the bridge reads (the proxy's limits are
/// lower; this only bounds a misbehaving peer).
const MAX_HEAD_BYTES: usize = 64 << 10;
const MAX_BODY_BYTES: usize = 16 << 20;
/// Events queued for one open stream; past this the stream's reader is too
/// slow and new events are dropped (with a log line).
const STREAM_QUEUE: usize = 1024;
/// The head of an answer that is an event stream.
const EVENT_STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
    cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";

impl Bridge {
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

    /// Whether the request carries the bridge's secret (compared in time
    /// that does not depend on where the first difference is).
    fn admits(&self, headers: &http::HeaderMap) -> bool {
        let mut values = headers.get_all(super::SECRET_HEADER).iter();
        let (Some(sent), None) = (values.next(), values.next()) else {
            return false;
        };
        let (sent, secret) = (sent.as_bytes(), self.secret.as_bytes());
        !secret.is_empty()
            && sent.len() == secret.len()
            && sent.iter().zip(secret).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
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
            if !self.admits(&request.parts.headers) {
                tracing::warn!(scope = %self.scope, "a request without memgate's secret reached a stdio bridge; refused");
                let _ = respond(
                    &mut wr,
                    403,
                    &error_body(Value::Null, -32600, "Forbidden"),
                    None,
                )
                .await;
                return;
            }
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
        let (tx, rx) = mpsc::unbounded_channel();
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
        let Some((mut answers, streaming)) = self
            .await_answers(rx, &sent, waiting, failed_id, rd, wr)
            .await?
        else {
            return Ok(false);
        };
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

    /// Collects the answers to a POST's `waiting` requests, switching the
    /// answer to an event stream once the child says more than the answers;
    /// returns them and whether it did, or none when the connection must end.
    async fn await_answers(
        &self,
        mut rx: mpsc::UnboundedReceiver<Heard>,
        sent: &[u64],
        waiting: usize,
        failed_id: Value,
        rd: &mut OwnedReadHalf,
        wr: &mut OwnedWriteHalf,
    ) -> std::io::Result<Option<(Vec<Value>, bool)>> {
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
                        for id in sent {
                            self.abandon(*id);
                        }
                        return Ok(None);
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
                    return Ok(None);
                }
            }
        }
        Ok(Some((answers, streaming)))
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
