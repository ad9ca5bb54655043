//! Adversarial unit cases for the MCP policy, grouped by what they attack.

use serde_json::{Value, json};

use super::*;
use crate::identity::Permissions;
use crate::policy::scope::project_scope;

fn ident(user_id: &str, permissions: &str) -> Identity {
    Identity {
        user_id: user_id.to_owned(),
        permissions: Permissions::parse(permissions).unwrap(),
        token_prefix: "mcp_testtest".to_owned(),
    }
}

fn alice() -> Identity {
    ident("alice", "read,write")
}

fn reader() -> Identity {
    ident("reader", "read")
}

fn root() -> Identity {
    ident("root", "admin")
}

/// Decides `body` and checks, whatever the test expects, that nothing
/// forwarded names another user.
fn decide_with(policy: &McpPolicy, who: &Identity, scope: &str, body: &str) -> McpDecision {
    let decision = policy.decide(who, scope, body.as_bytes());
    if let McpDecision::Forward(forward) = &decision {
        assert!(
            forwards_only_scope(policy, who, scope, body.as_bytes(), forward),
            "{forward:?}"
        );
    }
    decision
}

/// The shipped rules in front of an upstream per scope.
fn per_scope() -> McpPolicy {
    McpPolicy {
        upstream_per_scope: true,
        ..McpPolicy::default()
    }
}

fn decide(who: &Identity, body: &str) -> McpDecision {
    decide_with(&McpPolicy::default(), who, &who.user_id.clone(), body)
}

fn forward(decision: McpDecision) -> McpForward {
    match decision {
        McpDecision::Forward(forward) => forward,
        McpDecision::Deny(deny) => panic!("denied: {deny:?}"),
    }
}

fn refused(decision: McpDecision) -> (McpDeny, Value) {
    match decision {
        McpDecision::Deny(deny) => {
            let body = serde_json::from_slice(&deny.body).expect("deny body is JSON");
            (deny, body)
        }
        McpDecision::Forward(forward) => panic!("forwarded: {forward:?}"),
    }
}

/// The JSON a forward sends (its rewrite, else the client's body).
fn sent(forward: &McpForward, client: &str) -> Value {
    serde_json::from_slice(forward.body.as_deref().unwrap_or(client.as_bytes())).unwrap()
}

fn call(id: Value, tool: &str, arguments: Value) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":arguments}})
        .to_string()
}

// --- Parsing and message shapes -------------------------------------------

#[test]
fn invalid_json_is_a_parse_error_with_a_null_id() {
    for body in [
        "",
        "{",
        "{\"jsonrpc\":\"2.0\",}",
        "\u{feff}{}",
        "nul",
        "{\"id\":1e999}",
    ] {
        let (deny, error) = refused(decide(&alice(), body));
        assert_eq!(deny.status, 400, "{body:?}");
        assert_eq!(error["error"]["code"], PARSE_ERROR, "{body:?}");
        assert_eq!(error["id"], Value::Null);
        assert_eq!(error["jsonrpc"], "2.0");
    }
    let (_, error) = refused(decide(&alice(), "{\"a\":\"\u{0}\"}\u{ff}"));
    assert_eq!(error["error"]["code"], PARSE_ERROR);
    let invalid_utf8 = McpPolicy::default().decide(&alice(), "alice", b"{\"a\":\"\xff\"}");
    let (deny, error) = refused(invalid_utf8);
    assert_eq!(
        (deny.status, error["error"]["code"].clone()),
        (400, json!(PARSE_ERROR))
    );
}

#[test]
fn duplicate_keys_at_any_depth_are_refused() {
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_memory","name":"add_memory"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add_memory","arguments":{"user_id":"alice","user_id":"bob"}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add_memory","arguments":{"user_id":"alice","user\u005fid":"bob"}}}"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"search_memories","arguments":{"filters":{"AND":[{"user_id":"a","user_id":"b"}]}}}}]"#,
    ] {
        let (deny, error) = refused(decide(&alice(), body));
        assert_eq!(deny.status, 400, "{body}");
        assert_eq!(error["error"]["code"], INVALID_REQUEST, "{body}");
        assert_eq!(error["id"], Value::Null, "{body}");
        assert!(deny.message.contains("more than once"), "{}", deny.message);
    }
}

#[test]
fn deep_nesting_is_refused_not_crashed() {
    let deep = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{}1{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let (deny, error) = refused(decide(&alice(), &deep));
    assert_eq!(deny.status, 400);
    assert_eq!(error["error"]["code"], INVALID_REQUEST);
}

#[test]
fn bodies_that_are_not_messages() {
    for body in ["[]", "\"tools/call\"", "42", "null", "true"] {
        let (deny, error) = refused(decide(&alice(), body));
        assert_eq!(deny.status, 400, "{body}");
        assert_eq!(error["error"]["code"], INVALID_REQUEST, "{body}");
    }
    // Neither method nor result nor error.
    let (_, error) = refused(decide(&alice(), r#"{"jsonrpc":"2.0","id":3}"#));
    assert_eq!(
        (error["id"].clone(), error["error"]["code"].clone()),
        (json!(3), json!(INVALID_REQUEST))
    );
    // A method and a result at once.
    let (_, error) = refused(decide(
        &alice(),
        r#"{"jsonrpc":"2.0","id":4,"method":"ping","result":{}}"#,
    ));
    assert_eq!(error["id"], 4);
    // A method that is not a string.
    let (_, error) = refused(decide(
        &alice(),
        r#"{"jsonrpc":"2.0","id":5,"method":["tools/call"]}"#,
    ));
    assert_eq!(error["id"], 5);
}

#[test]
fn ids_must_be_strings_or_integers() {
    for id in [
        "1.5",
        "true",
        "{\"a\":1}",
        "[1]",
        "123456789012345678901234567890",
    ] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
        let (deny, error) = refused(decide(&alice(), &body));
        assert_eq!(deny.status, 400, "{id}");
        assert_eq!(error["id"], Value::Null, "{id}");
    }
    // Huge but valid ids come back unchanged in a refusal and a rewrite.
    let huge = "x".repeat(100_000);
    let body = call(json!(huge), "add_memory", json!({"user_id": "bob"}));
    let (_, error) = refused(decide(&alice(), &body));
    assert_eq!(error["id"], json!(huge));
    let body = call(json!(u64::MAX), "add_memory", json!({"text": "t"}));
    let fwd = forward(decide(&alice(), &body));
    assert_eq!(sent(&fwd, &body)["id"], json!(u64::MAX));
    let body = call(json!(i64::MIN), "add_memory", json!({"text": "t"}));
    let fwd = forward(decide(&alice(), &body));
    assert!(
        String::from_utf8(fwd.body.unwrap())
            .unwrap()
            .contains("-9223372036854775808")
    );
}

// --- Pass-through ----------------------------------------------------------

#[test]
fn other_methods_pass_untouched() {
    for method in [
        "initialize",
        "tools/list",
        "resources/read",
        "prompts/get",
        "ping",
        "whatever",
    ] {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{"user_id":"bob","name":"delete_all_memories"}}}}"#
        );
        let fwd = forward(decide(&reader(), &body));
        assert_eq!(fwd.body, None, "{method}");
        assert_eq!(
            fwd.calls,
            vec![CallInfo {
                method: method.to_owned(),
                tool: None,
                id: Some(json!(1))
            }]
        );
    }
}

#[test]
fn notifications_and_client_responses_pass_untouched() {
    for (body, call) in [
        (
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            Some("notifications/initialized"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":"srv-1","result":{"roots":[{"uri":"file:///x","user_id":"bob"}]}}"#,
            None,
        ),
        (
            r#"{"jsonrpc":"2.0","id":"srv-2","error":{"code":-1,"message":"no"}}"#,
            None,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#,
            Some("notifications/cancelled"),
        ),
    ] {
        let fwd = forward(decide(&reader(), body));
        assert_eq!(fwd.body, None, "{body}");
        let methods: Vec<_> = fwd
            .calls
            .iter()
            .map(|c| (c.method.as_str(), c.id.clone()))
            .collect();
        let expected: Vec<(&str, Option<Value>)> = call.map(|m| (m, None)).into_iter().collect();
        assert_eq!(methods, expected, "{body}");
    }
}

#[test]
fn a_tools_call_without_an_id_is_still_policed() {
    let body = r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"add_memory","arguments":{"user_id":"bob"}}}"#;
    let (deny, error) = refused(decide(&alice(), body));
    assert_eq!(deny.status, 403);
    assert_eq!(error["id"], Value::Null);
    let body = r#"{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"add_memory","arguments":{"user_id":"bob"}}}"#;
    assert_eq!(refused(decide(&alice(), body)).0.status, 403);
    let body = r#"{"method":"tools/call","id":1,"params":{"name":"add_memory","arguments":{"user_id":"bob"}}}"#;
    assert_eq!(
        refused(decide(&alice(), body)).0.status,
        403,
        "missing jsonrpc field"
    );
}

// --- User arguments ---------------------------------------------------------

#[test]
fn another_users_id_is_refused_with_the_request_id() {
    for arg in ["user_id", "userId"] {
        let body = call(
            json!("req-9"),
            "search_memories",
            json!({ "query": "q", arg: "bob" }),
        );
        let (deny, error) = refused(decide(&alice(), &body));
        assert_eq!(deny.status, 403);
        assert_eq!(error["id"], "req-9");
        assert_eq!(error["error"]["code"], FORBIDDEN);
        assert_eq!(
            error["error"]["message"],
            "Access denied: user alice may only access their own memories"
        );
        assert_eq!(deny.tool.as_deref(), Some("search_memories"));
        assert_eq!(deny.method.as_deref(), Some("tools/call"));
    }
}

#[test]
fn near_misses_of_the_own_id_are_refused() {
    for named in ["Alice", " alice", "alice ", "alice\u{0}", "*", "alice,bob"] {
        let body = call(json!(1), "get_all_memories", json!({ "user_id": named }));
        assert_eq!(refused(decide(&alice(), &body)).0.status, 403, "{named:?}");
    }
}

#[test]
fn own_id_and_scope_are_rewritten_to_the_scope() {
    let scope = project_scope("alice", "/src/app");
    for named in ["alice", scope.as_str()] {
        let body = call(
            json!(1),
            "add_memory",
            json!({ "text": "t", "userId": named }),
        );
        let fwd = forward(decide_with(&McpPolicy::default(), &alice(), &scope, &body));
        let args = &sent(&fwd, &body)["params"]["arguments"];
        assert_eq!(args["userId"], json!(scope));
        assert!(
            args.get("user_id").is_none(),
            "no second user argument injected"
        );
        assert_eq!(
            fwd.param_headers,
            vec![("userId".to_owned(), scope.clone())]
        );
    }
}

#[test]
fn a_missing_user_is_injected_when_the_rule_says_so() {
    let body = call(json!(1), "add_memory", json!({"text": "remember me"}));
    let fwd = forward(decide(&alice(), &body));
    let sent = sent(&fwd, &body);
    assert_eq!(
        sent["params"]["arguments"],
        json!({"text": "remember me", "user_id": "alice"})
    );
    assert_eq!(sent["id"], 1);
    assert_eq!(sent["jsonrpc"], "2.0");
    // No arguments at all, or null: created.
    for body in [
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_all_memories"}}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_all_memories","arguments":null}}"#,
    ] {
        let fwd = forward(decide(&alice(), body));
        assert_eq!(sent_args(&fwd), json!({"user_id": "alice"}));
    }
    // Empty and null user arguments count as missing and are forced.
    for value in [json!(""), Value::Null] {
        let body = call(json!(3), "get_all_memories", json!({ "user_id": value }));
        let fwd = forward(decide(&alice(), &body));
        assert_eq!(sent_args(&fwd), json!({"user_id": "alice"}));
    }
}

fn sent_args(fwd: &McpForward) -> Value {
    let body: Value = serde_json::from_slice(fwd.body.as_deref().unwrap()).unwrap();
    body["params"]["arguments"].clone()
}

#[test]
fn tools_that_do_not_inject_are_left_alone_without_a_user() {
    let body = call(json!(1), "get_memory", json!({"memory_id": "m1"}));
    let fwd = forward(decide(&alice(), &body));
    assert_eq!(fwd.body, None);
    assert!(fwd.param_headers.is_empty());
    let body = call(json!(1), "add_coding_preference", json!({"text": "x"}));
    assert_eq!(
        forward(decide_with(&per_scope(), &alice(), "alice", &body)).body,
        None
    );
}

#[test]
fn user_arguments_are_checked_on_every_tool() {
    // The coding-preference tools name no user argument, but one sent is
    // still checked and forced.
    let body = call(
        json!(1),
        "search_coding_preferences",
        json!({"query": "q", "user_id": "bob"}),
    );
    let policy = per_scope();
    assert_eq!(
        refused(decide_with(&policy, &alice(), "alice", &body))
            .0
            .status,
        403
    );
    let body = call(
        json!(1),
        "search_coding_preferences",
        json!({"query": "q", "userId": "alice"}),
    );
    assert_eq!(
        forward(decide_with(&policy, &alice(), "alice", &body))
            .param_headers
            .len(),
        1
    );
}

#[test]
fn non_string_user_arguments_are_invalid_params() {
    for value in [
        json!(7),
        json!(["alice"]),
        json!({"eq": "alice"}),
        json!(true),
    ] {
        let body = call(json!(1), "add_memory", json!({ "user_id": value }));
        let (deny, error) = refused(decide(&alice(), &body));
        assert_eq!(deny.status, 400, "{value}");
        assert_eq!(error["error"]["code"], INVALID_PARAMS);
        assert_eq!(error["id"], 1);
    }
}

#[test]
fn nested_user_keys_are_scoped_for_non_admins() {
    let body = call(
        json!(1),
        "search_memories",
        json!({"query": "q", "filters": {"AND": [{"user_id": "alice"}, {"agent_id": "x"}], "metadata": {"userId": null}}}),
    );
    let fwd = forward(decide(&alice(), &body));
    let args = sent_args(&fwd);
    assert_eq!(args["filters"]["AND"][0]["user_id"], "alice");
    assert_eq!(args["filters"]["metadata"]["userId"], "alice");
    for hidden in [
        json!({"filters": {"OR": [{"user_id": "bob"}]}}),
        json!({"filters": {"user_id": {"in": ["alice", "bob"]}}}),
        json!({"filters": {"user_id": {"eq": "alice"}}}),
        json!({"metadata": [{"deep": {"userId": "*"}}]}),
    ] {
        let body = call(json!(1), "search_memories", hidden.clone());
        assert_eq!(refused(decide(&alice(), &body)).0.status, 403, "{hidden}");
    }
}

#[test]
fn json_inside_string_arguments_is_scoped_too() {
    // FastMCP parses a JSON string given for a dict parameter.
    let body = call(
        json!(1),
        "search_memories",
        json!({"filters": "{\"user_id\": \"bob\"}"}),
    );
    assert_eq!(refused(decide(&alice(), &body)).0.status, 403);
    let body = call(
        json!(1),
        "search_memories",
        json!({"filters": " [{\"user_id\": \"alice\"}]"}),
    );
    let fwd = forward(decide(&alice(), &body));
    let filters: Value =
        serde_json::from_str(sent_args(&fwd)["filters"].as_str().unwrap()).unwrap();
    assert_eq!(filters, json!([{"user_id": "alice"}]));
    // JSON memgate will not read but Python would: refused.
    let body = call(
        json!(1),
        "search_memories",
        json!({"filters": "{\"user_id\":\"alice\",\"user_id\":\"bob\"}"}),
    );
    assert_eq!(refused(decide(&alice(), &body)).0.status, 400);
    // JSON only Python reads (NaN) hiding a user: refused; without one, passed.
    let body = call(
        json!(1),
        "search_memories",
        json!({"filters": "{\"user_id\": \"bob\", \"x\": NaN}"}),
    );
    assert_eq!(refused(decide(&alice(), &body)).0.status, 400);
    let body = call(
        json!(1),
        "search_memories",
        json!({"filters": "{\"x\": NaN}"}),
    );
    assert!(matches!(decide(&alice(), &body), McpDecision::Forward(_)));
    // Text that merely starts with a bracket is text.
    let body = call(
        json!(1),
        "add_memory",
        json!({"text": "[draft] user_id: bob {"}),
    );
    let fwd = forward(decide(&alice(), &body));
    assert_eq!(sent_args(&fwd)["text"], "[draft] user_id: bob {");
}

#[test]
fn admins_may_name_anyone_but_consistently() {
    let body = call(
        json!(1),
        "get_all_memories",
        json!({"user_id": "bob", "filters": {"user_id": "carol"}}),
    );
    let fwd = forward(decide(&root(), &body));
    assert_eq!(fwd.body, None);
    assert_eq!(
        fwd.param_headers,
        vec![("user_id".to_owned(), "bob".to_owned())]
    );
    let body = call(
        json!(1),
        "get_all_memories",
        json!({"user_id": "bob", "userId": "carol"}),
    );
    let (deny, error) = refused(decide(&root(), &body));
    assert_eq!(
        (deny.status, error["error"]["code"].clone()),
        (400, json!(INVALID_PARAMS))
    );
    let body = call(json!(1), "add_memory", json!({"text": "t"}));
    assert_eq!(
        sent_args(&forward(decide(&root(), &body)))["user_id"],
        "root"
    );
}

#[test]
fn global_mode_forces_the_shared_user() {
    let body = call(
        json!(1),
        "add_memory",
        json!({"text": "t", "user_id": "alice"}),
    );
    let fwd = forward(decide_with(
        &McpPolicy::default(),
        &alice(),
        "shared_knowledge_base",
        &body,
    ));
    assert_eq!(sent_args(&fwd)["user_id"], "shared_knowledge_base");
    let body = call(
        json!(1),
        "add_memory",
        json!({"text": "t", "user_id": "bob"}),
    );
    let (deny, _) = refused(decide_with(
        &McpPolicy::default(),
        &alice(),
        "shared_knowledge_base",
        &body,
    ));
    assert!(deny.message.contains("alice") && !deny.message.contains("shared"));
}

#[test]
fn an_empty_scope_never_reaches_a_tool() {
    let body = call(json!(1), "search_coding_preferences", json!({"query": "q"}));
    let (deny, _) = refused(decide_with(&per_scope(), &alice(), "", &body));
    assert_eq!(deny.status, 403);
    assert!(deny.message.contains("no memory scope"));
}

// --- Tools and permissions ---------------------------------------------------

#[test]
fn read_only_tokens_cannot_call_write_tools() {
    for tool in [
        "add_memory",
        "update_memory",
        "delete_memory",
        "delete_all_memories",
        "add_coding_preference",
    ] {
        let body = call(json!(tool), tool, json!({"memory_id": "m1", "text": "t"}));
        let (deny, error) = refused(decide(&reader(), &body));
        assert_eq!(deny.status, 403, "{tool}");
        assert_eq!(error["id"], tool);
        assert_eq!(
            deny.message,
            format!(
                "Access denied: tool \"{tool}\" needs the write permission, which this token lacks"
            )
        );
    }
    let body = call(json!(1), "search_memories", json!({"query": "q"}));
    assert!(matches!(decide(&reader(), &body), McpDecision::Forward(_)));
}

#[test]
fn unknown_tools_under_allow() {
    let allow = McpPolicy {
        unknown_tools: UnknownTools::Allow,
        ..McpPolicy::default()
    };
    let decide = |who: &Identity, body: &str| decide_with(&allow, who, &who.user_id, body);
    let body = call(
        json!(1),
        "link_memories",
        json!({"source": "a", "userId": "alice"}),
    );
    let fwd = forward(decide(&alice(), &body));
    assert_eq!(fwd.calls[0].tool.as_deref(), Some("link_memories"));
    // Still checked: another user, and memory ids (strings only).
    let body = call(json!(1), "link_memories", json!({"user_id": "bob"}));
    assert_eq!(refused(decide(&alice(), &body)).0.status, 403);
    let body = call(
        json!(1),
        "get_related_memories",
        json!({"memory_id": "m1", "memoryId": 5}),
    );
    let fwd = forward(decide(&alice(), &body));
    assert_eq!(fwd.need_owners.len(), 1);
    assert_eq!(fwd.need_owners[0].memory_id, "m1");
    // They need `write` by default: memgate cannot know they only read.
    let (deny, _) = refused(decide(&reader(), &body));
    assert_eq!(deny.status, 403);
    let lenient = McpPolicy {
        unknown_tool_permission: Permission::Read,
        ..allow.clone()
    };
    assert!(matches!(
        decide_with(&lenient, &reader(), "reader", &body),
        McpDecision::Forward(_)
    ));
}

#[test]
fn unknown_tools_are_denied_by_default_with_how_to_add_a_rule() {
    assert_eq!(McpPolicy::default().unknown_tools, UnknownTools::Deny);
    for tool in ["link_memories", "Add_Memory", "add_memory ", ""] {
        let body = call(json!(1), tool, json!({}));
        let (deny, error) = refused(decide(&root(), &body));
        assert_eq!(deny.status, 403, "{tool:?}");
        assert_eq!(error["error"]["code"], FORBIDDEN);
        assert!(
            deny.message.contains("mcp.unknown_tools"),
            "{}",
            deny.message
        );
    }
    let (deny, _) = refused(decide(
        &alice(),
        &call(json!(1), "link_memories", json!({})),
    ));
    assert!(
        deny.message.contains("[mcp.tools.link_memories]") && deny.message.contains("scoped_by"),
        "{}",
        deny.message
    );
    let (deny, _) = refused(decide(&alice(), &call(json!(1), "a.b \"c", json!({}))));
    assert!(
        deny.message.contains(r#"[mcp.tools."a.b \"c"]"#),
        "an odd name is quoted as a TOML key: {}",
        deny.message
    );
    let body = call(json!(1), "add_memory", json!({}));
    assert!(matches!(decide(&alice(), &body), McpDecision::Forward(_)));
    let policy = McpPolicy::default();
    assert!(!policy.may_call(&root(), "link_memories"));
}

#[test]
fn upstream_scoped_tools_need_an_upstream_per_scope() {
    let shared = McpPolicy::default();
    let per_scope = per_scope();
    let tools = [
        "add_coding_preference",
        "get_all_coding_preferences",
        "search_coding_preferences",
    ];
    assert_eq!(shared.tools_refused_on_shared_upstream(), tools);
    assert!(per_scope.tools_refused_on_shared_upstream().is_empty());
    for tool in tools {
        let body = call(json!("c1"), tool, json!({"query": "q"}));
        let (deny, error) = refused(decide_with(&shared, &root(), "root", &body));
        assert_eq!(deny.status, 403, "{tool}");
        assert_eq!(error["id"], "c1");
        assert_eq!(error["error"]["code"], FORBIDDEN);
        assert!(
            deny.message.contains("[mcp.spawn]") && deny.message.contains("{scope}"),
            "the refusal names the fix: {}",
            deny.message
        );
        assert!(!shared.may_call(&root(), tool), "hidden from tools/list");
        let fwd = forward(decide_with(&per_scope, &alice(), "alice", &body));
        assert_eq!(fwd.body, None, "nothing to rewrite: {tool}");
        assert!(per_scope.may_call(&alice(), tool));
        // A user argument is still checked whatever the tool's scoping.
        let body = call(json!(1), tool, json!({"user_id": "bob"}));
        assert_eq!(
            refused(decide_with(&per_scope, &alice(), "alice", &body))
                .0
                .status,
            403
        );
    }
    // One-memory tools stay callable on a shared upstream: the id's owner decides.
    for tool in ["delete_memory", "get_memory_history"] {
        let body = call(json!(1), tool, json!({"memory_id": "m1"}));
        let fwd = forward(decide_with(&shared, &alice(), "alice", &body));
        assert_eq!(fwd.need_owners.len(), 1, "{tool}");
    }
    // The permission is checked first: a reader learns it lacks write.
    let body = call(json!(1), "add_coding_preference", json!({"text": "t"}));
    let (deny, _) = refused(decide_with(&shared, &reader(), "reader", &body));
    assert!(
        deny.message.contains("write permission"),
        "{}",
        deny.message
    );
}

#[test]
fn tool_names_and_params_must_have_the_right_shape() {
    for params in [
        json!({"name": 5}),
        json!({"name": null}),
        json!({"name": ["add_memory"]}),
        json!({"arguments": {}}),
        json!({"name": "add_memory", "arguments": []}),
        json!({"name": "add_memory", "arguments": "user_id=bob"}),
        json!({"name": "get_memory", "arguments": 1}),
    ] {
        let body =
            json!({"jsonrpc":"2.0","id":8,"method":"tools/call","params":params}).to_string();
        let (deny, error) = refused(decide(&alice(), &body));
        assert_eq!(deny.status, 400, "{params}");
        assert_eq!(error["error"]["code"], INVALID_PARAMS, "{params}");
        assert_eq!(error["id"], 8);
    }
    for params in ["[]", "\"x\"", "null", "7"] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{params}}}"#);
        assert_eq!(
            refused(decide(&alice(), &body)).1["error"]["code"],
            INVALID_PARAMS,
            "{params}"
        );
    }
    let body = r#"{"jsonrpc":"2.0","id":8,"method":"tools/call"}"#;
    assert_eq!(refused(decide(&alice(), body)).0.status, 400);
}

#[test]
fn config_rules_override_and_add() {
    let mut policy = McpPolicy::default();
    let rule: ToolRule = serde_json::from_str(
        r#"{"permission":"read","user_args":["owner"],"memory_id_args":["ids"],"inject_user":true}"#,
    )
    .unwrap();
    policy.tools.insert("recall".to_owned(), rule);
    policy.tools.insert(
        "add_memory".to_owned(),
        ToolRule::new(Permission::Admin, ScopedBy::Argument),
    );
    let body = call(json!(1), "recall", json!({"ids": ["m1", "m2", "m1"]}));
    let fwd = forward(decide_with(&policy, &reader(), "reader", &body));
    assert_eq!(sent_args(&fwd)["owner"], "reader");
    let ids: Vec<_> = fwd
        .need_owners
        .iter()
        .map(|c| c.memory_id.as_str())
        .collect();
    assert_eq!(ids, ["m1", "m2"]);
    let body = call(json!(1), "recall", json!({"owner": "bob"}));
    assert_eq!(
        refused(decide_with(&policy, &reader(), "reader", &body))
            .0
            .status,
        403
    );
    let body = call(json!(1), "recall", json!({"ids": ["m1", 2]}));
    assert_eq!(
        refused(decide_with(&policy, &reader(), "reader", &body))
            .0
            .status,
        400
    );
    let body = call(json!(1), "add_memory", json!({"text": "t"}));
    assert_eq!(
        refused(decide_with(&policy, &alice(), "alice", &body))
            .0
            .status,
        403
    );
    assert!(matches!(
        decide_with(&policy, &root(), "root", &body),
        McpDecision::Forward(_)
    ));
}

// --- Memory ids and ownership ----------------------------------------------

#[test]
fn memory_ids_become_owner_checks_with_the_request_id() {
    let body = call(json!("r1"), "delete_memory", json!({"memory_id": "m-1"}));
    let fwd = forward(decide(&alice(), &body));
    assert_eq!(
        fwd.need_owners,
        vec![OwnerCheck {
            memory_id: "m-1".to_owned(),
            request_id: json!("r1"),
            tool: "delete_memory".to_owned(),
        }]
    );
    for bad in [json!(""), json!(12), json!({"id": "m"}), json!([""])] {
        let body = call(json!(1), "get_memory", json!({ "memory_id": bad }));
        assert_eq!(refused(decide(&alice(), &body)).0.status, 400, "{bad}");
    }
}

#[test]
fn too_many_owner_checks_are_refused() {
    let ids: Vec<String> = (0..65).map(|i| format!("m{i}")).collect();
    let mut policy = McpPolicy::default();
    let mut rule = ToolRule::new(Permission::Write, ScopedBy::Unscoped);
    rule.memory_id_args = vec!["memory_ids".to_owned()];
    policy.tools.insert("batch_delete".to_owned(), rule);
    let body = call(json!(1), "batch_delete", json!({ "memory_ids": ids }));
    assert_eq!(
        refused(decide_with(&policy, &alice(), "alice", &body))
            .0
            .status,
        400
    );
}

#[test]
fn owner_decisions() {
    let check = |id: &str, request: Value| OwnerCheck {
        memory_id: id.to_owned(),
        request_id: request,
        tool: "get_memory".to_owned(),
    };
    let mine = (check("m1", json!(1)), Some("alice".to_owned()));
    assert!(decide_owners(&alice(), "alice", std::slice::from_ref(&mine)).is_ok());
    assert!(decide_owners(&alice(), "alice", &[]).is_ok());

    let theirs = (check("m2", json!(1)), Some("bob".to_owned()));
    let deny = decide_owners(&alice(), "alice", std::slice::from_ref(&theirs)).unwrap_err();
    assert_eq!(deny.status, 403);
    let error: Value = serde_json::from_slice(&deny.body).unwrap();
    assert_eq!(
        error,
        json!({"jsonrpc":"2.0","id":1,"error":{"code":-32003,"message":"Access denied: Memory m2 does not belong to user alice"}})
    );
    let unowned = (check("m3", json!(1)), Some(String::new()));
    assert_eq!(
        decide_owners(&alice(), "alice", std::slice::from_ref(&unowned))
            .unwrap_err()
            .status,
        403
    );

    let missing = (check("m4", json!("x")), None);
    let deny = decide_owners(&alice(), "alice", std::slice::from_ref(&missing)).unwrap_err();
    let error: Value = serde_json::from_slice(&deny.body).unwrap();
    assert_eq!(
        error,
        json!({"jsonrpc":"2.0","id":"x","error":{"code":-32004,"message":"Memory m4 not found"}})
    );

    // Admins act on any existing memory, never on a missing one.
    assert!(decide_owners(&root(), "root", &[theirs.clone(), unowned]).is_ok());
    assert_eq!(
        decide_owners(&root(), "root", &[missing])
            .unwrap_err()
            .status,
        404
    );

    // In auto mode the owner must be the project scope, not the bare user.
    let scope = project_scope("alice", "/p");
    assert!(decide_owners(&alice(), &scope, &[mine]).is_err());
}

#[test]
fn the_first_memory_refused_answers() {
    let check = |id: &str| {
        (
            OwnerCheck {
                memory_id: id.to_owned(),
                request_id: json!(1),
                tool: "t".to_owned(),
            },
            Some("bob".to_owned()),
        )
    };
    let deny = decide_owners(&alice(), "alice", &[check("a"), check("b")]).unwrap_err();
    let error: Value = serde_json::from_slice(&deny.body).unwrap();
    assert_eq!(error["id"], 1);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Memory a ")
    );
}

// --- Batches -----------------------------------------------------------------

#[test]
fn a_batch_is_refused_whatever_it_holds() {
    let allowed = format!(
        "[{},{}]",
        r#"{"jsonrpc":"2.0","id":"l","method":"tools/list"}"#,
        call(json!(1), "add_memory", json!({"text": "a"})),
    );
    let denied = format!(
        "[{}]",
        call(json!(2), "search_memories", json!({"user_id": "bob"}))
    );
    for body in [allowed.as_str(), denied.as_str(), "[]", "[5]"] {
        let (deny, error) = refused(decide(&alice(), body));
        assert_eq!(deny.status, 400, "{body}");
        assert_eq!(error["id"], Value::Null, "{body}");
        assert_eq!(error["error"]["code"], INVALID_REQUEST, "{body}");
        assert!(deny.message.contains("batches are not accepted"), "{body}");
    }
}

#[test]
fn unchanged_bodies_are_not_rewritten() {
    let body = call(
        json!(1),
        "add_memory",
        json!({"text": "a", "user_id": "alice"}),
    );
    assert_eq!(forward(decide(&alice(), &body)).body, None);
}

// --- tools/list ----------------------------------------------------------------

#[test]
fn tools_list_hides_what_the_token_cannot_call() {
    let response = json!({"jsonrpc":"2.0","id":5,"result":{"tools":[
        {"name":"add_memory","inputSchema":{"type":"object"}},
        {"name":"search_memories"},
        {"name":"link_memories"},
        {"name":"get_memory_history"}
    ]}})
    .to_string();
    let policy = McpPolicy {
        unknown_tools: UnknownTools::Allow,
        ..McpPolicy::default()
    };
    let names = |bytes: Option<Vec<u8>>| -> Option<Vec<String>> {
        let value: Value = serde_json::from_slice(&bytes?).unwrap();
        Some(
            value["result"]["tools"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_owned())
                .collect(),
        )
    };
    let ids = [json!(5)];
    assert_eq!(
        names(policy.filter_tools_list(&reader(), response.as_bytes(), &ids)).unwrap(),
        ["search_memories", "get_memory_history"]
    );
    assert_eq!(
        policy.filter_tools_list(&alice(), response.as_bytes(), &ids),
        None
    );
    assert_eq!(
        policy.filter_tools_list(&reader(), response.as_bytes(), &[json!(6)]),
        None
    );
    let deny_unknown = McpPolicy::default();
    assert_eq!(
        names(deny_unknown.filter_tools_list(&root(), response.as_bytes(), &ids)).unwrap(),
        ["add_memory", "search_memories", "get_memory_history"]
    );
}

#[test]
fn tools_list_inside_an_event_stream() {
    let policy = McpPolicy::default();
    let mut sse = crate::policy::sse::SseRewriter::default();
    let response = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"add_memory"},{"name":"search_memories"}]}}"#;
    let stream = format!("event: message\ndata: {response}\n\n");
    let (head, tail) = stream.split_at(30);
    let ids = [json!(1)];
    let mut filter = |event: &mut crate::policy::sse::SseEvent| {
        policy.filter_sse_event(&reader(), event, &ids);
    };
    let mut out = sse.feed(head.as_bytes(), &mut filter).unwrap();
    assert!(out.is_empty());
    out.extend(sse.feed(tail.as_bytes(), &mut filter).unwrap());
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.starts_with("event: message\ndata: {") && out.ends_with("}\n\n"),
        "{out}"
    );
    assert!(!out.contains("add_memory") && out.contains("search_memories"));
}

// --- Helpers for the proxy -------------------------------------------------------

#[test]
fn legacy_session_ids_from_the_query() {
    assert_eq!(
        session_id_from_query(Some("session_id=abc"))
            .unwrap()
            .as_deref(),
        Some("abc")
    );
    assert_eq!(session_id_from_query(None).unwrap(), None);
    assert_eq!(session_id_from_query(Some("x=1")).unwrap(), None);
    assert_eq!(
        session_id_from_query(Some("session_id=a&session_id=b"))
            .unwrap_err()
            .status,
        400
    );
    assert_eq!(
        session_id_from_query(Some("session_id=%zz"))
            .unwrap_err()
            .status,
        400
    );
}

#[test]
fn denials_from_elsewhere_become_json_rpc_errors() {
    let deny = McpDeny::from_deny(&Deny::new(401, "Invalid authentication token"), &json!(4));
    let body: Value = serde_json::from_slice(&deny.body).unwrap();
    assert_eq!(body["error"]["code"], UNAUTHORIZED);
    assert_eq!(body["id"], 4);
    assert_eq!(deny.status, 401);
}

#[test]
fn labels_are_bounded() {
    let policy = McpPolicy::default();
    assert_eq!(method_label("tools/call"), "tools/call");
    assert_eq!(method_label("x".repeat(100).as_str()), "other");
    assert_eq!(policy.tool_label("add_memory"), "add_memory");
    assert_eq!(policy.tool_label("random-junk"), "unknown");
}

#[test]
fn mirrored_headers_follow_the_rewrite() {
    let body = call(
        json!(1),
        "add_memory",
        json!({"text": "t", "user_id": "alice"}),
    );
    let scope = project_scope("alice", "/p");
    let fwd = forward(decide_with(&McpPolicy::default(), &alice(), &scope, &body));
    let headers = vec![("Mcp-Param-User_Id".to_owned(), "alice".to_owned())];
    assert_eq!(
        param_header_rewrites(&headers, &fwd.param_headers),
        vec![("Mcp-Param-User_Id".to_owned(), Some(scope))]
    );
}

#[test]
fn legacy_session_ids_are_compared_as_the_upstream_parses_them() {
    let id = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let same = [
        "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "0F1E2D3C4B5A69788796A5B4C3D2E1F0",
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        "{0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0}",
        "urn:uuid:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        "uuid:0F1E2D3C4B5A69788796A5B4C3D2E1F0",
        "{{0f1e2d3c4b5a-69788796a5b4c3d2e1f0}",
        "0f-1e2d3c4b5a69788796a5b4c3d2e1f0-",
    ];
    for spelling in same {
        assert_eq!(session_key(spelling, true), id, "{spelling}");
    }
    // Not a UUID to memgate: kept as sent (and so never one it handed out).
    for other in [
        "0x0f1e2d3c4b5a69788796a5b4c3d2e1f",
        "0f1e2d3c_4b5a69788796a5b4c3d2e1f0",
        " 0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "0f1e2d3c4b5a69788796a5b4c3d2e1f",
        "URN:UUID:0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "",
    ] {
        assert_eq!(session_key(other, true), other, "{other:?}");
    }
    // Streamable HTTP ids are looked up as exact strings upstream.
    assert_eq!(
        session_key("0F1E2D3C4B5A69788796A5B4C3D2E1F0", false),
        "0F1E2D3C4B5A69788796A5B4C3D2E1F0"
    );
}

// ---------------------------------------------------------------------------
// The secret guard on tool calls

fn guard(mode: &str) -> crate::policy::secrets::SecretGuard {
    use crate::policy::secrets::{GuardMode, SecretGuard, SecretGuardConfig};
    let mode = match mode {
        "off" => GuardMode::Off,
        "refuse" => GuardMode::Refuse,
        _ => GuardMode::Redact,
    };
    SecretGuard::from_config(&SecretGuardConfig {
        mode,
        ..SecretGuardConfig::default()
    })
    .unwrap()
}

/// A memgate token, built so that no scanner of this repository reads it as one.
fn planted_token() -> String {
    format!("mcp_{}", "Zq7Lp2Xw9Kd4Rt6Yb1Nm3Vc8Hs5Jf0Gu2Ea7Wo4Qi9T")
}

#[test]
fn the_guard_scans_the_tool_s_secret_scan_arguments_only() {
    let policy = McpPolicy::default();
    let token = planted_token();
    let call = |tool: &str, args: Value| {
        json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
               "params": {"name": tool, "arguments": args}})
        .to_string()
    };
    let body = call(
        "add_memory",
        json!({"text": format!("key {token}"), "user_id": "alice"}),
    );
    match policy.scan_secrets(&guard("redact"), body.as_bytes()) {
        SecretScan::Redacted { body, findings } => {
            let sent: Value = serde_json::from_slice(&body).unwrap();
            let text = sent["params"]["arguments"]["text"].as_str().unwrap();
            assert!(
                !text.contains(&token) && text.starts_with("key [REDACTED:"),
                "{text}"
            );
            assert_eq!(sent["params"]["arguments"]["user_id"], "alice");
            assert_eq!(sent["id"], 9);
            assert_eq!(findings.len(), 1);
            assert_eq!(findings[0].path, "arguments.text");
        }
        other => panic!("{other:?}"),
    }
    // Refused in-band, with the request's id, naming rule and place only.
    match policy.scan_secrets(&guard("refuse"), body.as_bytes()) {
        SecretScan::Refused { deny, finding } => {
            assert_eq!(deny.status, 403);
            assert_eq!(deny.tool.as_deref(), Some("add_memory"));
            let error: Value = serde_json::from_slice(&deny.body).unwrap();
            assert_eq!(error["id"], 9);
            assert!(!String::from_utf8_lossy(&deny.body).contains(&token));
            assert_eq!(finding.path, "arguments.text");
        }
        other => panic!("{other:?}"),
    }
    // A read tool has no secret_scan arguments; other messages are not scanned.
    let read = call("search_memories", json!({"query": format!("key {token}")}));
    assert!(matches!(
        policy.scan_secrets(&guard("refuse"), read.as_bytes()),
        SecretScan::Clean
    ));
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"text": token}});
    let ping = ping.to_string();
    assert!(matches!(
        policy.scan_secrets(&guard("refuse"), ping.as_bytes()),
        SecretScan::Clean
    ));
    // Off finds nothing; an unreadable body is left to `decide`, which refuses it.
    assert!(matches!(
        policy.scan_secrets(&guard("off"), body.as_bytes()),
        SecretScan::Clean
    ));
    assert!(matches!(
        policy.scan_secrets(&guard("refuse"), b"{not json"),
        SecretScan::Clean
    ));
}
