"""Drives memgate's MCP listener with the official MCP Python SDK.

Works with the SDK's 1.x and 2.x lines. Connects over Streamable HTTP (or
the legacy SSE transport with --sse), sends X-MCP-Token on every request,
runs initialize, tools/list, then each call of a JSON script, and prints one
JSON line per step:

    {"step": ..., "ok": bool, "error_code": ..., "error_message": ...,
     "error_kind": ..., "result": ...}

error_kind says how the SDK surfaced a failed call: "McpError" (1.x) or
"MCPError" (2.x) for a JSON-RPC error raised as the SDK's protocol
exception, "isError" for a tool result flagged as an error. Anything else
(a transport exception, no answer within --step-timeout) means the session
is unusable: a final {"step": "session", "ok": false, "fatal": ...} line is
printed and the exit status is 3.

Usage:
    mcp_client.py [--sse] [--bearer] [--step-timeout S] [--calls JSON] [URL]

URL is the MCP endpoint (Streamable HTTP) or the /sse endpoint (--sse); it
defaults to $MEMGATE_MCP_URL. The token comes from $MEMGATE_TOKEN (or
--token); it is sent in X-MCP-Token, or with --bearer (an OAuth access
token) as "Authorization: Bearer". The calls default to $MEMGATE_CALLS: a JSON array of
{"tool": NAME, "arguments": {...}}.
"""

import argparse
import json
import os
import sys
import traceback
from importlib.metadata import version

import anyio

from mcp import ClientSession
from mcp.shared._httpx_utils import create_mcp_http_client

try:  # 1.x
    from mcp.shared.exceptions import McpError as ProtocolError
except ImportError:  # 2.x renamed it
    from mcp.shared.exceptions import MCPError as ProtocolError

SDK_VERSION = version("mcp")
SDK_MAJOR = int(SDK_VERSION.split(".")[0])


class SessionDied(Exception):
    """A step failed in a way that leaves the session unusable."""


def emit(**line):
    print(json.dumps(line, default=str), flush=True)


def dump(model):
    """A pydantic model as the JSON the server sent (camelCase keys)."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def error_fields(exc):
    # 1.x keeps the JSON-RPC error in .error; 2.x adds .code/.message too.
    error = getattr(exc, "error", None)
    return {
        "error_code": getattr(error, "code", None),
        "error_message": getattr(error, "message", str(exc)),
    }


def leaves(exc):
    """The exceptions inside (possibly nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def report_fatal(exc):
    """Prints what ended a session (the SessionDied reasons, else each
    exception with its traceback) and gives the exit status, 3."""
    died = [e for e in leaves(exc) if isinstance(e, SessionDied)]
    for leaf in died or leaves(exc):
        line = {"step": "session", "ok": False,
                "fatal": str(leaf) if died else f"{type(leaf).__name__}: {leaf}"}
        if not died:
            line["traceback"] = "".join(traceback.format_exception(leaf))[-2000:]
        emit(**line)
    return 3


async def step(name, timeout, coro_fn, **extra):
    """Runs one request; returns its result or raises SessionDied."""
    try:
        with anyio.fail_after(timeout):
            return await coro_fn()
    except ProtocolError as exc:
        emit(step=name, ok=False, error_kind=type(exc).__name__, result=None,
             **error_fields(exc), **extra)
        return None
    except TimeoutError as exc:
        raise SessionDied(f"{name}: no answer within {timeout} s") from exc
    except Exception as exc:  # noqa: BLE001 - anything else ends the session
        raise SessionDied(f"{name}: {type(exc).__name__}: {exc}") from exc


async def run_session(read, write, calls, timeout, session_id):
    async with ClientSession(read, write) as session:
        init = await step("initialize", timeout, session.initialize)
        if init is None:
            raise SessionDied("initialize was refused")
        emit(step="initialize", ok=True, error_code=None, error_message=None,
             result=dump(init), sdk=f"mcp {SDK_VERSION}", session_id=session_id())

        tools = await step("tools/list", timeout, session.list_tools)
        if tools is not None:
            emit(step="tools/list", ok=True, error_code=None, error_message=None,
                 result=[tool.name for tool in tools.tools])

        for index, call in enumerate(calls):
            tool, arguments = call["tool"], call.get("arguments", {})
            extra = {"index": index, "tool": tool, "session_id": session_id()}
            result = await step(
                "tools/call", timeout,
                lambda: session.call_tool(tool, arguments), **extra)
            if result is None:
                continue
            body = dump(result)
            if body.get("isError"):
                text = " ".join(c.get("text", "") for c in body.get("content", []))
                emit(step="tools/call", ok=False, error_kind="isError",
                     error_code=None, error_message=text, result=body, **extra)
            else:
                emit(step="tools/call", ok=True, error_code=None,
                     error_message=None, result=body, **extra)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default=os.environ.get("MEMGATE_MCP_URL"))
    parser.add_argument("--token", default=os.environ.get("MEMGATE_TOKEN"))
    parser.add_argument("--calls", default=os.environ.get("MEMGATE_CALLS", "[]"))
    parser.add_argument("--sse", action="store_true",
                        help="use the legacy SSE transport (GET /sse + POST /messages/)")
    parser.add_argument("--bearer", action="store_true",
                        help="send the token as 'Authorization: Bearer' (OAuth access tokens)")
    parser.add_argument("--step-timeout", type=float, default=10.0)
    args = parser.parse_args()
    if not args.url or not args.token:
        parser.error("a URL and a token are required")
    calls = json.loads(args.calls)
    if args.bearer:
        headers = {"Authorization": f"Bearer {args.token}"}
    else:
        headers = {"X-MCP-Token": args.token}

    status = 0
    try:
        if args.sse:
            from mcp.client.sse import sse_client

            async with sse_client(args.url, headers=headers,
                                  timeout=args.step_timeout) as (read, write):
                await run_session(read, write, calls, args.step_timeout, lambda: None)
        else:
            from mcp.client.streamable_http import streamable_http_client

            # The Mcp-Session-Id the server handed out, read off the responses
            # themselves: 2.x no longer yields a getter for it.
            seen = {}

            async def on_response(response):
                if "mcp-session-id" in response.headers:
                    seen["id"] = response.headers["mcp-session-id"]

            async with create_mcp_http_client(headers=headers) as http:
                http.event_hooks = {"request": [], "response": [on_response]}
                async with streamable_http_client(args.url, http_client=http) as streams:
                    read, write = streams[0], streams[1]
                    await run_session(read, write, calls, args.step_timeout,
                                      lambda: seen.get("id"))
    except BaseException as exc:  # noqa: BLE001 - whatever ended the session
        if not isinstance(exc, Exception):
            raise
        status = report_fatal(exc)
    if status == 0:
        emit(step="close", ok=True)
    return status


if __name__ == "__main__":
    sys.exit(anyio.run(main))
