//! The guard's promises as checkable properties, and a fuzzer entry point
//! driving every public scan with them (`fuzz_target!(|d: &[u8]| fuzz_entry(d))`):
//! no input panics; a redacted body is JSON of the same shape as the one
//! sent; and what was redacted holds nothing more to find.

use std::sync::OnceLock;

use serde_json::Value;

use super::walk::Scope;
use super::{GuardMode, GuardOutcome, RuleConfig, SecretGuard, SecretGuardConfig, ValueOutcome};
use crate::policy::json::{JsonError, parse_value};

/// A scan of a write body, as [`SecretGuard::scan_mem0_add`].
type BodyScan = fn(&SecretGuard, &[u8]) -> Result<GuardOutcome, JsonError>;

/// Same keys, same array lengths, same non-string values; strings may differ.
pub fn same_shape(sent: &Value, forwarded: &Value) -> bool {
    match (sent, forwarded) {
        (Value::String(_), Value::String(_)) => true,
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_shape(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, a)| b.get(key).is_some_and(|b| same_shape(a, b)))
        }
        (a, b) => a == b,
    }
}

/// The guards exercised: the shipped rules redacting and refusing, and one
/// with a custom rule, an allow-list and a disabled rule.
fn guards() -> &'static [SecretGuard; 3] {
    static GUARDS: OnceLock<[SecretGuard; 3]> = OnceLock::new();
    GUARDS.get_or_init(|| {
        let build = |mode, rules: &[(&str, RuleConfig)]| {
            SecretGuard::from_config(&SecretGuardConfig {
                mode,
                scan_responses: true,
                rules: rules
                    .iter()
                    .map(|(name, rule)| ((*name).to_owned(), rule.clone()))
                    .collect(),
            })
            .expect("the fuzzed guards are valid")
        };
        let custom = RuleConfig {
            pattern: Some(r"key-(?P<secret>[0-9a-f]{16})".to_owned()),
            allow: vec!["^0+$".to_owned()],
            enabled: true,
        };
        let disabled = RuleConfig {
            pattern: None,
            allow: Vec::new(),
            enabled: false,
        };
        [
            build(GuardMode::Redact, &[]),
            build(GuardMode::Refuse, &[]),
            build(
                GuardMode::Redact,
                &[("internal_key", custom), ("jwt", disabled)],
            ),
        ]
    })
}

/// Panics when a promise is broken.
pub fn fuzz_entry(data: &[u8]) {
    let sent = parse_value(data, super::MAX_DEPTH).ok();
    for guard in guards() {
        let scans: [BodyScan; 2] = [SecretGuard::scan_mem0_add, SecretGuard::scan_mem0_update];
        for scan in scans {
            match (scan(guard, data), &sent) {
                (Ok(GuardOutcome::Redacted { body, findings }), Some(sent)) => {
                    assert!(!findings.is_empty());
                    check_shape(sent, &body);
                    assert_eq!(
                        scan(guard, &body),
                        Ok(GuardOutcome::Clean),
                        "a redacted body still holds a secret"
                    );
                }
                (Ok(GuardOutcome::Redacted { .. }), None) => {
                    panic!("a body that does not parse was redacted")
                }
                (Ok(GuardOutcome::Refused { finding }), _) => {
                    assert_eq!(guard.mode(), GuardMode::Refuse);
                    assert!(!finding.path.is_empty());
                }
                (Ok(GuardOutcome::Clean), _) => {}
                (Err(_), parsed) => assert!(parsed.is_none(), "a valid body was refused"),
            }
        }
        if guard.certainly_clean(data) {
            for scope in [Scope::Mem0Add, Scope::Mem0Update] {
                assert!(
                    matches!(
                        guard.scan_parsed(data, scope),
                        Ok(GuardOutcome::Clean) | Err(_)
                    ),
                    "the prefilter cleared a write holding a secret"
                );
            }
            assert!(
                guard.redact_response_parsed(data).is_none(),
                "the prefilter cleared a body holding a secret"
            );
        }
        if let (Some((body, _)), Some(sent)) = (guard.redact_response(data), &sent) {
            check_shape(sent, &body);
            assert!(
                guard.redact_response(&body).is_none(),
                "a redacted response still holds a secret"
            );
        }
        if let Some(Value::Object(object)) = &sent {
            let mut arguments = object.clone();
            let fields = ["text", "messages", "metadata", "data"];
            match guard.scan_tool_arguments(&fields, &mut arguments) {
                ValueOutcome::Clean | ValueOutcome::Refused { .. } => {
                    assert_eq!(&arguments, object, "scanning alone changed arguments");
                }
                ValueOutcome::Redacted { .. } => {
                    let arguments = Value::Object(arguments);
                    assert!(same_shape(&Value::Object(object.clone()), &arguments));
                    let mut again = arguments.as_object().cloned().unwrap_or_default();
                    assert!(
                        matches!(
                            guard.scan_tool_arguments(&fields, &mut again),
                            ValueOutcome::Clean
                        ),
                        "redacted arguments still hold a secret"
                    );
                }
            }
        }
        let text = String::from_utf8_lossy(data);
        if let Some((redacted, rules)) = guard.redact_text(&text) {
            assert!(!rules.is_empty());
            assert!(
                guard.redact_text(&redacted).is_none(),
                "a redacted text still holds a secret"
            );
        }
    }
}

/// `body` (what is forwarded) is JSON of `sent`'s shape.
fn check_shape(sent: &Value, body: &[u8]) {
    let forwarded = parse_value(body, super::MAX_DEPTH).expect("a redacted body is JSON");
    assert!(same_shape(sent, &forwarded), "redaction changed the shape");
}
