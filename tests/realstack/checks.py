"""The scenarios of tests/realstack, run against memgate in front of the real peers.

Started by run.sh, which passes everything through the environment (RS_*).
Prints one `PASS <name>` or `FAIL <name>: <why>` line per check and exits 1
when any check failed. Needs httpx and the MCP Python SDK (`mcp`).
"""

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import uuid
from urllib.parse import urlsplit

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError

ENV = os.environ
RESULTS = []


def report(name, ok, why=""):
    RESULTS.append((name, ok))
    print(f"PASS {name}" if ok else f"FAIL {name}: {why}", flush=True)


def guarded(name):
    """Run a scenario; an exception inside it is that scenario's FAIL."""

    def wrap(fn):
        async def run():
            try:
                await fn()
            except Exception as e:  # noqa: BLE001 - a crash is a failed scenario
                report(name, False, f"{type(e).__name__}: {e}")

        run.__name__ = fn.__name__
        return run

    return wrap


def tok(user):
    return {"X-MCP-Token": ENV[f"RS_TOKEN_{user.upper()}"]}


MEM0 = ENV["RS_MEM0_URL"]            # mem0 itself (only for looking behind memgate)
MG_MEM0 = ENV["RS_MG_MEM0_URL"]      # memgate's mem0 listener
MG_MCP = ENV["RS_MG_MCP_URL"]        # memgate's MCP listener (shared stack upstream)
ADMIN_KEY = ENV["RS_MEM0_API_KEY"]
HEADER_LOG = ENV["RS_HEADER_LOG"]
MEMGATE = ENV["RS_MEMGATE"]
STATE = {}
GEN = ENV.get("RS_MEM0_GEN", "2026")


def mem0_direct(method, path, **kw):
    return httpx.request(method, MEM0 + path, headers={"X-API-Key": ADMIN_KEY}, timeout=120, **kw)


def add(url, headers, lines, **extra):
    body = {"messages": [{"role": "user", "content": line} for line in lines], **extra}
    r = httpx.post(url + "/memories", json=body, headers=headers, timeout=180)
    r.raise_for_status()
    return [item["id"] for item in r.json().get("results", [])]


def listing(url, headers, **params):
    r = httpx.get(url + "/memories", params=params, headers=headers, timeout=60)
    return r.status_code, (r.json().get("results", []) if r.status_code == 200 else r.text)


def memgate_cli(config, *args):
    return subprocess.run([MEMGATE, "--config", config, *args], capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- (a) REST


@guarded("a REST isolation")
async def rest_isolation():
    tag = uuid.uuid4().hex[:6]
    a_ids = add(MG_MEM0, tok("alice"), [f"alice drinks green tea {tag}"])
    b_ids = add(MG_MEM0, tok("bob"), [f"bob writes rust every day {tag}"])
    STATE["alice_id"], STATE["bob_id"] = a_ids[0], b_ids[0]
    report("a.1 each user adds a memory through memgate", len(a_ids) == 1 and len(b_ids) == 1,
           f"alice ids {a_ids}, bob ids {b_ids}")
    for user, mine, theirs in (("alice", a_ids[0], b_ids[0]), ("bob", b_ids[0], a_ids[0])):
        status, items = listing(MG_MEM0, tok(user), top_k=1000)
        owners = {i.get("user_id") for i in items} if status == 200 else None
        ids = {i.get("id") for i in items} if status == 200 else set()
        report(f"a.2 {user} lists only their own memories",
               status == 200 and owners == {user} and mine in ids and theirs not in ids,
               f"status {status}, owners {owners}, own id listed {mine in ids}, other's listed {theirs in ids}")
    alice_id = a_ids[0]
    r = httpx.get(f"{MG_MEM0}/memories/{alice_id}", headers=tok("bob"))
    report("a.3 bob GET alice's memory by id is 403", r.status_code == 403, f"{r.status_code} {r.text[:200]}")
    r = httpx.delete(f"{MG_MEM0}/memories/{alice_id}", headers=tok("bob"))
    report("a.4 bob DELETE alice's memory by id is 403", r.status_code == 403, f"{r.status_code} {r.text[:200]}")
    r = mem0_direct("GET", f"/memories/{alice_id}")
    report("a.5 alice's memory is still in mem0", r.status_code == 200 and (r.json() or {}).get("id") == alice_id,
           f"{r.status_code} {r.text[:200]}")
    r = httpx.get(f"{MG_MEM0}/memories", params={"filters": json.dumps({"user_id": "bob"})}, headers=tok("alice"))
    report("a.6 GET /memories?filters=... is 400", r.status_code == 400, f"{r.status_code} {r.text[:200]}")
    r = httpx.post(f"{MG_MEM0}/search", json={"query": "rust", "filters": {"user_id": "bob"}}, headers=tok("alice"))
    report("a.7 alice POST /search with filters.user_id=bob is 403", r.status_code == 403,
           f"{r.status_code} {r.text[:200]}")
    r = httpx.post(f"{MG_MEM0}/search", json={"query": f"rust tea {tag}"}, headers=tok("alice"))
    owners = {i.get("user_id") for i in r.json().get("results", [])} if r.status_code == 200 else None
    report("a.8 alice's search sees only alice", r.status_code == 200 and owners == {"alice"},
           f"{r.status_code} owners {owners}")
    bob_id = b_ids[0]
    for label, method, path, kw, want in (
        ("a.9 alice PUT bob's memory is 403", "PUT", f"/memories/{bob_id}", {"json": {"text": "pwned"}}, (403,)),
        ("a.10 alice GET bob's memory history is 403", "GET", f"/memories/{bob_id}/history", {}, (403,)),
        ("a.11 alice DELETE /memories (no identifier) is refused", "DELETE", "/memories", {}, (400, 403)),
        ("a.12 alice DELETE /memories?user_id=alice is refused (allow_delete_all off)", "DELETE", "/memories",
         {"params": {"user_id": "alice"}}, (403,)),
        ("a.13 alice POST /reset is 403", "POST", "/reset", {}, (403,)),
        ("a.14 an unknown memory id is 404 (mem0 answers 200 null)", "GET", f"/memories/{uuid.uuid4()}", {}, (404,)),
        ("a.15 mem0 2026 route /api-keys is not reachable", "POST", "/api-keys", {"json": {"name": "x"}}, (404,)),
        ("a.16 mem0 2026 route /entities is not reachable", "GET", "/entities", {}, (404,)),
        ("a.17 alice POST /configure is 403", "POST", "/configure", {"json": {}}, (403,)),
    ):
        r = httpx.request(method, MG_MEM0 + path, headers=tok("alice"), timeout=60, **kw)
        report(label, r.status_code in want, f"{method} {path} -> {r.status_code} {r.text[:160]}")
    # mem0 2.x filter operators: any spelling that names bob must be refused.
    for label, filters in (("AND", {"AND": [{"user_id": "bob"}]}), ("OR", {"OR": [{"user_id": "alice"}, {"user_id": "bob"}]}),
                           ("in", {"user_id": {"in": ["alice", "bob"]}}), ("ne", {"user_id": {"ne": "alice"}}),
                           ("wildcard", {"user_id": "*"}), ("NOT", {"NOT": [{"user_id": "alice"}]})):
        r = httpx.post(f"{MG_MEM0}/search", json={"query": f"rust {tag}", "filters": filters}, headers=tok("alice"))
        leaked = [i for i in r.json().get("results", []) if i.get("user_id") != "alice"] if r.status_code == 200 else []
        # Not naming bob is allowed through (memgate ANDs filters.user_id=alice); then mem0's
        # answer, whatever it is (1.x has no operators: 500), must hold nothing of bob's.
        report(f"a.19 alice /search with filters {label} naming others is refused or leaks nothing",
               r.status_code != 200 or not leaked, f"{r.status_code} leaked {len(leaked)}: {r.text[:160]}")
        STATE.setdefault("filters", []).append(f"{label}:{r.status_code}")
    r = httpx.get(f"{MG_MEM0}/memories", params={"user_id": "bob"}, headers=tok("alice"))
    report("a.20 alice GET /memories?user_id=bob is 403", r.status_code == 403, f"{r.status_code} {r.text[:160]}")
    run = f"run-{tag}"
    add(MG_MEM0, tok("bob"), [f"bob note in run {tag}"], run_id=run)
    r = httpx.get(f"{MG_MEM0}/memories", params={"run_id": run}, headers=tok("alice"))
    items = r.json().get("results", []) if r.status_code == 200 else []
    report("a.21 alice GET /memories?run_id=<bob's run> sees nothing of bob's",
           r.status_code in (200, 403) and not [i for i in items if i.get("user_id") != "alice"],
           f"{r.status_code} {len(items)} items: {r.text[:160]}")
    r = httpx.post(f"{MG_MEM0}/memories", json={"messages": [{"role": "user", "content": f"agent only {tag}"}],
                                               "agent_id": "helper"}, headers=tok("alice"))
    ids = [i["id"] for i in r.json().get("results", [])] if r.status_code == 200 else []
    owner = (mem0_direct("GET", f"/memories/{ids[0]}").json() or {}).get("user_id") if ids else None
    report("a.22 POST /memories with only agent_id is stored under alice", r.status_code == 200 and owner == "alice",
           f"{r.status_code} owner {owner}: {r.text[:160]}")
    r = mem0_direct("GET", f"/memories/{bob_id}")
    body = r.json() if r.status_code == 200 else None
    report("a.18 bob's memory is still there and unchanged", bool(body) and body.get("memory", "").startswith("bob"),
           f"{r.status_code} {r.text[:160]}")


# ---------------------------------------------------------------- (e) X-API-Key


def header_log_lines():
    try:
        with open(HEADER_LOG, encoding="utf-8") as f:
            return f.readlines()
    except FileNotFoundError:
        return []


@guarded("e X-API-Key")
async def api_key_injection():
    forged = "m0sk_client-forged-key-" + uuid.uuid4().hex
    forged_h = hashlib.sha256(forged.encode()).hexdigest()[:16]
    ours_h = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()[:16]
    before = len(header_log_lines())
    headers = {**tok("alice"), "X-API-Key": forged, "x_api_key": forged}
    status, _ = listing(MG_MEM0, headers)
    r = httpx.get(f"{MG_MEM0}/memories/{STATE.get('alice_id', 'x')}", headers=headers)
    seen = [json.loads(line) for line in header_log_lines()[before:]]
    keys = [k for line in seen for k in line["x_api_key_sha256"]]
    report("e.1 requests with a client X-API-Key still succeed", status == 200 and r.status_code == 200,
           f"list {status}, get {r.status_code} {r.text[:200]}")
    report("e.2 the client's X-API-Key never reaches mem0", forged_h not in keys and bool(seen),
           f"mem0 saw key hashes {keys} on {len(seen)} requests (forged {forged_h})")
    report("e.3 every request reaching mem0 carries memgate's configured key once",
           bool(seen) and all(line["x_api_key_sha256"] == [ours_h] for line in seen),
           f"mem0 saw {[line['x_api_key_sha256'] for line in seen]}, configured {ours_h}")


# ---------------------------------------------------------------- (f) top_k and export


def find_memories(doc, user):
    """Every memory object of `user` anywhere in an export document."""
    found = {}

    def walk(v):
        if isinstance(v, dict):
            if "id" in v and "memory" in v and v.get("user_id") in (user, None):
                found[v["id"]] = v
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(doc)
    return found


@guarded("f listing cap and export")
async def listing_cap_and_export():
    status, items = listing(MEM0, {"X-API-Key": ADMIN_KEY}, user_id="alice", top_k=1000)
    have = len(items) if status == 200 else 0
    need = max(0, 36 - have)
    tag = uuid.uuid4().hex[:6]
    if need:
        add(MG_MEM0, tok("alice"), [f"alice fact number {i} about topic {tag}{i}" for i in range(need)])
    status, items = listing(MEM0, {"X-API-Key": ADMIN_KEY}, user_id="alice", top_k=1000)
    total = len(items)
    report("f.1 alice has at least 36 memories in mem0", total >= 36, f"mem0 lists {total}")
    # 2026 servers answer 20 without top_k; October 2025's ignore top_k and answer up to 100.
    default = 20 if GEN == "2026" else min(total, 100)
    status, items = listing(MG_MEM0, tok("alice"))
    report(f"f.2 GET /memories without top_k through memgate returns mem0's default ({default})",
           status == 200 and len(items) == default, f"status {status}, {len(items) if status == 200 else items}")
    status, items = listing(MG_MEM0, tok("alice"), top_k=1000)
    report("f.3 GET /memories?top_k=1000 through memgate returns all of alice's",
           status == 200 and len(items) == min(total, 1000 if GEN == "2026" else 100),
           f"status {status}, got {len(items) if status == 200 else items}, mem0 has {total}")
    out = memgate_cli(ENV["RS_MG_CONFIG"], "user", "export", "--user-id", "alice")
    if out.returncode != 0:
        report("f.4 memgate user export", False, f"exit {out.returncode}: {out.stderr.strip()[:300]}")
        return
    doc = json.loads(out.stdout)
    with open(os.path.join(os.path.dirname(HEADER_LOG), "alice-export.json"), "w", encoding="utf-8") as f:
        f.write(out.stdout)
    got = find_memories(doc.get("scopes", doc), "alice")
    complete = doc.get("memories_complete")
    says_capped = complete is False and bool(doc.get("warnings"))
    report("f.4 memgate user export has every memory of alice (or says it was capped)",
           (len(got) == total and doc.get("memory_count") == total and complete is True) or says_capped,
           f"export holds {len(got)} (memory_count {doc.get('memory_count')}, complete {complete}) "
           f"of {total}; warnings {doc.get('warnings')}")
    STATE["export"] = f"{len(got)} of {total}, memories_complete={complete}"


# ---------------------------------------------------------------- (b) (c) MCP


def first_origin(url):
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@guarded("b MCP redirect")
async def mcp_redirect():
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-03-26", "capabilities": {},
                       "clientInfo": {"name": "realstack", "version": "0"}}}
    r = httpx.post(MG_MCP + "/mcp", json=init, headers={**tok("alice"), "Accept": "application/json, text/event-stream"})
    loc = r.headers.get("location", "")
    report("b.1 POST /mcp is 307 and Location points at memgate",
           r.status_code == 307 and loc.startswith(MG_MCP + "/mcp"),
           f"{r.status_code}, Location {loc!r}, memgate is {MG_MCP}")
    async with streamablehttp_client(MG_MCP + "/mcp", headers=tok("alice")) as (read, write, _):
        async with ClientSession(read, write) as s:
            await s.initialize()
            tools = await s.list_tools()
            names = sorted(t.name for t in tools.tools)
    report("b.2 the MCP SDK configured with .../mcp initializes and lists tools", bool(names), f"tools {names}")
    STATE["tools"] = names
    accept = {"Accept": "application/json, text/event-stream"}
    r = httpx.post(MG_MCP + "/mcp/", json=init, headers={**tok("alice"), **accept})
    sid = r.headers.get("mcp-session-id")
    report("b.3 alice's initialize at /mcp/ hands out a session id", r.status_code == 200 and bool(sid),
           f"{r.status_code} session {sid!r}")
    if sid:
        listing_req = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        for label, spelled in (("exact", sid), ("upper", sid.upper())):
            r = httpx.post(MG_MCP + "/mcp/", json=listing_req,
                           headers={**tok("bob"), **accept, "Mcp-Session-Id": spelled, "MCP-Protocol-Version": "2025-03-26"})
            report(f"b.4 bob using alice's Mcp-Session-Id ({label}) gets 404", r.status_code == 404,
                   f"{r.status_code} {r.text[:160]}")
        r = httpx.delete(MG_MCP + "/mcp/", headers={**tok("bob"), "Mcp-Session-Id": sid})
        report("b.5 bob cannot DELETE alice's session", r.status_code == 404, f"{r.status_code} {r.text[:160]}")


@guarded("c MCP refusals in-band")
async def mcp_refusals():
    bob_id, alice_id = STATE["bob_id"], STATE["alice_id"]
    async with streamablehttp_client(MG_MCP + "/mcp", headers=tok("alice")) as (read, write, _):
        async with ClientSession(read, write) as s:
            await s.initialize()
            names = {t.name for t in (await s.list_tools()).tools}
            report("c.1 tools/list hides the stack's per-process tools on a shared upstream",
                   "search_coding_preferences" not in names and "add_coding_preference" not in names,
                   f"listed {sorted(names)}")
            for tool, args, why in (("search_coding_preferences", {"query": "tea", "limit": 3}, "shared upstream"),
                                    ("delete_memory", {"memory_id": bob_id}, "bob's memory"),
                                    ("get_memory_history", {"memory_id": bob_id}, "bob's memory")):
                try:
                    res = await s.call_tool(tool, args)
                    report(f"c.2 {tool} ({why}) is a JSON-RPC error", False,
                           f"got a result: isError={res.isError} {str(res.content)[:200]}")
                except McpError as e:
                    report(f"c.2 {tool} ({why}) is a JSON-RPC error", True)
                    STATE.setdefault("refusals", []).append(f"{tool}: {e.error.code} {e.error.message[:120]}")
            res = await s.call_tool("get_memory_history", {"memory_id": alice_id})
            text = " ".join(getattr(c, "text", "") for c in res.content)
            report("c.3 the same SDK session makes the next call (own memory's history)",
                   not res.isError and "ADD" in text and "\u274c" not in text, f"isError={res.isError} {text[:200]}")
    r = mem0_direct("GET", f"/memories/{bob_id}")
    report("c.4 bob's memory survived alice's delete_memory", r.status_code == 200 and (r.json() or {}).get("id") == bob_id,
           f"{r.status_code} {r.text[:200]}")


# ---------------------------------------------------------------- (d) legacy SSE


@guarded("d legacy SSE session spellings")
async def sse_spellings():
    async with httpx.AsyncClient(timeout=30) as client:
        sse_url = MG_MCP + "/sse"
        r = await client.get(sse_url, headers={**tok("alice"), "Accept": "text/event-stream"})
        if r.status_code in (301, 302, 307, 308):
            # The stack mounts its SSE app at /sse, so Starlette redirects to /sse/.
            loc = r.headers.get("location", "")
            report("d.0 GET /sse redirect points at memgate", loc.startswith(MG_MCP + "/"),
                   f"{r.status_code} Location {loc!r}")
            STATE["sse_redirect"] = f"GET /sse -> {r.status_code} {loc}"
            sse_url = MG_MCP + urlsplit(loc).path
        async with client.stream("GET", sse_url, headers={**tok("alice"), "Accept": "text/event-stream"}) as resp:
            if resp.status_code != 200:
                report("d.0 alice opens the SSE stream", False, f"GET {sse_url} -> {resp.status_code}")
                return
            endpoint = None
            event = None
            async for line in resp.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "endpoint":
                    endpoint = line[5:].strip()
                    break
            report("d.0 alice's /sse announces an endpoint", bool(endpoint), f"endpoint {endpoint!r}")
            announced, _, query = endpoint.partition("?")
            # The stack's handle_post_message is mounted at /messages; mcp >= 1.9 announces
            # the mount prefix too (/sse/messages/), which the stack routes to its GET app.
            path = "/messages/"
            if announced != path:
                r = await client.post(MG_MCP + announced, params={"session_id": "0" * 32},
                                      json={"jsonrpc": "2.0", "id": 6, "method": "ping"}, headers=tok("alice"))
                direct = "?"
                try:  # the same POST straight to the stack, to tell its behaviour from memgate's
                    d = await client.post(ENV["RS_STACK_URL"] + announced, params={"session_id": "0" * 32},
                                          json={"jsonrpc": "2.0", "id": 6, "method": "ping"},
                                          headers={"Accept": "text/event-stream"}, timeout=3)
                    direct = f"{d.status_code} {d.headers.get('content-type', '')}"
                except httpx.HTTPError as e:
                    direct = f"{type(e).__name__} (the stack's GET-only SSE app took the POST)"
                STATE["sse_note"] = (f"endpoint event names {announced}; memgate answers a POST there with "
                                     f"{r.status_code}, the stack itself with {direct}; the checks post to {path}, "
                                     f"where the stack mounts its message handler")
            sid = query.split("session_id=", 1)[1].split("&", 1)[0]
            u = uuid.UUID(sid)
            ping = {"jsonrpc": "2.0", "id": 7, "method": "ping"}
            spellings = {
                "exact": sid, "upper": sid.upper(), "hyphenated": str(u),
                "braced": "{" + str(u) + "}", "urn": u.urn, "upper-urn": "URN:UUID:" + str(u).upper(),
            }
            for label, spelled in spellings.items():
                r = await client.post(MG_MCP + path, params={"session_id": spelled}, json=ping, headers=tok("bob"))
                report(f"d.1 bob posting alice's session id ({label}) gets 404", r.status_code == 404,
                       f"{r.status_code} {r.text[:160]}")
            r = await client.post(MG_MCP + path, params={"session_id": sid}, json=ping, headers=tok("alice"))
            report("d.2 alice posting to her own session is accepted", r.status_code in (200, 202),
                   f"POST {path} -> {r.status_code} {r.text[:160]}")


# ---------------------------------------------------------------- (g) auto + user delete


@guarded("g auto project scope then user delete")
async def auto_then_delete():
    project = f"/home/carol/proj-{uuid.uuid4().hex[:8]}"
    headers = {**tok("carol"), "X-MCP-Project": project}
    ids = add(ENV["RS_MG_AUTO_MEM0_URL"], headers, [f"carol keeps notes in {project}"])
    scope = None
    if ids:
        r = mem0_direct("GET", f"/memories/{ids[0]}")
        scope = (r.json() or {}).get("user_id")
    report("g.1 a memory lands in a project scope", bool(ids) and bool(scope) and scope.startswith("project_"),
           f"ids {ids}, scope {scope}")
    out = memgate_cli(ENV["RS_MG_AUTO_CONFIG"], "user", "delete", "--user-id", "carol", "--yes")
    report("g.2 memgate user delete exits 0", out.returncode == 0, f"exit {out.returncode}: {out.stderr.strip()[:300]}")
    status, left = listing(MEM0, {"X-API-Key": ADMIN_KEY}, user_id=scope or "none", top_k=1000)
    r = mem0_direct("GET", f"/memories/{ids[0]}") if ids else None
    report("g.3 nothing of carol's project scope is left in mem0",
           status == 200 and not left and r is not None and r.json() is None or (r is not None and r.status_code == 404),
           f"listing {status} {len(left) if status == 200 else left}, by id {r.status_code if r else None} {r.text[:120] if r else ''}")


# ---------------------------------------------------------------- (h) one stack server per user


async def stack_call(url, headers, tool, args):
    async with streamablehttp_client(url + "/mcp", headers=headers) as (read, write, _):
        async with ClientSession(read, write) as s:
            await s.initialize()
            try:
                res = await s.call_tool(tool, args)
            except McpError as e:  # caught here: past the transport's task group it is wrapped
                return "rpc-error", f"{e.error.code} {e.error.message}"
            return res.isError, " ".join(getattr(c, "text", "") for c in res.content)


@guarded("h per-user stack servers")
async def per_user_upstreams():
    url = ENV["RS_MG_TPL_MCP_URL"]
    tag = uuid.uuid4().hex[:6]
    users = ENV["RS_TPL_USERS"].split()
    for user in users:
        err, text = await stack_call(url, tok("u" + user), "add_coding_preference",
                                     {"text": f"user {user} prefers tabs {tag}"})
        report(f"h.1 add_coding_preference as user {user}", err is False and "Successfully" in text, text[:200])
    for user in users:
        err, text = await stack_call(url, tok("u" + user), "get_all_coding_preferences", {})
        others = [u for u in users if u != user and f"user {u} prefers tabs {tag}" in text]
        report(f"h.2 user {user} sees their own preference and no one else's",
               err is False and f"user {user} prefers tabs {tag}" in text and not others, f"others seen {others}; {text[:200]}")
    for user in users:
        status, items = listing(MEM0, {"X-API-Key": ADMIN_KEY}, user_id=user, top_k=1000)
        texts = [i.get("memory", "") for i in items] if status == 200 else []
        if items and status == 200:
            STATE.setdefault("tpl_ids", {})[user] = items[0]["id"]
        report(f"h.3 mem0 holds user {user}'s preference under user_id {user} only",
               any(f"user {user} prefers" in t for t in texts)
               and not any(f"prefers tabs {tag}" in t and f"user {user} " not in t for t in texts),
               f"mem0 texts {texts}")
    ids = STATE.get("tpl_ids", {})
    if len(users) >= 2 and users[1] in ids:
        victim = ids[users[1]]
        err, text = await stack_call(url, tok("u" + users[0]), "delete_memory", {"memory_id": victim})
        report(f"h.4 user {users[0]} delete_memory of user {users[1]}'s memory is a JSON-RPC error",
               err == "rpc-error", f"got a result: isError={err} {text[:160]}")
        r = mem0_direct("GET", f"/memories/{victim}")
        report(f"h.5 user {users[1]}'s memory survived", r.status_code == 200 and (r.json() or {}).get("id") == victim,
               f"{r.status_code} {r.text[:160]}")


# ---------------------------------------------------------------- (i) the stack's tokens


def stack_token_cli(*args):
    return subprocess.run([ENV["RS_STACK_PY"], os.path.join(ENV["RS_HERE"], "stack_token.py"),
                           ENV["RS_STACK_TOKEN_CLI"], *args], capture_output=True, text=True, timeout=120)


@guarded("i import-legacy of the stack's tokens")
async def legacy_tokens():
    made = {}
    for user in ("dave", "erin"):
        out = stack_token_cli("create", "--user-id", user, "--name", user.title(), "--expires-days", "30")
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("Token:")]
        made[user] = line[0].split(":", 1)[1].strip() if line else None
    report("i.1 the stack's mcp-token.py creates tokens", all(made.values()), f"{made}")
    out = stack_token_cli("revoke", made["erin"][:16], "--yes")
    report("i.2 the stack's mcp-token.py revokes erin's", out.returncode == 0, out.stdout[-200:] + out.stderr[-200:])
    out = memgate_cli(ENV["RS_MG_CONFIG"], "token", "import-legacy", "--from", ENV["RS_STACK_DB_URL"], "--json")
    report("i.3 memgate token import-legacy reads the stack's table", out.returncode == 0,
           f"exit {out.returncode}: {out.stderr.strip()[:300]}")
    r = httpx.get(MG_MEM0 + "/memories", headers={"X-MCP-Token": made["dave"]})
    items = r.json().get("results", []) if r.status_code == 200 else None
    report("i.4 dave's imported stack token works on memgate and sees only dave",
           r.status_code == 200 and not [i for i in items if i.get("user_id") != "dave"], f"{r.status_code} {r.text[:160]}")
    r = httpx.get(MG_MEM0 + "/memories", headers={"X-MCP-Token": made["erin"]})
    report("i.5 erin's revoked stack token is refused by memgate", r.status_code == 401, f"{r.status_code} {r.text[:160]}")
    out = memgate_cli(ENV["RS_MG_CONFIG"], "token", "list", "--user-id", "dave", "--json")
    rows = json.loads(out.stdout) if out.returncode == 0 else []
    exp = rows[0].get("expires_at") if rows else None
    report("i.6 the imported token keeps its expiry (30 days)", bool(exp), f"token list: {out.stdout[:300]} {out.stderr[:200]}")
    STATE["legacy"] = f"dave's imported token expires_at {exp}"
    # The stack's clients send both headers (MEM0_TOKEN, MEM0_USER_ID): keep working, mismatch is 401.
    r = httpx.get(MG_MEM0 + "/memories", headers={"X-MCP-Token": made["dave"], "X-MCP-UserID": "dave"})
    report("i.7 a stack client's X-MCP-Token + matching X-MCP-UserID works", r.status_code == 200, f"{r.status_code}")
    r = httpx.get(MG_MEM0 + "/memories", headers={"X-MCP-Token": made["dave"], "X-MCP-UserID": "alice"})
    report("i.8 X-MCP-UserID naming another user is 401", r.status_code == 401, f"{r.status_code} {r.text[:160]}")


async def main():
    only = set(sys.argv[1:])
    scenarios = [("a", rest_isolation), ("e", api_key_injection), ("f", listing_cap_and_export),
                 ("b", mcp_redirect), ("c", mcp_refusals), ("d", sse_spellings),
                 ("g", auto_then_delete), ("h", per_user_upstreams), ("i", legacy_tokens)]
    for key, fn in scenarios:
        if only and key not in only:
            continue
        await fn()
    for key in ("legacy", "filters", "export", "refusals", "sse_redirect", "sse_note"):
        if key in STATE:
            print(f"NOTE {key}: {STATE[key]}")
    failed = [n for n, ok in RESULTS if not ok]
    print(f"SUMMARY {len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    asyncio.run(main())
