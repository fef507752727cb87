#!/usr/bin/env bash
# What TLS on the inner links costs: two two-node clusters side by side on one redis-server (each
# its own database), one with plaintext links and one with inner.tls-* (a P-256 certificate from a
# CA made here with openssl, one for both nodes), and cross-node throughput (the app on one node,
# the web on the other) interleaved run by run: plain, tls, plain, tls, ... With each run, the CPU
# time the two nodes used (from /proc), per message relayed, which the noise of a shared machine
# moves less than the rate. Prints every run, then the medians and their ratios.
# Usage: cargo build --release -p wspair -p wspair-bench && bash scripts/bench-inner-tls.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
B=./target/release/wspair-bench
W=./target/release/wspair
SECRET=bench-secret-0123456789
REDIS_PORT=36379
ulimit -n 20000 2>/dev/null || true
for port in $REDIS_PORT 33024 33025 33124 33125 34024 34025 34124 34125; do
    if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then
        echo "port $port is already in use; stop what listens there first" >&2
        exit 1
    fi
done
dir=$(mktemp -d)
PIDS=()
trap 'for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$dir"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/ca.key" \
    -out "$dir/ca.pem" -days 2 -subj "/CN=bench cluster CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/key.pem" \
    -out "$dir/node.csr" -subj "/CN=wspair node" 2>/dev/null
printf 'subjectAltName=DNS:nodes.bench.test\n' >"$dir/ext.cnf"
openssl x509 -req -in "$dir/node.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -out "$dir/cert.pem" -days 2 -extfile "$dir/ext.cnf" 2>/dev/null
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!)
wait_port $REDIS_PORT
# node OUTER INNER DB [TLS flags...]
node() {
    local outer=$1 inner=$2 db=$3; shift 3
    RUST_LOG=warn $W serve --admin-port 0 --outer-ip 127.0.0.1 --outer-port "$outer" \
        --inner-ip 127.0.0.1 --inner-port "$inner" --inner-secret $SECRET \
        --registry-redis "redis://127.0.0.1:$REDIS_PORT/$db" "$@" >/dev/null 2>&1 & PIDS+=($!)
}
TLS_FLAGS=(--inner-tls-cert "$dir/cert.pem" --inner-tls-key "$dir/key.pem" --inner-tls-ca "$dir/ca.pem")
node 33024 33025 0; PLAIN_PIDS="$!"
node 33124 33125 0; PLAIN_PIDS="$PLAIN_PIDS $!"
node 34024 34025 1 "${TLS_FLAGS[@]}"; TLS_PIDS="$!"
node 34124 34125 1 "${TLS_FLAGS[@]}"; TLS_PIDS="$TLS_PIDS $!"
for port in 33024 33124 34024 34124; do wait_port $port; done
url() { echo "ws://127.0.0.1:$1/channel?type=$2&channelId={id}"; }
target() {
    if [ "$1" = plain ]; then a=33024 w=33124; else a=34024 w=34124; fi
    echo "--app-url $(url $a app) --web-url $(url $w web) --source-ips 127.0.0.2-127.0.0.9"
}
# CPU seconds (user and system) the given processes used so far.
cpu() { for pid in "$@"; do awk '{print $14 + $15}' "/proc/$pid/stat"; done | awk -v hz="$(getconf CLK_TCK)" '{t += $1} END {print t / hz}'; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "== cross-node throughput: 64 B, 1000 pairs, window 16, 5 s after 1 s warm-up; $RUNS runs, interleaved"
: >"$dir/plain" ; : >"$dir/tls"; : >"$dir/plain-cpu" ; : >"$dir/tls-cpu"
for run in $(seq "$RUNS"); do
    for mode in plain tls; do
        pids=$PLAIN_PIDS; [ "$mode" = tls ] && pids=$TLS_PIDS
        before=$(cpu $pids)
        json=$($B throughput $(target $mode) --pairs 1000 --window 16 --size 64 --seconds 5 --warmup 1 --json)
        after=$(cpu $pids)
        rate=$(echo "$json" | field messages_per_second)
        # Over the warm-up and the measured seconds, at the measured rate (connects included).
        us=$(python3 -c "print(($after - $before) / ($rate * 6) * 1e6)")
        echo "$rate" >>"$dir/$mode"; echo "$us" >>"$dir/$mode-cpu"
        printf '  %-5s run %s: %.0f msg/s, nodes %.2f CPU µs per message\n' "$mode" "$run" "$rate" "$us"
    done
done
plain=$(median <"$dir/plain"); tls=$(median <"$dir/tls")
plain_us=$(median <"$dir/plain-cpu"); tls_us=$(median <"$dir/tls-cpu")
printf 'median throughput: plain %.0f msg/s, inner TLS %.0f msg/s, ratio %.2f\n' "$plain" "$tls" \
    "$(python3 -c "print($tls / $plain)")"
printf 'median nodes CPU per message: plain %.2f µs, inner TLS %.2f µs, ratio %.2f\n' "$plain_us" "$tls_us" \
    "$(python3 -c "print($tls_us / $plain_us)")"
