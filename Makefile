# The two commands a newcomer needs:  make demo   and   make test
# Both create .venv on first use (CPU build of torch first, so no CUDA build is pulled).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= demo-out

.PHONY: setup demo test test-quick lint typecheck unit clean proto proto-check proto-lint clients redis

$(BIN)/onnxrec: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/onnxrec

setup: $(BIN)/onnxrec

demo: setup
	$(BIN)/onnxrec demo --out $(DEMO_DIR)

lint: setup proto-check proto-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Python stubs are generated from proto/ (never edited by hand); proto-check fails if they are stale.
proto: setup
	$(BIN)/python scripts/gen_proto.py

# Stubs for every language from proto/ with the standard tools, and the example clients built:
# Python (grpcio-tools), Node.js (@grpc/proto-loader at run time), C++ and Java (protoc plugins), Go.
clients: proto
	scripts/ci/install_node_go.sh
	scripts/ci/install_cpp_java.sh
	clients/cpp/build.sh
	clients/java/build.sh
	clients/go/build.sh

# redis-server (Debian's package) for the Redis event-store tests, which start their own on a free port.
redis:
	scripts/ci/install_redis.sh

# The client-only distribution onnxrec-client (grpcio + protobuf, no torch): wheel and sdist into dist/
# (packaging/onnxrec-client). Install it or onnxrec, never both: onnxrec already contains the client.
.PHONY: client-dist
client-dist: setup
	$(BIN)/python scripts/build_client_dist.py --out dist

proto-check: setup
	$(BIN)/python scripts/gen_proto.py --check

# buf comes from PyPI (buf-bin, a dev dependency), so linting needs no npm.
proto-lint: setup
	$(BIN)/buf lint

typecheck: setup
	scripts/typecheck.sh $(abspath $(BIN))/mypy

# One pytest worker per core (pytest-xdist; a test file's tests stay on one worker, so its fixtures are
# built once), progress as it goes, and the 15 slowest tests at the end. On this project's 2-core
# machine: 10 minutes against 18 for one worker, with another job running.
PYTEST := $(BIN)/python -m pytest -n auto --dist loadfile --durations=15

unit: setup clients redis
	$(PYTEST)

# Everything: lint, types, the other languages' toolchains and examples, every test (what CI runs).
test: lint typecheck unit

# The quick lane for local work (a few minutes): every test but the long end-to-end ones (marker
# `slow`) and the other languages' example clients (marker `clients`, which need `make clients`).
test-quick: setup
	$(PYTEST) -m "not slow and not clients"

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
