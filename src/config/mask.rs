//! The effective configuration as `check-config` shows it, secrets masked.

use super::{Config, HeaderSource};

impl Config {
    /// The effective configuration as TOML, with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(&self.masked()).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// The effective configuration as JSON, with secrets masked.
    pub fn to_masked_json(&self) -> serde_json::Value {
        serde_json::to_value(self.masked())
            .unwrap_or_else(|e| serde_json::json!({ "error": format!("cannot render: {e}") }))
    }

    /// The configuration as memgate applies it: secrets masked, and
    /// `[mcp.tools]` with the built-in rules the file's tables are added to.
    fn masked(&self) -> Config {
        let mut shown = self.clone();
        shown.mcp.tools = self.mcp.effective_tools();
        for url in [
            &mut shown.database.url,
            &mut shown.redis.url,
            &mut shown.mcp.upstream,
            &mut shown.mem0.upstream,
        ] {
            *url = mask_url_password(url);
        }
        for specs in [
            &mut shown.mcp.upstream_headers,
            &mut shown.mem0.upstream_headers,
        ] {
            for source in specs.values_mut() {
                if let HeaderSource::Literal(value) = source {
                    *value = "****".into();
                }
            }
        }
        if let HeaderSource::Literal(secret) = &mut shown.oauth.introspection.client_secret
            && !secret.is_empty()
        {
            *secret = "****".into();
        }
        // A child's environment may carry its credentials.
        if let Some(spawn) = &mut shown.mcp.spawn {
            for value in spawn.env.values_mut() {
                *value = "****".into();
            }
        }
        shown
    }
}

/// Replaces the credentials in a URL with `****`: the password of its user
/// info (`postgres://u:secret@h/db`, `redis://:secret@h`) and query
/// parameters such as `?password=secret`, which PostgreSQL URLs accept.
pub fn mask_url_password(text: &str) -> String {
    let secret = |key: &str| key.to_ascii_lowercase().contains("password");
    let Ok(mut url) = url::Url::parse(text) else {
        // Not a URL the parser accepts (a template, a typo): whatever sits
        // between the scheme and an `@` may be a password.
        return match (text.find("://"), text.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme + 3 => {
                format!("{}****{}", &text[..scheme + 3], &text[at..])
            }
            _ => text.to_string(),
        };
    };
    let mut masked = false;
    if url.password().is_some() {
        masked = url.set_password(Some("****")).is_ok();
    }
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    if pairs.iter().any(|(key, _)| secret(key)) {
        url.query_pairs_mut().clear().extend_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.as_str(), if secret(k) { "****" } else { v.as_str() })),
        );
        masked = true;
    }
    if masked {
        url.to_string()
    } else {
        text.to_string()
    }
}
