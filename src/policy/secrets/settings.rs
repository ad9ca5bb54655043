//! `[secret_guard]` as written in the configuration. The types live here, in
//! the pure core, so that the guard is built from them without the config
//! module (the fuzz targets compile `src/policy` alone); `src/config`
//! registers the section and reports a bad value under its key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `secret_guard.mode`: what happens to a write that carries a secret.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardMode {
    /// Nothing is scanned.
    Off,
    /// The secret becomes `[REDACTED:<rule>]` and the write goes on.
    #[default]
    Redact,
    /// The write is refused, naming the rule and where the value was.
    Refuse,
}

impl GuardMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardMode::Off => "off",
            GuardMode::Redact => "redact",
            GuardMode::Refuse => "refuse",
        }
    }
}

/// `[secret_guard]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretGuardConfig {
    pub mode: GuardMode,
    /// Redact secrets in memories on their way back to clients too (those
    /// stored before the guard was on, or while it was off).
    pub scan_responses: bool,
    /// `[secret_guard.rules.NAME]`: custom rules, and allow-lists or
    /// `enabled = false` for shipped ones.
    pub rules: BTreeMap<String, RuleConfig>,
}

impl Default for SecretGuardConfig {
    fn default() -> Self {
        SecretGuardConfig {
            mode: GuardMode::Redact,
            scan_responses: false,
            rules: BTreeMap::new(),
        }
    }
}

/// `[secret_guard.rules.NAME]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// A custom rule's regular expression (the `regex` crate's syntax); its
    /// `secret` group, if any, is the part redacted. Not allowed on a
    /// shipped rule, whose format is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Regular expressions for matches to leave alone: a match whose secret
    /// any of them finds is not a finding (anchor with `^…$` for whole values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default = "enabled_by_default", skip_serializing_if = "is_true")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// A value the guard cannot be built from; `key` is its config key, e.g.
/// `secret_guard.rules.internal_key.pattern`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardConfigError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for GuardConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}
