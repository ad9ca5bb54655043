//! The audit trail (docs/design.md §6): one event per decision worth keeping,
//! written off the request path in batches, spooled to disk while the store is
//! unreachable, and never dropped silently.

mod spool;
mod writer;

pub use crate::store::{AuditEvent, new_id};
pub use spool::Spool;
pub use writer::{AuditWriter, Auditor, channel};

/// Event names, also the `event` column.
pub mod kind {
    pub const AUTH_SUCCESS: &str = "auth_success";
    pub const AUTH_FAILURE: &str = "auth_failure";
    pub const PERMISSION_DENIED: &str = "permission_denied";
    pub const OWNERSHIP_DENIED: &str = "ownership_denied";
    pub const SESSION_DENIED: &str = "session_denied";
    /// A write held a secret: redacted before it reached mem0, or refused.
    pub const SECRET_BLOCKED: &str = "secret_blocked";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const TOKEN_ADMIN: &str = "token_admin";
    pub const USER_ADMIN: &str = "user_admin";
    /// Every event kind, for `memgate audit --event`.
    pub const ALL: &[&str] = &[
        AUTH_SUCCESS,
        AUTH_FAILURE,
        PERMISSION_DENIED,
        OWNERSHIP_DENIED,
        SESSION_DENIED,
        SECRET_BLOCKED,
        RATE_LIMITED,
        TOKEN_ADMIN,
        USER_ADMIN,
    ];
}
