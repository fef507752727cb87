#!/usr/bin/env bash
# Runs wspair's benchmark suite on this machine and prints a table of results.
#
# Starts, on loopback: the baseline relay, one wspair node, and a cluster of wspair nodes with a
# redis-server; then measures throughput, latency, idle memory, connect rate, Redis commands and
# inner connections. Every figure comes from this one run. Takes about 2–3 minutes on 2 cores.
#
# Usage: bash scripts/bench.sh [RUNS]   (RUNS of each throughput and latency figure; default 3)
#        bash scripts/bench.sh sweep RATE...   (only latency, at each RATE msg/s; RUNS=3 runs each)
#        bash scripts/bench.sh failover-v1     (only one run of `failover --v1`: 1 000 cross-node
#                                               pairs of wspair.v1 clients under load, node 3 killed)
# Throughput and latency are measured for raw clients and for wspair.v1 clients (the
# wspair-client library, `--v1`), interleaved, so the v1 ratios compare figures seconds apart.
# WORKERS=N runs every server (baseline included) with N runtime worker threads (default: one
# per CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
SWEEP=()
FAILOVER_V1=
if [ "${1:-}" = sweep ]; then shift; SWEEP=("$@"); RUNS=${RUNS:-3};
elif [ "${1:-}" = failover-v1 ]; then FAILOVER_V1=1; RUNS=1;
else RUNS=${1:-3}; fi
OUT=$(mktemp -d /tmp/wspair-bench.XXXXXX)
cargo build --release -q -p wspair -p wspair-bench
BIN=./target/release
BENCH="$BIN/wspair-bench"
SECRET=bench-secret-0123456789
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
ulimit -n 20000 2>/dev/null || true
# Servers get WORKERS; the load generator keeps its default.
if [ -n "${WORKERS:-}" ]; then export TOKIO_WORKER_THREADS=$WORKERS; else unset TOKIO_WORKER_THREADS; fi

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

REDIS_PORT=16379
PORTS=($REDIS_PORT 1124 1024 11024 11025 12024 12025 13024 13025)
for port in "${PORTS[@]}"; do
    if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then
        echo "port $port is already in use; stop what listens there first" >&2
        exit 1
    fi
done
redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!)
wait_port $REDIS_PORT
"$BIN/wspair-baseline" 127.0.0.1:1124 2>/dev/null & PIDS+=($!); BASELINE=$!
RUST_LOG=warn "$BIN/wspair" serve --admin-port 0 --outer-ip 127.0.0.1 --outer-port 1024 & PIDS+=($!); SINGLE=$!
cluster_node() {
    RUST_LOG=warn "$BIN/wspair" serve --admin-port 0 --outer-ip 127.0.0.1 --outer-port "$1" \
        --inner-ip 127.0.0.1 --inner-port "$2" --inner-secret $SECRET \
        --registry-redis redis://127.0.0.1:$REDIS_PORT & PIDS+=($!)
}
cluster_node 11024 11025; NODE1=$!
cluster_node 12024 12025; NODE2=$!
cluster_node 13024 13025; NODE3=$!
for port in 1124 1024 11024 12024 13024; do wait_port $port; done
unset TOKIO_WORKER_THREADS

url() { echo "ws://127.0.0.1:$1/channel?type=$2&channelId={id}"; }
target() { echo "--app-url $(url "$1" app) --web-url $(url "$2" web) --source-ips 127.0.0.2-127.0.0.9"; }
BASE_T=$(target 1124 1124); SAME_T=$(target 1024 1024); CROSS_T=$(target 11024 12024)
# The v1 targets: the same servers, driven through the client library.
SAMEV1_T=$SAME_T; CROSSV1_T=$CROSS_T
BASE_F=; SAME_F=; CROSS_F=; SAMEV1_F=--v1; CROSSV1_F=--v1
# The protocol apart from the async library: v1 clients made of its sans-IO state machine in
# the raw mode's own I/O loop (throughput only).
SAMESIO_T=$SAME_T; SAMESIO_F=--v1-sans-io
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

# Open loop needs a write per message from the generator, which shares the two vCPUs with the
# servers: it cannot offer half of the throughput maximum (that needs batched writes), so latency
# is measured at a fixed rate; BENCHMARKS.md explains. Each run reports the CPU the servers and
# the generator used while measuring.
BASE_PIDS="--server-pid $BASELINE"; SAME_PIDS="--server-pid $SINGLE"; CROSS_PIDS="--server-pid $NODE1 --server-pid $NODE2"
SAMEV1_PIDS=$SAME_PIDS; CROSSV1_PIDS=$CROSS_PIDS
TARGETS=(BASE SAME CROSS SAMEV1 CROSSV1)
# latency_runs RATE FILE-SUFFIX: RUNS runs of each target at RATE msg/s, JSON lines in $OUT.
latency_runs() {
    echo "== latency: 100 pairs, 64 B, open loop at $1 msg/s, 5 s; $RUNS runs"
    for run in $(seq "$RUNS"); do
        for name in "${TARGETS[@]}"; do
            t=${name}_T; pids=${name}_PIDS; f=${name}_F
            $BENCH latency ${!t} ${!pids} ${!f} --pairs 100 --rate "$1" --size 64 --seconds 5 --warmup 1 --json \
                | tee -a "$OUT/latency-$name$2.json" | python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"  $name run $run: p50 {d['p50_us']:.0f} us, p99 {d['p99_us']:.0f} us (from schedule: p50 {d['corrected_p50_us']:.0f}, p99 {d['corrected_p99_us']:.0f}); CPU servers {d['server_cpu_percent']:.0f} %, generator {d['generator_cpu_percent']:.0f} %\")"
        done
    done
}
lat() { python3 -c "import json;print('\n'.join(str(json.loads(l)['$2']) for l in open('$OUT/latency-$1.json')))" | median | xargs printf %.0f; }
spread() { python3 -c "import json;v=[json.loads(l)['$2'] for l in open('$OUT/latency-$1.json')];print('%.0f–%.0f' % (min(v), max(v)))"; }

if [ -n "$FAILOVER_V1" ]; then
    # The cluster's nodes run with the default registry.node-ttl (5 s); node 3 is killed.
    echo "== failover --v1: 1000 cross-node pairs over 3 nodes, a message every 100 ms each way, kill -9 node 3"
    sleep 1.5  # every node has heartbeat and seen the others
    node_url() { echo "ws://127.0.0.1:$1/channel?type={role}&channelId={id}"; }
    $BENCH failover --v1 --node "$(node_url 11024)" --node "$(node_url 12024)" --node "$(node_url 13024)" \
        --kill-pid $NODE3 --pairs 1000 --json >"$OUT/failover-v1.json" || true
    python3 - "$OUT/failover-v1.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
r = d["resume"]
print(f"messages sent {d['sent']}, received {d['received']}, lost {d['lost']}, duplicated or reordered {d['duplicated_or_reordered']}")
print(f"resume, all {r['count']} pairs: min / p50 / p99 / max = {r['min_ms']:.0f} / {r['p50_ms']:.0f} / {r['p99_ms']:.0f} / {r['max_ms']:.0f} ms; never resumed: {d['never_resumed']}")
for case, c in d["resume_by_case"].items():
    if c["count"]:
        print(f"  {case} ({c['count']}): {c['min_ms']:.0f} / {c['p50_ms']:.0f} / {c['p99_ms']:.0f} / {c['max_ms']:.0f} ms")
print("library events:", ", ".join(f"{k} {v}" for k, v in d["library_events"].items()))
PY
    echo "raw results: $OUT"
    exit 0
fi

if [ ${#SWEEP[@]} -gt 0 ]; then
    for rate in "${SWEEP[@]}"; do latency_runs "$rate" "-$rate"; done
    echo
    echo "| msg/s | baseline p50 / p99 µs | same-node p50 / p99 µs | cross-node p50 / p99 µs | CPU % servers: baseline / same / cross | CPU % generator (cross runs) |"
    echo "|---:|---:|---:|---:|---:|---:|"
    for r in "${SWEEP[@]}"; do
        echo "| $r | $(lat BASE-$r p50_us) / $(lat BASE-$r p99_us) | $(lat SAME-$r p50_us) / $(lat SAME-$r p99_us) | $(lat CROSS-$r p50_us) / $(lat CROSS-$r p99_us) | $(lat BASE-$r server_cpu_percent) / $(lat SAME-$r server_cpu_percent) / $(lat CROSS-$r server_cpu_percent) | $(lat CROSS-$r generator_cpu_percent) |"
    done
    echo "raw results: $OUT"
    exit 0
fi

echo "== throughput: 64 B, 1000 pairs, window 16, 5 s after 1 s warm-up; $RUNS runs, interleaved"
for run in $(seq "$RUNS"); do
    for name in "${TARGETS[@]}" SAMESIO; do
        t=${name}_T; f=${name}_F
        $BENCH throughput ${!t} ${!f} --pairs 1000 --window 16 --size 64 --seconds 5 --warmup 1 --json \
            | tee -a "$OUT/throughput-$name.json" | field messages_per_second | sed "s/^/  $name run $run: /"
    done
done
TP_BASE=$(python3 -c "import json;print('\n'.join(str(json.loads(l)['messages_per_second']) for l in open('$OUT/throughput-BASE.json')))" | median)
TP_SAME=$(python3 -c "import json;print('\n'.join(str(json.loads(l)['messages_per_second']) for l in open('$OUT/throughput-SAME.json')))" | median)
TP_CROSS=$(python3 -c "import json;print('\n'.join(str(json.loads(l)['messages_per_second']) for l in open('$OUT/throughput-CROSS.json')))" | median)
TP_SAMEV1=$(python3 -c "import json;print('\n'.join(str(json.loads(l)['messages_per_second']) for l in open('$OUT/throughput-SAMEV1.json')))" | median)
TP_CROSSV1=$(python3 -c "import json;print('\n'.join(str(json.loads(l)['messages_per_second']) for l in open('$OUT/throughput-CROSSV1.json')))" | median)
TP_SAMESIO=$(python3 -c "import json;print('\n'.join(str(json.loads(l)['messages_per_second']) for l in open('$OUT/throughput-SAMESIO.json')))" | median)

RATE=${LATENCY_RATE:-20000}
latency_runs "$RATE" ""

echo "== Redis commands: 500 cross-node pairs connect, relay 20 messages each way, disconnect"
# MONITOR shows every command with its client; commands run inside scripts are tagged "lua"
# and not counted, so each count is one round trip. Heartbeats (the script on wspair:nodes) are
# counted apart.
redis-cli -p $REDIS_PORT MONITOR >"$OUT/monitor.txt" &
MONITOR=$!
sleep 0.5
# Each phase line is timestamped; INFO commandstats is read in the pauses around the relay phase.
commandstats() { redis-cli -p $REDIS_PORT INFO commandstats >"$1"; }
phases() {
    while IFS= read -r line; do
        echo "$(date +%s.%N) $line"
        case "$line" in
            "phase connected"*) commandstats "$OUT/commandstats-before.txt" ;;
            "phase relayed"*) commandstats "$OUT/commandstats-after.txt" ;;
        esac
    done
}
$BENCH hold $CROSS_T --pairs 500 --relay 20 --phase-pause 1 --linger 1 2>&1 >/dev/null | phases >"$OUT/phases.txt"
sleep 1.5
kill $MONITOR
T_CONNECTED=$(grep "phase connected" "$OUT/phases.txt" | cut -d' ' -f1)
T_RELAYED=$(grep "phase relayed" "$OUT/phases.txt" | cut -d' ' -f1)
T_CLOSING=$(grep "phase closing" "$OUT/phases.txt" | cut -d' ' -f1)
RELAYED=$(grep "phase relayed" "$OUT/phases.txt" | awk '{print $4}')
read -r PER_CONNECT PER_MESSAGE PER_DISCONNECT HEARTBEAT_PER_S < <(python3 - "$OUT/monitor.txt" "$T_CONNECTED" "$T_RELAYED" "$T_CLOSING" "$RELAYED" <<'PY'
import sys
path, connected, relayed, closing, messages = sys.argv[1], *map(float, sys.argv[2:5]), int(sys.argv[5])
phases = [0, 0, 0]
heartbeats, first, last = 0, None, None
for line in open(path):
    parts = line.split()
    if len(parts) < 4 or not parts[0][0].isdigit() or "lua]" in line:
        continue
    t = float(parts[0])
    first, last = first or t, t
    if "wspair:nodes" in line:
        heartbeats += 1
        continue
    if parts[3].strip('"').upper() in ("INFO", "MONITOR", "CONFIG", "PING", "CLIENT", "HELLO"):
        continue
    phases[0 if t < connected else 1 if t < relayed else 2] += 1
connections = 1000
print(round(phases[0] / connections, 2), round(phases[1] / messages, 6),
      round(phases[2] / connections, 2), round(heartbeats / (last - first), 1))
PY
)

# Every command but INFO itself (the first snapshot's INFO is counted in the second).
STATS_DELTA=$(python3 - "$OUT/commandstats-before.txt" "$OUT/commandstats-after.txt" <<'PY'
import re, sys
def calls(path):
    return {m[1]: int(m[2]) for m in re.finditer(r"cmdstat_(\w+):calls=(\d+)", open(path).read())}
before, after = calls(sys.argv[1]), calls(sys.argv[2])
delta = {k: after.get(k, 0) - before.get(k, 0) for k in after if k != "info"}
print(sum(delta.values()), " ".join(f"{k}={v}" for k, v in sorted(delta.items()) if v))
PY
)

echo "== inner TCP connections: 3 nodes, 1 000 cross-node pairs"
$BENCH hold $(target 11024 12024) --pairs 334 --linger 4 >/dev/null &
H1=$!
$BENCH hold $(target 12024 13024) --pairs 333 --linger 4 >/dev/null &
H2=$!
$BENCH hold $(target 13024 11024) --pairs 333 --linger 4 >/dev/null &
H3=$!
sleep 3
LINKS=$(ss -Htn state established '( dport = :11025 or dport = :12025 or dport = :13025 )' | wc -l)
wait $H1 $H2 $H3

echo "== idle memory and connect rate: 9 500 pairs (19 000 connections) into one node"
kill $BASELINE $NODE1 $NODE2 $NODE3 2>/dev/null || true
HOLD_LINE=$($BENCH hold $SAME_T --pairs 9500 --connect-rate 6000 --concurrency 512 --server-pid $SINGLE --json)
RSS=$(echo "$HOLD_LINE" | field rss_bytes_per_connection)
CPS=$(echo "$HOLD_LINE" | field connects_per_second)

ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }
cat <<TABLE

| figure | wspair | baseline | ratio | target |
|---|---:|---:|---:|---|
| same-node throughput, msg/s (median of $RUNS) | $(printf %.0f "$TP_SAME") | $(printf %.0f "$TP_BASE") | $(ratio "$TP_SAME" "$TP_BASE") | ≥ 0.8× baseline |
| cross-node throughput, msg/s (median of $RUNS) | $(printf %.0f "$TP_CROSS") | | $(ratio "$TP_CROSS" "$TP_SAME") of same-node | ≥ 0.5× same-node |
| same-node latency at $RATE msg/s: p50 / p99 µs | $(lat SAME p50_us) / $(lat SAME p99_us) | $(lat BASE p50_us) / $(lat BASE p99_us) | | p99 ≤ 1 ms |
| cross-node latency at $RATE msg/s: p50 / p99 µs | $(lat CROSS p50_us) / $(lat CROSS p99_us) | | | p99 ≤ same-node + 0.5 ms |
| v1 same-node throughput, msg/s (median of $RUNS) | $(printf %.0f "$TP_SAMEV1") | | $(ratio "$TP_SAMEV1" "$TP_SAME") of raw same-node | ≥ 0.8× raw |
| v1 cross-node throughput, msg/s (median of $RUNS) | $(printf %.0f "$TP_CROSSV1") | | $(ratio "$TP_CROSSV1" "$TP_CROSS") of raw cross-node | ≥ 0.8× raw |
| v1 same-node throughput, sans-IO machine in the raw loop, msg/s (median of $RUNS) | $(printf %.0f "$TP_SAMESIO") | | $(ratio "$TP_SAMESIO" "$TP_SAME") of raw same-node | (the protocol's own cost) |
| v1 same-node latency at $RATE msg/s: p50 / p99 µs | $(lat SAMEV1 p50_us) / $(lat SAMEV1 p99_us) | | p99 $(python3 -c "print('%+.0f' % ($(lat SAMEV1 p99_us) - $(lat SAME p99_us)))") µs against raw | p99 ≤ raw + 200 µs |
| v1 cross-node latency at $RATE msg/s: p50 / p99 µs | $(lat CROSSV1 p50_us) / $(lat CROSSV1 p99_us) | | p99 $(python3 -c "print('%+.0f' % ($(lat CROSSV1 p99_us) - $(lat CROSS p99_us)))") µs against raw | p99 ≤ raw + 200 µs |
| same-node latency from schedule: p50 / p99 µs | $(lat SAME corrected_p50_us) / $(lat SAME corrected_p99_us) | $(lat BASE corrected_p50_us) / $(lat BASE corrected_p99_us) | | |
| cross-node latency from schedule: p50 / p99 µs | $(lat CROSS corrected_p50_us) / $(lat CROSS corrected_p99_us) | | | |
| p99 range over the $RUNS runs, µs | same $(spread SAME p99_us), cross $(spread CROSS p99_us); v1 same $(spread SAMEV1 p99_us), v1 cross $(spread CROSSV1 p99_us) | $(spread BASE p99_us) | | |
| CPU while measuring latency, % of one vCPU: servers / generator | same $(lat SAME server_cpu_percent) / $(lat SAME generator_cpu_percent), cross $(lat CROSS server_cpu_percent) / $(lat CROSS generator_cpu_percent) | $(lat BASE server_cpu_percent) / $(lat BASE generator_cpu_percent) | | |
| idle RSS per connection, 19 000 connections | $(printf %.0f "$RSS") B | | | ≤ 8 KB |
| connect rate into one node, pairs verified | $(printf %.0f "$CPS") /s | | | ≥ 5 000 /s |
| Redis round trips per connect (MONITOR) | $PER_CONNECT | | | |
| Redis round trips per disconnect (MONITOR) | $PER_DISCONNECT | | | |
| Redis round trips per relayed message (MONITOR) | $PER_MESSAGE | | | 0 |
| Redis commands while $RELAYED messages were relayed, 1 s pause included (INFO commandstats delta: total, by command) | $STATS_DELTA | | | heartbeats only |
| heartbeat round trips per second, 3 nodes | $HEARTBEAT_PER_S | | | one per node per node-ttl/5 |
| inner TCP connections, 3 nodes, 1 000 cross-node pairs | $LINKS | | | ≤ 6 |
TABLE
echo "raw results: $OUT"
