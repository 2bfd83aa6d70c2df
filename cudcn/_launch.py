"""One launch description for both executors.

Everything about a kernel launch except the final call is decided here:
the instantiation (scalar and index type), grid and block, and every
argument converted to the exact C type of the kernel's signature. The CuPy
and CPU executors only differ in how they make the call.
"""

import dataclasses
import math

import numpy as np

from . import _backend
from ._kernels import INDEX_DTYPES, SCALAR_TYPES

BLOCK = 256
# Enough blocks to fill any current GPU many times over; kernels are
# grid-stride loops, so a capped grid still covers every item.
MAX_GRID = 65535 * 8
INT32_MAX = 2**31 - 1

# Tests set these: the 64-bit index path on small problems, and either
# strategy on either backend.
_force_index64 = False
_force_strategy = None


def strategy(xp, deterministic):
    """How an operation spreads its accumulations over threads.

    'planes': each thread owns whole (image, channel) planes of what it
    accumulates: no atomics, and a summation order that no thread count
    changes. The CPU's default (atomics are slow there) and deterministic
    mode on every backend. 'items': one thread per sample, scattering with
    atomics: the GPU's default, where it has far more parallelism.
    """
    if _force_strategy is not None:
        return _force_strategy
    return "planes" if deterministic or xp is np else "items"


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

    @property
    def xp(self):
        return _backend.array_module(next(a for a in self.args if _backend.is_array(a)))


def _convert(kernel, name, ctype, value, scalar, index):
    base = ctype.replace("const ", "").rstrip("*")
    if ctype.endswith("*"):
        expected = {"T": scalar.dtype_name, "A": scalar.acc_dtype_name,
                    "I": INDEX_DTYPES[index].name}[base]
        if not _backend.is_array(value):
            raise TypeError(f"{kernel.name}: {name} must be an array, got {type(value).__name__}")
        if value.dtype.name != expected:
            raise TypeError(f"{kernel.name}: {name} must be {expected}, got {value.dtype}")
        if not value.flags.c_contiguous:
            raise ValueError(f"{kernel.name}: {name} must be C-contiguous")
        # CuPy arrays have no writeable flag: they are always writeable.
        if not ctype.startswith("const") and not getattr(value.flags, "writeable", True):
            raise ValueError(f"{kernel.name}: {name} is written and must be writeable")
        return value
    if base == "A":
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            raise TypeError(f"{kernel.name}: {name} must be a real number, got {type(value).__name__}")
        return np.dtype(scalar.acc_dtype_name).type(value)
    dtype = INDEX_DTYPES[index] if base == "I" else INDEX_DTYPES[ctype]
    info = np.iinfo(dtype)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{kernel.name}: {name} must be an integer, got {type(value).__name__}")
    if not info.min <= int(value) <= info.max:
        spelled = index if base == "I" else ctype
        raise ValueError(f"{kernel.name}: {name}={value} does not fit in {spelled}")
    return dtype.type(value)


def make_launch(kernel, dtype, n, index, **values):
    """Describe a launch of ``kernel`` over ``n`` work items.

    ``values`` names every kernel parameter except ``n``.
    """
    scalar = SCALAR_TYPES[np.dtype(dtype).name]
    values["n"] = n
    missing = set(kernel.param_names) - set(values)
    extra = set(values) - set(kernel.param_names)
    if missing or extra:
        raise TypeError(f"{kernel.name}: missing {sorted(missing)}, unexpected {sorted(extra)}")
    args = tuple(
        _convert(kernel, name, ctype, values[name], scalar, index) for name, ctype in kernel.params
    )
    grid, block = grid_and_block(n)
    return Launch(kernel, scalar, index, grid, block, args)


def grid_and_block(n):
    """As few blocks of at most BLOCK threads as cover n, each sized (to a
    warp multiple) so that idle threads stay under one warp. Small launches,
    such as one thread per plane, would otherwise leave most of a block idle,
    and the CPU executor, which splits the threads evenly, one core idle."""
    grid = min(max(1, math.ceil(n / BLOCK)), MAX_GRID)
    block = min(BLOCK, max(32, math.ceil(n / grid / 32) * 32))
    return grid, block


def run(launch):
    """Execute a launch on the backend of its arrays. No work items, no launch."""
    if int(launch.args[launch.kernel.param_names.index("n")]) == 0:
        return
    if launch.xp is np:
        from ._executors import cpu as executor
    else:
        from ._executors import cupy as executor
    executor.run(launch)
