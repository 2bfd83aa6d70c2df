"""The shared input builders' arrays as torch tensors, for the adapter's tests."""

import numpy as np
import torch


def as_tensors(args, requires_grad=(), dtype=None):
    """``args`` with each array a tensor of its own memory (in ``dtype``,
    RoIs excepted), the ones named in ``requires_grad`` leaves with gradients."""
    out = {}
    for name, value in args.items():
        if isinstance(value, np.ndarray):
            t = torch.from_numpy(value.copy())
            if dtype is not None and name != "rois":
                t = t.to(dtype)
            out[name] = t.requires_grad_(name in requires_grad)
        else:
            out[name] = value
    return out
