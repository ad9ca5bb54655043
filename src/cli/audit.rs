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
    /// Print a JSON array instead of a table (with --follow: one JSON object per line)
    #[arg(long)]
    pub json: bool,
    /// Keep running and print events as they are stored, like `tail -f`: the
    /// window's events oldest first, then each new one
    #[arg(long, conflicts_with_all = ["until", "oldest_first"])]
    pub follow: bool,
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
        "auth_method": e.auth_method,
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
    let rows: Vec<Vec<String>> = events.iter().map(event_row).collect();
    Ok(render_table(&COLUMNS, &rows))
}

const COLUMNS: [&str; 10] = [
    "TIME", "EVENT", "RESULT", "USER", "AUTH", "TOKEN", "IP", "REQUEST", "TOOL", "REASON",
];

/// One event as the cells of [`COLUMNS`].
fn event_row(e: &AuditEvent) -> Vec<String> {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    vec![
        time(e.time),
        e.event.clone(),
        if e.success { "ok" } else { "FAIL" }.into(),
        dash(&e.user_id),
        dash(&e.auth_method),
        dash(&e.token_prefix),
        dash(&e.ip),
        format!("{} {}", dash(&e.method), dash(&e.path)),
        dash(&e.tool),
        dash(&e.reason),
    ]
}

/// How long a row id is watched for rows stored below it. With PostgreSQL,
/// ids are handed out when a batch is inserted but become visible when its
/// transaction commits, so a replica's batch can appear after a higher id
/// was already printed; rows committed within this lag are still found.
const FOLLOW_LAG: std::time::Duration = std::time::Duration::from_secs(5);

/// Most rows read per poll; a longer backlog is read over several polls.
const FOLLOW_BATCH: i64 = 10_000;

/// `memgate audit --follow`: prints the window's events oldest first (at
/// most `--limit`, the newest ones), then every new event as it is stored,
/// polling every `poll`, until writing fails (a closed pipe ends it quietly).
/// Text lines have the table's columns, two spaces apart; `--json` writes
/// one object per line (NDJSON).
pub async fn follow(
    store: &dyn Store,
    args: AuditArgs,
    out: &mut (dyn std::io::Write + Send),
    poll: std::time::Duration,
) -> anyhow::Result<()> {
    follow_in_batches(store, args, out, poll, FOLLOW_BATCH).await
}

/// [`follow`], reading at most `batch` rows per query.
async fn follow_in_batches(
    store: &dyn Store,
    args: AuditArgs,
    out: &mut (dyn std::io::Write + Send),
    poll: std::time::Duration,
    batch: i64,
) -> anyhow::Result<()> {
    let mut write = |line: String| -> anyhow::Result<bool> {
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e.into()),
        }
    };
    let render = |e: &AuditEvent| {
        if args.json {
            event_json(e).to_string()
        } else {
            event_row(e).join("  ")
        }
    };
    // The cursor is read first: an event stored while the window is read is
    // then found by the first poll, and printed once (ids seen are kept).
    let mut cursor = store.last_audit_id().await?;
    let (since, _) = window(&args, Utc::now())?;
    let mut initial = store
        .audit_events(&AuditFilter {
            since,
            until: None,
            user_id: args.user_id.clone(),
            event: args.event.clone(),
            limit: i64::from(args.limit),
            newest_first: true,
        })
        .await?;
    initial.reverse();
    // At most --limit ids, kept for the whole run.
    let printed: std::collections::HashSet<String> =
        initial.iter().map(|e| e.event_id.clone()).collect();
    if !args.json && !write(COLUMNS.join("  "))? {
        return Ok(());
    }
    for e in &initial {
        if !write(render(e))? {
            return Ok(());
        }
    }
    // (when, cursor then): the cursor as it was FOLLOW_LAG ago is where each
    // poll starts reading, so late commits below the newest id are found.
    let mut history: std::collections::VecDeque<(std::time::Instant, i64)> =
        std::collections::VecDeque::new();
    let filter = AuditFilter {
        since,
        until: None,
        user_id: args.user_id.clone(),
        event: args.event.clone(),
        limit: batch,
        newest_first: false,
    };
    let mut seen_ids: std::collections::BTreeSet<i64> = std::collections::BTreeSet::new();
    loop {
        let now = std::time::Instant::now();
        history.push_back((now, cursor));
        while history
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) >= FOLLOW_LAG)
        {
            history.pop_front();
        }
        let mut from = history.front().map_or(cursor, |(_, c)| *c);
        seen_ids = seen_ids.split_off(&from);
        // A full batch is followed by the next one from where it ended, so
        // a backlog longer than a batch is read through, not read again.
        loop {
            let rows = store.audit_events_after(from, &filter).await?;
            for (id, e) in &rows {
                cursor = cursor.max(*id);
                if !seen_ids.insert(*id) || printed.contains(&e.event_id) {
                    continue;
                }
                if !write(render(e))? {
                    return Ok(());
                }
            }
            match rows.last() {
                Some((last, _)) if rows.len() as i64 >= batch => from = *last,
                _ => break,
            }
        }
        tokio::time::sleep(poll).await;
    }
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

    /// A `Write` the test reads while `follow` writes to it.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A backlog longer than one read is read through, each event once.
    #[tokio::test]
    async fn follow_reads_a_backlog_longer_than_a_batch() {
        use clap::Parser;
        let (_dir, store) = crate::store::temporary(true).await;
        let super::super::Cli {
            command: super::super::Command::Audit(args),
            ..
        } = super::super::Cli::parse_from(["memgate", "audit", "--follow", "--json"])
        else {
            unreachable!("parsed as audit")
        };
        let out = Shared::default();
        let follower = {
            let (store, mut out) = (store.clone(), out.clone());
            tokio::spawn(async move {
                follow_in_batches(
                    store.as_ref(),
                    args,
                    &mut out,
                    std::time::Duration::from_millis(20),
                    4,
                )
                .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let events: Vec<AuditEvent> = (0..25)
            .map(|i| {
                let mut e = AuditEvent::new(crate::audit::kind::AUTH_FAILURE, false);
                e.user_id = Some(format!("u{i}"));
                e
            })
            .collect();
        store.insert_audit(&events).await.unwrap();
        let lines = || {
            String::from_utf8(out.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        for _ in 0..200 {
            if lines().len() >= 25 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        follower.abort();
        let users: Vec<String> = lines()
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["user_id"].to_string())
            .collect();
        let wanted: Vec<String> = (0..25).map(|i| format!("\"u{i}\"")).collect();
        assert_eq!(users, wanted);
    }

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
