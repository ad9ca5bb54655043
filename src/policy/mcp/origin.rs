//! The `Origin` check of the MCP listener. MCP's Streamable HTTP transport
//! asks servers to validate `Origin` so a web page cannot drive a local MCP
//! server through the user's browser (DNS rebinding); memgate does it for the
//! unmodified server behind it.

/// Whether a request with this `Origin` header may proceed, given the
/// configured allow-list. No header (not a browser, or a same-origin GET) is
/// allowed. Otherwise the origin must equal an entry as `scheme://host[:port]`
/// (scheme and host compared without case, a default port equal to none, a
/// trailing `/` on an entry ignored). An entry `*` allows every origin but the
/// literal `null` (sandboxed frames, `file:` pages), which only an entry
/// `null` allows. A malformed origin is refused.
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin.map(str::trim) else {
        return true;
    };
    if origin.eq_ignore_ascii_case("null") {
        return allowed
            .iter()
            .any(|entry| entry.trim().eq_ignore_ascii_case("null"));
    }
    if allowed.iter().any(|entry| entry.trim() == "*") {
        return true;
    }
    let Some(sent) = Origin::parse(origin) else {
        return false;
    };
    allowed
        .iter()
        .filter_map(|entry| {
            let entry = entry.trim();
            Origin::parse(entry.strip_suffix('/').unwrap_or(entry))
        })
        .any(|entry| entry == sent)
}

/// `scheme://host[:port]`, normalised for comparison.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    /// `None` for the scheme's default port.
    port: Option<u16>,
}

impl Origin {
    fn parse(text: &str) -> Option<Origin> {
        let (scheme, authority) = text.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let mut chars = scheme.chars();
        if !chars.next()?.is_ascii_alphabetic()
            || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return None;
        }
        let (host, port) = match authority.strip_prefix('[') {
            // IPv6 literal: [addr] or [addr]:port
            Some(rest) => {
                let (address, after) = rest.split_once(']')?;
                let valid = !address.is_empty()
                    && address
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.'));
                if !valid {
                    return None;
                }
                let port = match after {
                    "" => None,
                    _ => Some(after.strip_prefix(':')?),
                };
                (format!("[{}]", address.to_ascii_lowercase()), port)
            }
            None => {
                let (host, port) = match authority.rsplit_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (authority, None),
                };
                let valid = !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
                if !valid {
                    return None;
                }
                (host.to_ascii_lowercase(), port)
            }
        };
        let port = match port {
            None => None,
            Some(digits) => {
                if digits.is_empty()
                    || digits.len() > 5
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                let number: u16 = digits.parse().ok()?;
                let default = match scheme.as_str() {
                    "http" | "ws" => Some(80),
                    "https" | "wss" => Some(443),
                    _ => None,
                };
                (default != Some(number)).then_some(number)
            }
        };
        Some(Origin { scheme, host, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|e| (*e).to_owned()).collect()
    }

    #[test]
    fn no_origin_is_allowed() {
        assert!(origin_allowed(None, &[]));
        assert!(!origin_allowed(Some("https://a.example"), &[]));
    }

    #[test]
    fn exact_match_ignoring_case_and_default_ports() {
        let allowed = list(&[
            "https://App.Example.com",
            "http://localhost:3000/",
            "http://[::1]:8080",
        ]);
        for origin in [
            "https://app.example.com",
            "HTTPS://APP.EXAMPLE.COM",
            "https://app.example.com:443",
            "http://localhost:3000",
            "http://[::1]:8080",
            " http://localhost:3000 ",
        ] {
            assert!(origin_allowed(Some(origin), &allowed), "{origin}");
        }
        for origin in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://evil.app.example.com",
            "https://app.example.com.evil.net",
            "http://localhost:30000",
            "http://localhost",
            "https://app.example.com/path",
            "https://user@app.example.com",
            "app.example.com",
            "http://[::1]",
            "http://localhost:3000:1",
            "http://localhost:99999",
            "",
        ] {
            assert!(!origin_allowed(Some(origin), &allowed), "{origin}");
        }
    }

    #[test]
    fn null_and_wildcard() {
        assert!(origin_allowed(Some("https://x.y"), &list(&["*"])));
        assert!(!origin_allowed(Some("null"), &list(&["*"])));
        assert!(origin_allowed(Some("null"), &list(&["null"])));
        assert!(!origin_allowed(Some("null"), &list(&["https://x.y"])));
    }
}
