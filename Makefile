# dycon-monai developer commands. Every target installs what it needs first.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= demo_runs

.PHONY: install test test-all lint format demo bench monailabel-env

# torch first: an unpinned torch requirement would otherwise pull several GB of CUDA wheels
install:
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e ".[test,dev]"

test: install
	$(PYTHON) -m pytest -q

test-all: install
	$(PYTHON) -m pytest -q --runslow

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

bench: install
	$(PYTHON) benchmarks/bench_losses.py
	$(PYTHON) benchmarks/bench_train_step.py

# MONAI Label 0.8.5 in its own cached venv (about 8 GB; MONAILABEL_VENV overrides the place); see docs/monailabel.md
monailabel-env:
	bash scripts/monailabel_env.sh

# Synthetic-data demo: build a cohort, train DyCON briefly on CPU via the bundle, evaluate, print metrics (docs/quickstart.md)
demo: install
	$(PYTHON) -m dycon_monai.demo --out $(DEMO_DIR)
