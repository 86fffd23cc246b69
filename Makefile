# make demo: set up, start local services, load data, run the platform command, show the result.
# make test: the whole test suite against real Kafka and PostgreSQL (started if none are running).
# make test-unit: the tests that need no broker or database (the inner loop, under a minute).
# make lint: ruff (lint and format) and mypy, as CI runs them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup lock demo test test-unit lint bench services services-down clean

setup: $(VENV)/.installed

# Exact versions from the lock files (pip-compile of pyproject.toml: `make lock`), then the project
# itself. requirements.lock is what the worker image installs; requirements-dev.lock adds the tools.
$(VENV)/.installed: pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

LOCK := $(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links
lock: setup
	$(LOCK) -o requirements.lock pyproject.toml
	$(LOCK) --extra dev -o requirements-dev.lock pyproject.toml

demo: setup
	bash scripts/demo.sh

test: setup
	$(BIN)/python -m pytest -q --durations=30

test-unit: setup
	$(BIN)/python -m pytest -q -m "not services"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/embedder services up
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

services: setup
	$(BIN)/embedder services up

services-down: setup
	$(BIN)/embedder services down

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis demo-data
