//! Getting events from the request path to the store: `Auditor::record` never
//! blocks on the store (a bounded queue, else the spool), and `AuditWriter`
//! writes batches, spools them while the store is down and replays the spool,
//! oldest first, when it is back.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use moka::future::Cache;
use tokio::sync::{mpsc, watch};

use super::{AuditEvent, Spool};
use crate::metrics::METRICS;
use crate::store::Store;

/// How often the writer tries to empty the spool while the store is down.
const REPLAY_EVERY: Duration = Duration::from_secs(1);

fn count(outcome: &str, n: usize) {
    METRICS
        .audit_events
        .with_label_values(&[outcome])
        .inc_by(n as u64);
}

/// The request path's handle on the audit trail. Cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<AuditEvent>,
    spool: Arc<Spool>,
    /// Keys recorded within the sampling window (e.g. the first 429 per token).
    sampled: Cache<String, ()>,
    sample_window_secs: i64,
}

impl Auditor {
    /// Queues an event. When the queue is full or the writer has stopped, the
    /// event goes straight to the spool; only a full spool loses it, loudly.
    pub fn record(&self, event: AuditEvent) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(
                mpsc::error::TrySendError::Full(event) | mpsc::error::TrySendError::Closed(event),
            ) => {
                spill(&self.spool, std::slice::from_ref(&event));
            }
        }
    }

    /// Whether this success is the one to audit in its sampling window;
    /// `slot` is the token's own (kept on the cached token: no per-token
    /// entry here).
    pub fn success_due(&self, slot: &AtomicI64, now: i64) -> bool {
        crate::window::claim(slot, now, self.sample_window_secs)
    }

    /// Records the event `make` builds only if nothing was recorded under
    /// `key` within the sampling window (e.g. the first success of each token
    /// per minute). The common case, already sampled, costs one lookup.
    pub async fn record_sampled(&self, key: &str, make: impl FnOnce() -> AuditEvent) {
        if self.sampled.contains_key(key) {
            return;
        }
        if self
            .sampled
            .entry(key.to_string())
            .or_insert(())
            .await
            .is_fresh()
        {
            self.record(make());
        }
    }
}

/// Appends to the spool; a failure here is the only way an event is lost.
fn spill(spool: &Spool, events: &[AuditEvent]) -> bool {
    match spool.append(events) {
        Ok(()) => {
            count("spooled", events.len());
            true
        }
        Err(e) => {
            count("dropped", events.len());
            tracing::error!(error = %e, lost = events.len(), "audit events lost");
            false
        }
    }
}

pub struct AuditWriter {
    rx: mpsc::Receiver<AuditEvent>,
    store: Arc<dyn Store>,
    spool: Arc<Spool>,
    batch_size: usize,
    store_down: bool,
}

/// Creates the request-path handle and the writer that drains it.
pub fn channel(
    store: Arc<dyn Store>,
    spool: Arc<Spool>,
    queue_capacity: usize,
    batch_size: usize,
    sample_window: Duration,
) -> (Auditor, AuditWriter) {
    let (tx, rx) = mpsc::channel(queue_capacity);
    let auditor = Auditor {
        tx,
        spool: spool.clone(),
        sampled: Cache::builder()
            .max_capacity(1_000_000)
            .time_to_live(sample_window)
            .build(),
        sample_window_secs: i64::try_from(sample_window.as_secs()).unwrap_or(i64::MAX),
    };
    let writer = AuditWriter {
        rx,
        store,
        spool,
        batch_size,
        store_down: false,
    };
    (auditor, writer)
}

impl AuditWriter {
    /// Writes until `shutdown` turns true, then drains the queue and returns.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut replay = tokio::time::interval(REPLAY_EVERY);
        replay.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                event = self.rx.recv() => match event {
                    Some(event) => {
                        let batch = self.gather(event);
                        self.write(batch).await;
                    }
                    None => break,
                },
                _ = replay.tick() => self.replay().await,
            }
        }
        self.rx.close();
        let mut rest = Vec::new();
        while let Ok(event) = self.rx.try_recv() {
            rest.push(event);
        }
        for chunk in rest.chunks(self.batch_size.max(1)) {
            self.write(chunk.to_vec()).await;
        }
        tracing::info!(spooled = self.spool.depth(), "audit writer flushed");
    }

    /// The first event plus whatever is already queued, up to a batch.
    fn gather(&mut self, first: AuditEvent) -> Vec<AuditEvent> {
        let mut batch = vec![first];
        while batch.len() < self.batch_size {
            match self.rx.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        batch
    }

    async fn write(&mut self, batch: Vec<AuditEvent>) {
        // Keep order: while older events wait in the spool, newer ones join them.
        if self.spool.depth() > 0 {
            self.replay().await;
            if self.spool.depth() > 0 {
                spill(&self.spool, &batch);
                return;
            }
        }
        match self.store.insert_audit(&batch).await {
            Ok(()) => {
                count("written", batch.len());
                self.note_store(true);
            }
            Err(e) => {
                self.note_store(false);
                tracing::debug!(error = %e, "audit batch not written; spooling");
                spill(&self.spool, &batch);
            }
        }
    }

    /// Moves spooled events into the store, oldest first, as far as it goes.
    async fn replay(&mut self) {
        if self.spool.depth() == 0 {
            return;
        }
        let events = match self.spool.read_all() {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the audit spool");
                return;
            }
        };
        let mut done = 0;
        for chunk in events.chunks(self.batch_size.max(1)) {
            if self.store.insert_audit(chunk).await.is_err() {
                self.note_store(false);
                break;
            }
            done += chunk.len();
        }
        if done > 0 {
            self.note_store(true);
            count("replayed", done);
            tracing::info!(replayed = done, "audit events replayed from the spool");
            if let Err(e) = self.spool.drop_replayed(done) {
                tracing::error!(error = %e, "cannot trim the audit spool; events may be replayed twice (harmless)");
            }
        }
    }

    fn note_store(&mut self, up: bool) {
        if self.store_down == up {
            if up {
                tracing::info!("audit store reachable again");
            } else {
                tracing::warn!("audit store unreachable; spooling events to disk");
            }
        }
        self.store_down = !up;
    }
}
