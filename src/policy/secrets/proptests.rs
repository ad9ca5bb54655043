//! Properties of redaction over generated bodies: a body without secrets is
//! left alone (not re-serialized), and a redacted body keeps its shape.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;

/// Text that no rule can match: words, numbers, hex digests, paths, UUIDs.
fn ordinary_text() -> BoxedStrategy<String> {
    let piece = prop_oneof![
        "[a-z]{1,10}",
        "[0-9]{1,6}",
        "[0-9a-f]{40}",
        "/[a-z]{1,8}/[a-z_]{1,8}\\.rs",
        "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
        "https://[a-z]{3,8}\\.example\\.com/[a-z]{1,8}",
        Just("é\n\"".to_owned()),
    ];
    prop::collection::vec(piece, 0..8)
        .prop_map(|pieces| pieces.join(" "))
        .boxed()
}

/// A synthetic secret of a shipped format.
fn secret() -> BoxedStrategy<String> {
    prop_oneof![
        "[A-Za-z0-9]{36}".prop_map(|s| ["gh", "s_", &s].concat()),
        "[A-Z2-7]{16}".prop_map(|s| ["AK", "IA", &s].concat()),
        "[0-9A-Za-z_-]{35}".prop_map(|s| ["AI", "za", &s].concat()),
        "[0-9A-Za-z]{24,40}".prop_map(|s| ["sk", "_live_", &s].concat()),
    ]
    .boxed()
}

fn json_with<S: Strategy<Value = String> + Clone + 'static>(
    text: S,
) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        text.prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn add_body(contents: Vec<String>, metadata: Value, pretty: bool) -> Vec<u8> {
    let messages: Vec<Value> = contents
        .into_iter()
        .map(|content| json!({"role": "user", "content": content}))
        .collect();
    let body = json!({"messages": messages, "metadata": metadata, "user_id": "u"});
    if pretty {
        serde_json::to_vec_pretty(&body).unwrap()
    } else {
        serde_json::to_vec(&body).unwrap()
    }
}

fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(members) => members.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

fn guard(mode: GuardMode) -> SecretGuard {
    SecretGuard::from_config(&SecretGuardConfig {
        mode,
        ..SecretGuardConfig::default()
    })
    .unwrap()
}

proptest! {
    /// Clean means the caller forwards the bytes as sent.
    #[test]
    fn a_body_without_secrets_is_left_as_sent(
        contents in prop::collection::vec(ordinary_text(), 0..4),
        metadata in json_with(ordinary_text()),
        pretty in any::<bool>(),
    ) {
        let body = add_body(contents, metadata, pretty);
        for mode in [GuardMode::Redact, GuardMode::Refuse] {
            prop_assert_eq!(guard(mode).scan_mem0_add(&body).unwrap(), GuardOutcome::Clean);
            prop_assert_eq!(guard(mode).scan_mem0_update(&body).unwrap(), GuardOutcome::Clean);
        }
    }

    /// Secrets spread through contents and metadata: the redacted body is
    /// JSON of the same shape, holds none of them, and refuse mode refuses.
    #[test]
    fn a_redacted_body_keeps_its_shape_and_loses_every_secret(
        contents in prop::collection::vec((ordinary_text(), prop::option::of(secret()), ordinary_text()), 1..4),
        metadata in json_with(prop_oneof![ordinary_text(), secret()].boxed()),
        planted in secret(),
    ) {
        let mut secrets = vec![planted.clone()];
        let contents: Vec<String> = contents
            .into_iter()
            .map(|(before, secret, after)| match secret {
                Some(secret) => {
                    secrets.push(secret.clone());
                    format!("{before} {secret} {after}")
                }
                None => format!("{before} {after}"),
            })
            .collect();
        let mut metadata_strings = Vec::new();
        strings(&metadata, &mut metadata_strings);
        secrets.extend(metadata_strings.into_iter().filter(|s| guard(GuardMode::Redact).redact_text(s).is_some()));
        let mut metadata_object = Map::new();
        metadata_object.insert("planted".into(), json!([planted]));
        metadata_object.insert("tree".into(), metadata);
        let body = add_body(contents, Value::Object(metadata_object), false);
        let sent: Value = serde_json::from_slice(&body).unwrap();

        let GuardOutcome::Redacted { body: out, findings } = guard(GuardMode::Redact).scan_mem0_add(&body).unwrap() else {
            return Err(TestCaseError::fail("not redacted"));
        };
        let out: Value = serde_json::from_slice(&out).unwrap();
        prop_assert!(same_shape(&sent, &out));
        prop_assert!(findings.len() >= secrets.len());
        let mut left = Vec::new();
        strings(&out, &mut left);
        for secret in &secrets {
            prop_assert!(left.iter().all(|s| !s.contains(secret.as_str())));
        }
        let refused = guard(GuardMode::Refuse).scan_mem0_add(&body).unwrap();
        let is_refused = matches!(refused, GuardOutcome::Refused { .. });
        prop_assert!(is_refused);
    }
}

/// Pieces that make or almost make a secret of every shipped format, with
/// the characters that the whole-body prefilter treats specially (escapes,
/// `%XX`, characters that fold onto ASCII letters).
fn near_secret_text() -> BoxedStrategy<String> {
    let piece = prop_oneof![
        "[a-z]{1,8}",
        "[A-Za-z0-9+/]{16,44}",
        "[A-Za-z0-9_-]{20,60}",
        prop::sample::select(vec![
            "password",
            "Password",
            "DB_PASSWORD",
            "api_key",
            "Token",
            "secret",
            "credential",
            "auth",
            "cookie",
            "Bearer",
            "bearer ",
            "=",
            ": ",
            ":=",
            "\"",
            "'",
            "\\",
            "\n",
            "\t",
            "://",
            "https://",
            "user:",
            "@",
            "db.example",
            "sk-",
            "sk-ant-api03-",
            "sk_live_",
            "ghp_",
            "github_pat_",
            "glpat-",
            "xoxb-",
            "xapp-1-",
            "AKIA",
            "ASIA",
            "AIza",
            "eyJ",
            ".eyJ",
            "mcp_",
            "hooks.slack.com/services/",
            "T3BlbkFJ",
            "%41",
            "%3A",
            "%40",
            "\u{17F}ecret",
            "\u{212A}ey",
            "-----BEGIN RSA PRIVATE KEY-----",
            "-----END RSA PRIVATE KEY-----",
            "aws_secret_access_key",
            "é",
        ])
        .prop_map(str::to_owned),
    ];
    prop::collection::vec(piece, 0..10)
        .prop_map(|pieces| pieces.concat())
        .boxed()
}

/// `value` as JSON text, with every `every`-th character of each string
/// written as a `\uXXXX` escape (0: none), as a client may send it.
fn escaped_json(value: &Value, every: usize) -> String {
    fn write(value: &Value, every: usize, out: &mut String) {
        match value {
            Value::String(text) => {
                out.push('"');
                for (at, c) in text.chars().enumerate() {
                    if every > 0 && at % every == 0 {
                        let mut units = [0u16; 2];
                        for unit in c.encode_utf16(&mut units) {
                            out.push_str(&format!("\\u{unit:04x}"));
                        }
                    } else {
                        let one = serde_json::to_string(&c.to_string()).unwrap();
                        out.push_str(&one[1..one.len() - 1]);
                    }
                }
                out.push('"');
            }
            Value::Array(items) => {
                out.push('[');
                for (at, item) in items.iter().enumerate() {
                    if at > 0 {
                        out.push(',');
                    }
                    write(item, every, out);
                }
                out.push(']');
            }
            Value::Object(members) => {
                out.push('{');
                for (at, (key, member)) in members.iter().enumerate() {
                    if at > 0 {
                        out.push(',');
                    }
                    write(&Value::String(key.clone()), every, out);
                    out.push(':');
                    write(member, every, out);
                }
                out.push('}');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, every, &mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The whole-body prefilter clears only bodies in which the full scan
    /// finds nothing, in write bodies and anywhere in a response.
    #[test]
    fn a_body_the_prefilter_clears_holds_nothing_to_find(
        contents in prop::collection::vec(near_secret_text(), 0..3),
        metadata in json_with(near_secret_text()),
        key in prop::sample::select(vec!["note", "password", "apiKey", "x_auth", "Cookie", "tokens"]),
        value in near_secret_text(),
        every in prop::sample::select(vec![0usize, 0, 1, 3]),
    ) {
        let messages: Vec<Value> = contents
            .into_iter()
            .map(|content| json!({"role": "user", "content": content}))
            .collect();
        let mut metadata_object = Map::new();
        metadata_object.insert(key.to_owned(), Value::String(value));
        metadata_object.insert("tree".into(), metadata);
        let body = json!({"messages": messages, "metadata": metadata_object, "text": "t"});
        let body = escaped_json(&body, every);
        let guard = guard(GuardMode::Redact);
        if guard.certainly_clean(body.as_bytes()) {
            for scope in [Scope::Mem0Add, Scope::Mem0Update] {
                prop_assert_eq!(guard.scan_parsed(body.as_bytes(), scope).unwrap(), GuardOutcome::Clean);
            }
            prop_assert!(guard.redact_response_parsed(body.as_bytes()).is_none());
        }
    }
}
