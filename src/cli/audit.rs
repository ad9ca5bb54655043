//! `memgate audit` and `memgate stats`: the audit trail for people (tables)
//! and scripts (`--json`).

use chrono::{DateTime, Duration, Utc};
use clap::Args;
use serde_json::{Value, json};

use super::{render_table, time};
use crate::audit::AuditEvent;
use crate::store::{AuditFilter, Store, TokenStatus};

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// How many days back to look (at most 36500), unless --since is given
    #[arg(long, default_value_t = 7, value_parser = super::parse_days, conflicts_with = "since")]
    pub days: u32,
    /// Events from this time on: RFC 3339 (2026-01-31T12:00:00Z) or an age (30m, 2h, 7d)
    #[arg(long, value_name = "TIME", value_parser = parse_when)]
    pub since: Option<When>,
    /// Events before this time: RFC 3339 or an age (30m, 2h, 7d)
    #[arg(long, value_name = "TIME", value_parser = parse_when)]
    pub until: Option<When>,
    /// Only this user's events
    #[arg(long, value_name = "ID")]
    pub user_id: Option<String>,
    /// Only this kind of event
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(crate::audit::kind::ALL))]
    pub event: Option<String>,
    /// At most this many events: the newest ones (the oldest with --oldest-first)
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Oldest events first (default: newest first)
    #[arg(long)]
    pub oldest_first: bool,
    /// Print a JSON array instead of a table
    #[arg(long)]
    pub json: bool,
}

/// A point in time given on the command line: absolute, or an age before now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    At(DateTime<Utc>),
    Ago(Duration),
}

impl When {
    pub fn at(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            When::At(t) => t,
            // Ages are at most 100 years (see `parse_when`), so this stays a date.
            When::Ago(age) => now
                .checked_sub_signed(age)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }
}

/// `--since`/`--until`: RFC 3339, or a whole number of seconds, minutes,
/// hours, days or weeks (`45s`, `30m`, `2h`, `7d`, `2w`), at most 100 years.
pub(crate) fn parse_when(text: &str) -> Result<When, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(When::At(t.with_timezone(&Utc)));
    }
    let wrong = || {
        format!(
            "{text:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor an age like 30m, 2h or 7d"
        )
    };
    let unit = text.chars().last().ok_or_else(wrong)?;
    let unit_secs: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return Err(wrong()),
    };
    let count: u64 = text[..text.len() - 1].parse().map_err(|_| wrong())?;
    let max_secs = u64::from(super::MAX_DAYS) * 86_400;
    match count.checked_mul(unit_secs) {
        Some(secs) if secs <= max_secs => Ok(When::Ago(Duration::seconds(secs as i64))),
        _ => Err(format!(
            "{text} is more than {} days (100 years) ago; give a shorter age",
            super::MAX_DAYS
        )),
    }
}

/// The window `[since, until)` the arguments select.
pub(crate) fn window(
    args: &AuditArgs,
    now: DateTime<Utc>,
) -> anyhow::Result<(DateTime<Utc>, Option<DateTime<Utc>>)> {
    let since = match args.since {
        Some(when) => when.at(now),
        None => super::days_after(now, -i64::from(args.days), "--days")?,
    };
    let until = args.until.map(|when| when.at(now));
    if let Some(until) = until
        && until < since
    {
        anyhow::bail!(
            "--until {} is before the start of the window {}; give a later --until or an earlier --since",
            time(until),
            time(since)
        );
    }
    Ok((since, until))
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// The user to report on
    #[arg(value_name = "USER_ID")]
    pub user_id: String,
    /// Print a JSON object instead of text
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
    let (since, until) = window(&args, Utc::now())?;
    let limit = i64::from(args.limit);
    let filter = AuditFilter {
        since,
        until,
        user_id: args.user_id,
        event: args.event,
        // One more than shown tells whether anything was cut.
        limit: limit + 1,
        newest_first: !args.oldest_first,
    };
    let mut events = store.audit_events(&filter).await?;
    if events.len() as i64 > limit {
        events.truncate(args.limit as usize);
        let which = if args.oldest_first {
            "oldest"
        } else {
            "newest"
        };
        eprintln!(
            "note: showing the {which} {limit} of at least {} events; use --limit or --since",
            limit + 1
        );
    }
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
    if tokens.is_empty() && stats.last_audit_event.is_none() {
        anyhow::bail!(
            "no tokens and no audit events for user {:?}; check the id against `memgate token list`",
            args.user_id
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339_or_ages() {
        let now = Utc::now();
        assert_eq!(parse_when("2h").unwrap().at(now), now - Duration::hours(2));
        assert_eq!(
            parse_when("30m").unwrap().at(now),
            now - Duration::minutes(30)
        );
        assert_eq!(parse_when("7d").unwrap().at(now), now - Duration::days(7));
        assert_eq!(
            parse_when("2026-01-31T12:00:00+01:00").unwrap().at(now),
            DateTime::parse_from_rfc3339("2026-01-31T11:00:00Z").unwrap()
        );
        for bad in [
            "",
            "h",
            "2",
            "-2h",
            "2y",
            "1.5h",
            "36501d",
            "18446744073709551615w",
            "2026-01-31",
        ] {
            assert!(parse_when(bad).is_err(), "{bad:?}");
        }
        assert!(parse_when("36500d").is_ok());
    }
}
