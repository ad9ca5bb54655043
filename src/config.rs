//! Configuration: `config.toml` plus `MEMGATE_SECTION__KEY` environment overrides,
//! validated up front so a bad value stops memgate before any port is bound
//! (docs/design.md §9). Every error names the offending key.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_PATH: &str = "config.toml";
const ENV_PREFIX: &str = "MEMGATE_";

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
    pub tls: TlsConfig,
    pub server: ServerConfig,
    pub log: LogConfig,
}

/// `[log]`: what `serve` logs besides its own events.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// One line per request (`crate::access_log`); off by default.
    pub access: bool,
}

/// `[tls]`: PEM certificate chain and key for the mcp and mem0 listeners.
/// Both empty: plain HTTP (terminate TLS in front of memgate instead).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: String,
    pub key: String,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    /// Connecting to the store and waiting for a pooled connection give up after this.
    pub connect_timeout_secs: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://memgate.db?mode=rwc".into(),
            max_connections: 10,
            connect_timeout_secs: 3,
        }
    }
}

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

/// `upstream_headers`: header name → where its value comes from.
pub type UpstreamHeaderSpecs = std::collections::BTreeMap<String, HeaderSource>;

/// One `upstream_headers` value: the value itself, or where to read it when
/// memgate starts (secrets stay out of the config file that way).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum HeaderSource {
    Literal(String),
    Env { env: String },
    File { file: String },
}

/// Literal values are secrets as often as not: never shown.
impl std::fmt::Debug for HeaderSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderSource::Literal(_) => f.write_str("\"****\""),
            HeaderSource::Env { env } => f.debug_struct("Env").field("env", env).finish(),
            HeaderSource::File { file } => f.debug_struct("File").field("file", file).finish(),
        }
    }
}

/// Headers memgate frames or addresses the request with itself; an
/// `upstream_headers` entry cannot replace them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "proxy-connection",
];

/// Names that differ only in case, `-` or `_` are one header to an upstream.
fn squash(name: &str) -> String {
    name.bytes()
        .filter(|b| *b != b'-' && *b != b'_')
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect()
}

/// Checks what can be checked without reading the environment or files:
/// names, and literal values.
fn validate_upstream_headers(
    section: &str,
    specs: &UpstreamHeaderSpecs,
) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for (name, source) in specs {
        let key = format!("{section}.upstream_headers.{name}");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(invalid(
                key,
                "is not a valid header name; use letters, digits and -",
            ));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(invalid(
                key,
                format!(
                    "memgate sets this header itself; remove it (for Host use {section}.preserve_host)"
                ),
            ));
        }
        if !seen.insert(squash(name)) {
            return Err(invalid(
                key,
                "names a header already listed (names differing only in case, - or _ are one header); keep one",
            ));
        }
        match source {
            HeaderSource::Literal(value) => header_value(&key, value, "the value").map(drop)?,
            HeaderSource::Env { env } if env.is_empty() => {
                return Err(invalid(key, "env is empty; name an environment variable"));
            }
            HeaderSource::File { file } if file.is_empty() => {
                return Err(invalid(key, "file is empty; name a file"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A header value from the configuration, checked: `what` says where it came
/// from, never what it is.
fn header_value(key: &str, value: &str, what: &str) -> Result<http::HeaderValue, ConfigError> {
    if value.is_empty() {
        return Err(invalid(
            key,
            format!("{what} is empty; give it a value or remove the header"),
        ));
    }
    let mut value = http::HeaderValue::from_str(value).map_err(|_| {
        invalid(
            key,
            format!("{what} is not a valid header value (no line breaks or control characters)"),
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Reads every `upstream_headers` value of `section` (literal, environment
/// variable through `env`, or file with one trailing newline trimmed) and
/// checks it. The values are secrets: errors name the key, never the value.
pub fn resolve_upstream_headers(
    section: &str,
    specs: &UpstreamHeaderSpecs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, ConfigError> {
    validate_upstream_headers(section, specs)?;
    specs
        .iter()
        .map(|(name, source)| {
            let key = format!("{section}.upstream_headers.{name}");
            let value = match source {
                HeaderSource::Literal(value) => header_value(&key, value, "the value")?,
                HeaderSource::Env { env: var } => {
                    let value = env(var).ok_or_else(|| {
                        invalid(&key, format!("environment variable {var} is not set"))
                    })?;
                    header_value(&key, &value, &format!("environment variable {var}"))?
                }
                HeaderSource::File { file } => {
                    let text = std::fs::read_to_string(file)
                        .map_err(|e| invalid(&key, format!("cannot read file {file}: {e}")))?;
                    let text = text
                        .strip_suffix('\n')
                        .map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
                    header_value(&key, text, &format!("the content of {file}"))?
                }
            };
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(&key, "is not a valid header name"))?;
            Ok((name, value))
        })
        .collect()
}

/// The `[mcp]` listener: a proxied listener plus the MCP policy's own keys.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    pub listen: SocketAddr,
    pub upstream: String,
    pub connect_timeout_secs: u64,
    /// Longest silence on a stream before memgate gives up on it.
    pub read_timeout_secs: u64,
    pub forward_credentials: bool,
    /// Send the client's `Host` upstream (for upstreams that build URLs from it).
    pub preserve_host: bool,
    /// Headers sent upstream on every request (`{ env = … }`, `{ file = … }` or a string).
    pub upstream_headers: UpstreamHeaderSpecs,
    /// The Streamable HTTP endpoint (with or without a trailing slash).
    pub path: String,
    /// The legacy SSE transport's stream and message endpoints.
    pub sse_path: String,
    pub messages_path: String,
    /// Other paths forwarded (authenticated, unchanged), as exact decoded
    /// paths such as `/health`; any path not an endpoint nor listed is 404.
    pub allowed_paths: Vec<String>,
    /// Browser origins allowed to call (DNS-rebinding protection); no Origin
    /// header is always allowed. `"*"` allows any origin.
    pub allowed_origins: Vec<String>,
    /// What to do with a tool that has no rule: "allow" (its user and memory
    /// arguments are still checked; it needs `write`) or "deny".
    pub unknown_tools: crate::policy::mcp::UnknownTools,
    /// A session binding is forgotten after this long unused.
    pub session_idle_secs: u64,
    pub max_sessions: u64,
    /// Tool rules by tool name, added to (or replacing) the shipped defaults.
    pub tools: std::collections::BTreeMap<String, crate::policy::mcp::ToolRule>,
    /// One MCP server process per scope, started by memgate (docs/design.md §5a).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawn: Option<SpawnConfig>,
}

/// How a spawned MCP server is reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpawnTransport {
    /// The child listens on `mcp.upstream` (loopback, `{port}`).
    #[default]
    Http,
    /// MCP over the child's stdin/stdout.
    Stdio,
}

/// `[mcp.spawn]`: the command memgate runs for each scope. `command`, `args`,
/// `env` and `cwd` may hold `{scope}`, `{user}` (host labels) and `{port}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpawnConfig {
    pub command: String,
    pub args: Vec<String>,
    /// Set in the child's environment (over the inherited names).
    pub env: std::collections::BTreeMap<String, String>,
    /// The child's working directory, created (0700) if missing; empty: memgate's.
    pub cwd: String,
    pub transport: SpawnTransport,
    /// Names of memgate's environment variables the child also gets, besides
    /// PATH, HOME, LANG and TZ.
    pub inherit_env: Vec<String>,
    pub max_processes: usize,
    pub idle_secs: u64,
    pub ready_timeout_secs: u64,
    pub stop_grace_secs: u64,
}

impl Default for SpawnConfig {
    fn default() -> Self {
        SpawnConfig {
            command: String::new(),
            args: Vec::new(),
            env: std::collections::BTreeMap::new(),
            cwd: String::new(),
            transport: SpawnTransport::Http,
            inherit_env: Vec::new(),
            max_processes: 32,
            idle_secs: 600,
            ready_timeout_secs: 20,
            stop_grace_secs: 5,
        }
    }
}

/// `mcp.upstream` when `[mcp.spawn]` is on and the file does not set it.
pub const SPAWN_UPSTREAM: &str = "http://127.0.0.1:{port}";

/// Stands for the port memgate picks for a spawned child.
pub const PORT_PLACEHOLDER: &str = "{port}";

impl SpawnConfig {
    fn validate(&self, upstream: &str) -> Result<(), ConfigError> {
        if self.command.trim().is_empty() {
            return Err(invalid("mcp.spawn.command", "must name the program to run"));
        }
        let bad_name = |n: &str| n.is_empty() || n.contains(['=', '\0']);
        if let Some(name) = self.inherit_env.iter().find(|n| bad_name(n)) {
            return Err(invalid(
                "mcp.spawn.inherit_env",
                format!("{name:?} is not an environment variable name"),
            ));
        }
        if let Some(name) = self.env.keys().find(|n| bad_name(n)) {
            return Err(invalid(
                "mcp.spawn.env",
                format!("{name:?} is not an environment variable name"),
            ));
        }
        for (key, value) in [
            ("mcp.spawn.max_processes", self.max_processes as u64),
            ("mcp.spawn.idle_secs", self.idle_secs),
            ("mcp.spawn.ready_timeout_secs", self.ready_timeout_secs),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.transport == SpawnTransport::Stdio {
            return self.validate_stdio(upstream);
        }
        validate_spawn_upstream(upstream)
    }

    /// A stdio child has no port: memgate serves it on one of its own.
    fn validate_stdio(&self, upstream: &str) -> Result<(), ConfigError> {
        let port_in = |key: &str, values: Vec<&String>| {
            if values.iter().any(|v| v.contains(PORT_PLACEHOLDER)) {
                Err(invalid(
                    key,
                    "{port} is only for transport = \"http\"; a stdio server speaks on its stdin and stdout",
                ))
            } else {
                Ok(())
            }
        };
        port_in("mcp.spawn.command", vec![&self.command])?;
        port_in("mcp.spawn.args", self.args.iter().collect())?;
        port_in("mcp.spawn.env", self.env.values().collect())?;
        port_in("mcp.spawn.cwd", vec![&self.cwd])?;
        if upstream != SPAWN_UPSTREAM {
            return Err(invalid(
                "mcp.upstream",
                format!(
                    "{upstream:?} is not used with mcp.spawn.transport = \"stdio\" (memgate serves each child itself); remove it"
                ),
            ));
        }
        Ok(())
    }
}

/// With spawn, `mcp.upstream` is where each child listens: a plain
/// `scheme://host:{port}`.
fn validate_spawn_upstream(upstream: &str) -> Result<(), ConfigError> {
    const KEY: &str = "mcp.upstream";
    let wrong = || {
        invalid(
            KEY,
            format!(
                "{upstream:?}: with [mcp.spawn] it must be scheme://host:{{port}}, e.g. {SPAWN_UPSTREAM}"
            ),
        )
    };
    if !upstream.contains(PORT_PLACEHOLDER) {
        return Err(wrong());
    }
    let one =
        Upstream::parse(KEY, &upstream.replace(PORT_PLACEHOLDER, "1")).map_err(|_| wrong())?;
    let two =
        Upstream::parse(KEY, &upstream.replace(PORT_PLACEHOLDER, "2")).map_err(|_| wrong())?;
    if one.host != two.host || (one.port, two.port) != (1, 2) || one.host.contains(['{', '}']) {
        return Err(wrong());
    }
    Ok(())
}

impl McpConfig {
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
}

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationModeName {
    Manual,
    Auto,
    Global,
}

impl McpConfig {
    /// The tool rules memgate enforces: the built-in ones, with the
    /// config's `[mcp.tools.NAME]` tables added or replacing them by name.
    pub fn effective_tools(
        &self,
    ) -> std::collections::BTreeMap<String, crate::policy::mcp::ToolRule> {
        let mut tools = crate::policy::mcp::default_tool_rules();
        tools.extend(self.tools.clone());
        tools
    }
}

/// `[isolation]`: which mem0 user_id a request may touch (docs/design.md §3).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolationConfig {
    pub mode: IsolationModeName,
    pub shared_user_id: String,
}

impl Default for IsolationConfig {
    fn default() -> Self {
        IsolationConfig {
            mode: IsolationModeName::Manual,
            shared_user_id: "shared_knowledge_base".into(),
        }
    }
}

impl IsolationConfig {
    pub fn mode(&self) -> crate::policy::scope::IsolationMode {
        use crate::policy::scope::IsolationMode;
        match self.mode {
            IsolationModeName::Manual => IsolationMode::Manual,
            IsolationModeName::Auto => IsolationMode::Auto,
            IsolationModeName::Global => IsolationMode::Global {
                shared_user_id: self.shared_user_id.clone(),
            },
        }
    }
}

/// `[limits]`: what memgate buffers and parses.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest request target (path and query); 414 above.
    pub max_uri_bytes: usize,
    /// All request header names and values together; 431 above.
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub max_response_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 64 * 1024,
            max_body_bytes: 1024 * 1024,
            max_json_depth: 32,
            max_response_bytes: 16 * 1024 * 1024,
        }
    }
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
            tls: TlsConfig::default(),
            server: ServerConfig::default(),
            log: LogConfig::default(),
        }
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

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// How long a token looked up in the store is trusted without asking again (0 = no cache).
    pub cache_ttl_secs: u64,
    /// How long an unknown token is remembered as unknown.
    pub negative_cache_ttl_secs: u64,
    /// While the store is unreachable, tokens seen within this long keep working.
    pub stale_grace_secs: u64,
    /// Most tokens held in the cache at once.
    pub cache_capacity: u64,
    /// SQLite only: how often the token change counter is polled for revocations.
    pub change_poll_ms: u64,
    /// `last_used_at` is written at most once per token per this many seconds.
    pub last_used_interval_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            cache_ttl_secs: 30,
            negative_cache_ttl_secs: 5,
            stale_grace_secs: 300,
            cache_capacity: 100_000,
            change_poll_ms: 250,
            last_used_interval_secs: 60,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitBackend {
    Local,
    /// Per-token limits shared by every replica through Redis.
    Redis,
}

/// `[redis]`: used when `rate_limit.backend = "redis"`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    /// A Redis call slower than this counts as Redis being down (local limits apply).
    pub timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            timeout_ms: 50,
        }
    }
}

/// `[rate_limit]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub backend: RateLimitBackend,
    /// Requests per second per token (0 disables the per-token limit).
    pub per_token_rps: u32,
    pub per_token_burst: u32,
    /// Failed authentications per client IP per minute before that IP is cut off.
    pub failed_auth_per_ip_per_min: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            backend: RateLimitBackend::Local,
            per_token_rps: 50,
            per_token_burst: 100,
            failed_auth_per_ip_per_min: 10,
        }
    }
}

/// `[audit]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Where events wait on disk while the store is unreachable.
    pub spool_dir: String,
    pub spool_max_bytes: u64,
    /// Events queued in memory for the batch writer.
    pub queue_capacity: usize,
    pub batch_size: usize,
    /// One successful authentication per token is recorded per this many seconds.
    pub success_sample_secs: u64,
    /// Audit rows older than this are deleted (0 keeps them forever).
    pub retention_days: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            spool_dir: "audit-spool".into(),
            spool_max_bytes: 256 * 1024 * 1024,
            queue_capacity: 10_000,
            batch_size: 500,
            success_sample_secs: 60,
            retention_days: 90,
        }
    }
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
    /// socket and connections (`crate::per_thread`).
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

/// Where the effective configuration came from, for `check-config`.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    /// The file that was read, or `None` when the default path did not exist.
    pub file: Option<PathBuf>,
}

/// The config file to read: `--config`, else `MEMGATE_CONFIG`, else `./config.toml`.
/// A file named explicitly must exist; the default one may be absent.
pub fn load(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
    let env_vars: Vec<(String, String)> = std::env::vars().collect();
    let (path, required) = match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_PATH), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(ConfigError::Read {
                path: path.display().to_string(),
                fix: match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        "name an existing file with --config or MEMGATE_CONFIG \
                         (with neither, ./config.toml is read if it exists)"
                    }
                    std::io::ErrorKind::PermissionDenied => "let the user memgate runs as read it",
                    _ => "name a readable TOML file with --config or MEMGATE_CONFIG",
                },
                reason: io_reason(&e),
            });
        }
    };
    let config = from_parts(text.as_deref(), &path.display().to_string(), &env_vars)?;
    for warning in near_miss_overrides(&env_vars) {
        tracing::warn!("{warning}");
    }
    Ok(Loaded {
        config,
        file: text.map(|_| path),
    })
}

/// Builds a validated config from file text (if any) and environment variables.
pub fn from_parts(
    file_text: Option<&str>,
    file_name: &str,
    env_vars: &[(String, String)],
) -> Result<Config, ConfigError> {
    // Defaults, then the file, then the environment: each layer overrides keys
    // of the one below, so a file may set one key of a section and keep the rest.
    let defaults = toml::Table::try_from(Config::default())
        .map_err(|e| invalid("(defaults)", e.to_string()))?;
    let mut table = defaults.clone();
    if let Some(text) = file_text {
        let file: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                location: format!(
                    "{file_name}:{}",
                    line_column(text, e.span().map_or(0, |s| s.start))
                ),
                message: one_line(e.message()),
            })?;
        overlay(&mut table, file);
    }
    let located = |e: ConfigError| match file_text {
        Some(text) => locate_in_file(e, file_name, text),
        None => e,
    };
    apply_env(&mut table, &defaults, env_vars)?;
    check_spans(&table).map_err(located)?;
    default_spawn_upstream(&mut table, file_text, env_vars);
    let config: Config =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let message = type_error_message(&key, e.inner().message());
            located(invalid(key, message))
        })?;
    config.validate().map_err(located)?;
    Ok(config)
}

/// An I/O error's reason without the `(os error N)` suffix, which says
/// nothing more to an operator.
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// A multi-line parser message as one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// `line:column` (both from 1, the column in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> String {
    let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{line}:{column}")
}

/// Where a key (`server.threads`, `mcp.tools.x.scoped_by`,
/// `mem0.allowed_routes[2]`) is written in the file, as `line:column`; `None`
/// when the file does not set it (a default or an environment override).
fn key_position(text: &str, key: &str) -> Option<String> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = doc.as_item();
    let mut span = None;
    for part in key.split('.') {
        let name = part.split('[').next().unwrap_or(part);
        let table = item.as_table_like()?;
        let (found_key, found) = table.get_key_value(name)?;
        span = found_key.span().or(span);
        item = found;
    }
    span.map(|s| line_column(text, s.start))
}

/// An error about a key the file sets, prefixed with `file:line:column`.
fn locate_in_file(e: ConfigError, file_name: &str, text: &str) -> ConfigError {
    match e {
        ConfigError::Invalid { key, message } => match key_position(text, &key) {
            Some(at) => ConfigError::Invalid {
                key: format!("{file_name}:{at}: {key}"),
                message,
            },
            None => ConfigError::Invalid { key, message },
        },
        other => other,
    }
}

/// The deserializer's message for `key`, with what to write instead.
fn type_error_message(key: &str, message: &str) -> String {
    let message = one_line(message);
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or_default();
        let known: Vec<&str> = rest
            .split_once("expected ")
            .map(|(_, known)| known.split('`').skip(1).step_by(2).collect())
            .unwrap_or_default();
        let section = key.rsplit_once('.').map_or("the top level", |(s, _)| s);
        return format!(
            "unknown key {name:?}; {section} takes {}; remove it or correct the spelling \
             (config.toml lists every key)",
            if known.is_empty() {
                "no other keys".to_string()
            } else {
                known.join(", ")
            }
        );
    }
    if message.starts_with("missing field") {
        return format!("{message}; add it (config.toml shows an example)");
    }
    let mut message = message;
    for (rust, operator) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u8", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected bool", "expected true or false"),
    ] {
        if message.ends_with(rust) {
            message = format!("{}{operator}", &message[..message.len() - rust.len()]);
        }
    }
    format!("{message}; give a value of that type (config.toml shows each key's default)")
}

/// With `[mcp.spawn]` on and `mcp.upstream` set neither in the file nor in
/// the environment, the children listen on a loopback port memgate picks.
fn default_spawn_upstream(
    table: &mut toml::Table,
    file_text: Option<&str>,
    env_vars: &[(String, String)],
) {
    let Some(mcp) = table.get_mut("mcp").and_then(|m| m.as_table_mut()) else {
        return;
    };
    if !mcp.contains_key("spawn") {
        return;
    }
    let in_file = file_text
        .and_then(|text| text.parse::<toml::Table>().ok())
        .is_some_and(|file| {
            file.get("mcp")
                .and_then(|m| m.as_table())
                .is_some_and(|m| m.contains_key("upstream"))
        });
    let in_env = env_vars
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("MEMGATE_MCP__UPSTREAM"));
    if !in_file && !in_env {
        mcp.insert("upstream".into(), SPAWN_UPSTREAM.into());
    }
}

/// Applies `MEMGATE_SECTION__KEY=value` overrides. The value is read with the
/// type the key has in the defaults, so `MEMGATE_MEM0__UPSTREAM=123` stays a string.
fn apply_env(
    table: &mut toml::Table,
    defaults: &toml::Table,
    env_vars: &[(String, String)],
) -> Result<(), ConfigError> {
    for (name, value) in env_vars {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if rest == "CONFIG" || rest == "LOG" {
            continue;
        }
        // Other tools (the test suite, bench scripts) use MEMGATE_* names of their
        // own; only the SECTION__KEY shape is claimed as an override.
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let Some(default) = defaults
            .get(&section)
            .and_then(|s| s.as_table())
            .and_then(|s| s.get(&key))
        else {
            return Err(invalid(
                name,
                format!(
                    "there is no config key {section}.{key}; unset the variable or correct \
                     its name (MEMGATE_SECTION__KEY, config.toml lists every key)"
                ),
            ));
        };
        let typed = typed_env_value(default, value).ok_or_else(|| {
            // Its values may be secrets: not repeated back.
            if key == "upstream_headers" {
                return invalid(
                    name,
                    format!(
                        "{section}.upstream_headers wants a TOML inline table, \
                         e.g. {{ \"X-API-Key\" = {{ env = \"NAME\" }} }}"
                    ),
                );
            }
            invalid(
                name,
                format!("{value:?} is not a valid value for {section}.{key}"),
            )
        })?;
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section_table) = entry.as_table_mut() else {
            return Err(invalid(section, "must be a table"));
        };
        section_table.insert(key, typed);
    }
    Ok(())
}

/// The longest time span a config key may give: 100 years. Spans are added
/// to and subtracted from the clock; bounding them here keeps that
/// arithmetic from overflowing whatever the operator writes.
const MAX_SPAN_SECS: i64 = 36_500 * 86_400;

/// Every `*_secs`, `*_ms` and `*_days` key is at most [`MAX_SPAN_SECS`] long.
fn check_spans(table: &toml::Table) -> Result<(), ConfigError> {
    check_spans_under("", table)
}

/// [`check_spans`] for the keys of `table`, a section at `prefix` (nested
/// sections such as `[mcp.spawn]` included).
fn check_spans_under(prefix: &str, table: &toml::Table) -> Result<(), ConfigError> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if let Some(nested) = value.as_table() {
            check_spans_under(&path, nested)?;
            continue;
        }
        let Some(n) = value.as_integer() else {
            continue;
        };
        let max = if key.ends_with("_secs") {
            MAX_SPAN_SECS
        } else if key.ends_with("_ms") {
            MAX_SPAN_SECS * 1000
        } else if key.ends_with("_days") {
            MAX_SPAN_SECS / 86_400
        } else {
            continue;
        };
        if n > max {
            return Err(invalid(
                path,
                format!("{n} is longer than 100 years; give at most {max}"),
            ));
        }
    }
    Ok(())
}

/// `MEMGATE_*` names that are not overrides but would be with two underscores
/// between section and key (`MEMGATE_MEM0_UPSTREAM`), one warning each:
/// such a variable is ignored, and the operator most likely meant it.
pub fn near_miss_overrides(env_vars: &[(String, String)]) -> Vec<String> {
    let Ok(defaults) = toml::Table::try_from(Config::default()) else {
        return Vec::new();
    };
    let mut warnings = Vec::new();
    for (name, _) in env_vars {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if rest.contains("__") {
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        for (section, keys) in &defaults {
            let Some(keys) = keys.as_table() else {
                continue;
            };
            let Some(key) = rest
                .strip_prefix(section.as_str())
                .and_then(|k| k.strip_prefix('_'))
            else {
                continue;
            };
            if keys.contains_key(key) {
                let fixed = format!(
                    "{ENV_PREFIX}{}__{}",
                    section.to_ascii_uppercase(),
                    key.to_ascii_uppercase()
                );
                warnings.push(format!(
                    "{name} is ignored: not a config override; to set {section}.{key}, name it {fixed}"
                ));
            }
        }
    }
    warnings
}

/// Merges `top` into `base`, table by table.
fn overlay(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above)) => overlay(below, above),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn typed_env_value(default: &toml::Value, raw: &str) -> Option<toml::Value> {
    Some(match default {
        toml::Value::String(_) => toml::Value::String(raw.to_string()),
        toml::Value::Integer(_) => toml::Value::Integer(raw.trim().parse().ok()?),
        toml::Value::Float(_) => toml::Value::Float(raw.trim().parse().ok()?),
        toml::Value::Boolean(_) => toml::Value::Boolean(raw.trim().parse().ok()?),
        _ => {
            let wrapped: toml::Table = format!("v = {raw}").parse().ok()?;
            wrapped.get("v")?.clone()
        }
    })
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

/// `mcp.upstream`: one `scheme://host:port`, or a template whose `{scope}`
/// and `{user}` stand only in the host name (each expands to one host
/// label), so that no scope can name a path, a port or another scheme.
fn validate_mcp_upstream(upstream: &str) -> Result<(), ConfigError> {
    use crate::policy::upstream_name::{SCOPE_PLACEHOLDER, USER_PLACEHOLDER, is_template};
    const KEY: &str = "mcp.upstream";
    let rest = upstream
        .replace(SCOPE_PLACEHOLDER, "")
        .replace(USER_PLACEHOLDER, "");
    if !is_template(upstream) && !rest.contains(['{', '}']) {
        return Upstream::parse(KEY, upstream).map(drop);
    }
    let misplaced = || {
        invalid(
            KEY,
            format!(
                "{upstream:?}: only {{scope}} and {{user}} may be templated, and only in the \
                 host name, e.g. http://mcp-{{scope}}:8080"
            ),
        )
    };
    if rest.contains('{') || rest.contains('}') {
        return Err(misplaced());
    }
    let with = |label: &str| {
        upstream
            .replace(SCOPE_PLACEHOLDER, label)
            .replace(USER_PLACEHOLDER, label)
    };
    let one = Upstream::parse(KEY, &with("a0")).map_err(|_| misplaced())?;
    let two = Upstream::parse(KEY, &with("b1")).map_err(|_| misplaced())?;
    if one.host == two.host || one.port != two.port || one.tls != two.tls {
        return Err(misplaced());
    }
    Ok(())
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        if self.database.connect_timeout_secs == 0 {
            return Err(invalid(
                "database.connect_timeout_secs",
                "must be at least 1",
            ));
        }
        match &self.mcp.spawn {
            Some(spawn) => spawn.validate(&self.mcp.upstream)?,
            None if self.mcp.upstream.contains(PORT_PLACEHOLDER) => {
                return Err(invalid(
                    "mcp.upstream",
                    "{port} stands for a spawned server's port: only with [mcp.spawn]",
                ));
            }
            None => validate_mcp_upstream(&self.mcp.upstream)?,
        }
        for (name, listener) in [
            ("mcp", &self.mcp.listener()),
            ("mem0", &self.mem0.listener()),
        ] {
            if name == "mem0" {
                Upstream::parse(&format!("{name}.upstream"), &listener.upstream)?;
            }
            validate_upstream_headers(name, &listener.upstream_headers)?;
            if listener.connect_timeout_secs == 0 {
                return Err(invalid(
                    format!("{name}.connect_timeout_secs"),
                    "must be at least 1",
                ));
            }
            if listener.read_timeout_secs == 0 {
                return Err(invalid(
                    format!("{name}.read_timeout_secs"),
                    "must be at least 1",
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for (key, addr) in [
            ("mcp.listen", self.mcp.listen),
            ("mem0.listen", self.mem0.listen),
            ("admin.listen", self.admin.listen),
        ] {
            if !seen.insert(addr) {
                return Err(invalid(key, format!("{addr} is used by another listener")));
            }
        }
        if self.auth.cache_capacity == 0 {
            return Err(invalid("auth.cache_capacity", "must be at least 1"));
        }
        if self.auth.change_poll_ms == 0 || self.auth.change_poll_ms > 1000 {
            return Err(invalid(
                "auth.change_poll_ms",
                "must be between 1 and 1000 (revocations must apply within a second)",
            ));
        }
        self.mem0.allowed_route_pairs()?;
        for (key, path) in [
            ("mcp.path", &self.mcp.path),
            ("mcp.sse_path", &self.mcp.sse_path),
            ("mcp.messages_path", &self.mcp.messages_path),
        ] {
            if !path.starts_with('/') || path.contains(['?', '#', '%']) {
                return Err(invalid(key, "must be a plain path starting with /"));
            }
        }
        for path in &self.mcp.allowed_paths {
            if let Some(why) = crate::policy::endpoint::allowed_path_error(path) {
                return Err(invalid("mcp.allowed_paths", format!("{path:?} {why}")));
            }
        }
        if self.mcp.session_idle_secs == 0 || self.mcp.max_sessions == 0 {
            return Err(invalid(
                "mcp.session_idle_secs",
                "mcp.session_idle_secs and mcp.max_sessions must be at least 1",
            ));
        }
        if self.isolation.mode == IsolationModeName::Global
            && (self.isolation.shared_user_id.trim().is_empty()
                || self.isolation.shared_user_id.trim() != self.isolation.shared_user_id)
        {
            return Err(invalid(
                "isolation.shared_user_id",
                "must be a non-empty user id without surrounding spaces in global mode",
            ));
        }
        if self.limits.max_uri_bytes < 256 || self.limits.max_header_bytes < 1024 {
            return Err(invalid(
                "limits.max_uri_bytes",
                "limits.max_uri_bytes must be at least 256 and limits.max_header_bytes at least 1024",
            ));
        }
        if self.limits.max_body_bytes == 0 {
            return Err(invalid("limits.max_body_bytes", "must be at least 1"));
        }
        if !(1..=100).contains(&self.limits.max_json_depth) {
            return Err(invalid(
                "limits.max_json_depth",
                "must be between 1 and 100",
            ));
        }
        if self.limits.max_response_bytes < 1024 {
            return Err(invalid(
                "limits.max_response_bytes",
                "must be at least 1024",
            ));
        }
        if self.rate_limit.per_token_rps > 0 && self.rate_limit.per_token_burst == 0 {
            return Err(invalid("rate_limit.per_token_burst", "must be at least 1"));
        }
        if self.rate_limit.backend == RateLimitBackend::Redis {
            redis::Client::open(self.redis.url.as_str())
                .map_err(|e| invalid("redis.url", e.to_string()))?;
            if self.redis.timeout_ms == 0 {
                return Err(invalid("redis.timeout_ms", "must be at least 1"));
            }
        }
        if self.rate_limit.failed_auth_per_ip_per_min == 0 {
            return Err(invalid(
                "rate_limit.failed_auth_per_ip_per_min",
                "must be at least 1",
            ));
        }
        if self.audit.queue_capacity == 0 || self.audit.batch_size == 0 {
            return Err(invalid(
                "audit.queue_capacity",
                "audit.queue_capacity and audit.batch_size must be at least 1",
            ));
        }
        if self.audit.spool_dir.trim().is_empty() {
            return Err(invalid("audit.spool_dir", "must name a directory"));
        }
        if self.auth.last_used_interval_secs == 0 {
            return Err(invalid(
                "auth.last_used_interval_secs",
                "must be at least 1",
            ));
        }
        match (self.tls.cert.is_empty(), self.tls.key.is_empty()) {
            (true, true) => {}
            (false, false) => {
                for (key, path) in [("tls.cert", &self.tls.cert), ("tls.key", &self.tls.key)] {
                    std::fs::File::open(path).map_err(|e| {
                        invalid(
                            key,
                            format!(
                                "cannot read {path}: {}; give the path of a PEM file \
                                 readable by the user memgate runs as",
                                io_reason(&e)
                            ),
                        )
                    })?;
                }
                crate::tls::load(&self.tls.cert, &self.tls.key).map_err(|e| {
                    let crate::tls::TlsError::Load(e) = e;
                    invalid(
                        "tls.cert",
                        format!(
                            "{e}; give a PEM certificate chain in tls.cert ({}) and its \
                             private key in tls.key ({})",
                            self.tls.cert, self.tls.key
                        ),
                    )
                })?;
            }
            _ => {
                return Err(invalid(
                    "tls.cert",
                    "tls.cert and tls.key must be set together",
                ));
            }
        }
        if self.server.header_timeout_secs == 0 {
            return Err(invalid("server.header_timeout_secs", "must be at least 1"));
        }
        if self.server.keepalive_idle_secs == 0 {
            return Err(invalid("server.keepalive_idle_secs", "must be at least 1"));
        }
        if self.server.threads == 0 {
            return Err(invalid("server.threads", "must be at least 1"));
        }
        Ok(())
    }

    /// Reads every `upstream_headers` value now, as `serve` does before it
    /// binds: a missing variable or unreadable file is reported by name.
    pub fn check_upstream_headers(&self) -> Result<(), ConfigError> {
        self.mcp.listener().resolved_upstream_headers("mcp")?;
        self.mem0.listener().resolved_upstream_headers("mem0")?;
        Ok(())
    }

    /// The effective configuration as TOML, with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(&self.masked()).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// The effective configuration as JSON, with secrets masked.
    pub fn to_masked_json(&self) -> serde_json::Value {
        serde_json::to_value(self.masked())
            .unwrap_or_else(|e| serde_json::json!({ "error": format!("cannot render: {e}") }))
    }

    /// The configuration as memgate applies it: secrets masked, and
    /// `[mcp.tools]` with the built-in rules the file's tables are added to.
    fn masked(&self) -> Config {
        let mut shown = self.clone();
        shown.mcp.tools = self.mcp.effective_tools();
        for url in [
            &mut shown.database.url,
            &mut shown.redis.url,
            &mut shown.mcp.upstream,
            &mut shown.mem0.upstream,
        ] {
            *url = mask_url_password(url);
        }
        for specs in [
            &mut shown.mcp.upstream_headers,
            &mut shown.mem0.upstream_headers,
        ] {
            for source in specs.values_mut() {
                if let HeaderSource::Literal(value) = source {
                    *value = "****".into();
                }
            }
        }
        // A child's environment may carry its credentials.
        if let Some(spawn) = &mut shown.mcp.spawn {
            for value in spawn.env.values_mut() {
                *value = "****".into();
            }
        }
        shown
    }
}

/// Replaces the credentials in a URL with `****`: the password of its user
/// info (`postgres://u:secret@h/db`, `redis://:secret@h`) and query
/// parameters such as `?password=secret`, which PostgreSQL URLs accept.
pub fn mask_url_password(text: &str) -> String {
    let secret = |key: &str| key.to_ascii_lowercase().contains("password");
    let Ok(mut url) = url::Url::parse(text) else {
        // Not a URL the parser accepts (a template, a typo): whatever sits
        // between the scheme and an `@` may be a password.
        return match (text.find("://"), text.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme + 3 => {
                format!("{}****{}", &text[..scheme + 3], &text[at..])
            }
            _ => text.to_string(),
        };
    };
    let mut masked = false;
    if url.password().is_some() {
        masked = url.set_password(Some("****")).is_ok();
    }
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    if pairs.iter().any(|(key, _)| secret(key)) {
        url.query_pairs_mut().clear().extend_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.as_str(), if secret(k) { "****" } else { v.as_str() })),
        );
        masked = true;
    }
    if masked {
        url.to_string()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Every key memgate accepts is written out in the shipped config.toml
    /// (the operator's reference), with the built-in default as its value.
    #[test]
    fn the_shipped_config_file_lists_every_key_with_its_default() {
        let shipped: toml::Table = toml::from_str(include_str!("../config.toml")).unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (section, keys) in &defaults {
            let keys = keys.as_table().expect("sections are tables");
            let written = shipped
                .get(section)
                .and_then(|v| v.as_table())
                .unwrap_or_else(|| panic!("config.toml has no [{section}]"));
            for (key, value) in keys {
                if value.as_table().is_some_and(|t| t.is_empty()) {
                    continue; // e.g. [mcp.tools]: documented as a commented example
                }
                assert_eq!(
                    written.get(key),
                    Some(value),
                    "config.toml: {section}.{key} missing or not the default"
                );
            }
        }
    }

    #[test]
    fn defaults_are_valid_and_match_design() {
        let c = from_parts(None, "none", &[]).unwrap();
        assert_eq!(c.database.url, "sqlite://memgate.db?mode=rwc");
        assert_eq!(c.mcp.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.mcp.upstream, "http://127.0.0.1:8081");
        assert_eq!(c.mem0.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(c.auth.cache_ttl_secs, 30);
    }

    #[test]
    fn shipped_config_file_parses_to_the_defaults() {
        let text = include_str!("../config.toml");
        let c = from_parts(Some(text), "config.toml", &[]).unwrap();
        assert_eq!(
            toml::to_string(&c).unwrap(),
            toml::to_string(&Config::default()).unwrap()
        );
    }

    #[test]
    fn env_overrides_use_the_key_type() {
        let c = from_parts(
            Some("[mem0]\nlisten = \"127.0.0.1:7000\"\nupstream = \"http://a:1\"\n"),
            "f",
            &env(&[
                ("MEMGATE_MEM0__UPSTREAM", "http://mem0:8000"),
                ("MEMGATE_AUTH__CACHE_TTL_SECS", "7"),
                ("MEMGATE_MCP__FORWARD_CREDENTIALS", "true"),
                ("MEMGATE_CONFIG", "ignored.toml"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.mem0.upstream, "http://mem0:8000");
        assert_eq!(c.mem0.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(c.auth.cache_ttl_secs, 7);
        assert!(c.mcp.forward_credentials);
    }

    #[test]
    fn mcp_allowed_paths_come_from_the_file_or_the_environment() {
        let c = from_parts(Some("[mcp]\nallowed_paths = [\"/health\"]\n"), "f", &[]).unwrap();
        assert_eq!(c.mcp.allowed_paths, ["/health"]);
        let c = from_parts(
            None,
            "f",
            &env(&[(
                "MEMGATE_MCP__ALLOWED_PATHS",
                r#"["/health", "/.well-known/oauth-protected-resource"]"#,
            )]),
        )
        .unwrap();
        assert_eq!(
            c.mcp.allowed_paths,
            ["/health", "/.well-known/oauth-protected-resource"]
        );
        for bad in [
            r#"["health"]"#,
            r#"["/a?b"]"#,
            r#"["/a/../b"]"#,
            "\"/health\"",
        ] {
            let err = from_parts(None, "f", &env(&[("MEMGATE_MCP__ALLOWED_PATHS", bad)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("ALLOWED_PATHS") || err.contains("allowed_paths"),
                "{err}"
            );
        }
    }

    #[test]
    fn spawn_defaults_its_upstream_and_checks_its_keys() {
        let on = "[mcp.spawn]\ncommand = \"server\"\nenv = { MEM0_USER = \"{scope}\" }";
        let c = from_parts(Some(on), "f", &[]).unwrap();
        assert_eq!(c.mcp.upstream, SPAWN_UPSTREAM);
        let spawn = c.mcp.spawn.as_ref().unwrap();
        assert_eq!(
            (
                spawn.max_processes,
                spawn.idle_secs,
                spawn.ready_timeout_secs,
                spawn.stop_grace_secs
            ),
            (32, 600, 20, 5)
        );
        assert!(c.to_masked_toml().contains("MEM0_USER = \"****\""));
        let set = format!("[mcp]\nupstream = \"http://localhost:{{port}}\"\n{on}");
        assert_eq!(
            from_parts(Some(&set), "f", &[]).unwrap().mcp.upstream,
            "http://localhost:{port}"
        );
        let stdio = format!("{on}\ntransport = \"stdio\"");
        let c = from_parts(Some(&stdio), "f", &[]).unwrap();
        assert_eq!(c.mcp.spawn.unwrap().transport, SpawnTransport::Stdio);
        assert_eq!(c.mcp.upstream, SPAWN_UPSTREAM);
        let cases: &[(&str, &str)] = &[
            ("[mcp.spawn]\nargs = [\"x\"]", "mcp.spawn.command"),
            (
                "[mcp]\nupstream = \"http://127.0.0.1:8081\"\n[mcp.spawn]\ncommand = \"s\"",
                "mcp.upstream",
            ),
            (
                "[mcp]\nupstream = \"http://{port}:80\"\n[mcp.spawn]\ncommand = \"s\"",
                "mcp.upstream",
            ),
            (
                "[mcp]\nupstream = \"http://127.0.0.1:{port}\"",
                "mcp.upstream",
            ),
            (
                "[mcp.spawn]\ncommand = \"s\"\nmax_processes = 0",
                "mcp.spawn.max_processes",
            ),
            (
                "[mcp.spawn]\ncommand = \"s\"\ninherit_env = [\"A=B\"]",
                "mcp.spawn.inherit_env",
            ),
            ("[mcp.spawn]\ncommand = \"s\"\nbogus = 1", "bogus"),
            (
                "[mcp.spawn]\ncommand = \"s\"\ntransport = \"stdio\"\nargs = [\"--port={port}\"]",
                "mcp.spawn.args",
            ),
            (
                "[mcp]\nupstream = \"http://127.0.0.1:8081\"\n[mcp.spawn]\ncommand = \"s\"\ntransport = \"stdio\"",
                "mcp.upstream",
            ),
        ];
        for (text, key) in cases {
            let err = from_parts(Some(text), "f", &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err:?} should name {key}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                "[mcp]\nlisten = \"nope\"\nupstream = \"http://a:1\"",
                &[],
                "mcp.listen",
            ),
            ("[auth]\ncache_ttl_secs = \"x\"", &[], "auth.cache_ttl_secs"),
            ("[auth]\nbogus = 1", &[], "auth"),
            (
                "",
                &[("MEMGATE_AUTH__CACHE_TTL_SECS", "soon")],
                "MEMGATE_AUTH__CACHE_TTL_SECS",
            ),
            ("", &[("MEMGATE_AUTH__NOPE", "1")], "MEMGATE_AUTH__NOPE"),
            (
                "",
                &[("MEMGATE_MEM0__UPSTREAM", "ftp://x")],
                "mem0.upstream",
            ),
            (
                "",
                &[("MEMGATE_DATABASE__URL", "mysql://x")],
                "database.url",
            ),
            (
                "",
                &[("MEMGATE_ADMIN__LISTEN", "127.0.0.1:8000")],
                "admin.listen",
            ),
            ("", &[("MEMGATE_SERVER__THREADS", "0")], "server.threads"),
        ];
        for (text, vars, key) in cases {
            let err = from_parts(Some(text), "f", &env(vars))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err:?} should name {key}");
        }
    }

    #[test]
    fn other_memgate_variables_are_not_overrides_and_near_misses_are_named() {
        let vars = env(&[
            ("MEMGATE_TEST_PG", "postgres://postgres@127.0.0.1:5432"),
            ("MEMGATE_BIN", "/x/memgate"),
            ("MEMGATE_MEM0_UPSTREAM", "http://mem0:9"),
            ("MEMGATE_AUTH_CACHE_TTL_SECS", "7"),
        ]);
        let c = from_parts(None, "f", &vars).unwrap();
        assert_eq!(c.mem0.upstream, Config::default().mem0.upstream);
        assert_eq!(c.auth.cache_ttl_secs, Config::default().auth.cache_ttl_secs);
        let warnings = near_miss_overrides(&vars);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("MEMGATE_MEM0_UPSTREAM")
                && warnings[0].contains("MEMGATE_MEM0__UPSTREAM")
        );
        assert!(warnings[1].contains("MEMGATE_AUTH__CACHE_TTL_SECS"));
        assert!(
            warnings.iter().all(|w| !w.contains("mem0:9")),
            "values may be secrets"
        );
        // A SECTION__KEY name is an override, so a wrong key still stops memgate.
        assert!(from_parts(None, "f", &env(&[("MEMGATE_AUTH__NOPE", "1")])).is_err());
    }

    #[test]
    fn time_spans_are_bounded_to_a_hundred_years() {
        for (text, key) in [
            (
                "[audit]\nretention_days = 4294967295",
                "audit.retention_days",
            ),
            (
                "[mcp]\nsession_idle_secs = 9000000000000000",
                "mcp.session_idle_secs",
            ),
            (
                "[redis]\ntimeout_ms = 9000000000000000000",
                "redis.timeout_ms",
            ),
            (
                "[mcp.spawn]\ncommand = \"x\"\nidle_secs = 9000000000000000",
                "mcp.spawn.idle_secs",
            ),
        ] {
            let err = from_parts(Some(text), "f", &[]).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("100 years"), "{err}");
        }
        let c = from_parts(Some("[audit]\nretention_days = 36500"), "f", &[]).unwrap();
        assert_eq!(c.audit.retention_days, 36_500);
    }

    #[test]
    fn masks_database_password() {
        let mut c = Config::default();
        c.database.url = "postgres://memgate:s3cret@db:5432/memgate".into();
        let shown = c.to_masked_toml();
        assert!(!shown.contains("s3cret"));
        assert!(shown.contains("memgate:****@db"));
    }

    #[test]
    fn masks_every_credential_in_urls() {
        for (url, secret, shown) in [
            (
                "redis://:pw-r1@redis:6379/0",
                "pw-r1",
                "redis://:****@redis:6379/0",
            ),
            ("redis://u:pw-r2@redis", "pw-r2", "redis://u:****@redis"),
            (
                "postgres://db/m?user=u&password=pw-q&sslmode=require",
                "pw-q",
                "postgres://db/m?user=u&password=****&sslmode=require",
            ),
            (
                "http://:pw-t@mcp-{scope}:8080",
                "pw-t",
                "http://:****@mcp-{scope}:8080/",
            ),
            (
                "postgres://u:pw-x@h:5432:1/db",
                "pw-x",
                "postgres://****@h:5432:1/db",
            ),
        ] {
            let masked = mask_url_password(url);
            assert!(!masked.contains(secret), "{masked}");
            assert_eq!(masked, shown);
        }
        for plain in [
            "sqlite://memgate.db?mode=rwc",
            "redis://127.0.0.1:6379",
            "http://mem0:8000",
        ] {
            assert_eq!(mask_url_password(plain), plain);
        }
        let mut c = Config::default();
        c.redis.url = "redis://:pw-redis@redis:6379/0".into();
        c.database.url = "postgres://db/m?password=pw-db".into();
        let shown = c.to_masked_toml();
        assert!(
            !shown.contains("pw-redis") && !shown.contains("pw-db"),
            "{shown}"
        );
    }

    #[test]
    fn parses_upstreams() {
        let u = Upstream::parse("k", "https://mem0.internal").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.tls),
            ("mem0.internal", 443, true)
        );
        assert!(Upstream::parse("k", "http://x:1/prefix").is_err());
        assert!(Upstream::parse("k", "http://u:p@x:1").is_err());
        for good in [
            "http://mcp-{scope}:8080",
            "http://{user}.mcp.internal:8080",
            "https://{scope}-{user}.svc",
        ] {
            assert!(validate_mcp_upstream(good).is_ok(), "{good}");
        }
        for bad in [
            "http://mcp:8080/{scope}",
            "http://mcp:{scope}",
            "http://{scope}@mcp:8080",
            "http://mcp:8080/?u={user}",
            "http://mcp:8080/#{scope}",
            "{scope}://mcp:8080",
            "http://mcp-{project}:8080",
            "http://mcp-{scope:8080",
        ] {
            let err = validate_mcp_upstream(bad).unwrap_err().to_string();
            assert!(err.contains("mcp.upstream"), "{bad}: {err}");
        }
    }

    #[test]
    fn upstream_headers_are_read_from_strings_the_environment_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "from-file\n").unwrap();
        let text = format!(
            "[mem0]\nupstream_headers = {{ \"X-API-Key\" = {{ env = \"MEM0_KEY\" }}, \
             \"X-Other\" = {{ file = {key_file:?} }}, \"X-Plain\" = \"literal-secret\" }}\n\
             [mcp]\npreserve_host = true\n"
        );
        let c = from_parts(Some(&text), "f", &[]).unwrap();
        assert!(c.mcp.preserve_host && !c.mem0.preserve_host);
        let env = |var: &str| (var == "MEM0_KEY").then(|| "from-env".to_string());
        let resolved = resolve_upstream_headers("mem0", &c.mem0.upstream_headers, env).unwrap();
        let shown: Vec<(&str, &str)> = resolved
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            shown,
            [
                ("x-api-key", "from-env"),
                ("x-other", "from-file"),
                ("x-plain", "literal-secret")
            ]
        );
        // Secrets show neither in Debug output nor in check-config's TOML.
        let debug = format!("{c:?} {:?}", c.mem0.listener());
        assert!(!debug.contains("literal-secret"), "{debug}");
        let masked = c.to_masked_toml();
        assert!(
            !masked.contains("literal-secret") && masked.contains("MEM0_KEY"),
            "{masked}"
        );
        assert!(
            from_parts(Some(&masked), "f", &[]).is_ok(),
            "the masked form reads back"
        );

        // A missing variable or file names the key, never a value.
        let err = resolve_upstream_headers("mem0", &c.mem0.upstream_headers, |_| None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "mem0.upstream_headers.X-API-Key: environment variable MEM0_KEY is not set"
        );
        std::fs::remove_file(&key_file).unwrap();
        let err = resolve_upstream_headers("mem0", &c.mem0.upstream_headers, env)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("mem0.upstream_headers.X-Other: cannot read file"),
            "{err}"
        );
        let bad = |var: &str| (var == "MEM0_KEY").then(|| "a\r\nx-evil: 1".to_string());
        let err = resolve_upstream_headers("mem0", &c.mem0.upstream_headers, bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("X-API-Key") && !err.contains("evil"), "{err}");
    }

    #[test]
    fn upstream_header_names_and_values_are_checked_when_loading() {
        for (table, key) in [
            ("{ \"bad name\" = \"v\" }", "mcp.upstream_headers.bad name"),
            ("{ Host = \"v\" }", "mcp.upstream_headers.Host"),
            (
                "{ \"Content-Length\" = \"1\" }",
                "mcp.upstream_headers.Content-Length",
            ),
            ("{ \"X-A\" = \"\" }", "mcp.upstream_headers.X-A"),
            ("{ \"X-A\" = \"a\\nb\" }", "mcp.upstream_headers.X-A"),
            ("{ \"X-A\" = { env = \"\" } }", "mcp.upstream_headers.X-A"),
            (
                "{ \"X-A\" = \"1\", \"x_a\" = \"2\" }",
                "mcp.upstream_headers.x_a",
            ),
            ("{ \"X-A\" = { nope = \"x\" } }", "mcp.upstream_headers"),
            ("{ \"X-A\" = 1 }", "mcp.upstream_headers"),
        ] {
            let err = from_parts(
                Some(&format!("[mcp]\nupstream_headers = {table}")),
                "f",
                &[],
            )
            .unwrap_err()
            .to_string();
            // Named where the file sets it: the header's line and column.
            assert!(err.starts_with("f:2:"), "{table}: {err}");
            assert!(err.contains(&format!(" {key}")), "{table}: {err}");
        }
        // The environment can set the whole table, in TOML's inline form.
        let c = from_parts(
            None,
            "f",
            &env(&[
                (
                    "MEMGATE_MEM0__UPSTREAM_HEADERS",
                    "{ \"X-API-Key\" = { env = \"MEM0_API_KEY\" } }",
                ),
                ("MEMGATE_MEM0__PRESERVE_HOST", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.mem0.upstream_headers["X-API-Key"],
            HeaderSource::Env {
                env: "MEM0_API_KEY".into()
            }
        );
        assert!(c.mem0.preserve_host);
        let err = from_parts(
            None,
            "f",
            &env(&[("MEMGATE_MEM0__UPSTREAM_HEADERS", "X-API-Key=abc")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("MEMGATE_MEM0__UPSTREAM_HEADERS") && !err.contains("abc"),
            "{err}"
        );
    }
}
