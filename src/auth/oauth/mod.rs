//! OAuth 2.1 access tokens from MCP clients (docs/design.md §2): memgate as
//! the resource server of the MCP authorization specification. A bearer JWT
//! is verified with its issuer's published keys and its claims checked; an
//! opaque one is introspected (RFC 7662) when that is configured. memgate's
//! own `mcp_…` tokens never come here: [`bearer_shape`] tells them apart.
//!
//! ID-token rule: a JWT whose header `typ` is `at+jwt` (RFC 9068) is an
//! access token; one with another `typ` than `JWT` is some other kind of
//! token; one without `typ` or with `JWT` is taken for an ID token when it
//! carries `nonce`, `at_hash`, `c_hash` or `s_hash` (claims only OpenID
//! Connect ID tokens define) or Keycloak's `"typ": "ID"` claim. Either way
//! it is refused (401 `invalid_token`).

mod challenge;
mod claims;
mod denial;
mod http;
mod introspection;
mod jws;
mod keys;
mod shape;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

pub use challenge::{
    WELL_KNOWN, insufficient_scope, metadata_document, metadata_paths, metadata_url, unauthorized,
    unauthorized_described,
};
pub use claims::{
    CheckedClaims, ClaimRules, ScopeMap, check_introspection, check_jwt_claims,
    is_id_token_or_other,
};
pub use denial::{InvalidToken, OAuthDenial};
pub use introspection::IntrospectionSettings;
pub use keys::discovery_urls;
pub use shape::{BearerShape, MAX_JWT_LEN, bearer_shape};

use crate::config::{
    Config, ConfigError, OAuthConfig, OAuthResources, check_authorization_server_url,
};
use crate::identity::{Permission, Permissions};
use crate::token::{self, TokenHash};
use jws::JwsHeader;
use keys::IssuerKeys;

/// How a request authenticated, for the audit and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// memgate's own `mcp_…` token.
    Token,
    /// A JWT access token verified with its issuer's keys.
    Jwt,
    /// An opaque access token its issuer vouched for by introspection.
    Introspection,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Token => "token",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Introspection => "introspection",
        }
    }
}

/// An access token memgate accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The value of the configured user claim; a valid memgate user id.
    pub user_id: String,
    /// What the token's scopes grant through `[oauth.scopes]`.
    pub permissions: Permissions,
    /// The scopes as the token lists them.
    pub scopes: Vec<String>,
    /// The token's `exp`; `None` only for an introspected token without one.
    pub expires_at: Option<DateTime<Utc>>,
    pub method: AuthMethod,
}

/// Which protected resource a request is for: each proxied listener is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    Mcp,
    Mem0,
}

/// `[oauth]` resolved: what [`OAuth`] is built from.
#[derive(Clone, Debug)]
pub struct OAuthSettings {
    pub rules: ClaimRules,
    pub allowed_algs: Vec<Algorithm>,
    /// The configured key set URL; `None`: discovered per issuer.
    pub jwks_uri: Option<url::Url>,
    pub jwks_min_refresh: Duration,
    pub introspection: Option<IntrospectionSettings>,
    pub resources: OAuthResources,
    /// Endpoint paths of the MCP listener whose suffixed metadata paths
    /// are served besides the resource's own (`mcp.path`).
    pub mcp_endpoint_paths: Vec<String>,
    /// Most verified tokens remembered.
    pub cache_capacity: u64,
}

impl OAuthSettings {
    /// The settings `config` gives, `None` when `[oauth]` is off. Reads the
    /// introspection secret through `env` and from its file now, so a
    /// missing one stops memgate before it binds; errors name the key.
    pub fn from_config(
        config: &Config,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<OAuthSettings>, ConfigError> {
        let cfg = &config.oauth;
        if !cfg.enabled {
            return Ok(None);
        }
        let resources = config.oauth_resources()?;
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        };
        let rules = ClaimRules::from_config(cfg, resources.audiences.clone())
            .ok_or_else(|| invalid("oauth.scopes", "names an unknown permission"))?;
        let allowed_algs = cfg
            .allowed_algs
            .iter()
            .map(|name| {
                Algorithm::from_str(name)
                    .ok()
                    .filter(|_| crate::config::SUPPORTED_ALGS.contains(&name.as_str()))
                    .ok_or_else(|| invalid("oauth.allowed_algs", "names an unsupported algorithm"))
            })
            .collect::<Result<_, _>>()?;
        let jwks_uri = match cfg.jwks_uri.as_str() {
            "" => None,
            uri => Some(check_authorization_server_url("oauth.jwks_uri", uri)?),
        };
        let introspection = if cfg.introspection.enabled() {
            Some(IntrospectionSettings {
                url: check_authorization_server_url(
                    "oauth.introspection.url",
                    &cfg.introspection.url,
                )?,
                client_id: cfg.introspection.client_id.clone(),
                client_secret: cfg.introspection.read_client_secret(env)?,
                cache: Duration::from_secs(cfg.introspection.cache_secs),
            })
        } else {
            None
        };
        Ok(Some(OAuthSettings {
            rules,
            allowed_algs,
            jwks_uri,
            jwks_min_refresh: Duration::from_secs(cfg.jwks_min_refresh_secs),
            introspection,
            resources,
            mcp_endpoint_paths: vec![config.mcp.path.clone()],
            cache_capacity: config.auth.cache_capacity,
        }))
    }
}

impl ClaimRules {
    /// The rules `[oauth]` sets, with the audiences the listeners gave.
    pub fn from_config(cfg: &OAuthConfig, audiences: Vec<String>) -> Option<ClaimRules> {
        Some(ClaimRules {
            issuers: cfg.issuer.values().into_iter().map(String::from).collect(),
            audiences,
            leeway_secs: i64::try_from(cfg.leeway_secs).ok()?,
            user_claim: cfg.user_claim.clone(),
            scopes: ScopeMap::from_config(&cfg.scopes)?,
        })
    }
}

/// Why [`OAuth::new`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OAuthSetupError {
    #[error("cannot build the HTTP client for authorization servers: {0}")]
    Client(#[from] reqwest::Error),
    #[error("oauth: resource {0:?} is not an absolute URL, so it has no metadata URL")]
    Resource(String),
    #[error("oauth: the JWT library has no signature backend")]
    NoCryptoBackend,
}

/// What memgate tells clients about one resource.
struct ResourceMetadata {
    resource: String,
    metadata_url: String,
    paths: Vec<String>,
    document: bytes::Bytes,
}

/// A verification outcome as cached: valid until `valid_until` (seconds
/// since the epoch).
struct Cached {
    outcome: Result<Verified, InvalidToken>,
    valid_until: i64,
}

/// Cache entries live until their token's validity ends.
struct UntilValidityEnds;

impl moka::Expiry<TokenHash, Arc<Cached>> for UntilValidityEnds {
    fn expire_after_create(
        &self,
        _key: &TokenHash,
        value: &Arc<Cached>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let left = value.valid_until.saturating_sub(Utc::now().timestamp());
        Some(Duration::from_secs(u64::try_from(left).unwrap_or(0)))
    }
}

/// The OAuth verifier: keys per issuer, introspection, the cache of
/// verified tokens, and what memgate tells clients about all that.
pub struct OAuth {
    settings: OAuthSettings,
    issuers: HashMap<String, IssuerKeys>,
    http: reqwest::Client,
    cache: moka::future::Cache<TokenHash, Arc<Cached>>,
    mcp: ResourceMetadata,
    mem0: ResourceMetadata,
}

impl OAuth {
    pub fn new(settings: OAuthSettings) -> Result<OAuth, OAuthSetupError> {
        if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
            return Err(OAuthSetupError::NoCryptoBackend);
        }
        let http = http::client()?;
        let issuers = settings
            .rules
            .issuers
            .iter()
            .map(|issuer| {
                let keys = IssuerKeys::new(
                    issuer.clone(),
                    settings.jwks_uri.clone(),
                    http.clone(),
                    settings.jwks_min_refresh,
                );
                (issuer.clone(), keys)
            })
            .collect();
        let listener = |resource: &str, extra: &[String]| {
            let metadata_url = metadata_url(resource)
                .ok_or_else(|| OAuthSetupError::Resource(resource.to_string()))?;
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let document = metadata_document(
                resource,
                settings.rules.issuers.iter().map(String::as_str),
                settings.rules.scopes.offered(),
            );
            Ok::<_, OAuthSetupError>(ResourceMetadata {
                resource: resource.to_string(),
                metadata_url,
                paths: metadata_paths(resource, &extra),
                document: bytes::Bytes::from(document.to_string()),
            })
        };
        let mcp = listener(&settings.resources.mcp, &settings.mcp_endpoint_paths)?;
        let mem0 = listener(&settings.resources.mem0, &[])?;
        let cache = moka::future::Cache::builder()
            .max_capacity(settings.cache_capacity)
            .expire_after(UntilValidityEnds)
            .build();
        Ok(OAuth {
            settings,
            issuers,
            http,
            cache,
            mcp,
            mem0,
        })
    }

    fn described(&self, resource: Resource) -> &ResourceMetadata {
        match resource {
            Resource::Mcp => &self.mcp,
            Resource::Mem0 => &self.mem0,
        }
    }

    /// The resource identifier of `resource` (RFC 9728 `resource`).
    pub fn resource(&self, resource: Resource) -> &str {
        &self.described(resource).resource
    }

    /// Where `resource`'s metadata is, for `resource_metadata` in challenges.
    pub fn metadata_url(&self, resource: Resource) -> &str {
        &self.described(resource).metadata_url
    }

    /// The request paths (decoded, exact) on which `resource`'s listener answers GET
    /// with [`OAuth::metadata_document`] itself, never forwarding them.
    pub fn metadata_paths(&self, resource: Resource) -> &[String] {
        &self.described(resource).paths
    }

    /// The Protected Resource Metadata of `resource`, as JSON bytes
    /// (`Content-Type: application/json`).
    pub fn metadata_document(&self, resource: Resource) -> &bytes::Bytes {
        &self.described(resource).document
    }

    /// Whether opaque (non-JWT) access tokens are introspected.
    pub fn introspects(&self) -> bool {
        self.settings.introspection.is_some()
    }

    /// The scope a request needing `needed` asks for.
    pub fn scope_for(&self, needed: Permission) -> Option<&str> {
        self.settings.rules.scopes.scope_for(needed)
    }

    /// The `WWW-Authenticate` value of a 401 for `resource`: no token
    /// (`refused` = `None`) or a refused one. `None` for a denial that is
    /// not a 401. Its `scope` is what [`Self::challenge_scope`] gives.
    pub fn unauthorized_challenge(
        &self,
        resource: Resource,
        needed: Option<Permission>,
        refused: Option<OAuthDenial>,
    ) -> Option<String> {
        let invalid = match refused {
            None => None,
            Some(OAuthDenial::InvalidToken(why)) => Some(why),
            Some(OAuthDenial::Unavailable) => return None,
        };
        let scope = self.challenge_scope(needed);
        Some(unauthorized(
            self.metadata_url(resource),
            scope.as_deref(),
            invalid,
        ))
    }

    /// The `WWW-Authenticate` value of a 401 for one of memgate's own
    /// tokens refused for the reason `description`.
    pub fn refused_token_challenge(
        &self,
        resource: Resource,
        needed: Option<Permission>,
        description: &str,
    ) -> String {
        let scope = self.challenge_scope(needed);
        unauthorized_described(
            self.metadata_url(resource),
            scope.as_deref(),
            Some(description),
        )
    }

    /// The `scope` of a 401, which MCP clients ask for ahead of
    /// `scopes_supported`: the one scope a request needing `needed` asks
    /// for, or without a known need the read and write scopes of an
    /// ordinary session. Never an admin scope unless the request needs admin.
    fn challenge_scope(&self, needed: Option<Permission>) -> Option<String> {
        match needed {
            Some(needed) => self.scope_for(needed).map(str::to_owned),
            None => {
                let scopes = self.settings.rules.scopes.session_scopes();
                (!scopes.is_empty()).then(|| scopes.join(" "))
            }
        }
    }

    /// The `WWW-Authenticate` value of the 403 for a token without the
    /// permission `needed`.
    pub fn insufficient_scope_challenge(&self, resource: Resource, needed: Permission) -> String {
        insufficient_scope(self.metadata_url(resource), self.scope_for(needed))
    }

    /// Fetches every issuer's keys now, so the first request does not wait
    /// on discovery; a failure is logged and retried on demand.
    pub async fn prefetch_keys(&self) {
        for keys in self.issuers.values() {
            keys.prefetch().await;
        }
    }

    /// Checks a bearer token (a JWT, or with introspection configured an
    /// opaque token) and, when the client sent `X-MCP-UserID`, that it names
    /// the token's user. Results are cached by the token's SHA-256 until
    /// the token expires.
    pub async fn verify(
        &self,
        bearer: &str,
        claimed_user_id: Option<&str>,
    ) -> Result<Verified, OAuthDenial> {
        self.verify_hashed(bearer, token::hash(bearer), claimed_user_id)
            .await
    }

    /// [`Self::verify`] for a caller that has hashed the token already.
    pub async fn verify_hashed(
        &self,
        bearer: &str,
        key: TokenHash,
        claimed_user_id: Option<&str>,
    ) -> Result<Verified, OAuthDenial> {
        let verified = self.verified(bearer, key).await?;
        if claimed_user_id.is_some_and(|claimed| claimed != verified.user_id) {
            return Err(InvalidToken::UserMismatch.into());
        }
        Ok(verified)
    }

    async fn verified(&self, bearer: &str, key: TokenHash) -> Result<Verified, OAuthDenial> {
        let now = Utc::now().timestamp();
        if let Some(hit) = self.cache.get(&key).await {
            if now < hit.valid_until {
                return hit.outcome.clone().map_err(OAuthDenial::from);
            }
            // The cache's clock has not caught up with the wall clock's.
            self.cache.invalidate(&key).await;
        }
        let cached = match bearer_shape(bearer) {
            BearerShape::Jwt => {
                let verified = self.check_jwt(bearer, now).await?;
                let valid_until = verified
                    .expires_at
                    .map_or(now, |exp| exp.timestamp())
                    .saturating_add(self.settings.rules.leeway_secs);
                Cached {
                    outcome: Ok(verified),
                    valid_until,
                }
            }
            BearerShape::Opaque => {
                let Some(settings) = &self.settings.introspection else {
                    return Err(InvalidToken::UnsupportedFormat.into());
                };
                // One question to the server however many requests carry
                // the token at once; the answer is cached as it comes.
                let cached = self
                    .cache
                    .try_get_with(key, async {
                        self.check_introspected(settings, bearer, now)
                            .await
                            .map(Arc::new)
                    })
                    .await
                    .map_err(|denial| *denial)?;
                return cached.outcome.clone().map_err(OAuthDenial::from);
            }
            BearerShape::Memgate => return Err(InvalidToken::UnsupportedFormat.into()),
            BearerShape::Malformed => return Err(InvalidToken::Malformed.into()),
        };
        let outcome = cached.outcome.clone();
        if cached.valid_until > now {
            self.cache.insert(key, Arc::new(cached)).await;
        }
        outcome.map_err(OAuthDenial::from)
    }

    async fn check_jwt(&self, jwt: &str, now: i64) -> Result<Verified, OAuthDenial> {
        let (header, unverified) = jws::read_unverified(jwt, &self.settings.allowed_algs)?;
        let JwsHeader { alg, kid, typ } = header;
        // The claimed issuer picks the keys; the claims are trusted only
        // once the signature is verified below.
        let issuer = self.settings.rules.issuer_of(&unverified)?;
        let keys = self
            .issuers
            .get(issuer)
            .ok_or(InvalidToken::UnknownIssuer)?;
        let key = keys.key_for(kid.as_deref(), alg).await?;
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(jwt, &key.key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => InvalidToken::BadSignature,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                    InvalidToken::AlgorithmNotAllowed
                }
                _ => InvalidToken::Malformed,
            })?
            .claims;
        let checked = check_jwt_claims(&self.settings.rules, typ.as_deref(), &claims, now)?;
        Ok(verified(checked, AuthMethod::Jwt))
    }

    async fn check_introspected(
        &self,
        settings: &IntrospectionSettings,
        bearer: &str,
        now: i64,
    ) -> Result<Cached, OAuthDenial> {
        let answer = introspection::introspect(&self.http, settings, bearer).await?;
        let reuse_until = now.saturating_add(i64::try_from(settings.cache.as_secs()).unwrap_or(0));
        Ok(
            match check_introspection(&self.settings.rules, &answer, now) {
                Ok(checked) => {
                    let valid_until = checked.expires_at.map_or(reuse_until, |exp| {
                        exp.saturating_add(self.settings.rules.leeway_secs)
                            .min(reuse_until)
                    });
                    Cached {
                        outcome: Ok(verified(checked, AuthMethod::Introspection)),
                        valid_until,
                    }
                }
                // The server's word on a token holds for as long as its
                // word on an active one would: a flood of dead tokens
                // reaches it once each per period.
                Err(why) => Cached {
                    outcome: Err(why),
                    valid_until: reuse_until,
                },
            },
        )
    }
}

fn verified(checked: CheckedClaims, method: AuthMethod) -> Verified {
    Verified {
        user_id: checked.user_id,
        permissions: checked.permissions,
        scopes: checked.scopes,
        expires_at: checked
            .expires_at
            .and_then(|exp| DateTime::from_timestamp(exp, 0)),
        method,
    }
}
