# strhub: set-up, demo, tests and benchmarks. Every target creates the virtual environment first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
REQS := requirements/core.txt requirements/train.txt requirements/bench.txt requirements/tune.txt requirements/test.txt requirements/export.txt requirements/dev.txt
DEMO_DIR ?= data/demo

.PHONY: venv demo test lint format bench reqs clean-venv real-data synth-cpu browser

venv: $(VENV)/.installed

$(VENV)/.installed: $(REQS) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(addprefix -r ,$(REQS))
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# The main job end to end on data it renders itself: generate -> train -> test -> bench -> read. Plain renders (solid
# backgrounds, no distortion, many fonts): see configs/experiment/parseq-demo.yaml for why.
DEMO_RUN ?= outputs/demo
DEMO_STEPS ?= 2500
demo: venv
	$(PY) tools/synth.py --out $(DEMO_DIR)/train/generated --num 20000 --charset 36_lowercase --preset plain --workers 2 --seed 0 --overwrite
	$(PY) tools/synth.py --out $(DEMO_DIR)/val/generated --num 500 --charset 36_lowercase --preset plain --workers 2 --seed 1 --overwrite
	$(PY) tools/synth.py --out $(DEMO_DIR)/test/generated --num 1000 --charset 36_lowercase --preset plain --workers 2 --seed 2 --overwrite
	rm -rf $(DEMO_RUN)
	$(PY) train.py +experiment=parseq-demo data.root_dir=$(DEMO_DIR) trainer.max_steps=$(DEMO_STEPS) hydra.run.dir=$(DEMO_RUN)
	$(PY) test.py $(DEMO_RUN)/checkpoints/last.ckpt --test_dirs $(DEMO_DIR)/test --errors $(DEMO_RUN)/errors.tsv
	$(PY) bench.py +experiment=parseq-demo device=auto 'batch_sizes=[1,32]' min_run_time=0.5
	$(PY) tools/check_lmdb.py $(DEMO_DIR)/test/generated --export $(DEMO_RUN)/images --num 6 > /dev/null
	$(PY) read.py $(DEMO_RUN)/checkpoints/last.ckpt --images $(DEMO_RUN)/images/*.jpg
	@echo "demo done: run in $(DEMO_RUN); the true labels of the images read above are in $(DEMO_RUN)/images/labels.tsv"

test: venv browser
	$(PY) -m pytest -q tests

# A headless Chromium from the distribution's packages, for the test that opens test.py's HTML report in a real
# browser. Installed only where it is missing and this is a Debian-like system we may install on (root); otherwise
# that one test is skipped and says why.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (for the HTML report test)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "could not install chromium: the HTML report's browser test will be skipped"; \
	else echo "no chromium and no way to install it here: the HTML report's browser test will be skipped"; fi

# Real word crops (folders of images + labels.tsv) -> data/real/{all,finetune,heldout}/<set> LMDBs.
REAL_SRC ?= ../shared/data/real
real-data: venv
	$(PY) tools/prepare_real.py --src $(REAL_SRC) --out data/real --overwrite

# The <= 2 h CPU recipe from the synthetic stream, then its accuracy on every real crop (held out from training).
# A new run directory each time (a run directory takes one training run; resume one with ckpt_path=<dir>).
ifndef SYNTH_CPU_RUN
SYNTH_CPU_RUN := outputs/crnn-synth-cpu/$(shell date +%Y-%m-%d_%H-%M-%S)
endif
synth-cpu: venv real-data
	$(PY) train.py +experiment=crnn-synth-cpu hydra.run.dir=$(SYNTH_CPU_RUN)
	$(PY) test.py $(SYNTH_CPU_RUN)/checkpoints/last.ckpt --test_dirs data/real/all

lint: venv
	$(VENV)/bin/ruff check strhub tests tools *.py
	$(VENV)/bin/ruff format --check strhub tests tools *.py

format: venv
	$(VENV)/bin/ruff format strhub tests tools *.py
	$(VENV)/bin/ruff check --fix strhub tests tools *.py

bench: venv
	$(PY) bench.py +experiment=parseq-tiny

# Re-pin every layer from its *.in file (needs the package index).
reqs:
	$(PY) -m pip install --quiet pip-tools
	cd requirements && for layer in core train bench tune export test dev; do \
		../$(VENV)/bin/pip-compile --quiet --strip-extras --no-header --no-emit-find-links --no-emit-index-url $$layer.in -o $$layer.txt; \
	done

clean-venv:
	rm -rf $(VENV)
