//! What the MCP listener decides from a request head alone, once the caller
//! is authenticated: which endpoint it is, whether the method and headers
//! may pass, and which session it uses. The gate's MCP flow and the
//! `admission` fuzz target call this one function.

use http::{HeaderMap, HeaderName, Method, Uri};

use super::{session_id_from_query, session_key};
use crate::policy::deny::Deny;
use crate::policy::endpoint::{McpEndpoint, McpPaths};
use crate::policy::header_names::{self, X_MCP_PROJECT};
use crate::policy::method_override;

/// The Streamable HTTP session header.
pub const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");

/// An admitted MCP request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct McpHead {
    pub endpoint: McpEndpoint,
    /// The session the request uses (the header, or the legacy query
    /// parameter), in the form the upstream reads it in ([`session_key`]).
    pub session_id: Option<String>,
    /// A JSON-RPC POST, whose body the policy reads; anything else is
    /// streamed through.
    pub posts_jsonrpc: bool,
}

/// A refused head: the denial, and the `Allow` value of a 405.
pub type HeadRefused = (Deny, Option<String>);

/// Endpoint → method → method overrides → project header → session id, in
/// that order.
pub fn admit_head(
    paths: &McpPaths,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<McpHead, HeadRefused> {
    let endpoint = paths.classify(uri.path()).map_err(|deny| (deny, None))?;
    endpoint
        .check_method(method.as_str())
        .map_err(|(deny, allow)| (deny, Some(allow)))?;
    method_override::refuse(headers.keys().map(HeaderName::as_str), uri.query())
        .map_err(|deny| (deny, None))?;
    // Refused as on the mem0 listener: which project was meant is unclear.
    header_names::single(headers, &X_MCP_PROJECT).map_err(|deny| (deny, None))?;
    let session_id = match endpoint {
        McpEndpoint::LegacyMessages => {
            session_id_from_query(uri.query()).map(|id| id.map(|id| session_key(&id, true)))
        }
        _ => header_names::single(headers, &MCP_SESSION_ID)
            .map(|id| id.map(|id| session_key(id, false))),
    }
    .map_err(|deny| (deny, None))?;
    let posts_jsonrpc = method == Method::POST
        && matches!(
            endpoint,
            McpEndpoint::Streamable | McpEndpoint::LegacyMessages
        );
    Ok(McpHead {
        endpoint,
        session_id,
        posts_jsonrpc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, target: &str, headers: &[(&str, &str)]) -> Result<McpHead, HeadRefused> {
        let paths = McpPaths::new("/mcp", "/sse", "/messages/").allowing(&["/health".into()]);
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        admit_head(
            &paths,
            &method.parse().unwrap(),
            &target.parse().unwrap(),
            &map,
        )
    }

    #[test]
    fn jsonrpc_posts_are_read_and_the_rest_streamed() {
        let post = head("POST", "/mcp", &[("mcp-session-id", "abc")]).unwrap();
        assert_eq!(post.endpoint, McpEndpoint::Streamable);
        assert_eq!(post.session_id.as_deref(), Some("abc"));
        assert!(post.posts_jsonrpc);
        let stream = head("GET", "/sse", &[]).unwrap();
        assert!(!stream.posts_jsonrpc && stream.session_id.is_none());
        assert!(!head("GET", "/health", &[]).unwrap().posts_jsonrpc);
    }

    #[test]
    fn legacy_ids_are_read_as_the_upstream_reads_them() {
        let upper = "/messages/?session_id=0123456789ABCDEF0123456789ABCDEF";
        let hyphens = "/messages/?session_id=01234567-89ab-cdef-0123-456789abcdef";
        let canonical = Some("0123456789abcdef0123456789abcdef");
        assert_eq!(
            head("POST", upper, &[]).unwrap().session_id.as_deref(),
            canonical
        );
        assert_eq!(
            head("POST", hyphens, &[]).unwrap().session_id.as_deref(),
            canonical
        );
    }

    #[test]
    fn each_refusal_comes_before_the_session_is_looked_at() {
        let status = |r: Result<McpHead, HeadRefused>| r.err().map(|(d, allow)| (d.status, allow));
        assert_eq!(status(head("POST", "/MCP", &[])).map(|s| s.0), Some(404));
        let (code, allow) = status(head("PUT", "/mcp", &[])).unwrap();
        assert_eq!(code, 405);
        assert!(allow.is_some_and(|a| a.contains("POST")));
        let overridden = head("POST", "/mcp", &[("x-http-method-override", "DELETE")]);
        assert_eq!(status(overridden).map(|s| s.0), Some(400));
        let two_projects = [("x-mcp-project", "a"), ("x-mcp-project", "b")];
        assert_eq!(
            status(head("POST", "/mcp", &two_projects)).map(|s| s.0),
            Some(400)
        );
        let two_sessions = "/messages/?session_id=a&session_id=b";
        assert_eq!(
            status(head("POST", two_sessions, &[])).map(|s| s.0),
            Some(400)
        );
    }
}
