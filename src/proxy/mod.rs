//! The gate of a proxied listener: every request goes through the phases
//! admit → authenticate → authorise → resolve owner → forward → record. Each
//! step hands decisions to `auth` and `policy`; this layer knows nothing of
//! mem0's routes (docs/design.md §1, §10).

mod authenticate;
pub mod body;
pub mod client_ip;
pub mod errors;
mod handler;
pub mod headers;
pub mod mcp;
pub mod mem0;
mod refusal;
mod request;
mod stream;

use errors::status_label;
pub use refusal::{Refusal, RefusedFor};
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
use crate::policy::secrets::Finding;
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
    /// Secrets the guard found in the request's body (rule and place only).
    secrets: Vec<Finding>,
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
            secrets: Vec::new(),
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
    resource: oauth::Resource,
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
                Listener::Mcp => oauth::Resource::Mcp,
                Listener::Mem0 | Listener::Admin => oauth::Resource::Mem0,
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
                    let refusal = Refusal::new(deny, RefusedFor::Policy);
                    self.refuse_insufficient_scope(session, ctx, needed, body, refusal)
                        .await?;
                    return Ok(true);
                }
                match flow
                    .handle(session, &identity, &mut ctx.route, &mut ctx.secrets)
                    .await?
                {
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
                match flow
                    .handle(session, &identity, &scope, scoped, &mut ctx.secrets)
                    .await?
                {
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
        self.record_secrets(session, ctx);
        match stream {
            None => Ok(true),
            Some((scope, watch)) => {
                ctx.scope = scope;
                ctx.mcp_watch = watch;
                Ok(false)
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
