"""The CPU backend's products (cudcn/_blas.py): cudcn's own single-threaded
OpenBLAS in tiles on the kernels' pool, any operand layout, bits that depend
on the shape (and in deterministic mode on nothing else), and NumPy's BLAS
left as the user set it."""

import threading

import numpy as np
import pytest

from cudcn import _blas
from cudcn._executors import cpu


def test_cudcns_own_blas_is_there():
    """A dependency of cudcn: without it the products fall back to NumPy's
    matmul, and the tests below would check only that."""
    assert _blas.available()


def _layouts(rng, dtype):
    """(name, a, b, out) in the layouts cudcn's ops hand over."""
    def m(*shape):
        return rng.standard_normal(shape).astype(dtype)

    wide = m(70, 300)
    return [
        ("contiguous", m(200, 37), m(37, 90), None),
        ("a-transposed", m(37, 200).T, m(37, 90), None),
        ("b-transposed", m(200, 37), m(90, 37).T, None),
        ("both-transposed-rows-sliced", wide[:, :37].T[:, :60], m(20, 60).T, None),
        ("a-rows-strided", wide[::2, :37], m(37, 650), None),
        ("no-unit-stride", m(50, 40)[:, ::2], m(20, 33), None),
        ("batch-broadcast", m(3, 40, 50), m(50, 30), None),
        ("batch-broadcast-4d", m(4, 1, 12, 50), m(1, 3, 50, 600), None),
        ("out-strided", m(64, 48), m(48, 32), np.empty((64, 64), dtype)[:, :32]),
        ("out-transposed", m(64, 48), m(48, 32), np.empty((32, 64), dtype).T),
        ("out-batch", m(2, 3, 64, 8), m(2, 1, 8, 1100), np.empty((2, 3, 64, 1100), dtype)),
        ("tiny", m(1, 1), m(1, 1), None),
        ("empty-inner", m(5, 0), m(0, 7), None),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_products_in_every_layout_equal_the_float64_product(dtype):
    rng = np.random.default_rng(0)
    for name, a, b, out in _layouts(rng, dtype):
        want = np.matmul(a.astype(np.float64), b.astype(np.float64))
        got = _blas.matmul(a, b, out=out)
        if out is not None:
            assert got is out, name
        assert got.dtype == dtype and got.shape == want.shape, name
        # The rounding bound of a sum of k products: k * eps * (|a| @ |b|).
        bound = a.shape[-1] * np.finfo(dtype).eps * np.matmul(
            np.abs(a).astype(np.float64), np.abs(b).astype(np.float64))
        assert (np.abs(got - want) <= bound).all(), name


def test_out_of_the_blas_cases_go_to_numpy():
    """Mixed dtypes, int operands and mismatched shapes are NumPy's, with
    NumPy's results and errors."""
    a = np.arange(6.0).reshape(2, 3)
    assert np.array_equal(_blas.matmul(a.astype(np.float32), a.T), a @ a.T)
    assert np.array_equal(_blas.matmul(a.astype(int), a.T.astype(int)), a @ a.T)
    with pytest.raises(ValueError):
        _blas.matmul(a, a)


@pytest.mark.parametrize("threads", [1, 2, 3, 4, 8, 64])
@pytest.mark.parametrize("length", [1, 31, 32, 100, 576, 2048, 6272])
def test_tiles_split_the_threads_evenly_and_stay_short(threads, length):
    tiles = _blas.tile_count(length, threads)
    assert 1 <= tiles <= max(1, length // 32)
    if length >= threads * 32:
        assert tiles % threads == 0
        assert -(-length // tiles) <= 512


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deterministic_products_do_not_depend_on_the_thread_count(monkeypatch, dtype):
    """deterministic: the same bits whatever the pool's size; the default
    tiles follow the pool (and may round otherwise)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 1000, 333)).astype(dtype)
    b = rng.standard_normal((333, 77)).astype(dtype)
    results = []
    for threads in (1, 2, 3, 7):
        monkeypatch.setattr(cpu, "launch_threads", lambda source, t=threads: t)
        results.append(_blas.matmul(a, b, deterministic=True))
    assert all(np.array_equal(results[0], r) for r in results[1:])


def test_numpys_openblas_keeps_its_thread_count_while_cudcn_multiplies():
    """cudcn never changes NumPy's BLAS: its thread count, read all the while
    another thread runs cudcn's deterministic backward (which once set it
    to 1), stays what it was."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import cudcn
    from cudcn.testing import deform_conv2d_inputs

    controllers = [c for c in threadpoolctl.ThreadpoolController().lib_controllers
                   if c.internal_api == "openblas" and "scipy_openblas32" not in c.filepath]
    if not controllers:
        pytest.skip("NumPy's BLAS here is not OpenBLAS")
    before = [c.num_threads for c in controllers]
    args = deform_conv2d_inputs(batch=2, in_channels=64, out_channels=64, size=28,
                                dtype=np.float32)
    grad = np.ones((2, 64, 28, 28), np.float32)
    done = threading.Event()
    seen = set()

    def backward():
        for _ in range(3):
            cudcn.deform_conv2d_backward(grad, deterministic=True, **args)
            cudcn.deform_conv2d_backward(grad, **args)
        done.set()

    thread = threading.Thread(target=backward)
    thread.start()
    while not done.is_set():
        seen.add(tuple(c.num_threads for c in controllers))
    thread.join()
    assert seen <= {tuple(before)}
