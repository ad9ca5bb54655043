#!/usr/bin/env python3
"""Spawned MCP upstreams ([mcp.spawn]): what the first request of a new scope
costs, and what a warm spawned scope costs per request against one shared
upstream, in the same run with the same server program.

The memgates front tests/support/single_tenant_mcp.py (a one-user MCP server
on the standard library): one starts a copy per scope (transport http),
another starts its stdio twin single_tenant_mcp_stdio.py per scope (transport
stdio, served through memgate's bridge), and the shared one forwards to a
single copy started here. Every request is a `tools/list` on
a kept-alive connection with its session, so the difference is memgate's
choice of upstream and the upstream's own pool.

Usage: bench/spawn.py [--bin target/release/memgate] [--scopes 20] [--requests 300]
Writes bench/results/spawn.json and spawn.md; bench/bench.py puts spawn.md into
RESULTS.md. A debug build measures memgate's logic, not its release speed: the
report names the binary.
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "support" / "single_tenant_mcp.py"
STDIO_SERVER = ROOT / "tests" / "support" / "single_tenant_mcp_stdio.py"
RESULTS = ROOT / "bench" / "results"


def free_ports(n):
    held = [socket.socket() for _ in range(n)]
    for s in held:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in held]
    for s in held:
        s.close()
    return ports


def wait_port(port, limit=30.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"spawn bench: nothing listens on {port} after {limit:.0f} s")


def memgate(binary, workdir, name, mcp_section):
    """Starts `memgate serve` with its own store; returns (process, mcp port, config)."""
    mcp, mem0, admin = free_ports(3)
    config = workdir / f"{name}.toml"
    config.write_text(
        f'[database]\nurl = "sqlite://{workdir}/{name}.db?mode=rwc"\n'
        f'[mcp]\nlisten = "127.0.0.1:{mcp}"\n{mcp_section}\n'
        f'[mem0]\nlisten = "127.0.0.1:{mem0}"\n'
        f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
        '[rate_limit]\nper_token_rps = 0\n'
        f'[audit]\nspool_dir = "{workdir}/{name}-spool"\n'
    )
    run = lambda *args: subprocess.run(  # noqa: E731
        [binary, "--config", str(config), *args], check=True, capture_output=True, text=True
    )
    run("migrate")
    log = open(workdir / f"{name}.log", "w")
    proc = subprocess.Popen([binary, "--config", str(config), "serve"], stdout=log, stderr=log)
    wait_port(admin)
    return proc, mcp, run


def token(run, user):
    return json.loads(run("token", "create", "--user-id", user, "--json").stdout)["token"]


class Client:
    """One kept-alive connection to memgate's /mcp for one token."""

    def __init__(self, port, token):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"X-MCP-Token": token, "Content-Type": "application/json",
                        "Accept": "application/json, text/event-stream"}
        self.next_id = 0
        self.reconnects = 0
        self.closed_by_memgate = 0

    def call(self, method, params=None):
        self.next_id += 1
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            body["params"] = params
        started = time.perf_counter()
        try:
            self.conn.request("POST", "/mcp", json.dumps(body), self.headers)
            resp = self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # The connection was closed between requests: count the new one.
            self.conn.close()
            self.reconnects += 1
            self.conn.request("POST", "/mcp", json.dumps(body), self.headers)
            resp = self.conn.getresponse()
        data = resp.read()
        elapsed = time.perf_counter() - started
        if resp.getheader("Connection", "").lower() == "close":
            self.closed_by_memgate += 1
        if resp.status != 200:
            sys.exit(f"spawn bench: {method} answered {resp.status}: {data[:200]!r}")
        if method == "initialize":
            self.headers["Mcp-Session-Id"] = resp.getheader("Mcp-Session-Id")
        return elapsed


def initialize(client):
    return client.call("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                      "clientInfo": {"name": "spawn-bench", "version": "0"}})


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def warm(clients, requests):
    samples = []
    for client in clients:
        for _ in range(requests):
            samples.append(client.call("tools/list"))
    return samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_bin = ROOT / "target" / "release" / "memgate"
    parser.add_argument("--bin", default=os.environ.get("MEMGATE_BIN", str(default_bin)))
    parser.add_argument("--scopes", type=int, default=20)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    if not Path(args.bin).exists():
        sys.exit(f"spawn bench: no memgate binary at {args.bin} (build it, or give --bin)")
    python = sys.executable
    procs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            spawn_section = (
                f'[mcp.spawn]\ncommand = "{python}"\nargs = ["{SERVER}", "{{port}}"]\n'
                f'env = {{ MEM0_USER = "{{scope}}" }}\nmax_processes = {args.scopes + 1}\n'
                'idle_secs = 3600\n'
            )
            spawned, spawned_port, spawned_run = memgate(args.bin, workdir, "spawned", spawn_section)
            procs.append(spawned)
            stdio_section = (
                f'[mcp.spawn]\ncommand = "{python}"\nargs = ["{STDIO_SERVER}"]\ntransport = "stdio"\n'
                f'env = {{ MEM0_USER = "{{scope}}" }}\nmax_processes = {args.scopes + 1}\n'
                'idle_secs = 3600\n'
            )
            stdio, stdio_port, stdio_run = memgate(args.bin, workdir, "stdio", stdio_section)
            procs.append(stdio)
            (upstream_port,) = free_ports(1)
            shared_upstream = subprocess.Popen(
                [python, str(SERVER), str(upstream_port)], env={**os.environ, "MEM0_USER": "shared"},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(shared_upstream)
            wait_port(upstream_port)
            shared, shared_port, shared_run = memgate(
                args.bin, workdir, "shared", f'upstream = "http://127.0.0.1:{upstream_port}"')
            procs.append(shared)

            users = [f"user{i}" for i in range(args.scopes)]
            spawned_clients = [Client(spawned_port, token(spawned_run, u)) for u in users]
            stdio_clients = [Client(stdio_port, token(stdio_run, u)) for u in users]
            shared_clients = [Client(shared_port, token(shared_run, u)) for u in users]
            first = [initialize(c) for c in spawned_clients]
            first_stdio = [initialize(c) for c in stdio_clients]
            again = [initialize(c) for c in shared_clients]
            # Interleaved rounds, so all see the same machine.
            spawned_warm, stdio_warm, shared_warm = [], [], []
            for _ in range(3):
                spawned_warm += warm(spawned_clients, args.requests // 3)
                stdio_warm += warm(stdio_clients, args.requests // 3)
                shared_warm += warm(shared_clients, args.requests // 3)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)

    ms = lambda s: round(s * 1000, 3)  # noqa: E731
    reconnects = sum(c.reconnects for c in spawned_clients + stdio_clients + shared_clients)
    result = {
        "binary": args.bin,
        "reconnects": reconnects,
        "scopes": args.scopes,
        "requests_per_scope": args.requests // 3 * 3,
        "first_request_ms": {"median": ms(statistics.median(first)), "p90": ms(percentile(first, 0.9)),
                             "max": ms(max(first))},
        "first_request_stdio_ms": {"median": ms(statistics.median(first_stdio)),
                                   "p90": ms(percentile(first_stdio, 0.9)), "max": ms(max(first_stdio))},
        "initialize_on_shared_ms": {"median": ms(statistics.median(again))},
        "warm_spawned_ms": {"median": ms(statistics.median(spawned_warm)),
                            "p99": ms(percentile(spawned_warm, 0.99))},
        "warm_stdio_ms": {"median": ms(statistics.median(stdio_warm)),
                          "p99": ms(percentile(stdio_warm, 0.99))},
        "warm_shared_ms": {"median": ms(statistics.median(shared_warm)),
                           "p99": ms(percentile(shared_warm, 0.99))},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "spawn.json").write_text(json.dumps(result, indent=2) + "\n")
    overhead = result["warm_spawned_ms"]["median"] - result["warm_shared_ms"]["median"]
    bridged = result["warm_stdio_ms"]["median"] - result["warm_shared_ms"]["median"]
    binary = Path(args.bin)
    shown = binary.relative_to(ROOT) if binary.is_relative_to(ROOT) else binary
    # A debug build measures memgate's logic and the children's start, not its speed.
    shown = f"`{shown}` (a **debug** build)" if "debug" in binary.parts else f"`{shown}`"
    (RESULTS / "spawn.md").write_text(
        "## Spawned MCP upstreams ([mcp.spawn])\n\n"
        f"`bench/spawn.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, binary {shown}; "
        f"{args.scopes} scopes, `tools/list` on kept-alive connections, the one-user test server "
        "(Python, standard library) as upstream.\n\n"
        "| measure | median | tail |\n|---|---|---|\n"
        f"| first request of a new scope (starts its server) | {result['first_request_ms']['median']} ms "
        f"| p90 {result['first_request_ms']['p90']} ms, max {result['first_request_ms']['max']} ms |\n"
        f"| first request of a new scope, stdio child (starts it, through the bridge) "
        f"| {result['first_request_stdio_ms']['median']} ms "
        f"| p90 {result['first_request_stdio_ms']['p90']} ms, max {result['first_request_stdio_ms']['max']} ms |\n"
        f"| `initialize` through a shared upstream | {result['initialize_on_shared_ms']['median']} ms | |\n"
        f"| warm request, spawned scope | {result['warm_spawned_ms']['median']} ms "
        f"| p99 {result['warm_spawned_ms']['p99']} ms |\n"
        f"| warm request, spawned stdio scope | {result['warm_stdio_ms']['median']} ms "
        f"| p99 {result['warm_stdio_ms']['p99']} ms |\n"
        f"| warm request, shared upstream | {result['warm_shared_ms']['median']} ms "
        f"| p99 {result['warm_shared_ms']['p99']} ms |\n\n"
        f"A warm spawned scope costs {overhead:+.3f} ms per request against the shared upstream "
        f"(median), {bridged:+.3f} ms when its child speaks stdio through memgate's bridge.\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
