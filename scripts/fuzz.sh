#!/usr/bin/env bash
# Fuzzes the HTTP API against its OpenAPI document with schemathesis (every check, every phase).
#
#   scripts/fuzz.sh stack     against a running stack (make up; BASE_URL, default http://$LISTEN_ADDR):
#                             the full run (`make fuzz`)
#   scripts/fuzz.sh bounded   starts its own engine (release binary, own database, Redis key prefix and
#                             Kafka topics on the running services), runs a bounded pass
#                             (FUZZ_MAX_EXAMPLES per operation, default 30; fixed FUZZ_SEED) and stops it
#                             (`make test`)
#
# Either way it seeds a member (admin API) and hands schemathesis that member's bearer token and the
# admin key, and exits non-zero on any failure. Schemathesis is pinned and installed into a venv under
# $FLASHSALE_LOCAL; the settings it runs with are in schemathesis.toml (each relaxed check says why).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL=${FLASHSALE_LOCAL:-$REPO/.local}
SCHEMATHESIS_VERSION=4.32.5
VENV=$LOCAL/fuzz-venv
MODE=${1:-bounded}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/flashsale-target}

log() { printf '[fuzz] %s\n' "$*" >&2; }
die() { printf '[fuzz] ERROR: %s\n' "$*" >&2; exit 1; }

install_schemathesis() {
    if [ -x "$VENV/bin/st" ] && "$VENV/bin/st" --version 2>/dev/null | grep -qF "version $SCHEMATHESIS_VERSION"; then
        return
    fi
    log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    mkdir -p "$LOCAL"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
}

# JSON field of stdin, e.g. `json_field members.0.access_token`.
json_field() {
    python3 -c 'import json,sys
v=json.load(sys.stdin)
for p in sys.argv[1].split("."): v=v[int(p)] if isinstance(v,list) else v[p]
print(v)' "$1"
}

ENGINE_PID=
RUN_ID=fuzz$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
cleanup() {
    if [ -n "$ENGINE_PID" ]; then
        kill "$ENGINE_PID" 2>/dev/null || true
        wait "$ENGINE_PID" 2>/dev/null || true
        # The engine's own database and keys: nothing of the run is left behind.
        mariadb -h 127.0.0.1 -P "${MYSQL_PORT:-3306}" -u root -e "DROP DATABASE IF EXISTS \`fs_$RUN_ID\`" 2>/dev/null || true
        drop_keys "${REDIS_URL:-redis://127.0.0.1:${REDIS_PORT:-6379}}" "$RUN_ID*" || true
    fi
}
trap cleanup EXIT

# cluster_nodes URL: host:port of every node a redis-cluster:// URL names (fred's syntax:
# redis-cluster://[user:pass@]host:port?node=host:port&node=host:port)
cluster_nodes() {
    local rest=${1#*://} param params
    local first=${rest%%\?*}
    echo "${first##*@}"
    [ "$rest" != "$first" ] || return 0
    IFS='&' read -r -a params <<<"${rest#*\?}"
    for param in "${params[@]}"; do
        [ "${param%%=*}" = node ] && echo "${param#node=}"
    done
    return 0
}

# drop_keys URL PATTERN: deletes the keys matching PATTERN. On a cluster every node is scanned and each
# key unlinked on its own (keys of different slots cannot share one command; -c follows a replica's
# MOVED to the primary).
drop_keys() {
    local url=$1 pattern=$2 node
    case $url in
        redis-cluster://*|rediss-cluster://*) ;;
        *)
            redis-cli -u "$url" --scan --pattern "$pattern" 2>/dev/null |
                xargs -r -n 500 redis-cli -u "$url" del >/dev/null 2>&1
            return
            ;;
    esac
    for node in $(cluster_nodes "$url"); do
        redis-cli -h "${node%:*}" -p "${node##*:}" --scan --pattern "$pattern" 2>/dev/null |
            awk '{ printf "UNLINK \"%s\"\n", $0 }' |
            redis-cli -c -h "${node%:*}" -p "${node##*:}" >/dev/null 2>&1
    done
}

start_engine() {
    local bin=$CARGO_TARGET_DIR/release/flashsale port
    [ -x "$bin" ] || die "$bin is missing: run make build (or make up) first"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    mkdir -p "$LOCAL/logs"
    export FLASHSALE_ENV=dev
    export LISTEN_ADDR=127.0.0.1:$port
    export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:${REDIS_PORT:-6379}}
    export DATABASE_URL=mysql://root@127.0.0.1:${MYSQL_PORT:-3306}/fs_$RUN_ID
    export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:${KAFKA_PORT:-9092}}
    export KAFKA_TOPIC=$RUN_ID.events KAFKA_DLQ_TOPIC=$RUN_ID.events.dlq KAFKA_GROUP=$RUN_ID-sink
    export KAFKA_PARTITIONS=1 KEY_PREFIX=$RUN_ID
    export ADMIN_API_KEY=$RUN_ID-admin-key
    export JWT_SECRET=$RUN_ID-jwt-secret-0123456789abcdef0123456789
    "$bin" serve >"$LOCAL/logs/fuzz-engine.log" 2>&1 &
    ENGINE_PID=$!
    BASE_URL=http://$LISTEN_ADDR
    log "engine pid $ENGINE_PID on $BASE_URL (log: $LOCAL/logs/fuzz-engine.log)"
}

wait_live() {
    local deadline=$((SECONDS + ${READY_TIMEOUT:-120}))
    until curl -fsS -o /dev/null "$BASE_URL/healthz" 2>/dev/null; do
        [ -z "$ENGINE_PID" ] || kill -0 "$ENGINE_PID" 2>/dev/null || die "the engine exited; see $LOCAL/logs/fuzz-engine.log"
        [ $SECONDS -lt $deadline ] || die "$BASE_URL/healthz did not answer"
        sleep 0.5
    done
}

install_schemathesis
case "$MODE" in
    bounded)
        start_engine
        MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-30}
        # make test must be deterministic: a fixed seed and no example database (make fuzz explores).
        SEED_ARGS=(--seed "${FUZZ_SEED:-20261126}" --generation-database none)
        ;;
    stack)
        BASE_URL=${BASE_URL:-http://${LISTEN_ADDR:-127.0.0.1:8080}}
        ADMIN_API_KEY=${ADMIN_API_KEY:-dev-admin-key}
        MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-}
        SEED_ARGS=()
        ;;
    *) die "usage: $0 bounded|stack" ;;
esac
wait_live

# A member with points for the member operations (token) and the admin key for the admin ones.
seeded=$(curl -fsS -X POST "$BASE_URL/api/v1/admin/seed/members" -H "X-Admin-Key: $ADMIN_API_KEY" \
    -H 'Content-Type: application/json' \
    -d "{\"count\": 1, \"balance\": 1000000000, \"email_prefix\": \"$RUN_ID\"}") ||
    die "seeding a member failed (is ADMIN_API_KEY right?)"
export FUZZ_BEARER_TOKEN FUZZ_ADMIN_KEY=$ADMIN_API_KEY
FUZZ_BEARER_TOKEN=$(json_field members.0.access_token <<<"$seeded")

# the commas are schemathesis's own list syntax, inside one argument
# shellcheck disable=SC2054
args=(--config-file "$REPO/schemathesis.toml" run "$BASE_URL/openapi.json" --url "$BASE_URL"
      --checks all --phases examples,coverage,fuzzing,stateful
      --report junit --report-dir "$LOCAL/fuzz-report")
[ -z "$MAX_EXAMPLES" ] || args+=(--max-examples "$MAX_EXAMPLES")
args+=("${SEED_ARGS[@]}")
log "st ${args[*]}"
"$VENV/bin/st" "${args[@]}" "${@:2}"
