# promptgate developer commands. `make run` and `make test` set up everything
# they need (a venv in .venv via uv, buf via npm) on a fresh machine.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf
PORT ?= 50051

.PHONY: help venv tools generate lint test run bench clean check-generated

help:
	@echo "make run       start the server on localhost:$(PORT) (SQLite in ./data, mock provider, demo prompt)"
	@echo "make test      run the test suite"
	@echo "make lint      ruff, mypy (strict), buf lint, buf breaking, generated code current"
	@echo "make bench     benchmark suite (about 3 minutes); writes bench/RESULTS.md"
	@echo "make generate  regenerate code from proto/"

UV := $(PYTHON) -m uv

$(VENV)/.installed: pyproject.toml
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@test -x $(PY) || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip install --quiet --python $(PY) -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

$(VENV)/.bench-installed: $(VENV)/.installed
	$(UV) pip install --quiet --python $(PY) -e '.[dev,bench]'
	@touch $@

# `npm install --no-save` rather than `npm ci`: the registry mirror lacks buf's
# binaries for other platforms, so the lock file cannot list them and npm ci
# refuses it; install still pins buf to the version in package-lock.json.
$(BUF): package.json package-lock.json
	npm install --no-save --no-audit --no-fund --loglevel=error
	@touch $@

tools: venv $(BUF)

generate: tools
	rm -rf .gen
	$(BUF) generate
	$(PY) tools/place_generated.py
	rm -rf .gen

check-generated: generate
	@git diff --exit-code --stat -- server/promptgate/api/v1 \
	  && test -z "$$(git status --porcelain -- server/promptgate/api/v1)" \
	  || (echo "generated code is stale: run make generate and commit" >&2; exit 1)

lint: tools check-generated
	$(VENV)/bin/ruff check server tests tools bench
	$(VENV)/bin/ruff format --check server tests tools bench
	$(VENV)/bin/mypy
	$(BUF) lint
	@if git rev-parse --verify --quiet main >/dev/null; then \
	  $(BUF) breaking --against '.git#branch=main'; \
	else echo "buf breaking: no main branch yet, skipped"; fi

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.bench-installed
	$(PY) -m bench.run $(BENCH_ARGS)

run: venv
	$(VENV)/bin/promptgate serve --dev --port $(PORT) --database-url sqlite+aiosqlite:///./data/promptgate.db

clean:
	rm -rf $(VENV) node_modules .gen .mypy_cache .ruff_cache .pytest_cache
