#!/usr/bin/env bash
# Run memgate in front of the real mem0 server and the real Mem0 MCP Server
# stack's MCP server, offline, and check the scenarios of checks.py.
# Not part of `cargo test`. See README.md in this directory.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${RS_WORK:-/tmp/memgate-realstack}
MEM0_GIT=${RS_MEM0_GIT:?set RS_MEM0_GIT to a clone of github.com/mem0ai/mem0}
STACK_GIT=${RS_STACK_GIT:?set RS_STACK_GIT to a clone of github.com/snorlak1/mem0-server-mcp}
MEM0_COMMIT=${RS_MEM0_COMMIT:-8d5b7865bd0521e75fe9ab1b260eeccc83f8a378}
STACK_COMMIT=${RS_STACK_COMMIT:-c21804f49fba5e7891f2faa315e83bdf2f060a0f}
MEM0AI_VERSION=${RS_MEM0AI_VERSION:-2.2.1}
STACK_MCP_VERSION=${RS_STACK_MCP_VERSION:-1.18.0}
MEMGATE=${RS_MEMGATE:-${CARGO_TARGET_DIR:-$HERE/../../target}/debug/memgate}
PY=${RS_PYTHON:-python3.11}
PGHOST=${RS_PGHOST:-127.0.0.1}
PGPORT=${RS_PGPORT:-5432}
PGUSER=${RS_PGUSER:-postgres}
BASE=${RS_PORT_BASE:-18000}

P_FAKE=$((BASE + 999))
P_MEM0=$((BASE + 1))          # mem0
P_STACK=$((BASE + 81))        # the stack's server, one shared mem0 id
P_STACK_U=$((BASE + 281))     # the stack's server per user, on 127.0.0.{2,3}
P_MG_MEM0=$((BASE + 0)); P_MG_MCP=$((BASE + 80)); P_MG_ADMIN=$((BASE + 464))
P_AU_MEM0=$((BASE + 100)); P_AU_MCP=$((BASE + 180)); P_AU_ADMIN=$((BASE + 465))
P_TP_MEM0=$((BASE + 200)); P_TP_MCP=$((BASE + 280)); P_TP_ADMIN=$((BASE + 466))
TPL_USERS="2 3"               # user ids that are also the last octet of their server's address

STATE="$WORK/state"
MEM0_SRC="$WORK/src/mem0-$MEM0_COMMIT/server"
STACK_SRC="$WORK/src/stack-$STACK_COMMIT"
MEM0_DB=rs_mem0app
STACK_DB=rs_stack
MEM0_API_KEY="rs-admin-$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
PIDS=()

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 2; }
psql_() { psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -v ON_ERROR_STOP=1 -qAt "$@"; }

# shellcheck disable=SC2329 # called by the EXIT trap
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

start() { # start NAME CMD... : run in the background, log to $STATE/NAME.log
  local name=$1; shift
  "$@" >"$STATE/$name.log" 2>&1 &
  PIDS+=("$!")
}

wait_http() { # wait_http URL NAME : until anything answers
  local _
  for _ in $(seq 1 120); do
    if curl -s -o /dev/null -m 2 "$1"; then return 0; fi
    sleep 0.5
  done
  tail -n 30 "$STATE/$2.log" >&2 || true
  die "$2 did not come up at $1"
}

# ---------------------------------------------------------------- sources
extract() { # extract GITDIR COMMIT DEST PATHS...
  local git=$1 commit=$2 dest=$3; shift 3
  [ -e "$dest/.done" ] && return 0
  mkdir -p "$dest"
  git -C "$git" archive "$commit" "$@" | tar -x -C "$dest"
  touch "$dest/.done"
}
log "peers: mem0 $MEM0_COMMIT (mem0ai $MEM0AI_VERSION), stack $STACK_COMMIT (mcp $STACK_MCP_VERSION)"
extract "$MEM0_GIT" "$MEM0_COMMIT" "$WORK/src/mem0-$MEM0_COMMIT" server
extract "$STACK_GIT" "$STACK_COMMIT" "$STACK_SRC" mcp-server migrations scripts/mcp-token.py

# ---------------------------------------------------------------- venvs
venv() { # venv NAME PIP-ARGS... : create $WORK/venv-NAME once, pinned by constraints-NAME.txt if any
  local dir="$WORK/venv-$1" pins="$HERE/constraints-$1.txt"; shift
  [ -x "$dir/bin/python" ] && [ -e "$dir/.done" ] && return 0
  log "creating $dir"
  "$PY" -m venv "$dir"
  "$dir/bin/pip" install -q --upgrade pip
  if [ -e "$pins" ] && [ -z "${RS_UNPINNED:-}" ]; then set -- -c "$pins" "$@"; fi
  "$dir/bin/pip" install -q "$@"
  touch "$dir/.done"
}
venv "mem0-$MEM0AI_VERSION" "mem0ai==$MEM0AI_VERSION" qdrant-client -r "$MEM0_SRC/requirements.txt"
# mcp 1.18 imports a pydantic internal that pydantic 2.13 removed; tabulate is for mcp-token.py.
venv "stack-$STACK_MCP_VERSION" -r "$STACK_SRC/mcp-server/requirements.txt" \
  "mcp[cli]==$STACK_MCP_VERSION" "pydantic<2.13" tabulate
venv client "mcp<2" httpx
MEM0_PY="$WORK/venv-mem0-$MEM0AI_VERSION/bin/python"
STACK_PY="$WORK/venv-stack-$STACK_MCP_VERSION/bin/python"
CLIENT_PY="$WORK/venv-client/bin/python"
[ -x "$MEMGATE" ] || die "no memgate binary at $MEMGATE (cargo build, or set RS_MEMGATE)"

# ---------------------------------------------------------------- state
for p in $P_FAKE $P_MEM0 $P_STACK $P_MG_MEM0 $P_MG_MCP $P_MG_ADMIN $P_AU_MEM0 $P_AU_MCP $P_AU_ADMIN \
  $P_TP_MEM0 $P_TP_MCP $P_TP_ADMIN; do
  if curl -s -o /dev/null -m 1 "http://127.0.0.1:$p/"; then die "port $p is taken (RS_PORT_BASE moves them)"; fi
done
for u in $TPL_USERS; do
  if curl -s -o /dev/null -m 1 "http://127.0.0.$u:$P_STACK_U/"; then die "127.0.0.$u:$P_STACK_U is taken"; fi
done
rm -rf "$STATE"; mkdir -p "$STATE"
for db in "$MEM0_DB" "$STACK_DB"; do
  psql_ -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
done

# ---------------------------------------------------------------- LLM + embedder
start fake "$PY" "$HERE/fake_openai.py" "$P_FAKE"
wait_http "http://127.0.0.1:$P_FAKE/v1/models" fake

# ---------------------------------------------------------------- mem0
# The 2026 server (it has alembic.ini) keeps users and API keys in PostgreSQL
# and wants JWT_SECRET; auth stays on, with ADMIN_API_KEY. October 2025's has no auth.
export POSTGRES_HOST=$PGHOST POSTGRES_PORT=$PGPORT POSTGRES_USER=$PGUSER POSTGRES_PASSWORD=${RS_PGPASSWORD:-}
if [ -e "$MEM0_SRC/alembic.ini" ]; then
  MEM0_GEN=2026
  (cd "$MEM0_SRC" && APP_DB_NAME=$MEM0_DB "$WORK/venv-mem0-$MEM0AI_VERSION/bin/alembic" upgrade head) \
    >"$STATE/alembic.log" 2>&1 || { cat "$STATE/alembic.log" >&2; die "alembic failed"; }
else
  MEM0_GEN=2025
fi
JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
start mem0 env APP_DB_NAME=$MEM0_DB JWT_SECRET="$JWT_SECRET" ADMIN_API_KEY="$MEM0_API_KEY" \
  OPENAI_API_KEY=sk-offline OPENAI_BASE_URL="http://127.0.0.1:$P_FAKE/v1" MEM0_TELEMETRY=false \
  "$MEM0_PY" "$HERE/mem0_launch.py" --server-dir "$MEM0_SRC" --port "$P_MEM0" \
  --state "$STATE/mem0" --header-log "$STATE/mem0-headers.jsonl"
wait_http "http://127.0.0.1:$P_MEM0/docs" mem0

# ---------------------------------------------------------------- the stack's MCP servers
psql_ -d "$STACK_DB" -f "$STACK_SRC/migrations/001_create_auth_tokens.sql" >/dev/null 2>&1
STACK_TOKEN="mcp_$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
psql_ -d "$STACK_DB" -c "INSERT INTO mcp_auth_tokens (token, user_id, display_name, created_by)
  VALUES ('$STACK_TOKEN', 'memgate-service', 'memgate', 'tests/realstack')"
stack() { # stack NAME HOST MEM0_ID : one server whose mem0 id is MEM0_ID
  start "$1" env -C "$STACK_SRC/mcp-server" MEM0_API_URL="http://127.0.0.1:$P_MEM0" \
    MEM0_API_KEY="$MEM0_API_KEY" MCP_HOST="$2" MCP_PORT="$4" POSTGRES_DB=$STACK_DB \
    PROJECT_ID_MODE=manual DEFAULT_USER_ID="$3" "$STACK_PY" "$HERE/stack_launch.py" . --skip-wait
}
stack stack 127.0.0.1 shared_stack "$P_STACK"
for u in $TPL_USERS; do stack "stack-$u" "127.0.0.$u" "$u" "$P_STACK_U"; done
wait_http "http://127.0.0.1:$P_STACK/" stack
for u in $TPL_USERS; do wait_http "http://127.0.0.$u:$P_STACK_U/" "stack-$u"; done

# ---------------------------------------------------------------- memgate
export RS_MEM0_API_KEY_ENV=$MEM0_API_KEY RS_STACK_TOKEN_ENV=$STACK_TOKEN
config() { # config NAME MEM0_PORT MCP_PORT ADMIN_PORT MCP_UPSTREAM ISOLATION
  cat >"$STATE/$1.toml" <<EOF
[database]
url = "sqlite://$STATE/$1.db?mode=rwc"
[mcp]
listen = "127.0.0.1:$3"
upstream = "$5"
upstream_headers = { "X-MCP-Token" = { env = "RS_STACK_TOKEN_ENV" }, "X-MCP-UserID" = "memgate-service" }
[mem0]
listen = "127.0.0.1:$2"
upstream = "http://127.0.0.1:$P_MEM0"
upstream_headers = { "X-API-Key" = { env = "RS_MEM0_API_KEY_ENV" } }
[admin]
listen = "127.0.0.1:$4"
[isolation]
mode = "$6"
[audit]
spool_dir = "$STATE/$1-spool"
EOF
  "$MEMGATE" --config "$STATE/$1.toml" migrate >/dev/null
}
token() { # token CONFIG USER : a fresh memgate token
  "$MEMGATE" --config "$STATE/$1.toml" token create --user-id "$2" --json |
    "$PY" -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}
config mg "$P_MG_MEM0" "$P_MG_MCP" "$P_MG_ADMIN" "http://127.0.0.1:$P_STACK" manual
config auto "$P_AU_MEM0" "$P_AU_MCP" "$P_AU_ADMIN" "http://127.0.0.1:$P_STACK" auto
config tpl "$P_TP_MEM0" "$P_TP_MCP" "$P_TP_ADMIN" "http://127.0.0.{user}:$P_STACK_U" manual
RS_TOKEN_ALICE=$(token mg alice); RS_TOKEN_BOB=$(token mg bob); RS_TOKEN_CAROL=$(token auto carol)
export RS_TOKEN_ALICE RS_TOKEN_BOB RS_TOKEN_CAROL
for u in $TPL_USERS; do export "RS_TOKEN_U$u=$(token tpl "$u")"; done
for name in mg auto tpl; do start "memgate-$name" "$MEMGATE" --config "$STATE/$name.toml" serve; done
wait_http "http://127.0.0.1:$P_MG_ADMIN/health" memgate-mg
wait_http "http://127.0.0.1:$P_AU_ADMIN/health" memgate-auto
wait_http "http://127.0.0.1:$P_TP_ADMIN/health" memgate-tpl

# ---------------------------------------------------------------- checks
export RS_MEM0_URL="http://127.0.0.1:$P_MEM0" RS_MEM0_API_KEY=$MEM0_API_KEY \
  RS_HEADER_LOG="$STATE/mem0-headers.jsonl" RS_MEMGATE=$MEMGATE \
  RS_MG_MEM0_URL="http://127.0.0.1:$P_MG_MEM0" RS_MG_MCP_URL="http://127.0.0.1:$P_MG_MCP" \
  RS_MG_CONFIG="$STATE/mg.toml" RS_MG_AUTO_MEM0_URL="http://127.0.0.1:$P_AU_MEM0" \
  RS_MG_AUTO_CONFIG="$STATE/auto.toml" RS_MG_TPL_MCP_URL="http://127.0.0.1:$P_TP_MCP" \
  RS_TPL_USERS="$TPL_USERS" RS_MEM0_GEN=$MEM0_GEN RS_STACK_URL="http://127.0.0.1:$P_STACK" \
  RS_STACK_PY=$STACK_PY RS_STACK_TOKEN_CLI="$STACK_SRC/scripts/mcp-token.py" RS_HERE=$HERE \
  RS_STACK_DB_URL="postgres://$PGUSER${RS_PGPASSWORD:+:$RS_PGPASSWORD}@$PGHOST:$PGPORT/$STACK_DB" \
  POSTGRES_DB=$STACK_DB
log "mem0ai $("$MEM0_PY" -c 'import importlib.metadata as m; print(m.version("mem0ai"))'), \
stack mcp $("$STACK_PY" -c 'import importlib.metadata as m; print(m.version("mcp"))'), \
client mcp $("$CLIENT_PY" -c 'import importlib.metadata as m; print(m.version("mcp"))')"
rc=0
"$CLIENT_PY" "$HERE/checks.py" "$@" || rc=$?
log "logs in $STATE"
exit "$rc"
