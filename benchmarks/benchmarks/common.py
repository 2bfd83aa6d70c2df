"""The parameter grid every benchmark shares, and what the build under test runs.

asv discovers the suite once, in the newest build, and then runs each
benchmark by its parameter *index* in every commit's build. So the grid must
not depend on the installed cudcn: it is fixed here, and each ``setup`` asks
the build under test whether it runs a combination. A combination it cannot
run (no GPU, no kernels of that dtype, no torch adapter yet) raises
NotImplementedError, which asv records as skipped rather than failed.
"""

import functools

import numpy as np

BACKENDS = ("cpu", "gpu")
# SPEC section 4's dtypes; tests/test_benchmarks.py checks this against cudcn's own list.
DTYPES = ("float32", "float64", "float16", "bfloat16")


class Sampling:
    """asv's sampling for every benchmark class of the suite: one process per
    parameter set, and for time_* 3 to 7 samples, stopping after 6 s. asv's
    default (2 processes of up to 10 s each) would more than double the whole
    suite's time on 2 cores; `asv run -a rounds=2 -a repeat=0` restores it."""

    rounds = 1
    repeat = (3, 7, 6.0)
    warmup_time = 0.2


def supported_dtypes(backend):
    """The dtypes the installed build has kernels for on ``backend``."""
    try:
        from cudcn import _kernels

        return tuple(_kernels.CPU_DTYPES if backend == "cpu" else _kernels.GPU_DTYPES)
    except (ImportError, AttributeError):  # a build older than the kernel table
        return ("float32", "float64")


def array_module(backend):
    """numpy, or cupy when a GPU is there."""
    if backend == "cpu":
        return np
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() == 0:
            raise NotImplementedError("no CUDA device")
        return cupy
    except Exception as exc:  # no CuPy, no driver or no device
        raise NotImplementedError(f"GPU backend unavailable: {exc}") from None


def require(backend, dtype):
    """Skip a combination this machine or the build under test cannot run."""
    array_module(backend)
    if dtype not in supported_dtypes(backend):
        raise NotImplementedError(f"this build's {backend} backend has no {dtype} kernels")


def numpy_dtype(name):
    """The array dtype of ``name``; bfloat16 arrays are ml_dtypes' (SPEC section 4)."""
    if name != "bfloat16":
        return np.dtype(name)
    try:
        import ml_dtypes
    except ImportError:
        raise NotImplementedError("bfloat16 arrays need ml_dtypes") from None
    return np.dtype(ml_dtypes.bfloat16)


def synchronize(xp):
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


def setup_once(setup):
    """Run a benchmark class's ``setup`` once per parameter set and process.

    asv re-runs setup before every sample (asv#966: fresh state for benchmarks
    that mutate it). These benchmarks never write into their inputs, so the
    inputs and the loaded kernels are kept, and a sample costs one call.
    """

    @functools.wraps(setup)
    def once(self, *params):
        if getattr(self, "_set_up_for", None) != params:
            setup(self, *params)
            self._set_up_for = params

    return once
