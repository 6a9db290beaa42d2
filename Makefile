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

test: $(STAMP) stac-api lint
	$(PY) -m pytest -q tests

# The edit loop: every test not marked slow, stopping at the first failure (CI runs `make test`: all of them).
test-fast: $(STAMP)
	$(PY) -m pytest -q -x -m "not slow" -p no:cacheprovider tests

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf out data/sample benchmarks/work
