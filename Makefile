# Every target sets up what it needs: `make train` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install train test test-slow test-all lint format tensorboard clean

install: $(STAMP)

# Re-installs only when the pins or the project metadata change (a no-op the second time).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

train: install  ## offline quickstart: scratch ViT on scikit-learn's digits
	$(PY) -m src.train experiment=quickstart $(ARGS)

test: install  ## the default suite (what CI runs)
	$(PY) -m pytest $(ARGS)

test-slow: install  ## only the tests marked slow
	$(PY) -m pytest -m slow $(ARGS)

test-all: install
	$(PY) -m pytest -m 'slow or not slow' $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

tensorboard: install
	$(VENV)/bin/tensorboard --logdir outputs

clean:  ## removes caches only; run outputs and data are never deleted by make
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
