//! What every request head must pass before anything else happens to it
//! (docs/design.md §1 step 1): a method nothing behind memgate takes, a
//! target outside visible ASCII, a target or headers over the limits, and a
//! framing that two readers could take two ways. The gate and the
//! `admission` fuzz target call this one function.

use http::{HeaderMap, Method, Uri};

use super::deny::Deny;

/// `limits.max_uri_bytes` and `limits.max_header_bytes`.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
}

/// A head refused at admission, and whether its connection must close: after
/// a framing refusal the rest of the stream cannot be trusted to be the next
/// request.
#[derive(Debug, PartialEq, Eq)]
pub struct HeadRefusal {
    pub deny: Deny,
    pub close: bool,
}

impl HeadRefusal {
    fn answer(deny: Deny) -> Self {
        HeadRefusal { deny, close: false }
    }

    fn close(deny: Deny) -> Self {
        HeadRefusal { deny, close: true }
    }
}

/// Admits a request head, or says how to refuse it.
pub fn admit_head(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    limits: HeadLimits,
) -> Result<(), HeadRefusal> {
    // CONNECT changes how the message is framed; nothing behind memgate takes it.
    if method == Method::CONNECT {
        return Err(HeadRefusal::close(Deny::new(405, "Method Not Allowed")));
    }
    let target = uri.path_and_query().map_or("", |pq| pq.as_str());
    // memgate's HTTP/1 reader refuses such a target already; HTTP/2 lets
    // UTF-8 through. Refused the same way on both.
    if !crate::http1::is_visible_ascii(target.as_bytes()) {
        return Err(HeadRefusal::answer(Deny::bad_request(
            "Request target is not visible ASCII",
        )));
    }
    if target.len() > limits.max_uri_bytes {
        return Err(HeadRefusal::answer(Deny::new(
            414,
            "Request target too long (limits.max_uri_bytes)",
        )));
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(HeadRefusal::answer(Deny::new(
            431,
            "Request headers too large (limits.max_header_bytes)",
        )));
    }
    // Both framings at once is ambiguous (request smuggling). memgate's
    // HTTP/1 reader keeps both headers for this check; HTTP/2 forbids
    // Transfer-Encoding.
    if headers.contains_key(http::header::TRANSFER_ENCODING)
        && headers.contains_key(http::header::CONTENT_LENGTH)
    {
        return Err(HeadRefusal::close(Deny::bad_request(
            "Transfer-Encoding and Content-Length were both sent",
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_uri_bytes: 32,
        max_header_bytes: 64,
    };

    fn admit(method: &str, target: &str, headers: &[(&str, &str)]) -> Result<(), HeadRefusal> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        let uri: Uri = target.parse().unwrap();
        admit_head(&method.parse().unwrap(), &uri, &map, LIMITS)
    }

    fn status(result: Result<(), HeadRefusal>) -> Option<(u16, bool)> {
        result.err().map(|r| (r.deny.status, r.close))
    }

    #[test]
    fn an_ordinary_head_is_admitted() {
        assert_eq!(
            admit("GET", "/memories?user_id=a", &[("host", "m")]),
            Ok(())
        );
    }

    #[test]
    fn each_refusal_has_its_status_and_framing_ones_close() {
        assert_eq!(status(admit("CONNECT", "/", &[])), Some((405, true)));
        assert_eq!(
            status(admit("GET", &format!("/{}", "a".repeat(32)), &[])),
            Some((414, false))
        );
        assert_eq!(
            status(admit("GET", "/", &[("x-long", &"v".repeat(64))])),
            Some((431, false))
        );
        let both = [("transfer-encoding", "chunked"), ("content-length", "3")];
        assert_eq!(status(admit("POST", "/", &both)), Some((400, true)));
    }

    #[test]
    fn only_visible_ascii_targets_pass() {
        let target = |t: &str| status(admit("GET", t, &[]));
        assert_eq!(target("/mcp?session_id=a%20b"), None);
        assert_eq!(target("/mcp/caf\u{e9}"), Some((400, false)));
        assert_eq!(target("/memories?q=\u{fc}"), Some((400, false)));
    }
}
