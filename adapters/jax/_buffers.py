"""cudcn functions as XLA custom calls on JAX's own buffers.

The mechanism is the one of ``jax.experimental.buffer_callback``: an XLA FFI
custom call whose Python handler receives XLA's input and output buffers in
place. On the CPU they are read as NumPy arrays over XLA's memory (no copy
in); on a GPU as CuPy arrays over the device pointers, with CuPy switched to
XLA's device and stream so that cudcn's kernels are ordered with the rest of
the computation and nothing syncs.
cudcn's functions allocate their results, so each result is copied once into
XLA's output buffer (a memcpy: 2.4% of a jitted forward at (2, 64, 56, 56),
1.6% of a forward+backward, measured by tools/jax_overhead.py).

The call is a primitive of its own, ``cudcn_call``, rather than
``buffer_callback``'s, for what that one leaves out:

- Types inside ``jax.shard_map``: a result varies over the mesh axes its
  inputs vary over (buffer_callback types every result as the same on all
  devices, which made ``psum`` count it once per device and gradients wrong).
- Data parallelism under a sharded ``jax.jit``: a call whose arrays have the
  image axis N first (deform_conv2d, ms_deform_attn, dcnv3, dcnv4) is a
  ``custom_partitioning`` over N: each device runs cudcn on its own images,
  and a result summed over the images (a weight's gradient) is summed over
  the devices (``psum``). XLA would otherwise gather the batch onto every
  device and run all of it there.
- Errors that name cudcn: a second derivative, ``jax.export``.

On the CPU, the calls XLA makes from threads of its own (the programs of
several host devices run there) take turns on one thread of the adapter's
(see ``_host_thread``); others run where they are made.

Under ``jax.vmap`` the call sees every argument with extra leading batch axes
("expand_dims": an unbatched argument has size 1 there). Where the batch can
be folded into the image axis N (nothing shared, such as weight, is batched,
and every result is per image) cudcn runs once on the folded arrays;
otherwise it runs once per batch element. Both give what a Python loop gives.
"""

import concurrent.futures
import contextlib
import dataclasses
import functools
import math
import os
import threading
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir
from jax.sharding import AxisType, NamedSharding, PartitionSpec

# Private parts of jax this module depends on (jax 0.10), all of them where
# buffer_callback's own implementation uses them; tests/test_jax_sharding.py
# fails loudly if a jax release moves them.
from jax._src import dispatch
from jax._src.sharding_impls import ShardingContext

import cudcn
from cudcn import _backend

_DLPACK_CPU = 1

# XLA's FFI handlers of buffer_callback: they call the Python function at
# attribute ``index`` of the executable's host callbacks with an execution
# context, the input buffers and the output buffers.
_HANDLERS = {"cpu": "xla_buffer_python_cpu_callback",
             "cuda": "xla_buffer_python_gpu_callback",
             "rocm": "xla_buffer_python_gpu_callback"}


class SecondDerivativeError(NotImplementedError):
    """A derivative of a cudcn gradient was asked for (``jax.grad`` of
    ``jax.grad``). Forward mode (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``)
    stops earlier, at JAX's own error for a ``custom_vjp`` (a ``TypeError``).

    Raised by every function of ``cudcn.adapters.jax`` when JAX traces the
    derivative of its backward rule: cudcn's operations have first
    derivatives only. A ``NotImplementedError`` (so a ``RuntimeError``).

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import cudcn.adapters.jax as cj
        >>> x = jnp.arange(4.0).reshape(1, 2, 2, 1)
        >>> offset, mask = jnp.zeros((1, 2, 2, 2)), jnp.ones((1, 2, 2, 1))
        >>> loss = lambda x: cj.dcnv3(x, offset, mask, kernel_size=1).sum()
        >>> try:
        ...     jax.grad(lambda x: jax.grad(loss)(x).sum())(x)
        ... except cj.SecondDerivativeError:
        ...     print("first derivatives only")
        first derivatives only
    """


class ExportError(NotImplementedError):
    """``jax.export`` of a computation with a cudcn call.

    Raised by every function of ``cudcn.adapters.jax`` when a computation
    that calls it is lowered for ``jax.export``: cudcn runs as a Python
    callback of the process that compiled the program, which a serialized
    program cannot carry. Serve such a model from Python with ``jax.jit``,
    or export it to ONNX through the PyTorch adapter. A
    ``NotImplementedError`` (so a ``RuntimeError``).

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import cudcn.adapters.jax as cj
        >>> x = jnp.arange(4.0).reshape(1, 2, 2, 1)
        >>> offset, mask = jnp.zeros((1, 2, 2, 2)), jnp.ones((1, 2, 2, 1))
        >>> f = jax.jit(lambda x: cj.dcnv3(x, offset, mask, kernel_size=1))
        >>> try:
        ...     jax.export.export(f)(x)
        ... except cj.ExportError:
        ...     print("not exportable")
        not exportable
    """


@dataclasses.dataclass(frozen=True)
class Call:
    """One cudcn function over buffers.

    Hashable and compared by value: XLA's compile cache (eager calls compile
    one small program per distinct call) keys on it.

    op: the public operation's name, for messages.
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

    op: str
    fn: Callable
    names: tuple
    core_ndims: tuple
    per_image: frozenset
    outputs_per_image: bool
    static: tuple
    workspace_limit: object  # int or None

    def __call__(self, ctx, outputs, *buffers):
        if gpu_device(buffers[0]) is None and _on_xla_thread():
            _host_thread().submit(self._convert_and_run, ctx, outputs, buffers).result()
        else:
            self._convert_and_run(ctx, outputs, buffers)

    def _convert_and_run(self, ctx, outputs, buffers):
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


@dataclasses.dataclass(frozen=True)
class Split:
    """How a call divides over the image axis N across devices.

    args: per argument, whether its axis 0 is N (the others, such as weight,
        every device needs whole).
    results: per result, whether its axis 0 is N; a result that is not is a
        sum over the images (a weight's gradient), so the devices' partial
        results add up to it.
    """

    args: tuple
    results: tuple


# Calls on the CPU that XLA makes from threads of its own (a program over
# several devices runs there) run on one thread of the adapter's own, in turn:
# - XLA's host devices (a mesh of CPU devices) share the machine's cores,
#   which one cudcn call keeps busy already (its thread pool). Run at once,
#   the calls of 2 host devices took 1.96x one device's time for the same
#   images (deform_conv2d at N=8, C=32, 28x28, on 2 cores).
# - cudcn keeps its CPU scratch buffers between calls per Python thread
#   (fresh pages fault), and each callback on XLA's threads gets a Python
#   thread state for that call only: its scratch was fresh every time
#   (1,000-1,400 page faults a step).
# Taking turns under a lock on XLA's own threads instead, the scratch kept,
# the forward+backward took 1.36-1.65x one device's time, against 1.26-1.30x
# here (the two interleaved in one process; the forward 1.2-1.7x either way).
# Calls from Python's threads (a one-device jit runs its program on the
# caller's) stay there: the hop costs 1-8% of a call at N=2..8, C=32, 28x28.
_host = {"executor": None}
_host_lock = threading.Lock()


def _host_thread():
    """The adapter's thread for the CPU calls of XLA's threads (made at the
    first such call)."""
    with _host_lock:
        if _host["executor"] is None:
            _host["executor"] = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="cudcn-jax-cpu")
        return _host["executor"]


def _on_xla_thread():
    """The caller is a thread that Python did not start: threading sees it as a
    "dummy" thread, made anew for each of its calls into Python."""
    return isinstance(threading.current_thread(), threading._DummyThread)


def _forget_host_thread():
    """A forked child has none of its parent's threads."""
    global _host_lock
    _host_lock = threading.Lock()
    _host["executor"] = None


os.register_at_fork(after_in_child=_forget_host_thread)


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


def run(call, result_shapes, arrays, split=None):
    """``call`` on jax arrays (the present ones, in ``call.names`` order);
    returns one jax array per entry of ``result_shapes`` ((shape, dtype)
    pairs). ``split``: how the call divides over devices (see Split), None
    for a call that runs whole on every device.

    Inside ``jax.shard_map`` the arrays must vary over the same mesh axes
    (see ``vary_alike``)."""
    results = tuple((tuple(int(d) for d in shape), np.dtype(dtype))
                    for shape, dtype in result_shapes)
    return cudcn_call_p.bind(*arrays, call=call, results=results, split=split, host_index=None)


def vary_alike(arrays):
    """The arrays, each cast to vary over every mesh axis any of them varies
    over (inside ``jax.shard_map``; a no-op elsewhere). A cudcn call's result
    varies as its inputs together do, and the cast of a replicated argument
    is what sums its gradient over the devices (the cast's transpose is a
    ``psum``), as jax.numpy's own operations do."""
    present = [a for a in arrays if a is not None]
    axes = frozenset().union(*(_varying(a) for a in present))
    return [a if a is None or _varying(a) == axes
            else jax.lax.pcast(a, tuple(sorted(axes - _varying(a), key=str)), to="varying")
            for a in arrays]


def _varying(x):
    return jax.typeof(x).manual_axis_type.varying


# --- the primitive ---------------------------------------------------------

cudcn_call_p = Primitive("cudcn_call")
cudcn_call_p.multiple_results = True
# Its lowering may be a custom_partitioning, which needs the devices then.
dispatch.prim_requires_devices_during_lowering.add(cudcn_call_p)


@functools.lru_cache(maxsize=256)
def _compiled(params):
    return jax.jit(functools.partial(cudcn_call_p.bind, **dict(params)))


def _impl(*arrays, **params):
    """An eager call: compiled once per distinct call (the jit cache), under
    ``jax.disable_jit`` too (where jit would run ``bind`` again, and again)."""
    with jax.disable_jit(False):
        return _compiled(tuple(params.items()))(*arrays)


cudcn_call_p.def_impl(_impl)


def _abstract_eval(*avals, call, results, split, host_index):
    varying = frozenset().union(*(a.manual_axis_type.varying for a in avals))
    image_axes = _explicit_image_axes(avals, split)
    per_image = split.results if split is not None else (False,) * len(results)
    out = []
    for (shape, dtype), image in zip(results, per_image):
        if not varying and image_axes is None:
            out.append(jax.core.ShapedArray(shape, dtype))
            continue
        spec = [None] * len(shape)
        if image and image_axes is not None:
            spec[0] = image_axes
        sharding = NamedSharding(avals[0].sharding.mesh, PartitionSpec(*spec))
        mat = avals[0].manual_axis_type.update(varying=varying, unreduced=frozenset(),
                                               reduced=frozenset())
        out.append(jax.core.ShapedArray(shape, dtype, sharding=sharding, manual_axis_type=mat))
    return out


def _explicit_image_axes(avals, split):
    """Under explicit sharding (mesh axes of type Explicit), the axes the
    image axis of the first per-image argument is sharded over: the
    per-image results are sharded as it is. None otherwise."""
    if split is None or True not in split.args:
        return None
    sharding = avals[split.args.index(True)].sharding
    spec = sharding.spec
    if not spec or spec[0] is None:
        return None
    axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
    types = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_types))
    if not all(types.get(a) == AxisType.Explicit for a in axes):
        return None
    return spec[0]


cudcn_call_p.def_abstract_eval(_abstract_eval)


def _batch(args, dims, *, call, results, split, host_index):
    """vmap: the batch axes lead, an unbatched argument gets one of size 1
    (Call.__call__ then folds or loops)."""
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    args = [jnp.expand_dims(a, 0) if d is None else jnp.moveaxis(a, d, 0)
            for a, d in zip(args, dims)]
    results = tuple(((size, *shape), dtype) for shape, dtype in results)
    # The elements of vmap's batch are independent calls: under a sharded jit
    # the batch divides over devices (an unbatched argument goes whole to
    # each), whatever the call (RoI pooling too).
    split = Split(tuple(d is not None for d in dims), (True,) * len(results))
    outs = cudcn_call_p.bind(*args, call=call, results=results, split=split,
                             host_index=host_index)
    return outs, [0] * len(outs)


batching.primitive_batchers[cudcn_call_p] = _batch


def _no_second_derivative(primals, tangents=None, *, call, **params):
    raise SecondDerivativeError(
        f"cudcn.adapters.jax.{call.op}: cudcn's operations have first derivatives only "
        "(jax.grad, jax.vjp); the derivative of a gradient (jax.grad of jax.grad) is not "
        "available")


ad.primitive_jvps[cudcn_call_p] = _no_second_derivative
ad.primitive_transposes[cudcn_call_p] = (
    lambda cotangents, *args, call, **params: _no_second_derivative(args, call=call))


# --- lowering --------------------------------------------------------------

def _lowering(ctx, *args, call, results, split, host_index):
    if ctx.module_context.lowering_parameters.for_export:
        raise ExportError(
            f"cudcn.adapters.jax.{call.op} cannot be exported with jax.export: cudcn runs as "
            "a Python callback of the process that compiled it, which a serialized program "
            "cannot carry. Serve the model from Python with cudcn installed (jax.jit), or "
            "export it through cudcn's PyTorch adapter to ONNX (the Deploy guide, docs/guides/deploy.md)")
    if split is not None and host_index is None and _over_devices(ctx):
        # The partitioner lowers each device's part into a module of its own,
        # whose host callbacks XLA never sees: the callback is registered
        # here, in the program's own module, and the parts call it by index.
        index = _register(ctx.module_context, call, len(args))
        ranks = tuple(a.ndim for a in ctx.avals_in)
        return mlir.lower_fun(_partitioned(call, results, split, index, ranks),
                              multiple_results=True)(ctx, *args)
    if host_index is None:
        host_index = _register(ctx.module_context, call, len(args))
    platforms = ctx.module_context.platforms
    if len(platforms) > 1 or platforms[0] not in _HANDLERS:
        raise NotImplementedError(f"cudcn.adapters.jax runs on the CPU and on CUDA GPUs, "
                                  f"not on {', '.join(platforms)}")
    return jax.ffi.ffi_lowering(_HANDLERS[platforms[0]])(ctx, *args,
                                                          index=np.uint64(host_index))


mlir.register_lowering(cudcn_call_p, _lowering)


def _over_devices(ctx):
    """The program is partitioned over several devices by XLA (jit over a
    mesh), as opposed to one device, or each device's own code (shard_map)."""
    axis_context = ctx.module_context.axis_context
    return isinstance(axis_context, ShardingContext) and axis_context.num_devices > 1


def _register(module_context, call, arg_count):
    """Adds ``call`` to the program's host callbacks; returns its index."""
    def on_buffers(execution_context, *buffers):
        call(execution_context, buffers[arg_count:], *buffers[:arg_count])
        return ()

    module_context.add_host_callback(on_buffers)
    return len(module_context.host_callbacks) - 1


def _partitioned(call, results, split, index, ranks):
    """The call as a custom_partitioning over the image axis N."""
    def whole(*arrays):
        return cudcn_call_p.bind(*arrays, call=call, results=results, split=None,
                                 host_index=index)

    partitioned = custom_partitioning(whole)
    partitioned.def_partition(
        partition=functools.partial(_partition, call, results, split, index),
        infer_sharding_from_operands=functools.partial(_infer, split),
        sharding_rule=_sharding_rule(ranks, results, split),
        need_replication_factors=_replicated_factors(ranks, results, split))
    return partitioned


def _image_axes(mesh, arg_shapes, split):
    """The mesh axes the images are divided over: those axis 0 of the first
    per-image argument is sharded over, if they divide N evenly (a padded
    shard would add its padding to a weight's gradient); () for none."""
    first = arg_shapes[split.args.index(True)]
    sharding = first.sharding
    if not isinstance(sharding, NamedSharding) or mesh.empty or not first.shape:
        return ()
    spec = sharding.spec
    if not spec or spec[0] is None:
        return ()
    axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
    devices = math.prod(mesh.shape[a] for a in axes)
    return axes if first.shape[0] % devices == 0 else ()


def _shardings(mesh, axes, per_image):
    image = (axes if len(axes) > 1 else axes[0]) if axes else None
    return tuple(NamedSharding(mesh, PartitionSpec(image) if p else PartitionSpec())
                 for p in per_image)


def _partition(call, results, split, index, mesh, arg_shapes, result_shape):
    axes = _image_axes(mesh, arg_shapes, split)
    devices = math.prod(mesh.shape[a] for a in axes)
    local = tuple(((shape[0] // devices, *shape[1:]) if image else shape, dtype)
                  for (shape, dtype), image in zip(results, split.results))

    def per_device(*arrays):
        outs = cudcn_call_p.bind(*arrays, call=call, results=local, split=None,
                                 host_index=index)
        # Sums over the images: each device has its images' part.
        return [out if image or not axes else jax.lax.psum(out, axes)
                for out, image in zip(outs, split.results)]

    # The results as ``whole`` returns them, a list; the arguments a tuple.
    return (mesh, per_device, list(_shardings(mesh, axes, split.results)),
            _shardings(mesh, axes, split.args))


def _infer(split, mesh, arg_shapes, result_shape):
    """The results' shardings from the arguments' (XLA's GSPMD partitioner;
    Shardy reads the sharding rule instead)."""
    return list(_shardings(mesh, _image_axes(mesh, arg_shapes, split), split.results))


def _factors(prefix, ndim, image):
    return [("n" if image and axis == 0 else f"{prefix}_{axis}") for axis in range(ndim)]


def _sharding_rule(ranks, results, split):
    """Shardy's view: the image axis N is one factor of every per-image array;
    every other axis a factor of its own that stays replicated."""
    args = [" ".join(_factors(f"a{i}", ndim, image))
            for i, (ndim, image) in enumerate(zip(ranks, split.args))]
    outs = [" ".join(_factors(f"r{i}", len(shape), image))
            for i, ((shape, _), image) in enumerate(zip(results, split.results))]
    return f"{', '.join(args)} -> {', '.join(outs)}"


def _replicated_factors(ranks, results, split):
    arg_factors = (f for i, (ndim, image) in enumerate(zip(ranks, split.args))
                   for f in _factors(f"a{i}", ndim, image))
    result_factors = (f for i, ((shape, _), image) in enumerate(zip(results, split.results))
                      for f in _factors(f"r{i}", len(shape), image))
    return tuple(f for f in (*arg_factors, *result_factors) if f != "n")
