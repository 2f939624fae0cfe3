#!/usr/bin/env bash
# Pipeline benchmark: how fast the sink applies events into MariaDB, and how long the whole pipeline
# (outbox -> relay -> Kafka -> sink -> MySQL) takes to drain after a burst. Runs against the local
# services (make up / scripts/services.sh up), in its own database, key prefix and topics, with release
# builds of the engine and the sink. Writes docs/pipeline-benchmark.md.
#
#   PIPE_MEMBERS=20000   members seeded per burst (each: member.registered + points.charged = 2 events)
#   PIPE_ORDERS=4000     orders reserved and paid per burst (2 events each, the heaviest to apply)
#   PIPE_PORT=18380      engine port for the run
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
T=${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/flashsale-target}
MEMBERS=${PIPE_MEMBERS:-20000}
ORDERS=${PIPE_ORDERS:-4000}
PORT=${PIPE_PORT:-18380}
MYSQL_PORT=${MYSQL_PORT:-3306}
OUT=${PIPE_OUT:-$REPO/docs/pipeline-benchmark.md}
ID=pb$(date +%s)
WORK=$REPO/.local/bench/$ID
mkdir -p "$WORK"

log() { printf '[pipeline-bench] %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.2f}')"; }

export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:${REDIS_PORT:-6379}}
export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:${KAFKA_PORT:-9092}}
export DATABASE_URL=mysql://root@127.0.0.1:$MYSQL_PORT/flashsale_$ID
export KEY_PREFIX=$ID KAFKA_TOPIC=$ID.events KAFKA_DLQ_TOPIC=$ID.events.dlq KAFKA_GROUP=$ID-sink
export ADMIN_API_KEY=pipeline-bench JWT_SECRET=pipeline-bench-secret-0123456789abcdef0123 RUST_LOG=warn
API=http://127.0.0.1:$PORT
SQL() { mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot -N -B -e "$1" "flashsale_$ID"; }

log "building release binaries"
cargo build -q --release -p flashsale -p flashsale-sink

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot -e "DROP DATABASE IF EXISTS flashsale_$ID" || true
    redis-cli -u "$REDIS_URL" --scan --pattern "$ID:*" | xargs -r -n 500 redis-cli -u "$REDIS_URL" UNLINK >/dev/null || true
}
trap cleanup EXIT

# A mock platform that accepts everything, so deliveries do not slow the measurement.
MOCK_PLATFORM_LISTEN_ADDR=127.0.0.1:$((PORT + 2)) "$T/release/flashsale-sink" mock-platform >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
LISTEN_ADDR=127.0.0.1:$PORT "$T/release/flashsale" serve >"$WORK/engine.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 120); do curl -fs "$API/readyz" >/dev/null 2>&1 && break; sleep 0.5; done
curl -fs "$API/readyz" >/dev/null || { tail -20 "$WORK/engine.log"; exit 1; }

events_added() {
    redis-cli -u "$REDIS_URL" XINFO STREAM "$ID:outbox:{outbox}" | awk 'prev=="entries-added"{print; exit} {prev=$0}'
}
applied() { SQL "SELECT COUNT(*) FROM processed_events" 2>/dev/null || echo 0; }
# Entries the relay has not forwarded yet (never read + read but not acknowledged).
relay_backlog() {
    redis-cli -u "$REDIS_URL" XINFO GROUPS "$ID:outbox:{outbox}" \
        | awk 'prev=="pending"{p=$0} prev=="lag"{l=$0} {prev=$0} END{print p + l}'
}

burst() { # $1 = label
    local t0; t0=$(now)
    python3 "$REPO/loadtest/pipeline_burst.py" --api "$API" --admin-key "$ADMIN_API_KEY" --members "$MEMBERS" \
        --orders "$ORDERS" --label "$1-$ID" >"$WORK/$1.log" 2>&1 || { tail -20 "$WORK/$1.log" >&2; exit 1; }
    since "$t0"
}

# 1. Burst with no sink running: the events wait in Kafka; then the sink starts and we time the apply.
log "burst 1 ($MEMBERS members, $ORDERS paid orders) with the sink stopped"
burst_secs=$(burst b1)
produced=$(events_added)
log "burst 1: $produced events in ${burst_secs}s; waiting for the relay to forward them"
t0=$(now)
for _ in $(seq 1 3000); do [ "$(relay_backlog)" = 0 ] && break; sleep 0.2; done
relay_secs=$(since "$t0")
log "starting the sink"
DATA_PLATFORM_URL=http://127.0.0.1:$((PORT + 2))/events SINK_LISTEN_ADDR=127.0.0.1:$((PORT + 1)) \
    "$T/release/flashsale-sink" run >"$WORK/sink.log" 2>&1 &
PIDS+=($!)
t0=$(now)
for _ in $(seq 1 3000); do [ "$(applied)" -ge "$produced" ] && break; sleep 0.2; done
apply_secs=$(since "$t0")
applied1=$(applied)

# 2. Burst with the sink running: time from the end of the burst until nothing is in flight.
log "burst 2 with the sink running"
burst2_secs=$(burst b2)
produced2=$(( $(events_added) - produced ))
t0=$(now)
for _ in $(seq 1 3000); do [ "$(relay_backlog)" = 0 ] && [ "$(applied)" -ge "$(events_added)" ] && break; sleep 0.2; done
drain_secs=$(since "$t0")
# The admin reconcile answers one page at a time: in sync when every page through the last says so.
insync=$(API="$API" ADMIN_API_KEY="$ADMIN_API_KEY" python3 -c '
import json, os, urllib.request
cursor, ok = None, True
while True:
    url = os.environ["API"] + "/api/v1/admin/reconcile?limit=5000" + (f"&cursor={cursor}" if cursor else "")
    req = urllib.request.Request(url, headers={"X-Admin-Key": os.environ["ADMIN_API_KEY"]})
    page = json.load(urllib.request.urlopen(req))
    ok = ok and page["in_sync"]
    cursor = page.get("next_cursor")
    if not cursor:
        break
print(ok)')

rate() { python3 -c "print(f'{$1 / max($2, 0.001):,.0f}')"; }
cat >"$OUT" <<MD
# Pipeline benchmark

Written by \`loadtest/pipeline_bench.sh\` on $(date -u +%Y-%m-%dT%H:%M:%SZ) (git $(git rev-parse --short HEAD)), release builds,
$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(redis-server --version | awk '{print $3}'),
$(mariadbd --version 2>/dev/null | awk '{print $3}'), Kafka 4.1.0. The machine is shared by every process of the run.

Each burst: $MEMBERS members seeded through the admin path (member.registered + points.charged) and
$ORDERS orders reserved and paid (order.reserved + order.paid, the heaviest events to apply).

| measurement | value |
|---|---|
| burst 1: events produced | $produced in ${burst_secs} s ($(rate "$produced" "$burst_secs") events/s into the outbox) |
| relay (runs during the burst): backlog left at the end of burst 1 forwarded in | ${relay_secs} s |
| **sink: Kafka -> MariaDB, backlog of burst 1 (sink started after the burst)** | $applied1 events in ${apply_secs} s = **$(rate "$applied1" "$apply_secs") events/s** |
| burst 2 (sink running): events produced | $produced2 in ${burst2_secs} s ($(rate "$produced2" "$burst2_secs") events/s) |
| **drain after burst 2: from the end of the burst until nothing is in flight** | **${drain_secs} s** |
| reconcile after the drain | in_sync = $insync |
MD
cat "$OUT"
