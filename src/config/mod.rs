//! Configuration: `config.toml` plus `MEMGATE_SECTION__KEY` environment overrides,
//! validated up front so a bad value stops memgate before any port is bound
//! (docs/design.md §9). Every error names the offending key.

mod audit;
mod auth;
mod database;
mod env;
mod headers;
mod isolation;
mod limits;
mod listeners;
mod load;
mod mask;
mod mcp;
mod mem0;
mod oauth;
mod rate_limit;
mod secret_guard;
mod server;
mod spawn;
mod tls;

pub use audit::AuditConfig;
pub use auth::AuthConfig;
pub use database::DatabaseConfig;
pub use env::near_miss_overrides;
pub use headers::{HeaderSource, UpstreamHeaderSpecs, resolve_upstream_headers};
pub use isolation::{IsolationConfig, IsolationModeName};
pub use limits::LimitsConfig;
use listeners::validate_listen_addresses;
pub use listeners::{AdminConfig, ListenerConfig, Upstream};
pub(crate) use load::io_reason;
pub use load::{DEFAULT_PATH, Loaded, from_parts, load};
pub use mask::mask_url_password;
pub use mcp::McpConfig;
pub use mem0::Mem0Config;
pub use oauth::{
    IntrospectionConfig, OAuthConfig, OAuthResources, OneOrMany, SUPPORTED_ALGS,
    check_authorization_server_url,
};
pub use rate_limit::{RateLimitBackend, RateLimitConfig, RedisConfig};
pub use secret_guard::{GuardMode, RuleConfig, SecretGuardConfig};
pub use server::{LogConfig, ServerConfig};
pub use spawn::{PORT_PLACEHOLDER, SPAWN_UPSTREAM, SpawnConfig, SpawnTransport};
pub use tls::TlsConfig;
pub use tls::certified_key;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read; `fix` says what to do about it.
    #[error("{path}: cannot read the config file: {reason}; {fix}")]
    Read {
        path: String,
        reason: String,
        fix: &'static str,
    },
    /// `location` is `file:line:column`.
    #[error("{location}: not valid TOML: {message}; correct the file there")]
    Syntax { location: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    /// A setting memgate knows but cannot honour yet; the text says which.
    #[error("{0}")]
    Unsupported(String),
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub database: DatabaseConfig,
    pub mcp: McpConfig,
    pub mem0: Mem0Config,
    pub admin: AdminConfig,
    pub auth: AuthConfig,
    pub isolation: IsolationConfig,
    pub limits: LimitsConfig,
    pub rate_limit: RateLimitConfig,
    pub redis: RedisConfig,
    pub audit: AuditConfig,
    pub secret_guard: SecretGuardConfig,
    pub tls: TlsConfig,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub oauth: OAuthConfig,
}

impl Default for Config {
    fn default() -> Self {
        let mem0 = ListenerConfig::with(8000, "http://127.0.0.1:8001");
        let mcp = ListenerConfig::with(8080, "http://127.0.0.1:8081");
        Config {
            database: DatabaseConfig::default(),
            mcp: McpConfig {
                listen: mcp.listen,
                upstream: mcp.upstream,
                connect_timeout_secs: mcp.connect_timeout_secs,
                read_timeout_secs: mcp.read_timeout_secs,
                forward_credentials: false,
                preserve_host: false,
                upstream_headers: UpstreamHeaderSpecs::new(),
                path: "/mcp".into(),
                sse_path: "/sse".into(),
                messages_path: "/messages/".into(),
                allowed_paths: Vec::new(),
                allowed_origins: Vec::new(),
                unknown_tools: crate::policy::mcp::UnknownTools::Deny,
                session_idle_secs: 3600,
                max_sessions: 100_000,
                tools: std::collections::BTreeMap::new(),
                spawn: None,
            },
            mem0: Mem0Config {
                listen: mem0.listen,
                upstream: mem0.upstream,
                connect_timeout_secs: mem0.connect_timeout_secs,
                read_timeout_secs: 120,
                forward_credentials: false,
                preserve_host: false,
                upstream_headers: UpstreamHeaderSpecs::new(),
                allow_delete_all: false,
                allowed_routes: Vec::new(),
                owner_cache_capacity: 100_000,
            },
            admin: AdminConfig::default(),
            auth: AuthConfig::default(),
            isolation: IsolationConfig::default(),
            limits: LimitsConfig::default(),
            rate_limit: RateLimitConfig::default(),
            redis: RedisConfig::default(),
            audit: AuditConfig::default(),
            secret_guard: SecretGuardConfig::default(),
            tls: TlsConfig::default(),
            server: ServerConfig::default(),
            log: LogConfig::default(),
            oauth: OAuthConfig::default(),
        }
    }
}

impl Config {
    /// Each section checks its own keys. The order is fixed so that, of
    /// several wrong keys, the same one is always reported first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.database.validate()?;
        self.mcp.validate_upstream()?;
        self.mem0.validate_upstream()?;
        validate_listen_addresses([
            ("mcp.listen", self.mcp.listen),
            ("mem0.listen", self.mem0.listen),
            ("admin.listen", self.admin.listen),
        ])?;
        self.auth.validate_cache()?;
        self.mem0.allowed_route_pairs()?;
        self.mcp.validate_endpoints()?;
        self.isolation.validate()?;
        self.limits.validate()?;
        self.rate_limit.validate(&self.redis)?;
        self.audit.validate()?;
        secret_guard::validate(&self.secret_guard)?;
        self.auth.validate_last_used()?;
        self.tls.validate()?;
        self.server.validate()?;
        self.validate_oauth()
    }

    /// Reads every `upstream_headers` value now, as `serve` does before it
    /// binds: a missing variable or unreadable file is reported by name.
    pub fn check_upstream_headers(&self) -> Result<(), ConfigError> {
        self.mcp.listener().resolved_upstream_headers("mcp")?;
        self.mem0.listener().resolved_upstream_headers("mem0")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
