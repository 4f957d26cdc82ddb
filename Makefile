# The two commands of the quick start: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llama.cpp is compiled from source by pip (a few minutes, once; pip caches the wheel).
PIP := $(BIN)/python -m pip

.PHONY: demo test test-engines lint bench clean

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

test: lint test-engines
	$(BIN)/python -m pytest

# The real engines the slow client tests run (Debian packages): headless Godot 3 for the GDScript
# client, Mono's C# compiler and runtime for the Unity client core. Without apt-get (not Debian,
# not root) this says so and goes on: those tests then skip with the reason.
ENGINE_PACKAGES := godot3-server mono-mcs mono-runtime libmono-system-net-http4.0-cil \
	libmono-system-runtime-serialization4.0-cil
test-engines:
	@if command -v godot3-server >/dev/null && command -v mcs >/dev/null && command -v mono >/dev/null; then \
		echo "engines: godot3-server, mcs and mono are installed"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(ENGINE_PACKAGES) >/dev/null \
		|| echo "engines: apt-get install failed; the Godot and Mono tests will skip"; \
	else \
		echo "engines: no root apt-get here; the Godot and Mono tests will skip"; \
	fi

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/gdparse examples/godot/addons/her/*.gd examples/godot/demo/*.gd >/dev/null
	$(BIN)/gdlint examples/godot/addons/her/*.gd examples/godot/demo/*.gd

bench: $(VENV)/.demo-installed
	$(BIN)/python benchmarks/runtime.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
