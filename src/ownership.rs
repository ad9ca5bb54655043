//! Who owns a memory id (DESIGN.md §1 step 4). Owners never change in mem0, so
//! the cache learns them from creations and lookups and forgets them on
//! deletion; concurrent lookups of one id share one upstream request.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

/// Why an owner could not be found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The upstream says there is no such memory.
    #[error("memory not found")]
    NotFound,
    /// The upstream could not be asked, or answered something unexpected.
    #[error("{message}")]
    Upstream { status: u16, message: String },
}

pub struct OwnerCache {
    owners: Cache<String, String>,
}

impl OwnerCache {
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        OwnerCache {
            owners: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The owner of `memory_id` (a user id, or "" when stored without one).
    /// Only successful lookups are cached.
    pub async fn owner<F>(&self, memory_id: &str, lookup: F) -> Result<String, LookupError>
    where
        F: Future<Output = Result<String, LookupError>>,
    {
        self.owners
            .try_get_with(memory_id.to_string(), lookup)
            .await
            .map_err(|e: Arc<LookupError>| (*e).clone())
    }

    pub async fn record(&self, memory_id: String, owner: &str) {
        self.owners.insert(memory_id, owner.to_string()).await;
    }

    pub async fn forget(&self, memory_id: &str) {
        self.owners.invalidate(memory_id).await;
    }
}
