"""The cap on temporary buffers (the column buffers of deform_conv2d).

Operations process the batch in chunks of images so that their column
buffers stay under the cap, whatever the batch size. A single image whose
buffer alone is larger still runs, one image at a time.
"""

import contextlib
import contextvars
import math
import numbers
import threading

import numpy as np

# The GPU's default, and the CPU's, chosen by measurement. On the CPU a chunk
# whose columns are written and then read back by the GEMM is faster when it
# is one image's than several large ones' (medians of interleaved rounds,
# 16 / 64 MiB: the forward at N=8, C=256, 28x28 0.92-0.95x the time,
# forward+backward 0.95; at N=32 0.92 and 0.94; the forward at N=2, C=64,
# 56x56 0.86-0.96); small images still share a chunk, which keeps their
# stacked GEMM (N=4, C=256, 14x14 unchanged). Smaller caps split those too.
DEFAULT_WORKSPACE_LIMIT = 256 * 2**20
DEFAULT_CPU_WORKSPACE_LIMIT = 16 * 2**20

# None: each backend's default.
_limit = contextvars.ContextVar("cudcn_workspace_limit", default=None)


def _checked(nbytes):
    if not isinstance(nbytes, numbers.Integral) or isinstance(nbytes, bool):
        raise TypeError(f"nbytes must be an int, got {type(nbytes).__name__}")
    if nbytes < 1:
        raise ValueError(f"nbytes must be >= 1, got {nbytes}")
    return int(nbytes)


def get_workspace_limit(backend="cpu"):
    """The current cap on temporary buffers, in bytes, of the "cpu" or "gpu" backend.

    The cap set in this context (by :func:`cudcn.set_workspace_limit` or
    :func:`cudcn.workspace_limit`, for both backends), else the backend's
    default: 16 MiB on the CPU, 256 MiB on the GPU.

    Args:
        backend: "cpu" or "gpu".

    Returns:
        The cap in bytes, an int.

    Raises:
        ValueError: a backend other than "cpu" or "gpu".

    Example:
        >>> import cudcn
        >>> cudcn.get_workspace_limit("cpu"), cudcn.get_workspace_limit("gpu")
        (16777216, 268435456)
    """
    if backend not in ("cpu", "gpu"):
        raise ValueError(f"backend must be 'cpu' or 'gpu', got {backend!r}")
    limit = _limit.get()
    if limit is not None:
        return limit
    return DEFAULT_CPU_WORKSPACE_LIMIT if backend == "cpu" else DEFAULT_WORKSPACE_LIMIT


def explicit_limit():
    """The limit set in this context, or None (each backend's default)."""
    return _limit.get()


def set_workspace_limit(nbytes):
    """Set the cap on temporary buffers, in bytes, for this thread and context.

    Operations process the batch in chunks of images whose temporary buffers
    stay under the cap; one image whose buffers alone are larger still runs.
    The cap holds for both backends, in the current ``contextvars`` context
    only: other threads, and contexts copied before the call, keep theirs.
    :func:`cudcn.workspace_limit` sets one for a block.

    Args:
        nbytes: the cap in bytes, an int of at least 1, or None for each
            backend's default again.

    Raises:
        TypeError: nbytes that is not an int (a bool included) or None.
        ValueError: nbytes < 1.

    Example:
        >>> import contextvars
        >>> import cudcn
        >>> def capped():
        ...     cudcn.set_workspace_limit(8 * 2**20)
        ...     capped = cudcn.get_workspace_limit("cpu"), cudcn.get_workspace_limit("gpu")
        ...     cudcn.set_workspace_limit(None)
        ...     return capped, cudcn.get_workspace_limit("cpu")
        >>> contextvars.copy_context().run(capped)  # in a copy: this context keeps its cap
        ((8388608, 8388608), 16777216)
        >>> cudcn.get_workspace_limit("cpu")
        16777216
    """
    _limit.set(None if nbytes is None else _checked(nbytes))


@contextlib.contextmanager
def workspace_limit(nbytes):
    """A context manager that caps temporary buffers inside its block.

    ``with cudcn.workspace_limit(64 * 2**20):`` sets the cap of
    :func:`cudcn.set_workspace_limit` for the block and restores the one
    before it on leaving.

    Args:
        nbytes: the cap in bytes, an int of at least 1, or None for each
            backend's default.

    Raises:
        TypeError: nbytes that is neither None nor an int (a bool included),
            on entering the block.
        ValueError: nbytes < 1, on entering the block.

    Example:
        >>> import cudcn
        >>> with cudcn.workspace_limit(64 * 2**20):
        ...     print(cudcn.get_workspace_limit("cpu"))
        67108864
        >>> cudcn.get_workspace_limit("cpu")
        16777216
    """
    token = _limit.set(None if nbytes is None else _checked(nbytes))
    try:
        yield
    finally:
        _limit.reset(token)


def images_per_chunk(batch, bytes_per_image, xp=np):
    """How many images fit in ``xp``'s backend's workspace at once (at least one)."""
    limit = get_workspace_limit("cpu" if xp is np else "gpu")
    return max(1, min(batch, limit // max(1, bytes_per_image)))


# Scratch memory of the CPU backend, kept between calls per thread: a fresh
# multi-megabyte NumPy buffer is fresh pages from the OS, and their faults
# cost as much as a kernel (1,700 to 2,700 a call at N=2, C=64, 56x56). CuPy
# has a memory pool of its own.
_scratch = threading.local()


def scratch(xp, name, shape, dtype):
    """An uninitialised array for one call's temporary use, named for its
    role: on the CPU the same memory serves the next call's buffer of that
    name (it grows as needed, and is freed by ``release_scratch``), so no
    two live buffers of one call may share a name."""
    dtype = np.dtype(dtype)
    if xp is not np:
        return xp.empty(shape, dtype)
    count = math.prod(shape)  # Python ints: np.prod costs microseconds a call
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    held = buffers.get(name)
    if held is None or held.nbytes < count * dtype.itemsize:
        held = buffers[name] = np.empty(count * dtype.itemsize, np.uint8)
    return held[: count * dtype.itemsize].view(dtype).reshape(shape)


def padded_scratch(xp, name, shape, dtype):
    """A zeroed ``scratch`` array of padded images, (images, ...), whose
    callers write only the interiors: the zeros around them stay from one
    call to the next, and only the images that this name's memory has not
    yet held in this layout are cleared (the forward at N=2, C=64, 56x56
    cleared 0.9 MB a call). A name used here is used nowhere else."""
    if xp is not np:
        return xp.zeros(shape, dtype)
    dtype = np.dtype(dtype)
    array = scratch(xp, name, shape, dtype)
    held = _scratch.buffers[name]
    zeroed = getattr(_scratch, "zeroed", None)
    if zeroed is None:
        zeroed = _scratch.zeroed = {}
    layout = (shape[1:], dtype)
    memory, cleared_layout, cleared = zeroed.get(name, (None, None, 0))
    if memory is not held or cleared_layout != layout:
        cleared = 0
    if shape[0] > cleared:
        array[cleared:] = 0
        zeroed[name] = (held, layout, shape[0])
    return array


def release_scratch():
    """Free the CPU scratch memory this thread keeps between calls.

    On the CPU the operations keep their temporary buffers from one call to
    the next, per thread, growing them as needed; this drops the calling
    thread's (the next call allocates them again). CuPy's arrays are
    untouched: they live in CuPy's memory pool.

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> out = cudcn.deform_conv2d(np.ones((1, 2, 4, 4)), np.zeros((1, 18, 2, 2)),
        ...                           np.ones((3, 2, 3, 3)))
        >>> cudcn.release_scratch()
        >>> out.shape  # results are never scratch: they stay
        (1, 3, 2, 2)
    """
    _scratch.buffers = {}
    _scratch.zeroed = {}
