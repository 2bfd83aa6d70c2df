# make test   - create .venv, install cudcn and everything the tests use, run the suite
# make check-kernels - NVRTC-compile every GPU kernel instantiation (no GPU needed)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cudcn-installed

.PHONY: test check-kernels clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

check-kernels: $(STAMP)
	$(PY) -m cudcn compile-check

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
