//! Drives request admission on raw bytes: the input is an HTTP/1.1 request
//! (head, then body), read by memgate's own HTTP/1 code (`http1::head`, and
//! `http1::chunked` for chunked bodies), then
//! taken through what memgate decides before it forwards anything, on both
//! listeners, for three fixed identities (a writer, a reader, an admin) in
//! `manual` and `auto` isolation: the size limits, credential extraction,
//! path and query decoding, and the mem0 and MCP policy decisions.
//!
//! The pure pieces are memgate's own (`http1`, `policy`, `auth::credential`,
//! `token`). Every head passes `policy::admission::admit_head`, and each
//! listener's head `Mem0Policy::admit_head` or `policy::mcp::admit_head`,
//! exactly as the gate calls them. What the gate does between those calls
//! needs I/O (reading the body, asking the store and the upstream), so that
//! glue is mirrored here (each mirror names the function it copies); keep
//! them in step when the proxy changes.
//!
//! Panics when a forwarded request could act outside the caller's scope:
//!
//! - mem0: [`policy::mem0::forwards_only_scope`], the scope itself (non-admin),
//!   the owner decision, and the rewritten target, which must be a valid URI
//!   that mem0 decodes to the very route and memory memgate decided on;
//! - MCP, policed POSTs: [`policy::mcp::forwards_only_scope`], the owner
//!   decision, and the mirrored `Mcp-Param-*` user headers after the rewrite;
//! - MCP, everything streamed without reading the body: when the upstream
//!   (uvicorn + Starlette, which route on the percent-decoded path) would
//!   still treat it as a JSON-RPC POST, its body must name only the scope and
//!   its legacy session must be the caller's.
//!
//! Authentication accepts every well-formed token, issued to each fixed
//! identity in turn (the store lookup is not pure); `X-MCP-UserID` must then
//! name that identity, as `Authenticator::check` requires.
#![no_main]

use http::{HeaderMap, HeaderValue, Method, Uri};

#[allow(dead_code)]
#[path = "../../src/identity.rs"]
mod identity;

#[allow(dead_code, unused_imports)]
#[path = "../../src/policy/mod.rs"]
mod policy;

// The writing half (chunk encoding, response framing) is not driven here.
#[allow(dead_code)]
#[path = "../../src/http1/mod.rs"]
mod http1;

#[allow(dead_code)]
#[path = "../../src/token.rs"]
mod token;

#[allow(dead_code)]
#[path = "../../src/auth/denial.rs"]
mod denial;

// OAuth bearers (`oauth_bearer`) are checked by a verifier that fetches keys:
// this target admits memgate tokens only; `token_parser` drives both readers.
#[allow(dead_code)]
#[path = "../../src/auth/credential.rs"]
mod credential;

use credential::PresentedHeaders;
// `credential.rs` names it `super::Denial`, as in memgate's `auth` module.
use denial::Denial;
use policy::endpoint::McpEndpoint;
use policy::deny::Deny;
use policy::mcp::{
    self, McpDecision, McpForward, McpPolicy, decide_owners, decode_param_value, origin_allowed,
    param_header_rewrites,
};
use policy::mem0::{self, Decision, Forward, Mem0Policy, Route, decide_owner};
use policy::scope::{IsolationMode, scope_for};
use identity::{Identity, Permission, Permissions};
use policy::json;

/// `limits.max_uri_bytes` and `limits.max_header_bytes` at their smallest
/// allowed values, so the fuzzer reaches both refusals.
const MAX_URI_BYTES: usize = 256;
const MAX_HEADER_BYTES: usize = 1024;
const MAX_BODY_BYTES: usize = 64 * 1024;
/// The `[mcp]` defaults: `path`, `sse_path`, `messages_path`.
const MCP_PATH: &str = "/mcp";
const SSE_PATH: &str = "/sse";
const MESSAGES_PATH: &str = "/messages/";
/// `mcp.allowed_paths`: one other path, streamed through like the endpoints.
const ALLOWED_PATH: &str = "/health";
const ALLOWED_ORIGIN: &str = "https://app.example";
/// A legacy or Streamable session bound to `bob`, whom no identity here is.
const FOREIGN_SESSION: &str = "bobs-session";

const IDENTITIES: [(&str, &str); 3] = [
    ("alice", "read,write"),
    ("reader", "read"),
    ("root", "admin"),
];

/// A request as the gate sees it once its head was read.
struct Request {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// The body: Content-Length bytes, or the chunks decoded; `None` when
    /// it is cut short or its framing is broken (the gate answers 400).
    body: Option<Vec<u8>>,
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(request) = parse(data) {
        admit(&request);
    }
});

// ---------------------------------------------------------------------------
// Reading: `listener::h1::H1Session::read_request` and its body reads.

fn parse(data: &[u8]) -> Option<Request> {
    let mut buf = bytes::BytesMut::from(data);
    let head = http1::head::take_request(&mut buf).ok()??;
    let body = match head.framing {
        http1::head::Framing::Empty | http1::head::Framing::UntilClose => Some(Vec::new()),
        http1::head::Framing::Length(n) => {
            usize::try_from(n).ok().and_then(|n| buf.get(..n)).map(<[u8]>::to_vec)
        }
        http1::head::Framing::Chunked => dechunk(&mut buf),
    };
    Some(Request {
        method: head.parts.method,
        uri: head.parts.uri,
        headers: head.parts.headers,
        body,
    })
}

/// The chunked body, decoded; `None` when it is broken or cut short.
fn dechunk(buf: &mut bytes::BytesMut) -> Option<Vec<u8>> {
    use http1::chunked::{ChunkedDecoder, Decoded};
    let mut decoder = ChunkedDecoder::request();
    let mut body = Vec::new();
    loop {
        match decoder.decode(buf).ok()? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::NeedMore => return None,
            Decoded::Done => return Some(body),
        }
    }
}

// ---------------------------------------------------------------------------
// `proxy::Gate::handle` up to the listener's flow.

fn admit(request: &Request) {
    // `policy::admission::admit_head`, as the gate calls it.
    let limits = policy::admission::HeadLimits {
        max_uri_bytes: MAX_URI_BYTES,
        max_header_bytes: MAX_HEADER_BYTES,
    };
    if policy::admission::admit_head(&request.method, &request.uri, &request.headers, limits)
        .is_err()
    {
        return;
    }
    let presented = PresentedHeaders {
        x_mcp_token: all(&request.headers, "x-mcp-token"),
        authorization: all(&request.headers, "authorization"),
        x_mcp_user_id: all(&request.headers, "x-mcp-userid"),
    };
    let credential = match credential::extract(&presented) {
        Ok(credential) => credential,
        Err(denial) => {
            assert!(matches!(
                denial,
                Denial::Missing | Denial::Malformed | Denial::UserMismatch
            ));
            return;
        }
    };
    assert!(token::is_well_formed(credential.token));
    let mem0_policy = Mem0Policy {
        allowed_routes: vec![("GET".to_owned(), "/docs".to_owned())],
        max_body_bytes: MAX_BODY_BYTES,
        max_json_depth: 16,
        ..Mem0Policy::default()
    };
    let mcp = McpPolicy {
        max_json_depth: 16,
        ..McpPolicy::default()
    };
    let mcp_refused = mcp_origin_refused(request);
    for (user_id, permissions) in IDENTITIES {
        // `Authenticator::check`: a claimed user must be the token's.
        if credential
            .claimed_user_id
            .is_some_and(|claimed| claimed != user_id)
        {
            continue;
        }
        let identity = Identity {
            user_id: user_id.to_owned(),
            permissions: Permissions::parse(permissions).unwrap_or_default(),
            token_prefix: token::display_prefix(credential.token).to_owned(),
        };
        for mode in [IsolationMode::Manual, IsolationMode::Auto] {
            let mem0_policy = Mem0Policy {
                mode: mode.clone(),
                ..mem0_policy.clone()
            };
            mem0_flow(&mem0_policy, &identity, request);
            if !mcp_refused {
                mcp_flow(&mcp, &mode, &identity, request);
            }
        }
    }
}

/// `proxy::presented`: every value of a header, as bytes.
fn all<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect()
}

/// `proxy::headers::single`: the one value, trimmed; several, or one that is
/// not text, is a 400.
fn single(headers: &HeaderMap, name: &str) -> Result<Option<String>, Deny> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Deny::bad_request(format!("{name} sent more than once")));
    }
    first
        .map(|v| {
            v.to_str()
                .map(|s| s.trim().to_owned())
                .map_err(|_| Deny::bad_request(format!("{name} is not text")))
        })
        .transpose()
}

/// `proxy::body::read_whole`'s checks on the body as read. `Err` is a
/// refusal; a short or broken body is a read error (400).
fn read_body(request: &Request, limit: usize) -> Result<Option<&[u8]>, Deny> {
    let encoding = single(&request.headers, "content-encoding")?;
    if encoding.is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
        return Err(Deny::unsupported_media_type());
    }
    let body = framed_body(request)?;
    if let Some(declared) = single(&request.headers, "content-length")? {
        match declared.parse::<usize>() {
            Ok(n) if n > limit => return Err(Deny::payload_too_large(limit)),
            Ok(_) => {}
            Err(_) => return Err(Deny::bad_request("Invalid Content-Length")),
        }
    }
    if body.len() > limit {
        return Err(Deny::payload_too_large(limit));
    }
    Ok((!body.is_empty()).then_some(body))
}

fn framed_body(request: &Request) -> Result<&[u8], Deny> {
    request
        .body
        .as_deref()
        .ok_or_else(|| Deny::bad_request("The request body could not be read"))
}

// ---------------------------------------------------------------------------
// The mem0 listener: `proxy::mem0::Mem0Flow::decide` after the head.

fn mem0_flow(policy: &Mem0Policy, identity: &Identity, request: &Request) {
    let query = request.uri.query();
    // `Mem0Flow::decide` admits the head with the same pure function.
    let Ok(head) = policy.admit_head(
        identity,
        request.method.as_str(),
        &request.uri,
        &request.headers,
    ) else {
        return;
    };
    let mem0::Mem0Head { matched, scope } = head;
    if matched.route == Route::AllowListed {
        if let Decision::Forward(forward) =
            policy.authorise(identity, &scope, &matched, query, None, None)
        {
            check_mem0_forward(policy, identity, &scope, &matched, &forward, None);
        }
        return;
    }
    let Ok(content_type) = single(&request.headers, "content-type") else {
        return;
    };
    let Ok(body) = read_body(request, policy.max_body_bytes) else {
        return;
    };
    let decision = policy.authorise(
        identity,
        &scope,
        &matched,
        query,
        content_type.as_deref(),
        body,
    );
    let forward = match decision {
        Decision::Deny(deny) => {
            assert!(
                matches!(deny.status, 400 | 403 | 404 | 405 | 413 | 415),
                "{deny}"
            );
            return;
        }
        Decision::Forward(forward) => forward,
        Decision::NeedOwner(need) => {
            let is_admin = identity.permissions.allows(Permission::Admin);
            for owner in [None, Some(""), Some(scope.as_str()), Some("mallory")] {
                let allowed = decide_owner(identity, &need.scope, &need.memory_id, owner).is_ok();
                assert!(!allowed || owner.is_some());
                assert!(!allowed || is_admin || owner == Some(scope.as_str()));
            }
            assert_eq!(
                need.memory_id.as_str(),
                matched.memory_id.as_deref().unwrap_or("")
            );
            need.forward
        }
    };
    check_mem0_forward(policy, identity, &scope, &matched, &forward, body);
}

fn check_mem0_forward(
    policy: &Mem0Policy,
    identity: &Identity,
    scope: &str,
    matched: &mem0::RouteMatch,
    forward: &Forward,
    client_body: Option<&[u8]>,
) {
    let is_admin = identity.permissions.allows(Permission::Admin);
    assert!(
        mem0::forwards_only_scope(forward, client_body),
        "{forward:?}"
    );
    assert!(is_admin || forward.route == Route::AllowListed || forward.scope == scope);
    // `path_and_query(forward)` becomes the upstream request line…
    let target = match &forward.query {
        Some(query) => format!("{}?{query}", forward.path),
        None => forward.path.clone(),
    };
    let uri = Uri::builder()
        .path_and_query(target.as_str())
        .build()
        .unwrap_or_else(|e| panic!("rewritten target {target:?} is not a URI: {e}"));
    // …which mem0 decodes back to the very route and memory memgate decided on.
    let again = policy
        .route(&matched.method, uri.path())
        .unwrap_or_else(|deny| panic!("rewritten path {:?} refused: {deny}", uri.path()));
    assert_eq!(again.route, matched.route, "{target:?}");
    assert_eq!(again.path, matched.path, "{target:?}");
    assert_eq!(again.memory_id, matched.memory_id, "{target:?}");
    assert_eq!(uri.query(), forward.query.as_deref(), "{target:?}");
}

// ---------------------------------------------------------------------------
// The MCP listener: `proxy::mcp::McpFlow::check_origin` and `handle`.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Streamable,
    LegacyStream,
    LegacyMessages,
    Other,
}

/// How the upstream routes a (decoded) path: exact, one trailing `/` ignored.
fn upstream_endpoint(path: &str) -> Endpoint {
    fn bare(path: &str) -> &str {
        match path.strip_suffix('/') {
            Some(rest) if !rest.is_empty() => rest,
            _ => path,
        }
    }
    let path = bare(path);
    if path == bare(MCP_PATH) {
        Endpoint::Streamable
    } else if path == bare(SSE_PATH) {
        Endpoint::LegacyStream
    } else if path == bare(MESSAGES_PATH) {
        Endpoint::LegacyMessages
    } else {
        Endpoint::Other
    }
}

/// `McpFlow::check_origin`: whether a response was sent before authentication
/// (foreign or repeated Origin, or a CORS preflight).
fn mcp_origin_refused(request: &Request) -> bool {
    let sent = request.headers.get_all("origin");
    let texts: Vec<&str> = sent.iter().filter_map(|v| v.to_str().ok()).collect();
    let origin = match texts.as_slice() {
        [] => return false,
        [one] if sent.iter().count() == 1 => *one,
        _ => return true,
    };
    if !origin_allowed(Some(origin), &[ALLOWED_ORIGIN.to_owned()]) {
        return true;
    }
    request.method == Method::OPTIONS
        && request
            .headers
            .contains_key("access-control-request-method")
}

fn mcp_flow(policy: &McpPolicy, mode: &IsolationMode, identity: &Identity, request: &Request) {
    let project = request
        .headers
        .get("x-mcp-project")
        .and_then(|v| v.to_str().ok());
    let scope = scope_for(identity, mode, project);
    // `McpFlow::handle` admits the head with the same pure function.
    let paths = policy::endpoint::McpPaths::new(MCP_PATH, SSE_PATH, MESSAGES_PATH)
        .allowing(&[ALLOWED_PATH.to_owned()]);
    let Ok(head) = mcp::admit_head(&paths, &request.method, &request.uri, &request.headers) else {
        return;
    };
    let endpoint = match head.endpoint {
        McpEndpoint::Streamable => Endpoint::Streamable,
        McpEndpoint::LegacyStream => Endpoint::LegacyStream,
        McpEndpoint::LegacyMessages => Endpoint::LegacyMessages,
        McpEndpoint::Other => Endpoint::Other,
    };
    let session_id = head.session_id;
    // `SessionBindings::check`: another user's session is a 404; an unknown
    // one is bound to this user.
    if session_id.as_deref() == Some(FOREIGN_SESSION) {
        return;
    }
    if !head.posts_jsonrpc {
        check_streamed(policy, identity, &scope, request);
        return;
    }
    if endpoint == Endpoint::LegacyMessages {
        assert_eq!(
            upstream_session(request).map(|id| mcp::session_key(&id, true)),
            session_id,
            "the upstream posts to another session than memgate checked"
        );
    }
    let Ok(body) = read_body(request, MAX_BODY_BYTES) else {
        return;
    };
    let body = body.unwrap_or_default();
    let forward = match policy.decide(identity, &scope, body) {
        McpDecision::Deny(deny) => {
            assert!(matches!(deny.status, 400 | 403), "{deny:?}");
            return;
        }
        McpDecision::Forward(forward) => forward,
    };
    assert!(
        mcp::forwards_only_scope(policy, identity, &scope, body, &forward),
        "{forward:?}"
    );
    let is_admin = identity.permissions.allows(Permission::Admin);
    for owner in [None, Some(""), Some(scope.as_str()), Some("mallory")] {
        let checks: Vec<_> = forward
            .need_owners
            .iter()
            .map(|check| (check.clone(), owner.map(str::to_owned)))
            .collect();
        if !checks.is_empty() && decide_owners(identity, &scope, &checks).is_ok() {
            assert!(owner.is_some() && (is_admin || owner == Some(scope.as_str())));
        }
    }
    if !is_admin {
        check_param_headers(request, &scope, &forward);
    }
}

/// `McpFlow::upstream_request`'s header rewrite: afterwards every text
/// `Mcp-Param-user_id`/`userId` header says the scope.
fn check_param_headers(request: &Request, scope: &str, forward: &McpForward) {
    let mut present: Vec<(String, String)> = request
        .headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    for (name, value) in param_header_rewrites(&present, &forward.param_headers) {
        present.retain(|(other, _)| !other.eq_ignore_ascii_case(&name));
        if let Some(value) = value {
            present.push((name.to_ascii_lowercase(), value));
        }
    }
    for (name, value) in &present {
        let Some(argument) = name.strip_prefix(mcp::PARAM_HEADER_PREFIX) else {
            continue;
        };
        if mcp::STANDARD_USER_ARGS
            .iter()
            .any(|user| user.eq_ignore_ascii_case(argument))
        {
            assert_eq!(
                decode_param_value(value).as_deref(),
                Some(scope),
                "{name}: {value}"
            );
        }
    }
}

/// A request `handle` streams through unread (`McpHandled::Stream`). The
/// upstream routes on the percent-decoded path (uvicorn's `unquote`); if it
/// takes this for a JSON-RPC POST, what it reads must still be the caller's.
///
/// `ADMISSION_SKIP_STREAMED=1` turns this check off. It found that endpoints
/// were matched on the raw path, so `POST /%6Dcp` was streamed unpoliced to an
/// upstream that routes it to `/mcp` (fuzz/regressions/admission/; fixed by
/// `policy::endpoint`).
fn check_streamed(policy: &McpPolicy, identity: &Identity, scope: &str, request: &Request) {
    static SKIP: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        std::env::var_os("ADMISSION_SKIP_STREAMED").is_some_and(|v| v == "1")
    });
    if *SKIP || request.method != Method::POST || identity.permissions.allows(Permission::Admin) {
        return;
    }
    let upstream = upstream_endpoint(&unquote(request.uri.path()));
    if !matches!(upstream, Endpoint::Streamable | Endpoint::LegacyMessages) {
        return;
    }
    if upstream == Endpoint::LegacyMessages {
        assert_ne!(
            upstream_session(request).as_deref(),
            Some(FOREIGN_SESSION),
            "{:?} reaches another user's legacy session unchecked",
            request.uri
        );
    }
    let Ok(body) = framed_body(request) else {
        return;
    };
    if json::parse_value(body, usize::MAX).is_ok() {
        assert!(
            mcp::forwards_only_scope(policy, identity, scope, body, &McpForward::default()),
            "{:?} reaches the upstream's JSON-RPC endpoint unpoliced: {}",
            request.uri,
            String::from_utf8_lossy(body)
        );
    }
}

/// Python's `urllib.parse.unquote`: valid escapes decoded, others kept, then
/// UTF-8 with replacement.
fn unquote(text: &str) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&b) = bytes.get(at) {
        let escape = match bytes.get(at + 1..at + 3) {
            Some(&[hi, lo]) if b == b'%' => hex(hi).zip(hex(lo)),
            _ => None,
        };
        match escape {
            Some((hi, lo)) => {
                out.extend(u8::try_from(hi * 16 + lo));
                at += 3;
            }
            None => {
                out.push(b);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The legacy session the upstream posts to: Starlette's
/// `query_params.get("session_id")`, the last one sent.
fn upstream_session(request: &Request) -> Option<String> {
    request
        .uri
        .query()
        .unwrap_or("")
        .rsplit('&')
        .find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (unquote(&key.replace('+', " ")) == "session_id")
                .then(|| unquote(&value.replace('+', " ")))
        })
}
