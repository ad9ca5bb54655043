//! memgate's requests to authorization servers: discovery documents, key
//! sets and introspection, bounded in time and size.

use std::time::Duration;

use serde_json::{Map, Value};

/// The longest memgate waits for an authorization server: a request
/// waiting on it holds a client's connection meanwhile.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest document memgate reads from an authorization server.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// The client for every authorization server. No redirects are followed: a
/// redirect could lead off the https-or-loopback URLs the config allows.
/// reqwest's rustls uses ring explicitly when no process-wide rustls
/// provider is installed, so building it cannot panic for want of one.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(FETCH_TIMEOUT)
        .user_agent(concat!("memgate/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The body of a 200 answer as a JSON object. The error says what went
/// wrong for the log; it never contains the request's credentials.
pub async fn json_object(request: reqwest::RequestBuilder) -> Result<Map<String, Value>, String> {
    let mut response = request
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("request failed: {}", without_url(&e)))?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        return Err(format!("answered HTTP {}", status.as_u16()));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(format!("answer larger than {MAX_DOCUMENT_BYTES} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the answer failed: {}", without_url(&e)))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(format!("answer larger than {MAX_DOCUMENT_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    match serde_json::from_slice(&body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err("answer is not a JSON object".into()),
        Err(e) => Err(format!("answer is not JSON: {e}")),
    }
}

/// reqwest's message without the URL, which the caller names itself (and
/// which, for introspection, must not be paired with anything secret).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(inner) = source {
        detail = inner.to_string();
        source = inner.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} ({detail})")
    }
}

#[cfg(test)]
mod tests {
    /// No rustls provider is installed in this process's unit tests: the
    /// client must still build.
    #[test]
    fn the_client_builds_without_a_process_wide_rustls_provider() {
        super::client().expect("client");
    }
}
