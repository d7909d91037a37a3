"""The issue #17 scenarios, run by bench/harness.py after the steady-state rounds:

  cold      first request on a freshly started sidecar (inbound B alone, and the
            A+B mesh) against later ones, for portcullis, Envoy and a fresh app
  storm     1000 rps over 16 kept-alive mTLS connections to inbound B while 200 new
            mTLS connections (one request each) arrive at once; p99 of the
            established connections and failures on either side
  unpinned  the mesh at 1000 rps with nothing pinned: sidecars, app and load
            generator share both cores, as in a pod
  conns     RSS per idle mTLS keep-alive connection at 1,000 and 10,000 held
  newconns  new connections through the mesh: each client connection to A's tcp
            route reaches B as portcullis carries it (a tunnel on the pooled
            connection) or Envoy does (a new, resumed mTLS connection per
            connection); connections per CPU-second of A and B

Each function takes the harness module `h` (its process list, spawn and oha) and
its context, and returns plain data for raw.json; `markdown(raw)` renders them.

Alone (one scenario, results to stdout as JSON), e.g. while working on memory:
  bench/.venv/bin/python bench/scenarios.py --portcullis target/release/portcullis \
      --envoy ENVOY --oha OHA --work /tmp/w --only conns --counts 1000,10000
"""

import statistics
import subprocess
import os
import sys
import threading
import time

STORM_CONNS = 200
STORM_RATE = 1000


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def _fmt(x, nd=3):
    if x is None:
        return "n/a"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.{nd}f}"


def wait_ready(h, s, timeout=20):
    """Until the sidecar reports ready (portcullis `/ready` 200; Envoy is LIVE already)."""
    if s.kind != "portcullis":
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            h.http_get(f"http://127.0.0.1:{s.admin}/ready", 1)
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("portcullis never became ready")


def curl_ms(h, ctx, url, tls):
    """One request on a new connection (curl, so no session resumption): total ms."""
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total} %{time_connect} %{time_appconnect} %{time_starttransfer}",
           "-H", f"authorization: Bearer {ctx.jwt['token']}", "--max-time", "10"]
    if tls:
        cmd += ["-k", "--cert", ctx.pki / "a" / "tls.crt", "--key", ctx.pki / "a" / "tls.key"]
    full = (["taskset", "-c", h.LOAD_CPU] if h.PIN else []) + [str(c) for c in cmd + [url]]
    out = subprocess.run(full, capture_output=True, timeout=30).stdout.decode().split()
    if len(out) != 5 or out[0] != "200":
        raise RuntimeError(f"cold-start request to {url} answered {out}")
    if os.environ.get("COLD_DETAIL"):
        h.log("  connect %.2f tls %.2f first byte %.2f total %.2f ms" % tuple(float(x) * 1e3 for x in out[2:] + out[1:2]))
    return float(out[1]) * 1e3


def cold(h, ctx, app_port, reps, warm_n=5):
    """First request on a fresh process vs the median of the next `warm_n`.

    The load generator's own first request after a pause (a target starting) costs it
    2-3x its next ones on this machine, whatever answers: the bare app's first / warm
    was 2.3-2.8, and a long-running, warm sidecar's 2-3 after a 0.5 s pause. So each
    first request follows one of the same shape (same client certificate, same token)
    to a server that is already warm and not measured: a reference portcullis for
    TLS, the app for plaintext. Its time is kept as `client_warm_ms`."""
    ref = h.start_portcullis(ctx, "b", app_port=app_port)
    wait_ready(h, ref)
    ref_url = {True: h.url_of(ref.listen, tls=True), False: h.url_of(app_port)}
    for _ in range(3):
        for tls in (True, False):
            curl_ms(h, ctx, ref_url[tls], tls)
    rows = []
    for topo in ("inbound", "mesh"):
        for kind in h.TARGETS:
            for rep in range(reps):
                procs = []
                if kind == "direct":
                    port = h.free_port()
                    procs.append(h.spawn([ctx.bin, "echo", "--listen", f"127.0.0.1:{port}"], cpu=h.PROXY_CPU,
                                         env={"TOKIO_WORKER_THREADS": "1"}))
                    h.wait_port(port)
                    url, tls = h.url_of(port), False
                elif topo == "inbound":
                    b = (h.start_portcullis if kind == "portcullis" else h.start_envoy)(ctx, "b", app_port=app_port)
                    wait_ready(h, b)
                    procs.append(b.proc)
                    url, tls = h.url_of(b.listen, tls=True), True
                else:
                    a, b = h.start_pair(ctx, kind, app_port)
                    wait_ready(h, b)
                    wait_ready(h, a)
                    procs += [a.proc, b.proc]
                    url, tls = h.url_of(a.listen), False
                client_warm = curl_ms(h, ctx, ref_url[tls], tls)
                first = curl_ms(h, ctx, url, tls)
                warm = _med([curl_ms(h, ctx, url, tls) for _ in range(warm_n)])
                rows.append({"topology": topo, "target": kind, "rep": rep, "first_ms": first, "warm_ms": warm,
                             "client_warm_ms": client_warm})
                h.log(f"cold {topo:>7} {kind:>10}: first {first:.2f} ms, warm {warm:.2f} ms")
                for p in procs:
                    h.stop(p)
    h.stop(ref.proc)
    return rows


def storm(h, ctx, side, app_port, duration):
    """Steady keep-alive load to inbound B with a burst of new connections in the middle."""
    rows = []
    for kind in h.TARGETS:
        if kind == "direct":
            url, tls, sidecars = h.url_of(app_port), False, []
        else:
            b = side[kind][1]
            url, tls, sidecars = h.url_of(b.listen, tls=True), True, [b]
        burst = {}

        def fire(url=url, tls=tls, burst=burst):
            time.sleep(duration / 3)
            t0 = time.time()
            burst.update(h.oha(ctx, url, duration=None, conns=STORM_CONNS, requests=STORM_CONNS,
                               tls=tls, keepalive=False))
            burst["burst_wall_s"] = time.time() - t0

        t = threading.Thread(target=fire)
        t.start()
        res = h.measured(ctx, sidecars, lambda: h.oha(ctx, url, duration=duration, conns=16, rate=STORM_RATE, tls=tls))
        t.join()
        res.update({"target": kind, "burst_ok": burst.get("ok"), "burst_codes": burst.get("codes"),
                    "burst_errors": burst.get("errors"), "burst_wall_s": burst.get("burst_wall_s")})
        rows.append(res)
        h.log(f"storm {kind:>10}: steady ok={res['ok']} p99={res['p99_ms']:.3f} p99.9={res['p999_ms']:.3f} "
              f"errors={res['errors']} | burst ok={burst.get('ok')}/{STORM_CONNS} in {burst.get('burst_wall_s', 0):.2f} s")
    return rows


def unpinned(h, ctx, duration):
    """The mesh at 1000 rps with no CPU pinning for anything (its own app and sidecars)."""
    h.PIN = False
    procs = []
    try:
        app_port = h.free_port()
        procs.append(h.spawn([ctx.bin, "echo", "--listen", f"127.0.0.1:{app_port}"], cpu=None,
                             env={"TOKIO_WORKER_THREADS": "1"}))
        h.wait_port(app_port)
        side = {}
        for kind in h.PROXIES:
            side[kind] = h.start_pair(ctx, kind, app_port)
            procs += [s.proc for s in side[kind]]
        for kind in h.TARGETS:  # warm-up
            port = app_port if kind == "direct" else side[kind][0].listen
            h.oha(ctx, h.url_of(port), duration=2, conns=16, rate=500)
        rows = []
        for kind in h.TARGETS:
            port = app_port if kind == "direct" else side[kind][0].listen
            sidecars = [] if kind == "direct" else list(side[kind])
            res = h.measured(ctx, sidecars, lambda: h.oha(ctx, h.url_of(port), duration=duration, conns=16, rate=1000))
            res["target"] = kind
            rows.append(res)
            h.log(f"unpinned {kind:>10}: ok={res['ok']} p50={res['p50_ms']:.3f} p99={res['p99_ms']:.3f} cpu={res['cpu_s']}")
        return rows
    finally:
        for p in procs:
            h.stop(p)
        h.PIN = True


def resumed(h, s):
    """(handshakes, resumed) accepted by inbound sidecar `s` so far."""
    if s.kind == "portcullis":
        text = h.http_get(f"http://127.0.0.1:{s.admin}/metrics")
        lab = [("direction", "inbound")]
        return (h.metric_sum(text, "portcullis_tls_handshakes_total", lab),
                h.metric_sum(text, "portcullis_tls_resumed_handshakes_total", lab))
    text = h.http_get(f"http://127.0.0.1:{s.admin}/stats?filter=ssl")
    got = {"handshake": 0, "session_reused": 0}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        for k in got:
            if name.startswith("listener.") and name.endswith(f".ssl.{k}"):
                got[k] += int(value)
    return got["handshake"], got["session_reused"]


def newconns(h, ctx, app_port, duration, reps):
    """oha without keep-alive through A's tcp route: a new connection through A per
    request (portcullis: a tunnel on the pooled A -> B connection; Envoy: an mTLS
    connection A -> B each). Fresh pairs; the targets alternate over `reps` rounds."""
    rows = []
    pairs = {k: h.start_pair(ctx, k, app_port, route_protocol="tcp") for k in h.PROXIES}
    try:
        for kind in h.PROXIES:
            wait_ready(h, pairs[kind][0])
            wait_ready(h, pairs[kind][1])
            # Warm-up: the first full handshake, the token cache, the pool to the app.
            h.oha(ctx, h.url_of(pairs[kind][0].listen), duration=1, conns=16, keepalive=False)
        for rep in range(reps):
            for kind in h.rotate(h.TARGETS, rep):
                port = app_port if kind == "direct" else pairs[kind][0].listen
                sidecars = [] if kind == "direct" else list(pairs[kind])
                before = resumed(h, pairs[kind][1]) if sidecars else (0, 0)
                res = h.measured(ctx, sidecars, lambda: h.oha(ctx, h.url_of(port), duration=duration, conns=16,
                                                                 keepalive=False))
                after = resumed(h, pairs[kind][1]) if sidecars else (0, 0)
                res.update({"target": kind, "rep": rep, "handshakes": after[0] - before[0],
                            "resumed": after[1] - before[1]})
                cpu = sum(res["cpu_s"].values())
                res["conns_per_cpu_s"] = res["ok"] / cpu if cpu else None
                rows.append(res)
                h.log(f"newconns {kind:>10}: ok={res['ok']} cpu={res['cpu_s']} handshakes={res['handshakes']} "
                      f"resumed={res['resumed']}")
    finally:
        for kind in h.PROXIES:
            for s_ in pairs[kind]:
                h.stop(s_.proc)
    return rows


def conns(h, ctx, app_port, counts):
    """A fresh inbound sidecar per count; N idle mTLS keep-alive connections held."""
    rows = []
    for n in counts:
        for kind in h.PROXIES:
            b = (h.start_portcullis if kind == "portcullis" else h.start_envoy)(ctx, "b", app_port=app_port)
            wait_ready(h, b)

            def hold(count):
                p = h.spawn(
                    [sys.executable, h.HERE / "hold_conns.py", "--port", b.listen, "--pki", ctx.pki / "a", "--n", count,
                     "--header", f"authorization: Bearer {ctx.jwt['token']}"],
                    cpu=h.LOAD_CPU, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                )
                return p, p.stdout.readline().decode().split()

            # One-time costs out of the baseline, alike for both proxies: 32
            # connections held and closed first (code paths mapped, the app's pool
            # and the allocators' first growth), then 2 s to settle; twice, because
            # portcullis releases start-up's code pages a second after its first
            # request and the second round maps the connection path back.
            for _ in range(2):
                warm, _ = hold(32)
                warm.stdin.close()
                h.stop(warm)
                time.sleep(2.0)
            before = {k: h.status_kb(b.pid, k) for k in ("VmRSS", "RssAnon")}
            holder, line = hold(n)
            # Idle for 2 s: long enough for idle connections to settle (portcullis rests
            # HTTP/1 connections after 0.5 s and trims the heap within a second).
            time.sleep(2.0)
            after = {k: h.status_kb(b.pid, k) for k in ("VmRSS", "RssAnon", "VmHWM")}
            held = int(line[1]) if len(line) > 1 else 0
            rows.append({"target": kind, "n": n, "held": held, "rss_before_kb": before["VmRSS"],
                         "rss_after_kb": after["VmRSS"], "anon_before_kb": before["RssAnon"],
                         "anon_after_kb": after["RssAnon"], "hwm_kb": after["VmHWM"],
                         "per_conn_kb": (after["VmRSS"] - before["VmRSS"]) / held if held else None})
            h.log(f"conns {kind:>10} n={n}: held={held} rss {before['VmRSS']} -> {after['VmRSS']} kB")
            holder.stdin.close()
            h.stop(holder)
            h.stop(b.proc)
    return rows


def inbound_peak(h, ctx, app_port, duration, reps):
    """Issue #17's "inbound only at max load": a fresh inbound sidecar, no mesh role,
    warmed for 2 s at 500 rps, then two windows of unbounded load over 64 mTLS
    connections; its VmHWM at the end (the start-up peak included)."""
    rows = []
    for rep in range(reps):
        for kind in h.PROXIES:
            b = (h.start_portcullis if kind == "portcullis" else h.start_envoy)(ctx, "b", app_port=app_port)
            wait_ready(h, b)
            url = h.url_of(b.listen, tls=True)
            h.oha(ctx, url, duration=2, conns=16, rate=500, tls=True)
            rps = [h.oha(ctx, url, duration=duration, conns=64, tls=True)["rps"] for _ in range(2)]
            row = {"target": kind, "rep": rep, "rps": max(rps)}
            row.update({k: h.status_kb(b.pid, k) for k in ("VmHWM", "VmRSS", "RssAnon", "RssFile")})
            rows.append(row)
            h.log(f"inbound peak {kind:>10}: VmHWM {row['VmHWM']} kB at {row['rps']:.0f} rps")
            h.stop(b.proc)
    return rows


def inbound_peak_mb(rows, target):
    """The median VmHWM of `target`'s fresh inbound sidecars, in MB."""
    return _med([r["VmHWM"] / 1024 for r in rows if r["target"] == target])


def markdown(raw):
    """The tables of the scenarios above, for results.md and BENCHMARKS.md."""
    L = []
    c = raw.get("cold")
    if c:
        L += ["", "### Cold start (first request on a fresh process vs the next five, each on a new connection; medians over fresh processes)", "",
              "| topology | target | first (ms) | warm (ms) | first / warm |", "|---|---|---:|---:|---:|"]
        for topo in ("inbound", "mesh"):
            for t in ("portcullis", "envoy", "direct"):
                rs = [r for r in c if r["topology"] == topo and r["target"] == t]
                first, warm = _med([r["first_ms"] for r in rs]), _med([r["warm_ms"] for r in rs])
                L.append(f"| {topo} | {t} | {_fmt(first)} | {_fmt(warm)} | {_fmt(_ratio(first, warm), 2)} |")
    s = raw.get("storm")
    if s:
        by = {r["target"]: r for r in s}
        L += ["", f"### Handshake storm (inbound, {STORM_RATE} rps over 16 kept-alive connections; "
              f"{STORM_CONNS} new mTLS connections at once)", "",
              "| target | p50 (ms) | p99 (ms) | p99.9 (ms) | failed on kept-alive | burst answered | burst wall (s) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
        for t in ("portcullis", "envoy", "direct"):
            r = by.get(t)
            if not r:
                continue
            # oha cancels the request in flight when its `-z` window closes and reports it
            # as "aborted due to deadline": that is the load generator stopping, not a
            # failure (the target answered every request it was sent).
            failed = sum(v for k, v in r["codes"].items() if k != "200") + sum(
                v for k, v in r["errors"].items() if k != "aborted due to deadline")
            L.append(f"| {t} | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} | {_fmt(r['p999_ms'])} | {failed} | "
                     f"{r['burst_ok']}/{STORM_CONNS} | {_fmt(r['burst_wall_s'], 2)} |")
        if "portcullis" in by and "envoy" in by and "direct" in by:
            d = by["direct"]["p99_ms"]
            p, e = by["portcullis"]["p99_ms"] - d, by["envoy"]["p99_ms"] - d
            L += ["", f"Added p99 during the storm: portcullis {_fmt(p)} ms, Envoy {_fmt(e)} ms, "
                  f"ratio {_fmt(_ratio(p, e), 2)} (target ≤ 0.5)."]
    n = raw.get("newconns")
    if n:
        L += ["", "### New connections through the mesh (oha without keep-alive → A's tcp route → B → app, a new "
              "connection per request: portcullis carries each as a tunnel on its pooled A → B connection, Envoy "
              "opens a resumed mTLS connection A → B each; medians over rounds)", "",
              "| target | connections/s | A+B CPU s per 10k connections | connections per A+B CPU-second | "
              "B handshakes resumed |", "|---|---:|---:|---:|---:|"]
        for t in ("portcullis", "envoy", "direct"):
            rs = [r for r in n if r["target"] == t]
            if not rs:
                continue
            cps = _med([r["conns_per_cpu_s"] for r in rs])
            cpu10k = _med([sum(r["cpu_s"].values()) / r["ok"] * 1e4 for r in rs if r["ok"] and r["cpu_s"]])
            hs = sum(r["handshakes"] for r in rs)
            res = f"{sum(r['resumed'] for r in rs)}/{hs}" if hs else "n/a"
            L.append(f"| {t} | {_fmt(_med([r['rps'] for r in rs]))} | {_fmt(cpu10k)} | {_fmt(cps)} | {res} |")
        p = _med([r["conns_per_cpu_s"] for r in n if r["target"] == "portcullis"])
        e = _med([r["conns_per_cpu_s"] for r in n if r["target"] == "envoy"])
        if p and e:
            L += ["", f"New mesh connections per CPU-second: portcullis / Envoy {_fmt(_ratio(p, e), 2)} "
                  "(target ≥ 2)."]
    u = raw.get("unpinned")
    if u:
        by = {r["target"]: r for r in u}
        L += ["", "### Unpinned (mesh, 1000 rps; sidecars, app and load generator share both cores)", "",
              "| target | p50 (ms) | p99 (ms) | p99.9 (ms) | sidecar CPU s / 10k req |", "|---|---:|---:|---:|---:|"]
        for t in ("portcullis", "envoy", "direct"):
            r = by.get(t)
            if not r:
                continue
            cpu = sum(r["cpu_s"].values()) / r["ok"] * 1e4 if r["cpu_s"] and r["ok"] else None
            L.append(f"| {t} | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} | {_fmt(r['p999_ms'])} | {_fmt(cpu)} |")
    ip = raw.get("inbound_peak")
    if ip:
        L += ["", "### Peak RSS of a fresh inbound-only sidecar at max load (64 mTLS connections, unbounded rate; "
              "medians over fresh processes)", "",
              "| target | VmHWM (MB) | RSS after (MB) | of which anonymous (MB) | of which file (MB) | max rps |",
              "|---|---:|---:|---:|---:|---:|"]
        for t in ("portcullis", "envoy"):
            rs = [r for r in ip if r["target"] == t]
            if not rs:
                continue
            L.append(f"| {t} | {_fmt(inbound_peak_mb(ip, t), 1)} | {_fmt(_med([r['VmRSS'] / 1024 for r in rs]), 1)} | "
                     f"{_fmt(_med([r['RssAnon'] / 1024 for r in rs]), 1)} | {_fmt(_med([r['RssFile'] / 1024 for r in rs]), 1)} | "
                     f"{_fmt(_med([r['rps'] for r in rs]), 0)} |")
    k = raw.get("connections")
    if k and any("anon_after_kb" in r for r in k):
        L += ["", "### Memory per idle mTLS keep-alive connection (fresh inbound sidecar per count)", "",
              "| connections | portcullis kB/conn | Envoy kB/conn | ratio | portcullis RSS after (MB) | Envoy RSS after (MB) |",
              "|---:|---:|---:|---:|---:|---:|"]
        for n in sorted({r["n"] for r in k}):
            p = next((r for r in k if r["n"] == n and r["target"] == "portcullis"), None)
            e = next((r for r in k if r["n"] == n and r["target"] == "envoy"), None)
            pk, ek = (p or {}).get("per_conn_kb"), (e or {}).get("per_conn_kb")
            L.append(f"| {n} | {_fmt(pk)} | {_fmt(ek)} | {_fmt(_ratio(pk, ek), 2)} | "
                     f"{_fmt((p or {}).get('rss_after_kb', 0) / 1024, 1)} | {_fmt((e or {}).get('rss_after_kb', 0) / 1024, 1)} |")
    return L


def main():
    import argparse
    import json
    from pathlib import Path

    import harness as h

    ap = argparse.ArgumentParser()
    h.common_args(ap)
    ap.add_argument("--only", choices=["cold", "storm", "unpinned", "conns", "newconns", "inbound_peak"], required=True)
    ap.add_argument("--counts", default="1000,10000")
    ap.add_argument("--targets", default="portcullis,envoy")
    a = ap.parse_args()
    ctx = h.Ctx()
    ctx.bin, ctx.envoy, ctx.oha, ctx.jwt_mode = a.portcullis, a.envoy, a.oha, "auto"
    ctx.work = Path(a.work)
    ctx.work.mkdir(parents=True, exist_ok=True)
    ctx.pki = h.make_pki(ctx.bin, ctx.work)
    ctx.jwt = h.make_jwt(ctx.work)
    import yaml

    ctx.rbac = h.envoy_config.rbac_from_data(yaml.safe_load((h.ROOT / "policies" / "data.yaml").read_text()))
    h.PROXIES = [t for t in a.targets.split(",") if t in h.PROXIES]
    h.TARGETS = [t for t in h.TARGETS if t == "direct" or t in h.PROXIES]
    try:
        app_port = h.free_port()
        h.spawn([ctx.bin, "echo", "--listen", f"127.0.0.1:{app_port}"], cpu=h.LOAD_CPU,
                env={"TOKIO_WORKER_THREADS": "1"})
        h.wait_port(app_port)
        if a.only == "conns":
            out = {"connections": conns(h, ctx, app_port, [int(x) for x in a.counts.split(",")])}
        elif a.only == "cold":
            out = {"cold": cold(h, ctx, app_port, int(os.environ.get("COLD_REPS", "5")))}
        elif a.only == "newconns":
            out = {"newconns": newconns(h, ctx, app_port, 5, int(os.environ.get("NEWCONNS_REPS", "2")))}
        elif a.only == "inbound_peak":
            out = {"inbound_peak": inbound_peak(h, ctx, app_port, 8, int(os.environ.get("PEAK_REPS", "2")))}
        elif a.only == "unpinned":
            out = {"unpinned": unpinned(h, ctx, 5)}
        else:
            side = {k: h.start_pair(ctx, k, app_port) for k in h.PROXIES}
            out = {"storm": storm(h, ctx, side, app_port, 6)}
    finally:
        h.cleanup()
    print(json.dumps(out, indent=1))
    print("\n".join(markdown(out)), file=sys.stderr)


if __name__ == "__main__":
    main()
