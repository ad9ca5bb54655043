//! The SSE rewriter: parsing by the WHATWG rules, byte-faithful pass-through,
//! rewrites that keep everything they were not asked to change, and chunk
//! boundaries anywhere.

use proptest::prelude::*;

use super::*;

/// Feeds `chunks` and finishes, collecting output and the events seen.
fn run(
    chunks: &[&[u8]],
    mut on_event: impl FnMut(&mut SseEvent),
) -> (Vec<u8>, Result<(), SseError>) {
    let mut sse = SseRewriter::new(1024);
    let mut out = Vec::new();
    for chunk in chunks {
        match sse.feed(chunk, &mut on_event) {
            Ok(bytes) => out.extend(bytes),
            Err(err) => return (out, Err(err)),
        }
    }
    match sse.finish(&mut on_event) {
        Ok(bytes) => out.extend(bytes),
        Err(err) => return (out, Err(err)),
    }
    (out, Ok(()))
}

fn events(stream: &[u8]) -> Vec<SseEvent> {
    let mut seen = Vec::new();
    let (out, result) = run(&[stream], |event| seen.push(event.clone()));
    assert!(result.is_ok());
    assert_eq!(out, stream);
    seen
}

#[test]
fn parses_fields_by_the_standard_rules() {
    let seen = events(
        b": keep-alive\nevent: message\ndata: {\"a\":1}\ndata:second\ndata\nid: 7\nretry: 3000\nfoo: bar\n\n",
    );
    assert_eq!(seen.len(), 1);
    let event = &seen[0];
    assert_eq!(event.event.as_deref(), Some("message"));
    assert_eq!(event.data.as_deref(), Some("{\"a\":1}\nsecond\n"));
    assert_eq!(event.id.as_deref(), Some("7"));
    assert_eq!(event.retry.as_deref(), Some("3000"));
    assert_eq!(event.other_lines(), [": keep-alive", "foo: bar"]);
    assert_eq!(event.event_type(), "message");
}

#[test]
fn ignored_fields_are_kept_as_other_lines() {
    let seen = events(b"id: a\0b\nretry: soon\ndata:  two spaces\nevent\n\n");
    assert_eq!(seen[0].id, None);
    assert_eq!(seen[0].retry, None);
    assert_eq!(seen[0].data.as_deref(), Some(" two spaces"));
    assert_eq!(seen[0].event.as_deref(), Some(""));
    assert_eq!(seen[0].event_type(), "message");
    assert_eq!(seen[0].other_lines(), ["id: a\0b", "retry: soon"]);
}

#[test]
fn every_line_ending_and_blank_lines_between_events() {
    let stream = b"\n\ndata: a\r\n\r\ndata: b\r\rdata: c\n\n\n";
    let seen = events(stream);
    let data: Vec<_> = seen.iter().map(|e| e.data.clone().unwrap()).collect();
    assert_eq!(data, ["a", "b", "c"]);
}

#[test]
fn a_leading_byte_order_mark_is_skipped_but_kept() {
    let seen = events(b"\xEF\xBB\xBFevent: endpoint\ndata: /messages/?session_id=abc\n\n");
    assert_eq!(seen[0].event.as_deref(), Some("endpoint"));
    let (out, _) = run(&[b"\xEF\xBB", b"\xBFdata: x\n\n"], |e| {
        e.data = Some("y".into());
    });
    assert_eq!(out, b"\xEF\xBB\xBFdata: y\n\n");
    // Only at the start of the stream.
    let seen = events(b"data: 1\n\n\xEF\xBB\xBFdata: 2\n\n");
    assert_eq!(seen[1].data, None);
}

#[test]
fn each_event_is_emitted_in_the_call_that_completes_it() {
    let mut sse = SseRewriter::new(1024);
    assert_eq!(sse.feed(b"data: one\n", |_| {}).unwrap(), b"");
    assert_eq!(sse.buffered(), 10);
    assert_eq!(sse.feed(b"\ndata: tw", |_| {}).unwrap(), b"data: one\n\n");
    assert_eq!(
        sse.feed(b"o\n\n: ping\n\n", |_| {}).unwrap(),
        b"data: two\n\n: ping\n\n"
    );
    assert_eq!(sse.buffered(), 0);
    // A `\r` at the end of a chunk ends the event at once; the `\n` that
    // follows in the next chunk is passed on by itself.
    assert_eq!(sse.feed(b"data: 3\r\r", |_| {}).unwrap(), b"data: 3\r\r");
    assert_eq!(sse.feed(b"\ndata: 4\r", |_| {}).unwrap(), b"\n");
    assert_eq!(sse.feed(b"\n", |_| {}).unwrap(), b"");
    assert_eq!(sse.feed(b"\n", |_| {}).unwrap(), b"data: 4\r\n\n");
}

#[test]
fn rewriting_data_keeps_the_rest_of_the_event() {
    let stream =
        b": c\r\nevent: message\r\nid: 1\r\ndata: {\"old\":1}\r\ndata: more\r\nx-y: z\r\n\r\n";
    let (out, _) = run(&[stream], |event| {
        event.data = Some("{\"new\":2}\nline two".to_owned());
    });
    assert_eq!(
        out,
        b": c\r\nevent: message\r\nid: 1\r\ndata: {\"new\":2}\r\ndata: line two\r\nx-y: z\r\n\r\n"
    );
}

#[test]
fn rewriting_other_fields() {
    let stream = b"event: a\nid: 1\nevent: b\ndata: d\n\n";
    let (out, _) = run(&[stream], |event| {
        event.event = Some("c\nd".into());
        event.id = None;
        event.retry = Some("5".into());
    });
    assert_eq!(out, b"event: cd\ndata: d\nretry: 5\n\n");
    let (out, _) = run(&[b"event: x\n\n"], |event| {
        event.data = Some("a\r\nb\rc".into())
    });
    assert_eq!(out, b"event: x\ndata: a\ndata: b\ndata: c\n\n");
    let (out, _) = run(&[b"data: x\rid: 2\r\r"], |event| event.data = None);
    assert_eq!(out, b"id: 2\r\r");
}

#[test]
fn an_incomplete_tail_is_flushed_at_the_end() {
    let (out, _) = run(&[b"data: a\n\ndata: b\nid: 3"], |_| {});
    assert_eq!(out, b"data: a\n\ndata: b\nid: 3");
    let mut seen = Vec::new();
    let (out, _) = run(&[b"data: a\n\ndata: b\nid: 3"], |event| {
        seen.push(event.clone());
        event.data = event.data.as_ref().map(|d| d.to_uppercase());
    });
    assert_eq!(out, b"data: A\n\ndata: B\nid: 3");
    assert_eq!(seen[1].id.as_deref(), Some("3"));
    let (out, _) = run(&[b"id: 3\ndata: b"], |event| {
        event.data = Some("c".into());
        event.event = Some("e".into());
    });
    assert_eq!(out, b"id: 3\ndata: c\nevent: e\n");
    let (out, _) = run(&[b"data: b"], |event| event.data = None);
    assert_eq!(out, b"");
}

#[test]
fn oversized_events_are_refused() {
    let mut sse = SseRewriter::new(16);
    assert!(sse.feed(b"data: 0123456", |_| {}).is_ok());
    assert_eq!(
        sse.feed(b"789abcdef", |_| {}),
        Err(SseError::EventTooLarge { limit: 16 })
    );
    assert!(sse.feed(b"\n\n", |_| {}).is_err());
    assert!(sse.finish(|_| {}).is_err());
    // Many small complete events never trip the cap.
    let mut sse = SseRewriter::new(16);
    let stream = b"data: 12345678\n\n".repeat(100);
    assert_eq!(sse.feed(&stream, |_| {}).unwrap(), stream);
    // Nor do blank lines.
    assert!(sse.feed(&[b'\n'; 100], |_| {}).is_ok());
}

#[test]
fn invalid_utf8_passes_through_untouched() {
    let stream = b"data: \xff\xfe\n\n";
    let seen = events(stream);
    assert_eq!(seen[0].data.as_deref(), Some("\u{fffd}\u{fffd}"));
}

#[test]
fn endpoint_session_ids() {
    assert_eq!(
        endpoint_session_id("/messages/?session_id=abc").as_deref(),
        Some("abc")
    );
    assert_eq!(
        endpoint_session_id(" http://h:1/messages/?x=1&session_id=a%2Fb#frag ").as_deref(),
        Some("a/b")
    );
    for data in [
        "/messages/",
        "/messages/?session_id=",
        "/messages/?session_id=a&session_id=b",
        "/messages/?session_id=%zz",
        "/messages/?sessionid=a",
    ] {
        assert_eq!(endpoint_session_id(data), None, "{data}");
    }
}

fn stream_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"data: ".to_vec()),
        Just(b"event: x".to_vec()),
        Just(b"id: 1".to_vec()),
        Just(b"retry: 9".to_vec()),
        Just(b": c".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        "[a-z{}:\" ]{0,6}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..4),
    ]
}

proptest! {
    #[test]
    fn untouched_streams_are_byte_identical_however_cut(
        pieces in prop::collection::vec(stream_piece(), 0..40),
        cuts in prop::collection::vec(1usize..9, 1..10),
    ) {
        let stream: Vec<u8> = pieces.concat();
        let mut chunks: Vec<&[u8]> = Vec::new();
        let mut rest = stream.as_slice();
        for cut in cuts.iter().cycle() {
            if rest.is_empty() { break; }
            let (head, tail) = rest.split_at((*cut).min(rest.len()));
            chunks.push(head);
            rest = tail;
        }
        let (whole, _) = run(&[&stream], |_| {});
        prop_assert_eq!(&whole, &stream);
        let (cut_up, _) = run(&chunks, |_| {});
        prop_assert_eq!(&cut_up, &stream);
        let rewrite = |event: &mut SseEvent| {
            event.data = event.data.as_ref().map(|d| format!("[{d}]\n+"));
            event.retry = None;
        };
        let (a, _) = run(&[&stream], rewrite);
        let (b, _) = run(&chunks, rewrite);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn rewritten_data_reads_back(text in "[a-z\n\r ]{0,20}") {
        let mut sse = SseRewriter::new(1024);
        let out = sse.feed(b"event: e\ndata: x\n\n", |event| event.data = Some(text.clone())).unwrap();
        let mut seen = Vec::new();
        let mut reader = SseRewriter::new(1024);
        reader.feed(&out, |event| seen.push(event.clone())).unwrap();
        let expected = split_lines(&text).join("\n");
        prop_assert_eq!(seen.len(), 1);
        prop_assert_eq!(seen[0].data.as_deref(), Some(expected.as_str()));
        prop_assert_eq!(seen[0].event.as_deref(), Some("e"));
    }
}
