//! Strict JSON for request bodies.
//!
//! A body is policy input, so it must mean one thing to memgate and to the
//! upstream. Python's `json` keeps the *last* of two equal keys; a checker that
//! kept the first could approve `{"user_id":"me","user_id":"victim"}`. So equal
//! keys are refused at every depth (compared after unescaping, so `user\u005fid`
//! counts), as are invalid UTF-8, trailing data, non-object bodies and nesting
//! deeper than the configured limit. Depth is checked while parsing, before
//! descending, so hostile input cannot exhaust the stack.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use thiserror::Error;

use super::deny::Deny;

mod scan;
pub use scan::{Cursor, scan_agrees_with_parse, top_level_string};

/// The compact JSON text of `value`, as its `Display` writes it, but
/// serialized straight into bytes: `to_string` goes through a formatter call
/// per token and cost a third of a rewritten `POST /memories`.
pub fn to_bytes(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value always serializes")
}

/// `object` (the text of one JSON object without `key`, as [`parse_object`]
/// accepted it) with `"key":value` as its first member, and the rest as
/// sent. Strict parsing makes this safe: the object has no duplicate keys, so
/// the upstream reads exactly the members memgate checked, plus this one.
pub fn with_leading_member(object: &[u8], key: &str, value: &str) -> Vec<u8> {
    let open = object
        .iter()
        .position(|b| *b == b'{')
        .expect("parse_object accepted an object");
    let rest = &object[open + 1..];
    let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let mut out = Vec::with_capacity(object.len() + key.len() + value.len() + 8);
    out.extend_from_slice(&object[..=open]);
    serde_json::to_writer(&mut out, key).expect("a string always serializes");
    out.push(b':');
    serde_json::to_writer(&mut out, value).expect("a string always serializes");
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    out
}

/// serde_json refuses nesting beyond 128 levels with its own error; memgate's
/// limit is clamped below that so the refusal is always [`JsonError::TooDeep`].
const DEPTH_CEILING: usize = 100;

/// Longest key quoted back in an error message.
const QUOTED_KEY_CHARS: usize = 64;

/// Why a body was refused; every variant is a 400.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum JsonError {
    #[error("Request body is not valid UTF-8")]
    InvalidUtf8,
    #[error("Request body is not valid JSON: {0}")]
    Syntax(String),
    #[error("Request body has the key {0:?} more than once in one object")]
    DuplicateKey(String),
    #[error("Request body nests deeper than {0} levels")]
    TooDeep(usize),
    #[error("Request body must be a JSON object")]
    NotAnObject,
}

impl From<JsonError> for Deny {
    fn from(err: JsonError) -> Deny {
        Deny::bad_request(err.to_string())
    }
}

/// Parses `bytes` as one JSON object, refusing anything ambiguous (see module
/// docs). The top-level object is depth 1; `{"a":[{}]}` has depth 3.
pub fn parse_object(bytes: &[u8], max_depth: usize) -> Result<Map<String, Value>, JsonError> {
    match parse_value(bytes, max_depth)? {
        Value::Object(map) => Ok(map),
        _ => Err(JsonError::NotAnObject),
    }
}

/// Like [`parse_object`] but accepts any JSON value at the top.
pub fn parse_value(bytes: &[u8], max_depth: usize) -> Result<Value, JsonError> {
    // Checked once here; reading from text then skips serde_json's check of
    // every string again.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(JsonError::InvalidUtf8);
    };
    let failure = Cell::new(None);
    let seed = ValueSeed {
        depth: 0,
        max_depth: max_depth.min(DEPTH_CEILING),
        failure: &failure,
    };
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = seed
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    parsed.map_err(|err| {
        failure
            .take()
            .unwrap_or_else(|| JsonError::Syntax(err.to_string()))
    })
}

/// Builds a [`Value`] one level at a time. A refusal of memgate's own (duplicate
/// key, depth) is recorded in `failure` so it survives serde's error type.
#[derive(Clone, Copy)]
struct ValueSeed<'f> {
    depth: usize,
    max_depth: usize,
    failure: &'f Cell<Option<JsonError>>,
}

impl ValueSeed<'_> {
    /// The seed for the children of a container at `self.depth + 1`, or the
    /// refusal if that container is already too deep.
    fn enter<E: de::Error>(self) -> Result<Self, E> {
        let depth = self.depth + 1;
        if depth > self.max_depth {
            return Err(self.fail(JsonError::TooDeep(self.max_depth)));
        }
        Ok(ValueSeed { depth, ..self })
    }

    fn fail<E: de::Error>(self, err: JsonError) -> E {
        let message = err.to_string();
        self.failure.set(Some(err));
        E::custom(message)
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // JSON text cannot spell NaN or infinity; refuse rather than invent one.
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let child = self.enter()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(child)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let child = self.enter()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                let quoted: String = key.chars().take(QUOTED_KEY_CHARS).collect();
                return Err(self.fail(JsonError::DuplicateKey(quoted)));
            }
            let value = map.next_value_seed(child)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn a_leading_member_is_added_to_the_object_as_sent() {
        let added = |text: &str| {
            String::from_utf8(with_leading_member(text.as_bytes(), "user_id", "a\"b")).unwrap()
        };
        assert_eq!(added(r#"{"x":1}"#), r#"{"user_id":"a\"b","x":1}"#);
        assert_eq!(added(" \n{ }\n"), " \n{\"user_id\":\"a\\\"b\" }\n");
        assert_eq!(
            added("{\n  \"x\" : [1, {\"y\": null}]\n}"),
            "{\"user_id\":\"a\\\"b\",\n  \"x\" : [1, {\"y\": null}]\n}"
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z\"\\\\\u{e9}\n ]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Splicing reads back as the parsed object with the member added,
        /// whatever the spacing of the text as sent.
        #[test]
        fn splicing_equals_inserting(
            members in prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..5),
            pretty in any::<bool>(),
            owner in "[a-z\"\u{e9}]{0,6}",
        ) {
            let object: Map<String, Value> = members.into_iter().collect();
            let text = if pretty {
                serde_json::to_vec_pretty(&object).unwrap()
            } else {
                serde_json::to_vec(&object).unwrap()
            };
            let spliced = with_leading_member(&text, "user_id", &owner);
            let mut expected = object.clone();
            expected.insert("user_id".into(), Value::String(owner.clone()));
            prop_assert_eq!(parse_object(&spliced, 32).unwrap(), expected);
        }
    }

    #[test]
    fn parses_ordinary_objects() {
        let map = parse_object(br#"{"a":[1,-2,3.5,"x",null,true,{"b":{}}]}"#, 10).unwrap();
        assert_eq!(
            Value::Object(map),
            json!({"a":[1,-2,3.5,"x",null,true,{"b":{}}]})
        );
        assert_eq!(parse_object(b" {} ", 1).unwrap().len(), 0);
    }

    #[test]
    fn refuses_duplicate_keys_at_any_depth() {
        for body in [
            r#"{"user_id":"a","user_id":"b"}"#,
            r#"{"filters":{"OR":[{"user_id":"a","user_id":"b"}]}}"#,
            r#"{"a":{"b":{"c":[{"d":1,"d":2}]}}}"#,
            r#"{"user_id":"a","user\u005fid":"b"}"#,
        ] {
            assert!(
                matches!(
                    parse_object(body.as_bytes(), 32),
                    Err(JsonError::DuplicateKey(_))
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn enforces_depth_while_parsing() {
        assert!(parse_object(br#"{"a":{"b":1}}"#, 2).is_ok());
        assert_eq!(
            parse_object(br#"{"a":{"b":{}}}"#, 2),
            Err(JsonError::TooDeep(2))
        );
        assert_eq!(
            parse_object(br#"{"a":[[1]]}"#, 2),
            Err(JsonError::TooDeep(2))
        );
        assert_eq!(parse_object(b"{}", 0), Err(JsonError::TooDeep(0)));
    }

    #[test]
    fn hostile_nesting_is_an_error_not_a_crash() {
        let open = "[".repeat(100_000);
        assert_eq!(
            parse_value(open.as_bytes(), 32),
            Err(JsonError::TooDeep(32))
        );
        let objects = "{\"a\":".repeat(100_000);
        assert_eq!(
            parse_object(objects.as_bytes(), 1000),
            Err(JsonError::TooDeep(DEPTH_CEILING))
        );
        let closed = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert!(matches!(
            parse_value(closed.as_bytes(), usize::MAX),
            Err(JsonError::TooDeep(_))
        ));
    }

    #[test]
    fn refuses_non_objects_bad_text_and_trailing_data() {
        assert_eq!(parse_object(b"[]", 5), Err(JsonError::NotAnObject));
        assert_eq!(parse_object(b"\"x\"", 5), Err(JsonError::NotAnObject));
        assert_eq!(
            parse_object(b"{\"a\":\"\xff\"}", 5),
            Err(JsonError::InvalidUtf8)
        );
        for body in [
            "",
            "{",
            "{} {}",
            "{}x",
            "{'a':1}",
            "{\"a\":NaN}",
            "{\"a\":1,}",
            "\u{feff}{}",
        ] {
            assert!(
                matches!(parse_object(body.as_bytes(), 5), Err(JsonError::Syntax(_))),
                "{body:?}"
            );
        }
        assert!(matches!(
            parse_object(br#"{"a":"\ud800"}"#, 5),
            Err(JsonError::Syntax(_))
        ));
        assert!(matches!(
            parse_object(b"{\"a\":1e999}", 5),
            Err(JsonError::Syntax(_))
        ));
    }
}
