//! Tool rules: for each MCP tool name, the permission it needs, how the
//! upstream keeps users apart for it, the arguments that name a mem0 user
//! (forced to the scope) and the arguments that name a memory (checked for
//! ownership). Shipped defaults cover the common mem0 MCP servers; the
//! configuration may replace or add rules by tool name.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::identity::Permission;

/// Argument names that carry a user in every tool, known or not, whatever its
/// rule says: a client can always try them, so memgate always checks them.
pub const STANDARD_USER_ARGS: [&str; 2] = ["user_id", "userId"];

/// Argument names that carry a memory id in tools memgate has no rule for.
pub const STANDARD_MEMORY_ID_ARGS: [&str; 2] = ["memory_id", "memoryId"];

/// How the upstream keeps one user's data apart from another's for a tool.
/// Most MCP servers serve one user per process and never look at who calls,
/// so only `argument` makes a shared upstream safe for per-user data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScopedBy {
    /// The tool's user arguments: memgate forces them to the caller's scope.
    #[serde(rename = "argument")]
    Argument,
    /// The upstream process itself is the scope (one mem0 id per process):
    /// safe only when each scope has an upstream of its own.
    #[serde(rename = "upstream")]
    Upstream,
    /// The tool touches no per-user data (or only memories named by id,
    /// which are ownership-checked whatever this says).
    #[serde(rename = "none")]
    Unscoped,
}

impl ScopedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopedBy::Argument => "argument",
            ScopedBy::Upstream => "upstream",
            ScopedBy::Unscoped => "none",
        }
    }
}

/// What memgate enforces for one tool (`[mcp.tools.<name>]` in the config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ToolRuleSpec")]
pub struct ToolRule {
    /// `"read"`, `"write"` or `"admin"`.
    #[serde(serialize_with = "permission_name")]
    pub permission: Permission,
    /// How the upstream keeps users apart for this tool.
    pub scoped_by: ScopedBy,
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
    /// Arguments the secret guard scans (`[secret_guard]`), each at any
    /// depth; unset means the shipped list for the tool's name
    /// ([`default_secret_scan`]), so a table replacing a shipped rule keeps
    /// its scan unless it says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_scan: Option<Vec<String>>,
}

/// A tool rule as written in the config: `scoped_by` may be left out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolRuleSpec {
    #[serde(deserialize_with = "permission_from_name")]
    permission: Permission,
    #[serde(default)]
    scoped_by: Option<ScopedBy>,
    #[serde(default)]
    user_args: Vec<String>,
    #[serde(default)]
    memory_id_args: Vec<String>,
    #[serde(default)]
    inject_user: bool,
    #[serde(default)]
    secret_scan: Option<Vec<String>>,
}

impl From<ToolRuleSpec> for ToolRule {
    /// Without `scoped_by`, a rule naming user arguments is `argument`, one
    /// naming only memory ids is `none` (the ids are ownership-checked), and
    /// any other is `upstream`: a tool that says nothing of its user may
    /// still hold per-user data, so it is refused on a shared upstream.
    fn from(spec: ToolRuleSpec) -> ToolRule {
        let scoped_by =
            spec.scoped_by
                .unwrap_or(if !spec.user_args.is_empty() || spec.inject_user {
                    ScopedBy::Argument
                } else if !spec.memory_id_args.is_empty() {
                    ScopedBy::Unscoped
                } else {
                    ScopedBy::Upstream
                });
        ToolRule {
            permission: spec.permission,
            scoped_by,
            user_args: spec.user_args,
            memory_id_args: spec.memory_id_args,
            inject_user: spec.inject_user,
            secret_scan: spec.secret_scan,
        }
    }
}

impl ToolRule {
    /// A rule with no user or memory arguments.
    pub fn new(permission: Permission, scoped_by: ScopedBy) -> ToolRule {
        ToolRule {
            permission,
            scoped_by,
            user_args: Vec::new(),
            memory_id_args: Vec::new(),
            inject_user: false,
            secret_scan: None,
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

    /// The arguments of `tool` (this rule's name) the secret guard scans:
    /// the rule's `secret_scan`, or the shipped list for that name.
    pub fn secret_scan_args<'a>(&'a self, tool: &str) -> Vec<&'a str> {
        match &self.secret_scan {
            Some(args) => args.iter().map(String::as_str).collect(),
            None => default_secret_scan(tool).to_vec(),
        }
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
    Allow,
    /// Refused (with how to add a rule) and hidden from `tools/list`:
    /// memgate cannot tell how an unknown tool keeps users apart.
    #[default]
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
        scoped_by: ScopedBy::Argument,
        user_args: user(),
        memory_id_args: Vec::new(),
        inject_user: true,
        secret_scan: None,
    };
    // Tools on one memory: its owner decides, whatever the upstream does with
    // users; a user argument is still forced.
    let one_memory = |permission| ToolRule {
        permission,
        scoped_by: ScopedBy::Unscoped,
        user_args: user(),
        memory_id_args: memory(),
        inject_user: false,
        secret_scan: None,
    };
    // The Mem0 MCP Server stack's tools take no user: each server process
    // calls mem0 with one id fixed by its environment.
    let per_process = |permission| ToolRule::new(permission, ScopedBy::Upstream);
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
        ("add_coding_preference", per_process(Permission::Write)),
        ("search_coding_preferences", per_process(Permission::Read)),
        ("get_all_coding_preferences", per_process(Permission::Read)),
    ];
    rules
        .into_iter()
        .map(|(name, rule)| (name.to_owned(), rule))
        .collect()
}

/// The arguments the secret guard scans in the shipped write tools, by tool
/// name: the text each one stores. mem0's own servers' `add_memory` (`text`,
/// or `messages`, and `metadata`) and `update_memory` (`text` or `data`);
/// the Mem0 MCP Server stack's `add_coding_preference` and its decision and
/// component records (which have no shipped rule, so their scan applies to
/// the rule an operator writes for them). Other tools: none.
pub fn default_secret_scan(tool: &str) -> &'static [&'static str] {
    match tool {
        "add_memory" => &["text", "messages", "metadata"],
        "update_memory" => &["text", "data", "metadata"],
        "add_coding_preference" => &["text"],
        "create_decision" => &[
            "title",
            "decision",
            "context",
            "rationale",
            "consequences",
            "alternatives",
            "description",
            "text",
            "content",
            "notes",
            "metadata",
        ],
        "create_component" => &[
            "name",
            "description",
            "details",
            "text",
            "content",
            "notes",
            "metadata",
        ],
        _ => &[],
    }
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
        assert_eq!(rule.scoped_by, ScopedBy::Argument);
        let minimal: ToolRule = serde_json::from_str(r#"{"permission":"read"}"#).unwrap();
        assert_eq!(
            minimal,
            ToolRule::new(Permission::Read, ScopedBy::Upstream),
            "a rule that names no user fails closed on a shared upstream"
        );
        assert_eq!(minimal.injected_arg(), "user_id");
        let by_id: ToolRule =
            serde_json::from_str(r#"{"permission":"read","memory_id_args":["id"]}"#).unwrap();
        assert_eq!(by_id.scoped_by, ScopedBy::Unscoped);
        let explicit: ToolRule =
            serde_json::from_str(r#"{"permission":"read","scoped_by":"none"}"#).unwrap();
        assert_eq!(explicit.scoped_by, ScopedBy::Unscoped);
        for bad in [
            r#"{"permission":"root"}"#,
            r#"{"permission":"read","inject":true}"#,
            r#"{"permission":"read","scoped_by":"process"}"#,
            r#"{}"#,
        ] {
            assert!(serde_json::from_str::<ToolRule>(bad).is_err(), "{bad}");
        }
        let mode: UnknownTools = serde_json::from_str(r#""allow""#).unwrap();
        assert_eq!(mode, UnknownTools::Allow);
        assert_eq!(UnknownTools::default(), UnknownTools::Deny);
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
        for name in [
            "add_coding_preference",
            "search_coding_preferences",
            "get_all_coding_preferences",
        ] {
            assert_eq!(rules[name].scoped_by, ScopedBy::Upstream, "{name}");
        }
        for name in ["delete_memory", "get_memory_history", "get_memory"] {
            assert_eq!(rules[name].scoped_by, ScopedBy::Unscoped, "{name}");
            assert!(!rules[name].memory_id_args.is_empty(), "{name}");
        }
        assert_eq!(rules["add_memory"].scoped_by, ScopedBy::Argument);
    }

    #[test]
    fn secret_scan_defaults_by_name_and_a_rule_may_replace_it() {
        let rules = default_tool_rules();
        assert_eq!(
            rules["add_memory"].secret_scan_args("add_memory"),
            ["text", "messages", "metadata"]
        );
        assert_eq!(
            rules["add_coding_preference"].secret_scan_args("add_coding_preference"),
            ["text"]
        );
        assert!(
            rules["search_memories"]
                .secret_scan_args("search_memories")
                .is_empty()
        );
        let written: ToolRule =
            serde_json::from_str(r#"{"permission":"write","scoped_by":"upstream"}"#).unwrap();
        assert!(
            written
                .secret_scan_args("create_decision")
                .contains(&"rationale"),
            "a rule written for a stack tool keeps that tool's scan"
        );
        let own: ToolRule =
            serde_json::from_str(r#"{"permission":"write","secret_scan":["body"]}"#).unwrap();
        assert_eq!(own.secret_scan_args("add_memory"), ["body"]);
        let none: ToolRule =
            serde_json::from_str(r#"{"permission":"write","secret_scan":[]}"#).unwrap();
        assert!(none.secret_scan_args("add_memory").is_empty());
        assert!(
            serde_json::from_str::<ToolRule>(r#"{"permission":"write","secret_scan":"text"}"#)
                .is_err()
        );
    }
}
