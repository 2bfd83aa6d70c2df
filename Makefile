# make test   - create .venv, install cudcn and everything the tests use, run the suite
# make check-kernels - NVRTC-compile every GPU kernel instantiation (no GPU needed)
# make bench  - asv: run the benchmark suite for the current commit

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cudcn-installed

.PHONY: test check-kernels bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

check-kernels: $(STAMP)
	$(PY) -m cudcn compile-check

bench: $(STAMP)
	cd benchmarks && ../$(PY) -m asv machine --yes && \
	    ../$(PY) -m asv run --environment existing:../$(PY) --set-commit-hash $$(git rev-parse HEAD)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
