//! PostgreSQL store. Revocations reach every running server at once through
//! `LISTEN memgate_tokens`, which a trigger notifies with the token's hash.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use super::AuditEvent;
use super::queries::{TokenRow, audit_columns, impl_store, insert_row_fn, observed, token_columns};
use super::{
    AuditFilter, ChangeHandler, NewToken, Store, StoreError, TokenChange, TokenRecord, UserStats,
};
use chrono::{DateTime, Utc};

const CHANNEL: &str = "memgate_tokens";

pub struct PostgresStore {
    pool: PgPool,
}

insert_row_fn!(sqlx::Postgres);

impl PostgresStore {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        connect_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(connect_timeout)
            .connect(url)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(PostgresStore { pool })
    }

    /// Listens until the connection fails; returns so the caller can reconnect.
    async fn listen_once(&self, on_change: &ChangeHandler) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        // Anything changed while we were not listening is unknown to us.
        on_change(TokenChange::Unknown);
        loop {
            match listener.try_recv().await? {
                Some(n) => on_change(TokenChange::Token(n.payload().to_string())),
                // The connection dropped; PgListener reconnects on the next call,
                // but notifications sent meanwhile are gone.
                None => on_change(TokenChange::Unknown),
            }
        }
    }
}

impl_store!(PostgresStore, sqlx::Postgres, {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))
    }

    async fn has_schema(&self) -> Result<bool, StoreError> {
        let r = sqlx::query_scalar::<_, bool>("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await;
        observed("has_schema", r)
    }

    async fn watch_changes(&self, on_change: ChangeHandler, _poll: Duration) {
        loop {
            if let Err(e) = self.listen_once(&on_change).await {
                tracing::warn!(error = %e, "token change listener lost its connection; reconnecting");
                on_change(TokenChange::Unknown);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
});
