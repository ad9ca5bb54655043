//! `[mem0]`: the mem0 listener and the mem0 policy's keys.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{ConfigError, ListenerConfig, Upstream, UpstreamHeaderSpecs, invalid};

/// The `[mem0]` listener: a proxied listener plus the mem0 policy's own keys.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mem0Config {
    pub listen: SocketAddr,
    pub upstream: String,
    pub connect_timeout_secs: u64,
    pub read_timeout_secs: u64,
    pub forward_credentials: bool,
    /// Send the client's `Host` upstream (for upstreams that build URLs from it).
    pub preserve_host: bool,
    /// Headers sent upstream on every request, and on memgate's own owner
    /// lookups (`{ env = … }`, `{ file = … }` or a string).
    pub upstream_headers: UpstreamHeaderSpecs,
    /// Lets non-admin tokens call `DELETE /memories` (always with user_id = scope).
    pub allow_delete_all: bool,
    /// Routes outside docs/design.md §4 that are forwarded unchanged, as
    /// `"METHOD /path-prefix"` (`*` for any method), e.g. `"GET /docs"`.
    pub allowed_routes: Vec<String>,
    /// Memory owners remembered (memory id → user); others are asked of mem0.
    pub owner_cache_capacity: u64,
}

impl Mem0Config {
    /// The settings every proxied listener has.
    pub fn listener(&self) -> ListenerConfig {
        ListenerConfig {
            listen: self.listen,
            upstream: self.upstream.clone(),
            connect_timeout_secs: self.connect_timeout_secs,
            read_timeout_secs: self.read_timeout_secs,
            forward_credentials: self.forward_credentials,
            preserve_host: self.preserve_host,
            upstream_headers: self.upstream_headers.clone(),
        }
    }

    /// `allowed_routes` as (method, path prefix) pairs.
    pub fn allowed_route_pairs(&self) -> Result<Vec<(String, String)>, ConfigError> {
        self.allowed_routes
            .iter()
            .map(|entry| {
                let mut parts = entry.split_whitespace();
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(method), Some(path), None)
                        if path.starts_with('/')
                            && (method == "*"
                                || method.bytes().all(|b| b.is_ascii_uppercase())) =>
                    {
                        Ok((method.to_string(), path.to_string()))
                    }
                    _ => Err(invalid(
                        "mem0.allowed_routes",
                        format!("{entry:?} is not \"METHOD /path\" (METHOD upper-case or *)"),
                    )),
                }
            })
            .collect()
    }

    /// `upstream` and the listener's keys.
    pub(super) fn validate_upstream(&self) -> Result<(), ConfigError> {
        Upstream::parse("mem0.upstream", &self.upstream)?;
        self.listener().validate("mem0")
    }
}
