//! One issuer's signing keys: found by discovery (RFC 8414, OpenID Connect
//! Discovery) or configured, fetched as a JWK Set, kept in memory, and
//! fetched again when a token names a key memgate does not hold, at most
//! once per `jwks_min_refresh_secs` however many tokens ask.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use super::denial::{InvalidToken, OAuthDenial};
use super::http::json_object;
use crate::config::check_authorization_server_url;

/// The kind of public key an algorithm verifies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyType {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// The key type `alg` needs; `None` for symmetric algorithms, which a
/// published key can never serve.
fn key_type_for(alg: Algorithm) -> Option<KeyType> {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(KeyType::Rsa),
        Algorithm::ES256 => Some(KeyType::P256),
        Algorithm::ES384 => Some(KeyType::P384),
        Algorithm::EdDSA => Some(KeyType::Ed25519),
        _ => None,
    }
}

/// One public key of an issuer's key set.
pub struct VerifyingKey {
    kid: Option<String>,
    /// The key's own `alg`, when the key set pins one.
    alg: Option<Algorithm>,
    key_type: KeyType,
    pub key: DecodingKey,
}

impl VerifyingKey {
    /// A signature key from one JWK Set member; `None` for keys memgate
    /// does not verify with (encryption keys, symmetric keys, other curves).
    fn from_jwk(member: &Value) -> Option<VerifyingKey> {
        if member.get("use").is_some_and(|u| u.as_str() != Some("sig")) {
            return None;
        }
        let jwk: Jwk = serde_json::from_value(member.clone()).ok()?;
        let key_type = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyType::Rsa,
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => KeyType::P256,
                EllipticCurve::P384 => KeyType::P384,
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
                EllipticCurve::Ed25519 => KeyType::Ed25519,
                _ => return None,
            },
            _ => return None,
        };
        // The key's own `alg`, from the document: an algorithm the JWT
        // library does not know (RSA-OAEP, …) makes it no signature key.
        let alg = match member.get("alg") {
            None => None,
            Some(alg) => {
                let alg = Algorithm::from_str(alg.as_str()?).ok()?;
                if key_type_for(alg) != Some(key_type) {
                    return None;
                }
                Some(alg)
            }
        };
        Some(VerifyingKey {
            kid: jwk.common.key_id.clone(),
            alg,
            key_type,
            key: DecodingKey::from_jwk(&jwk).ok()?,
        })
    }

    fn fits(&self, alg: Algorithm) -> bool {
        key_type_for(alg) == Some(self.key_type) && self.alg.is_none_or(|own| own == alg)
    }
}

/// The signature keys of a JWK Set document; members memgate cannot use
/// are skipped, so one exotic key does not cost the others.
fn parse_key_set(document: &Map<String, Value>) -> Result<Vec<Arc<VerifyingKey>>, String> {
    let members = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the key set has no \"keys\" list")?;
    Ok(members
        .iter()
        .filter_map(VerifyingKey::from_jwk)
        .map(Arc::new)
        .collect())
}

/// Where the issuer's metadata may be, in the order the MCP authorization
/// specification tries them: RFC 8414 (the well-known path inserted before
/// the issuer's path), OpenID Connect Discovery with the path inserted, and
/// appended.
pub fn discovery_urls(issuer: &str) -> Vec<String> {
    let Ok(url) = url::Url::parse(issuer) else {
        return Vec::new();
    };
    let origin = url.origin().ascii_serialization();
    let path = url.path().trim_end_matches('/');
    let mut urls = vec![format!(
        "{origin}/.well-known/oauth-authorization-server{path}"
    )];
    if !path.is_empty() {
        urls.push(format!("{origin}/.well-known/openid-configuration{path}"));
    }
    urls.push(format!("{origin}{path}/.well-known/openid-configuration"));
    urls
}

/// The state of fetching: who fetched last, when, and whether it worked.
struct Refresh {
    last_attempt: Option<Instant>,
    last_ok: bool,
    /// Discovered (or configured) key set URL.
    jwks_uri: Option<url::Url>,
}

/// Which key a token's header selects.
enum Selection {
    Found(Arc<VerifyingKey>),
    /// No key fits: perhaps one the issuer added since the last fetch.
    Absent,
    /// The token names no `kid` and several keys fit: refused, not guessed.
    Ambiguous,
}

pub struct IssuerKeys {
    issuer: String,
    configured_jwks_uri: Option<url::Url>,
    http: reqwest::Client,
    min_refresh: Duration,
    keys: RwLock<Arc<Vec<Arc<VerifyingKey>>>>,
    refresh: tokio::sync::Mutex<Refresh>,
}

impl IssuerKeys {
    pub fn new(
        issuer: String,
        jwks_uri: Option<url::Url>,
        http: reqwest::Client,
        min_refresh: Duration,
    ) -> IssuerKeys {
        IssuerKeys {
            issuer,
            configured_jwks_uri: jwks_uri.clone(),
            http,
            min_refresh,
            keys: RwLock::new(Arc::new(Vec::new())),
            refresh: tokio::sync::Mutex::new(Refresh {
                last_attempt: None,
                last_ok: false,
                jwks_uri,
            }),
        }
    }

    fn select(&self, kid: Option<&str>, alg: Algorithm) -> Selection {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let mut fitting = keys
            .iter()
            .filter(|k| k.fits(alg) && (kid.is_none() || k.kid.as_deref() == kid));
        match (fitting.next(), fitting.next(), kid) {
            (None, _, _) => Selection::Absent,
            (Some(one), None, _) | (Some(one), Some(_), Some(_)) => Selection::Found(one.clone()),
            (Some(_), Some(_), None) => Selection::Ambiguous,
        }
    }

    /// The key to verify a token signed with `alg` under `kid`. A key not
    /// held yet costs one fetch of the key set, unless one was made within
    /// `min_refresh`; concurrent callers share that fetch. When the fetch
    /// fails, keys already held keep working and the token gets 503.
    pub async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyingKey>, OAuthDenial> {
        match self.select(kid, alg) {
            Selection::Found(key) => return Ok(key),
            Selection::Ambiguous => return Err(InvalidToken::UnknownKey.into()),
            Selection::Absent => {}
        }
        let mut refresh = self.refresh.lock().await;
        // Whoever held the lock may have fetched the key meanwhile.
        if let Selection::Found(key) = self.select(kid, alg) {
            return Ok(key);
        }
        if let Some(at) = refresh.last_attempt
            && at.elapsed() < self.min_refresh
        {
            return Err(if refresh.last_ok {
                InvalidToken::UnknownKey.into()
            } else {
                OAuthDenial::Unavailable
            });
        }
        if !self.refetch(&mut refresh).await {
            return Err(OAuthDenial::Unavailable);
        }
        match self.select(kid, alg) {
            Selection::Found(key) => Ok(key),
            Selection::Absent | Selection::Ambiguous => Err(InvalidToken::UnknownKey.into()),
        }
    }

    /// Fetches the keys now unless a fetch was already tried (startup, so
    /// the first request does not wait on discovery).
    pub async fn prefetch(&self) {
        let mut refresh = self.refresh.lock().await;
        if refresh.last_attempt.is_none() {
            self.refetch(&mut refresh).await;
        }
    }

    /// One fetch of the key set, replacing the keys held when it works;
    /// whether it did.
    async fn refetch(&self, refresh: &mut Refresh) -> bool {
        refresh.last_attempt = Some(Instant::now());
        match self.fetch(refresh).await {
            Ok(keys) => {
                tracing::info!(issuer = %self.issuer, keys = keys.len(), "fetched the issuer's signing keys");
                *self
                    .keys
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(keys);
                refresh.last_ok = true;
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "cannot fetch the issuer's signing keys; tokens signed with keys memgate holds keep working");
                refresh.last_ok = false;
                // Discovery runs again next time: the issuer may have moved its keys.
                if self.configured_jwks_uri.is_none() {
                    refresh.jwks_uri = None;
                }
            }
        }
        refresh.last_ok
    }

    async fn fetch(&self, refresh: &mut Refresh) -> Result<Vec<Arc<VerifyingKey>>, String> {
        let jwks_uri = match &refresh.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let uri = self.discover().await?;
                refresh.jwks_uri = Some(uri.clone());
                uri
            }
        };
        let document = json_object(self.http.get(jwks_uri.clone()))
            .await
            .map_err(|e| format!("key set {jwks_uri}: {e}"))?;
        parse_key_set(&document).map_err(|e| format!("key set {jwks_uri}: {e}"))
    }

    /// The `jwks_uri` of the issuer's metadata. The document must name
    /// this very issuer (RFC 8414 §3.3), or anyone able to serve a document
    /// there could slip in their keys.
    async fn discover(&self) -> Result<url::Url, String> {
        let mut problems = Vec::new();
        for url in discovery_urls(&self.issuer) {
            let document = match json_object(self.http.get(&url)).await {
                Ok(document) => document,
                Err(e) => {
                    problems.push(format!("{url}: {e}"));
                    continue;
                }
            };
            if document.get("issuer").and_then(Value::as_str) != Some(self.issuer.as_str()) {
                problems.push(format!("{url}: names another issuer"));
                continue;
            }
            let Some(jwks_uri) = document.get("jwks_uri").and_then(Value::as_str) else {
                problems.push(format!("{url}: has no jwks_uri"));
                continue;
            };
            return check_authorization_server_url("jwks_uri", jwks_uri)
                .map_err(|e| format!("{url}: {e}"));
        }
        Err(format!("no usable metadata: {}", problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn discovery_tries_rfc_8414_then_openid_locations() {
        assert_eq!(
            discovery_urls("https://kc.example.com/realms/main"),
            [
                "https://kc.example.com/.well-known/oauth-authorization-server/realms/main",
                "https://kc.example.com/.well-known/openid-configuration/realms/main",
                "https://kc.example.com/realms/main/.well-known/openid-configuration",
            ]
        );
        assert_eq!(
            discovery_urls("https://tenant.auth0.com/"),
            [
                "https://tenant.auth0.com/.well-known/oauth-authorization-server",
                "https://tenant.auth0.com/.well-known/openid-configuration",
            ]
        );
    }

    #[test]
    fn only_asymmetric_signature_keys_are_kept() {
        let ec = json!({"kty": "EC", "crv": "P-256", "kid": "ec",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRjTU5R2XlOjzeY7-dmHRmKdrPqZ46nGKnv4UTc"});
        let set = json!({"keys": [
            ec,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "wrong-alg", "alg": "RS256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRjTU5R2XlOjzeY7-dmHRmKdrPqZ46nGKnv4UTc"},
            {"kty": "weird"},
            "not an object",
        ]});
        let keys = parse_key_set(set.as_object().unwrap()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ec"));
        assert!(keys[0].fits(Algorithm::ES256));
        assert!(!keys[0].fits(Algorithm::ES384));
        assert!(!keys[0].fits(Algorithm::HS256));
        assert!(!keys[0].fits(Algorithm::RS256));
        assert!(parse_key_set(json!({"nokeys": []}).as_object().unwrap()).is_err());
    }
}
