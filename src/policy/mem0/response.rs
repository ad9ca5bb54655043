//! What the proxy does with mem0's responses: drop other users' items from
//! lists and searches, learn owners from creations and lookups.

use serde_json::Value;

use crate::policy::json::Cursor;

/// Drops from a `GET /memories` or `POST /search` response every item that is
/// not the scope's, returning the filtered response and how many were dropped.
/// Handles `{"results": [...]}` (other keys kept) and a bare list; anything
/// else is returned unchanged. An item is kept only if it is an object whose
/// `user_id` is exactly `scope`: mem0 always sets `user_id` on list and search
/// items of a user-scoped query, so an item without one was stored by someone
/// else (agent- or run-only) and is dropped too. Not for history responses,
/// whose rows carry no user_id (docs/design.md §4).
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

/// [`owner_ids_from_create_response`] read straight from the response text,
/// without building a `Value` of it (a create answer is read on every
/// `POST /memories`). An error when the text is not JSON.
pub fn owner_ids_in(text: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    if let Some(ids) = created_ids_scanned(text) {
        return Ok(ids.into_iter().map(str::to_owned).collect());
    }
    serde_json::from_slice::<Created>(text).map(|created| created.0)
}

/// The ids of a plain create answer, read with the strict JSON cursor
/// (a fifth of serde's cost on mem0's answer); `None` when the cursor is not
/// sure (see [`Cursor`]) or an `id` or `event` is escaped, and then
/// [`owner_ids_in`] reads the text with serde.
pub fn created_ids_scanned(text: &[u8]) -> Option<Vec<&str>> {
    read_results(text, item_ids).map(Option::unwrap_or_default)
}

/// How many items [`filter_results`] would drop, read with the strict JSON
/// cursor; `None` when the cursor is not sure (see [`Cursor`]) or a
/// `user_id` is escaped, and then [`foreign_items_in`] reads with serde.
pub fn foreign_items_scanned(scope: &str, text: &[u8]) -> Option<usize> {
    read_results(text, |cursor, depth| foreign_in(cursor, scope, depth)).map(|n| n.unwrap_or(0))
}

/// Reads an answer in mem0's shapes with the cursor: a list, or an object
/// whose (last) `results` is a list, which `read` reads (at the depth it is
/// given). `Some(None)` when no list counts (a `results` that is not a list,
/// none, or a scalar answer), as the `Value` readings find nothing there.
fn read_results<'a, T>(
    text: &'a [u8],
    mut read: impl FnMut(&mut Cursor<'a>, usize) -> Option<T>,
) -> Option<Option<T>> {
    let mut cursor = Cursor::new(text)?;
    let found = match cursor.peek()? {
        b'[' => Some(read(&mut cursor, 1)?),
        b'{' => {
            let mut results = None;
            cursor.members(1, |cursor, key| {
                if key != "results" {
                    return cursor.skip_value(1);
                }
                results = None;
                if cursor.peek()? == b'[' {
                    results = Some(read(cursor, 2)?);
                    return Some(());
                }
                cursor.skip_value(1)
            })?;
            results
        }
        _ => {
            cursor.skip_value(0)?;
            None
        }
    };
    cursor.finished().then_some(found)
}

/// How many items of the list at `depth` are not objects whose (last)
/// `user_id` is the string `scope`.
fn foreign_in(cursor: &mut Cursor<'_>, scope: &str, depth: usize) -> Option<usize> {
    let mut foreign = 0;
    cursor.items(depth, |cursor| {
        let mut owned = false;
        if cursor.peek()? == b'{' {
            cursor.members(depth + 1, |cursor, key| {
                if key != "user_id" {
                    return cursor.skip_value(depth + 1);
                }
                owned = if cursor.peek()? == b'"' {
                    cursor.plain_string()? == scope
                } else {
                    cursor.skip_value(depth + 1)?;
                    false
                };
                Some(())
            })?;
        } else {
            cursor.skip_value(depth)?;
        }
        foreign += usize::from(!owned);
        Some(())
    })?;
    Some(foreign)
}

/// The ids of the list at `depth` that the cursor is at: of each item that
/// is an object whose (last) `id` is a string and whose (last) `event` is
/// not `DELETE`.
fn item_ids<'a>(cursor: &mut Cursor<'a>, depth: usize) -> Option<Vec<&'a str>> {
    let mut ids = Vec::new();
    cursor.items(depth, |cursor| {
        if cursor.peek()? != b'{' {
            return cursor.skip_value(depth);
        }
        let (mut id, mut event) = (None, None);
        cursor.members(depth + 1, |cursor, key| {
            let slot = match key {
                "id" => &mut id,
                "event" => &mut event,
                _ => return cursor.skip_value(depth + 1),
            };
            *slot = if cursor.peek()? == b'"' {
                Some(cursor.plain_string()?)
            } else {
                cursor.skip_value(depth + 1)?;
                None
            };
            Some(())
        })?;
        ids.extend(id.filter(|_| event != Some("DELETE")));
        Some(())
    })?;
    Some(ids)
}

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A document read for one shape; anything else reads as the given answer
/// (`None`, as `Value::get` and `as_str` give nothing on another shape, or
/// `false`). Defines the scalar visits (with `str`, strings too) once for the
/// readers below.
macro_rules! otherwise {
    ($answer:expr, str) => {
        otherwise!($answer);
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($answer)
        }
    };
    ($answer:expr) => {
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($answer)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($answer)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($answer)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($answer)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($answer)
        }
    };
}

/// A visitor that is also its own seed (it carries what it reads against).
macro_rules! seed_of_visitor {
    ($seed:ty, $value:ty) => {
        impl<'de> de::DeserializeSeed<'de> for $seed {
            type Value = $value;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<$value, D::Error> {
                d.deserialize_any(self)
            }
        }
    };
}

/// Reads past a list or an object that does not matter.
fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// The ids a create answer reports: a list of items, or `results` of an
/// object (the last one, as a `Value` keeps it).
struct Created(Vec<String>);

impl<'de> Deserialize<'de> for Created {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ItemsOr { top: true })
            .map(|ids| Created(ids.unwrap_or_default()))
    }
}

/// A list of items (their ids), or at the top an object with `results`.
#[derive(Clone, Copy)]
struct ItemsOr {
    top: bool,
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ItemVisitor).map(|id| Item(id.flatten()))
    }
}

seed_of_visitor!(ItemsOr, Option<Vec<String>>);

impl<'de> Visitor<'de> for ItemsOr {
    type Value = Option<Vec<String>>;
    otherwise!(None, str);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut ids = Vec::new();
        while let Some(Item(id)) = seq.next_element::<Item>()? {
            ids.extend(id);
        }
        Ok(Some(ids))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut results = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if self.top && key == "results" {
                results = map.next_value_seed(ItemsOr { top: false })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(results.filter(|_| self.top))
    }
}

/// A list or search answer without the items [`filter_results`] drops for
/// `scope`: `None` when it has none (forward it as received; read without
/// building a `Value`), else the new text and how many items went. An error
/// when the text is not JSON.
pub fn filter_answer(
    scope: &str,
    text: &[u8],
) -> Result<Option<(Vec<u8>, usize)>, serde_json::Error> {
    if foreign_items_in(scope, text)? == 0 {
        return Ok(None);
    }
    let (kept, dropped) = filter_results(scope, serde_json::from_slice(text)?);
    Ok(Some((crate::policy::json::to_bytes(&kept), dropped)))
}

/// How many items of a list or search answer [`filter_results`] would drop
/// for `scope`, read straight from the text without building a `Value`: the
/// proxy builds and filters the tree only when some item is foreign (mem0
/// ignored the user filter), so a well-behaved answer costs one pass. An
/// error when the text is not JSON.
pub fn foreign_items_in(scope: &str, text: &[u8]) -> Result<usize, serde_json::Error> {
    if let Some(foreign) = foreign_items_scanned(scope, text) {
        return Ok(foreign);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let foreign =
        de::DeserializeSeed::deserialize(Foreign { scope, top: true }, &mut deserializer)?;
    deserializer.end()?;
    Ok(foreign.unwrap_or(0))
}

/// Counts foreign items: of a list, or at the top of `results` in an object
/// (the last one, as a `Value` keeps it).
#[derive(Clone, Copy)]
struct Foreign<'s> {
    scope: &'s str,
    top: bool,
}

seed_of_visitor!(Foreign<'_>, Option<usize>);

impl<'de> Visitor<'de> for Foreign<'_> {
    type Value = Option<usize>;
    otherwise!(None, str);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut foreign = 0;
        while let Some(owned) = seq.next_element_seed(OwnedBy(self.scope))? {
            foreign += usize::from(!owned);
        }
        Ok(Some(foreign))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut results = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if self.top && key == "results" {
                results = map.next_value_seed(Foreign { top: false, ..self })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(results.filter(|_| self.top))
    }
}

/// Whether an item is an object whose (last) `user_id` is the string `.0`,
/// as [`filter_results`] keeps it.
struct OwnedBy<'s>(&'s str);

seed_of_visitor!(OwnedBy<'_>, bool);

impl<'de> Visitor<'de> for OwnedBy<'_> {
    type Value = bool;
    otherwise!(false, str);
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<bool, A::Error> {
        skip_seq(seq).map(|()| false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut owned = false;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "user_id" {
                owned = map.next_value_seed(IsText(self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(owned)
    }
}

/// Whether a value is the string `.0`.
struct IsText<'s>(&'s str);

seed_of_visitor!(IsText<'_>, bool);

impl<'de> Visitor<'de> for IsText<'_> {
    type Value = bool;
    otherwise!(false);
    fn visit_str<E>(self, text: &str) -> Result<bool, E> {
        Ok(text == self.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<bool, A::Error> {
        skip_seq(seq).map(|()| false)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<bool, A::Error> {
        skip_map(map).map(|()| false)
    }
}

/// An item's id, unless it is not a string or the item's event is `DELETE`.
struct Item(Option<String>);

struct ItemVisitor;

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = Option<Option<String>>;
    otherwise!(None, str);
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq).map(|()| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut id, mut event) = (None, None);
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match &*key {
                "id" => id = map.next_value::<Text>()?.0,
                "event" => event = map.next_value::<Text>()?.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(id.filter(|_| event.as_deref() != Some("DELETE"))))
    }
}

/// A string value, or `None` for any other.
struct Text(Option<String>);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Option<String>;
            otherwise!(None);
            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Some(text.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|()| None)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|()| None)
            }
        }
        d.deserialize_any(TextVisitor).map(Text)
    }
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
