//! The MCP policy's central promise as a checkable property, and a fuzzer
//! entry point that drives the policy, the `tools/list` filter and the SSE
//! rewriter with it (`fuzz_target!(|d: &[u8]| fuzz_entry(d))`).

use serde_json::Value;

use super::{
    McpDecision, McpForward, McpPolicy, ScopedBy, TOOLS_CALL, ToolRule, UnknownTools,
    decide_owners, origin_allowed, param_header_rewrites, tools_list_ids,
};
use crate::policy::scope::project_scope;
use crate::policy::sse::{SseRewriter, endpoint_session_id};
use crate::identity::{Identity, Permission, Permissions};
use crate::policy::json;

/// Whether what `policy` forwards for a non-admin names no user but `scope`:
/// in the body that will be sent (`forward.body`, else `client_body`), every
/// `tools/call` carries each of its user arguments, at the top of `arguments`
/// and at any depth below (inside JSON held in a top-level string too), only
/// as `scope`, carries one when its rule injects, names a tool the token may
/// call, and every mirrored value in `param_headers` is `scope`. Admin tokens
/// may name anyone and pass trivially.
pub fn forwards_only_scope(
    policy: &McpPolicy,
    identity: &Identity,
    scope: &str,
    client_body: &[u8],
    forward: &McpForward,
) -> bool {
    if identity.permissions.allows(Permission::Admin) {
        return true;
    }
    if forward
        .param_headers
        .iter()
        .any(|(_, value)| value != scope)
    {
        return false;
    }
    let sent = forward.body.as_deref().unwrap_or(client_body);
    let Ok(parsed) = json::parse_value(sent, usize::MAX) else {
        return false;
    };
    let messages = match &parsed {
        Value::Array(items) => items.as_slice(),
        single => std::slice::from_ref(single),
    };
    messages
        .iter()
        .filter(|message| message.get("method").and_then(Value::as_str) == Some(TOOLS_CALL))
        .all(|message| call_names_only(policy, identity, scope, message))
}

fn call_names_only(policy: &McpPolicy, identity: &Identity, scope: &str, message: &Value) -> bool {
    let Some(tool) = message
        .get("params")
        .and_then(|params| params.get("name"))
        .and_then(Value::as_str)
    else {
        return false;
    };
    let Some(rule) = policy.rule_for(tool) else {
        return false;
    };
    if !identity.permissions.allows(rule.permission) {
        return false;
    }
    let names = rule.all_user_args();
    let arguments = message
        .get("params")
        .and_then(|params| params.get("arguments"));
    let arguments = match arguments {
        None | Some(Value::Null) => return !rule.inject_user,
        Some(Value::Object(arguments)) => arguments,
        Some(_) => return false,
    };
    let mut carried = false;
    for (key, value) in arguments {
        if names.contains(&key.as_str()) {
            carried = true;
            if value.as_str() != Some(scope) {
                return false;
            }
        } else if !nested_only(&names, scope, value, true) {
            return false;
        }
    }
    carried || !rule.inject_user
}

fn nested_only(names: &[&str], scope: &str, value: &Value, top: bool) -> bool {
    match value {
        Value::Object(map) => map.iter().all(|(key, child)| {
            if names.contains(&key.as_str()) {
                child.as_str() == Some(scope)
            } else {
                nested_only(names, scope, child, false)
            }
        }),
        Value::Array(items) => items
            .iter()
            .all(|item| nested_only(names, scope, item, false)),
        Value::String(text) if top => match json::parse_value(text.as_bytes(), usize::MAX) {
            Ok(inner) => nested_only(names, scope, &inner, false),
            Err(_) => true,
        },
        _ => true,
    }
}

/// Fuzzer entry: `data` is a request body, and also a response body and an
/// event stream. Runs [`McpPolicy::decide`] for a writer, a reader and an
/// admin in `manual` and `auto` scopes under both `unknown_tools` settings,
/// [`decide_owners`] on every check, the mirrored-header rewrite, the
/// `tools/list` filter and the SSE rewriter. Panics only when a promise is
/// broken: a forward naming another user ([`forwards_only_scope`]), an owner
/// decision letting a non-admin act outside its scope, a refusal that is not
/// a JSON-RPC error, a filtered list still holding a tool the token may not
/// call, or an SSE rewrite that changes bytes it was not asked to change.
pub fn fuzz_entry(data: &[u8]) {
    let mut lenient = McpPolicy {
        unknown_tools: UnknownTools::Allow,
        upstream_per_scope: true,
        max_json_depth: 16,
        ..McpPolicy::default()
    };
    let mut custom = ToolRule::new(Permission::Read, ScopedBy::Argument);
    custom.user_args = vec!["owner".to_owned()];
    custom.memory_id_args = vec!["ids".to_owned()];
    custom.inject_user = true;
    lenient.tools.insert("custom".to_owned(), custom);
    let policies = [McpPolicy::default(), lenient];
    let ids = tools_list_ids(data);
    for (user_id, permissions) in [
        ("alice", "read,write"),
        ("reader", "read"),
        ("root", "admin"),
    ] {
        let identity = Identity {
            user_id: user_id.to_owned(),
            permissions: Permissions::parse(permissions).unwrap_or_default(),
            token_prefix: "mcp_fuzzfuzz".to_owned(),
        };
        for policy in &policies {
            for scope in [user_id.to_owned(), project_scope(user_id, "/src/app")] {
                check_decision(policy, &identity, &scope, data);
            }
            if let Some(filtered) =
                policy.filter_tools_list(&identity, data, &[Value::from(1), Value::from("a")])
            {
                check_filtered(policy, &identity, &filtered);
            }
            let _ = policy.filter_tools_list(&identity, data, &ids);
        }
    }
    check_sse(data);
    let text = String::from_utf8_lossy(data);
    let _ = endpoint_session_id(&text);
    let _ = origin_allowed(
        Some(&text),
        &["https://a.example".to_owned(), "null".to_owned()],
    );
}

fn check_decision(policy: &McpPolicy, identity: &Identity, scope: &str, data: &[u8]) {
    let is_admin = identity.permissions.allows(Permission::Admin);
    match policy.decide(identity, scope, data) {
        McpDecision::Deny(deny) => {
            assert!(matches!(deny.status, 400 | 403), "{deny:?}");
            let body: Value = serde_json::from_slice(&deny.body).unwrap_or_default();
            let errors = match &body {
                Value::Array(items) => items.iter().collect::<Vec<_>>(),
                single => vec![single],
            };
            assert!(!errors.is_empty());
            assert!(
                errors
                    .iter()
                    .all(|e| e["error"]["code"].is_i64() && e["jsonrpc"] == "2.0")
            );
        }
        McpDecision::Forward(forward) => {
            assert!(
                forwards_only_scope(policy, identity, scope, data, &forward),
                "{forward:?}"
            );
            let headers = vec![
                ("Mcp-Param-user_id".to_owned(), "mallory".to_owned()),
                ("mcp-param-USERID".to_owned(), scope.to_owned()),
            ];
            for (name, edit) in param_header_rewrites(&headers, &forward.param_headers) {
                if let Some(value) = edit {
                    assert!(
                        is_admin || value == super::encode_param_value(scope),
                        "{name}"
                    );
                }
            }
            for owner in [None, Some(""), Some(scope), Some("mallory")] {
                let checks: Vec<_> = forward
                    .need_owners
                    .iter()
                    .map(|check| (check.clone(), owner.map(str::to_owned)))
                    .collect();
                let allowed = decide_owners(identity, scope, &checks).is_ok();
                if !checks.is_empty() && allowed {
                    assert!(owner.is_some() && (is_admin || owner == Some(scope)));
                }
            }
        }
    }
}

fn check_filtered(policy: &McpPolicy, identity: &Identity, filtered: &[u8]) {
    let Ok(parsed) = serde_json::from_slice::<Value>(filtered) else {
        panic!("filtered tools/list is not JSON");
    };
    let messages = match &parsed {
        Value::Array(items) => items.iter().collect::<Vec<_>>(),
        single => vec![single],
    };
    for message in messages {
        let watched = message.get("id").is_some_and(|id| *id == 1 || *id == "a");
        let tools = message
            .get("result")
            .and_then(|result| result.get("tools"))
            .and_then(Value::as_array);
        if let (true, Some(tools)) = (watched, tools) {
            for name in tools.iter().filter_map(|tool| tool.get("name")?.as_str()) {
                assert!(policy.may_call(identity, name), "{name}");
            }
        }
    }
}

/// The SSE rewriter: an untouched stream comes out byte for byte however it
/// is cut, and a rewritten one the same however it is cut.
fn check_sse(data: &[u8]) {
    let cuts = [1, 2, 3, 7, data.len().max(1)];
    let mut reference: Option<Vec<u8>> = None;
    for cut in cuts {
        let mut untouched = SseRewriter::new(1 << 16);
        let mut rewriting = SseRewriter::new(1 << 16);
        let mut same = Vec::new();
        let mut changed = Vec::new();
        let mut failed = false;
        let rewrite = |event: &mut crate::policy::sse::SseEvent| {
            if let Some(data) = &event.data {
                event.data = Some(format!("<{data}>"));
            }
            if event.id.is_some() {
                event.id = None;
            }
        };
        for chunk in data.chunks(cut) {
            match (
                untouched.feed(chunk, |_| {}),
                rewriting.feed(chunk, rewrite),
            ) {
                (Ok(a), Ok(b)) => {
                    same.extend(a);
                    changed.extend(b);
                }
                _ => failed = true,
            }
        }
        if failed {
            continue;
        }
        match (untouched.finish(|_| {}), rewriting.finish(rewrite)) {
            (Ok(a), Ok(b)) => {
                same.extend(a);
                changed.extend(b);
            }
            _ => continue,
        }
        assert_eq!(same, data, "untouched stream changed (cut {cut})");
        match &reference {
            Some(reference) => assert_eq!(*reference, changed, "cut {cut}"),
            None => reference = Some(changed),
        }
    }
}
