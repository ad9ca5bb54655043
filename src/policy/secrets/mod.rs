//! The secret guard: finds credentials (API keys, private keys, passwords in
//! URLs, memgate's own tokens, generated values assigned to credential
//! names) in what a client writes to mem0, before mem0 sends it to its LLM
//! and vector store, and redacts or refuses it.
//!
//! Pure: built once from [`SecretGuardConfig`], then every call is a
//! function of its input. Matching is done by the `regex` crate's finite
//! automata, never backtracking, so time is linear in the input's length;
//! each shipped pattern starts with (or holds) literals the crate skips to.
//!
//! What is scanned:
//! - `POST /memories`: `messages[*].content` (a string, or parts with `text`;
//!   `messages` itself when it is a string) and `metadata` at any depth;
//! - `PUT /memories/{id}`: `text`, `data` and `metadata`;
//! - MCP tool calls: the arguments the tool's rule lists in `secret_scan`.
//!
//! Each string is scanned as decoded (JSON escapes resolved) and again
//! percent-decoded when it holds `%XX` escapes. A member whose key is named
//! like a credential (`password`, `api_key`, …) and whose value looks
//! generated counts too (rule [`rules::CREDENTIAL_FIELD`]). A finding names
//! the rule and the JSON path, never the value.

pub mod entropy;
mod fuzz;
mod prefilter;
pub mod rules;
pub mod settings;
mod walk;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::fmt;

use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

use super::json::{JsonError, parse_value, to_bytes};
pub use fuzz::{fuzz_entry, same_shape};
use prefilter::{Judged, Prefilter};
pub use rules::{CREDENTIAL_FIELD, shipped_names};
pub use settings::{GuardConfigError, GuardMode, RuleConfig, SecretGuardConfig};
use walk::{Scope, Walk};

/// Compiled size allowed for one operator-written pattern (`allow` or a
/// custom rule): enough for any sensible rule, too little for a pattern that
/// would make every scan slow.
pub const CUSTOM_PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// Scans of one string while each redaction exposes another secret at its
/// edge; in practice the scan after the first finds nothing.
const MAX_PASSES: usize = 4;

/// Nesting accepted in a scanned body; [`parse_value`] clamps it to its own ceiling.
const MAX_DEPTH: usize = 128;

/// What happened to a finding (the metric's `action` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Redacted,
    Refused,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Redacted => "redacted",
            Action::Refused => "refused",
        }
    }

    /// Both, for metrics created at zero.
    pub const ALL: [Action; 2] = [Action::Redacted, Action::Refused];
}

/// One secret found: which rule and where, never the value nor any part of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub rule: String,
    /// JSON path of the string that held it, e.g. `messages[0].content`,
    /// `metadata.db_url`, `arguments.text`.
    pub path: String,
    pub action: Action,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "secret guard: a value matching rule {:?} at {} was {}",
            self.rule,
            self.path,
            self.action.as_str()
        )
    }
}

/// The guard's answer for a request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuardOutcome {
    /// Nothing found (or the guard is off): forward the body as it was sent.
    Clean,
    /// Forward `body` instead: the same JSON with every secret replaced.
    Redacted {
        body: Vec<u8>,
        findings: Vec<Finding>,
    },
    /// Refuse the request (403 on the mem0 listener, a JSON-RPC error on the
    /// MCP listener) with `finding`'s text.
    Refused { finding: Finding },
}

/// The guard's answer for a JSON value scanned in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueOutcome {
    /// Nothing found; the value is untouched.
    Clean,
    /// The value was changed in place: every secret replaced.
    Redacted { findings: Vec<Finding> },
    /// Refuse the request; the value may be partly scanned but is untouched.
    Refused { finding: Finding },
}

/// A compiled rule.
#[derive(Debug)]
struct Rule {
    name: String,
    regex: Regex,
    /// The `secret` group's index, if the pattern has one.
    secret_group: Option<usize>,
    check: rules::Check,
    allow: Vec<Regex>,
    /// A shipped rule's literals ([`rules::ShippedRule::needs`]); `None` for
    /// an operator's rule.
    needs: Option<&'static [&'static str]>,
}

impl Rule {
    /// Whether a match is left alone: allowed, or a redaction marker, so
    /// that a redacted text scanned again holds nothing to find.
    fn allows(&self, secret: &str) -> bool {
        is_marker(secret) || self.allow.iter().any(|allow| allow.is_match(secret))
    }
}

/// `text` without the redaction markers in it: what is left of a value
/// after earlier redactions, which alone says whether it looks generated.
fn without_markers(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("[REDACTED:") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut rest = String::with_capacity(text.len());
    let mut remaining = text;
    while let Some(at) = remaining.find("[REDACTED:") {
        let marker_end = remaining[at..].find(']').map(|end| at + end + 1);
        match marker_end.filter(|&end| is_marker(&remaining[at..end])) {
            Some(end) => {
                rest.push_str(&remaining[..at]);
                remaining = &remaining[end..];
            }
            None => {
                rest.push_str(&remaining[..at + 1]);
                remaining = &remaining[at + 1..];
            }
        }
    }
    rest.push_str(remaining);
    std::borrow::Cow::Owned(rest)
}

/// `[REDACTED:<rule>]`, as the guard writes it.
fn is_marker(text: &str) -> bool {
    text.strip_prefix("[REDACTED:")
        .and_then(|rest| rest.strip_suffix(']'))
        .is_some_and(|name| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// A secret's span in a scanned string, and its rule: an index into the
/// guard's rules, or one past them for [`CREDENTIAL_FIELD`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hit {
    start: usize,
    end: usize,
    rule: usize,
}

/// The secret guard, built once at start ([`SecretGuard::from_config`]).
#[derive(Debug)]
pub struct SecretGuard {
    mode: GuardMode,
    scan_responses: bool,
    rules: Vec<Rule>,
    /// Key names of [`CREDENTIAL_FIELD`] members, with that rule's allow-list;
    /// `None` when the rule is disabled.
    credential_field: Option<(Regex, Vec<Regex>)>,
    /// `[REDACTED:<rule>]` of every rule, by index, and of
    /// [`CREDENTIAL_FIELD`] last.
    replacements: Vec<String>,
    /// The whole-body check that lets most writes skip the scan; `None` when
    /// the rules in force cannot be judged that way.
    prefilter: Option<Prefilter>,
}

impl SecretGuard {
    /// Compiles the shipped rules (minus those disabled) and the custom ones.
    /// Every error names the config key at fault.
    pub fn from_config(config: &SecretGuardConfig) -> Result<SecretGuard, GuardConfigError> {
        let error = |key: String, message: String| GuardConfigError { key, message };
        for (name, rule) in &config.rules {
            let key = format!("secret_guard.rules.{name}");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(error(
                    key,
                    "a rule name is made of a-z, 0-9 and _ only".into(),
                ));
            }
            let shipped = shipped_names().any(|shipped| shipped == name);
            match (&rule.pattern, shipped) {
                (Some(_), true) => {
                    return Err(error(
                        format!("{key}.pattern"),
                        "a shipped rule's pattern is fixed; disable it (enabled = false) \
                         and add a rule of another name"
                            .into(),
                    ));
                }
                (None, false) => {
                    return Err(error(
                        format!("{key}.pattern"),
                        "a custom rule needs a pattern (shipped rules: see config.toml)".into(),
                    ));
                }
                _ => {}
            }
        }
        let allow_of = |name: &str, shipped: &[&str]| -> Result<Vec<Regex>, GuardConfigError> {
            let mut allow = Vec::new();
            for pattern in shipped {
                allow.push(Regex::new(pattern).expect("shipped allow patterns compile"));
            }
            if let Some(rule) = config.rules.get(name) {
                for pattern in &rule.allow {
                    let key = format!("secret_guard.rules.{name}.allow");
                    if pattern.trim().is_empty() {
                        return Err(error(
                            key,
                            "an empty pattern would allow every match".into(),
                        ));
                    }
                    allow.push(compile_custom(pattern).map_err(|message| error(key, message))?);
                }
            }
            Ok(allow)
        };
        let enabled = |name: &str| config.rules.get(name).is_none_or(|rule| rule.enabled);

        let mut compiled = Vec::new();
        for shipped in rules::SHIPPED.iter().filter(|rule| enabled(rule.name)) {
            let regex = Regex::new(shipped.pattern).expect("shipped patterns compile");
            compiled.push(Rule {
                name: shipped.name.to_owned(),
                secret_group: group_index(&regex),
                regex,
                check: shipped.check,
                allow: allow_of(shipped.name, shipped.allow)?,
                needs: Some(shipped.needs),
            });
        }
        for (name, rule) in &config.rules {
            let Some(pattern) = rule.pattern.as_deref().filter(|_| rule.enabled) else {
                continue;
            };
            let key = format!("secret_guard.rules.{name}.pattern");
            let regex = compile_custom(pattern).map_err(|message| error(key.clone(), message))?;
            if regex.is_match("") {
                return Err(error(
                    key,
                    "the pattern matches empty text; it must match the secret itself".into(),
                ));
            }
            compiled.push(Rule {
                name: name.clone(),
                secret_group: group_index(&regex),
                regex,
                check: rules::Check::Format,
                allow: allow_of(name, &[])?,
                needs: None,
            });
        }
        let credential_field = if enabled(CREDENTIAL_FIELD) {
            let keys = Regex::new(rules::CREDENTIAL_KEY_PATTERN).expect("shipped patterns compile");
            Some((keys, allow_of(CREDENTIAL_FIELD, &[])?))
        } else {
            None
        };
        let replacements = compiled
            .iter()
            .map(|rule| rule.name.as_str())
            .chain(std::iter::once(CREDENTIAL_FIELD))
            .map(|name| format!("[REDACTED:{name}]"))
            .collect();
        let prefilter = Prefilter::new(
            compiled.iter().map(|rule| match rule.needs {
                Some(needs) => Judged::Shipped(&rule.regex, needs),
                None => Judged::Custom(&rule.regex),
            }),
            credential_field.is_some(),
        );
        Ok(SecretGuard {
            mode: config.mode,
            scan_responses: config.scan_responses,
            rules: compiled,
            credential_field,
            replacements,
            prefilter,
        })
    }

    pub fn mode(&self) -> GuardMode {
        self.mode
    }

    /// Whether responses are to be passed through [`Self::redact_response`].
    pub fn scans_responses(&self) -> bool {
        self.scan_responses && self.mode != GuardMode::Off
    }

    /// The names of the rules in force, shipped then custom, with
    /// [`CREDENTIAL_FIELD`] if it is on.
    pub fn rule_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.rules.iter().map(|rule| rule.name.as_str()).collect();
        if self.credential_field.is_some() {
            names.push(CREDENTIAL_FIELD);
        }
        names
    }

    /// Whether `body` certainly holds nothing to find, judged on its raw
    /// text without parsing it (most writes): a quick answer for callers
    /// that would otherwise parse the body only to scan it. `false` means
    /// only that it must be scanned.
    pub fn certainly_clean(&self, body: &[u8]) -> bool {
        self.mode == GuardMode::Off
            || self
                .prefilter
                .as_ref()
                .is_some_and(|prefilter| prefilter.clean(body))
    }

    /// `POST /memories`: `messages` contents and `metadata`. A body that may
    /// hold a secret and is not strict JSON is an error (the caller answers
    /// 400), never forwarded unscanned. One that [`Self::certainly_clean`]
    /// clears is not parsed here: the policy that reads it next refuses what
    /// is not strict JSON.
    pub fn scan_mem0_add(&self, body: &[u8]) -> Result<GuardOutcome, JsonError> {
        self.scan_body(body, Scope::Mem0Add)
    }

    /// `PUT /memories/{id}`: `text` (or `data`) and `metadata`.
    pub fn scan_mem0_update(&self, body: &[u8]) -> Result<GuardOutcome, JsonError> {
        self.scan_body(body, Scope::Mem0Update)
    }

    /// [`Self::scan_mem0_add`] on a body already parsed, changed in place.
    pub fn scan_mem0_add_object(&self, body: &mut Map<String, Value>) -> ValueOutcome {
        self.scan_object(body, Scope::Mem0Add)
    }

    /// [`Self::scan_mem0_update`] on a body already parsed, changed in place.
    pub fn scan_mem0_update_object(&self, body: &mut Map<String, Value>) -> ValueOutcome {
        self.scan_object(body, Scope::Mem0Update)
    }

    /// An MCP `tools/call`'s `arguments`: the members named in `fields` (the
    /// tool rule's `secret_scan`), each at any depth. Paths read
    /// `arguments.<field>…`.
    pub fn scan_tool_arguments<S: AsRef<str>>(
        &self,
        fields: &[S],
        arguments: &mut Map<String, Value>,
    ) -> ValueOutcome {
        if fields.is_empty() {
            return ValueOutcome::Clean;
        }
        let fields: Vec<&str> = fields.iter().map(AsRef::as_ref).collect();
        self.scan_object(arguments, Scope::ToolArguments(&fields))
    }

    /// A response body on its way to a client (`scan_responses`): every
    /// string at any depth, redacted whatever the mode (a stored memory
    /// cannot be refused). `None` when nothing was found, the guard is off,
    /// or the body is not JSON (it is then passed on as it is).
    pub fn redact_response(&self, body: &[u8]) -> Option<(Vec<u8>, Vec<Finding>)> {
        if self.certainly_clean(body) {
            return None;
        }
        self.redact_response_parsed(body)
    }

    /// [`Self::redact_response`] without the quick answer.
    fn redact_response_parsed(&self, body: &[u8]) -> Option<(Vec<u8>, Vec<Finding>)> {
        if self.mode == GuardMode::Off {
            return None;
        }
        let mut value = parse_value(body, MAX_DEPTH).ok()?;
        let mut walk = Walk::new(self, Action::Redacted);
        walk.subtree(&mut value, &mut Vec::new());
        let findings = walk.into_findings().ok()?;
        (!findings.is_empty()).then(|| (to_bytes(&value), findings))
    }

    /// `text` with every secret replaced, and the rules found, or `None`
    /// when it holds none: for text that is not JSON (an SSE event's data
    /// that is not JSON, a log line). Whatever the mode, except off.
    pub fn redact_text(&self, text: &str) -> Option<(String, Vec<String>)> {
        if self.mode == GuardMode::Off {
            return None;
        }
        let (redacted, rules) = self.redact_all(text)?;
        let rules = rules
            .into_iter()
            .map(|rule| self.rule_name(rule).to_owned())
            .collect();
        Some((redacted, rules))
    }

    /// `text` with every secret replaced, and the rules found (in order),
    /// or `None` when it holds none. A replacement can leave a shape at its
    /// edge that was not one before (`mcp_` + 43 characters that ran on into
    /// a redacted URL), so the result is scanned again, up to
    /// [`MAX_PASSES`] times.
    fn redact_all(&self, text: &str) -> Option<(String, Vec<usize>)> {
        let hits = self.scan_text(text);
        if hits.is_empty() {
            return None;
        }
        let mut rules: Vec<usize> = hits.iter().map(|hit| hit.rule).collect();
        let mut redacted = self.redacted(text, &hits);
        for _ in 1..MAX_PASSES {
            let more = self.scan_text(&redacted);
            if more.is_empty() {
                break;
            }
            rules.extend(more.iter().map(|hit| hit.rule));
            redacted = self.redacted(&redacted, &more);
        }
        Some((redacted, rules))
    }

    fn scan_body(&self, body: &[u8], scope: Scope<'_>) -> Result<GuardOutcome, JsonError> {
        if self.certainly_clean(body) {
            return Ok(GuardOutcome::Clean);
        }
        self.scan_parsed(body, scope)
    }

    /// [`Self::scan_body`] without the quick answer: the body parsed and
    /// every string it carries to mem0 scanned.
    fn scan_parsed(&self, body: &[u8], scope: Scope<'_>) -> Result<GuardOutcome, JsonError> {
        if self.mode == GuardMode::Off {
            return Ok(GuardOutcome::Clean);
        }
        let mut value = parse_value(body, MAX_DEPTH)?;
        let outcome = match &mut value {
            Value::Object(object) => self.scan_object(object, scope),
            // Not the shape any write has: everything in it is scanned.
            other => self.scan_whole(other),
        };
        Ok(match outcome {
            ValueOutcome::Clean => GuardOutcome::Clean,
            ValueOutcome::Refused { finding } => GuardOutcome::Refused { finding },
            ValueOutcome::Redacted { findings } => GuardOutcome::Redacted {
                body: to_bytes(&value),
                findings,
            },
        })
    }

    fn scan_object(&self, object: &mut Map<String, Value>, scope: Scope<'_>) -> ValueOutcome {
        if self.mode == GuardMode::Off {
            return ValueOutcome::Clean;
        }
        let mut walk = Walk::new(self, self.action());
        walk.object(object, scope);
        walk.outcome()
    }

    fn scan_whole(&self, value: &mut Value) -> ValueOutcome {
        let mut walk = Walk::new(self, self.action());
        walk.subtree(value, &mut Vec::new());
        walk.outcome()
    }

    fn action(&self) -> Action {
        match self.mode {
            GuardMode::Refuse => Action::Refused,
            GuardMode::Off | GuardMode::Redact => Action::Redacted,
        }
    }

    fn rule_name(&self, rule: usize) -> &str {
        self.rules
            .get(rule)
            .map_or(CREDENTIAL_FIELD, |rule| rule.name.as_str())
    }

    /// The rule index that stands for [`CREDENTIAL_FIELD`] in a [`Hit`].
    fn credential_field_index(&self) -> usize {
        self.rules.len()
    }

    /// Whether a member named `key` is named like a credential
    /// ([`CREDENTIAL_FIELD`] on).
    fn is_credential_key(&self, key: &str) -> bool {
        self.credential_field
            .as_ref()
            .is_some_and(|(keys, _)| keys.is_match(key))
    }

    /// Whether the value `sent` of a credential-named member is a
    /// [`CREDENTIAL_FIELD`] finding, judged on `left`: the value with what
    /// other rules found already redacted, so that the verdict is the same
    /// on the value as sent and on the value as forwarded.
    fn is_credential_value(&self, sent: &str, left: &str) -> bool {
        self.credential_field.as_ref().is_some_and(|(_, allow)| {
            entropy::looks_random(&without_markers(left)) && !allow.iter().any(|a| a.is_match(sent))
        })
    }

    /// Every secret in `text`, as decoded and percent-decoded, as sorted,
    /// non-overlapping spans of `text`.
    fn scan_text(&self, text: &str) -> Vec<Hit> {
        let mut hits = self.scan_plain(text);
        if let Some(decoded) = PercentDecoded::of(text) {
            for hit in self.scan_plain(&decoded.text) {
                let (start, end) = decoded.raw_span(hit.start, hit.end);
                hits.push(Hit { start, end, ..hit });
            }
        }
        merge(hits)
    }

    /// The hits of every rule in `text`.
    fn scan_plain(&self, text: &str) -> Vec<Hit> {
        let mut hits = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            // Most strings match nothing: asking first skips building the
            // capture positions.
            if !rule.regex.is_match(text) {
                continue;
            }
            for captures in rule.regex.captures_iter(text) {
                let secret = rule
                    .secret_group
                    .and_then(|group| captures.get(group))
                    .or_else(|| captures.get(0))
                    .expect("a match has group 0");
                if secret.is_empty()
                    || (rule.check == rules::Check::Random
                        && !entropy::looks_random(secret.as_str()))
                    || rule.allows(secret.as_str())
                {
                    continue;
                }
                hits.push(Hit {
                    start: secret.start(),
                    end: secret.end(),
                    rule: index,
                });
            }
        }
        hits
    }

    /// `text` with each hit replaced by `[REDACTED:<rule>]`.
    fn redacted(&self, text: &str, hits: &[Hit]) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for hit in hits {
            out.push_str(&text[at..hit.start]);
            out.push_str(&self.replacements[hit.rule]);
            at = hit.end;
        }
        out.push_str(&text[at..]);
        out
    }
}

/// A custom pattern, compiled with [`CUSTOM_PATTERN_SIZE_LIMIT`].
fn compile_custom(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(CUSTOM_PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("not a valid pattern: {}", first_line(&e.to_string())))
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn group_index(regex: &Regex) -> Option<usize> {
    regex
        .capture_names()
        .position(|name| name == Some("secret"))
}

/// `hits` sorted by start, overlapping ones joined under the rule of the
/// earliest (then longest, then first-listed) one.
fn merge(mut hits: Vec<Hit>) -> Vec<Hit> {
    hits.sort_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then(b.end.cmp(&a.end))
            .then(a.rule.cmp(&b.rule))
    });
    let mut merged: Vec<Hit> = Vec::with_capacity(hits.len());
    for hit in hits {
        match merged.last_mut() {
            Some(last) if hit.start < last.end => last.end = last.end.max(hit.end),
            _ => merged.push(hit),
        }
    }
    merged
}

/// A string with its `%XX` escapes decoded, and where each decoded byte came
/// from, so that a secret found in the decoded text is redacted in the text
/// as sent. A `%` not followed by two hex digits stays as it is.
struct PercentDecoded {
    text: String,
    /// For each byte of `text`: the offset of its source in the raw string
    /// (the `%` of an escape), and one more entry for the end.
    origin: Vec<usize>,
    /// For each byte of `text`: the end of its source in the raw string.
    origin_end: Vec<usize>,
}

impl PercentDecoded {
    /// `None` when `raw` has no escape, or decodes to text that is not UTF-8
    /// (no rule could match it as text).
    fn of(raw: &str) -> Option<PercentDecoded> {
        let bytes = raw.as_bytes();
        if !bytes
            .iter()
            .enumerate()
            .any(|(at, b)| *b == b'%' && super::percent::escape_at(bytes, at))
        {
            return None;
        }
        let mut decoded = Vec::with_capacity(bytes.len());
        let mut origin = Vec::with_capacity(bytes.len());
        let mut origin_end = Vec::with_capacity(bytes.len());
        let mut at = 0;
        while at < bytes.len() {
            if super::percent::escape_at(bytes, at) {
                let hex = &raw[at + 1..at + 3];
                decoded.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
                origin.push(at);
                origin_end.push(at + 3);
                at += 3;
            } else {
                decoded.push(bytes[at]);
                origin.push(at);
                origin_end.push(at + 1);
                at += 1;
            }
        }
        let text = String::from_utf8(decoded).ok()?;
        Some(PercentDecoded {
            text,
            origin,
            origin_end,
        })
    }

    /// The raw span holding the decoded bytes `start..end`, widened to
    /// character boundaries of the raw string.
    fn raw_span(&self, start: usize, end: usize) -> (usize, usize) {
        (self.origin[start], self.origin_end[end - 1])
    }
}
