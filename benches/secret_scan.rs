//! Cost of the secret guard on a write (`src/policy/secrets`): a 1 KiB
//! `POST /memories` body of ordinary prose and code, without a secret (the
//! common case: nothing changes) and with one (redacted, body re-serialized),
//! from the bytes as received; the same clean body already parsed (the
//! guard's share when the mem0 policy hands it over); 1 KiB of text; and
//! bodies the whole-body prefilter clears without parsing (most ordinary
//! memories, and the load scenario's body). Target: at most 5 µs per KiB.
//!
//! Run: `cargo bench --bench secret_scan -- --quick`. Results: bench/RESULTS.md.

#[path = "../tests/secrets/corpus.rs"]
mod corpus;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};

use memgate::policy::secrets::{GuardOutcome, SecretGuard, SecretGuardConfig, ValueOutcome};

/// Ordinary memory text: the hand-written corpus, from its start.
fn prose(len: usize) -> String {
    let mut text = String::new();
    for line in include_str!("../tests/secrets/ordinary_memories.txt")
        .lines()
        .cycle()
    {
        if text.len() >= len {
            break;
        }
        text.push_str(line);
        text.push(' ');
    }
    text.truncate(len);
    text
}

/// Ordinary memories the prefilter clears on their own (97 % of the
/// generated corpus), joined.
fn cleared_prose(guard: &SecretGuard, len: usize) -> String {
    let mut text = String::new();
    for memory in corpus::ordinary_memories(7, 400) {
        if text.len() >= len {
            break;
        }
        let alone = serde_json::to_vec(&json!({"messages": [{"content": memory}]})).unwrap();
        if guard.certainly_clean(&alone) {
            text.push_str(&memory);
            text.push(' ');
        }
    }
    text.truncate(len);
    text
}

/// A `POST /memories` body of exactly 1024 bytes of `prose`; `secret` sits
/// in the middle of the user's message.
fn body_1k(prose: impl Fn(usize) -> String, secret: Option<&str>) -> Vec<u8> {
    let make = |pad: usize| {
        let text = prose(pad);
        let content = match secret {
            Some(secret) => {
                let (a, b) = text.split_at(text.len() / 2);
                format!("{a} {secret} {b}")
            }
            None => text,
        };
        json!({
            "messages": [
                {"role": "user", "content": content},
                {"role": "assistant", "content": "Noted: I will keep that in mind for the deploy."}
            ],
            "user_id": "bench",
            "metadata": {"source": "claude-code", "project": "memgate", "category": "preferences"},
            "infer": true
        })
        .to_string()
    };
    let base = make(0).len();
    let body = make(1024 - base);
    assert_eq!(body.len(), 1024);
    body.into_bytes()
}

fn bench_secret_scan(c: &mut Criterion) {
    let guard = SecretGuard::from_config(&SecretGuardConfig::default()).unwrap();
    let mut rng = corpus::Rng::new(1);
    let secret = ["gh", "p_", &rng.string(corpus::ALNUM, 36)].concat();
    let clean = body_1k(prose, None);
    let dirty = body_1k(prose, Some(&secret));
    let cleared = body_1k(|len| cleared_prose(&guard, len), None);
    assert!(guard.certainly_clean(&cleared));
    // The load scenario's body (bench/bench.py): one letter repeated.
    let padded = body_1k(|len| "x".repeat(len), None);
    assert!(guard.certainly_clean(&padded));
    eprintln!(
        "post_memories_1k_clean is cleared by the prefilter: {}",
        guard.certainly_clean(&clean)
    );
    assert_eq!(guard.scan_mem0_add(&clean).unwrap(), GuardOutcome::Clean);
    assert!(matches!(
        guard.scan_mem0_add(&dirty).unwrap(),
        GuardOutcome::Redacted { .. }
    ));
    let Value::Object(mut parsed) = serde_json::from_slice(&clean).unwrap() else {
        unreachable!()
    };
    let text = prose(1024);

    let mut group = c.benchmark_group("secret_scan");
    group.bench_function("post_memories_1k_clean", |b| {
        b.iter(|| guard.scan_mem0_add(black_box(&clean)))
    });
    group.bench_function("post_memories_1k_one_secret", |b| {
        b.iter(|| guard.scan_mem0_add(black_box(&dirty)))
    });
    group.bench_function("post_memories_1k_clean_parsed", |b| {
        b.iter(|| {
            let outcome = guard.scan_mem0_add_object(black_box(&mut parsed));
            debug_assert_eq!(outcome, ValueOutcome::Clean);
            outcome
        })
    });
    group.bench_function("post_memories_1k_cleared_by_prefilter", |b| {
        b.iter(|| guard.scan_mem0_add(black_box(&cleared)))
    });
    group.bench_function("post_memories_1k_load_body", |b| {
        b.iter(|| guard.scan_mem0_add(black_box(&padded)))
    });
    group.bench_function("text_1k_clean", |b| {
        b.iter(|| guard.redact_text(black_box(&text)))
    });
    group.finish();
}

criterion_group!(benches, bench_secret_scan);
criterion_main!(benches);
