#!/usr/bin/env python3
"""Markdown summary of one loadtest/limited_rush.sh run (goose scenario and wrk twin).

usage: limited_rush_report.py WORK_DIR RUN_ID HOST GOOSE_RC WRK_RC   (an rc of '-' = not run)
Reads WORK_DIR/limited-rush-goose-*.summary.json (flashsale-loadtest limited-rush),
WORK_DIR/limited-rush-wrk-*.summary.json (flashsale-loadtest limited-verify) and WORK_DIR/wrk.stats
(loadtest/wrk/limited_rush.lua); writes the markdown to stdout.
"""
import glob
import json
import os
import subprocess
import sys


def load(pattern):
    paths = sorted(glob.glob(pattern))
    if not paths:
        return None
    with open(paths[-1]) as f:
        return json.load(f)


def kv(path):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                if k:
                    out[k] = v
    except OSError:
        return None
    return out


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return "?"


def verdict(rc):
    return {"-": "not run", "0": "PASS", "1": "FAIL (a check or threshold)"}.get(rc, f"could not run (exit {rc})")


def main():
    work, run, host, goose_rc, wrk_rc = sys.argv[1:6]
    goose = load(os.path.join(work, "limited-rush-goose-*.summary.json"))
    wrkv = load(os.path.join(work, "limited-rush-wrk-*.summary.json"))
    wstats = kv(os.path.join(work, "wrk.stats"))
    state = load(os.path.join(work, "wrk-state.json"))

    lines = [f"# Limited rush {run}", ""]
    date, commit, cores = sh("date -u +%Y-%m-%dT%H:%M:%SZ"), sh("git rev-parse --short HEAD"), sh("nproc")
    load_avg = sh("cut -d' ' -f1-3 /proc/loadavg")
    wrk_version = sh("wrk -v 2>&1 | head -1 | cut -d' ' -f2")
    lines.append(
        f"Engine `{host}`; {date}; load generator at commit {commit}; {cores} cores shared by everything "
        f"(load average {load_avg} at the end); wrk {wrk_version}."
    )
    lines.append("")
    lim = (goose or {}).get("limited") or (wrkv or {}).get("limited") or {}
    if lim:
        lines.append(
            f"One product per driver: stock {lim.get('stock')}, per_member_limit {lim.get('per_member_limit')}, "
            f"sale_starts_at a few seconds into the run; members keep ordering 1 (sometimes 2) units before and "
            f"after the opening and far past their limit, retry with the same key, pay, cancel."
        )
        lines.append("")

    lines += ["| driver | load | requests | req/s | p50 ms | p99 ms | errors | result |", "|---|---|---:|---:|---:|---:|---:|---|"]
    if goose:
        s = goose["stats"]
        lat = s["latency"]
        lines.append(
            f"| goose | {goose['users']} users, {goose['run_time_secs']} s, {goose['seeded_members']} members "
            f"| {s['requests']} | {s['rps']:.0f} | {lat['p50_us'] / 1000:.2f} | {lat['p99_us'] / 1000:.2f} "
            f"| {s['errors']} | {verdict(goose_rc)} |"
        )
    elif goose_rc != "-":
        lines.append(f"| goose | | | | | | | {verdict(goose_rc)} |")
    if wstats:
        errs = sum(int(wstats.get(k, 0)) for k in ("errors_connect", "errors_read", "errors_write", "errors_timeout"))
        members = len(state.get("members", [])) if state else "?"
        lines.append(
            f"| wrk | {os.environ.get('WRK_THREADS', '2')} threads, {os.environ.get('WRK_CONNECTIONS', '16')} connections, "
            f"{float(wstats['duration_s']):.0f} s, {members} members | {wstats['requests']} | {float(wstats['rps']):.0f} "
            f"| {float(wstats['p50_ms']):.2f} | {float(wstats['p99_ms']):.2f} | {errs} socket | {verdict(wrk_rc)} |"
        )
    elif wrk_rc != "-":
        lines.append(f"| wrk | | | | | | | {verdict(wrk_rc)} |")
    lines.append("")
    lines.append(
        "goose's latencies are its own µs histograms over every request; wrk's are wrk's. Expected refusals "
        "(SALE_NOT_STARTED, PURCHASE_LIMIT_EXCEEDED, OUT_OF_STOCK, a keyless order's IDEMPOTENCY_KEY_REQUIRED) "
        "are not errors."
    )
    lines.append("")

    for name, summ, how in (
        ("goose", goose, "by when the request was first sent"),
        ("wrk", wrkv, "by when the answer arrived; `(replayed)`: Idempotent-Replayed"),
    ):
        if not summ or not summ.get("limited"):
            continue
        l = summ["limited"]
        lines.append(f"## {name}: answers before / after the opening ({l.get('opening')}, {how})")
        lines.append("")
        lines += ["| request, answer | before | after |", "|---|---:|---:|"]
        for a in l.get("answers", []):
            lines.append(f"| {a['answer']} | {a['before']} | {a['after']} |")
        lines.append("")

    for name, summ in (("goose", goose), ("wrk", wrkv)):
        if not summ:
            continue
        lines.append(f"## {name}: checks")
        lines.append("")
        for c in summ.get("checks", []):
            lines.append(f"- **{'PASS' if c['ok'] else 'FAIL'}** {c['name']}: {c['detail']}")
        for t in summ.get("thresholds", []):
            lines.append(f"- **{'PASS' if t['ok'] else 'FAIL'}** threshold {t['name']}: {round(t['value'], 3)} (limit {t['limit']})")
        lines.append("")
    lines.append(f"Raw files: `{work}`.")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
