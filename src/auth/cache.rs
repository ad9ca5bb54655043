//! The token cache: fresh entries (positive TTL, short negative TTL) in front of
//! the store, with single-flight loading, plus last-known-good copies that keep
//! known tokens working for `auth.stale_grace_secs` while the store is down.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::ops::Deref;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use governor::DefaultDirectRateLimiter;

use chrono::{DateTime, Utc};

use crate::flights::Flights;
use crate::identity::Identity;
use crate::store::{TokenRecord, TokenStatus};
use crate::token::TokenHash;

/// How long a token served from a stale copy is kept before the store is tried again.
const STALE_RETRY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub enum Lookup {
    Known(Arc<CachedToken>),
    Unknown,
}

/// What requests read of a token: the store's `TokenRecord` without the
/// hash (the cache key) and the fields only the CLI shows.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedRecord {
    pub id: i64,
    /// Who the token speaks for (user id, permissions, display prefix),
    /// built once per read from the store: every request of the token shares it.
    pub identity: Arc<Identity>,
    pub enabled: bool,
    pub expires_at: Option<DateTime<Utc>>,
    /// Requests per second allowed to this token, overriding the default.
    pub rate_limit_rps: Option<u32>,
}

impl CachedRecord {
    pub fn status(&self, now: DateTime<Utc>) -> TokenStatus {
        TokenStatus::of(self.enabled, self.expires_at, now)
    }
}

impl From<TokenRecord> for CachedRecord {
    fn from(r: TokenRecord) -> Self {
        CachedRecord {
            id: r.id,
            identity: Arc::new(Identity {
                user_id: r.user_id,
                permissions: r.permissions,
                token_prefix: r.prefix,
            }),
            enabled: r.enabled,
            expires_at: r.expires_at,
            rate_limit_rps: r.rate_limit_rps,
        }
    }
}

/// A known token and the per-token state that lives as long as it is cached:
/// one allocation per token instead of one cache entry per concern.
#[derive(Debug)]
pub struct CachedToken {
    pub record: CachedRecord,
    /// Shared by every copy of this token read from the store in turn, so a
    /// reload (TTL, a racing change) neither re-audits nor resets the limiter.
    pub state: Arc<TokenState>,
}

#[derive(Debug, Default)]
pub struct TokenState {
    /// Unix seconds of the last use noted for `last_used_at` (0: never).
    pub used_noted: AtomicI64,
    /// Unix seconds of the last audited success (0: never).
    pub success_audited: AtomicI64,
    /// The token's local rate limiter, built on first use.
    pub limiter: OnceLock<DefaultDirectRateLimiter>,
}

impl CachedToken {
    pub fn new(record: TokenRecord) -> Self {
        CachedToken::with_state(record, Arc::default())
    }

    fn with_state(record: TokenRecord, state: Arc<TokenState>) -> Self {
        CachedToken {
            record: record.into(),
            state,
        }
    }

    /// The same token re-read from the store: shares `previous`'s state; a
    /// changed rate limit starts a new budget (the other marks are kept).
    fn succeeding(record: TokenRecord, previous: Option<&CachedToken>) -> Self {
        let Some(previous) = previous.filter(|p| p.record.id == record.id) else {
            return CachedToken::new(record);
        };
        let old = &previous.state;
        if previous.record.rate_limit_rps == record.rate_limit_rps {
            return CachedToken::with_state(record, old.clone());
        }
        let state = TokenState {
            used_noted: AtomicI64::new(old.used_noted.load(Ordering::Relaxed)),
            success_audited: AtomicI64::new(old.success_audited.load(Ordering::Relaxed)),
            limiter: OnceLock::new(),
        };
        CachedToken::with_state(record, Arc::new(state))
    }
}

impl Deref for CachedToken {
    type Target = CachedRecord;

    fn deref(&self) -> &CachedRecord {
        &self.record
    }
}

/// Milliseconds since the cache was built: a token's deadlines in 8 bytes each.
type Millis = u64;

/// A token the store knows, fresh or not: one entry serves as the cached
/// answer, as the copy served while the store is down, and as the link that
/// carries the token's state (limiter, audit marks) over to its next read.
struct Known {
    token: Arc<CachedToken>,
    /// Answered without asking the store until then.
    fresh_until: Millis,
    /// Served when the store cannot answer until then; 0 when the copy came
    /// from a read that raced a change, or the token changed since.
    servable_until: Millis,
    /// Dropped after then (swept, or replaced by the next read).
    keep_until: Millis,
}

/// One lock's worth of a map, bounded, with expired entries swept on insert.
struct Shard<V, S> {
    map: HashMap<TokenHash, V, S>,
    swept: Millis,
}

/// Hashes a token hash (a SHA-256 digest) by reading 8 of its bytes, for the
/// map of known tokens only. Its keys are digests of tokens the store
/// issued, which no client chooses, so no client can crowd a bucket; a
/// lookup of a client's key costs what any lookup costs. The map of unknown
/// tokens, whose keys clients do choose, keeps std's keyed SipHash.
#[derive(Default, Clone, Copy)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Bytes 8..16: byte 0 already picked the shard.
        match bytes.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(word) => self.0 ^= u64::from_le_bytes(word),
            None => {
                for b in bytes {
                    self.0 = self.0.rotate_left(8) ^ u64::from(*b);
                }
            }
        }
    }

    /// The slice's length prefix: always 32 here.
    fn write_usize(&mut self, _: usize) {}

    fn finish(&self) -> u64 {
        self.0
    }
}

type DigestState = BuildHasherDefault<DigestHasher>;

/// A map split by the first byte of the key (a SHA-256 digest, so evenly),
/// to keep worker threads off each other's lock, and bounded as a whole to
/// `capacity` entries (exceeded by one only when a full map takes a key into
/// an empty shard while every other shard's lock is held).
struct Shards<V, S = RandomState> {
    shards: Box<[Mutex<Shard<V, S>>]>,
    capacity: usize,
    len: AtomicUsize,
}

/// How often a shard drops its expired entries when the map is not full.
const SWEEP_EVERY: Millis = 60_000;

impl<V, S: BuildHasher + Default> Shards<V, S> {
    fn new(capacity: u64) -> Self {
        Shards {
            shards: (0..16)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::default(),
                        swept: 0,
                    })
                })
                .collect(),
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX).max(1),
            len: AtomicUsize::new(0),
        }
    }

    fn lock(&self, key: &TokenHash) -> MutexGuard<'_, Shard<V, S>> {
        let shard = &self.shards[usize::from(key[0]) % self.shards.len()];
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn remove(&self, shard: &mut Shard<V, S>, key: &TokenHash) {
        if shard.map.remove(key).is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn forget(&self, key: &TokenHash) {
        self.remove(&mut self.lock(key), key);
    }

    fn clear(&self) {
        self.each(|shard| {
            self.len.fetch_sub(shard.map.len(), Ordering::Relaxed);
            shard.map.clear();
        });
    }

    fn each(&self, mut f: impl FnMut(&mut Shard<V, S>)) {
        for shard in &self.shards {
            f(&mut shard.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// Drops an arbitrary entry: from `shard`, or, when it is empty, from
    /// the first other shard that is free (never waiting for a lock while
    /// holding one).
    fn drop_one(&self, shard: &mut Shard<V, S>) {
        if let Some(victim) = shard.map.keys().next().copied() {
            return self.remove(shard, &victim);
        }
        for other in &self.shards {
            if let Ok(mut other) = other.try_lock()
                && let Some(victim) = other.map.keys().next().copied()
            {
                return self.remove(&mut other, &victim);
            }
        }
    }

    /// Inserts into a locked shard; `expired` says which entries may be
    /// swept. When the map is full the shard sweeps, and if that frees
    /// nothing, an arbitrary entry is dropped: only the store's own tokens (or, in
    /// the negative map, absent ones) get in, so no client chooses what goes.
    fn insert(
        &self,
        shard: &mut Shard<V, S>,
        key: TokenHash,
        value: V,
        now: Millis,
        expired: impl Fn(&V) -> bool,
    ) {
        let new = !shard.map.contains_key(&key);
        let full = new && self.len() >= self.capacity;
        if full || now.saturating_sub(shard.swept) >= SWEEP_EVERY {
            let before = shard.map.len();
            shard.map.retain(|_, v| !expired(v));
            self.len
                .fetch_sub(before - shard.map.len(), Ordering::Relaxed);
            shard.swept = now;
        }
        if full && self.len() >= self.capacity {
            self.drop_one(shard);
        }
        if shard.map.insert(key, value).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The caller that asked the store failed; every caller that waited for it
/// gets the same answer (the store error is logged once, by the loader).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unavailable;

pub struct TokenCache {
    /// Tokens the store knows: fresh answers and last-known-good copies.
    known: Shards<Known, DigestState>,
    /// Tokens the store does not know, until the negative TTL runs out.
    unknown: Shards<Millis>,
    /// Store reads that concurrent misses for a token share.
    flights: Flights<TokenHash, Result<Lookup, Unavailable>>,
    started: Instant,
    positive_ttl: Millis,
    negative_ttl: Millis,
    /// How long a copy is kept, and served during an outage, after its read.
    keep: Millis,
    /// Bumped by every invalidation. A load remembers it when it starts; if
    /// its key (or everything) was invalidated since, the result is not cached.
    epoch: AtomicU64,
    /// The epoch at which each recently changed token was invalidated.
    changed: Mutex<ChangedKeys>,
    /// The epoch of the last invalidation of everything.
    all_epoch: AtomicU64,
}

/// Longer than any store query can take, so a racing load always sees its key here.
const KEY_EPOCH_TTL: Millis = 120_000;

/// The tokens changed in the last `KEY_EPOCH_TTL`, with the epoch of their
/// change. Only the change feed adds to it (never a client), and it is not
/// bounded by count: dropping a key early could let a read that raced its
/// change be cached.
#[derive(Default)]
struct ChangedKeys {
    at: HashMap<TokenHash, (u64, Millis)>,
    /// The latest epoch among the forgotten changes: a read older than it is
    /// treated as having raced (it could have raced one of them).
    forgotten: u64,
    swept: Millis,
}

impl ChangedKeys {
    fn note(&mut self, key: TokenHash, epoch: u64, now: Millis) {
        if now.saturating_sub(self.swept) >= KEY_EPOCH_TTL {
            let forgotten = &mut self.forgotten;
            self.at.retain(|_, (epoch, at)| {
                let keep = now.saturating_sub(*at) < KEY_EPOCH_TTL;
                if !keep {
                    *forgotten = (*forgotten).max(*epoch);
                }
                keep
            });
            self.swept = now;
        }
        self.at.insert(key, (epoch, now));
    }

    fn since(&self, key: &TokenHash, started: u64) -> bool {
        self.forgotten > started || self.at.get(key).is_some_and(|(at, _)| *at > started)
    }
}

fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

impl TokenCache {
    pub fn new(
        capacity: u64,
        positive_ttl: Duration,
        negative_ttl: Duration,
        grace: Duration,
    ) -> Self {
        TokenCache {
            known: Shards::new(capacity),
            unknown: Shards::new(capacity),
            flights: Flights::default(),
            started: Instant::now(),
            positive_ttl: millis(positive_ttl),
            negative_ttl: millis(negative_ttl),
            keep: millis(positive_ttl + grace),
            epoch: AtomicU64::new(0),
            changed: Mutex::new(ChangedKeys::default()),
            all_epoch: AtomicU64::new(0),
        }
    }

    fn now(&self) -> Millis {
        millis(self.started.elapsed())
    }

    /// A cached answer, without ever asking the store.
    pub(super) fn cached(&self, key: &TokenHash) -> Option<Lookup> {
        let now = self.now();
        if let Some(k) = self.known.lock(key).map.get(key)
            && k.fresh_until > now
        {
            return Some(Lookup::Known(k.token.clone()));
        }
        let unknown = self.unknown.lock(key);
        unknown
            .map
            .get(key)
            .is_some_and(|until| *until > now)
            .then_some(Lookup::Unknown)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Single-flight: concurrent calls for one key share one `load`, which
    /// caches what it read (see `loaded`). Returns the lookup and whether it
    /// came from another caller's read. A caller dropped while loading hands
    /// the read over to one of those waiting.
    pub(super) async fn get_or_load<F>(
        &self,
        key: TokenHash,
        load: F,
    ) -> Result<(Lookup, bool), Unavailable>
    where
        F: Future<Output = Result<Lookup, Unavailable>>,
    {
        let (result, loaded_here) = self
            .flights
            .join(&key, || self.cached(&key).map(Ok), load)
            .await;
        result.map(|lookup| (lookup, !loaded_here))
    }

    /// Caches what the store answered, `started` being the epoch read before
    /// the query was sent, and returns it. Whether the read raced a change is
    /// decided under the shard's lock, which `invalidate` takes after bumping
    /// the epochs: either this read sees the change, or the change sees it.
    pub(super) fn loaded(
        &self,
        key: TokenHash,
        found: Option<TokenRecord>,
        started: u64,
    ) -> Lookup {
        let raced = || {
            self.all_epoch.load(Ordering::Acquire) > started
                || self
                    .changed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .since(&key, started)
        };
        let now = self.now();
        let Some(record) = found else {
            self.known.forget(&key);
            let mut shard = self.unknown.lock(&key);
            if self.negative_ttl > 0 && !raced() {
                let until = now.saturating_add(self.negative_ttl);
                self.unknown
                    .insert(&mut shard, key, until, now, |u| *u <= now);
            }
            return Lookup::Unknown;
        };
        self.unknown.forget(&key);
        let mut shard = self.known.lock(&key);
        let previous = shard.map.get(&key).filter(|k| k.keep_until > now);
        let token = Arc::new(CachedToken::succeeding(
            record,
            previous.map(|k| k.token.as_ref()),
        ));
        let keep_until = now.saturating_add(self.keep);
        let known = if !raced() {
            Known {
                token: token.clone(),
                fresh_until: now.saturating_add(self.positive_ttl),
                servable_until: keep_until,
                keep_until,
            }
        } else if previous.is_none() {
            // Possibly older than the change: never answered or served, it
            // only links the token's state to the next read. A raced read
            // never replaces a copy (which may be newer than it).
            Known {
                token: token.clone(),
                fresh_until: 0,
                servable_until: 0,
                keep_until,
            }
        } else {
            return Lookup::Known(token);
        };
        self.known
            .insert(&mut shard, key, known, now, |k| k.keep_until <= now);
        Lookup::Known(token)
    }

    /// When the store cannot answer: the last known record, if it was read
    /// within the positive TTL plus the grace period. It is then answered
    /// from the cache for a second before the store is tried again.
    pub(super) fn stale_entry(&self, key: &TokenHash) -> Option<Lookup> {
        let now = self.now();
        let mut shard = self.known.lock(key);
        let known = shard.map.get_mut(key).filter(|k| k.servable_until > now)?;
        known.fresh_until = now.saturating_add(millis(STALE_RETRY));
        Some(Lookup::Known(known.token.clone()))
    }

    /// One token changed: forget its record, stale copy included. Only the
    /// link to its state (audit sampling, rate budget) is kept for the next read.
    pub fn invalidate(&self, key: &TokenHash) {
        let now = self.now();
        let at = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        (self.changed.lock().unwrap_or_else(|p| p.into_inner())).note(*key, at, now);
        self.unknown.forget(key);
        if let Some(known) = self.known.lock(key).map.get_mut(key) {
            known.fresh_until = 0;
            known.servable_until = 0;
            known.keep_until = now.saturating_add(self.keep);
        }
    }

    /// Changes may have been missed: re-check every token with the store, but
    /// keep the stale copies in case the store is down.
    pub fn invalidate_fresh(&self) {
        let at = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.all_epoch.fetch_max(at, Ordering::AcqRel);
        self.unknown.clear();
        self.known.each(|shard| {
            for known in shard.map.values_mut() {
                known.fresh_until = 0;
            }
        });
    }
}

/// Alice's token, as the store returns it; `id` tells versions apart.
#[cfg(test)]
fn test_record(id: i64) -> TokenRecord {
    TokenRecord {
        id,
        token_hash: "00".repeat(32),
        prefix: "mcp_abcdefgh".into(),
        user_id: "alice".into(),
        name: None,
        email: None,
        permissions: crate::identity::Permissions::READ_WRITE,
        enabled: true,
        created_at: chrono::Utc::now(),
        created_by: None,
        expires_at: None,
        last_used_at: None,
        rate_limit_rps: None,
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn record() -> TokenRecord {
        test_record(1)
    }

    #[test]
    fn a_digest_hashes_to_its_second_word() {
        let mut key: TokenHash = [0; 32];
        key[8..16].copy_from_slice(&0x0123_4567_89ab_cdef_u64.to_le_bytes());
        key[0] = 7;
        key[20] = 9;
        assert_eq!(DigestState::default().hash_one(key), 0x0123_4567_89ab_cdef);
        // The shard byte and the rest do not move it; the word does.
        let mut other = key;
        other[0] = 8;
        other[31] = 1;
        assert_eq!(
            DigestState::default().hash_one(other),
            0x0123_4567_89ab_cdef
        );
        other[9] ^= 1;
        assert_ne!(
            DigestState::default().hash_one(other),
            0x0123_4567_89ab_cdef
        );
    }

    fn cache() -> TokenCache {
        TokenCache::new(
            100,
            Duration::from_secs(30),
            Duration::from_secs(5),
            Duration::from_secs(60),
        )
    }

    fn known(lookup: Lookup) -> Arc<CachedToken> {
        match lookup {
            Lookup::Known(token) => token,
            Lookup::Unknown => panic!("expected a known token"),
        }
    }

    #[test]
    fn a_load_racing_with_its_own_invalidation_is_not_cached() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let c = cache();

        let started = c.epoch();
        c.invalidate(&b); // another token changed meanwhile: irrelevant
        c.loaded(a, Some(record()), started);
        assert!(matches!(c.cached(&a), Some(Lookup::Known(_))));
        assert!(c.stale_entry(&a).is_some());

        let started = c.epoch();
        c.invalidate(&a); // this token changed while it was being read
        assert!(c.cached(&a).is_none(), "the change itself drops the answer");
        known(c.loaded(a, Some(record()), started));
        assert!(
            c.cached(&a).is_none(),
            "a possibly outdated record must not be cached"
        );
        assert!(c.stale_entry(&a).is_none(), "nor kept as a stale copy");

        let started = c.epoch();
        c.invalidate_fresh();
        assert!(matches!(c.loaded(b, None, started), Lookup::Unknown));
        assert!(c.cached(&b).is_none(), "nor a raced absence");
        c.loaded(b, None, c.epoch());
        assert!(matches!(c.cached(&b), Some(Lookup::Unknown)));
    }

    #[test]
    fn answers_expire_after_their_ttl_and_cache_off_caches_nothing() {
        let a = [6u8; 32];
        let short = TokenCache::new(
            100,
            Duration::from_millis(40),
            Duration::from_millis(40),
            Duration::from_secs(60),
        );
        short.loaded(a, Some(record()), short.epoch());
        assert!(short.cached(&a).is_some());
        short.loaded([7; 32], None, short.epoch());
        assert!(matches!(short.cached(&[7; 32]), Some(Lookup::Unknown)));
        std::thread::sleep(Duration::from_millis(60));
        assert!(short.cached(&a).is_none(), "positive TTL ran out");
        assert!(short.cached(&[7; 32]).is_none(), "negative TTL ran out");
        assert!(short.stale_entry(&a).is_some(), "the copy outlives it");

        let off = TokenCache::new(100, Duration::ZERO, Duration::ZERO, Duration::from_secs(60));
        off.loaded(a, Some(record()), off.epoch());
        off.loaded([7; 32], None, off.epoch());
        assert!(off.cached(&a).is_none());
        assert!(off.cached(&[7; 32]).is_none());
        assert!(off.stale_entry(&a).is_some(), "still served in an outage");
        assert!(off.cached(&a).is_some(), "for a second, without the store");
    }

    #[test]
    fn a_token_the_store_no_longer_knows_loses_its_copy() {
        let a = [8u8; 32];
        let c = cache();
        c.loaded(a, Some(record()), c.epoch());
        c.loaded(a, None, c.epoch());
        assert!(matches!(c.cached(&a), Some(Lookup::Unknown)));
        assert!(c.stale_entry(&a).is_none());
        c.loaded(a, Some(record()), c.epoch());
        assert!(
            matches!(c.cached(&a), Some(Lookup::Known(_))),
            "created again"
        );
    }

    #[test]
    fn per_token_state_survives_a_reload_but_not_a_new_limit() {
        let a = [4u8; 32];
        let c = cache();
        let first = known(c.loaded(a, Some(record()), c.epoch()));
        assert!(crate::window::claim(&first.state.success_audited, 100, 60));
        assert!(!crate::window::claim(&first.state.success_audited, 130, 60));
        first.state.limiter.get_or_init(|| {
            governor::RateLimiter::direct(governor::Quota::per_second(std::num::NonZeroU32::MIN))
        });
        let again = known(c.loaded(a, Some(record()), c.epoch()));
        assert!(!Arc::ptr_eq(&first, &again));
        assert!(
            !crate::window::claim(&again.state.success_audited, 130, 60),
            "window carried over"
        );
        assert!(crate::window::claim(&again.state.success_audited, 160, 60));
        assert!(Arc::ptr_eq(&first.state, &again.state), "limiter carried");

        // A read racing a change links the state without becoming a usable copy.
        let b = [5u8; 32];
        let started = c.epoch();
        c.invalidate_fresh();
        let raced = known(c.loaded(b, Some(record()), started));
        assert!(crate::window::claim(&raced.state.success_audited, 100, 60));
        assert!(c.stale_entry(&b).is_none(), "not served in an outage");
        let next = known(c.loaded(b, Some(record()), c.epoch()));
        assert!(Arc::ptr_eq(&raced.state, &next.state));
        assert!(c.stale_entry(&b).is_some());

        let mut limited = record();
        limited.rate_limit_rps = Some(5);
        let changed = known(c.loaded(a, Some(limited), c.epoch()));
        assert!(
            changed.state.limiter.get().is_none(),
            "a new limit starts a new budget"
        );
        assert!(!crate::window::claim(
            &changed.state.success_audited,
            130,
            60
        ));
    }

    #[test]
    fn the_maps_are_bounded_and_expired_entries_swept() {
        let c = TokenCache::new(
            2,
            Duration::from_secs(30),
            Duration::from_secs(5),
            Duration::from_secs(60),
        );
        for k in 1..=3u8 {
            c.loaded([k; 32], Some(record()), c.epoch());
            c.loaded([k + 10; 32], None, c.epoch());
        }
        assert_eq!(c.known.len(), 2, "capacity holds");
        assert_eq!(c.unknown.len(), 2, "for absent tokens too");
        assert!(c.cached(&[3; 32]).is_some(), "the newest token is kept");
        assert!(c.cached(&[13; 32]).is_some(), "the newest absence is kept");

        let (ten, two) = (Shards::<Millis>::new(10), Shards::<Millis>::new(2));
        let key = |k: u8| [k; 32]; // all in one shard: the bound is the map's
        let mut shard = Shard {
            map: HashMap::new(),
            swept: 0,
        };
        for k in 1..=3u8 {
            ten.insert(&mut shard, key(k), Millis::from(k), 10, |at| *at < 3);
        }
        assert_eq!(shard.map.len(), 3, "not full, swept less than a minute ago");
        ten.insert(&mut shard, key(4), 4, SWEEP_EVERY + 10, |at| *at < 3);
        assert_eq!(ten.len(), 2, "the periodic sweep dropped 1 and 2");
        assert!(shard.map.contains_key(&key(3)) && shard.map.contains_key(&key(4)));
        let mut shard = Shard {
            map: HashMap::new(),
            swept: 0,
        };
        two.insert(&mut shard, key(1), 1, 0, |_| false);
        two.insert(&mut shard, key(2), 9, 0, |_| false);
        two.insert(&mut shard, key(5), 5, SWEEP_EVERY, |at| *at < 4);
        assert_eq!(two.len(), 2, "a full map sweeps before it drops");
        assert!(!shard.map.contains_key(&key(1)) && shard.map.contains_key(&key(5)));
        two.insert(&mut shard, key(6), 6, SWEEP_EVERY, |_| false);
        assert_eq!(two.len(), 2, "and drops one when the sweep frees none");
        assert_eq!(shard.map.len(), 2);
        assert!(shard.map.contains_key(&key(6)));

        // Spread over every shard, a full map still holds its capacity.
        let big = TokenCache::new(
            1000,
            Duration::from_secs(30),
            Duration::from_secs(5),
            Duration::from_secs(60),
        );
        for i in 0..1000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&(i.wrapping_mul(2_654_435_761)).to_be_bytes());
            big.loaded(k, Some(record()), big.epoch());
            assert!(big.cached(&k).is_some());
        }
        assert_eq!(big.known.len(), 1000, "nothing dropped below capacity");
        big.loaded([0xff; 32], Some(record()), big.epoch());
        assert_eq!(big.known.len(), 1000);
    }

    #[test]
    fn changes_are_remembered_long_enough_and_then_conservatively() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut changed = ChangedKeys::default();
        changed.note(a, 1, 0);
        assert!(
            changed.since(&a, 0),
            "a read started before the change raced it"
        );
        assert!(!changed.since(&a, 1) && !changed.since(&b, 0));
        changed.note(b, 2, KEY_EPOCH_TTL);
        assert!(!changed.at.contains_key(&a), "forgotten after the TTL");
        assert!(
            changed.since(&a, 0),
            "but a read that old still counts as raced"
        );
        assert!(!changed.since(&a, 1));
        assert!(changed.since(&b, 1));
    }

    #[test]
    fn stale_copies_outlive_fresh_invalidation_but_not_token_changes() {
        let a = [3u8; 32];
        let c = cache();
        c.loaded(a, Some(record()), c.epoch());
        c.invalidate_fresh();
        assert!(c.cached(&a).is_none(), "re-checked with the store");
        assert!(c.stale_entry(&a).is_some(), "kept for store outages");
        assert!(c.cached(&a).is_some(), "answered for a second from then");
        c.invalidate(&a);
        assert!(c.stale_entry(&a).is_none());
        assert!(c.cached(&a).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_read_and_its_failure() {
        let c = Arc::new(cache());
        let reads = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let mut waiting = Vec::new();
        for _ in 0..50 {
            let (c, reads, mut released) = (c.clone(), reads.clone(), released.clone());
            waiting.push(tokio::spawn(async move {
                let load = async {
                    reads.fetch_add(1, Ordering::SeqCst);
                    released.wait_for(|r| *r).await.expect("released");
                    Ok(c.loaded([9; 32], Some(record()), c.epoch()))
                };
                c.get_or_load([9; 32], load).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        release.send(true).expect("waiters");
        let mut shared = 0;
        for w in waiting {
            let (lookup, from_another) = w.await.expect("joined").expect("loaded");
            known(lookup);
            shared += usize::from(from_another);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one store read");
        assert_eq!(shared, 49, "everyone else shared it");
        assert!(c.flights.is_idle(), "the flight is over");

        let failed = c.get_or_load([10; 32], async { Err(Unavailable) }).await;
        assert_eq!(failed.err(), Some(Unavailable));
        assert!(c.cached(&[10; 32]).is_none(), "a failure is not cached");
    }

    #[tokio::test]
    async fn a_cancelled_reader_hands_the_read_over() {
        let c = Arc::new(cache());
        let leader = {
            let c = c.clone();
            tokio::spawn(async move { c.get_or_load([11; 32], std::future::pending()).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let follower = {
            let c = c.clone();
            tokio::spawn(async move {
                let load = async { Ok(c.loaded([11; 32], None, c.epoch())) };
                c.get_or_load([11; 32], load).await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        leader.abort();
        let (lookup, from_another) = tokio::time::timeout(Duration::from_secs(5), follower)
            .await
            .expect("not left waiting")
            .expect("joined")
            .expect("loaded");
        assert!(matches!(lookup, Lookup::Unknown));
        assert!(!from_another, "the follower read it itself");
    }
}
