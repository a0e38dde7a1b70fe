# Every target sets up what it needs: `make train` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# CI and developers get the optional extras too: the tests read back what the loggers wrote and run exported models
EXTRAS ?= dev,export,hf,serve,data,mlflow,wandb

.PHONY: install train digits-images test test-slow test-all slurm-test lint format tensorboard gpu-wheels clean

install: $(STAMP)

# Re-installs only when the pins or the project metadata change (a no-op the second time).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

train: install  ## offline quickstart: scratch ViT on scikit-learn's digits
	$(PY) -m src.train experiment=quickstart $(ARGS)

digits-images: install  ## scikit-learn's digits as PNG class folders + labels.csv in data/digits_png
	$(PY) scripts/digits_to_images.py data/digits_png

test: install  ## the default suite (what CI runs)
	$(PY) -m pytest $(ARGS)

test-slow: install  ## only the tests marked slow
	$(PY) -m pytest -m slow $(ARGS)

slurm-test: install  ## the SLURM tests on a one-node and a two-node cluster with accounting started for them (root; Debian's slurmctld slurmd slurmdbd slurm-client munge mariadb-server-core mariadb-client-core, and iproute2 for the nodes' network namespaces)
	$(PY) -m pytest tests/slurm -m slow $(ARGS)

test-all: install
	$(PY) -m pytest -m 'slow or not slow' $(ARGS)

lint: install  ## ruff, and the import rule: a package imports only packages below it (pyproject.toml [tool.importlinter])
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

tensorboard: install
	$(VENV)/bin/tensorboard --logdir outputs

# The wheels a GPU machine whose Python 3.12 has torch/Lightning/timm lacks (scripts/gpu_check.sh), all pure
# Python, at their pins: Hydra, the grad-cam package (the report's Grad-CAM of CNNs) with ttach, and timm (timm.task
# is recent); pip builds those published as source only (antlr4's runtime, grad-cam)
GPU_WHEELS = hydra-core omegaconf antlr4-python3-runtime grad-cam ttach timm
gpu-wheels: install
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip wheel --quiet --no-deps -w .whl \
		$(foreach name,$(GPU_WHEELS),$(name)==$$(grep -i '^$(name)==' constraints.txt | cut -d= -f3))
	ls .whl

clean:  ## removes caches only; run outputs and data are never deleted by make
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
