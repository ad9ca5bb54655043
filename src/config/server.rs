//! `[server]` and `[log]`: how `serve` runs its listeners and what it logs.

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// `[log]`: what `serve` logs besides its own events.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// One line per request (`crate::access_log`); off by default.
    pub access: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Worker threads per listener.
    pub threads: usize,
    /// CIDRs whose X-Forwarded-For is believed (read right to left).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// On SIGTERM, how long in-flight requests and streams may take to finish.
    pub grace_period_secs: u64,
    /// Client connections open at once per proxied listener; 0 = no cap.
    pub max_connections: usize,
    /// Seconds a client has to send a complete request head.
    pub header_timeout_secs: u64,
    /// Seconds a kept-alive client connection may sit idle between requests.
    pub keepalive_idle_secs: u64,
    /// Whether a listener's worker threads share one work-stealing runtime
    /// (pingora's listening service) or each runs its own runtime, listening
    /// socket and connections (`crate::listener::per_thread`).
    pub work_stealing: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            threads: 2,
            trusted_proxies: Vec::new(),
            grace_period_secs: 30,
            max_connections: 10_000,
            header_timeout_secs: 10,
            keepalive_idle_secs: 60,
            work_stealing: false,
        }
    }
}

impl ServerConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.header_timeout_secs == 0 {
            return Err(invalid("server.header_timeout_secs", "must be at least 1"));
        }
        if self.keepalive_idle_secs == 0 {
            return Err(invalid("server.keepalive_idle_secs", "must be at least 1"));
        }
        if self.threads == 0 {
            return Err(invalid("server.threads", "must be at least 1"));
        }
        Ok(())
    }
}
