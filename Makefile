# The front door: `make run` starts the service, `make test` proves it. Everything else is here too.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml clients/pyproject.toml | cksum | cut -d' ' -f1)

PROTO_FILES := $(shell find protos -name '*.proto' | sort)

.PHONY: help run migrate audit test check layers check-deploy check-generated-ts generate-ts lint format typecheck lint-proto breaking generate check-generated bench bench-smoke bench-tools chaos fuzz clean

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e clients -e .
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP) ## Create .venv with every dependency (done by the other targets when needed).

run: $(STAMP) ## Start the service (embedded PostgreSQL unless DATABASE_URL is set).
	$(BIN)/python -m pluct_server serve

migrate: $(STAMP) ## Apply pending database migrations and exit.
	$(BIN)/python -m pluct_server migrate

audit: $(STAMP) ## Check every balance against its ledger (exit 1, and who, when one differs).
	$(BIN)/python -m pluct_server audit

test: $(STAMP) ## Run the whole test suite against a real PostgreSQL and real servers.
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: lint typecheck layers lint-proto check-generated check-generated-ts check-deploy ## Every static check CI runs.

lint: $(STAMP) ## ruff lint and format check.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## Apply ruff's formatting and safe fixes.
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP) ## mypy on hand-written code.
	$(BIN)/mypy pluct_server tests clients/pluct_client chaos

layers: $(STAMP) ## import-linter: each layer imports only the layers below it (contracts: pyproject.toml).
	$(BIN)/lint-imports --no-cache

# A descriptor image of protos/ and every import, made by the stubs' own protoc run (imports come
# from installed packages: googleapis-common-protos, grpcio-tools, protovalidate).
build/pluct.binpb: $(PROTO_FILES) clients/generate.py $(STAMP)
	$(BIN)/python clients/generate.py --image $@

lint-proto: build/pluct.binpb ## buf lint on protos/.
	$(BIN)/buf lint $< --path pluct --config buf.yaml

breaking: build/pluct.binpb ## buf breaking against main's last commit (BASE=<git ref> to pick another).
	@rm -rf build/base && mkdir -p build/base && git archive $${BASE:-main} protos | tar -x -C build/base
	$(BIN)/python clients/generate.py --image build/base.binpb --protos build/base/protos
	$(BIN)/buf breaking $< --against build/base.binpb --path pluct --config buf.yaml

# TypeScript stubs for internal services not written in Python: buf generate with protoc-gen-es,
# a local plugin from npm (pinned in clients/ts/package-lock.json). Needs Node.js 20+ and npm.
TS_DIR := clients/ts
TS_PLUGIN := $(TS_DIR)/node_modules/.bin/protoc-gen-es

$(TS_PLUGIN): $(TS_DIR)/package-lock.json
	cd $(TS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

generate-ts: build/pluct.binpb $(TS_PLUGIN) ## Regenerate the TypeScript stubs under clients/ts/gen from protos/.
	@rm -rf $(TS_DIR)/gen
	$(BIN)/buf generate $< --template $(TS_DIR)/buf.gen.yaml -o $(TS_DIR)/gen --exclude-path google/protobuf --exclude-path buf/validate

check-generated-ts: build/pluct.binpb ## Fail when clients/ts/gen is stale or does not type-check (skipped without npm).
	@if ! command -v npm >/dev/null; then echo "npm not found: TypeScript stubs not checked"; exit 0; fi; \
	$(MAKE) --no-print-directory $(TS_PLUGIN) \
	&& rm -rf build/ts && $(BIN)/buf generate $< --template $(TS_DIR)/buf.gen.yaml -o build/ts --exclude-path google/protobuf --exclude-path buf/validate \
	&& (diff -r build/ts $(TS_DIR)/gen || (echo "clients/ts/gen is stale: run 'make generate-ts' and commit the result" && exit 1)) \
	&& cd $(TS_DIR) && node_modules/.bin/tsc -p tsconfig.json

check-deploy: $(STAMP) ## Validate the Kubernetes manifests in deploy/ against the API's schemas.
	$(BIN)/kubernetes-validate --strict --quiet deploy/*.yaml

generate: $(STAMP) ## Regenerate the Python stubs under clients/ (and the TypeScript ones, with npm) from protos/.
	$(BIN)/python clients/generate.py clients
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory generate-ts; \
	else echo "npm not found: TypeScript stubs not regenerated (make generate-ts)"; fi

check-generated: $(STAMP) ## Fail when clients/ is not what protos/ generates.
	@rm -rf build/generated && mkdir -p build/generated
	$(BIN)/python clients/generate.py build/generated
	@diff -r --exclude=__pycache__ build/generated/pluct clients/pluct \
		|| (echo "clients/ is stale: run 'make generate' and commit the result" && exit 1)

fuzz: $(STAMP) ## Fuzz the JSON shim from its own OpenAPI document, longer than `make test` does.
	PLUCT_FUZZ_EXAMPLES=$${PLUCT_FUZZ_EXAMPLES:-300} $(BIN)/python -m pytest -s tests/test_http_fuzz.py $(PYTEST_ARGS)

bench: $(STAMP) ## Every workload at 1/8/64/256 in flight (needs h2load, wrk); writes bench/out/.
	$(BIN)/python -m bench

bench-smoke: $(STAMP) ## A few seconds of every workload, to prove the benchmark still runs.
	$(BIN)/python -m bench --smoke
	$(BIN)/python -m bench.access_line --runs 1 --lines 200 >/dev/null
	$(BIN)/python -m bench.token_algorithms --runs 1 --tokens 50 >/dev/null
	$(BIN)/python -m bench.event_loops --runs 1 --seconds 1 --warm-up 0 >/dev/null

bench-tools: ## Install the load generators the benchmark drives (Debian: h2load, wrk).
	@command -v h2load >/dev/null && command -v wrk >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq nghttp2-client wrk >/dev/null)

chaos: $(STAMP) ## Workers killed, PostgreSQL restarted and failed over, PgBouncer, under load; chaos/out/.
	@command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] \
		|| (apt-get update -qq && apt-get install -y -qq pgbouncer >/dev/null) \
		|| echo "pgbouncer could not be installed: its scenario will be skipped"
	$(BIN)/python -m chaos $(CHAOS_ARGS)

clean: ## Remove the virtualenv and build output (keeps .data, the dev database).
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
