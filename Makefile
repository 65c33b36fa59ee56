# pixpipe — every command bootstraps its own virtualenv in .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
LOCK := requirements.lock
# Examples per fuzz test: about 200 a second each here; CI runs a few hundred.
FUZZ_EXAMPLES ?= 20000
FUZZ_TIMEOUT ?= 3600

WORKERS ?= 3

.PHONY: postman cluster chaos run test unit integration e2e lint typecheck check protos check-protos bench clean venv lock audit fuzz check-contract

venv: $(STAMP)

## Exactly the locked, hash-checked dependencies (dev extra included), then pixpipe itself.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python scripts/check_lock.py
	@touch $(STAMP)

## Re-resolve $(LOCK) from pyproject.toml for every platform, with hashes. Pins that still
## fit are kept; LOCK_ARGS=--upgrade (or --upgrade-package NAME) moves them.
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet 'uv>=0.5,<1'
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
	  --generate-hashes --quiet --output-file $(LOCK) $(LOCK_ARGS)

## Known vulnerabilities in the locked dependencies (pip-audit; fails if it cannot look).
audit: $(STAMP)
	./scripts/audit.sh

## Property tests over untrusted input: the CSV reader and the codec (tests/fuzz).
fuzz: $(STAMP)
	PIXPIPE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest tests/fuzz -q \
	  --timeout $(FUZZ_TIMEOUT) --hypothesis-show-statistics $(PYTEST_ARGS)

## buf lint and buf breaking (against HEAD~1, or BUF_AGAINST=<ref>) on protos/.
check-contract:
	./scripts/check_contract.sh

## Start the whole stack (embedded NATS + SQLite unless PIXPIPE_* say otherwise).
run: $(STAMP)
	$(BIN)/pixpipe-stack

## A three-node NATS JetStream cluster (R3 streams), PostgreSQL and $(WORKERS) workers.
cluster: $(STAMP)
	$(BIN)/pixpipe-cluster --workers $(WORKERS)

## The fault runs (workers, NATS nodes, PostgreSQL, notifier killed mid-batch) with a summary.
chaos: $(STAMP)
	$(BIN)/pytest tests/e2e/test_faults.py -q $(PYTEST_ARGS)

## The Postman collection against a running stack (make run), with newman.
postman:
	"$$(./scripts/install_newman.sh)" run postman_collection.json --env-var baseUrl=$(or $(BASE_URL),http://127.0.0.1:8000) $(NEWMAN_ARGS)

## Run the test suite (unit, integration against real NATS and databases, end to end).
test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: $(STAMP)
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

e2e: $(STAMP)
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck check-protos

## Regenerate the Python stubs from protos/.
protos: $(STAMP)
	PYTHON=$(BIN)/python ./scripts/gen_protos.sh

## Fail when the committed stubs differ from what protos/ generates.
check-protos: protos
	git diff --exit-code -- src/pixpipe/v1 || (echo "generated stubs are stale: run make protos and commit" && exit 1)

## Benchmarks: end-to-end images/s against raw Pillow on the same images, watcher delays,
## one 100,000-image request on every interface (PIXPIPE_BENCH_DATABASE_URL: PostgreSQL),
## bytes, CPU and SSIMULACRA2 of each JPEG encoder and effort (bench.codec), and a catalogue
## with 30% repeated URLs with and without content-addressed reuse (bench.reuse).
bench: $(STAMP)
	$(BIN)/python -m bench.pipeline $(BENCH_ARGS)
	$(BIN)/python -m bench.watchers
	$(BIN)/python -m bench.catalogue
	$(BIN)/python -m bench.codec
	$(BIN)/python -m bench.reuse

clean:
	rm -rf $(VENV) pixpipe-data .tools .pytest_cache .mypy_cache .ruff_cache .hypothesis
