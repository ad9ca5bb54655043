#!/usr/bin/env bash
# memgate soak test: 30 minutes of mixed traffic (valid, invalid,
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

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
build_memgate soak
run_driver soak "$REPO/bench/soak.py"
