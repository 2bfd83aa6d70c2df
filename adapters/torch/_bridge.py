"""Tensors to arrays and back through DLPack, without copies; device and stream.

The only place where torch meets CuPy: read it twice.
"""

import contextlib

import numpy as np
import torch

from cudcn import _checks

def check_tensors(optional=(), **tensors):
    """Each argument is a torch.Tensor on a device cudcn runs on; those named
    in ``optional`` may be None."""
    for name, t in tensors.items():
        if t is None and name in optional:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        # is_cpu/is_cuda: t.device makes an object on each ask, and costs
        # most when a call finds torch's code out of the caches.
        if not (t.is_cpu or t.is_cuda):
            raise ValueError(f"{name} is on {t.device}; cudcn runs on CPU and CUDA tensors")


def on_cuda(t):
    """Whether ``t`` takes the CUDA branches below (one place, so that the tests
    can send CPU tensors down them to a CuPy double). ``is_cuda``: a call asks
    it of each tensor several times, and ``t.device`` makes an object each time."""
    return t.is_cuda


_DLPACK_CPU = 1  # DLPack's kDLCPU


class _CPUCapsule:
    """A CPU tensor's DLPack capsule, offered to NumPy as it is. Tensor's
    ``__dlpack__`` checks, in Python, what a detached CPU tensor of cudcn's
    dtypes passes anyway (gradients, conjugate bit, device, stream, version):
    2.2 us of every tensor of every call, more when torch's code is out of
    the caches. The capsule is DLPack's unversioned one, so NumPy's view is
    read-only: cudcn never writes its arguments."""

    __slots__ = ("capsule",)

    def __init__(self, t):
        self.capsule = torch.utils.dlpack.to_dlpack(t)

    def __dlpack__(self, **_):
        return self.capsule

    def __dlpack_device__(self):
        return (_DLPACK_CPU, 0)


def to_array(t):
    """A NumPy (CPU) or CuPy (CUDA) view of the tensor's memory, NumPy's
    read-only (a copy for a negated view).

    DLPack has a bfloat16 code that NumPy does not read: a bfloat16 tensor
    crosses as its int16 bits and becomes an ``ml_dtypes.bfloat16`` view.
    """
    if t is None:
        return None
    t = t.detach()
    if t.is_neg():  # a negated view (z.conj().imag) exports its memory un-negated
        t = t.resolve_neg()
    bits = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
    if on_cuda(t):
        import cupy

        a = cupy.from_dlpack(bits)
    else:
        a = np.from_dlpack(_CPUCapsule(bits))
    if bits is t:
        return a
    import ml_dtypes

    return a.view(ml_dtypes.bfloat16)


def to_tensor(a):
    """The array's memory as a tensor. On CUDA call it inside ``on_device_of``,
    so that producer and consumer streams are one and DLPack adds no sync."""
    if a is None:
        return None
    if _checks.dtype_name(a.dtype) == "bfloat16":
        return _from_dlpack(a.view(np.int16)).view(torch.bfloat16)
    return _from_dlpack(a)


def _from_dlpack(a):
    # A NumPy array's capsule, taken directly: torch.from_dlpack's protocol
    # negotiation (device, stream, version, copy) is for other producers,
    # and a call pays for it every time (most when torch's code is out of the
    # caches). CuPy arrays negotiate the stream.
    if type(a) is np.ndarray:
        return torch.utils.dlpack.from_dlpack(a.__dlpack__())
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
