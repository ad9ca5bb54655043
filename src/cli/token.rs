//! `memgate token …`: the only place a full token is ever shown (once, on
//! creation or rotation).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{opt_time, render_table, time};
use crate::audit::{AuditEvent, kind};
use crate::identity::{Permissions, user_id_problem};
use crate::store::{NewToken, Store, TokenRecord};
use crate::token;

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Issue a new token (shown once)
    Create(CreateArgs),
    /// List tokens (never shows a full token)
    List {
        /// Only this user's tokens
        #[arg(long, value_name = "ID")]
        user_id: Option<String>,
        /// Only active tokens that expire within this span (e.g. 7d, 30d, 12h), soonest first
        #[arg(long, value_name = "SPAN", value_parser = parse_span)]
        expiring: Option<chrono::Duration>,
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Disable a token; it stops working within a second
    Revoke(TargetArgs),
    /// Re-enable a revoked token (no confirmation: it takes nothing away)
    Enable(EnableArgs),
    /// Delete a token for good
    Delete(TargetArgs),
    /// Import the plaintext tokens of the Mem0 MCP Server stack (stores hashes only)
    ImportLegacy(super::import::ImportArgs),
    /// Issue a replacement token and revoke the old one
    Rotate {
        /// Display prefix (e.g. mcp_AbCdEfGh) matching exactly one token
        prefix: String,
        /// Days until the new token expires (at most 36500); 0 = never
        #[arg(long, default_value_t = 365, value_parser = super::parse_days)]
        expires_days: u32,
        /// Print the new token as JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The user the token authenticates as (the mem0 user_id in manual isolation)
    #[arg(long, value_name = "ID")]
    pub user_id: String,
    /// Display name of the holder
    #[arg(long)]
    pub name: Option<String>,
    /// Contact address of the holder, shown by `token list`
    #[arg(long)]
    pub email: Option<String>,
    /// Days until the token expires (at most 36500); 0 = never
    #[arg(long, default_value_t = 365, value_parser = super::parse_days)]
    pub expires_days: u32,
    /// Comma-separated: read, write, admin
    #[arg(long, default_value = "read,write")]
    pub permissions: String,
    /// Requests per second for this token, e.g. 5/s (default: rate_limit.per_token_rps)
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub rate_limit: Option<u32>,
    /// Print the new token as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TargetArgs {
    /// Display prefix (e.g. mcp_AbCdEfGh) matching exactly one token
    pub prefix: String,
    /// Do not ask for confirmation (required when not on a terminal)
    #[arg(long)]
    pub yes: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EnableArgs {
    /// Display prefix (e.g. mcp_AbCdEfGh) matching exactly one token
    pub prefix: String,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// `--expiring`: a span like `30d`, `12h` or `2w` (the ages `audit --since` takes).
fn parse_span(text: &str) -> Result<chrono::Duration, String> {
    match super::audit::parse_when(text) {
        Ok(super::audit::When::Ago(span)) => Ok(span),
        _ => Err(format!(
            "{text:?} is not a span like 7d, 30d, 12h or 2w (at most 36500 days)"
        )),
    }
}

/// `N/s` (or a bare `N`) requests per second, N ≥ 1.
fn parse_rate(text: &str) -> Result<u32, String> {
    let number = text.strip_suffix("/s").unwrap_or(text).trim();
    match number.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{text:?} is not a rate like 5/s (requests per second, at least 1)"
        )),
    }
}

/// `--user-id` as [`user_id_problem`] reads it.
pub fn validate_user_id(user_id: &str) -> anyhow::Result<()> {
    match user_id_problem(user_id) {
        Some(problem) => bail!("--user-id {problem}"),
        None => Ok(()),
    }
}

fn permission_list(p: Permissions) -> Vec<String> {
    p.to_string().split(',').map(str::to_string).collect()
}

pub(crate) fn expiry(days: u32, now: DateTime<Utc>) -> anyhow::Result<Option<DateTime<Utc>>> {
    if days == 0 {
        return Ok(None);
    }
    super::days_after(now, i64::from(days), "--expires-days").map(Some)
}

fn created_by() -> Option<String> {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .filter(|u| !u.is_empty())
}

/// A fresh token and the row that stores it.
fn new_token(
    user_id: &str,
    name: Option<String>,
    email: Option<String>,
    permissions: Permissions,
    expires_days: u32,
    rate_limit_rps: Option<u32>,
) -> anyhow::Result<(String, NewToken)> {
    let secret = token::generate()
        .map_err(|e| anyhow::anyhow!("the OS random number generator failed: {e}"))?;
    let now = Utc::now();
    let row = NewToken {
        token_hash: token::hash_hex(&secret),
        prefix: token::display_prefix(&secret).to_string(),
        user_id: user_id.to_string(),
        name,
        email,
        permissions,
        created_at: now,
        created_by: created_by(),
        expires_at: expiry(expires_days, now)?,
        rate_limit_rps,
    };
    Ok((secret, row))
}

fn created_json(secret: &str, t: &TokenRecord) -> Value {
    json!({
        "token": secret,
        "prefix": t.prefix,
        "user_id": t.user_id,
        "name": t.name,
        "email": t.email,
        "permissions": permission_list(t.permissions),
        "created_at": time(t.created_at),
        "expires_at": opt_time(t.expires_at),
        "rate_limit_rps": t.rate_limit_rps,
    })
}

fn created_text(secret: &str, t: &TokenRecord) -> String {
    let expires = t.expires_at.map_or("never".to_string(), time);
    format!(
        "Created a token for user {} ({}), expires {}.\nToken: {}\nPrefix: {}\n\
         Store it now: memgate keeps only its hash and cannot show it again.",
        t.user_id, t.permissions, expires, secret, t.prefix
    )
}

pub(crate) fn listed_json(t: &TokenRecord, now: DateTime<Utc>) -> Value {
    json!({
        "prefix": t.prefix,
        "user_id": t.user_id,
        "name": t.name,
        "email": t.email,
        "permissions": permission_list(t.permissions),
        "status": t.status(now).as_str(),
        "created_at": time(t.created_at),
        "created_by": t.created_by,
        "last_used_at": opt_time(t.last_used_at),
        "expires_at": opt_time(t.expires_at),
        "rate_limit_rps": t.rate_limit_rps,
    })
}

fn table(tokens: &[TokenRecord], now: DateTime<Utc>) -> String {
    let date = |t: DateTime<Utc>| t.format("%Y-%m-%d").to_string();
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.prefix.clone(),
                t.user_id.clone(),
                t.name.clone().unwrap_or_else(|| "-".into()),
                t.permissions.to_string(),
                t.status(now).as_str().into(),
                date(t.created_at),
                t.last_used_at.map_or("-".into(), date),
                t.expires_at.map_or("never".into(), date),
            ]
        })
        .collect();
    render_table(
        &[
            "PREFIX",
            "USER",
            "NAME",
            "PERMISSIONS",
            "STATUS",
            "CREATED",
            "LAST USED",
            "EXPIRES",
        ],
        &rows,
    )
}

/// Records a token administration action in the audit trail. The action has
/// happened; failing to record it is reported but does not undo it.
async fn audit_action(store: &dyn Store, t: &TokenRecord, action: &str) {
    let mut event = AuditEvent::new(kind::TOKEN_ADMIN, true);
    event.user_id = Some(t.user_id.clone());
    event.token_prefix = Some(t.prefix.clone());
    event.method = Some("cli".into());
    event.reason = Some(action.to_string());
    event.user_agent = created_by();
    if let Err(e) = store.insert_audit(&[event]).await {
        eprintln!(
            "warning: the {action} of {} was not recorded in the audit trail: {e}",
            t.prefix
        );
    }
}

/// The one token `prefix` names. A full token is accepted too (matched by hash).
async fn resolve(store: &dyn Store, prefix: &str) -> anyhow::Result<TokenRecord> {
    if token::is_well_formed(prefix) {
        return store
            .token_by_hash(&token::hash_hex(prefix))
            .await?
            .context("no stored token matches that token");
    }
    if !prefix.starts_with(token::TOKEN_PREFIX) || prefix.len() <= token::TOKEN_PREFIX.len() {
        bail!(
            "{prefix:?} is not a token prefix: expected mcp_ followed by its first characters, as `memgate token list` shows"
        );
    }
    let mut matches = store.tokens_by_prefix(prefix).await?;
    match matches.len() {
        0 => bail!("no token has the prefix {prefix}"),
        1 => Ok(matches.remove(0)),
        _ => {
            let now = Utc::now();
            let list: Vec<String> = matches
                .iter()
                .map(|t| format!("{} ({}, {})", t.prefix, t.user_id, t.status(now).as_str()))
                .collect();
            bail!(
                "prefix {prefix} matches {} tokens, give more characters: {}",
                matches.len(),
                list.join(", ")
            )
        }
    }
}

/// Asks on a terminal; refuses without `--yes` anywhere else.
fn confirm(action: &str, t: &TokenRecord, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "refusing to {action} token {} without confirmation: pass --yes",
            t.prefix
        );
    }
    eprint!("{action} token {} of user {}? [y/N] ", t.prefix, t.user_id);
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        bail!("not confirmed; token {} left unchanged", t.prefix)
    }
}

/// Runs one token command and returns what to print on stdout.
pub async fn run(store: &dyn Store, cmd: TokenCommand) -> anyhow::Result<String> {
    let now = Utc::now();
    match cmd {
        TokenCommand::Create(args) => {
            validate_user_id(&args.user_id)?;
            let permissions = Permissions::parse(&args.permissions)
                .map_err(|e| anyhow::anyhow!("--permissions: {e}"))?;
            let (secret, row) = new_token(
                &args.user_id,
                args.name,
                args.email,
                permissions,
                args.expires_days,
                args.rate_limit,
            )?;
            let stored = store.insert_token(&row).await?;
            audit_action(store, &stored, "create").await;
            Ok(if args.json {
                created_json(&secret, &stored).to_string()
            } else {
                created_text(&secret, &stored)
            })
        }
        TokenCommand::List {
            user_id,
            expiring,
            json,
        } => {
            let mut tokens = store.tokens(user_id.as_deref()).await?;
            if let Some(span) = expiring {
                let until = now
                    .checked_add_signed(span)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                tokens.retain(|t| {
                    t.status(now) == crate::store::TokenStatus::Active
                        && t.expires_at.is_some_and(|at| at <= until)
                });
                tokens.sort_by_key(|t| t.expires_at);
            }
            Ok(if json {
                Value::Array(tokens.iter().map(|t| listed_json(t, now)).collect()).to_string()
            } else if tokens.is_empty() && expiring.is_some() {
                "No active token expires within that span.".to_string()
            } else if tokens.is_empty() {
                "No tokens.".to_string()
            } else {
                table(&tokens, now)
            })
        }
        TokenCommand::Revoke(args) => {
            let t = resolve(store, &args.prefix).await?;
            confirm("Revoke", &t, args.yes)?;
            store.set_enabled(t.id, false).await?;
            audit_action(store, &t, "revoke").await;
            changed(&t, "revoked", args.json)
        }
        TokenCommand::Enable(args) => {
            let t = resolve(store, &args.prefix).await?;
            store.set_enabled(t.id, true).await?;
            audit_action(store, &t, "enable").await;
            changed(&t, "enabled", args.json)
        }
        TokenCommand::Delete(args) => {
            let t = resolve(store, &args.prefix).await?;
            confirm("Delete", &t, args.yes)?;
            store.delete_token(t.id).await?;
            audit_action(store, &t, "delete").await;
            changed(&t, "deleted", args.json)
        }
        TokenCommand::ImportLegacy(args) => super::import::run(store, args).await,
        TokenCommand::Rotate {
            prefix,
            expires_days,
            json,
        } => {
            let old = resolve(store, &prefix).await?;
            let (secret, row) = new_token(
                &old.user_id,
                old.name.clone(),
                old.email.clone(),
                old.permissions,
                expires_days,
                old.rate_limit_rps,
            )?;
            let stored = store.rotate_token(old.id, &row).await?;
            audit_action(store, &old, "rotate (revoked)").await;
            audit_action(store, &stored, "rotate (created)").await;
            Ok(if json {
                let mut v = created_json(&secret, &stored);
                v["revoked_prefix"] = Value::String(old.prefix.clone());
                v.to_string()
            } else {
                format!(
                    "{}\nRevoked: {}",
                    created_text(&secret, &stored),
                    old.prefix
                )
            })
        }
    }
}

fn changed(t: &TokenRecord, what: &str, json: bool) -> anyhow::Result<String> {
    Ok(if json {
        json!({"prefix": t.prefix, "user_id": t.user_id, "action": what}).to_string()
    } else {
        format!("Token {} of user {} {what}.", t.prefix, t.user_id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_user_ids() {
        assert!(validate_user_id("alice").is_ok());
        assert!(validate_user_id("josé@example.com").is_ok());
        for bad in ["", " alice", "alice\n", "a\u{7f}b", &"x".repeat(129)] {
            assert!(validate_user_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn expiry_zero_means_never() {
        let now = Utc::now();
        assert_eq!(expiry(0, now).unwrap(), None);
        assert_eq!(
            expiry(365, now).unwrap(),
            Some(now + chrono::Duration::days(365))
        );
    }
}
