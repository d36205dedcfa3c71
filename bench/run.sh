#!/usr/bin/env bash
# The benchmark of docs/benchmarks.md (issue #7): Switchyard (native /ws and Socket.IO) against
# the Node socket.io@4 reference server (bench/node), in one run, on this machine, over loopback.
#
#   bash bench/run.sh            # the full run (~8.5 minutes on 2 cores, plus the first build)
#   BENCH_QUICK=1 bash bench/run.sh   # tiny sizes, ~1.5 minutes: checks the script itself
#
# Knobs (environment): BENCH_ONLY (scenarios to run, e.g. "connect operations"; all when unset),
# CARGO_TARGET_DIR, BENCH_SKIP_BUILD=1 (use the built binaries),
# BENCH_SWITCHYARD_BIN (another server binary), BENCH_OUT, BENCH_PLOTS, BENCH_FANOUT_SIZES,
# BENCH_IDLE_SIZES, BENCH_CONNECT_CONNS, BENCH_FANOUT_RATE, BENCH_WINDOW, BENCH_SERVER_CORE,
# BENCH_GEN_CORE, the ports BENCH_SWITCHYARD_PORT / BENCH_NODE_PORT / BENCH_FLOOR_PORT, and
# SWITCHYARD_WORKERS / _ROOM_THREADS / _OUTBOX_MAX_MESSAGES / _OUTBOX_MAX_BYTES for the server
# (defaults: 1, 1, 8192, 8 MiB). The operations scenario runs a second time on PostgreSQL:
# BENCH_PG_ADMIN_URL (postgres://postgres@127.0.0.1:5432/postgres) is where the script drops and
# creates BENCH_PG_DB (switchyard_bench) with psql before that run; BENCH_PG=0 skips it.
#
# Every server runs pinned to core BENCH_SERVER_CORE (0) and is started fresh for each scenario;
# every load generator is pinned to BENCH_GEN_CORE (1). Results: one JSON line per measurement
# in BENCH_OUT (bench/results/latest.jsonl), then `switchyard-bench report` writes the plots
# (docs/benchmarks/*.svg) and prints the markdown tables (also saved next to the results).
# Run it on an otherwise idle machine: anything else on either core skews the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=${BENCH_QUICK:-0}
SERVER_CORE=${BENCH_SERVER_CORE:-0}
GEN_CORE=${BENCH_GEN_CORE:-1}
SY_PORT=${BENCH_SWITCHYARD_PORT:-18480}
NODE_PORT=${BENCH_NODE_PORT:-18481}
FLOOR_PORT=${BENCH_FLOOR_PORT:-18482}
if [ "$QUICK" = 1 ]; then
  OUT=${BENCH_OUT:-bench/results/quick.jsonl}
  PLOTS=${BENCH_PLOTS:-bench/results/quick}
  FANOUT_SIZES=${BENCH_FANOUT_SIZES:-"50 200"}
  PHASE_S=2; ROOMS=100; ROOMS_RATE=400; ROOMS_S=2
  IDLE_SIZES=${BENCH_IDLE_SIZES:-"1000 2000"}; OPS=50; OPS_S=2
  CONNECT_CONNS=${BENCH_CONNECT_CONNS:-500}
else
  OUT=${BENCH_OUT:-bench/results/latest.jsonl}
  PLOTS=${BENCH_PLOTS:-docs/benchmarks}
  FANOUT_SIZES=${BENCH_FANOUT_SIZES:-"100 1000 10000"}
  PHASE_S=10; ROOMS=4000; ROOMS_RATE=4000; ROOMS_S=20
  IDLE_SIZES=${BENCH_IDLE_SIZES:-"10000 19000"}; OPS=1000; OPS_S=20
  CONNECT_CONNS=${BENCH_CONNECT_CONNS:-5000}
fi
PG=${BENCH_PG:-1}
PG_ADMIN_URL=${BENCH_PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_DB=${BENCH_PG_DB:-switchyard_bench}
# Light fanout rate (publishes/s): low enough that Node keeps up with 10,000 members.
FANOUT_RATE=${BENCH_FANOUT_RATE:-2}
# Max-rate phase: messages per member in flight (published, not yet received everywhere).
WINDOW=${BENCH_WINDOW:-16}

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SY_BIN=${BENCH_SWITCHYARD_BIN:-$CARGO_TARGET_DIR/release/switchyard}
BENCH=$CARGO_TARGET_DIR/release/switchyard-bench
WORK=$(mktemp -d /tmp/switchyard-bench.XXXXXX)
SERVER_PID=
FAILED=0

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

stop_server() {
  if [ -n "$SERVER_PID" ] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "WARNING: the server had exited by itself: $(tail -3 "$WORK/server.log" | tr '\n' ' ')"
  fi
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
}
cleanup() { stop_server; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { log "server exited at start:"; tail -5 "$WORK/server.log" >&2; return 1; }
    sleep 0.1
  done
  log "server did not listen on $1 within 30 s"; return 1
}

# Stops the running server and starts `env VAR=value … command` pinned to the server core,
# listening on PORT (KNOB: the variable that sets it, for the message when it is taken).
serve_pinned() {
  local port="$1" knob="$2"; shift 2
  stop_server
  port_free "$port" || { log "port $port is taken ($knob)"; return 1; }
  taskset -c "$SERVER_CORE" env "$@" >"$WORK/server.log" 2>&1 </dev/null &
  SERVER_PID=$!
  wait_port "$port"
}

# A fresh Switchyard (new database) pinned to the server core; extra VAR=value arguments.
start_switchyard() {
  stop_server # before its database goes
  rm -rf "$WORK/db" && mkdir -p "$WORK/db"
  serve_pinned "$SY_PORT" BENCH_SWITCHYARD_PORT \
    SWITCHYARD_HOST=127.0.0.1 SWITCHYARD_PORT="$SY_PORT" DATABASE_URL="$WORK/db/switchyard.db" \
    SWITCHYARD_PUBLISH_RATE=0 SWITCHYARD_USER_PUBLISH_RATE=0 \
    SWITCHYARD_MAX_CONNECTIONS_PER_IP=0 SWITCHYARD_NEW_CONNECTIONS_PER_IP=0 \
    SWITCHYARD_OUTBOX_MAX_MESSAGES="${SWITCHYARD_OUTBOX_MAX_MESSAGES:-8192}" \
    SWITCHYARD_OUTBOX_MAX_BYTES="${SWITCHYARD_OUTBOX_MAX_BYTES:-8388608}" \
    SWITCHYARD_WORKERS="${SWITCHYARD_WORKERS:-1}" SWITCHYARD_ROOM_THREADS="${SWITCHYARD_ROOM_THREADS:-1}" \
    SWITCHYARD_SHUTDOWN_TIMEOUT_MS=2000 RUST_LOG="${RUST_LOG:-warn}" "$@" "$SY_BIN"
}

start_node() {
  serve_pinned "$NODE_PORT" BENCH_NODE_PORT PORT="$NODE_PORT" node bench/node/server.mjs
}

# The floor: a bare epoll loop in the bench tool (bench/src/floor.rs): fan-out, rooms and
# connection set-up (extra arguments: `--presence true`).
start_floor() {
  serve_pinned "$FLOOR_PORT" BENCH_FLOOR_PORT "$BENCH" floor-server --port "$FLOOR_PORT" "$@"
}

# Runs the generator pinned to its core, appends its JSON lines, notes failures (the run goes on).
gen() {
  local what="$1"; shift
  log "$what"
  if ! timeout 300 taskset -c "$GEN_CORE" "$BENCH" "$@" --pid "$SERVER_PID" >>"$OUT" 2>"$WORK/gen.err"; then
    FAILED=$((FAILED + 1))
    log "FAILED: $what: $(tail -3 "$WORK/gen.err")"
  fi
}

# target name, protocol, starter
TARGETS=("switchyard native start_switchyard" "switchyard sio start_switchyard" "node sio start_node"
  "floor native start_floor")

# Whether scenario $1 is part of this run (BENCH_ONLY).
want() { [ -z "${BENCH_ONLY:-}" ] || [[ " $BENCH_ONLY " == *" $1 "* ]]; }

started=$(date +%s)
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  cargo build --release -p switchyard --bin switchyard
  cargo build --release -p switchyard-bench
fi
if [ ! -d bench/node/node_modules/socket.io ]; then
  log "installing bench/node packages"
  npm ci --prefix bench/node --no-audit --no-fund
fi
command -v taskset >/dev/null || { log "taskset (util-linux) is needed"; exit 1; }
mkdir -p "$(dirname "$OUT")"
: >"$OUT"
"$BENCH" machine --node-dir bench/node >>"$OUT"
measure_started=$(date +%s)

for t in "${TARGETS[@]}"; do
  read -r server proto starter <<<"$t"
  url="http://127.0.0.1:$SY_PORT"; [ "$server" = node ] && url="http://127.0.0.1:$NODE_PORT"
  [ "$server" = floor ] && url="http://127.0.0.1:$FLOOR_PORT"
  want fanout && for n in $FANOUT_SIZES; do
    $starter
    # One identity for every member: the Node reference has no presence, so Switchyard's
    # (per user) is kept out of this comparison; docs/benchmarks.md says what it costs.
    gen "fanout $server/$proto $n members" fanout --url "$url" --server "$server" --protocol "$proto" \
      --members "$n" --rate "$FANOUT_RATE" --max true --window "$WINDOW" --duration "$PHASE_S" --user bench
  done
  # Distinct users (presence on), rooms of four: connections accepted and joined a second.
  # The floor announces arrivals as presence does (one write per room-mate) and is checked the
  # same way; the floor without that I/O is measured too, as `floor-bare`.
  if want connect && [ "$server" = floor ]; then
    start_floor --presence true
    gen "connect floor/native $CONNECT_CONNS users, presence" connect --url "$url" --server floor \
      --protocol native --conns "$CONNECT_CONNS" --size 4 --presence true
    start_floor
    gen "connect floor-bare/native $CONNECT_CONNS users" connect --url "$url" --server floor-bare \
      --protocol native --conns "$CONNECT_CONNS" --size 4
  elif want connect; then
    $starter
    gen "connect $server/$proto $CONNECT_CONNS users" connect --url "$url" --server "$server" \
      --protocol "$proto" --conns "$CONNECT_CONNS" --size 4
  fi
  want rooms && $starter && gen "rooms $server/$proto $ROOMS x 4" rooms --url "$url" --server "$server" --protocol "$proto" \
    --rooms "$ROOMS" --size 4 --rate "$ROOMS_RATE" --duration "$ROOMS_S"
  # The floor holds connections in a few bytes each and does nothing else: no memory floor.
  [ "$server" = floor ] && continue
  want idle && for n in $IDLE_SIZES; do
    $starter
    gen "idle $server/$proto $n connections" idle --url "$url" --server "$server" --protocol "$proto" \
      --conns "$n" --procs $(( (n + 4999) / 5000 ))
    # The browser's path (socket.io-client's default): long-polling first, then the upgrade.
    if [ "$proto" = sio ]; then
      $starter
      gen "idle $server/$proto $n connections via polling" idle --url "$url" --server "$server" \
        --protocol "$proto" --conns "$n" --procs $(( (n + 4999) / 5000 )) --via-polling true
    fi
  done
done

# Operations: Switchyard only (the reference has none); on SQLite (the default), then on
# PostgreSQL, a fresh database each run (the server migrates it at start). PostgreSQL's processes
# are not pinned (a shared service): their CPU is summed apart, from the backends of $PG_DB.
printf '[kinds.bench]\nrunner = "external"\nstall_timeout_secs = 600\n' >"$WORK/operations.toml"
want operations || PG=0
want operations && start_switchyard SWITCHYARD_OPERATIONS_FILE="$WORK/operations.toml"
want operations && gen "operations switchyard $OPS on SQLite" operations --url "http://127.0.0.1:$SY_PORT" --kind bench \
  --operations "$OPS" --workers 20 --rate 10 --duration "$OPS_S" --database sqlite
stop_server
if [ "$PG" = 1 ]; then
  if ! command -v psql >/dev/null; then
    FAILED=$((FAILED + 1)); log "FAILED: operations on PostgreSQL: psql is needed (or BENCH_PG=0)"
  elif ! psql -q "$PG_ADMIN_URL" -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" \
    -c "CREATE DATABASE $PG_DB" >"$WORK/psql.log" 2>&1; then
    FAILED=$((FAILED + 1)); log "FAILED: operations on PostgreSQL: $(tail -2 "$WORK/psql.log")"
  else
    # After the SQLite URL start_switchyard sets: the later assignment wins (env(1)).
    start_switchyard SWITCHYARD_OPERATIONS_FILE="$WORK/operations.toml" \
      DATABASE_URL="${PG_ADMIN_URL%/*}/$PG_DB"
    gen "operations switchyard $OPS on PostgreSQL" operations --url "http://127.0.0.1:$SY_PORT" \
      --kind bench --operations "$OPS" --workers 20 --rate 10 --duration "$OPS_S" \
      --database postgres --db-processes " $PG_DB "
    stop_server
    psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
  fi
fi

log "measured in $(( $(date +%s) - measure_started )) s ($(( $(date +%s) - started )) s with the build)"
mkdir -p "$PLOTS"
"$BENCH" report "$OUT" --out "$PLOTS" | tee "${OUT%.jsonl}.md"
if [ "$FAILED" -gt 0 ]; then
  log "$FAILED scenario(s) failed their check; see first_problem in $OUT"
  exit 1
fi
