"""Tensors to arrays and back through DLPack, without copies; device and stream.

The only place where torch meets CuPy: read it twice.
"""

import contextlib

import numpy as np
import torch

from cudcn import _checks

_DEVICES = ("cpu", "cuda")


def check_tensors(**tensors):
    """Each argument is a torch.Tensor (or None) on a device cudcn runs on."""
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type not in _DEVICES:
            raise ValueError(f"{name} is on {t.device}; cudcn runs on CPU and CUDA tensors")


def on_cuda(t):
    """Whether ``t`` takes the CUDA branches below (one place, so that the tests
    can send CPU tensors down them to a CuPy double). ``is_cuda``: a call asks
    it of each tensor several times, and ``t.device`` makes an object each time."""
    return t.is_cuda


def _array_module(t):
    if not on_cuda(t):
        return np
    import cupy

    return cupy


def to_array(t):
    """A NumPy (CPU) or CuPy (CUDA) view of the tensor's memory.

    DLPack has a bfloat16 code that NumPy does not read: a bfloat16 tensor
    crosses as its int16 bits and becomes an ``ml_dtypes.bfloat16`` view.
    """
    if t is None:
        return None
    t = t.detach()
    xp = _array_module(t)
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return xp.from_dlpack(t.view(torch.int16)).view(ml_dtypes.bfloat16)
    return xp.from_dlpack(t)


def to_tensor(a):
    """The array's memory as a tensor. On CUDA call it inside ``on_device_of``,
    so that producer and consumer streams are one and DLPack adds no sync."""
    if a is None:
        return None
    if _checks.dtype_name(a.dtype) == "bfloat16":
        return torch.from_dlpack(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_dlpack(a)


@contextlib.contextmanager
def on_device_of(t):
    """Make CuPy work on the tensor's device and torch's current stream there."""
    if not on_cuda(t):
        yield
        return
    import cupy

    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(index)
    with cupy.cuda.Device(index), cupy.cuda.ExternalStream(stream.cuda_stream, index):
        yield
