# kestrelq: the only entry point for humans and CI.
# `make up` runs the stack in containers; `make test` runs everything CI runs (lint, types,
# conf-check, and every test: unit, server, chaos, containers, bench). `make help` lists the
# targets; docs/testing.md says what each test target runs.

.DEFAULT_GOAL := all
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
sources = kestrelq app bench scripts build_backend setup.py tests

.PHONY: help
help:  ## this list
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  make %-16s %s\n", $$1, $$2}'

# ---- Python environment -------------------------------------------------------------------
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,fast,bench]'
	touch $@

.PHONY: install
install: $(VENV)/.installed  ## the venv in .venv (editable install, with test and bench extras)

.PHONY: format
format: install  ## ruff format and ruff check --fix
	$(PY) -m ruff format $(sources)
	$(PY) -m ruff check --fix $(sources)

.PHONY: lint
lint: install  ## ruff check and ruff format --check
	$(PY) -m ruff check $(sources)
	$(PY) -m ruff format --check $(sources)

# The tests are checked one directory at a time, with MYPYPATH set as pytest sets sys.path
# (tests/, the directory itself, app/; tests/app for the web tests' images): every test
# directory may have its own conftest and helpers imported by bare name. See tests/mypy.ini.
TEST_DIRS := tests $(patsubst %/,%,$(sort $(dir $(wildcard tests/*/*.py))))

.PHONY: typecheck
typecheck: install  ## mypy: strict on the package, app/ and bench/; the tests checked, not strict
	$(PY) -m mypy
	@set -e; for d in $(TEST_DIRS); do \
		MYPYPATH=tests:$$d:app:tests/app $(PY) -m mypy --config-file tests/mypy.ini \
			--no-error-summary $$d/*.py; \
	done; echo "tests: no issues found in $(words $(TEST_DIRS)) directories"

# ---- Tests ----------------------------------------------------------------------------------
# Markers (registered in pyproject.toml, set by path in tests/conftest.py): `server` starts real
# processes (the queue server, workers, supervisord); `chaos` kills them while messages flow;
# `docker` needs a Docker engine and Compose v2; `external` needs programs CI installs from
# Debian (memcached, beanstalkd, redis-server, libmemcached-tools); `bench` runs the benchmark
# harness. Tests with none of these run in this process.
PYTEST := $(PY) -m pytest
# Branch coverage of kestrelq, the server subprocesses included (pyproject.toml [tool.coverage]).
COVERAGE := --cov --cov-report=term:skip-covered

.PHONY: test test-unit test-server test-host-chaos test-docker test-external test-local soak
# The container tests need an engine and the base image: base-image sets both up first.
test: install lint typecheck conf-check base-image  ## everything CI runs: checks, then every test, with coverage
	$(PYTEST) $(COVERAGE)
	$(MAKE) test-compiled

# The hot path compiled with mypyc (kestrelq/hotpath.py), into build/compiled beside a copy of
# the package: the checkout stays pure Python, so an edit is never hidden by a stale extension.
# test-compiled runs the tests of those modules against it, from that directory, so that the
# server processes the tests start load it too (conftest.py checks that they all do).
.PHONY: compile test-compiled
COMPILED := build/compiled
COMPILED_TESTS := tests/protocol tests/queue tests/journal tests/server tests/chaos/test_server_crash.py
compile: install  ## the hot path compiled with mypyc into build/compiled (docs/performance.md)
	$(PY) scripts/compile_hot_path.py $(COMPILED)

test-compiled: compile  ## the core and server tests again, against the compiled hot path
	cd $(COMPILED) && KESTRELQ_EXPECT_COMPILED=1 $(abspath $(PY)) -m pytest \
	    -c $(CURDIR)/pyproject.toml --rootdir $(CURDIR) $(addprefix $(CURDIR)/,$(COMPILED_TESTS))

test-unit: install  ## tests that start no process (seconds)
	$(PYTEST) -m "not server and not chaos and not docker and not external"

test-server: install  ## tests against real server, worker and supervisord processes
	$(PYTEST) -m "server and not chaos and not docker and not external"

test-host-chaos: install  ## kill -9 of the server and workers on this machine (no Docker)
	$(PYTEST) -m "chaos and not docker"

test-docker: install base-image  ## every test that needs Docker (images, container chaos)
	$(PYTEST) -m docker

test-external: install  ## tests needing memcached, beanstalkd, redis-server, libmemcached-tools
	$(PYTEST) -m external

test-local: install  ## every test that needs neither Docker nor the external programs
	$(PYTEST) -m "not docker and not external"

# `make test` runs the soak for 15 s; this runs it for SOAK_SECONDS and prints its report.
SOAK_SECONDS ?= 300
soak: install  ## misbehaving clients beside producers and workers for SOAK_SECONDS (300), with a report
	KESTRELQ_SOAK_SECONDS=$(SOAK_SECONDS) $(PYTEST) -m soak -s -p no:cacheprovider -o timeout=$$(( $(SOAK_SECONDS) + 600 ))

.PHONY: all
all: lint typecheck conf-check test-unit  ## the default: checks and the unit tests

# ---- Queue server -----------------------------------------------------------------------------
.PHONY: serve
serve: install  ## kestrelq serve on 127.0.0.1:22133, journals in var/queue
	$(VENV)/bin/kestrelq serve --data-dir var/queue

# ---- supervisord configuration and host mode ------------------------------------------------
# conf/ is rendered from conf/stack.toml by `kestrelq conf` and committed; conf-check (part of
# `make test`) fails when the committed files differ from a fresh rendering.
HOST_VAR := var/host
HOST_PASSWORD := $(HOST_VAR)/run/supervisor.password
SUPERVISORCTL := $(VENV)/bin/supervisorctl -c conf/supervisord.conf

.PHONY: conf conf-check host-up host-status host-down
conf: install  ## render conf/ from conf/stack.toml
	$(VENV)/bin/kestrelq conf --out conf

conf-check: install  ## fail when the committed conf/ differs from a fresh rendering
	$(VENV)/bin/kestrelq conf --out conf --check

# The password of supervisord's status page on 127.0.0.1:9001 (user kestrelq), made once.
$(HOST_PASSWORD):
	@mkdir -p $(@D)
	@umask 077 && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(16))' > $@

# supervisord (daemonized, no root) on the committed conf/: the queue on 127.0.0.1:22133 and
# the workers; journals, logs, socket and pid file under var/host/. The workers' metrics files
# are emptied first: a previous run's counts must not add to this one's (docs/metrics.md).
# .venv/bin goes first on PATH because the programs run `python3`.
host-up: install conf-check $(HOST_PASSWORD)  ## the stack under supervisord on this machine (no Docker)
	@mkdir -p $(HOST_VAR)/run $(HOST_VAR)/log $(HOST_VAR)/queue
	@if $(SUPERVISORCTL) pid >/dev/null 2>&1; then echo "supervisord is already running"; else \
		rm -rf $(HOST_VAR)/run/worker-metrics; \
		PATH="$(abspath $(VENV))/bin:$$PATH" \
		KESTRELQ_SUPERVISOR_PASSWORD="$$(cat $(HOST_PASSWORD))" \
		$(VENV)/bin/supervisord -c conf/supervisord.conf; fi
	@for i in $$(seq 100); do \
		$(SUPERVISORCTL) status queue 2>/dev/null | grep -q RUNNING && break; sleep 0.1; done
	@$(SUPERVISORCTL) status || true
	@echo
	@echo "Send a message:  cd app && ../$(PY) send.py 'hello'"
	@echo "Worker output:   tail -f $(HOST_VAR)/log/work_worker_00.log"
	@echo "Status page:     http://127.0.0.1:9001/ (user kestrelq, password in $(HOST_PASSWORD))"
	@echo "Worker metrics:  http://127.0.0.1:9134/metrics"

# The dashboard over host mode: its queue and its supervisord, with the status page's password.
.PHONY: dashboard
dashboard: install  ## the dashboard of host mode on http://127.0.0.1:8081/ (docs/dashboard.md)
	KESTRELQ_SUPERVISOR_PASSWORD="$$(cat $(HOST_PASSWORD))" \
		$(VENV)/bin/kestrelq dashboard --supervisor 127.0.0.1:9001

host-status: install  ## supervisorctl status of host mode
	$(SUPERVISORCTL) status

# supervisorctl shutdown returns before the programs are down: wait for the pid file to go.
host-down: install  ## stop host mode (workers finish their message first)
	@$(SUPERVISORCTL) shutdown || true
	@for i in $$(seq 600); do [ -e $(HOST_VAR)/run/supervisord.pid ] || break; sleep 0.1; done
	@[ ! -e $(HOST_VAR)/run/supervisord.pid ] && echo "supervisord stopped"

# ---- Containers ------------------------------------------------------------------------------
# The Docker engine, Compose v2 and the base image are set up by scripts/ (idempotent; the
# README's Containers section says why each step exists). `docker compose` (the v2 plugin) is
# used where it exists, else a standalone v2 `docker-compose`.
# Where buildx is missing (Debian bookworm does not package it), every build starts with
# "Docker Compose is configured to build using Bake, but buildx isn't installed": compose then
# builds with its own builder on the engine's BuildKit, which is fine. COMPOSE_BAKE=false only
# trades it for "COMPOSE_BAKE=false is deprecated", so it is left alone.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
STACK_ENV := var/stack.env

.PHONY: docker-engine base-image images up up-metrics down logs ps chaos-test screenshot \
	screenshot-dashboard
docker-engine:  ## install and start a Docker engine and Compose v2 (root)
	scripts/docker-engine.sh

base-image: docker-engine  ## pull or build debian:bookworm-slim
	scripts/base-image.sh

images: base-image  ## docker compose build
	$(COMPOSE) build

# A random password for the supervisord status pages, made once and kept (var/ is not in git);
# compose.yaml reads it as an optional env_file.
$(STACK_ENV):
	@mkdir -p $(@D)
	@umask 077 && printf 'KESTRELQ_SUPERVISOR_PASSWORD=%s\n' \
		"$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(16))')" > $@
	@echo "wrote $@: the password of the supervisord status pages"

# The stack's CA, the queue's certificate (for the name `queue`), a client certificate, the
# passwords of the worker, app and admin users and the queue's auth file: made once by
# `kestrelq secrets` (what exists is kept), in var/secrets/ (0700; keys and passwords 0600).
# The containers read them as compose secrets, bind mounts that keep the host file's owner,
# so what they read is given to the images' user (10001): chown as root, else through a
# throwaway container (access to the engine is root's anyway).
SECRETS := var/secrets
IMAGE_UID := 10001

.PHONY: secrets
# The checkout's kestrelq.certs (standard library only), not the venv: `make up` needs no pip.
secrets:  ## make var/secrets/ once: CA, certificates, passwords, auth file (docs/security.md)
	@PYTHONPATH="$(CURDIR)" $(PYTHON) -m kestrelq.certs $(SECRETS)
	@if [ "$$(id -u)" = 0 ]; then \
		find $(SECRETS) -type f ! -name ca.key -exec chown $(IMAGE_UID):$(IMAGE_UID) {} +; \
	else \
		docker run --rm --user 0 --network none -v "$(abspath $(SECRETS)):/s" \
			debian:bookworm-slim sh -c \
			'find /s -type f ! -name ca.key -exec chown $(IMAGE_UID):$(IMAGE_UID) {} +'; \
	fi

# compose.yaml has pull_policy: build, so `up` rebuilds what changed (layer cache) and never
# pulls a kestrelq image; --wait returns once the queue and the workers are healthy.
# KESTRELQ_WORKERS given to `make up` is kept in var/stack.env, so a later plain `make up` does
# not silently go back to the default pool (compose reads it from the shell, not from there).
up: base-image $(STACK_ENV) secrets  ## build and start the stack in containers, wait until healthy
	@if [ -n "$${KESTRELQ_WORKERS:-}" ]; then \
		sed -i '/^KESTRELQ_WORKERS=/d' $(STACK_ENV); \
		echo "KESTRELQ_WORKERS=$$KESTRELQ_WORKERS" >> $(STACK_ENV); fi
	KESTRELQ_WORKERS="$${KESTRELQ_WORKERS:-$$(sed -n 's/^KESTRELQ_WORKERS=//p' $(STACK_ENV))}" \
		$(COMPOSE) $(PROFILES) up --detach --wait
	@$(COMPOSE) ps
	@echo
	@echo "The stack is up. Upload photos and watch their thumbnails appear:"
	@echo "  http://127.0.0.1:$${KESTRELQ_WEB_PORT:-8080}/"
	@echo "Or send a message and watch a worker handle it:"
	@echo "  docker compose exec app python send.py 'hello'"
	@echo "  docker compose logs --follow worker        (or: make logs)"
	@echo "The dashboard: queues, workers, dead letters (user kestrelq, password in $(STACK_ENV)):"
	@echo "  http://127.0.0.1:$${KESTRELQ_DASHBOARD_PORT:-8081}/"
	@echo "supervisord status pages (user kestrelq, password in $(STACK_ENV)):"
	@echo "  queue   http://127.0.0.1:$${KESTRELQ_QUEUE_STATUS_PORT:-9001}/"
	@echo "  workers http://127.0.0.1:$${KESTRELQ_WORKER_STATUS_PORT:-9002}/"
	@echo "The queue speaks TLS and wants a login: CA, certificates and passwords in $(SECRETS)/."
	@echo "More workers: KESTRELQ_WORKERS=8 make up.  Stop: make down (the journal volume stays)."

# With the `metrics` profile: Prometheus too (docs/metrics.md). PROFILES reaches `up`'s recipe
# as a target-specific variable.
up-metrics: PROFILES := --profile metrics
up-metrics: up  ## `make up` plus Prometheus (profile metrics) on 127.0.0.1:9090
	@echo "Prometheus, its alerts and the kestrelq series (no login; 127.0.0.1 only):"
	@echo "  http://127.0.0.1:$${KESTRELQ_PROMETHEUS_PORT:-9090}/alerts"

# The profile named, so a Prometheus started by up-metrics goes down with the rest.
down:  ## stop the stack (the journal and Prometheus volumes stay)
	$(COMPOSE) --profile metrics down

logs:  ## follow the stack's logs
	$(COMPOSE) logs --follow --tail=100

ps:  ## docker compose ps
	$(COMPOSE) ps

# ---- Docker Swarm: several queue servers ----------------------------------------------------
# swarm.yaml on this machine's engine as a one-node swarm: queue1..queue3 (each pinned by a node
# label to its journal volume) and the workers (KESTRELQ_SWARM_WORKERS, default 3), TLS and
# logins from var/secrets. docs/several-servers.md: the same on three machines.
.PHONY: swarm-up swarm-down
swarm-up: base-image secrets  ## deploy swarm.yaml (three queue servers, workers) on a one-node swarm
	scripts/swarm.sh up

swarm-down:  ## remove the swarm stack (journal volumes stay); leave the swarm if swarm-up made it
	scripts/swarm.sh down

# The browser tests (headless Chromium) write their screenshots here: the web front end's on
# its own test stack, the dashboard's on processes on this machine (no Docker).
screenshot: install base-image screenshot-dashboard  ## regenerate docs/img/web-page.png and dashboard.png (the README's screenshots)
	KESTRELQ_SCREENSHOT=docs/img/web-page.png $(PY) -m pytest -q tests/chaos/test_web_stack.py

screenshot-dashboard: install  ## regenerate docs/img/dashboard.png (no Docker)
	KESTRELQ_DASHBOARD_SCREENSHOT=docs/img/dashboard.png $(PY) -m pytest -q \
		tests/dashboard/test_dashboard_browser.py

# The container chaos suite alone (it is also part of `make test`).
chaos-test: install base-image  ## the container chaos suite alone (chaos and docker)
	$(PY) -m pytest -m "chaos and docker" tests/chaos


# ---- Benchmarks ------------------------------------------------------------------------------
# kestrelq against memcached, beanstalkd (binlog) and redis (appendonly) on 127.0.0.1, each on a
# free port, through pymemcache and through the minimal client (one request, one reply), with
# the Python floor in both and darner given its binary: BENCH_ARGS="--darner BIN". kestrelq runs
# pure and compiled side by side (the bench compiles build/compiled first when it is stale;
# BENCH_ARGS="--builds pure" skips it). Table, chart and JSON in bench/results/. Extra flags:
# make bench BENCH_ARGS="-n 50000".
# `python -m bench --help` lists the scenarios (--fsync-scale, --backlog N, --fairness).
BENCH_ARGS ?=

.PHONY: bench bench-quick bench-targets
bench: install  ## kestrelq against its peers (darner: BENCH_ARGS="--darner BIN"); bench/results/
	$(PY) -m bench $(BENCH_ARGS)

bench-quick: install  ## a tiny benchmark run (about 20 s)
	$(PY) -m bench --quick $(BENCH_ARGS)

# Every scenario in one run: the matrix, group commit, a 1,000,000-item backlog, fairness.
bench-targets: install  ## the benchmark with every scenario
	$(PY) -m bench --fsync-scale --backlog 1000000 --fairness $(BENCH_ARGS)

.PHONY: clean
clean:  ## remove var/, build output and caches
	rm -rf var build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
