import functools

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Fuzzing in CI: fixed seeds (derandomize), a budget that keeps `make test`
# short; HYPOTHESIS_PROFILE=long for a deeper local run.
settings.register_profile("ci", max_examples=60, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture],
                          print_blob=True)
settings.register_profile("long", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

import cudcn


@functools.cache
def gpu_count():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, no driver, or no device
        return 0


def pytest_collection_modifyitems(config, items):
    if gpu_count():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def force_index64(monkeypatch):
    """Run every launch with 64-bit indices, however small the problem."""
    monkeypatch.setattr(cudcn._launch, "_force_index64", True)


@pytest.fixture
def launches(monkeypatch):
    """Record every launch description that runs."""
    seen = []
    real = cudcn._launch.run

    def spy(launch):
        seen.append(launch)
        return real(launch)

    monkeypatch.setattr(cudcn._launch, "run", spy)
    return seen


def numpy_dtype(name):
    """The NumPy dtype of a dtype name, bfloat16 as ml_dtypes'."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def assert_close(actual, expected, rtol, atol, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, what
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


@pytest.fixture(params=["planes", "items", "sorted"])
def strategy(request, monkeypatch):
    """Run a test under each strategy: 'items' is the GPU's default and
    'sorted' its deterministic mode, so this is how their kernels run here.
    'items' takes blocks of 3 channels (several blocks, the last one short),
    'sorted' the whole group at once, as on the CPU."""
    monkeypatch.setattr(cudcn._launch, "_force_strategy", request.param)
    if request.param == "items":
        monkeypatch.setattr(cudcn._launch, "_force_channel_block", 3)
    return request.param


def assert_directional_gradients(reference_fn, args, grads, grad_output, rng, rel, abs,
                                 names, directions=3, eps=1e-6):
    """Each gradient in ``names`` against central finite differences of
    <grad_output, reference_fn(**args)> along random directions; None where
    the argument is None."""
    def loss(a):
        return float(np.sum(reference_fn(**a) * grad_output))

    for name in names:
        if args[name] is None:
            assert getattr(grads, name) is None, name
            continue
        grad = getattr(grads, name)
        assert grad.shape == args[name].shape and grad.dtype == args[name].dtype, name
        assert np.abs(grad).max() > 0, name
        for _ in range(directions):
            direction = rng.standard_normal(args[name].shape)
            numeric = (loss(dict(args, **{name: args[name] + eps * direction}))
                       - loss(dict(args, **{name: args[name] - eps * direction}))) / (2 * eps)
            analytic = float(np.sum(grad * direction))
            assert analytic == pytest.approx(numeric, rel=rel, abs=abs), name


class FakeClock:
    """Stands for the ``time`` module of the benchmark machinery: its clock
    moves only when a test's callable ``sleep``s, so the tests assert what
    the machinery computes from the times, never how long a busy machine
    took (no test may depend on the machine's speed)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.fixture
def fake_clock(monkeypatch):
    """``fake_clock(module)`` gives ``module`` a FakeClock for ``time``."""
    clock = FakeClock()

    def install(module):
        monkeypatch.setattr(module, "time", clock)
        return clock

    return install
