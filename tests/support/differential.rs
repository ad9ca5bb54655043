//! memgate's HTTP/1 readers and hyper's, fed the same bytes: what each reads,
//! and where they disagree. memgate may refuse what hyper reads (it is the
//! stricter of the two on purpose); it may never read a message differently,
//! nor end a message where hyper does not.
//!
//! Shared by `tests/codec_differential.rs` and the fuzz targets
//! `codec_requests` and `codec_responses`; the including crate provides
//! `http1` (memgate's own).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::http1;
use http1::body::{BodyReader, Step};

/// One message as read: its start line's parts, headers in order, whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub start: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// Why a reader stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The input ended inside a message, or between messages.
    Waiting,
    /// The connection carries no more messages (Connection: close, HTTP/1.0).
    Closed,
    Refused(String),
}

#[derive(Debug)]
pub struct Reading {
    pub messages: Vec<Message>,
    pub ending: Ending,
}

/// Interim answers memgate's upstream exchange skips before refusing.
const MAX_INTERIM: usize = 16;

fn headers_of(map: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn stop(messages: Vec<Message>, ending: Ending) -> Reading {
    Reading { messages, ending }
}

/// Reads a body by `framing` from `buf`; `None` with the ending when it is
/// not there whole. `at_eof`: the sender closed after `buf`.
fn body(buf: &mut BytesMut, mut reader: BodyReader, at_eof: bool) -> Result<Vec<u8>, Ending> {
    let mut body = Vec::new();
    loop {
        match reader.next(buf) {
            Ok(Step::Data(data)) => body.extend_from_slice(&data),
            Ok(Step::End) => return Ok(body),
            Ok(Step::NeedMore) if at_eof && reader.closed() => return Ok(body),
            Ok(Step::NeedMore) if at_eof => return Err(Ending::Refused("body cut short".into())),
            Ok(Step::NeedMore) => return Err(Ending::Waiting),
            Err(e) => return Err(Ending::Refused(e.0.to_string())),
        }
    }
}

/// The requests memgate's reader takes from `input`, as its gate admits
/// them: a request that sends both a length and an encoding is refused, and
/// CONNECT is refused and its connection closed.
pub fn memgate_requests(input: &[u8]) -> Reading {
    let mut buf = BytesMut::from(input);
    let mut messages = Vec::new();
    loop {
        let req = match http1::head::take_request(&mut buf) {
            Ok(Some(req)) => req,
            Ok(None) => return stop(messages, Ending::Waiting),
            Err(e) => return stop(messages, Ending::Refused(e.0)),
        };
        let parts = &req.parts;
        let sent = |name| http1::values(&parts.headers, name).next().is_some();
        if parts.method == http::Method::CONNECT {
            return stop(messages, Ending::Refused("CONNECT".into()));
        }
        if sent(&http::header::TRANSFER_ENCODING) && sent(&http::header::CONTENT_LENGTH) {
            return stop(
                messages,
                Ending::Refused("both a length and an encoding".into()),
            );
        }
        let body = match body(&mut buf, BodyReader::of_request(req.framing), false) {
            Ok(body) => body,
            Err(ending) => return stop(messages, ending),
        };
        messages.push(Message {
            start: format!("{} {} {:?}", parts.method, parts.uri, parts.version),
            headers: headers_of(&parts.headers),
            body,
        });
        if !req.keep_alive {
            return stop(messages, Ending::Closed);
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The requests hyper's HTTP/1 server reads from `input`, sent at once and
/// followed by the client's half-close.
pub fn hyper_requests(input: &[u8]) -> Reading {
    runtime().block_on(async {
        let (client, server) = tokio::io::duplex(input.len() + 64 * 1024);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let record = record.clone();
            async move {
                let (parts, incoming) = req.into_parts();
                let body = incoming.collect().await?.to_bytes();
                record.lock().unwrap().push(Message {
                    start: format!("{} {} {:?}", parts.method, parts.uri, parts.version),
                    headers: headers_of(&parts.headers),
                    body: body.to_vec(),
                });
                Ok::<_, hyper::Error>(hyper::Response::new(Empty::<Bytes>::new()))
            }
        });
        let (mut read, mut write) = tokio::io::split(client);
        write.write_all(input).await.expect("duplex write");
        write.shutdown().await.expect("duplex shutdown");
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = read.read_to_end(&mut sink).await;
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .max_headers(http1::head::MAX_HEADERS)
            .serve_connection(TokioIo::new(server), service);
        let ending = match tokio::time::timeout(Duration::from_secs(10), conn).await {
            Ok(Ok(())) => Ending::Closed,
            Ok(Err(e)) => Ending::Refused(e.to_string()),
            Err(_) => Ending::Waiting,
        };
        drain.abort();
        let messages = std::mem::take(&mut *seen.lock().unwrap());
        Reading { messages, ending }
    })
}

/// Where the two request readers disagree on `input`, if they do.
pub fn compare_requests(input: &[u8]) -> Result<(), String> {
    let ours = memgate_requests(input);
    let theirs = hyper_requests(input);
    agree(&ours, &theirs, "request")
}

/// A message with its headers ordered by name, each name's values in the
/// order sent: a header map may reorder names (removal swaps entries), and
/// only the order of one name's values carries meaning.
fn by_name(message: &Message) -> Message {
    let mut message = message.clone();
    message.headers.sort_by(|a, b| a.0.cmp(&b.0));
    message
}

fn agree(ours: &Reading, theirs: &Reading, what: &str) -> Result<(), String> {
    for (i, mine) in ours.messages.iter().enumerate() {
        match theirs.messages.get(i) {
            Some(other) if by_name(other) == by_name(mine) => {}
            Some(other) => {
                return Err(format!(
                    "{what} {i}: memgate read {mine:?}, hyper read {other:?}"
                ));
            }
            None => {
                return Err(format!(
                    "{what} {i}: memgate read {mine:?}, hyper stopped: {:?}",
                    theirs.ending
                ));
            }
        }
    }
    if ours.ending == Ending::Waiting && theirs.messages.len() > ours.messages.len() {
        return Err(format!(
            "memgate waits inside {what} {} where hyper read {:?}",
            ours.messages.len(),
            theirs.messages[ours.messages.len()]
        ));
    }
    Ok(())
}

/// The final answer memgate's reader takes from `input`, an upstream's
/// bytes up to its close, to a GET (or a HEAD).
pub fn memgate_response(input: &[u8], head: bool) -> Reading {
    let mut buf = BytesMut::from(input);
    let mut interim = 0;
    let resp = loop {
        match http1::head::take_response(&mut buf, head) {
            Ok(Some(resp)) if resp.status.as_u16() == 101 => {
                return stop(Vec::new(), Ending::Refused("switched protocols".into()));
            }
            Ok(Some(resp)) if resp.status.is_informational() => {
                interim += 1;
                if interim > MAX_INTERIM {
                    return stop(Vec::new(), Ending::Refused("interim answers".into()));
                }
            }
            Ok(Some(resp)) => break resp,
            Ok(None) => return stop(Vec::new(), Ending::Refused("head cut short".into())),
            Err(e) => return stop(Vec::new(), Ending::Refused(e.0)),
        }
    };
    match body(&mut buf, BodyReader::of(resp.framing), true) {
        Ok(body) => stop(
            vec![Message {
                start: format!("{} {:?}", resp.status.as_u16(), resp.version),
                headers: grouped(resp.headers()),
                body,
            }],
            Ending::Closed,
        ),
        Err(ending) => stop(Vec::new(), ending),
    }
}

/// Headers in wire order, as a header map holds them.
fn grouped<'a>(headers: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Vec<(String, Vec<u8>)> {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        match (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            (Ok(name), Ok(value)) => {
                map.append(name, value);
            }
            _ => panic!("memgate kept a header no header map holds: {name:?}: {value:?}"),
        }
    }
    headers_of(&map)
}

/// The end-to-end headers of an answer, as a proxy passes them on: without
/// the hop-by-hop ones and those its `Connection` header names.
fn end_to_end(map: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    let named: Vec<String> = map
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "keep-alive" && t != "close")
        .collect();
    headers_of(map)
        .into_iter()
        .filter(|(n, _)| !http1::is_hop_by_hop(n.as_bytes()) && !named.contains(n))
        .collect()
}

/// The answer hyper's HTTP/1 client reads from `input`, an upstream's bytes
/// up to its close, to a GET (or a HEAD).
pub fn hyper_response(input: &[u8], head: bool) -> Reading {
    runtime().block_on(async {
        let (client, server) = tokio::io::duplex(input.len() + 64 * 1024);
        let input = input.to_vec();
        let upstream = tokio::spawn(async move {
            let (mut read, mut write) = tokio::io::split(server);
            let mut request = [0u8; 1024];
            // The answer follows the request, as an upstream's would.
            let _ = read.read(&mut request).await;
            let _ = write.write_all(&input).await;
            let _ = write.shutdown().await;
            let mut sink = Vec::new();
            let _ = read.read_to_end(&mut sink).await;
        });
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
                .max_headers(http1::head::MAX_HEADERS)
                .handshake::<_, Empty<Bytes>>(TokioIo::new(client))
                .await?;
            tokio::spawn(conn);
            let method = if head { "HEAD" } else { "GET" };
            let request = hyper::Request::builder()
                .method(method)
                .uri("/")
                .header("host", "upstream")
                .body(Empty::new())
                .expect("request");
            let resp = sender.send_request(request).await?;
            let (parts, incoming) = resp.into_parts();
            let body = incoming.collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Message {
                start: format!("{} {:?}", parts.status.as_u16(), parts.version),
                headers: end_to_end(&parts.headers),
                body: body.to_vec(),
            })
        })
        .await;
        upstream.abort();
        match outcome {
            Ok(Ok(message)) => stop(vec![message], Ending::Closed),
            Ok(Err(e)) => stop(Vec::new(), Ending::Refused(e.to_string())),
            Err(_) => stop(Vec::new(), Ending::Waiting),
        }
    })
}

/// Where the two response readers disagree on `input`, if they do.
pub fn compare_response(input: &[u8], head: bool) -> Result<(), String> {
    let ours = memgate_response(input, head);
    let theirs = hyper_response(input, head);
    agree(&ours, &theirs, "response")
}
