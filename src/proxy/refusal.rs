//! Refusals of authenticated requests and what the audit trail and the
//! metrics keep of them, from either flow.

use super::*;
use crate::policy::secrets::Action;

/// A refusal of an authenticated request, from either flow: what the client
/// was told, and what the audit trail calls it (docs/design.md §6).
pub struct Refusal {
    pub status: u16,
    pub message: String,
    /// `permission_denied`, `ownership_denied` or `session_denied`.
    pub kind: &'static str,
    /// The JSON-RPC method and tool of a refused MCP request.
    pub mcp_method: Option<String>,
    pub tool: Option<String>,
}

/// What a request was refused for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedFor {
    /// A rule or a permission (or a request memgate cannot read).
    Policy,
    /// The memory belongs to someone else.
    Ownership,
    /// The write held a secret (`[secret_guard] mode = "refuse"`); the
    /// message names the rule and the place, never the value.
    Secret,
}

impl RefusedFor {
    fn audit_kind(self) -> &'static str {
        match self {
            RefusedFor::Policy => audit::kind::PERMISSION_DENIED,
            RefusedFor::Ownership => audit::kind::OWNERSHIP_DENIED,
            RefusedFor::Secret => audit::kind::SECRET_BLOCKED,
        }
    }
}

impl Refusal {
    /// A decision against the caller, audited as what it was for.
    pub fn new(deny: Deny, why: RefusedFor) -> Refusal {
        Refusal {
            status: deny.status,
            message: deny.message,
            kind: why.audit_kind(),
            mcp_method: None,
            tool: None,
        }
    }

    /// An MCP session that is not the caller's (or not known): `why` is for
    /// the audit trail; the client is told only that it was not found.
    pub fn session(status: u16, why: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: why.into(),
            kind: audit::kind::SESSION_DENIED,
            mcp_method: None,
            tool: None,
        }
    }

    /// Permission, ownership and session refusals are audited; malformed
    /// requests (400, 404, 405, 413…) are not decisions about a user's rights.
    pub(super) fn audited(&self) -> bool {
        self.status == 403 || self.kind == audit::kind::SESSION_DENIED
    }
}

impl Gate {
    /// Audits a policy refusal worth keeping.
    pub(super) fn audit_refusal(&self, session: &Session, ctx: &RequestCtx, refusal: Refusal) {
        let mut event = self.event(session, ctx, refusal.kind, false);
        event.reason = Some(truncate(&refusal.message, 256));
        event.mcp_method = refusal.mcp_method;
        event.tool = refusal.tool;
        self.shared.audit.record(event);
    }

    /// Counts every secret the guard found, and audits the redactions
    /// (a refusal is audited as one): rules and places, never a value.
    pub(super) fn record_secrets(&self, session: &Session, ctx: &RequestCtx) {
        for finding in &ctx.secrets {
            METRICS
                .secrets_found
                .with_label_values(&[finding.rule.as_str(), finding.action.as_str()])
                .inc();
        }
        let redacted: Vec<String> = ctx
            .secrets
            .iter()
            .filter(|f| f.action == Action::Redacted)
            .map(|f| format!("{} at {}", f.rule, f.path))
            .collect();
        if redacted.is_empty() {
            return;
        }
        let mut event = self.event(session, ctx, audit::kind::SECRET_BLOCKED, true);
        event.reason = Some(truncate(&format!("redacted: {}", redacted.join(", ")), 256));
        self.shared.audit.record(event);
    }
}
