//! Every Prometheus metric memgate exports, declared once with its help text
//! (docs/design.md §7), and the text rendering served on the admin listener.

pub mod memo;

use std::sync::LazyLock;

use crate::policy::mem0::Route;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// `ownership_denials_total{route}` of an MCP tool call naming a memory of
/// another user.
pub const MCP_OWNERSHIP_ROUTE: &str = "tools/call";

pub struct Metrics {
    registry: Registry,
    /// `listener`, `route`, `status`.
    pub requests: IntCounterVec,
    /// `listener`.
    pub request_duration: HistogramVec,
    /// `listener`.
    pub upstream_duration: HistogramVec,
    /// `result` (allow|deny|error), `reason`.
    pub auth_decisions: IntCounterVec,
    /// `user_id`: failures of real tokens (revoked, expired, user mismatch).
    pub auth_user_failures: IntCounterVec,
    /// `outcome` (hit|miss|negative_hit|stale).
    pub auth_cache: IntCounterVec,
    /// `route`: requests refused because the memory belongs to someone else.
    pub ownership_denials: IntCounterVec,
    /// `route`: list/search items mem0 returned for another user (it ignored the filter).
    pub response_items_dropped: IntCounterVec,
    /// `kind` (token|failed_auth_ip).
    pub rate_limited: IntCounterVec,
    /// Per-token checks answered locally because Redis could not be asked.
    pub rate_limit_fallback: IntCounter,
    /// `outcome` (written|spooled|replayed|dropped).
    pub audit_events: IntCounterVec,
    /// Events waiting in the on-disk spool.
    pub audit_spool_depth: IntGauge,
    /// `method`, `tool`.
    pub mcp_requests: IntCounterVec,
    /// `op`.
    pub store_queries: IntCounterVec,
    pub store_errors: IntCounter,
    /// `listener`: client connections open now.
    pub connections_open: IntGaugeVec,
    /// `listener`, `reason` (limit|header_timeout): connections turned away or cut off.
    pub connections_refused: IntCounterVec,
    /// `listener`: tasks alive on the listener's runtime, as of its last request.
    pub runtime_tasks: IntGaugeVec,
    /// `state` (starting|running|stopping): spawned MCP servers (`[mcp.spawn]`).
    pub upstream_processes: IntGaugeVec,
    /// `result` (ok|failed|timeout): starts of spawned MCP servers.
    pub upstream_spawns: IntCounterVec,
    /// `within` (7d|30d): enabled tokens that expire within that window.
    pub tokens_expiring: IntGaugeVec,
    /// `rule`, `action` (redacted|refused): secrets the secret guard found in writes.
    pub secrets_found: IntCounterVec,
    /// `version`, always 1.
    pub build_info: IntGaugeVec,
}

/// The windows `memgate_tokens_expiring{within}` counts, as (label, days):
/// a week to act on before clients start failing, and a month to plan.
pub const TOKEN_EXPIRY_WINDOWS: [(&str, i64); 2] = [("7d", 7), ("30d", 30)];

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help).namespace("memgate"), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    register(registry, metric)
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help)
        .namespace("memgate")
        .buckets(LATENCY_BUCKETS.to_vec());
    let metric = HistogramVec::new(opts, labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    register(registry, metric)
}

fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric registered twice: {e}"));
    metric
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let store_errors = register(
            &r,
            IntCounter::with_opts(
                Opts::new("store_errors_total", "Store queries that failed.").namespace("memgate"),
            )
            .unwrap_or_else(|e| panic!("metric store_errors_total is malformed: {e}")),
        );
        let build_info = register(
            &r,
            IntGaugeVec::new(
                Opts::new("build_info", "memgate build; the value is always 1.")
                    .namespace("memgate"),
                &["version"],
            )
            .unwrap_or_else(|e| panic!("metric build_info is malformed: {e}")),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Metrics {
            requests: counter_vec(
                &r,
                "requests_total",
                "Requests answered, by listener, route and HTTP status.",
                &["listener", "route", "status"],
            ),
            request_duration: histogram_vec(
                &r,
                "request_duration_seconds",
                "Time from request received to response finished, by listener.",
                &["listener"],
            ),
            upstream_duration: histogram_vec(
                &r,
                "upstream_duration_seconds",
                "Time from forwarding a request to the upstream's response header, by listener.",
                &["listener"],
            ),
            auth_decisions: counter_vec(
                &r,
                "auth_decisions_total",
                "Authentication outcomes: result allow|deny|error, the reason, and the \
                 auth_method (token|jwt|introspection, none when no credential was readable).",
                &["result", "reason", "auth_method"],
            ),
            auth_user_failures: counter_vec(
                &r,
                "auth_user_failures_total",
                "Refused requests that carried a real token (revoked, expired, user mismatch), by its user.",
                &["user_id"],
            ),
            auth_cache: counter_vec(
                &r,
                "auth_cache_total",
                "Token cache lookups: hit, miss, negative_hit (known unknown) or stale (store down).",
                &["outcome"],
            ),
            ownership_denials: counter_vec(
                &r,
                "ownership_denials_total",
                "Requests refused because the memory belongs to another user, by route.",
                &["route"],
            ),
            response_items_dropped: counter_vec(
                &r,
                "response_items_dropped_total",
                "Items of other users that mem0 returned and memgate removed, by route.",
                &["route"],
            ),
            rate_limited: counter_vec(
                &r,
                "rate_limited_total",
                "Requests refused with 429: kind token (per-token limit) or failed_auth_ip.",
                &["kind"],
            ),
            rate_limit_fallback: register(
                &r,
                IntCounter::with_opts(
                    Opts::new(
                        "rate_limit_fallback_total",
                        "Per-token limit checks done locally because Redis was unreachable.",
                    )
                    .namespace("memgate"),
                )
                .unwrap_or_else(|e| panic!("metric rate_limit_fallback_total is malformed: {e}")),
            ),
            audit_events: counter_vec(
                &r,
                "audit_events_total",
                "Audit events by outcome: written, spooled (store down), replayed, dropped (spool full).",
                &["outcome"],
            ),
            audit_spool_depth: register(
                &r,
                IntGauge::with_opts(
                    Opts::new(
                        "audit_spool_depth",
                        "Audit events waiting in the on-disk spool for the store.",
                    )
                    .namespace("memgate"),
                )
                .unwrap_or_else(|e| panic!("metric audit_spool_depth is malformed: {e}")),
            ),
            mcp_requests: counter_vec(
                &r,
                "mcp_requests_total",
                "JSON-RPC requests seen on the MCP listener, by method and tool.",
                &["method", "tool"],
            ),
            store_queries: counter_vec(
                &r,
                "store_queries_total",
                "Queries sent to the token store, by operation.",
                &["op"],
            ),
            store_errors,
            connections_open: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "connections_open",
                        "Client connections open on a proxied listener.",
                    )
                    .namespace("memgate"),
                    &["listener"],
                )
                .unwrap_or_else(|e| panic!("metric connections_open is malformed: {e}")),
            ),
            connections_refused: counter_vec(
                &r,
                "connections_refused_total",
                "Client connections turned away (limit: server.max_connections reached) or cut off (header_timeout: request head too slow).",
                &["listener", "reason"],
            ),
            runtime_tasks: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "runtime_tasks",
                        "Tasks alive on a listener's runtimes (connections, streams, watchers), summed over its worker threads, each as of its last request.",
                    )
                    .namespace("memgate"),
                    &["listener"],
                )
                .unwrap_or_else(|e| panic!("metric runtime_tasks is malformed: {e}")),
            ),
            upstream_processes: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "upstream_processes",
                        "MCP server processes memgate spawned ([mcp.spawn]), by state: starting (not yet accepting connections), running, stopping.",
                    )
                    .namespace("memgate"),
                    &["state"],
                )
                .unwrap_or_else(|e| panic!("metric upstream_processes is malformed: {e}")),
            ),
            upstream_spawns: counter_vec(
                &r,
                "upstream_spawns_total",
                "Starts of spawned MCP server processes, by result: ok (accepting connections), failed (could not run or exited first), timeout (not ready within mcp.spawn.ready_timeout_secs).",
                &["result"],
            ),
            tokens_expiring: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "tokens_expiring",
                        "Enabled tokens that expire within the window `within` (7d, 30d), counted every 5 minutes.",
                    )
                    .namespace("memgate"),
                    &["within"],
                )
                .unwrap_or_else(|e| panic!("metric tokens_expiring is malformed: {e}")),
            ),
            secrets_found: counter_vec(
                &r,
                "secrets_found_total",
                "Secrets found in writes bound for mem0 ([secret_guard]), by rule and action: redacted or refused.",
                &["rule", "action"],
            ),
            build_info,
            registry: r,
        }
    }

    /// Creates the label sets alerts and dashboards rely on at zero, so that
    /// `rate()` and `increase()` work before the first event of each kind
    /// (`tests/metrics_names.rs` checks `grafana/` and `deploy/prometheus/`
    /// against a fresh `/metrics`). `auth_user_failures_total` is per user:
    /// its series cannot exist before the user's first failure.
    fn touch_known_labels(&self) {
        for reason in [
            "malformed",
            "unknown",
            "revoked",
            "expired",
            "user_mismatch",
            "rate_limited",
        ] {
            self.auth_decisions
                .with_label_values(&["deny", reason, "token"]);
        }
        for reason in ["missing", "malformed"] {
            self.auth_decisions
                .with_label_values(&["deny", reason, "none"]);
        }
        self.auth_decisions
            .with_label_values(&["error", "store_unavailable", "token"]);
        for method in ["jwt", "introspection"] {
            for reason in [
                "expired",
                "wrong_audience",
                "user_mismatch",
                "bad_signature",
            ] {
                self.auth_decisions
                    .with_label_values(&["deny", reason, method]);
            }
            self.auth_decisions
                .with_label_values(&["error", "issuer_unavailable", method]);
        }
        for method in ["token", "jwt", "introspection"] {
            self.auth_decisions
                .with_label_values(&["allow", "ok", method]);
        }
        for outcome in ["hit", "miss", "negative_hit", "stale"] {
            self.auth_cache.with_label_values(&[outcome]);
        }
        for kind in ["token", "failed_auth_ip"] {
            self.rate_limited.with_label_values(&[kind]);
        }
        for outcome in ["written", "spooled", "replayed", "dropped"] {
            self.audit_events.with_label_values(&[outcome]);
        }
        for listener in ["mcp", "mem0"] {
            self.connections_open.with_label_values(&[listener]);
            for reason in ["limit", "header_timeout"] {
                self.connections_refused
                    .with_label_values(&[listener, reason]);
            }
            self.request_duration.with_label_values(&[listener]);
            self.upstream_duration.with_label_values(&[listener]);
            // What a request without a valid token is counted as: every
            // deployment sees it, so the family exists before any traffic.
            self.requests
                .with_label_values(&[listener, "denied", "401"]);
        }
        // A leak alert must see the counter go from 0 to 1, not appear at 1.
        for route in [Route::ListMemories, Route::Search] {
            self.response_items_dropped
                .with_label_values(&[route.label()]);
        }
        for route in [
            Route::GetMemory,
            Route::UpdateMemory,
            Route::DeleteMemory,
            Route::MemoryHistory,
        ] {
            self.ownership_denials.with_label_values(&[route.label()]);
        }
        self.ownership_denials
            .with_label_values(&[MCP_OWNERSHIP_ROUTE]);
        // Every MCP session starts with these; tool calls follow per tool.
        for method in ["initialize", "tools/list"] {
            self.mcp_requests.with_label_values(&[method, ""]);
        }
        for state in ["starting", "running", "stopping"] {
            self.upstream_processes.with_label_values(&[state]);
        }
        for result in ["ok", "failed", "timeout"] {
            self.upstream_spawns.with_label_values(&[result]);
        }
        for (within, _) in TOKEN_EXPIRY_WINDOWS {
            self.tokens_expiring.with_label_values(&[within]);
        }
        for op in ["ping", "token_by_hash", "insert_audit", "record_scopes"] {
            self.store_queries.with_label_values(&[op]);
        }
        // Custom rules' series start at their first finding.
        for rule in crate::policy::secrets::shipped_names() {
            for action in crate::policy::secrets::Action::ALL {
                self.secrets_found
                    .with_label_values(&[rule, action.as_str()]);
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let metrics = Metrics::new();
    metrics.touch_known_labels();
    metrics
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_declared_names_with_help() {
        METRICS.store_queries.with_label_values(&["ping"]).inc();
        let text = METRICS.render();
        assert!(text.contains("# HELP memgate_store_queries_total"));
        assert!(text.contains("memgate_build_info{version="));
    }
}
