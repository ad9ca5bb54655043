#!/usr/bin/env python3
"""memgate soak test. Run it through bench/soak.sh.

One memgate (release build, SQLite store, every success audited) in front of a
fake mem0 + MCP upstream (this file, `soak.py upstream`), driven for
SOAK_MINUTES (default 30) by client threads at a moderate fixed rate:

  mem0 workers   cached-token GET /memories, 1 KiB POST /memories (user_id
                 injected), POST /search, GET /memories/{id} of their own
                 memories, and refusals that must be refused: another user's
                 memory (403), another user's user_id (403); MCP tools/call
  sse workers    initialize, GET /mcp event stream held open for a few
                 seconds, tools/call, another user presenting the session
                 (404), DELETE of the session
  invalid        unknown, malformed and missing tokens from their own client
                 addresses (401, then 429 once an address is cut off)
  rate-limited   one token created with --rate-limit 5/s, sent 12 req/s (200/429)
  controller     every SOAK_REVOKE_EVERY s: `memgate token create` for one
                 worker's user, the worker switches to it, `memgate token
                 revoke` of its old token; the worker keeps trying the old one
                 for a few seconds from another address, which must be
                 refused within 1 s of the revoke command returning

Every response is classified expected / unexpected; every request carries an
X-Request-Id, so after memgate has been stopped (SIGTERM, audit flushed) each
decision is matched with its audit rows in the store. The fake upstream checks
that every forwarded mem0/MCP request names the caller's own user (the client
tells it who the caller is in X-Soak-Caller, a header memgate passes through).
memgate's VmRSS and open fds are sampled every 10 s.

Writes bench/results/soak.json and soak.md, then reassembles bench/RESULTS.md
(bench.py's assemble()).
"""

import array
import base64
import csv
import http.client
import http.server
import json
import os
import random
import secrets
import signal
import socketserver
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter, defaultdict, deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (shared helpers: processes, memgate instances, /proc, facts)

# --------------------------------------------------------------------------
# Settings (environment)

MINUTES = float(os.environ.get("SOAK_MINUTES", "30"))
DURATION = MINUTES * 60
WARMUP = float(os.environ.get("SOAK_WARMUP", str(min(300.0, DURATION / 6))))
SAMPLE_EVERY = 10.0
MEM0_WORKERS = int(os.environ.get("SOAK_MEM0_WORKERS", "6"))
MEM0_RATE = float(os.environ.get("SOAK_MEM0_RATE", "30"))  # req/s per mem0 worker
SSE_WORKERS = int(os.environ.get("SOAK_SSE_WORKERS", "2"))
SSE_EVENTS = int(os.environ.get("SOAK_SSE_EVENTS", "4"))
SSE_INTERVAL = float(os.environ.get("SOAK_SSE_INTERVAL", "1.0"))  # s between events
INVALID_RATE = float(os.environ.get("SOAK_INVALID_RATE", "30"))
INVALID_IPS = int(os.environ.get("SOAK_INVALID_IPS", "8"))
RL_TOKEN_RPS = 5
RL_RATE = float(os.environ.get("SOAK_RL_RATE", "12"))
REVOKE_EVERY = float(os.environ.get("SOAK_REVOKE_EVERY", "15"))
REVOKE_GRACE = 1.0  # a revoked token must be refused this long after `token revoke` returned
REVOKED_TAIL = 3.0  # how long a worker keeps trying its revoked token
FAILED_AUTH_PER_MIN = 60
OWNER_CACHE = int(os.environ.get("SOAK_OWNER_CACHE", "5000"))
PORT_BASE = bench.PORT_BASE
RID_PREFIX = "soak-"

USER_AGENT = "memgate-soak/1"
WORK = bench.WORK
log = bench.log


# One list/search answer in five carries another user's memory too, as a mem0
# that ignored the user filter would; memgate must drop it (and logs a WARN).
FOREIGN_SHARE = 0.2

# --------------------------------------------------------------------------
# The fake upstream: mem0 REST shapes on one port, MCP (JSON + SSE) on the other.
# Run as a separate process (`soak.py upstream MEM0_PORT MCP_PORT`) so that it
# does not share the client's interpreter lock.


class UpstreamState:
    def __init__(self):
        self.lock = threading.Lock()
        self.owners = {}  # memory id -> user_id
        self.counts = Counter()  # route -> forwarded requests
        self.violations = Counter()  # what -> count
        self.samples = []  # first violations, with details
        self.sse_open = 0
        self.sse_max_open = 0

    def violation(self, what, detail):
        with self.lock:
            self.violations[what] += 1
            if len(self.samples) < 30:
                self.samples.append({"what": what, **detail})


STATE = UpstreamState()


def mem_item(mid, user):
    return {
        "id": mid,
        "memory": "soak memory",
        "hash": mid[:8],
        "metadata": None,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": None,
        "user_id": user,
    }


class UpstreamHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Like uvicorn: no Nagle, and each answer in one write (headers and body
    # in two small writes would meet memgate's delayed ACK: +40 ms each).
    disable_nagle_algorithm = True
    server_version = "soak-upstream"
    sys_version = ""

    def log_message(self, *args):
        pass

    def body_json(self):
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def send_json(self, obj, status=200, extra=()):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self._headers_buffer.append(b"\r\n")
        self.wfile.write(b"".join(self._headers_buffer) + data)
        self._headers_buffer = []

    def caller_checks(self, route, named_users):
        """The request came through memgate for X-Soak-Caller: the trusted
        identity headers and every user the request names must be that caller."""
        caller = self.headers.get("x-soak-caller")
        rid = self.headers.get("x-request-id")
        with STATE.lock:
            STATE.counts[route] += 1
        detail = {"route": route, "request_id": rid, "caller": caller}
        if caller is None:
            STATE.violation("forwarded without X-Soak-Caller", detail)
            return caller
        if self.headers.get("x-mcp-userid") != caller:
            STATE.violation("X-MCP-UserID is not the caller", {**detail, "x_mcp_userid": self.headers.get("x-mcp-userid")})
        if self.headers.get("x-memgate-scope") != caller:
            STATE.violation("X-Memgate-Scope is not the caller", {**detail, "scope": self.headers.get("x-memgate-scope")})
        if self.headers.get("x-mcp-token") or self.headers.get("authorization"):
            STATE.violation("credential forwarded", detail)
        for where, user in named_users:
            if user != caller:
                STATE.violation(f"{where} is not the caller", {**detail, "named": user})
        return caller

    # -- mem0 -------------------------------------------------------------

    def mem0_get(self, url):
        parts = url.path.rstrip("/").split("/")
        q = urllib.parse.parse_qs(url.query)
        if url.path == "/memories":
            users = q.get("user_id", [])
            caller = self.caller_checks("GET /memories", [("query user_id", u) for u in users] or [("query user_id", None)])
            user = users[0] if users else None
            # The caller's item, sometimes one of somebody else's that memgate must drop.
            items = [mem_item(f"list-{secrets.token_hex(4)}", user)]
            if random.random() < FOREIGN_SHARE:
                items.append(mem_item("foreign-item", "intruder"))
            self.send_json({"results": items})
            return
        if len(parts) == 3 and parts[1] == "memories":
            mid = parts[2]
            with STATE.lock:
                owner = STATE.owners.get(mid)
            if self.headers.get("x-soak-caller") is None:
                # memgate's own owner lookup (no client headers).
                with STATE.lock:
                    STATE.counts["owner lookup GET /memories/{id}"] += 1
                self.send_json(None if owner is None else mem_item(mid, owner))
                return
            self.caller_checks("GET /memories/{id}", [("memory owner", owner)])
            self.send_json(None if owner is None else mem_item(mid, owner))
            return
        self.send_json({"detail": "Not Found"}, 404)

    def mem0_post(self, url):
        body = self.body_json() or {}
        if url.path == "/memories":
            user = body.get("user_id")
            caller = self.caller_checks("POST /memories", [("body user_id", user)])
            mid = secrets.token_hex(12)
            with STATE.lock:
                STATE.owners[mid] = user
            self.send_json({"results": [{"id": mid, "memory": "soak memory", "event": "ADD"}]})
            return
        if url.path == "/search":
            named = [("body user_id", body.get("user_id"))]
            filters = body.get("filters")
            if isinstance(filters, dict) and "user_id" in filters:
                named.append(("filters.user_id", filters["user_id"]))
            self.caller_checks("POST /search", named)
            user = body.get("user_id")
            items = [{**mem_item(f"hit-{secrets.token_hex(4)}", user), "score": 0.9}]
            if random.random() < FOREIGN_SHARE:
                items.append({**mem_item("foreign-hit", "intruder"), "score": 0.8})
            self.send_json({"results": items})
            return
        self.send_json({"detail": "Not Found"}, 404)

    # -- MCP --------------------------------------------------------------

    def mcp_post(self, url):
        msg = self.body_json()
        if not isinstance(msg, dict):
            self.send_json({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse"}}, 400)
            return
        method = msg.get("method")
        if method == "initialize":
            self.caller_checks("MCP initialize", [])
            sid = secrets.token_hex(16)
            self.send_json(
                {"jsonrpc": "2.0", "id": msg.get("id"), "result": {
                    "protocolVersion": "2025-03-26", "capabilities": {"tools": {}},
                    "serverInfo": {"name": "soak-upstream", "version": "1"}}},
                extra=[("mcp-session-id", sid)],
            )
            return
        if method == "tools/call":
            args = (msg.get("params") or {}).get("arguments") or {}
            self.caller_checks("MCP tools/call", [("arguments.user_id", args.get("user_id"))])
            self.send_json({"jsonrpc": "2.0", "id": msg.get("id"), "result": {
                "content": [{"type": "text", "text": "[]"}], "isError": False}})
            return
        self.caller_checks(f"MCP {method}", [])
        self.send_json({"jsonrpc": "2.0", "id": msg.get("id"), "result": {}})

    def mcp_stream(self):
        self.caller_checks("MCP GET stream", [])
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        with STATE.lock:
            STATE.sse_open += 1
            STATE.sse_max_open = max(STATE.sse_max_open, STATE.sse_open)
        try:
            for n in range(SSE_EVENTS):
                if n:
                    time.sleep(SSE_INTERVAL)
                ev = f"id: {n}\nevent: message\ndata: {json.dumps({'jsonrpc': '2.0', 'method': 'notifications/message', 'params': {'n': n}})}\n\n".encode()
                self.wfile.write(f"{len(ev):x}\r\n".encode() + ev + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        finally:
            with STATE.lock:
                STATE.sse_open -= 1

    # -- dispatch ---------------------------------------------------------

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/__soak/stats":
            with STATE.lock:
                out = {"counts": dict(STATE.counts), "violations": dict(STATE.violations),
                       "samples": STATE.samples, "memories": len(STATE.owners),
                       "sse_max_open": STATE.sse_max_open}
            self.send_json(out)
            return
        if self.server.kind == "mcp":
            if url.path.rstrip("/") == "/mcp":
                self.mcp_stream()
            else:
                self.send_json({"detail": "Not Found"}, 404)
            return
        self.mem0_get(url)

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        if self.server.kind == "mcp":
            self.mcp_post(url)
        else:
            self.mem0_post(url)

    def do_DELETE(self):
        url = urllib.parse.urlsplit(self.path)
        self.body_json()
        if self.server.kind == "mcp" and url.path.rstrip("/") == "/mcp":
            self.caller_checks("MCP DELETE session", [])
            self.send_json(None)
            return
        self.send_json({"detail": "Not Found"}, 404)


class UpstreamServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def run_upstream(mem0_port, mcp_port):
    servers = []
    for kind, port in (("mem0", mem0_port), ("mcp", mcp_port)):
        s = UpstreamServer(("127.0.0.1", port), UpstreamHandler)
        s.kind = kind
        servers.append(s)
        threading.Thread(target=s.serve_forever, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


# --------------------------------------------------------------------------
# Client side


class Client:
    """One keep-alive HTTP/1.1 connection from a chosen loopback address
    (memgate's per-IP limits see each address as a client)."""

    def __init__(self, port, source_ip="127.0.0.1", timeout=10.0):
        self.port, self.src, self.timeout = port, source_ip, timeout
        self.conn = None

    def request(self, method, path, headers, body=None, stream=False):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=self.timeout, source_address=(self.src, 0)
            )
        try:
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            if stream:
                return resp
            data = resp.read()
            if resp.will_close:
                self.close()
            return resp.status, resp, data
        except BaseException:
            self.close()
            raise

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
            self.conn = None


class Stats:
    """Per request kind: statuses, expected/unexpected, latencies, samples."""

    def __init__(self):
        self.lock = threading.Lock()
        self.status = defaultdict(Counter)
        self.ok = Counter()
        self.bad = Counter()
        self.conn_errors = Counter()
        self.lat = defaultdict(lambda: array.array("f"))
        self.samples = []
        self.checks = Counter()  # named checks that failed (leaks, buffering, ...)

    def add(self, kind, status, ok, latency, why=None, detail=None):
        with self.lock:
            self.status[kind][status] += 1
            if ok:
                self.ok[kind] += 1
            else:
                self.bad[kind] += 1
                if status == 0:
                    self.conn_errors[kind] += 1
                if why:
                    self.checks[why] += 1
                if len(self.samples) < 60:
                    self.samples.append({"t": round(time.time() - T0, 2), "kind": kind, "status": status,
                                         "why": why, "detail": detail})
            if latency is not None:
                self.lat[kind].append(latency * 1000)


STATS = Stats()
T0 = time.time()
STOP = threading.Event()


def new_rid(worker):
    worker.seq += 1
    return f"{RID_PREFIX}{worker.name}-{worker.seq:08d}"


class Recorder:
    """Each worker writes its decisions (request id, kind, status, expected
    audit events) to its own CSV file: no lock, no memory growth in the client."""

    def __init__(self, name):
        self.f = open(WORK / f"decisions-{name}.csv", "w", newline="")
        self.w = csv.writer(self.f)

    def write(self, rid, kind, status, events):
        self.w.writerow((rid, kind, status, events))

    def close(self):
        self.f.close()


def expected_events(status, kind):
    """The audit rows memgate should write for a decision (docs/design.md §6, with
    audit.success_sample_secs = 0 every authenticated request is recorded)."""
    if 200 <= status < 300:
        return "auth_success"
    if status == 401:
        return "auth_failure"
    if status == 429:
        return "rate_limited"
    if status == 403 and kind == "get_foreign_id":
        return "auth_success+ownership_denied"
    if status == 403:
        return "auth_success+permission_denied"
    if status == 404 and kind == "sse_foreign_session":
        return "auth_success+session_denied"
    return "?"


class Worker(threading.Thread):
    def __init__(self, name, rate):
        super().__init__(name=name, daemon=True)
        self.name = name
        self.rate = rate
        self.seq = 0
        self.rec = Recorder(name)
        self.rng = random.Random(hash(name) ^ int(T0))
        self.sent = 0
        self.behind_resets = 0

    def pace(self, nxt):
        """Sleeps until the next slot of a fixed-rate schedule (no catching up
        in bursts after a stall)."""
        nxt += 1.0 / self.rate
        now = time.time()
        if nxt < now - 1.0:
            self.behind_resets += 1
            nxt = now
        if nxt > now:
            STOP.wait(nxt - now)
        return nxt

    def do(self, client, kind, method, path, headers, body=None, expect=(200,), check=None, mcp=False, slot=None,
           token=None):
        """Sends one request, classifies it, records the decision. Returns
        (status, response, data) or None on a connection error. With `slot`
        and `token`: a refusal of a token that was rotated away while the
        request was on its way counts as a (expected) revoked-token refusal."""
        rid = new_rid(self)
        h = {"X-Request-Id": rid, "User-Agent": USER_AGENT, **headers}
        if body is not None and "Content-Type" not in h:
            h["Content-Type"] = "application/json"
        t = time.time()
        try:
            status, resp, data = client.request(method, path, h, body)
        except (OSError, http.client.HTTPException) as e:
            STATS.add(kind, 0, False, None, "connection error", f"{method} {path}: {type(e).__name__}: {e}")
            self.rec.write(rid, kind, 0, "")
            return None
        lat = time.time() - t
        self.sent += 1
        if status in (401, 429) and status not in expect and slot is not None:
            rev = slot.old
            if rev is not None and rev.token == token and slot.current() != token:
                rev.note(t, True)
                kind = "revoked"
                expect = (401, 429)
        ok = status in expect
        why = None if ok else f"unexpected status {status}"
        detail = None if ok else f"{method} {path} -> {status}: {data[:200]!r}"
        if ok and mcp and status == 401 and not resp.getheader("www-authenticate"):
            ok, why, detail = False, "MCP 401 without WWW-Authenticate", f"{method} {path}"
        if ok and check is not None:
            problem = check(status, resp, data)
            if problem:
                ok, why, detail = False, problem, f"{method} {path} -> {status}: {data[:200]!r}"
        STATS.add(kind, status, ok, lat, why, detail)
        self.rec.write(rid, kind, status, expected_events(status, kind))
        return status, resp, data

    def run(self):
        try:
            self.loop()
        except Exception as e:  # a bug in the driver must not pass as a quiet run
            STATS.add("driver", 0, False, None, "driver exception", f"{self.name}: {type(e).__name__}: {e}")
            log(f"soak: worker {self.name} crashed: {type(e).__name__}: {e}")
            raise
        finally:
            self.rec.close()
            # Close this worker's connections, so that the fd count after the
            # run shows what memgate keeps, not what the client left open.
            for v in vars(self).values():
                for c in (v if isinstance(v, (list, tuple)) else [v]):
                    for x in (c if isinstance(c, tuple) else [c]):
                        if isinstance(x, Client):
                            x.close()
                        elif isinstance(x, RevokedTail) and x.client is not None:
                            x.client.close()


class Slot:
    """A worker's current token and, after a rotation, its revoked one."""

    def __init__(self, user, token, prefix):
        self.user = user
        self.lock = threading.Lock()
        self.token, self.prefix = token, prefix
        self.old = None  # Revocation

    def current(self):
        with self.lock:
            return self.token

    def rotate(self, token, prefix, revocation):
        with self.lock:
            self.token, self.prefix = token, prefix
            self.old = revocation


class Revocation:
    def __init__(self, n, user, token, prefix):
        self.n, self.user, self.token, self.prefix = n, user, token, prefix
        self.t0 = time.time()  # the revoke was decided; the worker switched tokens
        self.t1 = None  # `memgate token revoke` returned (the change is committed)
        self.lock = threading.Lock()
        self.accepted = []  # send times of 2xx answers with the revoked token
        self.refused = []  # send times of 401/429 answers

    def note(self, sent, refused):
        with self.lock:
            (self.refused if refused else self.accepted).append(sent)

    def summary(self):
        t1 = self.t1
        rel = lambda ts: [round(x - t1, 3) for x in ts] if t1 else []
        first_refused = min(self.refused) if self.refused else None
        return {
            "n": self.n,
            "user": self.user,
            "prefix": self.prefix,
            "cli_secs": None if t1 is None else round(t1 - self.t0, 3),
            "tries": len(self.accepted) + len(self.refused),
            "accepted": len(self.accepted),
            "refused": len(self.refused),
            "last_accepted_after_cli": max(rel(self.accepted)) if self.accepted and t1 else None,
            "first_refused_after_cli": None if first_refused is None or not t1 else round(first_refused - t1, 3),
            "first_refused_after_start": None if first_refused is None else round(first_refused - self.t0, 3),
            "violations": sum(1 for x in self.accepted if t1 and x > t1 + REVOKE_GRACE),
        }


REVOCATIONS = []
USER_MEMORIES = defaultdict(list)  # user -> memory ids created through memgate (own)
MEM_LOCK = threading.Lock()


def results_only_user(user):
    def check(status, resp, data):
        if status != 200:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            return "response is not JSON"
        items = doc.get("results") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            return "no results list"
        others = [i.get("user_id") for i in items if isinstance(i, dict) and i.get("user_id") != user]
        if others:
            return "another user's memory in the results (leak)"
        if not items:
            return "the caller's own item was dropped"
        return None

    return check


def item_of_user(user):
    def check(status, resp, data):
        if status != 200:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            return "response is not JSON"
        if not isinstance(doc, dict) or doc.get("user_id") != user:
            return "memory item of another user (leak)"
        return None

    return check


MCP_ACCEPT = "application/json, text/event-stream"


def mcp_call(tool, args, rid=7):
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                       "params": {"name": tool, "arguments": args}}).encode()


class RevokedTail:
    """After a rotation, the worker keeps presenting its old token for a few
    seconds from its own second address (so the failures it causes never cut
    off the address its valid traffic uses)."""

    def __init__(self, worker, port, ip):
        self.worker, self.port, self.ip = worker, port, ip
        self.client = None
        self.rev = None

    def active(self, slot):
        rev = slot.old
        if rev is None:
            return None
        # A few seconds after the revoke returned, longer if no refusal was seen yet.
        end = (rev.t1 or time.time()) + (REVOKED_TAIL if rev.refused else 10.0)
        if time.time() > end:
            if self.client is not None:
                self.client.close()
                self.client = None
            return None
        if self.rev is not rev:
            if self.client is not None:
                self.client.close()
            self.client = Client(self.port, self.ip)
            self.rev = rev
        return rev

    def send(self, rev, kind, method, path, headers, body=None, mcp=False):
        w = self.worker
        rid = new_rid(w)
        h = {"X-Request-Id": rid, "User-Agent": USER_AGENT, "X-Soak-Caller": rev.user, **headers}
        if body is not None:
            h["Content-Type"] = "application/json"
        sent = time.time()
        try:
            status, resp, data = self.client.request(method, path, h, body)
        except (OSError, http.client.HTTPException) as e:
            STATS.add(kind, 0, False, None, "connection error", f"revoked {method} {path}: {type(e).__name__}: {e}")
            w.rec.write(rid, kind, 0, "")
            return
        lat = time.time() - sent
        t1 = rev.t1
        refused = status in (401, 429)
        accepted = 200 <= status < 300
        rev.note(sent, refused)
        if refused:
            ok, why = True, None
            if mcp and status == 401 and not resp.getheader("www-authenticate"):
                ok, why = False, "MCP 401 without WWW-Authenticate"
        elif accepted:
            late = t1 is not None and sent > t1 + REVOKE_GRACE
            ok = not late
            why = f"revoked token accepted {sent - t1:.2f} s after `token revoke` returned" if late else None
        else:
            ok, why = False, f"unexpected status {status}"
        STATS.add(kind, status, ok, lat, why, None if ok else f"{method} {path} token {rev.prefix} -> {status}: {data[:160]!r}")
        w.rec.write(rid, kind, status, expected_events(status, kind))


class Mem0Worker(Worker):
    MIX = [
        ("get", 40),
        ("post", 18),
        ("search", 14),
        ("get_own_id", 12),
        ("get_foreign_id", 4),
        ("cross_user", 4),
        ("mcp_call", 8),
    ]

    def __init__(self, idx, mg, slot, users):
        super().__init__(f"m{idx}", MEM0_RATE)
        self.mg, self.slot, self.users = mg, slot, users
        self.mem0 = Client(mg.mem0_port)
        self.mcp = Client(mg.mcp_port)
        self.tail = RevokedTail(self, mg.mem0_port, f"127.0.2.{idx + 1}")
        self.kinds = [k for k, w in self.MIX for _ in range(w)]
        self.body = bench.create_body_1k().encode()

    def loop(self):
        user = self.slot.user
        nxt = time.time()
        while not STOP.is_set():
            nxt = self.pace(nxt)
            if STOP.is_set():
                break
            rev = self.tail.active(self.slot)
            if rev is not None and self.rng.random() < 0.34:
                self.tail.send(rev, "revoked", "GET", f"/memories?user_id={user}", {"X-MCP-Token": rev.token})
                continue
            token = self.slot.current()
            h = {"X-Soak-Caller": user}
            # Both credential spellings.
            if self.rng.random() < 0.5:
                h["X-MCP-Token"] = token
            else:
                h["Authorization"] = f"Bearer {token}"
            kind = self.rng.choice(self.kinds)
            do = lambda *a, **k: self.do(*a, slot=self.slot, token=token, **k)
            if kind == "get":
                q = f"?user_id={user}" if self.rng.random() < 0.5 else ""
                do(self.mem0, kind, "GET", f"/memories{q}", h, check=results_only_user(user))
            elif kind == "post":
                r = do(self.mem0, kind, "POST", "/memories", h, self.body)
                if r and r[0] == 200:
                    try:
                        ids = [x["id"] for x in json.loads(r[2])["results"]]
                    except (ValueError, KeyError, TypeError):
                        ids = []
                    with MEM_LOCK:
                        USER_MEMORIES[user].extend(ids)
            elif kind == "search":
                doc = {"query": "preferences", "limit": 5}
                if self.rng.random() < 0.5:
                    doc["filters"] = {"user_id": user}
                else:
                    doc["user_id"] = user
                do(self.mem0, kind, "POST", "/search", h, json.dumps(doc).encode(), check=results_only_user(user))
            elif kind == "get_own_id":
                with MEM_LOCK:
                    mine = USER_MEMORIES.get(user)
                    mid = self.rng.choice(mine) if mine else None
                if mid is None:
                    continue
                do(self.mem0, kind, "GET", f"/memories/{mid}", h, check=item_of_user(user))
            elif kind == "get_foreign_id":
                other = self.rng.choice([u for u in self.users if u != user])
                with MEM_LOCK:
                    theirs = USER_MEMORIES.get(other)
                    mid = self.rng.choice(theirs) if theirs else None
                if mid is None:
                    continue
                do(self.mem0, kind, "GET", f"/memories/{mid}", h, expect=(403,))
            elif kind == "cross_user":
                other = self.rng.choice([u for u in self.users if u != user])
                do(self.mem0, kind, "GET", f"/memories?user_id={other}", h, expect=(403,))
            elif kind == "mcp_call":
                h.update({"Accept": MCP_ACCEPT})
                do(self.mcp, kind, "POST", "/mcp", h, mcp_call("search_memories", {"query": "x"}), mcp=True)


class SseWorker(Worker):
    """initialize → GET stream (held open while the upstream sends its events)
    → tools/call → (every third cycle) another user presents the session →
    DELETE. The stream must arrive event by event, not buffered."""

    def __init__(self, idx, mg, slot, others):
        super().__init__(f"s{idx}", 1.0)
        self.mg, self.slot, self.others = mg, slot, others
        self.mcp = Client(mg.mcp_port)
        self.tail = RevokedTail(self, mg.mcp_port, f"127.0.2.{100 + idx}")
        self.cycles = 0

    def revoked_tries(self, n):
        rev = self.tail.active(self.slot)
        if rev is None:
            return
        for _ in range(n):
            self.tail.send(rev, "revoked", "POST", "/mcp",
                           {"X-MCP-Token": rev.token, "Accept": MCP_ACCEPT},
                           mcp_call("search_memories", {"query": "x"}), mcp=True)
            STOP.wait(0.1)

    def stream(self, h, sid):
        """GET /mcp as an event stream on its own connection."""
        rid = new_rid(self)
        headers = {**h, "X-Request-Id": rid, "User-Agent": USER_AGENT, "Accept": "text/event-stream",
                   "Mcp-Session-Id": sid}
        c = Client(self.mg.mcp_port, timeout=SSE_EVENTS * SSE_INTERVAL + 15)
        t = time.time()
        kind = "sse_stream"
        try:
            resp = c.request("GET", "/mcp", headers, stream=True)
            status = resp.status
            arrivals = []
            if status == 200:
                buf = b""
                while True:
                    chunk = resp.read1(65536)
                    if not chunk:
                        break
                    buf += chunk
                    while b"\n\n" in buf:
                        ev, buf = buf.split(b"\n\n", 1)
                        if b"data:" in ev:
                            arrivals.append(time.time() - t)
            else:
                body = resp.read()
        except (OSError, http.client.HTTPException) as e:
            STATS.add(kind, 0, False, None, "connection error", f"GET /mcp stream: {type(e).__name__}: {e}")
            self.rec.write(rid, kind, 0, "")
            c.close()
            return
        finally:
            c.close()
        lat = time.time() - t
        ok, why, detail = status == 200, None, None
        if not ok:
            why, detail = f"unexpected status {status}", f"GET /mcp stream -> {status}: {body[:160]!r}"
        elif (resp.getheader("content-type") or "").split(";")[0] != "text/event-stream":
            ok, why = False, "stream without text/event-stream"
        elif len(arrivals) != SSE_EVENTS:
            ok, why, detail = False, "stream lost events", f"{len(arrivals)} of {SSE_EVENTS}"
        elif SSE_EVENTS > 1 and arrivals[0] > arrivals[-1] - 0.5 * SSE_INTERVAL * (SSE_EVENTS - 1):
            ok, why, detail = False, "stream buffered (events arrived together)", str(arrivals)
        STATS.add(kind, status, ok, lat, why, detail)
        self.rec.write(rid, kind, status, expected_events(status, kind))

    def loop(self):
        user = self.slot.user
        def hdr(sid=None):
            token = self.slot.current()
            h = {"X-Soak-Caller": user, "X-MCP-Token": token, "Accept": MCP_ACCEPT}
            if sid:
                h["Mcp-Session-Id"] = sid
            return h, {"slot": self.slot, "token": token}

        while not STOP.is_set():
            self.cycles += 1
            h, tk = hdr()
            init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-03-26", "capabilities": {},
                "clientInfo": {"name": "soak", "version": "1"}}}).encode()
            r = self.do(self.mcp, "sse_initialize", "POST", "/mcp", h, init, mcp=True, **tk)
            sid = r[1].getheader("mcp-session-id") if r and r[0] == 200 else None
            if sid is None:
                if r and r[0] == 200:
                    STATS.add("sse_initialize", 200, False, None, "initialize answer without Mcp-Session-Id")
                STOP.wait(1.0)
                continue
            hs, tk = hdr(sid)
            self.do(self.mcp, "sse_initialized", "POST", "/mcp", hs,
                    b'{"jsonrpc":"2.0","method":"notifications/initialized"}', expect=(200, 202), mcp=True, **tk)
            self.revoked_tries(3)
            self.stream(hdr()[0], sid)
            self.revoked_tries(3)
            hs, tk = hdr(sid)
            self.do(self.mcp, "sse_tools_call", "POST", "/mcp", hs, mcp_call("search_memories", {"query": "y"}),
                    mcp=True, **tk)
            if self.cycles % 3 == 0:
                other_user, other_slot = self.rng.choice(self.others)
                other_token = other_slot.current()
                ho = {"X-Soak-Caller": other_user, "X-MCP-Token": other_token, "Accept": MCP_ACCEPT,
                      "Mcp-Session-Id": sid}
                self.do(self.mcp, "sse_foreign_session", "POST", "/mcp", ho,
                        mcp_call("search_memories", {"query": "z"}), expect=(404,), mcp=True,
                        slot=other_slot, token=other_token)
            hs, tk = hdr(sid)
            self.do(self.mcp, "sse_delete", "DELETE", "/mcp", hs, mcp=True, **tk)
            STOP.wait(0.3)


class InvalidWorker(Worker):
    """Unknown, malformed and missing credentials from INVALID_IPS addresses,
    alternating between the mem0 and the MCP listener."""

    def __init__(self, mg):
        super().__init__("inv", INVALID_RATE)
        self.clients = [(Client(mg.mem0_port, f"127.0.3.{i + 1}"), Client(mg.mcp_port, f"127.0.3.{i + 1}"))
                        for i in range(INVALID_IPS)]
        self.reuse = [bench.make_token() for _ in range(20)]  # some repeat (negative cache)

    def loop(self):
        nxt = time.time()
        n = 0
        while not STOP.is_set():
            nxt = self.pace(nxt)
            if STOP.is_set():
                break
            n += 1
            mem0, mcp = self.clients[n % len(self.clients)]
            r = self.rng.random()
            if r < 0.45:
                h, kind = {"X-MCP-Token": bench.make_token()}, "invalid_unknown"
            elif r < 0.65:
                h, kind = {"Authorization": f"Bearer {self.rng.choice(self.reuse)}"}, "invalid_unknown"
            elif r < 0.85:
                h, kind = {"X-MCP-Token": "mcp_" + secrets.token_urlsafe(12)}, "invalid_malformed"
            else:
                h, kind = {}, "invalid_missing"
            if self.rng.random() < 0.5:
                self.do(mem0, kind, "GET", "/memories", h, expect=(401, 429))
            else:
                h["Accept"] = MCP_ACCEPT
                self.do(mcp, kind, "POST", "/mcp", h, mcp_call("search_memories", {"query": "x"}),
                        expect=(401, 429), mcp=True)


class RateLimitedWorker(Worker):
    """A token with its own limit (--rate-limit 5/s) sent faster than that."""

    def __init__(self, mg, user, token):
        super().__init__("rl", RL_RATE)
        self.user, self.token = user, token
        self.client = Client(mg.mem0_port, "127.0.4.1")

    def loop(self):
        nxt = time.time()
        while not STOP.is_set():
            nxt = self.pace(nxt)
            if STOP.is_set():
                break
            self.do(self.client, "rate_limited_token", "GET", "/memories",
                    {"X-MCP-Token": self.token, "X-Soak-Caller": self.user}, expect=(200, 429),
                    check=results_only_user(self.user))


class Controller(threading.Thread):
    """Rotates one worker's token every REVOKE_EVERY seconds with the CLI:
    create a new token, hand it over, revoke the old one."""

    def __init__(self, mg, slots):
        super().__init__(name="controller", daemon=True)
        self.mg, self.slots = mg, slots
        self.cli_ok = Counter()
        self.cli_failed = []
        self.cli_secs = defaultdict(list)

    def cli(self, action, *args):
        t = time.time()
        r = subprocess.run([bench.BIN, "--config", str(self.mg.cfg), *args], capture_output=True, text=True,
                           env=bench.child_env({"MEMGATE_LOG": "warn"}), timeout=60)
        self.cli_secs[action].append(time.time() - t)
        if r.returncode != 0:
            self.cli_failed.append({"t": round(t - T0, 1), "action": action, "rc": r.returncode,
                                    "stderr": r.stderr.strip()[-400:]})
            STATS.add(f"cli_{action}", 0, False, None, f"memgate token {action} failed", r.stderr.strip()[-300:])
            return None
        self.cli_ok[action] += 1
        STATS.add(f"cli_{action}", 0, True, time.time() - t)
        return r.stdout

    def run(self):
        n = 0
        while not STOP.wait(REVOKE_EVERY):
            slot = self.slots[n % len(self.slots)]
            n += 1
            out = self.cli("create", "token", "create", "--user-id", slot.user, "--name", f"soak rotation {n}",
                           "--json")
            if out is None:
                continue
            new = json.loads(out)
            old_token, old_prefix = slot.token, slot.prefix
            rev = Revocation(n, slot.user, old_token, old_prefix)
            REVOCATIONS.append(rev)
            slot.rotate(new["token"], new["prefix"], rev)
            if self.cli("revoke", "token", "revoke", old_prefix, "--yes") is not None:
                rev.t1 = time.time()


# --------------------------------------------------------------------------
# Sampling memgate: VmRSS and open fds every 10 s, some metrics.


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


METRIC_KEYS = [
    ("memgate_audit_events_total", {"outcome": "written"}),
    ("memgate_audit_events_total", {"outcome": "spooled"}),
    ("memgate_audit_events_total", {"outcome": "dropped"}),
    ("memgate_audit_events_total", {"outcome": "replayed"}),
    ("memgate_audit_spool_depth", {}),
    ("memgate_store_errors_total", {}),
    ("memgate_store_queries_total", {"op": "token_by_hash"}),
]


def metric_view(snapshot):
    out = {}
    for name, labels in METRIC_KEYS:
        key = name + "".join(f"{{{k}={v}}}" for k, v in labels.items())
        out[key] = bench.metric_sum(snapshot, name, **labels)
    return out


class Sampler(threading.Thread):
    def __init__(self, mg):
        super().__init__(name="sampler", daemon=True)
        self.mg = mg
        self.samples = []
        self.metric_errors = 0

    def sample(self):
        rss, hwm = bench.proc_mem(self.mg.pid)
        s = {"t": round(time.time() - T0, 1), "rss_kib": rss, "hwm_kib": hwm, "fds": fd_count(self.mg.pid),
             "loadavg": bench.loadavg()}
        try:
            s["metrics"] = metric_view(self.mg.metrics())
        except OSError:
            self.metric_errors += 1
        with STATS.lock:
            s["requests"] = sum(sum(c.values()) for c in STATS.status.values())
        self.samples.append(s)
        return s

    def run(self):
        nxt = time.time()
        while not STOP.is_set():
            s = self.sample()
            if len(self.samples) % 6 == 1:
                log(f"soak: t={s['t']:.0f}s VmRSS {s['rss_kib'] / 1024:.1f} MiB fds {s['fds']} "
                    f"requests {s['requests']:,} unexpected {sum(STATS.bad.values())}")
            nxt += SAMPLE_EVERY
            STOP.wait(max(0.0, nxt - time.time()))


# --------------------------------------------------------------------------
# Audit completeness: every decision the client saw against the store's rows.


def analyse_audit(db_path, cli_actions):
    db = sqlite3.connect(WORK / "analysis.db")
    db.execute(f"ATTACH DATABASE '{db_path}' AS mg")
    db.execute("CREATE TABLE d (rid TEXT PRIMARY KEY, kind TEXT, status INTEGER, expected TEXT)")
    for f in sorted(WORK.glob("decisions-*.csv")):
        with open(f, newline="") as fh:
            db.executemany("INSERT INTO d VALUES (?, ?, ?, ?)", csv.reader(fh))
    db.execute(
        "CREATE TABLE a AS SELECT request_id AS rid, group_concat(event, '+') AS events, count(*) AS n FROM "
        "(SELECT request_id, event FROM mg.audit_events WHERE request_id LIKE ? ORDER BY request_id, event) "
        "GROUP BY request_id",
        (RID_PREFIX + "%",),
    )
    db.execute("CREATE INDEX a_rid ON a (rid)")
    q = lambda sql, *p: db.execute(sql, p).fetchall()
    total_rows = q("SELECT count(*) FROM mg.audit_events")[0][0]
    by_event = dict(q("SELECT event, count(*) FROM mg.audit_events GROUP BY event"))
    soak_rows = dict(q("SELECT event, count(*) FROM mg.audit_events WHERE request_id LIKE ? GROUP BY event",
                       RID_PREFIX + "%"))
    other_rows = q("SELECT event, coalesce(method, ''), coalesce(reason, ''), count(*) FROM mg.audit_events "
                   "WHERE request_id IS NULL OR request_id NOT LIKE ? GROUP BY 1, 2, 3", RID_PREFIX + "%")

    # Per outcome: decisions (answered requests) and the rows that match them.
    outcome = ("CASE WHEN d.status BETWEEN 200 AND 299 THEN 'allowed (2xx)' "
               "WHEN d.status = 401 THEN 'refused: authentication (401)' "
               "WHEN d.status = 403 THEN 'refused: permission/ownership (403)' "
               "WHEN d.status = 404 THEN 'refused: foreign session (404)' "
               "WHEN d.status = 429 THEN 'refused: rate limited (429)' ELSE 'other status ' || d.status END")
    per_outcome = []
    for row in q(f"SELECT {outcome} AS o, count(*), "
                 "sum(CASE WHEN a.rid IS NULL THEN 0 ELSE a.n END), "
                 "sum(CASE WHEN a.events = d.expected THEN 1 ELSE 0 END), "
                 "sum(CASE WHEN a.rid IS NULL THEN 1 ELSE 0 END), "
                 "sum(CASE WHEN a.rid IS NOT NULL AND a.events != d.expected THEN 1 ELSE 0 END), "
                 "sum(length(d.expected) - length(replace(d.expected, '+', '')) + 1) "
                 "FROM d LEFT JOIN a ON a.rid = d.rid WHERE d.status > 0 GROUP BY o ORDER BY o"):
        per_outcome.append(dict(zip(
            ["outcome", "decisions", "rows", "matched", "missing", "mismatched", "expected_rows"], row)))
    per_kind = []
    for row in q("SELECT d.kind, d.status, d.expected, count(*), "
                 "sum(CASE WHEN a.events = d.expected THEN 1 ELSE 0 END), "
                 "sum(CASE WHEN a.rid IS NULL THEN 1 ELSE 0 END) "
                 "FROM d LEFT JOIN a ON a.rid = d.rid WHERE d.status > 0 GROUP BY 1, 2, 3 ORDER BY 1, 2"):
        per_kind.append(dict(zip(["kind", "status", "expected", "decisions", "matched", "missing"], row)))
    mismatches = [dict(zip(["rid", "kind", "status", "expected", "got"], r)) for r in q(
        "SELECT d.rid, d.kind, d.status, d.expected, a.events FROM d LEFT JOIN a ON a.rid = d.rid "
        "WHERE d.status > 0 AND (a.rid IS NULL OR a.events != d.expected) LIMIT 30")]
    extra = q("SELECT count(*), coalesce(sum(n), 0) FROM a WHERE rid NOT IN (SELECT rid FROM d WHERE status > 0)")[0]
    unanswered = q("SELECT count(*), (SELECT count(*) FROM a WHERE rid IN (SELECT rid FROM d WHERE status = 0)) "
                   "FROM d WHERE status = 0")[0]
    decisions = q("SELECT count(*) FROM d WHERE status > 0")[0][0]
    admin_rows = dict(q("SELECT reason, count(*) FROM mg.audit_events WHERE event = 'token_admin' GROUP BY reason"))
    db.close()
    return {
        "total_rows": total_rows,
        "rows_by_event": by_event,
        "soak_rows_by_event": soak_rows,
        "other_rows": [list(r) for r in other_rows],
        "decisions": decisions,
        "per_outcome": per_outcome,
        "per_kind": per_kind,
        "mismatch_samples": mismatches,
        "extra_request_ids": extra[0],
        "extra_rows": extra[1],
        "unanswered_requests": unanswered[0],
        "unanswered_with_rows": unanswered[1],
        "token_admin_rows": admin_rows,
        "cli_actions": cli_actions,
    }


# --------------------------------------------------------------------------
# The run


class SoakMemgate(bench.Memgate):
    """bench.Memgate with a few more config keys (added to their sections)
    and info-level logs (the audit writer's flush line is at info)."""

    def __init__(self, name, offset, sections, **kw):
        super().__init__(name, offset, **kw)
        text = self.cfg.read_text()
        for section, keys in sections.items():
            add = "".join(f"{k} = {v}\n" for k, v in keys.items())
            if f"[{section}]\n" in text:
                text = text.replace(f"[{section}]\n", f"[{section}]\n{add}", 1)
            else:
                text += f"[{section}]\n{add}"
        self.cfg.write_text(text)

    def start(self):
        self.proc = bench.PROCS.start(
            f"memgate-{self.name}",
            [bench.BIN, "--config", str(self.cfg), "serve"],
            env={"MEMGATE_LOG": "info"},
            log_path=self.dir / "memgate.log",
            stop_signal=signal.SIGTERM,
        )
        bench.wait_http(f"http://127.0.0.1:{self.admin_port}/ready", f"memgate {self.name}", proc=self.proc)
        return self


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def run():
    global T0
    for port in (bench.UP_MEM0, bench.UP_MCP):
        bench.check_port_free(port)
    facts = bench.machine_facts()
    up = bench.PROCS.start("upstream", [sys.executable, __file__, "upstream", str(bench.UP_MEM0), str(bench.UP_MCP)],
                           log_path=WORK / "upstream.log")
    bench.wait_http(f"http://127.0.0.1:{bench.UP_MEM0}/__soak/stats", "fake upstream", proc=up)

    mg = SoakMemgate(
        "soak", 20,
        sections={
            "audit": {"success_sample_secs": 0},
            "mem0": {"owner_cache_capacity": OWNER_CACHE},
        },
        rate_limit={"per_token_rps": 1000, "per_token_burst": 2000, "failed_auth_per_ip_per_min": FAILED_AUTH_PER_MIN},
    )
    log(f"soak: config {mg.cfg}")
    mg.cli("migrate")
    cli_actions = Counter({"migrate": 1})
    users = [f"soak_user_{i}" for i in range(MEM0_WORKERS + SSE_WORKERS)]
    slots = []
    for u in users:
        t = json.loads(mg.cli("token", "create", "--user-id", u, "--name", "soak", "--json"))
        slots.append(Slot(u, t["token"], t["prefix"]))
        cli_actions["create"] += 1
    rl_user = "soak_user_rl"
    rl = json.loads(mg.cli("token", "create", "--user-id", rl_user, "--rate-limit", f"{RL_TOKEN_RPS}/s", "--json"))
    cli_actions["create"] += 1
    mg.start()
    log(f"soak: memgate pid {mg.pid} on mem0 :{mg.mem0_port} mcp :{mg.mcp_port} admin :{mg.admin_port}; "
        f"{MINUTES:g} min, warm-up {WARMUP:.0f} s")

    T0 = time.time()
    workers = []
    for i in range(MEM0_WORKERS):
        workers.append(Mem0Worker(i, mg, slots[i], users[:MEM0_WORKERS]))
    for i in range(SSE_WORKERS):
        s = slots[MEM0_WORKERS + i]
        others = [(users[j], slots[j]) for j in range(MEM0_WORKERS)]
        workers.append(SseWorker(i, mg, s, others))
    workers.append(InvalidWorker(mg))
    workers.append(RateLimitedWorker(mg, rl_user, rl["token"]))
    sampler = Sampler(mg)
    start = sampler.sample()
    controller = Controller(mg, slots)
    for w in workers:
        w.start()
    controller.start()
    sampler.start()

    deadline = T0 + DURATION
    try:
        while time.time() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.time())))
            if mg.proc.poll() is not None:
                log(f"soak: memgate exited with {mg.proc.returncode} during the run")
                break
            if not any(w.is_alive() for w in workers):
                break
    finally:
        STOP.set()
    ran = time.time() - T0
    for w in workers:
        w.join(timeout=30)
    controller.join(timeout=90)
    sampler.join(timeout=30)
    under_load = sampler.samples[-1] if sampler.samples else start
    alive = mg.proc.poll() is None
    time.sleep(3)  # client connections are closed; let memgate notice
    idle_end = sampler.sample() if alive else None
    log(f"soak: traffic stopped after {ran:.0f} s; stopping memgate (SIGTERM)")

    # SIGTERM: memgate stops accepting, finishes, flushes the audit trail, exits.
    t = time.time()
    rc = None
    if alive:
        os.kill(mg.pid, signal.SIGTERM)
        try:
            rc = mg.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            rc = "timeout"
    stop_secs = time.time() - t
    spool = sum(f.stat().st_size for f in (mg.dir / "spool").glob("**/*") if f.is_file()) if (mg.dir / "spool").exists() else 0
    log(f"soak: memgate exited {rc} in {stop_secs:.1f} s; spool {spool} bytes left")
    try:
        _, body = bench.http_get(f"http://127.0.0.1:{bench.UP_MEM0}/__soak/stats", timeout=5)
        upstream = json.loads(body)
    except OSError as e:
        upstream = {"error": str(e)}
    bench.PROCS.stop(up)

    cli_actions["create"] += controller.cli_ok["create"]
    cli_actions["revoke"] += controller.cli_ok["revoke"]
    audit = analyse_audit(mg.dir / "memgate.db", dict(cli_actions))
    log_text = (mg.dir / "memgate.log").read_text(errors="replace")
    log_lines = log_text.splitlines()
    warn_lines = [l for l in log_lines if " WARN " in l or " ERROR " in l or "panicked" in l]
    # By message (timestamp and field values dropped).
    warn_kinds = Counter()
    for l in warn_lines:
        msg = l.split("Z ", 1)[-1].strip()
        msg = msg.split(" route=")[0].split(" error=")[0]
        warn_kinds[msg[:160]] += 1

    kinds = {}
    order = list(KIND_LABELS)
    for kind in sorted(STATS.status, key=lambda k: (order.index(k) if k in order else len(order), k)):
        lat = list(STATS.lat.get(kind, []))
        kinds[kind] = {
            "statuses": {str(k): v for k, v in sorted(STATS.status[kind].items())},
            "total": sum(STATS.status[kind].values()),
            "expected": STATS.ok[kind],
            "unexpected": STATS.bad[kind],
            "connection_errors": STATS.conn_errors[kind],
            "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99),
        }
    revs = [r.summary() for r in REVOCATIONS]
    raw = {
        "facts": facts,
        "settings": {
            "minutes": MINUTES, "duration_s": DURATION, "ran_s": round(ran, 1), "warmup_s": WARMUP,
            "mem0_workers": MEM0_WORKERS, "mem0_rate_per_worker": MEM0_RATE, "mem0_mix": Mem0Worker.MIX,
            "sse_workers": SSE_WORKERS, "sse_events": SSE_EVENTS, "sse_interval_s": SSE_INTERVAL,
            "invalid_rate": INVALID_RATE, "invalid_ips": INVALID_IPS, "rl_token_rps": RL_TOKEN_RPS,
            "rl_rate": RL_RATE, "revoke_every_s": REVOKE_EVERY, "revoke_grace_s": REVOKE_GRACE,
            "revoked_tail_s": REVOKED_TAIL, "failed_auth_per_ip_per_min": FAILED_AUTH_PER_MIN,
            "owner_cache_capacity": OWNER_CACHE, "memgate_threads": bench.THREADS,
            "config": mg.cfg.read_text(),
        },
        "kinds": kinds,
        "unexpected_samples": STATS.samples,
        "failed_checks": dict(STATS.checks),
        "pacing_resets": {w.name: w.behind_resets for w in workers},
        "revocations": revs,
        "cli": {"ok": dict(controller.cli_ok), "failed": controller.cli_failed,
                "secs_p50": {k: pct(v, 50) for k, v in controller.cli_secs.items()},
                "secs_max": {k: max(v) for k, v in controller.cli_secs.items() if v}},
        "samples": sampler.samples,
        "start_sample": start,
        "under_load_end": under_load,
        "idle_end": idle_end,
        "metric_scrape_errors": sampler.metric_errors,
        "shutdown": {"rc": rc, "secs": round(stop_secs, 2), "spool_bytes_left": spool,
                     "flushed_line": next((l for l in log_lines if "audit writer flushed" in l), None),
                     "alive_at_end": alive},
        "memgate_log": {"lines": len(log_lines), "warn_or_error": len(warn_lines), "by_message": dict(warn_kinds),
                        "first": [l for l in warn_lines if "ignored the user filter" not in l][:15]},
        "upstream": upstream,
        "audit": audit,
    }
    raw["verdicts"] = verdicts(raw)
    bench.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = os.environ.get("SOAK_RESULTS_NAME", "soak")
    (bench.RESULTS_DIR / f"{stem}.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    (bench.RESULTS_DIR / f"{stem}.md").write_text(render(raw))
    if stem == "soak":
        bench.assemble()
    for v in raw["verdicts"]:
        log(f"soak: {v['what']}: {v['measured']} -> {'met' if v['ok'] else 'MISSED'}")


def rss_summary(raw):
    # Under traffic only (the sample taken after it stopped is reported on its own).
    samples = [s for s in raw["samples"] if s.get("rss_kib") and s["t"] <= raw["settings"]["ran_s"]]
    warm = raw["settings"]["warmup_s"]
    after_warm = next((s for s in samples if s["t"] >= warm), samples[-1])
    end = raw["under_load_end"]
    post = [s for s in samples if s["t"] >= warm]
    def slope_of(pts):
        """Least-squares slope of VmRSS over time, MiB per hour."""
        if len(pts) < 3:
            return None
        ts = [s["t"] for s in pts]
        ys = [s["rss_kib"] for s in pts]
        mt, my = statistics.fmean(ts), statistics.fmean(ys)
        den = sum((t - mt) ** 2 for t in ts)
        return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / den * 3600 / 1024 if den else None

    slope = slope_of(post)
    last_third = [s for s in samples if s["t"] >= raw["settings"]["ran_s"] * 2 / 3]
    return {
        "start": raw["start_sample"],
        "after_warmup": after_warm,
        "end": end,
        "idle_end": raw["idle_end"],
        "max_rss_kib": max(s["rss_kib"] for s in samples),
        "hwm_kib": max(s["hwm_kib"] for s in samples),
        "growth_kib": end["rss_kib"] - after_warm["rss_kib"],
        "growth_pct": 100.0 * (end["rss_kib"] - after_warm["rss_kib"]) / after_warm["rss_kib"],
        "slope_mib_per_hour": slope,
        "slope_last_third_mib_per_hour": slope_of(last_third),
        "last_third_from_s": round(raw["settings"]["ran_s"] * 2 / 3),
        "last_third_range_kib": [min(s["rss_kib"] for s in last_third), max(s["rss_kib"] for s in last_third)]
        if last_third else None,
        "post_warmup_min_kib": min(s["rss_kib"] for s in post) if post else None,
        "post_warmup_max_kib": max(s["rss_kib"] for s in post) if post else None,
    }


def verdicts(raw):
    total = sum(k["total"] for k in raw["kinds"].values())
    bad = sum(k["unexpected"] for k in raw["kinds"].values())
    revs = raw["revocations"]
    rviol = sum(r["violations"] for r in revs)
    unconfirmed = sum(1 for r in revs if r["first_refused_after_cli"] is None and r["tries"])
    up = raw["upstream"].get("violations", {})
    rs = rss_summary(raw)
    a = raw["audit"]
    missing = sum(o["missing"] for o in a["per_outcome"])
    mism = sum(o["mismatched"] for o in a["per_outcome"])
    admin_expected = a["cli_actions"].get("create", 0) + a["cli_actions"].get("revoke", 0)
    admin_rows = sum(a["token_admin_rows"].values())
    fd_warm = rs["after_warmup"]["fds"]
    fd_end = rs["end"]["fds"]
    grow_ok = rs["growth_kib"] <= max(5 * 1024, 0.10 * rs["after_warmup"]["rss_kib"])
    return [
        {"what": "unexpected responses (status, connection error, failed check)", "ok": bad == 0,
         "measured": f"{bad:,} of {total:,} ({100.0 * bad / max(total, 1):.4f} %)"},
        {"what": "revoked tokens refused within 1 s of `token revoke` returning", "ok": rviol == 0 and unconfirmed == 0,
         "measured": f"{len(revs)} revocations, {rviol} late acceptances, {unconfirmed} never seen refused"},
        {"what": "forwarded requests name only the caller's own user (checked at the upstream)",
         "ok": not up and "error" not in raw["upstream"],
         "measured": "0 violations" if not up else json.dumps(up)},
        {"what": "memory after warm-up bounded (end − after warm-up ≤ max(5 MiB, 10 %))", "ok": grow_ok,
         "measured": f"{rs['growth_kib'] / 1024:+.1f} MiB ({rs['growth_pct']:+.1f} %)"},
        {"what": "open fds under load: end vs after warm-up (± 10, same traffic)",
         "ok": fd_warm is not None and fd_end is not None and abs(fd_end - fd_warm) <= 10,
         "measured": f"{fd_warm} → {fd_end} (start {raw['start_sample']['fds']}, 3 s after traffic stopped "
                     f"{(raw['idle_end'] or {}).get('fds', '—')})"},
        {"what": "audit rows = decisions (every answered request's rows present, none extra)",
         "ok": missing == 0 and mism == 0 and a["extra_rows"] == 0,
         "measured": f"{a['decisions']:,} decisions, {missing} without rows, {mism} with other rows, "
                     f"{a['extra_rows']} rows without a decision"},
        {"what": "CLI token actions audited (token_admin rows)", "ok": admin_rows == admin_expected,
         "measured": f"{admin_rows} rows for {admin_expected} create/revoke commands"},
        {"what": "graceful stop: exit 0, audit flushed, spool empty",
         "ok": raw["shutdown"]["rc"] == 0 and raw["shutdown"]["spool_bytes_left"] == 0,
         "measured": f"exit {raw['shutdown']['rc']} in {raw['shutdown']['secs']} s, spool {raw['shutdown']['spool_bytes_left']} bytes"},
    ]


KIND_LABELS = {
    "get": "GET /memories (cached token; 1 answer in 5 carries a foreign item memgate must drop)",
    "post": "POST /memories, 1 KiB, user_id injected (rewrite)",
    "search": "POST /search (user_id or filters.user_id)",
    "get_own_id": "GET /memories/{id}, own memory (owner cache or lookup)",
    "get_foreign_id": "GET /memories/{id}, another user's memory → 403",
    "cross_user": "GET /memories?user_id=<another user> → 403",
    "mcp_call": "MCP POST /mcp tools/call (user_id injected)",
    "sse_initialize": "MCP initialize (session bound)",
    "sse_initialized": "MCP notifications/initialized",
    "sse_stream": "MCP GET /mcp event stream (held open)",
    "sse_tools_call": "MCP tools/call in the session",
    "sse_foreign_session": "MCP session presented by another user → 404",
    "sse_delete": "MCP DELETE session",
    "invalid_unknown": "unknown well-formed token → 401/429",
    "invalid_malformed": "malformed token → 401/429",
    "invalid_missing": "no credential → 401/429",
    "rate_limited_token": "token with --rate-limit 5/s at 12 req/s → 200/429",
    "revoked": "revoked token, tried for 3 s after the revoke",
    "cli_create": "`memgate token create` (rotation)",
    "cli_revoke": "`memgate token revoke`",
    "driver": "driver failure",
}


def render(raw):
    f, s = raw["facts"], raw["settings"]
    rs = rss_summary(raw)
    a = raw["audit"]
    mib = lambda kib: f"{kib / 1024:.1f} MiB"
    http_total = sum(v["total"] for k, v in raw["kinds"].items() if not k.startswith("cli_"))
    bad = sum(k["unexpected"] for k in raw["kinds"].values())
    ran = s["ran_s"]
    out = ["## Soak\n"]
    out.append(
        f"{f['cores']} cores ({f['cpu']}), {f['mem_gib']} GiB, Linux {f['kernel']}; {f['date']}; memgate "
        f"{f['commit']}; `bench/soak.sh` (`SOAK_MINUTES={s['minutes']:g}`), ran {ran / 60:.1f} min. "
        f"memgate release build, `[server] threads = {s['memgate_threads']}`, SQLite store in a temporary "
        f"directory, `audit.success_sample_secs = 0` (every authenticated request is an audit row), "
        f"`rate_limit.per_token_rps = 1000` (burst 2000) so that the per-token limit only bites the one token "
        f"created with `--rate-limit {s['rl_token_rps']}/s`, `failed_auth_per_ip_per_min = "
        f"{s['failed_auth_per_ip_per_min']}`, `mem0.owner_cache_capacity = {s['owner_cache_capacity']:,}` (full "
        f"within the warm-up, so that growth after it is not the owner cache filling up by design). Upstream: a "
        f"Python fake (`soak.py upstream`) answering mem0 shapes and MCP JSON-RPC, and `GET /mcp` streams of "
        f"{s['sse_events']} events {s['sse_interval_s']:g} s apart; it checks that every request memgate "
        f"forwards carries the caller's own user in `X-MCP-UserID`, `X-Memgate-Scope`, the query/body "
        f"`user_id`, `filters.user_id` and tool arguments, and that GET-by-id requests reach it only for the "
        f"caller's own memories.\n"
    )
    out.append(
        f"Traffic, all from client threads in one Python process at fixed rates (no catching up after a "
        f"stall): {s['mem0_workers']} mem0 workers at {s['mem0_rate_per_worker']:g} req/s each (one user and "
        f"token each; mix by weight: {', '.join(f'{k} {w}' for k, w in s['mem0_mix'])}; half the requests "
        f"send `X-MCP-Token`, half `Authorization: Bearer`), {s['sse_workers']} MCP session workers (initialize, "
        f"event stream, tools/call, every third cycle the session presented by another user, DELETE), unknown/"
        f"malformed/missing credentials at {s['invalid_rate']:g} req/s from {s['invalid_ips']} client addresses "
        f"(127.0.3.x), the rate-limited token at {s['rl_rate']:g} req/s. Every {s['revoke_every_s']:g} s one "
        f"worker's token is rotated with the CLI against the same SQLite file (`memgate token create`, the "
        f"worker switches, `memgate token revoke` of the old one) and for {s['revoked_tail_s']:g} s after the "
        f"revoke returns the worker keeps trying its old token from a second address; an acceptance sent more "
        f"than {s['revoke_grace_s']:g} s after `token revoke` returned is an error. Achieved: "
        f"{http_total:,} requests in {ran:,.0f} s ({http_total / max(ran, 1):,.0f} req/s).\n"
    )
    out.append("| request | requests | statuses | expected | unexpected | p50 | p99 |")
    out.append("|---|---:|---|---:|---:|---:|---:|")
    for kind, k in raw["kinds"].items():
        st = ", ".join(f"{c}: {n:,}" for c, n in k["statuses"].items()) if not kind.startswith("cli_") else "—"
        out.append(
            f"| {KIND_LABELS.get(kind, kind)} | {k['total']:,} | {st} | {k['expected']:,} | {k['unexpected']:,} | "
            f"{bench.fmt_us(k['p50_ms'] * 1000) if k['p50_ms'] is not None else '—'} | "
            f"{bench.fmt_us(k['p99_ms'] * 1000) if k['p99_ms'] is not None else '—'} |"
        )
    all_total = sum(k["total"] for k in raw["kinds"].values())
    out.append("")
    out.append(
        f"Error rate: {bad:,} unexpected of {all_total:,} ({100.0 * bad / max(all_total, 1):.4f} %)"
        + (": " + "; ".join(f"{w}: {n:,}" for w, n in raw["failed_checks"].items()) if raw["failed_checks"] else "")
        + ".\n"
    )
    if raw["unexpected_samples"]:
        out.append("First unexpected responses (time since start, request, answer):\n")
        for x in raw["unexpected_samples"][:8]:
            out.append(f"- t={x['t']} s {x['kind']}: {x['why']} — `{str(x['detail'])[:220]}`")
        out.append("")

    revs = raw["revocations"]
    if revs:
        # mem0 workers try their old token ~10 times a second, so their first
        # refusal measures propagation; MCP session workers try only between
        # the steps of a cycle, so theirs measures when they tried.
        dense_users = {f"soak_user_{i}" for i in range(s["mem0_workers"])}
        fr = [r["first_refused_after_cli"] for r in revs
              if r["first_refused_after_cli"] is not None and r["user"] in dense_users]
        fr_sparse = [r["first_refused_after_cli"] for r in revs
                     if r["first_refused_after_cli"] is not None and r["user"] not in dense_users]
        la = [r["last_accepted_after_cli"] for r in revs if r["last_accepted_after_cli"] is not None]
        cli = raw["cli"]
        out.append(
            f"Revocations: {len(revs)} rotations ({cli['ok'].get('create', 0)} `token create`, "
            f"{cli['ok'].get('revoke', 0)} `token revoke` succeeded, {len(cli['failed'])} CLI failures; CLI "
            f"median {cli['secs_p50'].get('revoke', 0) or 0:.2f} s per command, slowest "
            f"{max(cli['secs_max'].values() or [0]):.2f} s). Old tokens tried "
            f"{sum(r['tries'] for r in revs):,} times: {sum(r['accepted'] for r in revs):,} accepted, "
            f"{sum(r['refused'] for r in revs):,} refused. Last acceptance of a revoked token: "
            + (f"{max(la):+.2f} s" if la else "none")
            + " after `token revoke` returned (over all rotations; negative would be before it returned). "
            f"First refusal after `token revoke` returned, for the {len(fr)} rotations of mem0 workers (which "
            f"try the old token about 10 times a second): median "
            f"{statistics.median(fr) if fr else float('nan'):.2f} s, max {max(fr) if fr else float('nan'):.2f} s"
            + (f"; the MCP session workers ({len(fr_sparse)} rotations) try it only between the steps of their "
               f"cycle, so their first refusal (max {max(fr_sparse):.2f} s) says when they first tried, not how "
               f"long the revoke took to apply" if fr_sparse else "")
            + f". Acceptances more than 1 s after the revoke: {sum(r['violations'] for r in revs)}.\n"
        )

    up = raw["upstream"]
    out.append(
        f"Upstream checks: {sum(up.get('counts', {}).values()):,} requests reached the fake upstream "
        f"({', '.join(f'{k} {v:,}' for k, v in sorted(up.get('counts', {}).items()))}); violations: "
        + (", ".join(f"{k}: {v}" for k, v in up.get("violations", {}).items()) or "none")
        + f". Most streams open at once: {up.get('sse_max_open', '—')}.\n"
    )

    out.append("| memgate | VmRSS | open fds | at |")
    out.append("|---|---:|---:|---|")
    rows = [("start (tokens created, idle)", rs["start"]),
            (f"after warm-up ({s['warmup_s']:.0f} s)", rs["after_warmup"]),
            ("end, under load", rs["end"])]
    if rs["idle_end"]:
        rows.append(("end, 3 s after traffic stopped", rs["idle_end"]))
    for label, smp in rows:
        out.append(f"| {label} | {mib(smp['rss_kib'])} | {smp['fds']} | t = {smp['t']:.0f} s |")
    out.append(f"| max VmRSS sampled / VmHWM | {mib(rs['max_rss_kib'])} / {mib(rs['hwm_kib'])} | | |")
    out.append("")
    out.append(
        f"Growth from after warm-up to end: {rs['growth_kib'] / 1024:+.1f} MiB ({rs['growth_pct']:+.1f} %); "
        f"range after warm-up {mib(rs['post_warmup_min_kib'])} – {mib(rs['post_warmup_max_kib'])}; "
        + (f"least-squares slope over the post-warm-up samples {rs['slope_mib_per_hour']:+.1f} MiB/hour"
           if rs["slope_mib_per_hour"] is not None else "")
        + (f", over the last third of the run (t ≥ {rs['last_third_from_s']} s) "
           f"{rs['slope_last_third_mib_per_hour']:+.1f} MiB/hour within {mib(rs['last_third_range_kib'][0])} – "
           f"{mib(rs['last_third_range_kib'][1])}"
           if rs.get("slope_last_third_mib_per_hour") is not None else "")
        + ". "
        + f"Sampled every {SAMPLE_EVERY:.0f} s ({len(raw['samples'])} samples, VmRSS from `/proc/PID/status`, "
        f"fds from `/proc/PID/fd`).\n"
    )

    out.append(
        "Audit completeness. Every request carries a unique `X-Request-Id`, which memgate keeps as the "
        "audit row's `request_id`; after the run memgate is stopped with SIGTERM (it flushes its queue) "
        "and the client's decisions are joined with `audit_events` in the SQLite file. Expected rows per "
        "decision (docs/design.md §6, src/proxy/mod.rs): allowed → `auth_success`; 401 → `auth_failure`; 429 → "
        "`rate_limited`; 403 → `auth_success` + `permission_denied`/`ownership_denied` (the request "
        "authenticated, then was refused); foreign session 404 → `auth_success` + `session_denied`. Not "
        "decisions, so not audited: the admin listener (`/metrics`, `/ready`, scraped every 10 s), "
        "malformed-request refusals (400/404/405/413/415, none sent here). Each token is used by one "
        "client thread at a time, so concurrent requests on one token are not what this checks (up to "
        "753fb02 a sampling window of 0 still went through a cache that could merge concurrent successes "
        "of one token: a separate burst of 3,000 concurrent requests with one token gave 2,997 "
        "`auth_success` rows; 6f2577f made a window of 0 record every success).\n"
    )
    out.append("| outcome | decisions | expected rows | rows found | decisions with exactly the expected rows | without rows | with other rows |")
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    for o in a["per_outcome"]:
        out.append(f"| {o['outcome']} | {o['decisions']:,} | {o['expected_rows']:,} | {o['rows']:,} | "
                   f"{o['matched']:,} | {o['missing']:,} | {o['mismatched']:,} |")
    out.append("")
    out.append(
        f"Rows in the store: {a['total_rows']:,} ({', '.join(f'{k} {v:,}' for k, v in sorted(a['rows_by_event'].items()))}); "
        f"rows whose request id no answered decision has: {a['extra_rows']} "
        f"({a['unanswered_requests']} requests got no answer, {a['unanswered_with_rows']} of them have rows); "
        f"token_admin rows {sum(a['token_admin_rows'].values())} for {a['cli_actions'].get('create', 0)} creates "
        f"+ {a['cli_actions'].get('revoke', 0)} revokes by the CLI. memgate metrics at the end: "
        + ", ".join(f"{k} {v:,.0f}" for k, v in (raw["under_load_end"].get("metrics") or {}).items())
        + f". Shutdown: exit {raw['shutdown']['rc']} {raw['shutdown']['secs']} s after SIGTERM, "
        f"spool {raw['shutdown']['spool_bytes_left']} bytes left.\n"
    )
    ml = raw["memgate_log"]
    out.append(
        f"memgate log (`MEMGATE_LOG=info`): {ml['lines']:,} lines, {ml['warn_or_error']:,} at WARN or above"
        + (": " + "; ".join(f"{n:,} × `{m}`" for m, n in sorted(ml["by_message"].items(), key=lambda x: -x[1]))
           if ml["by_message"] else "")
        + ". The \"ignored the user filter\" warnings are the fake upstream's doing (one list/search answer in "
        "five carries another user's memory, which memgate drops and logs, as it should)."
        + (" \"failed to acquire reusable stream\" is pingora-core's connection pool (0.9) finding a pooled "
           "upstream connection still referenced by its idle watcher; it then opens a new connection, and no "
           "client request failed because of it."
           if any("failed to acquire reusable stream" in m for m in ml["by_message"]) else "")
        + "\n"
    )
    if a["mismatch_samples"]:
        out.append("Decisions whose rows differ (first ones):\n")
        for m in a["mismatch_samples"][:8]:
            out.append(f"- `{m['rid']}` {m['kind']} {m['status']}: expected {m['expected']}, found {m['got'] or 'nothing'}")
        out.append("")

    out.append("| check | measured | verdict |")
    out.append("|---|---|---|")
    for v in raw["verdicts"]:
        out.append(f"| {v['what']} | {v['measured']} | {bench.verdict(v['ok'])} |")
    out.append("")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "upstream":
        run_upstream(int(sys.argv[2]), int(sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "render":
        # Rewrites soak.md (and RESULTS.md) from soak.json, e.g. after a change
        # to the report's wording; the numbers are the recorded ones.
        raw = json.loads((bench.RESULTS_DIR / "soak.json").read_text())
        raw["verdicts"] = verdicts(raw)
        (bench.RESULTS_DIR / "soak.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
        (bench.RESULTS_DIR / "soak.md").write_text(render(raw))
        bench.assemble()
        return
    signal.signal(signal.SIGTERM, bench._on_signal)
    signal.signal(signal.SIGHUP, bench._on_signal)
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "pids").touch()
    if not (bench.BIN and os.access(bench.BIN, os.X_OK)):
        raise SystemExit("soak: MEMGATE_BIN must name the memgate binary (bench/soak.sh builds it)")
    started = time.time()
    try:
        run()
    finally:
        STOP.set()
        bench.PROCS.stop_all()
    log(f"soak: done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
