#!/usr/bin/env bash
# The background cost of one idle engine (relay, saga worker and sweeps over every partition, no
# requests): its own CPU, Redis's CPU and the Redis commands it sends, over IDLE_SECS. Every engine
# sweeps every partition, so this cost grows with engines x partitions (docs/scaling.md).
#
#   loadtest/idle_cost.sh BINARY [LABEL] [PORT]     e.g. loadtest/idle_cost.sh ~/.cache/i9-target/release/flashsale new
#
# One Redis node (REDIS_PORT, 6379), MariaDB and Kafka from scripts/services.sh up; a namespace of its own
# (key prefix, database, topics), dropped at the end. Redis figures count every client of that node: run
# it when nothing else uses it (the output says how many commands came in, compare with an idle node).
# Environment: IDLE_SECS=20, REDIS_PORT=6379, MYSQL_PORT=3306, KAFKA_PORT=9092.
set -u
bin=${1:?engine binary}; label=${2:-engine}; port=${3:-18090}
secs=${IDLE_SECS:-20}
rport=${REDIS_PORT:-6379}
ns=idle$(date +%s)${label//[^a-zA-Z0-9]/}   # a key prefix and database name: letters and digits only
export KEY_PREFIX=$ns KAFKA_TOPIC=$ns.events KAFKA_DLQ_TOPIC=$ns.events.dlq KAFKA_GROUP=$ns-sink
export DATABASE_URL=mysql://root@127.0.0.1:${MYSQL_PORT:-3306}/flashsale_$ns REDIS_URL=redis://127.0.0.1:$rport
export KAFKA_BROKERS=127.0.0.1:${KAFKA_PORT:-9092} LISTEN_ADDR=127.0.0.1:$port HOT_PATH=redis FLASHSALE_ENV=dev
export ADMIN_API_KEY=dev-admin-key JWT_SECRET=idle-jwt-secret-0123456789abcdef0123456789abcdef
log=$(mktemp)
"$bin" serve >"$log" 2>&1 &
pid=$!
cleanup() {
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"${MYSQL_PORT:-3306}" -uroot -e "DROP DATABASE IF EXISTS \`flashsale_$ns\`"
    redis-cli -p "$rport" --scan --pattern "$ns:*" | xargs -r -n 500 redis-cli -p "$rport" UNLINK >/dev/null
    rm -f "$log"
}
trap cleanup EXIT
for _ in $(seq 1 120); do curl -sf -m 2 "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.5; done
curl -sf -m 2 "http://127.0.0.1:$port/readyz" >/dev/null || { tail -5 "$log" >&2; echo "engine not ready" >&2; exit 1; }
sleep 5   # past the start (schema, topics, first rounds)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, USER_HZ = 100
rpid=$(redis-cli -p "$rport" INFO server | tr -d '\r' | sed -n 's/^process_id://p')
calls() { redis-cli -p "$rport" INFO commandstats | tr -d '\r' | awk -F'[:,=]' '/^cmdstat_/ {s += $3} /^cmdstat_evalsha:/ {e = $3} END {print s + 0, e + 0}'; }
e0=$(ticks "$pid"); r0=$(ticks "$rpid"); read -r c0 x0 < <(calls)
sleep "$secs"
e1=$(ticks "$pid"); r1=$(ticks "$rpid"); read -r c1 x1 < <(calls)
awk -v l="$label" -v s="$secs" -v e=$(( e1 - e0 )) -v r=$(( r1 - r0 )) -v c=$(( c1 - c0 )) -v x=$(( x1 - x0 )) -v d="$(date -u +%Y-%m-%dT%H:%M:%SZ)" 'BEGIN {
    printf "%s %s idle %d s: engine CPU %.1f ms/s, Redis CPU %.1f ms/s, Redis commands %.0f/s (EVALSHA %.0f/s)\n",
        d, l, s, e * 10 / s, r * 10 / s, c / s, x / s }'
