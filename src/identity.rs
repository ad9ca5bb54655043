//! Who a request acts for once authentication has succeeded: the user id, the
//! permissions the credential grants, and the rules a user id must follow
//! wherever it comes from (a token row, an imported table, a JWT claim).

use std::fmt;

/// One permission a token can hold (docs/design.md §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    Read,
    Write,
    Admin,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Admin => "admin",
        }
    }
}

/// The set of permissions a token holds. `admin` implies `read` and `write`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct Permissions {
    pub read: bool,
    pub write: bool,
    pub admin: bool,
}

impl Permissions {
    pub const READ_WRITE: Permissions = Permissions {
        read: true,
        write: true,
        admin: false,
    };

    /// Parses a comma-separated list such as `read,write`. Unknown names,
    /// empty lists and repeated names are errors, never silently ignored.
    pub fn parse(text: &str) -> Result<Permissions, String> {
        let mut perms = Permissions::default();
        let mut any = false;
        for part in text.split(',') {
            let name = part.trim();
            let slot = match name {
                "read" => &mut perms.read,
                "write" => &mut perms.write,
                "admin" => &mut perms.admin,
                other => {
                    return Err(format!(
                        "unknown permission {other:?} (expected read, write or admin)"
                    ));
                }
            };
            if *slot {
                return Err(format!("permission {name:?} is listed twice"));
            }
            *slot = true;
            any = true;
        }
        if !any {
            return Err("at least one permission is required".into());
        }
        Ok(perms)
    }

    /// Whether these permissions allow an action that needs `needed`.
    pub fn allows(self, needed: Permission) -> bool {
        self.admin
            || match needed {
                Permission::Read => self.read,
                Permission::Write => self.write,
                Permission::Admin => false,
            }
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.read, "read"),
            (self.write, "write"),
            (self.admin, "admin"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        f.write_str(&names.join(","))
    }
}

/// Who is making a request, once authentication has succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The token's user id (the mem0 `user_id` in `manual` isolation).
    pub user_id: String,
    pub permissions: Permissions,
    /// Display prefix of the token (`mcp_` + 8 characters); safe to log.
    pub token_prefix: String,
}

/// The longest user id memgate accepts, in bytes.
pub const MAX_USER_ID_LEN: usize = 128;

/// Why `user_id` cannot name a user, or `None` when it can. User ids end up in
/// headers, in mem0 and in the audit trail: printable, trimmed, bounded.
pub fn user_id_problem(user_id: &str) -> Option<&'static str> {
    if user_id.is_empty() || user_id.len() > MAX_USER_ID_LEN {
        return Some("must be 1 to 128 bytes long");
    }
    if user_id.trim() != user_id || user_id.chars().any(char::is_control) {
        return Some("must not contain control characters or surrounding spaces");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_permission_lists() {
        assert_eq!(
            Permissions::parse("read,write"),
            Ok(Permissions::READ_WRITE)
        );
        let admin = Permissions::parse("admin").unwrap();
        assert!(admin.allows(Permission::Write) && admin.allows(Permission::Admin));
        assert!(Permissions::parse("read,read").is_err());
        assert!(Permissions::parse("").is_err());
        assert!(Permissions::parse("root").is_err());
        assert_eq!(
            Permissions::parse(" read , admin").unwrap().to_string(),
            "read,admin"
        );
    }

    #[test]
    fn user_ids_are_printable_trimmed_and_bounded() {
        assert_eq!(user_id_problem("alice"), None);
        assert_eq!(user_id_problem("josé@example.com"), None);
        assert_eq!(user_id_problem(&"a".repeat(MAX_USER_ID_LEN)), None);
        for bad in ["", " alice", "alice ", "al\nice", "a\u{7f}"] {
            assert!(user_id_problem(bad).is_some(), "{bad:?}");
        }
        assert!(user_id_problem(&"a".repeat(MAX_USER_ID_LEN + 1)).is_some());
    }

    #[test]
    fn read_only_cannot_write() {
        let ro = Permissions::parse("read").unwrap();
        assert!(ro.allows(Permission::Read));
        assert!(!ro.allows(Permission::Write));
        assert!(!ro.allows(Permission::Admin));
    }
}
