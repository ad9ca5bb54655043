//! Request path normalisation (docs/design.md §1 "Admit").
//!
//! The path is percent-decoded exactly once and anything that could make memgate
//! and the upstream disagree about which resource is meant is refused: dot
//! segments, encoded separators, double encoding, control characters. Routing
//! then works on the decoded form, and the upstream receives [`encode`]'s
//! canonical re-encoding of it, never the client's spelling.

use thiserror::Error;

use super::deny::Deny;
use super::percent;

/// Why a path was refused; every variant is a 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains a character that must be percent-encoded")]
    UnencodedCharacter,
    #[error("the path contains an empty segment ('//')")]
    EmptySegment,
    #[error("the path contains a '.' or '..' segment")]
    DotSegment,
    #[error("the path contains an invalid percent escape")]
    InvalidEscape,
    #[error("the path contains an encoded '/' or '\\'")]
    EncodedSeparator,
    #[error("the path contains a NUL or another control character")]
    ControlCharacter,
    #[error("the path is percent-encoded more than once")]
    DoubleEncoded,
    #[error("the path is not valid UTF-8 once decoded")]
    InvalidUtf8,
}

impl From<PathError> for Deny {
    fn from(err: PathError) -> Deny {
        Deny::bad_request(format!("Invalid request path: {err}"))
    }
}

/// Decodes `raw_path` once and returns it in canonical decoded form: no trailing
/// slash (except the root `/`), no empty or dot segments. Case is kept.
pub fn normalise(raw_path: &str) -> Result<String, PathError> {
    let rest = raw_path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    if rest.is_empty() {
        return Ok("/".to_owned());
    }
    // `/memories/` and `/memories` name the same collection; only one slash goes.
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut out = String::with_capacity(raw_path.len());
    for raw_segment in rest.split('/') {
        out.push('/');
        out.push_str(&decode_segment(raw_segment)?);
    }
    Ok(out)
}

/// The canonical percent-encoded form of a path returned by [`normalise`]: what
/// the upstream is sent, so it decodes to exactly what memgate decided on.
pub fn encode(decoded_path: &str) -> String {
    // The usual path needs no escape: copied as it is.
    if decoded_path
        .bytes()
        .all(|b| b == b'/' || percent::is_path_char(b))
    {
        return decoded_path.to_owned();
    }
    let mut out = String::with_capacity(decoded_path.len());
    for (i, segment) in decoded_path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        percent::encode_into(&mut out, segment, percent::is_path_char);
    }
    out
}

/// Percent-encodes one segment (for example a memory id) for use in a path.
pub fn encode_segment(segment: &str) -> String {
    percent::encode(segment, percent::is_path_char)
}

fn decode_segment(raw: &str) -> Result<String, PathError> {
    if raw.is_empty() {
        return Err(PathError::EmptySegment);
    }
    for b in raw.bytes() {
        if b == b'\\' {
            return Err(PathError::Backslash);
        }
        if !(percent::is_path_char(b) || b == b'%') {
            return Err(PathError::UnencodedCharacter);
        }
    }
    let bytes = percent::decode(raw, false).map_err(|_| PathError::InvalidEscape)?;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'/' || b == b'\\' {
            return Err(PathError::EncodedSeparator);
        }
        if percent::escape_at(&bytes, i) {
            return Err(PathError::DoubleEncoded);
        }
    }
    let text = String::from_utf8(bytes).map_err(|_| PathError::InvalidUtf8)?;
    // Covers NUL, every C0/C1 control and DEL: nothing legitimate needs them and
    // they make log lines and header values lie.
    if text.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter);
    }
    if text == "." || text == ".." {
        return Err(PathError::DotSegment);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_plain_paths_and_collapses_one_trailing_slash() {
        assert_eq!(normalise("/").unwrap(), "/");
        assert_eq!(normalise("/memories").unwrap(), "/memories");
        assert_eq!(normalise("/memories/").unwrap(), "/memories");
        assert_eq!(
            normalise("/memories/abc/history/").unwrap(),
            "/memories/abc/history"
        );
        assert_eq!(normalise("/Memories").unwrap(), "/Memories");
    }

    #[test]
    fn decodes_exactly_once() {
        assert_eq!(normalise("/memories/a%20b").unwrap(), "/memories/a b");
        assert_eq!(normalise("/memories/%6D").unwrap(), "/memories/m");
        assert_eq!(normalise("/memories/100%25").unwrap(), "/memories/100%");
        assert_eq!(normalise("/memories/a+b").unwrap(), "/memories/a+b");
        assert_eq!(normalise("/memories/%C3%A9").unwrap(), "/memories/é");
    }

    #[test]
    fn refuses_traversal_in_every_spelling() {
        for raw in [
            "/memories/../reset",
            "/memories/./x",
            "/memories/%2e%2e/reset",
            "/memories/%2E%2E/reset",
            "/memories/.%2e/reset",
            "/memories/%2e",
            "/..",
        ] {
            assert_eq!(normalise(raw), Err(PathError::DotSegment), "{raw}");
        }
    }

    #[test]
    fn refuses_encoded_separators_and_backslashes() {
        assert_eq!(
            normalise("/memories%2Freset"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(
            normalise("/memories/a%2fb"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(
            normalise("/memories/a%5Cb"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(normalise("/memories\\reset"), Err(PathError::Backslash));
    }

    #[test]
    fn refuses_double_encoding() {
        assert_eq!(
            normalise("/memories/%252e%252e"),
            Err(PathError::DoubleEncoded)
        );
        assert_eq!(normalise("/memories/%252F"), Err(PathError::DoubleEncoded));
        assert_eq!(
            normalise("/memories/%25%32%65"),
            Err(PathError::DoubleEncoded)
        );
    }

    #[test]
    fn refuses_nul_controls_bad_escapes_and_bad_utf8() {
        assert_eq!(
            normalise("/memories/a%00"),
            Err(PathError::ControlCharacter)
        );
        assert_eq!(
            normalise("/memories/a%0Ab"),
            Err(PathError::ControlCharacter)
        );
        assert_eq!(
            normalise("/memories/a%7F"),
            Err(PathError::ControlCharacter)
        );
        assert_eq!(
            normalise("/memories/a\0"),
            Err(PathError::UnencodedCharacter)
        );
        assert_eq!(
            normalise("/memories/a b"),
            Err(PathError::UnencodedCharacter)
        );
        assert_eq!(normalise("/memories/é"), Err(PathError::UnencodedCharacter));
        assert_eq!(normalise("/memories/%zz"), Err(PathError::InvalidEscape));
        assert_eq!(normalise("/memories/%2"), Err(PathError::InvalidEscape));
        assert_eq!(normalise("/memories/%FF"), Err(PathError::InvalidUtf8));
    }

    #[test]
    fn refuses_empty_segments_and_relative_paths() {
        assert_eq!(normalise("//memories"), Err(PathError::EmptySegment));
        assert_eq!(normalise("/memories//x"), Err(PathError::EmptySegment));
        assert_eq!(normalise("/memories//"), Err(PathError::EmptySegment));
        assert_eq!(normalise("memories"), Err(PathError::NotAbsolute));
        assert_eq!(normalise(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn encode_round_trips_through_normalise() {
        for decoded in [
            "/",
            "/memories",
            "/memories/a b",
            "/memories/100%",
            "/memories/é?#",
        ] {
            assert_eq!(normalise(&encode(decoded)).unwrap(), decoded);
        }
        assert_eq!(encode("/memories/a b?"), "/memories/a%20b%3F");
    }
}
