//! A look at a whole body before it is parsed. Most writes hold none of the
//! literals every secret's format needs (`ghp_`, `AKIA`, `://`, `password`,
//! …); such a body is clean without being parsed, walked or scanned string
//! by string, which is most of what the guard costs.
//!
//! Why a whole-text check is sound: with its JSON escapes decoded, a body
//! holds every string the walk would scan, each between two `"`. The shipped
//! patterns look at their surroundings only through word boundaries (a `"`
//! is no word character, as the start and end of a string are not) and
//! through `\z` offered beside a class that takes `"`, or after `.*?` that
//! runs on to the end of the body. So a rule that matches in one of the
//! strings also matches somewhere in the decoded body, and a credential-named
//! key is followed there by `"` and `:`. The converse does not hold, and need
//! not: a body that may hold a secret is scanned as before.
//!
//! Not judged here, and so scanned as before: a body that is not UTF-8,
//! whose escapes do not decode, that holds `%XX` (strings are scanned
//! percent-decoded too), or that holds `ſ` or `K` (they match `s` and `k`
//! under the case-insensitive parts of the patterns, which the literal search
//! compares in ASCII only); and every body when a custom rule anchors to the
//! start or end of the text or of a line, which a whole body cannot reproduce.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, MatchKind};
use regex::Regex;

use super::rules::{CREDENTIAL_KEY_IN_TEXT, CREDENTIAL_KEY_NEEDS};
use crate::policy::percent;

/// Characters outside ASCII that Unicode case folding maps onto an ASCII
/// letter: `ſ` (long s) onto `s` and the Kelvin sign onto `k`.
const FOLDS_ONTO_ASCII: [&str; 2] = ["\u{17F}", "\u{212A}"];

/// The whole-body check, built with the guard ([`Prefilter::new`]).
#[derive(Debug)]
pub(super) struct Prefilter {
    /// Every literal some rule needs, in ASCII lower case, searched in the
    /// body lowered the same way. Leftmost-first, which lets the search run
    /// on its vectorised literal engine; the matches it steps over are
    /// accounted for in `candidates`.
    literals: AhoCorasick,
    /// For each literal, by pattern id: the checks (indices into `checks`)
    /// that a match of it makes candidates, as a bit set. Those needing the
    /// literal itself, and those needing any literal a match of it can hide
    /// (one inside it, around it, or starting within it).
    candidates: Vec<u64>,
    /// What confirms a candidate on the decoded body: the shipped rules'
    /// own patterns, then credential-named keys followed by `":`.
    checks: Vec<Regex>,
    /// Custom rules' patterns: run on every body, having no literals.
    custom: Vec<Regex>,
}

/// A rule as the prefilter sees it.
pub(super) enum Judged<'r> {
    /// A shipped rule: its pattern and the literals each match holds.
    Shipped(&'r Regex, &'static [&'static str]),
    /// An operator's rule.
    Custom(&'r Regex),
}

impl Prefilter {
    /// `None` when some custom rule cannot be judged on a whole body, a
    /// shipped rule names no literal, or there are more shipped rules than
    /// the 64-bit candidate sets hold: every body is then scanned in full.
    pub(super) fn new<'r>(
        rules: impl IntoIterator<Item = Judged<'r>>,
        credential_field: bool,
    ) -> Option<Prefilter> {
        let mut literals: Vec<&'static str> = Vec::new();
        let mut needed_by: Vec<u64> = Vec::new();
        let mut checks = Vec::new();
        let mut custom = Vec::new();
        let mut need = |literals: &mut Vec<&'static str>, needs: &[&'static str], check: usize| {
            for literal in needs {
                let id = match literals.iter().position(|known| known == literal) {
                    Some(id) => id,
                    None => {
                        literals.push(literal);
                        needed_by.push(0);
                        literals.len() - 1
                    }
                };
                needed_by[id] |= 1 << check;
            }
        };
        for rule in rules {
            match rule {
                Judged::Shipped(regex, needs) => {
                    if checks.len() >= 63 || needs.is_empty() {
                        return None;
                    }
                    need(&mut literals, needs, checks.len());
                    checks.push(regex.clone());
                }
                Judged::Custom(regex) => {
                    if anchors(regex.as_str()) {
                        return None;
                    }
                    custom.push(regex.clone());
                }
            }
        }
        if credential_field {
            let keys = Regex::new(CREDENTIAL_KEY_IN_TEXT).expect("shipped patterns compile");
            need(&mut literals, CREDENTIAL_KEY_NEEDS, checks.len());
            checks.push(keys);
        }
        let candidates = literals
            .iter()
            .map(|found| {
                literals
                    .iter()
                    .zip(&needed_by)
                    .filter(|(other, _)| can_hide(found, other))
                    .fold(0, |mask, (_, needed)| mask | needed)
            })
            .collect();
        let literals = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(&literals)
            .expect("a few short literals build");
        Some(Prefilter {
            literals,
            candidates,
            checks,
            custom,
        })
    }

    /// Whether `body` certainly holds nothing any rule would find in the
    /// strings a scan reads. `false` means only "scan it".
    pub(super) fn clean(&self, body: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(body) else {
            return false;
        };
        let Some(text) = json_unescaped(text) else {
            return false;
        };
        let bytes = text.as_bytes();
        if memchr::memchr_iter(b'%', bytes).any(|at| percent::escape_at(bytes, at))
            || folds_onto_ascii(bytes)
        {
            return false;
        }
        let lowered = bytes.to_ascii_lowercase();
        let mut candidates = 0u64;
        for found in self.literals.find_iter(&lowered) {
            candidates |= self.candidates[found.pattern().as_usize()];
        }
        let mut checked = 0u64;
        while candidates & !checked != 0 {
            let check = (candidates & !checked).trailing_zeros() as usize;
            checked |= 1 << check;
            if self.checks[check].is_match(&text) {
                return false;
            }
        }
        !self.custom.iter().any(|regex| regex.is_match(&text))
    }
}

/// Whether a leftmost-first search that reports `found` can step over an
/// occurrence of `other` (every occurrence it steps over overlaps a
/// reported match): `other` inside `found`, `found` inside `other`, or
/// `other` starting within `found` (a suffix of `found` begins `other`).
fn can_hide(found: &str, other: &str) -> bool {
    found.contains(other)
        || other.contains(found)
        || (1..found.len()).any(|at| other.starts_with(&found[at..]))
}

/// Whether `bytes` holds a character of [`FOLDS_ONTO_ASCII`], found by
/// their UTF-8 lead bytes first.
fn folds_onto_ascii(bytes: &[u8]) -> bool {
    let [first, second] = FOLDS_ONTO_ASCII.map(str::as_bytes);
    memchr::memchr2_iter(first[0], second[0], bytes)
        .any(|at| bytes[at..].starts_with(first) || bytes[at..].starts_with(second))
}

/// Whether `pattern` asserts the start or end of the text or of a line
/// (`^`, `$`, `\A`, `\z`, `(?m)`): what it matches in one string it may not
/// match in the body around it. A pattern that does not parse here is taken
/// to anchor.
fn anchors(pattern: &str) -> bool {
    regex_syntax::parse(pattern).map_or(true, |hir| hir.properties().look_set().contains_anchor())
}

/// `text` with JSON's escapes decoded wherever they are, or `None` when one
/// does not decode (a lone surrogate, an unknown escape): such a body is not
/// strict JSON, and the scan refuses it.
fn json_unescaped(text: &str) -> Option<Cow<'_, str>> {
    let Some(first) = memchr::memchr(b'\\', text.as_bytes()) else {
        return Some(Cow::Borrowed(text));
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..first]);
    let mut rest = &text[first..];
    while let Some(at) = memchr::memchr(b'\\', rest.as_bytes()) {
        out.push_str(&rest[..at]);
        let escape = &rest.as_bytes()[at + 1..];
        let (decoded, used) = match escape.first()? {
            b'"' => ('"', 2),
            b'\\' => ('\\', 2),
            b'/' => ('/', 2),
            b'b' => ('\u{8}', 2),
            b'f' => ('\u{c}', 2),
            b'n' => ('\n', 2),
            b'r' => ('\r', 2),
            b't' => ('\t', 2),
            b'u' => {
                let unit = hex4(escape.get(1..5)?)?;
                match unit {
                    0xD800..=0xDBFF => {
                        let low = match escape.get(5..11)? {
                            [b'\\', b'u', digits @ ..] => hex4(digits)?,
                            _ => return None,
                        };
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                        (char::from_u32(code)?, 12)
                    }
                    _ => (char::from_u32(unit)?, 6),
                }
            }
            _ => return None,
        };
        out.push(decoded);
        rest = &rest[at + used..];
    }
    out.push_str(rest);
    Some(Cow::Owned(out))
}

/// Four hex digits, as in `\uXXXX`.
fn hex4(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |value, &digit| {
        Some(value << 4 | char::from(digit).to_digit(16)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_decode_as_json_reads_them() {
        let decoded = |text: &str| json_unescaped(text).map(Cow::into_owned);
        assert_eq!(decoded(r#"{"a":"b"}"#).as_deref(), Some(r#"{"a":"b"}"#));
        assert_eq!(
            decoded(r#""\u0041KIA\n\"\\\/\t""#).as_deref(),
            Some("\"AKIA\n\"\\/\t\"")
        );
        assert_eq!(decoded(r#""\ud83d\ude00""#).as_deref(), Some("\"😀\""));
        for broken in [
            r"\ud83d",
            r"\ude00",
            r"\ud83d\u0041",
            r"\x41",
            r"\u00g1",
            "\\",
        ] {
            assert_eq!(decoded(broken), None, "{broken}");
        }
    }

    #[test]
    fn only_long_s_and_kelvin_fold_onto_ascii_letters() {
        let letter = Regex::new("(?i)^[a-z]$").unwrap();
        let folding: Vec<char> = (0x80..=0x10FFFF)
            .filter_map(char::from_u32)
            .filter(|c| letter.is_match(c.encode_utf8(&mut [0; 4])))
            .collect();
        let expected: Vec<char> = FOLDS_ONTO_ASCII.iter().flat_map(|c| c.chars()).collect();
        assert_eq!(folding, expected);
        assert!(folds_onto_ascii("a \u{212A}ey".as_bytes()));
        assert!(!folds_onto_ascii("é ſ".replace('ſ', "s").as_bytes()));
    }

    #[test]
    fn a_reported_literal_accounts_for_those_it_can_step_over() {
        assert!(can_hide("sk-", "sk-ant-"), "one starting where it starts");
        assert!(can_hide("sk-ant-", "sk-"), "one inside it");
        assert!(can_hide("passw", "word"), "one starting within it");
        assert!(can_hide("aida", "akia"), "a shared letter at the seam");
        assert!(!can_hide("eyj", "mcp_") && !can_hide("mcp_", "eyj"));
    }

    #[test]
    fn custom_patterns_that_anchor_are_told_apart() {
        for anchored in ["^key", "key$", r"\Akey", r"key\z", "(?m)^key", "[a-z"] {
            assert!(anchors(anchored), "{anchored}");
        }
        for free in [r"\bkey-[0-9a-f]{16}\b", "[^a-z]key", r"key\B"] {
            assert!(!anchors(free), "{free}");
        }
    }
}
