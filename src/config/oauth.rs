//! `[oauth]`: bearer JWTs (and optionally opaque access tokens, by RFC 7662
//! introspection) from OAuth authorization servers, beside memgate's own
//! tokens (docs/design.md §2). Off by default.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{ConfigError, HeaderSource, invalid};
use crate::identity::Permissions;

/// The signature algorithms memgate can verify: asymmetric only, so a key
/// published in a JWKS can never double as an HMAC secret.
pub const SUPPORTED_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// The most clock skew `leeway_secs` may forgive: beyond it an expired
/// token stays usable for longer than most authorization servers issue them.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// The longest `jwks_min_refresh_secs`: a rotated key must be picked up
/// within a day at the latest.
pub const MAX_JWKS_REFRESH_SECS: u64 = 86_400;

/// A key that takes one string or a list of strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values; `""` (the default of such keys) is none.
    pub fn values(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(one) if one.is_empty() => Vec::new(),
            OneOrMany::One(one) => vec![one.as_str()],
            OneOrMany::Many(many) => many.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// Accept OAuth access tokens at all.
    pub enabled: bool,
    /// The authorization server(s) whose tokens are accepted, exactly as
    /// their tokens' `iss` spells them.
    pub issuer: OneOrMany,
    /// What a token's `aud` must name (one of them); `""` = memgate's MCP
    /// endpoint URL and the mem0 listener's origin, from the listeners.
    pub audience: OneOrMany,
    /// The issuer's key set; `""` = from its discovery document.
    pub jwks_uri: String,
    /// The claim that names the user (`sub`, `email`, `preferred_username`, …).
    pub user_claim: String,
    /// Scope → the memgate permission it grants.
    pub scopes: BTreeMap<String, String>,
    pub allowed_algs: Vec<String>,
    /// Clock skew forgiven on `exp`, `nbf` and `iat`.
    pub leeway_secs: u64,
    /// The key set is fetched again for an unknown `kid` at most this often.
    pub jwks_min_refresh_secs: u64,
    /// RFC 7662 introspection of opaque (non-JWT) access tokens; `url = ""` = off.
    pub introspection: IntrospectionConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    pub url: String,
    pub client_id: String,
    /// A string, `{ env = "NAME" }` or `{ file = "PATH" }`, read at start.
    pub client_secret: HeaderSource,
    /// An answer is reused at most this long (never past the token's `exp`).
    pub cache_secs: u64,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
            enabled: false,
            issuer: OneOrMany::One(String::new()),
            audience: OneOrMany::One(String::new()),
            jwks_uri: String::new(),
            user_claim: "sub".into(),
            scopes: [
                ("mcp:read", "read"),
                ("mcp:write", "write"),
                ("mcp:admin", "admin"),
            ]
            .into_iter()
            .map(|(scope, permission)| (scope.to_string(), permission.to_string()))
            .collect(),
            allowed_algs: ["RS256", "PS256", "ES256", "EdDSA"]
                .into_iter()
                .map(String::from)
                .collect(),
            leeway_secs: 60,
            jwks_min_refresh_secs: 60,
            introspection: IntrospectionConfig {
                url: String::new(),
                client_id: String::new(),
                client_secret: HeaderSource::Literal(String::new()),
                cache_secs: 60,
            },
        }
    }
}

/// Whether `host` is this machine: the only place a plain-http
/// authorization server cannot be impersonated on the way.
fn is_loopback(host: url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => IpAddr::V4(ip).is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(ip).is_loopback(),
    }
}

/// An authorization server URL: https, or http on a loopback host; no
/// credentials or fragment.
pub fn check_authorization_server_url(key: &str, text: &str) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(text).map_err(|e| invalid(key, format!("{text:?}: {e}")))?;
    let host = url
        .host()
        .ok_or_else(|| invalid(key, format!("{text:?} has no host")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(host) => {}
        "http" => {
            return Err(invalid(
                key,
                format!(
                    "{text:?}: http:// is allowed only for a loopback host (tokens and keys \
                     would travel unprotected); use https://"
                ),
            ));
        }
        other => return Err(invalid(key, format!("scheme {other:?} is not https"))),
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(invalid(
            key,
            format!("{text:?} must not carry credentials or a #fragment"),
        ));
    }
    Ok(url)
}

/// A scope as RFC 6749 §3.3 spells one: printable ASCII without space, `"` or `\`.
fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

impl OAuthConfig {
    /// Checks every key, whether or not OAuth is enabled, so a wrong value
    /// is found before the day it is switched on.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let issuers = self.issuer.values();
        if matches!(&self.issuer, OneOrMany::Many(list) if list.is_empty()) {
            return Err(invalid(
                "oauth.issuer",
                "is an empty list; name at least one issuer",
            ));
        }
        if self.enabled && issuers.is_empty() {
            return Err(invalid(
                "oauth.issuer",
                "names no issuer; give the authorization server's issuer URL \
                 (e.g. https://keycloak.example.com/realms/main), or a list of them",
            ));
        }
        for (i, issuer) in issuers.iter().enumerate() {
            let url = check_authorization_server_url("oauth.issuer", issuer)?;
            if url.query().is_some() {
                return Err(invalid(
                    "oauth.issuer",
                    format!("{issuer:?}: an issuer has no query (RFC 8414 §2)"),
                ));
            }
            if issuers[..i].contains(issuer) {
                return Err(invalid(
                    "oauth.issuer",
                    format!("{issuer:?} is listed twice"),
                ));
            }
        }
        if matches!(&self.audience, OneOrMany::Many(list) if list.is_empty()) {
            return Err(invalid(
                "oauth.audience",
                "is an empty list; set it to \"\" to derive it from the listeners, or name \
                 the resource URL(s) clients use",
            ));
        }
        for audience in self.audience.values() {
            if audience.is_empty() || audience.chars().any(|c| c.is_control() || c == ' ') {
                return Err(invalid(
                    "oauth.audience",
                    format!("{audience:?} is not a resource identifier"),
                ));
            }
        }
        if !self.jwks_uri.is_empty() {
            check_authorization_server_url("oauth.jwks_uri", &self.jwks_uri)?;
            if issuers.len() > 1 {
                return Err(invalid(
                    "oauth.jwks_uri",
                    "cannot serve several issuers (each has its own keys); remove it so each \
                     issuer's keys are discovered",
                ));
            }
        }
        if self.user_claim.is_empty() {
            return Err(invalid(
                "oauth.user_claim",
                "is empty; name the claim that holds the user id, e.g. \"sub\"",
            ));
        }
        for (scope, permission) in &self.scopes {
            let key = format!("oauth.scopes.{scope}");
            if !is_scope_token(scope) {
                return Err(invalid(
                    key,
                    "is not a valid scope (printable ASCII, no spaces, quotes or backslashes)",
                ));
            }
            if let Err(why) = Permissions::parse(permission) {
                return Err(invalid(key, why));
            }
        }
        self.validate_algs()?;
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(invalid(
                "oauth.leeway_secs",
                format!(
                    "must be at most {MAX_LEEWAY_SECS} (clock skew, not a grace period); \
                     fix the clocks or ask the authorization server for longer-lived tokens"
                ),
            ));
        }
        if self.jwks_min_refresh_secs == 0 || self.jwks_min_refresh_secs > MAX_JWKS_REFRESH_SECS {
            return Err(invalid(
                "oauth.jwks_min_refresh_secs",
                format!(
                    "must be between 1 and {MAX_JWKS_REFRESH_SECS} (0 would let a flood of \
                     unknown key ids hammer the authorization server)"
                ),
            ));
        }
        self.introspection.validate()
    }

    fn validate_algs(&self) -> Result<(), ConfigError> {
        if self.allowed_algs.is_empty() {
            return Err(invalid(
                "oauth.allowed_algs",
                "is empty; list the algorithms the issuer signs with, e.g. [\"RS256\", \"ES256\"]",
            ));
        }
        for (i, alg) in self.allowed_algs.iter().enumerate() {
            if !SUPPORTED_ALGS.contains(&alg.as_str()) {
                let why = if alg.eq_ignore_ascii_case("none") {
                    "an unsigned token proves nothing".to_string()
                } else if alg.to_ascii_uppercase().starts_with("HS") {
                    "HMAC would make the issuer's public key a shared secret".to_string()
                } else {
                    "unknown".to_string()
                };
                return Err(invalid(
                    "oauth.allowed_algs",
                    format!(
                        "{alg:?} is not allowed ({why}); choose from {}",
                        SUPPORTED_ALGS.join(", ")
                    ),
                ));
            }
            if self.allowed_algs[..i].contains(alg) {
                return Err(invalid(
                    "oauth.allowed_algs",
                    format!("{alg:?} is listed twice"),
                ));
            }
        }
        Ok(())
    }
}

impl IntrospectionConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.cache_secs == 0 {
            return Err(invalid(
                "oauth.introspection.cache_secs",
                "must be at least 1",
            ));
        }
        if !self.enabled() {
            return Ok(());
        }
        check_authorization_server_url("oauth.introspection.url", &self.url)?;
        if self.client_id.is_empty() || self.client_id.chars().any(char::is_control) {
            return Err(invalid(
                "oauth.introspection.client_id",
                "must name memgate's client at the authorization server",
            ));
        }
        match &self.client_secret {
            HeaderSource::Literal(secret) if secret.is_empty() => Err(invalid(
                "oauth.introspection.client_secret",
                "is empty; give it as { env = \"NAME\" } or { file = \"PATH\" }",
            )),
            HeaderSource::Env { env } if env.is_empty() => Err(invalid(
                "oauth.introspection.client_secret",
                "env is empty; name an environment variable",
            )),
            HeaderSource::File { file } if file.is_empty() => Err(invalid(
                "oauth.introspection.client_secret",
                "file is empty; name a file",
            )),
            _ => Ok(()),
        }
    }

    /// The client secret, read from where the config says (secrets stay out
    /// of the config file that way); errors never repeat the value.
    pub fn read_client_secret(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<String, ConfigError> {
        self.client_secret
            .read("oauth.introspection.client_secret", env)
            .map(|(value, _)| value)
    }
}

/// The resource identifiers memgate answers to (RFC 8707 / RFC 9728).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthResources {
    /// What a token's `aud` must name one of.
    pub audiences: Vec<String>,
    /// The MCP listener's resource: its Streamable HTTP endpoint URL.
    pub mcp: String,
    /// The mem0 listener's resource: its origin.
    pub mem0: String,
}

impl super::Config {
    /// Where clients reach a listener, as a URL origin memgate can state
    /// without knowing its public name: only a specific listen address.
    fn listener_origin(&self, addr: std::net::SocketAddr) -> Option<String> {
        if addr.ip().is_unspecified() {
            return None;
        }
        let scheme = if self.tls.cert.is_empty() {
            "http"
        } else {
            "https"
        };
        Some(format!("{scheme}://{addr}"))
    }

    /// Each listener's resource and the accepted audiences. With
    /// `oauth.audience` set, a listener's resource is the first entry that
    /// names it (the MCP endpoint URL; the mem0 listener's origin), else the
    /// one its listen address gives.
    pub fn oauth_resources(&self) -> Result<OAuthResources, ConfigError> {
        let explicit = self.oauth.audience.values();
        let entry_with_path = |wanted: &dyn Fn(&str) -> bool| {
            explicit.iter().find(|entry| {
                url::Url::parse(entry).is_ok_and(|url| {
                    matches!(url.scheme(), "http" | "https")
                        && url.host().is_some()
                        && url.query().is_none()
                        && url.fragment().is_none()
                        && wanted(url.path())
                })
            })
        };
        let mcp_path = self.mcp.path.trim_end_matches('/');
        let explicit_mcp = entry_with_path(&|path| path.trim_end_matches('/') == mcp_path);
        let explicit_mem0 = entry_with_path(&|path| path == "/" || path.is_empty());
        let derived = |section: &str, addr, suffix: &str| {
            self.listener_origin(addr)
                .map(|origin| format!("{origin}{suffix}"))
                .ok_or_else(|| {
                    invalid(
                        "oauth.audience",
                        format!(
                            "{section}.listen {addr} does not say how clients reach memgate; \
                             name the URL they use (e.g. https://memgate.example.com{suffix}) \
                             in oauth.audience"
                        ),
                    )
                })
        };
        let mcp = match explicit_mcp {
            Some(entry) => entry.to_string(),
            None => derived("mcp", self.mcp.listen, mcp_path)?,
        };
        let mem0 = match explicit_mem0 {
            Some(entry) => entry.to_string(),
            None => derived("mem0", self.mem0.listen, "")?,
        };
        let audiences = if explicit.is_empty() {
            vec![mcp.clone(), mem0.clone()]
        } else {
            explicit.iter().map(|a| a.to_string()).collect()
        };
        Ok(OAuthResources {
            audiences,
            mcp,
            mem0,
        })
    }

    /// `[oauth]` on its own, then (when enabled) what it derives from the
    /// listeners.
    pub(super) fn validate_oauth(&self) -> Result<(), ConfigError> {
        self.oauth.validate()?;
        if self.oauth.enabled {
            self.oauth_resources()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, from_parts};

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_parts(Some(text), "config.toml", &env).map_err(|e| e.to_string())
    }

    const ON: &str = "[oauth]\nenabled = true\nissuer = \"https://idp.example.com/realms/main\"\n";

    #[test]
    fn off_by_default_and_on_with_an_issuer() {
        let c = from_parts(None, "none", &[]).unwrap();
        assert!(!c.oauth.enabled);
        let c = load(ON, &[]).unwrap();
        assert_eq!(
            c.oauth.issuer.values(),
            ["https://idp.example.com/realms/main"]
        );
        let r = c.oauth_resources().unwrap();
        assert_eq!(r.mcp, "http://127.0.0.1:8080/mcp");
        assert_eq!(r.mem0, "http://127.0.0.1:8000");
        assert_eq!(r.audiences, [r.mcp.clone(), r.mem0.clone()]);
    }

    #[test]
    fn the_environment_sets_issuers_and_audiences() {
        let c = load(
            "[oauth]\nenabled = true\n",
            &[
                ("MEMGATE_OAUTH__ISSUER", "http://127.0.0.1:9000"),
                ("MEMGATE_OAUTH__AUDIENCE", "https://memgate.example.com/mcp"),
                ("MEMGATE_OAUTH__SCOPES", "{ all = \"admin\" }"),
            ],
        )
        .unwrap();
        assert_eq!(c.oauth.issuer.values(), ["http://127.0.0.1:9000"]);
        let r = c.oauth_resources().unwrap();
        assert_eq!(r.mcp, "https://memgate.example.com/mcp");
        assert_eq!(r.audiences, ["https://memgate.example.com/mcp"]);
        assert_eq!(c.oauth.scopes.len(), 1);
    }

    #[test]
    fn a_files_scope_table_replaces_the_default_one() {
        let c = load(
            &format!("{ON}[oauth.scopes]\n\"memgate:use\" = \"read,write\"\n"),
            &[],
        )
        .unwrap();
        let scopes: Vec<&str> = c.oauth.scopes.keys().map(String::as_str).collect();
        assert_eq!(scopes, ["memgate:use"], "no default scope lingers");
    }

    #[test]
    fn explicit_audiences_name_each_listeners_resource() {
        let c = load(
            &format!(
                "{ON}audience = [\"api://memgate\", \"https://m.example.com:8000\", \
                 \"https://m.example.com/mcp\"]\n[mcp]\nlisten = \"0.0.0.0:8080\"\n\
                 [mem0]\nlisten = \"0.0.0.0:8000\"\n"
            ),
            &[],
        )
        .unwrap();
        let r = c.oauth_resources().unwrap();
        assert_eq!(r.mcp, "https://m.example.com/mcp");
        assert_eq!(r.mem0, "https://m.example.com:8000");
        assert_eq!(r.audiences.len(), 3);
        // Derived from a listener on every address: cannot be.
        let err = load(
            &format!(
                "{ON}audience = \"https://m.example.com/mcp\"\n[mem0]\nlisten = \"0.0.0.0:8000\"\n"
            ),
            &[],
        )
        .unwrap_err();
        assert!(
            err.contains("oauth.audience") && err.contains("mem0.listen"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_read_from_the_environment_and_masked() {
        let text = format!(
            "{ON}[oauth.introspection]\nurl = \"https://idp.example.com/introspect\"\n\
             client_id = \"memgate\"\nclient_secret = {{ env = \"IDP_SECRET\" }}\n"
        );
        let c = load(&text, &[]).unwrap();
        let secret = c
            .oauth
            .introspection
            .read_client_secret(|name| (name == "IDP_SECRET").then(|| "s3cret".to_string()))
            .unwrap();
        assert_eq!(secret, "s3cret");
        let err = c
            .oauth
            .introspection
            .read_client_secret(|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("oauth.introspection.client_secret") && err.contains("IDP_SECRET"));
        let literal = text.replace("{ env = \"IDP_SECRET\" }", "\"s3cret\"");
        let shown = load(&literal, &[]).unwrap().to_masked_toml();
        assert!(
            !shown.contains("s3cret") && shown.contains("client_secret = \"****\""),
            "{shown}"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key, words) in [
            (
                "[oauth]\nenabled = true\n",
                "oauth.issuer",
                "names no issuer",
            ),
            (
                "[oauth]\nenabled = true\nissuer = []\n",
                "oauth.issuer",
                "empty list",
            ),
            (
                "[oauth]\nissuer = \"http://idp.example.com/realms/main\"\n",
                "oauth.issuer",
                "loopback",
            ),
            (
                "[oauth]\nissuer = \"http://10.0.0.7/realms/main\"\n",
                "oauth.issuer",
                "loopback",
            ),
            (
                "[oauth]\nissuer = \"ftp://idp\"\n",
                "oauth.issuer",
                "scheme",
            ),
            (
                "[oauth]\nissuer = \"https://u:p@idp.example.com\"\n",
                "oauth.issuer",
                "credentials",
            ),
            (
                "[oauth]\nissuer = [\"https://a.example.com\", \"https://a.example.com\"]\n",
                "oauth.issuer",
                "twice",
            ),
            (
                &format!("{ON}allowed_algs = [\"RS256\", \"none\"]\n"),
                "oauth.allowed_algs",
                "unsigned",
            ),
            (
                &format!("{ON}allowed_algs = [\"HS256\"]\n"),
                "oauth.allowed_algs",
                "HMAC",
            ),
            (
                &format!("{ON}allowed_algs = []\n"),
                "oauth.allowed_algs",
                "empty",
            ),
            (
                &format!("{ON}[oauth.scopes]\n\"mcp:read\" = \"root\"\n"),
                "oauth.scopes.mcp:read",
                "unknown permission",
            ),
            (
                &format!("{ON}[oauth.scopes]\n\"mcp read\" = \"read\"\n"),
                "oauth.scopes.mcp read",
                "not a valid scope",
            ),
            (
                &format!("{ON}leeway_secs = 86400\n"),
                "oauth.leeway_secs",
                "at most 300",
            ),
            (
                &format!("{ON}jwks_min_refresh_secs = 0\n"),
                "oauth.jwks_min_refresh_secs",
                "between 1",
            ),
            (
                &format!("{ON}user_claim = \"\"\n"),
                "oauth.user_claim",
                "empty",
            ),
            (
                &format!("{ON}audience = []\n"),
                "oauth.audience",
                "empty list",
            ),
            (
                "[oauth]\nenabled = true\nissuer = [\"https://a.example.com\", \"https://b.example.com\"]\njwks_uri = \"https://a.example.com/keys\"\n",
                "oauth.jwks_uri",
                "several issuers",
            ),
            (
                &format!("{ON}jwks_uri = \"http://keys.example.com/jwks\"\n"),
                "oauth.jwks_uri",
                "loopback",
            ),
            (
                &format!("{ON}[oauth.introspection]\nurl = \"https://idp.example.com/i\"\n"),
                "oauth.introspection.client_id",
                "client",
            ),
            (
                &format!(
                    "{ON}[oauth.introspection]\nurl = \"https://idp.example.com/i\"\nclient_id = \"m\"\n"
                ),
                "oauth.introspection.client_secret",
                "empty",
            ),
            (&format!("{ON}bogus = 1\n"), "bogus", ""),
        ] {
            let err = load(text, &[]).unwrap_err();
            assert!(err.contains(key) && err.contains(words), "{text}: {err}");
        }
        // Loopback issuers may use http.
        for issuer in [
            "http://127.0.0.1:9000",
            "http://localhost:9000/x",
            "http://[::1]:9000",
        ] {
            let text = format!("[oauth]\nenabled = true\nissuer = \"{issuer}\"\n");
            assert!(load(&text, &[]).is_ok(), "{issuer}");
        }
    }
}
