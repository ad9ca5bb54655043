//! Tool rules: for each MCP tool name, the permission it needs, the arguments
//! that name a mem0 user (forced to the scope) and the arguments that name a
//! memory (checked for ownership). Shipped defaults cover the common mem0 MCP
//! servers; the configuration may replace or add rules by tool name.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::policy::Permission;

/// Argument names that carry a user in every tool, known or not, whatever its
/// rule says: a client can always try them, so memgate always checks them.
pub const STANDARD_USER_ARGS: [&str; 2] = ["user_id", "userId"];

/// Argument names that carry a memory id in tools memgate has no rule for.
pub const STANDARD_MEMORY_ID_ARGS: [&str; 2] = ["memory_id", "memoryId"];

/// What memgate enforces for one tool (`[mcp.tools.<name>]` in the config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRule {
    /// `"read"`, `"write"` or `"admin"`.
    #[serde(
        deserialize_with = "permission_from_name",
        serialize_with = "permission_name"
    )]
    pub permission: Permission,
    /// Arguments that name the mem0 user; [`STANDARD_USER_ARGS`] are checked
    /// on top of these. The first is the one injected (`user_id` if empty).
    #[serde(default)]
    pub user_args: Vec<String>,
    /// Arguments holding a memory id (a string, or a list of strings) whose
    /// owner must be the scope before the call is forwarded.
    #[serde(default)]
    pub memory_id_args: Vec<String>,
    /// Add the user argument, set to the scope, when the call carries none.
    #[serde(default)]
    pub inject_user: bool,
}

impl ToolRule {
    /// A rule with no user or memory arguments.
    pub fn new(permission: Permission) -> ToolRule {
        ToolRule {
            permission,
            user_args: Vec::new(),
            memory_id_args: Vec::new(),
            inject_user: false,
        }
    }

    /// The argument added when [`inject_user`](Self::inject_user) is set and
    /// the call names no user.
    pub fn injected_arg(&self) -> &str {
        self.user_args
            .first()
            .map(String::as_str)
            .unwrap_or(STANDARD_USER_ARGS[0])
    }

    /// Every argument name checked as a user argument for this tool: the
    /// rule's own, then the standard ones, without repeats.
    pub fn all_user_args(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.user_args.iter().map(String::as_str).collect();
        for standard in STANDARD_USER_ARGS {
            if !names.contains(&standard) {
                names.push(standard);
            }
        }
        names
    }
}

/// `mcp.unknown_tools`: what happens to a tool with no rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownTools {
    /// Forwarded (with the unknown-tool permission, user arguments forced and
    /// `memory_id`/`memoryId` checked for ownership).
    #[default]
    Allow,
    /// Refused with 403 and hidden from `tools/list`.
    Deny,
}

fn permission_name<S: Serializer>(
    permission: &Permission,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(permission.as_str())
}

fn permission_from_name<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Permission, D::Error> {
    let name = String::deserialize(deserializer)?;
    match name.as_str() {
        "read" => Ok(Permission::Read),
        "write" => Ok(Permission::Write),
        "admin" => Ok(Permission::Admin),
        other => Err(serde::de::Error::custom(format!(
            "unknown permission {other:?} (expected read, write or admin)"
        ))),
    }
}

/// The rules shipped for the common mem0 MCP servers (mem0's own servers, the
/// Mem0 MCP Server stack's coding-preference tools and their look-alikes).
pub fn default_tool_rules() -> BTreeMap<String, ToolRule> {
    let user = || STANDARD_USER_ARGS.iter().map(|s| (*s).to_owned()).collect();
    let memory = || {
        STANDARD_MEMORY_ID_ARGS
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    };
    // Tools over the user's whole collection: the user is forced and, when
    // missing, injected, so the server never falls back to a default user.
    let collection = |permission| ToolRule {
        permission,
        user_args: user(),
        memory_id_args: Vec::new(),
        inject_user: true,
    };
    // Tools on one memory: its owner decides, a user argument is still forced.
    let one_memory = |permission| ToolRule {
        permission,
        user_args: user(),
        memory_id_args: memory(),
        inject_user: false,
    };
    // The Mem0 MCP Server stack reads the user from memgate's trusted headers.
    let header_user = ToolRule::new;
    let rules = [
        ("add_memory", collection(Permission::Write)),
        ("search_memories", collection(Permission::Read)),
        ("search_memory", collection(Permission::Read)),
        ("get_all_memories", collection(Permission::Read)),
        ("list_memories", collection(Permission::Read)),
        ("delete_all_memories", collection(Permission::Write)),
        ("get_memory", one_memory(Permission::Read)),
        ("update_memory", one_memory(Permission::Write)),
        ("delete_memory", one_memory(Permission::Write)),
        ("get_memory_history", one_memory(Permission::Read)),
        ("add_coding_preference", header_user(Permission::Write)),
        ("search_coding_preferences", header_user(Permission::Read)),
        ("get_all_coding_preferences", header_user(Permission::Read)),
    ];
    rules
        .into_iter()
        .map(|(name, rule)| (name.to_owned(), rule))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_deserialize_from_config() {
        let rule: ToolRule = serde_json::from_str(
            r#"{"permission":"write","user_args":["owner"],"memory_id_args":["id"],"inject_user":true}"#,
        )
        .unwrap();
        assert_eq!(rule.permission, Permission::Write);
        assert_eq!(rule.injected_arg(), "owner");
        assert_eq!(rule.all_user_args(), ["owner", "user_id", "userId"]);
        let minimal: ToolRule = serde_json::from_str(r#"{"permission":"read"}"#).unwrap();
        assert_eq!(minimal, ToolRule::new(Permission::Read));
        assert_eq!(minimal.injected_arg(), "user_id");
        for bad in [
            r#"{"permission":"root"}"#,
            r#"{"permission":"read","inject":true}"#,
            r#"{}"#,
        ] {
            assert!(serde_json::from_str::<ToolRule>(bad).is_err(), "{bad}");
        }
        let mode: UnknownTools = serde_json::from_str(r#""deny""#).unwrap();
        assert_eq!(mode, UnknownTools::Deny);
    }

    #[test]
    fn defaults_cover_the_common_servers() {
        let rules = default_tool_rules();
        assert_eq!(rules.len(), 13);
        assert!(rules["add_memory"].inject_user);
        assert!(rules["delete_all_memories"].inject_user);
        assert_eq!(rules["delete_memory"].permission, Permission::Write);
        assert_eq!(
            rules["get_memory_history"].memory_id_args,
            ["memory_id", "memoryId"]
        );
        assert_eq!(
            rules["search_coding_preferences"].permission,
            Permission::Read
        );
        assert!(rules.values().all(|r| r.permission != Permission::Admin));
    }
}
