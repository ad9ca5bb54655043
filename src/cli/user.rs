//! `memgate user export|delete` (docs/design.md §8): a user's data rights.
//!
//! A user's memories live in mem0 under every scope the user owns: their own
//! user_id (manual isolation, and `auto` without a project header) and each
//! `auto` project scope they used, which memgate records as it proxies
//! (`user_scopes`, see `crate::scopes`). The `global` shared scope is never a
//! user's. memgate talks to the mem0 upstream of `[mem0] upstream` directly.
//! The mem0 side (listing, deleting, what mem0's limits mean) is
//! `crate::upstream::mem0`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::json;

use super::token::validate_user_id;
use crate::audit::{AuditEvent, kind};
use crate::config::Config;
use crate::store::{AuditFilter, Store, TokenRecord};
use crate::upstream::mem0::Mem0Client;

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Write one JSON document with the user's memories (every scope), tokens
    /// (no secrets) and audit events
    Export(ExportArgs),
    /// Delete the user's memories in mem0 (every scope) and their tokens; the
    /// audit trail is kept. Safe to re-run.
    Delete(DeleteArgs),
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The user whose data to export
    #[arg(long, value_name = "ID")]
    pub user_id: String,
    /// Write the document to FILE (created with mode 0600) instead of stdout
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The user whose memories and tokens to delete
    #[arg(long, value_name = "ID")]
    pub user_id: String,
    /// Do not ask for confirmation (required when not on a terminal)
    #[arg(long)]
    pub yes: bool,
    /// Print what was deleted as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs one user command and returns what to print on stdout.
pub async fn run(store: &dyn Store, config: &Config, cmd: UserCommand) -> anyhow::Result<String> {
    match cmd {
        UserCommand::Export(args) => export(store, config, args).await,
        UserCommand::Delete(args) => delete(store, config, args).await,
    }
}

// ---------------------------------------------------------------------------
// Shared
// ---------------------------------------------------------------------------

/// The scopes whose memories are the user's: their own id first, then every
/// recorded `auto` project scope. The `global` shared scope and any recorded
/// value that is not a project scope (which a correct proxy never records) are
/// left out, with a warning: deleting someone else's memories is worse than
/// missing a few.
async fn user_scopes(
    store: &dyn Store,
    config: &Config,
    user_id: &str,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Vec<String>> {
    let mut scopes = vec![user_id.to_string()];
    for scope in store.user_scopes(user_id).await? {
        if scopes.contains(&scope) {
            continue;
        }
        if scope == config.isolation.shared_user_id {
            warnings.push(format!(
                "recorded scope {scope} is the shared (global) scope, not the user's: skipped"
            ));
        } else if !scope.starts_with("project_") {
            warnings.push(format!(
                "recorded scope {scope} is not an auto project scope: skipped"
            ));
        } else {
            scopes.push(scope);
        }
    }
    Ok(scopes)
}

fn os_user() -> Option<String> {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .filter(|u| !u.is_empty())
}

/// Records a user-data administration action. The action has happened;
/// failing to record it is reported but does not undo it.
async fn audit_action(store: &dyn Store, user_id: &str, success: bool, reason: String) {
    let mut event = AuditEvent::new(kind::USER_ADMIN, success);
    event.user_id = Some(user_id.to_string());
    event.method = Some("cli".into());
    event.user_agent = os_user();
    event.reason = Some(reason.clone());
    if let Err(e) = store.insert_audit(&[event]).await {
        eprintln!("warning: \"{reason}\" was not recorded in the audit trail: {e}");
    }
}

fn plural(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

// ---------------------------------------------------------------------------
// export
// ---------------------------------------------------------------------------

async fn export(store: &dyn Store, config: &Config, args: ExportArgs) -> anyhow::Result<String> {
    validate_user_id(&args.user_id)?;
    let user_id = args.user_id.as_str();
    let now = Utc::now();
    let mut warnings = Vec::new();
    let scopes = user_scopes(store, config, user_id, &mut warnings).await?;
    let mem0 = Mem0Client::new(config, user_id)?;

    let mut scope_docs = Vec::new();
    let mut memory_count = 0usize;
    let mut cut_scopes = 0usize;
    for scope in &scopes {
        let (memories, cut) = mem0.list_all(scope).await?;
        memory_count += memories.len();
        let mut doc = json!({
            "scope": scope,
            "kind": if scope == user_id { "user" } else { "project" },
            "memories_complete": cut.is_none(),
            "memories": memories,
        });
        if let Some(note) = cut {
            cut_scopes += 1;
            doc["note"] = json!(note);
            warnings.push(note);
        }
        scope_docs.push(doc);
    }
    let tokens = store.tokens(Some(user_id)).await?;
    let audit = store
        .audit_events(&AuditFilter {
            since: DateTime::<Utc>::UNIX_EPOCH,
            until: None,
            user_id: Some(user_id.to_string()),
            event: None,
            limit: i64::MAX,
            newest_first: false,
        })
        .await?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let document = json!({
        "user_id": user_id,
        "exported_at": super::time(now),
        "memgate_version": env!("CARGO_PKG_VERSION"),
        "mem0_upstream": config.mem0.upstream,
        "memory_count": memory_count,
        // False when mem0 cut a listing short: `memory_count` is then a floor.
        "memories_complete": cut_scopes == 0,
        "scopes": scope_docs,
        "tokens": tokens.iter().map(|t| super::token::listed_json(t, now)).collect::<Vec<_>>(),
        "audit": audit.iter().map(super::audit::event_json).collect::<Vec<_>>(),
        "warnings": warnings,
    });
    let mut summary = format!(
        "{} in {}, {}, {}",
        plural(memory_count as u64, "memory", "memories"),
        plural(scopes.len() as u64, "scope", "scopes"),
        plural(tokens.len() as u64, "token", "tokens"),
        plural(audit.len() as u64, "audit event", "audit events"),
    );
    if cut_scopes > 0 {
        summary.push_str(&format!(
            " (INCOMPLETE: mem0 cut the listing of {} short)",
            plural(cut_scopes as u64, "scope", "scopes")
        ));
    }
    let text = serde_json::to_string_pretty(&document)?;
    let out = match &args.output {
        Some(path) => {
            write_private(path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            format!("Exported user {user_id}: {summary} to {}.", path.display())
        }
        None => text,
    };
    audit_action(store, user_id, true, format!("user export: {summary}")).await;
    Ok(out)
}

/// Writes `text` to `path`, readable by its owner only (it is personal data).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

// ---------------------------------------------------------------------------
// delete
// ---------------------------------------------------------------------------

/// Asks on a terminal; refuses without `--yes` anywhere else.
fn confirm(user_id: &str, scopes: usize, tokens: usize, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("refusing to delete the data of user {user_id} without confirmation: pass --yes");
    }
    eprint!(
        "Delete every memory of user {user_id} in mem0 ({}) and {}? The audit trail is kept. [y/N] ",
        plural(scopes as u64, "scope", "scopes"),
        plural(tokens as u64, "token", "tokens"),
    );
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        bail!("not confirmed; nothing of user {user_id} was deleted")
    }
}

/// What one `user delete` run removed.
#[derive(Default)]
struct Removed {
    /// (scope, memories deleted in it), for every scope searched.
    per_scope: Vec<(String, u64)>,
    tokens: Vec<String>,
    scopes_forgotten: u64,
}

impl Removed {
    fn memories(&self) -> u64 {
        self.per_scope.iter().map(|(_, n)| n).sum()
    }

    fn scopes_with_memories(&self) -> usize {
        self.per_scope.iter().filter(|(_, n)| *n > 0).count()
    }

    fn nothing(&self) -> bool {
        self.memories() == 0 && self.tokens.is_empty()
    }

    /// `N memories in K scopes, T tokens`.
    fn summary(&self) -> String {
        format!(
            "{} in {}, {}",
            plural(self.memories(), "memory", "memories"),
            plural(self.scopes_with_memories() as u64, "scope", "scopes"),
            plural(self.tokens.len() as u64, "token", "tokens"),
        )
    }
}

async fn delete(store: &dyn Store, config: &Config, args: DeleteArgs) -> anyhow::Result<String> {
    validate_user_id(&args.user_id)?;
    let user_id = args.user_id.as_str();
    let mut warnings = Vec::new();
    let scopes = user_scopes(store, config, user_id, &mut warnings).await?;
    let tokens = store.tokens(Some(user_id)).await?;
    confirm(user_id, scopes.len(), tokens.len(), args.yes)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let mem0 = Mem0Client::new(config, user_id)?;
    // Reach mem0 before changing anything: an unreachable or misconfigured
    // upstream leaves everything as it was.
    mem0.list(user_id, 1).await?;

    let mut removed = Removed::default();
    match delete_everything(store, &mem0, user_id, &scopes, &tokens, &mut removed).await {
        Ok(()) => {
            audit_action(
                store,
                user_id,
                true,
                format!("user delete: {}", removed.summary()),
            )
            .await;
        }
        Err(e) => {
            audit_action(
                store,
                user_id,
                false,
                format!("user delete incomplete: {}: {e:#}", removed.summary()),
            )
            .await;
            return Err(e.context(format!(
                "user delete stopped after {}; the user's tokens are revoked; re-run \
                 `memgate user delete --user-id {user_id} --yes` to finish",
                removed.summary()
            )));
        }
    }
    Ok(if args.json {
        json!({
            "user_id": user_id,
            "nothing_left": removed.nothing(),
            "memories_deleted": removed.memories(),
            "scopes": removed.per_scope.iter()
                .map(|(scope, n)| json!({"scope": scope, "memories_deleted": n}))
                .collect::<Vec<_>>(),
            "tokens_deleted": removed.tokens,
            "scopes_forgotten": removed.scopes_forgotten,
            "warnings": warnings,
        })
        .to_string()
    } else if removed.nothing() {
        format!(
            "Nothing left to delete for user {user_id}: no memories in {}, no tokens.",
            plural(scopes.len() as u64, "scope", "scopes")
        )
    } else {
        let mut out = format!("Deleted the data of user {user_id}: {}.", removed.summary());
        for (scope, n) in &removed.per_scope {
            out.push_str(&format!(
                "\n  scope {scope}: {}",
                plural(*n, "memory", "memories")
            ));
        }
        if !removed.tokens.is_empty() {
            out.push_str(&format!("\n  tokens: {}", removed.tokens.join(", ")));
        }
        out.push_str("\nThe audit trail is kept.");
        out
    })
}

/// Revokes the tokens (no new memories while deleting), deletes the memories
/// scope by scope, then the tokens, then the recorded scopes.
async fn delete_everything(
    store: &dyn Store,
    mem0: &Mem0Client,
    user_id: &str,
    scopes: &[String],
    tokens: &[TokenRecord],
    removed: &mut Removed,
) -> anyhow::Result<()> {
    for t in tokens.iter().filter(|t| t.enabled) {
        store.set_enabled(t.id, false).await?;
    }
    for scope in scopes {
        let mut deleted = 0;
        let result = mem0.delete_scope(scope, &mut deleted).await;
        removed.per_scope.push((scope.clone(), deleted));
        result?;
    }
    for t in tokens {
        if store.delete_token(t.id).await? {
            removed.tokens.push(t.prefix.clone());
        }
    }
    removed.scopes_forgotten = store.forget_user_scopes(user_id).await?;
    Ok(())
}
