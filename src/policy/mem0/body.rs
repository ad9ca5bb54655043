//! Owner rules for JSON bodies: every `user_id` a body carries, at any depth,
//! must be one the caller may name, and is rewritten to the effective scope.
//!
//! The top-level `user_id` follows the acceptance rule (docs/design.md §3), which is
//! where an admin names another user. Any `user_id` deeper down (`metadata`,
//! `filters` under `AND`/`OR`/`NOT`, anything else) is read as a filter
//! condition and must select only that user: a plain string, `{"eq": s}` or
//! `{"in": [s, ...]}`, with every `s` the effective scope, the token's own
//! scope or its own user_id. Every other shape (`ne`, `nin`, `gt`…, `contains`,
//! `icontains`, the `*` wildcard, `null`, numbers, several operators) is a 403:
//! memgate does not try to prove that an operator is harmless.

use serde_json::{Map, Value};

use crate::identity::Identity;
use crate::policy::deny::Deny;
use crate::policy::scope::{check_requested_user, other_user_denied};

/// Who a body may name: the effective scope (for an admin, the user named at
/// the top level) plus the caller's own scope and user_id.
struct Owners<'a> {
    identity: &'a Identity,
    scope: &'a str,
    effective: &'a str,
}

impl Owners<'_> {
    fn accepts(&self, named: &str) -> bool {
        !named.is_empty()
            && (named == self.effective || named == self.scope || named == self.identity.user_id)
    }

    fn accepts_condition(&self, condition: &Value) -> bool {
        match condition {
            Value::String(named) => self.accepts(named),
            Value::Object(ops) if ops.len() == 1 => match ops.iter().next() {
                Some((op, Value::String(named))) if op == "eq" => self.accepts(named),
                Some((op, Value::Array(list))) if op == "in" => {
                    !list.is_empty()
                        && list
                            .iter()
                            .all(|item| item.as_str().is_some_and(|named| self.accepts(named)))
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// Checks and rewrites every `user_id` below `value`; sets `changed`
    /// when one read otherwise.
    fn rewrite_nested(&self, value: &mut Value, changed: &mut bool) -> Result<(), Deny> {
        match value {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    if key == "user_id" {
                        if !self.accepts_condition(child) {
                            return Err(other_user_denied(self.identity));
                        }
                        if !is_string(child, self.effective) {
                            *changed = true;
                            *child = Value::String(self.effective.to_owned());
                        }
                    } else {
                        self.rewrite_nested(child, changed)?;
                    }
                }
                Ok(())
            }
            Value::Array(items) => items
                .iter_mut()
                .try_for_each(|item| self.rewrite_nested(item, changed)),
            _ => Ok(()),
        }
    }
}

fn is_string(value: &Value, text: &str) -> bool {
    matches!(value, Value::String(s) if s == text)
}

/// What the owner rules changed in a body: the caller forwards it as sent,
/// as sent with `user_id` added in front, or serialized again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edit {
    Unchanged,
    /// Only a top-level `user_id` was added (the body had none).
    AddedUserId,
    Rewritten,
}

impl Edit {
    fn of(added: bool, rewritten: bool) -> Edit {
        match (added, rewritten) {
            (_, true) => Edit::Rewritten,
            (true, false) => Edit::AddedUserId,
            (false, false) => Edit::Unchanged,
        }
    }
}

/// Shape checks that are 400s, done before any ownership 403. `filters` is
/// checked only where memgate rewrites it (`POST /search`).
pub(super) fn check_shape(body: &Map<String, Value>, rewrites_filters: bool) -> Result<(), Deny> {
    if !matches!(
        body.get("user_id"),
        None | Some(Value::Null | Value::String(_))
    ) {
        return Err(Deny::bad_request("user_id must be a string"));
    }
    if rewrites_filters
        && !matches!(
            body.get("filters"),
            None | Some(Value::Null | Value::Object(_))
        )
    {
        return Err(Deny::bad_request("filters must be a JSON object"));
    }
    Ok(())
}

/// Applies the owner rules to a body and returns the effective scope and
/// what changed. With `inject`, a missing top-level `user_id` is added; with
/// `filter_scope`, `filters.user_id` is set too (the keys of `filters` are
/// ANDed by mem0, so this bounds any `OR`/`NOT` tree inside to the scope).
pub(super) fn scope_body(
    identity: &Identity,
    scope: &str,
    body: &mut Map<String, Value>,
    inject: bool,
    filter_scope: bool,
) -> Result<(String, Edit), Deny> {
    let requested = body.get("user_id").and_then(Value::as_str);
    let effective = check_requested_user(identity, scope, requested)?;
    let owners = Owners {
        identity,
        scope,
        effective: &effective,
    };
    let mut rewritten = false;
    for (key, value) in body.iter_mut() {
        if key != "user_id" {
            owners.rewrite_nested(value, &mut rewritten)?;
        }
    }
    let mut added = false;
    match body.get("user_id") {
        None if !inject => {}
        Some(named) if is_string(named, &effective) => {}
        present => {
            added = present.is_none();
            rewritten |= present.is_some();
            body.insert("user_id".to_owned(), Value::String(effective.clone()));
        }
    }
    if filter_scope {
        let scoped = Value::String(effective.clone());
        match body.get_mut("filters") {
            Some(Value::Object(filters)) => {
                if filters.get("user_id") != Some(&scoped) {
                    rewritten = true;
                    filters.insert("user_id".to_owned(), scoped);
                }
            }
            _ => {
                rewritten = true;
                let filters = Map::from_iter([("user_id".to_owned(), scoped)]);
                body.insert("filters".to_owned(), Value::Object(filters));
            }
        }
    }
    Ok((effective, Edit::of(added, rewritten)))
}
