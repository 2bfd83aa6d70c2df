# make demo   - create .venv and run `cudcn demo` (figures in docs/demo)
# make test   - create .venv, install cudcn and everything the tests use, run the suite
# make check-kernels - NVRTC-compile every GPU kernel instantiation with CUDA 12 and 13,
#                      for every architecture each supports (no GPU needed)
# make bench  - asv: run the benchmark suite for the current commit
# make sanitize - kernel tests and fuzzers on CPU kernels built with ASan + UBSan
# make racecheck - kernel tests, fuzzers and the GPU path's glue on CPU kernels that check
#                  every launch for races among its threads
# make coverage - share of kernel source lines the test suite executes

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cudcn-installed

.PHONY: demo test check-kernels bench sanitize racecheck coverage clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cudcn demo --out docs/demo

test: $(STAMP)
	$(PY) -m pytest

check-kernels: $(STAMP)
	$(PY) -m cudcn compile-check --cuda 12 --cuda 13

bench: $(STAMP)
	cd benchmarks && ../$(PY) -m asv machine --yes && \
	    ../$(PY) -m asv run --environment existing:../$(PY) --set-commit-hash $$(git rev-parse HEAD)

# The kernel tests and fuzzers; torch is left out (it does not run under a preloaded ASan).
KERNEL_TESTS := tests/test_deform_conv2d.py tests/test_roi_pool.py tests/test_psroi_pool.py \
	tests/test_fuzz.py tests/test_deterministic.py tests/test_executors.py tests/test_half.py \
	tests/test_border_gradient.py
SANITIZE_FLAGS := -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all \
	-fno-omit-frame-pointer -g -O1

sanitize: $(STAMP)
	CUDCN_CXXFLAGS="$(SANITIZE_FLAGS)" CUDCN_CACHE_DIR="$(CURDIR)/.cache/sanitize" \
	LD_PRELOAD="$$($${CXX:-c++} -print-file-name=libasan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	$(PY) -m pytest -p no:cacheprovider --capture=sys -m "not torchvision and not gpu" $(KERNEL_TESTS)

racecheck: $(STAMP)
	CUDCN_CXXFLAGS="-DCUDCN_RACECHECK" CUDCN_CACHE_DIR="$(CURDIR)/.cache/racecheck" \
	$(PY) -m pytest -p no:cacheprovider -q -m "not gpu" $(KERNEL_TESTS) tests/test_cupy_glue.py \
	    tests/test_racecheck.py

coverage: $(STAMP)
	rm -rf "$(CURDIR)/.cache/coverage"
	CUDCN_CXXFLAGS="--coverage -O0" CUDCN_CACHE_DIR="$(CURDIR)/.cache/coverage" \
	$(PY) -m pytest -p no:cacheprovider -q -m "not gpu" $(KERNEL_TESTS) tests/test_torch_adapter.py
	$(PY) tools/kernel_coverage.py "$(CURDIR)/.cache/coverage/cpu" raw_kernels

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .cache
