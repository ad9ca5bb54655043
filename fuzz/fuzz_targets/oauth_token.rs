//! Drives what memgate reads of a bearer token before and around its
//! signature check: the shape dispatch (`auth::oauth::shape`), the JWS
//! header and unverified claims (`auth::oauth::jws`), and the claim rules
//! for JWTs and introspection answers (`auth::oauth::claims`). Panics when a
//! promise is broken, not only on a crash:
//!
//! - a bearer is `Memgate` exactly when it is a well-formed `mcp_` token,
//!   `Jwt` only with three non-empty base64url segments within the length
//!   limit, and `Opaque` only as an RFC 6750 `b64token` within it;
//! - a header read is accepted only with an allowed `alg` and no `crit`;
//! - accepted claims name a configured issuer exactly, an audience of
//!   memgate's, an `exp` not past (with leeway), a valid user id in the user
//!   claim, and are never an ID token's; the permissions are those the
//!   granted scopes map to;
//! - an accepted introspection answer says `"active": true`.
//!
//! Input: the first byte picks the mode; the rest is a token as sent, a
//! header and claims (two lines of JSON text, encoded here), or claims alone
//! under a good header, so that the fuzzer reaches the claim rules cheaply.
#![no_main]

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

#[allow(dead_code)]
#[path = "../../src/token.rs"]
mod token;

#[allow(dead_code)]
#[path = "../../src/identity.rs"]
mod identity;

#[allow(dead_code)]
#[path = "../../src/auth/oauth/denial.rs"]
mod denial;

#[path = "../../src/auth/oauth/shape.rs"]
mod shape;

#[path = "../../src/auth/oauth/jws.rs"]
mod jws;

#[allow(dead_code)]
#[path = "../../src/auth/oauth/claims.rs"]
mod claims;

use claims::{ClaimRules, ScopeMap, check_introspection, check_jwt_claims, is_id_token_or_other};
use shape::{BearerShape, MAX_JWT_LEN, bearer_shape};

const NOW: i64 = 1_800_000_000;
const LEEWAY: i64 = 60;
const ISSUERS: [&str; 2] = ["https://idp.example.com/realms/a", "https://tenant.auth0.com/"];
const AUDIENCES: [&str; 2] = ["https://memgate.example.com/mcp", "https://memgate.example.com:8000"];
const ALLOWED: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

fn rules() -> ClaimRules {
    let scopes: BTreeMap<String, String> = [
        ("mcp:read", "read"),
        ("mcp:write", "read,write"),
        ("mcp:admin", "admin"),
    ]
    .into_iter()
    .map(|(scope, grants)| (scope.to_owned(), grants.to_owned()))
    .collect();
    ClaimRules {
        issuers: ISSUERS.map(String::from).to_vec(),
        audiences: AUDIENCES.map(String::from).to_vec(),
        leeway_secs: LEEWAY,
        user_claim: "sub".into(),
        scopes: ScopeMap::from_config(&scopes).expect("known permissions"),
    }
}

fn segment(text: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = match mode % 3 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 => {
            let mut lines = rest.splitn(2, |&b| b == b'\n');
            let header = lines.next().unwrap_or_default();
            let claims = lines.next().unwrap_or_default();
            format!("{}.{}.c2lnbmF0dXJl", segment(header), segment(claims))
        }
        _ => format!(
            "{}.{}.c2lnbmF0dXJl",
            segment(br#"{"alg":"ES256","kid":"k1","typ":"at+jwt"}"#),
            segment(rest)
        ),
    };
    check_shape(&token);
    if bearer_shape(&token) == BearerShape::Jwt {
        check_jwt(&token);
    }
    if let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(rest) {
        if let Ok(checked) = check_introspection(&rules(), &answer, NOW) {
            assert_eq!(answer.get("active"), Some(&Value::Bool(true)));
            check_accepted(&answer, &checked, false);
        }
    }
});

fn check_shape(bearer: &str) {
    let shape = bearer_shape(bearer);
    assert_eq!(
        shape == BearerShape::Memgate,
        token::is_well_formed(bearer),
        "{bearer:?}"
    );
    let base64url = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    match shape {
        BearerShape::Jwt => {
            let segments: Vec<&str> = bearer.split('.').collect();
            assert!(bearer.len() <= MAX_JWT_LEN);
            assert_eq!(segments.len(), 3);
            assert!(segments.iter().all(|s| base64url(s)));
        }
        BearerShape::Opaque => {
            assert!(bearer.len() <= MAX_JWT_LEN);
            let body = bearer.trim_end_matches('=');
            assert!(!body.is_empty());
            assert!(body.bytes().all(|b| b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')));
        }
        BearerShape::Memgate | BearerShape::Malformed => {}
    }
}

fn check_jwt(jwt: &str) {
    let Ok((header, claims)) = jws::read_unverified(jwt, &ALLOWED) else {
        return;
    };
    assert!(ALLOWED.contains(&header.alg));
    let raw_header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(jwt.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(raw_header.get("crit").is_none(), "a crit header was read");
    assert_eq!(
        raw_header.get("kid").and_then(Value::as_str),
        header.kid.as_deref()
    );
    if let Ok(checked) = check_jwt_claims(&rules(), header.typ.as_deref(), &claims, NOW) {
        assert!(!is_id_token_or_other(header.typ.as_deref(), &claims));
        check_accepted(&claims, &checked, true);
    }
}

/// What every accepted set of claims must hold.
fn check_accepted(claims: &Map<String, Value>, checked: &claims::CheckedClaims, jwt: bool) {
    match claims.get("iss").and_then(Value::as_str) {
        Some(iss) => assert!(ISSUERS.contains(&iss), "issuer {iss:?} accepted"),
        None => assert!(!jwt, "a JWT without iss accepted"),
    }
    let audiences: Vec<&str> = match &claims["aud"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        other => panic!("aud {other:?} accepted"),
    };
    assert!(audiences.iter().any(|aud| AUDIENCES.contains(aud)));
    match checked.expires_at {
        Some(exp) => assert!(exp + LEEWAY > NOW, "expired token accepted"),
        None => assert!(!jwt, "a JWT without exp accepted"),
    }
    assert_eq!(
        claims.get("sub").and_then(Value::as_str),
        Some(checked.user_id.as_str())
    );
    assert!(identity::user_id_problem(&checked.user_id).is_none());
    let granted = rules()
        .scopes
        .permissions(checked.scopes.iter().map(String::as_str));
    assert_eq!(granted, checked.permissions);
}
