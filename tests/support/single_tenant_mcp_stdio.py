#!/usr/bin/env python3
"""The single-tenant MCP server of single_tenant_mcp.py over stdio, for
tests/spawn.rs: one process serves the user named by MEM0_USER in its
environment; MCP is newline-delimited JSON-RPC on stdin and stdout
(standard library only).

Tools: add_coding_preference {text}, get_all_coding_preferences {},
env_names {}, echo_after {text, ms}, answered after ms milliseconds from
another thread (so answers can overtake each other), with a progress
notification first when the request carries a progress token, and announce
{text}, answered at once and followed 100 ms later by a notifications/message
carrying the text (a message the server starts on its own).

It writes one line of text that is not JSON on stdout at start (a
well-behaved proxy drops it) and a greeting on stderr. If PID_LOG is set,
it appends "USER PID" to that file at start; if RECEIVED_LOG is set, it
appends every message it reads to that file, one JSON line each. If the
file FAIL_IF_EXISTS names exists, it exits with status 1 at once (after
PID_LOG), like a server that cannot start.
"""

import json
import os
import sys
import threading
import time

# The tools both twins have (and the one user's memories) are the http twin's.
from single_tenant_mcp import TOOLS as SHARED_TOOLS, USER, call_tool as shared_tool, tool_result

OUT = threading.Lock()

TOOLS = SHARED_TOOLS + [
    {"name": "announce", "description": "Log text a moment later",
     "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}},
    {"name": "echo_after", "description": "Echo text after a delay",
     "inputSchema": {"type": "object", "properties": {
         "text": {"type": "string"}, "ms": {"type": "integer"}}}},
]


def send(message):
    line = json.dumps(message) + "\n"
    with OUT:
        sys.stdout.write(line)
        sys.stdout.flush()


def echo_after(rid, args, token):
    if token is not None:
        send({"jsonrpc": "2.0", "method": "notifications/progress",
              "params": {"progressToken": token, "progress": 1, "total": 2}})
    time.sleep(int(args.get("ms", 0)) / 1000)
    send({"jsonrpc": "2.0", "id": rid,
          "result": tool_result({"user": USER, "echo": args.get("text", "")})})


def announce(text):
    time.sleep(0.1)
    send({"jsonrpc": "2.0", "method": "notifications/message",
          "params": {"level": "info", "data": text}})


def call_tool(rid, params):
    name, args = params.get("name"), params.get("arguments") or {}
    shared = shared_tool(name, args)
    if shared is not None:
        return shared
    if name == "announce":
        threading.Thread(target=announce, args=(args.get("text", ""),), daemon=True).start()
        return tool_result({"user": USER})
    if name == "echo_after":
        token = (params.get("_meta") or {}).get("progressToken")
        threading.Thread(target=echo_after, args=(rid, args, token), daemon=True).start()
        return "later"
    return None


def handle(message):
    method, rid = message.get("method"), message.get("id")
    if rid is None or method is None:
        return
    if method == "initialize":
        result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "single-tenant-stdio", "version": "0"}}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "ping":
        result = {}
    elif method == "tools/call":
        result = call_tool(rid, message.get("params") or {})
        if result == "later":
            return
    else:
        result = None
    if result is None:
        send({"jsonrpc": "2.0", "id": rid,
              "error": {"code": -32601, "message": "Method not found"}})
    else:
        send({"jsonrpc": "2.0", "id": rid, "result": result})


def main():
    if os.environ.get("PID_LOG"):
        with open(os.environ["PID_LOG"], "a") as log:
            log.write(f"{USER} {os.getpid()}\n")
    if os.path.exists(os.environ.get("FAIL_IF_EXISTS") or "/nonexistent/"):
        sys.exit(1)
    received = os.environ.get("RECEIVED_LOG")
    print(f"single-tenant stdio MCP server for {USER!r}", file=sys.stderr, flush=True)
    with OUT:
        sys.stdout.write("starting up (not JSON-RPC)\n")
        sys.stdout.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        if received:
            with open(received, "a") as log:
                log.write(line if line.endswith("\n") else line + "\n")
        message = json.loads(line)
        for one in message if isinstance(message, list) else [message]:
            handle(one)


if __name__ == "__main__":
    main()
