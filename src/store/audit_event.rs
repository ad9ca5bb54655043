//! The audit record as the store keeps it (one row of `audit_log`); the
//! `audit` module decides what to record and writes it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AuditEvent {
    /// Unique per event, so a replay from the spool never writes a row twice.
    pub event_id: String,
    pub time: DateTime<Utc>,
    pub event: String,
    pub success: bool,
    pub user_id: Option<String>,
    /// The token's display prefix, never the token.
    pub token_prefix: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub mcp_method: Option<String>,
    pub tool: Option<String>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    /// How the request authenticated: `token`, `jwt` or `introspection`.
    pub auth_method: Option<String>,
}

impl AuditEvent {
    /// A new event of `event` at the current time with a fresh id.
    pub fn new(event: &str, success: bool) -> AuditEvent {
        AuditEvent {
            event_id: new_id(),
            time: Utc::now(),
            event: event.to_string(),
            success,
            ..AuditEvent::default()
        }
    }
}

/// 128 random bits as hex; falls back to time and a counter if the OS RNG fails.
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64;
        bytes[..8].copy_from_slice(&nanos.to_le_bytes());
        bytes[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    hex::encode(bytes)
}
