# The two commands of the quick start: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llama.cpp is compiled from source by pip (a few minutes, once; pip caches the wheel).
PIP := $(BIN)/python -m pip

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.demo-installed: $(BIN)/python pyproject.toml
	$(PIP) install -e ".[all]"
	touch $@

$(VENV)/.test-installed: $(BIN)/python pyproject.toml
	$(PIP) install -e ".[test]"
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/her demo

test: lint
	$(BIN)/python -m pytest

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(VENV)/.demo-installed
	$(BIN)/python benchmarks/runtime.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
