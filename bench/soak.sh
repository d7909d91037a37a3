#!/usr/bin/env bash
# Soak test: N minutes of HTTP load through the two-pod mesh (network namespaces,
# iptables interception, both sidecars as UID 1337) while the sidecars' certificates
# rotate every 10 s and their policies reload every 5 s.
#
# Usage: sudo bench/soak.sh [MINUTES]        (default 10)
# Reports total requests, errors that are not policy decisions (must be 0), and the
# sidecars' RSS and open file descriptors at start and end (sampled every 30 s into
# bench/results/soak.csv). Needs root, iproute2, iptables, wrk.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${1:-10}
RATE_CONNS=16
SFX=$$
NS_A=soak$SFX-a; NS_B=soak$SFX-b; NS_SW=soak$SFX-sw
WORK=$(mktemp -d /tmp/portcullis-soak.XXXXXX)
chmod 755 "$WORK"
OUT=bench/results
mkdir -p "$OUT"
PIDS=()

cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  for ns in "$NS_A" "$NS_B" "$NS_SW"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

for tool in ip iptables-restore wrk setpriv curl; do
  command -v "$tool" >/dev/null || { echo "soak: $tool is not installed"; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "soak: needs root (network namespaces, iptables)"; exit 1; }

cargo build --release --quiet
BIN=$PWD/target/release/portcullis

# --- topology: two pods on a bridge -------------------------------------------------
ip netns add "$NS_SW"; ip -n "$NS_SW" link add br0 type bridge; ip -n "$NS_SW" link set br0 up
for pod in a b; do
  ns=soak$SFX-$pod; ip=10.78.0.$([ "$pod" = a ] && echo 1 || echo 2)
  ip netns add "$ns"
  ip -n "$NS_SW" link add "v$pod" type veth peer name eth0 netns "$ns"
  ip -n "$NS_SW" link set "v$pod" master br0 up
  ip -n "$ns" addr add "$ip/24" dev eth0
  ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up
done

# --- identities and policies ---------------------------------------------------------
"$BIN" ca init --trust-domain cluster.local --out "$WORK/ca" >/dev/null
issue() { # pod dir
  local tmp="$WORK/issue-$1"
  "$BIN" ca issue --ca "$WORK/ca" --spiffe-id "spiffe://cluster.local/ns/default/sa/soak-$1" --ttl 1h --out "$tmp" >/dev/null
  chown -R 1337:1337 "$tmp"
  # Key first, then certificate: in between the pair mismatches and is refused, as in a real rotation.
  for f in ca.crt tls.key tls.crt; do mv -f "$tmp/$f" "$2/$f"; done
}
policy() { # dir generation
  cat > "$1/authz.rego.tmp" <<REGO
package envoy.authz
import rego.v1
# generation $2
default allow := false
allow if {
    input.attributes.source.principal == "spiffe://cluster.local/ns/default/sa/soak-a"
    input.parsed_path[0] == "soak"
}
REGO
  cat > "$1/outbound.rego.tmp" <<REGO
package portcullis.outbound
import rego.v1
# generation $2
default allow := false
allow if input.attributes.destination.principal == "spiffe://cluster.local/ns/default/sa/soak-b"
REGO
  chown 1337:1337 "$1"/*.tmp
  mv -f "$1/authz.rego.tmp" "$1/authz.rego"; mv -f "$1/outbound.rego.tmp" "$1/outbound.rego"
}
for pod in a b; do
  d="$WORK/$pod"; mkdir -p "$d/pol"; chown -R 1337:1337 "$d"
  issue "$pod" "$d"; policy "$d/pol" 0
  cat > "$d/portcullis.yaml" <<YAML
identity:
  files: {cert: $d/tls.crt, key: $d/tls.key, bundle: $d/ca.crt, poll_interval: 1s}
inbound: {listen: 0.0.0.0:15006, original_destination: true, mtls: strict}
outbound: {listen: 127.0.0.1:15001, mode: transparent, mesh_networks: [10.78.0.0/24]}
admin: {listen: 0.0.0.0:15000}
policy: {dir: $d/pol, watch_interval: 1s}
log: {format: text, level: warn, decisions: false}
YAML
  chown 1337:1337 "$d/portcullis.yaml"
  ip netns exec "soak$SFX-$pod" "$BIN" iptables --apply >/dev/null
done

ip netns exec "$NS_B" "$BIN" echo --listen 0.0.0.0:8080 >"$WORK/app.log" 2>&1 & PIDS+=($!)
for pod in a b; do
  ip netns exec "soak$SFX-$pod" setpriv --reuid 1337 --regid 1337 --clear-groups \
    "$BIN" run --config "$WORK/$pod/portcullis.yaml" >"$WORK/sidecar-$pod.log" 2>&1 & PIDS+=($!)
done
for pod in a b; do
  for _ in $(seq 100); do
    [ "$(ip netns exec "soak$SFX-$pod" curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:15000/ready)" = 200 ] && break
    sleep 0.1
  done
done
sidecar_pid() { pgrep -f "run --config $WORK/$1/portcullis.yaml" | head -1; }
PA=$(sidecar_pid a); PB=$(sidecar_pid b)
sample() { # label
  local line="$1"
  for p in "$PA" "$PB"; do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$p/status"); fds=$(ls "/proc/$p/fd" | wc -l)
    line="$line,$rss,$fds"
  done
  echo "$line" >> "$OUT/soak.csv"
  echo "$line"
}
echo "t_seconds,rss_a_kib,fds_a,rss_b_kib,fds_b" > "$OUT/soak.csv"
START_SAMPLE=$(sample 0)

# --- load, rotation, reloads -----------------------------------------------------------
DURATION=$((MINUTES * 60))
ip netns exec "$NS_A" wrk -t 2 -c "$RATE_CONNS" -d "${DURATION}s" --latency http://10.78.0.2:8080/soak >"$WORK/wrk.txt" 2>&1 & WRK=$!
PIDS+=($WRK)
t=0; gen=1
while kill -0 "$WRK" 2>/dev/null; do
  sleep 5; t=$((t + 5))
  for pod in a b; do policy "$WORK/$pod/pol" "$gen"; done; gen=$((gen + 1))
  if [ $((t % 10)) -eq 0 ]; then for pod in a b; do issue "$pod" "$WORK/$pod"; done; fi
  if [ $((t % 30)) -eq 0 ]; then sample "$t" >/dev/null; fi
done
wait "$WRK" || true
END_SAMPLE=$(sample "$t")

metric() { ip netns exec "$1" curl -s http://127.0.0.1:15000/metrics | awk -v m="$2" 'index($0, m) == 1 {s += $NF} END {print s + 0}'; }
REQS=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
NON2XX=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk.txt"); NON2XX=${NON2XX:-0}
SOCKERR=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$WORK/wrk.txt"); SOCKERR=${SOCKERR:-0}
DENIES=$(metric "$NS_A" 'portcullis_requests_total{decision="deny"')
ROT_OK=$(metric "$NS_B" 'portcullis_identity_reloads_total{result="success"}')
ROT_ERR=$(metric "$NS_B" 'portcullis_identity_reloads_total{result="error"}')
POL_OK=$(metric "$NS_B" 'portcullis_policy_reloads_total{result="success"}')
HANDSHAKES=$(metric "$NS_A" 'portcullis_tls_handshakes_total{direction="outbound"}')

{
  echo "# Soak: $MINUTES min through the two-pod mesh"
  echo
  echo "| figure | value |"
  echo "|---|---|"
  echo "| requests (wrk, $RATE_CONNS connections) | $REQS |"
  echo "| non-2xx responses | $NON2XX |"
  echo "| socket errors | $SOCKERR |"
  echo "| policy denies (sidecar A) | $DENIES |"
  echo "| certificate installs / refusals (B) | $ROT_OK / $ROT_ERR |"
  echo "| policy revisions activated (B) | $POL_OK |"
  echo "| outbound mTLS handshakes (A) | $HANDSHAKES |"
  echo "| start: RSS A KiB, FDs A, RSS B KiB, FDs B | ${START_SAMPLE#*,} |"
  echo "| end:   RSS A KiB, FDs A, RSS B KiB, FDs B | ${END_SAMPLE#*,} |"
  echo
  echo '```'; sed -n '1,20p' "$WORK/wrk.txt"; echo '```'
} | tee "$OUT/soak.md"

if [ "$NON2XX" != 0 ] || [ "$SOCKERR" != 0 ]; then
  echo "soak: FAILED: $NON2XX non-2xx responses, $SOCKERR socket errors"; exit 1
fi
echo "soak: OK"
