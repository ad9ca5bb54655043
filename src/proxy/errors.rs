//! Error responses in each listener's format: FastAPI-shaped `{"detail": …}`
//! on the mem0 listener, a JSON-RPC error object on the MCP listener
//! (docs/design.md §4, §5), and the status classes metrics are labelled with.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use serde_json::json;

use crate::listener::{Listener, Session};

/// The JSON-RPC error code for an HTTP status: `-32000 - n` for 4xx statuses
/// (401 → -32001, 403 → -32003), `-32050 - n` for 5xx, and the standard
/// "Invalid Request" for 400.
fn jsonrpc_code(status: u16) -> i64 {
    match status {
        400 => -32600,
        401..=499 => -32000 - i64::from(status - 400),
        500..=599 => -32050 - i64::from(status - 500),
        _ => -32000,
    }
}

/// The body of an error response on `listener`.
pub fn error_body(
    listener: Listener,
    status: u16,
    message: &str,
    rpc_id: &serde_json::Value,
) -> Bytes {
    let body = match listener {
        Listener::Mcp => json!({
            "jsonrpc": "2.0",
            "id": rpc_id,
            "error": { "code": jsonrpc_code(status), "message": message },
        }),
        Listener::Mem0 | Listener::Admin => json!({ "detail": message }),
    };
    Bytes::from(body.to_string())
}

/// Where a complete response can be written: a gate's session, or the admin
/// listener's pingora proxy session.
pub trait Respond {
    fn send_response(
        &mut self,
        header: Box<ResponseHeader>,
        body: Bytes,
    ) -> impl Future<Output = Result<()>> + Send;
}

impl Respond for Session {
    async fn send_response(&mut self, header: Box<ResponseHeader>, body: Bytes) -> Result<()> {
        self.write_response_header(header).await?;
        self.write_response_body(body, true).await
    }
}

impl Respond for pingora::proxy::Session {
    async fn send_response(&mut self, header: Box<ResponseHeader>, body: Bytes) -> Result<()> {
        self.write_response_header(header, false).await?;
        self.write_response_body(Some(body), true).await
    }
}

/// Writes a complete JSON response.
pub async fn respond_json(
    session: &mut impl Respond,
    status: u16,
    body: Bytes,
    extra_headers: &[(&'static str, String)],
) -> Result<()> {
    let mut header = ResponseHeader::build(status, Some(4))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("cache-control", "no-store")?;
    for (name, value) in extra_headers {
        header.insert_header(*name, value.as_str())?;
    }
    super::headers::secure_response(&mut header)?;
    session.send_response(Box::new(header), body).await
}

/// Writes an error response in the listener's format. 401s carry the
/// `WWW-Authenticate` challenge MCP clients look for.
pub async fn respond_error(
    session: &mut impl Respond,
    listener: Listener,
    status: u16,
    message: &str,
) -> Result<()> {
    respond_challenged(session, listener, status, message, None).await
}

/// [`respond_error`] with the `WWW-Authenticate` value `challenge` (for a
/// 401 without one: `Bearer realm="memgate"`).
pub async fn respond_challenged(
    session: &mut impl Respond,
    listener: Listener,
    status: u16,
    message: &str,
    challenge: Option<String>,
) -> Result<()> {
    let body = error_body(listener, status, message, &serde_json::Value::Null);
    let mut extra = Vec::new();
    match challenge {
        Some(challenge) => extra.push(("www-authenticate", challenge)),
        None if status == 401 => {
            extra.push(("www-authenticate", "Bearer realm=\"memgate\"".to_string()));
        }
        None => {}
    }
    if status == 503 {
        extra.push(("retry-after", "1".to_string()));
    }
    respond_json(session, status, body, &extra).await
}

/// Static labels keep the status label set small and allocation-free.
pub(super) fn status_label(status: u16) -> &'static str {
    match status {
        0 => "0",
        200 => "200",
        201 => "201",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        413 => "413",
        415 => "415",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        100..=199 => "1xx",
        202..=299 => "2xx",
        300..=399 => "3xx",
        402..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem0_errors_are_fastapi_shaped() {
        let body = error_body(
            Listener::Mem0,
            401,
            "Invalid authentication token",
            &serde_json::Value::Null,
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, json!({"detail": "Invalid authentication token"}));
    }

    #[test]
    fn mcp_errors_are_jsonrpc_errors() {
        let body = error_body(Listener::Mcp, 401, "nope", &json!(7));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["id"], 7);
        assert_eq!(v["error"]["code"], -32001);
        assert_eq!(v["error"]["message"], "nope");
        assert_eq!(jsonrpc_code(403), -32003);
        assert_eq!(jsonrpc_code(502), -32052);
        assert_eq!(jsonrpc_code(400), -32600);
    }
}
