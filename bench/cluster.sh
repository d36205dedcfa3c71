#!/usr/bin/env bash
# The cluster section of docs/benchmarks.md (issue #16): one room of MEMBERS members whose
# publisher is on node 1 and every other member on the other nodes, so every delivery crosses
# nodes through Redis. Four set-ups, each started fresh:
#   single        one node, no Redis (SQLite): the baseline
#   single-redis  one node in cluster mode (its own Redis): what ordering by Redis costs alone
#   cluster-2     two nodes: publisher on n1, members on n2
#   cluster-3     three nodes: publisher on n1, members on n2 and n3
# Each runs a light fixed-rate phase (latency) and a max-rate phase (throughput, CPU per
# delivery), like the fan-out scenario of bench/run.sh. Every node and a Redis of its own run
# pinned to core BENCH_SERVER_CORE (0) and the generator to BENCH_GEN_CORE (1); the server CPU
# of a line is the sum over the nodes and Redis. PostgreSQL (the machine's) holds a database of
# the run's own, dropped at the end.
#
#   bash bench/cluster.sh    # ~3 minutes after the build
#
# Knobs: BENCH_SKIP_BUILD=1, BENCH_OUT (bench/results/cluster.jsonl), BENCH_CLUSTER_MEMBERS
# (1000), BENCH_CLUSTER_RATE (20 publishes/s), BENCH_WINDOW (16), BENCH_PHASE_S (10),
# BENCH_CLUSTER_PORT (18490: Redis; nodes on the next three), BENCH_PG_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SERVER_CORE=${BENCH_SERVER_CORE:-0}
GEN_CORE=${BENCH_GEN_CORE:-1}
BASE=${BENCH_CLUSTER_PORT:-18490}
MEMBERS=${BENCH_CLUSTER_MEMBERS:-1000}
RATE=${BENCH_CLUSTER_RATE:-20}
WINDOW=${BENCH_WINDOW:-16}
PHASE_S=${BENCH_PHASE_S:-10}
OUT=${BENCH_OUT:-bench/results/cluster.jsonl}
PG=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SY_BIN=$CARGO_TARGET_DIR/release/switchyard
BENCH=$CARGO_TARGET_DIR/release/switchyard-bench
WORK=$(mktemp -d /tmp/switchyard-cluster-bench.XXXXXX)
DB=sybench_$$
PIDS=()
REDIS_PID=

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

stop_all() {
  for p in "${PIDS[@]}" $REDIS_PID; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}" $REDIS_PID; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
  REDIS_PID=
}
cleanup() {
  stop_all
  psql -q "$PG/test" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  log "nothing listens on $1 after 30 s: $(tail -3 "$WORK"/*.log | tr '\n' ' ')"
  return 1
}

start_redis() {
  taskset -c "$SERVER_CORE" redis-server --port "$BASE" --bind 127.0.0.1 --save "" \
    --appendonly no >"$WORK/redis.log" 2>&1 </dev/null &
  REDIS_PID=$!
  wait_port "$BASE"
}

# start_node N [cluster]: node nN on port BASE+N; with `cluster`, on Redis and PostgreSQL.
start_node() {
  local n=$1 mode=${2:-} port=$((BASE + $1))
  local env=(SWITCHYARD_HOST=127.0.0.1 SWITCHYARD_PORT="$port" SWITCHYARD_NODE_ID="n$n"
    SWITCHYARD_PUBLISH_RATE=0 SWITCHYARD_USER_PUBLISH_RATE=0
    SWITCHYARD_MAX_CONNECTIONS_PER_IP=0 SWITCHYARD_NEW_CONNECTIONS_PER_IP=0
    SWITCHYARD_OUTBOX_MAX_MESSAGES=8192 SWITCHYARD_OUTBOX_MAX_BYTES=8388608
    SWITCHYARD_WORKERS=1 SWITCHYARD_ROOM_THREADS=1 SWITCHYARD_SHUTDOWN_TIMEOUT_MS=2000
    RUST_LOG="${RUST_LOG:-warn}")
  if [ "$mode" = cluster ]; then
    env+=(DATABASE_URL="$PG/$DB" SWITCHYARD_REDIS_URL="redis://127.0.0.1:$BASE"
      SWITCHYARD_REDIS_PREFIX="bench$$")
  else
    rm -rf "$WORK/db" && mkdir -p "$WORK/db"
    env+=(DATABASE_URL="$WORK/db/switchyard.db")
  fi
  taskset -c "$SERVER_CORE" env "${env[@]}" "$SY_BIN" >"$WORK/n$n.log" 2>&1 </dev/null &
  PIDS+=($!)
  wait_port "$port"
}

# run LABEL: the fan-out with the publisher on node 1 and members on the other nodes started.
run() {
  local label=$1 others=() extra=()
  for i in "${!PIDS[@]}"; do
    [ "$i" = 0 ] && continue
    others+=("http://127.0.0.1:$((BASE + i + 1))")
    extra+=("${PIDS[$i]}")
  done
  [ -n "$REDIS_PID" ] && extra+=("$REDIS_PID")
  log "$label: $MEMBERS members, publisher on n1, members on ${#others[@]} other node(s)"
  timeout 300 taskset -c "$GEN_CORE" "$BENCH" fanout --url "http://127.0.0.1:$((BASE + 1))" \
    --server "$label" --protocol native --members "$MEMBERS" --rate "$RATE" --max true \
    --window "$WINDOW" --duration "$PHASE_S" --user bench --pid "${PIDS[0]}" \
    --extra-pids "$(IFS=,; echo "${extra[*]}")" --others "$(IFS=,; echo "${others[*]}")" >>"$OUT"
  stop_all
}

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "building release binaries"
  cargo build --release -p switchyard --bin switchyard
  cargo build --release -p switchyard-bench
fi
command -v taskset >/dev/null || { log "taskset (util-linux) is needed"; exit 1; }
pg_isready -h 127.0.0.1 -p 5432 -q || { log "PostgreSQL is not running on 127.0.0.1:5432"; exit 1; }
psql -q "$PG/test" -c "CREATE DATABASE $DB" >/dev/null
mkdir -p "$(dirname "$OUT")"
: >"$OUT"
"$BENCH" machine >>"$OUT"

start_node 1
run single
start_redis; start_node 1 cluster
run single-redis
start_redis; start_node 1 cluster; start_node 2 cluster
run cluster-2
start_redis; start_node 1 cluster; start_node 2 cluster; start_node 3 cluster
run cluster-3

# The table of docs/benchmarks.md's cluster section.
node -e '
const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse);
console.log("| set-up | mode | publishes/s | deliveries/s | p50 ms | p99 ms | server CPU-s | deliveries per server CPU-s | ok |");
console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
for (const l of lines.filter((l) => l.scenario === "fanout")) {
  const f = (x, d = 1) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
  console.log(`| ${l.server} (${l.nodes} node${l.nodes > 1 ? "s" : ""}) | ${l.mode} | ${f(l.publishes_per_s)} | ${f(l.deliveries_per_s, 0)} | ${f(l.p50_ms, 2)} | ${f(l.p99_ms, 2)} | ${f(l.server_cpu_s, 2)} | ${f(l.deliveries_per_cpu_s, 0)} | ${l.ok} |`);
}' "$OUT" | tee "${OUT%.jsonl}.md"
