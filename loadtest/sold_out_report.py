#!/usr/bin/env python3
"""The sold-out block of docs/benchmarks.md and its charts, from one loadtest/sold_out.sh work dir.

usage: sold_out_report.py WORK BENCHMARKS_MD GIT THREADS CONNECTIONS RUN_SECS MEMBERS COUPONS STOCK

Reads runs.tsv (name scenario markers link round check-exit), <name>.answers (`unix_ms latency_us
answer` per answer, from loadtest/wrk/sold_out_rush.lua), <name>.cpu (`unix_ms engine redis wrk` CPU
ticks every 100 ms), restock-{true,false}.txt, ceiling/ceiling-coupon_issue.txt and goose/*.summary.json.
Each run is split at its sell-out: the first sold_out answer. Writes the block between
<!-- sold-out:begin --> and <!-- sold-out:end --> (appended when absent) and docs/sold-out-coupon.svg,
docs/sold-out-stock.svg next to BENCHMARKS_MD.
"""

import glob
import json
import os
import re
import sys
import time
from collections import defaultdict

work, bench_md, git, threads, connections, run_secs, members, coupons, stock = sys.argv[1:10]
docs = os.path.dirname(os.path.abspath(bench_md))
TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")
BUCKET_MS = 250


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def read_answers(name):
    rows = []
    with open(os.path.join(work, f"{name}.answers")) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                rows.append((int(parts[0]), int(parts[1]), parts[2]))
    rows.sort()
    return rows


def read_cpu(name):
    samples = []
    with open(os.path.join(work, f"{name}.cpu")) as f:
        for line in f:
            parts = [int(x) for x in line.split()]
            if len(parts) == 4 and min(parts[1:]) >= 0:
                samples.append(parts)
    return samples


def ticks_at(samples, ms, col):
    """Cumulative ticks of column `col` at `ms`, interpolated between the samples around it."""
    before = [s for s in samples if s[0] <= ms]
    after = [s for s in samples if s[0] >= ms]
    if not before:
        return samples[0][col]
    if not after:
        return samples[-1][col]
    a, b = before[-1], after[0]
    if b[0] == a[0]:
        return a[col]
    return a[col] + (b[col] - a[col]) * (ms - a[0]) / (b[0] - a[0])


def run_figures(name):
    rows = read_answers(name)
    cpu = read_cpu(name)
    start = rows[0][0] - rows[0][1] / 1000
    end = rows[-1][0]
    sold = next((t for t, _, a in rows if a == "sold_out"), None)
    phases = {}
    for phase, lo, hi in (("before", start, sold if sold else end), ("after", sold, end)):
        if lo is None or hi is None or hi <= lo:
            continue
        sel = [r for r in rows if lo <= r[0] < hi] if phase == "before" else [r for r in rows if r[0] >= lo]
        if not sel:
            continue
        secs = (hi - lo) / 1000
        lat = [r[1] for r in sel]
        n = len(sel)
        per = {}
        for col, proc in ((1, "engine"), (2, "redis"), (3, "wrk")):
            per[proc] = (ticks_at(cpu, hi, col) - ticks_at(cpu, lo, col)) * TICK_US / n if cpu else None
        answers = defaultdict(int)
        for r in sel:
            answers[r[2]] += 1
        phases[phase] = {"n": n, "secs": secs, "rps": n / secs, "lat": lat, "cpu": per, "answers": dict(answers)}
    # timeline: requests/s and p99 per bucket
    buckets = defaultdict(list)
    for t, l, _ in rows:
        buckets[int((t - start) // BUCKET_MS)].append(l)
    timeline = [(b * BUCKET_MS / 1000, len(v) * 1000 / BUCKET_MS, pct(v, 99) / 1000)
                for b, v in sorted(buckets.items())]
    return {"phases": phases, "sold_s": (sold - start) / 1000 if sold else None, "timeline": timeline,
            "total": len(rows), "secs": (end - start) / 1000}


runs = []
with open(os.path.join(work, "runs.tsv")) as f:
    for line in f:
        name, scenario, markers, link, rnd, rc = line.rstrip("\n").split("\t")
        runs.append({"name": name, "scenario": scenario, "markers": markers == "true", "link": link,
                     "round": int(rnd), "check_ok": rc == "0", **run_figures(name)})


def pooled(sel, phase):
    ph = [r["phases"][phase] for r in sel if phase in r["phases"]]
    if not ph:
        return None
    n = sum(p["n"] for p in ph)
    secs = sum(p["secs"] for p in ph)
    lat = [x for p in ph for x in p["lat"]]
    cpu = {}
    for proc in ("engine", "redis", "wrk"):
        vals = [(p["cpu"][proc], p["n"]) for p in ph if p["cpu"][proc] is not None]
        cpu[proc] = sum(v * w for v, w in vals) / sum(w for _, w in vals) if vals else None
    return {"n": n, "rps": n / secs, "p50": pct(lat, 50) / 1000, "p99": pct(lat, 99) / 1000, "cpu": cpu,
            "per_round": [round(p["rps"]) for p in ph]}


def f1(x, nd=1):
    return "–" if x is None else f"{x:,.{nd}f}"


def f0(x):
    return "–" if x is None else f"{x:,.0f}"


meta_date = time.strftime("%Y-%m-%d %H:%MZ", time.gmtime())
L = ["<!-- sold-out:begin -->", "## The herd after the sell-out: sold-out markers (issue 10)", ""]
L.append(f"Written by `loadtest/sold_out.sh` (`make sold-out-bench`; `make bench` runs it too) on {meta_date} "
         f"(git {git}), release build, 2 shared cores, one Redis (the engine over its Unix socket unless "
         "said otherwise), relay off (the hot path alone). Every ratio below comes from runs of this one "
         "sitting; only ratios mean anything on this noisy machine.")
L.append("")

# ---- restock latency
L.append("### From a restock's answer to the first grant (two engines)")
L.append("")
L.append("An item sold out through engine A (its marker set by Redis's refusal) is restocked by one unit "
         "through engine B; A is then asked for it until it grants. Time from B's answer to A's first 201 "
         "(that request's own latency included), over the rounds. Target: p99 under 50 ms.")
L.append("")
L.append("| markers | coupons p50 / p99 / max ms | units p50 / p99 / max ms | requests until granted (mean) |")
L.append("|---|---|---|---|")
restock = {}
for markers in ("true", "false"):
    path = os.path.join(work, f"restock-{markers}.txt")
    if not os.path.exists(path):
        continue
    rows = [l.split() for l in open(path) if l.strip()]
    cells = []
    attempts = []
    for kind in ("coupon", "product"):
        ms = [float(r[1]) for r in rows if r[0] == kind]
        attempts += [int(r[2]) for r in rows if r[0] == kind]
        restock[(markers, kind)] = (pct(ms, 50), pct(ms, 99), max(ms) if ms else None, len(ms))
        cells.append(f"{f1(pct(ms, 50), 2)} / {f1(pct(ms, 99), 2)} / {f1(max(ms) if ms else None, 2)}")
    n = restock[(markers, "coupon")][3]
    L.append(f"| {'on' if markers == 'true' else 'off'} ({n} rounds each) | {cells[0]} | {cells[1]} | "
             f"{sum(attempts) / len(attempts):.2f} |")
L.append("")

# ---- rushes
L.append("### Coupon rush and stock rush with wrk, markers off and on")
L.append("")
L.append(f"wrk -t{threads} -c{connections} (every answer timed, paired with its request by the "
         f"X-Request-Id the engine echoes: loadtest/wrk/sold_out_rush.lua), {run_secs} s per run, {members} members in turn. The coupon has "
         f"{coupons} coupons (issue without a key), the product {stock} units (orders of one unit, a fresh "
         "Idempotency-Key each): each sells out about a third of the way in. Each run is split at its "
         "sell-out (the first refusal as sold out). Runs alternate off/on, a fresh engine and item each; "
         "figures pooled over the rounds (requests/s per round in brackets). CPU per answered request, "
         "from /proc (10 ms ticks).")
L.append("")
L.append("| rush | markers | phase | requests/s | p50 ms | p99 ms | engine µs/req | Redis µs/req | wrk µs/req |")
L.append("|---|---|---|---|---|---|---|---|---|")
summary = {}
for scenario in ("coupon", "stock"):
    for markers in (False, True):
        sel = [r for r in runs if r["scenario"] == scenario and r["markers"] == markers and r["link"] == "unix"]
        for phase in ("before", "after"):
            p = pooled(sel, phase)
            summary[(scenario, markers, phase)] = p
            if not p:
                continue
            L.append(f"| {scenario} | {'on' if markers else 'off'} | {phase} sell-out | {f0(p['rps'])} "
                     f"({', '.join(f'{x:,}' for x in p['per_round'])}) | {f1(p['p50'], 2)} | {f1(p['p99'], 2)} | "
                     f"{f1(p['cpu']['engine'])} | {f1(p['cpu']['redis'])} | {f1(p['cpu']['wrk'])} |")
L.append("")
for scenario in ("coupon", "stock"):
    off, on = summary.get((scenario, False, "after")), summary.get((scenario, True, "after"))
    if off and on:
        L.append(f"- **{scenario} rush after the sell-out: {on['rps'] / off['rps']:.2f}x the requests/s with "
                 f"markers on** ({f0(on['rps'])} vs {f0(off['rps'])}; target >= 2x); Redis CPU per request "
                 f"{f1(on['cpu']['redis'])} µs on vs {f1(off['cpu']['redis'])} µs off; p99 "
                 f"{f1(on['p99'], 2)} vs {f1(off['p99'], 2)} ms.")
checks = [r for r in runs if not r["check_ok"]]
L.append(f"- Checks after every run (coupon: remaining 0 and 201 answers = quantity; stock: stock 0 and 201 "
         f"answers = units): {'all passed' if not checks else 'FAILED: ' + ', '.join(r['name'] for r in checks)} "
         f"({len(runs)} runs).")
L.append("")

# ---- link
link_tcp = [r for r in runs if r["link"] == "tcp"]
if link_tcp:
    unix_sel = [r for r in runs if r["scenario"] == "coupon" and not r["markers"] and r["link"] == "unix"]
    L.append("### Redis over the Unix socket vs loopback TCP")
    L.append("")
    L.append("The coupon rush with markers off: every request reaches Redis. Engine CPU per request that "
             "reaches Redis, before the sell-out (issues) and after (SOLD_OUT refusals). Target: engine CPU "
             "<= 25 µs per coupon-issue request that reaches Redis. The steady many-connection shape (wrk -t2 "
             "-c32, no sell-out) and instruction counts per request are in docs/engine-cpu.md "
             "(`make engine-cpu`).")
    L.append("")
    L.append("| link | phase | requests/s | p99 ms | engine µs/req | Redis µs/req |")
    L.append("|---|---|---|---|---|---|")
    for label, sel in (("Unix socket", unix_sel), ("TCP", link_tcp)):
        for phase in ("before", "after"):
            p = pooled(sel, phase)
            if p:
                L.append(f"| {label} | {phase} sell-out | {f0(p['rps'])} | {f1(p['p99'], 2)} | "
                         f"{f1(p['cpu']['engine'])} | {f1(p['cpu']['redis'])} |")
    L.append("")

# ---- ceiling
ceil_txt = os.path.join(work, "ceiling", "ceiling-coupon_issue.txt")
ceiling = None
if os.path.exists(ceil_txt):
    m = re.findall(r"([\d.]+) requests per second", open(ceil_txt).read())
    if m:
        ceiling = float(m[-1])
if ceiling:
    off = pooled([r for r in runs if r["scenario"] == "coupon" and not r["markers"] and r["link"] == "unix"], "after")
    on = pooled([r for r in runs if r["scenario"] == "coupon" and r["markers"] and r["link"] == "unix"], "after")
    L.append("### Against the EVALSHA ceiling")
    L.append("")
    L.append(f"coupon_issue by redis-benchmark EVALSHA, rush shape (loadtest/bench.sh's ceiling, quick): "
             f"**{ceiling:,.0f} calls/s**. Coupon issue over HTTP with wrk after the sell-out, markers off "
             f"(every request is one EVALSHA): {f0(off and off['rps'])} req/s = "
             f"**{(off['rps'] / ceiling * 100 if off else 0):.0f}%** of it (target >= 35%); markers on: "
             f"{f0(on and on['rps'])} req/s = {(on['rps'] / ceiling * 100 if on else 0):.0f}%.")
    L.append("")

# ---- goose side by side
goose = {}
for path in glob.glob(os.path.join(work, "goose", "*.summary.json")):
    s = json.load(open(path))
    goose[s["scenario"]] = s
if goose:
    L.append("### Two clients side by side (markers on)")
    L.append("")
    L.append("The same two rushes with goose (flashsale-loadtest, its own setup: fewer coupons and units, "
             "so most of its run is after the sell-out). Client CPU per request: what the load generator "
             "takes from the two cores the engine and Redis share.")
    L.append("")
    L.append("| client | rush | requests/s | p99 ms | client µs/req | engine µs/req |")
    L.append("|---|---|---|---|---|---|")
    for scenario in ("coupon", "stock"):
        s = goose.get(f"{scenario}-rush")
        if s:
            L.append(f"| goose | {scenario} | {f0(s['stats']['rps'])} | {f1(s['stats']['latency']['p99_us'] / 1000, 2)} | "
                     f"{f1(s['cpu'].get('loadtest_us_per_request'))} | {f1(s['cpu'].get('engine_us_per_request'))} |")
        p = pooled([r for r in runs if r["scenario"] == scenario and r["markers"] and r["link"] == "unix"], "after")
        if p:
            L.append(f"| wrk (after the sell-out) | {scenario} | {f0(p['rps'])} | {f1(p['p99'], 2)} | "
                     f"{f1(p['cpu']['wrk'])} | {f1(p['cpu']['engine'])} |")
    L.append("")
    L.append("goose's own HTML reports (under the work dir) draw their charts with a library they load from "
             "a CDN, so offline they show tables and blank charts: the charts below are the self-contained "
             "ones.")
    L.append("")


# ---- charts
def chart(scenario):
    sel = {m: [r for r in runs if r["scenario"] == scenario and r["markers"] == m and r["link"] == "unix"]
           for m in (False, True)}
    pick = {m: (sel[m][0] if sel[m] else None) for m in sel}  # first round of each
    W, H, PAD = 760, 420, 56
    plot_h = (H - 3 * PAD) / 2
    xmax = max((r["timeline"][-1][0] for r in pick.values() if r and r["timeline"]), default=1) + BUCKET_MS / 1000
    rmax = max((v for r in pick.values() if r for _, v, _ in r["timeline"]), default=1) * 1.1
    pmax = max((v for r in pick.values() if r for _, _, v in r["timeline"]), default=1) * 1.1
    colors = {False: "#d62728", True: "#1f77b4"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="13">{scenario} rush (wrk, round 1): '
           'markers off (red) and on (blue); dashed: the sell-out</text>']
    for i, (label, vmax, idx) in enumerate((("requests/s", rmax, 1), ("p99 ms", pmax, 2))):
        top = PAD + i * (plot_h + PAD)
        out.append(f'<rect x="{PAD}" y="{top}" width="{W - 2 * PAD}" height="{plot_h}" fill="none" stroke="#999"/>')
        out.append(f'<text x="{PAD - 6}" y="{top + 4}" text-anchor="end">{vmax:,.0f}</text>')
        out.append(f'<text x="{PAD - 6}" y="{top + plot_h}" text-anchor="end">0</text>')
        out.append(f'<text x="{PAD + 4}" y="{top - 4}">{label}</text>')
        for m, r in pick.items():
            if not r:
                continue
            pts = " ".join(f"{PAD + (t / xmax) * (W - 2 * PAD):.1f},{top + plot_h - (v[idx - 1] / vmax) * plot_h:.1f}"
                           for t, *v in r["timeline"])
            out.append(f'<polyline fill="none" stroke="{colors[m]}" stroke-width="1.5" points="{pts}"/>')
            if r["sold_s"] is not None:
                x = PAD + (r["sold_s"] / xmax) * (W - 2 * PAD)
                out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="{colors[m]}" '
                           'stroke-dasharray="4,3"/>')
    out.append(f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">seconds into the run '
               f'({BUCKET_MS} ms buckets)</text>')
    out.append("</svg>")
    name = f"sold-out-{scenario}.svg"
    open(os.path.join(docs, name), "w").write("\n".join(out) + "\n")
    return name


for scenario in ("coupon", "stock"):
    if any(r["scenario"] == scenario for r in runs):
        L.append(f"![{scenario} rush, markers off and on]({chart(scenario)})")
        L.append("")
L.append("Reproduce: `make sold-out-bench` (or `bash loadtest/sold_out.sh`; knobs SO_ROUNDS, SO_RUN_TIME, "
         "SO_THREADS, SO_CONNECTIONS, SO_COUPONS, SO_STOCK, SO_RESTOCK_ROUNDS in its header). Raw answers, CPU samples and "
         "engine logs stay in the work dir (.local/bench/sold-out-<time>).")
L.append("<!-- sold-out:end -->")

text = open(bench_md).read() if os.path.exists(bench_md) else ""
begin, end = "<!-- sold-out:begin -->", "<!-- sold-out:end -->"
if begin in text and end in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: "\n".join(L), text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + "\n".join(L) + "\n"
open(bench_md, "w").write(text)
print("\n".join(L))
