# layerwise: set-up and the main jobs. Every install uses constraints.txt (torch==2.13.0, CPU build).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PIP     = $(BIN)/pip install --quiet -c constraints.txt
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install demo test hinton bench clean

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

test: install
	$(BIN)/python -m pytest -q

# The classic 784-500-500-2000-10 deep belief net (about 12 minutes on 2 cores).
hinton: install
	$(BIN)/python benchmarks/hinton_mnist.py

clean:
	rm -rf $(VENV) runs .pytest_cache
