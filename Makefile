# Run `make help` for the targets. Everything runs from the project virtualenv.
VENV ?= .venv
BIN := $(VENV)/bin
PY_PATHS := pyrallel tests devtools
TYPECHECK_PATHS ?= pyrallel devtools
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install install-python fetch-kafka test test-unit test-integration pytest lint typecheck \
	format check-generated generate broker demo stack

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: ## everything the tests need: Prometheus, Java/Maven if missing, .venv, Kafka jars
	bash devtools/bootstrap.sh

install-python: ## only the .venv with pip install -e '.[dev]' (enough for the demo)
	bash devtools/bootstrap.sh --python-only

fetch-kafka: ## download the Kafka broker jars into .cache/kafka (idempotent)
	$(BIN)/python -m devtools.kafka_broker fetch

# pytest exits 5 when it collected no test; make fails on any non-zero status, so an
# empty run fails `make test` as it should.
test: install lint typecheck check-generated pytest ## install what is missing, then lint, typecheck, generated-file check, all tests (CI runs this)

pytest: ## the whole pytest suite (unit + real-broker tests); PYTEST_ARGS=... to add flags
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: ## unit tests only (no Kafka broker, no Java)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: ## tests against a real Apache Kafka broker (started by the fixtures)
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

lint: ## ruff check + ruff format --check (changes nothing)
	$(BIN)/ruff check $(PY_PATHS)
	$(BIN)/ruff format --check $(PY_PATHS)

typecheck: ## mypy --strict (settings in pyproject.toml)
	$(BIN)/mypy $(TYPECHECK_PATHS)

format: ## rewrite files: ruff format + ruff check --fix
	$(BIN)/ruff format $(PY_PATHS)
	$(BIN)/ruff check --fix $(PY_PATHS)

check-generated: ## fail if dashboards, alert rules or runbooks differ from the generator
	$(BIN)/pyrallel generate --check

generate: ## rewrite dashboards/, monitoring/prometheus/ and runbooks/ from the generator
	$(BIN)/pyrallel generate

broker: ## run a Kafka broker in the foreground (Ctrl-C stops it)
	$(BIN)/python -m devtools.kafka_broker run

demo: install-python ## the demo on the embedded mock cluster (ARGS="--messages 100000 --json")
	$(BIN)/pyrallel demo $(ARGS)

# The compose stack minus Grafana, from the same files (compose/, devtools/stack.py).
stack: install ## Kafka + Prometheus + continuous demo on 127.0.0.1, no Docker; POISON_KEY=k hangs key k
	$(BIN)/python -m devtools.stack $(if $(POISON_KEY),--poison-key=$(POISON_KEY))

# Not part of `make test`: the full run takes about 15 minutes (CI runs only `--smoke`,
# through tests/bench/). Results land in benchmarks/results/latest.{json,md}.
.PHONY: bench
bench: install ## benchmark suite on a real broker (~15 min); ARGS="--smoke" for seconds, --help for flags
	$(BIN)/pyrallel bench $(ARGS)
