#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and reports runs, coverage and crashes.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, all targets)
#
# Works on a stable toolchain: cargo-fuzz needs nightly flags, so without a
# nightly toolchain the stable compiler is used with RUSTC_BOOTSTRAP=1.
#   FUZZ_TOOLCHAIN=stable|nightly   force a toolchain (default: nightly if installed)
#   FUZZ_SANITIZER=address|none     (default: address)
#
# The committed seeds (fuzz/corpus/<target>/) are read only; what the fuzzer finds
# goes to fuzz/target/corpus/<target>/ and crashes to fuzz/artifacts/<target>/.
# Exit status is non-zero when any target crashed or failed to run.
set -euo pipefail

cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
all_targets=(spiffe_id svid_san input_document config jwt)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi
sanitizer="${FUZZ_SANITIZER:-address}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

toolchain=()
case "${FUZZ_TOOLCHAIN:-auto}" in
    nightly) toolchain=(+nightly) ;;
    stable) export RUSTC_BOOTSTRAP=1 ;;
    auto)
        if cargo +nightly --version >/dev/null 2>&1; then
            toolchain=(+nightly)
        else
            export RUSTC_BOOTSTRAP=1
        fi
        ;;
    *) echo "FUZZ_TOOLCHAIN must be stable or nightly" >&2; exit 2 ;;
esac
echo "== toolchain: ${toolchain[*]:-stable (RUSTC_BOOTSTRAP=1)}, sanitizer: $sanitizer"

fuzz=(cargo "${toolchain[@]}" fuzz)
flags=(--fuzz-dir fuzz --sanitizer "$sanitizer")

echo "== building ${targets[*]}"
for t in "${targets[@]}"; do
    "${fuzz[@]}" build "${flags[@]}" "$t"
done

logs="fuzz/target/logs"
mkdir -p "$logs"
failed=0
summary=()
for t in "${targets[@]}"; do
    work="fuzz/target/corpus/$t"
    artifacts="fuzz/artifacts/$t"
    mkdir -p "$work" "$artifacts"
    echo "== $t: ${secs}s"
    touch "$logs/$t.start"
    status=0
    "${fuzz[@]}" run "${flags[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" \
        >"$logs/$t.log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)
    per_sec=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t.log" | tail -1)
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$logs/$t.log" | tail -1 || true)
    corpus=$(find "$work" -type f | wc -l)
    # Only what this run wrote: older artifacts are someone's open investigation.
    crashes=$(find "$artifacts" -type f -newer "$logs/$t.start" | wc -l)
    line=$(printf '%-15s runs=%-10s exec/s=%-7s %-22s corpus=%-6s crashes=%s' \
        "$t" "${runs:-?}" "${per_sec:-?}" "${cov:-cov: ?}" "$corpus" "$crashes")
    if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        failed=1
        line="$line  FAILED (exit $status, log $logs/$t.log)"
        grep -E -m 20 'panicked|ERROR|SUMMARY|Test unit written' "$logs/$t.log" || true
    fi
    echo "$line"
    summary+=("$line")
done

echo "== summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
    echo "== crashes: reproduce with 'cargo fuzz run --fuzz-dir fuzz <target> <artifact>'," \
        "fix, and keep the input in fuzz/regressions/<target>/"
    exit 1
fi
