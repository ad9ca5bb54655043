//! The token cache: fresh entries (positive TTL, short negative TTL) in front of
//! the store, with single-flight loading, plus last-known-good copies that keep
//! known tokens working for `auth.stale_grace_secs` while the store is down.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use governor::DefaultDirectRateLimiter;

use moka::Expiry;
use moka::future::Cache;

use chrono::{DateTime, Utc};

use crate::policy::Permissions;
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
/// hash (the cache key) and the fields only the CLI shows. 72 bytes instead
/// of ≈ 210, for every cached token.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedRecord {
    pub id: i64,
    pub prefix: Box<str>,
    pub user_id: Box<str>,
    pub permissions: Permissions,
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
            prefix: r.prefix.into_boxed_str(),
            user_id: r.user_id.into_boxed_str(),
            permissions: r.permissions,
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
    pub limiter: OnceLock<Arc<DefaultDirectRateLimiter>>,
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

    /// Claims the once-per-`window` slot kept in `at`: true for exactly one
    /// caller per window (for every caller when the window is 0).
    pub fn claim(at: &AtomicI64, now: i64, window: i64) -> bool {
        if window <= 0 {
            at.store(now, Ordering::Relaxed);
            return true;
        }
        let last = at.load(Ordering::Relaxed);
        (last == 0 || now - last >= window)
            && at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }
}

impl Deref for CachedToken {
    type Target = CachedRecord;

    fn deref(&self) -> &CachedRecord {
        &self.record
    }
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

/// The last copy of a token read from the store. `fetched` is `None` when the
/// read raced with a change: such a copy only links the token's state to the
/// next read and is never served during an outage.
#[derive(Clone)]
struct StaleCopy {
    token: Arc<CachedToken>,
    fetched: Option<Instant>,
    stored: Instant,
}

impl StaleCopy {
    fn new(token: Arc<CachedToken>, fetched: Option<Instant>) -> Self {
        StaleCopy {
            token,
            fetched,
            stored: Instant::now(),
        }
    }
}

/// The last copies, by token, in a plain map: only store reads, changes and
/// outages touch it, and a moka entry would cost ≈ 350 bytes per token more.
/// Copies expire `ttl` after they were stored; expired ones are swept once per
/// `ttl`, and a full map drops an arbitrary copy to take a new one.
struct StaleCopies {
    map: Mutex<(HashMap<TokenHash, StaleCopy>, Instant)>,
    ttl: Duration,
    capacity: usize,
}

impl StaleCopies {
    fn new(capacity: u64, ttl: Duration) -> Self {
        StaleCopies {
            map: Mutex::new((HashMap::new(), Instant::now())),
            ttl,
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX).max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<TokenHash, StaleCopy>, Instant)> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &TokenHash) -> Option<StaleCopy> {
        let guard = self.lock();
        guard
            .0
            .get(key)
            .filter(|c| c.stored.elapsed() <= self.ttl)
            .cloned()
    }

    fn insert(&self, key: TokenHash, copy: StaleCopy) {
        let mut guard = self.lock();
        let (map, swept) = &mut *guard;
        if swept.elapsed() >= self.ttl {
            map.retain(|_, c| c.stored.elapsed() <= self.ttl);
            *swept = Instant::now();
        }
        if map.len() >= self.capacity
            && !map.contains_key(&key)
            && let Some(victim) = map.keys().next().copied()
        {
            map.remove(&victim);
        }
        map.insert(key, copy);
    }

    fn remove(&self, key: &TokenHash) {
        self.lock().0.remove(key);
    }

    /// Keeps the copy only as the link to the token's state (see `StaleCopy`).
    fn make_unusable(&self, key: &TokenHash) {
        if let Some(copy) = self.lock().0.get_mut(key) {
            copy.fetched = None;
            copy.stored = Instant::now();
        }
    }
}

pub struct TokenCache {
    fresh: Cache<TokenHash, Entry>,
    stale: StaleCopies,
    positive_ttl: Duration,
    negative_ttl: Duration,
    grace: Duration,
    /// Bumped by every invalidation. A load remembers it when it starts; if
    /// its key (or everything) was invalidated since, the result is not cached.
    epoch: AtomicU64,
    /// The epoch at which each recently changed token was invalidated.
    key_epochs: Cache<TokenHash, u64>,
    /// The epoch of the last invalidation of everything.
    all_epoch: AtomicU64,
}

/// Longer than any store query can take, so a racing load always sees its key here.
const KEY_EPOCH_TTL: Duration = Duration::from_secs(120);

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
            stale: StaleCopies::new(capacity, positive_ttl + grace),
            positive_ttl,
            negative_ttl,
            grace,
            epoch: AtomicU64::new(0),
            key_epochs: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(KEY_EPOCH_TTL)
                .build(),
            all_epoch: AtomicU64::new(0),
        }
    }

    /// A cached answer, without ever asking the store.
    pub(super) async fn cached(&self, key: &TokenHash) -> Option<Lookup> {
        self.fresh.get(key).await.map(|e| e.lookup)
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
        let raced = self.all_epoch.load(Ordering::Acquire) > started
            || self
                .key_epochs
                .get(&key)
                .await
                .is_some_and(|at| at > started);
        match found {
            Some(record) => {
                let previous = self.stale.get(&key);
                let token = Arc::new(CachedToken::succeeding(
                    record,
                    previous.as_ref().map(|p| p.token.as_ref()),
                ));
                // A raced read never replaces a copy (it may be older than it).
                if !raced || previous.is_none() {
                    let fetched = (!raced).then(Instant::now);
                    self.stale
                        .insert(key, StaleCopy::new(token.clone(), fetched));
                }
                Entry {
                    lookup: Lookup::Known(token),
                    ttl: if raced {
                        Duration::ZERO
                    } else {
                        self.positive_ttl
                    },
                }
            }
            None => {
                self.stale.remove(&key);
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
        let copy = self.stale.get(key)?;
        let fetched = copy.fetched?;
        (fetched.elapsed() <= self.positive_ttl + self.grace).then_some(Entry {
            lookup: Lookup::Known(copy.token),
            ttl: STALE_RETRY,
        })
    }

    /// One token changed: forget its record, stale copy included. Only the
    /// link to its state (audit sampling, rate budget) is kept for the next read.
    pub async fn invalidate(&self, key: &TokenHash) {
        let at = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.key_epochs.insert(*key, at).await;
        self.fresh.invalidate(key).await;
        self.stale.make_unusable(key);
    }

    /// Changes may have been missed: re-check every token with the store, but
    /// keep the stale copies in case the store is down.
    pub fn invalidate_fresh(&self) {
        let at = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.all_epoch.fetch_max(at, Ordering::AcqRel);
        self.fresh.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Permissions;

    fn record() -> TokenRecord {
        TokenRecord {
            id: 1,
            token_hash: "00".repeat(32),
            prefix: "mcp_abcdefgh".into(),
            user_id: "alice".into(),
            name: None,
            email: None,
            permissions: Permissions::READ_WRITE,
            enabled: true,
            created_at: chrono::Utc::now(),
            created_by: None,
            expires_at: None,
            last_used_at: None,
            rate_limit_rps: None,
        }
    }

    fn cache() -> TokenCache {
        TokenCache::new(
            100,
            Duration::from_secs(30),
            Duration::from_secs(5),
            Duration::from_secs(60),
        )
    }

    #[tokio::test]
    async fn a_load_racing_with_its_own_invalidation_is_not_cached() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let c = cache();

        let started = c.epoch();
        c.invalidate(&b).await; // another token changed meanwhile: irrelevant
        let entry = c.loaded(a, Some(record()), started).await;
        assert_eq!(entry.ttl, Duration::from_secs(30));
        assert!(c.stale_entry(&a).await.is_some());

        let started = c.epoch();
        c.invalidate(&a).await; // this token changed while it was being read
        let entry = c.loaded(a, Some(record()), started).await;
        assert_eq!(
            entry.ttl,
            Duration::ZERO,
            "a possibly outdated record must not be cached"
        );
        assert!(
            c.stale_entry(&a).await.is_none(),
            "nor kept as a stale copy"
        );

        let started = c.epoch();
        c.invalidate_fresh();
        let entry = c.loaded(b, None, started).await;
        assert_eq!(entry.ttl, Duration::ZERO);
    }

    #[tokio::test]
    async fn per_token_state_survives_a_reload_but_not_a_new_limit() {
        let a = [4u8; 32];
        let c = cache();
        let Lookup::Known(first) = c.loaded(a, Some(record()), c.epoch()).await.lookup else {
            panic!("known");
        };
        assert!(CachedToken::claim(&first.state.success_audited, 100, 60));
        assert!(!CachedToken::claim(&first.state.success_audited, 130, 60));
        let limiter = first
            .state
            .limiter
            .get_or_init(|| {
                Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(
                    std::num::NonZeroU32::MIN,
                )))
            })
            .clone();
        let Lookup::Known(again) = c.loaded(a, Some(record()), c.epoch()).await.lookup else {
            panic!("known");
        };
        assert!(!Arc::ptr_eq(&first, &again));
        assert!(
            !CachedToken::claim(&again.state.success_audited, 130, 60),
            "window carried over"
        );
        assert!(CachedToken::claim(&again.state.success_audited, 160, 60));
        assert!(Arc::ptr_eq(
            again.state.limiter.get().expect("carried"),
            &limiter
        ));

        // A read racing a change links the state without becoming a usable copy.
        let b = [5u8; 32];
        let started = c.epoch();
        c.invalidate_fresh();
        let Lookup::Known(raced) = c.loaded(b, Some(record()), started).await.lookup else {
            panic!("known");
        };
        assert!(CachedToken::claim(&raced.state.success_audited, 100, 60));
        assert!(c.stale_entry(&b).await.is_none(), "not served in an outage");
        let Lookup::Known(next) = c.loaded(b, Some(record()), c.epoch()).await.lookup else {
            panic!("known");
        };
        assert!(Arc::ptr_eq(&raced.state, &next.state));
        assert!(c.stale_entry(&b).await.is_some());

        let mut limited = record();
        limited.rate_limit_rps = Some(5);
        let Lookup::Known(changed) = c.loaded(a, Some(limited), c.epoch()).await.lookup else {
            panic!("known");
        };
        assert!(
            changed.state.limiter.get().is_none(),
            "a new limit starts a new budget"
        );
        assert!(!CachedToken::claim(&changed.state.success_audited, 130, 60));
    }

    #[test]
    fn stale_copies_are_bounded_and_expire() {
        let token = Arc::new(CachedToken::new(record()));
        let copies = StaleCopies::new(2, Duration::from_millis(50));
        for k in 1..=3u8 {
            copies.insert([k; 32], StaleCopy::new(token.clone(), Some(Instant::now())));
        }
        assert_eq!(copies.lock().0.len(), 2, "capacity holds");
        assert!(copies.get(&[3; 32]).is_some(), "the newest copy is kept");
        std::thread::sleep(Duration::from_millis(60));
        assert!(copies.get(&[3; 32]).is_none(), "expired");
        copies.insert([4; 32], StaleCopy::new(token, None));
        assert_eq!(copies.lock().0.len(), 1, "expired copies are swept");
    }

    #[tokio::test]
    async fn stale_copies_outlive_fresh_invalidation_but_not_token_changes() {
        let a = [3u8; 32];
        let c = cache();
        c.loaded(a, Some(record()), c.epoch()).await;
        c.invalidate_fresh();
        let stale = c.stale_entry(&a).await.expect("kept for store outages");
        assert_eq!(stale.ttl, STALE_RETRY);
        c.invalidate(&a).await;
        assert!(c.stale_entry(&a).await.is_none());
    }
}
