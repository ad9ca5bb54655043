//! The mem0 REST policy (docs/design.md §4): turns (identity, scope, request) into
//! `Forward`, `NeedOwner` or `Deny`, with no I/O.
//!
//! The proxy drives it in the order of docs/design.md §4 "Order of checks", so a
//! request that will be refused is refused before its body is read:
//!
//! 1. [`Mem0Policy::route`]: path normalisation (400), unknown route (404),
//!    wrong method (405).
//! 2. [`Mem0Policy::admit`]: the route's permission (403), then
//!    [`Mem0Policy::check_query`]: method overrides and parameters the route
//!    does not take (400). Nothing read yet.
//! 3. Read the body (at most `max_body_bytes + 1` bytes), then
//!    [`Mem0Policy::authorise`]: size (413), the query again (400), content
//!    type (415), JSON shape (400), then the owner rules (403), giving the
//!    rewritten request.
//! 4. On [`Decision::NeedOwner`], look the memory up (owner cache, else
//!    `GET {mem0}` [`memory_path`]) and call [`decide_owner`].
//!
//! [`Mem0Policy::decide`] runs 1–3 in one call.

mod body;
mod fuzz;
#[cfg(test)]
mod proptests;
mod response;
mod routes;
#[cfg(test)]
mod tests;

pub use fuzz::{forwards_only_scope, fuzz_entry};
pub use response::{
    created_ids_scanned, filter_answer, filter_results, foreign_items_in, foreign_items_scanned,
    owner_from_get_response, owner_ids_from_create_response, owner_ids_in,
};
pub use routes::{Route, RouteMatch, allowed_methods, memory_path};

use serde_json::{Map, Value};

use super::deny::Deny;
use super::header_names::{X_MCP_PROJECT, single};
use super::method_override;
use super::query::Query;
use super::scope::{self, IsolationMode, check_requested_user};
use super::{json, path};
use crate::identity::{Identity, Permission};
use body::Edit;
use routes::BodyUse;

/// One request on the mem0 listener, as the proxy sees it.
#[derive(Clone, Copy, Debug)]
pub struct Mem0Request<'a> {
    pub method: &'a str,
    /// The path as sent, still percent-encoded, without the query.
    pub path: &'a str,
    /// The query as sent, without `?`.
    pub query: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub body: Option<&'a [u8]>,
}

/// The `[mem0]` settings the policy depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mem0Policy {
    pub mode: IsolationMode,
    /// Opens `DELETE /memories` (with `user_id` = scope) to non-admin tokens.
    pub allow_delete_all: bool,
    /// (method or `*`, path prefix) pairs forwarded unchanged on top of the
    /// known routes, which they can never override.
    pub allowed_routes: Vec<(String, String)>,
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted (top-level object = 1), at most 100.
    pub max_json_depth: usize,
}

impl Default for Mem0Policy {
    fn default() -> Mem0Policy {
        Mem0Policy {
            mode: IsolationMode::Manual,
            allow_delete_all: false,
            allowed_routes: Vec::new(),
            max_body_bytes: 1024 * 1024,
            max_json_depth: 32,
        }
    }
}

/// A request to send upstream, rewritten to act only for `scope`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub route: Route,
    /// The canonical percent-encoded path to send (not the client's spelling).
    pub path: String,
    /// The exact query string to send, without `?`; `None`: send none.
    pub query: Option<String>,
    /// `Some`: send these bytes instead of the client's body (and fix
    /// Content-Length). `None`: send the client's body unchanged.
    pub body: Option<Vec<u8>>,
    /// The mem0 user_id this request acts for (for an admin, the user named):
    /// filter list/search responses with it, record created ids under it.
    pub scope: String,
}

/// A body under the owner rules: the effective scope, and the bytes to send
/// instead of the client's (`None`: send them as sent).
type ScopedBody = (String, Option<Vec<u8>>);

/// The request may go ahead only if the memory belongs to `scope`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeedOwner {
    pub memory_id: String,
    /// The caller's scope, to pass back to [`decide_owner`].
    pub scope: String,
    /// What to forward once [`decide_owner`] allows it.
    pub forward: Forward,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Forward(Forward),
    NeedOwner(NeedOwner),
    Deny(Deny),
}

/// A mem0 request head the policy admitted: its route, and the scope it
/// acts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mem0Head {
    pub matched: RouteMatch,
    pub scope: String,
}

/// A refused mem0 head: the denial, and the route's metric label when a
/// route was matched before the refusal.
pub type Mem0HeadRefused = (Deny, Option<&'static str>);

impl Mem0Policy {
    /// The scope of a request in this policy's isolation mode.
    pub fn scope_for(&self, identity: &Identity, project_header: Option<&str>) -> String {
        scope::scope_for(identity, &self.mode, project_header)
    }

    /// Everything decided from the head alone, in docs/design.md §4's order:
    /// route (400/404/405), permission (403), the project header, method
    /// overrides, and the query. The gate's mem0 flow and the `admission`
    /// fuzz target call this one function.
    pub fn admit_head(
        &self,
        identity: &Identity,
        method: &str,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> Result<Mem0Head, Mem0HeadRefused> {
        let matched = self
            .route(method, uri.path())
            .map_err(|deny| (deny, None))?;
        let label = Some(matched.route.label());
        let refused = |deny| (deny, label);
        self.admit(identity, &matched).map_err(refused)?;
        let project = single(headers, &X_MCP_PROJECT).map_err(refused)?;
        let scope = self.scope_for(identity, project);
        method_override::refuse(headers.keys().map(http::HeaderName::as_str), None)
            .map_err(refused)?;
        self.check_query(&matched, uri.query()).map_err(refused)?;
        Ok(Mem0Head { matched, scope })
    }

    /// Step 1: normalises the raw path and finds the route (400/404/405).
    pub fn route(&self, method: &str, raw_path: &str) -> Result<RouteMatch, Deny> {
        let decoded = path::normalise(raw_path)?;
        routes::match_route(method, &decoded, &self.allowed_routes)
    }

    /// Step 2: the route's permission (403), decided before any body is read.
    pub fn admit(&self, identity: &Identity, matched: &RouteMatch) -> Result<(), Deny> {
        match self.missing_permission(identity, matched) {
            None => Ok(()),
            Some(Permission::Admin) if matched.route == Route::DeleteAllMemories => {
                Err(Deny::forbidden(
                    "Access denied: deleting all memories needs the admin permission \
                     (mem0.allow_delete_all is off); delete memories one at a time instead",
                ))
            }
            Some(needed) => Err(Deny::forbidden(format!(
                "Access denied: this token lacks the {} permission",
                needed.as_str()
            ))),
        }
    }

    /// The permission `matched` needs: the route's own, or admin for
    /// deleting all memories.
    pub fn needed_permission(&self, matched: &RouteMatch) -> Permission {
        // On mem0 0.1.118–1.0.5 this call drops the whole collection whatever
        // its filters, so it stays admin-only unless the operator opts in.
        if matched.route == Route::DeleteAllMemories && !self.allow_delete_all {
            return Permission::Admin;
        }
        matched.permission()
    }

    /// The permission `matched` needs that `identity` lacks, if any.
    pub fn missing_permission(
        &self,
        identity: &Identity,
        matched: &RouteMatch,
    ) -> Option<Permission> {
        let needed = self.needed_permission(matched);
        (!identity.permissions.allows(needed)).then_some(needed)
    }

    /// Step 2b: the query alone (400), so that a request refused for it is
    /// refused before its body is read: a method override, or a parameter
    /// mem0 does not define for the route. [`authorise`](Self::authorise)
    /// repeats it.
    pub fn check_query(&self, matched: &RouteMatch, query: Option<&str>) -> Result<(), Deny> {
        let Some(raw) = query.filter(|q| !q.is_empty()) else {
            return Ok(());
        };
        if method_override::names_override_param(raw) {
            return Err(method_override::refusal_for_param());
        }
        if matched.route.query_params().is_some() {
            check_query_params(matched, &Query::parse(raw)?)?;
        }
        Ok(())
    }

    /// Step 3: everything else, given the body that was read. Repeats
    /// [`admit`](Self::admit), so it is complete on its own.
    pub fn authorise(
        &self,
        identity: &Identity,
        scope: &str,
        matched: &RouteMatch,
        query: Option<&str>,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Decision {
        self.authorise_or_deny(identity, scope, matched, query, content_type, body)
            .unwrap_or_else(Decision::Deny)
    }

    /// Steps 1–3 in one call.
    pub fn decide(&self, identity: &Identity, scope: &str, request: &Mem0Request<'_>) -> Decision {
        let matched = match self.route(request.method, request.path) {
            Ok(matched) => matched,
            Err(deny) => return Decision::Deny(deny),
        };
        if let Err(deny) = self.admit(identity, &matched) {
            return Decision::Deny(deny);
        }
        self.authorise(
            identity,
            scope,
            &matched,
            request.query,
            request.content_type,
            request.body,
        )
    }

    fn authorise_or_deny(
        &self,
        identity: &Identity,
        scope: &str,
        matched: &RouteMatch,
        query: Option<&str>,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<Decision, Deny> {
        self.admit(identity, matched)?;
        let body = body.filter(|bytes| !bytes.is_empty());
        if body.is_some_and(|bytes| bytes.len() > self.max_body_bytes) {
            return Err(Deny::payload_too_large(self.max_body_bytes));
        }
        // Even an allow-listed route: the upstream may honour the override.
        if query.is_some_and(method_override::names_override_param) {
            return Err(method_override::refusal_for_param());
        }
        let path = path::encode(&matched.path);
        if matched.route == Route::AllowListed {
            return Ok(Decision::Forward(Forward {
                route: matched.route,
                path,
                query: query.filter(|q| !q.is_empty()).map(str::to_owned),
                body: None,
                scope: scope.to_owned(),
            }));
        }
        if scope.is_empty() {
            // A misconfigured shared_user_id or an empty user must never reach
            // mem0, which reads an empty user_id as "no owner filter".
            return Err(Deny::forbidden(format!(
                "Access denied: user {} has no memory scope",
                identity.user_id
            )));
        }
        let mut query = Query::parse(query.unwrap_or(""))?;
        check_query_params(matched, &query)?;
        let (effective, body) =
            match self.scope_plain_body(identity, scope, matched.route, content_type, body) {
                Some(scoped) => scoped?,
                None => {
                    self.scope_parsed_body(identity, scope, matched.route, content_type, body)?
                }
            };
        let effective = scope_query(identity, scope, matched.route, &mut query, effective)?;
        let forward = Forward {
            route: matched.route,
            path,
            query: (!query.is_empty()).then(|| query.encoded()),
            body,
            scope: effective,
        };
        if !matched.route.needs_owner() {
            return Ok(Decision::Forward(forward));
        }
        match &matched.memory_id {
            Some(memory_id) => Ok(Decision::NeedOwner(NeedOwner {
                memory_id: memory_id.clone(),
                scope: scope.to_owned(),
                forward,
            })),
            None => Err(Deny::route_not_found()),
        }
    }

    /// The owner rules for a create or update body whose only `user_id` is
    /// a plain top-level string or absent, decided from a scan that builds
    /// nothing ([`json::top_level_string`]). Gives the effective scope and
    /// the bytes to send instead of the client's (`None`: as sent), exactly as
    /// [`scope_parsed_body`](Self::scope_parsed_body) would. `None`: the body
    /// needs that full parse (anything else, including every refusal of its
    /// shape or syntax).
    fn scope_plain_body(
        &self,
        identity: &Identity,
        scope: &str,
        route: Route,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Option<Result<ScopedBody, Deny>> {
        let inject = match route {
            Route::CreateMemories => true,
            Route::UpdateMemory => false,
            _ => return None,
        };
        let sent = body.filter(|_| is_json_content_type(content_type))?;
        let requested = json::top_level_string(sent, self.max_json_depth, "user_id")?;
        let effective = match check_requested_user(identity, scope, requested) {
            Ok(effective) => effective,
            Err(deny) => return Some(Err(deny)),
        };
        let body = match requested {
            Some(named) if named == effective => None,
            // Another spelling of the caller: rewritten by the full path.
            Some(_) => return None,
            // The common create: the body as sent with its owner in front,
            // not parsed and serialized again.
            None if inject => Some(json::with_leading_member(sent, "user_id", &effective)),
            None => None,
        };
        Some(Ok((effective, body)))
    }

    /// The owner rules for any body, on its parsed tree: the effective scope
    /// and the bytes to send instead of the client's (`None`: as sent).
    fn scope_parsed_body(
        &self,
        identity: &Identity,
        scope: &str,
        route: Route,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<ScopedBody, Deny> {
        let Some(mut object) = self.read_body(route, content_type, body)? else {
            return Ok((scope.to_owned(), None));
        };
        let (effective, edit) = scope_json(identity, scope, route, &mut object)?;
        let body = match (edit, body, object.get("user_id")) {
            (Edit::Unchanged, ..) => None,
            (Edit::AddedUserId, Some(sent), Some(Value::String(owner))) => {
                Some(json::with_leading_member(sent, "user_id", owner))
            }
            _ => Some(json::to_bytes(&object)),
        };
        Ok((effective, body))
    }

    /// Body checks in the order of docs/design.md §1: 413 (done by the caller), 415, 400.
    fn read_body(
        &self,
        route: Route,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<Option<Map<String, Value>>, Deny> {
        match (route.body_use(), body) {
            (BodyUse::Opaque, _) | (BodyUse::None | BodyUse::Optional, None) => Ok(None),
            (BodyUse::None, Some(_)) => {
                Err(Deny::bad_request("This endpoint takes no request body"))
            }
            (BodyUse::Required, None) => Err(Deny::bad_request("Request body is required")),
            (BodyUse::Optional | BodyUse::Required, Some(bytes)) => {
                if !is_json_content_type(content_type) {
                    return Err(Deny::unsupported_media_type());
                }
                Ok(Some(json::parse_object(bytes, self.max_json_depth)?))
            }
        }
    }
}

/// Applies the owner rules to a parsed body; returns the effective scope.
fn scope_json(
    identity: &Identity,
    scope: &str,
    route: Route,
    object: &mut Map<String, Value>,
) -> Result<(String, Edit), Deny> {
    match route {
        Route::CreateMemories => {
            body::check_shape(object, false)?;
            body::scope_body(identity, scope, object, true, false)
        }
        Route::Search => {
            body::check_shape(object, true)?;
            body::scope_body(identity, scope, object, true, true)
        }
        Route::UpdateMemory => {
            body::check_shape(object, false)?;
            body::scope_body(identity, scope, object, false, false)
        }
        // Admin-only endpoints: mem0 configuration, forwarded as sent.
        _ => Ok((scope.to_owned(), Edit::Unchanged)),
    }
}

/// Refuses (400) the first query parameter mem0 does not define for the
/// route ([`Route::query_params`]), naming it (shortened if long).
fn check_query_params(matched: &RouteMatch, query: &Query) -> Result<(), Deny> {
    let Some(allowed) = matched.route.query_params() else {
        return Ok(());
    };
    let Some((unknown, _)) = query
        .pairs()
        .iter()
        .find(|(key, _)| !allowed.contains(&key.as_str()))
    else {
        return Ok(());
    };
    let shown = match unknown.char_indices().nth(64) {
        Some((at, _)) => format!("{}…", &unknown[..at]),
        None => unknown.clone(),
    };
    let route = matched.route.label();
    Err(Deny::bad_request(if allowed.is_empty() {
        format!("Unknown query parameter {shown:?}: {route} takes no query parameters")
    } else {
        format!(
            "Unknown query parameter {shown:?}: {route} takes only {}",
            allowed.join(", ")
        )
    }))
}

/// Applies the owner rules to the query. `GET`/`DELETE /memories` always get
/// `user_id` (the acceptance rule; other selectors are ANDed with it). Other
/// routes take no query ([`check_query_params`]); should one ever take
/// `user_id`, it must still be one the caller may name and is rewritten to
/// the effective scope.
fn scope_query(
    identity: &Identity,
    scope: &str,
    route: Route,
    query: &mut Query,
    effective: String,
) -> Result<String, Deny> {
    let requested = query.get("user_id").filter(|named| !named.is_empty());
    let effective = match route {
        Route::ListMemories | Route::DeleteAllMemories => {
            let has_selector = requested.is_some()
                || ["agent_id", "run_id"]
                    .iter()
                    .any(|key| query.get(key).is_some_and(|v| !v.is_empty()));
            if route == Route::DeleteAllMemories && !has_selector {
                return Err(Deny::forbidden(
                    "Access denied: DELETE /memories needs an explicit user_id",
                ));
            }
            check_requested_user(identity, scope, requested)?
        }
        _ => {
            if query.get("user_id").is_none() {
                return Ok(effective);
            }
            check_requested_user(identity, scope, requested)?;
            effective
        }
    };
    query.set("user_id", &effective);
    Ok(effective)
}

/// `application/json`, any case, parameters (such as `charset`) allowed.
fn is_json_content_type(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Step 4: whether the request may act on `memory_id`, owned by `owner`
/// ([`owner_from_get_response`]'s form: `None` = no such memory, `Some("")` =
/// stored without a user_id). Admins may act on any existing memory.
pub fn decide_owner(
    identity: &Identity,
    scope: &str,
    memory_id: &str,
    owner: Option<&str>,
) -> Result<(), Deny> {
    match owner {
        None => Err(Deny::not_found("Memory not found")),
        Some(_) if identity.permissions.allows(Permission::Admin) => Ok(()),
        Some(owner) if !owner.is_empty() && owner == scope => Ok(()),
        Some(_) => Err(Deny::forbidden(format!(
            "Access denied: Memory {memory_id} does not belong to user {}",
            identity.user_id
        ))),
    }
}
