"""Which array library an array belongs to (without importing CuPy needlessly),
and how an image batch lies in its memory."""

import functools

import numpy as np


def is_cupy_array(x):
    return type(x).__module__.startswith("cupy") and type(x).__name__ == "ndarray"


def is_array(x):
    return isinstance(x, np.ndarray) or is_cupy_array(x)


def array_module(x):
    if isinstance(x, np.ndarray):
        return np
    if is_cupy_array(x):
        import cupy

        return cupy
    raise TypeError(f"expected a numpy.ndarray or cupy.ndarray, got {type(x).__name__}")


def channels_last(a):
    """Whether (N, C, H, W) ``a`` is the memory of a C-contiguous (N, H, W,
    C) array (torch's channels_last) and not C-contiguous itself."""
    return not a.flags.c_contiguous and a.transpose(0, 2, 3, 1).flags.c_contiguous


def device_of(x):
    """None for a NumPy array, the device id for a CuPy one."""
    return None if isinstance(x, np.ndarray) else x.device.id


def describe(x):
    """'numpy.ndarray' or 'cupy.ndarray on device 1', for error messages."""
    if isinstance(x, np.ndarray):
        return "numpy.ndarray"
    return f"cupy.ndarray on device {x.device.id}"


def on_arrays_device(fn):
    """Run ``fn`` with the device of its first CuPy array argument current, so
    that its buffers and results are allocated, and its kernels launched,
    there: CuPy allocates on the current device, whatever the inputs' device."""

    @functools.wraps(fn)
    def on_device(*args, **kwargs):
        for value in (*args, *kwargs.values()):
            if is_cupy_array(value):
                with value.device:
                    return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return on_device
