"""Serve mem0's own `server/main.py`, as checked out, on this machine.

Usage: python mem0_launch.py --server-dir DIR --port N --state DIR [--header-log FILE]

The routes, models, authentication and Memory code are mem0's, untouched.
Two things differ from mem0's docker-compose, both outside its code:

  * The vector store. main.py asks for pgvector (and, in 1.0.x, neo4j for the
    graph); neither is needed to exercise the REST contract, so the config
    main.py hands to `Memory.from_config` gets mem0's built-in local qdrant
    store (an in-process store under STATE/qdrant) instead, and no graph store.
  * The LLM and embedder stay mem0's "openai" providers; OPENAI_BASE_URL (set
    by run.sh) points them at fake_openai.py.

--header-log appends one JSON line per request: method, path and the SHA-256
(first 16 hex digits) of every X-API-Key header mem0 received, so a test can
tell whose key reached mem0 without writing a key to disk.
"""

import argparse
import copy
import hashlib
import importlib.util
import json
import os
import sys
import threading


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--server-dir", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--header-log")
    return p.parse_args()


def local_store_config(config, state):
    config = copy.deepcopy(dict(config or {}))
    config.pop("graph_store", None)
    config["vector_store"] = {
        "provider": "qdrant",
        "config": {
            "collection_name": "realstack",
            "path": os.path.join(state, "qdrant"),
            "on_disk": True,
        },
    }
    config["history_db_path"] = os.path.join(state, "history.db")
    return config


class HeaderLog:
    """ASGI wrapper recording which X-API-Key values arrived (hashed)."""

    def __init__(self, app, path):
        self.app, self.path, self.lock = app, path, threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "http":
            keys = [hashlib.sha256(v).hexdigest()[:16]
                    for k, v in scope.get("headers", []) if k.lower() == b"x-api-key"]
            line = json.dumps({"method": scope.get("method"), "path": scope.get("path"),
                               "query": scope.get("query_string", b"").decode("latin-1"),
                               "x_api_key_sha256": keys})
            with self.lock, open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        await self.app(scope, receive, send)


def main():
    args = parse_args()
    state = os.path.abspath(args.state)
    header_log = os.path.abspath(args.header_log) if args.header_log else None
    os.makedirs(state, exist_ok=True)
    os.environ.setdefault("MEM0_TELEMETRY", "false")
    os.environ.setdefault("OPENAI_API_KEY", "sk-offline")
    os.environ["HISTORY_DB_PATH"] = os.path.join(state, "history.db")

    from mem0 import Memory

    build = Memory.from_config.__func__

    def from_config(cls, config_dict):
        return build(cls, local_store_config(config_dict, state))

    Memory.from_config = classmethod(from_config)

    server_dir = os.path.abspath(args.server_dir)
    sys.path.insert(0, server_dir)
    os.chdir(server_dir)  # main.py may read .env / relative files from here
    spec = importlib.util.spec_from_file_location("main", os.path.join(server_dir, "main.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["main"] = module
    spec.loader.exec_module(module)

    app = module.app
    if header_log:
        app = HeaderLog(app, header_log)

    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
