# kestrelq: the only entry point for humans and CI.
# `make up` runs the stack in containers; `make test` runs every test (unit, server, host chaos,
# container chaos). See README.md.

.DEFAULT_GOAL := all
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
sources = kestrelq app bench tests

# ---- Python environment -------------------------------------------------------------------
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,fast,bench]'
	touch $@

.PHONY: install
install: $(VENV)/.installed

.PHONY: format
format: install
	$(PY) -m ruff format $(sources)
	$(PY) -m ruff check --fix $(sources)

.PHONY: lint
lint: install
	$(PY) -m ruff check $(sources)
	$(PY) -m ruff format --check $(sources)

.PHONY: typecheck
typecheck: install
	$(PY) -m mypy

# ---- Tests ----------------------------------------------------------------------------------
.PHONY: test-unit
test-unit: install
	$(PY) -m pytest -m "not chaos and not docker"

.PHONY: test
test: install lint typecheck conf-check
	$(PY) -m pytest

.PHONY: all
all: lint typecheck conf-check test-unit

# ---- Queue server -----------------------------------------------------------------------------
.PHONY: serve
serve: install
	$(VENV)/bin/kestrelq serve --data-dir var/queue

# ---- supervisord configuration and host mode (issue 5) -----------------------------------------
# conf/ is rendered from conf/stack.toml by `kestrelq conf` and committed; conf-check (part of
# `make test`) fails when the committed files differ from a fresh rendering.
HOST_VAR := var/host
HOST_PASSWORD := $(HOST_VAR)/run/supervisor.password
SUPERVISORCTL := $(VENV)/bin/supervisorctl -c conf/supervisord.conf

.PHONY: conf conf-check host-up host-status host-down
conf: install
	$(VENV)/bin/kestrelq conf --out conf

conf-check: install
	$(VENV)/bin/kestrelq conf --out conf --check

# The password of supervisord's status page on 127.0.0.1:9001 (user kestrelq), made once.
$(HOST_PASSWORD):
	@mkdir -p $(@D)
	@umask 077 && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(16))' > $@

# supervisord (daemonized, no root) on the committed conf/: the queue on 127.0.0.1:22133 and
# the workers; journals, logs, socket and pid file under var/host/. .venv/bin goes first on
# PATH because the programs run `python3`.
host-up: install conf-check $(HOST_PASSWORD)
	@mkdir -p $(HOST_VAR)/run $(HOST_VAR)/log $(HOST_VAR)/queue
	@if $(SUPERVISORCTL) pid >/dev/null 2>&1; then echo "supervisord is already running"; else \
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

host-status: install
	$(SUPERVISORCTL) status

# supervisorctl shutdown returns before the programs are down: wait for the pid file to go.
host-down: install
	@$(SUPERVISORCTL) shutdown || true
	@for i in $$(seq 600); do [ -e $(HOST_VAR)/run/supervisord.pid ] || break; sleep 0.1; done
	@[ ! -e $(HOST_VAR)/run/supervisord.pid ] && echo "supervisord stopped"

# ---- Containers (issue 3) ---------------------------------------------------------------------
# The Docker engine, Compose v2 and the base image are set up by scripts/ (idempotent; the
# README's Containers section says why each step exists). `docker compose` (the v2 plugin) is
# used where it exists, else a standalone v2 `docker-compose`.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
STACK_ENV := var/stack.env

.PHONY: docker-engine base-image images up down logs ps chaos-test
docker-engine:
	scripts/docker-engine.sh

base-image: docker-engine
	scripts/base-image.sh

images: base-image
	$(COMPOSE) build

# A random password for the supervisord status pages, made once and kept (var/ is not in git);
# compose.yaml reads it as an optional env_file.
$(STACK_ENV):
	@mkdir -p $(@D)
	@umask 077 && printf 'KESTRELQ_SUPERVISOR_PASSWORD=%s\n' \
		"$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(16))')" > $@
	@echo "wrote $@: the password of the supervisord status pages"

# compose.yaml has pull_policy: build, so `up` rebuilds what changed (layer cache) and never
# pulls a kestrelq image; --wait returns once the queue and the workers are healthy.
up: base-image $(STACK_ENV)
	$(COMPOSE) up --detach --wait
	@$(COMPOSE) ps
	@echo
	@echo "The stack is up. Send a message and watch a worker handle it:"
	@echo "  docker compose exec app python send.py 'hello'"
	@echo "  docker compose logs --follow worker        (or: make logs)"
	@echo "supervisord status pages (user kestrelq, password in $(STACK_ENV)):"
	@echo "  queue   http://127.0.0.1:$${KESTRELQ_QUEUE_STATUS_PORT:-9001}/"
	@echo "  workers http://127.0.0.1:$${KESTRELQ_WORKER_STATUS_PORT:-9002}/"
	@echo "More workers: KESTRELQ_WORKERS=8 make up.  Stop: make down (the journal volume stays)."

down:
	$(COMPOSE) down

logs:
	$(COMPOSE) logs --follow --tail=100

ps:
	$(COMPOSE) ps

# The container chaos suite alone (it is also part of `make test`).
chaos-test: install base-image
	$(PY) -m pytest -m "chaos and docker" tests/chaos

# `make test` runs the container tests too, which need an engine and the base image.
test: base-image


# ---- Benchmarks (issue 4) ---------------------------------------------------------------------
# kestrelq against memcached, beanstalkd (binlog) and redis (appendonly) on 127.0.0.1, each on a
# free port: table, chart and JSON in bench/results/. Extra flags: make bench BENCH_ARGS="-n 50000".
# `python -m bench --help` lists the scenarios (--fsync-scale, --backlog N, --fairness).
BENCH_ARGS ?=

.PHONY: bench bench-quick bench-targets
bench: install
	$(PY) -m bench $(BENCH_ARGS)

bench-quick: install
	$(PY) -m bench --quick $(BENCH_ARGS)

# Every target of issue 4 in one run: the matrix, group commit, a 1,000,000-item backlog, fairness.
bench-targets: install
	$(PY) -m bench --fsync-scale --backlog 1000000 --fairness $(BENCH_ARGS)

.PHONY: clean
clean:
	rm -rf var build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
