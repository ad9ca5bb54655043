//! The command line (docs/design.md §8): argument definitions and dispatch helpers.
//! `main.rs` only parses and calls into here.

pub mod audit;
pub mod docs;
pub mod import;
pub mod token;
pub mod upstream_name;
pub mod user;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::auth::oauth::{OAuth, OAuthSettings};
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
    #[arg(long, global = true, env = "MEMGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
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
    CheckConfig(CheckConfigArgs),
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
    /// Print a shell completion script
    Completions(docs::CompletionsArgs),
    /// Print the manual page memgate(1) in roff (memgate man > memgate.1)
    Man,
}

#[derive(clap::Args, Debug)]
pub struct CheckConfigArgs {
    /// Print a JSON object ({"file": …, "config": …}) instead of TOML
    #[arg(long)]
    pub json: bool,
}

/// Loads and validates the configuration named on the command line.
/// `check-config` also reads every `upstream_headers` value, as `serve`
/// does; other commands do not need them (and may run without the secrets).
pub fn load_config(cli: &Cli) -> anyhow::Result<config::Loaded> {
    let loaded = config::load(cli.config.as_deref())?;
    if matches!(cli.command, Command::CheckConfig(_)) {
        loaded.config.check_upstream_headers()?;
        // `[oauth]` as `serve` resolves it: the introspection secret, the
        // resources and their metadata URLs.
        if let Some(settings) =
            OAuthSettings::from_config(&loaded.config, |v| std::env::var(v).ok())?
        {
            OAuth::new(settings)?;
        }
    }
    Ok(loaded)
}

/// Whether a command may create the store it opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    /// `serve` and `migrate`: create the store (SQLite file, tables) if missing.
    CreateIfMissing,
    /// Every other command: a missing store is an error, so a command run in
    /// the wrong folder or with the wrong config does not act on an empty,
    /// freshly created store.
    Existing,
}

/// Opens (and migrates) the store for a one-shot command.
pub async fn open_store(config: &Config, open: Open) -> anyhow::Result<Arc<dyn Store>> {
    let db = &config.database;
    let timeout = Duration::from_secs(db.connect_timeout_secs);
    let shown = config::mask_url_password(&db.url);
    let store = match open {
        Open::CreateIfMissing => store::connect(&db.url, db.max_connections, timeout).await,
        Open::Existing => store::connect_existing(&db.url, db.max_connections, timeout).await,
    };
    let store = match store {
        Err(store::StoreError::Missing(why)) => anyhow::bail!(
            "no store at {shown} ({why}); create it with `memgate migrate`, \
             or point database.url (or --config) at the existing one"
        ),
        other => other.with_context(|| format!("cannot open the store at {shown}"))?,
    };
    store.migrate().await?;
    Ok(store)
}

pub fn check_config(loaded: &config::Loaded, args: &CheckConfigArgs) -> String {
    if args.json {
        return serde_json::json!({
            "file": loaded.file.as_ref().map(|p| p.display().to_string()),
            "config": loaded.config.to_masked_json(),
        })
        .to_string();
    }
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
    format!(
        "{source}\n# [mcp.tools] lists the built-in tool rules with the file's added or replacing them\n{}",
        loaded.config.to_masked_toml()
    )
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

/// The longest span a day count may name (100 years): further than any
/// token lifetime or audit window anyone means, and far inside what dates
/// can represent, so date arithmetic on it cannot overflow.
pub const MAX_DAYS: u32 = 36_500;

/// A day count from the command line (`--days`, `--expires-days`), at most [`MAX_DAYS`].
pub(crate) fn parse_days(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u64>() {
        Ok(days) if days <= u64::from(MAX_DAYS) => Ok(days as u32),
        Ok(_) => Err(format!(
            "{text} is more than {MAX_DAYS} days (100 years); give a smaller number"
        )),
        Err(_) => Err(format!("{text:?} is not a whole number of days")),
    }
}

/// `t + days`, or an error naming `flag` when the result is not a date.
pub(crate) fn days_after(
    t: chrono::DateTime<chrono::Utc>,
    days: i64,
    flag: &str,
) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    chrono::Duration::try_days(days)
        .and_then(|d| t.checked_add_signed(d))
        .ok_or_else(|| anyhow::anyhow!("{flag} {days} is out of range; give at most {MAX_DAYS}"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Datelike;
    use proptest::prelude::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("memgate").chain(args.iter().copied()))
    }

    /// Every subcommand and every flag or argument of every subcommand says
    /// what it is in `--help`.
    #[test]
    fn every_command_and_argument_has_help_text() {
        use clap::CommandFactory;
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "memgate", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn day_counts_past_a_hundred_years_are_refused_with_a_reason() {
        for args in [
            &[
                "token",
                "create",
                "--user-id",
                "a",
                "--expires-days",
                "4294967295",
            ][..],
            &[
                "token",
                "create",
                "--user-id",
                "a",
                "--expires-days",
                "3000000",
            ],
            &["token", "rotate", "mcp_AAAAAAAA", "--expires-days", "36501"],
            &["audit", "--days", "4294967295"],
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains("100 years"), "{args:?}: {e}");
        }
        assert!(parse(&["audit", "--days", "36500"]).is_ok());
    }

    proptest! {
        /// Whatever number reaches a day-count argument, parsing either
        /// refuses it or the date arithmetic it feeds gives a real date.
        #[test]
        fn numeric_arguments_never_panic(n in any::<i128>(), small in 0u64..100_000) {
            let now = chrono::Utc::now();
            for text in [n.to_string(), small.to_string()] {
                let create = ["token", "create", "--user-id", "a", "--expires-days", &text];
                if let Ok(Cli { command: Command::Token(token::TokenCommand::Create(args)), .. }) = parse(&create) {
                    let at = token::expiry(args.expires_days, now).unwrap();
                    prop_assert!(at.is_none_or(|at| at.year() <= now.year() + 101));
                }
                let rotate = ["token", "rotate", "mcp_AAAAAAAA", "--expires-days", &text];
                if let Ok(Cli { command: Command::Token(token::TokenCommand::Rotate { expires_days, .. }), .. }) = parse(&rotate) {
                    token::expiry(expires_days, now).unwrap();
                }
                if let Ok(Cli { command: Command::Audit(args), .. }) = parse(&["audit", "--days", &text]) {
                    audit::window(&args, now).unwrap();
                }
                for unit in ["s", "m", "h", "d", "w"] {
                    let age = format!("{text}{unit}");
                    for flag in ["--since", "--until"] {
                        if let Ok(Cli { command: Command::Audit(args), .. }) = parse(&["audit", flag, &age]) {
                            // An --until before the default window is refused, not a panic.
                            let _ = audit::window(&args, now);
                        }
                    }
                }
                for flag in ["--limit", "--rate-limit"] {
                    let _ = parse(&["audit", flag, &text]);
                    let _ = parse(&["token", "create", "--user-id", "a", flag, &text]);
                }
            }
        }
    }
}
