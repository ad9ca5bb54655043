//! What the gate reads off a request head: its project, request id and
//! credential headers.

use super::*;

pub(super) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => text[..at].to_string(),
        None => text.to_string(),
    }
}

/// The `X-MCP-Project` header, trimmed. A repeated or unreadable one reads as
/// absent here; both listeners refuse such a request before forwarding it.
pub(super) fn project(req: &RequestHeader) -> Option<String> {
    header_names::single(&req.headers, &header_names::X_MCP_PROJECT)
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
    crate::http1::values(&req.headers, &header_names::X_REQUEST_ID)
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
        x_mcp_token: all(&header_names::X_MCP_TOKEN),
        authorization: all(&http::header::AUTHORIZATION),
        x_mcp_user_id: all(&header_names::X_MCP_USERID),
    }
}
