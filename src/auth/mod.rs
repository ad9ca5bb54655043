//! Authentication (docs/design.md §1 step 2, §2): credential → identity. A
//! memgate token goes through the token cache, failing closed when the store
//! cannot answer; with `[oauth]` on, another bearer token goes to the OAuth
//! verifier, failing closed when its issuer cannot answer.

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
pub use cache::{CachedToken, Lookup, TokenCache, TokenState};
pub use credential::{Credential, PresentedHeaders};
pub use denial::Denial;
use known::KnownTokens;

use crate::config::AuthConfig;
use crate::identity::Identity;
use crate::metrics::{METRICS, memo};
use crate::store::{Store, TokenChange, TokenStatus};
use crate::token;
use oauth::{AuthMethod, BearerShape, OAuth, OAuthDenial, bearer_shape};

/// A request that proved who it is.
#[derive(Clone, Debug)]
pub struct Authenticated {
    pub identity: Arc<Identity>,
    pub method: AuthMethod,
    /// The credential's own requests-per-second limit (memgate tokens only).
    pub rate_limit_rps: Option<u32>,
    /// The rate limiter and audit sampling mark: the token's for a memgate
    /// token, the user's for an OAuth access token (a client fetches a new
    /// one whenever it likes, so the user is what a budget can hold to).
    pub state: Arc<TokenState>,
    /// When the token was found valid: one clock read serves every check of
    /// this request (expiry, last-used, audit sampling).
    pub at: DateTime<Utc>,
}

impl Authenticated {
    /// What the rate limit is kept under: the token's display prefix, or
    /// `user:` and the user id for OAuth callers.
    pub fn rate_limit_key(&self) -> std::borrow::Cow<'_, str> {
        match self.method {
            AuthMethod::Token => std::borrow::Cow::Borrowed(&self.identity.token_prefix),
            AuthMethod::Jwt | AuthMethod::Introspection => {
                std::borrow::Cow::Owned(format!("user:{}", self.identity.user_id))
            }
        }
    }
}

/// Why a request did not authenticate: memgate's token check refused it, or
/// the OAuth verifier did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    Token(Denial),
    OAuth(OAuthDenial),
}

impl Refused {
    pub fn status(&self) -> u16 {
        match self {
            Refused::Token(d) => d.status(),
            Refused::OAuth(d) => d.status(),
        }
    }

    /// A stable label for metrics and the audit.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Token(d) => d.reason(),
            Refused::OAuth(d) => d.reason(),
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refused::Token(d) => d.message(),
            Refused::OAuth(d) => d.message().to_string(),
        }
    }

    /// memgate could not decide (its store or the issuer did not answer):
    /// not the client's failure.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Refused::Token(Denial::StoreUnavailable) | Refused::OAuth(OAuthDenial::Unavailable)
        )
    }

    /// No token was presented at all.
    pub fn is_missing(&self) -> bool {
        matches!(self, Refused::Token(Denial::Missing))
    }
}

/// A request that did not, with what is known about who tried (for the audit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub denial: Refused,
    /// How the request tried to authenticate: `token`, `jwt`, `introspection`,
    /// or `none` when it presented nothing memgate could read.
    pub method: &'static str,
    /// The token's user, when the token is real (revoked, expired, mismatch).
    pub user_id: Option<String>,
    /// The display prefix of a well-formed presented token.
    pub token_prefix: Option<String>,
}

impl From<Denial> for Failure {
    fn from(denial: Denial) -> Failure {
        Failure {
            denial: Refused::Token(denial),
            method: AuthMethod::Token.as_str(),
            user_id: None,
            token_prefix: None,
        }
    }
}

/// The metrics label of a request that presented no credential memgate reads.
pub const NO_METHOD: &str = "none";

/// The non-secret label of an OAuth access token in logs, the audit and
/// rate-limit keys: `jwt:` (or `oauth:` for an opaque token) and the first 8
/// hex digits of its SHA-256, never any part of the token itself.
pub fn oauth_token_label(bearer: &str, method: AuthMethod) -> String {
    oauth_token_label_of(&token::hash(bearer), method)
}

/// [`oauth_token_label`] from the token's SHA-256, already computed.
fn oauth_token_label_of(hash: &token::TokenHash, method: AuthMethod) -> String {
    let kind = match method {
        AuthMethod::Jwt => "jwt",
        AuthMethod::Token | AuthMethod::Introspection => "oauth",
    };
    format!("{kind}:{}", hex::encode(&hash[..4]))
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
    /// The OAuth verifier when `[oauth]` is on.
    oauth: Option<Arc<OAuth>>,
    /// Rate limiter and audit sampling per OAuth user, kept while the user
    /// is active.
    oauth_users: moka::sync::Cache<String, Arc<TokenState>>,
    /// JWTs accepted before, by hash, as the request path needs them: a
    /// repeated JWT costs its hash and a lookup, as a memgate token does.
    /// Only JWTs: an introspected answer must be asked for again when its
    /// cache period ends, which the verifier's own cache keeps.
    jwt_hits: moka::sync::Cache<token::TokenHash, Arc<JwtHit>>,
}

/// A JWT the verifier accepted, until its `exp`.
struct JwtHit {
    identity: Arc<Identity>,
    /// `exp`, seconds since the epoch.
    expires_at: i64,
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
            oauth: None,
            oauth_users: moka::sync::Cache::builder()
                .max_capacity(cfg.cache_capacity)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            jwt_hits: moka::sync::Cache::builder()
                .max_capacity(cfg.cache_capacity)
                .time_to_idle(Duration::from_secs(600))
                .build(),
        }
    }

    /// Accepts OAuth access tokens too, checked by `oauth`.
    pub fn with_oauth(mut self, oauth: Arc<OAuth>) -> Self {
        self.oauth = Some(oauth);
        self
    }

    /// The OAuth verifier, when `[oauth]` is on.
    pub fn oauth(&self) -> Option<&Arc<OAuth>> {
        self.oauth.as_ref()
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
        let result = match credential::extract(headers) {
            Ok(credential) => self.check(credential, store).await,
            Err(Denial::Malformed) if self.oauth.is_some() => {
                match credential::oauth_bearer(headers) {
                    // Boxed: verification may fetch keys or introspect, a
                    // future far larger than the memgate-token path's, which
                    // every request's future would otherwise carry.
                    Ok(credential) => Box::pin(self.check_oauth(credential)).await,
                    Err(denial) => Err(Failure {
                        method: NO_METHOD,
                        ..Failure::from(denial)
                    }),
                }
            }
            Err(denial) => Err(Failure {
                method: NO_METHOD,
                ..Failure::from(denial)
            }),
        };
        match &result {
            Ok(ok) => memo::inc(
                &METRICS.auth_decisions,
                &["allow", "ok", ok.method.as_str()],
            ),
            Err(failure) => {
                let result = if failure.denial.is_unavailable() {
                    "error"
                } else {
                    "deny"
                };
                memo::inc(
                    &METRICS.auth_decisions,
                    &[result, failure.denial.reason(), failure.method],
                );
            }
        }
        result
    }

    /// A bearer token that is not memgate's own, by the OAuth verifier.
    async fn check_oauth(&self, credential: Credential<'_>) -> Result<Authenticated, Failure> {
        let Some(oauth) = &self.oauth else {
            return Err(Denial::Malformed.into());
        };
        let method = match bearer_shape(credential.token) {
            BearerShape::Jwt => AuthMethod::Jwt,
            BearerShape::Opaque if oauth.introspects() => AuthMethod::Introspection,
            // Nothing could check it: a JWT is all memgate takes then.
            BearerShape::Opaque | BearerShape::Memgate | BearerShape::Malformed => {
                return Err(Failure {
                    denial: Refused::OAuth(oauth::InvalidToken::Malformed.into()),
                    method: NO_METHOD,
                    user_id: None,
                    token_prefix: None,
                });
            }
        };
        // One hash of a token of a few hundred bytes: the cache key and the label.
        let hash = token::hash(credential.token);
        let refused = |denial: OAuthDenial, label: String| Failure {
            denial: Refused::OAuth(denial),
            method: method.as_str(),
            user_id: None,
            token_prefix: Some(label),
        };
        let at = Utc::now();
        if let Some(hit) = self.jwt_hits.get(&hash)
            && at.timestamp() < hit.expires_at
        {
            if credential
                .claimed_user_id
                .is_some_and(|claimed| claimed != hit.identity.user_id)
            {
                let label = hit.identity.token_prefix.clone();
                return Err(refused(oauth::InvalidToken::UserMismatch.into(), label));
            }
            return Ok(self.oauth_caller(hit.identity.clone(), AuthMethod::Jwt, at));
        }
        let label = oauth_token_label_of(&hash, method);
        let verified = oauth
            .verify_hashed(credential.token, hash, credential.claimed_user_id)
            .await
            .map_err(|denial| refused(denial, label.clone()))?;
        let identity = Arc::new(Identity {
            user_id: verified.user_id,
            permissions: verified.permissions,
            token_prefix: label,
        });
        if verified.method == AuthMethod::Jwt
            && let Some(expires_at) = verified.expires_at
        {
            let hit = JwtHit {
                identity: identity.clone(),
                expires_at: expires_at.timestamp(),
            };
            self.jwt_hits.insert(hash, Arc::new(hit));
        }
        Ok(self.oauth_caller(identity, verified.method, at))
    }

    /// An OAuth caller, with the rate limiter and audit mark of its user.
    fn oauth_caller(
        &self,
        identity: Arc<Identity>,
        method: AuthMethod,
        at: DateTime<Utc>,
    ) -> Authenticated {
        let state = self
            .oauth_users
            .get_with_by_ref(&identity.user_id, Arc::default);
        Authenticated {
            identity,
            method,
            rate_limit_rps: None,
            state,
            at,
        }
    }

    async fn check(
        &self,
        credential: Credential<'_>,
        store: StoreAccess<'_>,
    ) -> Result<Authenticated, Failure> {
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
            token_prefix: Some(token::display_prefix(credential.token).to_string()),
            ..Failure::from(denial)
        })?;
        let fail = |denial| Failure {
            user_id: Some(record.identity.user_id.clone()),
            token_prefix: Some(record.identity.token_prefix.clone()),
            ..Failure::from(denial)
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
            method: AuthMethod::Token,
            rate_limit_rps: record.rate_limit_rps,
            state: record.state.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oauth_token_is_named_by_its_hash_never_by_itself() {
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
        let label = oauth_token_label(jwt, AuthMethod::Jwt);
        assert_eq!(label, format!("jwt:{}", &token::hash_hex(jwt)[..8]));
        assert!(!jwt.contains(&label[4..]));
        let opaque = oauth_token_label("2YotnFZFEjr1zCsicMWpAA", AuthMethod::Introspection);
        assert!(
            opaque.starts_with("oauth:") && opaque.len() == 14,
            "{opaque}"
        );
    }

    #[test]
    fn only_unreachable_stores_and_issuers_are_not_the_clients_failure() {
        assert!(Refused::Token(Denial::StoreUnavailable).is_unavailable());
        assert!(Refused::OAuth(OAuthDenial::Unavailable).is_unavailable());
        assert!(!Refused::Token(Denial::Unknown).is_unavailable());
        let expired = Refused::OAuth(oauth::InvalidToken::Expired.into());
        assert!(!expired.is_unavailable());
        assert_eq!((expired.status(), expired.reason()), (401, "expired"));
        assert_eq!(Refused::OAuth(OAuthDenial::Unavailable).status(), 503);
    }
}
