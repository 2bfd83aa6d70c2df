"""Argument checks shared by every operation.

Each raises before any kernel runs: TypeError for a wrong type or dtype,
ValueError for a wrong shape, value or backend, naming the argument, what was
expected and what came.
"""

import functools
import math
import numbers

import numpy as np

from . import _backend, _kernels


def array(name, x, ndim, layout):
    """``x`` is a NumPy or CuPy array of rank ``ndim``; ``layout`` names its axes."""
    if not _backend.is_array(x):
        raise TypeError(f"{name} must be a numpy.ndarray or cupy.ndarray, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(x.shape)}")
    return x


@functools.lru_cache(maxsize=None)
def dtype_name(dtype):
    """``dtype.name``, looked up once per dtype: NumPy computes it in Python
    on every read, a microsecond or two each time."""
    return dtype.name


def same_backend(arrays):
    """All arrays on one backend and device; returns the array module.

    ``arrays`` maps names to arrays (None entries skipped); the first is the
    reference the others are compared with.
    """
    named = [(n, a) for n, a in arrays.items() if a is not None]
    ref_name, ref = named[0]
    for name, x in named[1:]:
        if type(x) is not type(ref) or _backend.device_of(x) != _backend.device_of(ref):
            raise ValueError(
                f"{name} is a {_backend.describe(x)} but {ref_name} is a "
                f"{_backend.describe(ref)}; all arrays of one call must be on one backend "
                "and device"
            )
    return _backend.array_module(ref)


def float_dtype(arrays, xp):
    """All arrays share one floating dtype that the backend supports; returns it."""
    named = [(n, a) for n, a in arrays.items() if a is not None]
    ref_name, ref = named[0]
    supported = _kernels.CPU_DTYPES if xp is np else _kernels.GPU_DTYPES
    backend = "CPU (NumPy)" if xp is np else "GPU (CuPy)"
    if dtype_name(ref.dtype) not in supported:
        raise TypeError(
            f"{ref_name} has dtype {ref.dtype}; the {backend} backend supports "
            f"{', '.join(supported)}"
        )
    for name, x in named[1:]:
        if x.dtype != ref.dtype:
            raise TypeError(
                f"{name} has dtype {x.dtype} but {ref_name} has {ref.dtype}; all floating "
                "arguments of one call share one dtype"
            )
    return ref.dtype


def shape(name, x, expected, what):
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({what}), got {tuple(x.shape)}")


def int_pair(name, value, minimum):
    """An int or a pair of ints, each >= minimum; returns a pair."""
    if type(value) is int and value >= minimum:  # the common cases first: calls are many
        return value, value
    if (type(value) in (tuple, list) and len(value) == 2 and type(value[0]) is int
            and type(value[1]) is int and value[0] >= minimum and value[1] >= minimum):
        return tuple(value)
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) for v in items
    ):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in items):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return tuple(int(v) for v in items)


def fits_int32(**values):
    """Sizes the kernels take as C int."""
    for name, v in values.items():
        if v > 2**31 - 1:
            raise ValueError(f"{name} = {v} is too large: it must fit in a 32-bit int")


def needs(value, allowed):
    """A set of gradient names out of ``allowed``; a lone string names one."""
    items = (value,) if isinstance(value, str) else value
    try:
        items = frozenset(items)
    except TypeError:
        raise TypeError(f"needs must be a collection of names out of {allowed}, got {value!r}") from None
    unknown = sorted(str(i) for i in items - set(allowed))
    if unknown:
        raise ValueError(f"needs names unknown gradients {unknown}; choose from {allowed}")
    return items


def real(name, value, positive=False):
    """A finite real number (> 0 when ``positive``); returns it as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{name} must be {'positive and ' if positive else ''}finite, got {value!r}")
    return float(value)


def integer(name, value, minimum):
    """An int >= minimum (any int when minimum is None)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def rois(value, xp, compute_dtype):
    """(K, 5) boxes (an array checked by ``array``) of any floating dtype, as a
    contiguous array of ``compute_dtype``."""
    if value.shape[1] != 5:
        raise ValueError(f"rois must have shape (K, 5), got {tuple(value.shape)}")
    if value.dtype.kind != "f" and value.dtype.name != "bfloat16":
        raise TypeError(f"rois must have a floating dtype, got {value.dtype}")
    return xp.ascontiguousarray(value, dtype=compute_dtype)
