//! What the proxy does with mem0's responses: drop other users' items from
//! lists and searches, learn owners from creations and lookups.

use serde_json::Value;

/// Drops from a `GET /memories` or `POST /search` response every item that is
/// not the scope's, returning the filtered response and how many were dropped.
/// Handles `{"results": [...]}` (other keys kept) and a bare list; anything
/// else is returned unchanged. An item is kept only if it is an object whose
/// `user_id` is exactly `scope`: mem0 always sets `user_id` on list and search
/// items of a user-scoped query, so an item without one was stored by someone
/// else (agent- or run-only) and is dropped too. Not for history responses,
/// whose rows carry no user_id (DESIGN.md §4).
pub fn filter_results(scope: &str, response: Value) -> (Value, usize) {
    match response {
        Value::Array(items) => {
            let (kept, dropped) = keep_scope(scope, items);
            (Value::Array(kept), dropped)
        }
        Value::Object(mut body) => {
            let dropped = match body.get_mut("results") {
                Some(Value::Array(items)) => {
                    let (kept, dropped) = keep_scope(scope, std::mem::take(items));
                    *items = kept;
                    dropped
                }
                _ => 0,
            };
            (Value::Object(body), dropped)
        }
        other => (other, 0),
    }
}

fn keep_scope(scope: &str, items: Vec<Value>) -> (Vec<Value>, usize) {
    let before = items.len();
    let kept: Vec<Value> = items
        .into_iter()
        .filter(|item| item.get("user_id").and_then(Value::as_str) == Some(scope))
        .collect();
    let dropped = before - kept.len();
    (kept, dropped)
}

/// The ids of memories a `POST /memories` response reports, which the proxy
/// records as owned by the request's scope. Reads `{"results": [...]}` (mem0
/// 1.x/2.x) or a bare list (0.x); skips `DELETE` events, whose memory is gone.
pub fn owner_ids_from_create_response(response: &Value) -> Vec<String> {
    let items = match response {
        Value::Array(items) => items,
        Value::Object(body) => match body.get("results") {
            Some(Value::Array(items)) => items,
            _ => return Vec::new(),
        },
        _ => return Vec::new(),
    };
    items
        .iter()
        .filter(|item| item.get("event").and_then(Value::as_str) != Some("DELETE"))
        .filter_map(|item| item.get("id").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

/// The owner of a memory from mem0's `GET /memories/{id}` response, in the form
/// [`super::decide_owner`] takes: `None` when mem0 answered `null` (no such
/// memory) or something that is not an item, `Some("")` for a memory stored
/// without a user_id (owned by nobody a token can name), else `Some(user_id)`.
pub fn owner_from_get_response(response: &Value) -> Option<String> {
    match response {
        Value::Object(item) => Some(
            item.get("user_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        ),
        _ => None,
    }
}
