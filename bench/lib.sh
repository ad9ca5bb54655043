# Shared by bench/run.sh and bench/soak.sh (sourced, not run): build memgate
# unless MEMGATE_BIN is given, then run a Python driver in a temporary work
# directory and kill everything it started when it ends, however it ends.

# build_memgate LABEL: sets and exports MEMGATE_BIN, and the load benchmark's
# floors BARE_PROXY_BIN (examples/bare_proxy.rs, pingora) and TOKIO_FLOOR_BIN
# (examples/tokio_floor.rs, hand-written HTTP/1 on tokio).
build_memgate() {
  if [ -z "${MEMGATE_BIN:-}" ] || [ -z "${BARE_PROXY_BIN:-}" ] || [ -z "${TOKIO_FLOOR_BIN:-}" ]; then
    echo "$1: cargo build --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)" >&2
    (cd "$REPO" && cargo build --release --bin memgate --example bare_proxy --example tokio_floor --quiet)
    MEMGATE_BIN="${MEMGATE_BIN:-$CARGO_TARGET_DIR/release/memgate}"
    BARE_PROXY_BIN="${BARE_PROXY_BIN:-$CARGO_TARGET_DIR/release/examples/bare_proxy}"
    TOKIO_FLOOR_BIN="${TOKIO_FLOOR_BIN:-$CARGO_TARGET_DIR/release/examples/tokio_floor}"
  fi
  export MEMGATE_BIN BARE_PROXY_BIN TOKIO_FLOOR_BIN
}

# run_driver LABEL DRIVER [ARGS...]: runs `python3 DRIVER ARGS` with
# BENCH_WORK set; the driver records every process it starts (each in its own
# process group) in $BENCH_WORK/pids. KEEP_WORK=1 keeps the directory.
run_driver() {
  DRIVER_LABEL="$1"
  shift
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/memgate-$DRIVER_LABEL.XXXXXX")"
  export BENCH_WORK="$WORK"
  : >"$WORK/pids"
  PY_PID=""
  trap driver_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM HUP
  python3 "$@" &
  PY_PID=$!
  wait "$PY_PID"
}

driver_cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [ -n "$PY_PID" ] && kill -0 "$PY_PID" 2>/dev/null; then
    kill -TERM "$PY_PID" 2>/dev/null || true
    # The driver stops memgate gracefully (a soak checks the audit flush).
    for _ in $(seq 1 40); do kill -0 "$PY_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$PY_PID" 2>/dev/null || true
  fi
  if [ -s "$WORK/pids" ]; then
    while read -r pid; do
      [ -n "$pid" ] || continue
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    done <"$WORK/pids"
  fi
  if [ "${KEEP_WORK:-0}" = 1 ]; then
    echo "$DRIVER_LABEL: work directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
