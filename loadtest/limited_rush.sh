#!/usr/bin/env bash
# limited rush (`make limited-rush`): the sale rules of issue 11 under load, against a RUNNING engine.
#
#   goose  flashsale-loadtest limited-rush: members (a shared pool, --burst users per member at once)
#          order one product with per_member_limit and sale_starts_at a few seconds into the run, before
#          and after the opening and far past their limit, with same-key retries, payments, cancels
#   wrk    the twin (loadtest/wrk/limited_rush.lua) on a fresh product and fresh members made by
#          `flashsale-loadtest limited-prepare`, checked by `flashsale-loadtest limited-verify`
#
# Both end with the same checks, after the pipeline drained: no member above its limit (units in
# RESERVED + PAID orders), remaining_allowance = limit - those units, sold + remaining = initial, no order
# created (nor a 201 in hand) before the opening, SALE_NOT_STARTED only before it, refusals carry their
# fields, reconcile in sync. The summary (req/s, latency, answers before / after the opening, checks) is
# printed and written to loadtest/reports/limited-rush-<run>.md (not committed).
#
# Usage: loadtest/limited_rush.sh [BASE_URL]      (default http://127.0.0.1:8080: `make up`; behind
#        HAProxy with `make up TOPOLOGY=cluster` the same URL)
# Environment (defaults):
#   ADMIN_API_KEY=dev-admin-key
#   LR_MEMBERS=2000 LR_STOCK=1000 LR_LIMIT=2 LR_OPEN_DELAY=5 (s into the run) LR_BURST=4
#   LR_USERS=16 LR_RUN_TIME=20 (goose users, seconds)
#   WRK_THREADS=2 WRK_CONNECTIONS=16 WRK_DURATION=20 (s) WRK_TIMEOUT=10s
#   LR_ONLY=goose|wrk (one of the two), LR_MAX_P99_MS=1000 (goose's p99 threshold; 2 shared cores)
#   LR_DRAIN_TIMEOUT=180, LR_OUT_DIR=loadtest/reports, LR_RUN_ID (default time-based)
#   LT=path of flashsale-loadtest (default: $CARGO_TARGET_DIR/release/flashsale-loadtest, built when
#   missing; CARGO_TARGET_DIR defaults to ~/.cache/flashsale-target as in the Makefile)
#   ENGINE_PID (optional: the engine's CPU per request in goose's summary)
# Exit: 0 both passed, 1 a check failed, 2 could not run.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

HOST=${1:-${FLASHSALE_HOST:-http://127.0.0.1:8080}}
HOST=${HOST%/}
export ADMIN_API_KEY=${ADMIN_API_KEY:-dev-admin-key}
MEMBERS=${LR_MEMBERS:-2000}
STOCK=${LR_STOCK:-1000}
LIMIT=${LR_LIMIT:-2}
OPEN_DELAY=${LR_OPEN_DELAY:-5}
BURST=${LR_BURST:-4}
USERS=${LR_USERS:-16}
RUN_TIME=${LR_RUN_TIME:-20}
THREADS=${WRK_THREADS:-2}
CONNS=${WRK_CONNECTIONS:-16}
WRK_SECS=${WRK_DURATION:-20}
WRK_TIMEOUT=${WRK_TIMEOUT:-10s}
ONLY=${LR_ONLY:-}
MAX_P99=${LR_MAX_P99_MS:-1000}
DRAIN=${LR_DRAIN_TIMEOUT:-180}
OUT_DIR=${LR_OUT_DIR:-$REPO/loadtest/reports}
RUN=${LR_RUN_ID:-$(date -u +%Y%m%dT%H%M%SZ)}
T=${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/flashsale-target}
LT=${LT:-$T/release/flashsale-loadtest}

log() { printf '[limited-rush] %s\n' "$*" >&2; }

case "$ONLY" in ""|goose|wrk) ;; *) log "LR_ONLY must be goose or wrk, not '$ONLY'"; exit 2 ;; esac
if [ "$ONLY" != goose ] && ! command -v wrk >/dev/null 2>&1; then
    log "wrk is not installed (scripts/services.sh installs Debian's wrk; or: apt-get install wrk)"; exit 2
fi
if [ ! -x "$LT" ]; then
    log "building flashsale-loadtest into $T"
    CARGO_TARGET_DIR=$T cargo build --release -p flashsale-loadtest >&2 || { log "build failed"; exit 2; }
fi
curl -sf -m 5 "$HOST/readyz" >/dev/null || { log "no ready engine at $HOST (make up, or pass its URL)"; exit 2; }

mkdir -p "$OUT_DIR"
WORK=$OUT_DIR/limited-rush-$RUN
mkdir -p "$WORK"
COMMON=(--host "$HOST" --admin-key "$ADMIN_API_KEY" --report-dir "$WORK" --drain-timeout "$DRAIN")
RUSH=(--members "$MEMBERS" --stock "$STOCK" --limit "$LIMIT" --open-delay "$OPEN_DELAY" --burst "$BURST")
log "engine $HOST; run $RUN; files in $WORK"

goose_rc=-
if [ "$ONLY" != wrk ]; then
    log "goose: limited-rush, $USERS users for ${RUN_TIME}s, $MEMBERS members, stock $STOCK, limit $LIMIT, opening ${OPEN_DELAY}s in"
    "$LT" limited-rush "${COMMON[@]}" "${RUSH[@]}" --users "$USERS" --run-time "$RUN_TIME" \
        --run-id "goose-$RUN" --max-p99-ms "$MAX_P99" ${ENGINE_PID:+--engine-pid "$ENGINE_PID"} \
        >"$WORK/goose.log" 2>"$WORK/goose.err"
    goose_rc=$?
    grep -E '^RESULT|^  (PASS|FAIL)' "$WORK/goose.log" >&2 || tail -5 "$WORK/goose.err" >&2
fi

wrk_rc=-
if [ "$ONLY" != goose ]; then
    log "wrk: seeding $MEMBERS members and a fresh product"
    if "$LT" limited-prepare "${COMMON[@]}" "${RUSH[@]}" --run-id "wrk-$RUN" \
        --state "$WORK/wrk-state.json" --members-out "$WORK/wrk-members.txt" \
        >"$WORK/wrk-prepare.out" 2>"$WORK/wrk-prepare.err"; then
        PRODUCT_ID=$(sed -n 's/^PRODUCT_ID=//p' "$WORK/wrk-prepare.out")
        OPENING_MS=$(sed -n 's/^OPENING_MS=//p' "$WORK/wrk-prepare.out")
        log "wrk: -t$THREADS -c$CONNS -d${WRK_SECS}s on product $PRODUCT_ID (opening at $OPENING_MS ms)"
        LR_MEMBERS=$WORK/wrk-members.txt LR_PRODUCT=$PRODUCT_ID LR_OPEN_MS=$OPENING_MS LR_BURST=$BURST \
            LR_OUT=$WORK/wrk wrk -t"$THREADS" -c"$CONNS" -d"${WRK_SECS}s" --timeout "$WRK_TIMEOUT" --latency \
            -s "$REPO/loadtest/wrk/limited_rush.lua" "$HOST" >"$WORK/wrk.log" 2>&1
        rc=$?
        tail -1 "$WORK/wrk.log" >&2
        if [ $rc != 0 ] || [ ! -f "$WORK/wrk.orders" ]; then
            log "wrk failed (exit $rc): $(tail -3 "$WORK/wrk.log" | tr '\n' ' ')"; wrk_rc=2
        else
            "$LT" limited-verify "${COMMON[@]}" --state "$WORK/wrk-state.json" \
                --orders "$WORK/wrk.orders" --counts "$WORK/wrk.counts" \
                >"$WORK/wrk-verify.log" 2>"$WORK/wrk-verify.err"
            wrk_rc=$?
            grep -E '^RESULT|^  (PASS|FAIL)' "$WORK/wrk-verify.log" >&2 || tail -5 "$WORK/wrk-verify.err" >&2
        fi
    else
        wrk_rc=2
        log "limited-prepare failed: $(tail -3 "$WORK/wrk-prepare.err" | tr '\n' ' ')"
    fi
    # the tokens are of no use once the run is over; keep no copy of them
    rm -f "$WORK/wrk-members.txt"
    python3 - "$WORK/wrk-state.json" <<'EOF' 2>/dev/null || true
import json, sys
p = sys.argv[1]
s = json.load(open(p))
for m in s.get("members", []):
    m.pop("bearer", None)
json.dump(s, open(p, "w"))
EOF
fi

REPORT=$OUT_DIR/limited-rush-$RUN.md
python3 "$REPO/loadtest/limited_rush_report.py" "$WORK" "$RUN" "$HOST" "$goose_rc" "$wrk_rc" >"$REPORT" \
    || { log "report failed"; exit 2; }
cat "$REPORT"
log "report: $REPORT"

worst=0
for rc in "$goose_rc" "$wrk_rc"; do
    [ "$rc" = - ] && continue
    [ "$rc" -gt "$worst" ] && worst=$rc
done
exit "$worst"
