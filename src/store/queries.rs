//! The token SQL shared by both backends. `$N` placeholders are understood by
//! PostgreSQL and by SQLite, so each statement is written once and expanded
//! into both `Store` implementations by [`token_queries!`].

use chrono::{DateTime, Utc};

use super::{StoreError, TokenRecord};
use crate::identity::Permissions;

macro_rules! token_columns {
    () => {
        "id, token_hash, prefix, user_id, name, email, permissions, enabled, \
         created_at, created_by, expires_at, last_used_at, rate_limit_rps"
    };
}
pub(crate) use token_columns;

macro_rules! audit_columns {
    () => {
        "event_id, time, event, success, user_id, token_prefix, ip, user_agent, method, \
         path, mcp_method, tool, reason, request_id, auth_method"
    };
}
pub(crate) use audit_columns;

/// An audit row with its row id, which orders rows as they were stored.
#[derive(sqlx::FromRow)]
pub(crate) struct NumberedAuditEvent {
    pub(crate) id: i64,
    #[sqlx(flatten)]
    pub(crate) event: super::AuditEvent,
}

/// One row of `tokens`, as both backends decode it.
#[derive(sqlx::FromRow)]
pub(crate) struct TokenRow {
    id: i64,
    token_hash: String,
    prefix: String,
    user_id: String,
    name: Option<String>,
    email: Option<String>,
    permissions: String,
    enabled: bool,
    created_at: DateTime<Utc>,
    created_by: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    rate_limit_rps: Option<i64>,
}

impl TokenRow {
    pub(crate) fn into_record(self) -> Result<TokenRecord, StoreError> {
        let permissions =
            Permissions::parse(&self.permissions).map_err(|reason| StoreError::Corrupt {
                prefix: self.prefix.clone(),
                reason,
            })?;
        Ok(TokenRecord {
            id: self.id,
            token_hash: self.token_hash,
            prefix: self.prefix,
            user_id: self.user_id,
            name: self.name,
            email: self.email,
            permissions,
            enabled: self.enabled,
            created_at: self.created_at,
            created_by: self.created_by,
            expires_at: self.expires_at,
            last_used_at: self.last_used_at,
            rate_limit_rps: self
                .rate_limit_rps
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0),
        })
    }
}

/// Counts a query and turns its error into a `StoreError`, counting that too.
pub(crate) fn observed<T>(
    op: &'static str,
    result: Result<T, sqlx::Error>,
) -> Result<T, StoreError> {
    crate::metrics::METRICS
        .store_queries
        .with_label_values(&[op])
        .inc();
    result.map_err(|e| {
        crate::metrics::METRICS.store_errors.inc();
        StoreError::from(e)
    })
}

/// `insert_row(executor, &NewToken)` for one backend's database type, usable
/// on a pool or inside a transaction.
macro_rules! insert_row_fn {
    ($db:ty) => {
        async fn insert_row<'e, E>(executor: E, token: &NewToken) -> Result<TokenRow, sqlx::Error>
        where
            E: sqlx::Executor<'e, Database = $db>,
        {
            sqlx::query_as::<_, TokenRow>(concat!(
                "INSERT INTO tokens (token_hash, prefix, user_id, name, email, permissions, \
                 enabled, created_at, created_by, expires_at, rate_limit_rps) \
                 VALUES ($1, $2, $3, $4, $5, $6, TRUE, $7, $8, $9, $10) RETURNING ",
                token_columns!()
            ))
            .bind(&token.token_hash)
            .bind(&token.prefix)
            .bind(&token.user_id)
            .bind(&token.name)
            .bind(&token.email)
            .bind(token.permissions.to_string())
            .bind(token.created_at)
            .bind(&token.created_by)
            .bind(token.expires_at)
            .bind(token.rate_limit_rps.map(i64::from))
            .fetch_one(executor)
            .await
        }
    };
}
pub(crate) use insert_row_fn;

/// `impl Store for $ty`: the token methods, identical for both backends
/// (`self.pool`), plus the backend's own methods given in braces.
macro_rules! impl_store {
    ($ty:ty, $db:ty, { $($own:tt)* }) => {
        #[async_trait::async_trait]
        impl Store for $ty {
        $($own)*

        async fn insert_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
            if events.is_empty() {
                return Ok(());
            }
            let mut q = sqlx::QueryBuilder::<$db>::new(concat!(
                "INSERT INTO audit_events (",
                audit_columns!(),
                ") "
            ));
            q.push_values(events, |mut row, e| {
                row.push_bind(&e.event_id)
                    .push_bind(e.time)
                    .push_bind(&e.event)
                    .push_bind(e.success)
                    .push_bind(&e.user_id)
                    .push_bind(&e.token_prefix)
                    .push_bind(&e.ip)
                    .push_bind(&e.user_agent)
                    .push_bind(&e.method)
                    .push_bind(&e.path)
                    .push_bind(&e.mcp_method)
                    .push_bind(&e.tool)
                    .push_bind(&e.reason)
                    .push_bind(&e.request_id)
                    .push_bind(&e.auth_method);
            });
            // A replay from the spool may repeat events already written.
            q.push(" ON CONFLICT (event_id) DO NOTHING");
            // Each batch size is a different statement: caching them would keep
            // one compiled copy per size on every pooled connection.
            let r = q.build().persistent(false).execute(&self.pool).await;
            observed("insert_audit", r).map(|_| ())
        }

        async fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
            let query = if filter.newest_first {
                concat!(
                    "SELECT ",
                    audit_columns!(),
                    " FROM audit_events WHERE time >= $1 AND ($2 IS NULL OR user_id = $2) \
                     AND ($3 IS NULL OR event = $3) AND ($5 IS NULL OR time < $5) \
                     ORDER BY time DESC, id DESC LIMIT $4"
                )
            } else {
                concat!(
                    "SELECT ",
                    audit_columns!(),
                    " FROM audit_events WHERE time >= $1 AND ($2 IS NULL OR user_id = $2) \
                     AND ($3 IS NULL OR event = $3) AND ($5 IS NULL OR time < $5) \
                     ORDER BY time, id LIMIT $4"
                )
            };
            let r = sqlx::query_as::<_, AuditEvent>(query)
            .bind(filter.since)
            .bind(&filter.user_id)
            .bind(&filter.event)
            .bind(filter.limit)
            .bind(filter.until)
            .fetch_all(&self.pool)
            .await;
            observed("audit_events", r)
        }

        async fn audit_events_after(
            &self,
            after_id: i64,
            filter: &AuditFilter,
        ) -> Result<Vec<(i64, AuditEvent)>, StoreError> {
            let r = sqlx::query_as::<_, $crate::store::queries::NumberedAuditEvent>(concat!(
                "SELECT id, ",
                audit_columns!(),
                " FROM audit_events WHERE id > $1 AND ($2 IS NULL OR user_id = $2) \
                 AND ($3 IS NULL OR event = $3) ORDER BY id LIMIT $4"
            ))
            .bind(after_id)
            .bind(&filter.user_id)
            .bind(&filter.event)
            .bind(filter.limit)
            .fetch_all(&self.pool)
            .await;
            Ok(observed("audit_events_after", r)?
                .into_iter()
                .map(|row| (row.id, row.event))
                .collect())
        }

        async fn last_audit_id(&self) -> Result<i64, StoreError> {
            let r = sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(id) FROM audit_events")
                .fetch_one(&self.pool)
                .await;
            Ok(observed("last_audit_id", r)?.unwrap_or(0))
        }

        async fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
            let r = sqlx::query("DELETE FROM audit_events WHERE time < $1")
                .bind(before)
                .execute(&self.pool)
                .await;
            Ok(observed("prune_audit", r)?.rows_affected())
        }

        async fn touch_last_used(&self, used: &[(i64, DateTime<Utc>)]) -> Result<(), StoreError> {
            let mut tx = observed("touch_last_used", self.pool.begin().await)?;
            for (id, at) in used {
                let r = sqlx::query(
                    "UPDATE tokens SET last_used_at = $1 WHERE id = $2 \
                     AND (last_used_at IS NULL OR last_used_at < $1)",
                )
                .bind(*at)
                .bind(*id)
                .execute(&mut *tx)
                .await;
                observed("touch_last_used", r)?;
            }
            observed("touch_last_used", tx.commit().await)
        }

        async fn record_scopes(
            &self,
            seen: &[(String, String, DateTime<Utc>)],
        ) -> Result<(), StoreError> {
            // PostgreSQL refuses an upsert that touches one row twice: merge first.
            let mut latest: std::collections::BTreeMap<(&str, &str), DateTime<Utc>> =
                std::collections::BTreeMap::new();
            for (user_id, scope, at) in seen {
                let slot = latest.entry((user_id.as_str(), scope.as_str())).or_insert(*at);
                *slot = (*slot).max(*at);
            }
            if latest.is_empty() {
                return Ok(());
            }
            let rows: Vec<_> = latest.into_iter().collect();
            let mut tx = observed("record_scopes", self.pool.begin().await)?;
            // 4 parameters a row; well below either backend's limit per statement.
            for chunk in rows.chunks(500) {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO user_scopes (user_id, scope, first_seen, last_seen) ",
                );
                q.push_values(chunk, |mut row, ((user_id, scope), at)| {
                    row.push_bind(*user_id)
                        .push_bind(*scope)
                        .push_bind(*at)
                        .push_bind(*at);
                });
                q.push(
                    " ON CONFLICT (user_id, scope) DO UPDATE SET last_seen = excluded.last_seen \
                     WHERE user_scopes.last_seen < excluded.last_seen",
                );
                let r = q.build().persistent(false).execute(&mut *tx).await;
                observed("record_scopes", r)?;
            }
            observed("record_scopes", tx.commit().await)
        }

        async fn user_scopes(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
            let r = sqlx::query_scalar::<_, String>(
                "SELECT scope FROM user_scopes WHERE user_id = $1 ORDER BY first_seen, scope",
            )
            .bind(user_id)
            .fetch_all(&self.pool)
            .await;
            observed("user_scopes", r)
        }

        async fn forget_user_scopes(&self, user_id: &str) -> Result<u64, StoreError> {
            let r = sqlx::query("DELETE FROM user_scopes WHERE user_id = $1")
                .bind(user_id)
                .execute(&self.pool)
                .await;
            Ok(observed("forget_user_scopes", r)?.rows_affected())
        }

        async fn user_stats(&self, user_id: &str, since: DateTime<Utc>) -> Result<UserStats, StoreError> {
            let r = sqlx::query_as::<_, (i64, i64)>(
                "SELECT COALESCE(SUM(CASE WHEN NOT success THEN 1 ELSE 0 END), 0), \
                 COALESCE(SUM(CASE WHEN event = 'auth_success' THEN 1 ELSE 0 END), 0) \
                 FROM audit_events WHERE user_id = $1 AND time >= $2",
            )
            .bind(user_id)
            .bind(since)
            .fetch_one(&self.pool)
            .await;
            let (failures, successes) = observed("user_stats", r)?;
            let r = sqlx::query_as::<_, (Option<String>, i64)>(
                "SELECT reason, COUNT(*) AS n FROM audit_events \
                 WHERE user_id = $1 AND time >= $2 AND NOT success \
                 GROUP BY reason ORDER BY n DESC, reason LIMIT 5",
            )
            .bind(user_id)
            .bind(since)
            .fetch_all(&self.pool)
            .await;
            let top_failure_reasons = observed("user_stats", r)?
                .into_iter()
                .map(|(reason, n)| (reason.unwrap_or_else(|| "unspecified".into()), n))
                .collect();
            let r = sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
                "SELECT MAX(time) FROM audit_events WHERE user_id = $1",
            )
            .bind(user_id)
            .fetch_one(&self.pool)
            .await;
            let last_audit = observed("user_stats", r)?;
            Ok(UserStats {
                successes,
                failures,
                top_failure_reasons,
                last_audit_event: last_audit,
            })
        }
        async fn ping(&self) -> Result<(), StoreError> {
            let r = sqlx::query("SELECT 1").execute(&self.pool).await;
            observed("ping", r).map(|_| ())
        }

        async fn token_by_hash(&self, token_hash: &str) -> Result<Option<TokenRecord>, StoreError> {
            let r = sqlx::query_as::<_, TokenRow>(concat!(
                "SELECT ",
                token_columns!(),
                " FROM tokens WHERE token_hash = $1"
            ))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await;
            observed("token_by_hash", r)?.map(TokenRow::into_record).transpose()
        }

        async fn tokens(&self, user_id: Option<&str>) -> Result<Vec<TokenRecord>, StoreError> {
            let r = sqlx::query_as::<_, TokenRow>(concat!(
                "SELECT ",
                token_columns!(),
                " FROM tokens WHERE ($1 IS NULL OR user_id = $1) ORDER BY created_at, id"
            ))
            .bind(user_id)
            .fetch_all(&self.pool)
            .await;
            observed("tokens", r)?.into_iter().map(TokenRow::into_record).collect()
        }

        async fn count_tokens_expiring(
            &self,
            now: DateTime<Utc>,
            until: DateTime<Utc>,
        ) -> Result<i64, StoreError> {
            let r = sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM tokens \
                 WHERE enabled AND expires_at IS NOT NULL AND expires_at > $1 AND expires_at <= $2",
            )
            .bind(now)
            .bind(until)
            .fetch_one(&self.pool)
            .await;
            observed("count_tokens_expiring", r)
        }

        async fn tokens_by_prefix(&self, prefix: &str) -> Result<Vec<TokenRecord>, StoreError> {
            // substr instead of LIKE: `_` is both a token character and a LIKE wildcard.
            let r = sqlx::query_as::<_, TokenRow>(concat!(
                "SELECT ",
                token_columns!(),
                " FROM tokens WHERE substr(prefix, 1, length($1)) = $1 ORDER BY created_at, id"
            ))
            .bind(prefix)
            .fetch_all(&self.pool)
            .await;
            observed("tokens_by_prefix", r)?.into_iter().map(TokenRow::into_record).collect()
        }

        async fn insert_token(&self, token: &NewToken) -> Result<TokenRecord, StoreError> {
            let r = insert_row(&self.pool, token).await;
            observed("insert_token", r)?.into_record()
        }

        async fn import_token(
            &self,
            token: &NewToken,
            enabled: bool,
            last_used_at: Option<DateTime<Utc>>,
        ) -> Result<bool, StoreError> {
            let r = sqlx::query(
                "INSERT INTO tokens (token_hash, prefix, user_id, name, email, permissions, \
                 enabled, created_at, created_by, expires_at, rate_limit_rps, last_used_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (token_hash) DO NOTHING",
            )
            .bind(&token.token_hash)
            .bind(&token.prefix)
            .bind(&token.user_id)
            .bind(&token.name)
            .bind(&token.email)
            .bind(token.permissions.to_string())
            .bind(enabled)
            .bind(token.created_at)
            .bind(&token.created_by)
            .bind(token.expires_at)
            .bind(token.rate_limit_rps.map(i64::from))
            .bind(last_used_at)
            .execute(&self.pool)
            .await;
            Ok(observed("import_token", r)?.rows_affected() > 0)
        }

        async fn bind_session(
            &self,
            session_id: &str,
            user_id: &str,
            now: DateTime<Utc>,
        ) -> Result<String, StoreError> {
            let r = sqlx::query(
                "INSERT INTO mcp_sessions (session_id, user_id, created_at, last_seen) \
                 VALUES ($1, $2, $3, $3) ON CONFLICT (session_id) DO NOTHING",
            )
            .bind(session_id)
            .bind(user_id)
            .bind(now)
            .execute(&self.pool)
            .await;
            observed("bind_session", r)?;
            self.session_owner(session_id)
                .await?
                .ok_or_else(|| StoreError::Query("a session vanished while being bound".into()))
        }

        async fn session_owner(&self, session_id: &str) -> Result<Option<String>, StoreError> {
            let r = sqlx::query_scalar::<_, String>(
                "SELECT user_id FROM mcp_sessions WHERE session_id = $1",
            )
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await;
            observed("session_owner", r)
        }

        async fn touch_sessions(&self, session_ids: &[String], now: DateTime<Utc>) -> Result<(), StoreError> {
            let mut tx = observed("touch_sessions", self.pool.begin().await)?;
            for id in session_ids {
                let r = sqlx::query("UPDATE mcp_sessions SET last_seen = $1 WHERE session_id = $2")
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await;
                observed("touch_sessions", r)?;
            }
            observed("touch_sessions", tx.commit().await)
        }

        async fn end_session(&self, session_id: &str) -> Result<(), StoreError> {
            let r = sqlx::query("DELETE FROM mcp_sessions WHERE session_id = $1")
                .bind(session_id)
                .execute(&self.pool)
                .await;
            observed("end_session", r).map(|_| ())
        }

        async fn prune_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
            let r = sqlx::query("DELETE FROM mcp_sessions WHERE last_seen < $1")
                .bind(before)
                .execute(&self.pool)
                .await;
            Ok(observed("prune_sessions", r)?.rows_affected())
        }

        async fn set_enabled(&self, id: i64, enabled: bool) -> Result<bool, StoreError> {
            let r = sqlx::query("UPDATE tokens SET enabled = $1 WHERE id = $2")
                .bind(enabled)
                .bind(id)
                .execute(&self.pool)
                .await;
            Ok(observed("set_enabled", r)?.rows_affected() > 0)
        }

        async fn delete_token(&self, id: i64) -> Result<bool, StoreError> {
            let r = sqlx::query("DELETE FROM tokens WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await;
            Ok(observed("delete_token", r)?.rows_affected() > 0)
        }

        async fn rotate_token(&self, old_id: i64, new: &NewToken) -> Result<TokenRecord, StoreError> {
            let mut tx = observed("rotate_token", self.pool.begin().await)?;
            let r = sqlx::query("UPDATE tokens SET enabled = FALSE WHERE id = $1")
                .bind(old_id)
                .execute(&mut *tx)
                .await;
            if observed("rotate_token", r)?.rows_affected() == 0 {
                return Err(StoreError::Query(format!("token {old_id} no longer exists")));
            }
            let r = insert_row(&mut *tx, new).await;
            let row = observed("rotate_token", r)?;
            observed("rotate_token", tx.commit().await)?;
            row.into_record()
        }
        }
    };
}
pub(crate) use impl_store;
