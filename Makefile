# Quick start:  make demo   (set up .venv if missing, then sweep + report on the built-in default)
#               make test   (set up if needed, then run the whole test suite)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.mmtune-installed
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	@# --no-cache-dir: the CUDA wheels are ~3 GB; caching them too doubles the disk the install needs.
	$(VENV)/bin/python -m pip install --quiet --no-cache-dir -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

# The main job on the built-in default: the quickstart sweep (joint vs OGM-GE vs OPM vs AMSS+ vs AIM vs UME,
# 3 seeds, synthetic data), then its report. Each run gets its own folder, so nothing is overwritten.
demo: setup
	@name=quickstart-$$(date +%Y%m%d-%H%M%S); \
	$(VENV)/bin/mmtune sweep search_spaces/quickstart.yaml --name $$name && \
	$(VENV)/bin/mmtune report runs/$$name --out runs/$$name/report.md

test: setup
	$(VENV)/bin/python -m pytest

bench: setup
	$(VENV)/bin/python bench/loop_overhead.py
	$(VENV)/bin/python bench/imbalance.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
