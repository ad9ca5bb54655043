//! A strict scan of a JSON object that builds nothing.
//!
//! Most request bodies only need one question answered: is this a strict JSON
//! object (as [`super::parse_object`] would accept it), and what does one key
//! hold? Building a `serde_json::Value` for that allocated every string and
//! map of a 1 KiB body, a sixth of a rewritten `POST /memories`. This scan
//! walks the bytes once and allocates nothing.
//!
//! It is an accelerator, never a second judge: it vouches for a body only when
//! the answer is plain, and says "not sure" (`None`) for anything it does not
//! decide itself, so the caller parses fully and gets the full parser's answer
//! and error. "Not sure" covers every invalid body, and also valid ones with an
//! escaped key, a number with an exponent or many digits, a `\u` escape of a
//! surrogate, or an object with more than [`MAX_KEYS`] members, whose meaning
//! (equal keys, range) needs the full parser's rules.

use serde_json::Value;

/// Most members per object the scan checks for equal keys (pairwise, on the
/// stack); larger objects go to the full parser.
const MAX_KEYS: usize = 32;

/// Longest number the scan reads itself: far from any `f64` range limit.
const MAX_NUMBER_LEN: usize = 32;

/// For a body the scan can vouch for: `Some(member)`, where `member` is the
/// top-level value of `key` (`None` when the object has no such member).
/// `None` ("not sure") when the body is not a strict JSON object within
/// `max_depth` (top level = 1, as for [`super::parse_object`]), when `key`
/// appears below the top level, when the top-level `key` is not a string
/// without escapes, or for the cases in the module docs.
pub fn top_level_string<'a>(
    bytes: &'a [u8],
    max_depth: usize,
    key: &str,
) -> Option<Option<&'a str>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut scan = Scan {
        text,
        at: 0,
        max_depth: max_depth.min(super::DEPTH_CEILING),
        key: Some(key.as_bytes()),
        member: None,
    };
    scan.skip_space();
    if scan.peek()? != b'{' {
        return None;
    }
    scan.object(1)?;
    scan.skip_space();
    (scan.at == bytes.len()).then_some(scan.member)
}

/// The scan's promise, as a check for tests and fuzzers: when it vouches for
/// `bytes`, [`super::parse_object`] accepts them, reads the same top-level
/// `key`, and finds `key` nowhere deeper.
pub fn scan_agrees_with_parse(bytes: &[u8], max_depth: usize, key: &str) -> bool {
    let Some(member) = top_level_string(bytes, max_depth, key) else {
        return true;
    };
    let Ok(parsed) = super::parse_object(bytes, max_depth) else {
        return false;
    };
    let top = parsed.get(key);
    top.and_then(Value::as_str) == member
        && top.is_none_or(Value::is_string)
        && !parsed.values().any(|value| names_key(value, key))
}

/// Whether `key` is a member name anywhere in `value`.
fn names_key(value: &Value, key: &str) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| k == key || names_key(v, key)),
        Value::Array(items) => items.iter().any(|item| names_key(item, key)),
        _ => false,
    }
}

struct Scan<'a, 'k> {
    text: &'a str,
    at: usize,
    max_depth: usize,
    /// The member [`top_level_string`] looks for; `None` for a [`Cursor`].
    key: Option<&'k [u8]>,
    /// The top-level `key`'s string, once seen.
    member: Option<&'a str>,
}

impl<'a> Scan<'a, '_> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Consumes `byte` after optional whitespace.
    fn expect(&mut self, byte: u8) -> Option<()> {
        self.skip_space();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        self.skip_space();
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// An object at `depth`, from its `{`.
    fn object(&mut self, depth: usize) -> Option<()> {
        if self.entered_empty(depth, b'}')? {
            return Some(());
        }
        let mut keys: [(usize, usize); MAX_KEYS] = [(0, 0); MAX_KEYS];
        let mut count = 0;
        loop {
            self.skip_space();
            if self.peek()? != b'"' {
                return None;
            }
            let (start, end, escaped) = self.string()?;
            let name = &self.bytes()[start..end];
            if escaped || count == MAX_KEYS {
                return None;
            }
            if keys[..count]
                .iter()
                .any(|&(s, e)| &self.bytes()[s..e] == name)
            {
                return None;
            }
            keys[count] = (start, end);
            count += 1;
            self.expect(b':')?;
            if self.key == Some(name) {
                if depth > 1 {
                    return None;
                }
                self.skip_space();
                if self.peek()? != b'"' {
                    return None;
                }
                let (start, end, escaped) = self.string()?;
                if escaped {
                    return None;
                }
                self.member = Some(&self.text[start..end]);
            } else {
                self.value(depth)?;
            }
            if self.closed_after_item(b'}')? {
                return Some(());
            }
        }
    }

    /// An array at `depth`, from its `[`.
    fn array(&mut self, depth: usize) -> Option<()> {
        if self.entered_empty(depth, b']')? {
            return Some(());
        }
        loop {
            self.value(depth)?;
            if self.closed_after_item(b']')? {
                return Some(());
            }
        }
    }

    /// Enters a container at `depth` from its opening byte: whether it is
    /// empty (then `close` is consumed too); `None` when it is too deep.
    fn entered_empty(&mut self, depth: usize, close: u8) -> Option<bool> {
        if depth > self.max_depth {
            return None;
        }
        self.at += 1;
        self.skip_space();
        let empty = self.peek()? == close;
        self.at += usize::from(empty);
        Some(empty)
    }

    /// After a member or element: `,` (another follows: `false`) or `close`
    /// (`true`); anything else is not JSON.
    fn closed_after_item(&mut self, close: u8) -> Option<bool> {
        self.skip_space();
        let next = self.peek()?;
        self.at += 1;
        match next {
            b',' => Some(false),
            byte if byte == close => Some(true),
            _ => None,
        }
    }

    /// A string from its opening quote: the byte range of its contents as
    /// sent and whether it holds an escape.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        self.at += 1;
        let start = self.at;
        let mut escaped = false;
        loop {
            self.at += plain_run(&self.bytes()[self.at..]);
            match self.peek()? {
                b'"' => {
                    let end = self.at;
                    self.at += 1;
                    return Some((start, end, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.escape()?;
                }
                // A control character, which JSON strings must escape.
                _ => return None,
            }
        }
    }

    /// One escape, from its backslash.
    fn escape(&mut self) -> Option<()> {
        let kind = *self.bytes().get(self.at + 1)?;
        match kind {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                self.at += 2;
                Some(())
            }
            b'u' => {
                let hex = self.bytes().get(self.at + 2..self.at + 6)?;
                let hex = std::str::from_utf8(hex).ok()?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                let unit = u16::from_str_radix(hex, 16).ok()?;
                // Surrogates must pair up; the full parser decides those.
                if (0xD800..=0xDFFF).contains(&unit) {
                    return None;
                }
                self.at += 6;
                Some(())
            }
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.bytes()[self.at..]
            .starts_with(word)
            .then(|| self.at += word.len())
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?`; an exponent is left to the full parser.
    fn number(&mut self) -> Option<()> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) || self.at - start > MAX_NUMBER_LEN {
            return None;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }
}

/// A strict reader for answers whose shape the caller knows (mem0's create
/// answer): it walks lists and objects the caller names and skips the rest
/// with the scan's strict rules. Like the scan, it answers `None` ("not
/// sure") for anything it does not decide itself (invalid text, escaped
/// keys, equal keys in a skipped object, exponents, ...): the caller then
/// reads the text with the full parser.
pub struct Cursor<'a>(Scan<'a, 'static>);

impl<'a> Cursor<'a> {
    /// A cursor before the first value of `bytes`, if they are UTF-8.
    pub fn new(bytes: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        Some(Cursor(Scan {
            text,
            at: 0,
            max_depth: super::DEPTH_CEILING,
            key: None,
            member: None,
        }))
    }

    /// The first byte of the next value, after whitespace.
    pub fn peek(&mut self) -> Option<u8> {
        self.0.skip_space();
        self.0.peek()
    }

    /// Steps over the next value, inside a container at `depth` (0 for the
    /// top level).
    pub fn skip_value(&mut self, depth: usize) -> Option<()> {
        self.0.value(depth)
    }

    /// The next value, a string without escapes: its contents.
    pub fn plain_string(&mut self) -> Option<&'a str> {
        if self.peek()? != b'"' {
            return None;
        }
        let (start, end, escaped) = self.0.string()?;
        (!escaped).then(|| &self.0.text[start..end])
    }

    /// Walks the list that is the next value, at `depth`: `item` reads or
    /// skips each element.
    pub fn items(&mut self, depth: usize, item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.container(depth, b'[', b']', item)
    }

    /// Walks the object that is the next value, at `depth`: `member` gets
    /// each key (escaped ones end the walk: not sure) and reads or skips
    /// its value. Equal keys are passed on as they come.
    pub fn members(
        &mut self,
        depth: usize,
        mut member: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        self.container(depth, b'{', b'}', |cursor| {
            let key = cursor.plain_string()?;
            cursor.0.expect(b':')?;
            member(cursor, key)
        })
    }

    /// Walks the container between `open` and `close` that is the next
    /// value, at `depth`, with `each` reading one entry at a time.
    fn container(
        &mut self,
        depth: usize,
        open: u8,
        close: u8,
        mut each: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        if self.peek()? != open {
            return None;
        }
        if self.0.entered_empty(depth, close)? {
            return Some(());
        }
        loop {
            each(self)?;
            if self.0.closed_after_item(close)? {
                return Some(());
            }
        }
    }

    /// Whether only whitespace is left.
    pub fn finished(&mut self) -> bool {
        self.0.skip_space();
        self.0.at == self.0.text.len()
    }
}

/// How many leading bytes of `rest` need no attention inside a string: no
/// quote, backslash or control character. Sixteen bytes at a time, in a form
/// the compiler turns into vector compares.
fn plain_run(rest: &[u8]) -> usize {
    let mut at = 0;
    for chunk in rest.chunks_exact(16) {
        if chunk
            .iter()
            .fold(false, |marked, &b| marked | needs_attention(b))
        {
            break;
        }
        at += 16;
    }
    at + rest[at..]
        .iter()
        .position(|&b| needs_attention(b))
        .unwrap_or(rest.len() - at)
}

/// Non-short-circuit on purpose, so [`plain_run`]'s fold stays branch-free.
fn needs_attention(byte: u8) -> bool {
    (byte == b'"') | (byte == b'\\') | (byte < 0x20)
}

#[cfg(test)]
mod tests {
    use super::super::{JsonError, parse_object, parse_value};
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    const KEY: &str = "user_id";

    fn agrees(bytes: &[u8], max_depth: usize) -> Result<(), TestCaseError> {
        prop_assert!(
            scan_agrees_with_parse(bytes, max_depth, KEY),
            "the scan vouched for {:?}: {:?}",
            String::from_utf8_lossy(bytes),
            parse_object(bytes, max_depth)
        );
        Ok(())
    }

    #[test]
    fn vouches_for_plain_bodies() {
        fn scan(text: &str) -> Option<Option<&str>> {
            top_level_string(text.as_bytes(), 32, KEY)
        }
        assert_eq!(scan("{}"), Some(None));
        assert_eq!(scan(" {\"user_id\" : \"al ice\" }\n"), Some(Some("al ice")));
        assert_eq!(
            scan(
                r#"{"messages":[{"role":"user","content":"I like \"tea\"\n\u00e9"}],"metadata":{"a":-0.5,"b":[true,false,null,10]},"infer":false}"#
            ),
            Some(None)
        );
        assert_eq!(scan("{\"x\":\"caf\u{e9} \u{1f600}\"}"), Some(None));
    }

    #[test]
    fn is_not_sure_where_the_full_parser_decides() {
        for body in [
            r#"{"a":{"user_id":"b"}}"#,
            r#"{"a":[{"user_id":"b"}]}"#,
            r#"{"user_id":null}"#,
            r#"{"user_id":7}"#,
            r#"{"user_id":"\u0061"}"#,
            r#"{"user\u005fid":"a"}"#,
            r#"{"a":1e3}"#,
            r#"{"a":"\ud83d\ude00"}"#,
            "{\"a\":123456789012345678901234567890123}",
        ] {
            assert_eq!(top_level_string(body.as_bytes(), 32, KEY), None, "{body}");
            assert!(parse_object(body.as_bytes(), 32).is_ok(), "{body}");
        }
        let many: Vec<String> = (0..=MAX_KEYS).map(|i| format!("\"k{i}\":{i}")).collect();
        let many = format!("{{{}}}", many.join(","));
        assert_eq!(top_level_string(many.as_bytes(), 32, KEY), None);
    }

    #[test]
    fn never_vouches_for_what_the_full_parser_refuses() {
        for body in [
            "",
            "{",
            "[]",
            "\"x\"",
            "{} {}",
            "{}x",
            "{'a':1}",
            "{\"a\":NaN}",
            "{\"a\":1,}",
            "{,}",
            "{\"a\" 1}",
            "{\"a\":[1,]}",
            "{\"a\":[,1]}",
            "{\"a\":01}",
            "{\"a\":-}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":+1}",
            "{\"a\":tru}",
            "{\"a\":nul}",
            "{\"a\":\"x\ty\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12g4\"}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":1,\"a\":2}",
            "{\"b\":{\"a\":1,\"c\":{},\"a\":2}}",
            "{\"user_id\":\"a\",\"user_id\":\"a\"}",
            "\u{feff}{}",
        ] {
            assert_eq!(top_level_string(body.as_bytes(), 32, KEY), None, "{body:?}");
            assert!(parse_object(body.as_bytes(), 32).is_err(), "{body:?}");
        }
        assert_eq!(top_level_string(b"{\"a\":\"\xff\"}", 32, KEY), None);
        assert_eq!(
            parse_object(b"{\"a\":\"\xff\"}", 32),
            Err(JsonError::InvalidUtf8)
        );
    }

    #[test]
    fn counts_depth_as_the_full_parser_does() {
        fn scan(text: &str, depth: usize) -> Option<Option<&str>> {
            top_level_string(text.as_bytes(), depth, KEY)
        }
        assert_eq!(scan(r#"{"a":{"b":[1]}}"#, 3), Some(None));
        assert_eq!(scan(r#"{"a":{"b":[1]}}"#, 2), None);
        assert_eq!(scan("{}", 0), None);
        let deep = format!("{}{}", "{\"a\":".repeat(150), "}".repeat(150));
        assert_eq!(scan(&deep, usize::MAX), None);
        assert!(parse_value(deep.as_bytes(), usize::MAX).is_err());
    }

    #[test]
    fn the_plain_run_stops_at_the_first_byte_that_needs_attention() {
        for special in [b'"', b'\\', 0x00, 0x1f] {
            for at in 0..40 {
                let mut bytes = vec![b'a'; 40];
                bytes[at] = special;
                assert_eq!(plain_run(&bytes), at);
            }
        }
        assert_eq!(
            plain_run("é \u{7f}~ÿ!#[]".as_bytes()),
            "é \u{7f}~ÿ!#[]".len()
        );
    }

    fn json_text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            "-?(0|[1-9][0-9]{0,5})(\\.[0-9]{1,3})?([eE][+-]?[0-9])?",
            "\"([a-z_ /\u{e9}]|\\\\[nt\"\\\\]|\\\\u00[0-9a-f]{2}|\\\\ud83d\\\\ude00){0,6}\"",
            // Rarely valid: raw quotes, backslashes and control characters.
            "\"[a-z\"\\\\\n\t]{0,3}\"",
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(("\"(user_id|a|b|user\\\\u005fid)\"", inner), 0..4).prop_map(
                    |v| {
                        let members: Vec<String> =
                            v.into_iter().map(|(k, v)| format!("{k} : {v}")).collect();
                        format!("{{ {} }}", members.join(","))
                    }
                ),
            ]
        })
    }

    proptest! {
        /// Generated JSON, valid or not (raw control characters, equal keys,
        /// escaped keys, nested `user_id`), and the same with a byte mangled.
        #[test]
        fn vouches_only_for_what_the_full_parser_reads_the_same(
            text in json_text(),
            cut in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            depth in 1usize..6,
        ) {
            let body = format!("{{\"m\":{text}}}");
            agrees(body.as_bytes(), depth)?;
            let body = format!("{{\"user_id\":\"x\",\"m\":{text}}}");
            agrees(body.as_bytes(), depth)?;
            let mut mangled = body.into_bytes();
            let at = cut.index(mangled.len());
            mangled[at] = byte;
            agrees(&mangled, depth)?;
        }

        /// The scan is worth having: it vouches for ordinary bodies.
        #[test]
        fn vouches_for_ordinary_bodies(
            members in prop::collection::btree_map("[a-z]{1,6}", "[ -~\u{e9}\n]{0,12}", 0..8),
            owner in prop::option::of("[a-z0-9-]{1,12}"),
            pretty in any::<bool>(),
        ) {
            let mut object: serde_json::Map<String, Value> =
                members.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            object.remove(KEY);
            let nested = Value::Object(object.clone());
            object.insert("metadata".into(), Value::Array(vec![nested, 1.5.into(), (-3).into()]));
            if let Some(owner) = &owner {
                object.insert(KEY.into(), Value::String(owner.clone()));
            }
            let text = if pretty {
                serde_json::to_vec_pretty(&object).unwrap()
            } else {
                serde_json::to_vec(&object).unwrap()
            };
            prop_assert_eq!(top_level_string(&text, 32, KEY), Some(owner.as_deref()));
        }
    }
}
