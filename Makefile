# The two commands of the quick start: `make demo` and `make test`.
#
#   make demo          create .venv, install the runtime, play the offline demo scene
#   make test          install the test extras, lint, run the whole suite (what CI runs)
#   make test-fast     the same without the `slow` tests (they load the real model)
#   make test-engines  install headless Godot 3 and Mono (Debian, root) for the engine-client tests
#   make lock          re-make the lock from the newest releases, after the suite passed on them
#   make test-latest   run lint and the suite on the newest releases, in .venv-latest
#
# Both installs take exact versions from the lock of this Python and platform
# (requirements/<python>-<os>-<arch>.txt), so a fresh clone installs what CI tested, whatever day
# it runs; `pip install her-sdk[...]` keeps pyproject's version ranges. LOCKED=0 ignores the lock.
PYTHON ?= python3
VENV ?= .venv
LOCKED ?= 1
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PLATFORM := $(shell $(PYTHON) -c 'import platform, sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}-{sys.platform}-{platform.machine().lower()}")')
LOCK := requirements/$(PLATFORM).txt
HAVE_LOCK := $(and $(filter 1,$(LOCKED)),$(wildcard $(LOCK)))
# The lock constrains the install; the build constraints pin the build backends pip fetches to
# compile llama-cpp-python (a source-only package) and this project.
CONSTRAIN := $(if $(HAVE_LOCK),-c $(LOCK) --build-constraint requirements/build.txt)
CHECK_LOCK := $(if $(HAVE_LOCK),$(BIN)/python requirements/lock.py check $(LOCK),@echo "note: no lock used ($(if $(filter 1,$(LOCKED)),none for $(PLATFORM),LOCKED=0)): newest versions pyproject.toml allows")

.PHONY: demo test test-fast test-engines lint lock test-latest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip $(if $(HAVE_LOCK),-c $(LOCK))

# llama.cpp is compiled from source by pip (a few minutes, once; pip caches the built wheel).
$(VENV)/.demo-installed: $(BIN)/python pyproject.toml $(HAVE_LOCK)
	$(PIP) install $(CONSTRAIN) -e ".[all]"
	$(CHECK_LOCK)
	touch $@

$(VENV)/.test-installed: $(BIN)/python pyproject.toml $(HAVE_LOCK)
	$(PIP) install $(CONSTRAIN) -e ".[test]"
	$(CHECK_LOCK)
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/her demo

test: lint test-engines
	$(BIN)/python -m pytest

test-fast: lint
	$(BIN)/python -m pytest -m "not slow"

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

# A fresh venv on the newest releases: the suite must pass there before the lock takes them.
test-latest:
	rm -rf .venv-latest
	$(MAKE) VENV=.venv-latest LOCKED=0 test

lock: test-latest
	.venv-latest/bin/python requirements/lock.py write $(LOCK)

bench: $(VENV)/.demo-installed
	$(BIN)/python benchmarks/runtime.py

clean:
	rm -rf $(VENV) .venv-latest build dist *.egg-info .pytest_cache .ruff_cache
