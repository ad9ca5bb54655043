//! Why a request was not authenticated (docs/design.md §2). Pure, so the fuzz crate
//! can compile it with `credential.rs` and `token.rs` and nothing else.

/// Why a request was not authenticated. Each kind has its own metric label,
/// audit reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    Missing,
    Malformed,
    Unknown,
    Revoked,
    Expired(String),
    UserMismatch,
    /// The store could not be asked and the token is not cached: fail closed.
    StoreUnavailable,
    /// The client's address failed too often and this token is not cached.
    Throttled,
}

impl Denial {
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::Missing => "missing",
            Denial::Malformed => "malformed",
            Denial::Unknown => "unknown",
            Denial::Revoked => "revoked",
            Denial::Expired(_) => "expired",
            Denial::UserMismatch => "user_mismatch",
            Denial::StoreUnavailable => "store_unavailable",
            Denial::Throttled => "rate_limited",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Denial::StoreUnavailable => 503,
            Denial::Throttled => 429,
            _ => 401,
        }
    }

    /// What the client is told. Only a real token's holder can learn that it
    /// was revoked or expired, so these messages reveal nothing to guessers.
    pub fn message(&self) -> String {
        match self {
            Denial::Missing => "Missing authentication token: send it in the X-MCP-Token header \
                                or as 'Authorization: Bearer <token>'"
                .into(),
            Denial::Malformed => "Invalid authentication token: it must be one value of the form \
                                  mcp_ followed by 43 characters, in X-MCP-Token or \
                                  'Authorization: Bearer <token>'"
                .into(),
            Denial::Unknown => "Invalid authentication token: it is not known to memgate; \
                                ask your administrator for a token"
                .into(),
            Denial::Revoked => "Authentication token has been disabled; ask your administrator \
                                to enable it or to issue a new one"
                .into(),
            Denial::Expired(on) => {
                format!("Authentication token expired on {on}; ask your administrator to rotate it")
            }
            Denial::UserMismatch => "User ID mismatch: X-MCP-UserID does not match the user \
                                     this token was issued to"
                .into(),
            Denial::StoreUnavailable => "Authentication is temporarily unavailable (token store \
                                         unreachable); retry shortly"
                .into(),
            Denial::Throttled => "Too many failed authentication attempts from your address; \
                                  retry later"
                .into(),
        }
    }
}
