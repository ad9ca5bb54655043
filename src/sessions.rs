//! MCP session ownership (DESIGN.md §5): the user who created a session owns
//! it. Bindings expire after an idle time and their number is bounded; a
//! session is never a credential, only something a user may or may not use.

use std::time::Duration;

use moka::sync::Cache;

/// Whether a user may use a session id.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionUse {
    /// Bound to this user.
    Owner,
    /// Bound to someone else: refuse with 404.
    Foreign,
    /// Not known here (new, expired, or created before a restart).
    Unknown,
}

pub struct SessionBindings {
    owners: Cache<String, String>,
}

impl SessionBindings {
    pub fn new(capacity: u64, idle: Duration) -> Self {
        SessionBindings {
            owners: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(idle)
                .build(),
        }
    }

    /// Binds `session_id` to `user_id` unless someone else holds it already.
    /// Returns false when it belongs to another user.
    pub fn bind(&self, session_id: &str, user_id: &str) -> bool {
        let entry = self
            .owners
            .entry(session_id.to_string())
            .or_insert_with(|| user_id.to_string());
        entry.value() == user_id
    }

    pub fn check(&self, session_id: &str, user_id: &str) -> SessionUse {
        match self.owners.get(session_id) {
            Some(owner) if owner == user_id => SessionUse::Owner,
            Some(_) => SessionUse::Foreign,
            None => SessionUse::Unknown,
        }
    }

    pub fn end(&self, session_id: &str) {
        self.owners.invalidate(session_id);
    }

    pub fn len(&self) -> u64 {
        self.owners.run_pending_tasks();
        self.owners.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_creator_owns_a_session() {
        let s = SessionBindings::new(10, Duration::from_secs(60));
        assert_eq!(s.check("abc", "alice"), SessionUse::Unknown);
        assert!(s.bind("abc", "alice"));
        assert!(s.bind("abc", "alice"), "binding again is harmless");
        assert!(
            !s.bind("abc", "mallory"),
            "a bound session cannot be taken over"
        );
        assert_eq!(s.check("abc", "alice"), SessionUse::Owner);
        assert_eq!(s.check("abc", "mallory"), SessionUse::Foreign);
        s.end("abc");
        assert_eq!(s.check("abc", "alice"), SessionUse::Unknown);
    }

    #[test]
    fn bindings_are_bounded() {
        let s = SessionBindings::new(100, Duration::from_secs(60));
        for i in 0..1000 {
            s.bind(&format!("s{i}"), "alice");
        }
        assert!(s.len() <= 100, "{}", s.len());
    }
}
