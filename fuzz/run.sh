#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS (default 60) each, from its seeds
# and the corpus earlier runs grew. A crash stops the run and leaves its
# input under fuzz/artifacts/<target>/: once fixed, copy it to
# fuzz/regressions/<target>/ so `cargo test` replays it from then on.
set -euo pipefail
secs=${1:-60}
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz needs nightly's -Z flags; without a nightly toolchain the
# stable compiler is allowed them.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    tc=(+nightly)
else
    tc=()
    export RUSTC_BOOTSTRAP=1
fi
for t in $(cargo "${tc[@]}" fuzz list); do
    mkdir -p "fuzz/corpus/$t"
    echo "fuzz: $t for ${secs}s" >&2
    if ! cargo "${tc[@]}" fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>"fuzz/$t.log"; then
        tail -40 "fuzz/$t.log" >&2
        echo "fuzz: $t found a crash (input under fuzz/artifacts/$t/)" >&2
        exit 1
    fi
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE)' "fuzz/$t.log" | tr '\n' ' ' >&2
    echo >&2
done
