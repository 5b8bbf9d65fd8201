# promptgate developer commands. `make run` and `make test` set up everything
# they need (a venv in .venv via uv, buf via npm) on a fresh machine.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf
PORT ?= 50051
METRICS_PORT ?= 9464

.PHONY: help venv tools generate lint test run bench clean check-generated clients check-clients client-tools

help:
	@echo "make run       start the server on localhost:$(PORT) (SQLite in ./data, mock provider, demo prompt)"
	@echo "make test      run the test suite"
	@echo "make lint      ruff, mypy (strict), buf lint, buf breaking, generated code current"
	@echo "make bench     benchmark suite (about 3 minutes); writes bench/RESULTS.md"
	@echo "make generate  regenerate code from proto/"
	@echo "make clients   regenerate the Python, TypeScript and Go clients in clients/"

UV := $(PYTHON) -m uv

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@test -x $(PY) || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip install --quiet --python $(PY) -e '.[dev]' -e clients/python
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

# Client generators: protoc-gen-es pinned by clients/typescript/package-lock.json;
# protoc-gen-go and protoc-gen-go-grpc from Debian (see .ci/run).
TS_CLIENT := clients/typescript
PROTOC_GEN_ES := $(TS_CLIENT)/node_modules/.bin/protoc-gen-es
CLIENT_GEN_DIRS := clients/python/src/promptgate_client/v1 $(TS_CLIENT)/src/gen clients/go/promptgate/v1

$(PROTOC_GEN_ES): $(TS_CLIENT)/package.json $(TS_CLIENT)/package-lock.json
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

client-tools: tools $(PROTOC_GEN_ES)
	@command -v protoc-gen-go >/dev/null && command -v protoc-gen-go-grpc >/dev/null || { \
	  echo "protoc-gen-go / protoc-gen-go-grpc missing: apt-get install -y golang-go protoc-gen-go" \
	    "protoc-gen-go-grpc golang-google-grpc-dev golang-google-protobuf-dev" >&2; exit 1; }

clients: client-tools
	rm -rf .gen/clients
	$(BUF) generate --template buf.gen.clients.yaml
	$(BUF) generate $(TS_CLIENT)/proto --template buf.gen.clients-rpc.yaml
	$(PY) tools/place_clients.py
	rm -rf .gen/clients

# The Go generators' version comments are ignored: they are Debian's, not ours.
check-clients: clients
	@git diff --exit-code --stat -I '^//.*protoc-gen-go v[0-9]' -- $(CLIENT_GEN_DIRS) \
	  && test -z "$$(git status --porcelain -- $(CLIENT_GEN_DIRS))" \
	  || (echo "generated client code is stale: run make clients and commit" >&2; exit 1)

check-generated: generate
	@git diff --exit-code --stat -- server/promptgate/api/v1 \
	  && test -z "$$(git status --porcelain -- server/promptgate/api/v1)" \
	  || (echo "generated code is stale: run make generate and commit" >&2; exit 1)

lint: tools check-generated check-clients
	$(VENV)/bin/ruff check server tests tools bench clients/python
	$(VENV)/bin/ruff format --check server tests tools bench clients/python
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
	$(VENV)/bin/promptgate serve --dev --port $(PORT) --metrics-port $(METRICS_PORT) --database-url sqlite+aiosqlite:///./data/promptgate.db

clean:
	rm -rf $(VENV) node_modules $(TS_CLIENT)/node_modules $(TS_CLIENT)/dist .gen .mypy_cache .ruff_cache .pytest_cache
