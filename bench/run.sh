#!/usr/bin/env bash
# memgate load benchmark. One command; writes bench/RESULTS.md.
#
#   bench/run.sh            load: direct / nginx / memgate scenarios, interleaved
#                           rounds, medians, plus the invalid-token flood (≈5 min)
#   bench/run.sh rss        RSS with 100,000 tokens cached and 10,000 MCP sessions
#   bench/run.sh bench      criterion micro-benchmarks (cargo bench, short settings)
#   bench/run.sh profile    perf record of memgate under the cached GET and the
#                           rewrite POST loads; top symbols to bench/results/
#   bench/run.sh all        load, rss and bench in turn
#
# Knobs (environment): SCENARIOS (comma-separated keys, e.g. memgate-get: a quick
# partial run that only prints), ROUNDS (4), DURATION (6 s per scenario per round),
# CONNECTIONS (32), WRK_THREADS (2), THREADS (memgate [server] threads, 2),
# FLOOD_SECS (10), FLOOD_TOKENS (200), RSS_TOKENS (100000), RSS_SESSIONS (10000),
# PORT_BASE (18000), MEMGATE_BIN (use this binary and build nothing; the load
# scenarios pingora-* and tokio-* then need BARE_PROXY_BIN and TOKIO_FLOOR_BIN,
# or those examples already built under $CARGO_TARGET_DIR/release/examples),
# KEEP_WORK=1 (keep the temporary directory with configs and logs), BENCH_WRAP (a
# command to run memgate under, e.g. "heaptrack -o /tmp/mg": diagnosis only).
#
# It installs what it needs from Debian (wrk, nginx-light, python3) when missing,
# builds memgate and the two floor examples with `cargo build --release`
# unless MEMGATE_BIN is set (CARGO_TARGET_DIR defaults to
# ~/.cache/memgate/target), and kills every process it started on exit.
set -euo pipefail

MODE="${1:-load}"
case "$MODE" in
  load|rss|bench|profile|all) ;;
  -h|--help|help) sed -n '2,25p' "$0"; exit 0 ;;
  *) echo "usage: bench/run.sh [load|rss|bench|profile|all]" >&2; exit 2 ;;
esac

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/memgate/target}"

need_pkgs=()
command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx-light)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
if [ "$MODE" = profile ] && ! command -v perf >/dev/null 2>&1; then need_pkgs+=(linux-perf); fi
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "bench: installing ${need_pkgs[*]} (apt-get)" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
case "$MODE" in
  load|all) build_memgate bench floors ;;
  rss|profile) build_memgate bench ;;
esac
run_driver bench "$REPO/bench/bench.py" "$MODE"
