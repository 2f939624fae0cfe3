# flashsale developer entry points. Quick start: `make up`, then `make test`.
#
# Local state (data, logs, pid files, generated JWT secret) lives in $(FLASHSALE_LOCAL) (default .local/).
# Environment honoured: REDIS_PORT MYSQL_PORT KAFKA_PORT KAFKA_CONTROLLER_PORT PROMETHEUS_PORT, REDIS_URL
# DATABASE_URL KAFKA_BROKERS DATA_PLATFORM_URL LISTEN_ADDR SINK_LISTEN_ADDR ADMIN_API_KEY JWT_SECRET,
# CARGO_TARGET_DIR (default ~/.cache/flashsale-target, shared by every clone and by CI).
#
# TOPOLOGY=cluster (up, test, restart, status, env): a Redis Cluster of 3 primaries + 3 replicas
# (REDIS_CLUSTER_PORTS, default 7001-7006) instead of the single Redis, two engines (ENGINE_ADDRS) behind
# HAProxy on LISTEN_ADDR and two sinks (SINK_ADDRS); see scripts/stack.sh and scripts/services.sh.
# Without it, up and test are the single-node default; down stops whatever runs.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
# one thing at a time, in the order written (test: services before tests), even under make -j
.NOTPARALLEL:

export CARGO_TARGET_DIR ?= $(HOME)/.cache/flashsale-target
export FLASHSALE_LOCAL ?= $(CURDIR)/.local

REDIS_PORT ?= 6379
MYSQL_PORT ?= 3306
KAFKA_PORT ?= 9092
export REDIS_PORT MYSQL_PORT KAFKA_PORT

# Only when given, so that status, env and restart can follow the topology `up` last started.
ifdef TOPOLOGY
ifeq ($(filter $(TOPOLOGY),single cluster),)
$(error TOPOLOGY must be single or cluster, not '$(TOPOLOGY)')
endif
export TOPOLOGY
endif

# What the tests connect to. DATABASE_URL is the server (no database): tests create their own databases.
# On the cluster: every node of it (scripts/services.sh cluster-url; its redis-cluster:// scheme is how
# the tests tell), and the dashboard check scrapes every engine and sink rather than the proxy.
ifeq ($(TOPOLOGY),cluster)
TEST_REDIS_URL ?= $(shell scripts/services.sh cluster-url)
ENGINE_ADDRS ?= 127.0.0.1:8091 127.0.0.1:8092
SINK_ADDRS ?= 127.0.0.1:8081 127.0.0.1:8083
export ENGINE_METRICS_URLS ?= $(addprefix http://,$(ENGINE_ADDRS))
export SINK_METRICS_URLS ?= $(addprefix http://,$(SINK_ADDRS))
else
TEST_REDIS_URL ?= $(or $(REDIS_URL),redis://127.0.0.1:$(REDIS_PORT))
endif
TEST_DATABASE_URL ?= mysql://root@127.0.0.1:$(MYSQL_PORT)
TEST_KAFKA_BROKERS ?= $(or $(KAFKA_BROKERS),127.0.0.1:$(KAFKA_PORT))

.PHONY: help up down restart clean status logs services services-down prometheus build test \
        test-rust test-openapi test-fuzz test-rules test-dashboards fuzz bench limited-rush fmt fmt-check lint env build-loadtest big-sale sold-out-bench sink-scale engine-cpu

help:
	@echo "make up          services (redis, mariadb, kafka) + build + mock platform, sink, engine; waits for /readyz"
	@echo "make up TOPOLOGY=cluster    the same on a Redis Cluster (3 primaries + 3 replicas), 2 engines behind HAProxy, 2 sinks"
	@echo "make down        stop engine(s), sink(s), mock platform, HAProxy, then the services (data kept)"
	@echo "make restart     restart engine, sink and mock platform (after a rebuild), in the topology that runs"
	@echo "make clean       down + delete $(FLASHSALE_LOCAL)"
	@echo "make status      what runs;   make logs: tail the logs;   make env: connection variables"
	@echo "make test        services up, cargo test --release (reuses make up's build), promtool rule tests, dashboard check"
	@echo "make test TOPOLOGY=cluster  the same tests against the Redis Cluster (TEST_REDIS_URL = the cluster)"
	@echo "make fuzz        schemathesis (all checks, all phases) against the running stack (make up)"
	@echo "make bench       loadtest/bench.sh (writes docs/benchmarks.md), then make big-sale, make sold-out-bench and make sink-scale"
	@echo "make big-sale    loadtest/big_sale.sh: the success path and the pipeline per event (docs/pipeline-benchmark.md)"
	@echo "make sink-scale  loadtest/sink_scale.sh: one sink vs two sinks on the same backlog (docs/sink-scaling.md)"
	@echo "make engine-cpu  loadtest/engine_cpu.sh: engine CPU per request, this build vs CPU_BEFORE_BIN (docs/engine-cpu.md)"
	@echo "make sold-out-bench  loadtest/sold_out.sh: sold-out markers off/on with wrk, restock-to-grant time"
	@echo "make limited-rush   sale rules under load (goose + wrk) against the running engine (make up; LR_HOST=URL)"
	@echo "make fmt | fmt-check | lint   rustfmt / clippy -D warnings"
	@echo "make services | services-down | prometheus   only the backing services / a local Prometheus (TOPOLOGY= as for up)"

up:
	scripts/stack.sh up

down:
	scripts/stack.sh down

restart:
	scripts/stack.sh restart

clean:
	scripts/stack.sh stop
	scripts/services.sh clean
	rm -rf "$(FLASHSALE_LOCAL)/logs" "$(FLASHSALE_LOCAL)/run" "$(FLASHSALE_LOCAL)/env" "$(FLASHSALE_LOCAL)/bench" \
	  "$(FLASHSALE_LOCAL)/haproxy"
	rmdir "$(FLASHSALE_LOCAL)" 2>/dev/null || true

status:
	@scripts/stack.sh status

logs:
	scripts/stack.sh logs

env:
	@scripts/stack.sh env

services:
	scripts/services.sh up

services-down:
	scripts/services.sh down

prometheus:
	scripts/services.sh prometheus

build:
	scripts/build.sh

test: services test-rust test-openapi test-fuzz test-rules test-dashboards

# --release: the tests reuse the engine, sink and dependencies that `make up` built (see Cargo.toml).
test-rust:
	scripts/build.sh --tests
	REDIS_URL='$(TEST_REDIS_URL)' DATABASE_URL='$(TEST_DATABASE_URL)' KAFKA_BROKERS='$(TEST_KAFKA_BROKERS)' \
	  cargo test --release

test-openapi:
	cargo run -q --release --bin flashsale -- openapi | python3 scripts/validate_openapi.py

# A bounded schemathesis pass against an engine the script starts itself (release build, own database,
# key prefix and topics on the test services); fails on any failure. See docs/api.md.
test-fuzz:
	scripts/build.sh
	REDIS_URL='$(TEST_REDIS_URL)' KAFKA_BROKERS='$(TEST_KAFKA_BROKERS)' scripts/fuzz.sh bounded

fuzz:
	scripts/fuzz.sh stack

test-rules:
	@if compgen -G 'prometheus/tests/*.yml' >/dev/null; then \
	  echo "promtool test rules prometheus/tests/*.yml"; promtool test rules prometheus/tests/*.yml; fi
	@if compgen -G 'prometheus/rules/*.yml' >/dev/null; then \
	  echo "promtool check rules prometheus/rules/*.yml"; promtool check rules prometheus/rules/*.yml; fi

test-dashboards:
	@if [ -f scripts/check_dashboards.py ]; then \
	  echo "python3 scripts/check_dashboards.py"; python3 scripts/check_dashboards.py; fi

bench:
	bash loadtest/bench.sh
	@if [ "$(TOPOLOGY)" != cluster ]; then bash loadtest/big_sale.sh && bash loadtest/sold_out.sh; fi
	bash loadtest/sink_scale.sh

# The herd after the sell-out (issue 10): sold-out markers off and on side by side with wrk, the
# restock-to-grant time across two engines, Unix socket vs TCP; writes the sold-out block of
# docs/benchmarks.md and its charts.
sold-out-bench:
	bash loadtest/sold_out.sh

# The big sale (issue 12): the success path and the pipeline's cost per event, side by side with the
# hot path alone (and a previous build: BIG_BEFORE_BIN=.../flashsale); writes docs/pipeline-benchmark.md.
big-sale:
	bash loadtest/big_sale.sh

# The engine's CPU per request that reaches Redis and per /healthz (issue 10), side by side with a previous
# build (CPU_BEFORE_BIN=.../flashsale) with wrk. Writes docs/engine-cpu.md.
engine-cpu:
	bash loadtest/engine_cpu.sh

# Sinks side by side (issue 12): one backlog applied by one sink and by two sinks of one group, in
# alternation; TOPOLOGY=cluster makes the backlog on the Redis Cluster. Writes docs/sink-scaling.md.
sink-scale:
	TOPOLOGY=$(TOPOLOGY) bash loadtest/sink_scale.sh

# The limited rush (issue 11's sale rules under load: goose scenario limited-rush and its wrk twin) against
# the running engine, `make up` by default (HAProxy's address with TOPOLOGY=cluster); knobs in the script.
LR_HOST ?= http://$(or $(LISTEN_ADDR),127.0.0.1:8080)
limited-rush: build-loadtest
	bash loadtest/limited_rush.sh '$(LR_HOST)'

fmt:
	cargo fmt --all

fmt-check:
	cargo fmt --all -- --check

lint:
	cargo clippy --workspace --all-targets -- -D warnings

# The load-test client is not part of `make up`/`make test`; CI compiles it so it never rots.
build-loadtest:
	cargo build --release -p flashsale-loadtest
