//! `upstream_headers` of the proxied listeners: headers memgate sends
//! upstream, each value given in the config or read from the environment or
//! a file.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// `upstream_headers`: header name → where its value comes from.
pub type UpstreamHeaderSpecs = std::collections::BTreeMap<String, HeaderSource>;

/// One `upstream_headers` value: the value itself, or where to read it when
/// memgate starts (secrets stay out of the config file that way).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum HeaderSource {
    Literal(String),
    Env { env: String },
    File { file: String },
}

impl HeaderSource {
    /// The value (literal, environment variable through `env`, or file with
    /// one trailing newline trimmed) and where it came from, for messages
    /// that must name the source but never the value. `key` names the
    /// setting in errors.
    pub fn read(
        &self,
        key: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(String, String), ConfigError> {
        match self {
            HeaderSource::Literal(value) => Ok((value.clone(), "the value".into())),
            HeaderSource::Env { env: var } => {
                let value = env(var).ok_or_else(|| {
                    invalid(key, format!("environment variable {var} is not set"))
                })?;
                Ok((value, format!("environment variable {var}")))
            }
            HeaderSource::File { file } => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| invalid(key, format!("cannot read file {file}: {e}")))?;
                let trimmed = text
                    .strip_suffix('\n')
                    .map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
                Ok((trimmed.to_string(), format!("the content of {file}")))
            }
        }
    }
}

/// Literal values are secrets as often as not: never shown.
impl std::fmt::Debug for HeaderSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderSource::Literal(_) => f.write_str("\"****\""),
            HeaderSource::Env { env } => f.debug_struct("Env").field("env", env).finish(),
            HeaderSource::File { file } => f.debug_struct("File").field("file", file).finish(),
        }
    }
}

/// Headers memgate frames or addresses the request with itself; an
/// `upstream_headers` entry cannot replace them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "proxy-connection",
];

/// Names that differ only in case, `-` or `_` are one header to an upstream.
fn squash(name: &str) -> String {
    name.bytes()
        .filter(|b| *b != b'-' && *b != b'_')
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect()
}

/// Checks what can be checked without reading the environment or files:
/// names, and literal values.
pub(super) fn validate_upstream_headers(
    section: &str,
    specs: &UpstreamHeaderSpecs,
) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for (name, source) in specs {
        let key = format!("{section}.upstream_headers.{name}");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(invalid(
                key,
                "is not a valid header name; use letters, digits and -",
            ));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(invalid(
                key,
                format!(
                    "memgate sets this header itself; remove it (for Host use {section}.preserve_host)"
                ),
            ));
        }
        if !seen.insert(squash(name)) {
            return Err(invalid(
                key,
                "names a header already listed (names differing only in case, - or _ are one header); keep one",
            ));
        }
        match source {
            HeaderSource::Literal(value) => header_value(&key, value, "the value").map(drop)?,
            HeaderSource::Env { env } if env.is_empty() => {
                return Err(invalid(key, "env is empty; name an environment variable"));
            }
            HeaderSource::File { file } if file.is_empty() => {
                return Err(invalid(key, "file is empty; name a file"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A header value from the configuration, checked: `what` says where it came
/// from, never what it is.
fn header_value(key: &str, value: &str, what: &str) -> Result<http::HeaderValue, ConfigError> {
    if value.is_empty() {
        return Err(invalid(
            key,
            format!("{what} is empty; give it a value or remove the header"),
        ));
    }
    let mut value = http::HeaderValue::from_str(value).map_err(|_| {
        invalid(
            key,
            format!("{what} is not a valid header value (no line breaks or control characters)"),
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Reads every `upstream_headers` value of `section` (literal, environment
/// variable through `env`, or file with one trailing newline trimmed) and
/// checks it. The values are secrets: errors name the key, never the value.
pub fn resolve_upstream_headers(
    section: &str,
    specs: &UpstreamHeaderSpecs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, ConfigError> {
    validate_upstream_headers(section, specs)?;
    specs
        .iter()
        .map(|(name, source)| {
            let key = format!("{section}.upstream_headers.{name}");
            let (value, what) = source.read(&key, &env)?;
            let value = header_value(&key, &value, &what)?;
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(&key, "is not a valid header name"))?;
            Ok((name, value))
        })
        .collect()
}
