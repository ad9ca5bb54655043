# Shared by bench/run.sh and bench/soak.sh (sourced, not run): build memgate
# unless MEMGATE_BIN is given, then run a Python driver in a temporary work
# directory and kill everything it started when it ends, however it ends.

# build_memgate LABEL [floors]: sets and exports MEMGATE_BIN and, with
# `floors` (the load benchmark), BARE_PROXY_BIN (examples/bare_proxy.rs,
# pingora) and TOKIO_FLOOR_BIN (examples/tokio_floor.rs, hand-written HTTP/1
# on tokio). Without MEMGATE_BIN it builds all three. With MEMGATE_BIN it
# builds nothing: the floors are the variables' binaries, else ones already
# built in $CARGO_TARGET_DIR/release/examples, and a floor scenario without
# its binary stops the run before anything starts.
build_memgate() {
  local label="$1" floors="${2:-}"
  if [ -z "${MEMGATE_BIN:-}" ]; then
    echo "$label: cargo build --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)" >&2
    (cd "$REPO" && cargo build --release --bin memgate --example bare_proxy --example tokio_floor --quiet)
    MEMGATE_BIN="$CARGO_TARGET_DIR/release/memgate"
  fi
  [ -x "$MEMGATE_BIN" ] || { echo "$label: MEMGATE_BIN=$MEMGATE_BIN is not an executable" >&2; exit 2; }
  export MEMGATE_BIN
  [ "$floors" = floors ] || return 0
  BARE_PROXY_BIN="${BARE_PROXY_BIN:-$CARGO_TARGET_DIR/release/examples/bare_proxy}"
  TOKIO_FLOOR_BIN="${TOKIO_FLOOR_BIN:-$CARGO_TARGET_DIR/release/examples/tokio_floor}"
  export BARE_PROXY_BIN TOKIO_FLOOR_BIN
  local wanted="${SCENARIOS:-pingora-,tokio-}" var bin
  for var in BARE_PROXY_BIN TOKIO_FLOOR_BIN; do
    bin="${!var}"
    case "$var,$wanted" in
      BARE_PROXY_BIN,*pingora-*|TOKIO_FLOOR_BIN,*tokio-*) ;;
      *) continue ;;
    esac
    if [ ! -x "$bin" ]; then
      echo "$label: $var=$bin is not built; build it with" \
        "\`cargo build --release --example bare_proxy --example tokio_floor\`," \
        "set $var, or leave its scenarios out of SCENARIOS" >&2
      exit 2
    fi
  done
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
