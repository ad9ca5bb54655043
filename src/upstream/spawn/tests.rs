use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::*;

fn vars() -> Vars<'static> {
    Vars {
        scope: "alice",
        user: "Bob Smith",
        port: 4100,
    }
}

#[test]
fn env_values_get_the_scope_itself_in_one_pass() {
    let vars = Vars {
        scope: "project_api_0123456789ab",
        user: "Bob {port} {scope}",
        port: 4100,
    };
    assert_eq!(
        fill_env("{scope}|{user}|{port}", &vars),
        "project_api_0123456789ab|Bob {port} {scope}|4100"
    );
    assert_eq!(fill_env("plain é", &vars), "plain é");
    assert_ne!(fill("{scope}", &vars), fill_env("{scope}", &vars));
}

#[test]
fn templates_take_labels_and_the_port() {
    assert_eq!(
        fill("--user={scope} --port {port} {user}", &vars()),
        format!("--user=alice --port 4100 {}", host_label("Bob Smith"))
    );
    let sneaky = Vars {
        scope: "{port}/../x",
        user: "u",
        port: 1,
    };
    let filled = fill("/srv/{scope}", &sneaky);
    assert!(!filled.contains(".."), "{filled}");
    assert!(filled.starts_with("/srv/x-"), "{filled}");
}

#[test]
fn the_child_environment_holds_only_what_is_named() {
    let outside: BTreeMap<&str, &str> = [
        ("PATH", "/bin"),
        ("HOME", "/root"),
        ("TZ", "UTC"),
        ("SECRET", "s3cr3t"),
        ("MEM0_API_KEY", "k"),
    ]
    .into();
    let env: BTreeMap<String, String> = [
        ("MEM0_USER".to_string(), "{scope}".to_string()),
        ("PORT".to_string(), "{port}".to_string()),
        ("TZ".to_string(), "Europe/Paris".to_string()),
    ]
    .into();
    let got = child_env(
        &["MEM0_API_KEY".into(), "ABSENT".into()],
        &env,
        &vars(),
        |n| outside.get(n).map(|v| v.to_string()),
    );
    let want: BTreeMap<String, String> = [
        ("PATH", "/bin"),
        ("HOME", "/root"),
        ("TZ", "Europe/Paris"),
        ("MEM0_API_KEY", "k"),
        ("MEM0_USER", "alice"),
        ("PORT", "4100"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn failed_starts_wait_twice_as_long_each_time_up_to_a_minute() {
    let now = Instant::now();
    let mut backoff = None;
    let mut delays = Vec::new();
    for _ in 0..9 {
        let next = Backoff::after(backoff, now);
        delays.push(next.delay.as_secs());
        backoff = Some(next);
    }
    assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    let one = Backoff::after(None, now);
    assert_eq!(one.remaining_secs(now), Some(1));
    assert_eq!(
        one.remaining_secs(now + Duration::from_millis(200)),
        Some(1)
    );
    assert_eq!(one.remaining_secs(now + Duration::from_secs(1)), None);
    let long = Backoff::after(Some(one), now);
    assert_eq!(
        long.remaining_secs(now + Duration::from_millis(500)),
        Some(2)
    );
}

fn usage(busy: usize, last_used: u64, running: bool) -> Usage {
    Usage {
        busy,
        last_used,
        running,
    }
}

#[test]
fn the_least_recently_used_idle_child_makes_room() {
    let children = [
        ("busy-old", usage(1, 10, true)),
        ("idle-mid", usage(0, 50, true)),
        ("starting", usage(0, 5, false)),
        ("idle-new", usage(0, 90, true)),
    ];
    assert_eq!(least_recently_used(children.into_iter()), Some("idle-mid"));
    let all_busy = [("a", usage(1, 1, true)), ("b", usage(2, 2, true))];
    assert_eq!(least_recently_used(all_busy.into_iter()), None);
    assert_eq!(
        idle(children.into_iter(), 100, 40),
        vec!["idle-mid"],
        "only unused children past the idle time"
    );
}
