# Two entry points for newcomers (see README.md):
#   make demo   -- set up .venv and run the demo (synthetic data -> plan -> train -> predict -> Dice table)
#   make test   -- set up .venv and run the test suite (unit tests, then the end-to-end tests)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= logvmamba_demo

.PHONY: venv test demo lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[test]" $(TORCH_PINS)
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check .

test: venv lint
	$(PY) -m pytest
	$(PY) -m pytest -m e2e

demo: venv
	$(VENV)/bin/logvmamba-nnunet demo --output $(DEMO_DIR)
