//! The MCP listener's request flow (docs/design.md §5). Every path is proxied; what
//! memgate adds is: an Origin check and CORS preflights (before
//! authentication), session ownership, and for JSON-RPC POSTs the pure
//! `policy::mcp` decision (tool permissions, user and memory-id arguments),
//! sent upstream with the rewritten body and streamed back event by event with
//! `tools/list` results trimmed to what the token may call.

mod refusal;
mod response;

use refusal::{PendingRefusal, call_refusal, refuse, take_refusal};
pub use response::StreamWatch;

use crate::policy::endpoint::{McpEndpoint as Endpoint, McpPaths};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use serde_json::{Value, json};

use super::{Refusal, RefusedFor, body, headers};
use crate::http1::request::RequestHead;
use crate::identity::{Identity, Permission};
use crate::listener::{Relayed, Session, SetHeaders};
use crate::metrics::{METRICS, memo};
use crate::ownership::{LookupError, OwnerResolver};
use crate::policy::mcp::{
    MCP_SESSION_ID, McpDecision, McpDeny, McpForward, McpHead, McpPolicy, SecretScan, TOOLS_CALL,
    admit_head, decide_owners, is_param_header, method_label, origin_allowed,
    param_header_rewrites, session_key,
};
use crate::policy::secrets::{Action, Finding, SecretGuard};
use crate::policy::sse::{SseEvent, SseRewriter, endpoint_session_id};
use crate::sessions::{SessionBindings, SessionUse};
use crate::upstream::exchange::{OpenExchange, UpstreamClient};
use crate::upstream::targets::{NoUpstream, UpstreamLease, Upstreams};

/// Header names a browser client may send (CORS preflight answer).
const CORS_ALLOW_HEADERS: &str = "authorization, content-type, accept, x-mcp-token, x-mcp-userid, \
     x-mcp-project, mcp-session-id, mcp-protocol-version, last-event-id";
const CORS_EXPOSE_HEADERS: &str = "mcp-session-id, mcp-protocol-version, www-authenticate";

/// What the flow did with an authenticated request.
pub enum McpHandled {
    /// A response was written: the upstream's (filtered) answer, or a refusal.
    Responded(Option<Refusal>),
    /// Proxy it through pingora as it is (GET streams, DELETE, other paths),
    /// watching the response with this state.
    Stream(StreamWatch),
    /// A call the caller's OAuth scopes do not cover: nothing was sent. The
    /// gate answers HTTP 403 with a challenge naming the scope, since MCP
    /// clients step up on that and not on an in-band error.
    InsufficientScope {
        needed: Permission,
        /// The JSON-RPC error for the refused request.
        body: Vec<u8>,
        refusal: Refusal,
    },
}

pub struct McpFlow {
    policy: McpPolicy,
    upstreams: Arc<Upstreams>,
    owners: Arc<OwnerResolver>,
    sessions: Arc<SessionBindings>,
    /// Legacy SSE: ids of `tools/list` requests posted to a session, whose
    /// answers will come back on that session's stream.
    pending_lists: moka::sync::Cache<String, Vec<Value>>,
    /// Legacy SSE: refusals waiting to replace the upstream's answer to the
    /// stand-in `ping` sent in their place, by session.
    pending_refusals: moka::sync::Cache<String, Arc<std::sync::Mutex<Vec<PendingRefusal>>>>,
    paths: McpPaths,
    allowed_origins: Vec<String>,
    max_body_bytes: usize,
    max_response_bytes: usize,
    forward_credentials: bool,
    /// The secret guard, unless `[secret_guard] mode = "off"`.
    guard: Option<Arc<SecretGuard>>,
}

/// The settings `McpFlow` is built from.
pub struct McpSettings {
    pub policy: McpPolicy,
    pub upstreams: Arc<Upstreams>,
    pub owners: Arc<OwnerResolver>,
    pub mcp_path: String,
    pub sse_path: String,
    pub messages_path: String,
    /// `mcp.allowed_paths`: other paths forwarded as they are.
    pub allowed_paths: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub sessions: Arc<SessionBindings>,
    pub session_idle: Duration,
    pub max_sessions: u64,
    pub max_body_bytes: usize,
    pub max_response_bytes: usize,
    pub forward_credentials: bool,
    /// Scans the `secret_scan` arguments of tool calls (docs/design.md §12).
    pub secret_guard: Option<Arc<SecretGuard>>,
}

impl McpFlow {
    pub fn new(s: McpSettings) -> Self {
        McpFlow {
            policy: s.policy,
            upstreams: s.upstreams,
            owners: s.owners,
            sessions: s.sessions,
            pending_lists: moka::sync::Cache::builder()
                .max_capacity(s.max_sessions)
                .time_to_idle(s.session_idle)
                .build(),
            pending_refusals: moka::sync::Cache::builder()
                .max_capacity(s.max_sessions)
                .time_to_idle(s.session_idle)
                .build(),
            paths: McpPaths::new(&s.mcp_path, &s.sse_path, &s.messages_path)
                .allowing(&s.allowed_paths),
            allowed_origins: s.allowed_origins,
            max_body_bytes: s.max_body_bytes,
            max_response_bytes: s.max_response_bytes,
            forward_credentials: s.forward_credentials,
            guard: s.secret_guard,
        }
    }

    /// The request's Origin if it is an allowed browser origin (for CORS headers).
    pub fn cors_origin(&self, req: &RequestHeader) -> Option<String> {
        let origin = req.headers.get("origin")?.to_str().ok()?;
        origin_allowed(Some(origin), &self.allowed_origins).then(|| origin.to_string())
    }

    /// Before authentication: refuses foreign origins (DNS rebinding) and
    /// answers CORS preflights from allowed ones. `Ok(true)`: a response was sent.
    pub async fn check_origin(&self, session: &mut Session) -> Result<bool> {
        let req = session.req_header();
        let origins: Vec<&str> = req
            .headers
            .get_all("origin")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let origin = match origins.as_slice() {
            [] => return Ok(false),
            [one] if req.headers.get_all("origin").iter().count() == 1 => *one,
            _ => {
                refuse(
                    session,
                    400,
                    "The Origin header must be sent once, as text",
                    &Value::Null,
                    &[],
                )
                .await?;
                return Ok(true);
            }
        };
        if !origin_allowed(Some(origin), &self.allowed_origins) {
            let message = format!("Origin {origin} is not allowed (mcp.allowed_origins)");
            refuse(session, 403, &message, &Value::Null, &[]).await?;
            return Ok(true);
        }
        if req.method == http::Method::OPTIONS
            && req.headers.contains_key("access-control-request-method")
        {
            let mut header = ResponseHeader::build(204, Some(6))?;
            header.insert_header("access-control-allow-origin", origin)?;
            header.insert_header("access-control-allow-methods", "GET, POST, DELETE, OPTIONS")?;
            header.insert_header("access-control-allow-headers", CORS_ALLOW_HEADERS)?;
            header.insert_header("access-control-expose-headers", CORS_EXPOSE_HEADERS)?;
            header.insert_header("access-control-max-age", "600")?;
            header.insert_header("vary", "Origin")?;
            headers::secure_response(&mut header)?;
            session.write_response_header(Box::new(header)).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Handles one authenticated request. `scoped`: the identity's
    /// permissions come from OAuth scopes, so a call refused for a missing
    /// permission is [`McpHandled::InsufficientScope`].
    pub async fn handle(
        &self,
        session: &mut Session,
        identity: &Identity,
        scope: &str,
        scoped: bool,
        secrets: &mut Vec<Finding>,
    ) -> Result<McpHandled> {
        let req = session.req_header();
        let head = admit_head(&self.paths, &req.method, &req.uri, &req.headers);
        let McpHead {
            endpoint,
            session_id,
            posts_jsonrpc,
        } = match head {
            Ok(head) => head,
            Err((deny, allow)) => {
                let allow: Vec<_> = allow.into_iter().map(|a| ("allow", a)).collect();
                refuse(session, deny.status, &deny.message, &Value::Null, &allow).await?;
                return Ok(McpHandled::Responded(None));
            }
        };
        let method = req.method.clone();
        if let Some(id) = &session_id
            && let Some(answered) = self.check_session(session, id, &identity.user_id).await?
        {
            return Ok(answered);
        }
        if !posts_jsonrpc {
            let rewriter = matches!(endpoint, Endpoint::Streamable | Endpoint::LegacyStream)
                .then(SseRewriter::default);
            return Ok(McpHandled::Stream(StreamWatch {
                rewriter,
                user_id: identity.user_id.clone(),
                identity: identity.clone(),
                stream_session: session_id.clone(),
                legacy: false,
                ending_session: (method == http::Method::DELETE)
                    .then_some(session_id)
                    .flatten(),
            }));
        }
        let body = match body::read_whole(session, self.max_body_bytes).await {
            Ok(body) => body.map(|b| b.to_vec()).unwrap_or_default(),
            Err(deny) => {
                refuse(session, deny.status, &deny.message, &Value::Null, &[]).await?;
                return Ok(McpHandled::Responded(None));
            }
        };
        let legacy_session = (endpoint == Endpoint::LegacyMessages)
            .then(|| session_id.clone())
            .flatten();
        let body = match self.guard_call(body, secrets) {
            Ok(body) => body,
            Err(deny) => {
                return self
                    .refuse_request(
                        session,
                        identity,
                        scope,
                        legacy_session,
                        deny,
                        RefusedFor::Secret,
                    )
                    .await;
            }
        };
        let forward = match self.policy.decide(identity, scope, &body) {
            McpDecision::Deny(deny) => {
                if scoped && let Some(needed) = self.missing_permission(identity, &deny) {
                    return Ok(McpHandled::InsufficientScope {
                        needed,
                        body: deny.body.clone(),
                        refusal: call_refusal(deny, RefusedFor::Policy),
                    });
                }
                return self
                    .refuse_request(
                        session,
                        identity,
                        scope,
                        legacy_session,
                        deny,
                        RefusedFor::Policy,
                    )
                    .await;
            }
            McpDecision::Forward(forward) => forward,
        };
        self.count_calls(&forward);
        if let Err(deny) = self.check_owners(identity, scope, &forward).await {
            let why = if deny.status == 403 {
                RefusedFor::Ownership
            } else {
                RefusedFor::Policy
            };
            return self
                .refuse_request(session, identity, scope, legacy_session, deny, why)
                .await;
        }
        if endpoint == Endpoint::LegacyMessages
            && let Some(id) = &session_id
        {
            self.note_tools_lists(id, &forward);
        }
        self.forward(session, identity, scope, forward, body, secrets)
            .await?;
        Ok(McpHandled::Responded(None))
    }

    /// The session a request uses must be one the upstream handed to this
    /// user. `Some`: the request was answered (404, or 503 when the store
    /// cannot say).
    async fn check_session(
        &self,
        session: &mut Session,
        id: &str,
        user_id: &str,
    ) -> Result<Option<McpHandled>> {
        match self.sessions.check(id, user_id).await {
            Ok(SessionUse::Owner) => Ok(None),
            // Only ids memgate saw the upstream hand to this user are
            // forwarded: an upstream may read another spelling as the
            // same session, and a forgotten one is started again.
            Ok(SessionUse::Unknown) => self
                .refuse_session(session, "session id never handed to this user")
                .await
                .map(Some),
            Ok(SessionUse::Foreign) => self
                .refuse_session(session, "session belongs to another user")
                .await
                .map(Some),
            Err(e) => {
                tracing::error!(error = %e, "cannot check an MCP session's owner");
                let message =
                    "Cannot verify this session right now (store unreachable); retry shortly";
                refuse(
                    session,
                    503,
                    message,
                    &Value::Null,
                    &[("retry-after", "1".into())],
                )
                .await?;
                Ok(Some(McpHandled::Responded(None)))
            }
        }
    }

    /// The secret guard on a `tools/call`'s arguments: the body to forward
    /// (redacted when the guard found something), or the in-band refusal.
    /// What it found goes to `secrets`.
    fn guard_call(
        &self,
        body: Vec<u8>,
        secrets: &mut Vec<Finding>,
    ) -> std::result::Result<Vec<u8>, McpDeny> {
        let Some(guard) = self.guard.as_deref() else {
            return Ok(body);
        };
        match self.policy.scan_secrets(guard, &body) {
            SecretScan::Clean => Ok(body),
            SecretScan::Redacted { body, findings } => {
                secrets.extend(findings);
                Ok(body)
            }
            SecretScan::Refused { deny, finding } => {
                secrets.push(finding);
                Err(deny)
            }
        }
    }

    /// Counts each forwarded request by method and tool.
    fn count_calls(&self, forward: &McpForward) {
        for call in &forward.calls {
            let tool = call
                .tool
                .as_deref()
                .map_or("", |t| self.policy.tool_label(t));
            METRICS
                .mcp_requests
                .with_label_values(&[method_label(&call.method), tool])
                .inc();
        }
    }

    /// Legacy SSE: the `tools/list` answers come on the session's stream,
    /// so their ids are kept to trim them there (the latest 64).
    fn note_tools_lists(&self, session_id: &str, forward: &McpForward) {
        let ids = forward.tools_list_ids();
        if ids.is_empty() {
            return;
        }
        let mut pending = self.pending_lists.get(session_id).unwrap_or_default();
        pending.extend(ids);
        let keep_from = pending.len().saturating_sub(64);
        self.pending_lists
            .insert(session_id.to_owned(), pending.split_off(keep_from));
    }

    /// The permission a refused tools/call needed that `identity` lacks.
    fn missing_permission(&self, identity: &Identity, deny: &McpDeny) -> Option<Permission> {
        if deny.status != 403 || deny.method.as_deref() != Some(TOOLS_CALL) {
            return None;
        }
        let rule = self.policy.rule_for(deny.tool.as_deref()?)?;
        (!identity.permissions.allows(rule.permission)).then_some(rule.permission)
    }

    /// The owners of every memory id the calls name, then the policy's verdict.
    async fn check_owners(
        &self,
        identity: &Identity,
        scope: &str,
        forward: &McpForward,
    ) -> std::result::Result<(), McpDeny> {
        if forward.need_owners.is_empty() {
            return Ok(());
        }
        let mut checks = Vec::with_capacity(forward.need_owners.len());
        for check in &forward.need_owners {
            // Boxed: a lookup's future (cache, upstream exchange) is larger
            // than the rest of a request's, and most calls need none.
            let owner = match Box::pin(self.owners.owner(&check.memory_id)).await {
                Ok(owner) => Some(owner),
                Err(LookupError::NotFound) => None,
                Err(LookupError::Upstream { status, message }) => {
                    let deny = crate::policy::deny::Deny::new(status, message);
                    return Err(McpDeny::from_deny(&deny, &check.request_id));
                }
            };
            checks.push((check.clone(), owner));
        }
        decide_owners(identity, scope, &checks)
    }

    fn upstream_request(
        &self,
        client: &UpstreamClient,
        client_req: &RequestHeader,
        identity: &Identity,
        scope: &str,
        forward: &McpForward,
        body_len: usize,
    ) -> Result<RequestHead> {
        let path_and_query = client_req
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str());
        // Mirrors must say what the forwarded body says. A mirror memgate
        // cannot read (not visible ASCII, which SEP-2243's Base64 form avoids)
        // cannot be checked against the body: dropped.
        let unreadable = |n: &http::HeaderName, v: &http::HeaderValue| {
            is_param_header(n.as_str()) && v.to_str().is_err()
        };
        let present: Vec<(String, String)> =
            headers::passable(client_req, self.forward_credentials)?
                .filter(|(n, _)| is_param_header(n.as_str()))
                .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect();
        let edits = param_header_rewrites(&present, &forward.param_headers);
        let edited = |n: &http::HeaderName| {
            edits
                .iter()
                .any(|(e, _)| e.eq_ignore_ascii_case(n.as_str()))
        };
        let mut req = headers::upstream_request(
            client_req,
            path_and_query,
            identity,
            scope,
            self.forward_credentials,
            client.target().host_for(headers::client_host(client_req)),
            |n, v| !unreadable(n, v) && !edited(n),
        )?;
        for (name, value) in &edits {
            if let Some(value) = value {
                let name = http::HeaderName::from_bytes(name.as_bytes()).or_err(
                    ErrorType::InternalError,
                    "a mirrored argument header name is invalid",
                )?;
                req.header(&name, value.as_bytes()).or_err(
                    ErrorType::InternalError,
                    "a mirrored argument is not a header value",
                )?;
            }
        }
        req.content_length(body_len as u64);
        Ok(req)
    }

    /// Sends the authorised JSON-RPC POST and streams the answer back.
    async fn forward(
        &self,
        session: &mut Session,
        identity: &Identity,
        scope: &str,
        forward: McpForward,
        client_body: Vec<u8>,
        secrets: &mut Vec<Finding>,
    ) -> Result<()> {
        let client = match self.upstreams.client(scope, &identity.user_id).await {
            Ok(client) => client,
            Err(NoUpstream::Unsafe(why)) => {
                tracing::error!(error = %why, "no MCP upstream for this scope; nothing sent");
                let message = "This request's upstream cannot be reached safely; the operator must check the logs";
                return refuse(session, 500, message, &Value::Null, &[]).await;
            }
            Err(NoUpstream::NotReady(why)) => {
                let retry = [("retry-after", why.retry_after_secs.to_string())];
                return refuse(session, 503, &why.message, &Value::Null, &retry).await;
            }
        };
        let body = Bytes::from(forward.body.clone().unwrap_or(client_body));
        let upstream_req = self.upstream_request(
            &client,
            session.req_header(),
            identity,
            scope,
            &forward,
            body.len(),
        )?;
        let cors = self.cors_origin(session.req_header());
        let started = std::time::Instant::now();
        let (upstream, open) = match client.open(upstream_req, Some(body)).await {
            Ok(open) => open,
            Err(e) => {
                let (status, message) = crate::upstream::upstream_failure(super::Listener::Mcp, &e);
                tracing::info!(error = %e, status, "MCP upstream exchange failed");
                return refuse(session, status, &message, &Value::Null, &[]).await;
            }
        };
        memo::observe(
            &METRICS.upstream_duration,
            &[super::Listener::Mcp.as_str()],
            started.elapsed().as_secs_f64(),
        );
        let redirects = headers::Redirects::of(client.target(), session);
        let upstream = headers::client_response(upstream, None, &redirects);
        let initialized = forward.calls.iter().any(|c| c.method == "initialize");
        if initialized
            && upstream.status().is_success()
            && let Err(message) = self.bind_handed_out(&upstream, &client, identity).await
        {
            open.finish().await;
            return refuse(session, 502, message, &Value::Null, &[]).await;
        }
        let ids = forward.tools_list_ids();
        let mut header = upstream;
        add_cors(&mut header, cors.as_deref())?;
        if header.is_event_stream() {
            self.relay_events(session, identity, header, open, (&ids, secrets))
                .await
        } else {
            self.relay_whole(session, identity, header, open, (&ids, secrets))
                .await
        }
    }

    /// Binds the session an `initialize` answer hands out to the caller; the
    /// message for the client when that cannot be done.
    async fn bind_handed_out(
        &self,
        upstream: &Relayed,
        client: &UpstreamLease,
        identity: &Identity,
    ) -> std::result::Result<(), &'static str> {
        let Some(id) = upstream.get(&MCP_SESSION_ID) else {
            return Ok(());
        };
        let Some(id) = std::str::from_utf8(id)
            .ok()
            .map(|id| session_key(id, false))
        else {
            return Err("The MCP upstream answered with a session id that is not text");
        };
        if !self.sessions.bind_handed_out(&id, &identity.user_id).await {
            tracing::error!("the MCP upstream handed out a session id bound to another user");
            return Err("The MCP upstream handed out a session id already in use");
        }
        client.note_session(&id);
        Ok(())
    }

    /// With `scan_responses`, an answer's secrets (memories stored before
    /// the guard was on) replaced in place: JSON as JSON, other text as
    /// text. Whether anything was.
    fn redact_answer(&self, text: &mut String, secrets: &mut Vec<Finding>) -> bool {
        let Some(guard) = self.guard.as_deref().filter(|g| g.scans_responses()) else {
            return false;
        };
        if let Some((redacted, found)) = guard.redact_response(text.as_bytes()) {
            *text = String::from_utf8(redacted).expect("JSON is UTF-8");
            secrets.extend(found);
            return true;
        }
        let Some((redacted, rules)) = guard.redact_text(text) else {
            return false;
        };
        *text = redacted;
        secrets.extend(rules.into_iter().map(|rule| Finding {
            rule,
            path: "(text)".into(),
            action: Action::Redacted,
        }));
        true
    }

    /// An event-stream answer, event by event: each complete event goes out
    /// as soon as it is in, tool lists trimmed to what the caller may call.
    async fn relay_events(
        &self,
        session: &mut Session,
        identity: &Identity,
        mut header: Relayed,
        mut open: OpenExchange<'_>,
        (ids, secrets): (&[Value], &mut Vec<Finding>),
    ) -> Result<()> {
        body::frame_stream(&mut header, session, None)?;
        session.write_relayed(header).await?;
        let mut rewriter = SseRewriter::default();
        let mut filter = |event: &mut SseEvent| {
            if !ids.is_empty() {
                self.policy.filter_sse_event(identity, event, ids);
            }
            if let Some(data) = event.data.as_mut() {
                self.redact_answer(data, secrets);
            }
        };
        loop {
            let chunk = match open.next_chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                // Too late for an error answer: the gate ends the
                // client's stream without a final chunk.
                Err(e) => return Err(e),
            };
            let out = rewriter.feed(&chunk, &mut filter).map_err(|e| {
                Error::explain(
                    ErrorType::InternalError,
                    format!("SSE from the MCP upstream: {e}"),
                )
            })?;
            if !out.is_empty() {
                session.write_response_body(Bytes::from(out), false).await?;
            }
        }
        let tail = rewriter.finish(&mut filter).unwrap_or_default();
        session.write_response_body(Bytes::from(tail), true).await?;
        open.finish().await;
        Ok(())
    }

    /// A JSON (or other) answer: read whole, tool lists trimmed to what the
    /// caller may call, then sent.
    async fn relay_whole(
        &self,
        session: &mut Session,
        identity: &Identity,
        mut header: Relayed,
        mut open: OpenExchange<'_>,
        (ids, secrets): (&[Value], &mut Vec<Finding>),
    ) -> Result<()> {
        let mut buf = BytesMut::new();
        loop {
            match open.next_chunk().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > self.max_response_bytes {
                        return refuse(
                            session,
                            502,
                            "The MCP upstream answered too much",
                            &Value::Null,
                            &[],
                        )
                        .await;
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    let (status, message) =
                        crate::upstream::upstream_failure(super::Listener::Mcp, &e);
                    return refuse(session, status, &message, &Value::Null, &[]).await;
                }
            }
        }
        open.finish().await;
        let mut body = buf.freeze();
        if !ids.is_empty()
            && let Some(filtered) = self.policy.filter_tools_list(identity, &body, ids)
        {
            body = Bytes::from(filtered);
        }
        if let Ok(mut text) = String::from_utf8(body.to_vec())
            && self.redact_answer(&mut text, secrets)
        {
            body = Bytes::from(text);
        }
        header.set(http::header::CONTENT_LENGTH, body.len().into())?;
        session.write_relayed(header).await?;
        if !body.is_empty() {
            session.write_response_body(body, true).await?;
        }
        Ok(())
    }
}

/// CORS headers for an allowed browser origin.
fn add_cors(header: &mut impl SetHeaders, origin: Option<&str>) -> Result<()> {
    if let Some(origin) = origin {
        let origin = http::HeaderValue::from_str(origin).or_err(
            ErrorType::InvalidHTTPHeader,
            "an Origin that is not a header value",
        )?;
        header.set(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin)?;
        header.set(
            http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            http::HeaderValue::from_static(CORS_EXPOSE_HEADERS),
        )?;
        header.add(http::header::VARY, http::HeaderValue::from_static("Origin"))?;
    }
    Ok(())
}

/// Whether the client reads answers only as an event stream (its `Accept`
/// names `text/event-stream` and no JSON); otherwise a JSON body is read.
fn wants_event_stream_only(req: &RequestHeader) -> bool {
    let mut event_stream = false;
    for value in req.headers.get_all(http::header::ACCEPT) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for media in value.split(',') {
            let media = media.split(';').next().unwrap_or_default().trim();
            if media.eq_ignore_ascii_case("text/event-stream") {
                event_stream = true;
            } else if media.eq_ignore_ascii_case("application/json")
                || media == "*/*"
                || media.eq_ignore_ascii_case("application/*")
            {
                return false;
            }
        }
    }
    event_stream
}
