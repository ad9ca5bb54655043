//! Refusals on the MCP listener: what the gate audits, and how a refused
//! request is answered (in the POST's answer, or on a legacy session's stream).

use super::*;
use crate::policy::deny::Deny;

/// A refused JSON-RPC request, for the audit trail.
pub(super) fn call_refusal(deny: McpDeny, why: RefusedFor) -> Refusal {
    Refusal {
        mcp_method: deny.method,
        tool: deny.tool,
        ..Refusal::new(Deny::new(deny.status, deny.message), why)
    }
}

/// A refusal owed on a legacy session's stream: the id of the refused
/// request and the JSON-RPC error to send as its answer.
pub(super) struct PendingRefusal {
    pub(super) id: Value,
    pub(super) error: Vec<u8>,
}

impl McpFlow {
    pub(super) async fn refuse_session(
        &self,
        session: &mut Session,
        why: &str,
    ) -> Result<McpHandled> {
        let message = "Session not found";
        refuse(session, 404, message, &Value::Null, &[]).await?;
        Ok(McpHandled::Responded(Some(Refusal::session(404, why))))
    }

    /// Answers a refused JSON-RPC request: on a legacy session's stream when
    /// that is where its answer is awaited, else in the POST's answer.
    pub(super) async fn refuse_request(
        &self,
        session: &mut Session,
        identity: &Identity,
        scope: &str,
        legacy_session: Option<String>,
        deny: McpDeny,
        why: RefusedFor,
    ) -> Result<McpHandled> {
        if why == RefusedFor::Ownership {
            METRICS
                .ownership_denials
                .with_label_values(&[crate::metrics::MCP_OWNERSHIP_ROUTE])
                .inc();
        }
        let refused_id = match serde_json::from_slice::<Value>(&deny.body) {
            Ok(Value::Object(error)) => error.get("id").cloned(),
            _ => None,
        };
        match (legacy_session, refused_id) {
            (Some(key), Some(id)) if matches!(deny.status, 403 | 404) => {
                self.refuse_on_stream(session, identity, scope, key, id, deny, why)
                    .await
            }
            _ => self.refuse_call(session, deny, why).await,
        }
    }

    /// A legacy client reads every answer from its session's stream, and
    /// waits there for one whatever the POST's answer says. The upstream is
    /// sent a `ping` with the refused request's id in its place (every MCP
    /// server answers one and it changes nothing), and its answer on the
    /// stream is replaced by the refusal. A refused notification (no id) is
    /// accepted and dropped: it is owed no answer.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn refuse_on_stream(
        &self,
        session: &mut Session,
        identity: &Identity,
        scope: &str,
        session_key: String,
        id: Value,
        deny: McpDeny,
        why: RefusedFor,
    ) -> Result<McpHandled> {
        if id.is_null() {
            let mut header = ResponseHeader::build(202, Some(2))?;
            header.insert_header("content-length", "0")?;
            headers::secure_response(&mut header)?;
            session.write_response_header(Box::new(header)).await?;
            session.write_response_body(Bytes::new(), true).await?;
        } else {
            let waiting = self
                .pending_refusals
                .get_with(session_key, || Arc::new(std::sync::Mutex::new(Vec::new())));
            if let Ok(mut waiting) = waiting.lock() {
                // Bounded: a client that never reads its stream cannot grow it.
                if waiting.len() >= 64 {
                    waiting.remove(0);
                }
                waiting.push(PendingRefusal {
                    id: id.clone(),
                    error: deny.body.clone(),
                });
            }
            let ping = json!({"jsonrpc": "2.0", "id": id, "method": "ping"});
            let stand_in = McpForward {
                body: Some(ping.to_string().into_bytes()),
                ..McpForward::default()
            };
            self.forward(
                session,
                identity,
                scope,
                stand_in,
                Vec::new(),
                &mut Vec::new(),
            )
            .await?;
        }
        Ok(McpHandled::Responded(Some(call_refusal(deny, why))))
    }

    /// Answers a refused JSON-RPC request. A policy refusal (403, or 404 for
    /// a memory that does not exist) is an answer to that request, in a 200:
    /// MCP clients end their whole session on an HTTP error, and the caller
    /// is authenticated. An unreadable body keeps its HTTP status.
    pub(super) async fn refuse_call(
        &self,
        session: &mut Session,
        mut deny: McpDeny,
        why: RefusedFor,
    ) -> Result<McpHandled> {
        let cors = self.cors_origin(session.req_header());
        let in_band = matches!(deny.status, 403 | 404);
        let (status, content_type, body) =
            if in_band && wants_event_stream_only(session.req_header()) {
                let mut event = b"event: message\ndata: ".to_vec();
                event.extend_from_slice(&deny.body);
                event.extend_from_slice(b"\n\n");
                (200, "text/event-stream", event)
            } else if in_band {
                (200, "application/json", std::mem::take(&mut deny.body))
            } else {
                (
                    deny.status,
                    "application/json",
                    std::mem::take(&mut deny.body),
                )
            };
        let mut header = ResponseHeader::build(status, Some(4))?;
        header.insert_header("content-type", content_type)?;
        header.insert_header("content-length", body.len().to_string())?;
        header.insert_header("cache-control", "no-store")?;
        add_cors(&mut header, cors.as_deref())?;
        headers::secure_response(&mut header)?;
        session.write_response_header(Box::new(header)).await?;
        session.write_response_body(Bytes::from(body), true).await?;
        Ok(McpHandled::Responded(Some(call_refusal(deny, why))))
    }
}

/// The refusal owed for the request `event` answers, if one is waiting: the
/// event must be a result (the stand-in ping's) for a waiting id.
pub(super) fn take_refusal(waiting: &mut Vec<PendingRefusal>, event: &SseEvent) -> Option<String> {
    if waiting.is_empty() {
        return None;
    }
    let answer: Value = serde_json::from_str(event.data.as_deref()?).ok()?;
    let answer = answer.as_object()?;
    if !answer.contains_key("result") {
        return None;
    }
    let at = waiting
        .iter()
        .position(|pending| Some(&pending.id) == answer.get("id"))?;
    String::from_utf8(waiting.remove(at).error).ok()
}

/// A JSON-RPC error response.
pub(super) async fn refuse(
    session: &mut Session,
    status: u16,
    message: &str,
    id: &Value,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let body =
        crate::proxy::errors::error_body(crate::listener::Listener::Mcp, status, message, id);
    crate::proxy::errors::respond_json(session, status, body, extra).await
}
