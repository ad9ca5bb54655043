//! `[audit]`: how audit events are queued, spooled and kept.

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// `[audit]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Where events wait on disk while the store is unreachable.
    pub spool_dir: String,
    pub spool_max_bytes: u64,
    /// Events queued in memory for the batch writer.
    pub queue_capacity: usize,
    pub batch_size: usize,
    /// One successful authentication per token is recorded per this many seconds.
    pub success_sample_secs: u64,
    /// Audit rows older than this are deleted (0 keeps them forever).
    pub retention_days: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            spool_dir: "audit-spool".into(),
            spool_max_bytes: 256 * 1024 * 1024,
            queue_capacity: 10_000,
            batch_size: 500,
            success_sample_secs: 60,
            retention_days: 90,
        }
    }
}

impl AuditConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.queue_capacity == 0 || self.batch_size == 0 {
            return Err(invalid(
                "audit.queue_capacity",
                "audit.queue_capacity and audit.batch_size must be at least 1",
            ));
        }
        if self.spool_dir.trim().is_empty() {
            return Err(invalid("audit.spool_dir", "must name a directory"));
        }
        Ok(())
    }
}
