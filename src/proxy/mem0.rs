//! The mem0 listener's request flow (docs/design.md §1, §4): route and permission
//! before the body is read, then the body, then the owner, then one buffered
//! exchange with mem0 whose response is filtered before the client sees it.
//! Every decision is the pure `policy::mem0`'s; this file only moves bytes.

use std::sync::Arc;

use bytes::Bytes;
use pingora::prelude::*;
use serde_json::Value;

use super::exchange::{Exchanged, UpstreamClient};
use super::headers::{Redirects, Relayed};
use super::{Listener, Session, body, errors, headers};
use crate::metrics::{METRICS, memo};
use crate::ownership::{LookupError, OwnerResolver};
use crate::identity::Identity;
use crate::policy::deny::Deny;
use crate::policy::mem0::{
    Decision, Forward, Mem0Policy, Route, allowed_methods, decide_owner, filter_answer,
    owner_ids_in,
};
use crate::policy::{method_override, path};

/// A policy refusal, for the audit trail.
pub struct Mem0Refusal {
    pub status: u16,
    pub message: String,
    /// Refused because the memory belongs to someone else.
    pub ownership: bool,
}

impl From<Mem0Refusal> for super::Refusal {
    fn from(r: Mem0Refusal) -> super::Refusal {
        super::Refusal {
            kind: if r.ownership {
                crate::audit::kind::OWNERSHIP_DENIED
            } else {
                crate::audit::kind::PERMISSION_DENIED
            },
            status: r.status,
            message: r.message,
            mcp_method: None,
            tool: None,
        }
    }
}

/// What the flow did with a request.
pub enum Handled {
    /// A response was written: the upstream's filtered answer, or a refusal.
    Responded(Option<Mem0Refusal>),
    /// An allow-listed route: stream it through pingora to this path and query.
    Stream {
        path_and_query: String,
        scope: String,
    },
}

pub struct Mem0Flow {
    policy: Mem0Policy,
    client: Arc<UpstreamClient>,
    owners: Arc<OwnerResolver>,
    max_response_bytes: usize,
    forward_credentials: bool,
}

impl Mem0Flow {
    pub fn new(
        policy: Mem0Policy,
        owners: Arc<OwnerResolver>,
        max_response_bytes: usize,
        forward_credentials: bool,
    ) -> Self {
        Mem0Flow {
            policy,
            client: owners.client().clone(),
            owners,
            max_response_bytes,
            forward_credentials,
        }
    }

    /// Handles one authenticated request. Sets `route` for metrics.
    pub async fn handle(
        &self,
        session: &mut Session,
        identity: &Identity,
        route: &mut &'static str,
    ) -> Result<Handled> {
        match self.decide(session, identity, route).await {
            Ok(authorised) => {
                self.forward(session, identity, authorised).await?;
                Ok(Handled::Responded(None))
            }
            Err(Step::Stream(forward)) => Ok(Handled::Stream {
                path_and_query: path_and_query(&forward),
                scope: forward.scope,
            }),
            Err(Step::Deny(deny, allow, ownership)) => {
                if ownership {
                    METRICS.ownership_denials.with_label_values(&[*route]).inc();
                }
                let mut extra = Vec::new();
                if let Some(allow) = allow {
                    extra.push(("allow", allow));
                }
                let body =
                    errors::error_body(Listener::Mem0, deny.status, &deny.message, &Value::Null);
                errors::respond_json(session, deny.status, body, &extra).await?;
                Ok(Handled::Responded(Some(Mem0Refusal {
                    status: deny.status,
                    message: deny.message,
                    ownership,
                })))
            }
        }
    }

    /// Route → permission → body → owner, in docs/design.md §4's order.
    async fn decide(
        &self,
        session: &mut Session,
        identity: &Identity,
        route: &mut &'static str,
    ) -> std::result::Result<Authorised, Step> {
        let req = session.req_header();
        // Shared, not copied: the body is read (a mutable borrow) before the
        // query is last used. A standard method and a URI clone without allocating.
        let (method, uri) = (req.method.clone(), req.uri.clone());
        let (raw_path, query) = (uri.path(), uri.query());
        let matched = self
            .policy
            .route(method.as_str(), raw_path)
            .map_err(|deny| {
                let allow = (deny.status == 405)
                    .then(|| path::normalise(raw_path).ok())
                    .flatten()
                    .map(|p| allowed_methods(&p).join(", "));
                Step::Deny(deny, allow, false)
            })?;
        *route = matched.route.label();
        self.policy.admit(identity, &matched).map_err(Step::deny)?;
        let project = headers::single(req, &headers::X_MCP_PROJECT).map_err(Step::deny)?;
        let scope = self.policy.scope_for(identity, project);
        method_override::refuse(req.headers.keys().map(http::HeaderName::as_str), None)
            .map_err(Step::deny)?;
        self.policy
            .check_query(&matched, query)
            .map_err(Step::deny)?;
        if matched.route == Route::AllowListed {
            return match self
                .policy
                .authorise(identity, &scope, &matched, query, None, None)
            {
                Decision::Forward(forward) => Err(Step::Stream(forward)),
                Decision::NeedOwner(_) => Err(Step::deny(Deny::route_not_found())),
                Decision::Deny(deny) => Err(Step::deny(deny)),
            };
        }
        let content_type = headers::single(req, &http::header::CONTENT_TYPE)
            .map_err(Step::deny)?
            .map(str::to_string);
        let body = body::read_whole(session, self.policy.max_body_bytes)
            .await
            .map_err(Step::deny)?;
        let decision = self.policy.authorise(
            identity,
            &scope,
            &matched,
            query,
            content_type.as_deref(),
            body.as_deref(),
        );
        let memory_id = matched.memory_id.clone();
        let forward = match decision {
            Decision::Deny(deny) => return Err(Step::deny(deny)),
            Decision::Forward(forward) => forward,
            Decision::NeedOwner(need) => {
                let owner = match Box::pin(self.owners.owner(&need.memory_id)).await {
                    Ok(owner) => Some(owner),
                    Err(LookupError::NotFound) => None,
                    Err(LookupError::Upstream { status, message }) => {
                        return Err(Step::deny(Deny::new(status, message)));
                    }
                };
                decide_owner(identity, &need.scope, &need.memory_id, owner.as_deref()).map_err(
                    |deny| {
                        // 403 here means another owner; 404 means no such memory.
                        let ownership = deny.status == 403;
                        Step::Deny(deny, None, ownership)
                    },
                )?;
                need.forward
            }
        };
        Ok(Authorised {
            forward,
            body,
            memory_id,
        })
    }

    /// Sends the authorised request and answers the client with mem0's
    /// response, filtered and with owners recorded.
    async fn forward(
        &self,
        session: &mut Session,
        identity: &Identity,
        authorised: Authorised,
    ) -> Result<()> {
        let Authorised {
            mut forward,
            body,
            memory_id,
        } = authorised;
        // The rewritten body is sent, not kept: moved, not copied.
        let body = forward.body.take().map(Bytes::from).or(body);
        let length = body.as_ref().map_or(0, Bytes::len);
        let mut upstream_req = headers::upstream_request(
            session.req_header(),
            &path_and_query(&forward),
            identity,
            &forward.scope,
            self.forward_credentials,
            self.client.target().host_for(session.req_header()),
            |_, _| true,
        )?;
        if length > 0 || session.req_header().method != http::Method::GET {
            upstream_req.content_length(length as u64);
        }
        let started = std::time::Instant::now();
        let answer = match self
            .client
            .exchange(upstream_req, body, self.max_response_bytes)
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                let (status, message) = super::upstream_failure(Listener::Mem0, &e);
                tracing::info!(error = %e, status, "mem0 upstream exchange failed");
                return errors::respond_error(session, Listener::Mem0, status, &message).await;
            }
        };
        memo::observe(
            &METRICS.upstream_duration,
            &[Listener::Mem0.as_str()],
            started.elapsed().as_secs_f64(),
        );
        let redirects = Redirects::of(self.client.target(), session);
        let (header, body) = match self
            .after_response(&forward, memory_id.as_deref(), answer, &redirects)
            .await
        {
            Ok(parts) => parts,
            Err(deny) => {
                return errors::respond_error(session, Listener::Mem0, deny.status, &deny.message)
                    .await;
            }
        };
        session.write_relayed(header).await?;
        session.write_response_body(body, true).await
    }

    /// Response filtering (defence in depth) and owner bookkeeping.
    async fn after_response(
        &self,
        forward: &Forward,
        memory_id: Option<&str>,
        answer: Exchanged,
        redirects: &Redirects<'_>,
    ) -> std::result::Result<(Relayed, Bytes), Deny> {
        let Exchanged {
            header: upstream,
            mut body,
        } = answer;
        let ok = upstream.status.is_success();
        let route = forward.route;
        if ok && (route.filters_results() || route.records_owners()) {
            let unreadable = |_: serde_json::Error| {
                tracing::warn!(
                    route = route.label(),
                    "mem0 answered a non-JSON body; refusing to pass it on unfiltered"
                );
                Deny::new(
                    502,
                    "The mem0 upstream answered something memgate cannot check",
                )
            };
            if route.records_owners() {
                // Read straight from the text: no `Value` of the answer is needed.
                for id in owner_ids_in(&body).map_err(unreadable)? {
                    self.owners.record(id, &forward.scope);
                }
            }
            if route.filters_results()
                && let Some((filtered, dropped)) =
                    filter_answer(&forward.scope, &body).map_err(unreadable)?
            {
                tracing::warn!(
                    route = route.label(),
                    dropped,
                    "mem0 returned other users' memories (it ignored the user filter); dropped them"
                );
                METRICS
                    .response_items_dropped
                    .with_label_values(&[route.label()])
                    .inc_by(dropped as u64);
                body = Bytes::from(filtered);
            }
        }
        if ok
            && route == Route::DeleteMemory
            && let Some(id) = memory_id
        {
            self.owners.forget(id);
        }
        Ok((
            headers::client_response(upstream, Some(body.len()), redirects),
            body,
        ))
    }
}

/// A request the policy let through, with what it needs downstream.
struct Authorised {
    forward: Forward,
    /// The client's body, sent when the policy did not rewrite it.
    body: Option<Bytes>,
    /// The memory a per-id route acts on.
    memory_id: Option<String>,
}

/// How the decision phase ended without a forward.
enum Step {
    /// Refused: the denial, an `Allow` header for 405s, whether it is an
    /// ownership refusal.
    Deny(Deny, Option<String>, bool),
    Stream(Forward),
}

impl Step {
    fn deny(deny: Deny) -> Step {
        Step::Deny(deny, None, false)
    }
}

fn path_and_query(forward: &Forward) -> String {
    match &forward.query {
        Some(q) => {
            let mut target = String::with_capacity(forward.path.len() + 1 + q.len());
            target.push_str(&forward.path);
            target.push('?');
            target.push_str(q);
            target
        }
        None => forward.path.clone(),
    }
}
