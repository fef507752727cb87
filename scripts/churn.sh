#!/usr/bin/env bash
# Churn and failover figures for wspair's cluster mode (BENCHMARKS.md, "Churn and failover").
#
# Every measurement starts its own redis-server and wspair nodes on loopback (ports 26379 and
# 21024-23025, away from bench.sh's), with RUST_LOG=wspair=info; node logs and raw JSON stay in
# the directory printed at the end (/tmp/wspair-churn.*).
#
# Usage: bash scripts/churn.sh failover [RUNS]  kill -9 one of 3 nodes under 1 000 cross-node pairs,
#                                               RUNS times (default 3); medians. About 10 s a run.
#        bash scripts/churn.sh connect [RUNS]   connects/s into one node of a 2-node cluster, every
#                                               pair verified by a message each way while timed;
#                                               64 and 256 pairs opened at once (default 3 runs)
#        bash scripts/churn.sh redis [PAIRS]    Redis round trips per connect and per disconnect,
#                                               from INFO commandstats (default 1 000 pairs): cold
#                                               (first after start), then warm, cross- and same-node
#        bash scripts/churn.sh                  all three
# Environment: NODE_TTL (registry.node-ttl, default 5s), JITTER_MS (failover: a reconnecting
# client waits a random 0..JITTER_MS ms, default 100), PAIRS (failover and connect pairs).
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-all}
OUT=$(mktemp -d /tmp/wspair-churn.XXXXXX)
cargo build --release -q -p wspair -p wspair-bench
BIN=./target/release
BENCH="$BIN/wspair-bench"
SECRET=bench-secret-0123456789
NODE_TTL=${NODE_TTL:-5s}
REDIS_PORT=26379
SOURCES="--source-ips 127.0.0.2-127.0.0.65"
ulimit -n 20000 2>/dev/null || true
unset TOKIO_WORKER_THREADS

PIDS=()
stop_all() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap stop_all EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
check_free() {
    for port in $REDIS_PORT 21024 21025 22024 22025 23024 23025; do
        if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then
            echo "port $port is already in use; stop what listens there first" >&2
            exit 1
        fi
    done
}
# start_cluster N LOG-PREFIX: redis and N nodes (outer ports 21024, 22024, ...); sets REDIS, NODE[i].
start_cluster() {
    check_free
    redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no >"$OUT/$2-redis.log" 2>&1 & PIDS+=($!); REDIS=$!
    wait_port $REDIS_PORT
    NODE=()
    for i in $(seq "$1"); do
        RUST_LOG=wspair=info "$BIN/wspair" serve --admin-port 0 --outer-ip 127.0.0.1 --outer-port "2${i}024" \
            --inner-ip 127.0.0.1 --inner-port "2${i}025" --inner-secret $SECRET \
            --registry-redis redis://127.0.0.1:$REDIS_PORT --registry-node-ttl "$NODE_TTL" \
            >"$OUT/$2-node$i.log" 2>&1 & PIDS+=($!); NODE[i]=$!
    done
    for i in $(seq "$1"); do wait_port "2${i}024"; done
    # Every node has heartbeat at least once and seen the others.
    sleep 1.5
}
url() { echo "ws://127.0.0.1:$1/channel?type=$2&channelId={id}"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# Connections the kernel dropped because a listen queue was full (each client then retries its
# SYN after 1 s); system-wide.
listen_overflows() { awk '/^TcpExt:/ {if (!h) {for (i = 1; i <= NF; i++) n[i] = $i; h = 1} else {for (i = 1; i <= NF; i++) if (n[i] == "ListenOverflows") print $i}}' /proc/net/netstat; }

failover() {
    local runs=${1:-3} pairs=${PAIRS:-1000} jitter=${JITTER_MS:-100}
    echo "== failover: $pairs cross-node pairs over 3 nodes, kill -9 node 3, reconnect jitter 0-$jitter ms, node-ttl $NODE_TTL; $runs runs"
    for run in $(seq "$runs"); do
        start_cluster 3 "failover$run"
        local overflows0
        overflows0=$(listen_overflows)
        # Exit code 1 means some pair never recovered; the JSON says which, and the run counts.
        $BENCH failover --node "$(url 21024 '{role}')" --node "$(url 22024 '{role}')" --node "$(url 23024 '{role}')" \
            --kill-pid "${NODE[3]}" --pairs "$pairs" --reconnect-jitter-ms "$jitter" $SOURCES --json \
            --per-pair 2>"$OUT/failover$run-pairs.txt" >"$OUT/failover$run.json" || true
        local overflows=$(( $(listen_overflows) - overflows0 ))
        # Let the survivors declare the dead node dead before they stop, for the logs.
        sleep 1
        stop_all
        python3 - "$OUT" "$run" "$overflows" <<'PY'
import datetime, json, re, sys
out, run = sys.argv[1], sys.argv[2]
d = json.load(open(f"{out}/failover{run}.json"))
d["listen_overflows"] = int(sys.argv[3])
left = []
for node in (1, 2):
    for line in open(f"{out}/failover{run}-node{node}.log"):
        if "node left the cluster" in line:
            t = datetime.datetime.strptime(line.split()[0][:26], "%Y-%m-%dT%H:%M:%S.%f")
            left.append(t.replace(tzinfo=datetime.timezone.utc).timestamp() - d["killed_at_unix"])
d["dead_node_forgotten_after_s"] = left
json.dump(d, open(f"{out}/failover{run}.json", "w"))
c = {name: v.get("p50_ms", 0) for name, v in d["recovery_by_case"].items()}
flowing = d["all_pairs_flowing_seconds"]
flowing = "never" if flowing is None else f"{flowing:.3f} s"
to_peer = c["reconnected to peer's node"]
forgot = ", ".join(f"{s:.2f}" for s in left)
print(f"  run {run}: all pairs flowing after {flowing}; "
      f"per pair p50 {d['recovery']['p50_ms']:.0f} ms, p99 {d['recovery']['p99_ms']:.0f} ms; "
      f"p50 untouched {c['untouched']:.0f} ms, to peer's node {to_peer:.0f} ms, "
      f"to another node {c['reconnected to another node']:.0f} ms; "
      f"never recovered {d['never_recovered']}; errors {d['errors'] or 'none'}; listen queue overflows {d['listen_overflows']}; "
      f"survivors forgot the dead node after {forgot} s")
PY
    done
    python3 - "$OUT" "$runs" <<'PY' | tee "$OUT/failover-summary.txt"
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
ds = [json.load(open(f"{out}/failover{r}.json")) for r in range(1, runs + 1)]
med = lambda f: statistics.median(f(d) for d in ds)
case = lambda name, q: (lambda d: d["recovery_by_case"][name].get(q, float("nan")))
print(f"| time from kill -9 until all {ds[0]['pairs']} pairs relayed a fresh message both ways | "
      f"{med(lambda d: d['all_pairs_flowing_seconds'] or float('inf')):.2f} s |")
print(f"| per-pair recovery, all pairs, p50 / p99 | {med(lambda d: d['recovery']['p50_ms']):.0f} / {med(lambda d: d['recovery']['p99_ms']):.0f} ms |")
for name in ("untouched", "reconnected to peer's node", "reconnected to another node"):
    print(f"| per-pair recovery, {name} ({ds[0]['recovery_by_case'][name]['count']} pairs), p50 / p99 | "
          f"{med(case(name, 'p50_ms')):.0f} / {med(case(name, 'p99_ms')):.0f} ms |")
print(f"| reconnect (kill to 101), p50 / p99 / max | {med(lambda d: d['reconnected']['p50_ms']):.0f} / {med(lambda d: d['reconnected']['p99_ms']):.0f} / {med(lambda d: d['reconnected']['max_ms']):.0f} ms |")
print(f"| socket death seen by the client (kill to EOF), p50 / p99 | {med(lambda d: d['socket_death_noticed']['p50_ms']):.0f} / {med(lambda d: d['socket_death_noticed']['p99_ms']):.0f} ms |")
print(f"| survivors forget the dead node (log line), after the kill | {med(lambda d: min(d['dead_node_forgotten_after_s'] or [float('nan')])):.2f} s |")
print(f"| pairs never recovered within {ds[0]['limit_seconds']:.0f} s, per run | {', '.join(str(d['never_recovered']) for d in ds)} |")
errors = {}
for d in ds:
    for kind, n in d["errors"].items():
        errors[kind] = errors.get(kind, 0) + n
print(f"| reconnect errors, all runs | {errors or 'none'} |")
print(f"| listen queue overflows (SYNs dropped, retried after 1 s), per run | {', '.join(str(d['listen_overflows']) for d in ds)} |")
PY
}

connect() {
    local runs=${1:-3} pairs=${PAIRS:-9000}
    echo "== connect rate: $pairs pairs into a 2-node cluster, each verified by a message each way while timed, unpaced; $runs runs"
    start_cluster 2 connect
    local same="--app-url $(url 21024 app) --web-url $(url 21024 web) $SOURCES"
    local cross="--app-url $(url 21024 app) --web-url $(url 22024 web) $SOURCES"
    for run in $(seq "$runs"); do
        for name in same cross; do
            for at_once in 64 256; do
                local pids="--server-pid ${NODE[1]}" file="$OUT/connect-$name-$at_once-$run.json"
                [ $name = cross ] && pids="$pids --server-pid ${NODE[2]}"
                local redis_cpu0 redis_cpu1 overflows0 overflows1
                redis_cpu0=$(awk '{print $14 + $15}' /proc/"$REDIS"/stat)
                overflows0=$(listen_overflows)
                $BENCH hold ${!name} --pairs "$pairs" --connect-rate 1000000 --concurrency $at_once --verify-each $pids --json \
                    2>/dev/null >"$file"
                redis_cpu1=$(awk '{print $14 + $15}' /proc/"$REDIS"/stat)
                overflows1=$(listen_overflows)
                python3 - "$file" "$redis_cpu0" "$redis_cpu1" "$((overflows1 - overflows0))" "$name" "$at_once" "$run" <<'PY'
import json, sys
path, c0, c1, overflows, name, at_once, run = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:]
d = json.load(open(path))
d["connect_redis_cpu_percent"] = (c1 - c0) / d["connect_seconds"]  # ticks of 10 ms a second = percent
d["listen_overflows"] = overflows
json.dump(d, open(path, "w"))
print(f"  {name}-node pairs, {at_once} at once, run {run}: {d['connects_per_second']:.0f} connections/s ({d['connections']} in {d['connect_seconds']:.2f} s); "
      f"CPU % of one vCPU: generator {d['connect_generator_cpu_percent']:.0f}, node(s) {d['connect_server_cpu_percent']:.0f}, redis {d['connect_redis_cpu_percent']:.0f}; "
      f"listen queue overflows {overflows}")
PY
                # Closing sessions release their routes; let that finish before the next run.
                sleep 2
            done
        done
    done
    stop_all
    python3 - "$OUT" "$runs" <<'PY' | tee "$OUT/connect-summary.txt"
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
for name, what in (("same", "both sides into node 1 (same-node pairs)"),
                   ("cross", "app into node 1, web into node 2 (cross-node pairs; CPU of both nodes)")):
    for at_once in (64, 256):
        ds = [json.load(open(f"{out}/connect-{name}-{at_once}-{r}.json")) for r in range(1, runs + 1)]
        med = lambda k: statistics.median(d[k] for d in ds)
        print(f"| connections/s, {what}, {at_once} at once, median of {runs} | {med('connects_per_second'):.0f} | "
              f"CPU % generator / node(s) / redis {med('connect_generator_cpu_percent'):.0f} / {med('connect_server_cpu_percent'):.0f} / "
              f"{med('connect_redis_cpu_percent'):.0f}; listen queue overflows per run {', '.join(str(d['listen_overflows']) for d in ds)} |")
PY
}

redis_trips() {
    local pairs=${1:-1000}
    echo "== Redis round trips: $pairs pairs connect, then disconnect, 2-node cluster; INFO commandstats deltas"
    start_cluster 2 redis
    # cold: the first connects and disconnects after the nodes started, when no claim or release
    # script is loaded in Redis yet; then the same again (warm), and same-node pairs.
    for layout in cold cross same; do
        local web_port=22024
        [ $layout = same ] && web_port=21024
        stats() { redis-cli -p $REDIS_PORT INFO commandstats >"$OUT/redis-$layout-$1.txt"; date +%s.%N >"$OUT/redis-$layout-$1.time"; }
        stats 0
        # Snapshot 1 is taken in the pause after every pair is connected and verified; snapshot 2
        # once the generator has exited (closing every connection) and the releases are done.
        $BENCH hold --app-url "$(url 21024 app)" --web-url "$(url $web_port web)" $SOURCES \
            --pairs "$pairs" --phase-pause 2 --json 2>&1 >/dev/null \
            | while IFS= read -r line; do case "$line" in "phase connected") stats 1 ;; esac; done
        sleep 2
        stats 2
        python3 - "$OUT" "$layout" "$pairs" <<'PY' | tee -a "$OUT/redis-summary.txt"
import re, sys
out, layout, pairs = sys.argv[1], sys.argv[2], int(sys.argv[3])
def calls(n):
    text = open(f"{out}/redis-{layout}-{n}.txt").read()
    found = {}
    for m in re.finditer(r"cmdstat_([\w|]+):calls=(\d+)[^\n]*?failed_calls=(\d+)", text):
        found[m[1]] = int(m[2])
        found[m[1] + " failed"] = int(m[3])
    return found
def time(n):
    return float(open(f"{out}/redis-{layout}-{n}.time").read())
snaps = [calls(n) for n in range(3)]
connections = 2 * pairs
what = {"cold": "cross-node pairs, first after start", "cross": "cross-node pairs", "same": "same-node pairs"}[layout]
for phase, (a, b) in (("connect", (0, 1)), ("disconnect", (1, 2))):
    delta = {k: snaps[b].get(k, 0) - snaps[a].get(k, 0) for k in snaps[b] if not k.startswith("info")}
    scripts = delta.get("evalsha", 0) + delta.get("eval", 0)
    heartbeats = delta.get("zadd", 0)
    loads = delta.get("script|load", 0)
    noscript = delta.get("evalsha failed", 0)
    seconds = time(b) - time(a)
    listed = " ".join(f"{k}={v}" for k, v in sorted(delta.items()) if v)
    print(f"| Redis round trips per {phase}, {what} ({connections} {phase}s) | {(scripts - heartbeats) / connections:.3f} | "
          f"scripts {scripts} - heartbeats {heartbeats} (in {seconds:.1f} s); failed evalsha (NOSCRIPT) {noscript}, SCRIPT LOAD {loads}; "
          f"all commands: {listed} |")
PY
    done
    stop_all
}

case "$WHAT" in
    failover) failover "${2:-3}" ;;
    connect) connect "${2:-3}" ;;
    redis) redis_trips "${2:-1000}" ;;
    all) failover 3; connect 3; redis_trips 1000 ;;
    *) echo "usage: bash scripts/churn.sh [failover [RUNS] | connect [RUNS] | redis [PAIRS]]" >&2; exit 2 ;;
esac
echo "raw results and node logs: $OUT"
