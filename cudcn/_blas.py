"""The CPU backend's matrix products: cudcn's own BLAS, single-threaded, in
tiles on the kernels' thread pool.

NumPy's OpenBLAS is the user's: its thread count and its threads callback
are process-global, so a product of cudcn's could only change how it runs by
changing it for every thread of the process. Doing so (as cudcn once did,
for the duration of its calls) gave the user's products in other threads
wrong results and hung them, and two cudcn calls at once on torch's OpenMP
threads shared OpenBLAS's per-job buffers. cudcn therefore multiplies in a
BLAS of its own: the OpenBLAS of the ``scipy-openblas32`` package, loaded
privately (its symbols are prefixed ``scipy_``: nothing else in the process
calls it), set once to one thread. Each product is split into tiles of C's
rows or columns, each tile one single-threaded call, spread over the pool
that runs the kernels (cpu_shim.h's run_gemm_tiles). A single-threaded call
is safe from any number of threads at once, and nothing is ever switched.

The tiles depend on the shape and a thread count only; with
``deterministic`` the count is a constant, so the bits do not depend on the
machine either. Without the package (or for a dtype, size or layout it does
not take) a product goes to NumPy's matmul, as the user's own would.
"""

import ctypes
import functools
import math

import numpy as np

# cblas's enumerations.
_NO_TRANS, _TRANS = 111, 112
# Tiles are at most this long (rows or columns of C): each tile packs the
# whole of the other operand, which costs as much as ~50 rows of products,
# so tiles shorter than a few hundred cost more packing than they save in
# balance. At N=2, C=64 .. N=8, C=256 (the bench's four shapes) every
# product's tiles are even multiples of the 2 threads.
_TILE = 512
# Shorter tiles than this are not split further: a thread's share of a
# small product costs less than waking a thread for it.
_MIN_TILE = 32
# deterministic=True splits as if for this many threads on every machine.
DETERMINISTIC_THREADS = 4
_KERNELS = "deform_conv2d.cu"  # whose pool the products share
_INT_MAX = 2**31 - 1


@functools.cache
def _library():
    """cudcn's OpenBLAS: {dtype: address of cblas_?gemm}, or {} without it."""
    try:
        import scipy_openblas32
    except ImportError:
        return {}
    try:
        path = f"{scipy_openblas32.get_lib_dir()}/{scipy_openblas32.get_library(fullname=True)}"
        blas = ctypes.CDLL(path)
    except (OSError, IndexError):
        return {}
    # The instance's own setting, made once: its products never wake its
    # threads (the parallelism is the tiles'). The one worker thread it starts
    # on loading (per CPU, less one) spins about 0.1 s, once, then sleeps for
    # good; the environment variables that would stop it are the process's.
    blas.scipy_openblas_set_num_threads(1)
    return {np.dtype(np.float32): ctypes.cast(blas.scipy_cblas_sgemm, ctypes.c_void_p).value,
            np.dtype(np.float64): ctypes.cast(blas.scipy_cblas_dgemm, ctypes.c_void_p).value}


def available():
    """Whether cudcn's own BLAS was found (else products use NumPy's matmul)."""
    return bool(_library())


def tile_count(length, threads):
    """Tiles of a C dimension of ``length``: a multiple of ``threads`` where
    the tiles stay at least _MIN_TILE long, each at most _TILE."""
    tiles = threads * -(-length // (threads * _TILE))
    return max(1, min(tiles, length // _MIN_TILE))


def _operand(x):
    """(x, transposed, leading dimension) of a matrix stack for cblas: its
    last two axes row-major or column-major, else a contiguous copy."""
    item = x.itemsize
    rows, cols = x.shape[-2:]
    row_stride, col_stride = x.strides[-2:]
    if (col_stride == item or cols == 1) and row_stride % item == 0 \
            and max(cols, 1) <= row_stride // item <= _INT_MAX:
        return x, False, row_stride // item
    if (row_stride == item or rows == 1) and col_stride % item == 0 \
            and max(rows, 1) <= col_stride // item <= _INT_MAX:
        return x, True, col_stride // item
    x = np.ascontiguousarray(x)
    return x, False, max(cols, 1)


def _offsets(x, batch_shape):
    """Byte offsets of the matrices of ``x`` broadcast to ``batch_shape``, C order."""
    x = np.broadcast_to(x, batch_shape + x.shape[-2:])
    offsets = np.zeros(batch_shape, np.int64)
    for axis, (size, stride) in enumerate(zip(batch_shape, x.strides[:-2])):
        shape = [1] * len(batch_shape)
        shape[axis] = size
        offsets += (np.arange(size, dtype=np.int64) * stride).reshape(shape)
    return np.ascontiguousarray(offsets.reshape(-1))


def _batch_shape(a, b):
    """The broadcast batch shape of two matrix stacks, or None if they do not
    broadcast (np.broadcast_shapes makes arrays, a few microseconds)."""
    ndim = max(a.ndim, b.ndim) - 2
    shape = []
    for x, y in zip((1,) * (ndim - a.ndim + 2) + a.shape[:-2],
                    (1,) * (ndim - b.ndim + 2) + b.shape[:-2]):
        if x != y and 1 not in (x, y):
            return None
        shape.append(y if x == 1 else x)
    return tuple(shape)


def matmul(a, b, out=None, deterministic=False):
    """``np.matmul(a, b, out=out)`` for NumPy arrays, in cudcn's own BLAS
    where it takes the operands."""
    gemm = _library().get(a.dtype)
    if gemm is None or b.dtype != a.dtype or a.ndim < 2 or b.ndim < 2:
        return np.matmul(a, b, out=out)
    (m, k), (k_b, n) = a.shape[-2:], b.shape[-2:]
    batch_shape = _batch_shape(a, b)
    if batch_shape is None:
        return np.matmul(a, b, out=out)
    shape = batch_shape + (m, n)
    if (k != k_b or out is not None and (out.shape != shape or out.dtype != a.dtype)
            or 0 in (m, n, k) or max(m, n, k) > _INT_MAX or 0 in batch_shape):
        return np.matmul(a, b, out=out)
    result = out
    if (result is None or result.strides[-1] != result.itemsize
            or not n <= result.strides[-2] // result.itemsize <= _INT_MAX
            or result.strides[-2] % result.itemsize
            or np.may_share_memory(result, a) or np.may_share_memory(result, b)):
        result = np.empty(shape, a.dtype)
    from ._executors import cpu

    a, trans_a, lda = _operand(a)
    b, trans_b, ldb = _operand(b)
    split_rows = m >= n
    threads = DETERMINISTIC_THREADS if deterministic else cpu.launch_threads(_KERNELS)
    offsets = [_offsets(x, batch_shape) for x in (a, b, result)]
    tiles = cpu.GemmTiles(
        gemm=gemm, trans_a=_TRANS if trans_a else _NO_TRANS,
        trans_b=_TRANS if trans_b else _NO_TRANS, m=m, n=n, k=k, lda=lda, ldb=ldb,
        ldc=result.strides[-2] // result.itemsize, a=a.ctypes.data, b=b.ctypes.data,
        c=result.ctypes.data, a_offsets=offsets[0].ctypes.data,
        b_offsets=offsets[1].ctypes.data, c_offsets=offsets[2].ctypes.data,
        tiles=tile_count(m if split_rows else n, threads), split_rows=split_rows)
    cpu.run_gemm(_KERNELS, tiles, math.prod(batch_shape), a.dtype == np.float64)
    if out is not None and result is not out:
        out[...] = result
        return out
    return result
