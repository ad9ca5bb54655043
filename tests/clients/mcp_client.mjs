// Drives memgate's MCP listener with the official MCP TypeScript SDK.
//
// Connects over Streamable HTTP sending X-MCP-Token on every request, runs
// initialize, tools/list, then each call of a JSON script, and prints one
// JSON line per step:
//
//   {"step": ..., "ok": bool, "error_code": ..., "error_message": ...,
//    "error_kind": ..., "result": ...}
//
// error_kind says how the SDK surfaced a failed call: "McpError" for a
// JSON-RPC error answer (the SDK rejects the call with McpError), "isError"
// for a tool result flagged as an error. Anything else (a transport error, a
// closed connection, no answer within --step-timeout; the SDK reports the
// last two as McpError codes -32000 and -32001 of its own) means the session
// is unusable: a final {"step": "session", "ok": false, "fatal": ...} line is
// printed and the exit status is 3.
//
// Usage: node mcp_client.mjs [--step-timeout S] [--calls JSON] [URL]
// URL defaults to $MEMGATE_MCP_URL, the token comes from $MEMGATE_TOKEN (or
// --token), the calls from $MEMGATE_CALLS: [{"tool": NAME, "arguments": {}}].

import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ErrorCode, McpError } from "@modelcontextprotocol/sdk/types.js";

const SDK_VERSION = JSON.parse(
  readFileSync(new URL("./node_modules/@modelcontextprotocol/sdk/package.json", import.meta.url)),
).version;

// Codes the SDK raises itself when the connection is gone or silent.
const LOCAL_FAILURES = new Set([ErrorCode.ConnectionClosed, ErrorCode.RequestTimeout]);

class SessionDied extends Error {}

function emit(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    token: { type: "string", default: process.env.MEMGATE_TOKEN },
    calls: { type: "string", default: process.env.MEMGATE_CALLS ?? "[]" },
    "step-timeout": { type: "string", default: "10" },
  },
});
const url = positionals[0] ?? process.env.MEMGATE_MCP_URL;
if (!url || !values.token) {
  process.stderr.write("usage: mcp_client.mjs [--calls JSON] URL (token in MEMGATE_TOKEN)\n");
  process.exit(2);
}
const calls = JSON.parse(values.calls);
const timeout = Number(values["step-timeout"]) * 1000;

const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { "X-MCP-Token": values.token } },
});
const client = new Client({ name: "memgate-sdk-test", version: "0" });

// Runs one request: its result, or null after printing an in-band error.
async function step(name, run, extra = {}) {
  try {
    return await run();
  } catch (error) {
    if (error instanceof McpError && !LOCAL_FAILURES.has(error.code)) {
      const prefix = `MCP error ${error.code}: `;
      const message = error.message.startsWith(prefix)
        ? error.message.slice(prefix.length)
        : error.message;
      emit({
        step: name,
        ok: false,
        error_kind: "McpError",
        error_code: error.code,
        error_message: message,
        result: null,
        ...extra,
      });
      return null;
    }
    throw new SessionDied(`${name}: ${error?.name}: ${error?.message}`);
  }
}

async function run() {
  const options = { timeout };
  await step("initialize", () => client.connect(transport, options));
  emit({
    step: "initialize",
    ok: true,
    error_code: null,
    error_message: null,
    result: {
      serverInfo: client.getServerVersion(),
      capabilities: client.getServerCapabilities(),
    },
    sdk: `@modelcontextprotocol/sdk ${SDK_VERSION}`,
    session_id: transport.sessionId ?? null,
  });

  const tools = await step("tools/list", () => client.listTools(undefined, options));
  if (tools) {
    emit({
      step: "tools/list",
      ok: true,
      error_code: null,
      error_message: null,
      result: tools.tools.map((tool) => tool.name),
    });
  }

  for (const [index, call] of calls.entries()) {
    const extra = { index, tool: call.tool, session_id: transport.sessionId ?? null };
    const result = await step(
      "tools/call",
      () => client.callTool({ name: call.tool, arguments: call.arguments ?? {} }, undefined, options),
      extra,
    );
    if (!result) continue;
    if (result.isError) {
      const text = (result.content ?? []).map((c) => c.text ?? "").join(" ");
      emit({ step: "tools/call", ok: false, error_kind: "isError", error_code: null, error_message: text, result, ...extra });
    } else {
      emit({ step: "tools/call", ok: true, error_code: null, error_message: null, result, ...extra });
    }
  }
}

let status = 0;
try {
  await run();
} catch (error) {
  emit({ step: "session", ok: false, fatal: error instanceof SessionDied ? error.message : String(error?.stack ?? error) });
  status = 3;
}
try {
  await transport.terminateSession();
  await client.close();
} catch (error) {
  if (status === 0) {
    emit({ step: "session", ok: false, fatal: `close: ${error?.message}` });
    status = 3;
  }
}
if (status === 0) emit({ step: "close", ok: true });
process.exit(status);
