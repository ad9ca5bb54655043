//! `memgate user export|delete` (docs/design.md §8): a user's data rights.
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
//! every user's memories (docs/design.md §4). mem0 lists at most a fixed number
//! of memories and cannot page ([`MEM0_LIST_MAX`]): deletion lists again
//! until nothing is left, and an export says when a listing was cut short.

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

/// How many memories mem0's `GET /memories?user_id=…` hands out, by server
/// version (`server/main.py` and `Memory.get_all` of mem0ai):
///
/// - 1.0.x (October 2025): the route declares only `user_id`, `run_id` and
///   `agent_id` and calls `get_all` with its default `limit=100`. FastAPI
///   drops undeclared query parameters, so `top_k` is ignored: at most 100.
/// - 2.0.0–2.0.7: the same route; `get_all`'s default became `top_k=20`:
///   at most 20, and no way to ask for more.
/// - 2.0.8 and later (2026): `top_k: Query(None, ge=0, le=1000)`
///   (`ALL_MEMORIES_LIMIT`); without it `get_all` answers 20; over 1000 is a
///   422.
///
/// From 2.0.10 (release tags of the mem0 repository) `get_all` also hides memories past their `expiration_date`
/// unless `show_expired=true`; they are still stored, so export and delete ask
/// for them (older servers ignore the parameter).
///
/// None of them pages: there is no `page`, `offset` or cursor, and the order
/// is the vector store's. A listing as long as the server's limit may be cut
/// short, and the only way past it is deleting what was listed and listing
/// again.
const MEM0_LIST_MAX: usize = 1000;

/// The fixed limits of the versions that ignore `top_k` (1.0.x, 2.0.0–2.0.7).
const MEM0_FIXED_LIMITS: [usize; 2] = [100, 20];

/// Rounds of list-then-delete one scope may take before `user delete` gives
/// up: at 20 a round (the smallest limit above) that is 20 000 memories.
const MAX_DELETE_ROUNDS: usize = 1000;

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

    /// One listing of `scope`, asking for up to `top_k` memories. Keeps only
    /// the memories whose `user_id` is the scope (a mem0 that ignores the
    /// filter must not hand over, or get us to delete, anyone else's).
    async fn list(&self, scope: &str, top_k: usize) -> anyhow::Result<Listing> {
        let path = format!(
            "/memories?user_id={}&top_k={top_k}&show_expired=true",
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
        let listed = items.len();
        let memories = items
            .into_iter()
            .filter(|item| item.get("user_id").and_then(Value::as_str) == Some(scope))
            .collect();
        Ok(Listing { memories, listed })
    }

    /// Everything mem0 lets us list of `scope`, and why it may be incomplete
    /// (`None` when it is known to be all). See [`MEM0_LIST_MAX`].
    async fn list_all(&self, scope: &str) -> anyhow::Result<(Vec<Value>, Option<String>)> {
        let listing = self.list(scope, MEM0_LIST_MAX).await?;
        let n = listing.listed;
        let cut = if n >= MEM0_LIST_MAX {
            Some(format!(
                "mem0 listed {n} memories for scope {scope}, the most its GET /memories \
                 returns (top_k at most {MEM0_LIST_MAX}, no paging): the scope may hold more"
            ))
        } else if MEM0_FIXED_LIMITS.contains(&n) && self.ignores_top_k(scope).await? {
            Some(format!(
                "mem0 listed {n} memories for scope {scope} and ignores top_k (mem0 1.0.x \
                 returns at most 100, 2.0.0-2.0.7 at most 20, with no paging): the scope \
                 may hold more; upgrade mem0 to export them all"
            ))
        } else {
            None
        };
        Ok((listing.memories, cut))
    }

    /// Whether mem0 answers more than one memory when asked for one: a server
    /// that does not take `top_k` answers its fixed limit whatever is asked.
    async fn ignores_top_k(&self, scope: &str) -> anyhow::Result<bool> {
        Ok(self.list(scope, 1).await?.listed > 1)
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

    /// Deletes every memory of `scope`, listing again until mem0 lists none:
    /// a listing is cut at the server's limit and cannot page past it
    /// ([`MEM0_LIST_MAX`]). `deleted` is bumped as memories go, so a failure
    /// still tells how many did.
    async fn delete_scope(&self, scope: &str, deleted: &mut u64) -> anyhow::Result<()> {
        let mut seen: HashSet<String> = HashSet::new();
        for _ in 0..MAX_DELETE_ROUNDS {
            let items = self.list(scope, MEM0_LIST_MAX).await?.memories;
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
        bail!(
            "mem0 still lists memories of scope {scope} after {MAX_DELETE_ROUNDS} rounds of \
             listing and deleting ({deleted} deleted); memories may be being added meanwhile"
        )
    }
}

/// One answer of `GET /memories`.
struct Listing {
    /// The memories of the scope asked for.
    memories: Vec<Value>,
    /// How many items mem0 answered, whoever's: what its limit cuts.
    listed: usize,
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
    let mem0 = Mem0::new(config, user_id)?;
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
