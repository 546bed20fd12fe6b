# Two commands for a new user: `make demo` and `make test`. Each creates .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit crash-test bench sandbox clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/syncengine demo -c config.yaml

sandbox: $(STAMP)
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

bench: $(STAMP)
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache data
