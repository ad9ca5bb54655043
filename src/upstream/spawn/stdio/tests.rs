use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::routing::{Destination, Heard, MAX_SESSIONS, SessionState, State};
use super::*;

const SECRET: &str = "mcp_bridge-secret-for-tests";

fn bridge() -> (Arc<Bridge>, std::sync::mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    (
        Bridge::new(
            "s",
            BridgePaths::default(),
            tx,
            Hooks {
                answered: Box::new(|| {}),
                silent: Box::new(|| {}),
                ready_timeout: std::time::Duration::from_secs(1),
            },
            SECRET.into(),
        ),
        rx,
    )
}

fn sent(rx: &std::sync::mpsc::Receiver<Vec<u8>>) -> Value {
    serde_json::from_slice(&rx.try_recv().expect("a line for the child")).unwrap()
}

#[test]
fn colliding_ids_of_two_sessions_get_their_own_answers() {
    let (bridge, lines) = bridge();
    let (a, mut a_rx) = mpsc::unbounded_channel();
    let (b, mut b_rx) = mpsc::unbounded_channel();
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    assert!(
        bridge
            .forward_request(ping.clone(), "a", Destination::Post(a))
            .is_some()
    );
    assert!(
        bridge
            .forward_request(ping, "b", Destination::Post(b))
            .is_some()
    );
    let (first, second) = (sent(&lines), sent(&lines));
    assert_ne!(first["id"], second["id"]);
    for (sent, answer) in [(&second, "for b"), (&first, "for a")] {
        let line = json!({"jsonrpc": "2.0", "id": sent["id"], "result": {"who": answer}});
        bridge.route_child_line(line.to_string().as_bytes());
    }
    let Ok(Heard::Answer(got_a)) = a_rx.try_recv() else {
        panic!("a got nothing")
    };
    let Ok(Heard::Answer(got_b)) = b_rx.try_recv() else {
        panic!("b got nothing")
    };
    assert_eq!(
        got_a,
        json!({"jsonrpc": "2.0", "id": 1, "result": {"who": "for a"}})
    );
    assert_eq!(
        got_b,
        json!({"jsonrpc": "2.0", "id": 1, "result": {"who": "for b"}})
    );
}

#[test]
fn progress_goes_with_its_request_and_the_token_is_restored() {
    let (bridge, lines) = bridge();
    let (a, mut a_rx) = mpsc::unbounded_channel();
    let (b, _b_rx) = mpsc::unbounded_channel();
    let call = |token: &str| {
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "t", "_meta": {"progressToken": token}}})
    };
    bridge.forward_request(call("tok"), "a", Destination::Post(a));
    bridge.forward_request(call("tok"), "b", Destination::Post(b));
    let to_child = sent(&lines);
    let mine = to_child["params"]["_meta"]["progressToken"].clone();
    assert_ne!(mine, json!("tok"));
    let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
        "params": {"progressToken": mine, "progress": 1}});
    bridge.route_child_line(progress.to_string().as_bytes());
    let Ok(Heard::Related(got)) = a_rx.try_recv() else {
        panic!("progress lost")
    };
    assert_eq!(got["params"]["progressToken"], "tok");
}

#[test]
fn non_json_lines_are_dropped_and_the_close_fails_what_waits() {
    let (bridge, _lines) = bridge();
    bridge.route_child_line(b"Starting server...");
    assert!(!bridge.answered());
    let (a, mut a_rx) = mpsc::unbounded_channel();
    bridge.forward_request(
        json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
        "a",
        Destination::Post(a),
    );
    bridge.close();
    assert!(
        a_rx.try_recv().is_err(),
        "the waiting POST sees its channel closed"
    );
    assert!(
        bridge
            .forward_request(
                json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}),
                "a",
                Destination::Stream("x".into())
            )
            .is_none()
    );
}

#[test]
fn past_the_session_limit_the_oldest_without_a_stream_go() {
    let mut state = State::default();
    let (tx, _rx) = mpsc::channel(1);
    let with_stream = SessionState {
        legacy: true,
        stream: Some(tx),
    };
    state.open("streaming".into(), with_stream);
    for i in 0..MAX_SESSIONS {
        let plain = SessionState {
            legacy: false,
            stream: None,
        };
        state.open(format!("s{i}"), plain);
    }
    assert_eq!(state.sessions.len(), MAX_SESSIONS);
    assert!(state.sessions.contains_key("streaming"));
    assert!(!state.sessions.contains_key("s0"));
    assert!(
        state
            .sessions
            .contains_key(&format!("s{}", MAX_SESSIONS - 1))
    );
}

#[test]
fn an_overlong_line_is_skipped_and_the_next_one_read() {
    let (bridge, _lines) = bridge();
    let (a, mut a_rx) = mpsc::unbounded_channel();
    bridge.forward_request(
        json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}),
        "a",
        Destination::Post(a),
    );
    let mut out = vec![b'x'; MAX_LINE_BYTES + 10];
    out.push(b'\n');
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n");
    read_stdout(&out[..], &bridge);
    let Ok(Heard::Answer(got)) = a_rx.try_recv() else {
        panic!("the answer after the long line was lost")
    };
    assert_eq!(got["id"], 9);
}

#[tokio::test]
async fn a_request_without_the_secret_never_reaches_the_child() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (bridge, lines) = bridge();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(bridge.clone().serve(listener));
    let first = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;
    let ask = |secret: Option<&str>| {
        let extra = secret.map_or(String::new(), |s| format!("{SECRET_HEADER}: {s}\r\n"));
        format!(
            "POST /mcp HTTP/1.1\r\nHost: b\r\ncontent-type: application/json\r\n\
             accept: application/json, text/event-stream\r\n{extra}\
             content-length: {}\r\nconnection: close\r\n\r\n{first}",
            first.len()
        )
    };
    for secret in [None, Some("mcp_wrong"), Some("mcp_bridge-secret-for-test")] {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        stream.write_all(ask(secret).as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 403"), "{secret:?}: {answer}");
    }
    assert!(
        lines.try_recv().is_err(),
        "a refused request reached the child"
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(ask(Some(SECRET)).as_bytes())
        .await
        .unwrap();
    let line = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            if let Ok(line) = lines.try_recv() {
                return line;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("memgate's own request reaches the child");
    let sent: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(sent["method"], "initialize");
}
