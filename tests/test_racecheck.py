"""The race check (CUDCN_RACECHECK builds of the CPU executor; `make racecheck`
runs the kernel tests that way): it reports every race it is shown, naming
the kernel, the array, the element and the two threads; and no kernel
touches global memory except through the helpers it records."""

import pathlib
import re

import numpy as np
import pytest

from cudcn import _kernels, _launch, _sources
from cudcn._executors import cpu

PLANTED = str(pathlib.Path(__file__).with_name("racecheck_planted.cu"))


def _kernel(name, params):
    return _kernels.Kernel(f"racecheck_planted::{name}", PLANTED, params)


SCATTER = (("values", "const T*"), ("targets", "const I*"), ("out", "A*"), ("n", "I"))
SCATTER_PLAIN = _kernel("scatter_plain", SCATTER)
SCATTER_ATOMIC = _kernel("scatter_atomic", SCATTER)
SHIFT_IN_PLACE = _kernel("shift_in_place", (("data", "T*"), ("n", "I")))
STORE_AND_ADD = _kernel("store_and_add", (("out", "A*"), ("n", "I")))


@pytest.fixture
def racecheck(monkeypatch, tmp_path):
    """The planted kernels in the kernel table, built with the race check."""
    monkeypatch.setattr(_kernels, "KERNELS", _kernels.KERNELS + (
        SCATTER_PLAIN, SCATTER_ATOMIC, SHIFT_IN_PLACE, STORE_AND_ADD))
    monkeypatch.setenv("CUDCN_CXXFLAGS", "-DCUDCN_RACECHECK")
    monkeypatch.setenv("CUDCN_CACHE_DIR", str(tmp_path))
    cpu.library.cache_clear()
    yield
    cpu.library.cache_clear()


def _run(kernel, n, **values):
    _launch.run(_launch.make_launch(kernel, np.float32, n, "int", **values))


def test_a_plain_add_in_a_scatter_is_reported(racecheck):
    targets = (np.arange(64) % 8).astype(np.int32)  # threads 0, 8, 16, ... share out[0]
    with pytest.raises(cpu.RaceError, match=re.escape(
            "racecheck_planted::scatter_plain<float, int>: out[0] is stored by thread "
            "(block 0, thread 0) and by thread (block 0, thread 8)")):
        _run(SCATTER_PLAIN, 64, values=np.ones(64, np.float32), targets=targets,
             out=np.zeros(8, np.float32))


def test_the_same_scatter_with_atomics_passes(racecheck):
    targets = (np.arange(64) % 8).astype(np.int32)
    out = np.zeros(8, np.float32)
    _run(SCATTER_ATOMIC, 64, values=np.ones(64, np.float32), targets=targets, out=out)
    assert out.tolist() == [8.0] * 8


def test_reading_what_another_thread_writes_is_reported(racecheck):
    with pytest.raises(cpu.RaceError, match=re.escape(
            "data[1] is read by thread (block 0, thread 0) and written by thread "
            "(block 0, thread 1) in the same launch")):
        _run(SHIFT_IN_PLACE, 40, data=np.arange(40, dtype=np.float32))


def test_a_store_and_an_atomic_update_of_one_address_are_reported(racecheck):
    with pytest.raises(cpu.RaceError, match=re.escape(
            "out[0] is stored by thread (block 0, thread 0) and atomically updated by thread "
            "(block 0, thread 1)")):
        _run(STORE_AND_ADD, 3, out=np.zeros(1, np.float32))


def test_the_ops_run_clean_under_the_race_check(racecheck):
    """One op per kernel file, every strategy (make racecheck runs the whole grid)."""
    import cudcn
    from cudcn.testing import deform_conv2d_inputs, deform_psroi_pool_inputs, \
        deform_roi_pool_inputs

    for strategy in ("planes", "items", "sorted"):
        _launch._force_strategy = strategy
        try:
            for forward, backward, args in (
                    (cudcn.deform_conv2d, cudcn.deform_conv2d_backward,
                     deform_conv2d_inputs(offset_groups=2, in_channels=4)),
                    (cudcn.deform_roi_pool, cudcn.deform_roi_pool_backward,
                     deform_roi_pool_inputs(mask=True)),
                    (cudcn.deform_psroi_pool, cudcn.deform_psroi_pool_backward,
                     deform_psroi_pool_inputs())):
                backward(forward(**args), **args)
        finally:
            _launch._force_strategy = None


def _code(path):
    return re.sub(r"//[^\n]*", "", path.read_text())


@pytest.mark.parametrize("path", sorted(_sources.kernel_dir().glob("*.cu*")),
                         ids=lambda p: p.name)
def test_kernels_touch_memory_only_through_the_recorded_helpers(path):
    """An array element is reached only by load, store or atomic_add: any
    ``name[...]`` indexes a local array, a member of a local struct or a
    reference to a caller's local array (``A (&name)[N]``), and pointers are
    dereferenced only inside those helpers."""
    code = _code(path)
    local_arrays = set(re.findall(
        r"\b(?:const\s+)?(?:A|I|T|int|bool|float|double|long long)\s*\*?\s+(\w+)\[", code))
    local_arrays |= set(re.findall(r"\b(?:A|I|T)\s*\(&(\w+)\)\[", code))
    indexed = set(re.findall(r"(?<![.\w])(\w+)\s*\[", code))
    assert indexed <= local_arrays, sorted(indexed - local_arrays)
    dereferenced = {m.group(1) for m in re.finditer(r"\*\s*\(?\s*(\w+)", code)
                    if _unary(code, m.start())}
    helpers = {"p"} if path.name == "cudcn_common.cuh" else set()
    assert dereferenced <= helpers, sorted(dereferenced - helpers)


def _unary(code, star):
    """Whether the '*' at ``star`` dereferences (rather than multiplies or
    declares a pointer): what stands before it opens an expression."""
    before = code[:star].rstrip()
    return bool(before) and (before[-1] in "(=,;{}!?:" or before.endswith("return")) \
        and not before.endswith(("==", "!=", "<=", ">="))
