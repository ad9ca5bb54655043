//! memgate's OAuth verifier against a real, independently developed
//! authorization server (oidc-provider, tests/oidc/provider.mjs): tokens by
//! client credentials and by authorization code + PKCE (the login and
//! consent pages driven over HTTP), opaque tokens introspected there, and
//! every refusal. Forged tokens are
//! signed here with keys made here and served by a small issuer of this
//! file's own, which also counts key set fetches and answers introspection.
//!
//! Without `node` or tests/oidc/node_modules the provider tests are skipped
//! unless `MEMGATE_REQUIRE_OIDC=1` (as in CI), which makes them fail instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use memgate::auth::oauth::{
    AuthMethod, InvalidToken, OAuth, OAuthDenial, OAuthSettings, Resource, Verified,
};
use memgate::config::{Config, OneOrMany};
use memgate::identity::Permission;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// memgate's MCP resource in these tests (its default, from `mcp.listen`).
const MCP: &str = "http://127.0.0.1:8080/mcp";
const MEM0: &str = "http://127.0.0.1:8000";
/// Another resource server at the same authorization server.
const OTHER: &str = "https://other.example.com/api";
/// A resource whose access tokens the provider issues opaque, for introspection.
const OPAQUE: &str = "http://127.0.0.1:8080/opaque";

mod support;

use support::oidc::{Provider, authorization_code, client_credentials};

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn invalid(why: InvalidToken) -> Result<Verified, OAuthDenial> {
    Err(OAuthDenial::InvalidToken(why))
}

/// A verifier as `memgate serve` builds it from `[oauth]`.
fn verifier(issuer: &str, edit: impl FnOnce(&mut Config)) -> OAuth {
    let mut config = Config::default();
    config.oauth.enabled = true;
    config.oauth.issuer = OneOrMany::One(issuer.to_string());
    edit(&mut config);
    config.validate().expect("valid config");
    let settings = OAuthSettings::from_config(&config, |name| {
        (name == "TEST_INTROSPECTION_SECRET").then(|| "s3cret:/x".to_string())
    })
    .expect("settings")
    .expect("enabled");
    OAuth::new(settings).expect("verifier")
}

// ---------------------------------------------------------------------------
// This file's own issuer: keys made here, a key set whose fetches are
// counted, introspection, and a switch to make it unreachable.

struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    fn es256(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        assert_eq!((raw.len(), raw[0]), (65, 4), "an uncompressed P-256 point");
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
            }),
        }
    }

    fn ed25519(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let raw = pair.public_key_raw();
        assert_eq!(raw.len(), 32);
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
            jwk: json!({
                "kty": "OKP", "crv": "Ed25519", "use": "sig", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(raw),
            }),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

#[derive(Default)]
struct IssuerState {
    issuer: Mutex<String>,
    keys: Mutex<Vec<Value>>,
    jwks_fetches: AtomicUsize,
    introspections: AtomicUsize,
    /// token → introspection answer.
    introspection: Mutex<HashMap<String, Value>>,
}

/// A minimal HTTP/1.1 issuer; every answer closes its connection, so
/// stopping the listener makes the issuer unreachable at once.
struct OwnIssuer {
    issuer: String,
    state: Arc<IssuerState>,
    accepting: tokio::task::JoinHandle<()>,
}

impl OwnIssuer {
    async fn start() -> OwnIssuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(IssuerState::default());
        *state.issuer.lock().unwrap() = issuer.clone();
        let serving = state.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(answer(conn, serving.clone()));
            }
        });
        OwnIssuer {
            issuer,
            state,
            accepting,
        }
    }

    fn publish(&self, keys: &[&SigningKey]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        self.accepting.abort();
    }

    /// Claims of a good access token for memgate from this issuer.
    fn claims(&self, sub: &str) -> Value {
        json!({
            "iss": self.issuer, "aud": MCP, "sub": sub, "scope": "mcp:read mcp:write",
            "iat": now(), "exp": now() + 300, "jti": random_id(),
        })
    }
}

fn random_id() -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).unwrap();
    URL_SAFE_NO_PAD.encode(bytes)
}

async fn answer(mut conn: tokio::net::TcpStream, state: Arc<IssuerState>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let Ok(n) = conn.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
    while buf.len() < head_end + length {
        let Ok(n) = conn.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_end..head_end + length];
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let issuer = state.issuer.lock().unwrap().clone();
    let (status, reply) = match (method, path) {
        ("GET", "/.well-known/openid-configuration") => (
            200,
            json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")}),
        ),
        ("GET", "/jwks") => {
            state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            (200, json!({"keys": *state.keys.lock().unwrap()}))
        }
        ("POST", "/introspect") => {
            state.introspections.fetch_add(1, Ordering::SeqCst);
            let expected = format!(
                "Basic {}",
                STANDARD.encode("memgate%3Aintrospector:s3cret%3A%2Fx")
            );
            if header("authorization") != Some(expected) {
                (401, json!({"error": "invalid_client"}))
            } else {
                let form: HashMap<String, String> =
                    url::form_urlencoded::parse(body).into_owned().collect();
                let known = state.introspection.lock().unwrap();
                let token = form.get("token").cloned().unwrap_or_default();
                (
                    200,
                    known
                        .get(&token)
                        .cloned()
                        .unwrap_or(json!({"active": false})),
                )
            }
        }
        _ => (404, json!({"error": "not found"})),
    };
    let text = reply.to_string();
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = conn.write_all(response.as_bytes()).await;
    let _ = conn.shutdown().await;
}

// ---------------------------------------------------------------------------
// Tokens from oidc-provider.

#[tokio::test]
async fn real_tokens_by_client_credentials_and_by_authorization_code_with_pkce() {
    let Some(mut provider) = Provider::start(&[MCP, OTHER], &[OPAQUE]) else {
        return;
    };
    let issuer = provider.issuer.clone();
    let oauth = verifier(&issuer, |_| {});

    // A machine client: sub is its client id.
    let m2m = client_credentials(&issuer, "mcp:read mcp:write", MCP).await;
    let verified = oauth.verify(&m2m, None).await.unwrap();
    assert_eq!(verified.user_id, "memgate-m2m");
    assert_eq!(verified.method, AuthMethod::Jwt);
    assert_eq!(verified.scopes, ["mcp:read", "mcp:write"]);
    assert!(verified.permissions.allows(Permission::Write));
    assert!(!verified.permissions.allows(Permission::Admin));
    let exp = verified.expires_at.unwrap().timestamp();
    assert!((now() + 250..=now() + 300).contains(&exp), "{exp}");
    // Cached: the same answer again, and X-MCP-UserID is still checked.
    assert_eq!(oauth.verify(&m2m, Some("memgate-m2m")).await, Ok(verified));
    assert_eq!(
        oauth.verify(&m2m, Some("alice")).await,
        invalid(InvalidToken::UserMismatch)
    );

    // A person through the browser flow: sub is who signed in.
    let (access, id_token) = authorization_code(&issuer, "alice", "openid mcp:read", MCP).await;
    let verified = oauth.verify(&access, Some("alice")).await.unwrap();
    assert_eq!(verified.user_id, "alice");
    assert!(verified.permissions.allows(Permission::Read));
    assert!(!verified.permissions.allows(Permission::Write));
    // Step-up: the request needing write gets 403 naming the scope for it.
    let step_up = oauth.insufficient_scope_challenge(Resource::Mcp, Permission::Write);
    assert!(
        step_up.starts_with("Bearer error=\"insufficient_scope\", scope=\"mcp:write\""),
        "{step_up}"
    );
    assert!(step_up.contains(
        "resource_metadata=\"http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp\""
    ));

    // The ID token from the same flow is for the client, not for memgate...
    assert_eq!(
        oauth.verify(&id_token, None).await,
        invalid(InvalidToken::WrongAudience)
    );
    // ...and refused as an ID token even where its audience would pass.
    let lenient = verifier(&issuer, |c| {
        c.oauth.audience = OneOrMany::Many(vec![MCP.into(), "memgate-cli".into()]);
    });
    assert_eq!(
        lenient.verify(&id_token, None).await,
        invalid(InvalidToken::IdToken)
    );

    // A token for another resource at the same server: audience confusion.
    let other = client_credentials(&issuer, "mcp:read", OTHER).await;
    assert_eq!(
        oauth.verify(&other, None).await,
        invalid(InvalidToken::WrongAudience)
    );

    // memgate trusting another issuer: the provider's tokens are nothing.
    let elsewhere = verifier("https://idp.example.com/realms/main", |_| {});
    assert_eq!(
        elsewhere.verify(&m2m, None).await,
        invalid(InvalidToken::UnknownIssuer)
    );

    // Identity from another claim: client credentials tokens carry no email.
    let by_email = verifier(&issuer, |c| c.oauth.user_claim = "email".into());
    assert_eq!(
        by_email.verify(&m2m, None).await,
        invalid(InvalidToken::UserClaim)
    );

    // A tampered token: alice's signature over bob's claims.
    let mut parts: Vec<String> = access.split('.').map(String::from).collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    claims["sub"] = json!("bob");
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    assert_eq!(
        oauth.verify(&parts.join("."), None).await,
        invalid(InvalidToken::BadSignature)
    );

    // The issuer goes away: a token signed with a key memgate already holds
    // still verifies (it was never seen, so no cache answers for it)...
    let fresh = client_credentials(&issuer, "mcp:read", MCP).await;
    provider.stop();
    assert_eq!(
        oauth.verify(&fresh, None).await.map(|v| v.user_id),
        Ok("memgate-m2m".into())
    );
    // ...and one naming a key memgate does not hold gets 503, never access.
    let stranger = SigningKey::es256("es-2");
    let forged = stranger.sign(&json!({
        "iss": issuer, "aud": MCP, "sub": "mallory", "scope": "mcp:admin",
        "iat": now(), "exp": now() + 300,
    }));
    let quick = verifier(&issuer, |c| c.oauth.jwks_min_refresh_secs = 1);
    assert_eq!(
        quick.verify(&forged, None).await,
        Err(OAuthDenial::Unavailable)
    );
}

#[tokio::test]
async fn real_opaque_tokens_are_introspected_at_the_provider() {
    let Some(mut provider) = Provider::start(&[MCP, OTHER], &[OPAQUE]) else {
        return;
    };
    let issuer = provider.issuer.clone();
    fn introspecting(issuer: &str, client_secret: &str) -> OAuth {
        verifier(issuer, |c| {
            c.oauth.audience = OneOrMany::Many(vec![MCP.into(), OPAQUE.into()]);
            // Client credentials tokens name their client, not a user.
            c.oauth.user_claim = "client_id".into();
            c.oauth.introspection.url = format!("{issuer}/token/introspection");
            c.oauth.introspection.client_id = "memgate-m2m".into();
            c.oauth.introspection.client_secret =
                memgate::config::HeaderSource::Literal(client_secret.into());
        })
    }
    let oauth = introspecting(&issuer, "m2m-secret");
    let opaque = client_credentials(&issuer, "mcp:read mcp:write", OPAQUE).await;
    assert!(!opaque.contains('.'), "an opaque token: {opaque}");
    let verified = oauth.verify(&opaque, None).await.unwrap();
    assert_eq!(verified.user_id, "memgate-m2m");
    assert_eq!(verified.method, AuthMethod::Introspection);
    assert!(verified.permissions.allows(Permission::Write));
    // JWTs from the same server are still verified locally.
    let jwt = client_credentials(&issuer, "mcp:read", MCP).await;
    assert_eq!(
        oauth.verify(&jwt, None).await.map(|v| v.method),
        Ok(AuthMethod::Jwt)
    );
    // A token the server never issued is inactive.
    assert_eq!(
        oauth
            .verify("2YotnFZFEjr1zCsicMWpAAxxxxxxxxxxxxxxxxxxxxx", None)
            .await,
        invalid(InvalidToken::Inactive)
    );
    // memgate's own client credentials wrong: the server will not say, 503.
    let fresh = client_credentials(&issuer, "mcp:read", OPAQUE).await;
    assert_eq!(
        introspecting(&issuer, "wrong").verify(&fresh, None).await,
        Err(OAuthDenial::Unavailable)
    );
    // The server gone: the answer already given holds, new tokens get 503.
    provider.stop();
    assert!(oauth.verify(&opaque, None).await.is_ok());
    assert_eq!(
        oauth.verify(&fresh, None).await,
        Err(OAuthDenial::Unavailable)
    );
}

#[tokio::test]
async fn metadata_and_challenges_name_memgates_resources_and_the_issuer() {
    let oauth = verifier("https://idp.example.com/realms/main", |_| {});
    assert_eq!(oauth.resource(Resource::Mcp), MCP);
    assert_eq!(oauth.resource(Resource::Mem0), MEM0);
    assert_eq!(
        oauth.metadata_paths(Resource::Mcp),
        [
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/mcp"
        ]
    );
    assert_eq!(
        oauth.metadata_paths(Resource::Mem0),
        ["/.well-known/oauth-protected-resource"]
    );
    let document: Value = serde_json::from_slice(oauth.metadata_document(Resource::Mcp)).unwrap();
    assert_eq!(
        document,
        json!({
            "resource": MCP,
            "authorization_servers": ["https://idp.example.com/realms/main"],
            // Admin is asked for only on a step-up challenge: clients ask
            // for every scope offered.
            "scopes_supported": ["mcp:read", "mcp:write"],
            "bearer_methods_supported": ["header"],
        })
    );
    assert_eq!(
        oauth.unauthorized_challenge(Resource::Mem0, Some(Permission::Read), None),
        Some(
            "Bearer resource_metadata=\"http://127.0.0.1:8000/.well-known/oauth-protected-resource\", \
             scope=\"mcp:read\""
                .into()
        )
    );
    let refused = oauth
        .unauthorized_challenge(
            Resource::Mcp,
            None,
            Some(OAuthDenial::InvalidToken(InvalidToken::Expired)),
        )
        .unwrap();
    assert!(refused.contains("error=\"invalid_token\""), "{refused}");
    assert_eq!(
        oauth.unauthorized_challenge(Resource::Mcp, None, Some(OAuthDenial::Unavailable)),
        None
    );
}

// ---------------------------------------------------------------------------
// Forged and malformed tokens, key refreshes, an unreachable issuer and
// introspection, against this file's own issuer.

#[tokio::test]
async fn every_forged_or_misdirected_token_is_refused() {
    let own = OwnIssuer::start().await;
    let key = SigningKey::es256("k1");
    own.publish(&[&key]);
    let oauth = verifier(&own.issuer, |_| {});
    let good = own.claims("alice");
    assert_eq!(
        oauth
            .verify(&key.sign(&good), None)
            .await
            .map(|v| v.user_id),
        Ok("alice".into())
    );
    let with = |changes: Value| {
        let mut claims = own.claims("alice");
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        key.sign(&claims)
    };
    let cases = [
        (
            with(json!({"iss": "https://evil.example.com"})),
            InvalidToken::UnknownIssuer,
        ),
        (
            with(json!({"iss": format!("{}/", own.issuer)})),
            InvalidToken::UnknownIssuer,
        ),
        (with(json!({"aud": OTHER})), InvalidToken::WrongAudience),
        (with(json!({"aud": null})), InvalidToken::MissingAudience),
        (with(json!({"exp": now() - 120})), InvalidToken::Expired),
        (with(json!({"exp": null})), InvalidToken::MissingExpiry),
        (with(json!({"nbf": now() + 600})), InvalidToken::NotYetValid),
        (
            with(json!({"iat": now() + 600})),
            InvalidToken::IssuedInFuture,
        ),
        (with(json!({"sub": null})), InvalidToken::UserClaim),
        (with(json!({"sub": "alice\n"})), InvalidToken::UserClaim),
    ];
    for (token, why) in cases {
        assert_eq!(oauth.verify(&token, None).await, invalid(why), "{why:?}");
    }

    // An ID token with memgate's audience, typ JWT and a nonce.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    header.typ = Some("JWT".into());
    let mut claims = own.claims("alice");
    claims["nonce"] = json!("n-1");
    let id_token = jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap();
    assert_eq!(
        oauth.verify(&id_token, None).await,
        invalid(InvalidToken::IdToken)
    );

    // alg none, with and without a signature segment.
    let unsigned = |alg: &str, signature: &str| {
        let header = json!({"alg": alg, "typ": "at+jwt", "kid": "k1"});
        format!(
            "{}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(good.to_string())
        )
    };
    assert_eq!(
        oauth.verify(&unsigned("none", "AAAA"), None).await,
        invalid(InvalidToken::AlgorithmNotAllowed)
    );
    assert!(matches!(
        oauth.verify(&unsigned("none", ""), None).await,
        Err(OAuthDenial::InvalidToken(_))
    ));
    // HS256 with the published public key as the HMAC secret, in the
    // forms an attacker would try: the JWK's JSON and the raw x coordinate.
    for secret in [
        key.jwk.to_string().into_bytes(),
        URL_SAFE_NO_PAD
            .decode(key.jwk["x"].as_str().unwrap())
            .unwrap(),
    ] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        header.typ = Some("at+jwt".into());
        let token =
            jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(&secret).unwrap())
                .unwrap();
        assert_eq!(
            oauth.verify(&token, None).await,
            invalid(InvalidToken::AlgorithmNotAllowed)
        );
    }
    // ES384 claimed over an ES256 key: with ES384 allowed, no key fits it.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let mut header_json = serde_json::to_value(&header).unwrap();
    header_json["alg"] = json!("ES384");
    let token = key.sign(&good);
    let signature = token.rsplit('.').next().unwrap();
    let relabelled = format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header_json.to_string()),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    assert_eq!(
        oauth.verify(&relabelled, None).await,
        invalid(InvalidToken::AlgorithmNotAllowed)
    );
    let both = verifier(&own.issuer, |c| {
        c.oauth.allowed_algs = vec!["ES256".into(), "ES384".into()];
    });
    assert!(both.verify(&key.sign(&good), None).await.is_ok());
    assert_eq!(
        both.verify(&relabelled, None).await,
        invalid(InvalidToken::UnknownKey)
    );
    // A key the issuer never published, under a kid it did.
    let impostor = SigningKey::es256("k1");
    assert_eq!(
        oauth.verify(&impostor.sign(&good), None).await,
        invalid(InvalidToken::BadSignature)
    );
    // A key embedded in the header (jwk, jku) is never trusted: the
    // attacker's own key, named in the token it signed.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    header.jwk = Some(serde_json::from_value(impostor.jwk.clone()).unwrap());
    header.jku = Some(format!("{}/jwks", own.issuer));
    let token = jsonwebtoken::encode(&header, &good, &impostor.encoding).unwrap();
    assert_eq!(
        oauth.verify(&token, None).await,
        invalid(InvalidToken::BadSignature)
    );
    // crit extensions memgate does not implement.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    header.crit = Some(vec!["exp".into()]);
    let token = jsonwebtoken::encode(&header, &good, &key.encoding).unwrap();
    assert_eq!(
        oauth.verify(&token, None).await,
        invalid(InvalidToken::CriticalHeader)
    );
    // Not a JWT, and no introspection configured.
    assert_eq!(
        oauth.verify("2YotnFZFEjr1zCsicMWpAA", None).await,
        invalid(InvalidToken::UnsupportedFormat)
    );
    assert_eq!(
        oauth.verify("not a token", None).await,
        invalid(InvalidToken::Malformed)
    );
    // EdDSA, from a second key of the same issuer.
    let ed = SigningKey::ed25519("ed1");
    own.publish(&[&key, &ed]);
    let quick = verifier(&own.issuer, |c| c.oauth.jwks_min_refresh_secs = 1);
    assert_eq!(
        quick
            .verify(&ed.sign(&own.claims("bob")), None)
            .await
            .map(|v| v.user_id),
        Ok("bob".into())
    );
}

#[tokio::test]
async fn a_flood_of_unknown_key_ids_costs_one_key_set_fetch_per_interval() {
    let own = OwnIssuer::start().await;
    let key = SigningKey::es256("k1");
    own.publish(&[&key]);
    let oauth = Arc::new(verifier(&own.issuer, |c| c.oauth.jwks_min_refresh_secs = 2));
    // 200 tokens naming random key ids, at once, before any key is held:
    // one fetch serves them all.
    let flood = |oauth: Arc<OAuth>| {
        let tokens: Vec<String> = (0..200)
            .map(|_| SigningKey::es256(&random_id()).sign(&own.claims("mallory")))
            .collect();
        async move {
            let checks = tokens.iter().map(|t| oauth.verify(t, None));
            futures::future::join_all(checks).await
        }
    };
    for outcome in flood(oauth.clone()).await {
        assert_eq!(outcome, invalid(InvalidToken::UnknownKey));
    }
    assert_eq!(own.jwks_fetches(), 1);
    // The published key works without another fetch; more unknown ids
    // within the interval fetch nothing.
    assert!(
        oauth
            .verify(&key.sign(&own.claims("alice")), None)
            .await
            .is_ok()
    );
    for outcome in flood(oauth.clone()).await {
        assert_eq!(outcome, invalid(InvalidToken::UnknownKey));
    }
    assert_eq!(own.jwks_fetches(), 1);
    // A key the issuer adds: unknown until the interval has passed, then
    // fetched once.
    let rotated = SigningKey::es256("k2");
    own.publish(&[&key, &rotated]);
    let token = rotated.sign(&own.claims("alice"));
    assert_eq!(
        oauth.verify(&token, None).await,
        invalid(InvalidToken::UnknownKey)
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(oauth.verify(&token, None).await.is_ok());
    assert_eq!(own.jwks_fetches(), 2);
    // A key the issuer dropped stops working with the next fetch.
    own.publish(&[&rotated]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let _ = oauth
        .verify(&SigningKey::es256("k3").sign(&own.claims("x")), None)
        .await;
    assert_eq!(own.jwks_fetches(), 3);
    assert_eq!(
        oauth.verify(&key.sign(&own.claims("alice")), None).await,
        invalid(InvalidToken::UnknownKey)
    );
}

#[tokio::test]
async fn an_unreachable_issuer_keeps_known_keys_and_refuses_new_ones_with_503() {
    let own = OwnIssuer::start().await;
    let key = SigningKey::es256("k1");
    own.publish(&[&key]);
    let oauth = verifier(&own.issuer, |c| c.oauth.jwks_min_refresh_secs = 1);
    oauth.prefetch_keys().await;
    assert_eq!(own.jwks_fetches(), 1);
    own.stop();
    // Never-seen tokens under the held key.
    for user in ["alice", "bob"] {
        let verified = oauth.verify(&key.sign(&own.claims(user)), None).await;
        assert_eq!(verified.map(|v| v.user_id), Ok(user.to_string()));
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let new_key = SigningKey::es256("k2").sign(&own.claims("alice"));
    assert_eq!(
        oauth.verify(&new_key, None).await,
        Err(OAuthDenial::Unavailable)
    );
    // Within the interval after a failed fetch: still 503, without a fetch.
    assert_eq!(
        oauth.verify(&new_key, None).await,
        Err(OAuthDenial::Unavailable)
    );
    // A verifier that never got keys refuses everything with 503.
    let cold = verifier(&own.issuer, |_| {});
    assert_eq!(
        cold.verify(&key.sign(&own.claims("alice")), None).await,
        Err(OAuthDenial::Unavailable)
    );
}

#[tokio::test]
async fn opaque_tokens_are_introspected_and_the_answers_cached() {
    let own = OwnIssuer::start().await;
    let exp = now() + 300;
    own.state.introspection.lock().unwrap().extend([
        (
            "opaque-alice".to_string(),
            json!({"active": true, "sub": "alice", "aud": [MCP], "scope": "mcp:read",
                   "exp": exp, "iss": own.issuer}),
        ),
        (
            "opaque-other".to_string(),
            json!({"active": true, "sub": "alice", "aud": OTHER, "scope": "mcp:read"}),
        ),
    ]);
    let oauth = verifier(&own.issuer, |c| {
        c.oauth.introspection.url = format!("{}/introspect", own.issuer);
        c.oauth.introspection.client_id = "memgate:introspector".into();
        c.oauth.introspection.client_secret = memgate::config::HeaderSource::Env {
            env: "TEST_INTROSPECTION_SECRET".into(),
        };
    });
    let verified = oauth.verify("opaque-alice", None).await.unwrap();
    assert_eq!(verified.user_id, "alice");
    assert_eq!(verified.method, AuthMethod::Introspection);
    assert_eq!(verified.expires_at.unwrap().timestamp(), exp);
    assert!(!verified.permissions.allows(Permission::Write));
    assert_eq!(
        oauth.verify("opaque-alice", Some("bob")).await,
        invalid(InvalidToken::UserMismatch)
    );
    assert_eq!(
        oauth.verify("opaque-dead", None).await,
        invalid(InvalidToken::Inactive)
    );
    assert_eq!(
        oauth.verify("opaque-other", None).await,
        invalid(InvalidToken::WrongAudience)
    );
    // Each token was asked about once; the repeats came from the cache.
    assert_eq!(
        oauth.verify("opaque-dead", None).await,
        invalid(InvalidToken::Inactive)
    );
    assert_eq!(own.state.introspections.load(Ordering::SeqCst), 3);
    // Wrong client credentials, or the endpoint gone: 503, never access.
    let wrong = verifier(&own.issuer, |c| {
        c.oauth.introspection.url = format!("{}/introspect", own.issuer);
        c.oauth.introspection.client_id = "memgate".into();
        c.oauth.introspection.client_secret =
            memgate::config::HeaderSource::Literal("guess".into());
    });
    assert_eq!(
        wrong.verify("opaque-alice", None).await,
        Err(OAuthDenial::Unavailable)
    );
    own.stop();
    assert_eq!(
        oauth.verify("opaque-new", None).await,
        Err(OAuthDenial::Unavailable)
    );
    assert!(oauth.verify("opaque-alice", None).await.is_ok());
}
