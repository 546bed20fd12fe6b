# Two commands for a new user: `make demo` and `make test`. Each creates .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The runtime package alone: what `make demo` and `make sandbox` need. The test extras
# (pytest, mypy, ruff, ...) come with $(STAMP), for `make test` and the other targets.
RUNTIME := $(VENV)/.runtime

.PHONY: demo test lint typecheck unit crash-test bench sandbox clean bytecode

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(MAKE) --no-print-directory bytecode
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# pip compiles what it installs, but an editable install leaves the project's own
# modules as source: where PYTHONDONTWRITEBYTECODE is set, every start would compile
# them again (about 0.1 s). A module edited later is compiled in memory as usual.
bytecode: | $(BIN)/python
	$(BIN)/python -m compileall -q syncengine connectors state > /dev/null

demo: $(RUNTIME)
	$(BIN)/syncengine demo -c config.yaml

sandbox: $(RUNTIME)
	$(BIN)/syncengine sandbox

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# One worker per core: the end-to-end tests mostly wait on subprocesses and emulators.
unit: $(STAMP)
	$(BIN)/pytest -q -n auto

test: lint typecheck unit

# Many SIGKILL/restart cycles against the emulators, plain and chained; bounded (about 4 minutes).
crash-test: $(STAMP)
	SYNCENGINE_CRASH_CYCLES=150 $(BIN)/pytest -q -m slow tests/e2e/test_crash.py

# The built wheel in a clean venv: --version, the demo on free ports, check against a
# sandbox, and a migration of an old store, all from the installed copy (a minute or
# two, most of it pip).
wheel-check: $(STAMP)
	$(BIN)/pytest -q -m install tests/e2e/test_wheel.py

# The README's Dagster recipe materialized for real against the sandbox, in a venv of
# its own with Dagster installed (not a dependency of syncengine; a few minutes, most of
# it pip). Not part of `make test`.
DAGSTER_VENV := .venv-dagster
dagster-check: $(STAMP)
	test -x $(DAGSTER_VENV)/bin/python || $(PYTHON) -m venv $(DAGSTER_VENV)
	$(DAGSTER_VENV)/bin/python -m pip install --quiet "dagster>=1.8" -e .
	$(DAGSTER_VENV)/bin/python -m tests.orchestrators.dagster_check

.PHONY: bench-memory bench-concurrency bench-store bench-prune bench-sigterm wheel-check dagster-check

# syncengine against a bare httpx loop at 2,000, 20,000 and 100,000 deletions, 3 rounds each,
# within 14 minutes: rounds that would overrun are skipped and the output says so.
bench: $(STAMP) bytecode
	$(BIN)/python -m bench.throughput --max-seconds 840

# Runs that really delete 20,000, 200,000 and 1,000,000 rows (Mongoose holds them all):
# each contender's peak RSS per size and its flat-ness (peak at 1,000,000 / at 20,000).
# 10 to 25 minutes on 2 cores, as loaded; a contender past 20 minutes is killed and reported
# with its peak RSS so far.
bench-memory: $(STAMP) bytecode
	$(BIN)/python -m bench.throughput --memory --import-repeats 0 --child-timeout 1200 --max-seconds 2700
	SYNCENGINE_REPORT_ROWS=20000 $(BIN)/pytest -q -n 2 tests/unit/test_report_memory.py

# 20 ms per emulator call; syncengine with `concurrency: 4` in its target as a third contender
# ("n/a (setting not supported)" while the configuration refuses it).
bench-concurrency: $(STAMP) bytecode
	$(BIN)/python -m bench.throughput --sizes 20000 --latency 0.02 --set concurrency=4

# The store's journal + claim + outcome per record against raw sqlite3 doing the same
# rows in the same transactions; 20,000 records, median of 5 rounds (about a minute).
bench-store: $(STAMP) bytecode
	$(BIN)/python -m bench.store

# The store's bytes per deletion on SQLite and PostgreSQL, its size after 1,000,000 done
# deletions and after pruning them, and the prune's time while claims go on (their
# median latency without and during it). PostgreSQL at 127.0.0.1:5432; about 10 minutes.
bench-prune: $(STAMP) bytecode
	$(BIN)/python -m bench.prune --deletions 1000000

# SIGTERM to `run --once` once 20,000 of a 1,000,000-deletion answer are journaled:
# the seconds until it exits (about a minute, most of it seeding the emulator).
bench-sigterm: $(STAMP) bytecode
	$(BIN)/python -m bench.sigterm

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache data
