#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for SECONDS each (default 60), one after
# another, with the nightly toolchain; installs cargo-fuzz when missing. Corpora grow in
# fuzz/corpus/TARGET; a crash stops the script with its input in fuzz/artifacts/TARGET (make it
# a regression test, then fix). Not part of the test suite.
# Usage: bash scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "== $target: ${seconds}s"
    cargo +nightly fuzz run -O "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 2>&1 \
        | grep -E "^(Done|stat::|==|INFO: seed corpus|.*(panicked|ERROR|SUMMARY))" || true
    if compgen -G "artifacts/$target/*" >/dev/null; then
        echo "$target: crash inputs in fuzz/artifacts/$target" >&2
        exit 1
    fi
done
