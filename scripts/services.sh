#!/usr/bin/env bash
# Local backing services of flashsale: our OWN Redis 7, MariaDB 10.11 and Kafka 4.1 (KRaft) instances,
# never the distribution's system services. Data, logs, configs and pid files live under
# ${FLASHSALE_LOCAL:-<repo>/.local}; Kafka jars are cached under ${FLASHSALE_CACHE:-~/.cache/flashsale}.
#
#   scripts/services.sh up          install what is missing, start what is not running, wait until ready
#   scripts/services.sh down        stop what we started (by pid file); data is kept
#   scripts/services.sh status      show what runs (exit 0 when redis, mysql and kafka all run)
#   scripts/services.sh clean       down + delete the services' data, logs and configs
#   scripts/services.sh prometheus  start Prometheus on $PROMETHEUS_PORT with prometheus/prometheus.yml
#                                   (prometheus/prometheus.cluster.yml in the cluster topology)
#   scripts/services.sh install     only install the packages and the Kafka jars
#   scripts/services.sh env         print the connection variables (export lines)
#   scripts/services.sh redis-socket  the single Redis's Unix socket (printed only while it exists): the
#                                   engine `make up` starts talks to Redis over it (less CPU per call
#                                   than loopback TCP); tests, tools and the cluster use TCP
#
# Topologies (TOPOLOGY, default single): `single` is one Redis on REDIS_PORT; `cluster` is a Redis Cluster
# (redis-server in cluster mode) on REDIS_CLUSTER_PORTS instead. MariaDB and Kafka are the same in both.
# `up` starts the one named (default single); `down` stops whatever our pid files say runs; `status` and
# `env` describe the topology `up` last started unless TOPOLOGY says otherwise. The cluster alone
# (CI calls these separately):
#   scripts/services.sh cluster-up      start the nodes that are not running, create the cluster once,
#                                       wait until every slot is served and every replica is in sync
#   scripts/services.sh cluster-down    stop the cluster's nodes (data and nodes.conf kept)
#   scripts/services.sh cluster-status  one line per node (role, slots), cluster_state (exit 0 when ok)
#   scripts/services.sh cluster-url     the cluster as a REDIS_URL (fred's redis-cluster:// syntax)
#   scripts/services.sh cluster-clean   cluster-down + delete the cluster's data (the next up creates it anew)
#
# Environment (defaults): REDIS_PORT 6379, REDIS_APPENDFSYNC everysec, MYSQL_PORT 3306,
# MYSQL_FLUSH_LOG_AT_TRX_COMMIT 2, MYSQL_BUFFER_POOL_SIZE 256M, MYSQL_MAX_CONNECTIONS 500,
# KAFKA_PORT 9092, KAFKA_CONTROLLER_PORT 9093, KAFKA_HEAP_OPTS "-Xms512m -Xmx512m",
# PROMETHEUS_PORT 9090, SERVICES_TIMEOUT 120 (seconds to wait for each service),
# FLASHSALE_SKIP_INSTALL=1 (never call apt-get / mvn);
# cluster: REDIS_CLUSTER_PORTS "7001 7002 7003 7004 7005 7006" (the first third are created as primaries,
# the rest as their replicas; each port + 10000 is its cluster bus port), REDIS_CLUSTER_REPLICAS 1,
# REDIS_CLUSTER_NODE_TIMEOUT_MS 2000, REDIS_CLUSTER_REQUIRE_FULL_COVERAGE no (see cluster_node_start).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL=${FLASHSALE_LOCAL:-$REPO/.local}
CACHE=${FLASHSALE_CACHE:-${HOME:-/root}/.cache/flashsale}

REDIS_PORT=${REDIS_PORT:-6379}
REDIS_APPENDFSYNC=${REDIS_APPENDFSYNC:-everysec}
MYSQL_PORT=${MYSQL_PORT:-3306}
MYSQL_FLUSH_LOG_AT_TRX_COMMIT=${MYSQL_FLUSH_LOG_AT_TRX_COMMIT:-2}
MYSQL_BUFFER_POOL_SIZE=${MYSQL_BUFFER_POOL_SIZE:-256M}
MYSQL_MAX_CONNECTIONS=${MYSQL_MAX_CONNECTIONS:-500}
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms512m -Xmx512m}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
SERVICES_TIMEOUT=${SERVICES_TIMEOUT:-120}
REDIS_CLUSTER_PORTS=${REDIS_CLUSTER_PORTS:-7001 7002 7003 7004 7005 7006}
REDIS_CLUSTER_REPLICAS=${REDIS_CLUSTER_REPLICAS:-1}
REDIS_CLUSTER_NODE_TIMEOUT_MS=${REDIS_CLUSTER_NODE_TIMEOUT_MS:-2000}
REDIS_CLUSTER_REQUIRE_FULL_COVERAGE=${REDIS_CLUSTER_REQUIRE_FULL_COVERAGE:-no}

KAFKA_VERSION=4.1.0
KAFKA_LIBS=$CACHE/kafka-$KAFKA_VERSION/libs
KAFKA_TOPICS=("flashsale.events:6" "flashsale.events.dlq:1")

RUN=$LOCAL/run
LOGS=$LOCAL/logs
DATA=$LOCAL/data
CONF=$LOCAL/conf

# haproxy: the load balancer in front of the engines in the cluster topology (scripts/stack.sh)
# wrk: the HTTP load generator of loadtest/limited_rush.sh (the wrk twin of the goose scenarios)
APT_PACKAGES=(redis-server redis-tools mariadb-server prometheus haproxy wrk)

# ---------------------------------------------------------------------------------------------- helpers

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root (or sudo) to run: $*"; fi
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" >/dev/null 2>&1
}

# who_listens PORT: best-effort description of the process listening on PORT
who_listens() {
    if command -v ss >/dev/null 2>&1; then
        ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\(.*\)))/\1/p' | head -1
    fi
}

# live_pid NAME PATTERN: print the pid from $RUN/NAME.pid if that process is alive and its command line
# contains PATTERN (so a recycled pid of some other program is never taken for ours).
live_pid() {
    local f=$RUN/$1.pid pid
    [ -s "$f" ] || return 1
    pid=$(tr -dc '0-9' <"$f")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2" || return 1
    echo "$pid"
}

# ensure_port_free PORT VAR SERVICE
ensure_port_free() {
    if port_open "$1"; then
        local who; who=$(who_listens "$1")
        local alt=$(( $1 < 55000 ? $1 + 10000 : $1 - 10000 ))
        die "port $1 is already in use by a process that is not our $3${who:+ ($who)}. Stop it, or choose another port: $2=<port> (e.g. $2=$alt)."
    fi
}

# check_port_matches NAME PORT VAR: a running service of ours must be on the port asked for now
check_port_matches() {
    local f=$RUN/$1.port
    if [ -s "$f" ] && [ "$(cat "$f")" != "$2" ]; then
        die "our $1 is already running on port $(cat "$f") but $3=$2 was asked for; run 'scripts/services.sh down' first (FLASHSALE_LOCAL=$LOCAL)."
    fi
}

tail_log() {
    local f
    for f in "$@"; do
        [ -f "$f" ] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 40 "$f" >&2
    done
}

# wait_for NAME PID SECONDS CHECK...: poll CHECK until it succeeds; fail fast if PID dies
wait_for() {
    local name=$1 pid=$2 secs=$3; shift 3
    local deadline=$((SECONDS + secs))
    while ! "$@" >/dev/null 2>&1; do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited while starting"
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$name did not become ready within ${secs}s"
            return 1
        fi
        sleep 0.5
    done
}

# stop_pid NAME PATTERN SECONDS: TERM, wait, KILL
stop_service() {
    local name=$1 pattern=$2 secs=${3:-60} pid
    if ! pid=$(live_pid "$name" "$pattern"); then
        rm -f "$RUN/$name.pid" "$RUN/$name.port"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + secs))
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$name did not stop within ${secs}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.3
    done
    rm -f "$RUN/$name.pid" "$RUN/$name.port"
}

# run_detached PIDFILE LOGFILE CMD...: start CMD in its own session, its pid written to PIDFILE
run_detached() {
    local pidfile=$1 logfile=$2; shift 2
    # fd 9 is the services.sh lock: the daemon must not inherit (and so hold) it.
    # The single quotes are meant: $$ and $0 belong to the inner bash.
    # shellcheck disable=SC2016
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$logfile" 2>&1 9>&- &
    local _i
    for _i in $(seq 1 50); do [ -s "$pidfile" ] && return 0; sleep 0.1; done
    die "could not start: $*"
}

# --------------------------------------------------------------------------------------------- install

install_packages() {
    local missing=() cmd pkg
    for pair in redis-server:redis-server redis-cli:redis-tools mariadbd:mariadb-server \
                mariadb:mariadb-server mariadb-admin:mariadb-server mariadb-install-db:mariadb-server \
                prometheus:prometheus promtool:prometheus haproxy:haproxy wrk:wrk; do
        cmd=${pair%%:*}; pkg=${pair#*:}
        if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
            missing+=("$pkg")
        fi
    done
    # also needed around the services: curl (readiness probes), and a C toolchain for the Rust build
    # (rdkafka builds librdkafka from source)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v make >/dev/null 2>&1 || missing+=(make)
    command -v cc >/dev/null 2>&1 || missing+=(build-essential)
    command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
    command -v mvn >/dev/null 2>&1 || missing+=(maven)
    command -v setsid >/dev/null 2>&1 || missing+=(util-linux)
    command -v flock >/dev/null 2>&1 || missing+=(util-linux)
    [ "${#missing[@]}" -eq 0 ] && return 0
    [ "${FLASHSALE_SKIP_INSTALL:-0}" = 1 ] && die "missing packages (FLASHSALE_SKIP_INSTALL=1): ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || die "missing: ${missing[*]}; install them (no apt-get here)"

    # Keep the distribution's own redis/mariadb/prometheus services from starting on install: they would
    # take our ports. A policy-rc.d that exits 101 does that; add one only for the duration of the install.
    local added_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    local pkgs rc=0
    mapfile -t pkgs < <(printf '%s\n' "${APT_PACKAGES[@]}" "${missing[@]}" | sort -u)
    log "installing: ${pkgs[*]}"
    as_root apt-get -o DPkg::Lock::Timeout=600 update -q || rc=$?
    if [ "$rc" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
            --no-install-recommends "${pkgs[@]}" || rc=$?
    fi
    [ "$added_policy" = 1 ] && as_root rm -f /usr/sbin/policy-rc.d
    [ "$rc" -eq 0 ] || die "apt-get install failed (exit $rc)"
}

install_kafka() {
    [ -f "$KAFKA_LIBS/.complete" ] && return 0
    [ "${FLASHSALE_SKIP_INSTALL:-0}" = 1 ] && die "Kafka jars missing in $KAFKA_LIBS (FLASHSALE_SKIP_INSTALL=1)"
    log "downloading Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIBS"
    local tmp=$KAFKA_LIBS.tmp.$$
    rm -rf "$tmp"; mkdir -p "$tmp"
    if ! mvn -q -B -Dstyle.color=never -f "$REPO/scripts/kafka/pom.xml" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$tmp" >&2; then
        rm -rf "$tmp"; die "mvn could not fetch the Kafka jars (scripts/kafka/pom.xml)"
    fi
    ls "$tmp"/kafka_2.13-"$KAFKA_VERSION".jar "$tmp"/kafka-tools-"$KAFKA_VERSION".jar >/dev/null \
        || { rm -rf "$tmp"; die "Kafka jars incomplete in $tmp"; }
    touch "$tmp/.complete"
    rm -rf "$KAFKA_LIBS"; mkdir -p "$(dirname "$KAFKA_LIBS")"; mv "$tmp" "$KAFKA_LIBS"
}

install_all() {
    install_packages
    install_kafka
}

# ----------------------------------------------------------------------------------------------- redis

redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

redis_socket() {
    local s=$RUN/redis.sock
    # unix socket paths are limited to 107 bytes
    if [ "${#s}" -gt 100 ]; then s=/tmp/flashsale-redis-$(printf '%s' "$LOCAL" | md5sum | cut -c1-12).sock; fi
    echo "$s"
}

redis_up() {
    local pid
    if pid=$(live_pid redis redis-server); then
        check_port_matches redis "$REDIS_PORT" REDIS_PORT
        log "redis already running (pid $pid, port $REDIS_PORT)"
    else
        ensure_port_free "$REDIS_PORT" REDIS_PORT redis
        mkdir -p "$DATA/redis"
        rm -f "$RUN/redis.pid"
        log "starting redis on 127.0.0.1:$REDIS_PORT (appendfsync $REDIS_APPENDFSYNC)"
        # shellcheck disable=SC2016
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode yes \
            --daemonize yes --pidfile "$RUN/redis.pid" --logfile "$LOGS/redis.log" \
            --dir "$DATA/redis" --appendonly yes --appendfsync "$REDIS_APPENDFSYNC" --save '' \
            --maxclients 10000 --tcp-backlog 511 \
            --unixsocket "$(redis_socket)" --unixsocketperm 700 9>&- \
            || { tail_log "$LOGS/redis.log"; die "redis-server failed to start"; }
        echo "$REDIS_PORT" >"$RUN/redis.port"
        local _i; for _i in $(seq 1 50); do [ -s "$RUN/redis.pid" ] && break; sleep 0.1; done
        pid=$(cat "$RUN/redis.pid" 2>/dev/null || true)
    fi
    wait_for redis "$pid" "$SERVICES_TIMEOUT" redis_ping \
        || { tail_log "$LOGS/redis.log"; die "redis is not answering PING on 127.0.0.1:$REDIS_PORT"; }
}

# ------------------------------------------------------------------------------------------ redis cluster
#
# A real Redis Cluster on loopback: one redis-server per port of REDIS_CLUSTER_PORTS, in cluster mode, each
# with its own dir ($DATA/redis-cluster/<port>: nodes.conf, AOF), log and pid file (redis-cluster-<port>).
# A node that died is started again with the same dir: it reads its nodes.conf, rejoins, and if its
# replica was promoted meanwhile it becomes that replica's replica. The cluster is created
# (redis-cli --cluster create) only while no node has joined any other and no slot is assigned.

read -r -a CLUSTER_PORTS <<<"$REDIS_CLUSTER_PORTS"

cluster_node_name() { echo "redis-cluster-$1"; }
cluster_node_pattern() { echo "redis-server 127.0.0.1:$1"; }
cluster_cli() { local port=$1; shift; redis-cli -h 127.0.0.1 -p "$port" "$@"; }

# cluster_info_field PORT FIELD: one field of CLUSTER INFO (empty when the node does not answer)
cluster_info_field() {
    cluster_cli "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}

# The settings are checked before anything starts: redis-cli --cluster create needs at least 3 primaries
# and a port count that divides into primaries with REDIS_CLUSTER_REPLICAS replicas each.
cluster_check_settings() {
    local n=${#CLUSTER_PORTS[@]} per=$((REDIS_CLUSTER_REPLICAS + 1)) p
    [ "$n" -ge 3 ] || die "REDIS_CLUSTER_PORTS needs at least 3 ports (got '$REDIS_CLUSTER_PORTS')"
    if [ $((n % per)) -ne 0 ] || [ $((n / per)) -lt 3 ]; then
        die "REDIS_CLUSTER_PORTS has $n ports: not 3 or more primaries with $REDIS_CLUSTER_REPLICAS replica(s) each"
    fi
    for p in "${CLUSTER_PORTS[@]}"; do
        if ! [[ $p =~ ^[0-9]+$ ]] || [ "$p" -lt 1 ] || [ "$p" -gt 55535 ]; then
            die "REDIS_CLUSTER_PORTS: '$p' is not a port <= 55535 (its cluster bus is port + 10000)"
        fi
    done
    [[ $REDIS_CLUSTER_NODE_TIMEOUT_MS =~ ^[0-9]+$ ]] || die "REDIS_CLUSTER_NODE_TIMEOUT_MS must be milliseconds"
    case $REDIS_CLUSTER_REQUIRE_FULL_COVERAGE in yes|no) ;; *) die "REDIS_CLUSTER_REQUIRE_FULL_COVERAGE must be yes or no";; esac
}

# Every port a node that is not running yet would take (its client port and its bus port), checked before
# anything starts so that a conflict never leaves half a cluster behind.
cluster_check_ports() {
    local p
    for p in "${CLUSTER_PORTS[@]}"; do
        live_pid "$(cluster_node_name "$p")" "$(cluster_node_pattern "$p")" >/dev/null && continue
        ensure_port_free "$p" REDIS_CLUSTER_PORTS "redis cluster node"
        ensure_port_free $((p + 10000)) REDIS_CLUSTER_PORTS "redis cluster node (bus port of $p)"
    done
}

# cluster_node_start PORT: start the node on PORT unless it runs.
#
# cluster-require-full-coverage (REDIS_CLUSTER_REQUIRE_FULL_COVERAGE, default no): with `yes` every node
# refuses every command as soon as one slot has no live primary, i.e. a failed primary stops the whole
# sale for the failover window (node timeout + election), and for good if it had no replica left. With
# `no` only the slots of that primary answer CLUSTERDOWN meanwhile, and the other primaries' owners keep
# buying. Nothing gets less safe: a node still refuses writes to slots it does not own, and reads of
# down slots stay refused (cluster-allow-reads-when-down keeps its default, no). Readiness here does
# not rely on cluster_state alone for the same reason: cluster_wait_ready asks for all 16384 slots ok.
#
# repl-diskless-sync-delay 0: a primary has one replica here, so there is nothing to gain by waiting the
# default 5 s for more replicas before a full sync; a restarted node is back in sync that much sooner.
cluster_node_start() {
    local port=$1 name pid
    name=$(cluster_node_name "$port")
    if pid=$(live_pid "$name" "$(cluster_node_pattern "$port")"); then
        log "redis cluster node $port already running (pid $pid)"
        return 0
    fi
    ensure_port_free "$port" REDIS_CLUSTER_PORTS "redis cluster node"
    ensure_port_free $((port + 10000)) REDIS_CLUSTER_PORTS "redis cluster node (bus port of $port)"
    mkdir -p "$DATA/redis-cluster/$port"
    rm -f "$RUN/$name.pid"
    if [ -s "$DATA/redis-cluster/$port/nodes.conf" ]; then
        log "restarting redis cluster node 127.0.0.1:$port from its nodes.conf and AOF"
    else
        log "starting redis cluster node 127.0.0.1:$port (appendfsync $REDIS_APPENDFSYNC, node timeout ${REDIS_CLUSTER_NODE_TIMEOUT_MS}ms)"
    fi
    redis-server --port "$port" --bind 127.0.0.1 --protected-mode yes \
        --daemonize yes --pidfile "$RUN/$name.pid" --logfile "$LOGS/$name.log" \
        --dir "$DATA/redis-cluster/$port" --appendonly yes --appendfsync "$REDIS_APPENDFSYNC" --save '' \
        --maxclients 10000 --tcp-backlog 511 --repl-diskless-sync-delay 0 \
        --cluster-enabled yes --cluster-config-file nodes.conf \
        --cluster-node-timeout "$REDIS_CLUSTER_NODE_TIMEOUT_MS" \
        --cluster-require-full-coverage "$REDIS_CLUSTER_REQUIRE_FULL_COVERAGE" 9>&- \
        || { tail_log "$LOGS/$name.log"; die "redis-server (cluster node $port) failed to start"; }
}

cluster_node_ping() { [ "$(cluster_cli "$1" ping 2>/dev/null)" = PONG ]; }

cluster_wait_nodes() {
    local port name pid _i
    for port in "${CLUSTER_PORTS[@]}"; do
        name=$(cluster_node_name "$port")
        for _i in $(seq 1 50); do [ -s "$RUN/$name.pid" ] && break; sleep 0.1; done
        pid=$(cat "$RUN/$name.pid" 2>/dev/null || true)
        wait_for "redis cluster node $port" "$pid" "$SERVICES_TIMEOUT" cluster_node_ping "$port" \
            || { tail_log "$LOGS/$name.log"; die "redis cluster node $port is not answering PING"; }
    done
}

# cluster_is_blank PORT: the node has never joined a cluster (knows only itself, owns no slot)
cluster_is_blank() {
    [ "$(cluster_info_field "$1" cluster_known_nodes)" = 1 ] \
        && [ "$(cluster_info_field "$1" cluster_slots_assigned)" = 0 ]
}

# Creates the cluster when every node is blank; leaves a created one alone. A mix (some nodes blank, some
# in a cluster) means a node lost its nodes.conf, or a create was interrupted: that is not guessed at.
cluster_create_once() {
    local blank=() joined=() port
    for port in "${CLUSTER_PORTS[@]}"; do
        if cluster_is_blank "$port"; then blank+=("$port"); else joined+=("$port"); fi
    done
    [ "${#blank[@]}" -eq 0 ] && return 0
    if [ "${#joined[@]}" -gt 0 ]; then
        die "redis cluster nodes ${blank[*]} are blank but ${joined[*]} are in a cluster (a lost nodes.conf, or an interrupted create). Start afresh with 'scripts/services.sh cluster-clean' (deletes the cluster's data), or add them back with 'redis-cli --cluster add-node 127.0.0.1:<blank port> 127.0.0.1:${joined[0]} --cluster-slave'."
    fi
    local addrs=()
    for port in "${CLUSTER_PORTS[@]}"; do addrs+=("127.0.0.1:$port"); done
    log "creating the redis cluster: ${#CLUSTER_PORTS[@]} nodes, $REDIS_CLUSTER_REPLICAS replica(s) per primary"
    # on one host redis-cli warns that replicas share their primary's host: expected on loopback
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$REDIS_CLUSTER_REPLICAS" --cluster-yes \
        >"$LOGS/redis-cluster-create.log" 2>&1 \
        || { tail_log "$LOGS/redis-cluster-create.log"; die "redis-cli --cluster create failed"; }
}

# cluster_node_ready PORT: the node sees the whole cluster (every node known, all slots served:
# cluster_state:ok alone is not enough with cluster-require-full-coverage no) and, if it is a replica,
# its link to its primary is up (so the first acknowledged write already has a copy).
cluster_node_ready() {
    local info
    info=$(cluster_cli "$1" cluster info 2>/dev/null | tr -d '\r') || return 1
    grep -qx 'cluster_state:ok' <<<"$info" || return 1
    grep -qx 'cluster_slots_ok:16384' <<<"$info" || return 1
    grep -qx "cluster_known_nodes:${#CLUSTER_PORTS[@]}" <<<"$info" || return 1
    info=$(cluster_cli "$1" info replication 2>/dev/null | tr -d '\r') || return 1
    grep -qx 'role:master' <<<"$info" || grep -qx 'master_link_status:up' <<<"$info"
}

# redis-cli --cluster check: every node agrees on the slot map, no slot is open (migrating/importing)
cluster_consistent() { redis-cli --cluster check "127.0.0.1:${CLUSTER_PORTS[0]}" >/dev/null 2>&1; }

cluster_wait_ready() {
    local port name
    for port in "${CLUSTER_PORTS[@]}"; do
        name=$(cluster_node_name "$port")
        wait_for "redis cluster node $port" "$(live_pid "$name" "$(cluster_node_pattern "$port")" || true)" \
            "$SERVICES_TIMEOUT" cluster_node_ready "$port" \
            || { cluster_cli "$port" cluster info >&2 || true; tail_log "$LOGS/$name.log"
                 die "redis cluster node $port is not ready (cluster_state ok, 16384 slots ok, all nodes known, replica in sync)"; }
    done
    wait_for "redis cluster" "" 30 cluster_consistent \
        || { redis-cli --cluster check "127.0.0.1:${CLUSTER_PORTS[0]}" >&2 || true; die "the redis cluster's nodes do not agree on the slot map"; }
}

cluster_up() {
    local port
    cluster_check_settings
    cluster_check_ports
    for port in "${CLUSTER_PORTS[@]}"; do cluster_node_start "$port"; done
    cluster_wait_nodes
    cluster_create_once
    cluster_wait_ready
    echo "${CLUSTER_PORTS[*]}" >"$RUN/redis-cluster.ports"
}

# cluster_any_port: a node of ours that answers (the configured ones first, then those a previous up
# recorded), for status and the node listing
cluster_any_port() {
    local port
    for port in "${CLUSTER_PORTS[@]}" $(cat "$RUN/redis-cluster.ports" 2>/dev/null || true); do
        cluster_node_ping "$port" && { echo "$port"; return 0; }
    done
    return 1
}

# The node table as people read it: address, role (and whose replica), slots; sorted by port.
cluster_print_nodes() {
    local port
    port=$(cluster_any_port) || { echo "redis cluster: no node answers"; return 1; }
    cluster_cli "$port" cluster nodes | tr -d '\r' | awk '
        { id[$1] = $2; sub(/@.*/, "", id[$1]) }
        { line[NR] = $0 }
        END {
            for (i = 1; i <= NR; i++) {
                n = split(line[i], f, " "); addr = f[2]; sub(/@.*/, "", addr)
                flags = f[3]; role = (flags ~ /master/) ? "primary" : "replica"
                if (flags ~ /fail[?]/) state = "  (suspected down)"; else if (flags ~ /fail/) state = "  (down)"; else state = ""
                if (role == "replica") what = "of " id[f[4]]; else { what = "slots"; for (j = 9; j <= n; j++) what = what " " f[j] }
                if (role == "primary" && n < 9) what = "no slots"
                printf "  %-16s %-8s %s%s\n", addr, role, what, state
            }
        }' | sort -t: -k2 -n
}

cluster_url() {
    local url="redis-cluster://127.0.0.1:${CLUSTER_PORTS[0]}" sep='?' port
    # every node is a seed: the client learns the slot map from whichever answers first
    for port in "${CLUSTER_PORTS[@]:1}"; do url+="${sep}node=127.0.0.1:$port"; sep='&'; done
    echo "$url"
}

# The nodes our pid files name (whatever REDIS_CLUSTER_PORTS says now), for down and status.
cluster_pid_ports() {
    local f
    for f in "$RUN"/redis-cluster-*.pid; do
        [ -e "$f" ] || continue
        f=${f##*/redis-cluster-}; echo "${f%.pid}"
    done
}

# All nodes get TERM at once, so that no replica sees its primary gone for a node timeout and takes over
# while the others are still stopping (the roles stay as they were for the next up).
cluster_down() {
    local port pid ports
    ports=$(cluster_pid_ports | sort -n)
    for port in $ports; do
        pid=$(live_pid "$(cluster_node_name "$port")" "$(cluster_node_pattern "$port")") || continue
        log "stopping redis cluster node $port (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
    done
    for port in $ports; do
        stop_service "$(cluster_node_name "$port")" "$(cluster_node_pattern "$port")" 30
    done
    rm -f "$RUN/redis-cluster.ports"
}

# One line per node of ours (pid files and REDIS_CLUSTER_PORTS), then the cluster's own view.
cluster_status() {
    local rc=0 port pid state ports
    ports=$( { printf '%s\n' "${CLUSTER_PORTS[@]}"; cluster_pid_ports; } | sort -nu)
    for port in $ports; do
        if pid=$(live_pid "$(cluster_node_name "$port")" "$(cluster_node_pattern "$port")"); then
            printf '%-20s running  pid %-8s port %s\n' "$(cluster_node_name "$port")" "$pid" "$port"
        else
            printf '%-20s stopped\n' "$(cluster_node_name "$port")"; rc=1
        fi
    done
    if port=$(cluster_any_port); then
        state=$(cluster_info_field "$port" cluster_state)
        echo "redis cluster: cluster_state:$state, slots ok $(cluster_info_field "$port" cluster_slots_ok)/16384 (asked 127.0.0.1:$port)"
        cluster_print_nodes || true
        [ "$state" = ok ] || rc=1
    else
        rc=1
    fi
    return $rc
}

cluster_clean() {
    cluster_down
    log "deleting the redis cluster's data and logs under $LOCAL"
    rm -rf "$DATA/redis-cluster"
    rm -f "$LOGS"/redis-cluster-*.log
}

# ------------------------------------------------------------------------------------------- mariadb

mysql_socket() {
    local s=$RUN/mysqld.sock
    # unix socket paths are limited to 107 bytes
    if [ "${#s}" -gt 100 ]; then s=/tmp/flashsale-mysqld-$(printf '%s' "$LOCAL" | md5sum | cut -c1-12).sock; fi
    echo "$s"
}

mysql_write_conf() {
    local sock; sock=$(mysql_socket)
    mkdir -p "$CONF"
    cat >"$CONF/my.cnf" <<EOF
# generated by scripts/services.sh -- edits are overwritten on every 'up'
[mysqld]
datadir=$DATA/mysql
port=$MYSQL_PORT
bind-address=127.0.0.1
socket=$sock
pid-file=$RUN/mysql.pid
log-error=$LOGS/mysql.log
$( [ "$(id -u)" -eq 0 ] && echo "user=root" )
skip-name-resolve
skip-log-bin
performance_schema=OFF
max_connections=$MYSQL_MAX_CONNECTIONS
innodb_flush_log_at_trx_commit=$MYSQL_FLUSH_LOG_AT_TRX_COMMIT
innodb_buffer_pool_size=$MYSQL_BUFFER_POOL_SIZE
innodb_log_file_size=256M
character-set-server=utf8mb4
collation-server=utf8mb4_unicode_ci
default-time-zone=+00:00
max_allowed_packet=64M

[client]
socket=$sock
port=$MYSQL_PORT
user=root
EOF
}

mysql_sock_cli() { mariadb --defaults-file="$CONF/my.cnf" --protocol=SOCKET -uroot "$@"; }
mysql_tcp_cli() { mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot "$@"; }
mysql_sock_ping() { mariadb-admin --defaults-file="$CONF/my.cnf" --protocol=SOCKET -uroot ping; }
mysql_tcp_ready() { [ "$(mysql_tcp_cli -N -B -e 'SELECT 1' flashsale 2>/dev/null)" = 1 ]; }

mysql_up() {
    local pid
    if pid=$(live_pid mysql mariadbd); then
        check_port_matches mysql "$MYSQL_PORT" MYSQL_PORT
        log "mariadb already running (pid $pid, port $MYSQL_PORT)"
        mysql_write_conf
    else
        ensure_port_free "$MYSQL_PORT" MYSQL_PORT mariadb
        mysql_write_conf
        if [ ! -d "$DATA/mysql/mysql" ]; then
            log "initialising mariadb datadir $DATA/mysql"
            rm -rf "$DATA/mysql"; mkdir -p "$DATA/mysql"
            mariadb-install-db --defaults-file="$CONF/my.cnf" --auth-root-authentication-method=normal \
                --skip-test-db >"$LOGS/mysql-install.log" 2>&1 \
                || { tail_log "$LOGS/mysql-install.log"; rm -rf "$DATA/mysql"; die "mariadb-install-db failed"; }
        fi
        rm -f "$RUN/mysql.pid"
        log "starting mariadb on 127.0.0.1:$MYSQL_PORT (innodb_flush_log_at_trx_commit=$MYSQL_FLUSH_LOG_AT_TRX_COMMIT)"
        run_detached "$RUN/mysql.pid" "$LOGS/mysql.console.log" mariadbd --defaults-file="$CONF/my.cnf"
        echo "$MYSQL_PORT" >"$RUN/mysql.port"
        pid=$(cat "$RUN/mysql.pid")
    fi
    wait_for mariadb "$pid" "$SERVICES_TIMEOUT" mysql_sock_ping \
        || { tail_log "$LOGS/mysql.console.log" "$LOGS/mysql.log"; die "mariadb is not answering on its socket"; }
    # mariadbd rewrites its pid-file with its own pid (the same process: we exec'd it)
    # root over TCP from 127.0.0.1 (and ::1) without a password, and the flashsale database
    mysql_sock_cli -e "
        CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
        GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
        CREATE USER IF NOT EXISTS 'root'@'::1' IDENTIFIED BY '';
        GRANT ALL PRIVILEGES ON *.* TO 'root'@'::1' WITH GRANT OPTION;
        CREATE DATABASE IF NOT EXISTS flashsale CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;" \
        || die "could not set up root@127.0.0.1 / database flashsale"
    wait_for mariadb "$pid" 30 mysql_tcp_ready \
        || { tail_log "$LOGS/mysql.log"; die "mariadb does not answer SELECT 1 over TCP on 127.0.0.1:$MYSQL_PORT as root"; }
}

# --------------------------------------------------------------------------------------------- kafka

kafka_java_tool() {
    java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
        -Dlog4j2.configurationFile="$REPO/scripts/kafka/log4j2-tools.properties" \
        -cp "$KAFKA_LIBS/*" "$@"
}

kafka_write_conf() {
    mkdir -p "$CONF"
    cat >"$CONF/kafka.properties" <<EOF
# generated by scripts/services.sh -- edits are overwritten on every 'up'
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA/kafka
num.partitions=6
default.replication.factor=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
min.insync.replicas=1
log.retention.hours=168
log.segment.bytes=104857600
# One broker on a small machine: the defaults (3 network, 8 I/O threads) are sized for a server and
# only add context switches here.
num.network.threads=2
num.io.threads=2
EOF
}

kafka_list() {
    timeout 60 java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -Dlog4j2.configurationFile="$REPO/scripts/kafka/log4j2-tools.properties" \
        -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "127.0.0.1:$KAFKA_PORT" --list 2>>"$LOGS/kafka-tools.log"
}
kafka_port_open() { port_open "$KAFKA_PORT"; }

kafka_up() {
    local pid
    if pid=$(live_pid kafka kafka.Kafka); then
        check_port_matches kafka "$KAFKA_PORT" KAFKA_PORT
        log "kafka already running (pid $pid, port $KAFKA_PORT)"
    else
        ensure_port_free "$KAFKA_PORT" KAFKA_PORT kafka
        ensure_port_free "$KAFKA_CONTROLLER_PORT" KAFKA_CONTROLLER_PORT "kafka controller"
        kafka_write_conf
        if [ ! -f "$DATA/kafka/meta.properties" ]; then
            local cluster_id
            cluster_id=$(kafka_java_tool kafka.tools.StorageTool random-uuid 2>>"$LOGS/kafka-tools.log" | tail -1)
            [ -n "$cluster_id" ] || die "kafka random-uuid failed (see $LOGS/kafka-tools.log)"
            log "formatting kafka log dir $DATA/kafka (cluster id $cluster_id)"
            rm -rf "$DATA/kafka"; mkdir -p "$DATA/kafka"
            kafka_java_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$CONF/kafka.properties" \
                >>"$LOGS/kafka-tools.log" 2>&1 \
                || { tail_log "$LOGS/kafka-tools.log"; die "kafka storage format failed"; }
        fi
        rm -f "$RUN/kafka.pid"
        log "starting kafka on 127.0.0.1:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT)"
        # shellcheck disable=SC2086
        run_detached "$RUN/kafka.pid" "$LOGS/kafka.out" \
            java $KAFKA_HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
            -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
            -Dkafka.logs.dir="$LOGS" -Dlog4j2.configurationFile="$REPO/scripts/kafka/log4j2.properties" \
            -cp "$KAFKA_LIBS/*" kafka.Kafka "$CONF/kafka.properties"
        echo "$KAFKA_PORT" >"$RUN/kafka.port"
        pid=$(cat "$RUN/kafka.pid")
    fi
    wait_for kafka "$pid" "$SERVICES_TIMEOUT" kafka_port_open \
        || { tail_log "$LOGS/kafka.out" "$LOGS/kafka.log"; die "kafka is not listening on 127.0.0.1:$KAFKA_PORT"; }
    # ready = a topic listing succeeds
    local existing deadline=$((SECONDS + SERVICES_TIMEOUT))
    until existing=$(kafka_list); do
        if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            tail_log "$LOGS/kafka-tools.log" "$LOGS/kafka.out" "$LOGS/kafka.log"
            die "kafka does not answer a topic listing on 127.0.0.1:$KAFKA_PORT"
        fi
        sleep 1
    done
    local t name parts
    for t in "${KAFKA_TOPICS[@]}"; do
        name=${t%%:*}; parts=${t#*:}
        if ! grep -qx -- "$name" <<<"$existing"; then
            log "creating topic $name ($parts partitions)"
            kafka_java_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
                --create --if-not-exists --topic "$name" --partitions "$parts" --replication-factor 1 \
                >>"$LOGS/kafka-tools.log" 2>&1 \
                || { tail_log "$LOGS/kafka-tools.log"; die "could not create topic $name"; }
        fi
    done
}

# ---------------------------------------------------------------------------------------- prometheus

prometheus_ready() { curl -fsS "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" >/dev/null 2>&1; }

# prometheus_up TOPOLOGY: prometheus/prometheus.yml scrapes the single engine and sink,
# prometheus/prometheus.cluster.yml every engine and sink of the cluster topology (scripts/stack.sh).
prometheus_up() {
    local pid config=prometheus/prometheus.yml
    [ "$1" = cluster ] && config=prometheus/prometheus.cluster.yml
    if pid=$(live_pid prometheus prometheus); then
        check_port_matches prometheus "$PROMETHEUS_PORT" PROMETHEUS_PORT
        log "prometheus already running (pid $pid, port $PROMETHEUS_PORT)"
    else
        ensure_port_free "$PROMETHEUS_PORT" PROMETHEUS_PORT prometheus
        mkdir -p "$DATA/prometheus"
        log "starting prometheus on 127.0.0.1:$PROMETHEUS_PORT with $config"
        run_detached "$RUN/prometheus.pid" "$LOGS/prometheus.log" \
            prometheus --config.file="$REPO/$config" \
            --storage.tsdb.path="$DATA/prometheus" --storage.tsdb.retention.time=7d \
            --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" --web.enable-lifecycle
        echo "$PROMETHEUS_PORT" >"$RUN/prometheus.port"
        pid=$(cat "$RUN/prometheus.pid")
    fi
    wait_for prometheus "$pid" "$SERVICES_TIMEOUT" prometheus_ready \
        || { tail_log "$LOGS/prometheus.log"; die "prometheus is not ready on 127.0.0.1:$PROMETHEUS_PORT"; }
    echo "prometheus: http://127.0.0.1:$PROMETHEUS_PORT"
}

# ---------------------------------------------------------------------------------------------- main

# The topology `up` starts: TOPOLOGY, default single (what `make up` always did).
up_topology() {
    case ${TOPOLOGY:-single} in
        single|cluster) echo "${TOPOLOGY:-single}" ;;
        *) die "TOPOLOGY must be single or cluster (got '$TOPOLOGY')" ;;
    esac
}

# The topology status and env describe: TOPOLOGY if given, else the one `up` last started here.
current_topology() {
    if [ -n "${TOPOLOGY:-}" ]; then up_topology
    else cat "$RUN/topology" 2>/dev/null || echo single; fi
}

# export lines, quoted for eval (a cluster URL has ? and &)
print_env() {
    local redis_url="redis://127.0.0.1:$REDIS_PORT"
    [ "$(current_topology)" = cluster ] && redis_url=$(cluster_url)
    printf 'export REDIS_URL=%q\n' "$redis_url"
    printf 'export DATABASE_URL=%q\n' "mysql://root@127.0.0.1:$MYSQL_PORT/flashsale"
    printf 'export KAFKA_BROKERS=%q\n' "127.0.0.1:$KAFKA_PORT"
}

# Exit 0 when the topology's redis, mysql and kafka all run. The single Redis is listed in the cluster
# topology only when it runs, and the cluster in the single one likewise, so nothing of ours goes unseen.
status() {
    local topology all=0 name pattern pid port
    topology=$(current_topology)
    for s in redis:redis-server mysql:mariadbd kafka:kafka.Kafka prometheus:prometheus; do
        name=${s%%:*}; pattern=${s#*:}
        if pid=$(live_pid "$name" "$pattern"); then
            port=$(cat "$RUN/$name.port" 2>/dev/null || echo '?')
            printf '%-11s running  pid %-8s port %s\n' "$name" "$pid" "$port"
        elif [ "$name" = redis ] && [ "$topology" = cluster ]; then
            continue
        else
            printf '%-11s stopped\n' "$name"
            [ "$name" = prometheus ] || all=1
        fi
    done
    if [ "$topology" = cluster ]; then
        cluster_status || all=1
    elif [ -n "$(cluster_pid_ports)" ]; then
        cluster_status || true
    fi
    echo "(FLASHSALE_LOCAL=$LOCAL, topology $topology)"
    return $all
}

# Stops whatever our pid files say runs, whichever topology started it.
down() {
    stop_service prometheus prometheus 30
    stop_service kafka kafka.Kafka 60
    stop_service mysql mariadbd 60
    stop_service redis redis-server 30
    cluster_down
    rm -f "$RUN/topology"
}

with_lock() {
    mkdir -p "$RUN"
    exec 9>"$RUN/services.flock"
    flock -w 600 9 || die "another scripts/services.sh is running (lock $RUN/services.flock)"
}

# check_ports TOPOLOGY: every port `up` will bind, checked first, so that a conflict does not leave half
# of the services started.
check_ports() {
    if [ "$1" = cluster ]; then
        cluster_check_settings
        cluster_check_ports
    else
        live_pid redis redis-server >/dev/null || ensure_port_free "$REDIS_PORT" REDIS_PORT redis
    fi
    live_pid mysql mariadbd >/dev/null || ensure_port_free "$MYSQL_PORT" MYSQL_PORT mariadb
    if ! live_pid kafka kafka.Kafka >/dev/null; then
        ensure_port_free "$KAFKA_PORT" KAFKA_PORT kafka
        ensure_port_free "$KAFKA_CONTROLLER_PORT" KAFKA_CONTROLLER_PORT "kafka controller"
    fi
}

up() {
    local topology start=$SECONDS redis_desc
    topology=$(up_topology)
    mkdir -p "$RUN" "$LOGS" "$DATA" "$CONF"
    with_lock
    install_all
    check_ports "$topology"
    if [ "$topology" = cluster ]; then
        cluster_up
        redis_desc="redis cluster $(cluster_url)"
    else
        redis_up
        redis_desc="redis 127.0.0.1:$REDIS_PORT"
    fi
    mysql_up
    kafka_up
    echo "$topology" >"$RUN/topology"
    log "ready in $((SECONDS - start))s: $redis_desc, mariadb 127.0.0.1:$MYSQL_PORT, kafka 127.0.0.1:$KAFKA_PORT (data in $LOCAL)"
}

cluster_up_alone() {
    local start=$SECONDS
    mkdir -p "$RUN" "$LOGS" "$DATA"
    with_lock
    install_packages
    cluster_up
    log "redis cluster ready in $((SECONDS - start))s: $(cluster_url)"
    cluster_print_nodes
}

cmd=${1:-}
case "$cmd" in
    up)
        up
        ;;
    down)
        [ -d "$RUN" ] || exit 0
        with_lock
        down
        ;;
    status)
        status
        ;;
    clean)
        if [ -d "$RUN" ]; then with_lock; down; fi
        log "deleting service data, logs and configs under $LOCAL"
        rm -rf "$DATA/redis" "$DATA/redis-cluster" "$DATA/mysql" "$DATA/kafka" "$DATA/prometheus" "$CONF"
        rm -f "$LOGS"/redis.log "$LOGS"/redis-cluster-*.log "$LOGS"/mysql*.log "$LOGS"/kafka*.log* \
            "$LOGS"/kafka.out "$LOGS"/prometheus.log
        rm -f "$RUN/services.flock" "$RUN/services.lock"
        rmdir "$DATA" "$LOGS" "$RUN" 2>/dev/null || true
        ;;
    prometheus)
        install_packages
        mkdir -p "$RUN" "$LOGS" "$DATA"
        with_lock
        prometheus_up "$(current_topology)"
        ;;
    install)
        install_all
        ;;
    env)
        print_env
        ;;
    redis-socket)
        s=$(redis_socket)
        [ -S "$s" ] && live_pid redis redis-server >/dev/null && echo "$s"
        exit 0
        ;;
    cluster-up)
        cluster_up_alone
        ;;
    cluster-down)
        [ -d "$RUN" ] || exit 0
        with_lock
        cluster_down
        ;;
    cluster-status)
        cluster_status
        ;;
    cluster-url)
        cluster_url
        ;;
    cluster-clean)
        if [ -d "$RUN" ]; then with_lock; fi
        cluster_clean
        ;;
    *)
        echo "usage: $0 up|down|status|clean|prometheus|install|env|redis-socket|cluster-up|cluster-down|cluster-status|cluster-url|cluster-clean" >&2
        exit 2
        ;;
esac
