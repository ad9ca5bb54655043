//! The policy's central promise as a checkable property, and a fuzzer entry
//! point that drives the whole decision with it. Used by the property tests
//! and by any `cargo fuzz` target (`fuzz_target!(|d: &[u8]| fuzz_entry(d))`).

use serde_json::Value;

use super::{Decision, Forward, Mem0Policy, Mem0Request, Route, decide_owner};
use super::{
    created_ids_scanned, filter_answer, filter_results, foreign_items_in, foreign_items_scanned,
    owner_from_get_response, owner_ids_from_create_response, owner_ids_in,
};
use crate::policy::query::Query;
use crate::policy::scope::{IsolationMode, project_scope};
use crate::identity::{Identity, Permissions};
use crate::policy::json;

/// Whether a forwarded request names no user but `forward.scope`: every
/// `user_id` in the query and anywhere in the JSON body that will be sent
/// (`forward.body`, else the client's `client_body`) equals it, the list and
/// delete-all queries carry it, and create/search bodies carry it (search in
/// `filters` too), and the query holds only parameters mem0 defines for the
/// route. Admin-only and allow-listed routes are not rewritten and pass
/// otherwise.
pub fn forwards_only_scope(forward: &Forward, client_body: Option<&[u8]>) -> bool {
    let scope = forward.scope.as_str();
    if let Some(allowed) = forward.route.query_params() {
        let Ok(query) = Query::parse(forward.query.as_deref().unwrap_or("")) else {
            return false;
        };
        if query
            .pairs()
            .iter()
            .any(|(key, _)| !allowed.contains(&key.as_str()))
        {
            return false;
        }
    }
    if matches!(
        forward.route,
        Route::AllowListed | Route::Reset | Route::Configure
    ) {
        return true;
    }
    let Ok(query) = Query::parse(forward.query.as_deref().unwrap_or("")) else {
        return false;
    };
    if query
        .pairs()
        .iter()
        .any(|(key, value)| key == "user_id" && value != scope)
    {
        return false;
    }
    if matches!(
        forward.route,
        Route::ListMemories | Route::DeleteAllMemories
    ) && query.get("user_id") != Some(scope)
    {
        return false;
    }
    let sent = forward
        .body
        .as_deref()
        .or(client_body)
        .filter(|bytes| !bytes.is_empty());
    let Some(sent) = sent else {
        return !matches!(forward.route, Route::CreateMemories | Route::Search);
    };
    let Ok(body) = json::parse_value(sent, usize::MAX) else {
        return false;
    };
    let names_scope = |value: Option<&Value>| value.and_then(Value::as_str) == Some(scope);
    let required = match forward.route {
        Route::CreateMemories => names_scope(body.get("user_id")),
        Route::Search => {
            names_scope(body.get("user_id"))
                && names_scope(body.get("filters").and_then(|f| f.get("user_id")))
        }
        _ => true,
    };
    required && every_user_id_is(&body, scope)
}

fn every_user_id_is(value: &Value, scope: &str) -> bool {
    match value {
        Value::Object(map) => map.iter().all(|(key, child)| {
            if key == "user_id" {
                child.as_str() == Some(scope)
            } else {
                every_user_id_is(child, scope)
            }
        }),
        Value::Array(items) => items.iter().all(|item| every_user_id_is(item, scope)),
        _ => true,
    }
}

/// Fuzzer entry: `data` is `method \n path \n query \n content-type \n body`.
/// Runs the full decision for a writer, a reader and an admin in `manual` and
/// `auto` scopes, the owner decision on every `NeedOwner`, and the response
/// helpers on the body. Panics only if the policy breaks its promise
/// ([`forwards_only_scope`], a non-admin acting outside its scope, or a
/// refusal with a status the policy never uses): that is the finding.
pub fn fuzz_entry(data: &[u8]) {
    let mut fields = data.splitn(5, |&b| b == b'\n');
    let mut next_text = || String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let (method, path, query, content_type) = (next_text(), next_text(), next_text(), next_text());
    let body = fields.next();
    let request = Mem0Request {
        method: &method,
        path: &path,
        query: Some(query.as_str()).filter(|q| !q.is_empty()),
        content_type: Some(content_type.as_str()).filter(|c| !c.is_empty()),
        body,
    };
    let policy = Mem0Policy {
        mode: IsolationMode::Manual,
        allow_delete_all: data.len().is_multiple_of(2),
        allowed_routes: vec![("GET".to_owned(), "/docs".to_owned())],
        max_body_bytes: 64 * 1024,
        max_json_depth: 16,
    };
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
        let is_admin = identity.permissions.admin;
        for scope in [user_id.to_owned(), project_scope(user_id, "/src/app")] {
            let forward = match policy.decide(&identity, &scope, &request) {
                Decision::Deny(deny) => {
                    assert!(
                        matches!(deny.status, 400 | 403 | 404 | 405 | 413 | 415),
                        "{deny}"
                    );
                    continue;
                }
                Decision::Forward(forward) => forward,
                Decision::NeedOwner(need) => {
                    for owner in [None, Some(""), Some(scope.as_str()), Some("mallory")] {
                        let allowed =
                            decide_owner(&identity, &need.scope, &need.memory_id, owner).is_ok();
                        assert!(!allowed || owner.is_some());
                        assert!(!allowed || is_admin || owner == Some(scope.as_str()));
                    }
                    need.forward
                }
            };
            assert!(forwards_only_scope(&forward, body), "{forward:?}");
            assert!(is_admin || forward.route == Route::AllowListed || forward.scope == scope);
            for route in [Route::CreateMemories, Route::UpdateMemory] {
                let content_type = request.content_type;
                let body = request.body.filter(|bytes| !bytes.is_empty());
                if let Some(plain) =
                    policy.scope_plain_body(&identity, &scope, route, content_type, body)
                {
                    let parsed =
                        policy.scope_parsed_body(&identity, &scope, route, content_type, body);
                    assert_eq!(plain, parsed, "the scan's shortcut decided otherwise");
                }
            }
        }
    }
    let body = body.unwrap_or_default();
    for max_depth in [1, 3, 16] {
        assert!(json::scan_agrees_with_parse(body, max_depth, "user_id"));
    }
    // The create answer's cursor vouches only for JSON (equal keys and all)
    // that serde reads to the same ids.
    if let Some(ids) = created_ids_scanned(body) {
        let value: Value = serde_json::from_slice(body).expect("the cursor vouched for non-JSON");
        assert_eq!(ids, owner_ids_from_create_response(&value));
    }
    if let Some(foreign) = foreign_items_scanned("alice", body) {
        let value: Value = serde_json::from_slice(body).expect("the cursor vouched for non-JSON");
        assert_eq!(foreign, filter_results("alice", value).1);
    }
    if let Ok(value) = json::parse_value(body, usize::MAX) {
        // The text reading agrees with the `Value` reading.
        assert_eq!(
            owner_ids_in(body).ok(),
            Some(owner_ids_from_create_response(&value))
        );
        let _ = owner_from_get_response(&value);
        let foreign = foreign_items_in("alice", body).ok();
        let answer = filter_answer("alice", body).ok();
        let (kept, dropped) = filter_results("alice", value);
        assert_eq!(foreign, Some(dropped), "the text reading counts otherwise");
        let expected = (dropped > 0).then(|| (json::to_bytes(&kept), dropped));
        assert_eq!(answer, Some(expected), "the answer is filtered otherwise");
        let items = match &kept {
            Value::Array(items) => Some(items),
            other => other.get("results").and_then(Value::as_array),
        };
        let alice = |item: &Value| item.get("user_id").and_then(Value::as_str) == Some("alice");
        assert!(items.into_iter().flatten().all(alice));
    }
}
