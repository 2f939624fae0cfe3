#!/usr/bin/env python3
"""Report of loadtest/big_sale.sh: docs/pipeline-benchmark.md, the lag chart (SVG next to it) and the
big-sale block of docs/benchmarks.md (between its big-sale markers), from one sitting's work dir.

usage: big_sale_report.py WORK_DIR OUT_MD BEFORE_LABEL GIT USERS RUN_SECS MEMBERS CANCEL_EVERY
"""
import json
import os
import re
import subprocess
import sys
from collections import defaultdict

work, out_md, before_label, git, users, run_secs, members, cancel_every = sys.argv[1:9]
run_secs = int(run_secs)
docs = os.path.dirname(os.path.abspath(out_md))
svg_name = "big-sale-lag.svg"
PIPELINE = ("kafka", "sink", "mariadb")


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as e:  # a missing tool only blanks its line
        return f"? ({e})"


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


phases = []
for line in open(os.path.join(work, "phases.tsv")):
    f = line.rstrip("\n").split("\t")
    name, n, summary, lagfile = f
    s = json.load(open(summary))
    p = {"name": name, "round": int(n), "summary": s}
    req = max(s["stats"]["requests"], 1)
    p["rps"] = s["stats"]["rps"]
    p["p50"] = s["stats"]["latency"]["p50_us"] / 1000
    p["p99"] = s["stats"]["latency"]["p99_us"] / 1000
    p["requests"] = s["stats"]["requests"]
    p["passed"] = s["passed"]
    p["failed_checks"] = [c["name"] for c in s["checks"] if not c["ok"]]
    # one event per successful order, payment and cancel
    p["events"] = sum(op["ok"] for op in s["stats"]["ops"].values())
    cpu = {"engine": s["cpu"].get("engine_secs"), "redis": s["cpu"].get("redis_secs"),
           "loadtest": s["cpu"].get("loadtest_secs")}
    drain_cpu = {}
    for proc in s.get("processes", []):
        cpu[proc["name"]] = proc.get("run_secs")
        drain_cpu[proc["name"]] = proc.get("drain_secs")
    p["cpu"], p["drain_cpu"], p["req"] = cpu, drain_cpu, req
    d = s.get("drain") or {}
    p["drain_secs"] = d.get("in_sync_secs")
    p["in_sync"] = d.get("in_sync")
    p["lag"] = None
    if lagfile != "-" and os.path.exists(lagfile) and os.path.getsize(lagfile) > 0:
        rows = []
        for l in open(lagfile):
            parts = l.split()
            if len(parts) == 3:
                rows.append((float(parts[0]), float(parts[1]), float(parts[2])))
        t0 = s["timed_from_ms"]
        lags = [r[0] for r in rows]
        per_sec = defaultdict(list)
        made = defaultdict(int)
        applied = defaultdict(int)
        for lag, at, done in rows:
            per_sec[int((at - t0) // 1000)].append(lag)
            made[int((at - t0) // 1000)] += 1
            applied[int((done - t0) // 1000)] += 1
        p["lag"] = {
            "n": len(rows), "p50": pct(lags, 50), "p99": pct(lags, 99), "max": max(lags) if lags else None,
            "series": {k: (pct(v, 99), max(v)) for k, v in sorted(per_sec.items())},
            # full seconds of the run only (the first and last are partial)
            "peak_made": max((v for k, v in made.items() if 0 < k < run_secs - 1), default=0),
            "peak_applied": max((v for k, v in applied.items() if k > 0), default=0),
        }
    phases.append(p)


def pipeline_secs(p):
    """Kafka + sink + MariaDB CPU over the run and the drain after it."""
    total = 0.0
    for name in PIPELINE:
        total += (p["cpu"].get(name) or 0) + (p["drain_cpu"].get(name) or 0)
    return total


def per(x, n, scale_=1e6):
    return None if x is None or not n else x * scale_ / n


def f(x, fmt="{:,.0f}"):
    return "–" if x is None else fmt.format(x)


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


by = defaultdict(list)
for p in phases:
    by[p["name"]].append(p)

meta = {
    "date": sh("date -u +%Y-%m-%dT%H:%M:%SZ"),
    "cpu": sh("awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo").strip(),
    "nproc": sh("nproc"),
    "redis": sh("redis-server --version | awk '{print $3}'"),
    "mariadb": sh("mariadbd --version 2>/dev/null | awk '{print $3}'"),
}

L = []
L.append("# Pipeline benchmark: the big sale")
L.append("")
L.append(f"Written by `loadtest/big_sale.sh` (`make big-sale`) on {meta['date']} (git {git}), release builds, "
         f"{meta['nproc']} cores ({meta['cpu']}), Redis {meta['redis']}, MariaDB {meta['mariadb']}, Kafka 4.1.0, "
         "one node of each. Every process of the run shares the machine.")
L.append("")
L.append(f"Scenario `big-sale` (goose, {users} users, {run_secs} s per run, {members} members): one product with "
         f"1,000,000 units, so every order succeeds; every order is paid and every {cancel_every}th paid order "
         "is cancelled (refund, units back). Phases alternate, each in a namespace of its own on the same services:")
L.append("")
L.append("- **after**: this version, the whole stack: engine (relay inside) -> Kafka -> one sink -> MariaDB, "
         "data platform deliveries to a mock.")
if by.get("before"):
    L.append(f"- **before**: the previous version ({before_label}), engine and sink, on the same broker.")
L.append("- **hot path**: this version's engine with `RUN_RELAY=false` and no sink: what the sale costs "
         "without making it durable.")
L.append("")
L.append("## Runs")
L.append("")
L.append("| phase | round | req/s | p50 ms | p99 ms | events | drain s | lag p50 / p99 / max ms | checks |")
L.append("|---|---:|---:|---:|---:|---:|---:|---|---|")
label = {"whole": "after", "before": "before", "hotpath": "hot path"}
for p in phases:
    lag = p["lag"]
    lag_s = "–" if not lag else f"{f(lag['p50'])} / {f(lag['p99'])} / {f(lag['max'])}"
    checks = "pass" if p["passed"] else "FAIL: " + ", ".join(p["failed_checks"])
    L.append(f"| {label[p['name']]} | {p['round']} | {f(p['rps'])} | {f(p['p50'], '{:.1f}')} | "
             f"{f(p['p99'], '{:.1f}')} | {f(p['events'])} | {f(p['drain_secs'], '{:.1f}')} | {lag_s} | {checks} |")
L.append("")

rates = {k: sum(p["rps"] for p in v) for k, v in by.items()}
L.append("## Summary (summed over the alternating runs)")
L.append("")
if rates.get("hotpath"):
    L.append(f"- **Whole stack vs hot path alone: {rates.get('whole', 0) / rates['hotpath']:.0%}** of the relay-off "
             f"rate (requests/s summed over the runs: {rates.get('whole', 0):,.0f} vs {rates['hotpath']:,.0f}; "
             "target >= 60%).")
    if rates.get("before"):
        L.append(f"- The previous version reached {rates['before'] / rates['hotpath']:.0%} of this version's "
                 f"hot-path rate ({rates['before']:,.0f} req/s summed).")
cost = {}
for k in ("whole", "before"):
    if by.get(k):
        secs = sum(pipeline_secs(p) for p in by[k])
        events = sum(p["events"] for p in by[k])
        cost[k] = per(secs, events)
if cost.get("whole") and cost.get("before"):
    L.append(f"- **Pipeline CPU per event (Kafka + sink + MariaDB, over the run and its drain): "
             f"{cost['before']:,.0f} µs before, {cost['whole']:,.0f} µs after = {cost['whole'] / cost['before']:.0%}** "
             "(target <= 33%).")
elif cost.get("whole"):
    L.append(f"- Pipeline CPU per event (Kafka + sink + MariaDB, run and drain): {cost['whole']:,.0f} µs.")
for k in ("whole", "before"):
    lagged = [p for p in by.get(k, []) if p["lag"]]
    if lagged:
        L.append(f"- Sink lag ({label[k]}), p99 per run: " + ", ".join(f"{p['lag']['p99']:,.0f} ms" for p in lagged)
                 + "; engine's peak event rate vs the sink's peak apply rate (events/s, per run): "
                 + ", ".join(f"{p['lag']['peak_made']:,} vs {p['lag']['peak_applied']:,}" for p in lagged) + ".")
L.append("- Sinks side by side (one sink vs two of one group on the same backlog): "
         "[sink-scaling.md](sink-scaling.md), `make sink-scale`.")
L.append("")

L.append("## CPU per request (µs), mean of the runs")
L.append("")
L.append("Over the timed part; the pipeline's processes also over the drain after it (`+ drain`).")
L.append("")
names = ["engine", "redis", "kafka", "sink", "mariadb", "loadtest"]
L.append("| phase | " + " | ".join(names) + " | pipeline per event (Kafka+sink+MariaDB, run + drain) |")
L.append("|---|" + "---:|" * len(names) + "---:|")
for k in ("whole", "before", "hotpath"):
    if not by.get(k):
        continue
    cells = []
    for n_ in names:
        run_ = mean([per(p["cpu"].get(n_), p["req"]) for p in by[k]])
        drain = mean([per(p["drain_cpu"].get(n_), p["req"]) for p in by[k]]) if n_ in PIPELINE else None
        cells.append(f(run_) + (f" + {f(drain)}" if drain else ""))
    pe = mean([per(pipeline_secs(p), p["events"]) for p in by[k]])
    L.append(f"| {label[k]} | " + " | ".join(cells) + f" | {f(pe)} |")
L.append("")
L.append("Hot path = engine + Redis (the relay runs inside the engine, so its share of the engine's CPU is in "
         "the engine column of the whole-stack rows); pipeline = Kafka + sink + MariaDB. In the hot-path runs "
         "Kafka, the sink and MariaDB do nothing for the sale: their figures there are the idle cost.")
L.append("")

# The lag chart.
series = [(f"{label[p['name']]} {p['round']}", p["lag"]["series"]) for p in phases if p["lag"]]
if series:
    W, H, ml, mr, mt, mb = 760, 320, 60, 170, 30, 40
    xmax = max(max(s.keys(), default=0) for _, s in series) + 1
    ymax = max(max((v[0] for v in s.values()), default=1) for _, s in series)
    ymax = max(ymax * 1.1, 10)
    colors = ["#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b"]
    X = lambda x: ml + (W - ml - mr) * x / max(xmax, 1)  # noqa: E731
    Y = lambda y: H - mb - (H - mt - mb) * y / ymax  # noqa: E731
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{ml}" y="18" font-size="13">Sink lag: p99 per second of event time (ms), big sale, {meta["date"]}</text>']
    for i in range(6):
        yv = ymax * i / 5
        svg.append(f'<line x1="{ml}" x2="{W - mr}" y1="{Y(yv):.1f}" y2="{Y(yv):.1f}" stroke="#ddd"/>')
        svg.append(f'<text x="{ml - 6}" y="{Y(yv) + 4:.1f}" text-anchor="end">{yv:,.0f}</text>')
    for xv in range(0, xmax + 1, max(1, xmax // 10)):
        svg.append(f'<text x="{X(xv):.1f}" y="{H - mb + 16}" text-anchor="middle">{xv}</text>')
    svg.append(f'<text x="{(ml + W - mr) / 2}" y="{H - 6}" text-anchor="middle">seconds into the run (event time)</text>')
    svg.append(f'<line x1="{ml}" x2="{ml}" y1="{mt}" y2="{H - mb}" stroke="#333"/>')
    svg.append(f'<line x1="{ml}" x2="{W - mr}" y1="{H - mb}" y2="{H - mb}" stroke="#333"/>')
    for i, (name, s) in enumerate(series):
        c = colors[i % len(colors)]
        pts = " ".join(f"{X(k + 0.5):.1f},{Y(v[0]):.1f}" for k, v in sorted(s.items()))
        svg.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.8" points="{pts}"/>')
        svg.append(f'<rect x="{W - mr + 12}" y="{mt + 16 * i}" width="12" height="3" fill="{c}"/>')
        svg.append(f'<text x="{W - mr + 30}" y="{mt + 16 * i + 5}">{name}</text>')
    svg.append("</svg>")
    open(os.path.join(docs, svg_name), "w").write("\n".join(svg) + "\n")
    L.append("## Sink lag over time")
    L.append("")
    L.append(f"![sink lag p99 per second]({svg_name})")
    L.append("")
    L.append("Lag of an event = when the sink applied it (`processed_events.processed_at`) minus the event's own "
             "time (the order's stock movement or ledger row, written from the event). The drain after the run "
             "shows in the last seconds' events.")
    L.append("")

L.append("## How it is measured")
L.append("")
L.append("`make big-sale` (or `bash loadtest/big_sale.sh`; `BIG_BEFORE_BIN=<previous build>/flashsale` adds the "
         "previous version). CPU: utime+stime from `/proc/<pid>/stat` of each process (the load generator reads "
         "them before and after the timed part and after the drain: `--engine-pid`, `--redis-pid`, "
         "`--watch-pids kafka=..,sink=..,mariadb=..`). Events = successful orders + payments + cancels (one "
         "event each). Lag from MySQL after the drain.")
L.append("")
open(out_md, "w").write("\n".join(L))

# The big-sale block of docs/benchmarks.md.
bench_md = os.path.join(docs, "benchmarks.md")
if os.path.exists(bench_md):
    text = open(bench_md).read()
    begin, end = "<!-- big-sale:begin -->", "<!-- big-sale:end -->"
    summary_start = L.index("## Summary (summed over the alternating runs)")
    summary_end = L.index("## CPU per request (µs), mean of the runs")
    block = [begin, "## Big sale: the success path and the pipeline (issue 12)", "",
             f"From `make big-sale` on {meta['date']} (git {git}); details and the lag chart in "
             "[pipeline-benchmark.md](pipeline-benchmark.md).", ""]
    block += L[summary_start + 2:summary_end]
    block.append(end)
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: "\n".join(block), text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(block) + "\n"
    open(bench_md, "w").write(text)
print(out_md)
