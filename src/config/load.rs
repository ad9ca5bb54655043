//! Reading the configuration: defaults, then the file, then the
//! environment, and errors that say where in the file a key is wrong.

use std::path::{Path, PathBuf};

use super::env::{apply_env, near_miss_overrides};
use super::{Config, ConfigError, SPAWN_UPSTREAM, invalid};

pub const DEFAULT_PATH: &str = "config.toml";

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

/// Tables that a file sets whole, replacing the default's entries instead
/// of adding to them: an operator who writes `[oauth.scopes]` lists every
/// scope that grants anything, so a default such as `mcp:admin` cannot
/// linger unseen (the environment's `MEMGATE_OAUTH__SCOPES` does the same).
const SET_WHOLE: &[&str] = &["oauth.scopes"];

/// Merges `top` into `base`, table by table.
fn overlay(base: &mut toml::Table, top: toml::Table) {
    overlay_at("", base, top);
}

fn overlay_at(prefix: &str, base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above))
                if !SET_WHOLE.contains(&path.as_str()) =>
            {
                overlay_at(&path, below, above);
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}
