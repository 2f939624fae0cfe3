#!/usr/bin/env bash
# Sinks side by side (issue 12, item 3): how the apply rate grows from one sink to two sinks of one
# consumer group. One backlog is made once (a goose big sale against an engine with its relay on and no
# sink running: orders, payments, cancels, sign-ups), then applied again and again, each time into a
# fresh database by a fresh consumer group, by one sink and by two sinks in alternation: the same
# events, the same broker, the same MariaDB, one sitting.
#
# Per apply: events, the whole drain (sinks started -> last processed_at), the steady rate (the events
# between the 10th and the 90th percentile of processed_at, over that time: start-up, the group's join
# and the tail where one sink has finished its partitions are left out), CPU per event of the sinks,
# MariaDB and Kafka, the machine's busy share (/proc/stat), InnoDB row-lock waits and deadlocks.
# Writes docs/sink-scaling.md.
#
# TOPOLOGY=cluster makes the backlog on the Redis Cluster (scripts/services.sh cluster-up, the engine on
# its cluster URL, 64 partition outboxes over three primaries). The sinks never touch Redis, so the
# apply phase is the same code on both topologies; what changes is how the events spread over Kafka's
# partitions.
#
# Environment (defaults):
#   SCALE_ROUNDS=2        alternations of (one sink, two sinks)
#   SCALE_RUN_TIME=30     seconds of big sale that make the backlog
#   SCALE_USERS=16 SCALE_MEMBERS=5000 SCALE_CANCEL_EVERY=10
#   SCALE_PORT=18190      engine port (the mock platform and the sinks' ops ports follow)
#   SCALE_OUT=docs/sink-scaling.md  SCALE_DIR=.local/bench/sink-scale-<time>  BIG_SKIP_BUILD=1
#   CARGO_TARGET_DIR      where release binaries are built (default ~/.cache/flashsale-target)
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
T=${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/flashsale-target}
TOPOLOGY=${TOPOLOGY:-single}
ROUNDS=${SCALE_ROUNDS:-2}
RUN=${SCALE_RUN_TIME:-30}
USERS=${SCALE_USERS:-16}
MEMBERS=${SCALE_MEMBERS:-5000}
CANCEL_EVERY=${SCALE_CANCEL_EVERY:-10}
PORT=${SCALE_PORT:-18190}
OUT=${SCALE_OUT:-$REPO/docs/sink-scaling.md}
WORK=${SCALE_DIR:-$REPO/.local/bench/sink-scale-$(date -u +%Y%m%dT%H%M%SZ)}
ADMIN_KEY=sink-scale-admin
JWT=sink-scale-jwt-secret-0123456789abcdef0123456789
START=$(date +%s)
mkdir -p "$WORK/reports"
APPLIES=$WORK/applies.tsv
: >"$APPLIES"

log() { printf '[sink-scale %4ds] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }

PIDS=()
DATABASES=()
NS=""
cleanup() {
    local p db
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    for db in "${DATABASES[@]}"; do
        mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot \
            -e "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
    done
    if [ -n "$NS" ]; then
        python3 - "$REDIS_SEED_PORT" "$NS" <<'EOF' >/dev/null 2>&1 || true
import subprocess, sys
sys.path.insert(0, "loadtest")
from outbox_state import primaries
for p in primaries(int(sys.argv[1])):
    keys = subprocess.run(["redis-cli", "-p", str(p), "--scan", "--pattern", sys.argv[2] + ":*"],
                          capture_output=True, text=True).stdout.split()
    for k in keys:
        subprocess.run(["redis-cli", "-p", str(p), "UNLINK", k], capture_output=True)
EOF
    fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

if [ "${BIG_SKIP_BUILD:-0}" != 1 ]; then
    log "building release binaries into $T"
    CARGO_TARGET_DIR=$T cargo build --release -p flashsale -p flashsale-sink -p flashsale-loadtest \
        >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; log "build failed"; exit 1; }
fi
for b in "$T/release/flashsale" "$T/release/flashsale-sink" "$T/release/flashsale-loadtest"; do
    [ -x "$b" ] || { log "missing $b"; exit 1; }
done

log "starting the backing services (scripts/services.sh up${TOPOLOGY:+, topology $TOPOLOGY})"
scripts/services.sh up >"$WORK/up.log" 2>&1 || { tail -30 "$WORK/up.log" >&2; log "services up failed"; exit 1; }
eval "$(bash scripts/services.sh env 2>/dev/null)"
MYSQL_PORT=${DATABASE_URL##*:}; MYSQL_PORT=${MYSQL_PORT%%/*}
if [ "$TOPOLOGY" = cluster ]; then
    scripts/services.sh cluster-up >"$WORK/cluster-up.log" 2>&1 || { tail -30 "$WORK/cluster-up.log" >&2; log "cluster-up failed"; exit 1; }
    REDIS_URL=$(scripts/services.sh cluster-url)
    REDIS_SEED_PORT=${REDIS_URL#redis-cluster://127.0.0.1:}; REDIS_SEED_PORT=${REDIS_SEED_PORT%%\?*}
else
    REDIS_SEED_PORT=${REDIS_URL##*:}
fi
status=$(scripts/services.sh status)
pid_of() { awk -v n="$1" '$1 == n && $2 == "running" {print $4}' <<<"$status"; }
KAFKA_PID=$(pid_of kafka); MYSQL_PID=$(pid_of mysql)
[ -n "$KAFKA_PID" ] && [ -n "$MYSQL_PID" ] || { echo "$status" >&2; log "kafka or mariadb is not running"; exit 1; }
log "kafka $KAFKA_PID, mariadb $MYSQL_PID, redis $REDIS_URL"

export REDIS_URL KAFKA_BROKERS ADMIN_API_KEY=$ADMIN_KEY JWT_SECRET=$JWT RUST_LOG=${SCALE_RUST_LOG:-warn}
export MOCK_PLATFORM_LISTEN_ADDR=127.0.0.1:$(( PORT + 1 ))
export DATA_PLATFORM_URL=http://$MOCK_PLATFORM_LISTEN_ADDR/events
"$T/release/flashsale-sink" mock-platform >"$WORK/mock.log" 2>&1 &
PIDS+=($!)

DB() { mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot -N -B "$@"; }
SQL() { DB -e "$2" "$1"; }

# start_sink N DATABASE GROUP LOG: a sink with ops port PORT+1+N; echoes its pid.
start_sink() {
    DATABASE_URL=mysql://root@127.0.0.1:$MYSQL_PORT/$2 KAFKA_GROUP=$3 \
        SINK_LISTEN_ADDR=127.0.0.1:$(( PORT + 1 + $1 )) "$T/release/flashsale-sink" >"$4" 2>&1 &
    echo $!
}
stop() { local p; for p in "$@"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }
# cpu_ticks PID...: utime + stime summed (clock ticks).
cpu_ticks() { local p s=0; for p in "$@"; do s=$(( s + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) )); done; echo "$s"; }
# machine_ticks: "busy total steal" of all cores from /proc/stat (busy: user, nice, system, irq,
# softirq; steal: time the hypervisor gave to other guests, which this shared machine loses too).
machine_ticks() { awk '/^cpu / {t = 0; for (i = 2; i <= 9; i++) t += $i; print $2 + $3 + $4 + $7 + $8, t, $9}' /proc/stat; }
# innodb: "name=value,..." of InnoDB's row-lock waits, their total time (ms) and deadlocks.
innodb() { DB -e "SHOW GLOBAL STATUS WHERE Variable_name IN ('Innodb_row_lock_waits', 'Innodb_row_lock_time', 'Innodb_deadlocks')" | awk '{printf "%s=%s,", $1, $2}'; }

# ---- the backlog, made once
NS=scale$(date +%s)
export KEY_PREFIX=$NS KAFKA_TOPIC=$NS.events KAFKA_DLQ_TOPIC=$NS.events.dlq
SCHEMA_DB=flashsale_$NS
DATABASES+=("$SCHEMA_DB")
# The schema comes from a sink's migrations; every apply database is a copy of it.
p=$(start_sink 0 "$SCHEMA_DB" "$NS-schema" "$WORK/schema-sink.log")
for _ in $(seq 1 120); do SQL "$SCHEMA_DB" "SELECT 1 FROM processed_events LIMIT 1" >/dev/null 2>&1 && break; sleep 0.5; done
stop "$p"
LISTEN_ADDR=127.0.0.1:$PORT DATABASE_URL=mysql://root@127.0.0.1:$MYSQL_PORT/$SCHEMA_DB \
    "$T/release/flashsale" serve >"$WORK/engine.log" 2>&1 &
ENGINE_PID=$!; PIDS+=("$ENGINE_PID")
for _ in $(seq 1 120); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.5; done
curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null || { tail -20 "$WORK/engine.log" >&2; log "engine not ready"; exit 1; }
log "backlog: big sale for ${RUN}s, ${USERS} users, no sink running (namespace $NS)"
"$T/release/flashsale-loadtest" --host "http://127.0.0.1:$PORT" --admin-key "$ADMIN_KEY" \
    --users "$USERS" --run-time "${RUN}s" --report-dir "$WORK/reports" --progress-secs 0 --no-drain \
    --max-p99-ms 100000 big-sale --members "$MEMBERS" --cancel-every "$CANCEL_EVERY" \
    >"$WORK/backlog.out" 2>"$WORK/backlog.err" || { tail -20 "$WORK/backlog.err" >&2; log "the backlog run failed"; exit 1; }
# Every entry relayed (the relay acknowledges an entry in Redis only after Kafka did).
for _ in $(seq 1 240); do
    read -r TOTAL pending lag < <(python3 loadtest/outbox_state.py "$REDIS_SEED_PORT" "$NS")
    [ "$pending" = 0 ] && [ "$lag" = 0 ] && break
    sleep 0.5
done
[ "$pending" = 0 ] && [ "$lag" = 0 ] || { log "the relay did not drain the outbox ($pending pending, $lag unread)"; exit 1; }
stop "$ENGINE_PID"
log "backlog: $TOTAL events in Kafka topic $KAFKA_TOPIC"
DB -e "" >/dev/null
mariadb-dump --no-defaults --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot --no-data "$SCHEMA_DB" >"$WORK/schema.sql"
mariadb-dump --no-defaults --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot --no-create-info "$SCHEMA_DB" _sqlx_migrations >>"$WORK/schema.sql"

# ---- apply SINKS ROUND: the whole backlog, into a fresh database, by a fresh group
APPLY=0
apply() {
    local sinks=$1 round=$2 db group pids=() i t0 applied last=0 same=0 c1 k0 k1 m0 m1 l0 l1 ms0 ms1 mt0 mt1 st0 st1
    APPLY=$(( APPLY + 1 ))
    db=flashsale_${NS}_a$APPLY; group=$NS-a$APPLY
    DATABASES+=("$db")
    DB -e "CREATE DATABASE $db" && DB "$db" <"$WORK/schema.sql" || { log "schema copy failed"; return 1; }
    k0=$(cpu_ticks "$KAFKA_PID"); m0=$(cpu_ticks "$MYSQL_PID"); read -r ms0 mt0 st0 < <(machine_ticks); l0=$(innodb)
    t0=$(date +%s.%N)
    for i in $(seq 1 "$sinks"); do pids+=("$(start_sink "$i" "$db" "$group" "$WORK/apply$APPLY-sink$i.log")"); done
    PIDS+=("${pids[@]}")
    while :; do
        applied=$(SQL "$db" "SELECT COUNT(*) FROM processed_events" 2>/dev/null || echo 0)
        [ "${applied:-0}" -ge "$TOTAL" ] && break
        # The count of processed events can end below the outbox's (an event the sink records
        # differently): done when it stops moving for 5 s.
        if [ "$applied" = "$last" ]; then same=$(( same + 1 )); else same=0; last=$applied; fi
        [ "$same" -ge 25 ] && [ "$applied" -gt 0 ] && break
        [ "$(python3 -c "print(int($(date +%s.%N) - $t0))")" -ge 600 ] && { log "apply $APPLY: timeout"; break; }
        sleep 0.2
    done
    c1=$(cpu_ticks "${pids[@]}"); k1=$(cpu_ticks "$KAFKA_PID"); m1=$(cpu_ticks "$MYSQL_PID"); read -r ms1 mt1 st1 < <(machine_ticks); l1=$(innodb)
    stop "${pids[@]}"
    SQL "$db" "SELECT UNIX_TIMESTAMP(processed_at) FROM processed_events" >"$WORK/apply$APPLY.times"
    printf 'apply\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sinks" "$round" "$TOTAL" "$applied" "$t0" \
        "$WORK/apply$APPLY.times" "$c1" "$(( k1 - k0 ))" "$(( m1 - m0 ))" "$(( ms1 - ms0 ))" "$(( mt1 - mt0 ))" "$l0" "$l1" "$(( st1 - st0 ))" >>"$APPLIES"
    log "apply $APPLY: $sinks sink(s) applied $applied events in $(python3 -c "print(round($(tail -1 <(sort -n "$WORK/apply$APPLY.times")) - $t0, 2))") s"
    SQL "$db" "SELECT 1" >/dev/null && DB -e "DROP DATABASE $db"
}

for r in $(seq 1 "$ROUNDS"); do
    apply 1 "$r"
    apply 2 "$r"
done

python3 loadtest/sink_scale_report.py "$APPLIES" "$OUT" "$TOPOLOGY" "$RUN" "$USERS" "$MEMBERS" \
    "$(git rev-parse --short HEAD 2>/dev/null)$( [ -n "$(git status --porcelain -- src lua sink loadtest)" ] && echo ' (dirty)')" \
    || { log "report failed"; exit 1; }
log "done: $OUT (work dir $WORK)"
