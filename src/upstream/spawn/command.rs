//! The child's command line and environment, filled in per scope.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::Supervisor;
use crate::config::PORT_PLACEHOLDER;
use crate::policy::upstream_name::{SCOPE_PLACEHOLDER, USER_PLACEHOLDER, host_label};

/// The only variables of memgate's environment every child gets.
const BASE_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

/// What `{scope}`, `{user}` and `{port}` stand for in one child's command.
pub struct Vars<'a> {
    pub scope: &'a str,
    pub user: &'a str,
    pub port: u16,
}

/// `template` with each placeholder replaced: scope and user by their host
/// labels (a value cannot smuggle a path, an option or a `{port}` in).
pub fn fill(template: &str, vars: &Vars) -> String {
    template
        .replace(SCOPE_PLACEHOLDER, &host_label(vars.scope))
        .replace(USER_PLACEHOLDER, &host_label(vars.user))
        .replace(PORT_PLACEHOLDER, &vars.port.to_string())
}

/// An `env` value with each placeholder replaced by the value itself: the
/// scope is the mem0 user id memgate forces on the REST listener and records
/// for `user export`/`user delete`, so a server that takes its mem0 id from
/// the environment must get exactly that, not its host label. One pass, so a
/// value that holds a placeholder's text is never expanded again.
pub fn fill_env(template: &str, vars: &Vars) -> String {
    let port = vars.port.to_string();
    let placeholders = [
        (SCOPE_PLACEHOLDER, vars.scope),
        (USER_PLACEHOLDER, vars.user),
        (PORT_PLACEHOLDER, port.as_str()),
    ];
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while !rest.is_empty() {
        match placeholders
            .iter()
            .find(|(placeholder, _)| rest.starts_with(placeholder))
        {
            Some((placeholder, value)) => {
                out.push_str(value);
                rest = &rest[placeholder.len()..];
            }
            None => {
                let next = rest.chars().next().map_or(1, char::len_utf8);
                out.push_str(&rest[..next]);
                rest = &rest[next..];
            }
        }
    }
    out
}

/// The child's whole environment: the base names and `inherit` from
/// memgate's (through `get`), then `env` filled in.
pub fn child_env(
    inherit: &[String],
    env: &BTreeMap<String, String>,
    vars: &Vars,
    get: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for name in BASE_ENV
        .iter()
        .copied()
        .chain(inherit.iter().map(String::as_str))
    {
        if let Some(value) = get(name) {
            out.insert(name.to_string(), value);
        }
    }
    for (name, value) in env {
        out.insert(name.clone(), fill_env(value, vars));
    }
    out
}

/// A command ready to run.
pub(super) struct Launch {
    pub(super) program: String,
    pub(super) args: Vec<String>,
    pub(super) env: BTreeMap<String, String>,
    pub(super) cwd: Option<PathBuf>,
    /// MCP over its stdin and stdout (else both are the log's).
    pub(super) stdio: bool,
}

impl Supervisor {
    pub(super) fn launch(&self, vars: &Vars) -> Launch {
        let cwd = (!self.spawn.cwd.is_empty()).then(|| PathBuf::from(fill(&self.spawn.cwd, vars)));
        Launch {
            program: fill(&self.spawn.command, vars),
            args: self.spawn.args.iter().map(|a| fill(a, vars)).collect(),
            env: child_env(&self.spawn.inherit_env, &self.spawn.env, vars, |name| {
                std::env::var(name).ok()
            }),
            cwd,
            stdio: self.stdio(),
        }
    }
}
