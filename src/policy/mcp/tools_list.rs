//! `tools/list` results: which request ids to watch, and hiding from a result
//! the tools a token may not call (docs/design.md §5). Hiding is a courtesy to the
//! client; the calls themselves are what the policy enforces.

use serde_json::Value;

use super::TOOLS_LIST;
use crate::policy::json;

/// Deepest nesting read in a response (tool input schemas nest).
const RESPONSE_DEPTH: usize = 100;

/// The ids of the `tools/list` requests in a request body (one message or a
/// batch), whose responses the proxy passes to
/// [`super::McpPolicy::filter_tools_list`]. Empty for a body memgate cannot
/// read and for `tools/list` notifications (no id, no response).
pub fn tools_list_ids(body: &[u8]) -> Vec<Value> {
    let Ok(parsed) = json::parse_value(body, RESPONSE_DEPTH) else {
        return Vec::new();
    };
    let messages = match &parsed {
        Value::Array(items) => items.as_slice(),
        single => std::slice::from_ref(single),
    };
    messages
        .iter()
        .filter(|message| message.get("method").and_then(Value::as_str) == Some(TOOLS_LIST))
        .filter_map(|message| message.get("id"))
        .filter(|id| !id.is_null())
        .cloned()
        .collect()
}

/// Drops from `result.tools` of each response whose id is in `ids` every tool
/// `may_call` refuses; `None` when nothing was dropped.
pub(super) fn filter(
    response: &[u8],
    ids: &[Value],
    may_call: impl Fn(&str) -> bool,
) -> Option<Vec<u8>> {
    if ids.is_empty() {
        return None;
    }
    let mut parsed = json::parse_value(response, RESPONSE_DEPTH).ok()?;
    let messages = match &mut parsed {
        Value::Array(items) => items.as_mut_slice(),
        single => std::slice::from_mut(single),
    };
    let mut dropped = 0;
    for message in messages {
        let Value::Object(object) = message else {
            continue;
        };
        if !object.get("id").is_some_and(|id| ids.contains(id)) {
            continue;
        }
        let Some(Value::Array(tools)) = object
            .get_mut("result")
            .and_then(|result| result.get_mut("tools"))
        else {
            continue;
        };
        let before = tools.len();
        // A tool without a string name cannot be called; it is left as sent.
        tools.retain(|tool| match tool.get("name").and_then(Value::as_str) {
            Some(name) => may_call(name),
            None => true,
        });
        dropped += before - tools.len();
    }
    (dropped > 0).then(|| json::to_bytes(&parsed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_tools_list_ids() {
        let body = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},
            {"jsonrpc":"2.0","method":"tools/list"},
            {"jsonrpc":"2.0","id":"b","method":"tools/list","params":{}},
            {"jsonrpc":"2.0","id":2,"method":"tools/call"}]"#;
        assert_eq!(tools_list_ids(body), vec![json!(1), json!("b")]);
        assert_eq!(
            tools_list_ids(br#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#),
            vec![json!(9)]
        );
        assert!(tools_list_ids(b"not json").is_empty());
        assert!(tools_list_ids(br#"{"id":1,"method":"tools/list","id":2}"#).is_empty());
    }

    #[test]
    fn filters_only_the_watched_responses() {
        let deny_b = |name: &str| name != "b";
        let body = json!([
            {"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"b"},{"x":1}],"nextCursor":"c"}},
            {"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"b"}]}}
        ])
        .to_string();
        let out = filter(body.as_bytes(), &[json!(1)], deny_b).unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out[0]["result"]["tools"], json!([{"name":"a"},{"x":1}]));
        assert_eq!(out[0]["result"]["nextCursor"], "c");
        assert_eq!(out[1]["result"]["tools"], json!([{"name":"b"}]));
        assert!(filter(body.as_bytes(), &[json!(3)], deny_b).is_none());
        assert!(filter(body.as_bytes(), &[], deny_b).is_none());
        assert!(filter(body.as_bytes(), &[json!(1)], |_| true).is_none());
        assert!(filter(b"{]", &[json!(1)], deny_b).is_none());
        let error = br#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}"#;
        assert!(filter(error, &[json!(1)], deny_b).is_none());
    }
}
