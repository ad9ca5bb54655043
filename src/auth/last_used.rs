//! `last_used_at` bookkeeping: noted in memory on every success, written to the
//! store in batches, at most once per token per interval (never one write per
//! request).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::cache::CachedToken;
use crate::store::Store;

pub struct LastUsed {
    interval: i64,
    /// Token id → when it was last used, waiting for the next flush.
    pending: Mutex<HashMap<i64, DateTime<Utc>>>,
}

impl LastUsed {
    pub fn new(interval: Duration) -> Self {
        LastUsed {
            interval: i64::try_from(interval.as_secs()).unwrap_or(i64::MAX),
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<i64, DateTime<Utc>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a use of `token`; only the first within each interval costs more
    /// than an atomic load.
    pub fn note(&self, token: &CachedToken, now: DateTime<Utc>) {
        if crate::window::claim(&token.state.used_noted, now.timestamp(), self.interval) {
            self.pending().insert(token.record.id, now);
        }
    }

    /// Writes what was noted since the last flush; keeps it for next time on failure.
    pub async fn flush(&self, store: &dyn Store) {
        let batch: Vec<(i64, DateTime<Utc>)> = self.pending().drain().collect();
        if batch.is_empty() {
            return;
        }
        if let Err(e) = store.touch_last_used(&batch).await {
            tracing::debug!(error = %e, "last_used_at not written; will retry");
            let mut pending = self.pending();
            for (id, at) in batch {
                pending.entry(id).or_insert(at);
            }
        }
    }
}
