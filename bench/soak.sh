#!/usr/bin/env bash
# memgate soak test (issue #8): 30 minutes of mixed traffic (valid, invalid,
# rewrites, SSE streams, token revocations) against one memgate with a SQLite
# store; reports unexpected responses, memory growth and audit completeness
# (audit rows = decisions). Writes bench/results/soak.{json,md} and
# reassembles bench/RESULTS.md. What it sends is described in bench/soak.py.
#
#   bench/soak.sh                    30 minutes
#   SOAK_MINUTES=2 bench/soak.sh     a quick check
#
# Knobs (environment): SOAK_MINUTES (30), SOAK_WARMUP (seconds before the
# "after warm-up" memory reading; min(300, duration/6)), SOAK_MEM0_WORKERS (6),
# SOAK_MEM0_RATE (30 req/s per mem0 worker), SOAK_SSE_WORKERS (2),
# SOAK_INVALID_RATE (30 req/s), SOAK_REVOKE_EVERY (15 s), SOAK_OWNER_CACHE
# (5000), THREADS (memgate [server] threads, 2), PORT_BASE (19000),
# MEMGATE_BIN (skip the build and use this binary), KEEP_WORK=1 (keep the
# temporary directory: config, SQLite file, memgate log, client decisions),
# SOAK_RESULTS_NAME (write bench/results/NAME.{json,md} instead of soak.*,
# without touching RESULTS.md; for trial runs).
#
# Needs python3 (standard library only). Builds memgate with `cargo build
# --release` (CARGO_TARGET_DIR defaults to ~/.cache/memgate/target) and kills
# every process it started on exit.
set -euo pipefail

case "${1:-}" in
  -h|--help|help) sed -n '2,26p' "$0"; exit 0 ;;
  "") ;;
  *) echo "usage: [SOAK_MINUTES=N] bench/soak.sh" >&2; exit 2 ;;
esac

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/memgate/target}"
# Its own port range, so that it can run next to bench/run.sh (18000).
export PORT_BASE="${PORT_BASE:-19000}"
command -v python3 >/dev/null 2>&1 || { echo "soak: python3 is needed" >&2; exit 1; }

if [ -z "${MEMGATE_BIN:-}" ]; then
  echo "soak: cargo build --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)" >&2
  (cd "$REPO" && cargo build --release --bin memgate --quiet)
  MEMGATE_BIN="$CARGO_TARGET_DIR/release/memgate"
fi
export MEMGATE_BIN

WORK="$(mktemp -d "${TMPDIR:-/tmp}/memgate-soak.XXXXXX")"
export BENCH_WORK="$WORK"
: >"$WORK/pids"
PY_PID=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [ -n "$PY_PID" ] && kill -0 "$PY_PID" 2>/dev/null; then
    kill -TERM "$PY_PID" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$PY_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$PY_PID" 2>/dev/null || true
  fi
  # Everything the driver started, by PID, each in its own process group.
  if [ -s "$WORK/pids" ]; then
    while read -r pid; do
      [ -n "$pid" ] || continue
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    done <"$WORK/pids"
  fi
  if [ "${KEEP_WORK:-0}" = 1 ]; then
    echo "soak: work directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

python3 "$REPO/bench/soak.py" &
PY_PID=$!
wait "$PY_PID"
