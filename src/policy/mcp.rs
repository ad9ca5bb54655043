//! The MCP policy (docs/design.md §5): turns (identity, scope, JSON-RPC body) into
//! `Forward` (possibly rewritten, possibly waiting on ownership checks) or
//! `Deny` with a JSON-RPC error body, with no I/O.
//!
//! The proxy drives it like this on a `POST` to the MCP path (Streamable HTTP
//! or legacy `/messages/`):
//!
//! 1. [`origin_allowed`] on the `Origin` header (403 when refused).
//! 2. Read the body, then [`McpPolicy::decide`]. Only `tools/call` is
//!    policed: the tool's permission, its user arguments forced to the scope,
//!    its memory-id arguments turned into [`OwnerCheck`]s. Everything else
//!    (initialize, ping, tools/list, resources, prompts, notifications, the
//!    client's responses to server requests) passes untouched.
//! 3. When [`McpForward::need_owners`] is not empty, look each memory up
//!    (owner cache, else `GET {mem0}/memories/{id}`) and call
//!    [`decide_owners`].
//! 4. Fix mirrored headers with [`param_header_rewrites`] and forward
//!    [`McpForward::body`] (or the client's body when `None`).
//! 5. On the response (JSON, or each event of a `text/event-stream` through
//!    [`crate::policy::sse::SseRewriter`]), hide tools the token may not call
//!    with [`McpPolicy::filter_tools_list`] for the ids of step 2's
//!    `tools/list` requests ([`McpForward::tools_list_ids`]).
//!
//! `GET` and `DELETE` on the MCP path carry no JSON-RPC body and are not
//! given to [`McpPolicy::decide`] (an empty body is a parse error).

mod arguments;
mod fuzz;
mod head;
mod headers;
mod origin;
#[cfg(test)]
mod proptests;
mod rpc;
mod rules;
#[cfg(test)]
mod tests;
mod tools_list;

pub use fuzz::{forwards_only_scope, fuzz_entry};
pub use head::{HeadRefused, MCP_SESSION_ID, McpHead, admit_head};
pub use headers::{
    PARAM_HEADER_PREFIX, decode_param_value, encode_param_value, is_param_header,
    param_header_rewrites,
};
pub use origin::origin_allowed;
pub use rpc::{
    FORBIDDEN, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, NOT_FOUND, PARSE_ERROR,
    RATE_LIMITED, UNAUTHORIZED, code_for_status, error_body, error_object,
};
pub use rules::{
    STANDARD_MEMORY_ID_ARGS, STANDARD_USER_ARGS, ScopedBy, ToolRule, UnknownTools,
    default_secret_scan, default_tool_rules,
};
pub use tools_list::tools_list_ids;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::deny::Deny;
use super::query::Query;
use super::secrets::{Finding, SecretGuard, ValueOutcome};
use super::sse::SseEvent;
use super::{json, mem0};
use crate::identity::{Identity, Permission};
use arguments::{MemoryIds, ScopedArguments};
use rpc::Refusal;

/// The JSON-RPC method memgate polices.
pub const TOOLS_CALL: &str = "tools/call";

/// The method whose results [`McpPolicy::filter_tools_list`] filters.
pub const TOOLS_LIST: &str = "tools/list";

/// The `[mcp]` settings the policy depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct McpPolicy {
    /// Rules by exact tool name: [`default_tool_rules`], then the config's
    /// `[mcp.tools.<name>]` tables inserted over them.
    pub tools: BTreeMap<String, ToolRule>,
    /// `mcp.unknown_tools`: what happens to a tool with no rule.
    pub unknown_tools: UnknownTools,
    /// The permission an allowed unknown tool needs. Default `write`: memgate
    /// cannot tell whether a tool it does not know changes data.
    pub unknown_tool_permission: Permission,
    /// Whether each scope reaches an upstream of its own (a templated or
    /// spawned upstream, or `global` isolation where everyone shares one
    /// scope): only then are `scoped_by = "upstream"` tools callable.
    pub upstream_per_scope: bool,
    /// Deepest JSON nesting accepted (top-level object = 1), at most 100.
    pub max_json_depth: usize,
    /// Most memory ids one body may ask memgate to look up.
    pub max_owner_checks: usize,
}

impl Default for McpPolicy {
    fn default() -> McpPolicy {
        McpPolicy {
            tools: default_tool_rules(),
            unknown_tools: UnknownTools::Deny,
            unknown_tool_permission: Permission::Write,
            upstream_per_scope: false,
            max_json_depth: 32,
            max_owner_checks: 64,
        }
    }
}

/// One message of a request body with a `method` (a request or a
/// notification), for metrics (`mcp_requests_total{method,tool}`) and audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallInfo {
    pub method: String,
    /// `params.name` of a `tools/call`, when it is a string.
    pub tool: Option<String>,
    /// `None` for a notification.
    pub id: Option<Value>,
}

/// A memory a `tools/call` names, whose owner must be checked before the
/// body is forwarded ([`decide_owners`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerCheck {
    pub memory_id: String,
    /// The id of the request naming it (`null` for a notification).
    pub request_id: Value,
    pub tool: String,
}

/// What to forward.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct McpForward {
    /// `Some`: send these bytes instead of the client's body (and fix
    /// Content-Length). `None`: send the client's body unchanged.
    pub body: Option<Vec<u8>>,
    /// (argument, forwarded value) of every user argument the forwarded
    /// `tools/call`s carry; give them to [`param_header_rewrites`].
    pub param_headers: Vec<(String, String)>,
    /// Ownership checks to pass before forwarding ([`decide_owners`]).
    pub need_owners: Vec<OwnerCheck>,
    /// Every request and notification in the body, in order.
    pub calls: Vec<CallInfo>,
}

impl McpForward {
    /// Ids of the `tools/list` requests forwarded: the responses to filter.
    pub fn tools_list_ids(&self) -> Vec<Value> {
        self.calls
            .iter()
            .filter(|call| call.method == TOOLS_LIST)
            .filter_map(|call| call.id.clone())
            .filter(|id| !id.is_null())
            .collect()
    }
}

/// What the secret guard made of a `tools/call` ([`McpPolicy::scan_secrets`]).
#[derive(Debug)]
pub enum SecretScan {
    /// Nothing found, or not a `tools/call`: the body goes on as sent.
    Clean,
    /// Send `body` instead: the same message with every secret replaced.
    Redacted {
        body: Vec<u8>,
        findings: Vec<Finding>,
    },
    /// Refuse the call in-band with `deny`.
    Refused { deny: McpDeny, finding: Finding },
}

/// A refusal, ready to send: `status` with `body` as `application/json`.
#[derive(Clone, Debug, PartialEq)]
pub struct McpDeny {
    pub status: u16,
    /// The first refusal's reason, for logs and audit.
    pub message: String,
    /// One JSON-RPC error object carrying the refused request's id.
    pub body: Vec<u8>,
    /// Method and tool of the first refused message, when it had a method
    /// (metrics, audit); the body carries its id.
    pub method: Option<String>,
    pub tool: Option<String>,
}

impl McpDeny {
    /// A policy [`Deny`] from elsewhere (authentication, limits, session
    /// ownership) as a JSON-RPC error for the request `id`.
    pub fn from_deny(deny: &Deny, id: &Value) -> McpDeny {
        McpDeny {
            status: deny.status,
            message: deny.message.clone(),
            body: error_body(id, code_for_status(deny.status), &deny.message),
            method: None,
            tool: None,
        }
    }

    fn single(refusal: Refusal) -> McpDeny {
        let body = json::to_bytes(&refusal.to_error_object());
        let (method, tool) = match refusal.call {
            Some(call) => (Some(call.method), call.tool),
            None => (None, None),
        };
        McpDeny {
            status: refusal.status,
            message: refusal.message,
            body,
            method,
            tool,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum McpDecision {
    Forward(McpForward),
    Deny(McpDeny),
}

impl McpPolicy {
    /// The rule for `tool`: its own, the unknown-tool rule, or a 403 when
    /// unknown tools are denied. Unknown tools still have `user_id`/`userId`
    /// checked and forced, and `memory_id`/`memoryId` strings checked for
    /// ownership, like every tool.
    pub fn rule_for(&self, tool: &str) -> Option<Cow<'_, ToolRule>> {
        match (self.tools.get(tool), self.unknown_tools) {
            (Some(rule), _) => Some(Cow::Borrowed(rule)),
            (None, UnknownTools::Deny) => None,
            (None, UnknownTools::Allow) => Some(Cow::Owned(ToolRule {
                permission: self.unknown_tool_permission,
                scoped_by: ScopedBy::Argument,
                user_args: Vec::new(),
                memory_id_args: STANDARD_MEMORY_ID_ARGS.map(str::to_owned).to_vec(),
                inject_user: false,
                secret_scan: None,
            })),
        }
    }

    /// Whether `identity` may call `tool` at all (its permission, or for an
    /// unknown tool `unknown_tools` and the unknown-tool permission), on this
    /// upstream.
    pub fn may_call(&self, identity: &Identity, tool: &str) -> bool {
        self.rule_for(tool).is_some_and(|rule| {
            identity.permissions.allows(rule.permission) && self.upstream_keeps_apart(&rule)
        })
    }

    /// Whether the upstream keeps users apart for a tool with `rule`.
    fn upstream_keeps_apart(&self, rule: &ToolRule) -> bool {
        rule.scoped_by != ScopedBy::Upstream || self.upstream_per_scope
    }

    /// Tools refused because they need an upstream per scope and this one
    /// is shared (for the warning `serve` logs at start).
    pub fn tools_refused_on_shared_upstream(&self) -> Vec<&str> {
        if self.upstream_per_scope {
            return Vec::new();
        }
        self.tools
            .iter()
            .filter(|(_, rule)| rule.scoped_by == ScopedBy::Upstream)
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// A bounded metrics label for a tool: its rule's name, else `unknown`.
    pub fn tool_label<'a>(&'a self, tool: &str) -> &'a str {
        self.tools
            .get_key_value(tool)
            .map_or("unknown", |(name, _)| name.as_str())
    }

    /// The secret guard on a `tools/call`: the tool's `secret_scan` arguments
    /// (its rule's, else the shipped list for its name) scanned, and the body
    /// with every secret replaced. Anything that is not one well-formed
    /// `tools/call` is left to [`Self::decide`], which refuses what it cannot read.
    pub fn scan_secrets(&self, guard: &SecretGuard, body: &[u8]) -> SecretScan {
        if guard.certainly_clean(body) {
            return SecretScan::Clean;
        }
        let Ok(mut message) = json::parse_value(body, self.max_json_depth) else {
            return SecretScan::Clean;
        };
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let Some(params) = message
            .as_object_mut()
            .filter(|m| m.get("method").and_then(Value::as_str) == Some(TOOLS_CALL))
            .and_then(|m| m.get_mut("params"))
            .and_then(Value::as_object_mut)
        else {
            return SecretScan::Clean;
        };
        let Some(tool) = params
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return SecretScan::Clean;
        };
        let fields: Vec<&str> = match self.tools.get(&tool) {
            Some(rule) => rule.secret_scan_args(&tool),
            None => default_secret_scan(&tool).to_vec(),
        };
        let Some(arguments) = params.get_mut("arguments").and_then(Value::as_object_mut) else {
            return SecretScan::Clean;
        };
        match guard.scan_tool_arguments(&fields, arguments) {
            ValueOutcome::Clean => SecretScan::Clean,
            ValueOutcome::Refused { finding } => {
                let mut deny = McpDeny::from_deny(&Deny::forbidden(finding.to_string()), &id);
                deny.method = Some(TOOLS_CALL.to_owned());
                deny.tool = Some(self.tool_label(&tool).to_owned());
                SecretScan::Refused { deny, finding }
            }
            ValueOutcome::Redacted { findings } => SecretScan::Redacted {
                body: json::to_bytes(&message),
                findings,
            },
        }
    }

    /// Decides a request body (one message); see the module docs. A JSON-RPC
    /// batch is refused (400): MCP no longer has batches, and one body that
    /// mixes calls memgate would forward and refuse has no single answer.
    pub fn decide(&self, identity: &Identity, scope: &str, body: &[u8]) -> McpDecision {
        let mut message = match json::parse_value(body, self.max_json_depth) {
            Ok(Value::Array(_)) => {
                return McpDecision::Deny(McpDeny::single(Refusal::new(
                    400,
                    INVALID_REQUEST,
                    "Invalid Request: JSON-RPC batches are not accepted; send one message per request",
                    Value::Null,
                )));
            }
            Ok(parsed) => parsed,
            Err(err) => return McpDecision::Deny(McpDeny::single(Refusal::unparsed(&err))),
        };
        let mut forward = McpForward::default();
        let changed = match self.check_message(identity, scope, &mut message, &mut forward) {
            Ok(changed) => changed,
            Err(refusal) => return McpDecision::Deny(McpDeny::single(refusal)),
        };
        if forward.need_owners.len() > self.max_owner_checks {
            return McpDecision::Deny(McpDeny::single(Refusal::invalid_request(
                Value::Null,
                format!(
                    "Invalid Request: at most {} memory ids may be named in one request",
                    self.max_owner_checks
                ),
            )));
        }
        if changed {
            forward.body = Some(json::to_bytes(&message));
        }
        McpDecision::Forward(forward)
    }

    /// One message; `Ok(true)` when it was rewritten.
    fn check_message(
        &self,
        identity: &Identity,
        scope: &str,
        message: &mut Value,
        forward: &mut McpForward,
    ) -> Result<bool, Refusal> {
        let Value::Object(object) = message else {
            return Err(Refusal::invalid_request(
                Value::Null,
                "Invalid Request: a JSON-RPC message must be an object",
            ));
        };
        let id = rpc::message_id(object)?;
        let reply_id = id.clone().unwrap_or(Value::Null);
        let answers = object.contains_key("result") || object.contains_key("error");
        let method = match object.get("method") {
            // The client's answer to a server request: not ours to police.
            None if answers => return Ok(false),
            None => {
                return Err(Refusal::invalid_request(
                    reply_id,
                    "Invalid Request: a message needs a method, a result or an error",
                ));
            }
            Some(Value::String(method)) => method.clone(),
            Some(_) => {
                return Err(Refusal::invalid_request(
                    reply_id,
                    "Invalid Request: method must be a string",
                ));
            }
        };
        if answers {
            return Err(Refusal::invalid_request(
                reply_id,
                "Invalid Request: a request cannot carry a result or an error",
            ));
        }
        let mut call = CallInfo {
            method,
            tool: None,
            id,
        };
        // A tools/call is policed whatever its id: a notification-shaped call
        // must not slip past to a lenient server.
        if call.method != TOOLS_CALL {
            forward.calls.push(call);
            return Ok(false);
        }
        let scoped = self.check_tool_call(identity, scope, object, &reply_id, &mut call);
        match scoped {
            Ok(scoped) => {
                let tool = call.tool.clone().unwrap_or_default();
                forward
                    .need_owners
                    .extend(scoped.memory_ids.into_iter().map(|memory_id| OwnerCheck {
                        memory_id,
                        request_id: reply_id.clone(),
                        tool: tool.clone(),
                    }));
                for pair in scoped.user_values {
                    if !forward.param_headers.contains(&pair) {
                        forward.param_headers.push(pair);
                    }
                }
                forward.calls.push(call);
                Ok(scoped.changed)
            }
            Err(mut refusal) => {
                refusal.call = Some(Box::new(call));
                Err(refusal)
            }
        }
    }

    /// A `tools/call`, scoped.
    fn check_tool_call(
        &self,
        identity: &Identity,
        scope: &str,
        object: &mut Map<String, Value>,
        id: &Value,
        call: &mut CallInfo,
    ) -> Result<ScopedArguments, Refusal> {
        let Some(Value::Object(params)) = object.get_mut("params") else {
            return Err(Refusal::invalid_params(
                id.clone(),
                "Invalid params: tools/call needs params as an object",
            ));
        };
        let Some(Value::String(tool)) = params.get("name") else {
            return Err(Refusal::invalid_params(
                id.clone(),
                "Invalid params: params.name must be a string",
            ));
        };
        let tool = tool.clone();
        call.tool = Some(tool.clone());
        let denied = |message: String| Refusal::new(403, FORBIDDEN, message, id.clone());
        let Some(rule) = self.rule_for(&tool) else {
            return Err(denied(format!(
                "Access denied: tool {} has no rule in memgate, which cannot tell how it keeps \
                 users apart; an operator can add one ([mcp.tools.{}] with permission and \
                 scoped_by) or set mcp.unknown_tools = \"allow\"",
                quoted(&tool),
                config_key(&tool)
            )));
        };
        if !identity.permissions.allows(rule.permission) {
            return Err(denied(format!(
                "Access denied: tool {} needs the {} permission, which this token lacks",
                quoted(&tool),
                rule.permission.as_str()
            )));
        }
        if !self.upstream_keeps_apart(&rule) {
            return Err(denied(format!(
                "Access denied: tool {} keeps users apart only when each user has an MCP \
                 server of their own, and this one is shared by every user; an operator can \
                 give each user one ([mcp.spawn], or {{scope}} in mcp.upstream)",
                quoted(&tool)
            )));
        }
        if scope.is_empty() {
            // An empty user_id reads as "no owner filter" to mem0.
            return Err(denied(format!(
                "Access denied: user {} has no memory scope",
                identity.user_id
            )));
        }
        let mut created = false;
        if matches!(params.get("arguments"), None | Some(Value::Null)) {
            if !rule.inject_user {
                return Ok(ScopedArguments::default());
            }
            params.insert("arguments".to_owned(), Value::Object(Map::new()));
            created = true;
        }
        let Some(Value::Object(arguments)) = params.get_mut("arguments") else {
            return Err(Refusal::invalid_params(
                id.clone(),
                "Invalid params: params.arguments must be an object",
            ));
        };
        let mode = if self.tools.contains_key(&tool) {
            MemoryIds::Strict
        } else {
            MemoryIds::StringsOnly
        };
        let mut scoped = arguments::scope_arguments(
            identity,
            scope,
            &rule,
            mode,
            arguments,
            self.max_json_depth,
        )
        .map_err(|deny| Refusal::from_tool_deny(deny, id.clone()))?;
        scoped.changed |= created;
        Ok(scoped)
    }

    /// Filters the `tools/list` results in a response body (one message or a
    /// batch): for the responses whose id is in `ids`, drops every tool the
    /// token may not call ([`may_call`](Self::may_call)). `None` when nothing
    /// was dropped, or the body is not JSON memgate reads (it is then passed
    /// on as it is: the calls themselves are still policed).
    pub fn filter_tools_list(
        &self,
        identity: &Identity,
        response: &[u8],
        ids: &[Value],
    ) -> Option<Vec<u8>> {
        tools_list::filter(response, ids, |tool| self.may_call(identity, tool))
    }

    /// [`filter_tools_list`](Self::filter_tools_list) on the data of one
    /// server-sent event; `true` when the event was rewritten.
    pub fn filter_sse_event(
        &self,
        identity: &Identity,
        event: &mut SseEvent,
        ids: &[Value],
    ) -> bool {
        let Some(data) = event.data.as_deref() else {
            return false;
        };
        let Some(filtered) = self.filter_tools_list(identity, data.as_bytes(), ids) else {
            return false;
        };
        match String::from_utf8(filtered) {
            Ok(text) => {
                event.data = Some(text);
                true
            }
            Err(_) => false,
        }
    }
}

/// Step 3: the ownership checks of [`McpForward::need_owners`], each with the
/// owner found (`None`: no such memory; `Some("")`: stored without a
/// user_id), as [`mem0::decide_owner`] decides them: a memory must exist, and
/// be the scope's unless the token is an admin. A refusal names the memory
/// and the token's user (`Access denied: Memory {id} does not belong to user
/// {user}`, 403, or `Memory {id} not found`, 404) and carries the request's
/// id; the first memory refused answers.
pub fn decide_owners(
    identity: &Identity,
    scope: &str,
    checks: &[(OwnerCheck, Option<String>)],
) -> Result<(), McpDeny> {
    for (check, owner) in checks {
        let Err(deny) = mem0::decide_owner(identity, scope, &check.memory_id, owner.as_deref())
        else {
            continue;
        };
        let message = if deny.status == 404 {
            format!("Memory {} not found", check.memory_id)
        } else {
            deny.message
        };
        let mut refusal = Refusal::new(
            deny.status,
            code_for_status(deny.status),
            message,
            check.request_id.clone(),
        );
        refusal.call = Some(Box::new(CallInfo {
            method: TOOLS_CALL.to_owned(),
            tool: Some(check.tool.clone()),
            id: Some(check.request_id.clone()),
        }));
        return Err(McpDeny::single(refusal));
    }
    Ok(())
}

/// The `session_id` of a legacy `POST /messages/?session_id=…` from its raw
/// query (without `?`), so the proxy can check who owns the session. A
/// repeated `session_id` is a 400: Starlette reads the last one, a naive
/// check the first.
pub fn session_id_from_query(query: Option<&str>) -> Result<Option<String>, Deny> {
    let parsed = Query::parse(query.unwrap_or(""))?;
    let mut values = parsed.pairs().iter().filter(|(key, _)| key == "session_id");
    let first = values.next();
    if values.next().is_some() {
        return Err(Deny::bad_request(
            "Invalid query string: the query parameter session_id is given more than once",
        ));
    }
    Ok(first.map(|(_, value)| value.clone()))
}

/// The form in which memgate binds and compares a session id: the form the
/// upstream reads it in. Streamable HTTP servers look `Mcp-Session-Id` up as
/// the exact string. Legacy SSE servers (the MCP Python SDK) parse
/// `session_id` as a UUID, so case, hyphens, braces and `urn:uuid:` do not
/// make another session: a legacy id that reads as a UUID is its 32
/// lowercase hex digits. Any other legacy id stays as sent; memgate answers
/// only ids it saw the upstream hand out, so a spelling it cannot read is
/// simply one it never saw.
pub fn session_key(id: &str, legacy: bool) -> String {
    if legacy && let Some(uuid) = uuid_hex(id) {
        return uuid;
    }
    id.to_owned()
}

/// The UUID in `text` as Python's `uuid.UUID(text)` finds it (`urn:` and
/// `uuid:` removed, braces stripped from both ends, hyphens dropped), when
/// what is left is 32 ASCII hex digits.
fn uuid_hex(text: &str) -> Option<String> {
    let text = text.replace("urn:", "").replace("uuid:", "");
    let hex: String = text
        .trim_matches(|c| c == '{' || c == '}')
        .chars()
        .filter(|c| *c != '-')
        .collect();
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// A bounded metrics label for a JSON-RPC method: the method when MCP defines
/// it, else `other`.
pub fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 22] = [
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "roots/list",
        "sampling/createMessage",
        "elicitation/create",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
        "notifications/message",
        "notifications/tools/list_changed",
    ];
    KNOWN
        .iter()
        .find(|known| **known == method)
        .copied()
        .unwrap_or("other")
}

/// A tool name as a TOML key in a refusal's advice: bare when TOML allows,
/// else quoted (at most 64 characters either way).
fn config_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare { name.to_owned() } else { quoted(name) }
}

/// A client-chosen name for a message: quoted, at most 64 characters.
fn quoted(name: &str) -> String {
    const MAX_CHARS: usize = 64;
    let short: String = name.chars().take(MAX_CHARS).collect();
    format!("{short:?}")
}
