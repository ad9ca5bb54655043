//! Requests the gate passes on as they are: the client's body streamed up,
//! the answer streamed back (SSE event by event on MCP).

use super::*;

impl Gate {
    /// Proxies a request the policy passes on as it is (allow-listed mem0
    /// routes; MCP streams, DELETEs and other paths): the client's body is
    /// streamed up, the answer streamed back, SSE event by event on MCP.
    pub(super) async fn stream(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        // respond_or_pass only lets authenticated requests reach this point.
        let Some(identity) = ctx.identity.as_ref() else {
            return Error::e_explain(
                ErrorType::InternalError,
                "unauthenticated request reached the upstream phase",
            );
        };
        let framing = match body::RequestFraming::of(session) {
            Ok(framing) => framing,
            Err(deny) => {
                return self
                    .refuse_and_close(session, deny.status, &deny.message)
                    .await;
            }
        };
        let Some(client) = self
            .upstream_for(session, &ctx.scope, &identity.user_id)
            .await?
        else {
            return Ok(());
        };
        let req = session.req_header();
        let path_and_query = match ctx.rewritten_uri.take() {
            Some(uri) => uri,
            None => req
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_string(),
        };
        let mut upstream_req = headers::upstream_request(
            req,
            &path_and_query,
            identity,
            &ctx.scope,
            self.forward_credentials,
            client.target().host_for(headers::client_host(req)),
            |_, _| true,
        )?;
        if let Some(length) = framing.content_length() {
            upstream_req.content_length(length as u64);
        }
        if framing == body::RequestFraming::Chunked {
            upstream_req.chunked();
        }
        let started = Instant::now();
        let body = match framing {
            body::RequestFraming::Empty | body::RequestFraming::Length(0) => Outgoing::Whole(None),
            _ => {
                body::continue_if_expected(session).await?;
                Outgoing::From(&mut *session)
            }
        };
        // Failures are the upstream's unless the client's side failed;
        // `fail` answers them.
        let (upstream, mut open) =
            client
                .open_with(upstream_req, body)
                .await
                .map_err(|e| match e.esource() {
                    pingora::ErrorSource::Downstream => e,
                    _ => e.into_up(),
                })?;
        memo::observe(
            &METRICS.upstream_duration,
            &[self.listener.as_str()],
            started.elapsed().as_secs_f64(),
        );
        let upstream_length = upstream.length.and_then(|n| usize::try_from(n).ok());
        let redirects = headers::Redirects::of(client.target(), session);
        let mut header = headers::client_response(upstream, None, &redirects);
        let event_stream = header.is_event_stream();
        if let (Flow::Mcp(flow), Some(watch)) = (&self.flow, ctx.mcp_watch.as_mut()) {
            let cors = flow.cors_origin(session.req_header());
            flow.on_response_header(watch, &mut header, cors.as_deref())?;
        }
        // The upstream's length stands unless memgate rewrites the body
        // (SSE on MCP); otherwise the body is sent chunked.
        let rewritten = ctx.mcp_watch.as_ref().is_some_and(StreamWatch::rewrites);
        let length = upstream_length.filter(|_| !rewritten);
        body::frame_stream(&mut header, session, length)?;
        session
            .write_relayed(header)
            .await
            .map_err(|e| e.into_down())?;
        if self.relay(session, ctx, &client, &mut open).await? {
            if event_stream {
                open.close().await;
            } else {
                open.finish().await;
            }
        }
        Ok(())
    }

    /// The upstream for this request's scope, or `None` once the client was
    /// told why there is none (not ready yet: 503 with `Retry-After`; not
    /// safe to reach: 500, and the operator is told in the log).
    pub(super) async fn upstream_for(
        &self,
        session: &mut Session,
        scope: &str,
        user_id: &str,
    ) -> Result<Option<UpstreamLease>> {
        match self.upstreams.client(scope, user_id).await {
            Ok(client) => Ok(Some(client)),
            Err(NoUpstream::NotReady(why)) => {
                let body =
                    errors::error_body(self.listener, 503, &why.message, &serde_json::Value::Null);
                let retry = [("retry-after", why.retry_after_secs.to_string())];
                errors::respond_json(session, 503, body, &retry).await?;
                Ok(None)
            }
            Err(NoUpstream::Unsafe(why)) => {
                tracing::error!(error = %why, "no upstream for this scope; nothing sent");
                errors::respond_error(
                    session,
                    self.listener,
                    500,
                    "This request's upstream cannot be reached safely; the operator must check the logs",
                )
                .await?;
                Ok(None)
            }
        }
    }

    /// Passes the upstream's body on as it arrives (MCP streams watched on
    /// the way). Whether it ended complete: `false` when either side failed
    /// or the client left (`ctx.cut_short`).
    pub(super) async fn relay(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        client: &UpstreamLease,
        open: &mut OpenExchange<'_>,
    ) -> Result<bool> {
        loop {
            let next = tokio::select! {
                biased;
                next = open.next_chunk() => next,
                // The client went away: stop reading the upstream.
                _ = session.read_body_or_idle() => {
                    ctx.cut_short = true;
                    return Ok(false);
                }
            };
            let (mut chunk, end) = match next {
                Ok(Some(chunk)) => (Some(chunk), false),
                Ok(None) => (None, true),
                Err(e) => {
                    // Too late for an error response: end the client's stream.
                    tracing::info!(listener = self.listener.as_str(), error = %e, "upstream stream ended with an error");
                    ctx.cut_short = true;
                    return Ok(false);
                }
            };
            if let (Flow::Mcp(flow), Some(watch)) = (&self.flow, ctx.mcp_watch.as_mut()) {
                flow.on_response_chunk(watch, client, &mut chunk, end)?;
            }
            if chunk.is_some() || end {
                session
                    .write_response_body(chunk.unwrap_or_default(), end)
                    .await
                    .map_err(|e| e.into_down())?;
            }
            if end {
                return Ok(true);
            }
        }
    }
}
