#!/usr/bin/env python3
"""Writes docs/sink-scaling.md from loadtest/sink_scale.sh's applies.tsv.

usage: sink_scale_report.py APPLIES OUT TOPOLOGY RUN_SECS USERS MEMBERS GIT
"""
import datetime
import os
import subprocess
import sys

TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def pairs(s):
    out = {}
    for part in s.split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.lower()] = int(v) if v.isdigit() else 0
    return out


def steady(times, t0):
    """Events between the 10th and 90th percentile of processed_at, over that time; and the whole
    drain (start of the sinks to the last processed_at)."""
    times = sorted(times)
    n = len(times)
    if n < 20:
        return None, max(times[-1] - t0, 1e-3) if times else None
    lo, hi = times[n // 10], times[(9 * n) // 10]
    rate = (9 * n // 10 - n // 10) / max(hi - lo, 1e-3)
    return rate, max(times[-1] - t0, 1e-3)


def fmt(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def main():
    applies_path, out, topology, run, users, members, git = sys.argv[1:8]
    rows = []
    for line in open(applies_path):
        f = line.rstrip("\n").split("\t")
        if f[0] != "apply":
            continue
        sinks, rnd, total, applied, t0, times_path = int(f[1]), int(f[2]), int(f[3]), int(f[4]), float(f[5]), f[6]
        sink_t, kafka_t, maria_t, busy_t, all_t = (int(x) for x in f[7:12])
        l0, l1 = pairs(f[12]), pairs(f[13])
        steal_t = int(f[14]) if len(f) > 14 and f[14] else 0
        times = [float(x) for x in open(times_path).read().split() if x.strip()]
        rate, drain = steady(times, t0)
        ev = max(applied, 1)
        rows.append({
            "sinks": sinks, "round": rnd, "total": total, "applied": applied, "drain": drain,
            "drain_rate": applied / drain, "rate": rate,
            "sink_us": sink_t * TICK_US / ev, "kafka_us": kafka_t * TICK_US / ev,
            "maria_us": maria_t * TICK_US / ev,
            "busy": busy_t / max(all_t, 1),
            "steal": steal_t / max(all_t, 1),
            "lock_waits": l1.get("innodb_row_lock_waits", 0) - l0.get("innodb_row_lock_waits", 0),
            "lock_ms": l1.get("innodb_row_lock_time", 0) - l0.get("innodb_row_lock_time", 0),
            "deadlocks": l1.get("innodb_deadlocks", 0) - l0.get("innodb_deadlocks", 0),
        })
    if not rows:
        sys.exit("no applies recorded")

    def total_of(sinks, key):
        vals = [r[key] for r in rows if r["sinks"] == sinks and r[key] is not None]
        return sum(vals) if vals else None

    def mean_of(sinks, key):
        vals = [r[key] for r in rows if r["sinks"] == sinks and r[key] is not None]
        return sum(vals) / len(vals) if vals else None

    s1, s2 = total_of(1, "rate"), total_of(2, "rate")
    d1, d2 = total_of(1, "drain_rate"), total_of(2, "drain_rate")
    cores = os.cpu_count() or 0
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    maria = subprocess.run(["mariadb", "--version"], capture_output=True, text=True).stdout.strip()
    L = []
    L.append("# Sinks side by side: one sink and two sinks of one group on the same backlog")
    L.append("")
    L.append(f"Written by `loadtest/sink_scale.sh` (`make sink-scale`{' TOPOLOGY=cluster' if topology == 'cluster' else ''}) "
             f"on {now} (git {git}), release builds, {cores} cores shared by every process, {maria}.")
    L.append("")
    L.append(f"The backlog: a goose big sale ({users} users, {run} s, {members} members, every order paid, every "
             f"10th paid order cancelled) against one engine on the **{topology}** Redis topology with its relay on "
             f"and no sink running: {rows[0]['total']:,} events in Kafka. It is then applied again and again, each "
             "time into a fresh copy of the schema by a fresh consumer group, by one sink and by two sinks in "
             "alternation: the same events, broker and MariaDB for every apply.")
    L.append("")
    L.append("| apply | sinks | events | drain s | drain events/s | steady events/s | sinks µs/event | MariaDB µs/event | Kafka µs/event | machine busy | stolen | row-lock waits (ms) | deadlocks |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for i, r in enumerate(rows, 1):
        L.append(f"| {i} | {r['sinks']} | {r['applied']:,} | {r['drain']:.1f} | {fmt(r['drain_rate'])} | {fmt(r['rate'])} | "
                 f"{fmt(r['sink_us'])} | {fmt(r['maria_us'])} | {fmt(r['kafka_us'])} | {r['busy'] * 100:.0f}% | {r['steal'] * 100:.0f}% | "
                 f"{r['lock_waits']:,} ({r['lock_ms']:,}) | {r['deadlocks']} |")
    L.append("")
    if s1 and s2:
        L.append(f"- **Two sinks vs one, steady rate: {s2 / s1:.2f}x** ({fmt(mean_of(2, 'rate'))} vs {fmt(mean_of(1, 'rate'))} "
                 "events/s, mean of the applies; target 1.7x).")
    if d1 and d2:
        L.append(f"- Whole drain (start-up and the group's join included): {d2 / d1:.2f}x "
                 f"({fmt(mean_of(2, 'drain_rate'))} vs {fmt(mean_of(1, 'drain_rate'))} events/s).")
    c1 = (mean_of(1, "sink_us") or 0) + (mean_of(1, "maria_us") or 0) + (mean_of(1, "kafka_us") or 0)
    c2 = (mean_of(2, "sink_us") or 0) + (mean_of(2, "maria_us") or 0) + (mean_of(2, "kafka_us") or 0)
    if c1 and c2:
        L.append(f"- CPU per event (sinks + MariaDB + Kafka): {c1:,.0f} µs with one sink, {c2:,.0f} µs with two; the machine "
                 f"was {mean_of(1, 'busy') * 100:.0f}% busy (+{mean_of(1, 'steal') * 100:.0f}% stolen by other guests) with one sink and "
                 f"{mean_of(2, 'busy') * 100:.0f}% (+{mean_of(2, 'steal') * 100:.0f}%) with two "
                 f"({cores} cores: at {c1:,.0f} µs per event they apply at most {cores * 1e6 / c1:,.0f} events/s "
                 "whatever the number of sinks).")
    w1, w2 = mean_of(1, "lock_ms"), mean_of(2, "lock_ms")
    if w2 is not None:
        L.append(f"- Row-lock waits: {w2:,.0f} ms per apply with two sinks ({w1:,.0f} with one), deadlocks "
                 f"{total_of(2, 'deadlocks')} over the two-sink applies. Both sinks update the sale's product row (its "
                 "stock) in every batch, and a member's row when its sign-up and its payments travel in different "
                 "partitions; those updates come last in a batch, just before the commit, so a sink waits only that long.")
    L.append("")
    L.append("## How it is measured")
    L.append("")
    L.append("Steady rate: the events applied between the 10th and the 90th percentile of `processed_events.processed_at`, "
             "divided by the time between them; it leaves out the sinks' start, the consumer group's join and the tail in "
             "which one sink has finished its partitions and the other has not. Drain: all events over the time from the "
             "sinks' start to the last `processed_at`. CPU: utime + stime from `/proc/<pid>/stat` of the sinks (start to "
             "finish), MariaDB and Kafka (over the apply); machine busy share from `/proc/stat`. Row-lock waits and "
             "deadlocks: MariaDB's `Innodb_row_lock_waits`, `Innodb_row_lock_time` and `Innodb_deadlocks` over the apply. "
             "The sinks deliver every paid order to a mock data platform meanwhile, as in production.")
    L.append("")
    L.append("Reproduce: `make sink-scale` (single-node Redis makes the backlog) or `make sink-scale TOPOLOGY=cluster`; "
             "knobs SCALE_ROUNDS, SCALE_RUN_TIME, SCALE_USERS, SCALE_MEMBERS in the script's header.")
    L.append("")
    with open(out, "w") as f:
        f.write("\n".join(L))
    print("\n".join(L))


if __name__ == "__main__":
    main()
