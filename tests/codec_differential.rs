//! memgate's HTTP/1 request and response readers against hyper's on the same
//! bytes (tests/support/differential.rs says what must agree). Generated
//! messages are built from the pieces two parsers are known to read
//! differently (lengths, encodings, chunk sizes, line ends, folding,
//! pipelining), then sometimes mutated byte by byte; every disagreement found
//! is kept below as a regression with the decision taken.

use memgate::http1;
use proptest::prelude::*;

#[path = "support/differential.rs"]
mod differential;

use differential::{
    Ending, compare_requests, compare_response, hyper_requests, memgate_requests, memgate_response,
};

fn method() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "CONNECT", "PATCH", "get", "G\tT", "X-Y",
    ])
}

fn target() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "/",
        "/memories/?user_id=alice",
        "/mcp",
        "*",
        "http://memgate/x",
        "https://h:1/",
        "memgate:443",
        "//x",
        "/a b",
        "/%2e%2e/",
        "x",
        "/\u{e9}",
        "/?q=\"",
    ])
}

fn version() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "HTTP/1.1",
        "HTTP/1.0",
        "HTTP/1.2",
        "HTTP/2.0",
        "http/1.1",
        "HTTP/1.1 ",
    ])
}

fn length_value(real: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(real.to_string()),
        1 => Just(format!("0{real}")),
        1 => Just(format!(" {real} ")),
        1 => Just(format!("{real},{real}")),
        1 => Just(format!("+{real}")),
        1 => Just("-1".to_string()),
        1 => Just("18446744073709551616".to_string()),
        1 => (0usize..20).prop_map(|n| n.to_string()),
    ]
}

fn encoding_value() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "chunked",
        "chunked",
        "Chunked",
        " chunked ",
        "gzip, chunked",
        "chunked, chunked",
        "identity",
        "chunked;q=1",
        "\tchunked",
    ])
}

/// A body in chunked coding, with some of the variations a chunk line allows
/// or almost allows.
fn chunked(body: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let cut = body.len() / 2;
    (
        prop::sample::select(vec!["", ";ext=1", ";ext=\"q\"", " ;x", "\t", ";", "0"]),
        prop::sample::select(vec!["\r\n", "\n", "\r"]),
        any::<bool>(),
        prop::sample::select(vec!["", "X-Trailer: 1\r\n", "bad trailer\r\n"]),
    )
        .prop_map(move |(ext, line_end, upper, trailer)| {
            let mut out = Vec::new();
            for part in [&body[..cut], &body[cut..]] {
                if part.is_empty() {
                    continue;
                }
                let size = if upper {
                    format!("{:X}", part.len())
                } else {
                    format!("{:x}", part.len())
                };
                out.extend_from_slice(format!("{size}{ext}{line_end}").as_bytes());
                out.extend_from_slice(part);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(format!("0{line_end}{trailer}\r\n").as_bytes());
            out
        })
}

#[derive(Debug, Clone)]
enum Framed {
    None,
    Length(String),
    Chunked(&'static str, Vec<u8>),
    Both(String, &'static str, Vec<u8>),
}

/// How a body is framed: not at all, by a length, by chunks, or both.
fn framed(body: &[u8]) -> impl Strategy<Value = Framed> + use<> {
    prop_oneof![
        2 => Just(Framed::None),
        3 => length_value(body.len()).prop_map(Framed::Length),
        3 => (encoding_value(), chunked(body.to_vec())).prop_map(|(e, c)| Framed::Chunked(e, c)),
        1 => (length_value(body.len()), encoding_value(), chunked(body.to_vec()))
            .prop_map(|(l, e, c)| Framed::Both(l, e, c)),
    ]
}

/// Appends the framing headers, the end of the head and the framed body.
fn finish(out: &mut Vec<u8>, framed: Framed, body: Vec<u8>, unframed: Vec<u8>) {
    let payload = match framed {
        Framed::None => unframed,
        Framed::Length(l) => {
            out.extend_from_slice(format!("Content-Length: {l}\r\n").as_bytes());
            body
        }
        Framed::Chunked(e, c) => {
            out.extend_from_slice(format!("Transfer-Encoding: {e}\r\n").as_bytes());
            c
        }
        Framed::Both(l, e, c) => {
            out.extend_from_slice(format!("Content-Length: {l}\r\n").as_bytes());
            out.extend_from_slice(format!("Transfer-Encoding: {e}\r\n").as_bytes());
            c
        }
    };
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&payload);
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    let body = prop::collection::vec(any::<u8>(), 0..40);
    (
        method(),
        target(),
        version(),
        body,
        0usize..3,
        any::<bool>(),
    )
        .prop_flat_map(|(method, target, version, body, hosts, close)| {
            let framed = framed(&body);
            let extra = prop::collection::vec(
                prop::sample::select(vec![
                    "X-A: 1",
                    "x-a: 2",
                    "X-Fold: a\r\n b",
                    "X-Space : v",
                    "X-Empty:",
                    "X-Tab:\tv\t",
                    "X-Bin: \u{80}",
                    "Connection: keep-alive",
                    "Connection: close",
                    "Expect: 100-continue",
                    "X-MCP-Token: mcp_x",
                    "Bad Name: v",
                    ": empty",
                ]),
                0..3,
            );
            (
                Just((method, target, version, body, hosts, close)),
                framed,
                extra,
            )
        })
        .prop_map(
            |((method, target, version, body, hosts, close), framed, extra)| {
                let mut out = format!("{method} {target} {version}\r\n").into_bytes();
                for i in 0..hosts {
                    out.extend_from_slice(format!("Host: h{i}\r\n").as_bytes());
                }
                for line in extra {
                    out.extend_from_slice(line.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                if close {
                    out.extend_from_slice(b"Connection: close\r\n");
                }
                // A request without framing has no body.
                finish(&mut out, framed, body, Vec::new());
                out
            },
        )
}

/// Sometimes one byte changed, inserted or removed: the damage a fuzzer does.
fn mutated(bytes: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = bytes.len().max(1);
    (0usize..4, 0..len, any::<u8>()).prop_map(move |(how, at, byte)| {
        let mut out = bytes.clone();
        let at = at.min(out.len().saturating_sub(1));
        match how {
            1 if !out.is_empty() => out[at] = byte,
            2 => out.insert(at, byte),
            3 if !out.is_empty() => {
                out.remove(at);
            }
            _ => {}
        }
        out
    })
}

fn pipelined() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(request(), 1..4)
        .prop_map(|rs| rs.concat())
        .prop_flat_map(mutated)
}

fn status_line() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "HTTP/1.1 200 OK",
        "HTTP/1.1 200",
        "HTTP/1.0 200 OK",
        "HTTP/1.1 204 No Content",
        "HTTP/1.1 304 Not Modified",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK",
        "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created",
        "HTTP/1.1 404 Not Found",
        "HTTP/1.1 999 Odd",
        "HTTP/1.1 20 Short",
        "HTTP/2 200",
    ])
}

fn response() -> impl Strategy<Value = Vec<u8>> {
    let body = prop::collection::vec(any::<u8>(), 0..40);
    (status_line(), body)
        .prop_flat_map(|(status, body)| {
            let framed = framed(&body);
            let extra = prop::collection::vec(
                prop::sample::select(vec![
                    "Content-Type: application/json",
                    "X-A: 1",
                    "x-a: 2",
                    "Connection: close",
                    "Connection: x-a",
                    "Keep-Alive: timeout=5",
                    "X-Fold: a\r\n b",
                    "Set-Cookie: a=1",
                    "Location: http://upstream/x",
                ]),
                0..3,
            );
            (Just((status, body)), framed, extra)
        })
        .prop_map(|((status, body), framed, extra)| {
            let mut out = format!("{status}\r\n").into_bytes();
            for line in extra {
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            // An answer without framing runs to the close.
            finish(&mut out, framed, body.clone(), body);
            out
        })
        .prop_flat_map(mutated)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn memgate_reads_requests_as_hyper_does(input in pipelined()) {
        if let Err(why) = compare_requests(&input) {
            prop_assert!(false, "{why}\ninput: {:?}", String::from_utf8_lossy(&input));
        }
    }

    #[test]
    fn memgate_reads_answers_as_hyper_does(input in response(), head in any::<bool>()) {
        if let Err(why) = compare_response(&input, head) {
            prop_assert!(false, "{why}\ninput: {:?}", String::from_utf8_lossy(&input));
        }
    }
}

/// The harness itself tells a disagreement: a reader that ended a body early
/// would be caught.
#[test]
fn the_comparison_catches_a_request_read_differently() {
    let input = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
    let ours = memgate_requests(input);
    assert_eq!(ours.messages.len(), 2);
    assert_eq!(ours.messages[0].body, b"abc");
    let theirs = hyper_requests(input);
    assert_eq!(theirs.messages, ours.messages);
    let mut shifted = ours.messages.clone();
    shifted[0].body.pop();
    assert_ne!(shifted, theirs.messages);
    assert_eq!(ours.ending, Ending::Waiting);
}

#[test]
fn an_answer_without_length_ends_at_the_close_for_both() {
    let input = b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nX-Keep: 2\r\n\r\nuntil close";
    let ours = memgate_response(input, false);
    assert_eq!(ours.messages[0].body, b"until close");
    assert_eq!(
        ours.messages[0].headers,
        vec![("x-keep".to_string(), b"2".to_vec())]
    );
    compare_response(input, false).unwrap();
    assert!(memgate_response(input, true).messages[0].body.is_empty());
    compare_response(input, true).unwrap();
}

#[test]
fn memgate_stays_stricter_where_hyper_is_lenient() {
    // Each is read by hyper and refused by memgate on purpose.
    for input in [
        &b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 05\r\n\r\nabcde"[..],
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        assert!(
            matches!(memgate_requests(input).ending, Ending::Refused(_)),
            "{:?}",
            String::from_utf8_lossy(input)
        );
        compare_requests(input).unwrap();
    }
    assert!(http1::parse_request_length(b"05").is_none());
}
