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

import { parseArgs } from "node:util";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

import { runAndExit, runCalls, step } from "./session.mjs";

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

async function run() {
  await step("initialize", () => client.connect(transport, { timeout }));
  await runCalls(client, transport, calls, timeout);
}

await runAndExit(run, () => ({ client, transport }));
