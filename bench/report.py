"""Turns bench/results/raw.json (+ criterion's policy_scale estimates) into
bench/results/results.md, results.json and PNG plots.

Every figure is a median over the rounds of one run; latency is *added* latency
(proxy minus direct, same round); ratios compare portcullis with Envoy.
"""

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import scenarios  # noqa: E402  (bench/scenarios.py, beside this file)

PROXIES = ["portcullis", "envoy"]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def fmt(x, nd=2):
    if x is None:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{nd}f}"


def summarise(raw):
    runs = raw["runs"]
    by = {}
    for r in runs:
        by.setdefault((r["scenario"], r["target"]), []).append(r)
    rounds = sorted({r["round"] for r in runs})

    def per_round(scen, target, key):
        return {r["round"]: r[key] for r in by.get((scen, target), [])}

    s = {}
    for scen in ("mesh_100", "mesh_1000", "inbound_1000"):
        for k in ("p50_ms", "p99_ms", "p999_ms"):
            d = per_round(scen, "direct", k)
            s[(scen, "direct", k)] = med(d.values())
            for t in PROXIES:
                p = per_round(scen, t, k)
                s[(scen, t, "added_" + k)] = med([p[i] - d[i] for i in rounds if i in p and i in d])
                s[(scen, t, k)] = med(p.values())
    for scen in ("mesh_100", "mesh_1000", "inbound_1000", "mesh_max", "inbound_max", "handshake"):
        for t in ["direct"] + PROXIES:
            rs = by.get((scen, t), [])
            s[(scen, t, "rps")] = med([r["rps"] for r in rs])
            for role in ("a", "b"):
                s[(scen, t, f"cpu10k_{role}")] = med(
                    [r["cpu_s"][role] / r["ok"] * 1e4 for r in rs if role in r["cpu_s"] and r["ok"]]
                )
            s[(scen, t, "cpu10k")] = med([sum(r["cpu_s"].values()) / r["ok"] * 1e4 for r in rs if r["cpu_s"] and r["ok"]])
            # Requests per second of sidecar CPU (throughput per core).
            s[(scen, t, "per_core")] = med(
                [r["ok"] / sum(r["cpu_s"].values()) for r in rs if r["cpu_s"] and sum(r["cpu_s"].values()) > 0]
            )
            s[(scen, t, "cpu_util")] = med([sum(r["cpu_s"].values()) / r["wall_s"] for r in rs if r["cpu_s"]])
    return s


def criterion_estimates(crit_dir):
    out = {}
    base = Path(crit_dir) / "policy_scale"
    if not base.exists():
        return out
    for est in sorted(base.glob("*/*/new/estimates.json")):
        group, size = est.parts[-4], est.parts[-3]
        try:
            j = json.loads(est.read_text())
            out[f"{group}/{size}"] = j["mean"]["point_estimate"] / 1e3  # µs
        except (OSError, KeyError, ValueError):
            pass
    return out


def build(raw, crit):
    s = summarise(raw)
    rows = []  # (section, metric, portcullis, envoy, direct, ratio p/e, target, met)
    checks = []

    def add(section, metric, p, e, d=None, target=None, better="lower", unit=""):
        r = ratio(p, e)
        met = None
        if target is not None and r is not None:
            met = r <= target if better == "lower" else r >= target
            checks.append((f"{section}: {metric}", r, target, better, met))
        rows.append((section, metric + (f" ({unit})" if unit else ""), p, e, d, r, target, better, met))

    for scen, label in (("mesh_100", "100 rps"), ("mesh_1000", "1000 rps")):
        for k, name in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
            # Issue #17: added p99 ≤ 0.5× Envoy's; p99.9 at 100 rps ≤ 0.7×.
            tgt = 0.5 if k == "p99_ms" else (0.7 if k == "p999_ms" and scen == "mesh_100" else None)
            add(f"mesh latency, {label}", f"added {name}", s[(scen, "portcullis", "added_" + k)],
                s[(scen, "envoy", "added_" + k)], s[(scen, "direct", k)], tgt, unit="ms")
    add("mesh CPU, 1000 rps", "sidecar A CPU per 10k req", s[("mesh_1000", "portcullis", "cpu10k_a")], s[("mesh_1000", "envoy", "cpu10k_a")], unit="s")
    add("mesh CPU, 1000 rps", "sidecar B CPU per 10k req", s[("mesh_1000", "portcullis", "cpu10k_b")], s[("mesh_1000", "envoy", "cpu10k_b")], unit="s")
    add("mesh CPU, 1000 rps", "both sidecars CPU per 10k req", s[("mesh_1000", "portcullis", "cpu10k")], s[("mesh_1000", "envoy", "cpu10k")], target=0.4, unit="s")
    add("throughput (1 worker, CPU 1)", "mesh max rps (A+B share one core)", s[("mesh_max", "portcullis", "rps")], s[("mesh_max", "envoy", "rps")], s[("mesh_max", "direct", "rps")], 1.5, "higher")
    add("throughput (1 worker, CPU 1)", "mesh req per sidecar CPU-second", s[("mesh_max", "portcullis", "per_core")], s[("mesh_max", "envoy", "per_core")], better="higher")
    add("throughput (1 worker, CPU 1)", "inbound-only max rps (mTLS client)", s[("inbound_max", "portcullis", "rps")], s[("inbound_max", "envoy", "rps")], s[("inbound_max", "direct", "rps")], 1.5, "higher")
    add("throughput (1 worker, CPU 1)", "inbound req per CPU-second", s[("inbound_max", "portcullis", "per_core")], s[("inbound_max", "envoy", "per_core")], better="higher")
    add("new connections", "mTLS handshakes/s (1 request each)", s[("handshake", "portcullis", "rps")], s[("handshake", "envoy", "rps")], s[("handshake", "direct", "rps")], better="higher")
    add("new connections", "CPU per 10k handshakes", s[("handshake", "portcullis", "cpu10k")], s[("handshake", "envoy", "cpu10k")], unit="s")
    per_cpu = lambda t: 1e4 / s[("handshake", t, "cpu10k")] if s[("handshake", t, "cpu10k")] else None  # noqa: E731
    add("new connections", "mTLS handshakes per sidecar CPU-second", per_cpu("portcullis"), per_cpu("envoy"), target=2, better="higher")
    nc = raw.get("newconns") or []
    nc_med = lambda t: statistics.median([r["conns_per_cpu_s"] for r in nc if r["target"] == t and r["conns_per_cpu_s"]] or [0]) or None  # noqa: E731
    if nc:
        add("new connections", "mesh: new connections through A→B per A+B CPU-second (tcp route)", nc_med("portcullis"), nc_med("envoy"), target=2, better="higher")

    idle, peak = raw["rss_idle_kb"], raw["rss_peak_kb"]
    for role, name in (("a", "outbound A"), ("b", "inbound B")):
        add("memory", f"{name} RSS idle", idle["portcullis"][role]["VmRSS"] / 1024, idle["envoy"][role]["VmRSS"] / 1024, unit="MB")
        add("memory", f"{name} peak RSS (VmHWM) under load", peak["portcullis"][role]["VmHWM"] / 1024,
            peak["envoy"][role]["VmHWM"] / 1024, target=0.25, unit="MB")
    for n in sorted({c["n"] for c in raw["connections"]}):
        pc = [c for c in raw["connections"] if c["n"] == n]
        get = lambda t: next((c["per_conn_kb"] for c in pc if c["target"] == t), None)  # noqa: E731
        add("memory per connection", f"{n} idle mTLS keep-alive conns: RSS per conn", get("portcullis"), get("envoy"),
            target=0.5 if n >= 1000 else None, unit="kB")

    # Closing-note figures.
    notes = {
        "a_inbound_only": {
            "added_p50_ms": {t: s[("inbound_1000", t, "added_p50_ms")] for t in PROXIES},
            "added_p99_ms": {t: s[("inbound_1000", t, "added_p99_ms")] for t in PROXIES},
            "direct_p50_ms": s[("inbound_1000", "direct", "p50_ms")],
            "direct_p99_ms": s[("inbound_1000", "direct", "p99_ms")],
            "cpu_s_per_10k": {t: s[("inbound_1000", t, "cpu10k_b")] for t in PROXIES},
        },
        "b_mesh": {
            "added_p50_ms": {t: s[("mesh_1000", t, "added_p50_ms")] for t in PROXIES},
            "added_p99_ms": {t: s[("mesh_1000", t, "added_p99_ms")] for t in PROXIES},
            "cpu_s_per_10k_a": {t: s[("mesh_1000", t, "cpu10k_a")] for t in PROXIES},
            "cpu_s_per_10k_b": {t: s[("mesh_1000", t, "cpu10k_b")] for t in PROXIES},
            "outbound_handshakes_during_run": raw["outbound_handshakes_during_run"],
            "outbound_handshakes_total": raw.get("outbound_handshakes_total", {}),
            "requests_through_a": sum(r["ok"] for r in raw["runs"] if r["target"] == "portcullis" and r["scenario"].startswith("mesh")),
        },
        "decision_mean_us_in_proxy": raw["decision_in_proxy"]["mean_us"],
        "policy_scale_us": crit,
    }
    # Issue #17: peak RSS ≤ 15 MB per mesh sidecar (A and B above: B also carried the
    # inbound-only phases), ≤ 12 MB for an inbound-only sidecar at max load (a fresh one).
    for role in ("a", "b"):
        mb = peak["portcullis"][role]["VmHWM"] / 1024
        checks.append((f"portcullis mesh sidecar {role.upper()} peak RSS ≤ 15 MB", mb, 15, "abs", mb <= 15))
    if raw.get("inbound_peak"):
        mb = scenarios.inbound_peak_mb(raw["inbound_peak"], "portcullis")
        if mb is not None:
            checks.append(("portcullis inbound-only sidecar peak RSS at max load ≤ 12 MB", mb, 12, "abs", mb <= 12))
    return s, rows, checks, notes


def markdown(raw, rows, checks, notes):
    m = raw["meta"]
    jw = raw["portcullis_jwt"]
    L = [
        "# Benchmark results",
        "",
        f"Run {m['started']} → {raw.get('finished', '?')}, {'quick' if m['quick'] else 'full'} mode, "
        f"{m['rounds']} interleaved round(s), durations {m['durations_s']} s. Medians over rounds.",
        f"portcullis JWT: configured={jw['configured']}, enforced={jw['enforced']}"
        + ("" if jw["enforced"] else " (**JWT validation is not in this build: portcullis figures exclude ES256 verification; Envoy's include it**)"),
        "",
        "| section | metric | portcullis | Envoy | direct | portcullis / Envoy | target | met |",
        "|---|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for sec, metric, p, e, d, r, tgt, better, met in rows:
        t = "" if tgt is None else (f"≤ {tgt}×" if better == "lower" else f"≥ {tgt}×")
        mt = "" if met is None else ("yes" if met else "**no**")
        L.append(f"| {sec} | {metric} | {fmt(p, 3)} | {fmt(e, 3)} | {fmt(d, 3) if d is not None else ''} | {fmt(r)} | {t} | {mt} |")
    L += ["", "## Targets", ""]
    for name, val, tgt, better, met in checks:
        rel = "≤" if better in ("lower", "abs") else "≥"
        unit = "" if better == "abs" else "×"
        L.append(f"- {name}: {fmt(val)}{unit} (target {rel} {tgt}{unit}) — {'met' if met else '**missed**'}")
    a, b = notes["a_inbound_only"], notes["b_mesh"]
    L += [
        "",
        "## Figures for the closing notes",
        "",
        "(a) inbound only, 1000 rps, 16 connections: oha with a client certificate through one inbound sidecar "
        "vs plain oha to the app:",
        "",
        "| | added p50 (ms) | added p99 (ms) | sidecar CPU s / 10k req |",
        "|---|---:|---:|---:|",
    ]
    for t in PROXIES:
        L.append(f"| {t} | {fmt(a['added_p50_ms'][t], 3)} | {fmt(a['added_p99_ms'][t], 3)} | {fmt(a['cpu_s_per_10k'][t], 3)} |")
    L += [
        f"| direct (absolute) | p50 {fmt(a['direct_p50_ms'], 3)} | p99 {fmt(a['direct_p99_ms'], 3)} | |",
        "",
        "(b) two-sidecar mesh vs direct app-to-app, 1000 rps, 16 connections:",
        "",
        "| | added p50 (ms) | added p99 (ms) | A CPU s / 10k | B CPU s / 10k | outbound mTLS handshakes during the measured runs | since A started (probes, warm-up) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for t in PROXIES:
        L.append(
            f"| {t} | {fmt(b['added_p50_ms'][t], 3)} | {fmt(b['added_p99_ms'][t], 3)} | {fmt(b['cpu_s_per_10k_a'][t], 3)} | "
            f"{fmt(b['cpu_s_per_10k_b'][t], 3)} | {fmt(b['outbound_handshakes_during_run'][t], 0)} | {fmt(b['outbound_handshakes_total'].get(t), 0)} |"
        )
    L += [
        "",
        f"portcullis carried {b['requests_through_a']} mesh requests through A during the run with "
        f"{fmt(b['outbound_handshakes_during_run']['portcullis'], 0)} new outbound handshake(s) "
        f"({fmt(b['outbound_handshakes_total'].get('portcullis'), 0)} since start, `portcullis_tls_handshakes_total{{direction=\"outbound\"}}`): one pooled HTTP/2 connection carries everything.",
        "",
        "## Decision evaluation",
        "",
        f"In the proxy (B, `portcullis_policy_evaluation_duration_seconds` sum/count over the run): "
        f"{fmt(notes['decision_mean_us_in_proxy'])} µs per decision.",
        "",
    ]
    if notes["policy_scale_us"]:
        L += ["criterion `benches/policy_scale.rs` (build input + evaluate, mean):", "", "| policy | µs |", "|---|---:|"]
        for k, v in notes["policy_scale_us"].items():
            L.append(f"| {k} | {fmt(v)} |")
    L += scenarios.markdown(raw)
    L += ["", "Plots: latency.png, cpu.png, throughput.png, memory.png, connections.png, scenarios.png, policy_scale.png.", ""]
    return "\n".join(L)


def percentile_bars(ax, rows, colors, title, log=False):
    """p50 / p99 / p99.9 of one scenario's rows (one per target) as grouped bars."""
    by = {r["target"]: r for r in rows or []}
    for i, t in enumerate(["direct"] + PROXIES):
        r = by.get(t) or {}
        ax.bar([j + i * 0.27 for j in range(3)], [r.get(k, 0) for k in ("p50_ms", "p99_ms", "p999_ms")], 0.27,
               label=t, color=colors[t])
    if log:
        ax.set_yscale("log")
    ax.set_xticks([j + 0.27 for j in range(3)], ["p50", "p99", "p99.9"])
    ax.set_ylabel("ms (log)" if log else "ms")
    ax.set_title(title)
    ax.legend()


def scenario_plot(out, raw, s, colors):
    """The issue #17 scenarios (bench/scenarios.py) in one figure: cold start, the
    handshake storm, new connections per CPU-second, the unpinned mesh."""
    med = lambda xs: statistics.median(xs) if xs else 0  # noqa: E731
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    ax = axes[0][0]
    cold = raw.get("cold") or []
    for i, t in enumerate(["direct"] + PROXIES):
        vals = []
        for topo in ("inbound", "mesh"):
            rs = [r for r in cold if r["topology"] == topo and r["target"] == t]
            vals.append(med([r["first_ms"] for r in rs]) / (med([r["warm_ms"] for r in rs]) or 1))
        ax.bar([j + i * 0.27 for j in range(2)], vals, 0.27, label=t, color=colors[t])
    ax.axhline(2, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks([j + 0.27 for j in range(2)], ["inbound", "mesh"])
    ax.set_title("cold start: first request / warm one (goal ≤ 2)")
    ax.legend()
    percentile_bars(axes[0][1], raw.get("storm"), colors, "handshake storm: kept-alive connections' latency", log=True)
    ax = axes[1][0]
    nc = raw.get("newconns") or []
    for i, t in enumerate(PROXIES):
        cpu10k = s[("handshake", t, "cpu10k")]
        vals = [1e4 / cpu10k if cpu10k else 0,
                med([r["conns_per_cpu_s"] for r in nc if r["target"] == t and r["conns_per_cpu_s"]])]
        ax.bar([j + i * 0.4 for j in range(2)], vals, 0.4, label=t, color=colors[t])
    ax.set_xticks([j + 0.2 for j in range(2)], ["client → B (handshakes)", "mesh A → B (tcp route)"])
    ax.set_ylabel("new mTLS connections per CPU-second\n(of B; through the mesh, of A and B)")
    ax.set_title("new connections through the mesh (tcp route)")
    ax.legend()
    percentile_bars(axes[1][1], raw.get("unpinned"), colors, "unpinned mesh at 1000 rps")
    fig.tight_layout()
    fig.savefig(out / "scenarios.png", dpi=100)
    plt.close(fig)


def plots(out, raw, s, notes):
    colors = {"portcullis": "#2a7ab9", "envoy": "#c44e52", "direct": "#888888"}
    # Latency
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, scen, title in ((axes[0], "mesh_100", "100 rps"), (axes[1], "mesh_1000", "1000 rps")):
        ks = ["p50_ms", "p99_ms", "p999_ms"]
        for i, t in enumerate(PROXIES):
            vals = [s[(scen, t, "added_" + k)] or 0 for k in ks]
            ax.bar([j + i * 0.4 for j in range(3)], vals, 0.4, label=t, color=colors[t])
        ax.set_xticks([j + 0.2 for j in range(3)], ["p50", "p99", "p99.9"])
        ax.set_title(f"added latency, mesh, {title}")
        ax.set_ylabel("ms")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    plt.close(fig)
    # CPU
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, t in enumerate(PROXIES):
        vals = [s[("mesh_1000", t, "cpu10k_a")] or 0, s[("mesh_1000", t, "cpu10k_b")] or 0, s[("inbound_1000", t, "cpu10k_b")] or 0]
        ax.bar([j + i * 0.4 for j in range(3)], vals, 0.4, label=t, color=colors[t])
    ax.set_xticks([j + 0.2 for j in range(3)], ["mesh A", "mesh B", "inbound only"])
    ax.set_ylabel("CPU seconds per 10k requests")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "cpu.png", dpi=100)
    plt.close(fig)
    # Throughput
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = ["mesh max rps", "inbound max rps", "handshakes/s"]
    scen = ["mesh_max", "inbound_max", "handshake"]
    for i, t in enumerate(["direct"] + PROXIES):
        ax.bar([j + i * 0.27 for j in range(3)], [s[(x, t, "rps")] or 0 for x in scen], 0.27, label=t, color=colors[t])
    ax.set_xticks([j + 0.27 for j in range(3)], labels)
    ax.set_ylabel("per second (sidecars on one core)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=100)
    plt.close(fig)
    # Memory
    fig, ax = plt.subplots(figsize=(7, 4))
    idle, peak = raw["rss_idle_kb"], raw["rss_peak_kb"]
    cats = ["A idle", "B idle", "A peak", "B peak"]
    for i, t in enumerate(PROXIES):
        vals = [idle[t]["a"]["VmRSS"], idle[t]["b"]["VmRSS"], peak[t]["a"]["VmHWM"], peak[t]["b"]["VmHWM"]]
        ax.bar([j + i * 0.4 for j in range(4)], [v / 1024 for v in vals], 0.4, label=t, color=colors[t])
    ax.set_xticks([j + 0.2 for j in range(4)], cats)
    ax.set_ylabel("MB")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=100)
    plt.close(fig)
    scenario_plot(out, raw, s, colors)
    # Connections
    fig, ax = plt.subplots(figsize=(6, 4))
    for t in PROXIES:
        pts = sorted((c["n"], c["rss_after_kb"] / 1024) for c in raw["connections"] if c["target"] == t)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=t, color=colors[t])
    ax.set_xscale("log")
    ax.set_xlabel("idle mTLS keep-alive connections")
    ax.set_ylabel("inbound sidecar RSS (MB)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "connections.png", dpi=100)
    plt.close(fig)
    # Policy scale
    crit = notes["policy_scale_us"]
    if crit:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar(list(crit.keys()), list(crit.values()), color=colors["portcullis"])
        ax.set_ylabel("µs per decision")
        ax.set_title("decision time vs policy size")
        plt.setp(ax.get_xticklabels(), rotation=20)
        fig.tight_layout()
        fig.savefig(out / "policy_scale.png", dpi=100)
        plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--criterion", required=True)
    a = ap.parse_args()
    out = Path(a.out)
    raw = json.loads((out / "raw.json").read_text())
    crit = criterion_estimates(a.criterion)
    s, rows, checks, notes = build(raw, crit)
    md = markdown(raw, rows, checks, notes)
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(
        json.dumps(
            {"rows": [dict(zip(["section", "metric", "portcullis", "envoy", "direct", "ratio", "target", "better", "met"], r)) for r in rows],
             "checks": checks, "notes": notes, "jwt": raw["portcullis_jwt"], "meta": raw["meta"]},
            indent=1,
        )
    )
    plots(out, raw, s, notes)
    print(md)


if __name__ == "__main__":
    main()
