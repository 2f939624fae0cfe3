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
#   scripts/services.sh install     only install the packages and the Kafka jars
#   scripts/services.sh env         print the connection variables (export lines)
#
# Environment (defaults): REDIS_PORT 6379, REDIS_APPENDFSYNC everysec, MYSQL_PORT 3306,
# MYSQL_FLUSH_LOG_AT_TRX_COMMIT 2, MYSQL_BUFFER_POOL_SIZE 256M, MYSQL_MAX_CONNECTIONS 500,
# KAFKA_PORT 9092, KAFKA_CONTROLLER_PORT 9093, KAFKA_HEAP_OPTS "-Xms512m -Xmx512m",
# PROMETHEUS_PORT 9090, SERVICES_TIMEOUT 120 (seconds to wait for each service),
# FLASHSALE_SKIP_INSTALL=1 (never call apt-get / mvn).
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

KAFKA_VERSION=4.1.0
KAFKA_LIBS=$CACHE/kafka-$KAFKA_VERSION/libs
KAFKA_TOPICS=("flashsale.events:6" "flashsale.events.dlq:1")

RUN=$LOCAL/run
LOGS=$LOCAL/logs
DATA=$LOCAL/data
CONF=$LOCAL/conf

APT_PACKAGES=(redis-server redis-tools mariadb-server prometheus)

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
    # fd 9 is the services.sh lock: the daemon must not inherit (and so hold) it
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$logfile" 2>&1 9>&- &
    local i
    for i in $(seq 1 50); do [ -s "$pidfile" ] && return 0; sleep 0.1; done
    die "could not start: $*"
}

# --------------------------------------------------------------------------------------------- install

install_packages() {
    local missing=() cmd pkg
    for pair in redis-server:redis-server redis-cli:redis-tools mariadbd:mariadb-server \
                mariadb:mariadb-server mariadb-admin:mariadb-server mariadb-install-db:mariadb-server \
                prometheus:prometheus promtool:prometheus; do
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
            --maxclients 10000 --tcp-backlog 511 9>&- \
            || { tail_log "$LOGS/redis.log"; die "redis-server failed to start"; }
        echo "$REDIS_PORT" >"$RUN/redis.port"
        local _i; for _i in $(seq 1 50); do [ -s "$RUN/redis.pid" ] && break; sleep 0.1; done
        pid=$(cat "$RUN/redis.pid" 2>/dev/null || true)
    fi
    wait_for redis "$pid" "$SERVICES_TIMEOUT" redis_ping \
        || { tail_log "$LOGS/redis.log"; die "redis is not answering PING on 127.0.0.1:$REDIS_PORT"; }
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

prometheus_up() {
    local pid
    if pid=$(live_pid prometheus prometheus); then
        check_port_matches prometheus "$PROMETHEUS_PORT" PROMETHEUS_PORT
        log "prometheus already running (pid $pid, port $PROMETHEUS_PORT)"
    else
        ensure_port_free "$PROMETHEUS_PORT" PROMETHEUS_PORT prometheus
        mkdir -p "$DATA/prometheus"
        log "starting prometheus on 127.0.0.1:$PROMETHEUS_PORT with prometheus/prometheus.yml"
        run_detached "$RUN/prometheus.pid" "$LOGS/prometheus.log" \
            prometheus --config.file="$REPO/prometheus/prometheus.yml" \
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

print_env() {
    cat <<EOF
export REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export DATABASE_URL=mysql://root@127.0.0.1:$MYSQL_PORT/flashsale
export KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
EOF
}

status() {
    local all=0 name pattern pid port
    for s in redis:redis-server mysql:mariadbd kafka:kafka.Kafka prometheus:prometheus; do
        name=${s%%:*}; pattern=${s#*:}
        if pid=$(live_pid "$name" "$pattern"); then
            port=$(cat "$RUN/$name.port" 2>/dev/null || echo '?')
            printf '%-11s running  pid %-8s port %s\n' "$name" "$pid" "$port"
        else
            printf '%-11s stopped\n' "$name"
            [ "$name" = prometheus ] || all=1
        fi
    done
    echo "(FLASHSALE_LOCAL=$LOCAL)"
    return $all
}

down() {
    stop_service prometheus prometheus 30
    stop_service kafka kafka.Kafka 60
    stop_service mysql mariadbd 60
    stop_service redis redis-server 30
}

with_lock() {
    mkdir -p "$RUN"
    exec 9>"$RUN/services.flock"
    flock -w 600 9 || die "another scripts/services.sh is running (lock $RUN/services.flock)"
}

cmd=${1:-}
case "$cmd" in
    up)
        start=$SECONDS
        mkdir -p "$RUN" "$LOGS" "$DATA" "$CONF"
        with_lock
        install_all
        # check every port first, so a conflict does not leave half of the services started
        live_pid redis redis-server >/dev/null || ensure_port_free "$REDIS_PORT" REDIS_PORT redis
        live_pid mysql mariadbd >/dev/null || ensure_port_free "$MYSQL_PORT" MYSQL_PORT mariadb
        if ! live_pid kafka kafka.Kafka >/dev/null; then
            ensure_port_free "$KAFKA_PORT" KAFKA_PORT kafka
            ensure_port_free "$KAFKA_CONTROLLER_PORT" KAFKA_CONTROLLER_PORT "kafka controller"
        fi
        redis_up
        mysql_up
        kafka_up
        log "ready in $((SECONDS - start))s: redis 127.0.0.1:$REDIS_PORT, mariadb 127.0.0.1:$MYSQL_PORT, kafka 127.0.0.1:$KAFKA_PORT (data in $LOCAL)"
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
        rm -rf "$DATA/redis" "$DATA/mysql" "$DATA/kafka" "$DATA/prometheus" "$CONF"
        rm -f "$LOGS"/redis.log "$LOGS"/mysql*.log "$LOGS"/kafka*.log* "$LOGS"/kafka.out "$LOGS"/prometheus.log
        rm -f "$RUN/services.flock" "$RUN/services.lock"
        rmdir "$DATA" "$LOGS" "$RUN" 2>/dev/null || true
        ;;
    prometheus)
        install_packages
        mkdir -p "$RUN" "$LOGS" "$DATA"
        with_lock
        prometheus_up
        ;;
    install)
        install_all
        ;;
    env)
        print_env
        ;;
    *)
        echo "usage: $0 up|down|status|clean|prometheus|install|env" >&2
        exit 2
        ;;
esac
