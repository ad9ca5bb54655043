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

/// The compact JSON text of `value`, as its `Display` writes it, but
/// serialized straight into bytes: `to_string` goes through a formatter call
/// per token and cost a third of a rewritten `POST /memories`.
pub fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value always serializes")
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
    if std::str::from_utf8(bytes).is_err() {
        return Err(JsonError::InvalidUtf8);
    }
    let failure = Cell::new(None);
    let seed = ValueSeed {
        depth: 0,
        max_depth: max_depth.min(DEPTH_CEILING),
        failure: &failure,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
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
    use serde_json::json;

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
