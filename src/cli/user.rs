//! `memgate user export|delete` (DESIGN.md §8): a user's data rights.
//!
//! A user's memories live in mem0 under every scope the user owns: their own
//! user_id (manual isolation, and `auto` without a project header) and each
//! `auto` project scope they used, which memgate records as it proxies
//! (`user_scopes`, see `crate::scopes`). The `global` shared scope is never a
//! user's. memgate talks to the mem0 upstream of `[mem0] upstream` directly.
//!
//! Deletion lists a scope's memories and deletes them one by one
//! (`DELETE /memories/{id}`), never with `DELETE /memories?user_id=…`: on
//! mem0 0.1.118–1.0.5 that route ends in `vector_store.reset()` and drops
//! every user's memories (DESIGN.md §4).

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::http1::request::{InvalidHead, RequestHead};
use crate::proxy::headers;
use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::token::validate_user_id;
use crate::audit::{AuditEvent, kind};
use crate::config::Config;
use crate::policy::mem0::memory_path;
use crate::policy::percent;
use crate::proxy::exchange::UpstreamClient;
use crate::proxy::upstream::UpstreamTarget;
use crate::store::{AuditFilter, Store, TokenRecord};

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
    #[arg(long)]
    pub user_id: String,
    /// Write the document to FILE (created with mode 0600) instead of stdout
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[arg(long)]
    pub user_id: String,
    /// Do not ask for confirmation (required when not on a terminal)
    #[arg(long)]
    pub yes: bool,
    #[arg(long)]
    pub json: bool,
}

/// mem0's `get_all` default page size: a listing of exactly this many may be cut short.
const MEM0_DEFAULT_LIMIT: usize = 100;

/// Runs one user command and returns what to print on stdout.
pub async fn run(store: &dyn Store, config: &Config, cmd: UserCommand) -> anyhow::Result<String> {
    match cmd {
        UserCommand::Export(args) => export(store, config, args).await,
        UserCommand::Delete(args) => delete(store, config, args).await,
    }
}

// ---------------------------------------------------------------------------
// mem0
// ---------------------------------------------------------------------------

/// The mem0 upstream, spoken to directly (not through memgate's policy).
struct Mem0 {
    client: UpstreamClient,
    max_response: usize,
    user_id: String,
}

enum Deleted {
    Now,
    AlreadyGone,
}

impl Mem0 {
    fn new(config: &Config, user_id: &str) -> anyhow::Result<Mem0> {
        let target = UpstreamTarget::new("mem0.upstream", &config.mem0.listener())?;
        Ok(Mem0 {
            client: UpstreamClient::new(Arc::new(target)),
            // An export is one response per scope: allow more than the proxy does.
            max_response: config.limits.max_response_bytes.max(256 << 20),
            user_id: user_id.to_string(),
        })
    }

    fn upstream(&self) -> String {
        self.client.target().authority().to_string()
    }

    /// One request to mem0 on behalf of `scope`; returns (status, JSON body or Null).
    async fn call(&self, method: &str, path: &str, scope: &str) -> anyhow::Result<(u16, Value)> {
        let fail = |e: InvalidHead| anyhow!("{method} {path}: {e}");
        let method_ = http::Method::from_bytes(method.as_bytes())
            .map_err(|_| anyhow!("{method} {path}: invalid method"))?;
        let mut req = RequestHead::new(&method_, path).map_err(fail)?;
        req.header(&http::header::HOST, self.upstream().as_bytes())
            .map_err(fail)?;
        req.header(&http::header::ACCEPT, b"application/json")
            .map_err(fail)?;
        // The identity headers the proxy sends (src/proxy/headers.rs).
        req.header(&headers::X_MCP_USERID, self.user_id.as_bytes())
            .map_err(fail)?;
        req.header(&headers::X_MEMGATE_SCOPE, scope.as_bytes())
            .map_err(fail)?;
        let answer = self
            .client
            .exchange(req, None::<Bytes>, self.max_response)
            .await
            .map_err(|e| anyhow!("mem0 upstream {}: {method} {path}: {e}", self.upstream()))?;
        let status = answer.header.status.as_u16();
        let body = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// The memories mem0 lists for `scope`, keeping only those whose `user_id`
    /// is the scope (a mem0 that ignores the filter must not hand over, or get
    /// us to delete, anyone else's).
    async fn list(&self, scope: &str) -> anyhow::Result<Vec<Value>> {
        let path = format!(
            "/memories?user_id={}",
            percent::encode(scope, percent::is_unreserved)
        );
        let (status, body) = self.call("GET", &path, scope).await?;
        if status != 200 {
            bail!(
                "mem0 upstream {} answered {status} to GET /memories for scope {scope}: {}",
                self.upstream(),
                brief(&body)
            );
        }
        // `{"results": [...]}`; older servers (API v1.0) answer a bare list.
        let items = match body {
            Value::Array(items) => items,
            Value::Object(mut map) => match map.remove("results") {
                Some(Value::Array(items)) => items,
                _ => bail!("mem0 answered GET /memories for scope {scope} without a results list"),
            },
            other => bail!(
                "mem0 answered GET /memories for scope {scope} with {}",
                brief(&other)
            ),
        };
        Ok(items
            .into_iter()
            .filter(|item| item.get("user_id").and_then(Value::as_str) == Some(scope))
            .collect())
    }

    async fn delete_one(&self, scope: &str, id: &str) -> anyhow::Result<Deleted> {
        let (status, body) = self.call("DELETE", &memory_path(id), scope).await?;
        match status {
            200..=299 => Ok(Deleted::Now),
            404 => Ok(Deleted::AlreadyGone),
            _ => bail!(
                "mem0 upstream {} answered {status} to DELETE /memories/{id} (scope {scope}): {}",
                self.upstream(),
                brief(&body)
            ),
        }
    }

    /// Deletes every memory of `scope`, listing again until mem0 lists none
    /// (a listing is one page of at most `MEM0_DEFAULT_LIMIT` on most servers).
    /// `deleted` is bumped as memories go, so a failure still tells how many did.
    async fn delete_scope(&self, scope: &str, deleted: &mut u64) -> anyhow::Result<()> {
        let mut seen: HashSet<String> = HashSet::new();
        loop {
            let items = self.list(scope).await?;
            if items.is_empty() {
                return Ok(());
            }
            for item in items {
                let Some(id) = item.get("id").and_then(Value::as_str) else {
                    bail!(
                        "mem0 listed a memory of scope {scope} without an id: {}",
                        brief(&item)
                    );
                };
                if !seen.insert(id.to_string()) {
                    bail!("mem0 still lists memory {id} of scope {scope} after deleting it");
                }
                if let Deleted::Now = self.delete_one(scope, id).await? {
                    *deleted += 1;
                }
            }
        }
    }
}

/// A short rendering of a response body for an error message.
fn brief(body: &Value) -> String {
    let text = match body.get("detail") {
        Some(Value::String(detail)) => detail.clone(),
        _ => body.to_string(),
    };
    if text.chars().count() > 200 {
        format!("{}…", text.chars().take(200).collect::<String>())
    } else {
        text
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
    let mem0 = Mem0::new(config, user_id)?;

    let mut scope_docs = Vec::new();
    let mut memory_count = 0usize;
    for scope in &scopes {
        let memories = mem0.list(scope).await?;
        if memories.len() >= MEM0_DEFAULT_LIMIT {
            warnings.push(format!(
                "mem0 listed {} memories for scope {scope}; mem0's GET /memories returns at most \
                 {MEM0_DEFAULT_LIMIT} on many versions, so this scope may be incomplete",
                memories.len()
            ));
        }
        memory_count += memories.len();
        scope_docs.push(json!({
            "scope": scope,
            "kind": if scope == user_id { "user" } else { "project" },
            "memories": memories,
        }));
    }
    let tokens = store.tokens(Some(user_id)).await?;
    let audit = store
        .audit_events(&AuditFilter {
            since: DateTime::<Utc>::UNIX_EPOCH,
            user_id: Some(user_id.to_string()),
            event: None,
            limit: i64::MAX,
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
        "scopes": scope_docs,
        "tokens": tokens.iter().map(|t| super::token::listed_json(t, now)).collect::<Vec<_>>(),
        "audit": audit.iter().map(super::audit::event_json).collect::<Vec<_>>(),
        "warnings": warnings,
    });
    let summary = format!(
        "{} in {}, {}, {}",
        plural(memory_count as u64, "memory", "memories"),
        plural(scopes.len() as u64, "scope", "scopes"),
        plural(tokens.len() as u64, "token", "tokens"),
        plural(audit.len() as u64, "audit event", "audit events"),
    );
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
    let mem0 = Mem0::new(config, user_id)?;
    // Reach mem0 before changing anything: an unreachable or misconfigured
    // upstream leaves everything as it was.
    mem0.list(user_id).await?;

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
    mem0: &Mem0,
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
