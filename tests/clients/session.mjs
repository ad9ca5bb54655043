// What both TypeScript SDK clients (mcp_client.mjs, oauth_client.mjs) do on
// a connected session and how they report it: one JSON line per step, in the
// format mcp_client.mjs describes.

import { readFileSync } from "node:fs";

import { ErrorCode, McpError } from "@modelcontextprotocol/sdk/types.js";

export const SDK_VERSION = JSON.parse(
  readFileSync(new URL("./node_modules/@modelcontextprotocol/sdk/package.json", import.meta.url)),
).version;

// Codes the SDK raises itself when the connection is gone or silent.
const LOCAL_FAILURES = new Set([ErrorCode.ConnectionClosed, ErrorCode.RequestTimeout]);

export class SessionDied extends Error {}

export function emit(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

// Runs one request: its result, or null after printing an in-band error.
export async function step(name, run, extra = {}) {
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

// After initialize: its line, tools/list, then each of `calls`.
export async function runCalls(client, transport, calls, timeout) {
  const options = { timeout };
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

// Runs `run`, then ends the session `session()` names (its DELETE, then
// close), calls `report`, and exits: 0, or 3 after a final fatal line.
export async function runAndExit(run, session, report = () => {}) {
  let status = 0;
  try {
    await run();
  } catch (error) {
    emit({ step: "session", ok: false, fatal: error instanceof SessionDied ? error.message : String(error?.stack ?? error) });
    status = 3;
  }
  try {
    const { client, transport } = session();
    await transport.terminateSession();
    await client.close();
  } catch (error) {
    if (status === 0) {
      emit({ step: "session", ok: false, fatal: `close: ${error?.message}` });
      status = 3;
    }
  }
  report();
  if (status === 0) emit({ step: "close", ok: true });
  process.exit(status);
}
