//! RFC 7662 token introspection: asking the authorization server about an
//! opaque access token it issued.

use serde_json::{Map, Value};

use super::denial::OAuthDenial;
use super::http::json_object;

/// Where and as whom memgate asks.
#[derive(Clone)]
pub struct IntrospectionSettings {
    pub url: url::Url,
    pub client_id: String,
    pub client_secret: String,
    /// An answer is reused at most this long (and never past the token's `exp`).
    pub cache: std::time::Duration,
}

/// The secret is never shown.
impl std::fmt::Debug for IntrospectionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionSettings")
            .field("url", &self.url.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &"****")
            .field("cache", &self.cache)
            .finish()
    }
}

/// RFC 6749 §2.3.1: the client id and secret are form-encoded before they
/// go into HTTP Basic authentication.
fn form_encoded(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The server's answer about `token`. Any failure to get one (unreachable,
/// not 200, not JSON) is `Unavailable`: memgate does not know, so it refuses.
pub async fn introspect(
    http: &reqwest::Client,
    settings: &IntrospectionSettings,
    token: &str,
) -> Result<Map<String, Value>, OAuthDenial> {
    let request = http
        .post(settings.url.clone())
        .basic_auth(
            form_encoded(&settings.client_id),
            Some(form_encoded(&settings.client_secret)),
        )
        .form(&[("token", token), ("token_type_hint", "access_token")]);
    json_object(request).await.map_err(|e| {
        tracing::warn!(url = %settings.url, error = %e, "token introspection failed; refusing the token with 503");
        OAuthDenial::Unavailable
    })
}
