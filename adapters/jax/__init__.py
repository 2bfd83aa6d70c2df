"""cudcn for JAX: deform_conv2d, deform_roi_pool, deform_psroi_pool,
ms_deform_attn, dcnv3 and dcnv4 on jax arrays.

Differentiable (``jax.grad``, ``jax.vjp``), and they work under ``jax.jit`` and
``jax.vmap``. The kernels run as XLA custom calls on JAX's own buffers: in
place on the CPU, and on a GPU on the device buffers and XLA's stream through
CuPy. Signatures and semantics are those of cudcn's NumPy API.
"""

from .ops import (
    dcnv3,
    dcnv4,
    deform_conv2d,
    deform_psroi_pool,
    deform_roi_pool,
    ms_deform_attn,
)

__all__ = ["dcnv3", "dcnv4", "deform_conv2d", "deform_psroi_pool", "deform_roi_pool",
           "ms_deform_attn"]
