//! The gate of a proxied listener: every request goes through the phases
//! admit → authenticate → authorise → resolve owner → forward → record. Each
//! step hands decisions to `auth` and `policy`; this layer knows nothing of
//! mem0's routes (docs/design.md §1, §10).

pub mod body;
pub mod client_ip;
pub mod errors;
mod handler;
pub mod headers;
pub mod mcp;
pub mod mem0;
mod request;

use errors::status_label;
use request::{presented, project, request_id, truncate};

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::server::ShutdownWatch;
use serde_json::Value;

use crate::audit::{self, AuditEvent, Auditor};
use crate::auth::oauth::{self, AuthMethod, OAuth};
use crate::auth::{Authenticator, Denial, PresentedHeaders, Refused, StoreAccess};
use crate::identity::{Identity, Permission};
use crate::lifecycle::{InFlight, InFlightGuard};
use crate::listener::per_thread::RuntimeTasks;
use crate::listener::{Handler, Listener, Session};
use crate::metrics::{METRICS, memo};
use crate::policy::admission::{HeadLimits, admit_head};
use crate::policy::deny::Deny;
use crate::policy::header_names;
use crate::policy::scope::{IsolationMode, scope_for};
use crate::ratelimit::{PROBE_INTERVAL, RateLimits, RetryAfter};
use crate::scopes::ScopeLog;
use crate::upstream::exchange::{OpenExchange, Outgoing};
use crate::upstream::targets::{NoUpstream, UpstreamLease, Upstreams};
use mcp::{McpFlow, McpHandled, StreamWatch};
use mem0::{Handled, Mem0Flow};

/// What one phase of a request learns for the next.
pub struct RequestCtx {
    started: Instant,
    identity: Option<Arc<Identity>>,
    /// How `identity` authenticated.
    auth_method: Option<AuthMethod>,
    /// The mem0 user_id the request acts for (docs/design.md §3).
    scope: String,
    /// Set when the request is streamed to a rewritten path and query.
    rewritten_uri: Option<String>,
    /// Metric label for the route; "denied" until authentication succeeds.
    route: &'static str,
    request_id: String,
    /// MCP responses streamed through are watched with this.
    mcp_watch: Option<StreamWatch>,
    /// A streamed answer ended early (either side failed or left): the client
    /// must not see it as complete.
    cut_short: bool,
    /// The client's address (through trusted proxies), read once.
    client_ip: IpAddr,
    /// Holds the request in the in-flight count until it is done.
    _in_flight: InFlightGuard,
}

impl RequestCtx {
    fn new(shared: &Shared, client_ip: IpAddr) -> Self {
        RequestCtx {
            started: Instant::now(),
            client_ip,
            identity: None,
            auth_method: None,
            scope: String::new(),
            rewritten_uri: None,
            route: "denied",
            request_id: String::new(),
            mcp_watch: None,
            cut_short: false,
            _in_flight: shared.in_flight.enter(),
        }
    }
}

/// What every listener shares: authentication, limits and the audit trail.
pub struct Shared {
    pub auth: Arc<Authenticator>,
    pub limits: RateLimits,
    pub audit: Auditor,
    pub trusted_proxies: Vec<IpNet>,
    pub in_flight: InFlight,
    /// Project scopes users act in (`auto` isolation), for `memgate user export|delete`.
    pub scopes: ScopeLog,
    pub head_limits: HeadLimits,
}

pub struct Gate {
    listener: Listener,
    /// The OAuth resource this listener is.
    resource: oauth::Listener,
    shared: Arc<Shared>,
    /// Sends streamed requests; the flows' exchanges share its idle connections.
    upstreams: Arc<Upstreams>,
    forward_credentials: bool,
    isolation: IsolationMode,
    flow: Flow,
    request_duration: prometheus::Histogram,
    runtime_tasks: RuntimeTasks,
}

/// The listener-specific part of the request flow.
pub enum Flow {
    Mem0(Mem0Flow),
    Mcp(Box<McpFlow>),
}

/// A refusal of an authenticated request, from either flow: what the client
/// was told, and what the audit trail calls it (docs/design.md §6).
pub struct Refusal {
    pub status: u16,
    pub message: String,
    /// `permission_denied`, `ownership_denied` or `session_denied`.
    pub kind: &'static str,
    /// The JSON-RPC method and tool of a refused MCP request.
    pub mcp_method: Option<String>,
    pub tool: Option<String>,
}

impl Refusal {
    /// A policy decision against the caller: another user's memory when
    /// `ownership`, else a permission or rule.
    pub fn of(deny: Deny, ownership: bool) -> Refusal {
        Refusal {
            status: deny.status,
            message: deny.message,
            kind: if ownership {
                audit::kind::OWNERSHIP_DENIED
            } else {
                audit::kind::PERMISSION_DENIED
            },
            mcp_method: None,
            tool: None,
        }
    }

    /// An MCP session that is not the caller's (or not known): `why` is for
    /// the audit trail; the client is told only that it was not found.
    pub fn session(status: u16, why: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: why.into(),
            kind: audit::kind::SESSION_DENIED,
            mcp_method: None,
            tool: None,
        }
    }

    /// Permission, ownership and session refusals are audited; malformed
    /// requests (400, 404, 405, 413…) are not decisions about a user's rights.
    fn audited(&self) -> bool {
        self.status == 403 || self.kind == audit::kind::SESSION_DENIED
    }
}

impl Gate {
    pub fn new(
        listener: Listener,
        shared: Arc<Shared>,
        upstreams: Arc<Upstreams>,
        forward_credentials: bool,
        isolation: IsolationMode,
        flow: Flow,
        threads: usize,
    ) -> Self {
        let label = [listener.as_str()];
        Gate {
            listener,
            resource: match listener {
                Listener::Mcp => oauth::Listener::Mcp,
                Listener::Mem0 | Listener::Admin => oauth::Listener::Mem0,
            },
            shared,
            upstreams,
            forward_credentials,
            isolation,
            flow,
            request_duration: METRICS.request_duration.with_label_values(&label),
            runtime_tasks: RuntimeTasks::new(
                METRICS.runtime_tasks.with_label_values(&label),
                threads,
            ),
        }
    }

    /// An audit event about this request, filled with what the request says.
    fn event(&self, session: &Session, ctx: &RequestCtx, kind: &str, success: bool) -> AuditEvent {
        let req = session.req_header();
        let text = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| truncate(v, 256))
        };
        let mut event = AuditEvent::new(kind, success);
        event.ip = Some(ctx.client_ip.to_string());
        event.user_agent = text("user-agent");
        event.method = Some(req.method.to_string());
        event.path = Some(truncate(req.uri.path(), 512));
        event.request_id = Some(ctx.request_id.clone());
        if let Some(identity) = &ctx.identity {
            event.user_id = Some(identity.user_id.clone());
            event.token_prefix = Some(identity.token_prefix.clone());
        }
        event.auth_method = ctx.auth_method.map(|m| m.as_str().to_string());
        event
    }

    fn client_ip(&self, session: &Session) -> IpAddr {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        // Only a trusted proxy's X-Forwarded-For is read at all.
        if !client_ip::is_trusted(&peer, &self.shared.trusted_proxies) {
            return peer;
        }
        let forwarded: Vec<&str> = session
            .req_header()
            .headers
            .get_all(&header_names::X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        client_ip::client_ip(peer, &forwarded, &self.shared.trusted_proxies)
    }

    /// Answers 429 in the listener's format and audits it (sampled).
    async fn refuse_rate_limited(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        kind: &'static str,
        key: String,
        retry: RetryAfter,
        message: &str,
    ) -> Result<bool> {
        METRICS.rate_limited.with_label_values(&[kind]).inc();
        let make = || {
            let mut event = self.event(session, ctx, audit::kind::RATE_LIMITED, false);
            event.reason = Some(kind.to_string());
            event
        };
        self.shared
            .audit
            .record_sampled(&format!("429/{kind}/{key}"), make)
            .await;
        let body = errors::error_body(self.listener, 429, message, &serde_json::Value::Null);
        errors::respond_json(session, 429, body, &[("retry-after", retry.header_value())]).await?;
        Ok(true)
    }

    /// Authentication, the per-IP and per-token limits, and the audit of both.
    /// `Ok(None)` means a response was sent.
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Arc<Identity>>> {
        let ip = ctx.client_ip;
        let blocked = self.shared.limits.ip_blocked(ip);
        let probe = || self.shared.limits.take_probe(ip);
        let store = match blocked {
            None => StoreAccess::Open,
            Some(_) => StoreAccess::Probe(&probe),
        };
        let outcome = self
            .shared
            .auth
            .authenticate(&presented(session.req_header()), store)
            .await;
        let authenticated = match outcome {
            Ok(authenticated) => authenticated,
            // A cut-off address gets 429 for anything but a valid token: one
            // it already proved, or one a store probe just found.
            Err(failure) if blocked.is_some() => {
                if !(failure.denial.is_unavailable()
                    || failure.denial == Refused::Token(Denial::Throttled))
                {
                    self.shared.limits.note_failed_auth(ip);
                }
                let message = Denial::Throttled.message();
                self.refuse_rate_limited(
                    session,
                    ctx,
                    "failed_auth_ip",
                    ip.to_string(),
                    RetryAfter(PROBE_INTERVAL),
                    &message,
                )
                .await?;
                return Ok(None);
            }
            Err(failure) => {
                if !failure.denial.is_unavailable() {
                    self.shared.limits.note_failed_auth(ip);
                }
                let mut event = self.event(session, ctx, audit::kind::AUTH_FAILURE, false);
                event.reason = Some(failure.denial.reason().to_string());
                if let Some(user) = &failure.user_id {
                    METRICS.auth_user_failures.with_label_values(&[user]).inc();
                }
                event.user_id = failure.user_id;
                event.token_prefix = failure.token_prefix;
                event.auth_method =
                    (failure.method != crate::auth::NO_METHOD).then(|| failure.method.to_string());
                self.shared.audit.record(event);
                let denial = failure.denial;
                let challenge = self
                    .shared
                    .auth
                    .oauth()
                    .and_then(|oauth| self.unauthorized_challenge(oauth, &denial));
                errors::respond_challenged(
                    session,
                    self.listener,
                    denial.status(),
                    &denial.message(),
                    challenge,
                )
                .await?;
                return Ok(None);
            }
        };
        let identity = authenticated.identity.clone();
        ctx.identity = Some(identity.clone());
        ctx.auth_method = Some(authenticated.method);
        let key = authenticated.rate_limit_key();
        if let Err(retry) = self
            .shared
            .limits
            .check_token(
                &key,
                authenticated.rate_limit_rps,
                &authenticated.state.limiter,
            )
            .await
        {
            let message = match authenticated.method {
                AuthMethod::Token => "Rate limit exceeded for this token; retry later",
                AuthMethod::Jwt | AuthMethod::Introspection => {
                    "Rate limit exceeded for this user; retry later"
                }
            };
            self.refuse_rate_limited(session, ctx, "token", key, retry, message)
                .await?;
            return Ok(None);
        }
        if self.shared.audit.success_due(
            &authenticated.state.success_audited,
            authenticated.at.timestamp(),
        ) {
            let event = self.event(session, ctx, audit::kind::AUTH_SUCCESS, true);
            self.shared.audit.record(event);
        }
        Ok(Some(identity))
    }

    /// The OAuth challenge of a refused request: where this resource's
    /// metadata is, and for a presented token, why it was refused. `None`
    /// for a refusal that is not a 401.
    fn unauthorized_challenge(&self, oauth: &OAuth, refused: &Refused) -> Option<String> {
        match refused {
            Refused::OAuth(denial) => {
                oauth.unauthorized_challenge(self.resource, None, Some(*denial))
            }
            _ if refused.status() != 401 => None,
            _ if refused.is_missing() => oauth.unauthorized_challenge(self.resource, None, None),
            Refused::Token(denial) => {
                Some(oauth.refused_token_challenge(self.resource, &denial.message()))
            }
        }
    }

    /// Answers a GET of this listener's Protected Resource Metadata (RFC
    /// 9728) when OAuth is on: memgate's own, public document, never
    /// forwarded. `Ok(true)`: it was answered.
    async fn serve_resource_metadata(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let Some(oauth) = self.shared.auth.oauth() else {
            return Ok(false);
        };
        let req = session.req_header();
        if req.method != http::Method::GET {
            return Ok(false);
        }
        let Ok(path) = crate::policy::path::normalise(req.uri.path()) else {
            return Ok(false);
        };
        if !oauth.metadata_paths(self.resource).contains(&path) {
            return Ok(false);
        }
        ctx.route = "oauth_metadata";
        let document = oauth.metadata_document(self.resource).clone();
        errors::respond_json(session, 200, document, &[]).await?;
        Ok(true)
    }

    /// Answers HTTP 403 with the step-up challenge for a request an OAuth
    /// caller's scopes do not cover (`needed`), and audits it.
    async fn refuse_insufficient_scope(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        needed: Permission,
        body: bytes::Bytes,
        refusal: Refusal,
    ) -> Result<()> {
        let Some(oauth) = self.shared.auth.oauth() else {
            return Error::e_explain(
                ErrorType::InternalError,
                "an insufficient scope without OAuth",
            );
        };
        let challenge = oauth.insufficient_scope_challenge(self.resource, needed);
        errors::respond_json(session, 403, body, &[("www-authenticate", challenge)]).await?;
        self.audit_refusal(session, ctx, refusal);
        Ok(())
    }

    /// Records the project scope a user works in (`auto` isolation) before
    /// the request goes on, so the user's data can be found again for export
    /// and deletion. `Ok(true)`: it could not be recorded, a 503 was sent.
    async fn record_project_scope(
        &self,
        session: &mut Session,
        identity: &Identity,
    ) -> Result<bool> {
        if !matches!(self.isolation, IsolationMode::Auto) {
            return Ok(false);
        }
        let project = project(session.req_header());
        let scope = scope_for(identity, &self.isolation, project.as_deref());
        if scope == identity.user_id {
            return Ok(false);
        }
        let store = self.shared.auth.store();
        let Err(e) = self
            .shared
            .scopes
            .record(store.as_ref(), &identity.user_id, &scope)
            .await
        else {
            return Ok(false);
        };
        tracing::warn!(error = %e, user_id = %identity.user_id, "project scope not recorded; request refused");
        let message = "The project scope of this request could not be recorded (token store unavailable); retry later";
        errors::respond_error(session, self.listener, 503, message).await?;
        Ok(true)
    }

    /// Audits a policy refusal worth keeping.
    fn audit_refusal(&self, session: &Session, ctx: &RequestCtx, refusal: Refusal) {
        let mut event = self.event(session, ctx, refusal.kind, false);
        event.reason = Some(truncate(&refusal.message, 256));
        event.mcp_method = refusal.mcp_method;
        event.tool = refusal.tool;
        self.shared.audit.record(event);
    }
}

impl Gate {
    /// One request: answered by memgate, or passed through as a stream.
    async fn handle(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let req = session.req_header();
        if let Err(refused) =
            admit_head(&req.method, &req.uri, &req.headers, self.shared.head_limits)
        {
            let deny = refused.deny;
            if refused.close {
                return self
                    .refuse_and_close(session, deny.status, &deny.message)
                    .await;
            }
            return errors::respond_error(session, self.listener, deny.status, &deny.message).await;
        }
        if self.respond_or_pass(session, ctx).await? {
            return Ok(());
        }
        self.stream(session, ctx).await
    }

    /// Admission and policy before anything is forwarded or any body is read.
    /// `Ok(true)`: a response was sent; `Ok(false)`: stream the request.
    async fn respond_or_pass(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.request_id = request_id(session.req_header());
        if let Flow::Mcp(flow) = &self.flow
            && flow.check_origin(session).await?
        {
            return Ok(true);
        }
        if self.serve_resource_metadata(session, ctx).await? {
            return Ok(true);
        }
        let Some(identity) = self.admit(session, ctx).await? else {
            return Ok(true);
        };
        ctx.route = self.listener.as_str();
        if self.record_project_scope(session, &identity).await? {
            return Ok(true);
        }
        // An OAuth caller's permissions are its token's scopes: one it lacks
        // is asked for with a challenge the client can step up on.
        let scoped = ctx.auth_method.is_some_and(|m| m != AuthMethod::Token);
        let (refusal, stream) = match &self.flow {
            Flow::Mem0(flow) => {
                if scoped
                    && let Some(needed) = flow.missing_permission(session.req_header(), &identity)
                {
                    let deny = crate::policy::deny::Deny::forbidden(format!(
                        "Access denied: this access token lacks the scope that grants the {} \
                         permission",
                        needed.as_str()
                    ));
                    let body = errors::error_body(self.listener, 403, &deny.message, &Value::Null);
                    let refusal = Refusal::of(deny, false);
                    self.refuse_insufficient_scope(session, ctx, needed, body, refusal)
                        .await?;
                    return Ok(true);
                }
                match flow.handle(session, &identity, &mut ctx.route).await? {
                    Handled::Responded(refusal) => (refusal, None),
                    Handled::Stream {
                        path_and_query,
                        scope,
                    } => {
                        ctx.rewritten_uri = (!path_and_query.is_empty()).then_some(path_and_query);
                        (None, Some((scope, None)))
                    }
                }
            }
            Flow::Mcp(flow) => {
                let project = project(session.req_header());
                let scope = scope_for(&identity, &self.isolation, project.as_deref());
                // Not boxed: with owner lookups boxed inside, this future is
                // about the mem0 flow's size, and a box cost a copy per request.
                match flow.handle(session, &identity, &scope, scoped).await? {
                    McpHandled::Responded(refusal) => (refusal, None),
                    McpHandled::Stream(watch) => (None, Some((scope, Some(watch)))),
                    McpHandled::InsufficientScope {
                        needed,
                        body,
                        refusal,
                    } => {
                        self.refuse_insufficient_scope(
                            session,
                            ctx,
                            needed,
                            bytes::Bytes::from(body),
                            refusal,
                        )
                        .await?;
                        return Ok(true);
                    }
                }
            }
        };
        if let Some(refusal) = refusal
            && refusal.audited()
        {
            self.audit_refusal(session, ctx, refusal);
        }
        match stream {
            None => Ok(true),
            Some((scope, watch)) => {
                ctx.scope = scope;
                ctx.mcp_watch = watch;
                Ok(false)
            }
        }
    }

    /// Proxies a request the policy passes on as it is (allow-listed mem0
    /// routes; MCP streams, DELETEs and other paths): the client's body is
    /// streamed up, the answer streamed back, SSE event by event on MCP.
    async fn stream(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
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
    async fn upstream_for(
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
    async fn relay(
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

    /// Answers a request whose framing cannot be trusted, and closes the
    /// connection after it: what follows on the wire is not a known request.
    async fn refuse_and_close(
        &self,
        session: &mut Session,
        status: u16,
        message: &str,
    ) -> Result<()> {
        session.set_keepalive(None);
        errors::respond_error(session, self.listener, status, message).await
    }

    /// A request that failed: the status pingora's error maps to, when no
    /// response was started; the connection is not reused.
    async fn fail(&self, session: &mut Session, e: &Error) {
        let (code, message) = failure_response(self.listener, e);
        session.set_keepalive(None);
        if code > 0
            && session.response_status().is_none()
            && let Err(write_err) =
                errors::respond_error(session, self.listener, code, &message).await
        {
            tracing::debug!(error = %write_err, "could not send the error response");
        }
    }

    fn log(&self, session: &Session, e: Option<&Error>, ctx: &RequestCtx) {
        let status = session.response_status().unwrap_or(0);
        let listener = self.listener.as_str();
        memo::inc(
            &METRICS.requests,
            &[listener, ctx.route, status_label(status)],
        );
        self.request_duration
            .observe(ctx.started.elapsed().as_secs_f64());
        // Each listener runs on runtimes of its own: their live task count
        // (client connections, streams, watchers) shows leaks. Atomic reads.
        self.runtime_tasks.record();
        if let Some(e) = e {
            tracing::info!(listener, status, error = %e, "request failed");
        }
        if crate::access_log::enabled() {
            let req = session.req_header();
            // Requests memgate answers itself never set ctx.scope.
            let scope = match &ctx.identity {
                Some(identity) if ctx.scope.is_empty() => {
                    scope_for(identity, &self.isolation, project(req).as_deref())
                }
                _ => ctx.scope.clone(),
            };
            crate::access_log::record(&crate::access_log::AccessRecord {
                listener,
                method: req.method.as_str(),
                path: req.uri.path(),
                query: req.uri.query(),
                status,
                user: ctx.identity.as_deref().map(|i| i.user_id.as_str()),
                scope: &scope,
                latency: ctx.started.elapsed(),
                request_id: &ctx.request_id,
            });
        }
    }
}

/// The status and message for a request that could not be proxied.
pub(crate) fn failure_response(listener: Listener, e: &Error) -> (u16, String) {
    use pingora::ErrorSource;
    match e.esource() {
        ErrorSource::Upstream => crate::upstream::upstream_failure(listener, e),
        ErrorSource::Downstream => match e.etype() {
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                (0, String::new())
            }
            ErrorType::ReadTimedout => (408, "The request body stopped arriving".into()),
            _ => (400, "Malformed request".into()),
        },
        ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
            ErrorType::HTTPStatus(code) => (*code, format!("Request failed with status {code}")),
            _ => (500, "Internal error in memgate".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_a_client_choice_or_a_fresh_hex_id() {
        let bare = RequestHeader::build("GET", b"/", None).unwrap();
        let (a, b) = (request_id(&bare), request_id(&bare));
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), 32, "{id}");
            assert!(id.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
        }
        // The counter is the last 16 digits.
        let n = |id: &str| u64::from_str_radix(&id[16..], 16).unwrap();
        assert!(n(&b) > n(&a));
        let mut chosen = bare.clone();
        chosen.insert_header("x-request-id", "trace-42").unwrap();
        assert_eq!(request_id(&chosen), "trace-42");
        let mut bad = bare;
        bad.insert_header("x-request-id", "has space").unwrap();
        assert_eq!(request_id(&bad).len(), 32);
    }
}
