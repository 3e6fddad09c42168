# Two commands for a newcomer (see README):  `make demo`  and  `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
AVS := $(VENV)/bin/avs

.PHONY: setup demo test test-slow lint bench clean

# Creates .venv in the checkout and installs the pinned torch stack plus dev tools.
# The stamp file is rebuilt whenever pyproject.toml changes.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[worker,dev]'
	@touch $@

demo: setup
	$(AVS) model list
	$(AVS) model info --variant avesformer-pvt_v2_b2 --json
	$(AVS) bench model --variant avesformer-tiny --batch-size 2 --size 224 --iters 5 --json

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -m "not slow and not gpu"

test-slow: setup
	$(VENV)/bin/pytest -m "slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
