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

from . import _kernels, _launch

# Bytes of float32 copies per 16-bit element: what widening costs the workspace.
WIDENED_ITEMSIZE = 4

# The most rows of one product that stacks several images' columns. One GEMM
# for several small images packs the weights once (the forward at N=4,
# C=256, 14x14: 9% faster), but OpenBLAS's threaded GEMM touches memory of its
# own in proportion to the rows, about 1.8 KB a row at K=2304, N=256 on 2
# threads: 30 MiB for the 17248 rows of 22 images of 28x28. This bound keeps
# that near 3.5 MiB.
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


def _product(xp, a, b, out=None, one_thread=False):
    """On the CPU, the BLAS's parallel jobs run on the kernels' own threads
    (cudcn/_executors/cpu.py): NumPy's OpenBLAS otherwise wakes threads of
    its own, which then spin for tens of milliseconds on the cores the next
    kernels need (the forward+backward at N=2, C=64, 56x56: 29 -> 22 ms).
    Calls through the torch adapter multiply here too: in torch's MKL, on
    the same threads, the forward+backward's products took 1.12-1.17x the
    time at the bench's four shapes, the forward's 1.00-1.06x."""
    if xp is not np:
        return xp.matmul(a, b, out=out)
    from ._executors import cpu

    with cpu.blas_on_kernel_threads("deform_conv2d.cu", one_thread=one_thread):
        return np.matmul(a, b, out=out)


def matmul(xp, a, b, out=None, addend=None, one_thread=False):
    """``a @ b + addend`` (NumPy broadcasting rules) computed in ``compute_dtype``.

    With ``out``, the result is rounded into it once and ``out`` is returned;
    otherwise the result has the compute dtype. With ``one_thread``, a CPU
    product runs in NumPy's OpenBLAS on one thread, in the same bits
    whatever the number of threads (see cudcn/_executors/cpu.py).
    """
    a, b = _widened(xp, a), _widened(xp, b)
    if out is not None and out.dtype == a.dtype:
        _product(xp, a, b, out, one_thread)
        if addend is not None:
            out += addend
        return out
    product = _product(xp, a, b, one_thread=one_thread)
    if addend is not None:
        product += _widened(xp, addend)
    if out is None:
        return product
    if _cast_on_kernel_threads(xp, out) and product.shape == out.shape:
        return _cast(_kernels.DEFORM_CONV2D_NARROW, np.ascontiguousarray(product), out)
    out[...] = product
    return out
