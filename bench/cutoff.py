#!/usr/bin/env python3
"""An office behind one address, cut off for failed logins: what a flood of
bad tokens from that address costs the store, and how soon a valid token from
the same address gets in.

memgate gets `failed_auth_per_ip_per_min = 10` and trusts this script as a
proxy, so `X-Forwarded-For` names the office. Two floods run from the office
at full speed on kept-alive connections while a colleague with a token memgate
has never seen tries to get in, retrying after each 429 as `Retry-After` says:

- stale: one bad token retried (a misconfigured agent); the negative cache
  answers it, so it should cost the store nothing;
- guessing: a new random token per request (someone guessing); each needs the
  store, so the address's store probes (one per second) are all it gets.

The upstream is a stub that answers every request, so the colleague's first
answer that is not 429 is the moment they got in. The colleague's token is
issued a moment before it is used, once memgate's change feed has carried it.

Usage: bench/cutoff.py [--bin target/release/memgate] [--trials 10] [--flood-secs 5]
Writes bench/results/cutoff.json and cutoff.md; bench/bench.py puts cutoff.md
into RESULTS.md.
"""

import argparse
import http.client
import http.server
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spawn import ROOT, RESULTS, free_ports, percentile, token, wait_port  # noqa: E402

OFFICE = "198.51.100.10"
# memgate hears of a new token through the store's change feed within this.
CHANGE_FEED_SECS = 1.5
LOOKUPS = 'memgate_store_queries_total{op="token_by_hash"}'


class Stub(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = b'{"results":[]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


def bad_token():
    return "mcp_" + secrets.token_urlsafe(32)[:43].ljust(43, "A")


class Office:
    """Kept-alive requests to memgate's mem0 listener as the office."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, tok):
        headers = {"X-MCP-Token": tok, "X-Forwarded-For": OFFICE}
        for _ in range(2):
            try:
                self.conn.request("GET", "/memories", headers=headers)
                resp = self.conn.getresponse()
                resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                return resp.status, resp.getheader("Retry-After")
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                self.conn.close()
        sys.exit("cutoff bench: memgate keeps closing the connection")


def metric(admin, name):
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def flood(port, kind, stop, counts):
    office = Office(port)
    stale = bad_token()
    while not stop.is_set():
        status, _ = office.get(stale if kind == "stale" else bad_token())
        counts[status] = counts.get(status, 0) + 1


def cut_off(port):
    office = Office(port)
    for _ in range(60):
        if office.get(bad_token())[0] == 429:
            return
    sys.exit("cutoff bench: the office was never cut off")


def time_to_accept(port, tok, limit=30.0):
    office = Office(port)
    started = time.perf_counter()
    tries = 0
    while time.perf_counter() - started < limit:
        tries += 1
        status, retry = office.get(tok)
        if status != 429:
            if status != 200:
                sys.exit(f"cutoff bench: the valid token got {status}")
            return time.perf_counter() - started, tries
        time.sleep(float(retry or 1))
    return None, tries


def scenario(kind, port, admin, run, trials, flood_secs, threads=2):
    accepted, tries, rates = [], [], []
    for trial in range(trials):
        cut_off(port)
        stop, counts = threading.Event(), {}
        workers = [threading.Thread(target=flood, args=(port, kind, stop, counts)) for _ in range(threads)]
        before, started = metric(admin, LOOKUPS), time.perf_counter()
        for w in workers:
            w.start()
        colleague = token(run, f"{kind}{trial}")
        # Tokens are issued before they are used: let the change feed carry it.
        time.sleep(max(CHANGE_FEED_SECS, flood_secs / 2))
        waited, n = time_to_accept(port, colleague)
        time.sleep(max(0.0, flood_secs / 2 - (waited or 0)))
        stop.set()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - started
        rates.append((metric(admin, LOOKUPS) - before) / elapsed)
        accepted.append(waited)
        tries.append(n)
        flood_rps = sum(counts.values()) / elapsed
    got_in = [a for a in accepted if a is not None]
    ms = lambda s: round(s * 1000, 1)  # noqa: E731
    return {
        "trials": trials,
        "flood_requests_per_sec": round(flood_rps),
        "store_queries_per_sec": {"median": round(statistics.median(rates), 2), "max": round(max(rates), 2)},
        "valid_token_got_in": len(got_in),
        "time_to_accept_ms": {
            "median": ms(statistics.median(got_in)) if got_in else None,
            "p90": ms(percentile(got_in, 0.9)) if got_in else None,
            "max": ms(max(got_in)) if got_in else None,
        },
        "tries": {"median": statistics.median(tries), "max": max(tries)},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_bin = ROOT / "target" / "release" / "memgate"
    parser.add_argument("--bin", default=os.environ.get("MEMGATE_BIN", str(default_bin)))
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--flood-secs", type=float, default=5.0)
    args = parser.parse_args()
    if not Path(args.bin).exists():
        sys.exit(f"cutoff bench: no memgate binary at {args.bin} (build it, or give --bin)")
    stub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    proc = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            mcp, mem0, admin = free_ports(3)
            config = workdir / "memgate.toml"
            config.write_text(
                f'[database]\nurl = "sqlite://{workdir}/memgate.db?mode=rwc"\n'
                f'[mcp]\nlisten = "127.0.0.1:{mcp}"\n'
                f'[mem0]\nlisten = "127.0.0.1:{mem0}"\nupstream = "http://127.0.0.1:{stub.server_port}"\n'
                f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
                "[rate_limit]\nper_token_rps = 0\nfailed_auth_per_ip_per_min = 10\n"
                '[server]\ntrusted_proxies = ["127.0.0.1/32"]\n'
                f'[audit]\nspool_dir = "{workdir}/spool"\n'
            )
            run = lambda *a: subprocess.run(  # noqa: E731
                [args.bin, "--config", str(config), *a], check=True, capture_output=True, text=True)
            run("migrate")
            log = open(workdir / "memgate.log", "w")
            proc = subprocess.Popen([args.bin, "--config", str(config), "serve"], stdout=log, stderr=log)
            wait_port(admin)
            wait_port(mem0)
            result = {
                "binary": args.bin,
                "flood_secs": args.flood_secs,
                "stale": scenario("stale", mem0, admin, run, args.trials, args.flood_secs),
                "guessing": scenario("guessing", mem0, admin, run, args.trials, args.flood_secs),
            }
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=30)
        stub.shutdown()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cutoff.json").write_text(json.dumps(result, indent=2) + "\n")
    binary = Path(args.bin)
    shown = binary.relative_to(ROOT) if binary.is_relative_to(ROOT) else binary
    # A debug build measures memgate's logic (lookups, tries), not its speed.
    shown = f"`{shown}` (a **debug** build)" if "debug" in binary.parts else f"`{shown}`"
    rows = ""
    for kind, what in [("stale", "one stale token retried"), ("guessing", "a new random token per request")]:
        r = result[kind]
        t = r["time_to_accept_ms"]
        rows += (f"| {what} | {r['flood_requests_per_sec']} | {r['store_queries_per_sec']['median']} "
                 f"(max {r['store_queries_per_sec']['max']}) | {r['valid_token_got_in']}/{r['trials']} "
                 f"| {t['median']} ms (p90 {t['p90']}, max {t['max']}) | {r['tries']['median']} |\n")
    (RESULTS / "cutoff.md").write_text(
        "## An office cut off for failed logins\n\n"
        f"`bench/cutoff.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, binary {shown}; "
        "`failed_auth_per_ip_per_min = 10`; two flooding connections from the office's address, "
        "and a colleague's valid token (issued 1.5 s before, never used) from the same address, retrying "
        "as `Retry-After` says.\n\n"
        "| flood | flood requests/s | store queries/s during the flood | valid token got in "
        "| time to get in | tries |\n|---|---|---|---|---|---|\n"
        + rows
        + "\nWhile cut off, the flood itself costs no store query: a stale token is answered from the "
        "negative cache, and a guess is refused without a lookup because memgate keeps the hashes of "
        "the store's tokens in memory (a token the store cannot hold is not worth one of the address's "
        "lookups). The queries counted are the address's failed-login budget (10 a minute) letting "
        "one failure through as it refills, and the colleague's own lookup: the address's one lookup "
        "per second goes to a token the store holds.\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
