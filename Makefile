# layerwise: set-up and the main jobs. Every install uses constraints.txt (torch==2.13.0, CPU build).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PIP     = $(BIN)/pip install --quiet -c constraints.txt
# the tests share the cores with their own subprocesses: no OpenMP thread spins there
test test-fast: export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install demo test test-fast lint hinton bench clean

$(BIN)/layerwise: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[all]'
	touch $@

install: $(BIN)/layerwise

# The main job: fetch MNIST once, pretrain, back up the pretrained net, fine-tune, evaluate.
demo: install
	$(BIN)/layerwise data fetch mnist
	$(BIN)/layerwise train recipes/quick-mnist.toml

# everything (what CI runs), on two pytest workers: most of the suite's time is worker and
# command processes starting (each imports torch), which two workers overlap on 2 cores
test: install
	$(BIN)/python -m pytest -q -n 2

# what CI checks before the tests: lint, format, types (settings in pyproject.toml)
lint: install
	$(PIP) -e '.[lint]'
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# under a minute: no subprocess training runs, no worker groups, no downloads
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not distributed and not network"

# The classic 784-500-500-2000-10 deep belief net: 99% on MNIST in about 7.5 minutes on 2 cores
# with bfloat16 instructions (RECIPE=recipes/hinton-mnist-fp32.toml without them: about 10).
hinton: install
	$(BIN)/python benchmarks/hinton_mnist.py $(if $(RECIPE),--recipe $(RECIPE))

clean:
	rm -rf $(VENV) runs .pytest_cache
