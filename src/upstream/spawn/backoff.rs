//! The growing wait before a scope whose child failed to start starts again.

use std::collections::HashMap;
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Child, Supervisor};

/// The first wait after a failed start, doubled on each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between starts of a scope whose child keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Scopes whose failures are remembered; past this the oldest waits end.
const MAX_BACKOFFS: usize = 10_000;

/// The wait before a scope's child may start again after failures in a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub until: Instant,
    pub delay: Duration,
}

impl Backoff {
    /// The wait after one more failure at `now`: [`FIRST_BACKOFF`], then
    /// double the last, at most [`MAX_BACKOFF`].
    pub fn after(previous: Option<Backoff>, now: Instant) -> Backoff {
        let delay = previous.map_or(FIRST_BACKOFF, |b| (b.delay * 2).min(MAX_BACKOFF));
        Backoff {
            until: now + delay,
            delay,
        }
    }

    /// Whole seconds left at `now` (at least 1), or none when it is over.
    pub fn remaining_secs(&self, now: Instant) -> Option<u64> {
        let left = self.until.checked_duration_since(now)?;
        (!left.is_zero()).then(|| left.as_secs_f64().ceil().max(1.0) as u64)
    }
}

impl Supervisor {
    pub(super) fn backoffs(&self) -> MutexGuard<'_, HashMap<String, Backoff>> {
        self.backoffs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `child` failed to start: its scope waits before the next start. Once
    /// per child, so the log has one line per failure.
    pub(super) fn note_failure(&self, child: &Child) {
        if child.failed.swap(true, Ordering::AcqRel) {
            return;
        }
        let now = Instant::now();
        let mut backoffs = self.backoffs();
        if backoffs.len() >= MAX_BACKOFFS {
            backoffs.retain(|_, b| b.until > now);
        }
        let backoff = Backoff::after(backoffs.get(&child.key).copied(), now);
        backoffs.insert(child.key.clone(), backoff);
        tracing::warn!(
            scope = %child.key,
            retry_after_secs = backoff.delay.as_secs(),
            "the MCP server failed to start; the scope's next start waits (doubling up to {} s while it keeps failing)",
            MAX_BACKOFF.as_secs()
        );
    }

    /// `key`'s child started properly: its failures are forgotten.
    pub(super) fn note_success(&self, key: &str) {
        self.backoffs().remove(key);
    }
}
