# fxpress: the two commands of the README are `make demo` and `make test`;
# both set up everything they need first (a virtual environment in .venv).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fxpress-setup

.PHONY: setup demo test test-fast lint bench bench-quick clean

setup: $(STAMP)

# torch is pinned (2.13.0, CPU build) in pyproject.toml: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -c "import torch, tvm, fxpress; print('fxpress set up: torch', torch.__version__, 'tvm', tvm.__version__)"
	touch $(STAMP)

demo: setup
	$(BIN)/fxpress demo

test: setup
	$(BIN)/python -m pytest -q -ra --timeout=900

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check fxpress tests tools examples
	$(BIN)/ruff format --check fxpress tests tools examples

bench: setup
	$(BIN)/python -m tools.bench

bench-quick: setup
	$(BIN)/python -m tools.bench --quick --out-dir build/bench-quick

clean:
	rm -rf build demo-artifact .pytest_cache
