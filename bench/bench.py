#!/usr/bin/env python3
"""memgate load benchmark driver. Run it through bench/run.sh.

Modes:
  load     direct / nginx / memgate scenarios with wrk, interleaved rounds,
           medians, CPU per request and peak RSS; the invalid-token flood.
  rss      memgate's RSS with RSS_TOKENS tokens cached and RSS_SESSIONS MCP sessions.
  bench    criterion micro-benchmarks (cargo bench), medians.
  profile  perf record of memgate under load; top symbols to bench/results/.
  all      load, rss and bench.

Each mode writes its section to bench/results/<mode>.md (and raw data as JSON);
bench/RESULTS.md is reassembled from the sections present every time.
"""

import asyncio
import base64
import datetime
import hashlib
import json
import os
import platform
import re
import secrets
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RESULTS_DIR = BENCH / "results"
WORK = Path(os.environ.get("BENCH_WORK") or "/tmp/memgate-bench")
BIN = os.environ.get("MEMGATE_BIN", "")
# examples/bare_proxy.rs: pingora with no auth, the floor of memgate's stack.
BARE_BIN = os.environ.get("BARE_PROXY_BIN", "")
# examples/tokio_floor.rs: a hand-written HTTP/1 proxy on tokio, no auth: what
# a serving layer of memgate's own could reach (a diagnosis, not a product).
TOKIO_FLOOR_BIN = os.environ.get("TOKIO_FLOOR_BIN", "")
# Comma-separated scenario keys to run (default: all); for quick A/B runs.
ONLY = [k for k in os.environ.get("SCENARIOS", "").split(",") if k]
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/memgate/target")))

ROUNDS = int(os.environ.get("ROUNDS", "4"))
DURATION = int(os.environ.get("DURATION", "6"))
WARMUP = int(os.environ.get("WARMUP", "2"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "32"))
WRK_THREADS = int(os.environ.get("WRK_THREADS", "2"))
THREADS = int(os.environ.get("THREADS", "2"))
NGINX_WORKERS = int(os.environ.get("NGINX_WORKERS", str(THREADS)))
FLOOD_SECS = int(os.environ.get("FLOOD_SECS", "10"))
FLOOD_TOKENS = int(os.environ.get("FLOOD_TOKENS", "200"))
NEGATIVE_TTL = 5  # auth.negative_cache_ttl_secs default
RSS_TOKENS = int(os.environ.get("RSS_TOKENS", "100000"))
RSS_SESSIONS = int(os.environ.get("RSS_SESSIONS", "10000"))
PORT_BASE = int(os.environ.get("PORT_BASE", "18000"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

UP_MEM0 = PORT_BASE + 1
UP_MCP = PORT_BASE + 2
NGX_MEM0 = PORT_BASE + 11
NGX_MCP = PORT_BASE + 12
BARE_MEM0 = PORT_BASE + 13
TOKIO_MEM0 = PORT_BASE + 14

USER = "bench"
GET_PATH = f"/memories?user_id={USER}"
MCP_CALL = (
    '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":'
    '{"name":"search_memories","arguments":{"query":"x"}}}'
)
MCP_INIT = (
    '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26",'
    '"capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}'
)


def create_body_1k() -> str:
    """A POST /memories body of exactly 1024 bytes without user_id, so memgate
    injects it and re-serialises the body (same body as benches/hot_paths.rs)."""

    def make(pad):
        return json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "x" * pad},
                    {"role": "assistant", "content": "Noted."},
                ],
                "metadata": {"source": "bench", "category": "preferences"},
                "infer": False,
            },
            separators=(",", ":"),
        )

    body = make(1024 - len(make(0)))
    assert len(body) == 1024
    return body


def child_env(extra=None):
    """The environment for children: memgate reads every MEMGATE_* variable as a
    config override (and refuses unknown ones), so only MEMGATE_LOG is passed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMGATE_")}
    env.update(extra or {})
    return env


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Processes: every child is recorded in $BENCH_WORK/pids (run.sh kills them
# even if this driver dies) and stopped in reverse order on exit.


class Procs:
    def __init__(self):
        self.children = []

    def start(self, name, argv, env=None, log_path=None, stop_signal=signal.SIGTERM):
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        p = subprocess.Popen(
            argv,
            env=child_env(env),
            stdout=out,
            stderr=subprocess.STDOUT if log_path else subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            # Its own process group, so that stopping it also stops anything it
            # started (nginx workers, a BENCH_WRAP tool's child).
            start_new_session=True,
        )
        with open(WORK / "pids", "a") as f:
            f.write(f"{p.pid}\n")
        self.children.append((name, p, stop_signal))
        return p

    def stop(self, proc):
        for i, (name, p, sig) in enumerate(self.children):
            if p is proc:
                self._stop_one(p, sig)
                del self.children[i]
                return

    @staticmethod
    def _stop_one(p, sig):
        try:
            if p.poll() is None:
                os.killpg(p.pid, sig)
                p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
        try:
            os.killpg(p.pid, signal.SIGKILL)  # whatever is left in the group
        except ProcessLookupError:
            pass
        if p.poll() is None:
            p.wait(timeout=5)

    def stop_all(self):
        while self.children:
            name, p, sig = self.children.pop()
            self._stop_one(p, sig)


PROCS = Procs()


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def check_port_free(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As servers bind: connections of earlier runs in TIME-WAIT do not count.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        s.listen(1)
    except OSError:
        raise SystemExit(
            f"bench: port {port} is in use; set PORT_BASE to a free range (now {PORT_BASE})"
        )
    finally:
        s.close()


def http_get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def wait_http(url, what, timeout=30.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"bench: {what} exited with {proc.returncode} before it was ready")
        try:
            status, _ = http_get(url, timeout=1.0)
            if status == 200:
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"bench: {what} not ready at {url} after {timeout:.0f} s")


def proc_ticks(pids):
    """utime + stime (clock ticks) of the given processes, from /proc/PID/stat."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of the full line
    return total


def proc_mem(pid):
    """(VmRSS, VmHWM) in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0])
    return out.get("VmRSS", 0), out.get("VmHWM", 0)


def child_pids(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]
    except FileNotFoundError:
        return []


def compilers_running():
    """How many rustc/cargo processes run right now (a shared machine's noise)."""
    n = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            comm = (d / "comm").read_text().strip()
        except OSError:
            continue
        if comm in ("rustc", "cargo", "cc1", "cc1plus", "ld", "cmake"):
            n += 1
    return n


def loadavg():
    return Path("/proc/loadavg").read_text().split()[0]


# --------------------------------------------------------------------------
# nginx: the fast upstream (mem0 and MCP stand-ins) and the plain proxy.


def nginx_common(prefix: Path, workers: int) -> str:
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    return f"""
daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/json;
"""


def start_nginx_upstream():
    prefix = WORK / "nginx-upstream"
    prefix.mkdir(parents=True, exist_ok=True)
    conf = nginx_common(prefix, NGINX_WORKERS) + f"""
    # mem0 stand-in: list routes answer an empty result set, POST /memories one
    # created memory with a fresh id (as mem0 does).
    server {{
        listen 127.0.0.1:{UP_MEM0} reuseport;
        location = /memories {{
            if ($request_method = POST) {{
                return 200 '{{"results":[{{"id":"$request_id","memory":"x","event":"ADD"}}]}}';
            }}
            return 200 '{{"results":[]}}';
        }}
        location / {{ return 200 '{{"results":[]}}'; }}
    }}
    # MCP stand-in: a JSON answer; every answer names a session (memgate binds
    # it when the request was an initialize).
    server {{
        listen 127.0.0.1:{UP_MCP} reuseport;
        location / {{
            add_header Mcp-Session-Id $request_id always;
            return 200 '{{"jsonrpc":"2.0","id":1,"result":{{"content":[{{"type":"text","text":"[]"}}],"isError":false}}}}';
        }}
    }}
}}
"""
    (prefix / "nginx.conf").write_text(conf)
    p = PROCS.start(
        "nginx-upstream",
        ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(prefix / "nginx.conf")],
        log_path=prefix / "stderr.log",
        stop_signal=signal.SIGTERM,
    )
    wait_http(f"http://127.0.0.1:{UP_MEM0}/memories", "upstream nginx", proc=p)
    return p


# The floors: proxies with no auth that forward to the mem0 stand-in with
# memgate's thread count and nothing else. target -> (env var, binary, port, name).
FLOORS = {
    "pingora": ("BARE_PROXY_BIN", BARE_BIN, BARE_MEM0, "bare pingora proxy"),
    "tokio": ("TOKIO_FLOOR_BIN", TOKIO_FLOOR_BIN, TOKIO_MEM0, "hand-written tokio proxy"),
}


def start_floor(target):
    var, binary, port, name = FLOORS[target]
    if not (binary and os.access(binary, os.X_OK)):
        raise SystemExit(f"bench: {var} is not set to its example binary (bench/run.sh builds it)")
    prefix = WORK / f"floor-{target}"
    prefix.mkdir(parents=True, exist_ok=True)
    p = PROCS.start(
        f"floor-{target}",
        [binary, f"127.0.0.1:{port}", f"127.0.0.1:{UP_MEM0}", str(THREADS)],
        log_path=prefix / "stderr.log",
        stop_signal=signal.SIGINT,
    )
    wait_http(f"http://127.0.0.1:{port}/memories", name, proc=p)
    return p


def start_nginx_proxy():
    prefix = WORK / "nginx-proxy"
    prefix.mkdir(parents=True, exist_ok=True)
    conf = nginx_common(prefix, NGINX_WORKERS) + f"""
    upstream mem0 {{ server 127.0.0.1:{UP_MEM0}; keepalive 64; }}
    upstream mcp  {{ server 127.0.0.1:{UP_MCP}; keepalive 64; }}
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    server {{ listen 127.0.0.1:{NGX_MEM0} reuseport; location / {{ proxy_pass http://mem0; }} }}
    server {{ listen 127.0.0.1:{NGX_MCP} reuseport; location / {{ proxy_pass http://mcp; }} }}
}}
"""
    (prefix / "nginx.conf").write_text(conf)
    p = PROCS.start(
        "nginx-proxy",
        ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(prefix / "nginx.conf")],
        log_path=prefix / "stderr.log",
        stop_signal=signal.SIGTERM,
    )
    wait_http(f"http://127.0.0.1:{NGX_MEM0}/memories", "nginx proxy", proc=p)
    return p


# --------------------------------------------------------------------------
# memgate instances: one per scenario, each with its own database and ports.


class Memgate:
    def __init__(self, name, offset, auth=None, rate_limit=None, extra=""):
        self.name = name
        self.dir = WORK / f"memgate-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mem0_port = PORT_BASE + offset
        self.mcp_port = PORT_BASE + offset + 1
        self.admin_port = PORT_BASE + offset + 2
        for port in (self.mem0_port, self.mcp_port, self.admin_port):
            check_port_free(port)
        self.auth = {"cache_ttl_secs": 30, **(auth or {})}
        self.rate_limit = rate_limit or {}
        self.cfg = self.dir / "memgate.toml"
        lines = [
            "[database]",
            f'url = "sqlite://{self.dir}/memgate.db?mode=rwc"',
            "[mcp]",
            f'listen = "127.0.0.1:{self.mcp_port}"',
            f'upstream = "http://127.0.0.1:{UP_MCP}"',
            "[mem0]",
            f'listen = "127.0.0.1:{self.mem0_port}"',
            f'upstream = "http://127.0.0.1:{UP_MEM0}"',
            "[admin]",
            f'listen = "127.0.0.1:{self.admin_port}"',
            "[auth]",
            *[f"{k} = {v}" for k, v in self.auth.items()],
            "[rate_limit]",
            *[f"{k} = {v}" for k, v in self.rate_limit.items()],
            "[audit]",
            f'spool_dir = "{self.dir}/spool"',
            "[server]",
            f"threads = {THREADS}",
            "grace_period_secs = 1",
            # More [server] settings for an A/B run, e.g. "work_stealing = false".
            *[line for line in os.environ.get("BENCH_SERVER_EXTRA", "").split(";") if line],
            extra,
        ]
        self.cfg.write_text("\n".join(lines) + "\n")
        # Tokens are created before `serve` starts; only migrate creates a store.
        self.cli("migrate")
        self.proc = None
        self.token = None

    def cli(self, *args):
        r = subprocess.run(
            [BIN, "--config", str(self.cfg), *args],
            capture_output=True,
            text=True,
            env=child_env({"MEMGATE_LOG": "warn"}),
        )
        if r.returncode != 0:
            raise SystemExit(f"bench: memgate {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout

    def create_token(self, user=USER):
        self.token = json.loads(self.cli("token", "create", "--user-id", user, "--json"))["token"]
        return self.token

    def start(self):
        # BENCH_WRAP (e.g. "heaptrack -o /tmp/mg") runs memgate under a tool;
        # then /proc readings are the wrapper's, not memgate's.
        wrap = os.environ.get("BENCH_WRAP", "").split()
        self.proc = PROCS.start(
            f"memgate-{self.name}",
            [*wrap, BIN, "--config", str(self.cfg), "serve"],
            env={"MEMGATE_LOG": "warn"},
            log_path=self.dir / "memgate.log",
            stop_signal=signal.SIGINT,
        )
        wait_http(f"http://127.0.0.1:{self.admin_port}/ready", f"memgate {self.name}", proc=self.proc)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def metrics(self):
        _, body = http_get(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5)
        out = {}
        for line in body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
            if m:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
        return out


def metric_sum(snapshot, name, **labels):
    total = 0.0
    for key, value in snapshot.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def metric_delta(before, after, name, **labels):
    return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)


# --------------------------------------------------------------------------
# wrk


LUA_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f,"status_errors":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"bytes":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.status, e.connect, e.read,
    e.write, e.timeout, summary.bytes))
end
"""


def lua_string(s):
    level = "=" * 3
    assert f"]{level}]" not in s
    return f"[{level}[{s}]{level}]"


def write_lua(name, method, headers, body=None):
    lines = [f'wrk.method = "{method}"']
    for k, v in headers.items():
        lines.append(f'wrk.headers["{k}"] = {lua_string(v)}')
    if body is not None:
        lines.append(f"wrk.body = {lua_string(body)}")
    path = WORK / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n" + LUA_DONE)
    return path


def write_rotating_lua(name, tokens):
    """GET /memories, each request with the next token of the list (wrk threads
    start at different places), so requests in flight rarely share a token."""
    toks = ",\n".join(f'  "{t}"' for t in tokens)
    script = f"""
local tokens = {{
{toks}
}}
local started = 0
function setup(thread)
  thread:set("tid", started)
  started = started + 1
end
local n = 0
function init(args)
  n = (tid or 0) * math.floor(#tokens / {WRK_THREADS})
end
function request()
  n = n + 1
  local t = tokens[(n % #tokens) + 1]
  return wrk.format("GET", "{GET_PATH}", {{ ["X-MCP-Token"] = t }}, nil)
end
""" + LUA_DONE
    path = WORK / f"{name}.lua"
    path.write_text(script)
    return path


def run_wrk(url, lua, seconds, connections=None, threads=None):
    connections = connections or CONNECTIONS
    threads = threads or WRK_THREADS
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(lua),
        url,
    ]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    for line in r.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON ") :])
    raise SystemExit(f"bench: wrk printed no result for {url}:\n{r.stdout}\n{r.stderr}")


# --------------------------------------------------------------------------
# Common facts for every report


def git_desc():
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head + (" (with uncommitted changes in src/)" if dirty else "")
    except FileNotFoundError:
        return "unknown"


def machine_facts():
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_desc(),
    }


def fmt_us(us):
    if us is None:
        return "—"
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    return f"{us:.0f} µs"


def fmt_ratio(x):
    return "—" if x is None else f"{x:.2f}×"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------
# An OAuth issuer of the bench's own, for the JWT scenario: an RSA key made
# with openssl, its key set served on loopback, and one access token signed
# with it (RS256: openssl signs PKCS#1 v1.5 directly).


class JwtIssuer:
    def __init__(self, port):
        import http.server
        import threading

        self.port = port
        self.issuer = f"http://127.0.0.1:{port}"
        self.dir = WORK / "jwt-issuer"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = self.dir / "key.pem"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(self.key), "2048"], check=True, capture_output=True
        )
        modulus = subprocess.run(
            ["openssl", "rsa", "-in", str(self.key), "-noout", "-modulus"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip().split("=", 1)[1]
        jwks = json.dumps(
            {
                "keys": [
                    {
                        "kty": "RSA",
                        "kid": "bench",
                        "alg": "RS256",
                        "use": "sig",
                        "n": b64url(bytes.fromhex(modulus)),
                        "e": b64url((65537).to_bytes(3, "big")),
                    }
                ]
            }
        ).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/jwks" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(jwks)))
                self.end_headers()
                self.wfile.write(jwks)

            def log_message(self, *_):
                pass

        check_port_free(port)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def config(self, audience):
        return "\n".join(
            [
                "[oauth]",
                "enabled = true",
                f'issuer = "{self.issuer}"',
                f'jwks_uri = "{self.issuer}/jwks"',
                f'audience = ["{audience}"]',
            ]
        )

    def token(self, audience, user=USER):
        """An access token for `audience` valid for a day, as an
        authorization server issues one (RFC 9068 `at+jwt`)."""
        now = int(time.time())
        header = {"alg": "RS256", "typ": "at+jwt", "kid": "bench"}
        claims = {
            "iss": self.issuer,
            "aud": audience,
            "sub": user,
            "scope": "mcp:read mcp:write",
            "iat": now,
            "exp": now + 86400,
            "jti": secrets.token_urlsafe(12),
        }
        signing_input = ".".join(
            b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        return f"{signing_input}.{b64url(signature)}"

    def stop(self):
        self.server.shutdown()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --------------------------------------------------------------------------
# Mode: load


SCENARIOS = [
    # key, label, kind (request type), target
    ("direct-get", "direct: GET /memories", "get", "direct"),
    ("direct-post", "direct: POST /memories (1 KiB)", "post", "direct"),
    ("direct-mcp", "direct: POST /mcp tools/call", "mcp", "direct"),
    ("nginx-get", "nginx: GET /memories", "get", "nginx"),
    ("nginx-post", "nginx: POST /memories (1 KiB)", "post", "nginx"),
    ("nginx-mcp", "nginx: POST /mcp tools/call", "mcp", "nginx"),
    ("pingora-get", "pingora, no auth (the stack's floor): GET /memories", "get", "pingora"),
    ("pingora-post", "pingora, no auth (the stack's floor): POST /memories (1 KiB)", "post", "pingora"),
    ("tokio-get", "hand-written HTTP/1 on tokio, no auth: GET /memories", "get", "tokio"),
    ("tokio-post", "hand-written HTTP/1 on tokio, no auth: POST /memories (1 KiB)", "post", "tokio"),
    ("memgate-get", "memgate, cached token: GET /memories", "get", "memgate"),
    ("memgate-jwt", "memgate, cached OAuth JWT (RS256): GET /memories", "get", "memgate"),
    ("memgate-post", "memgate, rewrite: POST /memories (1 KiB)", "post", "memgate"),
    ("memgate-post-noguard", "memgate, rewrite, secret guard off: POST /memories (1 KiB)", "post", "memgate"),
    ("memgate-nocache", "memgate, cache off: GET /memories (32 tokens)", "get", "memgate"),
    ("memgate-mcp", "memgate, MCP: POST /mcp tools/call", "mcp", "memgate"),
]


def round_order(rnd):
    """The scenarios of round `rnd`: each request type's scenarios back to
    back, nginx right next to memgate, so that a ratio compares runs seconds
    apart rather than a minute apart (a shared VM drifts within a minute).
    The request types rotate from round to round, and every other round runs
    each group backwards, so neither side of a pair always goes first."""
    kinds = list(dict.fromkeys(s[2] for s in SCENARIOS))
    kinds = kinds[rnd % len(kinds) :] + kinds[: rnd % len(kinds)]
    # Within a type: the references and floors, then nginx, then memgate.
    rank = {"direct": 0, "pingora": 1, "tokio": 2, "nginx": 3, "memgate": 4}
    order = []
    for kind in kinds:
        group = sorted((s for s in SCENARIOS if s[2] == kind), key=lambda s: rank[s[3]])
        if rnd % 2:
            group.reverse()
        order += [s[0] for s in group]
    return order


def mode_load():
    global SCENARIOS
    if ONLY:
        SCENARIOS = [s for s in SCENARIOS if s[0] in ONLY or s[3] == "nginx"]
    for port in (UP_MEM0, UP_MCP, NGX_MEM0, NGX_MCP, BARE_MEM0, TOKIO_MEM0):
        check_port_free(port)
    facts = machine_facts()
    log(f"load: {facts['cores']} cores, {ROUNDS} rounds × {len(SCENARIOS)} scenarios × {DURATION} s")
    upstream = start_nginx_upstream()
    proxy = start_nginx_proxy()
    floors = {t: start_floor(t) for t in FLOORS if any(s[3] == t for s in SCENARIOS)}
    no_limits = {"per_token_rps": 0, "failed_auth_per_ip_per_min": 1000000}
    mg = {
        "memgate-get": Memgate("get", 20, rate_limit=no_limits),
        "memgate-post": Memgate("post", 30, rate_limit=no_limits),
        # The same with `[secret_guard] mode = "off"`: what scanning writes costs.
        "memgate-post-noguard": Memgate(
            "post-noguard", 80, rate_limit=no_limits, extra='[secret_guard]\nmode = "off"'
        ),
        "memgate-nocache": Memgate("nocache", 40, auth={"cache_ttl_secs": 0}, rate_limit=no_limits),
        "memgate-mcp": Memgate("mcp", 50, rate_limit=no_limits),
    }
    issuer = None
    if "memgate-jwt" in (s[0] for s in SCENARIOS):
        # The same memgate as memgate-get but for `[oauth]`, whose key set
        # it fetches from this bench's own issuer.
        issuer = JwtIssuer(PORT_BASE + 95)
        audience = f"http://127.0.0.1:{PORT_BASE + 90}"
        mg["memgate-jwt"] = Memgate("jwt", 90, rate_limit=no_limits, extra=issuer.config(audience))
    flood = {
        "default": Memgate("flood-default", 60),
        "raised": Memgate("flood-raised", 70, rate_limit={"failed_auth_per_ip_per_min": 1000000}),
    }
    for m in list(mg.values()) + list(flood.values()):
        m.create_token()
        m.start()
    # Cache off: one token per connection, so that every request is its own
    # store lookup (requests in flight with one token share a single lookup).
    nocache_tokens = [mg["memgate-nocache"].create_token() for _ in range(CONNECTIONS)]

    body = create_body_1k()

    def lua_for(key, token):
        kind = next(s[2] for s in SCENARIOS if s[0] == key)
        h = {"X-MCP-Token": token}
        if kind == "get":
            return write_lua(key, "GET", h)
        if kind == "post":
            return write_lua(key, "POST", {**h, "Content-Type": "application/json"}, body)
        return write_lua(
            key,
            "POST",
            {**h, "Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
            MCP_CALL,
        )

    # The same token header everywhere, so every request has the same size.
    plan = {}
    for key, label, kind, target in SCENARIOS:
        if key == "memgate-nocache":
            m = mg[key]
            port = m.mem0_port
            lua = write_rotating_lua(key, nocache_tokens)
            pids = [m.pid]
        elif key == "memgate-jwt":
            m = mg[key]
            port = m.mem0_port
            jwt = issuer.token(f"http://127.0.0.1:{port}")
            lua = write_lua(key, "GET", {"Authorization": f"Bearer {jwt}"})
            pids = [m.pid]
        elif target == "memgate":
            m = mg[key]
            port = m.mcp_port if kind == "mcp" else m.mem0_port
            lua = lua_for(key, m.token)
            pids = [m.pid]
        elif target in FLOORS:
            port = FLOORS[target][2]
            lua = lua_for(key, mg["memgate-get"].token)
            pids = [floors[target].pid]
        elif target == "nginx":
            port = NGX_MCP if kind == "mcp" else NGX_MEM0
            lua = lua_for(key, mg["memgate-get"].token)
            pids = [proxy.pid] + child_pids(proxy.pid)
        else:
            port = UP_MCP if kind == "mcp" else UP_MEM0
            lua = lua_for(key, mg["memgate-get"].token)
            pids = []
        path = "/mcp" if kind == "mcp" else (GET_PATH if kind == "get" else "/memories")
        plan[key] = {"url": f"http://127.0.0.1:{port}{path}", "lua": lua, "pids": pids}

    # Functional check before measuring: every scenario must answer 200.
    for key, p in plan.items():
        r = run_wrk(p["url"], p["lua"], 1, connections=2, threads=1)
        if r["requests"] == 0 or r["status_errors"] or r["connect_errors"]:
            raise SystemExit(f"bench: scenario {key} does not answer 2xx: {r}")

    log(f"warm-up: {WARMUP} s per scenario")
    for key, p in plan.items():
        run_wrk(p["url"], p["lua"], WARMUP)

    runs = []
    for rnd in range(ROUNDS):
        for key in round_order(rnd):
            p = plan[key]
            m = mg.get(key)
            before_m = m.metrics() if m else None
            busy = compilers_running()
            load1 = loadavg()
            t0 = proc_ticks(p["pids"])
            r = run_wrk(p["url"], p["lua"], DURATION)
            t1 = proc_ticks(p["pids"])
            after_m = m.metrics() if m else None
            r.update(
                scenario=key,
                round=rnd + 1,
                rps=r["requests"] / (r["duration_us"] / 1e6),
                cpu_us_per_req=((t1 - t0) / CLK_TCK * 1e6 / r["requests"]) if p["pids"] and r["requests"] else None,
                compilers=busy,
                loadavg=load1,
            )
            if m:
                r["store_queries"] = metric_delta(before_m, after_m, "memgate_store_queries_total", op="token_by_hash")
            runs.append(r)
            log(
                f"round {rnd + 1} {key:16s} {r['rps']:9.0f} req/s  p50 {fmt_us(r['p50_us']):>9s}  "
                f"p99 {fmt_us(r['p99_us']):>9s}  non-2xx {r['status_errors']}"
            )

    peak = {}
    for key, m in mg.items():
        peak[key] = proc_mem(m.pid)
    nginx_peak = max(
        (proc_mem(pid)[1] for pid in child_pids(proxy.pid)), default=0
    )

    # The invalid-token flood, once per rate-limit setting, fresh tokens each.
    flood_results = {}
    for setting, m in ({} if ONLY else flood).items():
        tokens = ["mcp_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=") for _ in range(FLOOD_TOKENS)]
        lua = write_rotating_lua(f"flood-{setting}", tokens)
        before = m.metrics()
        r = run_wrk(f"http://127.0.0.1:{m.mem0_port}{GET_PATH}", lua, FLOOD_SECS)
        after = m.metrics()
        secs = r["duration_us"] / 1e6
        windows = int(secs // NEGATIVE_TTL) + 1
        flood_results[setting] = {
            **r,
            "seconds": secs,
            "rps": r["requests"] / secs,
            "distinct_tokens": FLOOD_TOKENS,
            "store_queries": metric_delta(before, after, "memgate_store_queries_total", op="token_by_hash"),
            "status_401": metric_delta(before, after, "memgate_requests_total", listener="mem0", status="401"),
            "status_429": metric_delta(before, after, "memgate_requests_total", listener="mem0", status="429"),
            "negative_hits": metric_delta(before, after, "memgate_auth_cache_total", outcome="negative_hit"),
            "cache_misses": metric_delta(before, after, "memgate_auth_cache_total", outcome="miss"),
            "ip_cutoffs": metric_delta(before, after, "memgate_rate_limited_total", kind="failed_auth_ip"),
            "ttl_windows": windows,
            "bound": FLOOD_TOKENS * windows,
            "failed_auth_per_ip_per_min": m.rate_limit.get("failed_auth_per_ip_per_min", 10),
        }
        f = flood_results[setting]
        log(
            f"flood ({setting} per-IP limit): {f['requests']} requests, {f['store_queries']:.0f} store queries "
            f"for {FLOOD_TOKENS} tokens over {secs:.1f} s (bound {f['bound']})"
        )

    raw = {"facts": facts, "settings": settings_dict(), "runs": runs, "peak_rss_kib": peak,
           "nginx_worker_peak_rss_kib": nginx_peak, "flood": flood_results}
    if ONLY:
        # A partial run (SCENARIOS=...) is for comparing builds: print, do not
        # overwrite the report.
        for key, row in summarise(runs).items():
            log(
                f"{key:16s} {row['rps']:9.0f} req/s  vs nginx {fmt_ratio(row.get('vs_nginx'))}  "
                f"p99 {fmt_us(row['p99_us'])}  CPU/request {fmt_us(row['cpu_us_per_req'])}"
            )
        return
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "load.json").write_text(json.dumps(raw, indent=1) + "\n")
    (RESULTS_DIR / "load.md").write_text(render_load(raw))
    assemble()


def settings_dict():
    return {
        "rounds": ROUNDS,
        "duration_s": DURATION,
        "warmup_s": WARMUP,
        "connections": CONNECTIONS,
        "wrk_threads": WRK_THREADS,
        "memgate_threads": THREADS,
        "nginx_workers": NGINX_WORKERS,
        "flood_secs": FLOOD_SECS,
        "flood_tokens": FLOOD_TOKENS,
    }


def summarise(runs):
    """Per scenario medians, and per-round ratios (memgate vs the nginx and
    direct runs of the same round and request type), medians of those."""
    by = {}
    for r in runs:
        by.setdefault(r["scenario"], []).append(r)
    kind_of = {s[0]: s[2] for s in SCENARIOS}
    out = {}
    for key, label, kind, target in SCENARIOS:
        rs = by.get(key, [])
        if not rs:
            continue
        row = {
            "label": label,
            "kind": kind,
            "target": target,
            "rps": med([r["rps"] for r in rs]),
            "p50_us": med([r["p50_us"] for r in rs]),
            "p99_us": med([r["p99_us"] for r in rs]),
            "cpu_us_per_req": med([r["cpu_us_per_req"] for r in rs]),
            "non2xx": sum(r["status_errors"] for r in rs),
            "socket_errors": sum(r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"] for r in rs),
            "requests": sum(r["requests"] for r in rs),
            "store_queries_per_req": (
                sum(r.get("store_queries", 0) for r in rs) / sum(r["requests"] for r in rs)
                if target == "memgate" else None
            ),
            "rps_rounds": [round(r["rps"]) for r in sorted(rs, key=lambda r: r["round"])],
        }
        if target in ("memgate", "nginx", *FLOORS):
            for ref in ("nginx", "direct"):
                if ref == target:
                    continue
                ratios, dp99 = [], []
                for r in rs:
                    refs = [x for x in by.get(f"{ref}-{kind}", []) if x["round"] == r["round"]]
                    if refs:
                        ratios.append(r["rps"] / refs[0]["rps"])
                        dp99.append(r["p99_us"] - refs[0]["p99_us"])
                row[f"vs_{ref}"] = med(ratios)
                row[f"p99_minus_{ref}_us"] = med(dp99)
        out[key] = row
    # Cache off against cache on, round by round.
    if "memgate-nocache" in by and "memgate-get" in by:
        ratios = []
        for r in by["memgate-nocache"]:
            refs = [x for x in by["memgate-get"] if x["round"] == r["round"]]
            if refs:
                ratios.append(r["rps"] / refs[0]["rps"])
        out["memgate-nocache"]["vs_cached"] = med(ratios)
    return out


def verdict(ok):
    return "**met**" if ok else "**missed**"


def render_load(raw):
    f = raw["facts"]
    s = raw["settings"]
    rows = summarise(raw["runs"])
    busy_runs = sum(1 for r in raw["runs"] if r["compilers"])
    out = []
    out.append("## Load: memgate against nginx and the bare upstream\n")
    out.append(
        f"{f['cores']} cores ({f['cpu']}), {f['mem_gib']} GiB, Linux {f['kernel']}; {f['date']}; "
        f"memgate {f['commit']}.\n"
    )
    out.append(
        f"wrk `-t{s['wrk_threads']} -c{s['connections']}`, {s['duration_s']} s per scenario per round after a "
        f"{s['warmup_s']} s warm-up, {s['rounds']} rounds; in each round a request type's scenarios run back to "
        f"back with nginx next to memgate, the types rotate from round to round and every other round "
        f"runs each group backwards; medians over rounds. Ratios are computed round by round against the nginx and direct "
        f"runs of the same round and the same request, then the median is taken. memgate: release build, "
        f"`[server] threads = {s['memgate_threads']}` (per listener), SQLite store, one instance per scenario; "
        f"nginx proxy: `worker_processes {s['nginx_workers']}`, `proxy_pass` with `keepalive 64` to the upstream, "
        f"no auth. pingora, no auth: `examples/bare_proxy.rs`, a pingora `ProxyHttp` that only picks the upstream "
        f"(same thread count, pingora's own keep-alive pool), i.e. the floor of memgate's stack. "
        f"Hand-written HTTP/1 on tokio, no auth: `examples/tokio_floor.rs`, one single-threaded runtime per "
        f"thread with its own `SO_REUSEPORT` listener and idle upstream connections, `httparse`, "
        f"`Content-Length` bodies only: what a serving layer of memgate's own could reach, not a product. "
        f"Upstream: nginx (`worker_processes {s['nginx_workers']}`) answering `return 200` JSON. "
        f"Load generator, proxy and upstream share the same {f['cores']} cores, so absolute numbers are "
        f"small and noisy; the ratios are the result. Every scenario sends the same `X-MCP-Token` header "
        f"(direct and nginx ignore it); `[rate_limit] per_token_rps = 0` and "
        f"`failed_auth_per_ip_per_min = 1000000` for the throughput scenarios. Cache off "
        f"(`auth.cache_ttl_secs = 0`) rotates over {s['connections']} tokens, one per connection, because "
        f"concurrent requests with one token share a single store lookup (single flight) and would hide "
        f"the per-request cost.\n"
    )
    if busy_runs:
        out.append(
            f"The machine was shared: compiler processes (rustc/cargo/cc/ld) were running at the start of "
            f"{busy_runs} of {len(raw['runs'])} measured runs (another session building and testing).\n"
        )
    else:
        out.append("No compiler process was seen running during the measured runs.\n")
    out.append(
        "| scenario | req/s | p50 | p99 | vs nginx | vs direct | p99 − nginx p99 | CPU / request | peak RSS (VmHWM) | store queries / request | non-2xx |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, row in rows.items():
        peak = raw["peak_rss_kib"].get(key)
        if row["target"] == "nginx":
            rss = f"{raw['nginx_worker_peak_rss_kib'] / 1024:.1f} MiB (largest worker)"
        elif peak:
            rss = f"{peak[1] / 1024:.1f} MiB"
        else:
            rss = "—"
        out.append(
            "| {label} | {rps:,.0f} | {p50} | {p99} | {vn} | {vd} | {dp} | {cpu} | {rss} | {sq} | {bad} |".format(
                label=row["label"],
                rps=row["rps"],
                p50=fmt_us(row["p50_us"]),
                p99=fmt_us(row["p99_us"]),
                vn=fmt_ratio(row.get("vs_nginx")),
                vd=fmt_ratio(row.get("vs_direct")),
                dp=("—" if row.get("p99_minus_nginx_us") is None else f"{row['p99_minus_nginx_us'] / 1000:+.2f} ms"),
                cpu=("—" if row["cpu_us_per_req"] is None else f"{row['cpu_us_per_req']:.1f} µs"),
                rss=rss,
                sq=("—" if row["store_queries_per_req"] is None else f"{row['store_queries_per_req']:.3f}"),
                bad=row["non2xx"] + row["socket_errors"],
            )
        )
    out.append("")
    out.append(
        "req/s per round: "
        + "; ".join(f"{k} {', '.join(f'{x:,}' for x in row['rps_rounds'])}" for k, row in rows.items())
        + ".\n"
    )
    out.append(
        "CPU / request is the user+system time of the proxy process(es) under test (memgate; for nginx "
        "the master and workers) from `/proc/PID/stat` deltas over the run, divided by the requests "
        "wrk completed; the upstream's and wrk's own CPU are not included.\n"
    )

    fl = raw["flood"]
    out.append("### Invalid-token flood\n")
    out.append(
        f"wrk `-t{s['wrk_threads']} -c{s['connections']}` for {s['flood_secs']} s, `GET /memories` cycling "
        f"through {s['flood_tokens']} distinct well-formed unknown tokens, all from 127.0.0.1; "
        f"`auth.negative_cache_ttl_secs = {NEGATIVE_TTL}`. Store queries are "
        f"`memgate_store_queries_total{{op=\"token_by_hash\"}}` deltas. The bound is one query per distinct "
        f"token per negative-TTL window the run touches (⌊duration / TTL⌋ + 1 windows).\n"
    )
    out.append(
        "| per-IP failed-auth limit | requests | req/s | 401 | 429 | store queries | bound | queries per token per TTL window | negative-cache hits | target |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for setting, r in fl.items():
        per = r["store_queries"] / (r["distinct_tokens"] * r["ttl_windows"])
        out.append(
            f"| {r['failed_auth_per_ip_per_min']:,}/min ({setting}) | {r['requests']:,} | {r['rps']:,.0f} | "
            f"{r['status_401']:,.0f} | {r['status_429']:,.0f} | {r['store_queries']:,.0f} | {r['bound']:,} | "
            f"{per:.3f} | {r['negative_hits']:,.0f} | {verdict(r['store_queries'] <= r['bound'])} |"
        )
    out.append("")

    out.append("### Load targets\n")
    out.append("| target | measured | verdict |")
    out.append("|---|---|---|")
    g = rows.get("memgate-get", {})
    p = rows.get("memgate-post", {})
    nc = rows.get("memgate-nocache", {})
    mc = rows.get("memgate-mcp", {})
    if g:
        out.append(
            f"| cached-token GET ≥ 0.9× nginx req/s | {fmt_ratio(g.get('vs_nginx'))} | "
            f"{verdict((g.get('vs_nginx') or 0) >= 0.9)} |"
        )
        d = g.get("p99_minus_nginx_us")
        out.append(
            f"| cached-token GET p99 within 1 ms of nginx | {fmt_us(g['p99_us'])} vs "
            f"{fmt_us(rows['nginx-get']['p99_us'])} (median per-round difference "
            f"{'—' if d is None else f'{d / 1000:+.2f} ms'}) | {verdict(d is not None and d <= 1000)} |"
        )
    if p:
        out.append(
            f"| rewrite POST ≥ 0.8× nginx req/s (nginx proxying the same POST) | {fmt_ratio(p.get('vs_nginx'))} | "
            f"{verdict((p.get('vs_nginx') or 0) >= 0.8)} |"
        )
    if nc and g:
        out.append(
            f"| cache off vs cached: the gap the cache closes | cache off runs at {fmt_ratio(nc.get('vs_cached'))} "
            f"the cached req/s ({nc['rps']:,.0f} vs {g['rps']:,.0f}); {nc['store_queries_per_req']:.2f} store "
            f"queries per request vs {g['store_queries_per_req']:.4f}; CPU {nc['cpu_us_per_req']:.0f} µs vs "
            f"{g['cpu_us_per_req']:.0f} µs per request | reported |"
        )
    if mc:
        out.append(
            f"| MCP tools/call (no numeric target) | {fmt_ratio(mc.get('vs_nginx'))} nginx, "
            f"p99 {fmt_us(mc['p99_us'])} | — |"
        )
    for setting, r in fl.items():
        out.append(
            f"| invalid-token flood ≤ 1 store query per distinct token per negative TTL ({setting} per-IP limit) | "
            f"{r['store_queries']:,.0f} queries, bound {r['bound']:,} | {verdict(r['store_queries'] <= r['bound'])} |"
        )
    out.append("")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# Mode: rss


def make_token():
    return "mcp_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


async def _http_worker(host, port, it, stats, keep_header, out_headers):
    reader = writer = None
    try:
        for idx, raw in it:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(raw)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            headers = {}
            for line in head.decode("latin-1").split("\r\n")[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            if "content-length" in headers:
                await reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size = int((await reader.readline()).split(b";")[0].strip(), 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            stats[status] = stats.get(status, 0) + 1
            if keep_header and keep_header in headers:
                out_headers[idx] = headers[keep_header]
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


def http_burst(port, requests, concurrency=32, keep_header=None):
    """Sends raw HTTP/1.1 requests over `concurrency` keep-alive connections;
    returns ({status: count}, {index: header value}, seconds)."""
    stats, out_headers = {}, {}
    it = iter(enumerate(requests))

    async def main():
        await asyncio.gather(
            *[_http_worker("127.0.0.1", port, it, stats, keep_header, out_headers) for _ in range(concurrency)]
        )

    t0 = time.time()
    asyncio.run(main())
    return stats, out_headers, time.time() - t0


def raw_request(method, path, port, headers, body=b""):
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def mode_rss():
    for port in (UP_MEM0, UP_MCP):
        check_port_free(port)
    facts = machine_facts()
    start_nginx_upstream()
    # Tokens stay cached for the whole measurement (the default TTL is 30 s and
    # the passes take longer); rate limits keep their defaults, so their
    # per-token state is part of what is measured.
    m = Memgate("rss", 80, auth={"cache_ttl_secs": 900})
    m.cli("migrate")
    log(f"rss: writing {RSS_TOKENS:,} tokens into {m.dir}/memgate.db")
    t0 = time.time()
    tokens = [make_token() for _ in range(RSS_TOKENS)]
    now = datetime.datetime.now(datetime.timezone.utc)
    created = now.isoformat(timespec="microseconds")
    expires = (now + datetime.timedelta(days=365)).isoformat(timespec="microseconds")
    db = sqlite3.connect(m.dir / "memgate.db")
    with db:
        db.executemany(
            "INSERT INTO tokens (token_hash, prefix, user_id, name, email, permissions, enabled, "
            "created_at, created_by, expires_at) VALUES (?, ?, ?, NULL, NULL, 'read,write', 1, ?, 'bench', ?)",
            (
                (hashlib.sha256(t.encode()).hexdigest(), t[:12], f"user{i:06d}", created, expires)
                for i, t in enumerate(tokens)
            ),
        )
    db.close()
    insert_secs = time.time() - t0
    m.start()
    idle = proc_mem(m.pid)
    log(f"rss: memgate started, VmRSS {idle[0] / 1024:.1f} MiB")

    readings = {"idle": idle}
    before = m.metrics()
    reqs = [
        raw_request("GET", f"/memories?user_id=user{i:06d}", m.mem0_port, {"X-MCP-Token": t})
        for i, t in enumerate(tokens)
    ]
    stats1, _, secs1 = http_burst(m.mem0_port, reqs)
    mid = m.metrics()
    readings["tokens"] = proc_mem(m.pid)
    log(f"rss: {RSS_TOKENS:,} tokens authenticated in {secs1:.1f} s: {stats1}; VmRSS {readings['tokens'][0] / 1024:.1f} MiB")

    inits = [
        raw_request(
            "POST",
            "/mcp",
            m.mcp_port,
            {
                "X-MCP-Token": tokens[i],
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
            },
            MCP_INIT.encode(),
        )
        for i in range(RSS_SESSIONS)
    ]
    stats2, sessions, secs2 = http_burst(m.mcp_port, inits, keep_header="mcp-session-id")
    readings["sessions"] = proc_mem(m.pid)
    log(f"rss: {RSS_SESSIONS:,} initialize requests in {secs2:.1f} s: {stats2}; {len(sessions):,} session ids")

    # The bindings are real: a session presented by another user is refused (404),
    # by its owner accepted.
    sample = sorted(sessions)[:200]
    probe = lambda owner: [
        raw_request(
            "POST",
            "/mcp",
            m.mcp_port,
            {
                "X-MCP-Token": tokens[i if owner else (i + 1) % RSS_TOKENS],
                "Mcp-Session-Id": sessions[i],
                "Content-Type": "application/json",
            },
            b'{"jsonrpc":"2.0","id":2,"method":"ping"}',
        )
        for i in sample
    ]
    foreign, _, _ = http_burst(m.mcp_port, probe(False), concurrency=8)
    owned, _, _ = http_burst(m.mcp_port, probe(True), concurrency=8)

    # Second pass over every token: all must be cache hits (no store query).
    stats3, _, secs3 = http_burst(m.mem0_port, reqs)
    after = m.metrics()
    readings["second_pass"] = proc_mem(m.pid)
    log(f"rss: second pass in {secs3:.1f} s: {stats3}; VmRSS {readings['second_pass'][0] / 1024:.1f} MiB")

    raw = {
        "facts": facts,
        "tokens": RSS_TOKENS,
        "sessions": RSS_SESSIONS,
        "threads": THREADS,
        "insert_secs": insert_secs,
        "first_pass": {"statuses": stats1, "secs": secs1,
                        "store_queries": metric_delta(before, mid, "memgate_store_queries_total", op="token_by_hash")},
        "initialize": {"statuses": stats2, "secs": secs2, "session_ids": len(sessions)},
        "probe_foreign": foreign,
        "probe_owner": owned,
        "probe_size": len(sample),
        "second_pass": {"statuses": stats3, "secs": secs3,
                         "store_queries": metric_delta(mid, after, "memgate_store_queries_total", op="token_by_hash"),
                         "cache_hits": metric_delta(mid, after, "memgate_auth_cache_total", outcome="hit")},
        "readings_kib": readings,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "rss.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    (RESULTS_DIR / "rss.md").write_text(render_rss(raw))
    assemble()


def render_rss(raw):
    f = raw["facts"]
    rd = raw["readings_kib"]
    mib = lambda kib: f"{kib / 1024:.1f} MiB"
    fp, sp, ini = raw["first_pass"], raw["second_pass"], raw["initialize"]
    peak = max(v[1] for v in rd.values())
    out = ["## Memory: 100,000 tokens cached and 10,000 MCP sessions\n"]
    out.append(
        f"{f['cores']} cores, {f['date']}, memgate {f['commit']}; `bench/run.sh rss`. "
        f"{raw['tokens']:,} tokens written straight into the SQLite store ({raw['insert_secs']:.1f} s, one "
        f"transaction), memgate started (`[server] threads = {raw['threads']}`, `auth.cache_ttl_secs = 900` so "
        f"that every token stays cached through the measurement, default rate limits so their per-token state "
        f"is counted, default `cache_capacity = 100000`), each token authenticated once with "
        f"`GET /memories` on the mem0 listener, then {raw['sessions']:,} MCP `initialize` requests (one per "
        f"token, on 32 keep-alive connections) whose upstream answers carry a fresh `Mcp-Session-Id`, then "
        f"every token once more.\n"
    )
    out.append("| after | VmRSS | VmHWM |")
    out.append("|---|---:|---:|")
    names = {
        "idle": "start (idle, store migrated)",
        "tokens": f"{raw['tokens']:,} tokens authenticated",
        "sessions": f"+ {raw['sessions']:,} sessions bound",
        "second_pass": f"+ second pass over the {raw['tokens']:,} tokens",
    }
    for k, label in names.items():
        if k in rd:
            out.append(f"| {label} | {mib(rd[k][0])} | {mib(rd[k][1])} |")
    out.append("")
    out.append(
        f"Checks: first pass {fp['statuses']} in {fp['secs']:.1f} s with {fp['store_queries']:,.0f} store "
        f"queries ({'one per token' if fp['store_queries'] == raw['tokens'] else 'expected one per token'}); "
        f"initialize {ini['statuses']}, {ini['session_ids']:,} session ids returned; "
        f"{raw['probe_size']} sessions presented by another user: {raw['probe_foreign']} (404 = bound to its "
        f"creator), by their owner: {raw['probe_owner']}; second pass {sp['statuses']} with "
        f"{sp['store_queries']:,.0f} store queries and {sp['cache_hits']:,.0f} cache hits "
        f"({'every token was still cached' if sp['store_queries'] == 0 else '**not every token was still cached**'}).\n"
    )
    ok = peak <= 100 * 1024
    out.append(
        f"Target RSS ≤ 100 MiB with 100k tokens and 10k sessions: peak VmHWM {mib(peak)}: "
        f"{verdict(ok)}.\n"
    )
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# Mode: bench (criterion)


POLICY_TARGET_NS = 5000
AUTH_TARGET_NS = 2000


def mode_bench():
    facts = machine_facts()
    busy = compilers_running()
    crit = TARGET_DIR / "criterion"
    argv = ["cargo", "bench", "--bench", "hot_paths", "--", "--warm-up-time", "1", "--measurement-time", "3"]
    log("bench: " + " ".join(argv))
    r = subprocess.run(argv, cwd=REPO, env={**os.environ, "CARGO_TARGET_DIR": str(TARGET_DIR)})
    if r.returncode != 0:
        raise SystemExit(f"bench: cargo bench failed ({r.returncode})")
    busy = max(busy, compilers_running())
    rows = []
    for bench_json in crit.glob("**/new/benchmark.json"):
        meta = json.loads(bench_json.read_text())
        est = json.loads((bench_json.parent / "estimates.json").read_text())
        if meta.get("group_id") not in ("auth", "mem0_decide", "mem0_response", "mcp_decide"):
            continue
        rows.append(
            {
                "group": meta["group_id"],
                "name": meta.get("function_id") or meta.get("full_id"),
                "median_ns": est["median"]["point_estimate"],
                "median_lo_ns": est["median"]["confidence_interval"]["lower_bound"],
                "median_hi_ns": est["median"]["confidence_interval"]["upper_bound"],
                "mtime": bench_json.stat().st_mtime,
            }
        )
    started = time.time() - 3600
    rows = [r for r in rows if r["mtime"] > started]
    order = {"auth": 0, "mem0_decide": 1, "mem0_response": 2, "mcp_decide": 3}
    rows.sort(key=lambda r: (order[r["group"]], r["mtime"]))
    raw = {"facts": facts, "compilers_running": busy, "rows": rows}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "criterion.json").write_text(json.dumps(raw, indent=1) + "\n")
    (RESULTS_DIR / "criterion.md").write_text(render_criterion(raw))
    assemble()


def fmt_ns(ns):
    if ns >= 1000:
        return f"{ns / 1000:.2f} µs"
    return f"{ns:.0f} ns"


def render_criterion(raw):
    f = raw["facts"]
    out = ["## Micro-benchmarks (criterion)\n"]
    out.append(
        f"`cargo bench --bench hot_paths -- --warm-up-time 1 --measurement-time 3` "
        f"(benches/hot_paths.rs), {f['cores']} cores, {f['date']}, memgate {f['commit']}"
        + (", while other compilations were running" if raw["compilers_running"] else "")
        + ". Medians with their 95 % confidence interval.\n"
    )
    out.append("| group | benchmark | median | 95 % CI | target | verdict |")
    out.append("|---|---|---:|---:|---:|---|")
    for r in raw["rows"]:
        target = None
        if r["group"] == "auth" and r["name"].startswith("authenticate_cache_hit"):
            target = AUTH_TARGET_NS
        elif r["group"] in ("mem0_decide", "mcp_decide"):
            target = POLICY_TARGET_NS
        out.append(
            f"| {r['group']} | {r['name']} | {fmt_ns(r['median_ns'])} | "
            f"{fmt_ns(r['median_lo_ns'])} – {fmt_ns(r['median_hi_ns'])} | "
            f"{'—' if target is None else '≤ ' + fmt_ns(target)} | "
            f"{'—' if target is None else verdict(r['median_ns'] <= target)} |"
        )
    out.append("")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# Mode: profile


def mode_profile():
    for port in (UP_MEM0, UP_MCP):
        check_port_free(port)
    start_nginx_upstream()
    no_limits = {"per_token_rps": 0, "failed_auth_per_ip_per_min": 1000000}
    m = Memgate("profile", 90, rate_limit=no_limits)
    m.create_token()
    m.start()
    body = create_body_1k()
    cases = {
        "get": (write_lua("profile-get", "GET", {"X-MCP-Token": m.token}), f"http://127.0.0.1:{m.mem0_port}{GET_PATH}"),
        "post": (
            write_lua("profile-post", "POST", {"X-MCP-Token": m.token, "Content-Type": "application/json"}, body),
            f"http://127.0.0.1:{m.mem0_port}/memories",
        ),
        "mcp": (
            write_lua("profile-mcp", "POST", {"X-MCP-Token": m.token, "Content-Type": "application/json"}, MCP_CALL),
            f"http://127.0.0.1:{m.mcp_port}/mcp",
        ),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    for name, (lua, url) in cases.items():
        run_wrk(url, lua, WARMUP)
        data = WORK / f"perf-{name}.data"
        perf = subprocess.Popen(
            ["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-p", str(m.pid), "-o", str(data)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with open(WORK / "pids", "a") as fh:
            fh.write(f"{perf.pid}\n")
        r = run_wrk(url, lua, DURATION)
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=60)
        flat = subprocess.run(
            ["perf", "report", "-i", str(data), "--no-children", "--sort", "symbol", "--stdio",
             "--percent-limit", "0.7", "-g", "none"],
            capture_output=True, text=True,
        ).stdout
        children = subprocess.run(
            ["perf", "report", "-i", str(data), "--children", "--sort", "symbol", "--stdio",
             "--percent-limit", "3", "-g", "none"],
            capture_output=True, text=True,
        ).stdout
        (RESULTS_DIR / f"profile-{name}.txt").write_text(
            f"# perf record -e cpu-clock -g of memgate under wrk ({url}), {r['requests'] / (r['duration_us'] / 1e6):.0f} req/s\n"
            "# self time (--no-children):\n" + flat + "\n# inclusive time (--children):\n" + children
        )
        log(f"profile: {name} written to bench/results/profile-{name}.txt")


# --------------------------------------------------------------------------
# RESULTS.md


def assemble():
    parts = [
        "# memgate benchmark results\n",
        "Produced by `bench/run.sh` (load, `rss`, `bench`), `bench/soak.sh` (soak) and the fuzz runs (fuzz); raw numbers are in `bench/results/*.json`. "
        "Re-running a mode rewrites its section; the real-peer, layout, secret-guard and OAuth sections are written by hand (`bench/results/realpeers.md` from `tests/realstack/run.sh`, `bench/results/layout.md`, `bench/results/secretguard.md`, `bench/results/oauth.md`). What the numbers mean and where the time goes is in the "
        "Analysis section at the end (hand-written in `bench/results/analysis.md`, not regenerated).\n",
    ]
    for name in ("load", "rss", "criterion", "soak", "fuzz", "spawn", "cutoff", "layout", "secretguard", "oauth", "realpeers", "analysis"):
        path = RESULTS_DIR / f"{name}.md"
        if path.exists():
            parts.append(path.read_text().rstrip() + "\n")
    (BENCH / "RESULTS.md").write_text("\n".join(parts))
    log("wrote bench/RESULTS.md")


def main():
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    mode = sys.argv[1] if len(sys.argv) > 1 else "load"
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "pids").touch()
    if mode in ("load", "rss", "profile", "all") and not (BIN and os.access(BIN, os.X_OK)):
        raise SystemExit("bench: MEMGATE_BIN must name the memgate binary (bench/run.sh builds it)")
    started = time.time()
    try:
        if mode in ("load", "all"):
            mode_load()
            PROCS.stop_all()
        if mode in ("rss", "all"):
            mode_rss()
            PROCS.stop_all()
        if mode in ("bench", "all"):
            mode_bench()
        if mode == "profile":
            mode_profile()
    finally:
        PROCS.stop_all()
    log(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
