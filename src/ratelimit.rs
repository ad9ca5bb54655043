//! Rate limits: per token (governor in process, or shared by every replica
//! through Redis), and per client IP for failed authentication so that a
//! token-guessing flood is cut off before it costs store queries.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use moka::sync::Cache;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{RateLimitBackend, RateLimitConfig, RedisConfig};
use crate::metrics::METRICS;

/// Generic cell rate algorithm, atomically in Redis on Redis's clock (all
/// replicas agree on time). KEYS[1]: the token's key. ARGV: emission interval
/// and burst tolerance in microseconds. Returns {allowed, retry_after_us}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
if tat - now > tolerance then
  return {0, tat - tolerance - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, 0}
";

/// Per-token limits shared through Redis; `None` answers mean "ask locally".
struct RedisLimits {
    client: redis::Client,
    connection: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    script: redis::Script,
    timeout: Duration,
    /// Unix seconds of the last "Redis unreachable" log line (one per 10 s).
    last_warning: AtomicU64,
}

impl RedisLimits {
    async fn check(&self, key: &str, rps: u32, burst: u32) -> Option<Result<(), RetryAfter>> {
        let call = async {
            let connection = self
                .connection
                .get_or_try_init(|| self.client.get_connection_manager())
                .await?;
            let interval = 1_000_000u64 / u64::from(rps.max(1));
            let tolerance = interval * u64::from(burst.max(1).saturating_sub(1));
            self.script
                .key(format!("memgate:rl:{key}"))
                .arg(interval)
                .arg(tolerance)
                .invoke_async::<(i64, i64)>(&mut connection.clone())
                .await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((1, _))) => Some(Ok(())),
            Ok(Ok((_, wait_us))) => Some(Err(RetryAfter(Duration::from_micros(
                wait_us.max(0) as u64
            )))),
            Ok(Err(e)) => self.unreachable(&e.to_string()),
            Err(_) => self.unreachable("timed out"),
        }
    }

    fn unreachable(&self, why: &str) -> Option<Result<(), RetryAfter>> {
        METRICS.rate_limit_fallback.inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now.saturating_sub(self.last_warning.swap(now, Ordering::Relaxed)) >= 10 {
            tracing::warn!(
                reason = why,
                "Redis unreachable; per-token limits are local to this replica"
            );
        }
        None
    }
}

/// A refusal: retry after this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds for the `Retry-After` header, at least 1.
    pub fn header_value(self) -> String {
        self.0.as_secs_f64().ceil().max(1.0).to_string()
    }
}

/// How often a cut-off address may have a token looked up in the store; it is
/// also the `Retry-After` such an address is given.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

pub struct RateLimits {
    redis: Option<RedisLimits>,
    default_rps: u32,
    default_burst: u32,
    failed_auth: DefaultKeyedRateLimiter<IpAddr>,
    /// Store lookups granted to a cut-off IP for tokens the cache does not know.
    probes: DefaultKeyedRateLimiter<IpAddr>,
    /// IPs over their failed-auth budget, until when.
    blocked: Cache<IpAddr, Instant>,
    clock: DefaultClock,
}

fn non_zero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl RateLimits {
    pub fn new(cfg: &RateLimitConfig, redis: &RedisConfig) -> Self {
        let per_min = non_zero(cfg.failed_auth_per_ip_per_min);
        let redis = match cfg.backend {
            RateLimitBackend::Local => None,
            RateLimitBackend::Redis => match redis::Client::open(redis.url.as_str()) {
                Ok(client) => {
                    tracing::info!(
                        redis = %crate::config::mask_url_password(&redis.url),
                        "per-token limits are shared through Redis"
                    );
                    Some(RedisLimits {
                        client,
                        connection: tokio::sync::OnceCell::new(),
                        script: redis::Script::new(GCRA),
                        timeout: Duration::from_millis(redis.timeout_ms),
                        last_warning: AtomicU64::new(0),
                    })
                }
                Err(e) => {
                    tracing::error!(error = %e, "redis.url is unusable; per-token limits are local");
                    None
                }
            },
        };
        RateLimits {
            redis,
            default_rps: cfg.per_token_rps,
            default_burst: cfg.per_token_burst,
            failed_auth: RateLimiter::keyed(Quota::per_minute(per_min).allow_burst(per_min)),
            probes: RateLimiter::keyed(Quota::with_period(PROBE_INTERVAL).expect("non-zero period")),
            blocked: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from the token's budget, shared through Redis when
    /// configured (local when Redis cannot answer). `override_rps` is the
    /// token's own limit; 0 everywhere disables the check. The local limiter
    /// lives in `slot`, next to the cached token it belongs to.
    pub async fn check_token(
        &self,
        key: &str,
        override_rps: Option<u32>,
        slot: &OnceLock<DefaultDirectRateLimiter>,
    ) -> Result<(), RetryAfter> {
        let rps = override_rps.unwrap_or(self.default_rps);
        if rps == 0 {
            return Ok(());
        }
        let burst = if override_rps.is_some() {
            rps
        } else {
            self.default_burst.max(1)
        };
        if let Some(redis) = &self.redis
            && let Some(answer) = redis.check(key, rps, burst).await
        {
            return answer;
        }
        self.check_local(slot, rps, burst)
    }

    fn check_local(
        &self,
        slot: &OnceLock<DefaultDirectRateLimiter>,
        rps: u32,
        burst: u32,
    ) -> Result<(), RetryAfter> {
        let limiter = slot.get_or_init(|| {
            RateLimiter::direct(Quota::per_second(non_zero(rps)).allow_burst(non_zero(burst)))
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

    /// Whether a cut-off `ip` may have one store lookup now: one per
    /// [`PROBE_INTERVAL`], so a valid token behind an address shared with a
    /// guesser (an office NAT) gets in within about that long, while the
    /// guesser costs the store at most one query per interval.
    pub fn take_probe(&self, ip: IpAddr) -> bool {
        self.probes.check_key(&ip).is_ok()
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
        self.probes.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rps: u32, burst: u32, per_min: u32) -> RateLimits {
        RateLimits::new(
            &RateLimitConfig {
                per_token_rps: rps,
                per_token_burst: burst,
                failed_auth_per_ip_per_min: per_min,
                ..RateLimitConfig::default()
            },
            &RedisConfig::default(),
        )
    }

    #[tokio::test]
    async fn per_token_budget_and_override() {
        let l = limits(1, 3, 10);
        let (a, b, c, d) = (
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
        );
        for _ in 0..3 {
            assert!(l.check_token("a", None, &a).await.is_ok());
        }
        let retry = l.check_token("a", None, &a).await.unwrap_err();
        assert!(retry.0 <= Duration::from_secs(1));
        assert_eq!(retry.header_value(), "1");
        assert!(
            l.check_token("b", None, &b).await.is_ok(),
            "tokens have separate budgets"
        );
        assert!(l.check_token("c", Some(1), &c).await.is_ok());
        assert!(
            l.check_token("c", Some(1), &c).await.is_err(),
            "the override's burst is its rate"
        );
        assert!(
            limits(0, 0, 10).check_token("d", None, &d).await.is_ok(),
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

    #[test]
    fn a_cut_off_ip_gets_one_store_probe_per_interval_of_its_own() {
        let l = limits(0, 0, 3);
        let (office, other): (IpAddr, IpAddr) =
            ("192.0.2.7".parse().unwrap(), "192.0.2.8".parse().unwrap());
        assert!(l.take_probe(office));
        assert!(!l.take_probe(office), "one per interval");
        assert!(l.take_probe(other), "each address has its own");
        std::thread::sleep(PROBE_INTERVAL);
        assert!(l.take_probe(office), "the next interval grants another");
    }
}
