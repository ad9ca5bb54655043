//! Templated upstreams: `[mcp] upstream` may name each scope's own server,
//! e.g. `http://mcp-{scope}:8080`, for operators who run one MCP server per
//! user. A scope or user id becomes one host label, one-to-one: a value that
//! is already a lowercase DNS label stands for itself, any other becomes `x-`
//! and 32 hex digits of its SHA-256 (so `Alice` and `alice` never share a
//! server, and no value can reach outside the label).

use sha2::{Digest, Sha256};

/// Stands for the request's scope in a template.
pub const SCOPE_PLACEHOLDER: &str = "{scope}";
/// Stands for the token's user id in a template.
pub const USER_PLACEHOLDER: &str = "{user}";

/// Longest DNS label.
const MAX_LABEL: usize = 63;

/// The host label standing for `value`.
pub fn host_label(value: &str) -> String {
    if is_dns_label(value) && !value.starts_with("x-") {
        return value.to_owned();
    }
    let digest = hex::encode(Sha256::digest(value.as_bytes()));
    format!("x-{}", &digest[..32])
}

/// `[a-z0-9-]`, 1 to 63 characters, no leading or trailing `-`.
fn is_dns_label(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_LABEL
        && !value.starts_with('-')
        && !value.ends_with('-')
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether an upstream setting is a template.
pub fn is_template(upstream: &str) -> bool {
    upstream.contains(SCOPE_PLACEHOLDER) || upstream.contains(USER_PLACEHOLDER)
}

/// The upstream for one request: each placeholder replaced by its label.
pub fn expand(template: &str, scope: &str, user_id: &str) -> String {
    template
        .replace(SCOPE_PLACEHOLDER, &host_label(scope))
        .replace(USER_PLACEHOLDER, &host_label(user_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn labels_stand_for_themselves_or_for_their_hash() {
        assert_eq!(host_label("alice"), "alice");
        assert_eq!(host_label("team-7"), "team-7");
        for other in [
            "Alice",
            "alice_smith",
            "a.b",
            "-a",
            "a-",
            "",
            "project_api_0123456789ab",
            "bob@example.com",
            &"a".repeat(64),
        ] {
            let label = host_label(other);
            assert!(
                label.starts_with("x-") && label.len() == 34,
                "{other:?}: {label}"
            );
        }
        assert_ne!(host_label("Alice"), host_label("alice"));
        // A value shaped like a hashed label is hashed too, so it cannot
        // stand for another value's server.
        let hashed = host_label("Alice");
        assert_ne!(host_label(&hashed), hashed);
    }

    #[test]
    fn templates_expand_each_placeholder() {
        assert!(is_template("http://mcp-{scope}:8080"));
        assert!(is_template("http://{user}.mcp:8080"));
        assert!(!is_template("http://mcp:8080"));
        assert_eq!(
            expand("http://mcp-{scope}.{user}:8080", "Proj", "bob"),
            format!("http://mcp-{}.bob:8080", host_label("Proj"))
        );
    }

    proptest! {
        #[test]
        fn labels_are_one_to_one_and_always_dns_labels(a in ".{0,80}", b in ".{0,80}") {
            let (la, lb) = (host_label(&a), host_label(&b));
            prop_assert!(is_dns_label(&la), "{la}");
            prop_assert_eq!(a == b, la == lb);
        }
    }
}
