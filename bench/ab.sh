#!/usr/bin/env bash
# Back-to-back A/B of two server binaries on the hot paths of docs/benchmarks.md: fan-out to
# 1,000 members at max rate (`fanout`), 4,000 rooms of 4 at a fixed rate (`rooms`), one room
# of 10,000 members at 2 messages a second (`light`, whose number is its p99), and 5,000
# distinct users connecting and joining rooms of 4 (`connect`: connections set up per server
# CPU second, p99 of one set-up), /ws and Socket.IO, rounds alternating A and B so that neither
# gets the quieter minutes. Prints one markdown row per measurement (deliveries — connections
# for `connect` — per server CPU second, p99) and the medians per side.
#
#   bash bench/ab.sh /tmp/switchyard-before target/release/switchyard [rounds]
#
# Same pinning as bench/run.sh (server on core 0, generator on core 1); run it on an otherwise
# idle machine. Knobs: BENCH_AB_PORT (18580), BENCH_AB_SCENARIOS ("fanout rooms").
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1 B=$2 ROUNDS=${3:-3}
PORT=${BENCH_AB_PORT:-18580}
SCENARIOS=${BENCH_AB_SCENARIOS:-"fanout rooms"}
BENCH=${CARGO_TARGET_DIR:-target}/release/switchyard-bench
WORK=$(mktemp -d /tmp/switchyard-ab.XXXXXX)
PID=
stop() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; PID=; }
trap 'stop; rm -rf "$WORK"' EXIT

serve() {
  stop
  rm -rf "$WORK/db" && mkdir -p "$WORK/db"
  taskset -c 0 env SWITCHYARD_HOST=127.0.0.1 SWITCHYARD_PORT="$PORT" DATABASE_URL="$WORK/db/s.db" \
    SWITCHYARD_PUBLISH_RATE=0 SWITCHYARD_USER_PUBLISH_RATE=0 SWITCHYARD_MAX_CONNECTIONS_PER_IP=0 \
    SWITCHYARD_NEW_CONNECTIONS_PER_IP=0 SWITCHYARD_OUTBOX_MAX_MESSAGES=8192 \
    SWITCHYARD_OUTBOX_MAX_BYTES=8388608 SWITCHYARD_WORKERS=1 SWITCHYARD_ROOM_THREADS=1 \
    RUST_LOG=warn "$1" >"$WORK/server.log" 2>&1 </dev/null &
  PID=$!
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return; sleep 0.1; done
  echo "server did not start: $(tail -3 "$WORK/server.log")" >&2; exit 1
}

run() { # side binary scenario protocol
  local side=$1 bin=$2 scenario=$3 proto=$4 out
  serve "$bin"
  case $scenario in
    fanout) out=$(taskset -c 1 "$BENCH" fanout --url "http://127.0.0.1:$PORT" --server switchyard \
      --protocol "$proto" --members 1000 --rate 2 --max true --window 16 --duration 10 --user bench \
      --pid "$PID" | tail -1) ;;
    light) out=$(taskset -c 1 "$BENCH" fanout --url "http://127.0.0.1:$PORT" --server switchyard \
      --protocol "$proto" --members 10000 --rate 2 --max false --duration 10 --user bench \
      --pid "$PID" | head -1) ;;
    rooms) out=$(taskset -c 1 "$BENCH" rooms --url "http://127.0.0.1:$PORT" --server switchyard \
      --protocol "$proto" --rooms 4000 --size 4 --rate 4000 --duration 20 --pid "$PID") ;;
    connect) out=$(taskset -c 1 "$BENCH" connect --url "http://127.0.0.1:$PORT" --server switchyard \
      --protocol "$proto" --conns 5000 --size 4 --pid "$PID" | tail -1) ;;
  esac
  stop
  python3 -c '
import json, sys
side, scenario, proto = sys.argv[1:4]
r = json.loads(sys.stdin.read())
if scenario == "connect":
    d = r["joined"] / r["server_cpu_s"] if r.get("server_cpu_s") else 0
else:
    d = r["deliveries_per_cpu_s"] or 0
p99, ok = r["p99_ms"], r["ok"]
print(f"| {side} | {scenario} | {proto} | {d:.0f} | {p99:.2f} | {ok} |")
' "$side" "$scenario" "$proto" <<<"$out" | tee -a "$WORK/rows"
}

echo "| side | scenario | protocol | per server CPU-s | p99 ms | ok |"
echo "| --- | --- | --- | ---: | ---: | --- |"
for round in $(seq 1 "$ROUNDS"); do
  for scenario in $SCENARIOS; do
    for proto in native sio; do
      if [ $((round % 2)) = 1 ]; then run A "$A" "$scenario" "$proto"; run B "$B" "$scenario" "$proto"
      else run B "$B" "$scenario" "$proto"; run A "$A" "$scenario" "$proto"; fi
    done
  done
done
python3 - "$WORK/rows" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    c = [x.strip() for x in line.strip().strip('|').split('|')]
    rows[(c[1], c[2], c[0])].append((float(c[3]), float(c[4])))
print("\n| scenario | protocol | A median | B median | B/A | A p99 median (ms) | B p99 median (ms) |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
for (scenario, proto) in sorted({(k[0], k[1]) for k in rows}):
    a = [statistics.median(x) for x in zip(*rows[(scenario, proto, "A")])]
    b = [statistics.median(x) for x in zip(*rows[(scenario, proto, "B")])]
    print(f"| {scenario} | {proto} | {a[0]:.0f} | {b[0]:.0f} | {b[0]/a[0]:.3f} | {a[1]:.1f} | {b[1]:.1f} |")
PY
