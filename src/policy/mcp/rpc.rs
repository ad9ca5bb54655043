//! JSON-RPC 2.0 as memgate speaks it on the MCP listener: error codes, error
//! bodies (`{"jsonrpc":"2.0","id":…,"error":{"code":…,"message":…}}`, so a
//! client always finds `.error`) and the refusal of one message.

use serde_json::{Map, Value, json};

use super::CallInfo;
use crate::policy::deny::Deny;
use crate::policy::json::JsonError;

/// Invalid JSON (JSON-RPC's own code).
pub const PARSE_ERROR: i64 = -32700;
/// A message that is not a valid request (JSON-RPC's own code).
pub const INVALID_REQUEST: i64 = -32600;
/// Invalid method parameters (JSON-RPC's own code).
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error (JSON-RPC's own code), for memgate's own 5xx.
pub const INTERNAL_ERROR: i64 = -32603;
/// memgate: authentication failed (HTTP 401).
pub const UNAUTHORIZED: i64 = -32001;
/// memgate: forbidden (HTTP 403).
pub const FORBIDDEN: i64 = -32003;
/// memgate: not found (HTTP 404).
pub const NOT_FOUND: i64 = -32004;
/// memgate: rate limited (HTTP 429).
pub const RATE_LIMITED: i64 = -32029;

/// The JSON-RPC error code memgate uses for an HTTP status.
pub fn code_for_status(status: u16) -> i64 {
    match status {
        401 => UNAUTHORIZED,
        403 => FORBIDDEN,
        404 => NOT_FOUND,
        429 => RATE_LIMITED,
        400..=499 => INVALID_REQUEST,
        _ => INTERNAL_ERROR,
    }
}

/// One JSON-RPC error object for the request `id` (`null` when unknown).
pub fn error_object(id: &Value, code: i64, message: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": code, "message": message },
    })
}

/// [`error_object`] as bytes, ready to send.
pub fn error_body(id: &Value, code: i64, message: &str) -> Vec<u8> {
    error_object(id, code, message).to_string().into_bytes()
}

/// Why one message (or the whole body) is refused.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Refusal {
    pub status: u16,
    pub code: i64,
    pub message: String,
    /// The refused request's id; `null` for notifications and unreadable ids.
    pub id: Value,
    /// The refused message, when it had a method (boxed: refusals travel
    /// in `Result`s).
    pub call: Option<Box<CallInfo>>,
}

impl Refusal {
    pub fn new(status: u16, code: i64, message: impl Into<String>, id: Value) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
            id,
            call: None,
        }
    }

    pub fn invalid_request(id: Value, message: impl Into<String>) -> Refusal {
        Refusal::new(400, INVALID_REQUEST, message, id)
    }

    pub fn invalid_params(id: Value, message: impl Into<String>) -> Refusal {
        Refusal::new(400, INVALID_PARAMS, message, id)
    }

    /// A policy [`Deny`] on a `tools/call`: a 400 there is about its params.
    pub fn from_tool_deny(deny: Deny, id: Value) -> Refusal {
        let code = match deny.status {
            400 => INVALID_PARAMS,
            status => code_for_status(status),
        };
        Refusal::new(deny.status, code, deny.message, id)
    }

    /// A body the strict parser refused: invalid text is a parse error,
    /// valid JSON that memgate will not interpret (repeated keys, nesting) an
    /// invalid request. No id can be trusted from it.
    pub fn unparsed(err: &JsonError) -> Refusal {
        let code = match err {
            JsonError::InvalidUtf8 | JsonError::Syntax(_) => PARSE_ERROR,
            JsonError::DuplicateKey(_) | JsonError::TooDeep(_) | JsonError::NotAnObject => {
                INVALID_REQUEST
            }
        };
        Refusal::new(400, code, err.to_string(), Value::Null)
    }

    pub fn to_error_object(&self) -> Value {
        error_object(&self.id, self.code, &self.message)
    }
}

/// A request's `id`: `None` when absent (a notification). JSON-RPC allows a
/// string, a number or `null`; MCP servers accept strings and integers, and
/// only those survive a rewrite unchanged, so other numbers (fractions,
/// integers beyond 64 bits) and other types are refused.
pub(super) fn message_id(object: &Map<String, Value>) -> Result<Option<Value>, Refusal> {
    match object.get("id") {
        None => Ok(None),
        Some(id @ (Value::String(_) | Value::Null)) => Ok(Some(id.clone())),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(Value::Number(n.clone()))),
        Some(_) => Err(Refusal::invalid_request(
            Value::Null,
            "Invalid Request: id must be a string or an integer",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_carry_the_id_and_escape_the_message() {
        let body = error_body(&json!(7), FORBIDDEN, "no \"way\"");
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            parsed,
            json!({"jsonrpc":"2.0","id":7,"error":{"code":-32003,"message":"no \"way\""}})
        );
        assert_eq!(
            error_object(&Value::Null, PARSE_ERROR, "x")["id"],
            Value::Null
        );
    }

    #[test]
    fn codes_for_statuses() {
        assert_eq!(code_for_status(401), -32001);
        assert_eq!(code_for_status(403), -32003);
        assert_eq!(code_for_status(404), -32004);
        assert_eq!(code_for_status(413), -32600);
        assert_eq!(code_for_status(502), -32603);
    }

    #[test]
    fn ids() {
        let id = |v: Value| message_id(v.as_object().unwrap());
        assert_eq!(id(json!({})).unwrap(), None);
        assert_eq!(id(json!({"id": "a"})).unwrap(), Some(json!("a")));
        assert_eq!(id(json!({"id": -3})).unwrap(), Some(json!(-3)));
        assert_eq!(id(json!({"id": u64::MAX})).unwrap(), Some(json!(u64::MAX)));
        assert_eq!(id(json!({"id": null})).unwrap(), Some(Value::Null));
        for bad in [
            json!(1.5),
            json!(true),
            json!([1]),
            json!({"a": 1}),
            json!(1e30),
        ] {
            assert!(id(json!({ "id": bad })).is_err(), "{bad}");
        }
    }
}
