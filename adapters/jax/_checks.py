"""Argument checks at trace time, by cudcn's own rules.

JAX knows every shape and dtype when it traces, before any buffer exists.
cudcn's checks (``cudcn.deform_conv._geometry``, ``cudcn.roi_pool._RoIPool``,
``_PSRoIPool``, ``cudcn.dcnv3._DCNv3``) read nothing but shapes and dtypes,
so they run here on stand-ins: NumPy arrays of the traced shape and dtype.
The errors are then the NumPy API's, word for word, raised where the user's
call is.
"""

import jax
import jax.numpy as jnp
import numpy as np


def as_jax(optional=(), **values):
    """Each argument is a jax.Array (a tracer too) or a NumPy array, or None
    if its name is in ``optional``; returns them as jax arrays, in order."""
    arrays = []
    for name, value in values.items():
        if value is None and name in optional:
            arrays.append(None)
            continue
        if not isinstance(value, (jax.Array, np.ndarray)):
            raise TypeError(f"{name} must be a jax.Array or numpy.ndarray, "
                            f"got {type(value).__name__}")
        arrays.append(jnp.asarray(value))
    return arrays


def stand_in(x):
    """A NumPy array with x's shape and dtype for the checks to read.

    ``np.zeros`` takes its memory from calloc, which maps fresh zero pages
    that nothing ever touches here: a stand-in of any size costs
    microseconds and no memory. Its values are never used (cudcn's checks
    may make it contiguous, which it already is).
    """
    return None if x is None else np.zeros(x.shape, x.dtype)
