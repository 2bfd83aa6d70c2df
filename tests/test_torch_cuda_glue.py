"""cudcn.adapters.torch's CUDA branches on the CuPy double, with CPU tensors sent down them.

A machine without a GPU has no CUDA tensors: ``_bridge.on_cuda`` is patched
to call every tensor a CUDA one, and torch.cuda's current device and stream
give fixed values. What then runs as on a GPU: the registered ops and their
autograd, ``_run``, ``on_device_of`` (CuPy's Device and an ExternalStream on
torch's stream), ``to_array`` through ``cupy.from_dlpack``, ``to_tensor``
from a CuPy array (bfloat16 crossing as int16 bits), and cudcn's whole GPU
path below them. What does not: a real CUDA tensor's DLPack exchange (device
pointers, the stream handshake), torch's own CUDA device and stream calls,
CUDA autocast.
"""

import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cudcn.adapters.torch as ct  # noqa: E402
from cudcn import _launch  # noqa: E402
from cudcn.adapters.torch import _bridge  # noqa: E402
from cudcn.testing import (  # noqa: E402
    deform_conv2d_inputs,
    deform_psroi_pool_inputs,
    deform_roi_pool_inputs,
)
from torch_inputs import as_tensors  # noqa: E402

import cupy_double  # noqa: E402

pytestmark = pytest.mark.torchvision
DEVICE = 1  # torch's current CUDA device here: not CuPy's default, so that a missed switch shows
STREAM = 0x5000  # torch's current stream pointer on DEVICE


@pytest.fixture
def cuda(monkeypatch):
    gpu = cupy_double.install(monkeypatch)
    monkeypatch.setattr(_bridge, "on_cuda", lambda t: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: DEVICE)
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device=None: types.SimpleNamespace(cuda_stream=STREAM + device))
    return gpu




def _conv(dtype=None):
    a = as_tensors(deform_conv2d_inputs(dtype=np.float64, seed=3),
                   ("input", "offset", "weight", "bias", "mask"), dtype)
    out = ct.deform_conv2d(a["input"], a["offset"], a["weight"], a["bias"], padding=1,
                           mask=a["mask"])
    return out, [a[k] for k in ("input", "offset", "weight", "bias", "mask")]


def _roi(dtype=None):
    a = as_tensors(deform_roi_pool_inputs(mask=True, seed=4), ("input", "offset", "mask"), dtype)
    out = ct.deform_roi_pool(a["input"], a["rois"], a["offset"], a["output_size"],
                             a["spatial_scale"], a["sampling_ratio"], a["gamma"], a["mask"])
    return out, [a["input"], a["offset"], a["mask"]]


def _psroi(dtype=None):
    a = as_tensors(deform_psroi_pool_inputs(seed=5), ("input", "offset"), dtype)
    out = ct.deform_psroi_pool(a["input"], a["rois"], a["offset"], output_dim=a["output_dim"],
                               group_size=a["group_size"], pooled_size=a["pooled_size"],
                               sample_per_part=a["sample_per_part"], trans_std=a["trans_std"],
                               spatial_scale=a["spatial_scale"])
    return out, [a["input"], a["offset"]]


OPS = {"deform_conv2d": _conv, "deform_roi_pool": _roi, "deform_psroi_pool": _psroi}


def _forward_backward(op, dtype=None):
    out, leaves = OPS[op](dtype)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
    return [out.detach()] + [t.grad for t in leaves]


# The GPU's default backward is 'items', with atomics: another summation order
# each run, float32 accumulations differing in their last bits, and 16-bit
# results rounded from them by at most one unit in the last place.
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2.0**-10,
       torch.bfloat16: 2.0**-7}


@pytest.mark.parametrize("deterministic", [False, True], ids=["items", "sorted"])
@pytest.mark.parametrize("dtype", TOL, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_ops_through_the_cuda_branches_equal_the_cpu_path(request, op, dtype, deterministic):
    torch.use_deterministic_algorithms(deterministic)
    try:
        # The CPU path, with the launches planned for the double's device.
        with _launch.planning_for(cupy_double.planned_target()):
            expected = _forward_backward(op, dtype)
        gpu = request.getfixturevalue("cuda")
        results = _forward_backward(op, dtype)
        again = _forward_backward(op, dtype) if deterministic else results
    finally:
        torch.use_deterministic_algorithms(False)
    state = gpu.state()
    assert {launch.dtype for launch in state.launches} == {str(dtype).removeprefix("torch.")}
    kernels = {launch.kernel.name for launch in state.launches}
    assert not any(k.endswith("_planes") for k in kernels)
    assert any(k.endswith("_scatter_entries") for k in kernels) == deterministic
    assert {(launch.device, launch.stream) for launch in state.launches} == {
        (DEVICE, STREAM + DEVICE)}
    assert {m.device for m in state.modules} == {DEVICE}
    # Deterministic: the same bits run after run. Not the CPU path's bits: its
    # products are another BLAS's (torch's through the adapter, NumPy's on
    # one thread for deterministic gradients), as a GPU's are cuBLAS's.
    for got, same, want in zip(results, again, expected):
        assert got.dtype == dtype and got.device.type == "cpu"
        assert torch.equal(got, same)
        scale = max(1.0, float(want.abs().max()))
        torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype] * scale)


def test_arrays_and_results_view_the_tensors_memory(cuda):
    t = torch.arange(12.0).reshape(3, 4)
    with _bridge.on_device_of(t):
        assert cuda.cuda.Device().id == DEVICE
        assert cuda.state().streams[-1] == STREAM + DEVICE
        a = _bridge.to_array(t)
        back = _bridge.to_tensor(a)
    assert type(a) is cuda.ndarray and a.device.id == DEVICE
    assert a._host.ctypes.data == t.data_ptr() == back.data_ptr()
    assert cuda.cuda.Device().id == 0 and cuda.state().streams == [0]
