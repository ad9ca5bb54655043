//! Which upstream serves a request: the listener's one, for a templated
//! `[mcp] upstream` (`http://mcp-{scope}:8080`) the scope's own server, each
//! with its own connection pool and DNS resolution, or with `[mcp.spawn]` the
//! scope's own process, started by memgate.

use std::sync::Arc;
use std::time::Duration;

use super::exchange::UpstreamClient;
use super::spawn::{ChildLease, NotReady, Supervisor};
use super::target::UpstreamTarget;
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
    /// Each scope has a process of its own, started on its first request.
    Spawned(Arc<Supervisor>),
}

/// Why a request has no upstream.
#[derive(Debug)]
pub enum NoUpstream {
    /// The expansion is not a plain `scheme://host:port`: 500, nothing sent.
    Unsafe(String),
    /// The scope's process is not ready, or none may start now: 503.
    NotReady(NotReady),
}

/// The upstream serving one request. A spawned child counts it as in use
/// (so it is neither stopped for being idle nor to make room) until dropped.
pub struct UpstreamLease {
    client: Arc<UpstreamClient>,
    child: Option<ChildLease>,
}

impl UpstreamLease {
    /// The client itself (shared with every request to this upstream).
    pub fn shared(&self) -> &Arc<UpstreamClient> {
        &self.client
    }

    /// A session id the upstream handed out on this lease: with spawned
    /// processes it is forgotten when its process goes.
    pub fn note_session(&self, session_key: &str) {
        if let Some(child) = &self.child {
            child.note_session(session_key);
        }
    }
}

impl std::ops::Deref for UpstreamLease {
    type Target = UpstreamClient;

    fn deref(&self) -> &UpstreamClient {
        &self.client
    }
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
        matches!(self, Upstreams::PerScope(_) | Upstreams::Spawned(_))
    }

    /// The spawned processes' supervisor, if any.
    pub fn supervisor(&self) -> Option<&Arc<Supervisor>> {
        match self {
            Upstreams::Spawned(supervisor) => Some(supervisor),
            _ => None,
        }
    }

    /// The upstream serving `scope` for `user_id`, held until the lease
    /// drops. An expansion that is not a plain `scheme://host:port` is an
    /// error naming it, never a request.
    pub async fn client(&self, scope: &str, user_id: &str) -> Result<UpstreamLease, NoUpstream> {
        match self {
            Upstreams::Spawned(supervisor) => {
                // Boxed: starting a process is rare, and its future is large.
                let child = Box::pin(supervisor.lease(scope, user_id))
                    .await
                    .map_err(NoUpstream::NotReady)?;
                Ok(UpstreamLease {
                    client: child.client().clone(),
                    child: Some(child),
                })
            }
            Upstreams::One(client) => Ok(UpstreamLease {
                client: client.clone(),
                child: None,
            }),
            Upstreams::PerScope(scoped) => {
                scoped.client(scope, user_id).map(|client| UpstreamLease {
                    client,
                    child: None,
                })
            }
        }
    }
}

impl ScopeUpstreams {
    fn client(&self, scope: &str, user_id: &str) -> Result<Arc<UpstreamClient>, NoUpstream> {
        let upstream = expand(&self.listener.upstream, scope, user_id);
        self.clients
            .try_get_with(upstream.clone(), || {
                let listener = ListenerConfig {
                    upstream: upstream.clone(),
                    ..self.listener.clone()
                };
                UpstreamTarget::new(&self.key, &listener)
                    .map(|target| Arc::new(UpstreamClient::new(Arc::new(target))))
            })
            .map_err(|e| NoUpstream::Unsafe(e.to_string()))
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
        let alice = upstreams.client("alice", "alice").await.unwrap();
        let again = upstreams.client("alice", "alice").await.unwrap();
        let bob = upstreams.client("bob", "bob").await.unwrap();
        assert!(
            Arc::ptr_eq(alice.shared(), again.shared()),
            "one client (and pool) per upstream"
        );
        assert!(!Arc::ptr_eq(alice.shared(), bob.shared()));
        assert_eq!(alice.target().authority(), "mcp-alice:8080");
        let odd = upstreams.client("Project_X", "alice").await.unwrap();
        assert!(
            odd.target().authority().starts_with("mcp-x-"),
            "{}",
            odd.target().authority()
        );

        let one = Upstreams::new("mcp.upstream", &listener("http://127.0.0.1:9")).unwrap();
        assert!(!one.per_scope());
        assert!(Arc::ptr_eq(
            one.client("alice", "alice").await.unwrap().shared(),
            one.client("bob", "bob").await.unwrap().shared()
        ));
    }
}
