# Two commands set up a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-fast bench stress lint format proto system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

## serve: start the server on the embedded default model (port 50051)
serve: $(STAMP)
	$(BIN)/lstm-server $(ARGS)

## test: install what the tests need, then run the whole suite (every tier; none may skip)
test: $(STAMP) system-deps
	LSTM_REQUIRE_SYSTEM_TESTS=1 $(BIN)/pytest $(PYTEST_ARGS)

## test-fast: the unit tier only: no sockets, no TensorFlow, seconds
test-fast: $(STAMP)
	$(BIN)/pytest tests/unit -m unit $(PYTEST_ARGS)

## bench: the benchmark; writes bench/results/ and the README's table
bench: $(STAMP)
	$(BIN)/python bench/run.py $(ARGS)

## stress: health-check latency idle, under legal load and under floods; memory before and after
stress: $(STAMP)
	$(BIN)/python bench/stress.py $(ARGS)

## lint: ruff and mypy
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## proto: regenerate client/lstm_client/v1 from proto/
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

## system-deps: Debian packages the tests run for real
system-deps:
	bash scripts/system-deps.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
