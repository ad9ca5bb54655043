//! `memgate upstream-name`: the server a templated `[mcp] upstream` sends a
//! user's requests to, so operators can name their per-user servers (in
//! compose or Kubernetes) before the first request arrives.

use clap::Args;
use serde_json::json;

use crate::config::Config;
use crate::policy::scope::scope_for;
use crate::policy::upstream_name::{expand, host_label, is_template};
use crate::identity::{Identity, Permissions};

#[derive(Args, Debug)]
pub struct UpstreamNameArgs {
    /// The token's user id
    #[arg(long = "user", value_name = "ID")]
    pub user: String,
    /// The X-MCP-Project value the client sends (auto isolation)
    #[arg(long, value_name = "P")]
    pub project: Option<String>,
    /// One JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

/// What `{scope}` and `{user}` stand for in a request by `user` (with
/// `project`), and the upstream that makes.
pub fn run(config: &Config, args: &UpstreamNameArgs) -> anyhow::Result<String> {
    if args.user.is_empty() {
        anyhow::bail!("--user must not be empty");
    }
    let identity = Identity {
        user_id: args.user.clone(),
        permissions: Permissions::default(),
        token_prefix: String::new(),
    };
    let scope = scope_for(&identity, &config.isolation.mode(), args.project.as_deref());
    let template = &config.mcp.upstream;
    let templated = is_template(template);
    let upstream = expand(template, &scope, &args.user);
    if args.json {
        return Ok(json!({
            "scope": scope,
            "scope_label": host_label(&scope),
            "user_label": host_label(&args.user),
            "upstream": upstream,
            "templated": templated,
        })
        .to_string());
    }
    let note = if config.mcp.spawn.is_some() {
        "   ([mcp.spawn]: memgate starts this scope's process and picks {port})"
    } else if templated {
        ""
    } else {
        "   (mcp.upstream has no {scope} or {user}: every user shares it)"
    };
    Ok(format!(
        "scope     {scope}\n{{scope}}   {}\n{{user}}    {}\nupstream  {upstream}{note}",
        host_label(&scope),
        host_label(&args.user),
    ))
}
