//! Which tokens the store holds, as hash prefixes kept in memory. A client cut
//! off for failing authentication too often gets only a few store lookups; a
//! token the store cannot hold is refused without one, so a flood of guesses
//! from an address never takes those lookups from a valid token sent from the
//! same address (an office behind one NAT).

use std::collections::HashSet;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::token::TokenHash;

#[derive(Default)]
pub struct KnownTokens {
    prefixes: RwLock<HashSet<u64>>,
    /// The set was loaded from the store and no change was missed since;
    /// until then every token may be known.
    complete: AtomicBool,
}

fn prefix(hash: &TokenHash) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(first)
}

impl KnownTokens {
    /// Whether the store may hold the token with this hash.
    pub fn may_hold(&self, hash: &TokenHash) -> bool {
        !self.complete.load(Ordering::Acquire)
            || self
                .prefixes
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&prefix(hash))
    }

    /// A token was created or changed.
    pub fn add(&self, hash: &TokenHash) {
        self.prefixes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(prefix(hash));
    }

    /// Changes may have been missed: every token may be known until
    /// [`KnownTokens::replace`] is given the store's list again.
    pub fn forget(&self) {
        self.complete.store(false, Ordering::Release);
    }

    /// Every token hash the store holds.
    pub fn replace(&self, hashes: impl IntoIterator<Item = TokenHash>) {
        let set = hashes.into_iter().map(|h| prefix(&h)).collect();
        *self.prefixes.write().unwrap_or_else(|e| e.into_inner()) = set;
        self.complete.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_loaded_every_token_may_be_known_then_only_the_store_s() {
        let known = KnownTokens::default();
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        assert!(known.may_hold(&a) && known.may_hold(&b));
        known.replace([a]);
        assert!(known.may_hold(&a));
        assert!(!known.may_hold(&b));
        known.add(&b);
        assert!(known.may_hold(&b));
        assert!(!known.may_hold(&c));
        known.forget();
        assert!(
            known.may_hold(&c),
            "after a missed change anything may be known"
        );
    }
}
