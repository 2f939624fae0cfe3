#!/usr/bin/env bash
# The big sale (issue 12): a sale where most orders succeed, and what making each of them durable
# costs. In ONE sitting, phases alternating for BIG_ROUNDS rounds, each in a namespace of its own
# (key prefix, database, topics, consumer group; dropped at exit) on the running services:
#   whole     this version: engine (relay inside) + one sink + mock data platform, goose `big-sale`
#             (every order paid, every 10th paid order cancelled), then the drain
#   before    BIG_BEFORE_BIN (a previous version's engine, its flashsale-sink beside it): the same
#   hotpath   this version's engine with RUN_RELAY=false and no sink: the hot path alone
# (One sink vs two sinks on the same backlog: loadtest/sink_scale.sh.)
#
# For each phase: requests/s, p50/p99, CPU per request of every process (engine, Redis, Kafka, sink,
# MariaDB, the load generator) over the run and over the drain after it, CPU per event of the pipeline
# (Kafka + sink + MariaDB), the sink's lag per event (processed_at - the event's time, from MySQL:
# p50/p99/max and per second of the run), the engine's event rate and the sink's apply rate per second.
# Writes docs/pipeline-benchmark.md with an SVG of the lag over time (docs/big-sale-lag.svg), and the
# big-sale block of docs/benchmarks.md.
#
# Environment (defaults):
#   BIG_ROUNDS=2 BIG_USERS=16 BIG_RUN_TIME=20 (seconds) BIG_MEMBERS=5000 BIG_CANCEL_EVERY=10
#   BIG_WARMUP=10      seconds of an unreported first run (the broker's JIT, MariaDB's buffer pool)
#   BIG_BEFORE_BIN     previous engine binary (flashsale-sink beside it); BIG_BEFORE_LABEL names it
#   BIG_PORT=18090     engine port (sinks and the mock platform use the next ones)
#   BIG_OUT=docs/pipeline-benchmark.md  BIG_DIR=.local/bench/big-<time>  BIG_SKIP_BUILD=1
#   CARGO_TARGET_DIR   where release binaries are built (default ~/.cache/flashsale-target)
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
T=${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/flashsale-target}
ROUNDS=${BIG_ROUNDS:-2}
USERS=${BIG_USERS:-16}
RUN=${BIG_RUN_TIME:-20}
MEMBERS=${BIG_MEMBERS:-5000}
CANCEL_EVERY=${BIG_CANCEL_EVERY:-10}
BEFORE_BIN=${BIG_BEFORE_BIN:-}
PORT=${BIG_PORT:-18090}
OUT=${BIG_OUT:-$REPO/docs/pipeline-benchmark.md}
WORK=${BIG_DIR:-$REPO/.local/bench/big-$(date -u +%Y%m%dT%H%M%SZ)}
ADMIN_KEY=big-sale-admin
JWT=big-sale-jwt-secret-0123456789abcdef0123456789
START=$(date +%s)
mkdir -p "$WORK/reports"
PHASES=$WORK/phases.tsv
: >"$PHASES"

log() { printf '[big-sale %4ds] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }

PIDS=()
NAMESPACES=()
cleanup() {
    local p ns
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    for ns in "${NAMESPACES[@]}"; do
        mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot \
            -e "DROP DATABASE IF EXISTS flashsale_$ns" >/dev/null 2>&1 || true
        redis-cli -p "$REDIS_PORT" --scan --pattern "$ns:*" | xargs -r -n 500 redis-cli -p "$REDIS_PORT" UNLINK >/dev/null 2>&1
    done
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

if [ "${BIG_SKIP_BUILD:-0}" != 1 ]; then
    log "building release binaries into $T"
    CARGO_TARGET_DIR=$T cargo build --release -p flashsale -p flashsale-sink -p flashsale-loadtest \
        >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; log "build failed"; exit 1; }
fi
for b in "$T/release/flashsale" "$T/release/flashsale-sink" "$T/release/flashsale-loadtest" \
    ${BEFORE_BIN:+"$BEFORE_BIN" "$(dirname "$BEFORE_BIN")/flashsale-sink"}; do
    [ -x "$b" ] || { log "missing $b"; exit 1; }
done

log "starting the backing services (scripts/services.sh up)"
scripts/services.sh up >"$WORK/up.log" 2>&1 || { tail -30 "$WORK/up.log" >&2; log "services up failed"; exit 1; }
eval "$(bash scripts/services.sh env 2>/dev/null)"
REDIS_PORT=${REDIS_URL##*:}
MYSQL_PORT=${DATABASE_URL##*:}; MYSQL_PORT=${MYSQL_PORT%%/*}
status=$(scripts/services.sh status)
pid_of() { awk -v n="$1" '$1 == n && $2 == "running" {print $4}' <<<"$status"; }
REDIS_PID=$(pid_of redis); KAFKA_PID=$(pid_of kafka); MYSQL_PID=$(pid_of mysql)
[ -n "$REDIS_PID" ] && [ -n "$KAFKA_PID" ] && [ -n "$MYSQL_PID" ] || { echo "$status" >&2; log "a service is not running"; exit 1; }
log "redis $REDIS_PID, kafka $KAFKA_PID, mariadb $MYSQL_PID"

export REDIS_URL KAFKA_BROKERS ADMIN_API_KEY=$ADMIN_KEY JWT_SECRET=$JWT RUST_LOG=${BIG_RUST_LOG:-warn}
export MOCK_PLATFORM_LISTEN_ADDR=127.0.0.1:$(( PORT + 1 ))
export DATA_PLATFORM_URL=http://$MOCK_PLATFORM_LISTEN_ADDR/events
"$T/release/flashsale-sink" mock-platform >"$WORK/mock.log" 2>&1 &
PIDS+=($!)

SQL() { mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot -N -B -e "$2" "flashsale_$1"; }

# use_namespace NS: what the engine and sinks started next use.
use_namespace() {
    export DATABASE_URL=mysql://root@127.0.0.1:$MYSQL_PORT/flashsale_$1
    export KEY_PREFIX=$1 KAFKA_TOPIC=$1.events KAFKA_DLQ_TOPIC=$1.events.dlq KAFKA_GROUP=$1-sink
    NAMESPACES+=("$1")
}

# start_sink BIN N LOG: a sink with ops port PORT+1+N; echoes its pid.
start_sink() {
    SINK_LISTEN_ADDR=127.0.0.1:$(( PORT + 1 + $2 )) "$1" >"$3" 2>&1 &
    echo $!
}

wait_ready() {
    local i
    for i in $(seq 1 120); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && return 0; sleep 0.5; done
    return 1
}

# stop PID...: TERM, then wait.
stop() { local p; for p in "$@"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }

# lag NS FROM_MS UNTIL_MS OUT: per-event lag of the run's events (processed_at minus the event's own
# time: stock movements for reserve/cancel, ledger rows for pay), summary and per second.
lag() {
    local ns=$1 from=$2 until=$3 out=$4
    SQL "$ns" "
      SELECT TIMESTAMPDIFF(MICROSECOND, e.at, p.processed_at) / 1000, UNIX_TIMESTAMP(e.at) * 1000,
             UNIX_TIMESTAMP(p.processed_at) * 1000
      FROM processed_events p JOIN (
        SELECT event_id, MIN(at) AS at FROM stock_movements GROUP BY event_id
        UNION ALL SELECT event_id, at FROM points_ledger WHERE type <> 'CHARGE') e USING (event_id)
      WHERE e.at >= FROM_UNIXTIME($from / 1000)" >"$out"
}

# phase NAME ROUND ENGINE_BIN SINK_BIN|- [RUN_SECS]: one goose big-sale run and its measurements
# (a phase named warmup is not reported).
N=0
phase() {
    local name=$1 round=$2 engine=$3 sink=$4 secs=${5:-$RUN} ns engine_pid sink_pid="" watch summary relay=true
    N=$(( N + 1 ))
    ns=big$(date +%s)$N
    use_namespace "$ns"
    [ "$sink" = - ] && relay=false
    if [ "$sink" != - ]; then sink_pid=$(start_sink "$sink" 1 "$WORK/$name-$N-sink.log"); PIDS+=("$sink_pid"); fi
    LISTEN_ADDR=127.0.0.1:$PORT RUN_RELAY=$relay "$engine" serve >"$WORK/$name-$N-engine.log" 2>&1 &
    engine_pid=$!; PIDS+=("$engine_pid")
    if ! wait_ready; then tail -20 "$WORK/$name-$N-engine.log" >&2; log "$name: engine not ready"; stop "$engine_pid" $sink_pid; return 1; fi
    watch="kafka=$KAFKA_PID,mariadb=$MYSQL_PID${sink_pid:+,sink=$sink_pid}"
    log "$name (round $round): namespace $ns, ${USERS} users for ${secs}s"
    local extra=()
    [ "$sink" = - ] && extra=(--no-drain)
    "$T/release/flashsale-loadtest" --host "http://127.0.0.1:$PORT" --admin-key "$ADMIN_KEY" \
        --users "$USERS" --run-time "${secs}s" --report-dir "$WORK/reports" --progress-secs 0 \
        --engine-pid "$engine_pid" --redis-pid "$REDIS_PID" --watch-pids "$watch" \
        --max-p99-ms 100000 "${extra[@]}" \
        big-sale --members "$MEMBERS" --cancel-every "$CANCEL_EVERY" >"$WORK/$name-$N.out" 2>"$WORK/$name-$N.err"
    local rc=$?
    summary=$(sed -n 's/^reports: .*, \(.*summary.json\)$/\1/p' "$WORK/$name-$N.out")
    if [ -z "$summary" ]; then tail -20 "$WORK/$name-$N.err" >&2; log "$name: no summary (exit $rc)"; stop "$engine_pid" $sink_pid; return 1; fi
    if [ "$sink" != - ]; then
        read -r from until < <(python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(s['timed_from_ms'], s['timed_until_ms'])" "$summary")
        lag "$ns" "$from" "$until" "$WORK/$name-$N.lag"
    fi
    stop "$engine_pid" $sink_pid
    [ "$name" = warmup ] || printf '%s\t%s\t%s\t%s\n' "$name" "$round" "$summary" "$( [ "$sink" != - ] && echo "$WORK/$name-$N.lag" || echo -)" >>"$PHASES"
    log "$name: $(grep -E '^RESULT' "$WORK/$name-$N.out")"
}

# The broker and the database just started are still compiling and warming their caches: one short
# unreported run first.
[ "${BIG_WARMUP:-10}" -gt 0 ] && phase warmup 0 "$T/release/flashsale" "$T/release/flashsale-sink" "${BIG_WARMUP:-10}"
for r in $(seq 1 "$ROUNDS"); do
    phase whole "$r" "$T/release/flashsale" "$T/release/flashsale-sink"
    phase hotpath "$r" "$T/release/flashsale" -
    if [ -n "$BEFORE_BIN" ]; then
        phase before "$r" "$BEFORE_BIN" "$(dirname "$BEFORE_BIN")/flashsale-sink"
    fi
done

python3 loadtest/big_sale_report.py "$WORK" "$OUT" "${BIG_BEFORE_LABEL:-previous}" \
    "$(git rev-parse --short HEAD 2>/dev/null)$( [ -n "$(git status --porcelain -- src lua sink loadtest)" ] && echo ' (dirty)')" \
    "$USERS" "$RUN" "$MEMBERS" "$CANCEL_EVERY" || { log "report failed"; exit 1; }
log "done: $OUT (work dir $WORK)"
