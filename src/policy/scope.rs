//! Scope: the mem0 `user_id` a request may touch (docs/design.md §3).
//!
//! [`scope_for`] derives it from the token and the isolation mode;
//! [`check_requested_user`] is the acceptance rule for a `user_id` a client sends
//! itself. Both the mem0 and the MCP policies use these two, so the rule lives
//! in one place.

use sha2::{Digest, Sha256};

use super::deny::Deny;
use crate::identity::{Identity, Permission};

/// Longest project slug kept in an `auto` scope.
const SLUG_MAX_CHARS: usize = 32;

/// Hex characters of the project hash kept in an `auto` scope.
const HASH_HEX_CHARS: usize = 12;

/// `isolation.mode` from the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum IsolationMode {
    /// The scope is the token's user_id.
    #[default]
    Manual,
    /// Per user and project, from the `X-MCP-Project` header.
    Auto,
    /// One pool shared by every token; permissions still apply.
    Global { shared_user_id: String },
}

/// The scope of a request by `identity` in `mode`, given the `X-MCP-Project`
/// header value if one was sent. In `auto` mode a missing, empty or
/// whitespace-only header means the token's user_id.
pub fn scope_for(
    identity: &Identity,
    mode: &IsolationMode,
    project_header: Option<&str>,
) -> String {
    match mode {
        IsolationMode::Manual => identity.user_id.clone(),
        IsolationMode::Global { shared_user_id } => shared_user_id.clone(),
        IsolationMode::Auto => match project_header.map(str::trim).filter(|p| !p.is_empty()) {
            Some(project) => project_scope(&identity.user_id, project),
            None => identity.user_id.clone(),
        },
    }
}

/// `project_{slug}_{h}` for a trimmed, non-empty project value: `h` is the first
/// 12 hex characters of sha256(user_id ‖ NUL ‖ project); the NUL keeps
/// ("ab","c") and ("a","bc") apart.
pub fn project_scope(user_id: &str, project: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(user_id.as_bytes());
    hasher.update([0u8]);
    hasher.update(project.as_bytes());
    let hash = hex::encode(hasher.finalize());
    let short: String = hash.chars().take(HASH_HEX_CHARS).collect();
    format!("project_{}_{short}", project_slug(project))
}

/// The readable part of an `auto` scope: the last non-empty component of the
/// project path (split on `/` and `\`), lower-cased, each character outside
/// `[a-z0-9_-]` replaced by `-`, at most 32 characters. Only the hash makes the
/// scope unique; the slug is for people reading lists of scopes.
pub fn project_slug(project: &str) -> String {
    let last = project
        .split(['/', '\\'])
        .rev()
        .find(|part| !part.is_empty())
        .unwrap_or("");
    last.to_lowercase()
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => c,
            _ => '-',
        })
        .take(SLUG_MAX_CHARS)
        .collect()
}

/// The acceptance rule for a client-sent `user_id`, returning the value to
/// forward. A token with `admin` may name any user (forwarded as named). Anyone
/// else may send the scope or their own user_id, both forwarded as the scope, or
/// nothing, and the scope is injected. An empty string counts as nothing, as it
/// does for mem0. Anything else is a 403 that names the token's user_id, never
/// the scope (which in `auto` mode is derived and means nothing to the client).
pub fn check_requested_user(
    identity: &Identity,
    scope: &str,
    requested: Option<&str>,
) -> Result<String, Deny> {
    match requested.filter(|r| !r.is_empty()) {
        None => Ok(scope.to_owned()),
        Some(named) if identity.permissions.allows(Permission::Admin) => Ok(named.to_owned()),
        Some(own) if own == scope || own == identity.user_id => Ok(scope.to_owned()),
        Some(_) => Err(other_user_denied(identity)),
    }
}

/// The 403 for naming someone else's memories.
pub fn other_user_denied(identity: &Identity) -> Deny {
    Deny::forbidden(format!(
        "Access denied: user {} may only access their own memories",
        identity.user_id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Permissions;

    fn user(id: &str, perms: &str) -> Identity {
        Identity {
            user_id: id.to_owned(),
            permissions: Permissions::parse(perms).unwrap(),
            token_prefix: "mcp_abcdefgh".to_owned(),
        }
    }

    #[test]
    fn manual_and_global_scopes() {
        let alice = user("alice", "read,write");
        assert_eq!(
            scope_for(&alice, &IsolationMode::Manual, Some("/x/y")),
            "alice"
        );
        let global = IsolationMode::Global {
            shared_user_id: "shared_knowledge_base".into(),
        };
        assert_eq!(scope_for(&alice, &global, None), "shared_knowledge_base");
    }

    #[test]
    fn auto_scope_matches_the_documented_formula() {
        let alice = user("alice", "read,write");
        let scope = scope_for(
            &alice,
            &IsolationMode::Auto,
            Some("  /home/alice/My Project!  "),
        );
        let digest = hex::encode(Sha256::digest(b"alice\0/home/alice/My Project!"));
        assert_eq!(scope, format!("project_my-project-_{}", &digest[..12]));
        assert_eq!(scope, project_scope("alice", "/home/alice/My Project!"));
    }

    #[test]
    fn auto_without_a_usable_header_is_the_user() {
        let alice = user("alice", "read");
        for header in [None, Some(""), Some("   "), Some("\t\n")] {
            assert_eq!(scope_for(&alice, &IsolationMode::Auto, header), "alice");
        }
    }

    #[test]
    fn auto_scopes_differ_per_user_and_project() {
        let a = project_scope("alice", "/p/app");
        assert_ne!(a, project_scope("bob", "/p/app"));
        assert_ne!(a, project_scope("alice", "/q/app"));
        assert!(a.starts_with("project_app_"));
        assert_ne!(project_scope("ab", "c"), project_scope("a", "bc"));
    }

    #[test]
    fn slugs() {
        assert_eq!(project_slug("C:\\Users\\Bob\\Repo.Name"), "repo-name");
        assert_eq!(project_slug("/srv/app/"), "app");
        assert_eq!(project_slug("ÉTÉ"), "-t-");
        assert_eq!(project_slug("/"), "");
        assert_eq!(project_slug(&"x".repeat(40)).len(), 32);
        assert_eq!(project_slug("snake_case-ok9"), "snake_case-ok9");
    }

    #[test]
    fn acceptance_rule() {
        let alice = user("alice", "read,write");
        let scope = "project_app_0123456789ab";
        assert_eq!(check_requested_user(&alice, scope, None).unwrap(), scope);
        assert_eq!(
            check_requested_user(&alice, scope, Some("")).unwrap(),
            scope
        );
        assert_eq!(
            check_requested_user(&alice, scope, Some(scope)).unwrap(),
            scope
        );
        assert_eq!(
            check_requested_user(&alice, scope, Some("alice")).unwrap(),
            scope
        );
        let denied = check_requested_user(&alice, scope, Some("bob")).unwrap_err();
        assert_eq!(denied.status, 403);
        assert!(denied.message.contains("alice") && !denied.message.contains(scope));
        assert!(check_requested_user(&alice, scope, Some("Alice")).is_err());
        assert!(check_requested_user(&alice, scope, Some(" alice")).is_err());
    }

    #[test]
    fn admin_may_name_anyone() {
        let root = user("root", "admin");
        assert_eq!(
            check_requested_user(&root, "root", Some("bob")).unwrap(),
            "bob"
        );
        assert_eq!(check_requested_user(&root, "root", None).unwrap(), "root");
    }
}
