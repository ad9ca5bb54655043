//! Percent-encoding, done by hand because the policy needs stricter decoding
//! than the usual crates offer: an invalid escape is an error here, never passed
//! through, so memgate and the upstream can never read one string two ways.

/// A `%` not followed by two hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidEscape;

/// Decodes every `%XX` exactly once. With `plus_as_space` (form encoding, used
/// for query strings) a `+` becomes a space; in paths it stays a `+`.
pub fn decode(input: &str, plus_as_space: bool) -> Result<Vec<u8>, InvalidEscape> {
    let mut rest = input.as_bytes();
    let mut out = Vec::with_capacity(rest.len());
    while let Some((&first, tail)) = rest.split_first() {
        rest = match (first, tail) {
            (b'%', [hi, lo, after @ ..]) => {
                match (hex_value(*hi), hex_value(*lo)) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(InvalidEscape),
                }
                after
            }
            (b'%', _) => return Err(InvalidEscape),
            (b'+', _) if plus_as_space => {
                out.push(b' ');
                tail
            }
            (b, _) => {
                out.push(b);
                tail
            }
        };
    }
    Ok(out)
}

/// Whether `%XX` (two hex digits) starts at `bytes[at]`.
pub fn escape_at(bytes: &[u8], at: usize) -> bool {
    matches!(
        bytes.get(at..),
        Some([b'%', hi, lo, ..]) if hex_value(*hi).is_some() && hex_value(*lo).is_some()
    )
}

/// Percent-encodes every byte for which `keep` is false, with upper-case hex.
pub fn encode(input: &str, keep: fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(input.len());
    encode_into(&mut out, input, keep);
    out
}

/// [`encode`], appended to `out` (one allocation for a whole query string).
pub fn encode_into(out: &mut String, input: &str, keep: fn(u8) -> bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Usually nothing needs escaping: copied whole.
    if input.bytes().all(keep) {
        out.push_str(input);
        return;
    }
    for &b in input.as_bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            // `b >> 4` and `b & 0x0f` are both below 16: in bounds by construction.
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

/// RFC 3986 unreserved characters: safe anywhere, never encoded.
pub fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters allowed unencoded inside one path segment (RFC 3986 `pchar`).
pub fn is_path_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_once_and_rejects_broken_escapes() {
        assert_eq!(decode("a%20b%2fc", false).unwrap(), b"a b/c");
        assert_eq!(decode("%252e", false).unwrap(), b"%2e");
        assert_eq!(decode("a+b", false).unwrap(), b"a+b");
        assert_eq!(decode("a+b%2B", true).unwrap(), b"a b+");
        assert_eq!(decode("%", false), Err(InvalidEscape));
        assert_eq!(decode("%4", false), Err(InvalidEscape));
        assert_eq!(decode("%zz", false), Err(InvalidEscape));
        assert_eq!(decode("%é", false), Err(InvalidEscape));
    }

    #[test]
    fn encodes_everything_not_kept() {
        assert_eq!(encode("a b&c=d#é", is_unreserved), "a%20b%26c%3Dd%23%C3%A9");
        assert_eq!(encode("x:y@z", is_path_char), "x:y@z");
        assert!(escape_at(b"x%2e", 1));
        assert!(!escape_at(b"x%2", 1));
    }
}
