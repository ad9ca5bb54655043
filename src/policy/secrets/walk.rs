//! Walking a JSON body: which strings of a write are scanned, redacting them
//! in place, and the JSON path of each finding.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::{Action, Finding, SecretGuard, ValueOutcome};

/// Which members of a body carry text bound for mem0.
#[derive(Clone, Copy, Debug)]
pub(super) enum Scope<'f> {
    /// `POST /memories`: `messages` and `metadata`.
    Mem0Add,
    /// `PUT /memories/{id}`: `text`, `data` and `metadata`.
    Mem0Update,
    /// A tool call's arguments: the members named.
    ToolArguments(&'f [&'f str]),
}

/// One step of a JSON path.
#[derive(Clone, Copy, Debug)]
pub(super) enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Longest key written into a path as it is; longer ones are left out.
const PATH_KEY_CHARS: usize = 64;

pub(super) struct Walk<'g> {
    guard: &'g SecretGuard,
    action: Action,
    findings: Vec<Finding>,
    refused: Option<Finding>,
    /// Scanning a tool call's arguments, whose paths start `arguments.`.
    root: &'static str,
}

impl<'g> Walk<'g> {
    pub(super) fn new(guard: &'g SecretGuard, action: Action) -> Walk<'g> {
        Walk {
            guard,
            action,
            findings: Vec::new(),
            refused: None,
            root: "",
        }
    }

    pub(super) fn object(&mut self, object: &mut Map<String, Value>, scope: Scope<'_>) {
        if let Scope::ToolArguments(_) = scope {
            self.root = "arguments";
        }
        let mut path = Vec::new();
        for (key, value) in object.iter_mut() {
            let name = key.as_str();
            let scanned = match scope {
                Scope::Mem0Add => name == "metadata",
                Scope::Mem0Update => matches!(name, "text" | "data" | "metadata"),
                Scope::ToolArguments(fields) => fields.contains(&name),
            };
            path.push(Step::Key(key));
            if matches!(scope, Scope::Mem0Add) && name == "messages" {
                self.messages(value, &mut path);
            } else if scanned {
                self.member(key, value, &mut path);
            }
            path.pop();
        }
    }

    /// One member, whole: its value as a subtree, or as a credential when
    /// the member is named like one (a tool argument called `api_key`).
    fn member<'a>(&mut self, key: &str, value: &'a mut Value, path: &mut Vec<Step<'a>>) {
        match value {
            Value::String(text) if self.guard.is_credential_key(key) => {
                self.credential_string(text, path);
            }
            other => self.subtree(other, path),
        }
    }

    /// `messages`: a string, or a list of messages whose `content` is a
    /// string or a list of parts with `text`.
    fn messages<'a>(&mut self, messages: &'a mut Value, path: &mut Vec<Step<'a>>) {
        match messages {
            Value::String(text) => self.string(text, path),
            Value::Array(items) => {
                for (index, message) in items.iter_mut().enumerate() {
                    path.push(Step::Index(index));
                    match message {
                        Value::Object(message) => {
                            for (key, content) in message.iter_mut() {
                                if key == "content" {
                                    path.push(Step::Key(key));
                                    self.content(content, path);
                                    path.pop();
                                }
                            }
                        }
                        Value::String(text) => self.string(text, path),
                        _ => {}
                    }
                    path.pop();
                }
            }
            _ => {}
        }
    }

    fn content<'a>(&mut self, content: &'a mut Value, path: &mut Vec<Step<'a>>) {
        match content {
            Value::String(text) => self.string(text, path),
            Value::Array(parts) => {
                for (index, part) in parts.iter_mut().enumerate() {
                    path.push(Step::Index(index));
                    match part {
                        Value::String(text) => self.string(text, path),
                        Value::Object(part) => {
                            for (key, text) in part.iter_mut() {
                                if let ("text", Value::String(text)) = (key.as_str(), text) {
                                    path.push(Step::Key(key));
                                    self.string(text, path);
                                    path.pop();
                                }
                            }
                        }
                        _ => {}
                    }
                    path.pop();
                }
            }
            _ => {}
        }
    }

    /// Every string under `value`, and every member named like a credential.
    pub(super) fn subtree<'a>(&mut self, value: &'a mut Value, path: &mut Vec<Step<'a>>) {
        if self.refused.is_some() {
            return;
        }
        match value {
            Value::String(text) => self.string(text, path),
            Value::Array(items) => {
                for (index, item) in items.iter_mut().enumerate() {
                    path.push(Step::Index(index));
                    self.subtree(item, path);
                    path.pop();
                }
            }
            Value::Object(members) => {
                for (key, member) in members.iter_mut() {
                    path.push(Step::Key(key));
                    self.member(key, member, path);
                    path.pop();
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// The value of a member named like a credential: what the rules find
    /// in it, and the whole value when what is left looks generated.
    fn credential_string(&mut self, text: &mut String, path: &[Step<'_>]) {
        if self.refused.is_some() {
            return;
        }
        let (left, rules) = match self.guard.redact_all(text) {
            Some((left, rules)) => (Some(left), rules),
            None => (None, Vec::new()),
        };
        let whole = self
            .guard
            .is_credential_value(text, left.as_deref().unwrap_or(text));
        for rule in rules {
            self.found(rule, path);
            if self.refused.is_some() {
                return;
            }
        }
        if whole {
            let rule = self.guard.credential_field_index();
            self.found(rule, path);
            if self.refused.is_some() {
                return;
            }
            *text = self.guard.replacements[rule].clone();
        } else if let Some(left) = left {
            *text = left;
        }
    }

    fn string(&mut self, text: &mut String, path: &[Step<'_>]) {
        if self.refused.is_some() {
            return;
        }
        let Some((redacted, rules)) = self.guard.redact_all(text) else {
            return;
        };
        for rule in rules {
            self.found(rule, path);
            if self.refused.is_some() {
                return;
            }
        }
        *text = redacted;
    }

    fn found(&mut self, rule: usize, path: &[Step<'_>]) {
        let finding = Finding {
            rule: self.guard.rule_name(rule).to_owned(),
            path: self.path_text(path),
            action: self.action,
        };
        match self.action {
            Action::Refused => self.refused = Some(finding),
            Action::Redacted => self.findings.push(finding),
        }
    }

    /// `messages[0].content`, `metadata["a b"]`, `arguments.text`. A key
    /// that is long, or is itself a secret, is not written out: the path
    /// goes into refusals and audit events.
    fn path_text(&self, path: &[Step<'_>]) -> String {
        let mut out = String::from(self.root);
        if path.is_empty() && out.is_empty() {
            // The body itself is the string (not an object).
            return "$".to_owned();
        }
        for step in path {
            match step {
                Step::Index(index) => {
                    let _ = write!(out, "[{index}]");
                }
                Step::Key(key) => {
                    let plain = !key.is_empty()
                        && key.len() <= PATH_KEY_CHARS
                        && key
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                    let shown = key.chars().count() <= PATH_KEY_CHARS
                        && !key.chars().any(char::is_control)
                        && self.guard.scan_text(key).is_empty();
                    if !shown {
                        out.push_str("[…]");
                    } else if plain {
                        if !out.is_empty() {
                            out.push('.');
                        }
                        out.push_str(key);
                    } else {
                        let _ = write!(out, "[{}]", Value::String((*key).to_owned()));
                    }
                }
            }
        }
        out
    }

    pub(super) fn outcome(self) -> ValueOutcome {
        match (self.refused, self.findings.is_empty()) {
            (Some(finding), _) => ValueOutcome::Refused { finding },
            (None, true) => ValueOutcome::Clean,
            (None, false) => ValueOutcome::Redacted {
                findings: self.findings,
            },
        }
    }

    /// The findings, or the refusal.
    pub(super) fn into_findings(self) -> Result<Vec<Finding>, Finding> {
        match self.refused {
            Some(finding) => Err(finding),
            None => Ok(self.findings),
        }
    }
}
