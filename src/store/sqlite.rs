//! SQLite store: the embedded default (`sqlite://memgate.db?mode=rwc`).
//! Revocations reach a running server through the `token_changes` log, which
//! triggers fill and [`Store::watch_changes`] polls.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::AuditEvent;
use super::queries::{TokenRow, audit_columns, impl_store, insert_row_fn, observed, token_columns};
use super::{
    AuditFilter, ChangeHandler, NewToken, Store, StoreError, TokenChange, TokenRecord, UserStats,
};
use chrono::{DateTime, Utc};

/// How many change-log rows are kept; a poller is never this far behind.
const CHANGE_LOG_KEEP: i64 = 10_000;

pub struct SqliteStore {
    pool: SqlitePool,
}

insert_row_fn!(sqlx::Sqlite);

impl SqliteStore {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        connect_timeout: Duration,
    ) -> Result<Self, StoreError> {
        Self::open(url, max_connections, connect_timeout, true).await
    }

    /// Like [`SqliteStore::connect`]; with `create` false a missing database
    /// file is an error even if the URL says `mode=rwc`.
    pub async fn open(
        url: &str,
        max_connections: u32,
        connect_timeout: Duration,
        create: bool,
    ) -> Result<Self, StoreError> {
        let mut options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad sqlite url: {e}")))?;
        if !create {
            let file = options.get_filename();
            // In-memory databases have no file and are always "created".
            if !url.contains(":memory:") && !url.contains("mode=memory") && !file.exists() {
                return Err(StoreError::Missing(format!(
                    "{} does not exist",
                    file.display()
                )));
            }
            options = options.create_if_missing(false);
        }
        let options = options
            // WAL lets the CLI write while a server reads; busy_timeout waits for locks.
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5))
            // SQLite's default page cache is 2 MiB per pooled connection; token
            // lookups are point reads on an index, so 256 KiB each is plenty.
            .pragma("cache_size", "-256");
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(connect_timeout)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(SqliteStore { pool })
    }

    async fn last_change(&self) -> Result<i64, StoreError> {
        let r = sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(seq), 0) FROM token_changes")
            .fetch_one(&self.pool)
            .await;
        observed("poll_changes", r)
    }

    async fn changes_after(&self, seq: i64) -> Result<Vec<(i64, String)>, StoreError> {
        let r = sqlx::query_as::<_, (i64, String)>(
            "SELECT seq, token_hash FROM token_changes WHERE seq > $1 ORDER BY seq LIMIT 1000",
        )
        .bind(seq)
        .fetch_all(&self.pool)
        .await;
        observed("poll_changes", r)
    }

    async fn prune_changes(&self, upto: i64) -> Result<(), StoreError> {
        let r = sqlx::query("DELETE FROM token_changes WHERE seq <= $1")
            .bind(upto - CHANGE_LOG_KEEP)
            .execute(&self.pool)
            .await;
        observed("prune_changes", r).map(|_| ())
    }
}

impl_store!(SqliteStore, sqlx::Sqlite, {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))
    }

    async fn has_schema(&self) -> Result<bool, StoreError> {
        let r = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.pool)
        .await;
        observed("has_schema", r).map(|n| n > 0)
    }

    async fn watch_changes(&self, on_change: ChangeHandler, poll: Duration) {
        let mut last = loop {
            match self.last_change().await {
                Ok(seq) => break seq,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the token change log; retrying");
                    tokio::time::sleep(poll).await;
                }
            }
        };
        let mut polls: u64 = 0;
        loop {
            tokio::time::sleep(poll).await;
            polls += 1;
            match self.changes_after(last).await {
                Ok(rows) => {
                    for (seq, hash) in rows {
                        last = seq;
                        on_change(TokenChange::Token(hash));
                    }
                }
                // Nothing is lost: the next poll resumes after the last seen row.
                Err(e) => tracing::warn!(error = %e, "polling token changes failed"),
            }
            if polls.is_multiple_of(1000)
                && let Err(e) = self.prune_changes(last).await
            {
                tracing::warn!(error = %e, "pruning the token change log failed");
            }
        }
    }
});
