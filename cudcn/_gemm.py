"""The matrix products around the column kernels, computed in float32 for
16-bit data.

A 16-bit operand is widened to float32 first, so that the product runs in the
float32 GEMM (BLAS, cuBLAS) on both backends and accumulates in float32, as
cuBLAS does with a float32 compute type, whatever the array library's own
16-bit matmul would do (NumPy's and ml_dtypes' run without BLAS, far slower);
the result, with any addend, is rounded once, when it is stored. On the CPU
the large casts of C-contiguous arrays run on the kernels' threads.
"""

import numpy as np

from . import _blas, _kernels, _launch

# Bytes of float32 copies per 16-bit element: what widening costs the workspace.
WIDENED_ITEMSIZE = 4

# The most rows of one product that stacks several images' columns. One GEMM
# for several small images packs the weights once per tile (the forward at
# N=4, C=256, 14x14: 9% faster than a GEMM per image); 2048 rows are four
# tiles of 512 (cudcn/_blas.py), and keep the stacked columns a few MiB.
STACKED_ROWS = 2048


def compute_dtype(dtype):
    """The dtype a product of ``dtype`` operands accumulates in."""
    return np.dtype(np.float32) if np.dtype(dtype).itemsize < 4 else np.dtype(dtype)


# Below this many elements a 16-bit cast stays in the array library (a
# launch costs about 20 microseconds); above, a C-contiguous CPU array is cast
# by the op's threads (deform_conv2d.cu's widen and narrow kernels). Elements
# per thread of those launches.
KERNEL_CAST_MIN = 1 << 15
CAST_RUN = 8192


def _cast_on_kernel_threads(xp, a):
    return (xp is np and a.size >= KERNEL_CAST_MIN and a.flags.c_contiguous
            and np.dtype(a.dtype).itemsize == 2)


def _cast(kernel, source, dest):
    """dest <- source, widened or rounded (round to nearest even; a NaN
    becomes CUDA's canonical one), on the kernels' threads."""
    count = source.size
    low = source if kernel is _kernels.DEFORM_CONV2D_WIDEN else dest
    _launch.run(_launch.make_launch(
        kernel, low.dtype, -(-count // CAST_RUN), _launch.index_type(count),
        source=source.reshape(-1), dest=dest.reshape(-1), count=count, run=CAST_RUN))
    return dest


def _widened(xp, a):
    if a.dtype == compute_dtype(a.dtype):
        return a
    if _cast_on_kernel_threads(xp, a):
        return _cast(_kernels.DEFORM_CONV2D_WIDEN, a, np.empty(a.shape, compute_dtype(a.dtype)))
    return a.astype(compute_dtype(a.dtype))


def _product(xp, a, b, out=None, deterministic=False):
    """On the CPU, in cudcn's own BLAS on the kernels' threads (cudcn/_blas.py):
    NumPy's OpenBLAS would wake threads of its own, which then spin for tens
    of milliseconds on the cores the next kernels need, and its threading
    is the user's to set, not cudcn's."""
    if xp is not np:
        return xp.matmul(a, b, out=out)
    return _blas.matmul(a, b, out=out, deterministic=deterministic)


def matmul(xp, a, b, out=None, addend=None, deterministic=False):
    """``a @ b + addend`` (NumPy broadcasting rules) computed in ``compute_dtype``.

    With ``out``, the result is rounded into it once and ``out`` is returned;
    otherwise the result has the compute dtype. With ``deterministic``, a CPU
    product has the same bits whatever the number of threads (its tiles do
    not depend on it, see cudcn/_blas.py).
    """
    a, b = _widened(xp, a), _widened(xp, b)
    if out is not None and out.dtype == a.dtype:
        _product(xp, a, b, out, deterministic)
        if addend is not None:
            out += addend
        return out
    product = _product(xp, a, b, deterministic=deterministic)
    if addend is not None:
        product += _widened(xp, addend)
    if out is None:
        return product
    if _cast_on_kernel_threads(xp, out) and product.shape == out.shape:
        return _cast(_kernels.DEFORM_CONV2D_NARROW, np.ascontiguousarray(product), out)
    out[...] = product
    return out
