//! The token cache: fresh entries (positive TTL, short negative TTL) in front of
//! the store, with single-flight loading, plus last-known-good copies that keep
//! known tokens working for `auth.stale_grace_secs` while the store is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;

use crate::store::TokenRecord;
use crate::token::TokenHash;

/// How long a token served from a stale copy is kept before the store is tried again.
const STALE_RETRY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub enum Lookup {
    Known(Arc<TokenRecord>),
    Unknown,
}

#[derive(Clone)]
pub(super) struct Entry {
    pub lookup: Lookup,
    ttl: Duration,
}

struct EntryTtl;

impl Expiry<TokenHash, Entry> for EntryTtl {
    fn expire_after_create(&self, _: &TokenHash, e: &Entry, _: Instant) -> Option<Duration> {
        Some(e.ttl)
    }
}

#[derive(Clone)]
struct StaleCopy {
    record: Arc<TokenRecord>,
    fetched: Instant,
}

pub struct TokenCache {
    fresh: Cache<TokenHash, Entry>,
    stale: Cache<TokenHash, StaleCopy>,
    positive_ttl: Duration,
    negative_ttl: Duration,
    grace: Duration,
    /// Bumped by every invalidation, so a load that raced with one is not cached.
    epoch: AtomicU64,
}

impl TokenCache {
    pub fn new(
        capacity: u64,
        positive_ttl: Duration,
        negative_ttl: Duration,
        grace: Duration,
    ) -> Self {
        TokenCache {
            fresh: Cache::builder()
                .max_capacity(capacity)
                .expire_after(EntryTtl)
                .build(),
            stale: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(positive_ttl + grace)
                .build(),
            positive_ttl,
            negative_ttl,
            grace,
            epoch: AtomicU64::new(0),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Single-flight: concurrent calls for one key share one `load`. Returns
    /// the lookup and whether it came from the cache.
    pub(super) async fn get_or_load<F, E>(
        &self,
        key: TokenHash,
        load: F,
    ) -> Result<(Lookup, bool), Arc<E>>
    where
        F: Future<Output = Result<Entry, E>>,
        E: Send + Sync + 'static,
    {
        let entry = self.fresh.entry(key).or_try_insert_with(load).await?;
        let fresh = entry.is_fresh();
        Ok((entry.into_value().lookup, !fresh))
    }

    /// The entry to cache for what the store answered, `started` being the epoch
    /// read before the query was sent.
    pub(super) async fn loaded(
        &self,
        key: TokenHash,
        found: Option<TokenRecord>,
        started: u64,
    ) -> Entry {
        let raced = self.epoch() != started;
        match found {
            Some(record) => {
                let record = Arc::new(record);
                if !raced {
                    self.stale
                        .insert(
                            key,
                            StaleCopy {
                                record: record.clone(),
                                fetched: Instant::now(),
                            },
                        )
                        .await;
                }
                Entry {
                    lookup: Lookup::Known(record),
                    ttl: if raced {
                        Duration::ZERO
                    } else {
                        self.positive_ttl
                    },
                }
            }
            None => {
                self.stale.invalidate(&key).await;
                Entry {
                    lookup: Lookup::Unknown,
                    ttl: if raced {
                        Duration::ZERO
                    } else {
                        self.negative_ttl
                    },
                }
            }
        }
    }

    /// When the store cannot answer: the last known record, if it was fetched
    /// within the positive TTL plus the grace period.
    pub(super) async fn stale_entry(&self, key: &TokenHash) -> Option<Entry> {
        let copy = self.stale.get(key).await?;
        (copy.fetched.elapsed() <= self.positive_ttl + self.grace).then_some(Entry {
            lookup: Lookup::Known(copy.record),
            ttl: STALE_RETRY,
        })
    }

    /// One token changed: forget everything about it, stale copy included.
    pub async fn invalidate(&self, key: &TokenHash) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.fresh.invalidate(key).await;
        self.stale.invalidate(key).await;
    }

    /// Changes may have been missed: re-check every token with the store, but
    /// keep the stale copies in case the store is down.
    pub fn invalidate_fresh(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.fresh.invalidate_all();
    }
}
