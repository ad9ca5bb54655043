//! HTTP/1.x on the wire, pure (bytes in, `http` parts out, no I/O): message
//! heads and the framing of the bodies after them, and the chunked coding.
//! `proxy::h1` drives it over memgate's client and upstream connections; the
//! `admission` fuzz target drives it on raw requests.

pub mod body;
pub mod chunked;
pub mod head;
pub mod request;

/// A `Content-Length` value: digits only (no sign, no spaces, no list), at
/// most 18 of them. Leading zeros are read as the number they pad: upstream
/// answers are taken as RFC 9110 allows them.
pub fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// A request's `Content-Length`: [`parse_length`] without leading zeros
/// (`0` alone stays). A padded length is valid RFC 9110, but a server or
/// filter in front of memgate may read `007` otherwise (octal, or not at
/// all), and a request two parsers frame differently is a smuggling vector.
pub fn parse_request_length(value: &[u8]) -> Option<u64> {
    if value.len() > 1 && value[0] == b'0' {
        return None;
    }
    parse_length(value)
}

/// Hop-by-hop and framing headers: meant for one connection, never passed
/// from one side of the proxy to the other (RFC 9110 §7.6.1), plus `Host`
/// and `Expect`, which memgate sets or answers itself.
pub const HOP_BY_HOP: [&str; 13] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
    "expect",
    "proxy-authorization",
    "proxy-authenticate",
    "http2-settings",
];

/// Whether `name` (in any case) is one of [`HOP_BY_HOP`].
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.len() == name.len() && h.as_bytes().eq_ignore_ascii_case(name))
}

/// Whether a request target is visible ASCII, as a URI is: raw bytes beyond
/// it would reach an upstream as sent, to be read however it likes.
pub fn is_visible_ascii(target: &[u8]) -> bool {
    target.iter().all(|b| (0x21..0x7f).contains(b))
}

/// Most values a header map may hold for [`values`] to scan it.
const SCAN_UP_TO: usize = 8;

/// Every value of header `name`, in order: `HeaderMap::get_all`, except that
/// a small map (most requests and answers carry a handful of headers) is
/// scanned, which costs less than hashing the name for each lookup.
pub fn values<'m, 'n>(headers: &'m http::HeaderMap, name: &'n http::HeaderName) -> Values<'m, 'n> {
    if headers.len() <= SCAN_UP_TO {
        Values::Scan(headers.iter(), name)
    } else {
        Values::Hashed(headers.get_all(name).iter())
    }
}

/// What [`values`] returns.
pub enum Values<'m, 'n> {
    Scan(
        http::header::Iter<'m, http::HeaderValue>,
        &'n http::HeaderName,
    ),
    Hashed(http::header::ValueIter<'m, http::HeaderValue>),
}

impl<'m> Iterator for Values<'m, '_> {
    type Item = &'m http::HeaderValue;

    fn next(&mut self) -> Option<&'m http::HeaderValue> {
        match self {
            Values::Scan(all, name) => all.find(|(n, _)| *n == *name).map(|(_, v)| v),
            Values::Hashed(values) => values.next(),
        }
    }
}

/// Whether a comma-separated header (such as `Connection`) lists `token`.
pub fn has_token(headers: &http::HeaderMap, name: &http::HeaderName, token: &str) -> bool {
    values(headers, name).any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_scanned_or_hashed_are_get_all_in_order() {
        let names = [
            "a",
            "x-b",
            "a",
            "content-length",
            "x-b",
            "a",
            "c",
            "d",
            "e",
            "f",
        ];
        for n in 0..=names.len() {
            let mut map = http::HeaderMap::new();
            for (i, name) in names[..n].iter().enumerate() {
                map.append(*name, http::HeaderValue::from(i));
            }
            for name in ["a", "x-b", "content-length", "f", "missing"] {
                let name = http::HeaderName::from_static(name);
                let expected: Vec<_> = map.get_all(&name).iter().collect();
                assert_eq!(
                    values(&map, &name).collect::<Vec<_>>(),
                    expected,
                    "{n} {name}"
                );
            }
        }
    }

    #[test]
    fn lengths_are_plain_digits() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"1024"), Some(1024));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"1,1",
            b"0x10",
            b"1234567890123456789",
        ] {
            assert_eq!(
                parse_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn request_lengths_have_no_leading_zeros() {
        assert_eq!(parse_request_length(b"0"), Some(0));
        assert_eq!(parse_request_length(b"10"), Some(10));
        assert_eq!(parse_request_length(b"1024"), Some(1024));
        for bad in [&b"00"[..], b"007", b"01", b"0000000000", b"", b"+7", b"7 "] {
            assert_eq!(
                parse_request_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Answers keep the lenient reading.
        assert_eq!(parse_length(b"007"), Some(7));
    }

    #[test]
    fn finds_tokens_in_lists() {
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::CONNECTION,
            "keep-alive, Close".parse().unwrap(),
        );
        assert!(has_token(&h, &http::header::CONNECTION, "close"));
        assert!(!has_token(&h, &http::header::CONNECTION, "upgrade"));
    }
}
