#!/usr/bin/env bash
# flashsale benchmark (`make bench`): in ONE run, side by side, and writes docs/benchmarks.md
# (docs/cluster-benchmarks.md with TOPOLOGY=cluster).
#
#   ceiling    redis-benchmark runs the engine's own Lua scripts (prelude prepended, as src/scripts/mod.rs
#              does) by EVALSHA with the engine's key layout: every call's KEYS in one partition's slot
#              (src/keys.rs, src/partition.rs; loadtest/partition.py computes the tags), KEYS/ARGV in the
#              order src/scripts/calls.rs builds them. An order is a saga (stock_hold in the product's
#              slot, then order_reserve in the member's): each step has its own ceiling. Each script is
#              probed once with redis-cli first; a ceiling whose probe answers an error is not run.
#   flashsale  the engine (release build, HOT_PATH=redis) on its own port, driven by the goose
#              coupon-rush and stock-rush scenarios at full speed, then throttled to half that rate
#   previous   (BENCH_COMPARE_BIN) the previous version's engine and sink, same scenarios at full speed,
#              each back to back with this version's run of it, in a namespace of their own; the
#              report gives new / previous
#   baseline   the engine with HOT_PATH=db-lock (MySQL SELECT ... FOR UPDATE) on its own port, same
#              scenarios at full speed (no drain / in_sync wait: MySQL is written directly); single only
#
# TOPOLOGY=cluster: the same against the Redis Cluster (scripts/services.sh cluster-up; REDIS_URL from
# `scripts/services.sh cluster-url`): ONE engine (the 2-core machine; `make up TOPOLOGY=cluster` runs two
# behind HAProxy) that WAITs for 1 replica after each write as it does by default; the ceiling runs on
# each primary in turn (keys in a partition that primary serves); the load generator reads every node's
# INFO cpu / commandstats before and after the timed part (Redis CPU and script calls per node).
#
# Environment (defaults):
#   TOPOLOGY=single|cluster
#   BENCH_QUICK=1          ~3-5 minute run (short phases, fewer members); default is the full run (< ~15 min)
#   BENCH_COMPARE_BIN      a previous version's engine binary (its flashsale-sink beside it), e.g.
#                          /root/.cache/bench-prev-target/release/flashsale; the load generator stays ours;
#                          BENCH_COMPARE_LABEL names it in the report (e.g. its commit)
#   BENCH_USERS=16         goose users (connections) per HTTP run
#   BENCH_RUN_TIME         seconds of each flashsale run (30, quick 8); BENCH_DB_RUN_TIME for db-lock (20, quick 8)
#   BENCH_CEILING_N        EVALSHA calls per ceiling run (300000, quick 60000); BENCH_CEILING_CLIENTS=32
#   BENCH_PORT=18080       flashsale engine port; BENCH_DB_PORT=18081 db-lock engine; BENCH_PREV_PORT=18085
#   BENCH_REDIS_DB=9       scratch Redis db for the single-node ceiling (must be empty; flushed afterwards)
#   BENCH_DRAIN_TIMEOUT    seconds to wait for the pipeline after each burst (120, quick 60)
#   BENCH_RUST_LOG         RUST_LOG for the bench engines (unset: the engine's default)
#   BENCH_OUT=docs/benchmarks.md (cluster: docs/cluster-benchmarks.md), BENCH_DIR=.local/bench/<time>
#   BENCH_SKIP_BUILD=1, BENCH_SKIP_UP=1 (services already running), BENCH_ONLY=ceiling (no HTTP phases)
#
# It needs only the backing services (scripts/services.sh up, with TOPOLOGY) and runs its own
# engines, sinks and mock data platform in a namespace of its own (KEY_PREFIX, database flashsale_<ns>,
# topics <ns>.events, consumer group), dropped at exit: a running `make up` stack is not touched.
#   CARGO_TARGET_DIR       where release binaries are built (default ~/.cache/flashsale-target, as the Makefile)
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

TOPO=${TOPOLOGY:-single}
case "$TOPO" in single|cluster) ;; *) echo "TOPOLOGY must be single or cluster, not '$TOPO'" >&2; exit 2 ;; esac
QUICK=${BENCH_QUICK:-0}
T=${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/flashsale-target}
if [ "$TOPO" = cluster ]; then OUT=${BENCH_OUT:-$REPO/docs/cluster-benchmarks.md}; else OUT=${BENCH_OUT:-$REPO/docs/benchmarks.md}; fi
WORK=${BENCH_DIR:-$REPO/.local/bench/$(date -u +%Y%m%dT%H%M%SZ)}
USERS=${BENCH_USERS:-16}
PORT=${BENCH_PORT:-18080}
DB_PORT=${BENCH_DB_PORT:-18081}
PREV_PORT=${BENCH_PREV_PORT:-18085}
BENCH_DB=${BENCH_REDIS_DB:-9}
CEIL_C=${BENCH_CEILING_CLIENTS:-32}
COMPARE_BIN=${BENCH_COMPARE_BIN:-}
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
# the previous version's runs need their own room in the budget
[ -n "$COMPARE_BIN" ] && [ -z "${BENCH_BUDGET:-}" ] && BUDGET=$(( BUDGET + BUDGET / 2 ))

START=$(date +%s)
mkdir -p "$WORK/reports"
STEPS=$WORK/steps.tsv
: >"$STEPS"
echo "$TOPO" >"$WORK/topology"

log() { printf '[bench %4ds] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }
step() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$STEPS"; }   # name, ok|failed|skipped, note
left() { echo $(( BUDGET - ($(date +%s) - ${BUDGET_START:-$START}) )); }
# have_time SECONDS: is there room in the budget for a step of about that long?
have_time() { [ "$(left)" -gt "$1" ]; }

# unlink_pattern PORT PATTERN [same-slot]: every key of that node matching PATTERN. On a cluster a
# multi-key UNLINK must stay in one slot, so one key per command there (redis-cli runs stdin's lines one
# by one) unless the caller knows the keys share one slot.
unlink_pattern() {
    local port=$1 pattern=$2
    if [ "$TOPO" = cluster ] && [ "${3:-}" != same-slot ]; then
        redis-cli -h 127.0.0.1 -p "$port" --scan --pattern "$pattern" \
            | awk '{ gsub(/"/, "\\\""); print "UNLINK \"" $0 "\"" }' | redis-cli -h 127.0.0.1 -p "$port" >/dev/null 2>&1
    else
        redis-cli -h 127.0.0.1 -p "$port" --scan --pattern "$pattern" \
            | xargs -r -n 500 redis-cli -h 127.0.0.1 -p "$port" UNLINK >/dev/null 2>&1
    fi
}

STARTED_PIDS=()
ENGINE_PID=
NAMESPACES=()      # key prefixes / database suffixes this run created
cleanup() {
    local p ns port
    for p in "${STARTED_PIDS[@]}"; do
        kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    if [ "${CEILING_DB_OWNED:-0}" = 1 ]; then
        rcli -n "$BENCH_DB" FLUSHDB >/dev/null 2>&1 || true
    fi
    for ns in "${NAMESPACES[@]}"; do
        mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot \
            -e "DROP DATABASE IF EXISTS flashsale_$ns" >/dev/null 2>&1 || true
        for port in "${KEY_PORTS[@]}"; do unlink_pattern "$port" "$ns:*"; done
    done
    for port in "${CEIL_CLEAN_PORTS[@]}"; do unlink_pattern "$port" "${CPFX:-x}:*" same-slot; done
}
KEY_PORTS=()
CEIL_CLEAN_PORTS=()
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
ONLY=${BENCH_ONLY:-}
for b in flashsale flashsale-sink flashsale-loadtest; do
    [ -x "$T/release/$b" ] || [ "$ONLY" = ceiling ] || { log "missing $T/release/$b"; exit 1; }
done
if [ -n "$COMPARE_BIN" ] && [ "$TOPO" = cluster ]; then
    # the previous version cannot run on a cluster (its scripts span slots: CROSSSLOT)
    log "BENCH_COMPARE_BIN ignored on the cluster: the previous version runs on one node only"
    step previous skipped "BENCH_COMPARE_BIN: single topology only (the previous version's scripts span slots)"
    COMPARE_BIN=
fi
if [ -n "$COMPARE_BIN" ]; then
    for b in "$COMPARE_BIN" "$(dirname "$COMPARE_BIN")/flashsale-sink"; do
        [ -x "$b" ] || { log "BENCH_COMPARE_BIN: missing $b (build the previous version's flashsale and flashsale-sink)"; exit 1; }
    done
fi

if [ "${BENCH_SKIP_UP:-0}" != 1 ]; then
    log "starting the backing services (TOPOLOGY=$TOPO scripts/services.sh up)"
    TOPOLOGY=$TOPO scripts/services.sh up >"$WORK/up.log" 2>&1 || { tail -30 "$WORK/up.log" >&2; log "services up failed"; exit 1; }
fi
# KAFKA_BROKERS and ports from the services; REDIS_URL is set below from TOPOLOGY, not from what `up`
# last started (services.sh env follows that).
eval "$(bash scripts/services.sh env 2>/dev/null)" || true
REDIS_PORT=${REDIS_PORT:-6379}
MYSQL_PORT=${MYSQL_PORT:-3306}
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

NODES=()       # every Redis node the load generator samples (host:port)
PRIMARIES=()   # ports of the primaries (single: the one Redis)
if [ "$TOPO" = cluster ]; then
    read -r -a CLUSTER_PORTS <<<"${REDIS_CLUSTER_PORTS:-7001 7002 7003 7004 7005 7006}"
    SEED=${CLUSTER_PORTS[0]}
    redis-cli -p "$SEED" CLUSTER INFO 2>/dev/null | grep -q '^cluster_state:ok' \
        || { log "the Redis Cluster on $SEED is not up (FLASHSALE_LOCAL=... scripts/services.sh cluster-up)"; exit 1; }
    python3 loadtest/partition.py check "$SEED" \
        || { log "loadtest/partition.py disagrees with CLUSTER KEYSLOT: fix it from src/partition.rs"; exit 1; }
    # primaries that serve slots, by port; replicas too for the per-node figures
    mapfile -t PRIMARIES < <(redis-cli -p "$SEED" CLUSTER NODES | awk '$3 ~ /master/ && $3 !~ /fail/ && NF >= 9 {split($2, a, "[:@]"); print a[2]}' | sort -n)
    mapfile -t ALLNODES < <(redis-cli -p "$SEED" CLUSTER NODES | awk '$3 !~ /fail/ {split($2, a, "[:@]"); print a[2]}' | sort -n)
    for p in "${ALLNODES[@]}"; do NODES+=("127.0.0.1:$p"); done
    KEY_PORTS=("${PRIMARIES[@]}")
    REDIS_URL=${BENCH_REDIS_URL:-$(scripts/services.sh cluster-url)}
    REDIS_PID=
    log "cluster: primaries ${PRIMARIES[*]}, nodes ${ALLNODES[*]}; REDIS_URL=$REDIS_URL"
    for p in "${ALLNODES[@]}"; do
        printf '%s\t%s\t%s\n' "$p" "$(redis-cli -p "$p" INFO replication | tr -d '\r' | sed -n 's/^role://p')" \
            "$(redis-cli -p "$p" INFO server | tr -d '\r' | sed -n 's/^process_id://p')" >>"$WORK/nodes.tsv"
    done
else
    rcli PING >/dev/null || { log "Redis not answering on $REDIS_PORT"; exit 1; }
    REDIS_PID=$(rcli INFO server | tr -d '\r' | sed -n 's/^process_id://p')
    log "redis pid $REDIS_PID on port $REDIS_PORT"
    PRIMARIES=("$REDIS_PORT")
    NODES=("127.0.0.1:$REDIS_PORT")
    KEY_PORTS=("$REDIS_PORT")
    REDIS_URL=${BENCH_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT}
fi

# A namespace of our own on the shared services (key prefix, database, topics, consumer group), so
# reconcile compares exactly what this run wrote, and nothing is left behind (dropped at exit).
NS=bench$(date +%s)
export REDIS_URL
export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:${KAFKA_PORT:-9092}}
export ADMIN_API_KEY=$ADMIN_KEY JWT_SECRET=$JWT
export DATA_PLATFORM_URL=http://127.0.0.1:$(( PORT + 2 ))/events
export MOCK_PLATFORM_LISTEN_ADDR=127.0.0.1:$(( PORT + 2 ))
# use_namespace NS SINK_PORT: what the engines and sink started next use
use_namespace() {
    export DATABASE_URL=mysql://root@127.0.0.1:$MYSQL_PORT/flashsale_$1
    export KEY_PREFIX=$1 KAFKA_TOPIC=$1.events KAFKA_DLQ_TOPIC=$1.events.dlq KAFKA_GROUP=$1-sink
    export SINK_LISTEN_ADDR=127.0.0.1:$2
    [[ " ${NAMESPACES[*]} " == *" $1 "* ]] || NAMESPACES+=("$1")
}
use_namespace "$NS" $(( PORT + 3 ))
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
  "topology": "$TOPO",
  "redis_url": "$REDIS_URL",
  "primaries": "${PRIMARIES[*]}".split(),
  "nodes": "${NODES[*]}".split(),
  "compare_bin": "$COMPARE_BIN",
  "compare_label": "${BENCH_COMPARE_LABEL:-}",
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
# node_cpu PORT: used_cpu_sys + used_cpu_user of that node (seconds)
node_cpu() { redis-cli -h 127.0.0.1 -p "$1" INFO cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.6f", s}'; }
# node_evalsha PORT: "calls usec failed_calls" of EVALSHA on that node
node_evalsha() {
    redis-cli -h 127.0.0.1 -p "$1" INFO commandstats | tr -d '\r' | awk -F'[:,=]' '
        /^cmdstat_evalsha:/ {for (i = 2; i < NF; i += 2) v[$i] = $(i + 1)}
        END {printf "%d %d %d", v["calls"], v["usec"], v["failed_calls"]}'
}

# ceiling NAME EXPECT RESET EFFECT_CMD... -- EVALSHA ARGS...: one probe call with redis-cli first (its
# first reply line must be EXPECT, e.g. `ok` or `held`: not an error, not a refusal), then RESET (shell
# code putting back what the probe took), then redis-benchmark. Records the node's CPU, its EVALSHA
# calls / usec / failed calls over the run, and what the calls left behind (EFFECT_CMD: a redis-cli
# command counting the writes, e.g. XLEN of the outbox): the figures are trusted only with writes in them.
ceiling() {
    local name=$1 expect=$2 reset=$3; shift 3
    local effect=()
    while [ "$1" != -- ]; do effect+=("$1"); shift; done; shift
    local c0 c1 e0 e1 s0 s1 probe a0 b0 f0 a1 b1 f1
    # the probe with a number where redis-benchmark puts a random one
    probe=$(cceil "${@//__rand_int__/$(( RANDOM * 32768 + RANDOM + 1000000000 ))}" 2>&1 | tr -d '\r')
    echo "$probe" >"$WORK/ceiling-$name.probe"
    if [ "$(head -1 <<<"$probe")" != "$expect" ]; then
        step "ceiling-$name" failed "probe call answered: $(tr '\n' ' ' <<<"$probe" | cut -c1-200)"; return 1
    fi
    eval "$reset"
    e0=$(cceil "${effect[@]}")
    c0=$(node_cpu "$CPORT"); s0=$(node_evalsha "$CPORT")
    if redis-benchmark -h 127.0.0.1 -p "$CPORT" --dbnum "$CDB" -n "$CEIL_N" -c "$CEIL_C" \
        -r "$CEIL_R" --precision 3 "$@" >"$WORK/ceiling-$name.txt" 2>&1; then
        c1=$(node_cpu "$CPORT"); s1=$(node_evalsha "$CPORT")
        e1=$(cceil "${effect[@]}")
        echo "$c0 $c1 $CEIL_N" >"$WORK/ceiling-$name.cpu"
        # EVALSHA calls, usec, failed calls over the run (other clients of a shared node count too), writes
        read -r a0 b0 f0 <<<"$s0"; read -r a1 b1 f1 <<<"$s1"
        echo "$(( a1 - a0 )) $(( b1 - b0 )) $(( f1 - f0 )) $(( e1 - e0 ))" >"$WORK/ceiling-$name.stats"
        step "ceiling-$name" ok "probe: $(tr '\n' ' ' <<<"$probe" | cut -c1-160)"
    else
        step "ceiling-$name" failed "redis-benchmark failed: $(tail -2 "$WORK/ceiling-$name.txt" | tr '\n' ' ')"
    fi
}

# ceiling_suite LABEL PORT DB PREFIX COUPON_ID PRODUCT_ID MEMBER_ID: the scripts an order and a coupon
# issue run, with KEYS and ARGV as src/scripts/calls.rs builds them (CouponIssue, StockHold, OrderReserve).
ceiling_suite() {
    local label=$1 ctag ptag mtag
    CPORT=$2 CDB=$3 CPFX=$4
    local C=$5 P=$6 M=$7
    cceil() { redis-cli -h 127.0.0.1 -p "$CPORT" -n "$CDB" "$@"; }
    load_script() { { cat lua/lib/prelude.lua; echo; cat "$1"; } | cceil -x SCRIPT LOAD | tr -d '\r'; }
    ctag=$(python3 loadtest/partition.py tag "$C"); ptag=$(python3 loadtest/partition.py tag "$P")
    mtag=$(python3 loadtest/partition.py tag "$M")
    local sha_issue sha_hold sha_reserve sha_refuse
    sha_issue=$(load_script lua/coupon_issue.lua)
    sha_hold=$(load_script lua/stock_hold.lua)
    sha_reserve=$(load_script lua/order_reserve.lua)
    sha_refuse=$(load_script lua/order_refuse.lua)
    local now_ms exp
    now_ms=$(( $(date +%s) * 1000 ))
    exp=$(date -u -d @$(( now_ms / 1000 + 86400 )) +%Y-%m-%dT%H:%M:%S.000Z)
    log "ceiling $label on :$CPORT: coupon $C {$ctag}, product $P {$ptag}, member $M {$mtag}; $CEIL_N calls x $CEIL_C clients"
    local CK="$CPFX:{$ctag}:coupon:$C" PK="$CPFX:{$ptag}:product:$P" MK="$CPFX:{$mtag}:member:$M"
    coupon() { # quantity
        cceil DEL "$CK" "$CK:holders" "$CPFX:{$ctag}:outbox" >/dev/null
        cceil HSET "$CK" id "$C" name ceiling discount_type FIXED discount_value 1000 total_quantity "$1" \
            remaining "$1" valid_from_ms 0 valid_until_ms $(( now_ms + 86400000 )) \
            valid_from 1970-01-01T00:00:00.000Z valid_until "$exp" created_at 1970-01-01T00:00:00.000Z >/dev/null
    }
    product() { # stock
        cceil DEL "$PK" "$PK:holds" "$PK:bought" "$CPFX:{$ptag}:holds:pending" >/dev/null
        cceil HSET "$PK" id "$P" name ceiling price 1000 stock "$1" created_at 1970-01-01T00:00:00.000Z >/dev/null
    }
    # CouponIssue: coupon, holders, idempotency record (coupon's partition; unused without a key, as in
    # the coupon rush), the coupon partition's outbox; ARGV fp, ttl, '0', member, event id.
    local ISSUE=(EVALSHA "$sha_issue" 4 "$CK" "$CK:holders" "$CPFX:{$ctag}:idem:__rand_int__:none"
        "$CPFX:{$ctag}:outbox" fp 90000 0 __rand_int__ "evt-__rand_int__")
    # StockHold: product, holds, the product partition's pending holds, the product's units per member
    # (sale rules); ARGV product, order, member, qty, ttl.
    local HOLD=(EVALSHA "$sha_hold" 4 "$PK" "$PK:holds" "$CPFX:{$ptag}:holds:pending" "$PK:bought" "$P" __rand_int__ __rand_int__ 1 30000)
    # OrderReserve: order, reservations, idempotency record, outbox (all the member's partition), member;
    # ARGV fp, ttl, member, order, reservation ttl, event id, hold deadline, then product, qty, unit price.
    local RESERVE=(EVALSHA "$sha_reserve" 5 "$CPFX:{$mtag}:order:__rand_int__" "$CPFX:{$mtag}:reservations"
        "$CPFX:{$mtag}:idem:$M:__rand_int__" "$CPFX:{$mtag}:outbox" "$MK" fp 90000 "$M" __rand_int__ 600000
        "evt-__rand_int__" $(( now_ms + 86400000 )) "$P" 1 1000)
    # OrderRefuse: member, idempotency record; ARGV fp, ttl, status, code, detail (a refused hold's end).
    local REFUSE=(EVALSHA "$sha_refuse" 2 "$MK" "$CPFX:{$mtag}:idem:$M:__rand_int__" fp 90000 409 OUT_OF_STOCK
        "not enough stock")

    # Same shape as the HTTP coupon rush: COUPON_QTY units, COUPON_MEMBERS members picking at random
    # (once it is gone most calls answer COUPON_SOLD_OUT / COUPON_ALREADY_ISSUED, as over HTTP).
    coupon "$COUPON_QTY"; CEIL_R=$COUPON_MEMBERS
    ceiling "${label}coupon_issue" ok "coupon $COUPON_QTY" XLEN "$CPFX:{$ctag}:outbox" -- "${ISSUE[@]}"
    cceil HGET "$CK" remaining >"$WORK/ceiling-${label}coupon_issue.remaining"
    # Every call issues (more units than calls, members drawn from 1e9): the write path.
    coupon 1000000000; CEIL_R=1000000000
    ceiling "${label}coupon_issue_all" ok : XLEN "$CPFX:{$ctag}:outbox" -- "${ISSUE[@]}"
    cceil HGET "$CK" remaining >"$WORK/ceiling-${label}coupon_issue_all.remaining"
    # Same shape as the HTTP stock rush: one product with STOCK_UNITS units, a fresh order per call.
    product "$STOCK_UNITS"
    ceiling "${label}stock_hold" held "product $STOCK_UNITS" HLEN "$PK:holds" -- "${HOLD[@]}"
    cceil HGET "$PK" stock >"$WORK/ceiling-${label}stock_hold.remaining"
    # Every call holds (more stock than calls): the write path of an order's product step.
    product 1000000000
    ceiling "${label}stock_hold_all" held : HLEN "$PK:holds" -- "${HOLD[@]}"
    cceil HGET "$PK" stock >"$WORK/ceiling-${label}stock_hold_all.remaining"
    # The member step after its holds: every call writes an order (fresh order id and idempotency key).
    cceil HSET "$MK" id "$M" email "ceiling-$M@example.com" name ceiling balance 100000000 \
        created_at 1970-01-01T00:00:00.000Z >/dev/null
    ceiling "${label}order_reserve" ok : XLEN "$CPFX:{$mtag}:outbox" -- "${RESERVE[@]}"
    cceil ZCARD "$CPFX:{$mtag}:reservations" >"$WORK/ceiling-${label}order_reserve.remaining"
    # What a refused order (out of stock) runs after its failed hold: the refusal stored in the member's
    # idempotency record (writes: keys added to the node, other clients' keys included on a shared node).
    ceiling "${label}order_refuse" err : DBSIZE -- "${REFUSE[@]}"
}

for f in lua/lib/prelude.lua lua/coupon_issue.lua lua/stock_hold.lua lua/order_reserve.lua lua/order_refuse.lua; do
    [ -f "$f" ] || { step ceiling skipped "$f missing"; CEIL_SKIP=1; }
done
if [ "${CEIL_SKIP:-0}" = 1 ]; then
    :
elif [ "$TOPO" = single ]; then
    if [ "$(rcli -n "$BENCH_DB" DBSIZE)" != 0 ]; then
        step ceiling failed "Redis db $BENCH_DB is not empty; set BENCH_REDIS_DB to an unused db"
    else
        CEILING_DB_OWNED=1
        # the engine's default prefix, in a scratch db: the bench engines never see these keys
        ceiling_suite "" "$REDIS_PORT" "$BENCH_DB" fs 1 2 3
        rcli -n "$BENCH_DB" FLUSHDB >/dev/null
    fi
else
    # Each primary in turn (a cluster has one db): coupon, product and member in one partition that
    # primary serves, under a prefix of our own (all in one slot, unlinked afterwards).
    CPFX=${NS}c
    for port in "${PRIMARIES[@]}"; do
        read -r c p m tag < <(python3 loadtest/partition.py ids "$port" 3)
        [ -n "$m" ] || { step "ceiling-$port" failed "no partition served by $port"; continue; }
        CEIL_CLEAN_PORTS+=("$port")
        ceiling_suite "$port-" "$port" 0 "$CPFX" "$c" "$p" "$m"
        unlink_pattern "$port" "$CPFX:*" same-slot
    done
fi

# The time budget covers the HTTP phases; the ceilings are bounded by BENCH_CEILING_N (on the cluster
# they run once per primary).
BUDGET_START=$(date +%s)

report() {
    cut -d' ' -f1-3 /proc/loadavg >"$WORK/loadavg_end"
    log "writing $OUT"
    python3 "$REPO/loadtest/bench_report.py" "$WORK" >"$OUT.tmp" || { log "report generation failed"; exit 1; }
    # The big-sale and sold-out blocks are written by loadtest/big_sale.sh and loadtest/sold_out.sh
    # (`make big-sale`, `make sold-out-bench`; `make bench` runs both next): kept as they were until then.
    python3 - "$OUT" "$OUT.tmp" <<'PY'
import re, sys
old, new = sys.argv[1], sys.argv[2]
try:
    text = open(old).read()
except OSError:
    text = ""
for block in ("big-sale", "sold-out"):
    m = re.search(rf"<!-- {block}:begin -->.*?<!-- {block}:end -->", text, re.S)
    if m:
        open(new, "a").write("\n" + m.group(0) + "\n")
PY
    mv "$OUT.tmp" "$OUT"
    log "done in $(( $(date +%s) - START ))s; raw results in $WORK"
}
[ "$ONLY" = ceiling ] && { report; exit 0; }

# ------------------------------------------------------------------------------------- HTTP phases
start_engine() { # name port hot_path [binary]
    local name=$1 port=$2 hp=$3 bin=${4:-$T/release/flashsale} i
    log "starting engine $name (HOT_PATH=$hp, $bin) on :$port"
    (
        # FLASHSALE_ENV=dev: the engine refuses the development admin key otherwise. REQUEST_TIMEOUT_MS:
        # seeding 5,000 members in one admin request takes ~10 s on this shared machine (the load
        # generator's client waits 60 s); the rush's requests take milliseconds either way.
        export LISTEN_ADDR=127.0.0.1:$port HOT_PATH=$hp ADMIN_API_KEY=$ADMIN_KEY JWT_SECRET=$JWT FLASHSALE_ENV=dev
        export REQUEST_TIMEOUT_MS=${BENCH_REQUEST_TIMEOUT_MS:-60000}
        [ -n "${BENCH_RUST_LOG:-}" ] && export RUST_LOG=$BENCH_RUST_LOG
        exec "$bin" serve
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

# The mock data platform (once) and a sink for the current namespace (after its first engine created
# the database), once per namespace. start_pipeline NAME [sink binary]
SINKS_UP=" "
start_pipeline() {
    local name=$1 bin=${2:-$T/release/flashsale-sink} pid i
    [[ "$SINKS_UP" == *" $KEY_PREFIX "* ]] && return 0
    if [ -z "${MOCK_PID:-}" ]; then
        "$T/release/flashsale-sink" mock-platform >"$WORK/mock-platform.log" 2>&1 &
        MOCK_PID=$!
        STARTED_PIDS+=("$MOCK_PID")
    fi
    "$bin" run >"$WORK/sink-$name.log" 2>&1 &
    pid=$!
    STARTED_PIDS+=("$pid")
    for i in $(seq 1 60); do
        if curl -sf -m 2 "http://$SINK_LISTEN_ADDR/healthz" >/dev/null; then
            log "sink $name up (pid $pid)"; SINKS_UP+="$KEY_PREFIX "; return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    log "sink $name did not come up (see $WORK/sink-$name.log)"; tail -10 "$WORK/sink-$name.log" >&2
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
    local nodes
    nodes=$(IFS=,; echo "${NODES[*]}")
    log "run $label: $scenario on :$port for ${secs}s $*"
    timeout $(( secs + DRAIN * 2 + 300 )) "$T/release/flashsale-loadtest" "$scenario" \
        --host "http://127.0.0.1:$port" --admin-key "$ADMIN_KEY" --users "$USERS" --run-time "$secs" \
        --report-dir "$WORK/reports" --run-id "bench-$label" --engine-pid "$ENGINE_PID" \
        ${REDIS_PID:+--redis-pid "$REDIS_PID"} --redis-nodes "$nodes" \
        --max-p99-ms 1000000 --max-error-rate 1 --drain-timeout "$DRAIN" \
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

# scrape LABEL PORT: the engine's /metrics after a run (the wallet lag of the coupon rush is read from it).
scrape() {
    curl -sf --max-time 10 "http://127.0.0.1:$2/metrics" >"$WORK/$1.metrics" 2>/dev/null \
        || log "could not read /metrics of :$2 after $1"
}

# new_engine / prev_engine: (re)start this version's / the previous version's engine in its namespace.
new_engine() {
    use_namespace "$NS" $(( PORT + 3 ))
    start_engine flashsale "$PORT" redis && start_pipeline flashsale
}
prev_engine() {
    use_namespace "${NS}p" $(( PREV_PORT + 3 ))
    start_engine prev "$PREV_PORT" redis "$COMPARE_BIN" \
        && start_pipeline prev "$(dirname "$COMPARE_BIN")/flashsale-sink"
}

if [ -z "$COMPARE_BIN" ]; then
    if new_engine; then
        lt fs-coupon coupon-rush "$PORT" "$RUN" "${COUPON[@]}"
        scrape fs-coupon "$PORT"
        half=$(peak_rps fs-coupon coupon-rush)
        [ -n "$half" ] && lt fs-coupon-half coupon-rush "$PORT" "$RUN" "${COUPON[@]}" --throttle-requests "$half"
        lt fs-stock stock-rush "$PORT" "$RUN" "${STOCK[@]}"
        half=$(peak_rps fs-stock stock-rush)
        [ -n "$half" ] && lt fs-stock-half stock-rush "$PORT" "$RUN" "${STOCK[@]}" --throttle-requests "$half"
        stop_engine flashsale
    else
        step flashsale failed "engine or sink did not start"
    fi
else
    # Against the previous version (its own namespace: its schema and key layout differ; its own sink; the
    # load generator is still ours). The machine is shared, so each pair runs back to back: this
    # version's coupon rush, the previous version's coupon rush and stock rush, this version's stock rush,
    # then this version's half-rate runs.
    if new_engine; then
        lt fs-coupon coupon-rush "$PORT" "$RUN" "${COUPON[@]}"
        scrape fs-coupon "$PORT"
        stop_engine flashsale
    else
        step flashsale failed "engine or sink did not start"
    fi
    if have_time $(( RUN * 2 + 60 )) && prev_engine; then
        lt prev-coupon coupon-rush "$PREV_PORT" "$RUN" "${COUPON[@]}"
        lt prev-stock stock-rush "$PREV_PORT" "$RUN" "${STOCK[@]}"
        stop_engine prev
    else
        step previous failed "no time left, or the previous engine or sink did not start"
    fi
    if new_engine; then
        lt fs-stock stock-rush "$PORT" "$RUN" "${STOCK[@]}"
        half=$(peak_rps fs-coupon coupon-rush)
        [ -n "$half" ] && lt fs-coupon-half coupon-rush "$PORT" "$RUN" "${COUPON[@]}" --throttle-requests "$half"
        half=$(peak_rps fs-stock stock-rush)
        [ -n "$half" ] && lt fs-stock-half stock-rush "$PORT" "$RUN" "${STOCK[@]}" --throttle-requests "$half"
        stop_engine flashsale
    else
        step flashsale failed "engine or sink did not start (second start)"
    fi
fi

# The db-lock baseline writes MySQL only: the same on both topologies, so only the single run has it.
if [ "$TOPO" = cluster ]; then
    step baseline skipped "db-lock baseline: single topology only (it does not use Redis)"
elif have_time $(( DB_RUN * 2 + 60 )) && start_engine dblock "$DB_PORT" db-lock; then
    # No drain/in_sync wait: in db-lock mode MySQL is written directly, not through the pipeline.
    lt db-coupon coupon-rush "$DB_PORT" "$DB_RUN" "${COUPON[@]}" --no-drain
    lt db-stock stock-rush "$DB_PORT" "$DB_RUN" "${STOCK[@]}" --no-drain
    stop_engine dblock
else
    step baseline skipped "no time left or db-lock engine did not start"
fi

# --------------------------------------------------------------------------------------------- report
report
