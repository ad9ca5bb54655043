//! Graceful stop (SIGTERM): stop accepting, let in-flight requests and streams
//! finish for up to `server.grace_period_secs`, flush the audit trail, exit 0.
//! pingora stops the listeners and would then sleep the whole grace period;
//! memgate exits as soon as nothing is in flight, so an idle one stops at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Requests being served right now, across the proxied listeners.
#[derive(Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Counts a request until the returned guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.0.clone())
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// Waits until nothing is in flight or `limit` has passed; true if drained.
    pub async fn drained(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.count() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        true
    }
}

pub struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drains_when_the_last_request_ends() {
        let in_flight = InFlight::default();
        let guard = in_flight.enter();
        assert!(!in_flight.drained(Duration::from_millis(60)).await);
        let waiter = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.drained(Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(guard);
        assert!(waiter.await.unwrap());
        assert_eq!(in_flight.count(), 0);
    }
}
