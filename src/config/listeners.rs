//! What every proxied listener has (`ListenerConfig`), upstream addresses,
//! and `[admin]`.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::headers::validate_upstream_headers;
use super::{ConfigError, UpstreamHeaderSpecs, invalid, resolve_upstream_headers};

/// One proxied listener (`[mcp]` or `[mem0]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub listen: SocketAddr,
    pub upstream: String,
    pub connect_timeout_secs: u64,
    /// Longest silence allowed while reading from the upstream (also between SSE events).
    pub read_timeout_secs: u64,
    /// Pass `X-MCP-Token` / `Authorization` on to the upstream (off: they are removed).
    pub forward_credentials: bool,
    /// Send the client's `Host` upstream instead of the upstream's own authority.
    pub preserve_host: bool,
    /// Headers memgate sends upstream on every request, over any of the same name.
    pub upstream_headers: UpstreamHeaderSpecs,
}

impl ListenerConfig {
    pub(crate) fn with(port: u16, upstream: &str) -> Self {
        ListenerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            upstream: upstream.into(),
            connect_timeout_secs: 5,
            read_timeout_secs: 600,
            forward_credentials: false,
            preserve_host: false,
            upstream_headers: UpstreamHeaderSpecs::new(),
        }
    }

    /// `upstream_headers` of listener `section` with every value read (from
    /// the process environment and files) and checked.
    pub fn resolved_upstream_headers(
        &self,
        section: &str,
    ) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, ConfigError> {
        resolve_upstream_headers(section, &self.upstream_headers, |var| {
            std::env::var(var).ok()
        })
    }
}

impl ListenerConfig {
    /// The keys every proxied listener checks the same way; `name` is its section.
    pub(super) fn validate(&self, name: &str) -> Result<(), ConfigError> {
        validate_upstream_headers(name, &self.upstream_headers)?;
        if self.connect_timeout_secs == 0 {
            return Err(invalid(
                format!("{name}.connect_timeout_secs"),
                "must be at least 1",
            ));
        }
        if self.read_timeout_secs == 0 {
            return Err(invalid(
                format!("{name}.read_timeout_secs"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

/// No two listeners may share an address.
pub(super) fn validate_listen_addresses(
    listeners: [(&str, SocketAddr); 3],
) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for (key, addr) in listeners {
        if !seen.insert(addr) {
            return Err(invalid(key, format!("{addr} is used by another listener")));
        }
    }
    Ok(())
}

/// A parsed upstream address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Upstream {
    pub fn parse(key: &str, text: &str) -> Result<Upstream, ConfigError> {
        let url = url::Url::parse(text).map_err(|e| invalid(key, format!("{text:?}: {e}")))?;
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(invalid(
                    key,
                    format!("scheme {other:?} is not http or https"),
                ));
            }
        };
        if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
            return Err(invalid(
                key,
                "must be scheme://host:port only (no path, query or credentials)",
            ));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string(),
            None => return Err(invalid(key, "has no host")),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| invalid(key, "has no port"))?;
        Ok(Upstream { host, port, tls })
    }
}
