//! A refusal: the HTTP status and the human-readable reason the client sees.
//!
//! Every policy layer (path, query, JSON, scope, routes) ends in a `Deny` when it
//! refuses, so the proxy has one thing to turn into a response. The mem0 listener
//! renders it FastAPI-shaped (`{"detail": "..."}`, docs/design.md §4).

use std::fmt;

/// A request the policy refuses, with the status and message to answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deny {
    pub status: u16,
    pub message: String,
}

impl Deny {
    pub fn new(status: u16, message: impl Into<String>) -> Deny {
        Deny {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Deny {
        Deny::new(400, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Deny {
        Deny::new(403, message)
    }

    pub fn not_found(message: impl Into<String>) -> Deny {
        Deny::new(404, message)
    }

    /// FastAPI's own wording, so clients cannot tell memgate's 404 from mem0's.
    pub fn route_not_found() -> Deny {
        Deny::new(404, "Not Found")
    }

    pub fn method_not_allowed() -> Deny {
        Deny::new(405, "Method Not Allowed")
    }

    pub fn payload_too_large(limit: usize) -> Deny {
        Deny::new(
            413,
            format!("Request body is larger than the limit of {limit} bytes"),
        )
    }

    pub fn unsupported_media_type() -> Deny {
        Deny::new(
            415,
            "Request body must be sent as Content-Type: application/json",
        )
    }

    /// The FastAPI-shaped error body: `{"detail": "<message>"}`.
    pub fn detail_json(&self) -> String {
        serde_json::json!({ "detail": self.message }).to_string()
    }
}

impl fmt::Display for Deny {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for Deny {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_json_escapes_the_message() {
        let deny = Deny::forbidden("a \"quoted\" \n reason");
        let parsed: serde_json::Value = serde_json::from_str(&deny.detail_json()).unwrap();
        assert_eq!(parsed["detail"], "a \"quoted\" \n reason");
        assert_eq!(deny.to_string(), "403 a \"quoted\" \n reason");
    }
}
