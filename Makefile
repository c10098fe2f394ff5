# Every target sets itself up on a fresh machine: it creates .venv and installs the project when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test typecheck suite lint bench up clean help

help:  ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/ -/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## Set up, start a local Prefect server, run the demo upsells, print the results
	$(BIN)/upsell demo

# The browser tests drive Debian's Chromium through Playwright (no browser download): installed when missing.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium \
	  || ($(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium)

test: $(STAMP) $(CHROMIUM)  ## Set up, lint, type-check, check the layers and dead code, run the whole test suite (starts and stops its own servers)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/vulture
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

up: $(STAMP)  ## Start the local stack (Prefect server + UI, deployments, receiver)
	$(BIN)/upsell up

bench: $(STAMP)  ## Run the benchmarks (not part of the tests)
	$(BIN)/python bench/receiver.py
	$(BIN)/python bench/waiting.py

clean:  ## Remove the venv and local data
	rm -rf $(VENV) .upsell
