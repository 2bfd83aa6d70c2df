"""One launch description for both executors.

Everything about a kernel launch except the final call is decided here:
the strategy and the channel blocks (from the target it runs on: the CPU,
or a GPU's model), the instantiation (scalar and index type), grid and
block, and every argument converted to the exact C type of the kernel's
signature. The CuPy and CPU executors only differ in how they make the
call; `cudcn gpu-plan` reads these same descriptions.
"""

import contextlib
import contextvars
import dataclasses
import functools
import math

import numpy as np

from . import _backend
from ._kernels import INDEX_DTYPES, scalar_type

BLOCK = 256
GPU_BLOCKS = (128, 256, 512)  # the candidates; 256 where they hold as many threads
# Enough blocks to fill any current GPU many times over; kernels are
# grid-stride loops, so a capped grid still covers every item.
MAX_GRID = 65535 * 8
INT32_MAX = 2**31 - 1
# A thread's longest loop, at most: the channel blocks and chunks are sized
# so that a thread runs no more iterations than this where it can be helped.
MAX_SERIAL = 32
# Waves of resident threads a launch should have, at least, where its work allows.
WAVES = 2

# Tests set these: the 64-bit index path on small problems, any strategy and
# channel block on either backend.
_force_index64 = False
_force_strategy = None
_force_channel_block = None


@dataclasses.dataclass(frozen=True)
class Target:
    """Where launches run. ``kind`` is "cpu" or "gpu"; a GPU has a
    ``device`` model (cudcn/_device.py) and ``registers(kernel, scalar,
    index)``, the registers per thread of an instantiation there."""

    kind: str
    device: object = None
    registers: object = None

    def block(self, kernel, scalar, index):
        """The block size that lets the most threads be resident (256 on ties)."""
        regs = self.registers(kernel, scalar, index)
        return max(GPU_BLOCKS, key=lambda b: (self.device.resident_threads(regs, b), b == 256))

    def resident_threads(self, kernel, scalar, index):
        regs = self.registers(kernel, scalar, index)
        return self.device.resident_threads(regs, self.block(kernel, scalar, index))


CPU = Target("cpu")
_planned = contextvars.ContextVar("cudcn_planned_target", default=None)


@contextlib.contextmanager
def planning_for(target):
    """Plan every launch as for ``target`` whatever the arrays' backend: how
    gpu-plan describes a GPU's launches while the CPU executor runs them."""
    token = _planned.set(target)
    try:
        yield target
    finally:
        _planned.reset(token)


def is_planning():
    """Whether launches are being described for gpu-plan (worth a host sync
    to report data-dependent figures)."""
    return _planned.get() is not None


def target(xp):
    """The target launches on ``xp``'s arrays are planned for."""
    planned = _planned.get()
    if planned is not None:
        return planned
    if xp is np:
        return CPU
    from ._executors import cupy as executor

    return executor.current_target()


def strategy(xp, deterministic):
    """How an operation spreads its accumulations over threads.

    'planes' (the CPU's default, deterministic): each thread owns what it
    accumulates, whole (image, channel) planes or a block of an image's
    channels in padded pixels of its own: no atomics, a summation order that
    no thread count changes, and the accumulator in a core's cache.
    'items' (the GPU's default): a thread per (sample, block of channels),
    scattering with atomics, as many threads as fill the GPU. 'sorted'
    (deterministic mode on the GPU): as items, but the scatter becomes a
    gather over entries sorted by destination, summed in a fixed order.
    """
    if _force_strategy is not None:
        return _force_strategy
    if target(xp).kind == "cpu":
        return "planes"
    return "sorted" if deterministic else "items"


def channel_block(xp, kernel, dtype, index, items, channels, peer_threads, per_channel=1,
                  max_blocks=None):
    """Channels per thread of a launch of ``items * ceil(channels / block)``
    threads: the most that still give the launch min(WAVES waves,
    ``peer_threads``) threads on the target, so that each thread computes its
    sampling geometry once for as many channels as the device's parallelism
    allows. A thread's loop, ``per_channel`` iterations a channel, stays
    within MAX_SERIAL; with ``max_blocks``, so does a reduction over the
    blocks (at most that many). The CPU, whose few threads any launch fills,
    takes all channels at once.
    """
    if _force_channel_block is not None:
        return max(1, min(_force_channel_block, channels))
    planned = target(xp)
    if planned.kind == "cpu" or channels <= 1:
        return max(1, channels)
    scalar = scalar_type(dtype)
    want = min(WAVES * planned.resident_threads(kernel, scalar, index), peer_threads)
    largest = max(1, min(channels, MAX_SERIAL // max(per_channel, 1)))
    smallest = math.ceil(channels / max_blocks) if max_blocks else 1
    for block in range(largest, smallest - 1, -1):
        if items * math.ceil(channels / block) >= want:
            return block
    return smallest  # the most threads the constraints allow (the reduction's bound first)


@dataclasses.dataclass(frozen=True)
class Work:
    """What a launch asks of a GPU besides its threads, for gpu-plan.

    ``serial``: iterations of a thread's longest loop. ``dram_bytes``: the
    bytes of every array element read or written, each counted once (reads
    through caches can only be fewer). ``peer_threads``: the threads the
    peer implementation (torchvision, mmcv) launches for the same work.
    ``auxiliary``: a precomputation or a final reduction, small beside the
    op's main launches and not held to their thread count.
    """

    serial: int
    dram_bytes: int
    peer_threads: int
    auxiliary: bool = False


def index_type(*extents):
    """'int' when every flat index of the launch fits in 32 bits, else 'long long'.

    ``extents`` are the element counts of every array the kernel indexes and
    the number of work items.
    """
    if _force_index64 or max(extents, default=0) > INT32_MAX:
        return "long long"
    return "int"


@dataclasses.dataclass(frozen=True)
class Launch:
    kernel: object  # _kernels.Kernel
    scalar: object  # _kernels.ScalarType
    index: str
    grid: int
    block: int
    args: tuple  # arrays and NumPy scalars, in the kernel's parameter order
    work: Work = None
    target: Target = CPU

    @property
    def xp(self):
        for a in self.args:  # asked on every run: NumPy's arrays found without a generator
            if type(a) is np.ndarray:
                return np
        return _backend.array_module(next(a for a in self.args if _backend.is_array(a)))

    @property
    def items(self):
        """The launch's work items: its argument n, which every kernel loops over."""
        return int(self.args[self.kernel.items_at])


@dataclasses.dataclass(frozen=True)
class _Param:
    """One kernel parameter of one instantiation: what a value must be."""
    name: str
    spelled: str  # the C type as an error names it
    dtype: np.dtype  # of the array, or of the scalar's exact C type
    array: bool
    written: bool
    real: bool  # an accumulation-type scalar, else an integer
    low: int = 0
    high: int = 0


@functools.lru_cache(maxsize=None)
def parameters(kernel, scalar, index):
    """The parameters of ``kernel`` instantiated for ``scalar`` and ``index``,
    resolved once: launches are made per call, often with small work. With
    them, the set of their names."""
    resolved = []
    for name, ctype in kernel.params:
        base = ctype.replace("const ", "").rstrip("*")
        if ctype.endswith("*"):
            dtype = np.dtype({"T": scalar.dtype_name, "A": scalar.acc_dtype_name,
                              "I": INDEX_DTYPES[index].name}[base])
            resolved.append(_Param(name, ctype, dtype, True, not ctype.startswith("const"), False))
        elif base == "A":
            resolved.append(_Param(name, ctype, np.dtype(scalar.acc_dtype_name), False, False, True))
        else:
            dtype = INDEX_DTYPES[index] if base == "I" else INDEX_DTYPES[ctype]
            info = np.iinfo(dtype)
            resolved.append(_Param(name, index if base == "I" else ctype, dtype, False, False,
                                   False, int(info.min), int(info.max)))
    return tuple(resolved), frozenset(kernel.param_names)


def _convert(kernel, param, value):
    """``value`` as exactly the parameter's C type, or the error naming it."""
    name = param.name
    if param.array:
        if not _backend.is_array(value):
            raise TypeError(f"{kernel.name}: {name} must be an array, got {type(value).__name__}")
        if value.dtype != param.dtype:
            raise TypeError(f"{kernel.name}: {name} must be {param.dtype.name}, got {value.dtype}")
        flags = value.flags  # a new object on every read
        if not flags.c_contiguous:
            raise ValueError(f"{kernel.name}: {name} must be C-contiguous")
        # CuPy arrays have no writeable flag: they are always writeable.
        if param.written and not getattr(flags, "writeable", True):
            raise ValueError(f"{kernel.name}: {name} is written and must be writeable")
        return value
    if param.real:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            raise TypeError(f"{kernel.name}: {name} must be a real number, got {type(value).__name__}")
        return param.dtype.type(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{kernel.name}: {name} must be an integer, got {type(value).__name__}")
    if not param.low <= int(value) <= param.high:
        raise ValueError(f"{kernel.name}: {name}={value} does not fit in {param.spelled}")
    return param.dtype.type(value)


def make_launch(kernel, dtype, n, index, work=None, **values):
    """Describe a launch of ``kernel`` over ``n`` work items.

    ``values`` names every kernel parameter except ``n``; ``work`` is what
    gpu-plan reports of it.
    """
    scalar = scalar_type(dtype)
    values["n"] = n
    params, names = parameters(kernel, scalar, index)
    if values.keys() != names:
        raise TypeError(f"{kernel.name}: missing {sorted(names - set(values))}, "
                        f"unexpected {sorted(set(values) - names)}")
    # Launches are made per call, often for little work: the common cases
    # (C-contiguous arrays of the right dtype, in-range Python ints) are
    # taken here, anything else by _convert, which raises where it must.
    args = []
    first_array = None
    for param in params:
        value = values[param.name]
        if param.array:
            if not (type(value) is np.ndarray and value.dtype == param.dtype
                    and value.flags.c_contiguous
                    and (value.flags.writeable or not param.written)):
                value = _convert(kernel, param, value)
            if first_array is None:
                first_array = value
        elif type(value) is int and not param.real and param.low <= value <= param.high:
            value = param.dtype.type(value)
        else:
            value = _convert(kernel, param, value)
        args.append(value)
    args = tuple(args)
    planned = target(_backend.array_module(first_array))
    if planned.kind == "gpu":
        block = planned.block(kernel, scalar, index)
        grid = min(max(1, math.ceil(n / block)), MAX_GRID)
    else:
        grid, block = grid_and_block(n)
    return Launch(kernel, scalar, index, grid, block, args, work, planned)


def grid_and_block(n):
    """As few blocks of at most BLOCK threads as cover n, each sized (to a
    warp multiple) so that idle threads stay under one warp: small launches,
    such as one thread per plane, would otherwise leave most of a block idle.
    (The CPU executor runs only the first n threads whatever the block.)"""
    grid = min(max(1, math.ceil(n / BLOCK)), MAX_GRID)
    block = min(BLOCK, max(32, math.ceil(n / grid / 32) * 32))
    return grid, block


def run(launch):
    """Execute a launch on the backend of its arrays. No work items, no launch."""
    if launch.items == 0:
        return
    if launch.xp is np:
        from ._executors import cpu as executor
    else:
        from ._executors import cupy as executor
    executor.run(launch)
