//! Streamed pass-through (docs/design.md §1 step 5): requests the policy passes on
//! unchanged (MCP streams, DELETEs and other paths; mem0 routes allow-listed
//! with `mem0.allowed_routes`) have their body pumped to the upstream with the
//! client's framing and their answer streamed back framed for a kept-alive
//! connection. Ambiguous framing and CONNECT never reach the upstream, and a
//! client hanging up ends the upstream stream. An upstream dying mid-body
//! never looks like a complete answer, interim answers are not passed on, a
//! switch of protocols nobody asked for is a 502, a stalled body a 408, and
//! hop-by-hop headers stay on their hop. Every test checks what the upstream
//! actually received.

mod support;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Longest any single network step may take.
const WAIT: Duration = Duration::from_secs(10);

/// `fut`, or a panic naming `what` if it takes longer than [`WAIT`].
async fn timed<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
}

/// The `/stream/...` paths these tests send to the MCP listener, which
/// forwards only the paths it is told to (`mcp.allowed_paths`).
const STREAM_PATHS: &[&str] = &[
    "/stream/after",
    "/stream/broken",
    "/stream/chunked",
    "/stream/connect",
    "/stream/control",
    "/stream/empty",
    "/stream/eof",
    "/stream/head",
    "/stream/hop",
    "/stream/interim",
    "/stream/length",
    "/stream/next",
    "/stream/nominated",
    "/stream/proxied",
    "/stream/smuggled",
    "/stream/stalled",
    "/stream/switch",
    "/stream/tunnelled",
    "/stream/upload",
];

/// A memgate in front of `upstream` whose mem0 listener streams every route
/// outside mem0's own API (`allowed_routes = ["* /"]`) and whose MCP listener
/// streams [`STREAM_PATHS`], with a token for alice.
async fn gate(upstream: &str) -> (TestDb, Memgate, String) {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut cfg = MemgateConfig::new(&db.url, upstream);
    cfg.mem0_extra = r#"allowed_routes = ["* /"]"#.into();
    cfg.mcp_extra = format!("allowed_paths = {STREAM_PATHS:?}");
    let gate = Memgate::start(cfg).await;
    let token = gate.create_token("alice", &[]);
    (db, gate, token)
}

/// A [`RawUpstream`] and a memgate in front of it (see [`gate`]).
async fn raw_upstream_and_gate() -> (RawUpstream, TestDb, Memgate, String) {
    let upstream = RawUpstream::start().await;
    let (db, gate, token) = gate(&upstream.url()).await;
    (upstream, db, gate, token)
}

/// A recording [`Upstream`] and a memgate in front of it (see [`gate`]).
async fn upstream_and_gate() -> (Upstream, TestDb, Memgate, String) {
    let upstream = Upstream::start().await;
    let (db, gate, token) = gate(&upstream.url()).await;
    (upstream, db, gate, token)
}

/// Both listeners; on each, `/stream/...` is a streamed route.
fn listeners(gate: &Memgate) -> [(&'static str, SocketAddr); 2] {
    [("mcp", gate.mcp), ("mem0", gate.mem0)]
}

/// A request head with alice's token; `extra` is whole header lines.
fn head(method: &str, target: &str, token: &str, extra: &str) -> String {
    format!("{method} {target} HTTP/1.1\r\nHost: memgate\r\nX-MCP-Token: {token}\r\n{extra}\r\n")
}

/// An HTTP/1.1 message as read off the wire.
#[derive(Debug)]
struct Message {
    /// The request or status line.
    start: String,
    /// Names lower-cased, in the order sent.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    fn method(&self) -> &str {
        self.start.split(' ').next().unwrap_or_default()
    }

    fn path(&self) -> &str {
        self.start.split(' ').nth(1).unwrap_or_default()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    }
}

/// The start line and headers; `None` if the peer closed before sending any.
async fn read_head<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Option<Message>> {
    let mut start = String::new();
    if r.read_line(&mut start).await? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, line.to_string()))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Some(Message {
        start: start.trim_end().to_string(),
        headers,
        body: Vec::new(),
    }))
}

/// A chunked body, trailers skipped.
async fn read_chunked<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    read_chunks(r, &mut body).await?;
    Ok(body)
}

/// Appends the data of a chunked body to `body`, chunk by chunk, trailers
/// skipped. A peer that closes before the last chunk is `UnexpectedEof`, with
/// the whole chunks that came until then in `body`.
async fn read_chunks<R: AsyncBufRead + Unpin>(r: &mut R, body: &mut Vec<u8>) -> io::Result<()> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| invalid(format!("chunk size line {line:?}")))?;
        if size == 0 {
            loop {
                let mut trailer = String::new();
                if r.read_line(&mut trailer).await? == 0 || trailer.trim().is_empty() {
                    return Ok(());
                }
            }
        }
        let mut data = vec![0; size];
        r.read_exact(&mut data).await?;
        body.extend_from_slice(&data);
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).await?;
        if &crlf != b"\r\n" {
            return Err(invalid(format!("chunk not followed by CRLF: {crlf:?}")));
        }
    }
}

/// One whole message, its body framed by chunks, Content-Length, or (a
/// response only) the close; `None` if the peer closed before sending any.
async fn read_message<R: AsyncBufRead + Unpin>(
    r: &mut R,
    response: bool,
) -> io::Result<Option<Message>> {
    let Some(mut msg) = read_head(r).await? else {
        return Ok(None);
    };
    if response && matches!(msg.status(), 100..=199 | 204 | 304) {
        return Ok(Some(msg));
    }
    if msg.chunked() {
        msg.body = read_chunked(r).await?;
    } else if let Some(length) = msg.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, length.to_string()))?;
        msg.body = vec![0; length];
        r.read_exact(&mut msg.body).await?;
    } else if response {
        r.read_to_end(&mut msg.body).await?;
    }
    Ok(Some(msg))
}

/// A raw client connection to memgate.
struct Conn(BufReader<TcpStream>);

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = timed("connect", TcpStream::connect(addr)).await.unwrap();
        Conn(BufReader::new(stream))
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        timed("send", async {
            self.0.write_all(bytes.as_ref()).await?;
            self.0.flush().await
        })
        .await
        .expect("memgate takes the request");
    }

    /// The next whole response; `None` if memgate closed (or reset) the
    /// connection without one.
    async fn response(&mut self) -> Option<Message> {
        timed("response", read_message(&mut self.0, true))
            .await
            .ok()
            .flatten()
    }

    /// Sends `request` and reads the whole response to it, as
    /// [`Conn::response`].
    async fn exchange(&mut self, request: impl AsRef<[u8]>) -> Option<Message> {
        self.send(request).await;
        self.response().await
    }

    /// Asks for `/stream/length` and checks that its whole answer comes
    /// back: the connection is in step with memgate and the upstream.
    async fn assert_length_answered(&mut self, token: &str, what: &str) {
        let resp = self
            .exchange(head("GET", "/stream/length", token, ""))
            .await
            .unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(
            (resp.status(), resp.body.as_slice()),
            (200, LENGTH_BODY),
            "{what}"
        );
    }

    /// The start line and headers of the next response, its body left on
    /// the connection (for answers read piece by piece or never ending).
    async fn response_head(&mut self) -> Message {
        timed("response head", read_head(&mut self.0))
            .await
            .unwrap()
            .expect("a response")
    }

    /// The data of a chunked body that must end without its last chunk: the
    /// upstream died while sending it. `what` names the answer in a failure.
    async fn truncated_body(&mut self, what: &str) -> Vec<u8> {
        let mut body = Vec::new();
        let end = timed("body", read_chunks(&mut self.0, &mut body)).await;
        assert_eq!(
            end.map_err(|e| e.kind()),
            Err(io::ErrorKind::UnexpectedEof),
            "{what} must end without its last chunk; got {:?}",
            String::from_utf8_lossy(&body)
        );
        body
    }
}

/// `request` alone on a new connection to `addr`, and the response to it.
async fn exchange_fresh(addr: SocketAddr, request: impl AsRef<[u8]>) -> Option<Message> {
    Conn::open(addr).await.exchange(request).await
}

/// The status of `resp`, 0 when the connection closed without a response.
fn status(resp: &Option<Message>) -> u16 {
    resp.as_ref().map_or(0, Message::status)
}

/// A control request on a fresh connection: the recording upstream answers
/// it, so everything sent before it has been dealt with.
async fn control(addr: SocketAddr, token: &str) {
    let resp = exchange_fresh(addr, head("GET", "/stream/control", token, "")).await;
    assert_eq!(status(&resp), 200, "control request");
}

/// Asserts that nothing sent to `addr` since `upstream` was last cleared
/// reached it: after a [`control`] request, that is all it received.
async fn assert_only_control_reached(
    upstream: &Upstream,
    addr: SocketAddr,
    token: &str,
    what: &str,
) {
    control(addr, token).await;
    let reached: Vec<String> = upstream.requests().into_iter().map(|r| r.uri).collect();
    assert_eq!(reached, ["/stream/control"], "{what}");
}

/// The one request `upstream` received since it was last cleared.
fn sole_request(upstream: &Upstream, what: &str) -> Recorded {
    let mut seen = upstream.requests();
    assert_eq!(seen.len(), 1, "{what}: {seen:?}");
    seen.remove(0)
}

/// For each case `(what, framing, body)`, on both listeners of a fresh
/// memgate: sends a POST to `/stream/upload` with `framing` (header lines)
/// and `body`, followed on the same connection by a request that would be
/// smuggled if memgate and the upstream disagreed on where the body ends.
/// It must be refused (4xx, or the connection closed), and nothing of it may
/// reach the upstream. Every failing case is named before the test fails.
async fn assert_refused_unseen(cases: &[(&str, &str, &str)]) {
    let (upstream, _db, gate, token) = upstream_and_gate().await;
    let smuggled = "GET /stream/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut failures = Vec::new();
    for (name, addr) in listeners(&gate) {
        for (what, framing, body) in cases {
            upstream.clear();
            let post = head("POST", "/stream/upload", &token, framing);
            let answered = status(&exchange_fresh(addr, format!("{post}{body}{smuggled}")).await);
            control(addr, &token).await;
            let reached: Vec<String> = upstream
                .requests()
                .into_iter()
                .filter(|r| r.uri != "/stream/control")
                .map(|r| {
                    format!(
                        "{} {} (transfer-encoding {}, content-length {}, {} body bytes)",
                        r.method,
                        r.uri,
                        r.header("transfer-encoding").as_deref().unwrap_or("none"),
                        r.header("content-length").as_deref().unwrap_or("none"),
                        r.body.len()
                    )
                })
                .collect();
            if !(answered == 0 || (400..500).contains(&answered)) || !reached.is_empty() {
                failures.push(format!(
                    "{name}, {what}: answered {answered}; the upstream received {}",
                    reached.join("; ")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// What the raw upstream answers on `/stream/length`, `/stream/chunked` and
/// `/stream/eof` (the chunked one in these three pieces), the one chunk it
/// sends of `/stream/broken` before dying, and its final answer on
/// `/stream/interim`.
const LENGTH_BODY: &[u8] = b"answered with a Content-Length";
const CHUNKS: [&[u8]; 3] = [b"first piece, ", b"second piece, ", b"last piece"];
const EOF_BODY: &[u8] = b"answered until the connection closes";
const BROKEN_PIECE: &[u8] = b"the only piece before the upstream died";
const INTERIM_BODY: &[u8] = b"the final answer, after two interim ones";

/// The one event the raw upstream sends in answer to a JSON-RPC `POST /mcp`
/// before it dies: the result of the `ping` with id 1.
const PING_EVENT: &str = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n";

/// A JSON-RPC request every token may send.
const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

/// A raw HTTP/1.1 upstream that records every request and answers on kept
/// connections: `/stream/length` with a Content-Length, `/stream/chunked` in
/// chunks, `/stream/eof` delimited by closing the connection,
/// `/stream/interim` with `100 Continue` and `103 Early Hints` before its
/// `200`, and `/stream/nominated` with a header its `Connection` header
/// names. Misbehaving, it answers `/stream/switch` by switching protocols
/// unasked, and dies mid-body (one chunk, then the connection closes without
/// the last chunk) on `/stream/broken` and a JSON-RPC `POST /mcp` (an event
/// stream). An event stream (`GET /mcp`, `GET /sse`) gets one event and is
/// held open until the peer closes it; the path is then sent on `hangups`.
struct RawUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Message>>>,
    hangups: mpsc::UnboundedReceiver<String>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Message>>> = Arc::default();
        let (tx, hangups) = mpsc::unbounded_channel();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            // Dropped with the task: every connection ends with the upstream.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                conns.spawn(serve_raw(stream, log.clone(), tx.clone()));
            }
        });
        RawUpstream {
            addr,
            seen,
            hangups,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// (method, path, body) of every request so far.
    fn requests(&self) -> Vec<(String, String, Vec<u8>)> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .map(|m| (m.method().into(), m.path().into(), m.body.clone()))
            .collect()
    }

    /// How many requests it has received so far: a mark for
    /// [`RawUpstream::requests_since`]. (It is never cleared, so each pass of
    /// a test over the listeners looks only at what came after its mark.)
    fn mark(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// (method, path, body) of every request after the first `mark`.
    fn requests_since(&self, mark: usize) -> Vec<(String, String, Vec<u8>)> {
        self.requests().split_off(mark)
    }
}

/// A request as [`RawUpstream::requests`] lists it.
fn request(method: &str, path: &str, body: &str) -> (String, String, Vec<u8>) {
    (method.into(), path.into(), body.into())
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `data` framed as one chunk.
fn chunk(data: &[u8]) -> Vec<u8> {
    [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat()
}

async fn serve_raw(
    stream: TcpStream,
    seen: Arc<Mutex<Vec<Message>>>,
    hangups: mpsc::UnboundedSender<String>,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    while let Some(req) = read_message(&mut read, false).await? {
        let (method, path) = (req.method().to_string(), req.path().to_string());
        seen.lock().unwrap().push(req);
        match (method.as_str(), path.as_str()) {
            (_, "/stream/length") => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                    LENGTH_BODY.len()
                );
                write.write_all(head.as_bytes()).await?;
                write.write_all(LENGTH_BODY).await?;
            }
            (_, "/stream/chunked") => {
                write
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await?;
                for piece in CHUNKS {
                    write.write_all(&chunk(piece)).await?;
                    write.flush().await?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                write.write_all(b"0\r\n\r\n").await?;
            }
            (_, "/stream/eof") => {
                write
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
                    )
                    .await?;
                write.write_all(EOF_BODY).await?;
                return write.shutdown().await;
            }
            (_, "/stream/nominated") => {
                write
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nConnection: X-Hop-Secret, keep-alive\r\n\
                          X-Hop-Secret: for memgate only\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok",
                    )
                    .await?;
            }
            (_, "/stream/interim") => {
                write.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                write.flush().await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                write
                    .write_all(
                        b"HTTP/1.1 103 Early Hints\r\nLink: </hint.css>; rel=preload\r\n\r\n",
                    )
                    .await?;
                write.flush().await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                    INTERIM_BODY.len()
                );
                write.write_all(head.as_bytes()).await?;
                write.write_all(INTERIM_BODY).await?;
            }
            (_, "/stream/switch") => {
                write
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                          Upgrade: websocket\r\n\r\n\x81\x05hello",
                    )
                    .await?;
                // The connection now speaks another protocol: wait for its end.
                let mut rest = Vec::new();
                let _ = read.read_to_end(&mut rest).await;
                return Ok(());
            }
            ("POST", "/mcp") | (_, "/stream/broken") => {
                let (content_type, piece) = if path == "/mcp" {
                    ("text/event-stream", PING_EVENT.as_bytes())
                } else {
                    ("text/plain", BROKEN_PIECE)
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n\
                     Transfer-Encoding: chunked\r\n\r\n"
                );
                write.write_all(head.as_bytes()).await?;
                write.write_all(&chunk(piece)).await?;
                write.flush().await?;
                // The piece is on its way; then the upstream dies, no last chunk.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Ok(());
            }
            ("GET", "/mcp" | "/sse") => {
                let event = if path == "/sse" {
                    "event: endpoint\ndata: /messages/?session_id=held-open\n\n".to_string()
                } else {
                    let data = serde_json::json!({
                        "jsonrpc": "2.0",
                        "method": "notifications/message",
                        "params": {"level": "info", "data": "held open"},
                    });
                    format!("id: 1\nevent: message\ndata: {data}\n\n")
                };
                write
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                          Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n",
                    )
                    .await?;
                write.write_all(&chunk(event.as_bytes())).await?;
                // Nothing more comes on this connection: wait for its end.
                let mut rest = Vec::new();
                let _ = read.read_to_end(&mut rest).await;
                let _ = hangups.send(path);
                return Ok(());
            }
            _ => {
                write
                    .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    .await?
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Request bodies
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_reaches_the_upstream_byte_for_byte_with_the_injected_identity() {
    let (upstream, _db, gate, token) = upstream_and_gate().await;
    let prefix = memgate::token::display_prefix(&token).to_string();
    // Chunk payloads that look like framing (CRLF, "0\r\n\r\n"), binary bytes,
    // and a size written in upper-case hex.
    let chunks: Vec<Vec<u8>> = vec![
        br#"{"part":1,"#.to_vec(),
        b"\r\n0\r\n\r\n\x00\xff\xfe".to_vec(),
        (0..8096u32).map(|i| (i * 31 % 251) as u8).collect(),
        b"}".to_vec(),
    ];
    let expected = chunks.concat();
    for (name, addr) in listeners(&gate) {
        upstream.clear();
        let mut conn = Conn::open(addr).await;
        conn.send(head(
            "POST",
            "/stream/upload?part=1",
            &token,
            "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\
             X-MCP-UserID: alice\r\nX-MCP-User-Id: mallory\r\nx_mcp_userid: mallory\r\n\
             X-Memgate-Scope: mallory\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
             Proxy-Connection: keep-alive\r\nX-Kept: yes\r\n",
        ))
        .await;
        for chunk in &chunks {
            let size = format!("{:X}\r\n", chunk.len());
            conn.send([size.as_bytes(), chunk, b"\r\n"].concat()).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        conn.send("0\r\n\r\n").await;
        let resp = conn.response().await.expect("an answer");
        assert_eq!(resp.status(), 200, "{name}: {resp:?}");
        let answer: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(
            answer,
            serde_json::json!({"ok": true, "path": "/stream/upload"}),
            "{name}: the client gets the upstream's answer"
        );

        let r = sole_request(&upstream, name);
        assert_eq!(
            (r.method.as_str(), r.uri.as_str()),
            ("POST", "/stream/upload?part=1"),
            "{name}"
        );
        assert!(r.body == expected, "{name}: the body changed on the way");
        assert_eq!(r.header_all("transfer-encoding"), ["chunked"], "{name}");
        assert!(r.header("content-length").is_none(), "{name}: {r:?}");
        assert_eq!(r.header_all("x-mcp-userid"), ["alice"], "{name}: {r:?}");
        assert_eq!(r.header_all("x-memgate-scope"), ["alice"], "{name}: {r:?}");
        assert_eq!(r.header_all("x-memgate-token-prefix"), [prefix.as_str()]);
        assert_eq!(
            r.header_all("x-kept"),
            ["yes"],
            "{name}: other headers pass"
        );
        for gone in [
            "x-mcp-user-id",
            "x_mcp_userid",
            "x-mcp-token",
            "keep-alive",
            "te",
            "proxy-connection",
        ] {
            assert!(
                r.header(gone).is_none(),
                "{name}: {gone} was forwarded: {r:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_body_reaches_the_upstream_intact_with_its_length() {
    let (upstream, _db, gate, token) = upstream_and_gate().await;
    let body: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 253) as u8).collect();
    let client = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    for url in [
        gate.mcp_url("/stream/upload"),
        gate.mem0_url("/stream/upload"),
    ] {
        upstream.clear();
        let resp = client
            .put(&url)
            .header("X-MCP-Token", &token)
            .header("content-type", "application/octet-stream")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let r = sole_request(&upstream, &url);
        assert_eq!(
            (r.method.as_str(), r.uri.as_str()),
            ("PUT", "/stream/upload")
        );
        assert_eq!(r.body.len(), body.len(), "{url}");
        assert!(r.body == body, "{url}: the body changed on the way");
        assert_eq!(r.header_all("content-length"), [body.len().to_string()]);
        assert!(r.header("transfer-encoding").is_none(), "{url}: {r:?}");
        assert_eq!(r.header_all("x-mcp-userid"), ["alice"], "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_with_content_length_on_a_stream_never_reaches_the_upstream() {
    assert_refused_unseen(&[
        (
            "Transfer-Encoding, then Content-Length",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "0\r\n\r\n",
        ),
        (
            "Content-Length, then Transfer-Encoding",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encodings_other_than_chunked_on_a_stream_never_reach_the_upstream() {
    assert_refused_unseen(&[
        (
            "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding: gzip, chunked\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding: chunked sent twice",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
        ),
    ])
    .await;
}

// ---------------------------------------------------------------------------
// CONNECT
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_on_both_listeners_and_nothing_reaches_the_upstream() {
    let (upstream, _db, gate, token) = upstream_and_gate().await;
    // Bytes a client would send through the tunnel once it was open.
    let tunnelled = "GET /stream/tunnelled HTTP/1.1\r\nHost: x\r\n\r\n";
    let authority = upstream.addr.to_string();
    for (name, addr) in listeners(&gate) {
        // pingora's parser refuses the authority form (`CONNECT host:port`)
        // before memgate sees it; memgate answers the rest with 405.
        for (target, parsed) in [
            (authority.as_str(), false),
            ("/stream/connect", true),
            ("/mcp", true),
        ] {
            upstream.clear();
            let mut conn = Conn::open(addr).await;
            conn.send(format!(
                "{}{tunnelled}",
                head("CONNECT", target, &token, "")
            ))
            .await;
            let resp = conn.response().await;
            let answered = status(&resp);
            if parsed {
                assert_eq!(answered, 405, "{name}: CONNECT {target}: {resp:?}");
            } else {
                assert!(
                    answered == 0 || (400..500).contains(&answered),
                    "{name}: CONNECT {target}: {resp:?}"
                );
            }
            assert!(
                conn.response().await.is_none(),
                "{name}: CONNECT {target}: the connection stays open for a tunnel"
            );
            assert_only_control_reached(
                &upstream,
                addr,
                &token,
                &format!("{name}: CONNECT {target} reached the upstream"),
            )
            .await;
        }
    }
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_answers_keep_the_client_connection_usable() {
    let (upstream, _db, gate, token) = raw_upstream_and_gate().await;
    for (name, addr) in listeners(&gate) {
        let before = upstream.mark();
        let mut conn = Conn::open(addr).await;

        // An answer with a length keeps it.
        let resp = conn
            .exchange(head("GET", "/stream/length", &token, ""))
            .await
            .expect("first answer");
        assert_eq!(resp.status(), 200, "{name}: {resp:?}");
        assert_eq!(
            resp.header("content-length"),
            Some(LENGTH_BODY.len().to_string().as_str()),
            "{name}: {resp:?}"
        );
        assert!(!resp.chunked(), "{name}: {resp:?}");
        assert_eq!(resp.body, LENGTH_BODY, "{name}");

        // A chunked answer (to a chunked request) is sent chunked.
        conn.send(head(
            "POST",
            "/stream/chunked",
            &token,
            "Transfer-Encoding: chunked\r\n",
        ))
        .await;
        conn.send("3\r\nabc\r\n0\r\n\r\n").await;
        let resp = conn
            .response()
            .await
            .expect("second answer on the connection");
        assert_eq!(resp.status(), 200, "{name}: {resp:?}");
        assert!(resp.chunked(), "{name}: {resp:?}");
        assert!(resp.header("content-length").is_none(), "{name}: {resp:?}");
        assert_eq!(resp.body, CHUNKS.concat(), "{name}");

        // An answer the upstream ends by closing its connection is chunked
        // for the client, whose connection stays open.
        let resp = conn
            .exchange(head("GET", "/stream/eof", &token, ""))
            .await
            .expect("third answer on the connection");
        assert_eq!(resp.status(), 200, "{name}: {resp:?}");
        assert!(resp.chunked(), "{name}: {resp:?}");
        assert_ne!(resp.header("connection"), Some("close"), "{name}: {resp:?}");
        assert_eq!(resp.body, EOF_BODY, "{name}");

        conn.assert_length_answered(&token, &format!("{name}: fourth answer on the connection"))
            .await;

        assert_eq!(
            upstream.requests_since(before),
            [
                request("GET", "/stream/length", ""),
                request("POST", "/stream/chunked", "abc"),
                request("GET", "/stream/eof", ""),
                request("GET", "/stream/length", ""),
            ],
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_an_event_stream_closes_the_upstream_stream() {
    let (mut upstream, _db, gate, token) = raw_upstream_and_gate().await;
    for path in ["/mcp", "/sse"] {
        let mut conn = Conn::open(gate.mcp).await;
        conn.send(head("GET", path, &token, "Accept: text/event-stream\r\n"))
            .await;
        let resp = conn.response_head().await;
        assert_eq!(resp.status(), 200, "{path}: {resp:?}");
        assert_eq!(resp.header("content-type"), Some("text/event-stream"));
        let mut received = Vec::new();
        while !received.windows(2).any(|w| w == b"\n\n") {
            let mut buf = [0u8; 1024];
            let n = timed("first event", conn.0.read(&mut buf)).await.unwrap();
            assert!(n > 0, "{path}: stream ended before its first event");
            received.extend_from_slice(&buf[..n]);
        }
        // The stream is live on both sides while the client stays.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            upstream.hangups.try_recv().is_err(),
            "{path}: the upstream stream ended while the client was still there"
        );

        drop(conn);
        let ended = tokio::time::timeout(Duration::from_secs(5), upstream.hangups.recv()).await;
        assert_eq!(
            ended.ok().flatten().as_deref(),
            Some(path),
            "{path}: the upstream stream is still open 5 s after the client left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_dying_mid_body_leaves_the_streamed_answer_visibly_incomplete() {
    let (upstream, _db, gate, token) = raw_upstream_and_gate().await;
    for (name, addr) in listeners(&gate) {
        let before = upstream.mark();
        let mut conn = Conn::open(addr).await;
        conn.send(head("GET", "/stream/broken", &token, "")).await;
        let resp = conn.response_head().await;
        assert_eq!(resp.status(), 200, "{name}: {resp:?}");
        assert!(resp.chunked(), "{name}: {resp:?}");
        let body = conn.truncated_body(&format!("{name}: the answer")).await;
        assert_eq!(body, BROKEN_PIECE, "{name}: what came before the failure");
        assert_eq!(
            upstream.requests_since(before),
            [request("GET", "/stream/broken", "")],
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_upstream_dying_mid_event_stream_leaves_the_json_rpc_answer_visibly_incomplete() {
    let (upstream, _db, gate, token) = raw_upstream_and_gate().await;
    let mut conn = Conn::open(gate.mcp).await;
    let headers = format!(
        "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Content-Length: {}\r\n",
        PING.len()
    );
    conn.send(head("POST", "/mcp", &token, &headers) + PING)
        .await;
    let resp = conn.response_head().await;
    assert_eq!(resp.status(), 200, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    assert!(resp.chunked(), "{resp:?}");
    let body = conn.truncated_body("the event stream").await;
    assert_eq!(
        String::from_utf8_lossy(&body),
        PING_EVENT,
        "the event sent before the failure"
    );
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (method, path, sent) = &seen[0];
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/mcp"));
    let sent: serde_json::Value = serde_json::from_slice(sent).unwrap();
    assert_eq!(
        sent,
        serde_json::from_str::<serde_json::Value>(PING).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_answers_from_the_upstream_never_reach_the_client() {
    let (upstream, _db, gate, token) = raw_upstream_and_gate().await;
    for (name, addr) in listeners(&gate) {
        let before = upstream.mark();
        let mut conn = Conn::open(addr).await;
        let resp = conn
            .exchange(
                head(
                    "POST",
                    "/stream/interim",
                    &token,
                    "Content-Type: text/plain\r\nContent-Length: 5\r\n",
                ) + "hello",
            )
            .await
            .expect("an answer");
        assert_eq!(resp.status(), 200, "{name}: a 1xx was passed on: {resp:?}");
        assert_eq!(resp.body, INTERIM_BODY, "{name}");
        assert!(
            resp.header("link").is_none(),
            "{name}: a header of the 103: {resp:?}"
        );
        // Nothing of the interim answers is left over on the connection.
        conn.assert_length_answered(&token, &format!("{name}: a second answer"))
            .await;

        assert_eq!(
            upstream.requests_since(before),
            [
                request("POST", "/stream/interim", "hello"),
                request("GET", "/stream/length", ""),
            ],
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_switching_protocols_unasked_is_answered_502() {
    let (upstream, _db, gate, token) = raw_upstream_and_gate().await;
    for (name, addr) in listeners(&gate) {
        let before = upstream.mark();
        let resp = exchange_fresh(addr, head("GET", "/stream/switch", &token, ""))
            .await
            .expect("an answer");
        assert_eq!(resp.status(), 502, "{name}: {resp:?}");
        assert_eq!(resp.header("content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        if name == "mcp" {
            assert_eq!(body["jsonrpc"], "2.0", "{body}");
            assert_eq!(body["error"]["code"], -32052, "{body}");
            assert!(body["error"]["message"].is_string(), "{body}");
        } else {
            assert!(body["detail"].is_string(), "{body}");
        }
        // The switched connection is not reused for the next request.
        Conn::open(addr)
            .await
            .assert_length_answered(&token, &format!("{name}: a later answer"))
            .await;

        assert_eq!(
            upstream.requests_since(before),
            [
                request("GET", "/stream/switch", ""),
                request("GET", "/stream/length", ""),
            ],
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------
// Request framing and headers
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_is_answered_408_after_the_read_timeout() {
    // The mem0 listener's read timeout is 2 s in the harness (the MCP
    // listener keeps the default 600 s).
    const READ_TIMEOUT: Duration = Duration::from_secs(2);
    let (upstream, _db, gate, token) = raw_upstream_and_gate().await;
    let mut conn = Conn::open(gate.mem0).await;
    conn.send(
        head(
            "POST",
            "/stream/stalled",
            &token,
            "Content-Type: text/plain\r\nContent-Length: 10\r\n",
        ) + "abc",
    )
    .await;
    let started = std::time::Instant::now();
    let bound = READ_TIMEOUT + Duration::from_secs(4);
    let resp = tokio::time::timeout(bound, read_message(&mut conn.0, true))
        .await
        .unwrap_or_else(|_| panic!("no answer within {bound:?}"))
        .unwrap()
        .expect("an answer");
    let waited = started.elapsed();
    assert_eq!(resp.status(), 408, "{resp:?}");
    assert!(
        waited >= READ_TIMEOUT - Duration::from_millis(100),
        "answered after {waited:?}, before the read timeout"
    );
    let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert!(body["detail"].is_string(), "{body}");
    // The rest of the body can no longer be told from a next request.
    assert!(conn.response().await.is_none(), "the connection stays open");

    // No complete request reached the upstream: it is still waiting for
    // the rest of the body when memgate gives up on it.
    let resp = exchange_fresh(gate.mem0, head("GET", "/stream/length", &token, "")).await;
    assert_eq!(status(&resp), 200);
    assert_eq!(upstream.requests(), [request("GET", "/stream/length", "")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_post_reaches_the_upstream_with_content_length_0() {
    let (upstream, _db, gate, token) = upstream_and_gate().await;
    for (name, addr) in listeners(&gate) {
        upstream.clear();
        let mut conn = Conn::open(addr).await;
        let resp = conn
            .exchange(head(
                "POST",
                "/stream/empty",
                &token,
                "Content-Length: 0\r\n",
            ))
            .await;
        assert_eq!(status(&resp), 200, "{name}");
        // Nothing after the head was taken for a body.
        let resp = conn.exchange(head("GET", "/stream/next", &token, "")).await;
        assert_eq!(status(&resp), 200, "{name}: next request");

        let seen = upstream.requests();
        assert_eq!(seen.len(), 2, "{name}: {seen:?}");
        let r = &seen[0];
        assert_eq!(
            (r.method.as_str(), r.uri.as_str()),
            ("POST", "/stream/empty")
        );
        assert_eq!(r.header_all("content-length"), ["0"], "{name}: {r:?}");
        assert!(r.header("transfer-encoding").is_none(), "{name}: {r:?}");
        assert!(r.body.is_empty(), "{name}: {r:?}");
        assert_eq!(seen[1].uri, "/stream/next", "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_headers_naming_too_many_or_unreadable_are_refused_and_named_ones_dropped() {
    let (upstream, _db, gate, token) = upstream_and_gate().await;
    let many: Vec<String> = (0..17).map(|i| format!("X-H{i}")).collect();
    let cases: [(&str, Vec<u8>); 2] = [
        (
            "17 nominated headers",
            format!("Connection: {}\r\n", many.join(", ")).into_bytes(),
        ),
        (
            "a value that is not text",
            b"Connection: keep-alive, X-\x80\xff\r\n".to_vec(),
        ),
    ];
    for (name, addr) in listeners(&gate) {
        for (what, line) in &cases {
            upstream.clear();
            let plain = head("GET", "/stream/hop", &token, "");
            let (start, end) = plain.split_at(plain.len() - 2);
            let resp =
                exchange_fresh(addr, [start.as_bytes(), line, end.as_bytes()].concat()).await;
            assert_eq!(status(&resp), 400, "{name}, {what}: {resp:?}");
            assert_only_control_reached(&upstream, addr, &token, &format!("{name}, {what}")).await;
        }

        upstream.clear();
        let resp = exchange_fresh(
            addr,
            head(
                "GET",
                "/stream/hop",
                &token,
                "Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nX-Kept: yes\r\n",
            ),
        )
        .await;
        assert_eq!(status(&resp), 200, "{name}");
        let r = sole_request(&upstream, name);
        assert_eq!(r.uri, "/stream/hop", "{name}");
        assert!(
            r.header("x-hop").is_none(),
            "{name}: x-hop was forwarded: {r:?}"
        );
        assert!(r.header("connection").is_none(), "{name}: {r:?}");
        assert_eq!(r.header_all("x-kept"), ["yes"], "{name}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_authorization_from_the_client_is_not_forwarded() {
    let (upstream, _db, gate, token) = upstream_and_gate().await;
    let mut forwarded = Vec::new();
    for (name, addr) in listeners(&gate) {
        upstream.clear();
        let resp = exchange_fresh(
            addr,
            head(
                "GET",
                "/stream/proxied",
                &token,
                "Proxy-Authorization: Basic abc\r\nX-Kept: yes\r\n",
            ),
        )
        .await;
        assert_eq!(status(&resp), 200, "{name}");
        let r = sole_request(&upstream, name);
        assert_eq!(r.uri, "/stream/proxied", "{name}");
        assert_eq!(r.header_all("x-kept"), ["yes"], "{name}: {r:?}");
        if let Some(value) = r.header("proxy-authorization") {
            forwarded.push(format!(
                "{name}: the upstream received proxy-authorization: {value}"
            ));
        }
    }
    assert!(forwarded.is_empty(), "\n{}", forwarded.join("\n"));
}

// ---------------------------------------------------------------------------
// HTTP/1 framing and connection reuse (memgate's own HTTP/1 codec)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lengths_and_header_lines_that_could_be_read_two_ways_never_reach_the_upstream() {
    assert_refused_unseen(&[
        (
            "Content-Length sent twice",
            "Content-Length: 5\r\nContent-Length: 5\r\n",
            "hello",
        ),
        (
            "Content-Length as a list",
            "Content-Length: 5, 5\r\n",
            "hello",
        ),
        (
            "Content-Length with a sign",
            "Content-Length: +5\r\n",
            "hello",
        ),
        (
            "Transfer-Encoding not ending in chunked",
            "Transfer-Encoding: chunked, gzip\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "a space before the colon",
            "Transfer-Encoding : chunked\r\nContent-Length: 5\r\n",
            "hello",
        ),
        (
            "a folded header line",
            "Content-Length: 5\r\nX-Folded: a\r\n b\r\n",
            "hello",
        ),
        (
            "a second Host header",
            "Host: other\r\nContent-Length: 5\r\n",
            "hello",
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lines_that_could_be_read_two_ways_never_reach_the_upstream() {
    let (upstream, _db, gate, token) = upstream_and_gate().await;
    let auth = format!("Host: x\r\nX-MCP-Token: {token}\r\n");
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "a target outside visible ASCII",
            [&b"GET /stream/caf\xc3\xa9 HTTP/1.1\r\n"[..], auth.as_bytes(), b"\r\n"].concat(),
        ),
        (
            "a target that is not a path",
            format!("GET stream/relative HTTP/1.1\r\n{auth}\r\n").into_bytes(),
        ),
        (
            "an absolute target with another scheme",
            format!("GET ftp://x/stream/ftp HTTP/1.1\r\n{auth}\r\n").into_bytes(),
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            format!(
                "POST /stream/upload HTTP/1.0\r\n{auth}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )
            .into_bytes(),
        ),
    ];
    for (name, addr) in listeners(&gate) {
        for (what, request) in &cases {
            upstream.clear();
            let resp = exchange_fresh(addr, request).await;
            assert_eq!(status(&resp), 400, "{name}, {what}: {resp:?}");
            assert_only_control_reached(&upstream, addr, &token, &format!("{name}, {what}")).await;
        }
    }
}

/// `OPTIONS *` is a valid HTTP/1 request line but names no resource behind
/// memgate: refused, and nothing is passed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_wide_options_request_never_reaches_the_upstream() {
    let (upstream, _db, gate, token) = upstream_and_gate().await;
    for (name, addr) in listeners(&gate) {
        upstream.clear();
        let resp = exchange_fresh(addr, head("OPTIONS", "*", &token, "")).await;
        assert!((400..500).contains(&status(&resp)), "{name}: {resp:?}");
        assert_only_control_reached(&upstream, addr, &token, name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chunked_body_on_a_checked_route_never_reaches_the_upstream() {
    let (upstream, _db, gate, token) = upstream_and_gate().await;
    for (what, body) in [
        ("a size that is not hex", "zz\r\nhello\r\n0\r\n\r\n"),
        ("data longer than its size", "3\r\nhello\r\n0\r\n\r\n"),
        ("a size line ended by a bare LF", "5\nhello\r\n0\r\n\r\n"),
    ] {
        upstream.clear();
        let post = head(
            "POST",
            "/memories",
            &token,
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
        );
        let resp = exchange_fresh(gate.mem0, format!("{post}{body}")).await;
        assert_eq!(status(&resp), 400, "{what}: {resp:?}");
        assert_only_control_reached(&upstream, gate.mem0, &token, what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (upstream, _db, gate, token) = upstream_and_gate().await;
    for (name, addr) in listeners(&gate) {
        upstream.clear();
        let mut conn = Conn::open(addr).await;
        let post = head("POST", "/stream/upload", &token, "Content-Length: 5\r\n");
        let get = head("GET", "/stream/next", &token, "");
        conn.send(format!("{post}hello{get}")).await;
        let first = conn.response().await.expect("the first answer");
        let second = conn.response().await.expect("the second answer");
        assert_eq!((first.status(), second.status()), (200, 200), "{name}");
        let seen: Vec<(String, String, Vec<u8>)> = upstream
            .requests()
            .into_iter()
            .map(|r| (r.method, r.uri, r.body.to_vec()))
            .collect();
        assert_eq!(
            seen,
            [
                request("POST", "/stream/upload", "hello"),
                request("GET", "/stream/next", "")
            ],
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_body_was_read_closes_the_connection() {
    let (upstream, _db, gate, token) = raw_upstream_and_gate().await;
    for (name, addr) in listeners(&gate) {
        let before = upstream.mark();
        // Refused before its body is read: whatever follows on the wire
        // (here a request, sent as the body) is never taken as a request.
        let mut conn = Conn::open(addr).await;
        let body =
            format!("GET /stream/length HTTP/1.1\r\nHost: x\r\nX-MCP-Token: {token}\r\n\r\n");
        let refused = conn
            .exchange(format!(
                "POST /stream/upload HTTP/1.1\r\nHost: x\r\nX-MCP-Token: mcp_wrong\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ))
            .await
            .expect("the refusal");
        assert_eq!(refused.status(), 401, "{name}");
        assert_eq!(refused.header("connection"), Some("close"), "{name}");
        assert!(
            conn.response().await.is_none(),
            "{name}: the connection is closed"
        );

        // A client waiting for `100 Continue` that gets a refusal instead,
        // then sends its next request: that request is not read as the body.
        let mut conn = Conn::open(addr).await;
        let refused = conn
            .exchange(
                "POST /stream/upload HTTP/1.1\r\nHost: x\r\nX-MCP-Token: mcp_wrong\r\nExpect: 100-continue\r\nContent-Length: 20\r\n\r\n",
            )
            .await
            .expect("the refusal");
        assert_eq!(refused.status(), 401, "{name}");
        assert_eq!(refused.header("connection"), Some("close"), "{name}");
        assert!(upstream.requests_since(before).is_empty(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_clients_are_answered_and_the_connection_closed_unless_kept_alive() {
    let (_upstream, _db, gate, token) = raw_upstream_and_gate().await;
    for (name, addr) in listeners(&gate) {
        let mut conn = Conn::open(addr).await;
        let request = format!("GET /stream/length HTTP/1.0\r\nX-MCP-Token: {token}\r\n\r\n");
        let resp = conn.exchange(&request).await.expect("an answer");
        assert_eq!(
            (resp.status(), resp.body.as_slice()),
            (200, LENGTH_BODY),
            "{name}"
        );
        assert_eq!(resp.header("connection"), Some("close"), "{name}");
        assert!(
            conn.response().await.is_none(),
            "{name}: the connection is closed"
        );

        let mut conn = Conn::open(addr).await;
        let kept = format!(
            "GET /stream/length HTTP/1.0\r\nConnection: keep-alive\r\nX-MCP-Token: {token}\r\n\r\n"
        );
        let resp = conn.exchange(&kept).await.expect("an answer");
        assert_eq!(resp.header("connection"), Some("keep-alive"), "{name}");
        let again = conn.exchange(&kept).await.expect("a second answer");
        assert_eq!(
            (again.status(), again.body.as_slice()),
            (200, LENGTH_BODY),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_request_is_answered_without_a_body_and_the_connection_kept() {
    let (upstream, _db, gate, token) = upstream_and_gate().await;
    for (name, addr) in listeners(&gate) {
        upstream.clear();
        let mut conn = Conn::open(addr).await;
        conn.send(head("HEAD", "/stream/head", &token, "")).await;
        let resp = conn.response_head().await;
        assert_eq!(resp.status(), 200, "{name}: {resp:?}");
        // The next answer follows at once: no body bytes came in between.
        let next = conn
            .exchange(head("GET", "/stream/after", &token, ""))
            .await
            .expect("the next answer");
        assert_eq!(next.status(), 200, "{name}: {next:?}");
        let seen: Vec<String> = upstream.requests().into_iter().map(|r| r.uri).collect();
        assert_eq!(seen, ["/stream/head", "/stream/after"], "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_the_upstreams_connection_header_names_stay_on_its_hop() {
    let (_upstream, _db, gate, token) = raw_upstream_and_gate().await;
    for (name, addr) in listeners(&gate) {
        let resp = exchange_fresh(addr, head("GET", "/stream/nominated", &token, ""))
            .await
            .expect("an answer");
        assert_eq!(
            (resp.status(), resp.body.as_slice()),
            (200, &b"ok"[..]),
            "{name}"
        );
        assert_eq!(resp.header("x-kept"), Some("yes"), "{name}: {resp:?}");
        assert_eq!(resp.header("x-hop-secret"), None, "{name}: {resp:?}");
    }
}
