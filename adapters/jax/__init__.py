"""cudcn for JAX: deform_conv2d, deform_roi_pool, deform_psroi_pool,
ms_deform_attn, dcnv3 and dcnv4 on jax arrays.

Differentiable (``jax.grad``, ``jax.vjp``; first derivatives only), and they
work under ``jax.jit``, ``jax.vmap``, ``jax.shard_map`` and a ``jax.jit``
over a mesh (each device runs cudcn on its own images), in one process or
several (``jax.distributed``). The kernels run as XLA custom calls on JAX's
own buffers: in place on the CPU, and on a GPU on the device buffers and
XLA's stream through CuPy. Signatures and semantics are those of cudcn's
NumPy API (:func:`cudcn.deform_conv2d` and the others); arrays are float32,
float64 (with ``jax_enable_x64``), float16 or bfloat16.

Argument errors are cudcn's ``TypeError`` and ``ValueError``, raised when
the call is traced. A second derivative raises
:class:`cudcn.adapters.jax.SecondDerivativeError`, ``jax.export``
:class:`cudcn.adapters.jax.ExportError`.
"""

from ._buffers import ExportError, SecondDerivativeError
from .ops import (
    dcnv3,
    dcnv4,
    deform_conv2d,
    deform_psroi_pool,
    deform_roi_pool,
    ms_deform_attn,
)

__all__ = ["ExportError", "SecondDerivativeError", "dcnv3", "dcnv4", "deform_conv2d",
           "deform_psroi_pool", "deform_roi_pool", "ms_deform_attn"]
