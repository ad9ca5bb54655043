//! `memgate audit` and `memgate stats`: the audit trail for people (tables)
//! and scripts (`--json`).

use chrono::{Duration, Utc};
use clap::Args;
use serde_json::{Value, json};

use super::{render_table, time};
use crate::audit::AuditEvent;
use crate::store::{AuditFilter, Store, TokenStatus};

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// How many days back to look (at most 36500)
    #[arg(long, default_value_t = 7, value_parser = super::parse_days)]
    pub days: u32,
    #[arg(long)]
    pub user_id: Option<String>,
    /// Only this event (auth_failure, auth_success, ownership_denied, …)
    #[arg(long)]
    pub event: Option<String>,
    /// At most this many events (oldest first)
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    pub user_id: String,
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn event_json(e: &AuditEvent) -> Value {
    json!({
        "time": time(e.time),
        "event": e.event,
        "success": e.success,
        "user_id": e.user_id,
        "token_prefix": e.token_prefix,
        "ip": e.ip,
        "user_agent": e.user_agent,
        "method": e.method,
        "path": e.path,
        "mcp_method": e.mcp_method,
        "tool": e.tool,
        "reason": e.reason,
        "request_id": e.request_id,
    })
}

pub async fn audit(store: &dyn Store, args: AuditArgs) -> anyhow::Result<String> {
    let filter = AuditFilter {
        since: super::days_after(Utc::now(), -i64::from(args.days), "--days")?,
        user_id: args.user_id,
        event: args.event,
        limit: i64::from(args.limit),
    };
    let events = store.audit_events(&filter).await?;
    if args.json {
        return Ok(Value::Array(events.iter().map(event_json).collect()).to_string());
    }
    if events.is_empty() {
        return Ok("No audit events.".into());
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                time(e.time),
                e.event.clone(),
                if e.success { "ok" } else { "FAIL" }.into(),
                dash(&e.user_id),
                dash(&e.token_prefix),
                dash(&e.ip),
                format!("{} {}", dash(&e.method), dash(&e.path)),
                dash(&e.tool),
                dash(&e.reason),
            ]
        })
        .collect();
    Ok(render_table(
        &[
            "TIME", "EVENT", "RESULT", "USER", "TOKEN", "IP", "REQUEST", "TOOL", "REASON",
        ],
        &rows,
    ))
}

pub async fn stats(store: &dyn Store, args: StatsArgs) -> anyhow::Result<String> {
    let now = Utc::now();
    let tokens = store.tokens(Some(&args.user_id)).await?;
    let active = tokens
        .iter()
        .filter(|t| t.status(now) == TokenStatus::Active)
        .count();
    let stats = store
        .user_stats(&args.user_id, now - Duration::days(30))
        .await?;
    let last_token_use = tokens.iter().filter_map(|t| t.last_used_at).max();
    let last_activity = last_token_use.max(stats.last_audit_event);
    if args.json {
        return Ok(json!({
            "user_id": args.user_id,
            "tokens_total": tokens.len(),
            "tokens_active": active,
            "last_activity": last_activity.map(time),
            "successes_30d": stats.successes,
            "failures_30d": stats.failures,
            "top_failure_reasons": stats.top_failure_reasons.iter()
                .map(|(reason, count)| json!({"reason": reason, "count": count}))
                .collect::<Vec<_>>(),
        })
        .to_string());
    }
    let mut out = format!(
        "User:            {}\nTokens:          {} ({} active)\nLast activity:   {}\n\
         Last 30 days:    {} successes, {} failures",
        args.user_id,
        tokens.len(),
        active,
        last_activity.map_or("never".into(), time),
        stats.successes,
        stats.failures,
    );
    if !stats.top_failure_reasons.is_empty() {
        out.push_str("\nTop failure reasons:");
        for (reason, count) in &stats.top_failure_reasons {
            out.push_str(&format!("\n  {count:>6}  {reason}"));
        }
    }
    Ok(out)
}
