//! Which MCP endpoint a request path names. The upstream (uvicorn/Starlette)
//! decodes the path before routing, so memgate must too: `/%6Dcp` is `/mcp`
//! there, and matching the raw spelling would let it through unpoliced. Paths
//! are therefore decoded once, non-canonical spellings are refused (the path
//! is forwarded as sent), and sub-paths of the policed endpoints are refused,
//! because an upstream that mounts an endpoint matches by prefix.
//!
//! Any other path is 404 unless the operator lists it in `mcp.allowed_paths`
//! (exact decoded paths): what else an MCP server serves (a health check, a
//! debug page, an endpoint a later version adds) is unknown to memgate, so
//! it is not forwarded on a guess.

use super::deny::Deny;
use super::path;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum McpEndpoint {
    /// Streamable HTTP (`mcp.path`): JSON-RPC POSTs, GET streams, DELETE.
    Streamable,
    /// The legacy SSE stream (`mcp.sse_path`).
    LegacyStream,
    /// The legacy message POSTs (`mcp.messages_path`, `?session_id=`).
    LegacyMessages,
    /// A path listed in `mcp.allowed_paths`; streamed through after
    /// authentication.
    Other,
}

impl McpEndpoint {
    /// The methods an endpoint takes (docs/design.md §5), or `None` for any.
    /// Only `POST`s are checked against the tool rules, so another method
    /// carrying a JSON-RPC body to an endpoint whose handler ignores the
    /// method (the Python SDK's legacy message handler does) would run it
    /// unchecked: such requests are refused with 405.
    pub fn allowed_methods(self) -> Option<&'static [&'static str]> {
        match self {
            McpEndpoint::Streamable => Some(&["GET", "POST", "DELETE"]),
            McpEndpoint::LegacyStream => Some(&["GET"]),
            McpEndpoint::LegacyMessages => Some(&["POST"]),
            McpEndpoint::Other => None,
        }
    }

    /// A refusal with the `Allow` value, when `method` is not taken here.
    pub fn check_method(self, method: &str) -> Result<(), (Deny, String)> {
        match self.allowed_methods() {
            Some(allowed) if !allowed.contains(&method) => Err((
                Deny::new(405, "Method not allowed on this MCP endpoint"),
                allowed.join(", "),
            )),
            _ => Ok(()),
        }
    }
}

/// The configured endpoint paths, in decoded canonical form, and the other
/// paths the operator allows.
#[derive(Clone, Debug)]
pub struct McpPaths {
    mcp: String,
    sse: String,
    messages: String,
    /// `mcp.allowed_paths`: decoded, compared exactly (a trailing `/` too).
    allowed: Vec<String>,
}

impl McpPaths {
    /// Configured paths are plain (validated by config), so a spelling that
    /// does not normalise is kept as written and simply never matches.
    pub fn new(mcp: &str, sse: &str, messages: &str) -> McpPaths {
        let canonical = |p: &str| path::normalise(p).unwrap_or_else(|_| p.to_owned());
        McpPaths {
            mcp: canonical(mcp),
            sse: canonical(sse),
            messages: canonical(messages),
            allowed: Vec::new(),
        }
    }

    /// Also forwards these exact decoded paths (`mcp.allowed_paths`). One
    /// that names an endpoint or a sub-path of one changes nothing: those
    /// are policed or refused first.
    pub fn allowing(mut self, allowed: &[String]) -> McpPaths {
        self.allowed = allowed.to_vec();
        self
    }

    pub fn classify(&self, raw_path: &str) -> Result<McpEndpoint, Deny> {
        let decoded = path::normalise(raw_path)?;
        let as_sent = match raw_path.strip_suffix('/') {
            Some(rest) if !rest.is_empty() => rest,
            _ => raw_path,
        };
        if as_sent != path::encode(&decoded) {
            return Err(Deny::bad_request(
                "Invalid request path: percent-encode only what must be encoded",
            ));
        }
        let endpoints = [
            (&self.mcp, McpEndpoint::Streamable),
            (&self.sse, McpEndpoint::LegacyStream),
            (&self.messages, McpEndpoint::LegacyMessages),
        ];
        for (endpoint_path, endpoint) in endpoints {
            if decoded == *endpoint_path {
                return Ok(endpoint);
            }
            if decoded.starts_with(endpoint_path.as_str())
                && decoded[endpoint_path.len()..].starts_with('/')
                && endpoint_path != "/"
            {
                return Err(Deny::not_found("No such MCP endpoint"));
            }
        }
        // `normalise` dropped one trailing slash; the allow-list is exact.
        let slash = raw_path.len() > 1 && raw_path.ends_with('/');
        let allowed = self.allowed.iter().any(|allowed| {
            allowed
                .strip_prefix(decoded.as_str())
                .is_some_and(|rest| rest == if slash { "/" } else { "" })
        });
        if allowed {
            return Ok(McpEndpoint::Other);
        }
        Err(Deny::not_found(
            "No such MCP endpoint (mcp.allowed_paths lists other paths to forward)",
        ))
    }
}

/// Why an `mcp.allowed_paths` entry could never match a request, if so: it
/// must be a decoded path that a request could spell canonically.
pub fn allowed_path_error(decoded: &str) -> Option<&'static str> {
    if !decoded.starts_with('/') {
        return Some("must start with /");
    }
    if decoded.contains(['?', '#']) {
        return Some("must be a path alone, without ? or #");
    }
    let bare = match decoded.strip_suffix('/') {
        Some(rest) if !rest.is_empty() => rest,
        _ => decoded,
    };
    match path::normalise(&path::encode(bare)) {
        Ok(back) if back == bare => None,
        _ => Some(
            "must be a decoded path without empty, '.' or '..' segments, \
             percent escapes or control characters",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> McpPaths {
        McpPaths::new("/mcp", "/sse", "/messages/")
    }

    fn allowing(allowed: &[&str]) -> McpPaths {
        let allowed: Vec<String> = allowed.iter().map(|p| (*p).to_owned()).collect();
        paths().allowing(&allowed)
    }

    #[test]
    fn endpoints_take_only_their_transport_methods() {
        use McpEndpoint::*;
        for (endpoint, method, ok) in [
            (Streamable, "POST", true),
            (Streamable, "GET", true),
            (Streamable, "DELETE", true),
            (Streamable, "PUT", false),
            (Streamable, "PATCH", false),
            (Streamable, "OPTIONS", false),
            (LegacyMessages, "POST", true),
            (LegacyMessages, "PUT", false),
            (LegacyMessages, "GET", false),
            (LegacyStream, "GET", true),
            (LegacyStream, "POST", false),
            (Other, "PUT", true),
        ] {
            assert_eq!(
                endpoint.check_method(method).is_ok(),
                ok,
                "{endpoint:?} {method}"
            );
        }
        let (deny, allow) = LegacyMessages.check_method("PUT").unwrap_err();
        assert_eq!((deny.status, allow.as_str()), (405, "POST"));
    }

    #[test]
    fn endpoints_are_found_with_or_without_a_trailing_slash() {
        let p = paths();
        assert_eq!(p.classify("/mcp"), Ok(McpEndpoint::Streamable));
        assert_eq!(p.classify("/mcp/"), Ok(McpEndpoint::Streamable));
        assert_eq!(p.classify("/sse"), Ok(McpEndpoint::LegacyStream));
        assert_eq!(p.classify("/messages/"), Ok(McpEndpoint::LegacyMessages));
        assert_eq!(p.classify("/messages"), Ok(McpEndpoint::LegacyMessages));
    }

    #[test]
    fn other_paths_are_404_unless_allowed_exactly() {
        let p = paths();
        for raw in [
            "/MCP",
            "/Mcp/",
            "/mcp;x",
            "/mcpx",
            "/other",
            "/",
            "/health",
            "/SSE",
            "/messages;a",
        ] {
            let deny = p.classify(raw).expect_err(raw);
            assert_eq!(deny.status, 404, "{raw}");
        }
        let p = allowing(&[
            "/health",
            "/.well-known/oauth-protected-resource",
            "/files/a b",
        ]);
        assert_eq!(p.classify("/health"), Ok(McpEndpoint::Other));
        assert_eq!(
            p.classify("/.well-known/oauth-protected-resource"),
            Ok(McpEndpoint::Other)
        );
        assert_eq!(p.classify("/files/a%20b"), Ok(McpEndpoint::Other));
        for raw in [
            "/health/",
            "/Health",
            "/health/x",
            "/healthz",
            "/.well-known",
            "/",
        ] {
            assert_eq!(p.classify(raw).expect_err(raw).status, 404, "{raw}");
        }
        let p = allowing(&["/status/", "/"]);
        assert_eq!(p.classify("/status/"), Ok(McpEndpoint::Other));
        assert_eq!(p.classify("/status").unwrap_err().status, 404);
        assert_eq!(p.classify("/"), Ok(McpEndpoint::Other));
    }

    #[test]
    fn allowing_an_endpoint_or_its_sub_paths_changes_nothing() {
        let p = allowing(&["/mcp", "/mcp/x", "/messages/y"]);
        assert_eq!(p.classify("/mcp"), Ok(McpEndpoint::Streamable));
        assert_eq!(p.classify("/mcp/x").unwrap_err().status, 404);
        assert_eq!(p.classify("/messages/y").unwrap_err().status, 404);
        // Non-canonical spellings stay 400 whatever is allowed.
        assert_eq!(
            allowing(&["/health"])
                .classify("/%68ealth")
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn allowed_paths_must_be_able_to_match() {
        for good in [
            "/health",
            "/health/",
            "/",
            "/.well-known/x",
            "/a b/é",
            "/v1;x",
        ] {
            assert_eq!(allowed_path_error(good), None, "{good}");
        }
        for bad in [
            "health", "", "/a?b", "/a#b", "//a", "/a//b", "/./a", "/a/..", "/a\u{0}", "/%41",
        ] {
            assert!(allowed_path_error(bad).is_some(), "{bad:?}");
        }
    }

    /// Found by the `admission` fuzz target's upstream model: the raw path was
    /// compared, so an encoded spelling of an endpoint skipped the MCP policy.
    #[test]
    fn encoded_spellings_of_an_endpoint_are_refused() {
        let p = paths();
        for raw in [
            "/%6Dcp",
            "/%6dcp",
            "/%6Dessages/",
            "/s%73e",
            "/mcp%2F",
            "/%2e/mcp",
        ] {
            let deny = p.classify(raw).expect_err(raw);
            assert_eq!(deny.status, 400, "{raw}");
        }
        // Encoding what must be encoded is fine, elsewhere.
        assert_eq!(
            allowing(&["/files/a b"]).classify("/files/a%20b"),
            Ok(McpEndpoint::Other)
        );
    }

    #[test]
    fn sub_paths_of_an_endpoint_are_refused() {
        let p = paths();
        for raw in ["/messages/x", "/mcp/anything", "/sse/a/b"] {
            assert_eq!(p.classify(raw).expect_err(raw).status, 404, "{raw}");
        }
    }

    #[test]
    fn dot_segments_and_doubled_slashes_are_refused() {
        let p = paths();
        for raw in ["/x/../mcp", "//mcp", "/./mcp", "mcp"] {
            assert_eq!(p.classify(raw).expect_err(raw).status, 400, "{raw}");
        }
    }
}
