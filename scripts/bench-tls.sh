#!/usr/bin/env bash
# What TLS on the client port costs: a plaintext node and a TLS node side by side (a P-256
# certificate from a CA made here with openssl), throughput interleaved run by run, then idle
# memory per connection and the connect rate. Prints one line per figure.
# Usage: cargo build --release -p wspair -p wspair-bench && bash scripts/bench-tls.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
B=./target/release/wspair-bench
ulimit -n 20000 2>/dev/null || true
dir=$(mktemp -d)
trap 'kill $PLAIN $TLS 2>/dev/null || true; rm -rf "$dir"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/ca.key" \
    -out "$dir/ca.pem" -days 2 -subj "/CN=bench CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/key.pem" \
    -out "$dir/leaf.csr" -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$dir/ext.cnf"
openssl x509 -req -in "$dir/leaf.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -out "$dir/cert.pem" -days 2 -extfile "$dir/ext.cnf" 2>/dev/null
./target/release/wspair serve --admin-port 0 --outer-ip 127.0.0.1 --outer-port 32024 >/dev/null 2>&1 & PLAIN=$!
./target/release/wspair serve --admin-port 0 --outer-ip 127.0.0.1 --outer-port 32124 \
    --outer-tls-cert "$dir/cert.pem" --outer-tls-key "$dir/key.pem" >/dev/null 2>&1 & TLS=$!
sleep 1
target() {
    if [ "$1" = plain ]; then
        echo "--app-url ws://127.0.0.1:32024/channel?type=app&channelId={id} --web-url ws://127.0.0.1:32024/channel?type=web&channelId={id}"
    else
        echo "--app-url wss://127.0.0.1:32124/channel?type=app&channelId={id} --web-url wss://127.0.0.1:32124/channel?type=web&channelId={id} --ca $dir/ca.pem"
    fi
}
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
for run in $(seq "$RUNS"); do
    for mode in plain tls; do
        rate=$($B throughput $(target $mode) --pairs 1000 --window 16 --seconds 4 --warmup 1 --json | field messages_per_second)
        echo "throughput $mode run $run: $rate msg/s"
    done
done
for mode in plain tls; do
    pid=$PLAIN; [ "$mode" = tls ] && pid=$TLS
    json=$($B hold $(target $mode) --pairs 4000 --server-pid $pid --source-ips 127.0.0.2-127.0.0.9 --json 2>/dev/null | tail -1)
    echo "idle $mode: $(echo "$json" | field rss_bytes_per_connection) B per connection, $(echo "$json" | field connects_per_second) pairs/s connected"
done
