//! `MEMGATE_SECTION__KEY` environment overrides.

use super::{Config, ConfigError, invalid};

const ENV_PREFIX: &str = "MEMGATE_";

/// Applies `MEMGATE_SECTION__KEY=value` overrides. The value is read with the
/// type the key has in the defaults, so `MEMGATE_MEM0__UPSTREAM=123` stays a string.
pub(super) fn apply_env(
    table: &mut toml::Table,
    defaults: &toml::Table,
    env_vars: &[(String, String)],
) -> Result<(), ConfigError> {
    for (name, value) in env_vars {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if rest == "CONFIG" || rest == "LOG" {
            continue;
        }
        // Other tools (the test suite, bench scripts) use MEMGATE_* names of their
        // own; only the SECTION__KEY shape is claimed as an override.
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let Some(default) = defaults
            .get(&section)
            .and_then(|s| s.as_table())
            .and_then(|s| s.get(&key))
        else {
            return Err(invalid(
                name,
                format!(
                    "there is no config key {section}.{key}; unset the variable or correct \
                     its name (MEMGATE_SECTION__KEY, config.toml lists every key)"
                ),
            ));
        };
        let typed = typed_env_value(default, value).ok_or_else(|| {
            // Its values may be secrets: not repeated back.
            if key == "upstream_headers" {
                return invalid(
                    name,
                    format!(
                        "{section}.upstream_headers wants a TOML inline table, \
                         e.g. {{ \"X-API-Key\" = {{ env = \"NAME\" }} }}"
                    ),
                );
            }
            invalid(
                name,
                format!("{value:?} is not a valid value for {section}.{key}"),
            )
        })?;
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section_table) = entry.as_table_mut() else {
            return Err(invalid(section, "must be a table"));
        };
        section_table.insert(key, typed);
    }
    Ok(())
}

/// `MEMGATE_*` names that are not overrides but would be with two underscores
/// between section and key (`MEMGATE_MEM0_UPSTREAM`), one warning each:
/// such a variable is ignored, and the operator most likely meant it.
pub fn near_miss_overrides(env_vars: &[(String, String)]) -> Vec<String> {
    let Ok(defaults) = toml::Table::try_from(Config::default()) else {
        return Vec::new();
    };
    let mut warnings = Vec::new();
    for (name, _) in env_vars {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if rest.contains("__") {
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        for (section, keys) in &defaults {
            let Some(keys) = keys.as_table() else {
                continue;
            };
            let Some(key) = rest
                .strip_prefix(section.as_str())
                .and_then(|k| k.strip_prefix('_'))
            else {
                continue;
            };
            if keys.contains_key(key) {
                let fixed = format!(
                    "{ENV_PREFIX}{}__{}",
                    section.to_ascii_uppercase(),
                    key.to_ascii_uppercase()
                );
                warnings.push(format!(
                    "{name} is ignored: not a config override; to set {section}.{key}, name it {fixed}"
                ));
            }
        }
    }
    warnings
}

fn typed_env_value(default: &toml::Value, raw: &str) -> Option<toml::Value> {
    Some(match default {
        toml::Value::String(_) => toml::Value::String(raw.to_string()),
        toml::Value::Integer(_) => toml::Value::Integer(raw.trim().parse().ok()?),
        toml::Value::Float(_) => toml::Value::Float(raw.trim().parse().ok()?),
        toml::Value::Boolean(_) => toml::Value::Boolean(raw.trim().parse().ok()?),
        _ => {
            let wrapped: toml::Table = format!("v = {raw}").parse().ok()?;
            wrapped.get("v")?.clone()
        }
    })
}
