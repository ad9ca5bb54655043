//! The claims of an access token (a verified JWT's payload, or an RFC 7662
//! introspection answer) against memgate's rules. Pure: the caller supplies
//! the clock.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::denial::InvalidToken;
use crate::identity::{Permission, Permissions, user_id_problem};

/// Scope → the permissions it grants (`[oauth.scopes]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeMap(BTreeMap<String, Permissions>);

impl ScopeMap {
    /// From `[oauth.scopes]`; `None` when a value names no permissions (the
    /// config's validation refuses that before this is built).
    pub fn from_config(scopes: &BTreeMap<String, String>) -> Option<ScopeMap> {
        scopes
            .iter()
            .map(|(scope, names)| Permissions::parse(names).ok().map(|p| (scope.clone(), p)))
            .collect::<Option<_>>()
            .map(ScopeMap)
    }

    /// The permissions the granted `scopes` add up to; scopes memgate does
    /// not know grant nothing.
    pub fn permissions<'a>(&self, scopes: impl IntoIterator<Item = &'a str>) -> Permissions {
        let mut granted = Permissions::default();
        for grants in scopes.into_iter().filter_map(|scope| self.0.get(scope)) {
            granted.read |= grants.read;
            granted.write |= grants.write;
            granted.admin |= grants.admin;
        }
        granted
    }

    /// The one scope to ask for when a request needs `needed` (the `scope`
    /// of an `insufficient_scope` challenge): the first scope that allows it
    /// without admin, else the first that grants admin, which implies
    /// every other permission.
    pub fn scope_for(&self, needed: Permission) -> Option<&str> {
        let first = |fits: &dyn Fn(Permissions) -> bool| {
            self.0
                .iter()
                .find(|(_, p)| fits(**p))
                .map(|(s, _)| s.as_str())
        };
        first(&|p| !p.admin && p.allows(needed)).or_else(|| first(&|p| p.admin))
    }

    /// The scopes offered in `scopes_supported`: every scope memgate knows
    /// except those granting admin. MCP clients ask for all they are offered,
    /// and an authorization server that lets users consent to their own
    /// scopes would make every user an admin; admin is asked for only on the
    /// step-up challenge of a request that needs it.
    pub fn offered(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(|(_, grants)| !grants.admin)
            .map(|(scope, _)| scope.as_str())
    }

    /// The scopes a client asks for when memgate cannot tell what its
    /// request needs (a 401 on the MCP listener, whose need is in a message
    /// read only after authentication): one granting read and one granting
    /// write, neither granting admin. Empty when no such scope exists.
    pub fn session_scopes(&self) -> Vec<&str> {
        let mut scopes = Vec::new();
        for needed in [Permission::Read, Permission::Write] {
            let fitting = self
                .0
                .iter()
                .find(|(_, grants)| !grants.admin && grants.allows(needed))
                .map(|(scope, _)| scope.as_str());
            if let Some(scope) = fitting.filter(|scope| !scopes.contains(scope)) {
                scopes.push(scope);
            }
        }
        scopes
    }
}

/// What a token's claims must satisfy.
#[derive(Clone, Debug)]
pub struct ClaimRules {
    /// Exact `iss` values accepted.
    pub issuers: Vec<String>,
    /// `aud` must contain one of these.
    pub audiences: Vec<String>,
    pub leeway_secs: i64,
    pub user_claim: String,
    pub scopes: ScopeMap,
}

impl ClaimRules {
    /// The configured issuer a token claims, before its signature is
    /// checked: it picks the key set, so a token can only ever be checked
    /// with the keys of the issuer it names.
    pub fn issuer_of<'a>(&'a self, claims: &Map<String, Value>) -> Result<&'a str, InvalidToken> {
        let iss = claims.get("iss").and_then(Value::as_str);
        self.issuers
            .iter()
            .find(|known| Some(known.as_str()) == iss)
            .map(String::as_str)
            .ok_or(InvalidToken::UnknownIssuer)
    }
}

/// An access token's claims, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedClaims {
    pub user_id: String,
    /// The granted scopes, as the token lists them.
    pub scopes: Vec<String>,
    pub permissions: Permissions,
    /// `exp`, seconds since the epoch; `None` only for an introspection
    /// answer without one.
    pub expires_at: Option<i64>,
}

/// A NumericDate (RFC 7519 §2): whole or fractional seconds since the epoch.
/// A value that is not a number refuses the token.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, InvalidToken> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => value
            .as_i64()
            .or_else(|| {
                value
                    .as_f64()
                    .filter(|f| f.is_finite() && f.abs() < 1e15)
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or(InvalidToken::Malformed),
    }
}

/// `exp`, `nbf` and `iat` against `now`, each forgiving `leeway` seconds.
fn check_times(
    claims: &Map<String, Value>,
    now: i64,
    leeway: i64,
    exp_required: bool,
) -> Result<Option<i64>, InvalidToken> {
    let exp = numeric_date(claims, "exp")?;
    match exp {
        None if exp_required => return Err(InvalidToken::MissingExpiry),
        Some(exp) if exp.saturating_add(leeway) <= now => return Err(InvalidToken::Expired),
        _ => {}
    }
    if numeric_date(claims, "nbf")?.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(InvalidToken::NotYetValid);
    }
    if numeric_date(claims, "iat")?.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(InvalidToken::IssuedInFuture);
    }
    Ok(exp)
}

/// `aud` (a string or a list of strings) names one of `audiences`.
fn check_audience(claims: &Map<String, Value>, audiences: &[String]) -> Result<(), InvalidToken> {
    let named: Vec<&str> = match claims.get("aud") {
        None | Some(Value::Null) => return Err(InvalidToken::MissingAudience),
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        Some(_) => return Err(InvalidToken::Malformed),
    };
    if named.is_empty() {
        return Err(InvalidToken::MissingAudience);
    }
    if named
        .iter()
        .any(|aud| audiences.iter().any(|ours| ours == aud))
    {
        Ok(())
    } else {
        Err(InvalidToken::WrongAudience)
    }
}

/// The claims only an OpenID Connect ID token carries (OIDC Core §2,
/// §3.1.3.6, §3.3.2.11); no access token profile defines them.
const ID_TOKEN_CLAIMS: &[&str] = &["nonce", "at_hash", "c_hash", "s_hash"];

/// Whether a JWT is an ID token rather than an access token. A header
/// `typ` of `at+jwt` (RFC 9068 §2.1) declares an access token. Any other
/// `typ` than `JWT` declares some other kind of token (logout, DPoP proof, …),
/// and a token with no `typ` or `JWT` is an ID token when it carries an
/// ID-token-only claim or Keycloak's `"typ": "ID"` claim.
pub fn is_id_token_or_other(typ: Option<&str>, claims: &Map<String, Value>) -> bool {
    let typ = typ.map(|t| {
        let t = t.to_ascii_lowercase();
        t.strip_prefix("application/")
            .map(str::to_string)
            .unwrap_or(t)
    });
    match typ.as_deref() {
        Some("at+jwt") => false,
        None | Some("jwt") => {
            ID_TOKEN_CLAIMS.iter().any(|c| claims.contains_key(*c))
                || claims.get("typ").and_then(Value::as_str) == Some("ID")
        }
        Some(_) => true,
    }
}

/// The granted scopes: `scope` (a space-separated string, RFC 9068 §2.2.3,
/// RFC 7662) or, without it, `scp` (a list or a string, as Entra ID and
/// Okta send). A `scope` that is not a string refuses the token.
fn granted_scopes(claims: &Map<String, Value>) -> Result<Vec<String>, InvalidToken> {
    let split = |s: &str| {
        s.split(' ')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) => Ok(split(s)),
        (Some(_), _) => Err(InvalidToken::Malformed),
        (None, Some(Value::String(s))) => Ok(split(s)),
        (None, Some(Value::Array(list))) => list
            .iter()
            .map(|v| v.as_str().map(String::from).ok_or(InvalidToken::Malformed))
            .collect(),
        (None, Some(_)) => Err(InvalidToken::Malformed),
        (None, None) => Ok(Vec::new()),
    }
}

/// The user the token names in the configured claim.
fn user_of(claims: &Map<String, Value>, user_claim: &str) -> Result<String, InvalidToken> {
    let user = claims
        .get(user_claim)
        .and_then(Value::as_str)
        .ok_or(InvalidToken::UserClaim)?;
    if user_id_problem(user).is_some() {
        return Err(InvalidToken::UserClaim);
    }
    Ok(user.to_string())
}

/// The payload of a JWT whose signature was verified with a key of the
/// issuer `issuer_of` picked; `typ` is its header's `typ`.
pub fn check_jwt_claims(
    rules: &ClaimRules,
    typ: Option<&str>,
    claims: &Map<String, Value>,
    now: i64,
) -> Result<CheckedClaims, InvalidToken> {
    rules.issuer_of(claims)?;
    check_audience(claims, &rules.audiences)?;
    let expires_at = check_times(claims, now, rules.leeway_secs, true)?;
    if is_id_token_or_other(typ, claims) {
        return Err(InvalidToken::IdToken);
    }
    let user_id = user_of(claims, &rules.user_claim)?;
    let scopes = granted_scopes(claims)?;
    Ok(CheckedClaims {
        user_id,
        permissions: rules.scopes.permissions(scopes.iter().map(String::as_str)),
        scopes,
        expires_at,
    })
}

/// An RFC 7662 introspection answer. The answer comes from the issuer
/// itself, so `iss` may be absent; when present it must be a configured
/// issuer. `aud` is required as for JWTs.
pub fn check_introspection(
    rules: &ClaimRules,
    answer: &Map<String, Value>,
    now: i64,
) -> Result<CheckedClaims, InvalidToken> {
    if answer.get("active") != Some(&Value::Bool(true)) {
        return Err(InvalidToken::Inactive);
    }
    if answer.contains_key("iss") {
        rules.issuer_of(answer)?;
    }
    check_audience(answer, &rules.audiences)?;
    let expires_at = check_times(answer, now, rules.leeway_secs, false)?;
    let user_id = user_of(answer, &rules.user_claim)?;
    let scopes = granted_scopes(answer)?;
    Ok(CheckedClaims {
        user_id,
        permissions: rules.scopes.permissions(scopes.iter().map(String::as_str)),
        scopes,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::OAuthConfig;

    const NOW: i64 = 1_800_000_000;
    const MCP: &str = "https://memgate.example.com/mcp";

    fn rules() -> ClaimRules {
        ClaimRules::from_config(
            &OAuthConfig {
                issuer: crate::config::OneOrMany::Many(vec![
                    "https://idp.example.com/realms/main".into(),
                    "https://tenant.auth0.com/".into(),
                ]),
                ..OAuthConfig::default()
            },
            vec![MCP.into(), "https://memgate.example.com:8000".into()],
        )
        .unwrap()
    }

    fn good() -> Map<String, Value> {
        json!({
            "iss": "https://idp.example.com/realms/main",
            "aud": ["account", MCP],
            "sub": "alice",
            "exp": NOW + 300,
            "iat": NOW - 10,
            "nbf": NOW - 10,
            "scope": "openid mcp:read mcp:write",
        })
        .as_object()
        .unwrap()
        .clone()
    }

    fn with(changes: Value) -> Map<String, Value> {
        let mut claims = good();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                claims.remove(k);
            } else {
                claims.insert(k.clone(), v.clone());
            }
        }
        claims
    }

    #[test]
    fn a_good_access_token_names_its_user_scopes_and_expiry() {
        let checked = check_jwt_claims(&rules(), Some("at+jwt"), &good(), NOW).unwrap();
        assert_eq!(checked.user_id, "alice");
        assert_eq!(checked.scopes, ["openid", "mcp:read", "mcp:write"]);
        assert_eq!(checked.permissions, Permissions::READ_WRITE);
        assert_eq!(checked.expires_at, Some(NOW + 300));
        // A single string aud, the second issuer (exact, trailing slash and all).
        let auth0 = with(json!({"iss": "https://tenant.auth0.com/", "aud": MCP}));
        assert!(check_jwt_claims(&rules(), None, &auth0, NOW).is_ok());
    }

    #[test]
    fn issuer_must_be_exactly_a_configured_one() {
        for iss in [
            json!("https://idp.example.com/realms/main/"),
            json!("https://idp.example.com/realms/other"),
            json!("https://tenant.auth0.com"),
            json!(null),
            json!(7),
        ] {
            let claims = with(json!({ "iss": iss }));
            assert_eq!(
                check_jwt_claims(&rules(), None, &claims, NOW),
                Err(InvalidToken::UnknownIssuer),
                "{iss}"
            );
        }
    }

    #[test]
    fn audience_must_name_memgate() {
        for (aud, why) in [
            (json!(null), InvalidToken::MissingAudience),
            (json!([]), InvalidToken::MissingAudience),
            (
                json!("https://memgate.example.com/mcp/"),
                InvalidToken::WrongAudience,
            ),
            (json!(["account"]), InvalidToken::WrongAudience),
            (json!({"a": MCP}), InvalidToken::Malformed),
        ] {
            let claims = with(json!({ "aud": aud }));
            assert_eq!(
                check_jwt_claims(&rules(), None, &claims, NOW),
                Err(why),
                "{aud}"
            );
        }
    }

    #[test]
    fn times_are_checked_with_leeway() {
        let leeway = rules().leeway_secs;
        let cases = [
            (json!({"exp": null}), Err(InvalidToken::MissingExpiry)),
            (json!({"exp": "soon"}), Err(InvalidToken::Malformed)),
            (json!({"nbf": "now"}), Err(InvalidToken::Malformed)),
            (json!({"exp": NOW - leeway}), Err(InvalidToken::Expired)),
            (json!({"exp": NOW - leeway + 1}), Ok(())),
            (json!({"exp": (NOW + 60) as f64 + 0.5}), Ok(())),
            (
                json!({"nbf": NOW + leeway + 1}),
                Err(InvalidToken::NotYetValid),
            ),
            (json!({"nbf": NOW + leeway}), Ok(())),
            (
                json!({"iat": NOW + leeway + 1}),
                Err(InvalidToken::IssuedInFuture),
            ),
            (json!({"iat": null, "nbf": null}), Ok(())),
        ];
        for (change, want) in cases {
            let got = check_jwt_claims(&rules(), None, &with(change.clone()), NOW).map(drop);
            assert_eq!(got, want, "{change}");
        }
    }

    #[test]
    fn id_tokens_and_other_token_types_are_refused() {
        for (typ, change) in [
            (None, json!({"nonce": "n-0S6_WzA2Mj"})),
            (Some("JWT"), json!({"at_hash": "77QmUPtjPfzWtF2AnpK9RQ"})),
            (None, json!({"typ": "ID"})),
            (Some("logout+jwt"), json!({})),
            (Some("dpop+jwt"), json!({})),
        ] {
            assert_eq!(
                check_jwt_claims(&rules(), typ, &with(change.clone()), NOW),
                Err(InvalidToken::IdToken),
                "{typ:?} {change}"
            );
        }
        // RFC 9068 access tokens say so in their header, whatever they carry.
        for typ in ["at+jwt", "application/at+jwt", "AT+JWT"] {
            let claims = with(json!({"nonce": "n"}));
            assert!(check_jwt_claims(&rules(), Some(typ), &claims, NOW).is_ok());
        }
        // Keycloak access tokens: typ JWT and a "Bearer" typ claim.
        let keycloak = with(json!({"typ": "Bearer"}));
        assert!(check_jwt_claims(&rules(), Some("JWT"), &keycloak, NOW).is_ok());
    }

    #[test]
    fn user_claim_must_be_a_valid_user_id() {
        for sub in [json!(null), json!(""), json!(" alice"), json!(42)] {
            let claims = with(json!({ "sub": sub }));
            assert_eq!(
                check_jwt_claims(&rules(), None, &claims, NOW),
                Err(InvalidToken::UserClaim),
                "{sub}"
            );
        }
        let mut by_email = rules();
        by_email.user_claim = "email".into();
        assert_eq!(
            check_jwt_claims(&by_email, None, &good(), NOW),
            Err(InvalidToken::UserClaim)
        );
        let claims = with(json!({"email": "alice@example.com"}));
        assert_eq!(
            check_jwt_claims(&by_email, None, &claims, NOW)
                .unwrap()
                .user_id,
            "alice@example.com"
        );
    }

    #[test]
    fn scopes_map_to_permissions() {
        let r = rules();
        let perms = |scopes: Value| {
            let mut claims = with(json!({"scope": null}));
            claims.extend(scopes.as_object().unwrap().clone());
            check_jwt_claims(&r, None, &claims, NOW).map(|c| c.permissions)
        };
        assert_eq!(perms(json!({})), Ok(Permissions::default()));
        assert_eq!(
            perms(json!({"scope": "mcp:read"})),
            Ok(Permissions {
                read: true,
                ..Permissions::default()
            })
        );
        let admin = perms(json!({"scp": ["mcp:admin", "other"]})).unwrap();
        assert!(admin.allows(Permission::Write) && admin.allows(Permission::Admin));
        assert_eq!(
            perms(json!({"scope": ["mcp:read"]})),
            Err(InvalidToken::Malformed)
        );
        assert_eq!(
            perms(json!({"scp": "mcp:write"})),
            Ok(Permissions {
                write: true,
                ..Permissions::default()
            })
        );
        // `scope` wins over `scp`.
        let both = perms(json!({"scope": "mcp:read", "scp": ["mcp:admin"]})).unwrap();
        assert!(!both.allows(Permission::Admin));
        assert_eq!(r.scopes.scope_for(Permission::Write), Some("mcp:write"));
        assert_eq!(r.scopes.scope_for(Permission::Admin), Some("mcp:admin"));
        let only_admin = ScopeMap::from_config(
            &[("all".to_string(), "admin".to_string())]
                .into_iter()
                .collect(),
        )
        .unwrap();
        assert_eq!(only_admin.scope_for(Permission::Read), Some("all"));
        let none = ScopeMap::from_config(&BTreeMap::new()).unwrap();
        assert_eq!(none.scope_for(Permission::Read), None);
    }

    #[test]
    fn introspection_answers_are_checked_like_tokens() {
        let r = rules();
        let answer = |extra: Value| {
            let mut a = json!({"active": true, "sub": "bob", "aud": MCP, "scope": "mcp:read", "exp": NOW + 60});
            for (k, v) in extra.as_object().unwrap() {
                if v.is_null() {
                    a.as_object_mut().unwrap().remove(k);
                } else {
                    a[k] = v.clone();
                }
            }
            check_introspection(&r, a.as_object().unwrap(), NOW)
        };
        assert_eq!(answer(json!({})).unwrap().user_id, "bob");
        assert_eq!(answer(json!({"exp": null})).unwrap().expires_at, None);
        assert_eq!(
            answer(json!({"active": false})),
            Err(InvalidToken::Inactive)
        );
        assert_eq!(
            answer(json!({"active": "true"})),
            Err(InvalidToken::Inactive)
        );
        assert_eq!(answer(json!({"active": null})), Err(InvalidToken::Inactive));
        assert_eq!(
            answer(json!({"iss": "https://evil.example.com"})),
            Err(InvalidToken::UnknownIssuer)
        );
        assert_eq!(
            answer(json!({"aud": null})),
            Err(InvalidToken::MissingAudience)
        );
        assert_eq!(
            answer(json!({"exp": NOW - 3600})),
            Err(InvalidToken::Expired)
        );
        assert_eq!(answer(json!({"sub": null})), Err(InvalidToken::UserClaim));
    }

    #[test]
    fn scopes_granting_admin_are_neither_offered_nor_asked_for_without_need() {
        let scopes = rules().scopes;
        assert_eq!(
            scopes.offered().collect::<Vec<_>>(),
            ["mcp:read", "mcp:write"]
        );
        assert_eq!(scopes.session_scopes(), ["mcp:read", "mcp:write"]);
        assert_eq!(scopes.scope_for(Permission::Admin), Some("mcp:admin"));
        let map = |pairs: &[(&str, &str)]| {
            let table: BTreeMap<String, String> = pairs
                .iter()
                .map(|(scope, grants)| ((*scope).to_owned(), (*grants).to_owned()))
                .collect();
            ScopeMap::from_config(&table).unwrap()
        };
        let only_admin = map(&[("all", "admin")]);
        assert_eq!(only_admin.offered().count(), 0);
        assert!(only_admin.session_scopes().is_empty());
        let one = map(&[("rw", "read,write"), ("root", "admin,read")]);
        assert_eq!(one.offered().collect::<Vec<_>>(), ["rw"]);
        assert_eq!(one.session_scopes(), ["rw"]);
    }
}
