#!/usr/bin/env bash
# flashsale benchmark (`make bench`): in ONE run, side by side, and writes docs/benchmarks.md.
#
#   ceiling    redis-benchmark runs the engine's own coupon_issue / order_reserve Lua scripts (prelude
#              prepended, as src/scripts.rs does) by EVALSHA on the same Redis, in a scratch db
#   flashsale  the engine (release build, HOT_PATH=redis) on its own port, driven by the goose
#              coupon-rush and stock-rush scenarios at full speed, then throttled to half that rate
#   baseline   the engine with HOT_PATH=db-lock (MySQL SELECT ... FOR UPDATE) on its own port, same
#              scenarios at full speed (no drain / in_sync wait: MySQL is written directly)
#
# Environment (defaults):
#   BENCH_QUICK=1          ~3-4 minute run (short phases, fewer members); default is the full run (< ~15 min)
#   BENCH_USERS=16         goose users (connections) per HTTP run
#   BENCH_RUN_TIME         seconds of each flashsale run (30, quick 8); BENCH_DB_RUN_TIME for db-lock (20, quick 8)
#   BENCH_CEILING_N        EVALSHA calls per ceiling run (300000, quick 60000); BENCH_CEILING_CLIENTS=32
#   BENCH_PORT=18080       flashsale engine port; BENCH_DB_PORT=18081 db-lock engine port
#   BENCH_REDIS_DB=9       scratch Redis db for the ceiling (must be empty; flushed afterwards)
#   BENCH_DRAIN_TIMEOUT    seconds to wait for the pipeline after each burst (120, quick 60)
#   BENCH_RUST_LOG         RUST_LOG for the bench engines (unset: the engine's default)
#   BENCH_OUT=docs/benchmarks.md, BENCH_DIR=.local/bench/<time> (logs, goose reports, raw figures)
#   BENCH_SKIP_BUILD=1, BENCH_SKIP_UP=1 (services already running)
#
# It needs only the backing services (scripts/services.sh up: Redis, MariaDB, Kafka) and runs its own
# engines, sink and mock data platform in a namespace of its own (KEY_PREFIX, database flashsale_<ns>,
# topics <ns>.events, consumer group), dropped at exit: a running `make up` stack is not touched.
#   CARGO_TARGET_DIR       where release binaries are built (default ~/.cache/flashsale-target, as the Makefile)
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

QUICK=${BENCH_QUICK:-0}
T=${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/flashsale-target}
OUT=${BENCH_OUT:-$REPO/docs/benchmarks.md}
WORK=${BENCH_DIR:-$REPO/.local/bench/$(date -u +%Y%m%dT%H%M%SZ)}
USERS=${BENCH_USERS:-16}
PORT=${BENCH_PORT:-18080}
DB_PORT=${BENCH_DB_PORT:-18081}
BENCH_DB=${BENCH_REDIS_DB:-9}
CEIL_C=${BENCH_CEILING_CLIENTS:-32}
ADMIN_KEY=dev-admin-key
JWT=bench-jwt-secret-0123456789abcdef0123456789abcdef
if [ "$QUICK" = 1 ]; then
    RUN=${BENCH_RUN_TIME:-8}; DB_RUN=${BENCH_DB_RUN_TIME:-8}; CEIL_N=${BENCH_CEILING_N:-60000}
    COUPON_MEMBERS=5000; COUPON_QTY=500; STOCK_MEMBERS=3000; STOCK_UNITS=300
    DRAIN=${BENCH_DRAIN_TIMEOUT:-60}; BUDGET=${BENCH_BUDGET:-300}
else
    RUN=${BENCH_RUN_TIME:-30}; DB_RUN=${BENCH_DB_RUN_TIME:-20}; CEIL_N=${BENCH_CEILING_N:-300000}
    COUPON_MEMBERS=20000; COUPON_QTY=1000; STOCK_MEMBERS=5000; STOCK_UNITS=500
    DRAIN=${BENCH_DRAIN_TIMEOUT:-120}; BUDGET=${BENCH_BUDGET:-900}
fi

START=$(date +%s)
mkdir -p "$WORK/reports"
STEPS=$WORK/steps.tsv
: >"$STEPS"

log() { printf '[bench %4ds] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }
step() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$STEPS"; }   # name, ok|failed|skipped, note
left() { echo $(( BUDGET - ($(date +%s) - ${BUDGET_START:-$START}) )); }
# have_time SECONDS: is there room in the budget for a step of about that long?
have_time() { [ "$(left)" -gt "$1" ]; }

STARTED_PIDS=()
ENGINE_PID=
cleanup() {
    local p
    for p in "${STARTED_PIDS[@]}"; do
        kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    if [ "${CEILING_DB_OWNED:-0}" = 1 ]; then
        rcli -n "$BENCH_DB" FLUSHDB >/dev/null 2>&1 || true
    fi
    if [ "${NS_OWNED:-0}" = 1 ]; then
        mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot \
            -e "DROP DATABASE IF EXISTS flashsale_$NS" >/dev/null 2>&1 || true
        rcli --scan --pattern "$NS:*" | xargs -r -n 500 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" UNLINK >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ------------------------------------------------------------------------------------------ build, stack
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    log "building release binaries into $T"
    if ! CARGO_TARGET_DIR=$T cargo build --release -p flashsale -p flashsale-sink -p flashsale-loadtest \
        >"$WORK/build.log" 2>&1; then
        tail -30 "$WORK/build.log" >&2
        log "build failed (see $WORK/build.log)"; exit 1
    fi
fi
for b in flashsale flashsale-sink flashsale-loadtest; do
    [ -x "$T/release/$b" ] || { log "missing $T/release/$b"; exit 1; }
done

if [ "${BENCH_SKIP_UP:-0}" != 1 ]; then
    log "starting the backing services (scripts/services.sh up)"
    scripts/services.sh up >"$WORK/up.log" 2>&1 || { tail -30 "$WORK/up.log" >&2; log "services up failed"; exit 1; }
fi
eval "$(bash scripts/services.sh env 2>/dev/null)" || true
REDIS_PORT=${REDIS_PORT:-6379}
MYSQL_PORT=${MYSQL_PORT:-3306}
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
rcli PING >/dev/null || { log "Redis not answering on $REDIS_PORT"; exit 1; }
REDIS_PID=$(rcli INFO server | tr -d '\r' | sed -n 's/^process_id://p')
log "redis pid $REDIS_PID on port $REDIS_PORT"
# The time budget covers the measured part, not the build and the services' start.
BUDGET_START=$(date +%s)

# A namespace of our own on the shared services (key prefix, database, topics, consumer group), so
# reconcile compares exactly what this run wrote, and nothing is left behind (dropped at exit).
NS=bench$(date +%s)
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:$REDIS_PORT}
export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:${KAFKA_PORT:-9092}}
export DATABASE_URL=mysql://root@127.0.0.1:$MYSQL_PORT/flashsale_$NS
export KEY_PREFIX=$NS KAFKA_TOPIC=$NS.events KAFKA_DLQ_TOPIC=$NS.events.dlq KAFKA_GROUP=$NS-sink
export ADMIN_API_KEY=$ADMIN_KEY JWT_SECRET=$JWT
export DATA_PLATFORM_URL=http://127.0.0.1:$(( PORT + 2 ))/events
export MOCK_PLATFORM_LISTEN_ADDR=127.0.0.1:$(( PORT + 2 )) SINK_LISTEN_ADDR=127.0.0.1:$(( PORT + 3 ))
NS_OWNED=1
log "namespace $NS (database flashsale_$NS, keys $NS:*, topic $NS.events)"

# ---------------------------------------------------------------------------------- machine, versions
python3 - "$WORK/meta.json" <<EOF
import json, os, subprocess, sys
def sh(c):
    try: return subprocess.run(c, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as e: return f"? ({e})"
model = ""
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        model = line.split(":", 1)[1].strip(); break
mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", \$2/1048576}' /proc/meminfo")
json.dump({
  "date": sh("date -u +%Y-%m-%dT%H:%M:%SZ"),
  "quick": "$QUICK" == "1",
  "loadavg_start": sh("cut -d' ' -f1-3 /proc/loadavg"),
  "nproc": sh("nproc"), "cpu_model": model, "mem": mem, "kernel": sh("uname -r"),
  "redis": sh("redis-server --version"), "mariadb": sh("mariadbd --version 2>/dev/null || mysqld --version"),
  "rustc": sh("rustc --version"),
  "git": sh("git rev-parse --short HEAD 2>/dev/null") + (" (dirty)" if sh("git status --porcelain -- src lua sink loadtest") else ""),
  "kafka": sh("grep -m1 '^KAFKA_VERSION=' scripts/services.sh | cut -d= -f2"),
  "params": {"users": $USERS, "run_time": $RUN, "db_run_time": $DB_RUN, "ceiling_n": $CEIL_N,
             "ceiling_clients": $CEIL_C, "coupon_members": $COUPON_MEMBERS, "coupon_qty": $COUPON_QTY,
             "stock_members": $STOCK_MEMBERS, "stock_units": $STOCK_UNITS, "drain_timeout": $DRAIN,
             "rust_log": "${BENCH_RUST_LOG:-}"},
}, open(sys.argv[1], "w"), indent=1)
EOF

# ------------------------------------------------------------------------------------------- ceiling
redis_cpu() { rcli INFO cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.6f", s}'; }

ceiling() { # name, then the EVALSHA command line
    local name=$1; shift
    local c0 c1
    c0=$(redis_cpu)
    if redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" --dbnum "$BENCH_DB" -n "$CEIL_N" -c "$CEIL_C" \
        -r "$CEIL_R" --precision 3 "$@" >"$WORK/ceiling-$name.txt" 2>&1; then
        c1=$(redis_cpu)
        echo "$c0 $c1 $CEIL_N" >"$WORK/ceiling-$name.cpu"
        step "ceiling-$name" ok ""
    else
        step "ceiling-$name" failed "redis-benchmark failed: $(tail -2 "$WORK/ceiling-$name.txt" | tr '\n' ' ')"
    fi
}

if [ -f lua/coupon_issue.lua ] && [ -f lua/order_reserve.lua ]; then
    if [ "$(rcli -n "$BENCH_DB" DBSIZE)" != 0 ]; then
        step ceiling failed "Redis db $BENCH_DB is not empty; set BENCH_REDIS_DB to an unused db"
    else
        CEILING_DB_OWNED=1
        load_script() { { [ -f lua/lib/prelude.lua ] && cat lua/lib/prelude.lua && echo; cat "$1"; } | rcli -x SCRIPT LOAD; }
        SHA_ISSUE=$(load_script lua/coupon_issue.lua)
        SHA_RESERVE=$(load_script lua/order_reserve.lua)
        NOW_MS=$(( $(date +%s) * 1000 ))
        NOW=$(date -u +%Y-%m-%dT%H:%M:%S.000Z)
        EXP_MS=$(( NOW_MS + 600000 ))
        EXP=$(date -u -d @$(( NOW_MS / 1000 + 600 )) +%Y-%m-%dT%H:%M:%S.000Z)
        log "ceiling: EVALSHA coupon_issue ($SHA_ISSUE) and order_reserve ($SHA_RESERVE), $CEIL_N calls x $CEIL_C clients, db $BENCH_DB"
        # Same shape as the HTTP coupon rush: COUPON_QTY units, COUPON_MEMBERS members picking at random.
        rcli -n "$BENCH_DB" HSET 'fs:coupon:{c:1}' id 1 name ceiling discount_type FIXED discount_value 1000 \
            total_quantity "$COUPON_QTY" remaining "$COUPON_QTY" valid_from_ms 0 valid_until_ms $(( NOW_MS + 86400000 )) \
            valid_from "$NOW" valid_until "$EXP" >/dev/null
        CEIL_R=$COUPON_MEMBERS
        ceiling coupon_issue EVALSHA "$SHA_ISSUE" 5 'fs:coupon:{c:1}' 'fs:coupon:{c:1}:holders' \
            'fs:member:{m:__rand_int__}:coupons' 'fs:idem:{m:0}:unused' 'fs:outbox:{outbox}' \
            fp 86400 0 __rand_int__ "$NOW_MS" "$NOW" "evt-__rand_int__"
        rcli -n "$BENCH_DB" HGET 'fs:coupon:{c:1}' remaining >"$WORK/ceiling-coupon_issue.remaining"
        # Same shape as the HTTP stock rush: one product with STOCK_UNITS units, a fresh order id and
        # idempotency key per call (random over a large space), quantity 1.
        rcli -n "$BENCH_DB" HSET 'fs:product:{p:1}' id 1 name ceiling price 1000 stock "$STOCK_UNITS" \
            created_at "$NOW" >/dev/null
        CEIL_R=1000000000
        ceiling order_reserve EVALSHA "$SHA_RESERVE" 5 'fs:order:{o:__rand_int__}' \
            'fs:reservations:{reservations}' 'fs:idem:{m:1}:__rand_int__' 'fs:outbox:{outbox}' \
            'fs:product:{p:1}' fp 86400 1 __rand_int__ "$NOW" "$EXP_MS" "$EXP" "evt-__rand_int__" 1
        rcli -n "$BENCH_DB" HGET 'fs:product:{p:1}' stock >"$WORK/ceiling-order_reserve.remaining"
        rcli -n "$BENCH_DB" FLUSHDB >/dev/null
    fi
else
    step ceiling skipped "lua/coupon_issue.lua or lua/order_reserve.lua missing"
fi

# ------------------------------------------------------------------------------------- HTTP phases
start_engine() { # name port hot_path
    local name=$1 port=$2 hp=$3 i
    log "starting engine $name (HOT_PATH=$hp) on :$port"
    (
        # dev: a production engine refuses the well-known dev admin key the bench uses
        export LISTEN_ADDR=127.0.0.1:$port HOT_PATH=$hp ADMIN_API_KEY=$ADMIN_KEY JWT_SECRET=$JWT FLASHSALE_ENV=dev
        [ -n "${BENCH_RUST_LOG:-}" ] && export RUST_LOG=$BENCH_RUST_LOG
        exec "$T/release/flashsale" serve
    ) >"$WORK/engine-$name.log" 2>&1 &
    ENGINE_PID=$!
    STARTED_PIDS+=("$ENGINE_PID")
    for i in $(seq 1 120); do
        curl -sf -m 2 "http://127.0.0.1:$port/readyz" >/dev/null && return 0
        kill -0 "$ENGINE_PID" 2>/dev/null || break
        sleep 0.5
    done
    log "engine $name did not become ready (see $WORK/engine-$name.log)"
    tail -20 "$WORK/engine-$name.log" >&2
    return 1
}

# Our own mock data platform and sink for the namespace (after the first engine created the database).
start_pipeline() {
    [ -n "${SINK_PID:-}" ] && return 0
    "$T/release/flashsale-sink" mock-platform >"$WORK/mock-platform.log" 2>&1 &
    STARTED_PIDS+=($!)
    "$T/release/flashsale-sink" run >"$WORK/sink.log" 2>&1 &
    SINK_PID=$!
    STARTED_PIDS+=("$SINK_PID")
    local i
    for i in $(seq 1 60); do
        curl -sf -m 2 "http://$SINK_LISTEN_ADDR/healthz" >/dev/null && { log "sink up (pid $SINK_PID)"; return 0; }
        kill -0 "$SINK_PID" 2>/dev/null || break
        sleep 0.5
    done
    log "sink did not come up (see $WORK/sink.log)"; tail -10 "$WORK/sink.log" >&2
    return 1
}

stop_engine() { # name
    [ -n "$ENGINE_PID" ] || return 0
    awk '/VmHWM/ {print $2}' "/proc/$ENGINE_PID/status" >"$WORK/engine-$1.hwm" 2>/dev/null || true
    kill "$ENGINE_PID" 2>/dev/null && wait "$ENGINE_PID" 2>/dev/null
    ENGINE_PID=
}

# lt LABEL SCENARIO PORT RUNSECS [extra flags]: one goose run; its summary lands in reports/
lt() {
    local label=$1 scenario=$2 port=$3 secs=$4; shift 4
    if ! have_time $(( secs + 30 )); then
        step "$label" skipped "out of time budget (${BUDGET}s)"; return 1
    fi
    log "run $label: $scenario on :$port for ${secs}s $*"
    timeout $(( secs + DRAIN * 2 + 300 )) "$T/release/flashsale-loadtest" "$scenario" \
        --host "http://127.0.0.1:$port" --admin-key "$ADMIN_KEY" --users "$USERS" --run-time "$secs" \
        --report-dir "$WORK/reports" --run-id "bench-$label" --engine-pid "$ENGINE_PID" \
        --redis-pid "$REDIS_PID" --max-p99-ms 1000000 --max-error-rate 1 --drain-timeout "$DRAIN" \
        --progress-secs 10 "$@" >"$WORK/$label.log" 2>&1
    local rc=$?
    grep -E '^RESULT|^  (PASS|FAIL)' "$WORK/$label.log" >&2 || true
    if [ -f "$WORK/reports/$scenario-bench-$label.summary.json" ]; then
        step "$label" "$([ $rc = 0 ] && echo ok || echo failed)" "exit $rc"
    else
        step "$label" failed "no summary (exit $rc): $(tail -3 "$WORK/$label.log" | tr '\n' ' ')"
    fi
    return 0
}

peak_rps() { # label scenario -> half of the measured rate
    python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(max(1, int(s["stats"]["rps"] / 2)))' \
        "$WORK/reports/$2-bench-$1.summary.json" 2>/dev/null
}

COUPON=(--members "$COUPON_MEMBERS" --quantity "$COUPON_QTY")
STOCK=(--members "$STOCK_MEMBERS" --stock "$STOCK_UNITS")

if start_engine flashsale "$PORT" redis && start_pipeline; then
    lt fs-coupon coupon-rush "$PORT" "$RUN" "${COUPON[@]}"
    half=$(peak_rps fs-coupon coupon-rush)
    [ -n "$half" ] && lt fs-coupon-half coupon-rush "$PORT" "$RUN" "${COUPON[@]}" --throttle-requests "$half"
    lt fs-stock stock-rush "$PORT" "$RUN" "${STOCK[@]}"
    half=$(peak_rps fs-stock stock-rush)
    [ -n "$half" ] && lt fs-stock-half stock-rush "$PORT" "$RUN" "${STOCK[@]}" --throttle-requests "$half"
    stop_engine flashsale
else
    step flashsale failed "engine or sink did not start"
fi

if have_time $(( DB_RUN * 2 + 60 )) && start_engine dblock "$DB_PORT" db-lock; then
    # No drain/in_sync wait: in db-lock mode MySQL is written directly, not through the pipeline.
    lt db-coupon coupon-rush "$DB_PORT" "$DB_RUN" "${COUPON[@]}" --no-drain
    lt db-stock stock-rush "$DB_PORT" "$DB_RUN" "${STOCK[@]}" --no-drain
    stop_engine dblock
else
    step baseline skipped "no time left or db-lock engine did not start"
fi

# --------------------------------------------------------------------------------------------- report
cut -d' ' -f1-3 /proc/loadavg >"$WORK/loadavg_end"
log "writing $OUT"
python3 "$REPO/loadtest/bench_report.py" "$WORK" >"$OUT.tmp" && mv "$OUT.tmp" "$OUT" || {
    log "report generation failed"; exit 1; }
log "done in $(( $(date +%s) - START ))s; raw results in $WORK"
