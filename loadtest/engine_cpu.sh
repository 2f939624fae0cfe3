#!/usr/bin/env bash
# The engine's CPU per request (issue 10, item 5), side by side with a previous build in ONE sitting on
# the running single-node services (its own key prefix and database, dropped at exit):
#   coupon   wrk POSTs coupon issues for members in turn against a coupon sold out beforehand, with
#            sold-out markers off: every request is one EVALSHA that Redis refuses (the engine's cost
#            of a request that reaches Redis: HTTP, JWT, the script call, the problem+json answer)
#   marker   the same requests with sold-out markers on: after the first, every one is refused by the
#            engine's marker without a Redis call (the herd after a sell-out)
#   healthz  wrk GETs /healthz: the HTTP stack alone
# Each build runs each scenario CPU_ROUNDS times, the builds alternating (and which goes first), a
# fresh engine per run over Redis's Unix socket. Engine and Redis CPU per request from /proc (utime +
# stime over the wrk run). Writes docs/engine-cpu.md.
#
# Environment (defaults):
#   CPU_BEFORE_BIN     a previous build's flashsale (e.g. built from the previous commit); without it
#                      only this build runs
#   CPU_ROUNDS=3 CPU_RUN_TIME=10 (s) CPU_THREADS=2 CPU_CONNECTIONS=32 CPU_MEMBERS=2000
#   CPU_PORT=18120 CPU_OUT=docs/engine-cpu.md CPU_DIR=.local/bench/engine-cpu-<time>
#   CPU_SKIP_BUILD=1   CARGO_TARGET_DIR (default ~/.cache/flashsale-target)
#   CPU_PERF=record    also record each run's engine with `perf record` (call graphs) into the work dir
#                      (<run>.perf.data; `perf report -i` it); the recording costs CPU, so the figures of a
#                      profiled sitting are not comparable with an unprofiled one
#   CPU_CALLGRIND=1    (default when valgrind is installed; 0 skips) also count each build's user-space
#                      instructions per request under callgrind (wrk -t1 -c4 for CPU_CALLGRIND_TIME=20 s per
#                      scenario): a count, not a time, the same for the same build and load whatever else
#                      the machine does (wake-ups batch differently from run to run: one build's
#                      counts spread by up to 3% within a sitting, 7% across sittings); an idle run per
#                      build (same time, no load) gives the background subtracted from each count
#   CPU_PERF=stat      also count each run's engine syscalls and context switches (`perf stat`, software
#                      events and tracepoints; <run>.perf-stat): counts, not times, so they hold on a noisy
#                      machine
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
. loadtest/lib.sh
T=${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/flashsale-target}
ROUNDS=${CPU_ROUNDS:-3}
RUN=${CPU_RUN_TIME:-10}
THREADS=${CPU_THREADS:-2}
CONNECTIONS=${CPU_CONNECTIONS:-32}
MEMBERS=${CPU_MEMBERS:-2000}
PORT=${CPU_PORT:-18120}
OUT=${CPU_OUT:-$REPO/docs/engine-cpu.md}
WORK=${CPU_DIR:-$REPO/.local/bench/engine-cpu-$(date -u +%Y%m%dT%H%M%SZ)}
NS=cpu$(date +%s)
ADMIN_KEY=engine-cpu-admin
JWT=engine-cpu-jwt-secret-0123456789abcdef0123456789ab
START=$(date +%s)
mkdir -p "$WORK"
RUNS=$WORK/runs.tsv
COUNTS=$WORK/instructions.tsv
: >"$RUNS"; : >"$COUNTS"

log() { printf '[engine-cpu %4ds] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot \
        -e "DROP DATABASE IF EXISTS flashsale_$NS" >/dev/null 2>&1 || true
    redis-cli -p "$REDIS_PORT" --scan --pattern "$NS:*" | xargs -r -n 500 redis-cli -p "$REDIS_PORT" UNLINK >/dev/null 2>&1
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

command -v wrk >/dev/null || { log "wrk is not installed (scripts/services.sh installs it)"; exit 1; }
if [ "${CPU_SKIP_BUILD:-0}" != 1 ]; then
    log "building the release engine into $T"
    CARGO_TARGET_DIR=$T cargo build --release -p flashsale >"$WORK/build.log" 2>&1 \
        || { tail -30 "$WORK/build.log" >&2; log "build failed"; exit 1; }
fi
BINS=("this=$T/release/flashsale")
[ -n "${CPU_BEFORE_BIN:-}" ] && BINS+=("before=$CPU_BEFORE_BIN")
for b in "${BINS[@]}"; do [ -x "${b#*=}" ] || { log "missing ${b#*=}"; exit 1; }; done

scripts/services.sh up >"$WORK/up.log" 2>&1 || { tail -30 "$WORK/up.log" >&2; log "services up failed"; exit 1; }
eval "$(bash scripts/services.sh env 2>/dev/null)"
REDIS_PORT=${REDIS_URL##*:}
MYSQL_PORT=${DATABASE_URL##*:}; MYSQL_PORT=${MYSQL_PORT%%/*}
SOCK=$(scripts/services.sh redis-socket)
URL=${SOCK:+redis+unix://$SOCK}; URL=${URL:-$REDIS_URL}
REDIS_PID=$(awk '$1 == "redis" && $2 == "running" {print $4}' <<<"$(scripts/services.sh status)")
[ -n "$REDIS_PID" ] || { log "redis is not running"; exit 1; }

export KAFKA_BROKERS ADMIN_API_KEY=$ADMIN_KEY JWT_SECRET=$JWT RUST_LOG=${CPU_RUST_LOG:-warn}
export DATABASE_URL=mysql://root@127.0.0.1:$MYSQL_PORT/flashsale_$NS
export KEY_PREFIX=$NS KAFKA_TOPIC=$NS.events KAFKA_DLQ_TOPIC=$NS.events.dlq KAFKA_GROUP=$NS-sink
export RUN_RELAY=false FLASHSALE_ENV=dev SOLD_OUT_MARKERS=false

# engine BIN LOG [MARKERS]: starts an engine (under "${WRAP[@]}" when set; sold-out markers off unless
# MARKERS=true); echoes its pid once it is ready.
WRAP=()
engine() {
    SOLD_OUT_MARKERS=${3:-false} LISTEN_ADDR=127.0.0.1:$PORT REDIS_URL=$URL "${WRAP[@]}" "$1" serve >"$2" 2>&1 &
    local pid=$!
    wait_ready "$PORT" "$pid" "$2" 240 && echo "$pid"
}
PREP() { python3 loadtest/sold_out_prep.py "$@"; }
A=http://127.0.0.1:$PORT

pid=$(engine "${BINS[0]#*=}" "$WORK/seed.log") || { log "engine not ready"; exit 1; }
PIDS+=("$pid")
log "seeding $MEMBERS members; one coupon of quantity 1, issued once (sold out from then on)"
PREP members "$A" "$MEMBERS" "$NS" "$WORK/members.txt" || { log "seeding failed"; exit 1; }
COUPON=$(PREP coupon "$A" 1)
token=$(awk 'NR == 1 {print $2}' "$WORK/members.txt")
curl -fs -o /dev/null -X POST -H "Authorization: Bearer $token" "$A/api/v1/coupons/$COUPON/issue" \
    || { log "the first issue failed"; exit 1; }
stop_gone "$pid"

# markers SCENARIO: the engine's SOLD_OUT_MARKERS for the scenario
markers() { [ "$1" = marker ] && echo true || echo false; }

# load SCENARIO OUT THREADS CONNECTIONS SECONDS: one wrk run of the scenario
load() {
    if [ "$1" != healthz ]; then
        CPU_COUPON=$COUPON CPU_MEMBERS=$WORK/members.txt wrk -t"$3" -c"$4" -d"$5s" \
            --timeout 10s -s loadtest/wrk/coupon_refused.lua "$A" >"$2" 2>&1
    else
        wrk -t"$3" -c"$4" -d"$5s" --timeout 10s --latency "$A/healthz" >"$2" 2>&1
    fi
}

# instructions LABEL BIN SCENARIO: the engine's user-space instructions over a wrk run, counted by
# callgrind from the load's first request (instrumentation switched on then) to its last. Scenario
# `idle`: the same time without load (the engine's own timers: gauges, sweeps), subtracted from the
# others' counts: under valgrind a run answers only some 30-90k requests, so the background's
# instructions would otherwise add thousands to each request's.
instructions() {
    local label=$1 bin=$2 scenario=$3 name=$1-$3-callgrind e dump
    WRAP=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/$name.%p")
    e=$(engine "$bin" "$WORK/$name.engine.log" "$(markers "$scenario")") || { WRAP=(); return 1; }
    WRAP=()
    PIDS+=("$e")
    callgrind_control -i on "$e" >/dev/null
    if [ "$scenario" = idle ]; then
        sleep "${CPU_CALLGRIND_TIME:-20}"; : >"$WORK/$name.wrk"
    else
        load "$scenario" "$WORK/$name.wrk" 1 4 "${CPU_CALLGRIND_TIME:-20}"
    fi
    callgrind_control -d "$e" >/dev/null
    stop_gone "$e"
    dump=$WORK/$name.$e.1
    [ -s "$dump" ] || { log "$name: no callgrind dump"; return 1; }
    printf '%s\t%s\t%s\t%s\n' "$label" "$scenario" "$WORK/$name.wrk" \
        "$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")" >>"$COUNTS"
    log "$name: $(awk '/^(summary|totals):/ {print $2; exit}' "$dump") instructions; $(grep -E '^(answers|Requests/sec)' "$WORK/$name.wrk" | tr '\n' ' ')"
}

# measure LABEL BIN SCENARIO ROUND
measure() {
    local label=$1 bin=$2 scenario=$3 round=$4 e e0 e1 r0 r1 name=$1-$3-r$4
    e=$(engine "$bin" "$WORK/$name.engine.log" "$(markers "$scenario")") || return 1
    PIDS+=("$e")
    local perf_pid=
    case ${CPU_PERF:-} in
        record) perf record -q -F 499 --call-graph dwarf,16384 -p "$e" -o "$WORK/$name.perf.data" >/dev/null 2>&1 &
                perf_pid=$! ;;
        stat) perf stat -x, -o "$WORK/$name.perf-stat" -p "$e" -e context-switches,cpu-migrations \
                  -e 'syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_sendto' \
                  -e 'syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_epoll_wait' \
                  -e 'syscalls:sys_enter_futex,syscalls:sys_enter_clock_gettime' >/dev/null 2>&1 &
              perf_pid=$! ;;
    esac
    [ -n "$perf_pid" ] && sleep 0.5
    e0=$(proc_ticks "$e"); r0=$(proc_ticks "$REDIS_PID")
    load "$scenario" "$WORK/$name.wrk" "$THREADS" "$CONNECTIONS" "$RUN"
    e1=$(proc_ticks "$e"); r1=$(proc_ticks "$REDIS_PID")
    if [ -n "$perf_pid" ]; then kill -INT "$perf_pid" 2>/dev/null; wait "$perf_pid" 2>/dev/null; fi
    stop_gone "$e"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$scenario" "$round" "$WORK/$name.wrk" "$(( e1 - e0 ))" "$(( r1 - r0 ))" >>"$RUNS"
    log "$name: $(grep -E '^(answers|Requests/sec)' "$WORK/$name.wrk" | tr '\n' ' ')"
}

for r in $(seq 1 "$ROUNDS"); do
    order=("${BINS[@]}")
    if [ $(( r % 2 )) = 0 ] && [ ${#BINS[@]} = 2 ]; then order=("${BINS[1]}" "${BINS[0]}"); fi
    for scenario in coupon marker healthz; do
        for b in "${order[@]}"; do measure "${b%%=*}" "${b#*=}" "$scenario" "$r" || exit 1; done
    done
done
CALLGRIND=${CPU_CALLGRIND:-$(command -v valgrind >/dev/null && echo 1 || echo 0)}
if [ "$CALLGRIND" = 1 ]; then
    command -v valgrind >/dev/null || { log "valgrind is not installed (apt-get install valgrind)"; exit 1; }
    for scenario in idle coupon marker healthz; do
        for b in "${BINS[@]}"; do instructions "${b%%=*}" "${b#*=}" "$scenario" || exit 1; done
    done
fi

python3 - "$RUNS" "$OUT" "$THREADS" "$CONNECTIONS" "$RUN" "$ROUNDS" "$COUNTS" \
    "$(git rev-parse --short HEAD 2>/dev/null)$( [ -n "$(git status --porcelain -- src lua)" ] && echo ' (dirty)')" \
    "${CPU_BEFORE_LABEL:-previous build}" <<'EOF' || { log "report failed"; exit 1; }
import datetime, os, re, sys
runs, out, threads, conns, secs, rounds, counts, git, before_label = sys.argv[1:10]
tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
def answered(scenario, wrk_path):
    """Requests answered by one wrk run, its length (s) and p99 (ms); exits on a wrong answer."""
    text = open(wrk_path).read()
    if scenario in ("coupon", "marker"):
        m = re.search(r"^total: (\d+) ([\d.]+) ([\d.]+)", text, re.M)
        n, dur, p99 = int(m.group(1)), float(m.group(2)), float(m.group(3))
        answers = re.search(r"^answers: (.*)$", text, re.M).group(1)
        if answers.strip() != f"409={n}":
            sys.exit(f"{wrk_path}: answers {answers}, expected every one 409 (sold out by Redis)")
    else:
        m = re.search(r"(\d+) requests in ([\d.]+)s", text)
        n, dur = int(m.group(1)), float(m.group(2))
        m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)", text, re.M)
        p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
        if re.search(r"Non-2xx", text):
            sys.exit(f"{wrk_path}: non-2xx answers")
    return n, dur, p99
rows = []
for line in open(runs):
    label, scenario, rnd, wrk_path, e, r = line.rstrip("\n").split("\t")
    n, dur, p99 = answered(scenario, wrk_path)
    rows.append(dict(label=label, scenario=scenario, round=int(rnd), n=n, rate=n / dur, p99=p99,
                     engine=int(e) * tick_us / max(n, 1), redis=int(r) * tick_us / max(n, 1)))
labels = list(dict.fromkeys(r["label"] for r in rows))
def pooled(label, scenario, key):
    sel = [r for r in rows if r["label"] == label and r["scenario"] == scenario]
    if key in ("engine", "redis"):
        return sum(r[key] * r["n"] for r in sel) / max(sum(r["n"] for r in sel), 1)
    return sum(r[key] for r in sel) / max(len(sel), 1)
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%MZ")
name = {"this": f"this build ({git})", "before": before_label}
L = ["# Engine CPU per request", "",
     f"Written by `loadtest/engine_cpu.sh` on {now}: release builds, 2 shared cores, one Redis over its Unix socket, "
     f"relay off, sold-out markers off but in the marker scenario. wrk -t{threads} -c{conns}, {secs} s per run, {rounds} rounds, the builds "
     "alternating (and which goes first), a fresh engine per run. CPU per request = utime + stime of the process "
     "over the run (/proc, 10 ms ticks) / requests answered.", "",
     "- **coupon**: POST /api/v1/coupons/{id}/issue for members in turn against a coupon sold out before the run: every "
     "request is one EVALSHA that Redis refuses (409 COUPON_SOLD_OUT; the run fails on any other answer).",
     "- **marker**: the same requests with sold-out markers on: the first reaches Redis and sets the marker, every "
     "later one is refused by the engine without a Redis call (the herd after a sell-out).",
     "- **healthz**: GET /healthz, the HTTP stack alone.", "",
     "| build | scenario | requests/s (per run) | p99 ms | engine µs/req | Redis µs/req |",
     "|---|---|---|---:|---:|---:|"]
for scenario in ("coupon", "marker", "healthz"):
    for label in labels:
        sel = [r for r in rows if r["label"] == label and r["scenario"] == scenario]
        L.append(f"| {name.get(label, label)} | {scenario} | {pooled(label, scenario, 'rate'):,.0f} ("
                 + ", ".join(f"{r['rate']:,.0f}" for r in sel) + f") | {pooled(label, scenario, 'p99'):.2f} | "
                 f"{pooled(label, scenario, 'engine'):.1f} | {pooled(label, scenario, 'redis'):.1f} |")
L.append("")
if "before" in labels:
    for scenario in ("coupon", "marker", "healthz"):
        a, b = pooled("this", scenario, "engine"), pooled("before", scenario, "engine")
        L.append(f"- {scenario}: engine CPU per request {a:.1f} µs vs {b:.1f} µs before = {a / b:.2f}x; "
                 f"requests/s {pooled('this', scenario, 'rate') / pooled('before', scenario, 'rate'):.2f}x.")
counted, idle = [], {}
for line in open(counts):
    label, scenario, wrk_path, ir = line.rstrip("\n").split("\t")
    if scenario == "idle":
        idle[label] = int(ir)
        continue
    n, _, _ = answered(scenario, wrk_path)
    counted.append(dict(label=label, scenario=scenario, n=n, ir=int(ir),
                        per=(int(ir) - idle.get(label, 0)) / max(n, 1)))
if counted:
    L += ["User-space instructions per request, counted by callgrind (`CPU_CALLGRIND=1`): one run per build and "
          "scenario under valgrind, wrk -t1 -c4; a count, so it does not move with the machine's load (the kernel's "
          "share, syscalls and wake-ups, is not in it). The engine's own background over the same time without "
          "load (the idle run: gauges, sweeps) is subtracted before dividing by the requests.", "",
          "| build | scenario | requests | instructions in the run | of which idle background | instructions/req |",
          "|---|---|---:|---:|---:|---:|"]
    for r in counted:
        L.append(f"| {name.get(r['label'], r['label'])} | {r['scenario']} | {r['n']:,} | {r['ir']:,} | "
                 f"{idle.get(r['label'], 0):,} | {r['per']:,.0f} |")
    L.append("")
    per = {(r["label"], r["scenario"]): r["per"] for r in counted}
    for scenario in ("coupon", "marker", "healthz"):
        if ("this", scenario) in per and ("before", scenario) in per:
            L.append(f"- {scenario}: {per[('this', scenario)]:,.0f} vs {per[('before', scenario)]:,.0f} instructions "
                     f"per request = {per[('this', scenario)] / per[('before', scenario)]:.2f}x.")
    L.append("")
c = pooled("this", "coupon", "engine"); h = pooled("this", "healthz", "engine")
L.append(f"- A coupon request that reaches Redis costs the engine {c:.1f} µs, of which the HTTP stack alone "
         f"(healthz) {h:.1f} µs; target <= 25 µs.")
L += ["", "Reproduce: `bash loadtest/engine_cpu.sh` (`CPU_BEFORE_BIN=<previous build>/flashsale` for the side by "
      "side; knobs in its header).", ""]
open(out, "w").write("\n".join(L))
print("\n".join(L))
EOF
log "done: $OUT (work dir $WORK)"
