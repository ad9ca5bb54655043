//! Query strings: parsed once, strictly, into ordered pairs, and rebuilt in one
//! canonical spelling before they go upstream.
//!
//! Parsing follows form encoding as the upstream (Starlette, `parse_qsl`) reads
//! it: pairs split on `&`, `+` is a space, each key and value percent-decoded once,
//! empty pieces skipped, a piece without `=` has an empty value. Where Python
//! would quietly guess (invalid escapes, invalid UTF-8) memgate refuses, and an
//! owner selector given twice is refused (parameter pollution, docs/design.md §4).

use thiserror::Error;

use super::deny::Deny;
use super::percent;

/// The parameters that choose whose memories a request touches. Each may appear
/// at most once: with two, memgate and the upstream could act on different ones.
pub const OWNER_SELECTORS: [&str; 3] = ["user_id", "agent_id", "run_id"];

/// Why a query string was refused; every variant is a 400.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum QueryError {
    #[error("the query string contains an invalid percent escape")]
    InvalidEscape,
    #[error("the query string is not valid UTF-8 once decoded")]
    InvalidUtf8,
    #[error("the query parameter {0} is given more than once")]
    Repeated(String),
}

impl From<QueryError> for Deny {
    fn from(err: QueryError) -> Deny {
        Deny::bad_request(format!("Invalid query string: {err}"))
    }
}

/// A decoded query string: its (key, value) pairs in the order sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses a raw (still encoded) query string, without the leading `?`.
    /// Refuses a repeated [`OWNER_SELECTORS`] key.
    pub fn parse(raw: &str) -> Result<Query, QueryError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for piece in raw.split('&').filter(|piece| !piece.is_empty()) {
            let (raw_key, raw_value) = piece.split_once('=').unwrap_or((piece, ""));
            let key = decode_component(raw_key)?;
            let value = decode_component(raw_value)?;
            if OWNER_SELECTORS.contains(&key.as_str()) && pairs.iter().any(|(k, _)| *k == key) {
                return Err(QueryError::Repeated(key));
            }
            pairs.push((key, value));
        }
        Ok(Query { pairs })
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The value of the first `key`; owner selectors occur at most once.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key` to `value`: every existing `key` pair is replaced by one pair at
    /// the place of the first, or the pair is appended.
    pub fn set(&mut self, key: &str, value: &str) {
        match self.pairs.iter().position(|(k, _)| k == key) {
            Some(first) => {
                let mut index = 0;
                self.pairs.retain(|(k, _)| {
                    let keep = k != key || index == first;
                    index += 1;
                    keep
                });
                if let Some(pair) = self.pairs.get_mut(first) {
                    pair.1 = value.to_owned();
                }
            }
            None => self.pairs.push((key.to_owned(), value.to_owned())),
        }
    }
}

impl Query {
    /// The canonical encoding: every byte but the RFC 3986 unreserved ones is
    /// percent-encoded, so `&`, `=`, `#`, `+`, spaces and non-ASCII all
    /// round-trip. Built in one string, without the formatting machinery.
    pub fn encoded(&self) -> String {
        let size = self.pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        let mut out = String::with_capacity(size);
        for (i, (key, value)) in self.pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            percent::encode_into(&mut out, key, percent::is_unreserved);
            out.push('=');
            percent::encode_into(&mut out, value, percent::is_unreserved);
        }
        out
    }
}

/// Rebuilds `raw` (the query as sent, or `None`) with `user_id` forced to
/// `user_id`, in canonical encoding.
pub fn force_user_id(raw: Option<&str>, user_id: &str) -> Result<String, QueryError> {
    let mut query = Query::parse(raw.unwrap_or(""))?;
    query.set("user_id", user_id);
    Ok(query.encoded())
}

fn decode_component(raw: &str) -> Result<String, QueryError> {
    // Usually nothing is encoded: the text is its own decoding.
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Ok(raw.to_owned());
    }
    let bytes = percent::decode(raw, true).map_err(|_| QueryError::InvalidEscape)?;
    String::from_utf8(bytes).map_err(|_| QueryError::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(raw: &str) -> Vec<(String, String)> {
        Query::parse(raw).unwrap().pairs().to_vec()
    }

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn parses_like_form_encoding() {
        assert_eq!(
            pairs("a=1&b=x+y%2Bz&&c&d="),
            vec![
                pair("a", "1"),
                pair("b", "x y+z"),
                pair("c", ""),
                pair("d", "")
            ]
        );
        assert_eq!(pairs("user%5Fid=bob"), vec![pair("user_id", "bob")]);
        assert_eq!(pairs("a=b=c"), vec![pair("a", "b=c")]);
        assert!(Query::parse("").unwrap().is_empty());
    }

    #[test]
    fn refuses_repeated_owner_selectors_in_any_spelling() {
        for raw in [
            "user_id=a&user_id=b",
            "user_id=a&user%5fid=b",
            "user_id=a&user_id=a",
            "agent_id=x&agent_id=y",
            "run_id=1&x=2&run_id=3",
            "user_id&user_id=b",
        ] {
            assert!(
                matches!(Query::parse(raw), Err(QueryError::Repeated(_))),
                "{raw}"
            );
        }
        // Repeats of parameters memgate does not act on are the upstream's business.
        assert_eq!(pairs("top_k=1&top_k=2").len(), 2);
    }

    #[test]
    fn refuses_bad_escapes_and_bad_utf8() {
        assert_eq!(Query::parse("user_id=%zz"), Err(QueryError::InvalidEscape));
        assert_eq!(Query::parse("user_id=%"), Err(QueryError::InvalidEscape));
        assert_eq!(Query::parse("user_id=%FF"), Err(QueryError::InvalidUtf8));
    }

    #[test]
    fn forcing_user_id_replaces_in_place_or_appends() {
        assert_eq!(
            force_user_id(Some("agent_id=x"), "alice").unwrap(),
            "agent_id=x&user_id=alice"
        );
        assert_eq!(
            force_user_id(Some("user_id=bob&top_k=5"), "alice").unwrap(),
            "user_id=alice&top_k=5"
        );
        assert_eq!(force_user_id(None, "alice").unwrap(), "user_id=alice");
        let mut q = Query::parse("a=1&user_id=x").unwrap();
        q.set("a", "2");
        assert_eq!(q.encoded(), "a=2&user_id=x");
    }

    #[test]
    fn awkward_scopes_round_trip() {
        for scope in ["a&b=c#d", "with space", "plus+sign", "ünïcødé/✓", "%41", ""] {
            let rebuilt = force_user_id(Some("run_id=r"), scope).unwrap();
            let parsed = Query::parse(&rebuilt).unwrap();
            assert_eq!(parsed.get("user_id"), Some(scope), "{rebuilt}");
            assert_eq!(parsed.get("run_id"), Some("r"));
            assert_eq!(parsed.pairs().len(), 2);
        }
    }
}
