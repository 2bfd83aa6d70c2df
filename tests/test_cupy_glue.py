"""cudcn's GPU path (the ops' CuPy branches and the CuPy executor) on a CuPy double.

tests/cupy_double.py stands in for CuPy with its real RawModule/RawKernel
signatures; each launch is checked as a GPU needs it and run by the CPU
executor. The whole op grid runs through it, both GPU strategies ('items' by
default, 'sorted' when deterministic), every dtype, 32- and 64-bit indices:
results equal the CPU backend's running the launches planned for the same
device.
"""

import dataclasses

import numpy as np
import pytest

import cudcn
from cudcn import _blas, _gpu_build, _kernels, _launch
from cudcn.testing import (dcnv3_inputs, deform_conv2d_inputs, deform_psroi_pool_inputs,
                           deform_roi_pool_inputs, ms_deform_attn_inputs)

import cupy_double
from conftest import assert_close
from deform_conv2d_cases import CASES as CONV_CASES
from test_ms_deform_attn import CASES as MSDA_CASES
from test_dcnv3 import CASES as DCNV3_CASES
from test_psroi_pool import CASES as PSROI_CASES
from test_roi_pool import CASES as ROI_CASES

ml_dtypes = pytest.importorskip("ml_dtypes")
DTYPES = {name: np.dtype(ml_dtypes.bfloat16 if name == "bfloat16" else name)
          for name in _kernels.CPU_DTYPES}
# Scattering with atomics ('items') sums in another order each run: float32
# accumulations then differ in their last bits, and 16-bit results rounded
# from them by at most one unit in the last place.
ATOMIC_TOL = {"float64": 1e-12, "float32": 1e-5, "float16": 2.0**-10, "bfloat16": 2.0**-7}


@pytest.fixture
def gpu(monkeypatch):
    """The CuPy double as ``cupy``, fresh; the executor's header choice recomputed."""
    _gpu_build.cuda_include_dirs.cache_clear()
    yield cupy_double.install(monkeypatch)
    _gpu_build.cuda_include_dirs.cache_clear()


# --- the op grid ---------------------------------------------------------

def _put(put, args):
    return {k: put(v) if isinstance(v, np.ndarray) else v for k, v in args.items()}


def _conv(put, case, dtype, deterministic):
    """Forward and every gradient; ``put`` takes each NumPy input to the backend."""
    args = _put(put, deform_conv2d_inputs(dtype=dtype, seed=5, **case))
    out = cudcn.deform_conv2d(**args)
    grad = put(np.random.default_rng(6).standard_normal(out.shape).astype(dtype))
    grads = cudcn.deform_conv2d_backward(grad, **args, deterministic=deterministic)
    return dict(output=out, **{f"grad {k}": v for k, v in grads._asdict().items()})


def _roi(put, case, dtype, deterministic):
    args = _put(put, deform_roi_pool_inputs(dtype=dtype, seed=7, **case))
    out = cudcn.deform_roi_pool(**args)
    grad = put(np.random.default_rng(8).standard_normal(out.shape).astype(dtype))
    grads = cudcn.deform_roi_pool_backward(grad, **args, deterministic=deterministic)
    return dict(output=out, **{f"grad {k}": v for k, v in grads._asdict().items()})


def _psroi(put, case, dtype, deterministic):
    args = _put(put, deform_psroi_pool_inputs(dtype=dtype, seed=9, **case))
    out = cudcn.deform_psroi_pool(**args)
    grad = put(np.random.default_rng(10).standard_normal(out.shape).astype(dtype))
    grads = cudcn.deform_psroi_pool_backward(grad, **args, deterministic=deterministic)
    return dict(output=out, **{f"grad {k}": v for k, v in grads._asdict().items()})


def _msda(put, case, dtype, deterministic):
    args = _put(put, ms_deform_attn_inputs(dtype=dtype, seed=11, **case))
    out = cudcn.ms_deform_attn(**args)
    grad = put(np.random.default_rng(12).standard_normal(out.shape).astype(dtype))
    grads = cudcn.ms_deform_attn_backward(grad, **args, deterministic=deterministic)
    return dict(output=out, **{f"grad {k}": v for k, v in grads._asdict().items()})


def _dcnv3(put, case, dtype, deterministic):
    """Both packings: DCNv4's with the same geometry."""
    results = {}
    for packed, (op, backward) in ((False, (cudcn.dcnv3, cudcn.dcnv3_backward)),
                                   (True, (cudcn.dcnv4, cudcn.dcnv4_backward))):
        args = _put(put, dcnv3_inputs(dtype=dtype, packed=packed, seed=13, **case))
        out = op(**args)
        grad = put(np.random.default_rng(14).standard_normal(out.shape).astype(dtype))
        grads = backward(grad, **args, deterministic=deterministic)
        name = "dcnv4" if packed else "dcnv3"
        results.update({f"{name} output": out,
                        **{f"{name} grad {k}": v for k, v in grads._asdict().items()}})
    return results


OPS = {"deform_conv2d": (_conv, CONV_CASES), "deform_roi_pool": (_roi, ROI_CASES),
       "deform_psroi_pool": (_psroi, PSROI_CASES), "ms_deform_attn": (_msda, MSDA_CASES),
       "dcnv3": (_dcnv3, DCNV3_CASES)}
GRID = [pytest.param(op, case, id=f"{op}-{name}")
        for op, (_, cases) in OPS.items() for name, case in cases.items()]


def _on_cpu(monkeypatch, op, case, dtype, deterministic, put=lambda a: a):
    """The CPU backend's results with the launches planned for the double's
    device: the same strategies and channel blocks, and the double's matrix
    products (NumPy's matmul, standing for cuBLAS) rather than the CPU's own
    tiled ones, whose rounding differs: what is left to differ is the glue."""
    monkeypatch.setattr(_blas, "matmul", lambda a, b, out=None, deterministic=False:
                        np.matmul(a, b, out=out))
    with _launch.planning_for(cupy_double.planned_target()):
        return OPS[op][0](put, case, dtype, deterministic)


def _index(monkeypatch, index):
    monkeypatch.setattr(_launch, "_force_index64", index == "long long")


def _assert_launches_as_built(state, dtype_name, index):
    """Every launch: the executor's module for its file (code, options, name
    expressions), built once per device, with the call's dtype and index type."""
    assert state.launches
    by_code = {}
    for module in state.modules:
        by_code.setdefault((module.code, module.device), []).append(module)
    assert all(len(built) == 1 for built in by_code.values()), "a module was built twice"
    for launch in state.launches:
        source = launch.kernel.source
        assert launch.module.code == _gpu_build.source_text(source)
        assert launch.module.options == _gpu_build.options()
        assert launch.module.name_expressions == _gpu_build.name_expressions(source)
        assert (launch.dtype, launch.index) == (dtype_name, index)
        expected = tuple(_kernels.resolve_type(t, _kernels.SCALAR_TYPES[dtype_name], index)
                         .replace("const ", "") for _, t in launch.kernel.params)
        assert launch.arg_types == expected


@pytest.mark.parametrize("index", _kernels.INDEX_TYPES)
@pytest.mark.parametrize("deterministic", [False, True], ids=["items", "sorted"])
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("op, case", GRID)
def test_gpu_path_equals_the_cpu_backend(gpu, monkeypatch, op, case, dtype_name, deterministic,
                                         index):
    dtype = DTYPES[dtype_name]
    _index(monkeypatch, index)
    results = OPS[op][0](gpu.asarray, case, dtype, deterministic)
    _assert_launches_as_built(gpu.state(), dtype_name, index)
    expected = _on_cpu(monkeypatch, op, case, dtype, deterministic)
    assert results.keys() == expected.keys()
    for name, value in results.items():
        if expected[name] is None:
            assert value is None, name
            continue
        assert type(value) is gpu.ndarray and value.dtype == dtype, name
        if name == "output" or deterministic:
            # No atomics: the same kernels on the same data give the same bits.
            np.testing.assert_array_equal(value.get(), expected[name], err_msg=name)
        else:
            tol = ATOMIC_TOL[dtype_name]
            scale = max(1.0, float(np.abs(expected[name].astype(np.float64)).max()))
            assert_close(value.get(), expected[name], rtol=tol, atol=tol * scale, what=name)


# --- exact C types -------------------------------------------------------

def _loosened(monkeypatch, python_type):
    """Make the launch descriptions pass ``python_type`` scalars (int or float)
    instead of NumPy scalars of the exact C type."""
    real = _launch.make_launch
    numpy_type = np.integer if python_type is int else np.floating

    def make_launch(*args, **kwargs):
        launch = real(*args, **kwargs)
        loose = tuple(python_type(a) if isinstance(a, numpy_type) else a for a in launch.args)
        return dataclasses.replace(launch, args=loose)

    monkeypatch.setattr(_launch, "make_launch", make_launch)


def test_a_python_int_instead_of_the_exact_c_type_fails(gpu, monkeypatch):
    args = _put(gpu.asarray, deform_conv2d_inputs(dtype=np.float32))
    cudcn.deform_conv2d(**args)  # as built: every scalar a NumPy scalar
    _loosened(monkeypatch, int)
    with pytest.raises(cupy_double.LaunchError, match=r"deform_conv2d_im2col<float, int>: n is a "
                                                      r"Python int.*C type int"):
        cudcn.deform_conv2d(**args)


def test_a_python_float_instead_of_the_exact_c_type_fails(gpu, monkeypatch):
    args = _put(gpu.asarray, deform_roi_pool_inputs(dtype=np.float64))
    cudcn.deform_roi_pool(**args)
    _loosened(monkeypatch, float)
    with pytest.raises(cupy_double.LaunchError, match=r"spatial_scale is a Python float.*double"):
        cudcn.deform_roi_pool(**args)


# --- the executor --------------------------------------------------------

def _small_conv(gpu, device=None):
    args = deform_conv2d_inputs(batch=1, in_channels=2, out_channels=2, size=(4, 4),
                                dtype=np.float32)
    with gpu.cuda.Device(device):
        return _put(gpu.asarray, args)


def test_each_op_runs_on_its_arrays_device_whatever_the_current_one(gpu):
    """The NumPy/CuPy guide: 'the result is a CuPy array on the inputs' device'. CuPy allocates
    on the current device, so the ops make the inputs' device current."""
    on_0, on_1 = _small_conv(gpu, 0), _small_conv(gpu, 1)
    for args in (on_0, on_0, on_1):
        out = cudcn.deform_conv2d(**args)
        grads = cudcn.deform_conv2d_backward(out * 0 + 1, **args)
        assert out.device == args["input"].device == grads.input.device == grads.weight.device
    for args in (on_1, on_0):  # the poolings too
        with args["input"].device:
            rois = gpu.asarray(np.array([[0, 0, 0, 3, 3.]]))
        pooled = cudcn.deform_roi_pool(args["input"], rois)
        assert pooled.device == args["input"].device
    assert gpu.cuda.Device().id == 0
    state = gpu.state()
    built = sorted((m.device, m.code) for m in state.modules)
    assert built == sorted((d, _gpu_build.source_text(s)) for d in (0, 1)
                           for s in ("deform_conv2d.cu", "deform_roi_pool.cu"))
    for launch in state.launches:
        assert launch.module.device == launch.device


def test_a_launch_with_arrays_on_two_devices_is_refused(gpu):
    args = _small_conv(gpu, 0)
    with gpu.cuda.Device(1):
        columns = gpu.empty((1, 2 * 9, 16), dtype=np.float32)
    launch = _launch.make_launch(
        _kernels.DEFORM_CONV2D_IM2COL, np.float32, 16 * 9, "int", input=args["input"],
        offset=args["offset"], mask=args["mask"], columns=columns, use_mask=1, channel_block=2,
        channels=2, height=4, width=4, kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1,
        pad_w=1, dil_h=1, dil_w=1, offset_groups=1, out_h=4, out_w=4)
    with pytest.raises(ValueError, match="one device"):
        _launch.run(launch)
    assert not gpu.state().launches


@pytest.mark.parametrize("major", [12, 13])
def test_the_module_gets_the_headers_of_the_nvrtc_cupy_compiles_with(monkeypatch, major):
    from cudcn import _cuda_install

    folder = _cuda_install.header_dirs().get(major)
    if folder is None:
        pytest.fail(f"the test environment installs CUDA {major}'s headers (the test extra)")
    _gpu_build.cuda_include_dirs.cache_clear()
    try:
        gpu = cupy_double.install(monkeypatch, nvrtc_version=(major, 0))
        cudcn.deform_conv2d(**_small_conv(gpu))
        (module,) = gpu.state().modules
        assert f"-I{folder}" in module.options
        assert [o for o in module.options if o.startswith("-I")] == [
            f"-I{d}" for d in (cudcn._sources.kernel_dir(), folder)]
    finally:
        _gpu_build.cuda_include_dirs.cache_clear()


def test_no_work_launches_nothing(gpu):
    args = _put(gpu.asarray, deform_roi_pool_inputs(rois=0))
    out = cudcn.deform_roi_pool(**args)
    grads = cudcn.deform_roi_pool_backward(gpu.zeros(out.shape, out.dtype), **args)
    assert out.shape[0] == 0 and type(out) is gpu.ndarray
    assert float(abs(grads.input).max()) == 0.0 and grads.input.shape == args["input"].shape
    assert not gpu.state().launches


def test_host_and_device_arrays_in_one_call_are_refused_by_name(gpu):
    args = _put(gpu.asarray, deform_conv2d_inputs(dtype=np.float32))
    args["offset"] = args["offset"].get()
    with pytest.raises(ValueError, match="offset is a numpy.ndarray but input is a cupy.ndarray"):
        cudcn.deform_conv2d(**args)
