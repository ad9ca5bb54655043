//! Property tests: random JSON-RPC bodies (calls of known and unknown tools,
//! notifications, client responses, junk, and batches of them, which are
//! refused whole; user ids of every
//! kind at the top of the arguments, nested in filters and inside JSON
//! strings) must never make the policy forward another user for a non-admin,
//! every refusal must be a JSON-RPC error, and a forwarded body must be a
//! fixpoint: deciding it again changes nothing.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;
use crate::identity::Permissions;
use crate::policy::scope::project_scope;

fn scope_of(user: &str) -> String {
    project_scope(user, "/src/app")
}

/// Names a request might carry: weighted towards names the caller may use,
/// so that many bodies get through and the rewriting itself is exercised.
fn name() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => Just(json!("alice")),
        3 => Just(json!(scope_of("alice"))),
        1 => Just(json!("bob")),
        1 => Just(json!("root")),
        1 => Just(json!("")),
        1 => Just(Value::Null),
        1 => Just(json!("*")),
        1 => Just(json!(7)),
        1 => Just(json!({"in": ["alice"]})),
        1 => "[a-z ]{1,5}".prop_map(Value::String),
    ]
}

fn user_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("user_id".to_owned()),
        Just("userId".to_owned()),
        Just("owner".to_owned()),
        Just("agent_id".to_owned()),
    ]
}

/// Nested filters / metadata with user keys anywhere.
fn tree() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        (user_key(), name()).prop_map(|(k, v)| json!({ k: v })),
        Just(json!({"category": "x"})),
        Just(json!("text")),
        Just(json!(1)),
    ];
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| json!({ "AND": v })),
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            (user_key(), inner).prop_map(|(k, v)| json!({ "meta": { k: v } })),
        ]
    })
}

fn arguments() -> impl Strategy<Value = Value> {
    let entry = prop_oneof![
        (user_key(), name()).prop_map(|(k, v)| (k, v)),
        tree().prop_map(|t| ("filters".to_owned(), t)),
        tree().prop_map(|t| ("metadata".to_owned(), Value::String(t.to_string()))),
        prop_oneof![3 => Just(json!("m1")), 2 => Just(json!(["m1", "m2"])), 1 => Just(json!(3)), 1 => Just(json!(""))]
            .prop_map(|v| ("memory_id".to_owned(), v)),
        prop_oneof![Just(json!(["m1"])), Just(json!("m3"))].prop_map(|v| ("ids".to_owned(), v)),
        Just(("text".to_owned(), json!("[note] remember {this}"))),
    ];
    prop_oneof![
        8 => prop::collection::vec(entry, 0..5)
            .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        1 => Just(Value::Null),
        1 => Just(json!([])),
    ]
}

fn tool() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "add_memory", "search_memories", "get_all_memories", "get_memory",
            "update_memory", "delete_memory", "delete_all_memories",
            "get_memory_history", "add_coding_preference", "search_coding_preferences",
        ]).prop_map(|t| json!(t)),
        1 => Just(json!("custom")),
        1 => Just(json!("link_memories")),
        1 => Just(json!(5)),
    ]
}

fn id() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        6 => (0i64..100).prop_map(|i| Some(json!(i))),
        1 => "[a-z]{0,4}".prop_map(|s| Some(json!(s))),
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        1 => Just(Some(json!(1.5))),
    ]
}

fn message() -> impl Strategy<Value = Value> {
    let tool_call = (id(), tool(), arguments()).prop_map(|(id, tool, arguments)| {
        let mut message = json!({"jsonrpc":"2.0","method":"tools/call","params":{"name":tool,"arguments":arguments}});
        if let Some(id) = id {
            message["id"] = id;
        }
        message
    });
    prop_oneof![
        14 => tool_call,
        1 => id().prop_map(|id| json!({"jsonrpc":"2.0","id":id,"method":"tools/list","params":{"user_id":"bob"}})),
        1 => Just(json!({"jsonrpc":"2.0","method":"notifications/initialized"})),
        1 => Just(json!({"jsonrpc":"2.0","id":"s1","result":{"user_id":"bob"}})),
        1 => Just(json!({"jsonrpc":"2.0","id":2})),
        1 => Just(json!("junk")),
    ]
}

fn body() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => message(),
        1 => prop::collection::vec(message(), 0..4).prop_map(Value::Array),
    ]
}

fn identity() -> impl Strategy<Value = (Identity, String)> {
    let who = prop_oneof![
        3 => Just(("alice", "read,write")),
        1 => Just(("alice", "read")),
        1 => Just(("root", "admin")),
    ];
    (who, any::<bool>()).prop_map(|((user, perms), auto)| {
        let identity = Identity {
            user_id: user.to_owned(),
            permissions: Permissions::parse(perms).unwrap(),
            token_prefix: "mcp_proptest".to_owned(),
        };
        let scope = if auto {
            scope_of(user)
        } else {
            user.to_owned()
        };
        (identity, scope)
    })
}

fn policy() -> impl Strategy<Value = McpPolicy> {
    (any::<bool>(), any::<bool>()).prop_map(|(deny_unknown, upstream_per_scope)| {
        let mut policy = McpPolicy {
            upstream_per_scope,
            ..McpPolicy::default()
        };
        if !deny_unknown {
            policy.unknown_tools = UnknownTools::Allow;
        }
        let mut custom = ToolRule::new(Permission::Read, ScopedBy::Argument);
        custom.user_args = vec!["owner".to_owned()];
        custom.memory_id_args = vec!["ids".to_owned()];
        custom.inject_user = true;
        policy.tools.insert("custom".to_owned(), custom);
        policy
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn forwards_only_the_scope_for_non_admins(
        body in body(),
        (who, scope) in identity(),
        policy in policy(),
    ) {
        let bytes = body.to_string().into_bytes();
        match policy.decide(&who, &scope, &bytes) {
            McpDecision::Forward(forward) => {
                prop_assert!(forwards_only_scope(&policy, &who, &scope, &bytes, &forward), "{:?}", forward);
                if !who.permissions.admin {
                    prop_assert!(forward.param_headers.iter().all(|(_, v)| *v == scope));
                    let mirrored = vec![("Mcp-Param-user_id".to_owned(), "bob".to_owned())];
                    for (_, edit) in param_header_rewrites(&mirrored, &forward.param_headers) {
                        prop_assert!(edit.is_none() || edit == Some(encode_param_value(&scope)));
                    }
                }
                // A forwarded body is a fixpoint of the policy.
                let sent = forward.body.clone().unwrap_or_else(|| bytes.clone());
                match policy.decide(&who, &scope, &sent) {
                    McpDecision::Forward(again) => {
                        prop_assert_eq!(again.body, None);
                        prop_assert_eq!(again.need_owners, forward.need_owners);
                        prop_assert_eq!(again.calls, forward.calls);
                    }
                    McpDecision::Deny(deny) => prop_assert!(false, "re-decided: {:?}", deny),
                }
            }
            McpDecision::Deny(deny) => {
                prop_assert!(matches!(deny.status, 400 | 403));
                let error: Value = serde_json::from_slice(&deny.body).unwrap();
                prop_assert_eq!(&error["jsonrpc"], "2.0");
                prop_assert!(error["error"]["code"].is_i64());
                prop_assert!(error["error"]["message"].is_string());
                prop_assert!(error.get("id").is_some());
                // Messages never leak a derived scope.
                if scope != who.user_id {
                    prop_assert!(!deny.message.contains(&scope));
                }
            }
        }
    }

    #[test]
    fn a_non_admin_naming_bob_at_the_top_is_never_forwarded(
        tool in prop::sample::select(vec!["add_memory", "search_memories", "get_memory", "link_memories", "custom"]),
        key in prop::sample::select(vec!["user_id", "userId"]),
        policy in policy(),
    ) {
        let who = Identity {
            user_id: "alice".to_owned(),
            permissions: Permissions::READ_WRITE,
            token_prefix: "mcp_proptest".to_owned(),
        };
        let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":tool,"arguments":{ key: "bob" }}});
        let decision = policy.decide(&who, "alice", body.to_string().as_bytes());
        prop_assert!(matches!(decision, McpDecision::Deny(ref d) if d.status == 403), "{:?}", decision);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..200)) {
        fuzz_entry(&data);
    }

    #[test]
    fn json_shaped_input_drives_the_fuzz_entry(body in body()) {
        fuzz_entry(body.to_string().as_bytes());
        let response = json!({"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"add_memory"},{"name":"link_memories"},{"name":body}]}});
        fuzz_entry(response.to_string().as_bytes());
        fuzz_entry(format!("data: {body}\r\n\r\nid: 1\n\n").as_bytes());
    }
}
