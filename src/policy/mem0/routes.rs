//! The mem0 REST route table (docs/design.md §4): which (method, path) pairs memgate
//! knows, what permission each needs, and what the policy must do with it.

use crate::identity::Permission;
use crate::policy::deny::Deny;
use crate::policy::path;

/// A mem0 endpoint memgate knows, or an operator-allowed pass-through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    CreateMemories,
    ListMemories,
    DeleteAllMemories,
    Search,
    GetMemory,
    UpdateMemory,
    DeleteMemory,
    MemoryHistory,
    Reset,
    Configure,
    /// Matched `mem0.allowed_routes`: forwarded unchanged (no owner rewriting).
    AllowListed,
}

/// Whether a route reads a request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BodyUse {
    /// mem0 reads none; a non-empty body is refused rather than smuggled along.
    None,
    /// Optional JSON object.
    Optional,
    /// Required JSON object.
    Required,
    /// Not ours to inspect (allow-listed): only the size limit applies.
    Opaque,
}

impl Route {
    /// A stable label for metrics and audit (`route` in docs/design.md §7).
    pub fn label(self) -> &'static str {
        match self {
            Route::CreateMemories => "POST /memories",
            Route::ListMemories => "GET /memories",
            Route::DeleteAllMemories => "DELETE /memories",
            Route::Search => "POST /search",
            Route::GetMemory => "GET /memories/{id}",
            Route::UpdateMemory => "PUT /memories/{id}",
            Route::DeleteMemory => "DELETE /memories/{id}",
            Route::MemoryHistory => "GET /memories/{id}/history",
            Route::Reset => "POST /reset",
            Route::Configure => "POST /configure",
            Route::AllowListed => "allow-listed",
        }
    }

    /// Responses the proxy must pass through [`super::filter_results`].
    pub fn filters_results(self) -> bool {
        matches!(self, Route::ListMemories | Route::Search)
    }

    /// Responses whose ids the proxy records as owned by the scope
    /// ([`super::owner_ids_from_create_response`]).
    pub fn records_owners(self) -> bool {
        self == Route::CreateMemories
    }

    /// Routes that act on one memory and need its owner checked first.
    pub fn needs_owner(self) -> bool {
        matches!(
            self,
            Route::GetMemory | Route::UpdateMemory | Route::DeleteMemory | Route::MemoryHistory
        )
    }

    /// The query parameters mem0's server reads on this route, the union of
    /// its October 2025 (mem0ai 1.0) and 2026 (mem0ai 2.x) `server/main.py`;
    /// any other is refused rather than passed to a server that might one
    /// day read it (`filters`, say) without memgate's owner rules.
    /// `None`: an allow-listed route, forwarded as sent.
    pub fn query_params(self) -> Option<&'static [&'static str]> {
        Some(match self {
            Route::ListMemories => &["user_id", "agent_id", "run_id", "top_k", "show_expired"],
            Route::DeleteAllMemories => &["user_id", "agent_id", "run_id"],
            Route::CreateMemories
            | Route::Search
            | Route::GetMemory
            | Route::UpdateMemory
            | Route::DeleteMemory
            | Route::MemoryHistory
            | Route::Reset
            | Route::Configure => &[],
            Route::AllowListed => return None,
        })
    }

    pub(super) fn body_use(self) -> BodyUse {
        match self {
            Route::CreateMemories | Route::Search | Route::UpdateMemory | Route::Configure => {
                BodyUse::Required
            }
            Route::Reset => BodyUse::Optional,
            Route::AllowListed => BodyUse::Opaque,
            Route::ListMemories
            | Route::DeleteAllMemories
            | Route::GetMemory
            | Route::DeleteMemory
            | Route::MemoryHistory => BodyUse::None,
        }
    }
}

/// The outcome of routing: which endpoint, on which (decoded, normalised) path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteMatch {
    pub route: Route,
    pub method: String,
    /// Decoded canonical path; see [`path::normalise`].
    pub path: String,
    /// The decoded `{id}` of the per-memory routes.
    pub memory_id: Option<String>,
}

impl RouteMatch {
    /// The permission the route needs before anything else is looked at.
    /// `DELETE /memories` is decided by the policy (`allow_delete_all`).
    pub fn permission(&self) -> Permission {
        match self.route {
            Route::ListMemories | Route::Search | Route::GetMemory | Route::MemoryHistory => {
                Permission::Read
            }
            Route::CreateMemories
            | Route::DeleteAllMemories
            | Route::UpdateMemory
            | Route::DeleteMemory => Permission::Write,
            Route::Reset | Route::Configure => Permission::Admin,
            Route::AllowListed => match self.method.as_str() {
                "GET" | "HEAD" | "OPTIONS" => Permission::Read,
                _ => Permission::Write,
            },
        }
    }
}

/// The methods mem0 serves on a decoded path (for an `Allow` header); empty
/// for unknown paths.
pub fn allowed_methods(decoded_path: &str) -> Vec<&'static str> {
    routes_on(decoded_path)
        .iter()
        .map(|(method, _)| *method)
        .collect()
}

/// Routes `method` on a normalised path. Known routes always win over the
/// allow-list (so allowing `/` cannot switch off the owner rules); the
/// allow-list may open an unknown path or an unknown method on a known path.
pub(super) fn match_route(
    method: &str,
    decoded_path: &str,
    allowed_routes: &[(String, String)],
) -> Result<RouteMatch, Deny> {
    let routes = routes_on(decoded_path);
    let found = routes.iter().find(|(m, _)| *m == method).map(|(_, r)| *r);
    let route = match found {
        Some(route) => route,
        None if allow_listed(method, decoded_path, allowed_routes) => Route::AllowListed,
        None if routes.is_empty() => return Err(Deny::route_not_found()),
        None => return Err(Deny::method_not_allowed()),
    };
    let memory_id = if route.needs_owner() {
        decoded_path.split('/').nth(2).map(str::to_owned)
    } else {
        None
    };
    Ok(RouteMatch {
        route,
        method: method.to_owned(),
        path: decoded_path.to_owned(),
        memory_id,
    })
}

/// Every (method, route) mem0 serves on a decoded path.
fn routes_on(decoded_path: &str) -> &'static [(&'static str, Route)] {
    let mut segments = decoded_path
        .strip_prefix('/')
        .unwrap_or(decoded_path)
        .split('/');
    let shape = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    );
    match shape {
        (Some("memories"), None, _, _) => &[
            ("GET", Route::ListMemories),
            ("POST", Route::CreateMemories),
            ("DELETE", Route::DeleteAllMemories),
        ],
        (Some("memories"), Some(_), None, _) => &[
            ("GET", Route::GetMemory),
            ("PUT", Route::UpdateMemory),
            ("DELETE", Route::DeleteMemory),
        ],
        (Some("memories"), Some(_), Some("history"), None) => &[("GET", Route::MemoryHistory)],
        (Some("search"), None, _, _) => &[("POST", Route::Search)],
        (Some("reset"), None, _, _) => &[("POST", Route::Reset)],
        (Some("configure"), None, _, _) => &[("POST", Route::Configure)],
        _ => &[],
    }
}

/// Segment-aware prefix match: `/graph` allows `/graph` and `/graph/x`, not
/// `/graphql`; `/` allows every path. Methods are exact or `*`.
fn allow_listed(method: &str, decoded_path: &str, allowed_routes: &[(String, String)]) -> bool {
    allowed_routes.iter().any(|(allowed_method, prefix)| {
        let method_ok = allowed_method == "*" || allowed_method == method;
        let prefix = prefix.trim_end_matches('/');
        let path_ok = prefix.is_empty()
            || decoded_path == prefix
            || decoded_path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'));
        method_ok && path_ok
    })
}

/// The encoded path of one memory, for the proxy's ownership lookup
/// (`GET {mem0}/memories/{id}`).
pub fn memory_path(memory_id: &str) -> String {
    format!("/memories/{}", path::encode_segment(memory_id))
}
