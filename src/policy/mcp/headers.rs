//! `Mcp-Param-{Name}` headers (MCP SEP-2243): clients may mirror tool
//! arguments into request headers so intermediaries can read them without the
//! body, and strict servers refuse a request whose headers and body disagree.
//! When memgate rewrites a user argument it must rewrite the mirror too, and a
//! mirror of a user argument must never say something the body does not (a
//! server might read the header). memgate matches a header to the argument of
//! the same name, ignoring case; a server that maps a header to an argument
//! of another name (its `x-mcp-header` annotation) is not covered.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::rules::STANDARD_USER_ARGS;

/// Header-name prefix of mirrored arguments, lower-cased.
pub const PARAM_HEADER_PREFIX: &str = "mcp-param-";

const SENTINEL_PREFIX: &str = "=?base64?";
const SENTINEL_SUFFIX: &str = "?=";

/// The edits that make the request's mirrored headers match the forwarded
/// body. `headers` are the request's (name, value) pairs; `arguments` are the
/// (argument, value) pairs the body now carries
/// ([`super::McpForward::param_headers`]). Each edit is (header name as sent,
/// `Some(value)`: replace every header of that name with this one value;
/// `None`: remove every header of that name). A header mirroring an argument
/// given different values in one body, or mirroring a user argument
/// (`user_id`, `userId`) the body does not carry, is removed.
pub fn param_header_rewrites(
    headers: &[(String, String)],
    arguments: &[(String, String)],
) -> Vec<(String, Option<String>)> {
    let mut edits: Vec<(String, Option<String>)> = Vec::new();
    for (name, _) in headers {
        let Some(argument) = mirrored_argument(name) else {
            continue;
        };
        if edits
            .iter()
            .any(|(edited, _)| edited.eq_ignore_ascii_case(name))
        {
            continue;
        }
        let mut values = arguments
            .iter()
            .filter(|(arg, _)| arg.eq_ignore_ascii_case(argument))
            .map(|(_, value)| value.as_str());
        let edit = match values.next() {
            Some(first) if values.all(|other| other == first) => {
                // Every copy of a repeated header must say the same.
                let all_match = headers
                    .iter()
                    .filter(|(other, _)| other.eq_ignore_ascii_case(name))
                    .all(|(_, sent)| decode_param_value(sent).as_deref() == Some(first));
                (!all_match).then(|| Some(encode_param_value(first)))
            }
            Some(_) => Some(None),
            None if STANDARD_USER_ARGS
                .iter()
                .any(|user| user.eq_ignore_ascii_case(argument)) =>
            {
                Some(None)
            }
            None => None,
        };
        if let Some(edit) = edit {
            edits.push((name.clone(), edit));
        }
    }
    edits
}

/// Whether `header` is an `Mcp-Param-*` header.
pub fn is_param_header(header: &str) -> bool {
    mirrored_argument(header).is_some()
}

/// The argument a header mirrors, if it is an `Mcp-Param-*` header.
fn mirrored_argument(header: &str) -> Option<&str> {
    let prefix = header.get(..PARAM_HEADER_PREFIX.len())?;
    let argument = header.get(PARAM_HEADER_PREFIX.len()..)?;
    (prefix.eq_ignore_ascii_case(PARAM_HEADER_PREFIX) && !argument.is_empty()).then_some(argument)
}

/// A value as a header carries it: plain when it is non-empty visible ASCII
/// (inner spaces allowed) without surrounding whitespace and does not look
/// like the sentinel, else `=?base64?{standard Base64 of the UTF-8}?=`.
pub fn encode_param_value(value: &str) -> String {
    let plain = !value.is_empty()
        && value.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && !value.starts_with(' ')
        && !value.ends_with(' ')
        && !value.starts_with(SENTINEL_PREFIX);
    if plain {
        value.to_owned()
    } else {
        format!(
            "{SENTINEL_PREFIX}{}{SENTINEL_SUFFIX}",
            STANDARD.encode(value)
        )
    }
}

/// The value a header carries, decoding the Base64 sentinel; `None` when the
/// sentinel does not hold Base64 of UTF-8.
pub fn decode_param_value(raw: &str) -> Option<String> {
    let Some(inner) = raw
        .strip_prefix(SENTINEL_PREFIX)
        .and_then(|rest| rest.strip_suffix(SENTINEL_SUFFIX))
    else {
        return Some(raw.to_owned());
    };
    let bytes = STANDARD.decode(inner).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn rewrites_a_mirror_of_a_forced_argument() {
        let headers = pairs(&[
            ("Mcp-Param-user_id", "bob"),
            ("mcp-param-query", "x"),
            ("Content-Type", "application/json"),
        ]);
        let edits = param_header_rewrites(&headers, &pairs(&[("user_id", "alice")]));
        assert_eq!(
            edits,
            vec![("Mcp-Param-user_id".to_owned(), Some("alice".to_owned()))]
        );
    }

    #[test]
    fn matching_mirrors_are_left_alone() {
        let args = pairs(&[("userId", "alice")]);
        for sent in ["alice", "=?base64?YWxpY2U=?="] {
            let headers = pairs(&[("MCP-PARAM-USERID", sent)]);
            assert!(param_header_rewrites(&headers, &args).is_empty(), "{sent}");
        }
    }

    #[test]
    fn removes_mirrors_the_body_does_not_back() {
        let headers = pairs(&[("Mcp-Param-User_Id", "bob"), ("Mcp-Param-other", "1")]);
        let edits = param_header_rewrites(&headers, &[]);
        assert_eq!(edits, vec![("Mcp-Param-User_Id".to_owned(), None)]);
        let conflicting = pairs(&[("user_id", "bob"), ("user_id", "carol")]);
        let edits = param_header_rewrites(&pairs(&[("mcp-param-user_id", "bob")]), &conflicting);
        assert_eq!(edits, vec![("mcp-param-user_id".to_owned(), None)]);
    }

    #[test]
    fn repeated_headers_are_made_one() {
        let headers = pairs(&[("mcp-param-user_id", "alice"), ("Mcp-Param-User_id", "bob")]);
        let edits = param_header_rewrites(&headers, &pairs(&[("user_id", "alice")]));
        assert_eq!(
            edits,
            vec![("mcp-param-user_id".to_owned(), Some("alice".to_owned()))]
        );
    }

    #[test]
    fn values_encode_and_decode() {
        assert_eq!(encode_param_value("us-west1"), "us-west1");
        assert_eq!(encode_param_value("two words"), "two words");
        for value in [
            "Hello, 世界",
            " padded ",
            "line1\nline2",
            "",
            "=?base64?x?=",
            "tab\t",
        ] {
            let encoded = encode_param_value(value);
            assert!(encoded.starts_with("=?base64?"), "{value:?}");
            assert_eq!(decode_param_value(&encoded).as_deref(), Some(value));
        }
        assert_eq!(
            encode_param_value("Hello, 世界"),
            "=?base64?SGVsbG8sIOS4lueVjA==?="
        );
        assert_eq!(decode_param_value("=?base64?%%%?="), None);
        assert_eq!(decode_param_value("plain").as_deref(), Some("plain"));
        assert!(mirrored_argument("Mcp-Param-").is_none());
        assert!(mirrored_argument("Mcp-Para").is_none());
        assert!(mirrored_argument("Mcp-Paramé").is_none());
    }
}
