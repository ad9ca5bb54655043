//! Which mem0 scopes each user has used. In `auto` isolation a user's memories
//! live under `project_{slug}_{hash}` scopes that cannot be derived from the
//! user id alone, so `memgate user export|delete` (docs/design.md §8) needs them
//! recorded. The proxy records every (user, scope) pair it forwards: the first
//! sighting of a pair in this process is written before its request goes on
//! (a memory must never exist in a scope `user delete` cannot find), later
//! sightings in batches, each at most once per interval (like
//! `last_used_at`, never one write per request).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use moka::sync::Cache;

use crate::flights::Flights;
use crate::store::{Store, StoreError};

type Pair = (String, String);

pub struct ScopeLog {
    /// Pairs this process has written to the store (or found there).
    stored: Cache<Pair, ()>,
    /// First writes under way: concurrent first requests share one.
    first_writes: Flights<Pair, Result<(), Arc<StoreError>>>,
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
            // Bounded: a pair evicted here only costs one more awaited write.
            stored: Cache::builder().max_capacity(1_000_000).build(),
            first_writes: Flights::default(),
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

    /// Records that `user_id` is about to have a request forwarded to mem0
    /// scope `scope`; call it before forwarding. A pair this process has not
    /// stored yet is written now, so that a memory created by the request is
    /// in a scope `memgate user delete` finds even if it runs at once; the
    /// request must not be forwarded when that write fails. Known pairs are
    /// only [`noted`](Self::note) (no I/O). The same exclusions as `note`.
    pub async fn record(
        &self,
        store: &dyn Store,
        user_id: &str,
        scope: &str,
    ) -> Result<(), Arc<StoreError>> {
        if scope == user_id || scope.is_empty() {
            return Ok(());
        }
        let key = (user_id.to_string(), scope.to_string());
        if self.stored.contains_key(&key) {
            self.note(user_id, scope);
            return Ok(());
        }
        let write = async {
            let seen = [(key.0.clone(), key.1.clone(), Utc::now())];
            match store.record_scopes(&seen).await {
                Ok(()) => {
                    self.stored.insert(key.clone(), ());
                    // Its `last_seen` was just written.
                    self.recent.insert(key.clone(), ());
                    Ok(())
                }
                Err(e) => Err(Arc::new(e)),
            }
        };
        let cached = || self.stored.contains_key(&key).then_some(Ok(()));
        self.first_writes.join(&key, cached, write).await.0
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

    async fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        crate::store::temporary(true).await
    }

    #[tokio::test]
    async fn a_first_sighting_is_stored_before_record_returns_and_repeats_are_batched() {
        let (_dir, store) = store().await;
        let log = ScopeLog::new(Duration::from_secs(60));
        log.record(store.as_ref(), "alice", "alice").await.unwrap();
        log.record(store.as_ref(), "alice", "project_app_0123456789ab")
            .await
            .unwrap();
        assert_eq!(
            store.user_scopes("alice").await.unwrap(),
            ["project_app_0123456789ab"],
            "written before the request it came with goes on"
        );
        assert_eq!(log.pending_len(), 0);
        // Known now: no second write on the request path.
        log.record(store.as_ref(), "alice", "project_app_0123456789ab")
            .await
            .unwrap();
        assert_eq!(log.pending_len(), 0, "noted within the interval already");
        // Concurrent first sightings of one pair share one write.
        let pair = "project_web_ba9876543210";
        let (a, b) = tokio::join!(
            log.record(store.as_ref(), "alice", pair),
            log.record(store.as_ref(), "alice", pair)
        );
        a.unwrap();
        b.unwrap();
        assert!(log.first_writes.is_idle());
        assert_eq!(store.user_scopes("alice").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_failed_first_write_is_an_error_and_is_tried_again() {
        // No migration: the table does not exist, so the write fails.
        let (_dir, store) = crate::store::temporary(false).await;
        let log = ScopeLog::new(Duration::from_secs(60));
        assert!(
            log.record(store.as_ref(), "alice", "project_app_0123456789ab")
                .await
                .is_err()
        );
        store.migrate().await.unwrap();
        log.record(store.as_ref(), "alice", "project_app_0123456789ab")
            .await
            .unwrap();
        assert_eq!(
            store.user_scopes("alice").await.unwrap(),
            ["project_app_0123456789ab"]
        );
    }
}
