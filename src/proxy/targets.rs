//! Which upstream serves a request: the listener's one, or for a templated
//! `[mcp] upstream` (`http://mcp-{scope}:8080`) the scope's own server, each
//! with its own connection pool and DNS resolution.

use std::sync::Arc;
use std::time::Duration;

use super::exchange::UpstreamClient;
use super::upstream::UpstreamTarget;
use crate::config::{ConfigError, ListenerConfig};
use crate::policy::upstream_name::{expand, is_template};

/// Per-scope upstreams remembered (each holds idle connections).
const MAX_SCOPE_UPSTREAMS: u64 = 10_000;
/// A scope's upstream unused this long is dropped with its connections.
const SCOPE_UPSTREAM_IDLE: Duration = Duration::from_secs(600);

pub enum Upstreams {
    /// Every request goes to one upstream.
    One(Arc<UpstreamClient>),
    /// Each scope has a server of its own, named by a template.
    PerScope(ScopeUpstreams),
}

pub struct ScopeUpstreams {
    key: String,
    listener: ListenerConfig,
    clients: moka::sync::Cache<String, Arc<UpstreamClient>>,
}

impl Upstreams {
    /// The upstreams of `listener`; `key` names its `upstream` setting in
    /// errors.
    pub fn new(key: &str, listener: &ListenerConfig) -> Result<Upstreams, ConfigError> {
        if !is_template(&listener.upstream) {
            let target = UpstreamTarget::new(key, listener)?;
            return Ok(Upstreams::One(Arc::new(UpstreamClient::new(Arc::new(
                target,
            )))));
        }
        // Each scope's target reads them when first used; a missing one must
        // stop memgate before it binds, as for a single upstream.
        let section = key.strip_suffix(".upstream").unwrap_or(key);
        listener.resolved_upstream_headers(section)?;
        Ok(Upstreams::PerScope(ScopeUpstreams {
            key: key.to_owned(),
            listener: listener.clone(),
            clients: moka::sync::Cache::builder()
                .max_capacity(MAX_SCOPE_UPSTREAMS)
                .time_to_idle(SCOPE_UPSTREAM_IDLE)
                .build(),
        }))
    }

    /// Whether each scope reaches a server of its own.
    pub fn per_scope(&self) -> bool {
        matches!(self, Upstreams::PerScope(_))
    }

    /// The upstream serving `scope` for `user_id`. An expansion that is not a
    /// plain `scheme://host:port` is an error naming it, never a request.
    pub fn client(&self, scope: &str, user_id: &str) -> Result<Arc<UpstreamClient>, String> {
        match self {
            Upstreams::One(client) => Ok(client.clone()),
            Upstreams::PerScope(scoped) => {
                let upstream = expand(&scoped.listener.upstream, scope, user_id);
                scoped
                    .clients
                    .try_get_with(upstream.clone(), || {
                        let listener = ListenerConfig {
                            upstream: upstream.clone(),
                            ..scoped.listener.clone()
                        };
                        UpstreamTarget::new(&scoped.key, &listener)
                            .map(|target| Arc::new(UpstreamClient::new(Arc::new(target))))
                    })
                    .map_err(|e| e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(upstream: &str) -> ListenerConfig {
        ListenerConfig {
            upstream: upstream.into(),
            ..ListenerConfig::with(1, "http://127.0.0.1:1")
        }
    }

    #[tokio::test]
    async fn each_scope_gets_its_own_upstream_and_pool() {
        let upstreams =
            Upstreams::new("mcp.upstream", &listener("http://mcp-{scope}:8080")).unwrap();
        assert!(upstreams.per_scope());
        let alice = upstreams.client("alice", "alice").unwrap();
        let again = upstreams.client("alice", "alice").unwrap();
        let bob = upstreams.client("bob", "bob").unwrap();
        assert!(
            Arc::ptr_eq(&alice, &again),
            "one client (and pool) per upstream"
        );
        assert!(!Arc::ptr_eq(&alice, &bob));
        assert_eq!(alice.target().authority(), "mcp-alice:8080");
        let odd = upstreams.client("Project_X", "alice").unwrap();
        assert!(
            odd.target().authority().starts_with("mcp-x-"),
            "{}",
            odd.target().authority()
        );

        let one = Upstreams::new("mcp.upstream", &listener("http://127.0.0.1:9")).unwrap();
        assert!(!one.per_scope());
        assert!(Arc::ptr_eq(
            &one.client("alice", "alice").unwrap(),
            &one.client("bob", "bob").unwrap()
        ));
    }
}
