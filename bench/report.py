#!/usr/bin/env python3
"""Turns bench/run.sh's raw measurements into results.json, results.md and results.svg.

Medians with min/max over rounds; every ratio is paired with the baseline of the same round
(then the median of the per-round ratios is taken), so machine drift between rounds cancels.
Standard library only.
"""

import argparse
import json
import os
import platform
import statistics
import sys
from html import escape

SCENARIOS = [
    ("no-mesh", "no mesh (baseline)"),
    ("myelin-l34", "Myelin L3/L4 (ClusterIP, policy in the kernel)"),
    ("myelin-l7-node", "Myelin L7 node proxy (sk_assign redirect)"),
    ("sidecar-myelin", "sidecars: Myelin proxy ×2"),
    ("sidecar-nginx", "sidecars: nginx ×2"),
    ("sidecar-haproxy", "sidecars: HAProxy ×2"),
    ("node-nginx", "nginx node proxy"),
    ("node-haproxy", "HAProxy node proxy"),
    ("myelin-l7-node-fixed", "Myelin node proxy, fixed upstream (diagnostic)"),
    ("myelin-l7-node-noagent", "Myelin node proxy, fixed upstream, no agent (diagnostic)"),
    ("plain-vxlan", "plain kernel VXLAN, no mesh (baseline)"),
    ("myelin-tunnel", "Myelin tunnel mode (VXLAN, identity in the VNI)"),
    ("plain-routed", "plain routing, no mesh (baseline)"),
    ("myelin-native", "Myelin native routing"),
]
LABEL = dict(SCENARIOS)

# Between two nodes: each scenario and the plain kernel path of the same round it is paired
# with (issue 12). Every other scenario is paired with no-mesh.
CROSS_NODE = {
    "plain-vxlan": "plain-vxlan",
    "myelin-tunnel": "plain-vxlan",
    "plain-routed": "plain-routed",
    "myelin-native": "plain-routed",
}
# Scenarios without mesh processes (nothing of Myelin's or a proxy's runs).
NO_MESH = {"no-mesh", "plain-vxlan", "plain-routed"}
# Scenarios with a raw TCP stream (iperf3) through their path.
IPERF = {"no-mesh", "myelin-l34"} | set(CROSS_NODE)


def baseline(key):
    """The scenario `key` is paired with: its plain kernel path between nodes, else no mesh."""
    return CROSS_NODE.get(key, "no-mesh")

# metric name -> how to read it from one raw line
METRICS = {
    "rps": lambda r: r["rps"],
    "conn_rate": lambda r: r["conn_rate"],
    "p50": lambda r: r["load"]["latency_ms"]["p50"],
    "p90": lambda r: r["load"]["latency_ms"]["p90"],
    "p99": lambda r: r["load"]["latency_ms"]["p99"],
    "p999": lambda r: r["load"]["latency_ms"]["p999"],
    "cpu": lambda r: r["load"]["total_cpu_us_per_req"],
    "other_cores": lambda r: r["load"]["other_cores"],
    "iperf": lambda r: r["iperf_gbps"],
    "grpc": lambda r: (r.get("grpc") or {}).get("calls_per_s"),
    "rss": lambda r: r["mesh_rss_kib"],
}

PENDING = []


def load_raw(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def by_round(rows, scenario, metric):
    out = {}
    for r in rows:
        if r["scenario"] == scenario:
            v = METRICS[metric](r)
            if v is not None:
                out[r["round"]] = v
    return out


def paired_ratio(rows, scenario, base, metric):
    """Median over rounds of scenario/base, each ratio within one round."""
    a, b = by_round(rows, scenario, metric), by_round(rows, base, metric)
    ratios = [a[k] / b[k] for k in a if k in b and b[k]]
    return stats(ratios)


def paired_diff(rows, scenario, base, metric):
    """Median over rounds of scenario - base, each difference within one round."""
    a, b = by_round(rows, scenario, metric), by_round(rows, base, metric)
    return stats([a[k] - b[k] for k in a if k in b])


def fmt(v, digits=2):
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def cell(s, digits=2):
    if s is None:
        return "—"
    if s["n"] == 1:
        return fmt(s["median"], digits)
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}–{fmt(s['max'], digits)})"


def goals(rows, present, podready):
    """Each goal of issue 7: (text, measured, target, met) with met None when not measurable."""
    out = []

    def ratio_goal(text, scen, base, metric, target, at_least):
        if scen not in present or base not in present:
            out.append({"goal": text, "measured": None, "target": target, "met": None,
                        "op": "≥" if at_least else "≤"})
            return
        s = paired_ratio(rows, scen, base, metric)
        v = s["median"] if s else None
        met = None if v is None else (v >= target if at_least else v <= target)
        out.append({"goal": text, "measured": v, "range": s, "target": target, "met": met,
                    "op": "≥" if at_least else "≤"})

    ratio_goal("L3/L4 req/s vs no mesh", "myelin-l34", "no-mesh", "rps", 0.97, True)
    ratio_goal("L3/L4 p99 vs no mesh", "myelin-l34", "no-mesh", "p99", 1.05, False)
    ratio_goal("L7 node req/s vs Myelin sidecars", "myelin-l7-node", "sidecar-myelin", "rps", 2.0, True)
    ratio_goal("L7 node p50 vs Myelin sidecars", "myelin-l7-node", "sidecar-myelin", "p50", 0.5, False)
    ratio_goal("Myelin proxy req/s vs nginx (node role)", "myelin-l7-node", "node-nginx", "rps", 1.2, True)
    ratio_goal("Myelin proxy req/s vs HAProxy (node role)", "myelin-l7-node", "node-haproxy", "rps", 1.2, True)
    ratio_goal("Myelin proxy p99 vs nginx (node role)", "myelin-l7-node", "node-nginx", "p99", 1.0, False)
    ratio_goal("Myelin proxy p99 vs HAProxy (node role)", "myelin-l7-node", "node-haproxy", "p99", 1.0, False)
    # Between two nodes: at least 0.95× the plain kernel path's throughput, at most 1.05×
    # its latency (1 / 0.95, rounded as the L3/L4 latency goal).
    for scen, base, name in (("myelin-tunnel", "plain-vxlan", "tunnel vs plain VXLAN"),
                             ("myelin-native", "plain-routed", "native vs plain routing")):
        ratio_goal(f"cross-node {name}: req/s", scen, base, "rps", 0.95, True)
        ratio_goal(f"cross-node {name}: conn/s", scen, base, "conn_rate", 0.95, True)
        ratio_goal(f"cross-node {name}: p50", scen, base, "p50", 1.05, False)
        ratio_goal(f"cross-node {name}: p99", scen, base, "p99", 1.05, False)
        ratio_goal(f"cross-node {name}: iperf3 Gbit/s", scen, base, "iperf", 0.95, True)

    mem = memory_estimate(rows, present)
    lab_rss = (podready or {}).get("node_rss_kib", {}).get("100")
    if lab_rss and mem:
        v = lab_rss / mem["sidecars_100_kib"]
        out.append({"goal": f"agent + proxy memory at 100 pods vs 100 Myelin sidecars (lab: "
                            f"{lab_rss / 1024:.1f} MiB vs {mem['sidecars_100_kib'] / 1024:.0f} MiB)",
                    "measured": v, "target": 0.1, "met": v <= 0.1, "op": "≤"})
    elif mem:
        v = mem["ratio"]
        out.append({"goal": "agent + proxy memory at 100 pods vs sidecars (estimate)", "measured": v,
                    "target": 0.1, "met": v <= 0.1, "op": "≤", "estimate": True})
    else:
        out.append({"goal": "agent + proxy memory at 100 pods vs sidecars", "measured": None,
                    "target": 0.1, "met": None, "op": "≤"})
    if podready:
        note = "" if podready["policed"] else " — not policed: the lab's datapath let a rejected peer through"
        out.append({"goal": f"pod ready p50 (ms), {podready['pods']} pods, p99 {podready['p99_ms']:.0f} ms{note}",
                    "measured": podready["p50_ms"], "target": 100, "op": "<",
                    "met": podready["p50_ms"] < 100 and podready["policed"]})
    else:
        out.append({"goal": "pod ready p50 (ms)", "measured": None, "target": 100, "met": None, "op": "<"})
    return out


def memory_estimate(rows, present):
    """Node: agent stand-in + node proxy + datapath process, measured; sidecars: 100 × one
    sidecar (half of the measured pair). Growth of the agent with pods is not measured."""
    need = {"myelin-l7-node", "sidecar-myelin"}
    if not need <= present:
        return None
    node = stats([METRICS["rss"](r) for r in rows if r["scenario"] == "myelin-l7-node"])["median"]
    per_sidecar = stats([METRICS["rss"](r) for r in rows if r["scenario"] == "sidecar-myelin"])["median"] / 2
    sidecars = 100 * per_sidecar
    return {"node_kib": node, "per_sidecar_kib": per_sidecar, "sidecars_100_kib": sidecars,
            "ratio": node / sidecars if sidecars else None}


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "kernel": platform.release(), "cpu": model}


def enforcement(rows, key):
    """What the path was seen to enforce in every run: L4 drop, L7 403."""
    mine = [r for r in rows if r["scenario"] == key]
    seen = []
    for field, name in (("l4_denies", "L4 drop"), ("l7_denies", "L7 403")):
        values = [r.get(field) for r in mine]
        if any(v is not None for v in values):
            seen.append(name if all(v == 1 for v in values) else f"{name} FAILED")
    return ", ".join(seen) or "none"


def markdown(meta, rows, summary, ratios, goal_rows, mem, present, smoke, mesh_cpu, podready, resolve, events):
    m = meta["machine"]
    lines = [
        f"## Benchmark results — {meta['started'][:10]}",
        "",
        f"- date: {meta['started']} ({meta['seconds']} s); machine: {m['cores']} cores ({m['cpu']}), kernel {m['kernel']}",
        f"- command: `{meta['command']}`",
        f"- server: {meta['server']} (one worker), client and server in their own network namespaces, routed "
        f"through a node namespace"
        f"{' (between nodes: client pod on node1, server pod on node2, an underlay veth pair between them)' if present & set(CROSS_NODE) else ''}"
        f"; system under test pinned to cpu0, generator to cpu1; "
        f"{meta['rounds']} interleaved round(s); medians (min–max).",
        f"- noisy: {meta['noisy_runs']} of {meta['runs']} runs had other work on the machine "
        f"(more than 0.05 cores busy with work not started by the harness during the open-loop window; "
        f"median {meta['other_cores_median']:.2f} cores): "
        f"{'numbers are noisy, the other engineers were building and testing on the same 2 cores' if meta['noisy_runs'] else 'quiet machine'}.",
    ]
    if smoke:
        lines.append("- **smoke run**: one short round, numbers only prove the harness works.")
    lines += [
        "",
        "### Goals (issues 7 and 12), ratios paired within each round",
        "",
        "| goal | measured | target | status |",
        "| --- | --- | --- | --- |",
    ]
    for g in goal_rows:
        status = "pending" if g["met"] is None else ("met" if g["met"] else "**NOT met**")
        measured = "—" if g["measured"] is None else f"{g['measured']:.2f}"
        if g.get("range") and g["range"]["n"] > 1:
            measured += f" ({g['range']['min']:.2f}–{g['range']['max']:.2f})"
        if g.get("estimate"):
            measured += " (estimate)"
        lines.append(f"| {g['goal']} | {measured} | {g.get('op', '')} {g['target']} | {status} |")
    lines += [
        "",
        f"### Figures",
        "",
        f"req/s: wrk -t1 -c64, keep-alive (closed loop). Latency: open loop at {meta['rate']:.0f} req/s, "
        "64 connections, from intended send time (coordinated omission accounted for). "
        "CPU: run time of everything the benchmark runs (system under test, generator, ksoftirqd: "
        "softirq work is charged to the sender here) per request at that rate; 'mesh CPU' subtracts "
        "the no-mesh figure of the same round, i.e. what the mesh adds per request. "
        "conn/s: wrk -c32 with `Connection: close`. gRPC: unary calls/s, 64 in flight on one h2c "
        "connection (`myelin-bench grpc-load`), through the same path. RSS: the mesh's own processes. "
        "Policy checked: after each run, a connection to a port the L3/L4 policy does not admit was "
        "dropped (L4 drop) and a request the L7 rules deny (PUT) was answered 403 (L7 403).",
    ]
    single = [k for k, _ in SCENARIOS if k in present and k not in CROSS_NODE]
    if single:
        lines += ["", *TABLE_HEAD, *figure_rows(rows, summary, ratios, mesh_cpu, single)]
    cross = [k for k, _ in SCENARIOS if k in present and k in CROSS_NODE]
    if cross:
        lines += [
            "",
            "### Between two nodes",
            "",
            "Client pod on node1, server pod on node2 (pod to pod, no ClusterIP), the nodes joined by an "
            "underlay veth pair. Tunnel: pods at MTU 1450; plain VXLAN is one kernel VXLAN device per node "
            "(VNI 1, static routes, neighbours and FDB entries), Myelin's is its collect-metadata device with "
            "the sender's identity in the VNI. Native: pods at MTU 1500, each node routes the other's pod "
            "CIDR via its underlay address; Myelin adds its programs (from_underlay on the underlay link). "
            "Ratio and mesh CPU: against the plain path of the same routing, same round (the goals "
            "above give every paired ratio). Policy checked: the server's ingress policy admits the "
            "client pod's identity on 80 and 5201 only; L4 drop: a connection to 81 was dropped.",
            "",
            *TABLE_HEAD,
            *figure_rows(rows, summary, ratios, mesh_cpu, cross),
        ]
    if mem:
        lines += [
            "",
            f"Memory estimate at 100 pods: Myelin node (agent stand-in + node proxy + datapath process, "
            f"measured in the L7 scenario) "
            f"{mem['node_kib'] / 1024:.1f} MiB vs 100 Myelin sidecars at {mem['per_sidecar_kib'] / 1024:.1f} MiB each = "
            f"{mem['sidecars_100_kib'] / 1024:.0f} MiB (ratio {mem['ratio']:.3f})."
            + ("" if (podready or {}).get("node_rss_kib") else " The agent's growth with pods is not measured here."),
        ]
    if podready:
        rss = ", ".join(f"{k} pods {v / 1024:.1f} MiB" for k, v in podready.get("node_rss_kib", {}).items())
        lines += [
            "",
            f"Pod-ready (bench/podready.sh, a lab of its own): `myelin apply` of a pod → first HTTP 200 from a "
            f"client pod, over {podready['pods']} pods: p50 {podready['p50_ms']} ms, p99 {podready['p99_ms']} ms "
            f"(min {podready['min_ms']}, max {podready['max_ms']}); policed: {podready['policed']}. "
            f"Lab node agent + proxy RSS: {rss}.",
        ]
    if resolve:
        # One line per figure: build, one change, the largest manifest, 10,000 applies and deletes.
        lines += ["", "Policy resolution (`cargo run --release -p myelin-policy --example resolve_bench`, on cpu0):", ""]
        lines += [f"- {figure}" for figure in resolve]
    if events:
        lines += ["", "Kernel event pipeline (`cargo test --release -p myelin-agent --test event_throughput -- --ignored`: "
                  "new flows from BPF_PROG_TEST_RUN → ring buffer → Hubble flow → flow ring): "
                  f"{events['events_consumed']:,} events in {events['seconds']} s, {events['events_lost']} lost; "
                  f"the consumer spends {events['consumer_cpu_us_per_event']} µs of CPU per event, i.e. "
                  f"{events['events_per_second_per_core']:,} events/s per core (goal ≥ 200,000); "
                  f"packet to flow in the ring: {events['packet_to_flow_ms']} ms. The producer, one test-run "
                  "syscall per packet, is the limit of the rate actually driven."]

    if PENDING:
        lines += ["", "### Pending", ""]
        lines += [f"- {what}: {why}." for what, why in PENDING]
    return "\n".join(lines) + "\n"


TABLE_HEAD = [
    "| scenario | req/s | ratio | conn/s | p50 ms | p90 ms | p99 ms | p99.9 ms | CPU µs/req | mesh CPU µs/req "
    "| iperf3 Gbit/s | gRPC calls/s | mesh RSS MiB | policy checked |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
]


def figure_rows(rows, summary, ratios, mesh_cpu, keys):
    """One table row per scenario in `keys`: its figures, its req/s ratio to its baseline."""
    out = []
    for key in keys:
        s = summary[key]
        r = ratios.get(key, {}).get("rps")
        rss = s["rss"]
        rss_mib = None if rss is None else {k: (v / 1024 if k != "n" else v) for k, v in rss.items()}
        out.append(
            f"| {LABEL[key]} | {cell(s['rps'])} | {fmt(r['median']) if r else '—'} | {cell(s['conn_rate'])} | "
            f"{cell(s['p50'], 3)} | {cell(s['p90'], 3)} | {cell(s['p99'], 3)} | {cell(s['p999'], 3)} | "
            f"{cell(s['cpu'], 1)} | {cell(mesh_cpu.get(key), 1)} | {cell(s['iperf'])} | {cell(s['grpc'])} | "
            f"{'—' if not rss or rss['median'] == 0 else cell(rss_mib, 1)} | {enforcement(rows, key)} |"
        )
    return out


def svg(summary, present, meta):
    """Three horizontal bar panels: req/s, p50/p99 latency, CPU per request."""
    rows = [(k, l) for k, l in SCENARIOS if k in present]
    bar_h, gap, label_w, panel_w, pad = 16, 8, 210, 300, 20
    panels = [
        ("keep-alive req/s (wrk -c64)", [("rps", "#3b6ea8")]),
        (f"latency ms at {meta['rate']:.0f} req/s open loop: p50, p99", [("p50", "#3b6ea8"), ("p99", "#c0504d")]),
        ("CPU µs per request (all benchmark processes)", [("cpu", "#6a9a3b")]),
    ]
    height = pad * 2 + 30 + len(rows) * (bar_h * 2 + gap)
    width = label_w + len(panels) * (panel_w + pad) + pad
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{pad}" y="{pad}" font-size="13" font-weight="bold">Myelin benchmarks — '
           f'{escape(meta["started"][:10])}, {meta["machine"]["cores"]} cores, kernel {escape(meta["machine"]["kernel"])}, '
           f'medians with min–max</text>']
    top = pad + 30
    for i, (key, label) in enumerate(rows):
        y = top + i * (bar_h * 2 + gap)
        out.append(f'<text x="{pad}" y="{y + bar_h + 4}">{escape(label)}</text>')
    for p, (title, metrics) in enumerate(panels):
        x0 = label_w + p * (panel_w + pad)
        out.append(f'<text x="{x0}" y="{top - 8}" font-weight="bold">{escape(title)}</text>')
        vmax = max((summary[k][m]["max"] for k, _ in rows for m, _ in metrics if summary[k][m]), default=1) or 1
        for i, (key, _) in enumerate(rows):
            for j, (metric, color) in enumerate(metrics):
                s = summary[key][metric]
                if not s:
                    continue
                h = bar_h * 2 // len(metrics)
                y = top + i * (bar_h * 2 + gap) + j * h
                w = panel_w * 0.8 * s["median"] / vmax
                out.append(f'<rect x="{x0}" y="{y}" width="{w:.1f}" height="{h - 2}" fill="{color}"/>')
                lo, hi = (panel_w * 0.8 * s[b] / vmax for b in ("min", "max"))
                ym = y + (h - 2) / 2
                out.append(f'<line x1="{x0 + lo:.1f}" x2="{x0 + hi:.1f}" y1="{ym:.1f}" y2="{ym:.1f}" stroke="black"/>')
                out.append(f'<text x="{x0 + max(w, hi) + 4:.1f}" y="{y + h - 4}">{fmt(s["median"], 2)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def check_smoke(rows, present):
    """Every scenario produced numbers: req/s, conn/s, answered open-loop requests, iperf3 where due."""
    problems = []
    for key in present:
        for r in (r for r in rows if r["scenario"] == key):
            if not r["rps"] > 0 or r["rps_non_2xx"]:
                problems.append(f"{key}: keep-alive run gave {r['rps']} req/s, {r['rps_non_2xx']} non-2xx")
            if not r["conn_rate"] > 0 or r["conn_non_2xx"]:
                problems.append(f"{key}: connection-rate run gave {r['conn_rate']} conn/s, {r['conn_non_2xx']} non-2xx")
            load = r["load"]
            if not load["ok"] > 0 or load["non_2xx"] or load["errors"]:
                problems.append(f"{key}: open-loop run: {load['ok']} ok, {load['non_2xx']} non-2xx, {load['errors']} errors")
            if key in IPERF and not (r["iperf_gbps"] or 0) > 0:
                problems.append(f"{key}: no iperf3 throughput")
            if key in ("no-mesh", "myelin-l34", "myelin-l7-node"):
                grpc = r.get("grpc") or {}
                if not grpc.get("ok") or grpc.get("errors"):
                    problems.append(f"{key}: gRPC calls: {grpc.get('ok')} ok, {grpc.get('errors')} errors")
            if key not in NO_MESH and not r["mesh_rss_kib"] > 0:
                problems.append(f"{key}: no mesh RSS")
            if r.get("l4_denies") == 0:
                problems.append(f"{key}: a connection the L3/L4 policy does not admit got through")
            if r.get("l7_denies") == 0:
                problems.append(f"{key}: a request the L7 rules deny was not answered 403")
    return problems


def soak_markdown(soak):
    """The proxy's memory under a connection storm (`myelin-bench soak`)."""
    if not soak:
        return ""
    mib = 1 << 20
    rounds = ", ".join(f"{r['kind']} {r['bytes_per_connection']:,} B/conn, {r['peak_rss'] / mib:.0f} → "
                       f"{r['after_rss'] / mib:.1f} MiB" for r in soak["rounds"])
    return "\n".join([
        "",
        "### Proxy memory under a connection storm",
        "",
        f"`myelin-bench soak`: the proxy ({soak['workers']} workers, a process of its own) takes "
        f"{soak['connections']:,} client connections from 127.0.1.x (HTTP/1.1 and HTTP/2, idle and after one "
        "request each), they close, and after a settle its resident set is read again. "
        f"Baseline {soak['baseline_rss'] / mib:.1f} MiB; {soak['bytes_per_idle_connection']:,} bytes per idle "
        f"HTTP/2 connection; {soak['bytes_per_connection']:,} bytes per connection of the mixed storm, i.e. "
        f"{soak['connections_per_gib']:,} connections per GiB; after the last storm "
        f"{soak['after_storm_rss'] / mib:.1f} MiB. Storms (per connection, peak → after): {rounds}.",
        "",
    ])


def cluster_goals(convergence, control_plane):
    """Goals of the many-nodes issue: pod convergence across nodes, control-plane scale."""
    out = []
    if convergence:
        note = "" if convergence["policed"] else " — not policed: a rejected peer got through"
        out.append({"goal": f"pod on node1 → first allowed request from node3, p99 (ms), "
                            f"{convergence['pods']} pods, p50 {convergence['p50_ms']:.0f} ms{note}",
                    "measured": convergence["p99_ms"], "target": 1000, "op": "<",
                    "met": convergence["p99_ms"] < 1000 and convergence["policed"]})
    for run in control_plane or []:
        if run["agents"] * run["endpoints_per_agent"] < 100_000:
            continue
        worst = run["convergence_ms"]["all_agents"]["max"]
        failed = [r for r in run["convergence_ms"]["rounds"] if not r.get("converged", True)]
        note = (f" — round {failed[0]['round']} did not converge within 60 s "
                f"({failed[0]['sightings']:,} of {failed[0]['sightings_wanted']:,})") if failed else ""
        out.append({"goal": f"control plane: every agent has every change (max ms), "
                            f"{run['agents']:,} agents × {run['endpoints_per_agent']} endpoints, "
                            f"{run['changes_per_round']:,} changes per round over "
                            f"{run.get('window_ms', 0) / 1000:g} s{note}",
                    "measured": worst, "target": 5000, "op": "<", "met": worst < 5000 and not failed})
    biggest = max(control_plane or [], key=lambda r: r["endpoints"], default=None)
    # Below 10,000 endpoints the growth is noise next to the process's own memory.
    if biggest and biggest["endpoints"] >= 10_000:
        mib = biggest["full_agent"]["mib_per_100k_endpoints"]
        scaled = "" if biggest["endpoints"] == 100_000 else f", scaled from {biggest['endpoints']:,}"
        out.append({"goal": f"agent memory per 100,000 remote endpoints (MiB{scaled})",
                    "measured": mib, "target": 100, "op": "<", "met": mib < 100})
    return out


def cluster_markdown(convergence, control_plane):
    """The convergence and control-plane figures, below the table."""
    lines = []
    if convergence:
        c = convergence
        lines += ["", "### Many nodes", "",
                  f"Convergence (bench/convergence.sh, a 3-node lab of its own, {c['routing']} routing): "
                  f"`myelin apply` of a pod pinned to node1, with a label of its own (a new identity), "
                  f"→ first HTTP 200 from a client pod on node3 that a policy admits to it "
                  f"(node3's egress policy and ipcache, node1's ingress policy), over {c['pods']} pods: "
                  f"p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms (min {c['min_ms']}, max {c['max_ms']}); "
                  f"of which `myelin apply` itself p50 {c['apply_p50_ms']} ms, p99 {c['apply_p99_ms']} ms; "
                  f"the first request after the apply succeeded for {c.get('first_attempt_ok', '—')} pods; "
                  f"policed: {c['policed']}."]
    if control_plane:
        if not convergence:
            lines += ["", "### Many nodes"]
        lines += ["", "Control plane, simulated (`myelin-bench control-plane`: agents without a datapath "
                  "against one real etcd member on 127.0.0.1, each its own connection, lease, record and "
                  "endpoints; churn rounds change 1 % of every agent's endpoints, spread over the round's window, "
                  "alternately to another identity and to a new address; the full agent runs the agent's own "
                  "store-to-engine path in a process of its own):", "",
                  "| agents × endpoints | changes/round | every agent has a change: p50 / p99 / max ms | "
                  "one agent has it: p50 / p99 ms | rounds converged (ms) | full agent: sync s, MiB per 100k "
                  "endpoints | etcd: CPU s populate / sync / churn, RSS MiB, db MiB | etcd requests during churn |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for run in control_plane:
            conv = run["convergence_ms"]
            etcd = run["etcd"]
            churn = etcd["churn"]["metrics"]
            methods = ", ".join(f"{k.split('{')[1].rstrip('}')} {v:,.0f}" for k, v in churn.items()
                                if k.startswith("grpc_server_handled_total{") and v)
            sent = churn.get("grpc_server_msg_sent_total{Watch}", 0)
            slow = churn.get("etcd_debugging_mvcc_slow_watcher_total", 0)
            rounds = ", ".join(f"{r['converged_ms']:.0f}" if r.get("converged", True)
                               else f"not within 60 s ({r['sightings']:,} of {r['sightings_wanted']:,})"
                               for r in conv["rounds"])
            lines.append(
                f"| {run['agents']:,} × {run['endpoints_per_agent']} | {run['changes_per_round']:,} "
                f"over {run.get('window_ms', 0) / 1000:g} s | "
                f"{conv['all_agents']['p50']:.0f} / {conv['all_agents']['p99']:.0f} / {conv['all_agents']['max']:.0f} | "
                f"{conv['each_agent']['p50']:.0f} / {conv['each_agent']['p99']:.0f} | {rounds} | "
                f"{run['setup_seconds']['full_agent_sync']} s, {run['full_agent']['mib_per_100k_endpoints']:.1f} | "
                f"{etcd['population']['cpu_seconds']:.1f} / {etcd['watches_and_full_sync']['cpu_seconds']:.1f} / "
                f"{etcd['churn']['cpu_seconds']:.1f}, {etcd['end']['rss_bytes'] / 1048576:.0f}, "
                f"{etcd['end']['db_bytes'] / 1048576:.0f} | {methods or '—'}; {sent:,.0f} watch responses sent, "
                f"{slow:.0f} slow watchers |")
    return "\n".join(lines) + ("\n" if lines else "")


def check_cluster(convergence, control_plane):
    """The many-nodes figures exist when asked for."""
    problems = []
    if convergence is not None and not convergence.get("p50_ms"):
        problems.append("convergence: no numbers")
    for run in control_plane or []:
        conv = run["convergence_ms"]["all_agents"]
        if not conv["n"] or not conv["p50"] or not run["full_agent"]["rss_synced_bytes"] \
                or not run["etcd"]["churn"]["cpu_seconds"] or not run.get("converged"):
            problems.append(f"control plane {run['agents']}×{run['endpoints_per_agent']}: no numbers")
    if control_plane is not None and not control_plane:
        problems.append("control plane: no run produced a report")
    return problems


def check_soak(soak):
    """The soak produced numbers."""
    if soak is None:
        return []
    if not soak.get("bytes_per_connection") or not soak.get("after_storm_rss"):
        return ["soak: no numbers"]
    return []


def check_podready(podready):
    """Pod-ready produced numbers (whether the lab polices is a result, not a harness fault)."""
    if podready is None:
        return []
    if not podready.get("p50_ms"):
        return ["pod-ready: no numbers"]
    return []


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--started", required=True)
    ap.add_argument("--seconds", type=int, required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--server", required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--readme", help="README whose results section is replaced by the table")
    ap.add_argument("--podready", help="bench/podready.sh's JSON")
    ap.add_argument("--resolve", help="output of myelin-policy's resolve_bench example")
    ap.add_argument("--events", help="JSON line of myelin-agent's event_throughput benchmark")
    ap.add_argument("--soak", help="myelin-bench soak's JSON report")
    ap.add_argument("--convergence", help="bench/convergence.sh's JSON")
    ap.add_argument("--control-plane", help="myelin-bench control-plane's reports, one JSON per line")
    args = ap.parse_args()

    rows = load_raw(args.raw)
    present = {r["scenario"] for r in rows}
    summary = {k: {m: stats([f(r) for r in rows if r["scenario"] == k]) for m, f in METRICS.items()}
               for k in present}
    ratios = {}
    for k in present:
        if baseline(k) in present:
            ratios[k] = {m: paired_ratio(rows, k, baseline(k), m)
                         for m in ("rps", "conn_rate", "p50", "p99", "cpu", "iperf")}
    mesh_cpu = {k: paired_diff(rows, k, baseline(k), "cpu") for k in present if baseline(k) in present}
    noisy = sum(1 for r in rows if r["compilers_running"] > 0 or r["load"]["other_cores"] > 0.05)
    other = statistics.median([r["load"]["other_cores"] for r in rows]) if rows else 0
    meta = {"started": args.started, "seconds": args.seconds, "command": args.command, "rate": args.rate,
            "server": args.server, "machine": machine(), "rounds": max((r["round"] for r in rows), default=0),
            "runs": len(rows), "noisy_runs": noisy, "other_cores_median": other, "smoke": args.smoke}
    podready = None
    if args.podready:
        with open(args.podready, encoding="utf-8") as f:
            podready = json.load(f)
    resolve = None
    if args.resolve:
        with open(args.resolve, encoding="utf-8") as f:
            resolve = [l.strip() for l in f if ":" in l and not l.startswith(("warning", "error"))]
    convergence = None
    if args.convergence:
        with open(args.convergence, encoding="utf-8") as f:
            convergence = json.load(f)
    control_plane = None
    if args.control_plane:
        control_plane = load_raw(args.control_plane)
    goal_rows = goals(rows, present, podready) + cluster_goals(convergence, control_plane)
    mem = memory_estimate(rows, present)

    events = None
    if args.events:
        with open(args.events, encoding="utf-8") as f:
            events = json.loads(f.readline())
    soak = None
    if args.soak:
        with open(args.soak, encoding="utf-8") as f:
            soak = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "summary": summary,
                   "ratios_vs_no_mesh": {k: v for k, v in ratios.items() if k not in CROSS_NODE},
                   "ratios_vs_plain_path_between_nodes": {k: v for k, v in ratios.items() if k in CROSS_NODE},
                   "mesh_cpu_us_per_req": mesh_cpu,
                   "goals": goal_rows,
                   "memory_estimate": mem, "podready": podready,
                   "policy_resolution": resolve, "kernel_events": events, "proxy_soak": soak,
                   "convergence": convergence, "control_plane": control_plane,
                   "raw": rows}, f, indent=1)
    md = markdown(meta, rows, summary, ratios, goal_rows, mem, present, args.smoke, mesh_cpu, podready, resolve, events)
    md += soak_markdown(soak)
    md += cluster_markdown(convergence, control_plane)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(md)
    with open(os.path.join(args.out, "results.svg"), "w", encoding="utf-8") as f:
        f.write(svg(summary, present, meta))
    if args.readme:
        with open(args.readme, encoding="utf-8") as f:
            readme = f.read()
        start, end = "<!-- results:start -->", "<!-- results:end -->"
        if start in readme and end in readme:
            head, rest = readme.split(start, 1)
            _, tail = rest.split(end, 1)
            with open(args.readme, "w", encoding="utf-8") as f:
                f.write(f"{head}{start}\n{md}{end}{tail}")
    print(md)
    if args.smoke:
        problems = (check_smoke(rows, present) + check_podready(podready) + check_soak(soak)
                    + check_cluster(convergence, control_plane))
        if problems:
            print("smoke: FAILED\n  " + "\n  ".join(problems), file=sys.stderr)
            sys.exit(1)
        print(f"smoke: every scenario produced numbers ({', '.join(sorted(present))})", file=sys.stderr)


if __name__ == "__main__":
    main()
