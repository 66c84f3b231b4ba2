# Escalate — the two quick-start commands are `make repro` and `make test`.
# Each creates the virtual environment (.venv) from requirements.lock when it is missing or stale, with the
# libraries' bytecode compiled at install (a process then imports them without compiling: the clinician page and
# every CLI call start seconds faster, also where PYTHONDONTWRITEBYTECODE is set).
# Installs bypass uv's cache (--no-cache): pyspark ships only as a source archive, and a registry that does not
# mark it immutable makes uv build it again into a new ~2 GB cache entry on every install, which filled the CI
# disk; a full install without the cache takes about 45 s on 2 cores.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,spark
export PATH := $(BIN):$(PATH)
export MPLBACKEND := Agg

.PHONY: install repro test browser lint bench bench-env

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv>=0.5,<1"
	$(BIN)/uv pip install --quiet --no-cache --compile-bytecode --python $(BIN)/python -c requirements.lock -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

## Set up and run the whole pipeline on the embedded default (simulated cohort, local MLflow store).
repro: install
	dvc repro

## Set up, lint and run the whole test suite (unit, data, model, browser and end-to-end tests).
test: install browser
	ruff check .
	OMP_NUM_THREADS=1 python -m pytest -n 2

## The browser tests drive Debian's Chromium (a test tool's own browser download cannot work offline).
browser:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ; } || \
		echo "chromium not installed: browser tests will be skipped"

lint: install
	ruff check .

## Benchmarks are run on demand, never in CI. They get their own environment (.venv-bench) because the peer
## libraries (EconML, CausalML) pull the full xgboost wheel, which must not shadow xgboost-cpu in .venv.
## `make bench-env` only builds it (then run one benchmark: docs/benchmarks.md); `make bench` runs them all with
## their default sizes (the peers table, learning curve and IHDP take tens of minutes on 2 cores).
BENCH := .venv-bench
bench-env:
	test -x $(BENCH)/bin/python || $(PYTHON) -m venv $(BENCH)
	$(BENCH)/bin/python -m pip install --quiet --disable-pip-version-check "uv>=0.5,<1"
	$(BENCH)/bin/uv pip install --quiet --no-cache --python $(BENCH)/bin/python -c requirements.lock -e ".[dev,spark,bench]"

bench: bench-env
	for b in benchmarks/bench_*.py; do echo "== $$b"; OMP_NUM_THREADS=1 $(BENCH)/bin/python $$b || exit 1; done
	OMP_NUM_THREADS=1 $(BENCH)/bin/python benchmarks/bench_peers.py --learning-curve
