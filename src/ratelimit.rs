//! Rate limits (governor, in process): per token, and per client IP for failed
//! authentication so that a token-guessing flood is cut off before it costs
//! store queries.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use moka::sync::Cache;

use crate::config::RateLimitConfig;

/// A refusal: retry after this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds for the `Retry-After` header, at least 1.
    pub fn header_value(self) -> String {
        self.0.as_secs_f64().ceil().max(1.0).to_string()
    }
}

pub struct RateLimits {
    default_rps: u32,
    default_burst: u32,
    /// One limiter per token (by display prefix + id), built with its own quota.
    tokens: Cache<String, Arc<DefaultDirectRateLimiter>>,
    failed_auth: DefaultKeyedRateLimiter<IpAddr>,
    /// IPs over their failed-auth budget, until when.
    blocked: Cache<IpAddr, Instant>,
    clock: DefaultClock,
}

fn non_zero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl RateLimits {
    pub fn new(cfg: &RateLimitConfig) -> Self {
        let per_min = non_zero(cfg.failed_auth_per_ip_per_min);
        RateLimits {
            default_rps: cfg.per_token_rps,
            default_burst: cfg.per_token_burst,
            tokens: Cache::builder()
                .max_capacity(200_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            failed_auth: RateLimiter::keyed(Quota::per_minute(per_min).allow_burst(per_min)),
            blocked: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from the token's budget. `override_rps` is the
    /// token's own limit; 0 everywhere disables the check.
    pub fn check_token(&self, key: &str, override_rps: Option<u32>) -> Result<(), RetryAfter> {
        let rps = override_rps.unwrap_or(self.default_rps);
        if rps == 0 {
            return Ok(());
        }
        let burst = if override_rps.is_some() {
            rps
        } else {
            self.default_burst.max(1)
        };
        let cache_key = format!("{key}/{rps}/{burst}");
        let limiter = self.tokens.get_with(cache_key, || {
            Arc::new(RateLimiter::direct(
                Quota::per_second(non_zero(rps)).allow_burst(non_zero(burst)),
            ))
        });
        limiter
            .check()
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now())))
    }

    /// Whether `ip` is cut off for failing authentication too often.
    pub fn ip_blocked(&self, ip: IpAddr) -> Option<RetryAfter> {
        let until = self.blocked.get(&ip)?;
        let now = Instant::now();
        (until > now).then(|| RetryAfter(until - now))
    }

    /// Counts one failed authentication from `ip`; past the budget the IP is
    /// blocked until a cell frees up.
    pub fn note_failed_auth(&self, ip: IpAddr) {
        if let Err(not_until) = self.failed_auth.check_key(&ip) {
            let wait = not_until.wait_time_from(self.clock.now());
            self.blocked.insert(ip, Instant::now() + wait);
        }
    }

    /// Forgets idle keys; call now and then.
    pub fn housekeeping(&self) {
        self.failed_auth.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rps: u32, burst: u32, per_min: u32) -> RateLimits {
        RateLimits::new(&RateLimitConfig {
            per_token_rps: rps,
            per_token_burst: burst,
            failed_auth_per_ip_per_min: per_min,
            ..RateLimitConfig::default()
        })
    }

    #[test]
    fn per_token_budget_and_override() {
        let l = limits(1, 3, 10);
        for _ in 0..3 {
            assert!(l.check_token("a", None).is_ok());
        }
        let retry = l.check_token("a", None).unwrap_err();
        assert!(retry.0 <= Duration::from_secs(1));
        assert_eq!(retry.header_value(), "1");
        assert!(
            l.check_token("b", None).is_ok(),
            "tokens have separate budgets"
        );
        assert!(l.check_token("c", Some(1)).is_ok());
        assert!(
            l.check_token("c", Some(1)).is_err(),
            "the override's burst is its rate"
        );
        assert!(
            limits(0, 0, 10).check_token("d", None).is_ok(),
            "0 disables"
        );
    }

    #[test]
    fn failed_auth_blocks_an_ip_after_its_budget() {
        let l = limits(0, 0, 3);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..3 {
            assert!(l.ip_blocked(ip).is_none());
            l.note_failed_auth(ip);
        }
        assert!(l.ip_blocked(ip).is_none(), "the budget is not exceeded yet");
        l.note_failed_auth(ip);
        let retry = l.ip_blocked(ip).expect("blocked");
        assert!(retry.0 > Duration::ZERO && retry.0 <= Duration::from_secs(60));
        assert!(l.ip_blocked("192.0.2.8".parse().unwrap()).is_none());
    }
}
