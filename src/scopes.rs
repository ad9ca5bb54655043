//! Which mem0 scopes each user has used. In `auto` isolation a user's memories
//! live under `project_{slug}_{hash}` scopes that cannot be derived from the
//! user id alone, so `memgate user export|delete` (DESIGN.md §8) needs them
//! recorded. The proxy notes every (user, scope) pair it forwards; the pairs are
//! written to the store in batches, each at most once per interval (like
//! `last_used_at`, never one write per request).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use moka::sync::Cache;

use crate::store::{Store, StoreError};

type Pair = (String, String);

pub struct ScopeLog {
    /// Pairs noted within the current interval.
    recent: Cache<Pair, ()>,
    /// Pairs not yet written, with when they were (last) noted.
    pending: Mutex<HashMap<Pair, DateTime<Utc>>>,
}

impl ScopeLog {
    /// `interval`: how long a noted pair is not noted again (so its
    /// `last_seen` moves at most once per interval).
    pub fn new(interval: Duration) -> Self {
        ScopeLog {
            recent: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(interval)
                .build(),
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Pair, DateTime<Utc>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that `user_id` had a request forwarded to mem0 scope `scope`.
    /// Cheap and non-blocking (no I/O): call it on every forwarded request.
    /// A scope equal to the user id is not recorded (the user's own scope is
    /// always included by export and delete); callers should pass only scopes
    /// that belong to the user (the derived `auto` scope), never the `global`
    /// shared scope or a user_id an admin token named explicitly.
    pub fn note(&self, user_id: &str, scope: &str) {
        if scope == user_id || scope.is_empty() {
            return;
        }
        let key = (user_id.to_string(), scope.to_string());
        if self.recent.contains_key(&key) {
            return;
        }
        self.recent.insert(key.clone(), ());
        self.pending().insert(key, Utc::now());
    }

    /// Pairs noted and not yet written.
    pub fn pending_len(&self) -> usize {
        self.pending().len()
    }

    /// Writes what was noted since the last flush in one batch; on failure
    /// keeps it for the next flush (and returns the error, already logged at
    /// debug level).
    pub async fn flush(&self, store: &dyn Store) -> Result<(), StoreError> {
        let batch: Vec<(String, String, DateTime<Utc>)> = self
            .pending()
            .drain()
            .map(|((user_id, scope), at)| (user_id, scope, at))
            .collect();
        if batch.is_empty() {
            return Ok(());
        }
        match store.record_scopes(&batch).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, pairs = batch.len(), "user scopes not written; will retry");
                let mut pending = self.pending();
                for (user_id, scope, at) in batch {
                    // A newer note of the same pair (made meanwhile) wins.
                    pending.entry((user_id, scope)).or_insert(at);
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_each_pair_once_per_interval_and_skips_the_users_own_scope() {
        let log = ScopeLog::new(Duration::from_secs(60));
        log.note("alice", "alice");
        assert_eq!(log.pending_len(), 0);
        log.note("alice", "project_app_0123456789ab");
        log.note("alice", "project_app_0123456789ab");
        log.note("alice", "project_web_ba9876543210");
        log.note("bob", "project_app_0123456789ab");
        assert_eq!(log.pending_len(), 3);
    }
}
