# Escalate — the two quick-start commands are `make repro` and `make test`.
# Each creates the virtual environment (.venv) from requirements.lock when it is missing or stale.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,spark
export PATH := $(BIN):$(PATH)
export MPLBACKEND := Agg

.PHONY: install repro test browser lint bench

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv>=0.5,<1"
	$(BIN)/uv pip install --quiet --python $(BIN)/python -c requirements.lock -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

## Set up and run the whole pipeline on the embedded default (simulated cohort, local MLflow store).
repro: install
	dvc repro

## Set up and run the whole test suite (unit, data, model, browser and end-to-end tests).
test: install browser
	python -m pytest -n 2

## The browser tests drive Debian's Chromium (a test tool's own browser download cannot work offline).
browser:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ; } || \
		echo "chromium not installed: browser tests will be skipped"

lint: install
	ruff check .

## Benchmarks are run on demand, never in CI.
bench: install
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[dev,bench]"
	for b in benchmarks/bench_*.py; do python $$b; done
