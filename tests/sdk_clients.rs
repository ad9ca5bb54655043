//! The official MCP client SDKs keep their session after memgate refuses a
//! call (once the caller is authenticated, memgate answers a refusal with a
//! JSON-RPC error carrying the request's id in a 200). Each client —
//! the MCP Python SDK 1.x and 2.x, the TypeScript SDK (child processes
//! running `tests/clients/`, see `support::sdk`) and rmcp — makes three calls
//! memgate refuses in-band, then two allowed ones in the same session; the
//! Python SDKs also make a refused and an allowed call over legacy SSE.
//! Every test checks what the client reported AND what the upstream MCP
//! server received: no refused call reached a tool, and every request
//! after `initialize` carried the one session id it handed out.
//!
//! The SDKs are installed by `.ci/run`; without them these tests are skipped
//! unless `MEMGATE_REQUIRE_SDK_CLIENTS` is set.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ServiceError, ServiceExt};
use serde_json::{Value, json};
use support::mcp_server::McpEnv;
use support::sdk::{SdkClient, SdkRun};

/// Longest one client run (start-up, five calls, close) may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// Longest any single request may take inside a client.
const STEP: Duration = Duration::from_secs(10);

/// The stand-ins and memgate in front of them.
async fn env() -> McpEnv {
    McpEnv::start("", "").await
}

/// Alice's token, and the id of a memory of bob's (bob has a token too).
struct Cast {
    alice: String,
    bobs_memory: String,
}

fn cast(env: &McpEnv) -> Cast {
    let alice = env.gate.create_token("alice", &[]);
    env.gate.create_token("bob", &[]);
    let bobs_memory = env.mem0.seed("bob", "bob's secret");
    Cast { alice, bobs_memory }
}

/// Three calls memgate refuses in-band, then two it lets through.
fn script(bobs_memory: &str) -> Value {
    json!([
        // Another user's id in a user argument.
        {"tool": "get_all_memories", "arguments": {"user_id": "bob"}},
        // A memory owned by someone else.
        {"tool": "get_memory", "arguments": {"memory_id": bobs_memory}},
        // A tool that acts on one id per server process, on a shared upstream.
        {"tool": "add_coding_preference", "arguments": {"text": "tabs"}},
        {"tool": "add_memory", "arguments": {"text": "x"}},
        {"tool": "get_all_memories", "arguments": {}},
    ])
}

/// The tool's JSON answer inside a reported `CallToolResult`.
fn tool_json(step: &Value) -> Value {
    let text = step["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// The JSON-RPC method of a recorded request body, if it has one.
fn rpc_method(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value["method"].as_str().map(str::to_owned)
}

/// Checks one client's run of [`script`]: three in-band refusals reported as
/// `error_kind`, the session alive for the two allowed calls, and the
/// upstream's records.
fn assert_session_survived(env: &McpEnv, cast: &Cast, run: &SdkRun, error_kind: &str) {
    let out = run.describe();
    assert!(run.fatal().is_none(), "the session died: {out}");
    assert!(run.success, "the client failed: {out}");
    assert_eq!(
        run.steps.last().map(|s| &s["step"]),
        Some(&json!("close")),
        "{out}"
    );

    let init = run.step("initialize").expect("initialize step");
    assert_eq!(init["ok"], true, "{out}");
    let tools = &run.step("tools/list").expect("tools/list step")["result"];
    let listed = |name: &str| tools.as_array().is_some_and(|t| t.contains(&json!(name)));
    assert!(listed("add_memory") && listed("get_all_memories"), "{out}");
    assert!(
        !listed("add_coding_preference"),
        "a per-process tool is listed on a shared upstream: {out}"
    );

    let calls = run.calls();
    assert_eq!(calls.len(), 5, "{out}");
    for (index, call) in calls.iter().enumerate() {
        assert_eq!(call["index"], json!(index), "{out}");
    }
    let denied = format!(
        "Access denied: Memory {} does not belong to user alice",
        cast.bobs_memory
    );
    for (call, what, needle) in [
        (
            calls[0],
            "another user's user_id",
            "may only access their own memories",
        ),
        (calls[1], "bob's memory id", denied.as_str()),
        (calls[2], "a per-process tool", "[mcp.spawn]"),
    ] {
        assert_eq!(call["ok"], false, "{what} was not refused: {out}");
        assert_eq!(call["error_kind"], error_kind, "{what}: {out}");
        assert_eq!(call["error_code"], -32003, "{what}: {out}");
        let message = call["error_message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{what}: {message:?}: {out}");
    }

    assert_eq!(calls[3]["ok"], true, "add_memory after the refusals: {out}");
    assert_eq!(tool_json(calls[3])["results"][0]["memory"], "x", "{out}");
    assert_eq!(calls[4]["ok"], true, "get_all_memories: {out}");
    let found = tool_json(calls[4]);
    let items = found["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "alice's memories only: {found}: {out}");
    assert_eq!(items[0]["memory"], "x", "{found}");
    assert_eq!(items[0]["user_id"], "alice", "{found}");

    // Only the two allowed calls reached a tool, forced onto alice.
    assert_eq!(
        env.mcp.tool_calls(),
        [
            (
                "add_memory".to_string(),
                json!({"text": "x", "user_id": "alice"})
            ),
            ("get_all_memories".to_string(), json!({"user_id": "alice"})),
        ],
        "{out}"
    );

    // One session throughout: one initialize, and every later request under
    // the id its answer handed out (the one the client reported, if it can).
    let posts: Vec<_> = env
        .mcp
        .http_requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    let initializes = posts
        .iter()
        .filter(|r| rpc_method(&r.body).as_deref() == Some("initialize"))
        .count();
    assert_eq!(initializes, 1, "the client initialised again: {out}");
    let sessions: Vec<Option<String>> = posts
        .iter()
        .filter(|r| rpc_method(&r.body).as_deref() != Some("initialize"))
        .map(|r| r.header("mcp-session-id"))
        .collect();
    let session = sessions
        .first()
        .cloned()
        .flatten()
        .unwrap_or_else(|| panic!("no session id after initialize: {sessions:?}"));
    assert!(
        sessions
            .iter()
            .all(|s| s.as_deref() == Some(session.as_str())),
        "requests under more than one session: {sessions:?}"
    );
    let calls_upstream = posts
        .iter()
        .filter(|r| rpc_method(&r.body).as_deref() == Some("tools/call"))
        .count();
    assert_eq!(calls_upstream, 2, "{out}");
    for step in &run.steps {
        if let Some(reported) = step["session_id"].as_str() {
            assert_eq!(reported, session, "{out}");
        }
    }
}

/// Runs [`script`] with an SDK client and checks the outcome.
async fn sdk_session_survives_refusals(client: SdkClient) {
    if !client.ready() {
        return;
    }
    let env = env().await;
    let cast = cast(&env);
    let run = client
        .run(
            &env.gate.mcp_url("/mcp"),
            &cast.alice,
            &script(&cast.bobs_memory),
            &[],
            RUN_LIMIT,
        )
        .await;
    assert_session_survived(&env, &cast, &run, client.protocol_error_kind());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_1_session_survives_in_band_refusals() {
    sdk_session_survives_refusals(SdkClient::Python1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_2_session_survives_in_band_refusals() {
    sdk_session_survives_refusals(SdkClient::Python2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_session_survives_in_band_refusals() {
    sdk_session_survives_refusals(SdkClient::TypeScript).await;
}

/// rmcp runs in-process; its outcome is put in the scripts' line format so
/// the same checks apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_session_survives_in_band_refusals() {
    let env = env().await;
    let cast = cast(&env);
    let headers = HashMap::from([(
        HeaderName::from_static("x-mcp-token"),
        HeaderValue::from_str(&cast.alice).expect("token header"),
    )]);
    let config = StreamableHttpClientTransportConfig::with_uri(env.gate.mcp_url("/mcp"))
        .custom_headers(headers)
        .reinit_on_expired_session(false);
    let transport = StreamableHttpClientTransport::from_config(config);
    let client = tokio::time::timeout(STEP, ().serve(transport))
        .await
        .expect("initialize within the step limit")
        .expect("rmcp initialises through memgate");

    let mut steps = vec![json!({"step": "initialize", "ok": true})];
    let tools = tokio::time::timeout(STEP, client.list_all_tools())
        .await
        .expect("tools/list within the step limit")
        .expect("tools/list");
    let names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    steps.push(json!({"step": "tools/list", "ok": true, "result": names}));

    let mut fatal = None;
    for (index, call) in script(&cast.bobs_memory)
        .as_array()
        .expect("script")
        .iter()
        .enumerate()
    {
        let tool = call["tool"].as_str().expect("tool").to_string();
        let arguments = call["arguments"].as_object().cloned().unwrap_or_default();
        let params = CallToolRequestParams::new(tool.clone()).with_arguments(arguments);
        let answer = tokio::time::timeout(STEP, client.call_tool(params)).await;
        let line = match answer {
            Ok(Ok(result)) => json!({
                "step": "tools/call", "index": index, "tool": tool,
                "ok": result.is_error != Some(true),
                "result": serde_json::to_value(&result).expect("result as JSON"),
            }),
            Ok(Err(ServiceError::McpError(error))) => json!({
                "step": "tools/call", "index": index, "tool": tool, "ok": false,
                "error_kind": "McpError",
                "error_code": error.code.0,
                "error_message": error.message,
            }),
            Ok(Err(other)) => {
                fatal = Some(format!("{tool}: {other}"));
                break;
            }
            Err(_) => {
                fatal = Some(format!("{tool}: no answer within {STEP:?}"));
                break;
            }
        };
        steps.push(line);
    }
    match fatal {
        Some(fatal) => steps.push(json!({"step": "session", "ok": false, "fatal": fatal})),
        None => steps.push(json!({"step": "close", "ok": true})),
    }
    let stdout: String = steps.iter().map(|s| format!("{s}\n")).collect();
    let run = SdkRun {
        client: "rmcp".into(),
        success: fatal_free(&steps),
        steps,
        stdout,
        stderr: String::new(),
    };
    assert_session_survived(&env, &cast, &run, "McpError");
    let _ = tokio::time::timeout(STEP, client.cancel()).await;
}

fn fatal_free(steps: &[Value]) -> bool {
    !steps.iter().any(|s| s["step"] == "session")
}

/// The legacy SSE transport: the answer to a `POST /messages/` belongs on
/// the `/sse` stream, where the Python SDK's `sse_client` waits for it. A
/// refusal answered anywhere else never reaches the client, whose call then
/// hangs until the script's step timeout.
async fn legacy_sse_session_survives_a_refusal(client: SdkClient) {
    if !client.ready() {
        return;
    }
    let env = env().await;
    let cast = cast(&env);
    let calls = json!([
        {"tool": "get_all_memories", "arguments": {"user_id": "bob"}},
        {"tool": "add_memory", "arguments": {"text": "x"}},
    ]);
    let run = client
        .run(
            &env.gate.mcp_url("/sse"),
            &cast.alice,
            &calls,
            &["--sse", "--step-timeout", "5"],
            RUN_LIMIT,
        )
        .await;
    let out = run.describe();
    assert!(run.fatal().is_none(), "the session died: {out}");
    assert!(run.success, "{out}");
    let calls = run.calls();
    assert_eq!(calls.len(), 2, "{out}");
    assert_eq!(calls[0]["ok"], false, "{out}");
    assert_eq!(
        calls[0]["error_kind"],
        client.protocol_error_kind(),
        "{out}"
    );
    assert_eq!(calls[0]["error_code"], -32003, "{out}");
    assert!(
        calls[0]["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("may only access their own memories")),
        "{out}"
    );
    assert_eq!(calls[1]["ok"], true, "{out}");
    assert_eq!(tool_json(calls[1])["results"][0]["memory"], "x", "{out}");
    assert_eq!(
        env.mcp.tool_calls(),
        [(
            "add_memory".to_string(),
            json!({"text": "x", "user_id": "alice"})
        )],
        "{out}"
    );
    assert_eq!(env.mcp.legacy_sessions(), 1, "one stream throughout: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_1_legacy_sse_session_survives_an_in_band_refusal() {
    legacy_sse_session_survives_a_refusal(SdkClient::Python1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_2_legacy_sse_session_survives_an_in_band_refusal() {
    legacy_sse_session_survives_a_refusal(SdkClient::Python2).await;
}
