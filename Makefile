# strhub: set-up, demo, tests and benchmarks. Every target creates the virtual environment first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
REQS := requirements/core.txt requirements/train.txt requirements/bench.txt requirements/tune.txt requirements/test.txt requirements/dev.txt
DEMO_DIR ?= data/demo

.PHONY: venv demo test lint format bench reqs clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: $(REQS) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(addprefix -r ,$(REQS))
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

demo: venv
	$(PY) -m strhub.demo --root $(DEMO_DIR)

test: venv
	$(PY) -m pytest -q tests

lint: venv
	$(VENV)/bin/ruff check strhub tests tools *.py
	$(VENV)/bin/ruff format --check strhub tests tools *.py

format: venv
	$(VENV)/bin/ruff format strhub tests tools *.py
	$(VENV)/bin/ruff check --fix strhub tests tools *.py

bench: venv
	$(PY) bench.py model=parseq-tiny

# Re-pin every layer from its *.in file (needs the package index).
reqs:
	$(PY) -m pip install --quiet pip-tools
	cd requirements && for layer in core train bench tune test dev; do \
		../$(VENV)/bin/pip-compile --quiet --strip-extras --no-header --no-emit-find-links --no-emit-index-url $$layer.in -o $$layer.txt; \
	done

clean-venv:
	rm -rf $(VENV)
