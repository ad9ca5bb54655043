//! Authentication (docs/design.md §1 step 2, §2): credential → identity, through the
//! token cache, failing closed when the store cannot answer.

mod cache;
pub mod credential;
mod denial;
mod known;
mod last_used;
pub mod oauth;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use cache::Unavailable;
pub use cache::{CachedToken, Lookup, TokenCache};
pub use credential::{Credential, PresentedHeaders};
pub use denial::Denial;
use known::KnownTokens;

use crate::config::AuthConfig;
use crate::identity::Identity;
use crate::metrics::{METRICS, memo};
use crate::store::{Store, TokenChange, TokenStatus};
use crate::token;

/// A request that proved who it is.
#[derive(Clone, Debug)]
pub struct Authenticated {
    pub identity: Arc<Identity>,
    /// The cached token: its record (e.g. its own rate limit) and per-token state.
    pub token: Arc<CachedToken>,
    /// When the token was found valid: one clock read serves every check of
    /// this request (expiry, last-used, audit sampling).
    pub at: DateTime<Utc>,
}

/// A request that did not, with what is known about who tried (for the audit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub denial: Denial,
    /// The token's user, when the token is real (revoked, expired, mismatch).
    pub user_id: Option<String>,
    /// The display prefix of a well-formed presented token.
    pub token_prefix: Option<String>,
}

impl From<Denial> for Failure {
    fn from(denial: Denial) -> Failure {
        Failure {
            denial,
            user_id: None,
            token_prefix: None,
        }
    }
}

/// Whether a token the cache does not know may be looked up in the store.
#[derive(Clone, Copy)]
pub enum StoreAccess<'a> {
    Open,
    /// A client cut off for failing too often: a cache miss reaches the
    /// store only for a token the store may hold, and only when `probe`
    /// grants it (a few lookups per second per address, so one valid token
    /// behind a shared address still gets in).
    Probe(&'a (dyn Fn() -> bool + Sync)),
}

pub struct Authenticator {
    store: Arc<dyn Store>,
    cache: TokenCache,
    last_used: last_used::LastUsed,
    known: KnownTokens,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>, cfg: &AuthConfig) -> Self {
        Authenticator {
            store,
            cache: TokenCache::new(
                cfg.cache_capacity,
                Duration::from_secs(cfg.cache_ttl_secs),
                Duration::from_secs(cfg.negative_cache_ttl_secs),
                Duration::from_secs(cfg.stale_grace_secs),
            ),
            last_used: last_used::LastUsed::new(Duration::from_secs(cfg.last_used_interval_secs)),
            known: KnownTokens::default(),
        }
    }

    /// Writes pending `last_used_at` updates.
    pub async fn flush_last_used(&self) {
        self.last_used.flush(self.store.as_ref()).await;
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Authenticates the credential headers of one request; `store` says
    /// whether a token missing from the cache may be looked up.
    pub async fn authenticate(
        &self,
        headers: &PresentedHeaders<'_>,
        store: StoreAccess<'_>,
    ) -> Result<Authenticated, Failure> {
        let result = self.check(headers, store).await;
        match &result {
            Ok(_) => memo::inc(&METRICS.auth_decisions, &["allow", "ok"]),
            Err(Failure { denial: d, .. }) => {
                let result = if *d == Denial::StoreUnavailable {
                    "error"
                } else {
                    "deny"
                };
                memo::inc(&METRICS.auth_decisions, &[result, d.reason()]);
            }
        }
        result
    }

    async fn check(
        &self,
        headers: &PresentedHeaders<'_>,
        store: StoreAccess<'_>,
    ) -> Result<Authenticated, Failure> {
        let credential = credential::extract(headers)?;
        let key = token::hash(credential.token);
        let found = match store {
            StoreAccess::Open => self.lookup(key).await,
            StoreAccess::Probe(probe) => match self.cache.cached(&key) {
                Some(lookup) => Ok(lookup),
                None if self.known.may_hold(&key) && probe() => self.lookup(key).await,
                None => Err(Denial::Throttled),
            },
        };
        let record = match found {
            Ok(Lookup::Known(record)) => Ok(record),
            Ok(Lookup::Unknown) => Err(Denial::Unknown),
            Err(denial) => Err(denial),
        }
        .map_err(|denial| Failure {
            denial,
            user_id: None,
            token_prefix: Some(token::display_prefix(credential.token).to_string()),
        })?;
        let fail = |denial| Failure {
            denial,
            user_id: Some(record.identity.user_id.clone()),
            token_prefix: Some(record.identity.token_prefix.clone()),
        };
        let now = Utc::now();
        match record.status(now) {
            TokenStatus::Active => {}
            TokenStatus::Revoked => return Err(fail(Denial::Revoked)),
            TokenStatus::Expired => {
                let on = record
                    .expires_at
                    .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
                    .unwrap_or_default();
                return Err(fail(Denial::Expired(on)));
            }
        }
        if credential
            .claimed_user_id
            .is_some_and(|claimed| claimed != record.identity.user_id)
        {
            return Err(fail(Denial::UserMismatch));
        }
        self.last_used.note(&record, now);
        Ok(Authenticated {
            identity: record.identity.clone(),
            token: record,
            at: now,
        })
    }

    /// Cache first; on a miss one store query however many requests wait for it.
    pub async fn lookup(&self, key: token::TokenHash) -> Result<Lookup, Denial> {
        // The hit path stays small: the loading machinery is a separate,
        // boxed future that only a miss pays for.
        if let Some(lookup) = self.cache.cached(&key) {
            let outcome = match lookup {
                Lookup::Known(_) => "hit",
                Lookup::Unknown => "negative_hit",
            };
            memo::inc(&METRICS.auth_cache, &[outcome]);
            return Ok(lookup);
        }
        Box::pin(self.load(key)).await
    }

    /// A cache miss: one store query however many requests wait for it.
    async fn load(&self, key: token::TokenHash) -> Result<Lookup, Denial> {
        let load = async {
            let started = self.cache.epoch();
            match self.store.token_by_hash(&hex::encode(key)).await {
                Ok(found) => Ok(self.cache.loaded(key, found, started)),
                Err(e) => match self.cache.stale_entry(&key) {
                    Some(lookup) => {
                        METRICS.auth_cache.with_label_values(&["stale"]).inc();
                        tracing::warn!(error = %e, "token store unreachable; using a cached token within its grace period");
                        Ok(lookup)
                    }
                    None => {
                        tracing::error!(error = %e, "token store unreachable; refusing an uncached token");
                        Err(Unavailable)
                    }
                },
            }
        };
        match self.cache.get_or_load(key, load).await {
            Ok((lookup, cached)) => {
                let outcome = match (&lookup, cached) {
                    (_, false) => "miss",
                    (Lookup::Known(_), true) => "hit",
                    (Lookup::Unknown, true) => "negative_hit",
                };
                memo::inc(&METRICS.auth_cache, &[outcome]);
                Ok(lookup)
            }
            Err(Unavailable) => Err(Denial::StoreUnavailable),
        }
    }

    /// Applies one change reported by the store's change feed.
    pub async fn apply_change(&self, change: TokenChange) {
        match change {
            TokenChange::Token(hash_hex) => {
                let mut key = [0u8; 32];
                if hex::decode_to_slice(&hash_hex, &mut key).is_ok() {
                    self.cache.invalidate(&key);
                    self.known.add(&key);
                } else {
                    tracing::warn!("ignoring a token change with a malformed hash");
                    self.cache.invalidate_fresh();
                    self.load_known().await;
                }
            }
            TokenChange::Unknown => {
                self.cache.invalidate_fresh();
                self.load_known().await;
            }
        }
    }

    /// Reads which tokens the store holds. Until that succeeds every token
    /// may be known (a cut-off client's lookups are only rate-limited then).
    async fn load_known(&self) {
        self.known.forget();
        match self.store.tokens(None).await {
            Ok(tokens) => self.known.replace(tokens.iter().filter_map(|t| {
                let mut key = [0u8; 32];
                hex::decode_to_slice(&t.token_hash, &mut key)
                    .is_ok()
                    .then_some(key)
            })),
            Err(e) => {
                tracing::warn!(error = %e, "could not list the store's tokens; cut-off clients get rate-limited lookups for any token");
            }
        }
    }

    /// Follows the store's change feed until the process ends.
    pub async fn watch_changes(self: Arc<Self>, poll: Duration) {
        self.load_known().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let store = self.store.clone();
        let feed = tokio::spawn(async move {
            store
                .watch_changes(Arc::new(move |change| drop(tx.send(change))), poll)
                .await
        });
        while let Some(change) = rx.recv().await {
            self.apply_change(change).await;
        }
        feed.abort();
    }
}
