//! What memgate tells OAuth clients: the Protected Resource Metadata
//! document (RFC 9728) and the `WWW-Authenticate` challenges (RFC 6750 §3,
//! RFC 9728 §5.1) that lead a client to it. Pure.

use serde_json::{Value, json};

use super::denial::InvalidToken;

/// Where RFC 9728 §3 puts the metadata document.
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The metadata URL of `resource` (RFC 9728 §3.1): the well-known path goes
/// between the host and the resource's own path, so `https://h/mcp` has
/// `https://h/.well-known/oauth-protected-resource/mcp`. `None` when
/// `resource` is not an absolute URL with a host.
pub fn metadata_url(resource: &str) -> Option<String> {
    let url = url::Url::parse(resource).ok()?;
    url.host()?;
    let path = url.path().trim_end_matches('/');
    let mut origin = url.origin().ascii_serialization();
    if origin == "null" {
        return None;
    }
    origin.push_str(WELL_KNOWN);
    origin.push_str(path);
    if let Some(query) = url.query() {
        origin.push('?');
        origin.push_str(query);
    }
    Some(origin)
}

/// The request paths the metadata of `resource` answers on a listener: the
/// root document and the form suffixed with the resource's path; `extra`
/// adds suffixed forms for endpoints served under other paths (such as the
/// listener's own endpoint path when a proxy in front adds a prefix).
pub fn metadata_paths(resource: &str, extra: &[&str]) -> Vec<String> {
    let mut paths = vec![WELL_KNOWN.to_string()];
    let own = url::Url::parse(resource)
        .map(|u| u.path().trim_end_matches('/').to_string())
        .unwrap_or_default();
    for suffix in std::iter::once(own.as_str()).chain(extra.iter().copied()) {
        let suffix = suffix.trim_end_matches('/');
        if suffix.is_empty() || !suffix.starts_with('/') {
            continue;
        }
        let path = format!("{WELL_KNOWN}{suffix}");
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths
}

/// The Protected Resource Metadata document (RFC 9728 §2).
pub fn metadata_document<'a>(
    resource: &str,
    issuers: impl IntoIterator<Item = &'a str>,
    scopes: impl IntoIterator<Item = &'a str>,
) -> Value {
    json!({
        "resource": resource,
        "authorization_servers": issuers.into_iter().collect::<Vec<_>>(),
        "scopes_supported": scopes.into_iter().collect::<Vec<_>>(),
        "bearer_methods_supported": ["header"],
    })
}

/// A quoted-string (RFC 9110 §5.6.4).
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The `WWW-Authenticate` value of a 401: where the metadata is, the scope
/// the request needs when known, and for a token that was presented but
/// refused, `error="invalid_token"` and why.
pub fn unauthorized(
    resource_metadata: &str,
    scope: Option<&str>,
    refused: Option<InvalidToken>,
) -> String {
    unauthorized_described(
        resource_metadata,
        scope,
        refused.map(InvalidToken::description),
    )
}

/// [`unauthorized`] for a refused token described by `description` (which
/// must not repeat the token): memgate's own tokens are refused this way.
pub fn unauthorized_described(
    resource_metadata: &str,
    scope: Option<&str>,
    description: Option<&str>,
) -> String {
    let mut value = format!("Bearer resource_metadata={}", quoted(resource_metadata));
    if let Some(scope) = scope {
        value.push_str(", scope=");
        value.push_str(&quoted(scope));
    }
    if let Some(description) = description {
        // RFC 6750 §3 allows no quote or backslash in a description.
        let description: String = description
            .chars()
            .filter(|c| matches!(c, ' '..='~') && *c != '"' && *c != '\\')
            .collect();
        value.push_str(", error=\"invalid_token\", error_description=");
        value.push_str(&quoted(&description));
    }
    value
}

/// The `WWW-Authenticate` value of a 403 for a token without the scope the
/// request needs (RFC 6750 §3.1), which an MCP client answers by asking the
/// user for that scope (step-up).
pub fn insufficient_scope(resource_metadata: &str, scope: Option<&str>) -> String {
    let mut value = String::from("Bearer error=\"insufficient_scope\"");
    if let Some(scope) = scope {
        value.push_str(", scope=");
        value.push_str(&quoted(scope));
    }
    value.push_str(", resource_metadata=");
    value.push_str(&quoted(resource_metadata));
    value.push_str(
        ", error_description=\"The access token does not grant the scope this request needs\"",
    );
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_url_inserts_the_well_known_path_before_the_resource_path() {
        assert_eq!(
            metadata_url("https://memgate.example.com/mcp").as_deref(),
            Some("https://memgate.example.com/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(
            metadata_url("http://127.0.0.1:8000").as_deref(),
            Some("http://127.0.0.1:8000/.well-known/oauth-protected-resource")
        );
        assert_eq!(
            metadata_url("https://h:8443/tenant/mcp/").as_deref(),
            Some("https://h:8443/.well-known/oauth-protected-resource/tenant/mcp")
        );
        assert_eq!(metadata_url("api://memgate"), None);
        assert_eq!(metadata_url("memgate"), None);
    }

    #[test]
    fn metadata_is_served_at_the_root_and_suffixed_forms() {
        assert_eq!(
            metadata_paths("https://h/mcp", &["/mcp/", "/sse"]),
            [
                "/.well-known/oauth-protected-resource",
                "/.well-known/oauth-protected-resource/mcp",
                "/.well-known/oauth-protected-resource/sse",
            ]
        );
        assert_eq!(
            metadata_paths("http://127.0.0.1:8000", &[]),
            ["/.well-known/oauth-protected-resource"]
        );
    }

    #[test]
    fn metadata_document_has_the_rfc_9728_fields() {
        let doc = metadata_document(
            "https://h/mcp",
            ["https://idp/realms/a"],
            ["mcp:read", "mcp:write"],
        );
        assert_eq!(
            doc,
            json!({
                "resource": "https://h/mcp",
                "authorization_servers": ["https://idp/realms/a"],
                "scopes_supported": ["mcp:read", "mcp:write"],
                "bearer_methods_supported": ["header"],
            })
        );
    }

    #[test]
    fn challenges_name_the_metadata_scope_and_error() {
        let meta = "https://h/.well-known/oauth-protected-resource/mcp";
        assert_eq!(
            unauthorized(meta, None, None),
            format!("Bearer resource_metadata=\"{meta}\"")
        );
        assert_eq!(
            unauthorized(meta, Some("mcp:read"), Some(InvalidToken::Expired)),
            format!(
                "Bearer resource_metadata=\"{meta}\", scope=\"mcp:read\", \
                 error=\"invalid_token\", error_description=\"The access token expired\""
            )
        );
        assert_eq!(
            insufficient_scope(meta, Some("mcp:write")),
            format!(
                "Bearer error=\"insufficient_scope\", scope=\"mcp:write\", \
                 resource_metadata=\"{meta}\", error_description=\"The access token does not \
                 grant the scope this request needs\""
            )
        );
        assert!(unauthorized("a\"b\\c", None, None).ends_with("\"a\\\"b\\\\c\""));
        for value in [
            unauthorized(meta, Some("x"), Some(InvalidToken::WrongAudience)),
            insufficient_scope(meta, None),
        ] {
            assert!(http::HeaderValue::from_str(&value).is_ok(), "{value}");
        }
    }

    #[test]
    fn a_described_refusal_keeps_only_what_rfc_6750_allows_in_a_description() {
        let value = unauthorized_described(
            "https://h/.well-known/oauth-protected-resource",
            None,
            Some("use \"Authorization: Bearer\" \\ not\tthis é"),
        );
        assert!(
            value.ends_with(
                "error=\"invalid_token\", error_description=\"use Authorization: Bearer  notthis \""
            ),
            "{value}"
        );
        assert!(http::HeaderValue::from_str(&value).is_ok());
    }

    #[test]
    fn every_error_description_uses_only_the_characters_rfc_6750_allows() {
        use InvalidToken::*;
        for why in [
            Malformed,
            AlgorithmNotAllowed,
            CriticalHeader,
            UnknownIssuer,
            UnknownKey,
            BadSignature,
            MissingAudience,
            WrongAudience,
            MissingExpiry,
            Expired,
            NotYetValid,
            IssuedInFuture,
            IdToken,
            UserClaim,
            UserMismatch,
            Inactive,
            UnsupportedFormat,
        ] {
            let text = why.description();
            assert!(
                text.bytes()
                    .all(|b| matches!(b, 0x20 | 0x21 | 0x23..=0x5B | 0x5D..=0x7E)),
                "{why:?}"
            );
            assert!(!why.reason().is_empty());
        }
    }
}
