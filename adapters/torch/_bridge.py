"""Tensors to arrays and back through DLPack, without copies; device and stream.

The only place where torch meets CuPy: read it twice.
"""

import contextlib

import numpy as np
import torch

# What each backend's kernels take (bfloat16 has no NumPy dtype at all).
_SUPPORTED = {"cpu": (torch.float32, torch.float64),
              "cuda": (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def check_tensors(**tensors):
    """Each argument is a torch.Tensor (or None) on a device cudcn runs on."""
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type not in _SUPPORTED:
            raise ValueError(f"{name} is on {t.device}; cudcn runs on CPU and CUDA tensors")


def check_exportable(**tensors):
    """DLPack can hand each tensor to the array library (NumPy has no bfloat16);
    every other dtype question is left to cudcn's own checks."""
    for name, t in tensors.items():
        if t is not None and t.device.type == "cpu" and t.dtype == torch.bfloat16:
            raise TypeError(f"{name} has dtype torch.bfloat16; the CPU backend supports "
                            "float32, float64")


def to_array(t):
    """A NumPy (CPU) or CuPy (CUDA) view of the tensor's memory."""
    if t is None:
        return None
    t = t.detach()
    if t.device.type == "cpu":
        return np.from_dlpack(t)
    import cupy

    return cupy.from_dlpack(t)


def to_tensor(a):
    """The array's memory as a tensor. On CUDA call it inside ``on_device_of``,
    so that producer and consumer streams are one and DLPack adds no sync."""
    return None if a is None else torch.from_dlpack(a)


@contextlib.contextmanager
def on_device_of(t):
    """Make CuPy work on the tensor's device and torch's current stream there."""
    if t.device.type != "cuda":
        yield
        return
    import cupy

    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(index)
    with cupy.cuda.Device(index), cupy.cuda.ExternalStream(stream.cuda_stream, index):
        yield
