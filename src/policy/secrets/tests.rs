//! The guard's behaviour on hand-made inputs; the provider corpora and the
//! false-positive corpus are in tests/secret_guard.rs.

use serde_json::{Value, json};

use super::*;

/// Synthetic secrets, assembled at run time so that no credential-shaped
/// literal sits in the source.
fn github() -> String {
    ["gh", "p_", "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7c"].concat()
}

fn guard(mode: GuardMode) -> SecretGuard {
    SecretGuard::from_config(&SecretGuardConfig {
        mode,
        ..SecretGuardConfig::default()
    })
    .unwrap()
}

fn add_body(content: &str, metadata: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "messages": [{"role": "user", "content": content}],
        "user_id": "alice",
        "metadata": metadata,
    }))
    .unwrap()
}

fn redacted(outcome: GuardOutcome) -> (Value, Vec<Finding>) {
    match outcome {
        GuardOutcome::Redacted { body, findings } => {
            (serde_json::from_slice(&body).unwrap(), findings)
        }
        other => panic!("expected a redaction, got {other:?}"),
    }
}

#[test]
fn every_shipped_rule_compiles_and_is_named_for_config() {
    let guard = guard(GuardMode::Redact);
    let names: Vec<&str> = shipped_names().collect();
    assert_eq!(guard.rule_names(), names);
    for name in names {
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{name}"
        );
    }
}

#[test]
fn a_secret_in_a_message_is_replaced_and_the_rest_kept() {
    let body = add_body(
        &format!("my token is {} keep it", github()),
        json!({"k": 1}),
    );
    let (value, findings) = redacted(guard(GuardMode::Redact).scan_mem0_add(&body).unwrap());
    assert_eq!(
        value["messages"][0]["content"],
        "my token is [REDACTED:github_token] keep it"
    );
    assert_eq!(value["user_id"], "alice");
    assert_eq!(value["metadata"], json!({"k": 1}));
    assert_eq!(
        findings,
        [Finding {
            rule: "github_token".into(),
            path: "messages[0].content".into(),
            action: Action::Redacted,
        }]
    );
}

#[test]
fn refusal_names_rule_and_path_but_never_the_value() {
    let body = add_body("nothing here", json!({"notes": {"deploy": github()}}));
    let outcome = guard(GuardMode::Refuse).scan_mem0_add(&body).unwrap();
    let GuardOutcome::Refused { finding } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(finding.path, "metadata.notes.deploy");
    let text = finding.to_string();
    assert_eq!(
        text,
        "secret guard: a value matching rule \"github_token\" at metadata.notes.deploy was refused"
    );
    assert!(!text.contains(&github()[4..12]));
}

#[test]
fn an_escaped_pem_block_is_one_secret() {
    let pem = [
        "-----BEGIN ",
        "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx1y2\nQ3p4r5s6t7u8v9w0==\n-----END ",
        "RSA PRIVATE KEY-----",
    ]
    .concat();
    let body = add_body(&format!("key:\n{pem}\nthanks"), json!({}));
    assert!(
        String::from_utf8_lossy(&body).contains("\\n"),
        "sent escaped"
    );
    let (value, findings) = redacted(guard(GuardMode::Redact).scan_mem0_add(&body).unwrap());
    assert_eq!(
        value["messages"][0]["content"],
        "key:\n[REDACTED:private_key]\nthanks"
    );
    assert_eq!(findings.len(), 1);
    // Cut short, the rest of the text still goes.
    let cut = &pem[..60];
    let (value, _) = redacted(
        guard(GuardMode::Redact)
            .scan_mem0_add(&add_body(&format!("a {cut}"), json!({})))
            .unwrap(),
    );
    assert_eq!(value["messages"][0]["content"], "a [REDACTED:private_key]");
}

#[test]
fn a_percent_encoded_secret_is_redacted_where_it_was_sent() {
    let encoded: String = github().bytes().map(|b| format!("%{b:02X}")).collect();
    let text = format!("https://x.example/cb?t={encoded}&u=1");
    let (value, findings) = redacted(
        guard(GuardMode::Redact)
            .scan_mem0_update(&serde_json::to_vec(&json!({"text": text})).unwrap())
            .unwrap(),
    );
    assert_eq!(
        value["text"],
        "https://x.example/cb?t=[REDACTED:github_token]&u=1"
    );
    assert_eq!(findings[0].path, "text");
}

#[test]
fn url_passwords_lose_only_the_password() {
    let password = ["Xk", "9pL2mQ7rT4"].concat();
    let text = format!("db is postgres://app:{password}@db.internal:5432/app");
    let (value, _) = redacted(
        guard(GuardMode::Redact)
            .scan_mem0_update(&serde_json::to_vec(&json!({"data": text})).unwrap())
            .unwrap(),
    );
    assert_eq!(
        value["data"],
        "db is postgres://app:[REDACTED:url_password]@db.internal:5432/app"
    );
    let (text, rules) = guard(GuardMode::Redact)
        .redact_text(&format!("a://u:{password}@b://v:{password}@c"))
        .unwrap();
    assert_eq!(
        text,
        "a://u:[REDACTED:url_password]@b://v:[REDACTED:url_password]@c"
    );
    assert_eq!(rules.len(), 2);
    // Scanned again, the redacted text holds nothing.
    assert!(
        guard(GuardMode::Redact)
            .redact_text(value["data"].as_str().unwrap())
            .is_none()
    );
    // Placeholders are no password.
    for text in [
        "postgres://app:${DB_PASSWORD}@db/app",
        "redis://user:<password>@cache:6379",
        "https://example.com/a:b@c",
        "ssh://git@github.com/org/repo.git",
    ] {
        let body = serde_json::to_vec(&json!({"text": text})).unwrap();
        assert_eq!(
            guard(GuardMode::Redact).scan_mem0_update(&body).unwrap(),
            GuardOutcome::Clean,
            "{text}"
        );
    }
}

#[test]
fn credential_named_members_count_when_their_value_looks_generated() {
    let value = ["q8Z", "r2Lm5Xw9Tp"].concat();
    let body = add_body(
        "hi",
        json!({"client_secret": value, "password_hint": "first pet", "max_tokens": "2048", "token_url": "https://auth.example.com/token"}),
    );
    let (out, findings) = redacted(guard(GuardMode::Redact).scan_mem0_add(&body).unwrap());
    assert_eq!(
        out["metadata"]["client_secret"],
        "[REDACTED:credential_field]"
    );
    assert_eq!(out["metadata"]["password_hint"], "first pet");
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].path, "metadata.client_secret");
    // What is left beside an earlier redaction is judged alone.
    let pem_start = ["-----BEGIN ", "PRIVATE KEY-----"].concat();
    let mixed = add_body(
        "x",
        json!({"password": format!("mW{pem_start}abc"), "token": format!("{value}[REDACTED:jwt]")}),
    );
    let (out_mixed, _) = redacted(guard(GuardMode::Redact).scan_mem0_add(&mixed).unwrap());
    assert_eq!(
        out_mixed["metadata"]["password"],
        "mW[REDACTED:private_key]"
    );
    assert_eq!(
        out_mixed["metadata"]["token"],
        "[REDACTED:credential_field]"
    );
    let again = serde_json::to_vec(&out_mixed).unwrap();
    assert_eq!(
        guard(GuardMode::Redact).scan_mem0_add(&again).unwrap(),
        GuardOutcome::Clean
    );
    let again = serde_json::to_vec(&out).unwrap();
    assert_eq!(
        guard(GuardMode::Redact).scan_mem0_add(&again).unwrap(),
        GuardOutcome::Clean
    );
}

#[test]
fn only_the_text_of_a_write_is_scanned() {
    // user_id, run_id and the like are not text bound for the LLM; the
    // mem0 policy checks them.
    let body = serde_json::to_vec(&json!({
        "messages": [{"role": "user", "content": [{"type": "text", "text": github()}, {"type": "image_url", "image_url": {"url": github()}}]}],
        "run_id": github(),
    }))
    .unwrap();
    let (value, findings) = redacted(guard(GuardMode::Redact).scan_mem0_add(&body).unwrap());
    assert_eq!(
        value["messages"][0]["content"][0]["text"],
        "[REDACTED:github_token]"
    );
    assert_eq!(value["run_id"], github());
    assert_eq!(findings[0].path, "messages[0].content[0].text");
    let string = serde_json::to_vec(&json!({"messages": github()})).unwrap();
    let (value, _) = redacted(guard(GuardMode::Redact).scan_mem0_add(&string).unwrap());
    assert_eq!(value["messages"], "[REDACTED:github_token]");
}

#[test]
fn tool_arguments_are_scanned_by_name_and_at_any_depth() {
    let guard = guard(GuardMode::Redact);
    let mut arguments = json!({
        "text": format!("use {}", github()),
        "metadata": {"list": [1, {"x": github()}]},
        "other": github(),
    });
    let Value::Object(object) = &mut arguments else {
        unreachable!()
    };
    let outcome = guard.scan_tool_arguments(&["text", "metadata"], object);
    let ValueOutcome::Redacted { findings } = outcome else {
        panic!("{outcome:?}")
    };
    let paths: Vec<&str> = findings.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["arguments.metadata.list[1].x", "arguments.text"]);
    assert_eq!(arguments["other"], github());
    assert_eq!(arguments["text"], "use [REDACTED:github_token]");
    let Value::Object(object) = &mut arguments else {
        unreachable!()
    };
    assert_eq!(
        guard.scan_tool_arguments::<&str>(&[], object),
        ValueOutcome::Clean
    );
}

#[test]
fn a_key_that_is_itself_a_secret_is_left_out_of_the_path() {
    let mut metadata = serde_json::Map::new();
    metadata.insert(github(), json!({"note": github()}));
    metadata.insert("a b".into(), json!(github()));
    let body = add_body("x", Value::Object(metadata));
    let (_, findings) = redacted(guard(GuardMode::Redact).scan_mem0_add(&body).unwrap());
    let paths: Vec<&str> = findings.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["metadata[\"a b\"]", "metadata[…].note"]);
}

#[test]
fn off_scans_nothing_and_bad_json_that_may_hide_a_secret_is_an_error() {
    assert_eq!(
        guard(GuardMode::Off).scan_mem0_add(b"{not json").unwrap(),
        GuardOutcome::Clean
    );
    assert!(
        guard(GuardMode::Off)
            .redact_response(&add_body(&github(), json!({})))
            .is_none()
    );
    let secret = github();
    let broken = [
        format!("{{not json {secret}"),
        format!("{{\"a\":\"{secret}\",\"a\":2}}"),
        format!("{{\"a\":\"%67{}\",}}", &secret[1..]),
        format!("{{\"a\":\"\\x41 {secret}\"}}"),
    ];
    for body in broken.iter().map(String::as_bytes).chain([&b"\xff"[..]]) {
        assert!(guard(GuardMode::Redact).scan_mem0_add(body).is_err());
    }
    // Holding none of the literals any secret needs, it is clean without
    // being parsed: the policy that reads it next refuses its syntax.
    assert_eq!(
        guard(GuardMode::Redact)
            .scan_mem0_add(b"{not json")
            .unwrap(),
        GuardOutcome::Clean
    );
}

#[test]
fn responses_are_redacted_everywhere_whatever_the_mode() {
    let body = serde_json::to_vec(
        &json!({"results": [{"id": "m1", "memory": format!("token {}", github())}]}),
    )
    .unwrap();
    for mode in [GuardMode::Redact, GuardMode::Refuse] {
        let (out, findings) = guard(mode).redact_response(&body).unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["results"][0]["memory"], "token [REDACTED:github_token]");
        assert_eq!(findings[0].path, "results[0].memory");
        assert_eq!(findings[0].action, Action::Redacted);
    }
    assert!(
        guard(GuardMode::Redact)
            .redact_response(b"event: x")
            .is_none()
    );
    let (text, rules) = guard(GuardMode::Redact)
        .redact_text(&format!("a {} b", github()))
        .unwrap();
    assert_eq!(text, "a [REDACTED:github_token] b");
    assert_eq!(rules, ["github_token"]);
}

fn with_rules(rules: &[(&str, RuleConfig)]) -> Result<SecretGuard, GuardConfigError> {
    SecretGuard::from_config(&SecretGuardConfig {
        rules: rules
            .iter()
            .map(|(name, rule)| ((*name).to_owned(), rule.clone()))
            .collect(),
        ..SecretGuardConfig::default()
    })
}

fn rule(pattern: Option<&str>, allow: &[&str], enabled: bool) -> RuleConfig {
    RuleConfig {
        pattern: pattern.map(str::to_owned),
        allow: allow.iter().map(|a| (*a).to_owned()).collect(),
        enabled,
    }
}

#[test]
fn custom_rules_allow_lists_and_disabled_rules() {
    let guard = with_rules(&[
        (
            "internal_key",
            rule(
                Some(r"key=(?P<secret>ik_[a-z0-9]{8})"),
                &["^ik_00000000$"],
                true,
            ),
        ),
        ("github_token", rule(None, &["Ab3dEf"], true)),
        ("jwt", rule(None, &[], false)),
    ])
    .unwrap();
    assert!(guard.rule_names().contains(&"internal_key"));
    assert!(!guard.rule_names().contains(&"jwt"));
    let (text, rules) = guard
        .redact_text("key=ik_a1b2c3d4 key=ik_00000000")
        .unwrap();
    assert_eq!(text, "key=[REDACTED:internal_key] key=ik_00000000");
    assert_eq!(rules, ["internal_key"]);
    assert!(guard.redact_text(&github()).is_none(), "allowed");
}

#[test]
fn bad_rules_are_refused_under_their_key() {
    let cases: &[(&str, RuleConfig, &str)] = &[
        (
            "Bad-Name",
            rule(Some("x"), &[], true),
            "secret_guard.rules.Bad-Name",
        ),
        (
            "mine",
            rule(None, &[], true),
            "secret_guard.rules.mine.pattern",
        ),
        (
            "mine",
            rule(Some("(unclosed"), &[], true),
            "secret_guard.rules.mine.pattern",
        ),
        (
            "mine",
            rule(Some("a*"), &[], true),
            "secret_guard.rules.mine.pattern",
        ),
        (
            "mine",
            rule(Some("x{1000}{1000}"), &[], true),
            "secret_guard.rules.mine.pattern",
        ),
        (
            "mine",
            rule(Some("x"), &[" "], true),
            "secret_guard.rules.mine.allow",
        ),
        (
            "jwt",
            rule(None, &["["], true),
            "secret_guard.rules.jwt.allow",
        ),
        (
            "jwt",
            rule(Some("x"), &[], true),
            "secret_guard.rules.jwt.pattern",
        ),
    ];
    for (name, config, key) in cases {
        let err = with_rules(&[(name, config.clone())]).unwrap_err();
        assert_eq!(err.key, *key, "{name}: {err}");
    }
}

#[test]
fn overlapping_findings_are_one_redaction() {
    let guard = guard(GuardMode::Redact);
    // An assignment whose value is also a known format: one replacement.
    let (text, rules) = guard
        .redact_text(&format!("GITHUB_TOKEN={}", github()))
        .unwrap();
    assert_eq!(text, "GITHUB_TOKEN=[REDACTED:github_token]");
    assert_eq!(rules, ["github_token"]);
}

#[test]
fn a_shape_left_at_the_edge_of_a_redaction_goes_too() {
    let token_like = ["mcp", "_", "YTBXaK7JQEVT0mlAmrtVETW0TesULeetLDQ8B8vW2ZB"].concat();
    let webhook = [
        "https://hooks.",
        "slack.com/services/T0000/B0000/abcdefghijklmnop",
    ]
    .concat();
    let (text, rules) = guard(GuardMode::Redact)
        .redact_text(&format!("{token_like}{webhook}"))
        .unwrap();
    assert_eq!(text, "[REDACTED:memgate_token][REDACTED:slack_webhook]");
    assert_eq!(rules, ["slack_webhook", "memgate_token"]);
}

#[test]
fn the_prefilter_clears_ordinary_writes_and_nothing_that_holds_a_secret() {
    let guard = guard(GuardMode::Redact);
    let ordinary = [
        add_body(&"x".repeat(900), json!({"source": "bench"})),
        add_body(
            "The user prefers dark mode in every editor and wants answers in French.",
            json!({"category": "preferences", "tags": ["ui", "language"]}),
        ),
        // The words alone are not enough: no `=` or `:` follows them.
        add_body(
            "Rotate the deploy token weekly; the primary key of users is id.\nSee the auth docs.",
            json!({"note": "monkey keyboard author"}),
        ),
    ];
    for body in &ordinary {
        assert!(
            guard.certainly_clean(body),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let generated = ["Zq8pL2vX", "9mK4wR7t"].concat();
    let after_g = &github()[1..];
    let hiding = [
        add_body(&github(), json!({})),
        add_body("see metadata", json!({"db": {"password": generated}})),
        add_body(
            "",
            json!({"url": format!("postgres://app:{generated}@db/app")}),
        ),
        // An escape or a percent-encoding hides the literal from the raw text.
        format!(r#"{{"messages":[{{"role":"user","content":"\u0067{after_g}"}}]}}"#).into_bytes(),
        format!(r#"{{"messages":[{{"role":"user","content":"%67{after_g}"}}]}}"#).into_bytes(),
        // A key matched case-insensitively: the long s folds onto `s`.
        add_body("see metadata", json!({"\u{17F}ecret": generated})),
    ];
    for body in &hiding {
        assert!(
            !guard.certainly_clean(body),
            "{}",
            String::from_utf8_lossy(body)
        );
        assert_ne!(guard.scan_mem0_add(body).unwrap(), GuardOutcome::Clean);
    }
}
