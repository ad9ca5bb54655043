//! `[rate_limit]` and `[redis]`, the store shared limits are kept in.

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitBackend {
    Local,
    /// Per-token limits shared by every replica through Redis.
    Redis,
}

/// `[redis]`: used when `rate_limit.backend = "redis"`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    /// A Redis call slower than this counts as Redis being down (local limits apply).
    pub timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            timeout_ms: 50,
        }
    }
}

/// `[rate_limit]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub backend: RateLimitBackend,
    /// Requests per second per token (0 disables the per-token limit).
    pub per_token_rps: u32,
    pub per_token_burst: u32,
    /// Failed authentications per client IP per minute before that IP is cut off.
    pub failed_auth_per_ip_per_min: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            backend: RateLimitBackend::Local,
            per_token_rps: 50,
            per_token_burst: 100,
            failed_auth_per_ip_per_min: 10,
        }
    }
}

impl RateLimitConfig {
    /// `redis` is checked only when the limits are kept there.
    pub(super) fn validate(&self, redis: &RedisConfig) -> Result<(), ConfigError> {
        if self.per_token_rps > 0 && self.per_token_burst == 0 {
            return Err(invalid("rate_limit.per_token_burst", "must be at least 1"));
        }
        if self.backend == RateLimitBackend::Redis {
            redis::Client::open(redis.url.as_str())
                .map_err(|e| invalid("redis.url", e.to_string()))?;
            if redis.timeout_ms == 0 {
                return Err(invalid("redis.timeout_ms", "must be at least 1"));
            }
        }
        if self.failed_auth_per_ip_per_min == 0 {
            return Err(invalid(
                "rate_limit.failed_auth_per_ip_per_min",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
