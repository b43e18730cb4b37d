# Two entry points for a fresh machine with Python 3.11+ and make:
#   make sample   install, then run the whole sample history and print a per-program summary
#   make test     install, then ruff, mypy and pytest (what CI runs)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STORE ?= data/store
EXTRACTS ?= data/sample/extracts
BENCH_ARGS ?= --subscribers 2000000 --months 7
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90

.PHONY: install sample test lint bench benchmark clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

sample: install
	$(BIN)/billing-tiers init --store $(STORE) --extracts $(EXTRACTS)
	$(BIN)/billing-tiers backfill --from 2024-01 --store $(STORE) --extracts $(EXTRACTS)
	$(BIN)/billing-tiers status --store $(STORE)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy billing_tiers flows transforms schemas rulebook

test: lint
	$(BIN)/pytest -q

# One month's `billing-tiers run` against a DuckDB peer on synthetic extracts (options: scripts/benchmark.py --help),
# e.g. make bench BENCH_ARGS="--subscribers 200000 --months 7 --json bench.json"
bench: install
	$(BIN)/python scripts/benchmark.py $(BENCH_ARGS)

benchmark: bench

clean:
	rm -rf $(STORE)
