# megaseqpe: every target bootstraps .venv itself, so a bare checkout needs only python3.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.megaseqpe-installed
# The CPU build of torch; override (e.g. TORCH_SPEC=torch) on a GPU machine.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel

# Re-runs only when setup.py changes: `make test` twice installs nothing the second time.
$(STAMP): setup.py | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)" || $(PY) -m pip install torch
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/pe_overhead.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
