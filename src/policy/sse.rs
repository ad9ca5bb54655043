//! Server-sent events (the `text/event-stream` of MCP's transports), parsed
//! and rewritten incrementally as the chunks of a streamed response arrive.
//!
//! [`SseRewriter::feed`] takes each chunk and returns the bytes to send on:
//! every event the chunk completes is parsed, handed to a callback that may
//! change it, and emitted in that same call, so a stream is never held back
//! by more than one incomplete event. An event the callback leaves alone is
//! emitted byte for byte as it came; a changed one is re-serialised line by
//! line, keeping comments, unknown fields, field order and line endings, and
//! replacing only the fields that changed. Lines end in `\n`, `\r\n` or `\r`
//! (a `\r` at the end of one chunk followed by `\n` in the next is one line
//! end). An incomplete event is buffered up to a size cap, past which the
//! stream is refused rather than buffered without end.
//!
//! Parsing follows the WHATWG rules: `field: value` (one space after the
//! colon dropped), a line starting with `:` is a comment, a line without a
//! colon is a field with an empty value, `data` lines are joined with `\n`,
//! an `id` containing NUL and a non-numeric `retry` are ignored, a leading
//! byte-order mark is skipped.

use thiserror::Error;

use super::query::Query;

/// Default cap on one buffered event (tool lists with schemas can be large).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Why a stream was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SseError {
    #[error("a server-sent event is larger than {limit} bytes")]
    EventTooLarge { limit: usize },
}

/// One event, as the callback sees it. Changing `event`, `data`, `id` or
/// `retry` rewrites the event; `None` removes the field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field (the last one given); `None` means `message`.
    pub event: Option<String>,
    /// The `data` lines joined with `\n`; `None` when there are none.
    pub data: Option<String>,
    /// The `id` field (the last valid one).
    pub id: Option<String>,
    /// The `retry` field (the last valid one), digits only.
    pub retry: Option<String>,
    /// Comments and unknown or ignored fields, as sent: kept, never changed.
    other: Vec<String>,
}

impl SseEvent {
    /// Comment and unknown-field lines, in order.
    pub fn other_lines(&self) -> &[String] {
        &self.other
    }

    /// The event type a client dispatches on.
    pub fn event_type(&self) -> &str {
        match self.event.as_deref() {
            None | Some("") => "message",
            Some(kind) => kind,
        }
    }
}

/// What a line of an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Event,
    Data,
    Id,
    Retry,
    Other,
}

/// A complete line in the buffer: `start..content_start` is a byte-order
/// mark (first line of a stream only), `content_start..content_end` the line,
/// `content_end..end` its line ending.
#[derive(Clone, Copy, Debug)]
struct Line {
    start: usize,
    content_start: usize,
    content_end: usize,
    end: usize,
}

/// The incremental parser and rewriter of one stream.
#[derive(Debug)]
pub struct SseRewriter {
    max_event_bytes: usize,
    /// The raw bytes of the event in progress, its incomplete line last.
    buf: Vec<u8>,
    lines: Vec<Line>,
    /// Start of the incomplete line in `buf`.
    line_start: usize,
    /// The last byte seen was a `\r` ending a line: a `\n` next belongs to it.
    after_cr: bool,
    /// No line of the stream has been completed yet (a BOM may lead it).
    at_stream_start: bool,
    failed: bool,
}

impl Default for SseRewriter {
    fn default() -> SseRewriter {
        SseRewriter::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseRewriter {
    pub fn new(max_event_bytes: usize) -> SseRewriter {
        SseRewriter {
            max_event_bytes,
            buf: Vec::new(),
            lines: Vec::new(),
            line_start: 0,
            after_cr: false,
            at_stream_start: true,
            failed: false,
        }
    }

    /// Bytes held back: the incomplete event.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next chunk of the stream and returns the bytes to send on:
    /// every event it completes, after `on_event`. After an error the stream
    /// is over: every later call returns the error again.
    pub fn feed<F: FnMut(&mut SseEvent)>(
        &mut self,
        chunk: &[u8],
        mut on_event: F,
    ) -> Result<Vec<u8>, SseError> {
        if self.failed {
            return Err(self.too_large());
        }
        let mut out = Vec::new();
        let mut rest = chunk;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if let Some(tail) = rest.strip_prefix(b"\n") {
                // The second half of a `\r\n` split between chunks.
                match self.lines.last_mut() {
                    Some(line) if self.line_start == self.buf.len() => {
                        self.buf.push(b'\n');
                        line.end += 1;
                        self.line_start += 1;
                    }
                    _ => out.push(b'\n'),
                }
                rest = tail;
            }
        }
        while let Some(at) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let ending_len = match (rest[at], rest.get(at + 1)) {
                (b'\r', Some(b'\n')) => 2,
                (b'\r', None) => {
                    self.after_cr = true;
                    1
                }
                _ => 1,
            };
            let (content, tail) = rest.split_at(at);
            let (ending, tail) = tail.split_at(ending_len);
            self.buf.extend_from_slice(content);
            let content_end = self.buf.len();
            self.buf.extend_from_slice(ending);
            self.end_line(content_end, &mut out, &mut on_event);
            if self.buf.len() > self.max_event_bytes {
                return self.fail();
            }
            rest = tail;
        }
        self.buf.extend_from_slice(rest);
        if self.buf.len() > self.max_event_bytes {
            return self.fail();
        }
        Ok(out)
    }

    /// Ends the stream: an incomplete event still buffered (which a client
    /// would discard) goes through `on_event` and is sent as it stands.
    pub fn finish<F: FnMut(&mut SseEvent)>(
        &mut self,
        mut on_event: F,
    ) -> Result<Vec<u8>, SseError> {
        if self.failed {
            return Err(self.too_large());
        }
        let mut out = Vec::new();
        if self.line_start < self.buf.len() {
            let content_end = self.buf.len();
            let line = self.line_at(content_end);
            self.lines.push(line);
        }
        if !self.lines.is_empty() {
            self.dispatch(self.buf.len(), &mut out, &mut on_event);
        } else {
            out.append(&mut self.buf);
        }
        self.reset();
        Ok(out)
    }

    /// A line has just been completed in `buf` (its ending included).
    fn end_line<F: FnMut(&mut SseEvent)>(
        &mut self,
        content_end: usize,
        out: &mut Vec<u8>,
        on_event: &mut F,
    ) {
        let line = self.line_at(content_end);
        self.at_stream_start = false;
        if line.content_start < line.content_end {
            self.lines.push(line);
            self.line_start = self.buf.len();
            return;
        }
        // A blank line ends the event; with no event, it is passed on.
        if self.lines.is_empty() {
            out.append(&mut self.buf);
        } else {
            self.dispatch(line.start, out, on_event);
        }
        self.reset();
    }

    fn line_at(&self, content_end: usize) -> Line {
        let start = self.line_start;
        let has_bom = self.at_stream_start
            && self
                .buf
                .get(start..content_end)
                .is_some_and(|content| content.starts_with(BOM));
        Line {
            start,
            content_start: if has_bom { start + BOM.len() } else { start },
            content_end,
            end: self.buf.len(),
        }
    }

    /// Parses `lines`, runs the callback, and emits the event: the original
    /// bytes when unchanged, else the rewrite followed by `buf[blank..]`.
    fn dispatch<F: FnMut(&mut SseEvent)>(
        &mut self,
        blank: usize,
        out: &mut Vec<u8>,
        on_event: &mut F,
    ) {
        let kinds: Vec<(Kind, String)> = self
            .lines
            .iter()
            .map(|line| classify(&self.buf[line.content_start..line.content_end]))
            .collect();
        let original = build_event(&kinds);
        let mut event = original.clone();
        on_event(&mut event);
        if event == original {
            out.extend_from_slice(&self.buf);
            return;
        }
        let plan = Rewrite {
            original: &original,
            event: &event,
            kinds: &kinds,
        };
        plan.write(&self.buf, &self.lines, out);
        out.extend_from_slice(self.buf.get(blank..).unwrap_or_default());
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.lines.clear();
        self.line_start = 0;
    }

    fn too_large(&self) -> SseError {
        SseError::EventTooLarge {
            limit: self.max_event_bytes,
        }
    }

    fn fail(&mut self) -> Result<Vec<u8>, SseError> {
        self.failed = true;
        self.reset();
        Err(self.too_large())
    }
}

/// A line's kind and, for fields, its value.
fn classify(content: &[u8]) -> (Kind, String) {
    let text = String::from_utf8_lossy(content).into_owned();
    if text.starts_with(':') {
        return (Kind::Other, text);
    }
    let (name, value) = match text.split_once(':') {
        Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
        None => (text.as_str(), ""),
    };
    let kind = match name {
        "event" => Kind::Event,
        "data" => Kind::Data,
        "id" if !value.contains('\0') => Kind::Id,
        "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => Kind::Retry,
        _ => return (Kind::Other, text),
    };
    (kind, value.to_owned())
}

fn build_event(kinds: &[(Kind, String)]) -> SseEvent {
    let mut event = SseEvent::default();
    let mut data: Vec<&str> = Vec::new();
    for (kind, value) in kinds {
        match kind {
            Kind::Event => event.event = Some(value.clone()),
            Kind::Data => data.push(value),
            Kind::Id => event.id = Some(value.clone()),
            Kind::Retry => event.retry = Some(value.clone()),
            Kind::Other => event.other.push(value.clone()),
        }
    }
    if !data.is_empty() {
        event.data = Some(data.join("\n"));
    }
    event
}

/// Re-serialises a changed event over its original lines.
struct Rewrite<'a> {
    original: &'a SseEvent,
    event: &'a SseEvent,
    kinds: &'a [(Kind, String)],
}

impl Rewrite<'_> {
    fn value(event: &SseEvent, kind: Kind) -> Option<&str> {
        match kind {
            Kind::Event => event.event.as_deref(),
            Kind::Data => event.data.as_deref(),
            Kind::Id => event.id.as_deref(),
            Kind::Retry => event.retry.as_deref(),
            Kind::Other => None,
        }
    }

    fn changed(&self, kind: Kind) -> bool {
        Self::value(self.original, kind) != Self::value(self.event, kind)
    }

    /// Where a changed field is written: data at its first line, the others
    /// at their last (the one a client reads).
    fn anchor(&self, kind: Kind) -> Option<usize> {
        let mut at = self
            .kinds
            .iter()
            .enumerate()
            .filter(|(_, (k, _))| *k == kind);
        match kind {
            Kind::Data => at.next(),
            _ => at.next_back(),
        }
        .map(|(index, _)| index)
    }

    fn write(&self, buf: &[u8], lines: &[Line], out: &mut Vec<u8>) {
        let default_ending = lines
            .first()
            .and_then(|line| buf.get(line.content_end..line.end))
            .filter(|ending| !ending.is_empty())
            .unwrap_or(b"\n");
        if let Some(first) = lines.first() {
            out.extend_from_slice(&buf[first.start..first.content_start]);
        }
        // Only the last line of an event cut short by the end of the stream
        // lacks an ending; anything written after it must supply one.
        let mut unterminated = false;
        for (index, (line, (kind, _))) in lines.iter().zip(self.kinds).enumerate() {
            let ending = &buf[line.content_end..line.end];
            if *kind == Kind::Other || !self.changed(*kind) {
                out.extend_from_slice(&buf[line.content_start..line.end]);
                unterminated = ending.is_empty();
            } else if self.anchor(*kind) == Some(index) {
                let cut_short = ending.is_empty();
                let ending = if cut_short { default_ending } else { ending };
                let written = self.write_field(*kind, ending, out);
                if written && cut_short {
                    out.truncate(out.len().saturating_sub(ending.len()));
                }
                unterminated = written && cut_short;
            }
        }
        for kind in [Kind::Event, Kind::Id, Kind::Retry, Kind::Data] {
            if self.changed(kind) && self.anchor(kind).is_none() {
                if unterminated {
                    out.extend_from_slice(default_ending);
                    unterminated = false;
                }
                self.write_field(kind, default_ending, out);
            }
        }
    }

    /// Writes the field's new lines; `false` when it has no value any more.
    fn write_field(&self, kind: Kind, ending: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(value) = Self::value(self.event, kind) else {
            return false;
        };
        let mut line = |name: &str, value: &str| {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(ending);
        };
        match kind {
            Kind::Data => {
                for piece in split_lines(value) {
                    line("data", piece);
                }
            }
            // One-line fields: a line break would end the field early.
            Kind::Event | Kind::Id | Kind::Retry => {
                let name = match kind {
                    Kind::Event => "event",
                    Kind::Id => "id",
                    _ => "retry",
                };
                let single: String = value
                    .chars()
                    .filter(|c| !matches!(c, '\r' | '\n'))
                    .collect();
                line(name, &single);
            }
            Kind::Other => return false,
        }
        true
    }
}

/// Splits on `\r\n`, `\r` and `\n`, as a client would.
fn split_lines(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(['\r', '\n']) {
        pieces.push(&rest[..at]);
        let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[at + skip..];
    }
    pieces.push(rest);
    pieces
}

/// The legacy SSE transport's `endpoint` event data (`/messages/?session_id=
/// abc`, or an absolute URL) → its `session_id`. `None` when the data has no
/// query, an invalid one, no `session_id`, an empty one or more than one.
pub fn endpoint_session_id(data: &str) -> Option<String> {
    let (_, query) = data.trim().split_once('?')?;
    let query = query.split('#').next().unwrap_or_default();
    let parsed = Query::parse(query).ok()?;
    let mut values = parsed
        .pairs()
        .iter()
        .filter(|(key, _)| key == "session_id")
        .map(|(_, value)| value);
    let first = values.next()?;
    (values.next().is_none() && !first.is_empty()).then(|| first.clone())
}

#[cfg(test)]
mod tests;
