//! What the gate reads off a request head: its size, target, project,
//! request id and credential headers.

use super::*;

pub(super) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => text[..at].to_string(),
        None => text.to_string(),
    }
}

/// 414 or 431 for a request target or headers over the configured limits.
pub(super) fn oversized(req: &RequestHeader, shared: &Shared) -> Option<(u16, &'static str)> {
    let uri = req.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri > shared.max_uri_bytes {
        return Some((414, "Request target too long (limits.max_uri_bytes)"));
    }
    let headers: usize = req
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    (headers > shared.max_header_bytes)
        .then_some((431, "Request headers too large (limits.max_header_bytes)"))
}

pub(super) fn visible_target(req: &RequestHeader) -> bool {
    req.uri
        .path_and_query()
        .is_none_or(|pq| crate::http1::is_visible_ascii(pq.as_str().as_bytes()))
}

/// The `X-MCP-Project` header, trimmed. A repeated or unreadable one reads as
/// absent here; both listeners refuse such a request before forwarding it.
pub(super) fn project(req: &RequestHeader) -> Option<String> {
    headers::single(req, &headers::X_MCP_PROJECT)
        .ok()
        .flatten()
        .map(str::to_string)
}

/// A client-chosen request id (printable, short) or a fresh one: a random
/// per-process base plus a counter, unique without a syscall per request.
pub(super) fn request_id(req: &RequestHeader) -> String {
    use std::sync::LazyLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static BASE: LazyLock<String> = LazyLock::new(|| audit::new_id()[..16].to_string());
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    crate::http1::values(&req.headers, &headers::X_REQUEST_ID)
        .next()
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(
            || {
                // The counter in fixed-width hex, written as bytes: no
                // formatting machinery, no per-character pushes.
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let n = COUNTER.fetch_add(1, Ordering::Relaxed);
                let mut id = Vec::with_capacity(BASE.len() + 16);
                id.extend_from_slice(BASE.as_bytes());
                id.extend((0..16).rev().map(|i| HEX[((n >> (i * 4)) & 0xf) as usize]));
                String::from_utf8(id).expect("hex digits")
            },
            str::to_string,
        )
}

pub(super) fn presented(req: &RequestHeader) -> PresentedHeaders<'_> {
    let all = |name: &http::HeaderName| {
        crate::http1::values(&req.headers, name)
            .map(|v| v.as_bytes())
            .collect()
    };
    PresentedHeaders {
        x_mcp_token: all(&headers::X_MCP_TOKEN),
        authorization: all(&http::header::AUTHORIZATION),
        x_mcp_user_id: all(&headers::X_MCP_USERID),
    }
}
