//! MCP session ownership (docs/design.md §5): the user who created a session owns
//! it. Bindings live in the store, so every replica refuses a session to
//! anyone but its owner; each replica keeps a bounded local view. A session is
//! never a credential, only something a user may or may not use.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use moka::sync::Cache;

use crate::store::{Store, StoreError};

/// Whether a user may use a session id.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionUse {
    /// Bound to this user.
    Owner,
    /// Bound to someone else: refuse with 404.
    Foreign,
    /// Not known (new, expired, or never seen by any replica).
    Unknown,
}

pub struct SessionBindings {
    store: Arc<dyn Store>,
    /// session id → owner, as far as this replica has seen.
    owners: Cache<String, String>,
    /// Sessions whose use was written recently (last_seen at most once a minute).
    touched: Cache<String, ()>,
    pending_touch: Mutex<HashSet<String>>,
}

impl SessionBindings {
    pub fn new(store: Arc<dyn Store>, capacity: u64, idle: Duration) -> Self {
        SessionBindings {
            store,
            owners: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(idle)
                .build(),
            touched: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(60).min(idle))
                .build(),
            pending_touch: Mutex::new(HashSet::new()),
        }
    }

    fn owner_here(&self, session_id: &str) -> Option<String> {
        self.owners.get(session_id)
    }

    fn note_use(&self, session_id: &str) {
        if !self.touched.contains_key(session_id) {
            self.touched.insert(session_id.to_string(), ());
            if let Ok(mut pending) = self.pending_touch.lock() {
                pending.insert(session_id.to_string());
            }
        }
    }

    pub async fn check(&self, session_id: &str, user_id: &str) -> Result<SessionUse, StoreError> {
        let owner = match self.owner_here(session_id) {
            Some(owner) => owner,
            None => match self.store.session_owner(session_id).await? {
                Some(owner) => {
                    self.owners.insert(session_id.to_string(), owner.clone());
                    owner
                }
                None => return Ok(SessionUse::Unknown),
            },
        };
        self.note_use(session_id);
        Ok(if owner == user_id {
            SessionUse::Owner
        } else {
            SessionUse::Foreign
        })
    }

    /// Binds `session_id` to `user_id` unless someone holds it already.
    /// Returns false when it belongs to another user.
    pub async fn bind(&self, session_id: &str, user_id: &str) -> Result<bool, StoreError> {
        if let Some(owner) = self.owner_here(session_id) {
            return Ok(owner == user_id);
        }
        let owner = self
            .store
            .bind_session(session_id, user_id, Utc::now())
            .await?;
        self.owners.insert(session_id.to_string(), owner.clone());
        Ok(owner == user_id)
    }

    /// Binds a session the upstream has just handed to `user_id`, in the
    /// store so every replica knows it; with the store unreachable, here
    /// only (the user keeps the session this replica serves). False when it
    /// is bound to another user.
    pub async fn bind_handed_out(&self, session_id: &str, user_id: &str) -> bool {
        match self.bind(session_id, user_id).await {
            Ok(mine) => mine,
            Err(e) => {
                tracing::warn!(error = %e, "new MCP session bound on this replica only");
                self.owners
                    .entry(session_id.to_string())
                    .or_insert_with(|| user_id.to_string())
                    .value()
                    == user_id
            }
        }
    }

    /// A stream of `session_id` is still open: its binding stays, here and
    /// (written at most once a minute) in the store.
    pub fn keep_alive(&self, session_id: &str) {
        if self.owners.get(session_id).is_some() {
            self.note_use(session_id);
        }
    }

    /// For synchronous callers (a streamed response): binds here at once and
    /// in the store in the background.
    pub fn bind_detached(self: &Arc<Self>, session_id: &str, user_id: &str) -> bool {
        if let Some(owner) = self.owner_here(session_id) {
            return owner == user_id;
        }
        self.owners
            .insert(session_id.to_string(), user_id.to_string());
        let (this, session_id, user_id) =
            (self.clone(), session_id.to_string(), user_id.to_string());
        tokio::spawn(async move {
            match this
                .store
                .bind_session(&session_id, &user_id, Utc::now())
                .await
            {
                Ok(owner) if owner != user_id => {
                    tracing::warn!(
                        "a session announced to one user is bound to another; refusing it"
                    );
                    this.owners.insert(session_id, owner);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "session binding not stored; other replicas will not know it")
                }
            }
        });
        true
    }

    pub async fn end(&self, session_id: &str) {
        self.owners.invalidate(session_id);
        if let Err(e) = self.store.end_session(session_id).await {
            tracing::warn!(error = %e, "ended session not removed from the store");
        }
    }

    /// Writes recent uses and forgets sessions idle for longer than `idle`.
    pub async fn housekeeping(&self, idle: Duration, prune: bool) {
        let used: Vec<String> = self
            .pending_touch
            .lock()
            .map(|mut p| p.drain().collect())
            .unwrap_or_default();
        if !used.is_empty()
            && let Err(e) = self.store.touch_sessions(&used, Utc::now()).await
        {
            tracing::debug!(error = %e, "session uses not recorded");
        }
        if prune {
            // An idle time too long to subtract from now forgets nothing.
            let before = chrono::Duration::from_std(idle)
                .ok()
                .and_then(|idle| Utc::now().checked_sub_signed(idle))
                .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
            match self.store.prune_sessions(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(forgotten = n, "idle MCP sessions forgotten"),
                Err(e) => tracing::debug!(error = %e, "pruning sessions failed"),
            }
        }
    }

    /// Sessions known to this replica.
    pub fn local_len(&self) -> u64 {
        self.owners.run_pending_tasks();
        self.owners.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        crate::store::temporary(true).await
    }

    #[tokio::test]
    async fn the_creator_owns_a_session_on_every_replica() {
        let (_dir, store) = store().await;
        let one = SessionBindings::new(store.clone(), 10, Duration::from_secs(60));
        let two = SessionBindings::new(store, 10, Duration::from_secs(60));
        assert_eq!(
            one.check("abc", "alice").await.unwrap(),
            SessionUse::Unknown
        );
        assert!(one.bind("abc", "alice").await.unwrap());
        assert!(
            one.bind("abc", "alice").await.unwrap(),
            "binding again is harmless"
        );
        assert!(
            !two.bind("abc", "mallory").await.unwrap(),
            "another replica cannot hand it over"
        );
        assert_eq!(
            two.check("abc", "mallory").await.unwrap(),
            SessionUse::Foreign
        );
        assert_eq!(two.check("abc", "alice").await.unwrap(), SessionUse::Owner);
        assert!(!two.bind_handed_out("abc", "mallory").await);
        assert!(two.bind_handed_out("abc", "alice").await);
        one.end("abc").await;
        let three = SessionBindings::new(one.store.clone(), 10, Duration::from_secs(60));
        assert_eq!(
            three.check("abc", "alice").await.unwrap(),
            SessionUse::Unknown
        );
    }

    #[tokio::test]
    async fn local_views_are_bounded_and_idle_sessions_pruned() {
        let (_dir, store) = store().await;
        let s = SessionBindings::new(store.clone(), 100, Duration::from_secs(60));
        for i in 0..300 {
            s.bind(&format!("s{i}"), "alice").await.unwrap();
        }
        assert!(s.local_len() <= 100, "{}", s.local_len());
        s.housekeeping(Duration::from_secs(0), true).await;
        assert_eq!(store.session_owner("s1").await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_open_stream_keeps_its_binding_past_the_idle_time() {
        let (_dir, store) = store().await;
        let idle = Duration::from_millis(300);
        let s = SessionBindings::new(store.clone(), 10, idle);
        assert!(s.bind_handed_out("streamed", "alice").await);
        assert!(s.bind_handed_out("quiet", "alice").await);
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.keep_alive("streamed");
        }
        assert_eq!(
            s.check("streamed", "alice").await.unwrap(),
            SessionUse::Owner
        );
        assert_eq!(
            s.owner_here("quiet"),
            None,
            "an idle binding without a stream is forgotten here"
        );
    }
}
