"""Run the stack's own token CLI (`scripts/mcp-token.py`), unchanged, against
the database run.sh created.

Usage: python stack_token.py PATH/TO/mcp-token.py COMMAND [ARGS...]

mcp-token.py connects with asyncpg to a fixed localhost:5432/postgres as
postgres/postgres. Here every asyncpg.connect it makes takes host, port, user,
password and database from POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER,
POSTGRES_PASSWORD and POSTGRES_DB instead; nothing else changes.
"""

import os
import runpy
import sys

import asyncpg

_connect = asyncpg.connect


async def connect(*args, **kwargs):
    env = {"host": "POSTGRES_HOST", "port": "POSTGRES_PORT", "user": "POSTGRES_USER",
           "password": "POSTGRES_PASSWORD", "database": "POSTGRES_DB"}
    for key, name in env.items():
        if name in os.environ:
            kwargs[key] = int(os.environ[name]) if key == "port" else os.environ[name]
    return await _connect(*args, **kwargs)


asyncpg.connect = connect

if __name__ == "__main__":
    script = os.path.abspath(sys.argv[1])
    sys.argv = [script, *sys.argv[2:]]
    runpy.run_path(script, run_name="__main__")
