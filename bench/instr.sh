#!/usr/bin/env bash
# Instructions (callgrind), syscalls (perf tracepoint) and RSS per request of the
# portcullis two-sidecar mesh. Counts work instead of timing it, so it is usable on a
# shared, loaded machine. See bench/instr.py for the method.
#
#   bench/instr.sh                       build the release binary, then measure
#   bench/instr.sh --bin PATH            measure an already built binary (e.g. a copy)
#   other options go to bench/instr.py:  -n 10000 --rate 1000 --nc 1000 --crate 50 --json FILE
#
# Needs: python3 with cryptography (bench/.venv from bench/run.sh works), valgrind,
# perf (tracepoints suffice: raw_syscalls:sys_enter), taskset, oha.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
if [ -z "$BIN" ]; then
  nice -n 10 cargo build --release --quiet --bin portcullis
  BIN=$ROOT/target/release/portcullis
fi
PY=python3
if [ -x "$ROOT/bench/.venv/bin/python" ] && "$ROOT/bench/.venv/bin/python" -c 'import cryptography' 2>/dev/null; then
  PY=$ROOT/bench/.venv/bin/python
fi
OHA=$(command -v oha || echo "$HOME/.cargo/bin/oha")
WORK=${INSTR_WORK:-$ROOT/bench/results/tmp/instr}
exec "$PY" "$ROOT/bench/instr.py" --portcullis "$BIN" --oha "$OHA" --work "$WORK" "${ARGS[@]}"
