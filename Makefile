# make demo   - create .venv and run `cudcn demo` (figures in docs/demo)
# make test   - create .venv, install cudcn and everything the tests use, run the suite
# make docs   - build the documentation site into docs/_build/html (warnings are errors)
# make check-kernels - NVRTC-compile every GPU kernel instantiation with CUDA 12 and 13,
#                      for every architecture each supports (no GPU needed)
# make bench  - asv: the whole benchmark suite on the working tree, in .venv (no build)
# make bench-history [COMMITS=3] - asv: build and benchmark the last COMMITS commits of
#               main in asv's own virtualenv (the quick subset), HTML in .asv/html
# make bench-compare [BASE=main] - asv continuous: build BASE and HEAD, compare the quick
#               subset, exit non-zero on a slowdown beyond asv's factor (1.1)
# make sanitize - kernel tests and fuzzers on CPU kernels built with ASan + UBSan
# make racecheck - kernel tests, fuzzers and the GPU path's glue on CPU kernels that check
#                  every launch for races among its threads
# make coverage - share of kernel source lines the test suite executes

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cudcn-installed

.PHONY: demo test docs check-kernels bench bench-history bench-compare sanitize racecheck coverage \
	clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cudcn demo --out docs/demo

test: $(STAMP)
	$(PY) -m pytest

# -n: every cross-reference must resolve; -W: any warning (a broken reference, a
# malformed docstring, a documented name without a docstring) fails the build.
docs: $(STAMP)
	rm -rf docs/_build
	$(PY) -m sphinx -b html -n -W --keep-going docs docs/_build/html

check-kernels: $(STAMP)
	$(PY) -m cudcn compile-check --cuda 12 --cuda 13

# Benchmarks run without this machine's OpenBLAS overrides (issue 12).
BENCH_ENV := env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE
# asv itself, apart from .venv: asv builds each commit in its own virtualenv.
ASV_VENV := .asv/venv
ASV := $(CURDIR)/$(ASV_VENV)/bin/asv
COMMITS ?= 3
BASE ?= main
# The quick subset, as asv matches `name(param, ...)`: CPU float32, deform_conv2d at
# (2, 64, 56) forward and backward through the NumPy API and the torch adapter, the
# RoI poolings (with offsets and mask) forward and backward, and the ratios against
# the peers of every deform_conv2d track and of each pooling's forward.
HISTORY_CONV := DeformConv2d\.time_.*\('N2-C64-56', 'cpu', 'float32'\)
HISTORY_POOL := \.Deform(PS)?RoIPool\.time_.*\('cpu', 'float32'(, 'offset-mask')?\)
HISTORY_PEERS := VsPeers\.track_.*\('N2-C64-56', 'cpu'\)|Vs(PS)?RoIAlign\.track_forward_vs_.*\('cpu'(, 'no-offset')?\)
HISTORY_BENCH := $(HISTORY_CONV)|$(HISTORY_POOL)|$(HISTORY_PEERS)
# Few samples per time_* benchmark; the track_* ratios measure their own rounds.
HISTORY_ATTRS := -a rounds=1 -a repeat=3 -a warmup_time=0.1

bench: $(STAMP)
	cd benchmarks && ../$(PY) -m asv machine --yes && \
	    $(BENCH_ENV) ../$(PY) -m asv run --environment existing:../$(PY) \
	    --set-commit-hash $$(git rev-parse HEAD)

$(ASV):
	$(PYTHON) -m venv $(ASV_VENV)
	$(ASV_VENV)/bin/python -m pip install --quiet "asv==0.6.6" virtualenv

bench-history: $(ASV)
	@git rev-parse --verify -q main >/dev/null || \
	    { echo "no local branch main (git branch main origin/main)"; exit 1; }
	cd benchmarks && $(ASV) machine --yes && \
	    $(BENCH_ENV) $(ASV) run --skip-existing-commits $(HISTORY_ATTRS) \
	    --bench "$(HISTORY_BENCH)" main~$(COMMITS)..main && \
	    $(ASV) publish

bench-compare: $(ASV)
	cd benchmarks && $(ASV) machine --yes && \
	    $(BENCH_ENV) $(ASV) continuous $(HISTORY_ATTRS) --bench "$(HISTORY_BENCH)" $(BASE) HEAD

# The kernel tests and fuzzers; torch is left out (it does not run under a preloaded ASan).
KERNEL_TESTS := tests/test_deform_conv2d.py tests/test_roi_pool.py tests/test_psroi_pool.py \
	tests/test_fuzz.py tests/test_deterministic.py tests/test_executors.py tests/test_half.py \
	tests/test_border_gradient.py tests/test_ms_deform_attn.py tests/test_dcnv3.py
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
