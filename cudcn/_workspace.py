"""The cap on temporary buffers (the column buffers of deform_conv2d).

Operations process the batch in chunks of images so that their column
buffers stay under the cap, whatever the batch size. A single image whose
buffer alone is larger still runs, one image at a time.
"""

import contextlib
import contextvars
import numbers

DEFAULT_WORKSPACE_LIMIT = 256 * 2**20

_limit = contextvars.ContextVar("cudcn_workspace_limit", default=DEFAULT_WORKSPACE_LIMIT)


def _checked(nbytes):
    if not isinstance(nbytes, numbers.Integral) or isinstance(nbytes, bool):
        raise TypeError(f"nbytes must be an int, got {type(nbytes).__name__}")
    if nbytes < 1:
        raise ValueError(f"nbytes must be >= 1, got {nbytes}")
    return int(nbytes)


def get_workspace_limit():
    """The current cap on temporary buffers, in bytes (default 256 MiB)."""
    return _limit.get()


def set_workspace_limit(nbytes):
    """Set the cap on temporary buffers, in bytes, for this thread and context."""
    _limit.set(_checked(nbytes))


@contextlib.contextmanager
def workspace_limit(nbytes):
    """``with cudcn.workspace_limit(64 * 2**20):`` caps buffers inside the block."""
    token = _limit.set(_checked(nbytes))
    try:
        yield
    finally:
        _limit.reset(token)


def images_per_chunk(batch, bytes_per_image):
    """How many images fit in the workspace at once (at least one)."""
    return max(1, min(batch, get_workspace_limit() // max(1, bytes_per_image)))
