//! The command line (DESIGN.md §8): argument definitions and dispatch helpers.
//! `main.rs` only parses and calls into here.

pub mod audit;
pub mod import;
pub mod token;
pub mod upstream_name;
pub mod user;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, Config};
use crate::store::{self, Store};

#[derive(Parser, Debug)]
#[command(
    name = "memgate",
    version,
    about = "Authentication and per-user ownership in front of mem0 and MCP servers",
    long_about = "memgate takes the ports of an unmodified mem0 REST server and MCP server, \
                  lets through only requests with a valid token (X-MCP-Token or \
                  Authorization: Bearer), and keeps each user on their own memories."
)]
pub struct Cli {
    /// Config file [default: ./config.toml]
    #[arg(long, global = true, env = "MEMGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy (migrates the store first)
    Serve,
    /// Apply store migrations and exit
    Migrate,
    /// Validate the configuration and print it, secrets masked
    CheckConfig,
    /// Issue, list, revoke, enable, delete and rotate tokens
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Show the audit trail
    Audit(audit::AuditArgs),
    /// Activity of one user: tokens, successes and failures, top failure reasons
    Stats(audit::StatsArgs),
    /// A user's data: export it (memories of every scope, tokens, audit) or delete it
    #[command(subcommand)]
    User(user::UserCommand),
    /// The server a templated [mcp] upstream (http://mcp-{scope}:8080) sends a user to
    UpstreamName(upstream_name::UpstreamNameArgs),
}

/// Loads and validates the configuration named on the command line.
/// `check-config` also reads every `upstream_headers` value, as `serve`
/// does; other commands do not need them (and may run without the secrets).
pub fn load_config(cli: &Cli) -> anyhow::Result<config::Loaded> {
    let loaded = config::load(cli.config.as_deref())?;
    if matches!(cli.command, Command::CheckConfig) {
        loaded.config.check_upstream_headers()?;
    }
    Ok(loaded)
}

/// Opens (and migrates) the store for a one-shot command.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let db = &config.database;
    let store = store::connect(
        &db.url,
        db.max_connections,
        Duration::from_secs(db.connect_timeout_secs),
    )
    .await
    .with_context(|| {
        format!(
            "cannot open the store at {}",
            config::mask_url_password(&db.url)
        )
    })?;
    store.migrate().await?;
    Ok(store)
}

pub fn check_config(loaded: &config::Loaded) -> String {
    let source = match &loaded.file {
        Some(path) => format!(
            "# effective configuration: {} plus MEMGATE_* overrides",
            path.display()
        ),
        None => {
            "# effective configuration: built-in defaults plus MEMGATE_* overrides (no config file)"
                .to_string()
        }
    };
    format!("{source}\n{}", loaded.config.to_masked_toml())
}

/// Left-aligned columns, two spaces apart.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

/// A time as the CLI prints it: RFC 3339, UTC, whole seconds.
pub(crate) fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(crate) fn opt_time(t: Option<chrono::DateTime<chrono::Utc>>) -> serde_json::Value {
    t.map_or(serde_json::Value::Null, |t| {
        serde_json::Value::String(time(t))
    })
}
