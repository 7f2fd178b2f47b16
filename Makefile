# The two commands of the README:
#   make demo   creates .venv, installs, runs the demo on http://127.0.0.1:3002
#   make test   installs what the tests need and runs them all (what .ci/run calls)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml requirements.txt
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m webapp --demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict --follow-imports=silent node_firmware/protocol.py bridge/reassembly.py bridge/ttn.py \
		imaging/heatmap.py webapp/settings.py bridge/config.py bridge/alarms.py

test: $(STAMP)
	scripts/ensure-services.sh
	$(MAKE) --no-print-directory lint
	node --test tests/node_firmware/
	$(BIN)/python -m pytest -p no:cacheprovider

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration and not browser"

# Every benchmark in turn (about 15 minutes on 2 cores), each appending to bench/HISTORY.md
# and updating its rows of the table at the top of BENCHMARKS.md;
# BENCH_ARGS=--quick for a short smoke run of each that records nothing.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/core.py $(BENCH_ARGS)
	$(BIN)/python bench/render.py $(BENCH_ARGS)
	$(BIN)/python bench/ingest.py $(BENCH_ARGS)
	$(BIN)/python bench/fanout.py $(BENCH_ARGS)
	$(BIN)/python bench/storage.py $(BENCH_ARGS)
	$(BIN)/python bench/bridge.py $(BENCH_ARGS)
	$(BIN)/python bench/compression.py $(BENCH_ARGS)
	$(BIN)/python bench/retention.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
