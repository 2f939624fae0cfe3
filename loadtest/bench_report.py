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
T_WALLET_LAG_MS = 100.0  # /me/coupons follows an issue within 100 ms (p99)


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
        c["n"] = int(n)
    st = (read(f"ceiling-{name}.stats") or "").split()
    if len(st) == 4:
        calls, usec, failed, writes = (int(x) for x in st)
        c["calls"], c["failed"], c["writes"] = calls, failed, writes
        c["script_us"] = usec / calls if calls else None
    rem = (read(f"ceiling-{name}.remaining") or "").strip()
    c["remaining"] = rem
    c["probe"] = " ".join((read(f"ceiling-{name}.probe") or "").split())[:120]
    return c


def run(label, scenario):
    s = load(f"reports/{scenario}-bench-{label}.summary.json")
    if s is None:
        return None
    engine = {"fs": "flashsale", "prev": "prev", "db": "dblock"}[label.split("-")[0]]
    hwm = (read(f"engine-{engine}.hwm") or "").strip()
    s["_hwm_kib"] = int(hwm) if hwm.isdigit() else s.get("cpu", {}).get("engine_peak_rss_kib")
    return s


def histogram_quantile(text, metric, labels, q):
    """(upper bound in s of the bucket holding the q-quantile, count) of a Prometheus histogram in a
    /metrics scrape; the bound is what the buckets can tell (src/telemetry.rs LATENCY_BUCKETS)."""
    if not text:
        return None, 0
    buckets = []
    for line in text.splitlines():
        if not line.startswith(metric + "_bucket{") or labels not in line:
            continue
        m = re.search(r'le="([^"]+)"\}\s+([\d.e+]+)', line)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            buckets.append((le, float(m.group(2))))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None, 0
    for le, count in buckets:
        if count >= q * total:
            return le, int(total)
    return None, int(total)


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


TOPO = meta.get("topology", "single")
CLUSTER = TOPO == "cluster"
PRIMS = meta.get("primaries") or []
# single: ceiling-<script>; cluster: ceiling-<primary port>-<script>
CEIL_PFX = [f"{p}-" for p in PRIMS] if CLUSTER else [""]
CEILINGS = (
    ("coupon_issue", "coupon_issue, rush shape: a coupon of the rush's quantity, members at random (most calls answer SOLD_OUT / ALREADY_ISSUED once it is gone)"),
    ("coupon_issue_all", "coupon_issue, every call issues (write path)"),
    ("stock_hold", "stock_hold, rush shape: one product with the rush's stock, a fresh order per call (most answer out_of_stock)"),
    ("stock_hold_all", "stock_hold, every call holds (write path)"),
    ("order_reserve", "order_reserve, every call writes an order (the member step after its holds)"),
    ("order_refuse", "order_refuse, a refused order's member step (records the refusal)"),
)
ceils = {pfx: {name: ceiling(pfx + name) for name, _ in CEILINGS} for pfx in CEIL_PFX}
c0 = ceils[CEIL_PFX[0]]
c_issue = c0["coupon_issue"]
c_reserve = c0["stock_hold"]
fs_coupon = run("fs-coupon", "coupon-rush")
fs_coupon_half = run("fs-coupon-half", "coupon-rush")
fs_stock = run("fs-stock", "stock-rush")
fs_stock_half = run("fs-stock-half", "stock-rush")
prev_coupon = run("prev-coupon", "coupon-rush")
prev_stock = run("prev-stock", "stock-rush")
db_coupon = run("db-coupon", "coupon-rush")
db_stock = run("db-stock", "stock-rush")
PREV = meta.get("compare_label") or "previous version"
PREV_NAME = f"the previous version ({meta['compare_label']})" if meta.get("compare_label") else "the previous version"

RUNS = (
    ("flashsale coupon peak", fs_coupon),
    ("flashsale coupon half", fs_coupon_half),
    (f"{PREV} coupon peak", prev_coupon),
    ("db-lock coupon", db_coupon),
    ("flashsale stock peak", fs_stock),
    ("flashsale stock half", fs_stock_half),
    (f"{PREV} stock peak", prev_stock),
    ("db-lock stock", db_stock),
)
ISSUE = "POST /coupons/{id}/issue"
ORDER = "POST /orders"

out = []
w = out.append

w("# Cluster benchmarks" if CLUSTER else "# Benchmarks")
w("")
w(
    f"Written by `make bench{' TOPOLOGY=cluster' if CLUSTER else ''}` (`loadtest/bench.sh`) on {meta.get('date', '?')}"
    f"{' in quick mode (`BENCH_QUICK=1`: short phases, fewer members)' if meta.get('quick') else ''}. "
    "Every figure below comes from that one run; rerun it to refresh them. "
    "Do not edit by hand."
)
w("")
if CLUSTER:
    w(
        "The single-node figures are in [benchmarks.md](benchmarks.md), the capacity model built on both in "
        "[scaling.md](scaling.md)."
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
if CLUSTER:
    nodes = [l.split("\t") for l in (read("nodes.tsv") or "").splitlines() if l.strip()]
    w(
        f"| Redis Cluster | {len(PRIMS)} primaries ({', '.join(PRIMS)}) and their replicas "
        f"({', '.join(n[0] for n in nodes if n[1:2] == ['slave']) or '?'}), all on this machine; "
        f"`REDIS_URL={meta.get('redis_url', '?')}` |"
    )
    w(
        "| engines | ONE engine (2 cores: `make up TOPOLOGY=cluster` runs two behind HAProxy), waiting for 1 "
        "replica after each write (`WAIT 1 500`, the cluster default) |"
    )
w(f"| MariaDB | {meta.get('mariadb', '?')} |")
w(f"| Kafka | {meta.get('kafka', '?') or '?'} |")
w(f"| rustc | {meta.get('rustc', '?')} |")
w(f"| flashsale | git {meta.get('git', '?')} |")
if meta.get("compare_bin"):
    w(f"| previous version | {PREV}: `{meta['compare_bin']}` (and its flashsale-sink), driven by the same load generator |")
w(
    f"| load | {params.get('users', '?')} goose users, no think time; flashsale runs {params.get('run_time', '?')} s, "
    f"db-lock runs {params.get('db_run_time', '?')} s; coupon rush {f(params.get('coupon_members'))} members for "
    f"{f(params.get('coupon_qty'))} coupons; stock rush {f(params.get('stock_members'))} members for "
    f"{f(params.get('stock_units'))} units; ceiling {f(params.get('ceiling_n'))} EVALSHA x "
    f"{params.get('ceiling_clients', '?')} clients per script |"
)
w("")

wallet_p99, wallet_n = histogram_quantile(
    read("fs-coupon.metrics"), "flashsale_saga_lag_seconds", 'step="coupon_wallet_add"', 0.99
)

# ---------------------------------------------------------------------------------------- targets
def verdict(ok, miss):
    if ok is None:
        return "not measured"
    return "**met**" if ok else f"**missed** ({miss})"


fs_issue_rps = op_rps(fs_coupon, ISSUE)
fs_order_rps = op_rps(fs_stock, ORDER)
prev_issue_rps = op_rps(prev_coupon, ISSUE)
prev_order_rps = op_rps(prev_stock, ORDER)
T_PREV_ISSUE = 0.90  # coupon issue may not fall more than 10 % against the previous version
T_PREV_ORDER = 0.75  # order reserve may not fall more than 25 %

w("## Targets")
w("")
w("| target | measured | result |")
w("|---|---|---|")
if not CLUSTER or meta.get("compare_bin"):
    r = ratio(fs_issue_rps, prev_issue_rps)
    w(
        f"| coupon issue >= 90 % of {PREV_NAME}, same run | {f(fs_issue_rps, 0)} / {f(prev_issue_rps, 0)} req/s = {xr(r, True)} | "
        + verdict(None if r is None else r >= T_PREV_ISSUE, f"by {(T_PREV_ISSUE - (r or 0)) * 100:.0f} points")
        + " |"
    )
    r = ratio(fs_order_rps, prev_order_rps)
    w(
        f"| order reserve (`POST /orders`, stock rush) >= 75 % of {PREV_NAME}, same run | {f(fs_order_rps, 0)} / {f(prev_order_rps, 0)} req/s = {xr(r, True)} | "
        + verdict(None if r is None else r >= T_PREV_ORDER, f"by {(T_PREV_ORDER - (r or 0)) * 100:.0f} points")
        + " |"
    )
share = ratio(fs_issue_rps, c_issue and c_issue["rps"])
w(
    f"| coupon issue over HTTP >= 35 % of the EVALSHA ceiling{' of one primary' if CLUSTER else ''} | {f(fs_issue_rps, 0)} / {f(c_issue and c_issue['rps'], 0)} req/s = {xr(share, True)} | "
    + verdict(None if share is None else share >= T_CEILING_SHARE, f"by {(T_CEILING_SHARE - (share or 0)) * 100:.0f} points")
    + " |"
)
for name, s_ in (("coupon issue", fs_coupon_half), ("stock rush", fs_stock_half)):
    p99 = ms(s_["stats"]["latency"]["p99_us"]) if s_ else None
    rate = f"{s_['throttle_requests']:,} req/s cap, {s_['stats']['rps']:,.0f} achieved" if s_ else "–"
    w(
        f"| p99 <= 10 ms at half the peak rate ({name}) | {f(p99, 2, ' ms')} ({rate}) | "
        + verdict(None if p99 is None else p99 <= T_HALF_P99_MS, f"by {(p99 or 0) - T_HALF_P99_MS:.2f} ms")
        + " |"
    )
if not CLUSTER:
    db_issue_rps = op_rps(db_coupon, ISSUE)
    vs = ratio(fs_issue_rps, db_issue_rps)
    w(
        f"| >= 20x the db-lock baseline (coupon issue) | {f(fs_issue_rps, 0)} / {f(db_issue_rps, 0)} req/s = {xr(vs)} | "
        + verdict(None if vs is None else vs >= T_VS_BASELINE, f"by {T_VS_BASELINE - (vs or 0):.1f}x")
        + " |"
    )
    vs_s = ratio(fs_order_rps, op_rps(db_stock, ORDER))
    w(
        f"| >= 20x the db-lock baseline (order create, stock rush) | {f(fs_order_rps, 0)} / {f(op_rps(db_stock, ORDER), 0)} req/s = {xr(vs_s)} | "
        + verdict(None if vs_s is None else vs_s >= T_VS_BASELINE, f"by {T_VS_BASELINE - (vs_s or 0):.1f}x")
        + " |"
    )
if wallet_n:
    bound = "over 10 s" if wallet_p99 in (None, float("inf")) else f"<= {wallet_p99 * 1000:g} ms"
    w(
        f"| `/me/coupons` lag after an issue (saga worker, `flashsale_saga_lag_seconds`) p99 <= 100 ms, coupon rush | "
        f"p99 {bound} (histogram bucket bound) over {wallet_n:,} wallet entries | "
        + verdict(wallet_p99 is not None and wallet_p99 * 1000 <= T_WALLET_LAG_MS, "p99 above 100 ms")
        + " |"
    )
else:
    w("| `/me/coupons` lag after an issue p99 <= 100 ms | – | not measured |")
cpu = fs_coupon["cpu"].get("engine_us_per_request") if fs_coupon else None
w(
    f"| engine CPU <= 30 µs per coupon request | {f(cpu, 1, ' µs')} | "
    + verdict(None if cpu is None else cpu <= T_CPU_US, f"by {(cpu or 0) - T_CPU_US:.1f} µs")
    + " |"
)
drains = [s_["drain"] for s_ in (fs_coupon, fs_coupon_half, fs_stock, fs_stock_half) if s_ and s_.get("drain")]
if drains:
    worst = None
    ok = all(d.get("ok") for d in drains)
    if ok:
        worst = max(d.get("in_sync_secs") or 0 for d in drains)
        ok = worst <= T_DRAIN_S
    w(
        "| sink keeping up: drained and in sync <= 30 s after each burst | "
        + (f"slowest {worst:.1f} s over {len(drains)} bursts" if worst is not None else "not drained within the timeout in some run")
        + " | "
        + verdict(ok, f"by {(worst - T_DRAIN_S):.1f} s" if worst is not None else "timed out")
        + " |"
    )
else:
    w("| sink keeping up | – | not measured |")
w("")


# ------------------------------------------------------------------------------------------ ceiling
def inv(x):
    return 1.0 / x if x else None


def ceiling_rows(pfx_label, cs):
    for name, desc in CEILINGS:
        c = cs.get(name)
        if c is None:
            w(f"| {pfx_label}{desc} | not run | | | | | | | | |")
            continue
        ok_writes = c.get("writes")
        w(
            f"| {pfx_label}{desc} | **{f(c['rps'], 0)}** | {f(c.get('p50_ms'), 2)} | {f(c.get('p99_ms'), 2)} | "
            f"{f(c.get('redis_us'))} | {f(c.get('script_us'))} | {f(c.get('calls'))} | {f(c.get('failed'))} | "
            f"{f(ok_writes)} | {c.get('remaining', '?')} |"
        )


w("## EVALSHA ceiling" + (" of each primary" if CLUSTER else ""))
w("")
w(
    "redis-benchmark runs the engine's own scripts (`lua/lib/prelude.lua` prepended, loaded with `SCRIPT LOAD`) "
    "by EVALSHA with the engine's key layout: each call's KEYS in one partition's hash tag, KEYS and ARGV in "
    "the order `src/scripts/calls.rs` builds them (`CouponIssue`, `StockHold`, `OrderReserve`, `OrderRefuse`). "
    "Each script is probed once with redis-cli first (the answer must be `ok`/`held`, or `err` for "
    "order_refuse: a Redis error stops that ceiling). *EVALSHA calls* and *failed* are the node's "
    "`INFO commandstats` over the run (failed: calls answering a Redis error; business refusals are "
    "ordinary replies); *writes* counts what the calls left (outbox entries, holds, or keys added): "
    "a ceiling counts only if its writes match what the shape should write."
)
if CLUSTER:
    w("")
    w(
        "On the cluster each primary is measured alone, in turn, with coupon, product and member ids in "
        "one partition that primary serves (`loadtest/partition.py ids`); the writes replicate to its replica, "
        "but redis-benchmark does not `WAIT` (the engine does). "
        "The primaries share this machine's 2 cores, so **the sum over primaries is an estimate** of separate "
        "machines, not a measurement."
    )
w("")
w("| script, shape | calls/s | p50 ms | p99 ms | Redis CPU µs/call | script µs/call | EVALSHA calls | failed | writes | left |")
w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for pfx in CEIL_PFX:
    ceiling_rows(f"{pfx.rstrip('-')}: " if CLUSTER else "", ceils[pfx])
w("")
# What one order needs of the scripts measured here, per node (derived: the steps run one after the other
# on the same node only in this estimate; in the engine they run on the product's and the member's nodes).
for pfx in CEIL_PFX:
    cs = ceils[pfx]
    h, r, ra, rf = (cs.get(k) and cs[k]["rps"] for k in ("stock_hold_all", "order_reserve", "stock_hold", "order_refuse"))
    if h and r:
        both = inv(inv(h) + inv(r))
        w(
            f"- {pfx.rstrip('-') + ': ' if CLUSTER else ''}a reserved order runs stock_hold (product's slot) then order_reserve (member's slot): "
            f"one node doing only that pair would take **{f(both, 0)} orders/s** (derived: 1 / (1/{f(h, 0)} + 1/{f(r, 0)})). "
            + (f"A refused one (out of stock) runs stock_hold then order_refuse: {f(inv(inv(ra) + inv(rf)), 0)}/s (derived). " if ra and rf else "")
            + "A paid order later runs hold_confirm, order_pay and stock_commit too (not measured here)."
        )
w("")

# ------------------------------------------------------------------------------------- side by side
HEAD = (
    "| | req/s | p50 ms | p99 ms | p99.9 ms | error rate | engine CPU µs/req | Redis CPU µs/req | EVALSHA calls/req | "
    "engine peak RSS | vs ceiling | vs baseline | drain s | checks |"
)
SEP = "|---|" + "---:|" * 13


def evalsha_per_req(s_):
    nodes = s_.get("redis_nodes") or []
    if not nodes:
        return None
    calls = sum(n["evalsha_calls"] for n in nodes)
    return calls / max(1, s_["stats"]["requests"])


def redis_us(s_):
    cpu = s_.get("cpu", {})
    if cpu.get("redis_us_per_request") is not None:
        return cpu["redis_us_per_request"]
    nodes = s_.get("redis_nodes") or []
    return sum(n["cpu_us_per_request"] for n in nodes) if nodes else None


def http_row(name, s_, op, ceil_rps, base_rps, ratios=True):
    if s_ is None:
        return f"| {name} | not run | | | | | | | | | | | | |"
    o = s_["stats"]["ops"].get(op)
    rps = o["rps"] if o else None
    lat = s_["stats"]["latency"]
    cpu = s_.get("cpu", {})
    d = s_.get("drain") or {}
    checks = "pass" if all(c["ok"] for c in s_["checks"]) else "FAIL: " + "; ".join(c["name"] for c in s_["checks"] if not c["ok"])
    hwm = s_.get("_hwm_kib")
    return (
        f"| {name} | {f(rps, 0)} | {f(ms(lat['p50_us']), 2)} | {f(ms(lat['p99_us']), 2)} | {f(ms(lat['p999_us']), 2)} | "
        f"{s_['stats']['error_rate'] * 100:.2f} % | {f(cpu.get('engine_us_per_request'))} | {f(redis_us(s_))} | "
        f"{f(evalsha_per_req(s_), 2)} | "
        f"{f(hwm / 1024 if hwm else None, 0, ' MiB')} | {xr(ratio(rps, ceil_rps), True) if ratios else '(capped)'} | "
        f"{xr(ratio(rps, base_rps)) if ratios and base_rps else ('(capped)' if not ratios else '–')} | "
        f"{f(d.get('in_sync_secs'), 1) if d else '–'} | {checks} |"
    )


def ceil_row(name, c):
    if c is None:
        return f"| {name} | not run | | | | | | | | | | | | |"
    return (
        f"| {name} | {f(c['rps'], 0)} | {f(c.get('p50_ms'), 2)} | {f(c.get('p99_ms'), 2)} | {f(c.get('p999_ms'), 2)} | 0 % | – | "
        f"{f(c.get('redis_us'))} | 1 | – | 100 % | – | – | left {c.get('remaining', '?')} |"
    )


if prev_coupon or prev_stock:
    w(f"## Side by side with {PREV_NAME}")
    w("")
    w(
        "Same run, same load generator (this version's), same scenarios and sizes, each pair back to back: "
        f"this version's coupon rush, {PREV}'s coupon rush and stock rush (its engine and sink in a namespace of "
        "their own), then this version's stock rush. The machine is shared, so the ratio is the figure to read, "
        "not the absolute rates; the load average above says how busy it was."
    )
    w("")
    w("| request | this version req/s | previous req/s | ratio | limit | p99 ms (this / previous) | engine CPU µs/req (this / previous) | Redis CPU µs/req (this / previous) | EVALSHA calls/req (this / previous) |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, op, new, old, lim in (
        ("coupon issue (`POST /coupons/{id}/issue`, coupon rush)", ISSUE, fs_coupon, prev_coupon, T_PREV_ISSUE),
        ("order reserve (`POST /orders`, stock rush)", ORDER, fs_stock, prev_stock, T_PREV_ORDER),
    ):
        if not (new and old):
            w(f"| {label} | {f(op_rps(new, op), 0)} | {f(op_rps(old, op), 0)} | – | >= {lim * 100:.0f} % | | | | |")
            continue
        r = ratio(op_rps(new, op), op_rps(old, op))
        p99n, p99o = ms(new["stats"]["ops"][op]["latency"]["p99_us"]), ms(old["stats"]["ops"][op]["latency"]["p99_us"])
        w(
            f"| {label} | {f(op_rps(new, op), 0)} | {f(op_rps(old, op), 0)} | **{xr(r, True)}** | >= {lim * 100:.0f} % "
            f"({'met' if r is not None and r >= lim else 'missed'}) | {f(p99n, 2)} / {f(p99o, 2)} | "
            f"{f(new['cpu'].get('engine_us_per_request'))} / {f(old['cpu'].get('engine_us_per_request'))} | "
            f"{f(redis_us(new))} / {f(redis_us(old))} | {f(evalsha_per_req(new), 2)} / {f(evalsha_per_req(old), 2)} |"
        )
    w("")
    w(
        "EVALSHA calls per request are the Redis node's `INFO commandstats` over the timed part divided by the "
        "requests of that part (the stock rush's requests include the pays); on a shared Redis other clients' "
        "calls count too."
    )
    w("")

w("## Coupon issue (coupon rush)")
w("")
w(
    "Requests: `POST /api/v1/coupons/{id}/issue` by members drawn in turn from the seeded pool (201, 409 "
    "`COUPON_SOLD_OUT` and 409 `COUPON_ALREADY_ISSUED` are expected outcomes, not errors). The ceiling row is "
    f"coupon_issue in the rush's shape{' on the first primary' if CLUSTER else ''} (above)."
)
w("")
w(HEAD)
w(SEP)
base = op_rps(db_coupon, ISSUE)
cr = c_issue and c_issue["rps"]
w(ceil_row("ceiling: EVALSHA coupon_issue, rush shape", c_issue))
w(http_row("flashsale, peak", fs_coupon, ISSUE, cr, base))
w(http_row("flashsale, half the peak rate", fs_coupon_half, ISSUE, cr, base, ratios=False))
if prev_coupon or meta.get("compare_bin"):
    w(http_row(f"previous version ({PREV}), peak", prev_coupon, ISSUE, cr, base))
if not CLUSTER:
    w(http_row("baseline: HOT_PATH=db-lock, peak", db_coupon, ISSUE, cr, base))
w("")

w("## Order reserve (stock rush)")
w("")
w(
    "Requests: `POST /api/v1/orders` (one unit of one hot product, `Idempotency-Key`) and, for each 201, "
    "`POST /api/v1/orders/{id}/pay`; 409 `OUT_OF_STOCK` is expected. req/s counts `POST /orders` only; "
    "latencies, error rate and CPU per request cover every request of the run. An order is a saga: "
    "stock_hold in the product's slot, then order_reserve (or, when the hold failed, order_refuse) in the "
    "member's slot, so the ceiling row is stock_hold in the rush's shape, the first step every order takes; "
    "the other steps' ceilings are in the table above."
)
w("")
w(HEAD)
w(SEP)
base = op_rps(db_stock, ORDER)
cr = c_reserve and c_reserve["rps"]
w(ceil_row("ceiling: EVALSHA stock_hold, rush shape", c_reserve))
w(http_row("flashsale, peak", fs_stock, ORDER, cr, base))
w(http_row("flashsale, half the peak rate", fs_stock_half, ORDER, cr, base, ratios=False))
if prev_stock or meta.get("compare_bin"):
    w(http_row(f"previous version ({PREV}), peak", prev_stock, ORDER, cr, base))
if not CLUSTER:
    w(http_row("baseline: HOT_PATH=db-lock, peak", db_stock, ORDER, cr, base))
w("")

# ---------------------------------------------------------------------------------------- per node
if CLUSTER:
    w("## Redis per node")
    w("")
    w(
        "(The *Redis CPU µs/req* of the tables above is the sum over every node here, primaries and replicas.) "
        "Each node's `INFO cpu` (used_cpu_sys + used_cpu_user) and `INFO commandstats` read by the load "
        "generator right before and right after the timed part (`--redis-nodes`), divided by the HTTP requests "
        "of that part. Saga steps that run after the burst (wallet entries, hold confirms, commits) fall "
        "partly outside it. Replicas' CPU is what applying the replication stream costs."
    )
    w("")
    w("| run | node | role | CPU s | CPU µs/req | EVALSHA calls | share of calls | calls/req | script µs/call | WAIT calls | failed |")
    w("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, s_ in RUNS:
        if not s_ or not s_.get("redis_nodes"):
            continue
        total = sum(n["evalsha_calls"] for n in s_["redis_nodes"]) or 1
        for n in s_["redis_nodes"]:
            w(
                f"| {label} | {n['addr']} | {n['role']} | {n['cpu_secs']:.2f} | {n['cpu_us_per_request']:.1f} | "
                f"{n['evalsha_calls']:,} | {n['evalsha_calls'] / total * 100:.0f} % | {n['evalsha_calls_per_request']:.3f} | "
                f"{f(n['evalsha_usec'] / n['evalsha_calls'] if n['evalsha_calls'] else None)} | {n['wait_calls']:,} | {n['evalsha_failed']:,} |"
            )
    w("")

# ------------------------------------------------------------------------------------------- details
w("## Per request")
w("")
w("| run | request | count | req/s | p50 ms | p99 ms | p99.9 ms | outcomes |")
w("|---|---|---:|---:|---:|---:|---:|---|")
for label, s_ in RUNS:
    if not s_:
        continue
    for op, o in s_["stats"]["ops"].items():
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
for label, s_ in RUNS:
    if s_:
        c = s_.get("cpu", {})
        rs = c.get("redis_secs")
        if rs is None and s_.get("redis_nodes"):
            rs = sum(n["cpu_secs"] for n in s_["redis_nodes"])
        w(
            f"| {label} | {f(c.get('loadtest_us_per_request'))} | {f(c.get('engine_secs'), 2)} | {f(rs, 2)} | "
            f"{s_['stats']['window_secs']:.1f} |"
        )
w("")

failed_checks = []
for label, s_ in RUNS:
    if s_:
        for c in s_["checks"]:
            if not c["ok"]:
                failed_checks.append(f"- {label}: **{c['name']}**: {c['detail']}")
for label, s_ in RUNS:
    if s_:
        for op, o in s_["stats"]["ops"].items():
            errs = o.get("error_outcomes") or {}
            if errs:
                failed_checks.append(
                    f"- {label}: `{op}` errors: " + ", ".join(f"{k}: {v:,}" for k, v in errs.items())
                )
older = sorted({(s_.get("drain") or {}).get("preexisting_drift", 0) for _, s_ in RUNS if s_ and s_.get("drain")})
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
    "- CPU per request: utime+stime of the engine process (`/proc/<pid>/stat`) over the timed part, divided by "
    "the requests of that part; Redis: redis-server's `/proc/<pid>/stat` on one node, each node's `INFO cpu` "
    "(used_cpu_sys + used_cpu_user) on the cluster; for the ceilings, `INFO cpu` over the redis-benchmark run "
    "divided by its calls. Peak RSS is the engine's VmHWM at the end of its phase.\n"
    "- Half the peak rate: the same scenario again, paced evenly over all users (the load generator's "
    "`--throttle-requests`) at half the rate the peak run measured.\n"
    "- Drain: after each burst the load generator polls `GET /api/v1/admin/reconcile` until `pending_events` is 0 "
    "and `in_sync` is true (or the only drift left is drift listed before the run seeded anything); the time from "
    "the burst's end to that point is the drain time. The db-lock runs skip it: that mode writes MySQL directly.\n"
    "- Each run then checks its invariants through the API (coupon: 201s == total - remaining, sold out exactly; "
    "stock: sold + remaining == initial, never negative; buyers' balances exact) and reconcile's `in_sync`.\n"
    "- The engines, the sinks and a mock data platform are started by the bench in namespaces of their own on the "
    "shared services (key prefix, database, Kafka topics and consumer group), removed at the end.\n"
    + (
        "- The single-node ceiling runs in a scratch Redis db (`BENCH_REDIS_DB`, flushed afterwards) so the engine and "
        "the reconcile never see its keys."
        if not CLUSTER
        else "- The cluster ceilings write under a key prefix of their own in one slot per primary, unlinked afterwards."
    )
)
w("")
print("\n".join(out))
