# The project's verbs. Every target creates the environment first when it is missing, so a fresh
# clone needs only Python 3.11+, git and make.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help up test lint typecheck proto check-proto bench ci clean docs

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

up: $(VENV)/.installed ## Start NATS and the four services (Ctrl-C stops them)
	$(VENV)/bin/haven up

test: $(VENV)/.installed check-proto lint typecheck ## Run the whole suite (lint, types, unit, integration, end to end)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed ## ruff lint and format check, and generated docs current
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m services.eligibility.docs_gen --check
	$(PY) -m services.notifier.domain.docs_gen --check

typecheck: $(VENV)/.installed ## mypy in strict mode
	$(VENV)/bin/mypy libs services scripts tests benchmarks

proto: $(VENV)/.installed ## Regenerate protobuf and gRPC code into libs/
	$(PY) scripts/gen_protos.py

check-proto: $(VENV)/.installed ## Fail when the committed generated code is stale
	$(PY) scripts/gen_protos.py --check

docs: $(VENV)/.installed ## Regenerate the docs pages that come from data (programmes, notifications)
	$(PY) -m services.eligibility.docs_gen
	$(PY) -m services.notifier.domain.docs_gen

bench: $(VENV)/.installed ## Run the benchmarks and print figures with their baselines
	$(PY) -m benchmarks

ci: test ## What CI runs

clean: ## Remove the environment and local data
	rm -rf $(VENV) .haven .pytest_cache .mypy_cache .ruff_cache
