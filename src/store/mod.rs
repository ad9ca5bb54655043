//! The token store: one `Store` trait, a SQLite implementation (the embedded
//! default) and a PostgreSQL one. Both use the same SQL (`$N` placeholders work
//! in both), written once in [`queries`]; they differ in migrations and in how a
//! running server learns that a token changed (SQLite: a polled change log;
//! PostgreSQL: `LISTEN/NOTIFY`).

mod audit_event;
mod postgres;
mod queries;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::identity::Permissions;

pub use audit_event::{AuditEvent, new_id};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unreachable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Query(String),
    #[error("migration failed: {0}")]
    Migration(String),
    /// The store does not exist (or holds no memgate tables) and was not
    /// to be created.
    #[error("{0}")]
    Missing(String),
    #[error("stored token {prefix} is corrupt: {reason}")]
    Corrupt { prefix: String, reason: String },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            other => StoreError::Query(other.to_string()),
        }
    }
}

/// A stored token, without its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: i64,
    pub token_hash: String,
    pub prefix: String,
    pub user_id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub permissions: Permissions,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// Requests per second allowed to this token, overriding the default.
    pub rate_limit_rps: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenStatus {
    Active,
    Revoked,
    Expired,
}

impl TokenStatus {
    /// Revocation wins over expiry: a revoked token says so even after it expires.
    pub fn of(enabled: bool, expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Self {
        if !enabled {
            TokenStatus::Revoked
        } else if expires_at.is_some_and(|at| at <= now) {
            TokenStatus::Expired
        } else {
            TokenStatus::Active
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::Active => "active",
            TokenStatus::Revoked => "revoked",
            TokenStatus::Expired => "expired",
        }
    }
}

impl TokenRecord {
    /// Revocation wins over expiry: a revoked token says so even after it expires.
    pub fn status(&self, now: DateTime<Utc>) -> TokenStatus {
        TokenStatus::of(self.enabled, self.expires_at, now)
    }
}

/// What `token create` stores.
#[derive(Clone, Debug)]
pub struct NewToken {
    pub token_hash: String,
    pub prefix: String,
    pub user_id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub permissions: Permissions,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub rate_limit_rps: Option<u32>,
}

/// A change a running server must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenChange {
    /// The token with this SHA-256 hash (hex) was created, changed or deleted.
    Token(String),
    /// Changes may have been missed (e.g. the notification connection dropped).
    Unknown,
}

pub type ChangeHandler = Arc<dyn Fn(TokenChange) + Send + Sync>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Whether migrations have ever been applied (the store was created).
    async fn has_schema(&self) -> Result<bool, StoreError>;
    /// Cheap reachability check for `/ready`.
    async fn ping(&self) -> Result<(), StoreError>;
    async fn token_by_hash(&self, token_hash: &str) -> Result<Option<TokenRecord>, StoreError>;
    async fn tokens(&self, user_id: Option<&str>) -> Result<Vec<TokenRecord>, StoreError>;
    /// How many enabled tokens expire after `now` and at or before `until`
    /// (for `memgate_tokens_expiring`: one counting query, no rows fetched).
    async fn count_tokens_expiring(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<i64, StoreError>;
    /// Tokens whose display prefix starts with `prefix`.
    async fn tokens_by_prefix(&self, prefix: &str) -> Result<Vec<TokenRecord>, StoreError>;
    async fn insert_token(&self, token: &NewToken) -> Result<TokenRecord, StoreError>;
    /// Inserts a token carried over from another system, unless its hash is
    /// already stored; returns whether it was inserted.
    async fn import_token(
        &self,
        token: &NewToken,
        enabled: bool,
        last_used_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError>;
    /// Returns false when no such token exists.
    async fn set_enabled(&self, id: i64, enabled: bool) -> Result<bool, StoreError>;
    async fn delete_token(&self, id: i64) -> Result<bool, StoreError>;
    /// Disables `old_id` and inserts `new` in one transaction.
    async fn rotate_token(&self, old_id: i64, new: &NewToken) -> Result<TokenRecord, StoreError>;
    /// Writes audit events; events already stored (same `event_id`) are skipped.
    async fn insert_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError>;
    async fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError>;
    /// Audit events stored after row `after_id`, in the order they were
    /// stored, with their row ids (for `memgate audit --follow`); `filter`'s
    /// user, event and limit apply, its times do not.
    async fn audit_events_after(
        &self,
        after_id: i64,
        filter: &AuditFilter,
    ) -> Result<Vec<(i64, AuditEvent)>, StoreError>;
    /// The id of the newest audit row, 0 when there is none.
    async fn last_audit_id(&self) -> Result<i64, StoreError>;
    /// Deletes audit events older than `before`; returns how many.
    async fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Sets `last_used_at` for (token id, time) pairs, never moving it back.
    async fn touch_last_used(&self, used: &[(i64, DateTime<Utc>)]) -> Result<(), StoreError>;
    /// Records that `user_id` used mem0 scope `scope` at the given time: inserts
    /// the pair (first_seen = last_seen = time) or moves its `last_seen` forward,
    /// never back. Repeated pairs in one call are merged.
    /// Binds an MCP session to `user_id` unless it is bound already; returns
    /// the owner either way.
    async fn bind_session(
        &self,
        session_id: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<String, StoreError>;
    async fn session_owner(&self, session_id: &str) -> Result<Option<String>, StoreError>;
    /// Marks sessions as used (keeps them from expiring).
    async fn touch_sessions(
        &self,
        session_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    async fn end_session(&self, session_id: &str) -> Result<(), StoreError>;
    /// Forgets sessions unused since `before`; returns how many.
    async fn prune_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
    async fn record_scopes(
        &self,
        seen: &[(String, String, DateTime<Utc>)],
    ) -> Result<(), StoreError>;
    /// The scopes recorded for `user_id`, oldest first (the user's own id is
    /// included only if it was recorded).
    async fn user_scopes(&self, user_id: &str) -> Result<Vec<String>, StoreError>;
    /// Forgets every scope recorded for `user_id`; returns how many.
    async fn forget_user_scopes(&self, user_id: &str) -> Result<u64, StoreError>;
    /// Successes and failures since `since`, for `memgate stats`.
    async fn user_stats(
        &self,
        user_id: &str,
        since: DateTime<Utc>,
    ) -> Result<UserStats, StoreError>;
    /// Runs until the process ends, calling `on_change` for every token change
    /// made by any process. `poll` is the SQLite polling interval.
    async fn watch_changes(&self, on_change: ChangeHandler, poll: Duration);
}

/// Which audit events `audit_events` returns, and in which order.
#[derive(Clone, Debug)]
pub struct AuditFilter {
    /// Events at or after this time.
    pub since: DateTime<Utc>,
    /// Events before this time (all when `None`).
    pub until: Option<DateTime<Utc>>,
    pub user_id: Option<String>,
    pub event: Option<String>,
    /// At most this many: the newest ones when `newest_first`, else the oldest.
    pub limit: i64,
    pub newest_first: bool,
}

/// Activity of one user, from the audit trail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserStats {
    /// Recorded authentications (sampled: one per token per window).
    pub successes: i64,
    /// Refusals of every kind (authentication, permission, ownership, limits).
    pub failures: i64,
    /// (reason, count), most frequent first, at most five.
    pub top_failure_reasons: Vec<(String, i64)>,
    pub last_audit_event: Option<DateTime<Utc>>,
}

/// A fresh SQLite store in a temporary folder (kept while the folder
/// lives), migrated unless `migrated` is false, for unit tests.
#[cfg(test)]
pub async fn temporary(migrated: bool) -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
    let store = connect(&url, 2, Duration::from_secs(5))
        .await
        .expect("temporary store");
    if migrated {
        store.migrate().await.expect("migrations");
    }
    (dir, store)
}

/// Opens the store named by `database.url`, creating a SQLite file if the
/// URL allows it (`mode=rwc`).
pub async fn connect(
    url: &str,
    max_connections: u32,
    connect_timeout: Duration,
) -> Result<Arc<dyn Store>, StoreError> {
    open(url, max_connections, connect_timeout, true).await
}

/// Opens a store that must already exist: no SQLite file is created, and a
/// database without memgate's tables is [`StoreError::Missing`].
pub async fn connect_existing(
    url: &str,
    max_connections: u32,
    connect_timeout: Duration,
) -> Result<Arc<dyn Store>, StoreError> {
    let store = open(url, max_connections, connect_timeout, false).await?;
    if !store.has_schema().await? {
        return Err(StoreError::Missing(
            "it holds no memgate tables".to_string(),
        ));
    }
    Ok(store)
}

async fn open(
    url: &str,
    max_connections: u32,
    connect_timeout: Duration,
    create: bool,
) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(
            SqliteStore::open(url, max_connections, connect_timeout, create).await?,
        ))
    } else {
        Ok(Arc::new(
            PostgresStore::connect(url, max_connections, connect_timeout).await?,
        ))
    }
}
