# Every target sets itself up on a fresh machine: it creates .venv and installs the project when needed.
# Installs are locked: uv.lock pins every dependency (with hashes) at the versions the suite last passed with.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# uv is pinned too and lives in its own venv, out of reach of the exact sync of .venv; it never downloads a Python
UV_VERSION := 0.13.10
TOOLS := .venv-tools
UV_STAMP := $(TOOLS)/.uv-$(UV_VERSION)
UV := UV_PYTHON_DOWNLOADS=never $(TOOLS)/bin/uv
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# mkdocs-material's banner about its successor, printed on every build
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test typecheck suite lint docs bench up lock clean help

help:  ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/ -/'

$(UV_STAMP):
	rm -rf $(TOOLS)
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	touch $@

# Exactly what uv.lock pins, with the dev extra, and the project itself editable; extraneous packages are removed
# (pip stays: uv leaves the venv's own pip alone). --locked refuses a uv.lock out of date with pyproject.toml.
$(STAMP): pyproject.toml uv.lock $(UV_STAMP)
	$(PYTHON) -m venv $(VENV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --extra dev --python $(BIN)/python -q \
	  || { echo 'Install from uv.lock failed; if uv.lock is out of date with pyproject.toml, run `make lock`' >&2; exit 1; }
	touch $(STAMP)

demo: $(STAMP)  ## Set up, start a local Prefect server, run the demo upsells, print the results
	$(BIN)/upsell demo

# The browser tests drive Debian's Chromium through Playwright (no browser download): installed when missing.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium \
	  || ($(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium)

test: $(STAMP) $(CHROMIUM)  ## Set up, lint, type-check, check the layers and dead code, build the docs, run the whole test suite (starts and stops its own servers)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/vulture
	$(BIN)/mkdocs build --strict
	@# mypy (about 30 s on a clean clone) type-checks beside the suite, which leaves a core idle most of the time;
	@# either failing fails `make test`
	$(MAKE) --no-print-directory -j2 typecheck suite

typecheck: $(STAMP)
	$(BIN)/mypy

suite: $(STAMP) $(CHROMIUM)
	UPSELL_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

lint: $(STAMP)  ## Lint, type-check, check the layers (import-linter) and dead code (vulture)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/vulture

docs: $(STAMP)  ## Build the documentation site (into site/; the CLI and settings pages are generated from the code)
	$(BIN)/mkdocs build --strict

up: $(STAMP)  ## Start the local stack (Prefect server + UI, deployments, receiver)
	$(BIN)/upsell up

bench: $(STAMP)  ## Run the benchmarks (not part of the tests)
	$(BIN)/python bench/receiver.py
	$(BIN)/python bench/waiting.py

# `make lock UPGRADE=` keeps the current pins and only resolves what pyproject.toml changed
UPGRADE ?= --upgrade
lock: $(UV_STAMP)  ## Refresh uv.lock: every dependency at its newest release pyproject.toml allows (then `make test`, commit both)
	$(UV) lock $(UPGRADE) --python $(PYTHON)

clean:  ## Remove the venvs, local data and the built docs
	rm -rf $(VENV) $(TOOLS) .upsell site
