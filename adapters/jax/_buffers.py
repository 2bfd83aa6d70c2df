"""cudcn functions as XLA custom calls on JAX's own buffers.

The mechanism is ``jax.experimental.buffer_callback``: an XLA FFI custom call
whose Python handler receives XLA's input and output buffers in place. On the
CPU they are read as NumPy arrays over XLA's memory (no copy in); on a GPU as
CuPy arrays over the device pointers, with CuPy switched to XLA's device and
stream so that cudcn's kernels are ordered with the rest of the computation
and nothing syncs.
cudcn's functions allocate their results, so each result is copied once into
XLA's output buffer (a memcpy: 2.4% of a jitted forward at (2, 64, 56, 56),
1.6% of a forward+backward, measured by tools/jax_overhead.py).

Under ``jax.vmap`` the call sees every argument with extra leading batch axes
("expand_dims": an unbatched argument has size 1 there). Where the batch can
be folded into the image axis N (nothing shared, such as weight, is batched,
and every result is per image) cudcn runs once on the folded arrays;
otherwise it runs once per batch element. Both give what a Python loop gives.
"""

import contextlib
import dataclasses
import math
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental.buffer_callback import buffer_callback

import cudcn
from cudcn import _backend

_DLPACK_CPU = 1


@dataclasses.dataclass(frozen=True)
class Call:
    """One cudcn function over buffers.

    Hashable and compared by value: XLA's compile cache (eager calls compile
    one small program per distinct call) keys on it.

    fn: ``fn(**arrays, **static) -> tuple of result arrays``, one unbatched call.
    names: the array arguments passed, in order (absent optional ones left out).
    core_ndims: each one's rank without vmap's batch axes.
    per_image: names whose axis 0 is the image axis N (fold candidates); empty
        for operations that never fold (RoI pooling: rois index into N).
    outputs_per_image: every result's axis 0 is N.
    static: (name, value) pairs of the non-array arguments.
    workspace_limit: cudcn's workspace limit set where the call was traced
        (None: each backend's default); the custom call runs on one of XLA's
        threads, which does not see the tracing thread's
        ``cudcn.workspace_limit``.
    """

    fn: Callable
    names: tuple
    core_ndims: tuple
    per_image: frozenset
    outputs_per_image: bool
    static: tuple
    workspace_limit: object  # int or None

    def __call__(self, ctx, outputs, *buffers):
        with _as_arrays(ctx, (*outputs, *buffers)) as arrays:
            outs, args = arrays[: len(outputs)], arrays[len(outputs):]
            lead = len(args[0].shape) - self.core_ndims[0]  # vmap's batch axes
            batch = tuple(outs[0].shape[:lead])
            if not lead:
                self._run(args, outs)
            elif self._foldable(args, lead):
                self._run_folded(outs, args, lead, batch)
            else:
                for index in np.ndindex(*batch):
                    views = [a[tuple(i if s != 1 else 0 for i, s in zip(index, a.shape))]
                             for a in args]
                    self._run(views, [o[index] for o in outs])

    def _run(self, args, outs):
        with cudcn.workspace_limit(self.workspace_limit):
            results = self.fn(**dict(zip(self.names, args)), **dict(self.static))
        for out, result in zip(outs, results):
            out[...] = result

    def _foldable(self, args, lead):
        if not self.per_image or not self.outputs_per_image:
            return False
        return all(name in self.per_image or all(s == 1 for s in a.shape[:lead])
                   for name, a in zip(self.names, args))

    def _run_folded(self, outs, args, lead, batch):
        folded = []
        for name, a in zip(self.names, args):
            if name in self.per_image:
                # A per-image argument vmap left unbatched is repeated (a copy).
                a = _broadcast(a, batch + tuple(a.shape[lead:]))
                folded.append(a.reshape((-1,) + tuple(a.shape[lead + 1:])))
            else:
                folded.append(a.reshape(a.shape[lead:]))
        self._run(folded, [o.reshape((-1,) + tuple(o.shape[lead + 1:])) for o in outs])


def _broadcast(a, shape):
    if tuple(a.shape) == shape:
        return a
    xp = _backend.array_module(a)
    return xp.ascontiguousarray(xp.broadcast_to(a, shape))


def gpu_device(buffer):
    """The GPU a buffer is on, None for host memory (one place, so that a test
    can send CPU buffers down the GPU branch to a CuPy double)."""
    kind, ordinal = buffer.__dlpack_device__()
    return None if kind == _DLPACK_CPU else ordinal


def xla_stream(ctx):
    """The stream XLA runs the custom call on (a ``cudaStream_t`` as an int)."""
    return ctx.stream


def cupy_view(cupy, buffer, device):
    """A CuPy array over an XLA device buffer's memory, for every dtype: by
    its pointer, as CuPy's DLPack import refuses bfloat16."""
    dtype = np.dtype(buffer.dtype)
    pointer = buffer.__cuda_array_interface__["data"][0]
    memory = cupy.cuda.UnownedMemory(pointer, math.prod(buffer.shape) * dtype.itemsize, buffer,
                                     device)
    return cupy.ndarray(buffer.shape, dtype, cupy.cuda.MemoryPointer(memory, 0))


@contextlib.contextmanager
def _as_arrays(ctx, buffers):
    """XLA's buffers as NumPy (CPU) or CuPy (GPU) arrays over the same memory."""
    device = gpu_device(buffers[0])
    if device is None:
        yield [np.asarray(b) for b in buffers]
        return
    # No machine of this project has a GPU: tests run this on a CuPy double.
    import cupy

    with cupy.cuda.Device(device), cupy.cuda.ExternalStream(xla_stream(ctx), device):
        yield [cupy_view(cupy, b, device) for b in buffers]


def run(call, result_shapes, arrays):
    """``call`` on jax arrays (the present ones, in ``call.names`` order);
    returns one jax array per entry of ``result_shapes`` ((shape, dtype) pairs)."""
    results = [jax.ShapeDtypeStruct(tuple(shape), dtype) for shape, dtype in result_shapes]
    return buffer_callback(call, results, vmap_method="expand_dims")(*arrays)
