# The two commands of the README: `make demo` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench setup stac-api clean notebooks

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cloudmask demo --out out/demo

# Run every notebook top to bottom (jupytext -> nbconvert, this venv's kernel) into out/notebooks/*.ipynb,
# outputs included; a cell that fails stops it. Open the results with `jupyter lab out/notebooks` (not installed).
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))
notebooks: $(STAMP)
	mkdir -p out/notebooks
	for nb in $(NOTEBOOKS); do \
	  CLOUDMASK_NOTEBOOK_OUT=$(CURDIR)/out/notebooks/$$(basename $$nb .py) $(VENV)/bin/jupytext --to ipynb \
	    --execute --output out/notebooks/$$(basename $$nb .py).ipynb $$nb || exit 1; \
	done

stac-api: $(STAMP)
	PYTHON=$(PY) bash scripts/stac-api-setup.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check cloudmask tests benchmarks
	$(VENV)/bin/mypy

# Each step is timed on its own line ("[time] ..."); pytest prints its 30 slowest tests.
test:
	@t=$$(date +%s); $(MAKE) --no-print-directory setup || exit 1; echo "[time] install: $$(( $$(date +%s) - t )) s"
	@t=$$(date +%s); $(MAKE) --no-print-directory stac-api || exit 1; echo "[time] STAC API set-up: $$(( $$(date +%s) - t )) s"
	@t=$$(date +%s); $(MAKE) --no-print-directory lint || exit 1; echo "[time] lint: $$(( $$(date +%s) - t )) s"
	@t=$$(date +%s); $(PY) -m pytest -q --durations=30 tests; rc=$$?; echo "[time] pytest: $$(( $$(date +%s) - t )) s"; exit $$rc

# The edit loop: every test not marked slow, stopping at the first failure (CI runs `make test`: all of them).
# Tests that start a service or another process are marked slow automatically (tests/conftest.py).
test-fast: $(STAMP)
	$(PY) -m pytest -q -x -m "not slow" -p no:cacheprovider tests

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf out data/sample benchmarks/work
