"""portcullis vs Envoy vs direct: the benchmark driver (run through bench/run.sh).

Topology per target, all on 127.0.0.1 with free ports:

  direct:     oha -> app
  portcullis: oha -> A (outbound route) -> mTLS h2 -> B (inbound: JWT, Rego) -> app
  envoy:      oha -> A (outbound) -> mTLS h2 -> B (inbound: jwt_authn, rbac) -> app

The same certificates (portcullis ca), the same ES256 token and the same app are
used for every target. Sidecars run with one worker (TOKIO_WORKER_THREADS=1,
envoy --concurrency 1) pinned to CPU 1; the load generator and the app are
pinned to CPU 0. Measurements of the three targets are interleaved within each
round, and every figure is reported as a ratio inside the same run.
"""

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import envoy_config  # noqa: E402
import scenarios  # noqa: E402

TD = "cluster.local"
ID_A = f"spiffe://{TD}/ns/default/sa/frontend"
ID_B = f"spiffe://{TD}/ns/default/sa/backend"
ISSUER = "https://idp.example"
AUDIENCE = "orders"
PATH = "/api/orders/42"
CLK = os.sysconf("SC_CLK_TCK")
TARGETS = ["direct", "portcullis", "envoy"]
PROXIES = ["portcullis", "envoy"]
LOAD_CPU = "0"
PROXY_CPU = "1"
# False while the unpinned scenario runs: nothing gets `taskset`.
PIN = True

PROCS = []


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def cleanup(*_):
    for p in reversed(PROCS):
        if p.poll() is None:
            try:
                p.terminate()
            except OSError:
                pass
    deadline = time.time() + 5
    for p in PROCS:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
    PROCS.clear()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(cmd, *, cpu, env=None, log_path=None, stdin=None, stdout=None):
    full = (["taskset", "-c", cpu] if PIN and cpu else []) + [str(c) for c in cmd]
    e = dict(os.environ)
    e.update(env or {})
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    p = subprocess.Popen(full, env=e, stdout=stdout or out, stderr=out, stdin=stdin or subprocess.DEVNULL)
    PROCS.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in PROCS:
        PROCS.remove(p)


def wait_port(port, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


# --- PKI and tokens ------------------------------------------------------------


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_jwt(work):
    """An ES256 key, its JWKS, a valid token and a token with a broken signature."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    key = ec.generate_private_key(ec.SECP256R1())
    nums = key.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "kid": "bench",
        "alg": "ES256",
        "use": "sig",
        "x": b64u(nums.x.to_bytes(32, "big")),
        "y": b64u(nums.y.to_bytes(32, "big")),
    }
    jwks = json.dumps({"keys": [jwk]})
    header = b64u(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "bench"}).encode())
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "role": "admin", "iat": now, "exp": now + 86400}
    payload = b64u(json.dumps(claims).encode())
    der = key.sign(f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    sig = b64u(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    token = f"{header}.{payload}.{sig}"
    bad = f"{header}.{payload}.{sig[:-4]}AAAA"
    (work / "jwks.json").write_text(jwks)
    return {"jwks": jwks, "token": token, "bad": bad}


def make_pki(bin_, work):
    pki = work / "pki"
    if pki.exists():
        shutil.rmtree(pki)
    subprocess.run([bin_, "ca", "init", "--trust-domain", TD, "--out", pki / "ca"], check=True, capture_output=True)
    for name, sid in [("a", ID_A), ("b", ID_B)]:
        subprocess.run(
            [bin_, "ca", "issue", "--ca", pki / "ca", "--spiffe-id", sid, "--out", pki / name, "--ttl", "24h"],
            check=True,
            capture_output=True,
        )
    return pki


# --- sidecars ----------------------------------------------------------------------


def portcullis_yaml(*, pki_dir, inbound, app, admin, outbound_listen, routes, jwt_mode, jwks_file, route_protocol="http"):
    lines = [
        f"trust_domain: {TD}",
        "identity:",
        f"  files: {{cert: {pki_dir}/tls.crt, key: {pki_dir}/tls.key, bundle: {pki_dir}/ca.crt}}",
        "inbound:",
        f"  listen: 127.0.0.1:{inbound}",
        "  mtls: strict",
        f"  app: 127.0.0.1:{app}",
        "outbound:",
        f"  listen: 127.0.0.1:{outbound_listen}",
    ]
    if routes:
        lines += ["  mode: routes", "  routes:"]
        for listen, upstream, sid in routes:
            lines.append(f"    - {{listen: 127.0.0.1:{listen}, upstream: 127.0.0.1:{upstream}, spiffe_id: {sid}, protocol: {route_protocol}}}")
    lines += [
        "policy:",
        f"  dir: {ROOT / 'policies'}",
        f"admin: {{listen: 127.0.0.1:{admin}}}",
        "limits: {max_connections: 20000}",
        "log: {format: json, level: warn, decisions: false}",
    ]
    if jwt_mode != "off":
        lines += [
            "jwt:",
            "  providers:",
            "    - name: corp",
            f"      issuer: {ISSUER}",
            f"      audiences: [{AUDIENCE}]",
            f"      jwks: {{file: {jwks_file}}}",
            '      from: [{header: authorization, prefix: "Bearer "}]',
            "      forward: false",
            "      payload_in_metadata: jwt_payload",
        ]
    return "\n".join(lines) + "\n"


class Sidecar:
    def __init__(self, kind, role, proc, admin, listen):
        self.kind, self.role, self.proc, self.admin, self.listen = kind, role, proc, admin, listen

    @property
    def pid(self):
        # taskset execs the program, so the pid is the sidecar's.
        return self.proc.pid


def start_portcullis(ctx, role, *, app_port=None, upstream=None, route_protocol="http"):
    """An inbound sidecar (role b) or an outbound one with one route to `upstream` (role a):
    `route_protocol` http (pooled HTTP/2 to the peer) or tcp (one mTLS connection to
    the peer per client connection)."""
    w = ctx.work
    admin, inbound, outl = free_port(), free_port(), free_port()
    route_port = free_port() if role == "a" else None
    cfg = portcullis_yaml(
        pki_dir=ctx.pki / role,
        inbound=inbound,
        app=app_port or free_port(),
        admin=admin,
        outbound_listen=outl,
        routes=[(route_port, upstream, ID_B)] if role == "a" else [],
        jwt_mode=ctx.jwt_mode,
        jwks_file=w / "jwks.json",
        route_protocol=route_protocol,
    )
    path = w / f"portcullis-{role}-{admin}.yaml"
    path.write_text(cfg)
    p = spawn(
        [ctx.bin, "run", "--config", path],
        cpu=PROXY_CPU,
        env={"TOKIO_WORKER_THREADS": "1"},
        log_path=w / f"portcullis-{role}.log",
    )
    listen = route_port if role == "a" else inbound
    wait_port(admin)
    wait_port(listen)
    return Sidecar("portcullis", role, p, admin, listen)


def start_envoy(ctx, role, *, app_port=None, upstream=None, route_protocol="http"):
    """As start_portcullis; a tcp route is a tcp_proxy to the peer over mTLS."""
    w = ctx.work
    admin, listen = free_port(), free_port()
    if role == "b":
        cfg = envoy_config.inbound(
            listen_port=listen,
            admin_port=admin,
            app_port=app_port,
            pki_dir=ctx.pki / "b",
            jwt={"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": ctx.jwt["jwks"]},
            rbac=ctx.rbac,
        )
    else:
        cfg = (envoy_config.outbound if route_protocol == "http" else envoy_config.outbound_tcp)(
            listen_port=listen, admin_port=admin, upstream_port=upstream, pki_dir=ctx.pki / "a", peer_id=ID_B
        )
    path = w / f"envoy-{role}-{admin}.json"
    envoy_config.write(path, cfg)
    p = spawn(
        [ctx.envoy, "-c", path, "--concurrency", "1", "--disable-hot-restart", "-l", "warning", "--base-id", admin],
        cpu=PROXY_CPU,
        log_path=w / f"envoy-{role}.log",
    )
    wait_port(admin)
    deadline = time.time() + 20
    while True:
        try:
            if http_get(f"http://127.0.0.1:{admin}/ready", 1).strip() == "LIVE":
                break
        except OSError:
            pass
        if time.time() > deadline:
            raise RuntimeError(f"envoy {role} not ready; see {w}/envoy-{role}.log")
        time.sleep(0.1)
    wait_port(listen)
    return Sidecar("envoy", role, p, admin, listen)


def start_pair(ctx, kind, app_port, route_protocol="http"):
    start = start_portcullis if kind == "portcullis" else start_envoy
    b = start(ctx, "b", app_port=app_port)
    a = start(ctx, "a", upstream=b.listen, route_protocol=route_protocol)
    return a, b


# --- load ----------------------------------------------------------------------------


def oha(ctx, url, *, duration, conns, rate=None, tls=False, keepalive=True, token=None, requests=None):
    """oha for `duration` seconds, or for `requests` requests when duration is None."""
    cmd = [ctx.oha, "--no-tui", "--output-format", "json", "-c", str(conns)]
    cmd += ["-z", f"{duration}s"] if duration else ["-n", str(requests)]
    if rate:
        cmd += ["-q", str(rate), "--latency-correction"]
    if tls:
        cmd += ["--insecure", "--cert", ctx.pki / "a" / "tls.crt", "--key", ctx.pki / "a" / "tls.key"]
    if not keepalive:
        cmd += ["--disable-keepalive"]
    cmd += ["-H", f"authorization: Bearer {token or ctx.jwt['token']}"]
    cmd.append(url)
    full = (["taskset", "-c", LOAD_CPU] if PIN else []) + [str(c) for c in cmd]
    r = subprocess.run(full, capture_output=True, timeout=(duration or 30) + 60)
    if r.returncode != 0:
        raise RuntimeError(f"oha failed: {r.stderr.decode()[-2000:]}")
    j = json.loads(r.stdout)
    codes = {str(k): v for k, v in (j.get("statusCodeDistribution") or {}).items()}
    ok = codes.get("200", 0)
    lp = j.get("latencyPercentiles") or {}
    return {
        "ok": ok,
        "codes": codes,
        "errors": j.get("errorDistribution") or {},
        "rps": ok / (duration or j.get("summary", {}).get("total") or 1),
        "p50_ms": (lp.get("p50") or 0) * 1e3,
        "p99_ms": (lp.get("p99") or 0) * 1e3,
        "p999_ms": (lp.get("p99.9") or 0) * 1e3,
    }


def measured(ctx, sidecars, fn):
    """Runs fn() and returns its result with CPU seconds and RSS of the sidecars."""
    before = {s.role: cpu_ticks(s.pid) for s in sidecars}
    t0 = time.time()
    res = fn()
    wall = time.time() - t0
    res["wall_s"] = wall
    res["cpu_s"] = {s.role: (cpu_ticks(s.pid) - before[s.role]) / CLK for s in sidecars}
    res["rss_kb"] = {s.role: status_kb(s.pid, "VmRSS") for s in sidecars}
    return res


def url_of(port, tls=False):
    return f"{'https' if tls else 'http'}://127.0.0.1:{port}{PATH}"


def metric_sum(text, name, labels=()):
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric = head.split("{", 1)[0]
        if metric != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels):
            total += float(value)
    return total


def handshakes(s):
    """TLS handshakes made by an outbound sidecar so far."""
    if s.kind == "portcullis":
        text = http_get(f"http://127.0.0.1:{s.admin}/metrics")
        return metric_sum(text, "portcullis_tls_handshakes_total", [("direction", "outbound")])
    stats = http_get(f"http://127.0.0.1:{s.admin}/stats?filter=cluster.peer.ssl.handshake")
    return sum(float(l.split(":")[1]) for l in stats.splitlines() if ":" in l)


def probe(ctx, kind, a_port):
    """Checks the topology answers like the policy says; returns what it saw."""

    def get(path, token):
        req = urllib.request.Request(f"http://127.0.0.1:{a_port}{path}")
        if token:
            req.add_header("authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    seen = {
        "allowed": get(PATH, ctx.jwt["token"]),
        "no_token": get(PATH, None),
        "bad_token": get(PATH, ctx.jwt["bad"]),
        "denied_path": get("/nope", None),
        "admin_with_jwt_role": get("/admin/x", ctx.jwt["token"]),
    }
    if kind == "direct":
        return seen
    if seen["allowed"] != 200 or seen["no_token"] != 200 or seen["denied_path"] != 403:
        raise RuntimeError(f"{kind}: unexpected answers {seen}")
    return seen


# --- the run ---------------------------------------------------------------------------


class Ctx:
    pass


def rotate(xs, r):
    r %= len(xs)
    return xs[r:] + xs[:r]


def run(args):
    this = sys.modules[__name__]
    ctx = Ctx()
    ctx.bin, ctx.envoy, ctx.oha, ctx.jwt_mode = args.portcullis, args.envoy, args.oha, args.jwt
    ctx.work = Path(args.work)
    ctx.work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx.pki = make_pki(ctx.bin, ctx.work)
    ctx.jwt = make_jwt(ctx.work)
    import yaml

    ctx.rbac = envoy_config.rbac_from_data(yaml.safe_load((ROOT / "policies" / "data.yaml").read_text()))
    q = args.quick
    dur = {"lat100": 6 if q else 15, "lat1000": 5 if q else 12, "inb": 5 if q else 10, "max": 4 if q else 8, "hs": 4 if q else 6}
    rounds = 1 if q else 3
    conn_counts = [1000, 10000] if q else [256, 1000, 10000]
    results = {"meta": {"quick": q, "rounds": rounds, "durations_s": dur, "started": time.strftime("%Y-%m-%d %H:%M:%S")}}

    # App on CPU 0 beside the load generator.
    app_port = free_port()
    spawn([ctx.bin, "echo", "--listen", f"127.0.0.1:{app_port}"], cpu=LOAD_CPU, env={"TOKIO_WORKER_THREADS": "1"}, log_path=ctx.work / "app.log")
    wait_port(app_port)

    side = {}
    idle = {}
    for kind in PROXIES:
        a, b = start_pair(ctx, kind, app_port)
        side[kind] = (a, b)
        time.sleep(0.5)
        idle[kind] = {s.role: {"VmRSS": status_kb(s.pid, "VmRSS"), "VmHWM": status_kb(s.pid, "VmHWM")} for s in (a, b)}
    results["rss_idle_kb"] = idle

    probes = {"direct": probe(ctx, "direct", app_port)}
    for kind in PROXIES:
        probes[kind] = probe(ctx, kind, side[kind][0].listen)
    jwt_enforced = probes["portcullis"]["bad_token"] == 401
    results["probes"] = probes
    results["portcullis_jwt"] = {"configured": ctx.jwt_mode != "off", "enforced": jwt_enforced}
    log("probes:", json.dumps(probes))
    if ctx.jwt_mode == "on" and not jwt_enforced:
        raise RuntimeError("--jwt on but portcullis does not reject a bad token (JWT support not in this build)")
    if probes["envoy"]["bad_token"] != 401:
        raise RuntimeError("envoy does not reject a bad token")

    # Warm up every path (connection pools, JIT-free but caches and allocators).
    for t in TARGETS:
        port = app_port if t == "direct" else side[t][0].listen
        oha(ctx, url_of(port), duration=2, conns=16, rate=500)

    hs_before = {k: handshakes(side[k][0]) for k in PROXIES}
    runs = []

    def record(kind, scenario, r, res):
        res.update({"target": kind, "scenario": scenario, "round": r})
        runs.append(res)
        log(f"round {r} {scenario:>12} {kind:>10}: ok={res['ok']} rps={res['rps']:.0f} p50={res['p50_ms']:.3f} p99={res['p99_ms']:.3f} cpu={res['cpu_s']}")

    def sidecars_of(kind, inbound_only=False):
        if kind == "direct":
            return []
        a, b = side[kind]
        return [b] if inbound_only else [a, b]

    for r in range(rounds):
        order = rotate(TARGETS, r)
        for scenario, rate, d in (("mesh_100", 100, dur["lat100"]), ("mesh_1000", 1000, dur["lat1000"])):
            for kind in order:
                port = app_port if kind == "direct" else side[kind][0].listen
                res = measured(ctx, sidecars_of(kind), lambda: oha(ctx, url_of(port), duration=d, conns=16, rate=rate))
                record(kind, scenario, r, res)
        # (a) inbound only: client certificate to one inbound sidecar vs plain to the app.
        for kind in order:
            if kind == "direct":
                fn = lambda: oha(ctx, url_of(app_port), duration=dur["inb"], conns=16, rate=1000)
            else:
                port = side[kind][1].listen
                fn = lambda: oha(ctx, url_of(port, tls=True), duration=dur["inb"], conns=16, rate=1000, tls=True)
            record(kind, "inbound_1000", r, measured(ctx, sidecars_of(kind, True), fn))
        # Maximum throughput: unbounded rate, 64 connections.
        for kind in order:
            port = app_port if kind == "direct" else side[kind][0].listen
            res = measured(ctx, sidecars_of(kind), lambda: oha(ctx, url_of(port), duration=dur["max"], conns=64))
            record(kind, "mesh_max", r, res)
        for kind in order:
            if kind == "direct":
                fn = lambda: oha(ctx, url_of(app_port), duration=dur["max"], conns=64)
            else:
                port = side[kind][1].listen
                fn = lambda: oha(ctx, url_of(port, tls=True), duration=dur["max"], conns=64, tls=True)
            record(kind, "inbound_max", r, measured(ctx, sidecars_of(kind, True), fn))
        # New connections: one request per connection (mTLS handshake each time).
        for kind in order:
            if kind == "direct":
                fn = lambda: oha(ctx, url_of(app_port), duration=dur["hs"], conns=16, keepalive=False)
            else:
                port = side[kind][1].listen
                fn = lambda: oha(ctx, url_of(port, tls=True), duration=dur["hs"], conns=16, keepalive=False, tls=True)
            record(kind, "handshake", r, measured(ctx, sidecars_of(kind, True), fn))

    results["outbound_handshakes_during_run"] = {k: handshakes(side[k][0]) - hs_before[k] for k in PROXIES}
    results["outbound_handshakes_total"] = {k: handshakes(side[k][0]) for k in PROXIES}
    results["rss_peak_kb"] = {
        k: {s.role: {"VmHWM": status_kb(s.pid, "VmHWM"), "VmRSS": status_kb(s.pid, "VmRSS")} for s in side[k]} for k in PROXIES
    }
    mtext = http_get(f"http://127.0.0.1:{side['portcullis'][1].admin}/metrics")
    n = metric_sum(mtext, "portcullis_policy_evaluation_duration_seconds_count", [("direction", "inbound")])
    s = metric_sum(mtext, "portcullis_policy_evaluation_duration_seconds_sum", [("direction", "inbound")])
    results["decision_in_proxy"] = {"count": n, "mean_us": (s / n * 1e6) if n else None}
    results["runs"] = runs

    # The issue #17 scenarios (bench/scenarios.py): the storm on the running pairs,
    # then fresh processes for cold start, the unpinned mesh and idle connections.
    results["storm"] = scenarios.storm(this, ctx, side, app_port, 6 if q else 10)
    for kind in PROXIES:
        for s_ in side[kind]:
            stop(s_.proc)
    # Five fresh processes even in a quick run: the first process of a run is
    # often slower for reasons outside the proxy (caches), and a median of two
    # is then the mean with that outlier.
    results["cold"] = scenarios.cold(this, ctx, app_port, 5 if q else 7)
    results["newconns"] = scenarios.newconns(this, ctx, app_port, dur["hs"], 1 if q else 3)
    results["unpinned"] = scenarios.unpinned(this, ctx, dur["lat1000"])
    results["connections"] = scenarios.conns(this, ctx, app_port, conn_counts)
    results["inbound_peak"] = scenarios.inbound_peak(this, ctx, app_port, dur["max"], 1 if q else 2)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return results


def common_args(ap):
    """The binaries and the work directory (shared with bench/scenarios.py)."""
    for name in ("--portcullis", "--envoy", "--oha", "--work"):
        ap.add_argument(name, required=True)


def main():
    ap = argparse.ArgumentParser()
    common_args(ap)
    ap.add_argument("--out", required=True)
    ap.add_argument("--jwt", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: (cleanup(), sys.exit(143)))
    try:
        res = run(args)
    finally:
        cleanup()
    Path(args.out, "raw.json").write_text(json.dumps(res, indent=1))
    log("raw results:", Path(args.out, "raw.json"))


if __name__ == "__main__":
    main()
