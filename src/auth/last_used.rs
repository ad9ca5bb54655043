//! `last_used_at` bookkeeping: noted in memory on every success, written to the
//! store in batches, at most once per token per interval (never one write per
//! request).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use moka::sync::Cache;

use crate::store::Store;

pub struct LastUsed {
    /// Tokens noted within the current interval.
    recent: Cache<String, ()>,
    pending: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl LastUsed {
    pub fn new(interval: Duration) -> Self {
        LastUsed {
            recent: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(interval)
                .build(),
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, DateTime<Utc>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a use of the token with this hash (hex).
    pub fn note(&self, token_hash: &str) {
        if self.recent.contains_key(token_hash) {
            return;
        }
        self.recent.insert(token_hash.to_string(), ());
        self.pending().insert(token_hash.to_string(), Utc::now());
    }

    /// Writes what was noted since the last flush; keeps it for next time on failure.
    pub async fn flush(&self, store: &dyn Store) {
        let batch: Vec<(String, DateTime<Utc>)> = self.pending().drain().collect();
        if batch.is_empty() {
            return;
        }
        if let Err(e) = store.touch_last_used(&batch).await {
            tracing::debug!(error = %e, "last_used_at not written; will retry");
            let mut pending = self.pending();
            for (hash, at) in batch {
                pending.entry(hash).or_insert(at);
            }
        }
    }
}
