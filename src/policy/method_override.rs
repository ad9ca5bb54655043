//! Method overrides: headers and a query parameter that make a framework in
//! front of (or inside) an upstream treat a request as another method than
//! the one on its request line. memgate authorises the request line's method,
//! so a `GET` that an upstream runs as `DELETE` would skip the write check.
//! Both listeners refuse every spelling with 400 rather than strip it, so a
//! client learns at once that the override never worked.

use super::deny::Deny;
use super::percent;

/// Header names read as an override by common frameworks and gateways,
/// lower-case and without `-` or `_` (see [`is_override_header`]).
const HEADERS: [&str; 4] = [
    "xhttpmethodoverride",
    "xhttpmethod",
    "xmethodoverride",
    "xoriginalmethod",
];

/// The query (and form) parameter Rails, Laravel, Symfony and method-override
/// middlewares read as the real method.
pub const PARAM: &str = "_method";

/// Whether `name` is an override header in any case, with `-` or `_` between
/// its words: CGI-style servers turn both into `_`, so either spelling reaches
/// the application as the same variable.
pub fn is_override_header(name: &str) -> bool {
    let squashed = || {
        name.bytes()
            .filter(|b| *b != b'-' && *b != b'_')
            .map(|b| b.to_ascii_lowercase())
    };
    HEADERS.iter().any(|target| squashed().eq(target.bytes()))
}

/// Whether a raw query string (without `?`) names [`PARAM`] in any spelling a
/// framework might decode it from: any case, percent-encoded, `+`, space or
/// `.` for its `_` (PHP folds the last two into `_`), pairs split on `&` or
/// `;`. Read leniently, unlike `Query::parse`: an allow-listed route's query
/// goes upstream as sent, whatever the upstream makes of it.
pub fn names_override_param(raw_query: &str) -> bool {
    raw_query.split(['&', ';']).any(|piece| {
        let raw_key = piece.split_once('=').map_or(piece, |(key, _)| key);
        if raw_key.len() > PARAM.len() * 3 {
            return false;
        }
        let key = percent::decode(raw_key, true).unwrap_or_else(|_| raw_key.as_bytes().to_vec());
        key.len() == PARAM.len()
            && key.iter().zip(PARAM.bytes()).all(|(&k, p)| {
                let k = match k {
                    b' ' | b'.' => b'_',
                    other => other.to_ascii_lowercase(),
                };
                k == p
            })
    })
}

/// The refusal for a request carrying an override header (any of
/// `header_names`) or the [`PARAM`] query parameter; `Ok` otherwise.
pub fn refuse<'a>(
    mut header_names: impl Iterator<Item = &'a str>,
    raw_query: Option<&str>,
) -> Result<(), Deny> {
    if let Some(name) = header_names.find(|name| is_override_header(name)) {
        return Err(Deny::bad_request(format!(
            "Method override headers are not accepted ({name}); use the HTTP method itself"
        )));
    }
    if raw_query.is_some_and(names_override_param) {
        return Err(refusal_for_param());
    }
    Ok(())
}

/// The refusal for a query naming [`PARAM`].
pub fn refusal_for_param() -> Deny {
    Deny::bad_request(format!(
        "The query parameter {PARAM} (a method override) is not accepted; \
         use the HTTP method itself"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_override_header_spelling_is_recognised() {
        for name in [
            "X-HTTP-Method-Override",
            "x-http-method-override",
            "x_http_method_override",
            "X-HTTP-Method",
            "x-http-method",
            "X-Method-Override",
            "x_method_override",
            "X-Original-Method",
            "x-original-method",
            "X_ORIGINAL_METHOD",
            "x-http_method-override",
        ] {
            assert!(is_override_header(name), "{name}");
        }
        for name in [
            "x-http-method-overrides",
            "x-http-methods",
            "x-original-url",
            "x-method",
            "method",
            "x-request-method-override",
            "",
            "-",
        ] {
            assert!(!is_override_header(name), "{name}");
        }
    }

    #[test]
    fn the_method_parameter_is_found_in_any_spelling() {
        for query in [
            "_method=DELETE",
            "user_id=a&_method=DELETE",
            "_method",
            "_METHOD=delete",
            "%5Fmethod=DELETE",
            "%5fmethod=DELETE",
            "_m%65thod=PUT",
            "+method=PUT",
            "%20method=PUT",
            ".method=PUT",
            "a=1;_method=PUT",
            "&&_method=&",
        ] {
            assert!(names_override_param(query), "{query}");
        }
        for query in [
            "",
            "method=PUT",
            "_methods=PUT",
            "x_method=PUT",
            "a=_method",
            "q=%zz&user_id=a",
            "__method=PUT",
        ] {
            assert!(!names_override_param(query), "{query}");
        }
    }

    #[test]
    fn refusals_name_what_was_sent() {
        let deny = refuse(["accept", "X-Original-Method"].into_iter(), None).unwrap_err();
        assert_eq!(deny.status, 400);
        assert!(deny.message.contains("X-Original-Method"), "{deny}");
        let deny = refuse(std::iter::empty(), Some("_method=DELETE")).unwrap_err();
        assert_eq!(deny.status, 400);
        assert!(deny.message.contains("_method"), "{deny}");
        assert!(refuse(["accept", "x-mcp-token"].into_iter(), Some("user_id=a")).is_ok());
        assert!(refuse(std::iter::empty(), None).is_ok());
    }
}
