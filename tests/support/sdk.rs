//! The official MCP client SDKs, run as child processes through the scripts
//! in `tests/clients/` (`mcp_client.py`, `mcp_client.mjs`). Each script
//! prints one JSON line per step (`initialize`, `tools/list`, each
//! `tools/call`, then `close`, or a `session` line with `fatal` when the
//! session died); [`SdkRun`] holds those lines.
//!
//! `.ci/run` installs the SDKs from the pins in `tests/clients/`: a venv per
//! Python SDK major under `.ci/`, the TypeScript SDK under
//! `tests/clients/node_modules`. When one is missing the test using it is
//! skipped with a notice on stderr, unless `MEMGATE_REQUIRE_SDK_CLIENTS` is
//! set (as `.ci/run` does), which turns the skip into a failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

/// Set (to anything but empty or `0`) to fail instead of skipping when a
/// client SDK is not installed.
pub const REQUIRE_VAR: &str = "MEMGATE_REQUIRE_SDK_CLIENTS";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SdkClient {
    /// The MCP Python SDK 1.x (`.ci/venv-py1`).
    Python1,
    /// The MCP Python SDK 2.x (`.ci/venv-py2`).
    Python2,
    /// The MCP TypeScript SDK (`tests/clients/node_modules`).
    TypeScript,
}

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

impl SdkClient {
    pub fn name(self) -> &'static str {
        match self {
            SdkClient::Python1 => "MCP Python SDK 1.x",
            SdkClient::Python2 => "MCP Python SDK 2.x",
            SdkClient::TypeScript => "MCP TypeScript SDK",
        }
    }

    /// The exception type the script reports for a JSON-RPC error answer.
    pub fn protocol_error_kind(self) -> &'static str {
        match self {
            // 2.x renamed `McpError` to `MCPError`.
            SdkClient::Python2 => "MCPError",
            SdkClient::Python1 | SdkClient::TypeScript => "McpError",
        }
    }

    fn program(self) -> PathBuf {
        match self {
            SdkClient::Python1 => repo(".ci/venv-py1/bin/python"),
            SdkClient::Python2 => repo(".ci/venv-py2/bin/python"),
            SdkClient::TypeScript => PathBuf::from("node"),
        }
    }

    fn script(self) -> PathBuf {
        match self {
            SdkClient::Python1 | SdkClient::Python2 => repo("tests/clients/mcp_client.py"),
            SdkClient::TypeScript => repo("tests/clients/mcp_client.mjs"),
        }
    }

    /// The script that signs in through the SDK's own OAuth client.
    fn oauth_script(self) -> PathBuf {
        match self {
            SdkClient::Python1 | SdkClient::Python2 => repo("tests/clients/oauth_client.py"),
            SdkClient::TypeScript => repo("tests/clients/oauth_client.mjs"),
        }
    }

    /// What is missing for this client to run, if anything.
    fn missing(self) -> Option<String> {
        let installed = match self {
            SdkClient::Python1 | SdkClient::Python2 => self.program(),
            SdkClient::TypeScript => {
                repo("tests/clients/node_modules/@modelcontextprotocol/sdk/package.json")
            }
        };
        if !installed.exists() {
            return Some(format!("{} is not installed", installed.display()));
        }
        if self == SdkClient::TypeScript {
            let node = std::process::Command::new("node")
                .arg("--version")
                .stdin(Stdio::null())
                .output();
            if !node.is_ok_and(|out| out.status.success()) {
                return Some("`node` is not on PATH".into());
            }
        }
        None
    }

    /// Whether this client can run. When it cannot, panics if the SDKs are
    /// required, or prints why the test is skipped and returns false.
    pub fn ready(self) -> bool {
        let Some(missing) = self.missing() else {
            return true;
        };
        let required = std::env::var(REQUIRE_VAR).is_ok_and(|v| !v.is_empty() && v != "0");
        assert!(
            !required,
            "{}: {missing}, and {REQUIRE_VAR} is set; run .ci/run (it installs the client SDKs)",
            self.name()
        );
        // Straight to stderr: the test harness swallows `eprintln!` output of
        // passing tests, and a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!! SKIPPED: {}: {missing}. Run .ci/run (or its setup_sdk_clients step) to \
             install the MCP client SDKs; set {REQUIRE_VAR}=1 to make this a failure. !!!\n",
            self.name()
        );
        false
    }

    /// Runs the client's script against `url` with `token`, the calls
    /// `calls` (`[{"tool": …, "arguments": {…}}]`) and `extra` arguments;
    /// killed if it is still running after `limit`.
    pub async fn run(
        self,
        url: &str,
        token: &str,
        calls: &Value,
        extra: &[&str],
        limit: Duration,
    ) -> SdkRun {
        let mut command = tokio::process::Command::new(self.program());
        command
            .arg(self.script())
            .args(extra)
            .arg(url)
            // The token stays out of the process list.
            .env("MEMGATE_TOKEN", token)
            .env("MEMGATE_CALLS", calls.to_string());
        self.finish(command, limit).await
    }

    /// Runs the client's OAuth script against `url` with no credentials:
    /// the SDK's own OAuth client discovers the authorization server from
    /// memgate's 401 and signs in as `user` at its login page (see
    /// `tests/clients/oauth_client.py`), then makes the calls `calls`.
    pub async fn run_oauth(self, url: &str, user: &str, calls: &Value, limit: Duration) -> SdkRun {
        let mut command = tokio::process::Command::new(self.program());
        command
            .arg(self.oauth_script())
            .args(["--user", user])
            .arg(url)
            .env("MEMGATE_CALLS", calls.to_string());
        self.finish(command, limit).await
    }

    async fn finish(self, mut command: tokio::process::Command, limit: Duration) -> SdkRun {
        let child = command
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: cannot start {:?}: {e}", self.name(), self.program()));
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{}: still running after {limit:?}", self.name()))
            .expect("client output");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let steps = stdout
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        SdkRun {
            client: self.name().to_string(),
            success: out.status.success(),
            steps,
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// What one client run printed.
#[derive(Debug)]
pub struct SdkRun {
    pub client: String,
    /// Exit status 0.
    pub success: bool,
    /// Every JSON line of stdout, in order.
    pub steps: Vec<Value>,
    pub stdout: String,
    pub stderr: String,
}

impl SdkRun {
    /// The first line of step `name`.
    pub fn step(&self, name: &str) -> Option<&Value> {
        self.steps.iter().find(|s| s["step"] == name)
    }

    /// The `tools/call` lines, in order.
    pub fn calls(&self) -> Vec<&Value> {
        self.steps
            .iter()
            .filter(|s| s["step"] == "tools/call")
            .collect()
    }

    /// Why the session died, if it did.
    pub fn fatal(&self) -> Option<&str> {
        self.step("session").and_then(|s| s["fatal"].as_str())
    }

    /// The whole output, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "{} (exit ok: {})\n--- stdout\n{}--- stderr (tail)\n{}",
            self.client,
            self.success,
            self.stdout,
            tail(&self.stderr, 4000)
        )
    }
}

fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
