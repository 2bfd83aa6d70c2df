"""The CPU kernels' thread pool (cpu_shim.h): late threads, and several
Python threads calling cudcn at once."""

import ctypes
import subprocess
import sys

import numpy as np
import pytest

import shim_library


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """tests/shim_pool.cpp, built like the kernels (compiler, flags, cpu_shim.h)."""
    lib = shim_library.build("shim_pool.cpp", tmp_path_factory.mktemp("pool"))
    lib.pool_run.restype = ctypes.c_longlong
    lib.pool_run.argtypes = (ctypes.c_longlong, ctypes.c_int, ctypes.POINTER(ctypes.c_int))
    if lib.pool_threads() < 2:
        pytest.skip("the pool has one thread here: nothing to share or take over")
    return lib


@pytest.fixture(params=[0, 1], ids=["own-pool", "openmp"])
def runtime(request, pool):
    """The pool on its own threads, or on the OpenMP runtime's (torch in the process)."""
    pool.pool_use_openmp(request.param)
    yield pool
    pool.pool_use_openmp(0)


def _run(pool, total, stall_ms):
    runs = (ctypes.c_int * total)()
    by_caller = pool.pool_run(total, stall_ms, runs)
    return by_caller, np.frombuffer(runs, dtype=np.int32)


@pytest.mark.parametrize("total", [1, 2, 3, 17, 1000, 100003])
def test_every_item_runs_once(runtime, total):
    _, runs = _run(runtime, total, 0)
    assert (runs == 1).all()


def test_a_late_thread_leaves_its_part_to_the_others(runtime):
    """A worker that starts late (a virtual CPU the host is slow to wake, a
    core shared with a spinning thread) does not hold up the launch: the
    caller takes over what is left of its part. With the static schedule the
    caller ran exactly its own share, half of the items on two threads."""
    total = 1000
    by_caller, runs = _run(runtime, total, 300)
    assert (runs == 1).all()
    threads = runtime.pool_threads()
    assert by_caller > total // threads + total // (4 * threads)


def test_two_python_threads_call_cudcn_at_once():
    """Two threads running forward and backward through the NumPy API, at
    once, get the gradients a single thread gets. Both used to hang inside
    a GEMM within a few calls (when cudcn still set NumPy's OpenBLAS's threads
    callback and undid it under the other's product). In a child process, so that a hang
    fails here instead of stopping the suite."""
    code = """if True:
        import threading
        import numpy as np
        import cudcn
        from cudcn.testing import deform_conv2d_inputs
        a = deform_conv2d_inputs(batch=2, in_channels=64, out_channels=64, size=56,
                                 dtype=np.float32, offset_scale=1.0)
        def both():
            return cudcn.deform_conv2d_backward(cudcn.deform_conv2d(**a), **a)
        want = both()
        bad = []
        def work():
            for _ in range(25):
                got = both()
                bad.extend(n for n, w, g in zip(want._fields, want, got)
                           if w is not None and not np.array_equal(w, g))
        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print("differ:", sorted(set(bad)))
    """
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("two threads calling deform_conv2d at once hung")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "differ: []"
