# The two commands of the quick start: `make demo` and `make test`.
#
#   make demo          create .venv, install the runtime, play the offline demo scene
#   make test          install the test extras, lint, run the whole suite (what CI runs)
#   make test-fast     the same without the `slow` tests (they load the real model)
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

.PHONY: demo test test-fast lint lock test-latest bench clean

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

test: lint
	$(BIN)/python -m pytest

test-fast: lint
	$(BIN)/python -m pytest -m "not slow"

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

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
