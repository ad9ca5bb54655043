//! Who owns a memory id (docs/design.md §1 step 4). Owners never change in mem0, so
//! the cache learns them from creations and lookups and forgets them on
//! deletion; concurrent lookups of one id share one upstream request.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::policy::mem0::owner_from_get_response;
use crate::upstream::exchange::UpstreamClient;
use crate::upstream::mem0::get_memory;

mod cache;
pub use cache::OwnerCache;

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

/// Finds owners: the cache, else one `GET {mem0}/memories/{id}` (mem0 answers
/// the item, or 200 `null`). Used by the mem0 and the MCP listener alike.
pub struct OwnerResolver {
    cache: OwnerCache,
    client: Arc<UpstreamClient>,
    max_response_bytes: usize,
}

impl OwnerResolver {
    pub fn new(client: Arc<UpstreamClient>, capacity: u64, max_response_bytes: usize) -> Self {
        OwnerResolver {
            cache: OwnerCache::new(capacity, Duration::from_secs(24 * 3600)),
            client,
            max_response_bytes,
        }
    }

    /// The mem0 upstream this resolver asks.
    pub fn client(&self) -> &Arc<UpstreamClient> {
        &self.client
    }

    pub async fn owner(&self, memory_id: &str) -> Result<String, LookupError> {
        self.cache.owner(memory_id, self.lookup(memory_id)).await
    }

    pub fn record(&self, memory_id: String, owner: &str) {
        self.cache.record(memory_id, owner);
    }

    pub fn forget(&self, memory_id: &str) {
        self.cache.forget(memory_id);
    }

    async fn lookup(&self, memory_id: &str) -> Result<String, LookupError> {
        let answer = get_memory(&self.client, memory_id, self.max_response_bytes)
            .await
            .map_err(|status| LookupError::Upstream {
                status,
                message: "Cannot verify who owns this memory: the mem0 upstream did not answer"
                    .into(),
            })?;
        match answer.header.status.as_u16() {
            200 => {}
            404 => return Err(LookupError::NotFound),
            status => {
                return Err(LookupError::Upstream {
                    status: 502,
                    message: format!(
                        "Cannot verify who owns this memory: the mem0 upstream answered {status}"
                    ),
                });
            }
        }
        let item: Value =
            serde_json::from_slice(&answer.body).map_err(|_| LookupError::Upstream {
                status: 502,
                message:
                    "Cannot verify who owns this memory: the mem0 upstream answered something \
                      that is not JSON"
                        .into(),
            })?;
        owner_from_get_response(&item).ok_or(LookupError::NotFound)
    }
}
