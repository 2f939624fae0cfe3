#!/usr/bin/env python3
"""Sums the outbox streams of a key prefix: entries ever added, and what the relay still holds
(pending: read, not yet acknowledged; lag: not yet read). On a Redis Cluster every primary is asked.

usage: outbox_state.py PORT PREFIX      prints "added pending lag"
"""
import subprocess
import sys


def cli(port, *args):
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def primaries(port):
    info = cli(port, "INFO", "cluster")
    if not any(line.strip() == "cluster_enabled:1" for line in info):
        return [port]
    ports = []
    for line in cli(port, "CLUSTER", "NODES"):
        f = line.split()
        if len(f) > 2 and "master" in f[2] and "fail" not in f[2]:
            ports.append(int(f[1].split("@")[0].rsplit(":", 1)[1]))
    return ports


def value_after(lines, name):
    for i, line in enumerate(lines[:-1]):
        if line.strip() == name:
            v = lines[i + 1].strip()
            return int(v) if v.lstrip("-").isdigit() else 0
    return 0


def main():
    port, prefix = int(sys.argv[1]), sys.argv[2]
    added = pending = lag = 0
    for p in primaries(port):
        for key in cli(p, "--scan", "--pattern", f"{prefix}:*outbox"):
            if cli(p, "TYPE", key)[0].strip() != "stream":
                continue
            added += value_after(cli(p, "XINFO", "STREAM", key), "entries-added")
            groups = cli(p, "XINFO", "GROUPS", key)
            pending += value_after(groups, "pending")
            lag += value_after(groups, "lag")
    print(added, pending, lag)


if __name__ == "__main__":
    main()
