//! Who owns which memory id, remembered: a bounded map in front of mem0.
//!
//! Every `POST /memories` records the ids it created, so a busy instance
//! fills the cache and then evicts on every create. A general-purpose cache
//! pays for that with admission checks and housekeeping (3–5 µs per create
//! under load); this one keeps two generations per shard instead: ids go
//! into the young map, a full young map becomes the old one and the old one
//! is dropped whole, outside the lock. An id read from the old map moves
//! back to the young one, so ids in use stay; the most recent half of each
//! shard's ids is always kept. Evicting is always safe: owners never change
//! in mem0, so a forgotten owner is only asked of mem0 again.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::LookupError;
use crate::flights::Flights;

/// Shards, so that worker threads rarely wait for each other's lock.
const SHARDS: usize = 16;

/// Milliseconds since the cache was made.
type Millis = u64;

pub struct OwnerCache {
    shards: Box<[Mutex<Generations>]>,
    /// Picks the shard; keyed, as lookups come with ids clients chose.
    shard_of: RandomState,
    /// Ids per generation per shard: a shard holds at most two generations.
    generation: usize,
    ttl: Millis,
    started: Instant,
    /// Lookups of mem0 that concurrent misses for an id share.
    flights: Flights<String, Result<String, LookupError>>,
}

type Owners = HashMap<Box<str>, Entry>;

#[derive(Default)]
struct Generations {
    young: Owners,
    old: Owners,
}

struct Entry {
    owner: Box<str>,
    recorded: Millis,
}

impl Generations {
    /// Puts an id in the young generation (an id is in at most one). When
    /// that is full, it becomes the old one; the generation it retires is
    /// returned, to be dropped once the lock is released.
    fn put(&mut self, id: Box<str>, entry: Entry, generation: usize) -> Option<Owners> {
        self.old.remove(&id);
        let mut retired = None;
        if self.young.len() >= generation && !self.young.contains_key(&id) {
            let young = std::mem::take(&mut self.young);
            retired = Some(std::mem::replace(&mut self.old, young));
        }
        self.young.insert(id, entry);
        retired
    }
}

impl OwnerCache {
    /// Keeps at most `capacity` ids, each for at most `ttl`; none for 0, and
    /// at least one per generation and shard (32 in all) otherwise.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        OwnerCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_of: RandomState::new(),
            generation: capacity.div_ceil(2 * SHARDS),
            ttl: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            started: Instant::now(),
            flights: Flights::default(),
        }
    }

    fn now(&self) -> Millis {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn shard(&self, id: &str) -> MutexGuard<'_, Generations> {
        let at = (self.shard_of.hash_one(id) % SHARDS as u64) as usize;
        self.shards[at].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The owner of `memory_id` (a user id, or "" when stored without one),
    /// asking `lookup` on a miss; concurrent misses share one lookup. Only
    /// owners found are remembered.
    pub async fn owner<F>(&self, memory_id: &str, lookup: F) -> Result<String, LookupError>
    where
        F: Future<Output = Result<String, LookupError>>,
    {
        if let Some(owner) = self.cached(memory_id) {
            return Ok(owner);
        }
        let remember = async {
            let found = lookup.await;
            if let Ok(owner) = &found {
                self.record(memory_id.to_owned(), owner);
            }
            found
        };
        let (found, _) = self
            .flights
            .join(memory_id, || self.cached(memory_id).map(Ok), remember)
            .await;
        found
    }

    /// The remembered owner of `memory_id`, if it is not older than the TTL.
    fn cached(&self, memory_id: &str) -> Option<String> {
        let now = self.now();
        let live = |entry: &Entry| now.saturating_sub(entry.recorded) < self.ttl;
        let mut shard = self.shard(memory_id);
        if let Some(entry) = shard.young.get(memory_id) {
            return live(entry).then(|| entry.owner.to_string());
        }
        let (id, entry) = shard.old.remove_entry(memory_id)?;
        if !live(&entry) {
            return None;
        }
        let owner = entry.owner.to_string();
        let retired = shard.put(id, entry, self.generation);
        drop(shard);
        drop(retired);
        Some(owner)
    }

    /// Remembers that `owner` owns `memory_id`.
    pub fn record(&self, memory_id: String, owner: &str) {
        if self.generation == 0 {
            return;
        }
        let entry = Entry {
            owner: owner.into(),
            recorded: self.now(),
        };
        let mut shard = self.shard(&memory_id);
        let retired = shard.put(memory_id.into_boxed_str(), entry, self.generation);
        drop(shard);
        drop(retired);
    }

    /// Forgets `memory_id` (it was deleted).
    pub fn forget(&self, memory_id: &str) {
        let mut shard = self.shard(memory_id);
        shard.young.remove(memory_id);
        shard.old.remove(memory_id);
    }

    /// How many ids are remembered (expired ones included until retired).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap();
                s.young.len() + s.old.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn cached(cache: &OwnerCache, id: &str) -> Option<String> {
        cache.cached(id)
    }

    #[test]
    fn remembers_forgets_and_keeps_within_capacity() {
        let cache = OwnerCache::new(320, DAY);
        cache.record("m1".into(), "alice");
        cache.record("m2".into(), "");
        assert_eq!(cached(&cache, "m1").as_deref(), Some("alice"));
        assert_eq!(cached(&cache, "m2").as_deref(), Some(""));
        cache.forget("m1");
        assert_eq!(cached(&cache, "m1"), None);
        for i in 0..10_000 {
            cache.record(format!("id-{i}"), "bob");
            assert!(cache.len() <= 320, "over capacity after {i}");
        }
        // At least the last `generation` ids of every shard are kept.
        for i in 10_000 - 10..10_000 {
            assert_eq!(cached(&cache, &format!("id-{i}")).as_deref(), Some("bob"));
        }
        assert_eq!(cached(&cache, "id-0"), None);
    }

    #[test]
    fn ids_in_use_survive_the_turnover() {
        let cache = OwnerCache::new(64, DAY);
        cache.record("kept".into(), "alice");
        for i in 0..10_000 {
            cache.record(format!("id-{i}"), "bob");
            assert_eq!(
                cached(&cache, "kept").as_deref(),
                Some("alice"),
                "lost after {i}"
            );
        }
    }

    #[test]
    fn a_tiny_capacity_still_remembers_the_last_id_and_none_remembers_nothing() {
        let cache = OwnerCache::new(1, DAY);
        for i in 0..100 {
            cache.record(format!("id-{i}"), "bob");
            assert_eq!(cached(&cache, &format!("id-{i}")).as_deref(), Some("bob"));
        }
        assert!(cache.len() <= 2 * SHARDS);
        let off = OwnerCache::new(0, DAY);
        off.record("m1".into(), "bob");
        assert_eq!(cached(&off, "m1"), None);
        assert_eq!(off.len(), 0);
    }

    /// Not a test of behaviour: prints what 100,000 remembered owners cost
    /// (`cargo test --lib owner_memory -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn owner_memory() {
        fn rss_kib() -> u64 {
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
            statm.split(' ').nth(1).unwrap().parse::<u64>().unwrap() * 4
        }
        let before = rss_kib();
        let cache = OwnerCache::new(100_000, DAY);
        for i in 0..1_000_000u64 {
            cache.record(
                format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                "some-user-id",
            );
        }
        let per = (rss_kib() - before) * 1024 / cache.len() as u64;
        println!("{} owners remembered, about {per} bytes each", cache.len());
    }

    #[test]
    fn owners_older_than_the_ttl_are_asked_again() {
        let cache = OwnerCache::new(100, Duration::ZERO);
        cache.record("m1".into(), "alice");
        assert_eq!(cached(&cache, "m1"), None);
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_lookup_and_failures_are_not_kept() {
        let cache = Arc::new(OwnerCache::new(100, DAY));
        let lookups = Arc::new(AtomicUsize::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        let waiters: Vec<_> = (0..20)
            .map(|_| {
                let (cache, lookups, mut gate) = (cache.clone(), lookups.clone(), gate.clone());
                tokio::spawn(async move {
                    cache
                        .owner("m1", async {
                            lookups.fetch_add(1, Ordering::SeqCst);
                            gate.wait_for(|open| *open).await.unwrap();
                            Ok("alice".to_owned())
                        })
                        .await
                })
            })
            .collect();
        tokio::task::yield_now().await;
        release.send(true).unwrap();
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap().unwrap(), "alice");
        }
        assert_eq!(lookups.load(Ordering::SeqCst), 1, "one lookup of mem0");
        assert!(cache.flights.is_idle(), "the flight is over");
        assert_eq!(
            cache.owner("m1", async { unreachable!() }).await.unwrap(),
            "alice"
        );

        let missing = cache
            .owner("m2", async { Err(LookupError::NotFound) })
            .await;
        assert_eq!(missing, Err(LookupError::NotFound));
        let found = cache.owner("m2", async { Ok("bob".to_owned()) }).await;
        assert_eq!(found.unwrap(), "bob", "a failure is not remembered");
    }
}
