# Run `make help` for the targets. Everything runs from the project virtualenv.
VENV ?= .venv
PYTHON ?= python3.11
BIN := $(VENV)/bin
PY_PATHS := pyrallel tests devtools
TYPECHECK_PATHS ?= pyrallel devtools
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install venv fetch-kafka test test-unit test-integration pytest lint typecheck \
	format check-generated generate broker demo

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

venv: $(BIN)/python ## create the virtualenv if missing

install: venv ## virtualenv + pip install -e '.[dev]' + Kafka jars
	$(BIN)/python -m pip install -e '.[dev]'
	$(BIN)/python -m devtools.kafka_broker fetch

fetch-kafka: ## download the Kafka broker jars into .cache/kafka (idempotent)
	$(BIN)/python -m devtools.kafka_broker fetch

# pytest exits 5 when it collected no test; make fails on any non-zero status, so an
# empty run fails `make test` as it should.
test: lint typecheck check-generated pytest ## lint + typecheck + the whole pytest suite (CI runs this)

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

demo: ## run the end-to-end demo
	$(BIN)/pyrallel demo
