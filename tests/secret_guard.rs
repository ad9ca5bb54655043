//! The secret guard through its public API, driven by corpora: synthetic
//! secrets of every provider's format in every place a write carries text
//! (tests/secrets/corpus.rs), and ordinary memories that must pass unaltered.

#[path = "secrets/corpus.rs"]
mod corpus;

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use corpus::{Rng, Secret};
use memgate::policy::mcp::default_secret_scan;
use memgate::policy::secrets::{
    Finding, GuardMode, GuardOutcome, SecretGuard, SecretGuardConfig, ValueOutcome,
};

fn guard(mode: GuardMode) -> SecretGuard {
    SecretGuard::from_config(&SecretGuardConfig {
        mode,
        ..SecretGuardConfig::default()
    })
    .unwrap()
}

/// Where a write carries text to mem0.
#[derive(Clone, Copy, Debug)]
enum Place {
    MessageContent,
    ContentPart,
    Metadata,
    UpdateText,
    UpdateData,
    ToolText,
    ToolMetadata,
}

const PLACES: [Place; 7] = [
    Place::MessageContent,
    Place::ContentPart,
    Place::Metadata,
    Place::UpdateText,
    Place::UpdateData,
    Place::ToolText,
    Place::ToolMetadata,
];

/// What the guard made of `text` written at `place`: the outcome, and the
/// strings of what would be forwarded (for a refusal, none).
fn run(
    guard: &SecretGuard,
    place: Place,
    text: &str,
) -> (Vec<Finding>, Option<Finding>, Vec<String>) {
    let body = match place {
        Place::MessageContent => {
            json!({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": text}], "user_id": "alice"})
        }
        Place::ContentPart => {
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]})
        }
        Place::Metadata => {
            json!({"messages": [{"role": "user", "content": "see metadata"}], "metadata": {"source": "cli", "notes": {"deploy": [text]}}})
        }
        Place::UpdateText => json!({"text": text, "metadata": {"k": 1}}),
        Place::UpdateData => json!({"data": text}),
        Place::ToolText | Place::ToolMetadata => {
            let (tool, arguments) = if let Place::ToolText = place {
                ("add_coding_preference", json!({"text": text}))
            } else {
                (
                    "add_memory",
                    json!({"text": "note", "metadata": {"origin": {"raw": text}}}),
                )
            };
            let Value::Object(mut arguments) = arguments else {
                unreachable!()
            };
            return match guard.scan_tool_arguments(default_secret_scan(tool), &mut arguments) {
                ValueOutcome::Clean => (Vec::new(), None, strings(&Value::Object(arguments))),
                ValueOutcome::Redacted { findings } => {
                    (findings, None, strings(&Value::Object(arguments)))
                }
                ValueOutcome::Refused { finding } => (Vec::new(), Some(finding), Vec::new()),
            };
        }
    };
    let bytes = serde_json::to_vec(&body).unwrap();
    let outcome = match place {
        Place::UpdateText | Place::UpdateData => guard.scan_mem0_update(&bytes),
        _ => guard.scan_mem0_add(&bytes),
    }
    .unwrap();
    match outcome {
        GuardOutcome::Clean => (Vec::new(), None, strings(&body)),
        GuardOutcome::Redacted {
            body: out,
            findings,
        } => {
            let out: Value = serde_json::from_slice(&out).expect("a redacted body is JSON");
            (findings, None, strings(&out))
        }
        GuardOutcome::Refused { finding } => (Vec::new(), Some(finding), Vec::new()),
    }
}

fn strings(value: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::String(s) => out.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            Value::Object(members) => members.iter().for_each(|(k, v)| {
                out.push(k.clone());
                walk(v, out)
            }),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut out);
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) if hex.iter().all(u8::is_ascii_hexdigit) => {
                out.push(u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap());
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The parts of a secret that must not survive: the whole value and, for a
/// PEM block, each line of key material.
fn pieces(secret: &Secret) -> Vec<String> {
    let mut pieces = vec![secret.value.clone()];
    if secret.rule == "private_key" {
        pieces.extend(
            secret
                .value
                .lines()
                .filter(|line| !line.starts_with("-----"))
                .map(str::to_owned),
        );
    }
    pieces
}

fn leaks(forwarded: &[String], secret: &Secret) -> bool {
    forwarded.iter().any(|s| {
        let decoded = percent_decode(s);
        pieces(secret)
            .iter()
            .any(|piece| s.contains(piece.as_str()) || decoded.contains(piece.as_str()))
    })
}

fn corpus_secrets() -> Vec<Secret> {
    let mut rng = Rng::new(0x5EC2E7);
    (0..3).flat_map(|_| corpus::secrets(&mut rng)).collect()
}

#[test]
fn every_secret_in_every_context_and_place_is_redacted() {
    let guard = guard(GuardMode::Redact);
    let mut cases = 0;
    let mut missed = Vec::new();
    for secret in corpus_secrets() {
        for (context, text) in corpus::contexts(&secret) {
            for place in PLACES {
                cases += 1;
                let (findings, refused, forwarded) = run(&guard, place, &text);
                assert!(refused.is_none());
                if findings.is_empty() || leaks(&forwarded, &secret) {
                    missed.push(format!("{} in {context} at {place:?}", secret.rule));
                    continue;
                }
                assert!(
                    findings.iter().any(|f| f.rule == secret.rule),
                    "{} in {context} at {place:?}: found as {findings:?}",
                    secret.rule
                );
                for finding in &findings {
                    assert!(!leaks(&[finding.to_string()], &secret));
                }
            }
        }
    }
    assert!(
        missed.is_empty(),
        "{} of {cases} missed or leaked: {missed:#?}",
        missed.len()
    );
    assert!(cases > 1000, "{cases}");
}

#[test]
fn every_secret_in_every_context_and_place_is_refused() {
    let guard = guard(GuardMode::Refuse);
    for secret in corpus_secrets() {
        for (context, text) in corpus::contexts(&secret) {
            for place in PLACES {
                let (_, refused, _) = run(&guard, place, &text);
                let Some(finding) = refused else {
                    panic!("{} in {context} at {place:?} not refused", secret.rule);
                };
                let message = finding.to_string();
                assert!(message.contains("was refused"), "{message}");
                // Not even a part of the value is echoed.
                for piece in pieces(&secret) {
                    let chars: Vec<char> = piece.chars().collect();
                    for window in chars.windows(8.min(chars.len())) {
                        let part: String = window.iter().collect();
                        assert!(!message.contains(&part), "{message} echoes {part}");
                    }
                }
            }
        }
    }
}

#[test]
fn a_credential_named_metadata_member_counts_and_its_neighbours_do_not() {
    let guard = guard(GuardMode::Redact);
    let mut rng = Rng::new(7);
    let value = format!(
        "{}7{}",
        rng.string(corpus::ALNUM, 10),
        rng.string(corpus::ALNUM, 10)
    );
    for key in [
        "password",
        "secret",
        "token",
        "api_key",
        "apikey",
        "access_key",
        "private_key",
        "client_secret",
        "auth",
        "DB_PASSWORD",
        "stripeApiKey",
    ] {
        let body = json!({"messages": [{"role": "user", "content": "x"}], "metadata": {key: value, "title": "Deploy notes v2", "count": 3}});
        let bytes = serde_json::to_vec(&body).unwrap();
        let GuardOutcome::Redacted {
            body: out,
            findings,
        } = guard.scan_mem0_add(&bytes).unwrap()
        else {
            panic!("{key} not redacted");
        };
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["metadata"][key], "[REDACTED:credential_field]", "{key}");
        assert_eq!(out["metadata"]["title"], "Deploy notes v2");
        assert_eq!(findings.len(), 1);
        assert!(findings[0].path.starts_with("metadata"), "{key}");
    }
}

/// Ordinary memories: the generated ones (fixed seed) and the hand-written
/// ones in tests/secrets/ordinary_memories.txt.
fn ordinary_corpus() -> Vec<String> {
    let mut memories = corpus::ordinary_memories(0xC0FFEE, 2400);
    memories.extend(
        include_str!("secrets/ordinary_memories.txt")
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(str::to_owned),
    );
    memories
}

#[test]
fn ordinary_memories_are_left_alone() {
    let guard = guard(GuardMode::Redact);
    let memories = ordinary_corpus();
    let mut altered = Vec::new();
    let mut cleared = 0;
    for memory in &memories {
        let message = serde_json::to_vec(&json!({"messages": [{"role": "user", "content": memory}], "metadata": {"note": memory}})).unwrap();
        cleared += usize::from(guard.certainly_clean(&message));
        match guard.scan_mem0_add(&message).unwrap() {
            GuardOutcome::Clean => {}
            GuardOutcome::Redacted { findings, .. } => altered.push((memory.clone(), findings)),
            GuardOutcome::Refused { .. } => unreachable!("redact mode"),
        }
    }
    let rate = altered.len() as f64 / memories.len() as f64;
    eprintln!(
        "false positives: {} of {} ordinary memories altered ({:.3} %)",
        altered.len(),
        memories.len(),
        rate * 100.0
    );
    eprintln!(
        "cleared without parsing: {cleared} of {} ({:.1} %)",
        memories.len(),
        cleared as f64 * 100.0 / memories.len() as f64
    );
    for (memory, findings) in &altered {
        let rules: Vec<&str> = findings.iter().map(|f| f.rule.as_str()).collect();
        eprintln!(
            "  altered by {rules:?}: {}",
            memory.chars().take(160).collect::<String>()
        );
    }
    assert!(memories.len() >= 2000);
    assert!(
        rate < 0.005,
        "{} of {} altered",
        altered.len(),
        memories.len()
    );
}

/// Near-misses of every rule, and the shapes that make scanners slow: long
/// base64 runs, BEGIN lines without an END, `://a:` without `@`, escapes.
fn adversarial(len: usize) -> String {
    let unit = [
        "AKIA",
        "ABCDEFGHIJKLMNO ",
        "gh",
        "p_abcdefghijklmnopqrstuvwxyz012345678 ",
        "github_",
        "pat_abc ",
        "glpat-short ",
        "xo",
        "xb-123 ",
        "sk_",
        "live_abc ",
        "sk-",
        "ant-api03-x ",
        "sk-proj-",
        "T3Blbk",
        "FJ ",
        "AI",
        "za012345678 ",
        "eyJhbGciOi.eyJzdWIi. ",
        "-----BEGIN RSA PRIVATE KEY- ",
        "://a:",
        "://a:b",
        "://:",
        "mcp_",
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF ",
        "password = ",
        "token: ",
        "api_key=short ",
        "Bearer ",
        "%4",
        "%41%4",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        "password=aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        " secret_",
        "key_",
        "token_",
        "token=token=token=token=token=token=",
        "AKIAAKIAAKIAAKIA",
        "Bearer Bearer Bearer ",
        "-----BEGIN PRIVATE KEY-----",
        "\\\"",
        "user:pass@",
    ]
    .concat();
    let mut text = String::with_capacity(len + unit.len());
    while text.len() < len {
        text.push_str(&unit);
    }
    text.truncate(len);
    text
}

fn best_of(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap()
}

#[test]
fn scanning_time_grows_linearly_with_the_body() {
    let guard = guard(GuardMode::Redact);
    let body = |len: usize| {
        let text = adversarial(len);
        serde_json::to_vec(&json!({"messages": [{"role": "user", "content": text}], "metadata": {"note": adversarial(len / 4)}})).unwrap()
    };
    let (small, large) = (body(64 << 10), body(1 << 20));
    let scan = |bytes: &[u8]| {
        let _ = std::hint::black_box(guard.scan_mem0_add(bytes).unwrap());
    };
    scan(&small);
    let small_time = best_of(3, || scan(&small));
    let large_time = best_of(3, || scan(&large));
    let ratio = large_time.as_secs_f64() / small_time.as_secs_f64();
    eprintln!("64 KiB: {small_time:?}, 1 MiB: {large_time:?}, ratio {ratio:.1} (linear: 16)");
    assert!(
        ratio < 40.0,
        "ratio {ratio:.1}: 64 KiB {small_time:?}, 1 MiB {large_time:?}"
    );
}

#[test]
fn tool_arguments_not_listed_are_forwarded_as_sent() {
    let guard = guard(GuardMode::Refuse);
    let mut rng = Rng::new(3);
    let secret = ["gh", "p_", &rng.string(corpus::ALNUM, 36)].concat();
    let mut arguments = Map::new();
    arguments.insert("query".into(), json!(secret));
    assert_eq!(
        guard.scan_tool_arguments(default_secret_scan("search_memories"), &mut arguments),
        ValueOutcome::Clean
    );
    assert_eq!(arguments["query"], secret);
}
