"""torch's side of the benchmarks: devices, dtypes, tensors from the shared
inputs, and the cudcn torch adapter of the build under test."""

import numpy as np

from .common import supported_dtypes


def import_torch():
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed") from None
    return torch


def import_torchvision():
    import_torch()
    try:
        import torchvision
    except ImportError:
        raise NotImplementedError("torchvision is not installed") from None
    return torchvision


def adapter():
    """``cudcn.adapters.torch`` of the build under test."""
    import_torch()
    try:
        from cudcn.adapters import torch as cudcn_torch
    except ImportError as exc:
        raise NotImplementedError(f"this build has no torch adapter ({exc})") from None
    return cudcn_torch


def device(backend):
    torch = import_torch()
    if backend == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise NotImplementedError("torch sees no CUDA device")
    return torch.device("cuda")


def require(backend, dtype):
    """Skip a combination the build's kernels (and so its adapter) lack."""
    device(backend)
    if dtype not in supported_dtypes(backend):
        raise NotImplementedError(f"this build's {backend} backend has no {dtype} kernels")


def tensors(args, where, dtype_name, grad=()):
    """``args`` (float32 NumPy arrays and plain values) with each array as a
    tensor of ``dtype_name`` on ``where``; RoIs keep float32. The names in
    ``grad`` become leaves that require gradients."""
    torch = import_torch()
    dtype = getattr(torch, dtype_name)
    out = {}
    for name, value in args.items():
        if isinstance(value, np.ndarray):
            if value.dtype.kind != "f":  # integer tables (levels) keep their dtype
                value = torch.from_numpy(value).to(where)
            else:
                value = torch.from_numpy(value).to(where,
                                                   torch.float32 if name == "rois" else dtype)
                value.requires_grad_(name in grad)
        out[name] = value
    return out


def float_tensors(args):
    """The names of the differentiable tensors in ``args``: the floating
    arrays but RoIs."""
    return tuple(n for n, v in args.items()
                 if isinstance(v, np.ndarray) and v.dtype.kind == "f" and n != "rois")


def synchronize(where):
    if where.type == "cuda":
        import_torch().cuda.synchronize(where)


def backward(output, leaves):
    """One backward pass into fresh gradients, as after ``zero_grad(set_to_none=True)``."""
    for leaf in leaves:
        leaf.grad = None
    output.backward(output.detach())


def skip_unsupported_dtype(call, dtype_name):
    """Run ``call`` once (warm-up, kernel loading); an adapter that rejects the
    dtype with a TypeError naming it makes asv skip the combination."""
    try:
        return call()
    except TypeError as exc:
        if dtype_name not in str(exc):
            raise
        raise NotImplementedError(f"this build's adapter: {exc}") from None
