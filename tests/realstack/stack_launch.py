"""Run the Mem0 MCP Server stack's `mcp-server/main.py`, as checked out.

Usage: python stack_launch.py MCP_SERVER_DIR [main.py arguments...]

Its configuration comes from the environment as the stack documents it
(MEM0_API_URL, MCP_HOST, MCP_PORT, POSTGRES_*, PROJECT_ID_MODE,
DEFAULT_USER_ID, PROJECT_DIR). One addition: the stack (November 2025)
predates mem0's 2026 authentication and sends no credential to mem0; when
MEM0_API_KEY is set, the httpx clients it opens towards MEM0_API_URL get an
`X-API-Key` default header, which is what an operator would have to add.
The server's own code runs unchanged (`runpy`, as `__main__`).
"""

import os
import runpy
import sys


def add_mem0_key():
    key = os.environ.get("MEM0_API_KEY")
    base = os.environ.get("MEM0_API_URL", "")
    if not key:
        return
    import httpx

    original = httpx.AsyncClient.__init__

    def init(self, *args, **kwargs):
        if str(kwargs.get("base_url", "")).rstrip("/") == base.rstrip("/"):
            headers = dict(kwargs.get("headers") or {})
            headers.setdefault("X-API-Key", key)
            kwargs["headers"] = headers
        original(self, *args, **kwargs)

    httpx.AsyncClient.__init__ = init


def main():
    server_dir = os.path.abspath(sys.argv[1])
    add_mem0_key()
    sys.path.insert(0, server_dir)
    sys.argv = [os.path.join(server_dir, "main.py"), *sys.argv[2:]]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
