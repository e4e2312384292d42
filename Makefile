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
.PHONY: conf conf-check
conf: install
conf-check: install

# ---- Containers (issue 3) ---------------------------------------------------------------------

# ---- Benchmarks (issue 4) ---------------------------------------------------------------------

.PHONY: clean
clean:
	rm -rf var build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
