//! `[mcp]`: the MCP listener and the MCP policy's keys.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{
    ConfigError, ListenerConfig, PORT_PLACEHOLDER, SpawnConfig, Upstream, UpstreamHeaderSpecs,
    invalid,
};

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

    /// The tool rules memgate enforces: the built-in ones, with the
    /// config's `[mcp.tools.NAME]` tables added or replacing them by name.
    pub fn effective_tools(
        &self,
    ) -> std::collections::BTreeMap<String, crate::policy::mcp::ToolRule> {
        let mut tools = crate::policy::mcp::default_tool_rules();
        tools.extend(self.tools.clone());
        tools
    }

    /// `upstream`, with `[mcp.spawn]` if on, and the listener's keys.
    pub(super) fn validate_upstream(&self) -> Result<(), ConfigError> {
        match &self.spawn {
            Some(spawn) => spawn.validate(&self.upstream)?,
            None if self.upstream.contains(PORT_PLACEHOLDER) => {
                return Err(invalid(
                    "mcp.upstream",
                    "{port} stands for a spawned server's port: only with [mcp.spawn]",
                ));
            }
            None => validate_mcp_upstream(&self.upstream)?,
        }
        self.listener().validate("mcp")
    }

    /// The endpoints, the other paths forwarded, and the session table.
    pub(super) fn validate_endpoints(&self) -> Result<(), ConfigError> {
        for (key, path) in [
            ("mcp.path", &self.path),
            ("mcp.sse_path", &self.sse_path),
            ("mcp.messages_path", &self.messages_path),
        ] {
            if !path.starts_with('/') || path.contains(['?', '#', '%']) {
                return Err(invalid(key, "must be a plain path starting with /"));
            }
        }
        for path in &self.allowed_paths {
            if let Some(why) = crate::policy::endpoint::allowed_path_error(path) {
                return Err(invalid("mcp.allowed_paths", format!("{path:?} {why}")));
            }
        }
        if self.session_idle_secs == 0 || self.max_sessions == 0 {
            return Err(invalid(
                "mcp.session_idle_secs",
                "mcp.session_idle_secs and mcp.max_sessions must be at least 1",
            ));
        }
        Ok(())
    }
}

/// `mcp.upstream`: one `scheme://host:port`, or a template whose `{scope}`
/// and `{user}` stand only in the host name (each expands to one host
/// label), so that no scope can name a path, a port or another scheme.
pub(super) fn validate_mcp_upstream(upstream: &str) -> Result<(), ConfigError> {
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
