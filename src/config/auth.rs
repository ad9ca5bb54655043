//! `[auth]`: how long token lookups are trusted and remembered.

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// How long a token looked up in the store is trusted without asking again (0 = no cache).
    pub cache_ttl_secs: u64,
    /// How long an unknown token is remembered as unknown.
    pub negative_cache_ttl_secs: u64,
    /// While the store is unreachable, tokens seen within this long keep working.
    pub stale_grace_secs: u64,
    /// Most tokens held in the cache at once.
    pub cache_capacity: u64,
    /// SQLite only: how often the token change counter is polled for revocations.
    pub change_poll_ms: u64,
    /// `last_used_at` is written at most once per token per this many seconds.
    pub last_used_interval_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            cache_ttl_secs: 30,
            negative_cache_ttl_secs: 5,
            stale_grace_secs: 300,
            cache_capacity: 100_000,
            change_poll_ms: 250,
            last_used_interval_secs: 60,
        }
    }
}

impl AuthConfig {
    /// The token cache and how quickly it sees revocations.
    pub(super) fn validate_cache(&self) -> Result<(), ConfigError> {
        if self.cache_capacity == 0 {
            return Err(invalid("auth.cache_capacity", "must be at least 1"));
        }
        if self.change_poll_ms == 0 || self.change_poll_ms > 1000 {
            return Err(invalid(
                "auth.change_poll_ms",
                "must be between 1 and 1000 (revocations must apply within a second)",
            ));
        }
        Ok(())
    }

    pub(super) fn validate_last_used(&self) -> Result<(), ConfigError> {
        if self.last_used_interval_secs == 0 {
            return Err(invalid(
                "auth.last_used_interval_secs",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
