# make demo: set up, start local services, load data, run the platform command, show the result.
# make test: the whole test suite against real Kafka and PostgreSQL (started if none are running).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench services services-down clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: setup
	bash scripts/demo.sh

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/embedder services up
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

services: setup
	$(BIN)/embedder services up

services-down: setup
	$(BIN)/embedder services down

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis demo-data
