#!/usr/bin/env python3
"""The engine's key layout for the bench's EVALSHA ceilings (a copy of src/partition.rs; the `check`
command compares it with Redis's own CLUSTER KEYSLOT so a drift from the Rust code shows up).

  partition.py tag ID                  hash tag (without braces) of the owner id's partition
  partition.py ids PORT [COUNT]        COUNT (default 3) owner ids whose partition's slot the Redis
                                       Cluster node on 127.0.0.1:PORT serves, all in ONE partition,
                                       then that partition's tag: "id1 id2 id3 tag"
  partition.py check PORT              exit 1 unless CLUSTER KEYSLOT agrees for every partition's tag
"""
import subprocess
import sys

PARTITIONS = 64
SLOTS = 16384


def crc16(data: bytes) -> int:
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def _tag(index: int) -> str:
    # p<index>.<salt>, the smallest salt whose slot lies in the partition's own 1/64 of the slots
    rng = SLOTS // PARTITIONS
    salt = 0
    while True:
        t = f"p{index}.{salt}"
        if (crc16(t.encode()) % SLOTS) // rng == index:
            return t
        salt += 1


TAGS = [_tag(i) for i in range(PARTITIONS)]
M64 = (1 << 64) - 1


def partition_of_id(i: int) -> int:
    # splitmix64 finaliser, as Partition::of_id
    z = i & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    z ^= z >> 31
    return z % PARTITIONS


def slot_of_tag(t: str) -> int:
    return crc16(t.encode()) % SLOTS


def node_slots(port: int):
    # CLUSTER SHARDS would do too; CLUSTER NODES is in every 7.x: "... myself,master ... 0-5460"
    out = subprocess.run(["redis-cli", "-p", str(port), "CLUSTER", "NODES"], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 8 and "myself" in f[2]:
            ranges = []
            for r in f[8:]:
                if r.startswith("["):
                    continue  # a slot being migrated
                a, _, b = r.partition("-")
                ranges.append((int(a), int(b or a)))
            return ranges
    return []


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "tag":
        print(TAGS[partition_of_id(int(sys.argv[2]))])
    elif cmd == "ids":
        port, count = int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 3
        ranges = node_slots(port)
        served = [p for p in range(PARTITIONS) if any(a <= slot_of_tag(TAGS[p]) <= b for a, b in ranges)]
        if not served:
            sys.exit(f"node {port} serves no partition's slot")
        p = served[0]
        ids, i = [], 1
        while len(ids) < count:
            if partition_of_id(i) == p:
                ids.append(i)
            i += 1
        print(" ".join(str(x) for x in ids), TAGS[p])
    elif cmd == "check":
        port = int(sys.argv[2])
        bad = 0
        for t in TAGS:
            got = subprocess.run(["redis-cli", "-p", str(port), "CLUSTER", "KEYSLOT", "{" + t + "}:x"],
                                 capture_output=True, text=True).stdout.strip()
            if got != str(slot_of_tag(t)):
                print(f"tag {t}: ours {slot_of_tag(t)}, Redis {got}", file=sys.stderr)
                bad += 1
        sys.exit(1 if bad else 0)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
