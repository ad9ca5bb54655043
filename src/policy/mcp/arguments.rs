//! Owner rules for the `arguments` of one `tools/call`.
//!
//! Top-level user arguments follow the acceptance rule of docs/design.md §3 (via
//! [`check_requested_user`]): forwarded as the scope, or as the user an admin
//! names; all of them must agree; a missing one is injected when the rule says
//! so. For non-admin tokens a user key found deeper (`filters`, `metadata`,
//! any depth) must be the scope or the token's own user_id (or `null`, `""`) and is
//! rewritten to the scope: anything else, an operator object included, is a
//! 403. So is such a key inside a top-level string argument that holds a JSON
//! object or array, because Python MCP servers (FastMCP) parse those into the
//! dict a non-string parameter expects.

use serde_json::{Map, Value};

use super::rules::ToolRule;
use crate::policy::deny::Deny;
use crate::policy::json;
use crate::policy::scope::{check_requested_user, other_user_denied};
use crate::identity::{Identity, Permission};

/// What scoping one call's arguments produced.
#[derive(Debug, Default)]
pub(super) struct ScopedArguments {
    /// Whether the arguments were changed (and the body must be re-sent).
    pub changed: bool,
    /// (argument, forwarded value) for every user argument the call now has.
    pub user_values: Vec<(String, String)>,
    /// Memory ids whose owner must be checked, without repeats.
    pub memory_ids: Vec<String>,
}

/// How memory-id arguments are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MemoryIds {
    /// A tool with a rule: the argument must be a non-empty string or a list
    /// of them (400 otherwise).
    Strict,
    /// An unknown tool: only strings are taken to be mem0 memory ids; other
    /// values belong to a tool memgate knows nothing about and are left alone.
    StringsOnly,
}

/// Scopes `arguments` of a call to `tool_rule`; see the module docs.
pub(super) fn scope_arguments(
    identity: &Identity,
    scope: &str,
    rule: &ToolRule,
    memory_ids: MemoryIds,
    arguments: &mut Map<String, Value>,
    max_json_depth: usize,
) -> Result<ScopedArguments, Deny> {
    let names = rule.all_user_args();
    // Shape first (400), ownership after (403).
    for name in &names {
        if !matches!(
            arguments.get(*name),
            None | Some(Value::Null | Value::String(_))
        ) {
            return Err(Deny::bad_request(format!(
                "Invalid params: argument {name} must be a string"
            )));
        }
    }
    let memory_ids = collect_memory_ids(&rule.memory_id_args, memory_ids, arguments)?;

    let mut effective: Option<String> = None;
    for name in &names {
        let requested = arguments.get(*name).and_then(Value::as_str);
        if requested.is_none_or(str::is_empty) {
            continue;
        }
        let accepted = check_requested_user(identity, scope, requested)?;
        match &effective {
            Some(earlier) if *earlier != accepted => {
                return Err(Deny::bad_request(
                    "Invalid params: the user arguments name different users",
                ));
            }
            _ => effective = Some(accepted),
        }
    }
    let effective = effective.unwrap_or_else(|| scope.to_owned());

    let mut scoped = ScopedArguments {
        memory_ids,
        ..ScopedArguments::default()
    };
    for name in &names {
        if let Some(value) = arguments.get_mut(*name) {
            if value.as_str() != Some(effective.as_str()) {
                *value = Value::String(effective.clone());
                scoped.changed = true;
            }
            scoped
                .user_values
                .push(((*name).to_owned(), effective.clone()));
        }
    }
    if scoped.user_values.is_empty() && rule.inject_user {
        let name = rule.injected_arg().to_owned();
        arguments.insert(name.clone(), Value::String(effective.clone()));
        scoped.user_values.push((name, effective.clone()));
        scoped.changed = true;
    }

    if !identity.permissions.allows(Permission::Admin) {
        let nested = NestedUsers {
            names: &names,
            identity,
            scope,
            max_json_depth,
        };
        for (key, value) in arguments.iter_mut() {
            if !names.contains(&key.as_str()) {
                scoped.changed |= nested.rewrite_argument(key, value)?;
            }
        }
    }
    Ok(scoped)
}

fn collect_memory_ids(
    names: &[String],
    mode: MemoryIds,
    arguments: &Map<String, Value>,
) -> Result<Vec<String>, Deny> {
    let invalid = |name: &str| {
        Deny::bad_request(format!(
            "Invalid params: argument {name} must be a memory id (a non-empty string) or a list of them"
        ))
    };
    let mut ids: Vec<String> = Vec::new();
    let mut take = |id: &str| {
        if !ids.iter().any(|known| known == id) {
            ids.push(id.to_owned());
        }
    };
    for name in names {
        match (arguments.get(name), mode) {
            (None | Some(Value::Null), _) => {}
            (Some(Value::String(id)), _) if !id.is_empty() => take(id),
            (Some(Value::Array(items)), MemoryIds::Strict) => {
                for item in items {
                    match item.as_str() {
                        Some(id) if !id.is_empty() => take(id),
                        _ => return Err(invalid(name)),
                    }
                }
            }
            (Some(_), MemoryIds::Strict) => return Err(invalid(name)),
            (Some(_), MemoryIds::StringsOnly) => {}
        }
    }
    Ok(ids)
}

/// User keys below the top level of the arguments, for non-admin tokens.
struct NestedUsers<'a> {
    names: &'a [&'a str],
    identity: &'a Identity,
    scope: &'a str,
    max_json_depth: usize,
}

impl NestedUsers<'_> {
    /// One top-level argument: its nested values, or the JSON a string holds.
    fn rewrite_argument(&self, name: &str, value: &mut Value) -> Result<bool, Deny> {
        let Value::String(text) = value else {
            return self.rewrite(value);
        };
        if !text.trim_start().starts_with(['{', '[']) {
            return Ok(false);
        }
        match json::parse_value(text.as_bytes(), self.max_json_depth) {
            Ok(mut inner) => {
                let changed = self.rewrite(&mut inner)?;
                if changed {
                    *text = inner.to_string();
                }
                Ok(changed)
            }
            // JSON memgate will not read (repeated keys, deep nesting) or that
            // only Python reads (NaN, Infinity, overflowing numbers, lone
            // surrogates) cannot be checked: refused if it may name a user.
            Err(_) if names_a_key(text, self.names) => Err(Deny::bad_request(format!(
                "Invalid params: argument {name} holds JSON that memgate cannot check \
                 and that may name a user"
            ))),
            // Text such as "[draft] ...": nothing a server could read as a user.
            Err(_) => Ok(false),
        }
    }

    fn rewrite(&self, value: &mut Value) -> Result<bool, Deny> {
        let mut changed = false;
        match value {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    if self.names.contains(&key.as_str()) {
                        changed |= self.force(child)?;
                    } else {
                        changed |= self.rewrite(child)?;
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    changed |= self.rewrite(item)?;
                }
            }
            _ => {}
        }
        Ok(changed)
    }

    fn force(&self, value: &mut Value) -> Result<bool, Deny> {
        match value {
            Value::String(named) if named == self.scope => return Ok(false),
            Value::Null => {}
            Value::String(named) if named.is_empty() || *named == self.identity.user_id => {}
            _ => return Err(other_user_denied(self.identity)),
        }
        *value = Value::String(self.scope.to_owned());
        Ok(true)
    }
}

/// Whether `text` has an object key (a double-quoted string followed by `:`)
/// that decodes to one of `names`, read as leniently as any JSON parser would
/// (escapes decoded, lone surrogates replaced), whether or not the rest of
/// the text is valid JSON.
fn names_a_key(text: &str, names: &[&str]) -> bool {
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut key = String::new();
        let mut closed = false;
        let mut pending_high: Option<u32> = None;
        while let Some(c) = chars.next() {
            match c {
                '"' => {
                    closed = true;
                    break;
                }
                '\\' => {
                    let escaped = match chars.next() {
                        Some('u') => {
                            let hex: String = chars.by_ref().take(4).collect();
                            match u32::from_str_radix(&hex, 16) {
                                Ok(unit) => {
                                    push_utf16(&mut key, &mut pending_high, unit);
                                    continue;
                                }
                                Err(_) => '\u{fffd}',
                            }
                        }
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        Some('b') => '\u{8}',
                        Some('f') => '\u{c}',
                        Some(other) => other,
                        None => break,
                    };
                    flush_high(&mut key, &mut pending_high);
                    key.push(escaped);
                }
                other => {
                    flush_high(&mut key, &mut pending_high);
                    key.push(other);
                }
            }
        }
        flush_high(&mut key, &mut pending_high);
        if !closed {
            return false;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek() == Some(&':') && names.contains(&key.as_str()) {
            return true;
        }
    }
    false
}

/// Adds one UTF-16 code unit from a `\u` escape, pairing surrogates.
fn push_utf16(key: &mut String, pending_high: &mut Option<u32>, unit: u32) {
    match (pending_high.take(), unit) {
        (Some(high), 0xDC00..=0xDFFF) => {
            let code = 0x10000 + ((high - 0xD800) << 10) + (unit - 0xDC00);
            key.push(char::from_u32(code).unwrap_or('\u{fffd}'));
        }
        (high, 0xD800..=0xDBFF) => {
            if high.is_some() {
                key.push('\u{fffd}');
            }
            *pending_high = Some(unit);
        }
        (high, _) => {
            if high.is_some() {
                key.push('\u{fffd}');
            }
            key.push(char::from_u32(unit).unwrap_or('\u{fffd}'));
        }
    }
}

fn flush_high(key: &mut String, pending_high: &mut Option<u32>) {
    if pending_high.take().is_some() {
        key.push('\u{fffd}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 2] = ["user_id", "userId"];

    #[test]
    fn finds_user_keys_in_text_no_strict_parser_reads() {
        for text in [
            r#"{"user_id": "bob", "x": NaN}"#,
            r#"{"a": Infinity, "userId" : "bob"}"#,
            r#"{"user\u005fid": "bob", "x": 1e999}"#,
            r#"[{"x": "\ud800", "user_id":"bob"}]"#,
            r#"{"user_id":"a","user_id":"b"}"#,
            r#"{"k": "\"", "user_id": 1"#,
        ] {
            assert!(names_a_key(text, &NAMES), "{text}");
        }
        for text in [
            "[draft] user_id: bob",
            r#"["user_id", "bob"]"#,
            r#"{"user_idx": 1, "x": NaN}"#,
            r#"{"note": "user_id: bob"}"#,
            r#"{"unterminated: "#,
            r#"{"\ud83d\ude00": 1, "\ud800": 2, "\uzzzz": 3}"#,
        ] {
            assert!(!names_a_key(text, &NAMES), "{text}");
        }
    }
}
