#!/usr/bin/env python3
"""Turns the raw results of one loadtest/bench.sh run (its work dir) into docs/benchmarks.md (stdout).

Every figure printed here comes from the files of that one run: redis-benchmark output and Redis CPU
for the ceiling, the loadtest summaries (µs latencies, CPU per request, drain, checks) for the HTTP runs.
"""
import json
import os
import re
import sys

WORK = sys.argv[1]

# Targets the project reports against.
T_CEILING_SHARE = 0.35  # coupon issue over HTTP >= 35 % of the EVALSHA ceiling
T_HALF_P99_MS = 10.0  # p99 <= 10 ms at half the peak rate
T_VS_BASELINE = 20.0  # >= 20x the db-lock baseline throughput
T_CPU_US = 30.0  # engine CPU <= 30 µs per coupon request
T_DRAIN_S = 30.0  # sink keeping up: drained and in sync within 30 s of the burst's end


def load(path):
    try:
        with open(os.path.join(WORK, path)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read(path):
    try:
        with open(os.path.join(WORK, path)) as f:
            return f.read()
    except OSError:
        return None


meta = load("meta.json") or {}
params = meta.get("params", {})
steps = []
for line in (read("steps.tsv") or "").splitlines():
    parts = line.split("\t")
    if len(parts) >= 2:
        steps.append((parts[0], parts[1], parts[2] if len(parts) > 2 else ""))


def ceiling(name):
    txt = read(f"ceiling-{name}.txt")
    if not txt:
        return None
    m = re.search(r"throughput summary:\s*([\d.]+) requests per second", txt)
    if not m:
        return None
    c = {"rps": float(m.group(1))}
    lat = re.search(
        r"avg\s+min\s+p50\s+p95\s+p99\s+max\s*\n\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)",
        txt,
    )
    if lat:
        c["p50_ms"] = float(lat.group(3))
        c["p99_ms"] = float(lat.group(5))
        c["max_ms"] = float(lat.group(6))
    for pm in re.finditer(r"^\s*([\d.]+)% <= ([\d.]+) milliseconds", txt, re.M):
        if float(pm.group(1)) >= 99.9:
            c["p999_ms"] = float(pm.group(2))
            break
    cpu = (read(f"ceiling-{name}.cpu") or "").split()
    if len(cpu) == 3:
        c0, c1, n = float(cpu[0]), float(cpu[1]), float(cpu[2])
        c["redis_us"] = (c1 - c0) * 1e6 / n if n else None
    rem = (read(f"ceiling-{name}.remaining") or "").strip()
    c["remaining"] = rem
    return c


def run(label, scenario):
    s = load(f"reports/{scenario}-bench-{label}.summary.json")
    if s is None:
        return None
    hwm = (read(f"engine-{'flashsale' if label.startswith('fs-') else 'dblock'}.hwm") or "").strip()
    s["_hwm_kib"] = int(hwm) if hwm.isdigit() else s.get("cpu", {}).get("engine_peak_rss_kib")
    return s


def op_rps(s, op):
    o = s["stats"]["ops"].get(op) if s else None
    return o["rps"] if o else None


def f(x, nd=1, unit=""):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{nd}f}{unit}"
    return f"{x:,}{unit}"


def ms(us):
    return None if us is None else us / 1000.0


def ratio(a, b):
    return None if (a is None or not b) else a / b


def xr(r, pct=False):
    if r is None:
        return "–"
    return f"{r * 100:.0f} %" if pct else f"{r:.1f}x"


c_issue = ceiling("coupon_issue")
c_reserve = ceiling("order_reserve")
fs_coupon = run("fs-coupon", "coupon-rush")
fs_coupon_half = run("fs-coupon-half", "coupon-rush")
fs_stock = run("fs-stock", "stock-rush")
fs_stock_half = run("fs-stock-half", "stock-rush")
db_coupon = run("db-coupon", "coupon-rush")
db_stock = run("db-stock", "stock-rush")

RUNS = (
    ("flashsale coupon peak", fs_coupon),
    ("flashsale coupon half", fs_coupon_half),
    ("db-lock coupon", db_coupon),
    ("flashsale stock peak", fs_stock),
    ("flashsale stock half", fs_stock_half),
    ("db-lock stock", db_stock),
)
ISSUE = "POST /coupons/{id}/issue"
ORDER = "POST /orders"

out = []
w = out.append

w("# Benchmarks")
w("")
w(
    f"Written by `make bench` (`loadtest/bench.sh`) on {meta.get('date', '?')}"
    f"{' in quick mode (`BENCH_QUICK=1`: short phases, fewer members)' if meta.get('quick') else ''}. "
    "Every figure below comes from that one run; rerun `make bench` to refresh them. "
    "Do not edit by hand."
)
w("")
w("## Machine and versions")
w("")
w("| | |")
w("|---|---|")
w(f"| CPUs | {meta.get('nproc', '?')} x {meta.get('cpu_model', '?')} (load generator, engine, Redis, MariaDB, Kafka and sink share them) |")
w(f"| memory | {meta.get('mem', '?')} |")
w(
    f"| load average (1, 5, 15 min) | {meta.get('loadavg_start', '?')} at the start, {(read('loadavg_end') or '?').strip()} at the end "
    "(anything else running on the machine shares the 2 cores) |"
)
w(f"| kernel | {meta.get('kernel', '?')} |")
w(f"| Redis | {meta.get('redis', '?')} |")
w(f"| MariaDB | {meta.get('mariadb', '?')} |")
w(f"| Kafka | {meta.get('kafka', '?') or '?'} |")
w(f"| rustc | {meta.get('rustc', '?')} |")
w(f"| flashsale | git {meta.get('git', '?')} |")
w(
    f"| load | {params.get('users', '?')} goose users, no think time; flashsale runs {params.get('run_time', '?')} s, "
    f"db-lock runs {params.get('db_run_time', '?')} s; coupon rush {f(params.get('coupon_members'))} members for "
    f"{f(params.get('coupon_qty'))} coupons; stock rush {f(params.get('stock_members'))} members for "
    f"{f(params.get('stock_units'))} units; ceiling {f(params.get('ceiling_n'))} EVALSHA x "
    f"{params.get('ceiling_clients', '?')} clients |"
)
w("")

# ---------------------------------------------------------------------------------------- targets
w("## Targets")
w("")
w("| target | measured | result |")
w("|---|---|---|")


def verdict(ok, miss):
    if ok is None:
        return "not measured"
    return "**met**" if ok else f"**missed** ({miss})"


fs_issue_rps = op_rps(fs_coupon, ISSUE)
share = ratio(fs_issue_rps, c_issue and c_issue["rps"])
w(
    f"| coupon issue over HTTP >= 35 % of the EVALSHA ceiling | {f(fs_issue_rps, 0)} / {f(c_issue and c_issue['rps'], 0)} req/s = {xr(share, True)} | "
    + verdict(None if share is None else share >= T_CEILING_SHARE, f"by {(T_CEILING_SHARE - (share or 0)) * 100:.0f} points")
    + " |"
)
for name, s in (("coupon issue", fs_coupon_half), ("stock rush", fs_stock_half)):
    p99 = ms(s["stats"]["latency"]["p99_us"]) if s else None
    rate = f"{s['throttle_requests']:,} req/s cap, {s['stats']['rps']:,.0f} achieved" if s else "–"
    w(
        f"| p99 <= 10 ms at half the peak rate ({name}) | {f(p99, 2, ' ms')} ({rate}) | "
        + verdict(None if p99 is None else p99 <= T_HALF_P99_MS, f"by {(p99 or 0) - T_HALF_P99_MS:.2f} ms")
        + " |"
    )
db_issue_rps = op_rps(db_coupon, ISSUE)
vs = ratio(fs_issue_rps, db_issue_rps)
w(
    f"| >= 20x the db-lock baseline (coupon issue) | {f(fs_issue_rps, 0)} / {f(db_issue_rps, 0)} req/s = {xr(vs)} | "
    + verdict(None if vs is None else vs >= T_VS_BASELINE, f"by {T_VS_BASELINE - (vs or 0):.1f}x")
    + " |"
)
vs_s = ratio(op_rps(fs_stock, ORDER), op_rps(db_stock, ORDER))
w(
    f"| >= 20x the db-lock baseline (order create, stock rush) | {f(op_rps(fs_stock, ORDER), 0)} / {f(op_rps(db_stock, ORDER), 0)} req/s = {xr(vs_s)} | "
    + verdict(None if vs_s is None else vs_s >= T_VS_BASELINE, f"by {T_VS_BASELINE - (vs_s or 0):.1f}x")
    + " |"
)
cpu = fs_coupon["cpu"].get("engine_us_per_request") if fs_coupon else None
w(
    f"| engine CPU <= 30 µs per coupon request | {f(cpu, 1, ' µs')} | "
    + verdict(None if cpu is None else cpu <= T_CPU_US, f"by {(cpu or 0) - T_CPU_US:.1f} µs")
    + " |"
)
drains = []
for s in (fs_coupon, fs_coupon_half, fs_stock, fs_stock_half):
    if s and s.get("drain"):
        drains.append(s["drain"])
if drains:
    worst = None
    ok = all(d.get("ok") for d in drains)
    if ok:
        worst = max(d.get("in_sync_secs") or 0 for d in drains)
        ok = worst <= T_DRAIN_S
    w(
        f"| sink keeping up: drained and in sync <= 30 s after each burst | "
        + (f"slowest {worst:.1f} s over {len(drains)} bursts" if worst is not None else "not drained within the timeout in some run")
        + " | "
        + verdict(ok, f"by {(worst - T_DRAIN_S):.1f} s" if worst is not None else "timed out")
        + " |"
    )
else:
    w("| sink keeping up | – | not measured |")
w("")

# ------------------------------------------------------------------------------------- side by side
HEAD = (
    "| | req/s | p50 ms | p99 ms | p99.9 ms | error rate | engine CPU µs/req | Redis CPU µs/req | "
    "engine peak RSS | vs ceiling | vs baseline | drain s | checks |"
)
SEP = "|---|" + "---:|" * 12


def http_row(name, s, op, ceil_rps, base_rps, ratios=True):
    if s is None:
        return f"| {name} | not run | | | | | | | | | | | |"
    o = s["stats"]["ops"].get(op)
    rps = o["rps"] if o else None
    lat = s["stats"]["latency"]
    cpu = s.get("cpu", {})
    d = s.get("drain") or {}
    checks = "pass" if all(c["ok"] for c in s["checks"]) else "FAIL: " + "; ".join(c["name"] for c in s["checks"] if not c["ok"])
    hwm = s.get("_hwm_kib")
    return (
        f"| {name} | {f(rps, 0)} | {f(ms(lat['p50_us']), 2)} | {f(ms(lat['p99_us']), 2)} | {f(ms(lat['p999_us']), 2)} | "
        f"{s['stats']['error_rate'] * 100:.2f} % | {f(cpu.get('engine_us_per_request'))} | {f(cpu.get('redis_us_per_request'))} | "
        f"{f(hwm / 1024 if hwm else None, 0, ' MiB')} | {xr(ratio(rps, ceil_rps), True) if ratios else '(capped)'} | "
        f"{xr(ratio(rps, base_rps)) if ratios else '(capped)'} | "
        f"{f(d.get('in_sync_secs'), 1) if d else '–'} | {checks} |"
    )


def ceil_row(name, c):
    if c is None:
        return f"| {name} | not run | | | | | | | | | | | |"
    return (
        f"| {name} | {f(c['rps'], 0)} | {f(c.get('p50_ms'), 2)} | {f(c.get('p99_ms'), 2)} | {f(c.get('p999_ms'), 2)} | 0 % | – | "
        f"{f(c.get('redis_us'))} | – | 100 % | – | – | left {c.get('remaining', '?')} |"
    )


w("## Coupon issue (coupon rush)")
w("")
w(
    "Requests: `POST /api/v1/coupons/{id}/issue` by members drawn in turn from the seeded pool (201, 409 "
    "`COUPON_SOLD_OUT` and 409 `COUPON_ALREADY_ISSUED` are expected outcomes, not errors); the ceiling runs "
    "`lua/coupon_issue.lua` (with `lua/lib/prelude.lua` prepended) by EVALSHA for random members of the same "
    "count against a coupon of the same quantity."
)
w("")
w(HEAD)
w(SEP)
base = op_rps(db_coupon, ISSUE)
cr = c_issue and c_issue["rps"]
w(ceil_row("ceiling: EVALSHA coupon_issue (redis-benchmark)", c_issue))
w(http_row("flashsale, peak", fs_coupon, ISSUE, cr, base))
w(http_row("flashsale, half the peak rate", fs_coupon_half, ISSUE, cr, base, ratios=False))
w(http_row("baseline: HOT_PATH=db-lock, peak", db_coupon, ISSUE, cr, base))
w("")

w("## Order reserve (stock rush)")
w("")
w(
    "Requests: `POST /api/v1/orders` (one unit of one hot product, `Idempotency-Key`) and, for each 201, "
    "`POST /api/v1/orders/{id}/pay`; 409 `OUT_OF_STOCK` is expected. req/s counts `POST /orders` only; "
    "latencies, error rate and CPU per request cover every request of the run. The ceiling runs "
    "`lua/order_reserve.lua` by EVALSHA with a fresh order id and idempotency key per call against a "
    "product of the same stock."
)
w("")
w(HEAD)
w(SEP)
base = op_rps(db_stock, ORDER)
cr = c_reserve and c_reserve["rps"]
w(ceil_row("ceiling: EVALSHA order_reserve (redis-benchmark)", c_reserve))
w(http_row("flashsale, peak", fs_stock, ORDER, cr, base))
w(http_row("flashsale, half the peak rate", fs_stock_half, ORDER, cr, base, ratios=False))
w(http_row("baseline: HOT_PATH=db-lock, peak", db_stock, ORDER, cr, base))
w("")

# ------------------------------------------------------------------------------------------- details
w("## Per request")
w("")
w("| run | request | count | req/s | p50 ms | p99 ms | p99.9 ms | outcomes |")
w("|---|---|---:|---:|---:|---:|---:|---|")
for label, s in (
    ("flashsale coupon peak", fs_coupon),
    ("flashsale coupon half", fs_coupon_half),
    ("db-lock coupon", db_coupon),
    ("flashsale stock peak", fs_stock),
    ("flashsale stock half", fs_stock_half),
    ("db-lock stock", db_stock),
):
    if not s:
        continue
    for op, o in s["stats"]["ops"].items():
        outcomes = ", ".join(f"{k}: {v:,}" for k, v in o["outcomes"].items())
        lat = o["latency"]
        w(
            f"| {label} | `{op}` | {o['count']:,} | {o['rps']:,.0f} | {ms(lat['p50_us']):.2f} | {ms(lat['p99_us']):.2f} | "
            f"{ms(lat['p999_us']):.2f} | {outcomes} |"
        )
w("")

w("## Load generator share")
w("")
w("The generator runs on the same cores; its CPU per request is what the engine could not use.")
w("")
w("| run | loadtest CPU µs/req | engine CPU s | Redis CPU s | window s |")
w("|---|---:|---:|---:|---:|")
for label, s in (
    ("flashsale coupon peak", fs_coupon),
    ("flashsale coupon half", fs_coupon_half),
    ("db-lock coupon", db_coupon),
    ("flashsale stock peak", fs_stock),
    ("flashsale stock half", fs_stock_half),
    ("db-lock stock", db_stock),
):
    if s:
        c = s.get("cpu", {})
        w(
            f"| {label} | {f(c.get('loadtest_us_per_request'))} | {f(c.get('engine_secs'), 2)} | {f(c.get('redis_secs'), 2)} | "
            f"{s['stats']['window_secs']:.1f} |"
        )
w("")

failed_checks = []
for label, s in RUNS:
    if s:
        for c in s["checks"]:
            if not c["ok"]:
                failed_checks.append(f"- {label}: **{c['name']}**: {c['detail']}")
for label, s in RUNS:
    if s:
        for op, o in s["stats"]["ops"].items():
            errs = o.get("error_outcomes") or {}
            if errs:
                failed_checks.append(
                    f"- {label}: `{op}` errors: " + ", ".join(f"{k}: {v:,}" for k, v in errs.items())
                )
older = sorted({(s.get("drain") or {}).get("preexisting_drift", 0) for _, s in RUNS if s and s.get("drain")})
if older and older[-1] > 0:
    failed_checks.append(
        f"- note: reconcile already listed {older[-1]:,} drift entries on this stack before the runs seeded "
        "anything (left by earlier activity); they were ignored, and a run fails only on drift it adds"
    )
bad_steps = [f"- {n}: {st} {note}".rstrip() for n, st, note in steps if st != "ok"]
if failed_checks or bad_steps:
    w("## Problems and notes from this run")
    w("")
    out.extend(failed_checks)
    out.extend(bad_steps)
    w("")

w("## How it is measured")
w("")
w(
    "- Latencies are measured by the load generator around each request (µs histogram, ~1.6 % buckets), "
    "from sending to the full body read; goose's own HTML/JSON reports of each run are kept with the raw results.\n"
    "- CPU per request: utime+stime of the engine process (`/proc/<pid>/stat`) and of redis-server over the timed part, "
    "divided by the requests of that part; for the ceiling, Redis `INFO cpu` (used_cpu_sys + used_cpu_user) over the "
    "redis-benchmark run divided by its calls. Peak RSS is the engine's VmHWM at the end of its phase.\n"
    "- Half the peak rate: the same scenario again, paced evenly over all users (the load generator's "
    "`--throttle-requests`) at half the rate the peak run measured.\n"
    "- Drain: after each burst the load generator polls `GET /api/v1/admin/reconcile` until `pending_events` is 0 "
    "and `in_sync` is true (or the only drift left is drift listed before the run seeded anything); the time from "
    "the burst's end to that point is the drain time. The db-lock runs skip it: that mode writes MySQL directly.\n"
    "- Each run then checks its invariants through the API (coupon: 201s == total - remaining, sold out exactly; "
    "stock: sold + remaining == initial, never negative; buyers' balances exact) and reconcile's `in_sync`.\n"
    "- The engines, the sink and a mock data platform are started by the bench in a namespace of their own on the "
    "shared services (key prefix, database, Kafka topics and consumer group), removed at the end.\n"
    "- The ceiling runs in a scratch Redis db (`BENCH_REDIS_DB`, flushed afterwards) so the engine and the "
    "reconcile never see its keys; scripts are loaded with `SCRIPT LOAD` exactly as the engine builds them."
)
w("")
print("\n".join(out))
