"""The GPU backend through CuPy. Needs a CUDA device; skipped where there is none."""

import numpy as np
import pytest

import cudcn
from cudcn import reference
from cudcn.testing import deform_conv2d_inputs
from conftest import assert_close, gpu_count
from deform_conv2d_cases import case_params

pytestmark = pytest.mark.gpu
NAMES = ("input", "offset", "weight", "bias", "mask")


def _on_gpu(args):
    import cupy

    return {k: cupy.asarray(v) if isinstance(v, np.ndarray) else v for k, v in args.items()}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", case_params())
def test_gpu_matches_cpu(case, dtype):
    import cupy

    args = deform_conv2d_inputs(dtype=dtype, seed=30, **case)
    out_cpu = cudcn.deform_conv2d(**args)
    grad_output = np.random.default_rng(31).standard_normal(out_cpu.shape).astype(dtype)
    grads_cpu = cudcn.deform_conv2d_backward(grad_output, **args)
    gpu = _on_gpu(args)
    out = cudcn.deform_conv2d(**gpu)
    assert isinstance(out, cupy.ndarray) and out.dtype == dtype
    tol = 1e-10 if dtype == np.float64 else 1e-4
    assert_close(out.get(), out_cpu, rtol=tol, atol=tol)
    grads = cudcn.deform_conv2d_backward(cupy.asarray(grad_output), **gpu)
    for name in NAMES:
        if getattr(grads_cpu, name) is not None:
            scale = max(1.0, float(np.abs(getattr(grads_cpu, name)).max()))
            assert_close(getattr(grads, name).get(), getattr(grads_cpu, name), rtol=tol,
                         atol=tol * scale, what=name)


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_half_types_accumulate_in_float32(dtype_name):
    import cupy

    if dtype_name == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        dtype = np.dtype(ml_dtypes.bfloat16)
        try:
            cupy.zeros(1, dtype)
        except (TypeError, ValueError):
            pytest.skip("this CuPy has no bfloat16 arrays")
        tol = 3e-2
    else:
        dtype = np.dtype(np.float16)
        tol = 5e-3
    args = deform_conv2d_inputs(in_channels=16, out_channels=8, seed=32)
    expected = reference.deform_conv2d(**args)
    gpu = {k: cupy.asarray(v).astype(dtype) if isinstance(v, np.ndarray) else v
           for k, v in args.items()}
    out = cudcn.deform_conv2d(**gpu)
    assert out.dtype == dtype
    scale = float(np.abs(expected).max())
    assert_close(out.astype(cupy.float32).get(), expected, rtol=tol, atol=tol * scale)
    grads = cudcn.deform_conv2d_backward(cupy.ones_like(out), **gpu)
    grads64 = cudcn.deform_conv2d_backward(np.ones_like(expected), **args)
    for name in NAMES:
        want = getattr(grads64, name)
        got = getattr(grads, name).astype(cupy.float32).get()
        assert_close(got, want, rtol=tol, atol=tol * float(np.abs(want).max()), what=name)


def test_runs_on_the_current_stream():
    import cupy

    args = _on_gpu(deform_conv2d_inputs(batch=4, seed=33))
    expected = cudcn.deform_conv2d(**args)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        out = cudcn.deform_conv2d(**args)
        grads = cudcn.deform_conv2d_backward(out, **args)
    stream.synchronize()
    assert_close(out.get(), expected.get(), rtol=0, atol=0)
    assert grads.offset.shape == args["offset"].shape


@pytest.mark.skipif(gpu_count() < 2, reason="needs two CUDA devices")
def test_results_stay_on_the_inputs_device():
    import cupy

    with cupy.cuda.Device(1):
        args = _on_gpu(deform_conv2d_inputs(seed=34))
    with cupy.cuda.Device(0):
        out = cudcn.deform_conv2d(**args)
        grads = cudcn.deform_conv2d_backward(out, **args)
    assert out.device.id == 1 and grads.input.device.id == 1


def test_mixed_numpy_and_cupy_is_a_value_error():
    import cupy

    args = deform_conv2d_inputs(seed=35)
    args["weight"] = cupy.asarray(args["weight"])
    with pytest.raises(ValueError, match="weight is a cupy.ndarray on device 0 but input is a "
                                         "numpy.ndarray"):
        cudcn.deform_conv2d(**args)


def _pool_on_gpu_matches_cpu(op, backward, args, grad_names, dtype):
    import cupy

    out_cpu = op(**args)
    grad_output = np.random.default_rng(36).standard_normal(out_cpu.shape).astype(dtype)
    grads_cpu = backward(grad_output, **args)
    gpu = _on_gpu(args)
    out = op(**gpu)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    assert isinstance(out, cupy.ndarray)
    assert_close(out.get(), out_cpu, rtol=tol, atol=tol)
    grads = backward(cupy.asarray(grad_output), **gpu)
    for name in grad_names:
        assert_close(getattr(grads, name).get(), getattr(grads_cpu, name), rtol=tol, atol=tol,
                     what=name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_roi_pool_gpu_matches_cpu(dtype):
    from cudcn.testing import deform_roi_pool_inputs

    args = deform_roi_pool_inputs(mask=True, dtype=dtype, seed=37)
    _pool_on_gpu_matches_cpu(cudcn.deform_roi_pool, cudcn.deform_roi_pool_backward, args,
                             ("input", "offset", "mask"), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_psroi_pool_gpu_matches_cpu(dtype):
    from cudcn.testing import deform_psroi_pool_inputs

    args = deform_psroi_pool_inputs(dtype=dtype, seed=38)
    _pool_on_gpu_matches_cpu(cudcn.deform_psroi_pool, cudcn.deform_psroi_pool_backward, args,
                             ("input", "offset"), dtype)


@pytest.mark.parametrize("op", ["roi", "psroi"])
def test_pooling_in_float16(op):
    import cupy
    from cudcn.testing import deform_psroi_pool_inputs, deform_roi_pool_inputs

    if op == "roi":
        args, fn = deform_roi_pool_inputs(mask=True, seed=39), cudcn.deform_roi_pool
    else:
        args, fn = deform_psroi_pool_inputs(seed=40), cudcn.deform_psroi_pool
    expected = fn(**args)
    half = {k: (cupy.asarray(v).astype(cupy.float16) if k != "rois" else cupy.asarray(v))
            if isinstance(v, np.ndarray) else v for k, v in args.items()}
    out = fn(**half)
    assert out.dtype == cupy.float16
    assert_close(out.astype(cupy.float32).get(), expected, rtol=5e-3, atol=5e-3)


def test_torch_cuda_tensors_run_on_the_gpu_on_torchs_stream():
    torch = pytest.importorskip("torch")
    import cudcn.adapters.torch as ct

    names = ("input", "offset", "weight", "bias", "mask")
    a = deform_conv2d_inputs(seed=41)
    cpu = {n: torch.from_numpy(a[n]).requires_grad_() for n in names}
    gpu = {n: torch.from_numpy(a[n]).cuda().requires_grad_() for n in names}
    expected = ct.deform_conv2d(*(cpu[n] for n in names[:4]), padding=1, mask=cpu["mask"])
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = ct.deform_conv2d(*(gpu[n] for n in names[:4]), padding=1, mask=gpu["mask"])
        out.sum().backward()
    stream.synchronize()
    expected.sum().backward()
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-10, atol=1e-10)
    for n in names:
        torch.testing.assert_close(gpu[n].grad.cpu(), cpu[n].grad, rtol=1e-10, atol=1e-10)


def test_torch_mixed_devices_are_a_value_error():
    torch = pytest.importorskip("torch")
    import cudcn.adapters.torch as ct

    a = deform_conv2d_inputs(seed=42)
    with pytest.raises(ValueError, match="cupy.ndarray on device 0 but input is a numpy.ndarray"):
        ct.deform_conv2d(torch.from_numpy(a["input"]), torch.from_numpy(a["offset"]).cuda(),
                         torch.from_numpy(a["weight"]), padding=1)


def test_torch_cuda_autocast_runs_in_half():
    torch = pytest.importorskip("torch")
    import cudcn.adapters.torch as ct

    layer = ct.DeformConv2dPack(4, 6, 3, padding=1).cuda()
    x = torch.randn(2, 4, 9, 9, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        y = layer(x)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), layer(x), rtol=1e-2, atol=1e-2)
