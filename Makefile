# Every target sets itself up on a fresh machine: it creates .venv and installs the project when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test lint bench up clean help

help:  ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/ -/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## Set up, start a local Prefect server, run the demo upsells, print the results
	$(BIN)/upsell demo

test: $(STAMP)  ## Set up, lint, type-check, check the layers and dead code, run the whole test suite (starts and stops its own servers)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/vulture
	$(BIN)/python -m pytest -q -p no:cacheprovider

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
