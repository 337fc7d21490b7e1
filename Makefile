# The README's commands. `make demo` and `make test` each set up the environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast summary clean

setup: $(STAMP)

# A virtual environment with the package and every CPU extra (torch comes from PyPI, as a
# user installs it). Re-runs when pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[all]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	$(PY) benchmarks/demo.py

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

summary: setup
	for preset in paper-r50 paper-swin-t paper-swin-b; do \
		$(PY) -m proxyformer.summary --preset $$preset --frames 19 --size 360x640; done

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
