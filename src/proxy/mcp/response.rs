//! Responses streamed from the MCP upstream: learning legacy session ids,
//! trimming tool lists, and answering refusals owed on a session's stream.

use super::*;

/// Per-request state for responses streamed through pingora.
pub struct StreamWatch {
    /// SSE responses are parsed to learn legacy session ids and trim tool lists.
    pub(super) rewriter: Option<SseRewriter>,
    pub(super) user_id: String,
    pub(super) identity: Identity,
    /// The session this stream carries (its key, [`session_key`]): named by
    /// the request, or for a legacy stream learnt from its `endpoint` event.
    /// Its binding lives as long as the stream.
    pub(super) stream_session: Option<String>,
    /// Whether `stream_session` came from a legacy `endpoint` event (whose
    /// session's `tools/list` answers come back on this stream).
    pub(super) legacy: bool,
    /// A DELETE of this session: forget the binding once the upstream agrees.
    pub(super) ending_session: Option<String>,
}

impl StreamWatch {
    /// Whether memgate rewrites the response body (an SSE stream it parses),
    /// so the upstream's length no longer holds.
    pub fn rewrites(&self) -> bool {
        self.rewriter.is_some()
    }
}

impl McpFlow {
    /// Response headers of a streamed request: CORS, and the end of a session.
    pub fn on_response_header(
        &self,
        watch: &mut StreamWatch,
        response: &mut Relayed,
        cors: Option<&str>,
    ) -> Result<()> {
        add_cors(response, cors)?;
        if !response.is_event_stream() {
            watch.rewriter = None;
        }
        if response.status().is_success()
            && let Some(id) = watch.ending_session.take()
        {
            let sessions = self.sessions.clone();
            tokio::spawn(async move { sessions.end(&id).await });
        }
        Ok(())
    }

    /// One chunk of a streamed response: learn the legacy session from its
    /// `endpoint` event, trim tool lists answered on a legacy stream.
    pub fn on_response_chunk(
        &self,
        watch: &mut StreamWatch,
        upstream: &UpstreamLease,
        body: &mut Option<Bytes>,
        end: bool,
    ) -> Result<()> {
        if let Some(id) = &watch.stream_session {
            self.sessions.keep_alive(id);
        }
        let Some(mut rewriter) = watch.rewriter.take() else {
            return Ok(());
        };
        let chunk = body.take().unwrap_or_default();
        let mut on_event = |event: &mut SseEvent| {
            if event.event.as_deref() == Some("endpoint")
                && watch.stream_session.is_none()
                && let Some(id) = event.data.as_deref().and_then(endpoint_session_id)
            {
                let id = session_key(&id, true);
                if self.sessions.bind_detached(&id, &watch.user_id) {
                    upstream.note_session(&id);
                    watch.stream_session = Some(id);
                    watch.legacy = true;
                } else {
                    tracing::warn!("a legacy SSE stream announced a session bound to another user");
                }
                return;
            }
            if !watch.legacy {
                return;
            }
            let Some(id) = &watch.stream_session else {
                return;
            };
            if let Some(waiting) = self.pending_refusals.get(id)
                && let Ok(mut waiting) = waiting.lock()
                && let Some(error) = take_refusal(&mut waiting, event)
            {
                event.data = Some(error);
                return;
            }
            if let Some(ids) = self.pending_lists.get(id) {
                self.policy.filter_sse_event(&watch.identity, event, &ids);
            }
        };
        let mut out = rewriter.feed(&chunk, &mut on_event).map_err(|e| {
            Error::explain(
                ErrorType::InternalError,
                format!("SSE from the MCP upstream: {e}"),
            )
        })?;
        if end {
            out.extend(rewriter.finish(&mut on_event).unwrap_or_default());
        }
        *body = (!out.is_empty()).then(|| Bytes::from(out));
        watch.rewriter = Some(rewriter);
        Ok(())
    }
}
