#!/usr/bin/env bash
# The herd after the sell-out (issue 10), in ONE sitting on the running single-node services, in a
# namespace of its own (key prefix, database; dropped at exit):
#   restock    two engines (markers on, then off): an item sold out through engine A is restocked by
#              one unit through engine B, then asked for on A until granted; the time from the
#              restock's answer to that grant, p50/p99 over SO_RESTOCK_ROUNDS rounds, coupons and units
#   rush       wrk (loadtest/wrk/sold_out_rush.lua, every answer timed by its echoed X-Request-Id) on a
#              coupon rush and a stock rush that sell out about a third of the way in, markers off and on
#              alternately, SO_ROUNDS rounds, same build: requests/s, p50/p99 and engine and Redis CPU
#              per request before and after the sell-out, each run checked (issued = quantity, stock 0)
#   redis link the coupon rush with markers off (every request reaches Redis) over the Unix socket and
#              over loopback TCP, alternately: engine CPU per request that reaches Redis
#   ceiling    the coupon_issue EVALSHA ceiling (loadtest/bench.sh BENCH_ONLY=ceiling), for the ratio
#   goose      the same coupon and stock rushes with goose (markers on), for the two clients side by side
# Writes the sold-out block of docs/benchmarks.md and its charts docs/sold-out-coupon.svg and
# docs/sold-out-stock.svg (loadtest/sold_out_report.py).
#
# Environment (defaults):
#   SO_ROUNDS=2 SO_RUN_TIME=15 (s per wrk run) SO_THREADS=2 SO_CONNECTIONS=16 (wrk's; goose runs as
#   many users as connections)
#   SO_MEMBERS=20000 SO_COUPONS=6000 (coupon quantity) SO_STOCK=3000 (units)
#   SO_RESTOCK_ROUNDS=200 SO_GOOSE=1 (0: skip goose) SO_CEILING=1 (0: skip)
#   SO_PORT=18100 (engine A; B on the next port) SO_OUT=docs/benchmarks.md SO_DIR=.local/bench/sold-out-<time>
#   SO_SKIP_BUILD=1   CARGO_TARGET_DIR (default ~/.cache/flashsale-target)
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
. loadtest/lib.sh
T=${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/flashsale-target}
ROUNDS=${SO_ROUNDS:-2}
RUN=${SO_RUN_TIME:-15}
THREADS=${SO_THREADS:-2}
CONNECTIONS=${SO_CONNECTIONS:-16}
MEMBERS=${SO_MEMBERS:-20000}
COUPONS=${SO_COUPONS:-6000}
STOCK=${SO_STOCK:-3000}
RESTOCK_ROUNDS=${SO_RESTOCK_ROUNDS:-200}
PORT=${SO_PORT:-18100}
OUT=${SO_OUT:-$REPO/docs/benchmarks.md}
WORK=${SO_DIR:-$REPO/.local/bench/sold-out-$(date -u +%Y%m%dT%H%M%SZ)}
ADMIN_KEY=sold-out-admin
JWT=sold-out-jwt-secret-0123456789abcdef0123456789ab
START=$(date +%s)
mkdir -p "$WORK"
RUNS=$WORK/runs.tsv
: >"$RUNS"

log() { printf '[sold-out %4ds] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }

PIDS=()
NS=so$(date +%s)
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    if [ -n "${MYSQL_PORT:-}" ]; then
        mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot \
            -e "DROP DATABASE IF EXISTS flashsale_$NS" >/dev/null 2>&1 || true
        redis-cli -p "$REDIS_PORT" --scan --pattern "$NS:*" | xargs -r -n 500 redis-cli -p "$REDIS_PORT" UNLINK >/dev/null 2>&1
    fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

command -v wrk >/dev/null || { log "wrk is not installed (scripts/services.sh installs it)"; exit 1; }
if [ "${SO_SKIP_BUILD:-0}" != 1 ]; then
    log "building release binaries into $T"
    CARGO_TARGET_DIR=$T cargo build --release -p flashsale -p flashsale-loadtest \
        >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; log "build failed"; exit 1; }
fi

log "starting the backing services (scripts/services.sh up)"
scripts/services.sh up >"$WORK/up.log" 2>&1 || { tail -30 "$WORK/up.log" >&2; log "services up failed"; exit 1; }
eval "$(bash scripts/services.sh env 2>/dev/null)"
REDIS_PORT=${REDIS_URL##*:}
MYSQL_PORT=${DATABASE_URL##*:}; MYSQL_PORT=${MYSQL_PORT%%/*}
TCP_URL=$REDIS_URL
SOCK=$(scripts/services.sh redis-socket)
if [ -n "$SOCK" ]; then UNIX_URL=redis+unix://$SOCK; else
    log "the local Redis has no Unix socket (started by an older services.sh?): every run uses TCP"; UNIX_URL=$TCP_URL; fi
REDIS_PID=$(awk '$1 == "redis" && $2 == "running" {print $4}' <<<"$(scripts/services.sh status)")
[ -n "$REDIS_PID" ] || { log "redis is not running"; exit 1; }

export KAFKA_BROKERS ADMIN_API_KEY=$ADMIN_KEY JWT_SECRET=$JWT RUST_LOG=${SO_RUST_LOG:-warn}
export DATABASE_URL=mysql://root@127.0.0.1:$MYSQL_PORT/flashsale_$NS
export KEY_PREFIX=$NS KAFKA_TOPIC=$NS.events KAFKA_DLQ_TOPIC=$NS.events.dlq KAFKA_GROUP=$NS-sink
# The hot path alone: no relay (the outbox keeps the events; dropped with the namespace).
export RUN_RELAY=false FLASHSALE_ENV=dev

# engine PORT MARKERS REDIS_URL LOG: starts an engine; echoes its pid once it is ready.
engine() {
    LISTEN_ADDR=127.0.0.1:$1 SOLD_OUT_MARKERS=$2 REDIS_URL=$3 "$T/release/flashsale" serve >"$4" 2>&1 &
    local pid=$!
    wait_ready "$1" "$pid" "$4" && echo "$pid"
}
PREP() { python3 loadtest/sold_out_prep.py "$@"; }
A=http://127.0.0.1:$PORT
B=http://127.0.0.1:$(( PORT + 1 ))

# Members once, through a first engine (its migrations make the namespace's database).
pid=$(engine "$PORT" true "$UNIX_URL" "$WORK/seed-engine.log") || { log "engine not ready"; exit 1; }
PIDS+=("$pid")
log "seeding $MEMBERS members"
PREP members "$A" "$MEMBERS" "$NS" "$WORK/members.txt" || { log "seeding failed"; exit 1; }
stop_gone "$pid"

# ----------------------------------------------------------------------------------------- restock
for markers in true false; do
    a=$(engine "$PORT" "$markers" "$UNIX_URL" "$WORK/restock-$markers-a.log") || exit 1
    b=$(engine "$(( PORT + 1 ))" "$markers" "$UNIX_URL" "$WORK/restock-$markers-b.log") || exit 1
    PIDS+=("$a" "$b")
    log "restock latency, markers $markers: $RESTOCK_ROUNDS rounds of coupons and of units"
    PREP restock-latency "$A" "$B" "$WORK/members.txt" "$RESTOCK_ROUNDS" "$WORK/restock-$markers.txt" \
        || { log "restock latency failed"; exit 1; }
    stop_gone "$a" "$b"
done

# --------------------------------------------------------------------------------------------- rush
# cpu_sampler OUT PID...: every 100 ms `unix_ms ticks...` (utime + stime of each pid) until killed.
cpu_sampler() {
    local out=$1; shift
    python3 - "$out" "$@" >/dev/null 2>&1 <<'EOF' &
import sys, time
out, pids = sys.argv[1], sys.argv[2:]
def ticks(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except OSError:
        return -1
with open(out, "w", buffering=1) as o:
    while True:
        o.write(f"{int(time.time() * 1000)} {' '.join(str(ticks(p)) for p in pids)}\n")
        time.sleep(0.1)
EOF
    echo $!
}

# rush NAME SCENARIO MARKERS REDIS_URL ROUND: one wrk run on a fresh item; measurements and checks.
rush() {
    local name=$1 scenario=$2 markers=$3 url=$4 round=$5 e item qty sampler wrk_pid rc check
    e=$(engine "$PORT" "$markers" "$url" "$WORK/$name.engine.log") || return 1
    PIDS+=("$e")
    if [ "$scenario" = coupon ]; then qty=$COUPONS; item=$(PREP coupon "$A" "$qty")
    else qty=$STOCK; item=$(PREP product "$A" "$qty"); fi
    [ -n "$item" ] || { stop_gone "$e"; log "$name: no item"; return 1; }
    SO_SCENARIO=$scenario SO_ITEM=$item SO_MEMBERS=$WORK/members.txt SO_OUT=$WORK/$name SO_RUN=$name-$NS \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"${RUN}s" --timeout 10s -s loadtest/wrk/sold_out_rush.lua "$A" \
        >"$WORK/$name.wrk" 2>&1 &
    wrk_pid=$!
    sampler=$(cpu_sampler "$WORK/$name.cpu" "$e" "$REDIS_PID" "$wrk_pid")
    wait "$wrk_pid"; rc=$?
    stop_gone "$sampler"
    if [ $rc != 0 ] || [ ! -s "$WORK/$name.answers" ] || ! grep -q ' 0 unpaired answers' "$WORK/$name.wrk"; then
        stop_gone "$e"; log "$name: wrk failed: $(tail -3 "$WORK/$name.wrk" | tr '\n' ' ')"; return 1
    fi
    check=$(PREP "check-$scenario" "$A" "$item" "$qty" "$WORK/$name.answers"); rc=$?
    echo "$check" >"$WORK/$name.check"
    stop_gone "$e"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$scenario" "$markers" "$( [ "$url" = "$TCP_URL" ] && echo tcp || echo unix)" "$round" "$rc" >>"$RUNS"
    log "$name: $(tail -1 "$WORK/$name.wrk") check: $( [ $rc = 0 ] && echo ok || echo "FAILED $check")"
}

for r in $(seq 1 "$ROUNDS"); do
    for scenario in coupon stock; do
        # alternate which goes first, so drift in the machine's speed does not favour one
        if [ $(( r % 2 )) = 1 ]; then order="false true"; else order="true false"; fi
        for markers in $order; do
            rush "$scenario-markers-$markers-r$r" "$scenario" "$markers" "$UNIX_URL" "$r" || exit 1
        done
    done
    if [ "$UNIX_URL" != "$TCP_URL" ]; then
        rush "link-tcp-r$r" coupon false "$TCP_URL" "$r" || exit 1
    fi
done

# ------------------------------------------------------------------------------------------ ceiling
if [ "${SO_CEILING:-1}" = 1 ]; then
    log "coupon_issue EVALSHA ceiling (loadtest/bench.sh BENCH_ONLY=ceiling)"
    BENCH_ONLY=ceiling BENCH_SKIP_BUILD=1 BENCH_SKIP_UP=1 BENCH_QUICK=1 BENCH_DIR="$WORK/ceiling" \
        BENCH_OUT="$WORK/ceiling.md" bash loadtest/bench.sh >"$WORK/ceiling.log" 2>&1 \
        || log "ceiling failed (see $WORK/ceiling.log); the report goes without the ratio"
fi

# -------------------------------------------------------------------------------------------- goose
if [ "${SO_GOOSE:-1}" = 1 ]; then
    for scenario in coupon stock; do
        e=$(engine "$PORT" true "$UNIX_URL" "$WORK/goose-$scenario.engine.log") || exit 1
        PIDS+=("$e")
        log "goose $scenario-rush, markers on"
        "$T/release/flashsale-loadtest" --host "$A" --admin-key "$ADMIN_KEY" --users "$CONNECTIONS" \
            --run-time "${RUN}s" --report-dir "$WORK/goose" --progress-secs 0 --no-drain \
            --engine-pid "$e" --redis-pid "$REDIS_PID" --max-p99-ms 100000 \
            "$scenario-rush" >"$WORK/goose-$scenario.out" 2>"$WORK/goose-$scenario.err" \
            || log "goose $scenario: exit $? (see $WORK/goose-$scenario.err)"
        stop_gone "$e"
    done
fi

python3 loadtest/sold_out_report.py "$WORK" "$OUT" \
    "$(git rev-parse --short HEAD 2>/dev/null)$( [ -n "$(git status --porcelain -- src lua loadtest)" ] && echo ' (dirty)')" \
    "$THREADS" "$CONNECTIONS" "$RUN" "$MEMBERS" "$COUPONS" "$STOCK" || { log "report failed"; exit 1; }
log "done: $OUT (work dir $WORK)"
