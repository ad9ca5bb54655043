//! Micro-benchmarks of memgate's per-request work, without sockets:
//!
//! - `auth/*`: token hashing alone, and `Authenticator::authenticate` on the
//!   cache-hit path (header extraction, SHA-256, cache lookup, status checks,
//!   the `last_used_at` note and the metrics), over a real SQLite store; and
//!   the same for a cached OAuth access token (a JWT verified once).
//! - `mem0_decide/*`: `Mem0Policy::decide` for every mem0 route (including
//!   the JSON rewrite of a 1 KiB `POST /memories` body, and two refusals).
//! - `mem0_response/*`: filtering a list response and reading created ids.
//! - `mcp_decide/*`: `McpPolicy::decide` for a `tools/call` and an `initialize`.
//!
//! Run: `cargo bench --bench hot_paths -- --warm-up-time 1 --measurement-time 3`
//! (bench/run.sh bench does exactly that). Results: bench/RESULTS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};

use memgate::auth::{Authenticator, PresentedHeaders, StoreAccess};
use memgate::config::AuthConfig;
use memgate::identity::{Identity, Permissions};
use memgate::ownership::OwnerCache;
use memgate::policy::mcp::{McpDecision, McpPolicy};
use memgate::policy::mem0::{self, Decision, Mem0Policy, Mem0Request};
use memgate::store::{NewToken, SqliteStore, Store};
use memgate::token;

fn identity() -> Identity {
    Identity {
        user_id: "bench".to_owned(),
        permissions: Permissions::READ_WRITE,
        token_prefix: "mcp_benchben".to_owned(),
    }
}

/// A `POST /memories` body of exactly 1024 bytes, without `user_id`, so the
/// policy must inject it and re-serialise the body (the rewrite path).
pub fn create_body_1k() -> Vec<u8> {
    let make = |pad: usize| {
        json!({
            "messages": [
                {"role": "user", "content": "x".repeat(pad)},
                {"role": "assistant", "content": "Noted."}
            ],
            "metadata": {"source": "bench", "category": "preferences"},
            "infer": false
        })
        .to_string()
    };
    let base = make(0).len();
    let body = make(1024 - base);
    assert_eq!(body.len(), 1024);
    body.into_bytes()
}

fn auth_store(auth: &Authenticator) -> Arc<dyn Store> {
    auth.store().clone()
}

/// An authenticator with `[oauth]` trusting an issuer served here on
/// loopback (an ES256 key made with rcgen, its key set answered to every
/// request), and an access token of that issuer for memgate's MCP resource.
async fn jwt_authenticator(store: Arc<dyn Store>) -> (Authenticator, String) {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use memgate::auth::oauth::{OAuth, OAuthSettings};
    use memgate::config::{Config, OneOrMany};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key pair");
    let raw = pair.public_key_raw();
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "bench",
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
    }]})
    .to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let issuer = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let jwks = jwks.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                    jwks.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    let resource = "http://127.0.0.1:8080/mcp";
    let mut config = Config::default();
    config.oauth.enabled = true;
    config.oauth.issuer = OneOrMany::One(issuer.clone());
    config.oauth.jwks_uri = format!("{issuer}/jwks");
    config.validate().expect("valid config");
    let settings = OAuthSettings::from_config(&config, |_| None)
        .expect("settings")
        .expect("enabled");
    let oauth = OAuth::new(settings).expect("verifier");
    let now = chrono::Utc::now().timestamp();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("bench".into());
    header.typ = Some("at+jwt".into());
    let claims = json!({
        "iss": issuer, "aud": resource, "sub": "bench", "scope": "mcp:read mcp:write",
        "iat": now, "exp": now + 86_400, "jti": "bench-1",
    });
    let key = jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der());
    let jwt = jsonwebtoken::encode(&header, &claims, &key).expect("signed");
    let auth = Authenticator::new(store, &AuthConfig::default()).with_oauth(Arc::new(oauth));
    (auth, jwt)
}

fn bench_auth(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    let plaintext = token::generate().expect("token");
    let (auth, plaintext) = rt.block_on(async {
        let store = SqliteStore::connect(&url, 2, Duration::from_secs(3))
            .await
            .expect("sqlite store");
        store.migrate().await.expect("migrate");
        store
            .insert_token(&NewToken {
                token_hash: token::hash_hex(&plaintext),
                prefix: token::display_prefix(&plaintext).to_owned(),
                user_id: "bench".to_owned(),
                name: None,
                email: None,
                permissions: Permissions::READ_WRITE,
                created_at: chrono::Utc::now(),
                created_by: None,
                expires_at: None,
                rate_limit_rps: None,
            })
            .await
            .expect("insert token");
        let store: Arc<dyn Store> = Arc::new(store);
        let auth = Authenticator::new(store, &AuthConfig::default());
        (auth, plaintext)
    });
    let headers = || PresentedHeaders {
        x_mcp_token: vec![plaintext.as_bytes()],
        ..PresentedHeaders::default()
    };
    // Warm the cache: the first call is the one store query.
    rt.block_on(auth.authenticate(&headers(), StoreAccess::Open))
        .expect("token authenticates");

    let mut group = c.benchmark_group("auth");
    group.bench_function("sha256_token", |b| {
        b.iter(|| token::hash(black_box(&plaintext)))
    });
    group.bench_function("authenticate_cache_hit", |b| {
        b.to_async(&rt).iter(|| async {
            let h = headers();
            let ok = auth.authenticate(black_box(&h), StoreAccess::Open).await;
            black_box(ok.is_ok())
        })
    });
    let bearer = format!("Bearer {plaintext}");
    group.bench_function("authenticate_cache_hit_bearer", |b| {
        b.to_async(&rt).iter(|| async {
            let h = PresentedHeaders {
                authorization: vec![bearer.as_bytes()],
                ..PresentedHeaders::default()
            };
            black_box(
                auth.authenticate(black_box(&h), StoreAccess::Open)
                    .await
                    .is_ok(),
            )
        })
    });
    let (jwt_auth, jwt) = rt.block_on(jwt_authenticator(auth_store(&auth)));
    let jwt_bearer = format!("Bearer {jwt}");
    let jwt_headers = || PresentedHeaders {
        authorization: vec![jwt_bearer.as_bytes()],
        ..PresentedHeaders::default()
    };
    // The first call fetches the key set and verifies; later ones hit the cache.
    rt.block_on(jwt_auth.authenticate(&jwt_headers(), StoreAccess::Open))
        .expect("the JWT authenticates");
    group.bench_function("authenticate_cache_hit_jwt", |b| {
        b.to_async(&rt).iter(|| async {
            let h = jwt_headers();
            black_box(
                jwt_auth
                    .authenticate(black_box(&h), StoreAccess::Open)
                    .await
                    .is_ok(),
            )
        })
    });
    let unknown = token::generate().expect("token");
    rt.block_on(auth.authenticate(
        &PresentedHeaders {
            x_mcp_token: vec![unknown.as_bytes()],
            ..PresentedHeaders::default()
        },
        StoreAccess::Open,
    ))
    .expect_err("unknown token");
    group.bench_function("authenticate_negative_hit", |b| {
        b.to_async(&rt).iter(|| async {
            let h = PresentedHeaders {
                x_mcp_token: vec![unknown.as_bytes()],
                ..PresentedHeaders::default()
            };
            black_box(
                auth.authenticate(black_box(&h), StoreAccess::Open)
                    .await
                    .is_err(),
            )
        })
    });
    group.finish();
    drop(dir);
}

fn bench_mem0(c: &mut Criterion) {
    let policy = Mem0Policy::default();
    let who = identity();
    let body_1k = create_body_1k();
    let search = br#"{"query":"what does the user like?","filters":{"AND":[{"user_id":"bench"},{"categories":{"in":["preferences"]}}]},"limit":10}"#;
    let update = br#"{"text":"The user prefers tea."}"#;
    let id = "3f0c6f4e-8d0a-4c55-9a4e-0d6f3c5b2a11";
    let get_path = format!("/memories/{id}");
    let history_path = format!("/memories/{id}/history");
    let cases: Vec<(&str, Mem0Request<'_>)> = vec![
        (
            "GET /memories",
            Mem0Request {
                method: "GET",
                path: "/memories",
                query: Some("user_id=bench"),
                content_type: None,
                body: None,
            },
        ),
        (
            "POST /memories (1 KiB rewrite)",
            Mem0Request {
                method: "POST",
                path: "/memories",
                query: None,
                content_type: Some("application/json"),
                body: Some(&body_1k),
            },
        ),
        (
            "POST /search",
            Mem0Request {
                method: "POST",
                path: "/search",
                query: None,
                content_type: Some("application/json"),
                body: Some(search),
            },
        ),
        (
            "GET /memories/{id}",
            Mem0Request {
                method: "GET",
                path: &get_path,
                query: None,
                content_type: None,
                body: None,
            },
        ),
        (
            "PUT /memories/{id}",
            Mem0Request {
                method: "PUT",
                path: &get_path,
                query: None,
                content_type: Some("application/json"),
                body: Some(update),
            },
        ),
        (
            "DELETE /memories/{id}",
            Mem0Request {
                method: "DELETE",
                path: &get_path,
                query: None,
                content_type: None,
                body: None,
            },
        ),
        (
            "GET /memories/{id}/history",
            Mem0Request {
                method: "GET",
                path: &history_path,
                query: None,
                content_type: None,
                body: None,
            },
        ),
        (
            "DELETE /memories (deny)",
            Mem0Request {
                method: "DELETE",
                path: "/memories",
                query: Some("user_id=bench"),
                content_type: None,
                body: None,
            },
        ),
        (
            "POST /reset (deny)",
            Mem0Request {
                method: "POST",
                path: "/reset",
                query: None,
                content_type: None,
                body: None,
            },
        ),
        (
            "GET /memories?user_id=other (deny)",
            Mem0Request {
                method: "GET",
                path: "/memories",
                query: Some("user_id=mallory"),
                content_type: None,
                body: None,
            },
        ),
    ];
    // Sanity: the rewrite case really rewrites, the others decide as expected.
    match policy.decide(&who, "bench", &cases[1].1) {
        Decision::Forward(f) => assert!(f.body.is_some(), "the 1 KiB body must be rewritten"),
        other => panic!("POST /memories: {other:?}"),
    }
    let mut group = c.benchmark_group("mem0_decide");
    for (name, request) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| policy.decide(black_box(&who), black_box("bench"), black_box(request)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("mem0_response");
    let list: Value = json!({"results": (0..20).map(|i| json!({
        "id": format!("00000000-0000-0000-0000-{i:012}"),
        "memory": "The user likes green tea in the morning.",
        "user_id": if i % 5 == 0 { "mallory" } else { "bench" },
        "metadata": {"category": "preferences"},
        "created_at": "2025-01-01T00:00:00Z"
    })).collect::<Vec<_>>()});
    let list_bytes = list.to_string().into_bytes();
    group.bench_function("filter_results 20 items (parse+filter+serialise)", |b| {
        b.iter(|| {
            let parsed: Value = serde_json::from_slice(black_box(&list_bytes)).unwrap();
            let (kept, dropped) = mem0::filter_results("bench", parsed);
            black_box((kept.to_string(), dropped))
        })
    });
    let owned: Value = json!({"results": (0..20).map(|i| json!({
        "id": format!("00000000-0000-0000-0000-{i:012}"),
        "memory": "The user likes green tea in the morning.",
        "user_id": "bench",
        "metadata": {"category": "preferences"},
        "created_at": "2025-01-01T00:00:00Z"
    })).collect::<Vec<_>>()});
    let owned_bytes = owned.to_string().into_bytes();
    assert_eq!(mem0::foreign_items_in("bench", &owned_bytes).unwrap(), 0);
    group.bench_function(
        "foreign_items_in 20 items, all the caller's (what the proxy reads)",
        |b| b.iter(|| mem0::foreign_items_in("bench", black_box(&owned_bytes))),
    );
    let created: Value = json!({"results":[{"id":"3f0c6f4e-8d0a-4c55-9a4e-0d6f3c5b2a11","memory":"x","event":"ADD"}]});
    group.bench_function("owner_ids_from_create_response", |b| {
        b.iter(|| mem0::owner_ids_from_create_response(black_box(&created)))
    });
    let created_bytes = created.to_string().into_bytes();
    assert!(mem0::created_ids_scanned(&created_bytes).is_some());
    group.bench_function("owner_ids_in create answer (what the proxy reads)", |b| {
        b.iter(|| mem0::owner_ids_in(black_box(&created_bytes)))
    });
    // Every create records an owner: at capacity, every record evicts.
    let owners = OwnerCache::new(100_000, Duration::from_secs(24 * 3600));
    let ids: Vec<String> = (0..1_000_000u64).map(|i| format!("{i:032x}")).collect();
    let mut next = ids.iter().cycle();
    for _ in 0..200_000 {
        owners.record(next.next().unwrap().clone(), "bench");
    }
    group.bench_function("owner cache record at capacity (100,000)", |b| {
        b.iter_batched(
            || next.next().unwrap().clone(),
            |id| owners.record(id, "bench"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn bench_mcp(c: &mut Criterion) {
    let policy = McpPolicy::default();
    let who = identity();
    let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_memories","arguments":{"query":"x"}}}"#;
    let call_foreign = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_memories","arguments":{"query":"x","user_id":"mallory"}}}"#;
    let init = br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
    assert!(matches!(
        policy.decide(&who, "bench", call),
        McpDecision::Forward(_)
    ));
    let mut group = c.benchmark_group("mcp_decide");
    group.bench_function("tools/call search_memories", |b| {
        b.iter(|| policy.decide(black_box(&who), black_box("bench"), black_box(call)))
    });
    group.bench_function("tools/call foreign user_id (deny)", |b| {
        b.iter(|| policy.decide(black_box(&who), black_box("bench"), black_box(call_foreign)))
    });
    group.bench_function("initialize", |b| {
        b.iter(|| policy.decide(black_box(&who), black_box("bench"), black_box(init)))
    });
    group.finish();
}

criterion_group!(benches, bench_auth, bench_mem0, bench_mcp);
criterion_main!(benches);
