//! `[mcp.spawn]`: one MCP server process per scope, started by memgate.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Upstream, invalid};

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
    pub(super) fn validate(&self, upstream: &str) -> Result<(), ConfigError> {
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
