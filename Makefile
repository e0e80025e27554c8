# The two commands a newcomer needs:  make demo   and   make test
# Both create .venv on first use (CPU build of torch first, so no CUDA build is pulled).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= demo-out

.PHONY: setup demo test lint typecheck unit clean

$(BIN)/onnxrec: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/onnxrec

setup: $(BIN)/onnxrec

demo: setup
	$(BIN)/onnxrec demo --out $(DEMO_DIR)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy core trainer exporter

unit: setup
	$(BIN)/python -m pytest -q

test: lint typecheck unit

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
