#!/usr/bin/env python3
"""A single-tenant MCP server for tests/spawn.rs: like the Mem0 MCP Server
stack's, one process serves one user, named by MEM0_USER in its environment.

Streamable HTTP on POST/GET/DELETE /mcp (standard library only):
initialize hands out an Mcp-Session-Id; other requests need a session it
handed out (else 404); tools are add_coding_preference {text},
get_all_coding_preferences {} and env_names {} (the names of its environment
variables). GET /mcp holds an event stream open until the client leaves.
Legacy SSE as the MCP Python SDK serves it: GET /sse opens a session whose
`endpoint` event names /messages/?session_id=HEX; a POST there answers 202
and the answer goes on that stream (an unknown session gets 404).

Usage: single_tenant_mcp.py PORT. If PID_LOG is set, the process appends
"USER PID" to that file when it starts.
"""

import json
import os
import queue
import sys
import threading
import time
import uuid
from urllib.parse import parse_qs, urlsplit
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USER = os.environ.get("MEM0_USER", "")
MEMORIES = []
SESSIONS = set()
# Legacy SSE sessions: id -> queue of answers for its stream.
LEGACY = {}
LOCK = threading.Lock()

TOOLS = [
    {"name": "add_coding_preference", "description": "Store a preference",
     "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}},
    {"name": "get_all_coding_preferences", "description": "List preferences",
     "inputSchema": {"type": "object", "properties": {}}},
    {"name": "env_names", "description": "Environment variable names",
     "inputSchema": {"type": "object", "properties": {}}},
]


def tool_result(payload):
    return {"content": [{"type": "text", "text": json.dumps(payload)}],
            "structuredContent": payload, "isError": False}


def call_tool(name, args):
    if name == "add_coding_preference":
        with LOCK:
            MEMORIES.append(args.get("text", ""))
        return tool_result({"user": USER, "added": args.get("text", "")})
    if name == "get_all_coding_preferences":
        with LOCK:
            found = list(MEMORIES)
        return tool_result({"user": USER, "results": found})
    if name == "env_names":
        return tool_result({"names": sorted(os.environ.keys())})
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body go out in separate writes: without this, a kept-alive
    # client waits out a delayed ACK (about 40 ms) on every answer.
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        pass

    def send_json(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_empty(self, status):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def known_session(self):
        with LOCK:
            return self.headers.get("Mcp-Session-Id") in SESSIONS

    def answer(self, message):
        """The answer to one message (None for a notification)."""
        method, rid = message.get("method"), message.get("id")
        if rid is None:
            return None
        if method == "initialize":
            result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                      "serverInfo": {"name": "single-tenant", "version": "0"}}
            return {"jsonrpc": "2.0", "id": rid, "result": result}
        if method == "ping":
            return {"jsonrpc": "2.0", "id": rid, "result": {}}
        if method == "tools/list":
            return {"jsonrpc": "2.0", "id": rid, "result": {"tools": TOOLS}}
        if method == "tools/call":
            params = message.get("params", {})
            result = call_tool(params.get("name"), params.get("arguments") or {})
            if result is not None:
                return {"jsonrpc": "2.0", "id": rid, "result": result}
        return {"jsonrpc": "2.0", "id": rid,
                "error": {"code": -32601, "message": "Method not found"}}

    def post_legacy(self, message):
        session = (parse_qs(urlsplit(self.path).query).get("session_id") or [""])[0]
        with LOCK:
            answers = LEGACY.get(session)
        if answers is None:
            return self.send_empty(404)
        self.send_empty(202)
        answer = self.answer(message)
        if answer is not None:
            answers.put(answer)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        message = json.loads(self.rfile.read(length) or b"{}")
        method, rid = message.get("method"), message.get("id")
        if urlsplit(self.path).path == "/messages/":
            return self.post_legacy(message)
        if self.path != "/mcp":
            return self.send_empty(404)
        if method == "initialize":
            session = uuid.uuid4().hex
            with LOCK:
                SESSIONS.add(session)
            return self.send_json(200, self.answer(message), [("Mcp-Session-Id", session)])
        if not self.known_session():
            return self.send_json(404, {"jsonrpc": "2.0", "id": rid,
                                        "error": {"code": -32001, "message": "Session not found"}})
        answer = self.answer(message)
        if answer is None:
            return self.send_empty(202)
        return self.send_json(200, answer)

    def open_stream(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, chunk):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.flush()

    def legacy_stream(self):
        session, answers = uuid.uuid4().hex, queue.Queue()
        with LOCK:
            LEGACY[session] = answers
        self.open_stream()
        try:
            self.write_chunk(f"event: endpoint\ndata: /messages/?session_id={session}\n\n".encode())
            while True:
                try:
                    answer = answers.get(timeout=0.5)
                    self.write_chunk(b"event: message\ndata: %s\n\n" % json.dumps(answer).encode())
                except queue.Empty:
                    self.write_chunk(b": open\n\n")
        except (BrokenPipeError, ConnectionResetError, OSError):
            return
        finally:
            with LOCK:
                LEGACY.pop(session, None)

    def do_GET(self):
        if self.path == "/sse":
            return self.legacy_stream()
        if self.path != "/mcp" or not self.known_session():
            return self.send_empty(404)
        self.open_stream()
        try:
            while True:
                chunk = b": open\n\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError, OSError):
            return

    def do_DELETE(self):
        with LOCK:
            SESSIONS.discard(self.headers.get("Mcp-Session-Id"))
        self.send_empty(200)


def main():
    port = int(sys.argv[1])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    if os.environ.get("PID_LOG"):
        with open(os.environ["PID_LOG"], "a") as log:
            log.write(f"{USER} {os.getpid()}\n")
    print(f"single-tenant MCP server for {USER!r} on port {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
