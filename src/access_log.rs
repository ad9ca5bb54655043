//! The access log (`[log] access = true`): one line per request on the
//! proxied listeners, through `tracing` (target `memgate::access`), so it is
//! JSON under `--log-format json`. It names the request without what could
//! be a secret: query values are dropped (only parameter names are kept),
//! and anything in the path shaped like a token is cut to its display prefix.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns the access log on or off for this process (`serve` sets it from
/// the config before any listener starts).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// What one finished request is logged with.
pub struct AccessRecord<'a> {
    pub listener: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// 0 when no response was sent.
    pub status: u16,
    pub user: Option<&'a str>,
    pub scope: &'a str,
    pub latency: Duration,
    pub request_id: &'a str,
}

/// Logs one request (the caller checks [`enabled`] first).
pub fn record(r: &AccessRecord<'_>) {
    tracing::info!(
        target: "memgate::access",
        listener = r.listener,
        method = r.method,
        path = %shown_target(r.path, r.query),
        status = r.status,
        user = r.user.unwrap_or("-"),
        scope = if r.scope.is_empty() { "-" } else { r.scope },
        latency_ms = (r.latency.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        request_id = r.request_id,
        "request"
    );
}

/// The longest target logged; a longer one is cut (the limit on request
/// targets is larger, and a log line need not carry all of it).
const MAX_SHOWN: usize = 512;

/// The path with token-shaped runs cut to their prefix, and the query's
/// parameter names without their values (`/memories?user_id&top_k`).
pub fn shown_target(path: &str, query: Option<&str>) -> String {
    let mut shown = without_tokens(path);
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        shown.push('?');
        let names: Vec<String> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| without_tokens(pair.split('=').next().unwrap_or_default()))
            .collect();
        shown.push_str(&names.join("&"));
    }
    if shown.len() > MAX_SHOWN {
        let cut = shown.floor_char_boundary(MAX_SHOWN);
        shown.truncate(cut);
        shown.push('…');
    }
    shown
}

/// `text` with every `mcp_` followed by 43 token characters cut to the
/// display prefix (`mcp_` and 8 characters) and `…`.
fn without_tokens(text: &str) -> String {
    let token_char = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        let secret_len = rest.iter().skip(4).take_while(|&&b| token_char(b)).count();
        if rest.starts_with(b"mcp_") && secret_len >= 43 {
            out.push_str(&text[i..i + 12]);
            out.push('…');
            i += 4 + secret_len;
        } else {
            let len = text[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&text[i..i + len]);
            i += len;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_and_tokens_never_appear() {
        let token = format!("mcp_{}", "A".repeat(43));
        assert_eq!(
            shown_target("/memories", Some("user_id=alice&top_k=5&=x&&flag")),
            "/memories?user_id&top_k&&flag"
        );
        assert_eq!(shown_target("/mcp", None), "/mcp");
        assert_eq!(shown_target("/mcp", Some("")), "/mcp");
        let shown = shown_target(&format!("/x/{token}/y"), Some(&format!("{token}=1")));
        assert!(!shown.contains(&token[12..]), "{shown}");
        assert_eq!(shown, "/x/mcp_AAAAAAAA…/y?mcp_AAAAAAAA…");
        // Shorter runs are not tokens and stay as they are.
        assert_eq!(shown_target("/mcp_short", None), "/mcp_short");
        let long = "/é".repeat(400);
        assert!(shown_target(&long, None).chars().count() <= MAX_SHOWN);
    }
}
