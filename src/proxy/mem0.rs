//! The mem0 listener's request flow (docs/design.md §1, §4): route and permission
//! before the body is read, then the body, then the owner, then one buffered
//! exchange with mem0 whose response is filtered before the client sees it.
//! Every decision is the pure `policy::mem0`'s; this file only moves bytes.

use std::sync::Arc;

use bytes::Bytes;
use pingora::prelude::*;
use serde_json::Value;

use super::headers::Redirects;
use super::{Refusal, RefusedFor, body, errors, headers};
use crate::identity::{Identity, Permission};
use crate::listener::{Listener, Relayed, Session};
use crate::metrics::{METRICS, memo};
use crate::ownership::{LookupError, OwnerResolver};
use crate::policy::deny::Deny;
use crate::policy::header_names;
use crate::policy::mem0::{
    Decision, Forward, Mem0Head, Mem0Policy, Route, allowed_methods, decide_owner, filter_answer,
    owner_ids_in,
};
use crate::policy::path;
use crate::policy::secrets::{Finding, GuardOutcome, SecretGuard};
use crate::upstream::exchange::{Exchanged, UpstreamClient};

/// What the flow did with a request.
pub enum Handled {
    /// A response was written: the upstream's filtered answer, or a refusal.
    Responded(Option<Refusal>),
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
    /// The secret guard, unless `[secret_guard] mode = "off"`.
    guard: Option<Arc<SecretGuard>>,
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
            guard: None,
        }
    }

    /// Scans writes for secrets with `guard` (docs/design.md §12).
    pub fn guarding_secrets(mut self, guard: Option<Arc<SecretGuard>>) -> Self {
        self.guard = guard;
        self
    }

    /// Handles one authenticated request. Sets `route` for metrics.
    pub async fn handle(
        &self,
        session: &mut Session,
        identity: &Identity,
        route: &mut &'static str,
        secrets: &mut Vec<Finding>,
    ) -> Result<Handled> {
        match self.decide(session, identity, route, secrets).await {
            Ok(Decided::Exchange(authorised)) => {
                self.forward(session, identity, authorised, secrets).await?;
                Ok(Handled::Responded(None))
            }
            Ok(Decided::Stream(forward)) => Ok(Handled::Stream {
                path_and_query: path_and_query(&forward),
                scope: forward.scope,
            }),
            Err(Refused { deny, allow, kind }) => {
                if kind == RefusedFor::Ownership {
                    METRICS.ownership_denials.with_label_values(&[*route]).inc();
                }
                let mut extra = Vec::new();
                if let Some(allow) = allow {
                    extra.push(("allow", allow));
                }
                let body =
                    errors::error_body(Listener::Mem0, deny.status, &deny.message, &Value::Null);
                errors::respond_json(session, deny.status, body, &extra).await?;
                Ok(Handled::Responded(Some(Refusal::new(deny, kind))))
            }
        }
    }

    /// The permission a request needs that `identity` lacks (an OAuth
    /// caller's scopes do not grant it), when its route is known.
    pub fn missing_permission(
        &self,
        req: &pingora::http::RequestHeader,
        identity: &Identity,
    ) -> Option<Permission> {
        let matched = self
            .policy
            .route(req.method.as_str(), req.uri.path())
            .ok()?;
        self.policy.missing_permission(identity, &matched)
    }

    /// The permission a request's route needs, when it has a route.
    pub fn needed_permission(&self, req: &pingora::http::RequestHeader) -> Option<Permission> {
        let matched = self
            .policy
            .route(req.method.as_str(), req.uri.path())
            .ok()?;
        Some(self.policy.needed_permission(&matched))
    }

    /// Route → permission → body → owner, in docs/design.md §4's order.
    async fn decide(
        &self,
        session: &mut Session,
        identity: &Identity,
        route: &mut &'static str,
        secrets: &mut Vec<Finding>,
    ) -> std::result::Result<Decided, Refused> {
        let req = session.req_header();
        // Shared, not copied: the body is read (a mutable borrow) before the
        // query is last used. A URI clone does not allocate.
        let uri = req.uri.clone();
        let query = uri.query();
        let head = self
            .policy
            .admit_head(identity, req.method.as_str(), &uri, &req.headers);
        let Mem0Head { matched, scope } = match head {
            Ok(head) => head,
            Err((deny, label)) => {
                if let Some(label) = label {
                    *route = label;
                }
                let allow = (deny.status == 405)
                    .then(|| path::normalise(uri.path()).ok())
                    .flatten()
                    .map(|p| allowed_methods(&p).join(", "));
                return Err(Refused {
                    deny,
                    allow,
                    kind: RefusedFor::Policy,
                });
            }
        };
        *route = matched.route.label();
        if matched.route == Route::AllowListed {
            return match self
                .policy
                .authorise(identity, &scope, &matched, query, None, None)
            {
                Decision::Forward(forward) => Ok(Decided::Stream(forward)),
                Decision::NeedOwner(_) => Err(Deny::route_not_found().into()),
                Decision::Deny(deny) => Err(deny.into()),
            };
        }
        let content_type =
            header_names::single(&req.headers, &http::header::CONTENT_TYPE)?.map(str::to_string);
        let body = body::read_whole(session, self.policy.max_body_bytes).await?;
        let (body, scanned) = self.guarded(matched.route, body, secrets)?;
        let decision = self.policy.authorise(
            identity,
            &scope,
            &matched,
            query,
            content_type.as_deref(),
            body.as_deref(),
        );
        // The policy's own refusals (415, 400…) come first, in their order;
        // a body the guard could not read is never forwarded.
        if !scanned && !matches!(decision, Decision::Deny(_)) {
            return Err(Deny::bad_request("The request body is not valid JSON").into());
        }
        let memory_id = matched.memory_id.clone();
        let forward = match decision {
            Decision::Deny(deny) => return Err(deny.into()),
            Decision::Forward(forward) => forward,
            Decision::NeedOwner(need) => {
                let owner = match Box::pin(self.owners.owner(&need.memory_id)).await {
                    Ok(owner) => Some(owner),
                    Err(LookupError::NotFound) => None,
                    Err(LookupError::Upstream { status, message }) => {
                        return Err(Deny::new(status, message).into());
                    }
                };
                decide_owner(identity, &need.scope, &need.memory_id, owner.as_deref()).map_err(
                    |deny| {
                        // 403 here means another owner; 404 means no such memory.
                        let kind = if deny.status == 403 {
                            RefusedFor::Ownership
                        } else {
                            RefusedFor::Policy
                        };
                        Refused {
                            deny,
                            allow: None,
                            kind,
                        }
                    },
                )?;
                need.forward
            }
        };
        Ok(Decided::Exchange(Authorised {
            forward,
            body,
            memory_id,
        }))
    }

    /// Sends the authorised request and answers the client with mem0's
    /// response, filtered and with owners recorded.
    async fn forward(
        &self,
        session: &mut Session,
        identity: &Identity,
        authorised: Authorised,
        secrets: &mut Vec<Finding>,
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
            self.client
                .target()
                .host_for(headers::client_host(session.req_header())),
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
                let (status, message) = crate::upstream::upstream_failure(Listener::Mem0, &e);
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
            .after_response(&forward, memory_id.as_deref(), answer, &redirects, secrets)
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
        secrets: &mut Vec<Finding>,
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
        // Memories stored before the guard was on go back without their secrets.
        if let Some(guard) = self.guard.as_deref().filter(|g| g.scans_responses())
            && let Some((redacted, found)) = guard.redact_response(&body)
        {
            secrets.extend(found);
            body = Bytes::from(redacted);
        }
        Ok((
            headers::client_response(upstream, Some(body.len()), redirects),
            body,
        ))
    }
}

impl Mem0Flow {
    /// The secret guard on a write bound for mem0 (`POST /memories`, `PUT
    /// /memories/{id}`): the body with every secret replaced, or a refusal.
    /// What it found goes to `secrets`, never any part of a value. With the
    /// body, whether it was scanned: one the guard cannot read as strict JSON
    /// must not be forwarded.
    fn guarded(
        &self,
        route: Route,
        body: Option<Bytes>,
        secrets: &mut Vec<Finding>,
    ) -> std::result::Result<(Option<Bytes>, bool), Refused> {
        let (Some(guard), Some(sent)) = (&self.guard, &body) else {
            return Ok((body, true));
        };
        let outcome = match route {
            Route::CreateMemories => guard.scan_mem0_add(sent),
            Route::UpdateMemory => guard.scan_mem0_update(sent),
            _ => return Ok((body, true)),
        };
        match outcome {
            Err(_) => Ok((body, false)),
            Ok(GuardOutcome::Clean) => Ok((body, true)),
            Ok(GuardOutcome::Redacted { body, findings }) => {
                secrets.extend(findings);
                Ok((Some(Bytes::from(body)), true))
            }
            Ok(GuardOutcome::Refused { finding }) => {
                let deny = Deny::forbidden(finding.to_string());
                secrets.push(finding);
                Err(Refused {
                    deny,
                    allow: None,
                    kind: RefusedFor::Secret,
                })
            }
        }
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

/// What the policy decided a request becomes.
enum Decided {
    /// An exchange memgate makes: the forward rewritten, the answer filtered.
    Exchange(Authorised),
    /// An allow-listed route, streamed through as it is.
    Stream(Forward),
}

/// A refused request: the denial, an `Allow` header for 405s, and what kind
/// of refusal it is for the audit trail.
struct Refused {
    deny: Deny,
    allow: Option<String>,
    kind: RefusedFor,
}

impl From<Deny> for Refused {
    fn from(deny: Deny) -> Refused {
        Refused {
            deny,
            allow: None,
            kind: RefusedFor::Policy,
        }
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
