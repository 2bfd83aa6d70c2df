"""A stand-in for CuPy on a machine without a GPU, so that cudcn's GPU glue runs unchanged.

``install(monkeypatch)`` puts it in ``sys.modules`` as ``cupy``; cudcn then
takes the GPU path for its arrays (it recognises CuPy arrays by their type's
module and name) and imports its CuPy executor against it. It provides:

- ``ndarray``: a device-array stand-in holding a NumPy array. Where CuPy's
  rules differ from NumPy's it follows CuPy's: it is no ``numpy.ndarray``,
  never converts to or from one implicitly (TypeError), has a ``device``,
  and its ``flags`` have no ``writeable``. Every other method and every other
  module function is NumPy's, applied to the held arrays.
- ``RawModule`` and ``RawKernel`` with CuPy 14's call signatures (a test
  checks them against CuPy's own docstrings). They record each module's
  code, options and name expressions and every launch (grid, block, the C
  type of each argument, device and stream), check the launch (below), and
  run it with the CPU executor on the held arrays.
- ``memoize``, ``cuda.Device``, ``cuda.ExternalStream``, ``from_dlpack``,
  ``cuda.nvrtc.getVersion``.

Launch checks, each a ``LaunchError`` naming the instantiation and argument:
the name is one of the module's name expressions and the module's code
defines it; grid and block are within CUDA's limits (grid.x <= 2**31 - 1,
at most 1024 threads per block) and one-dimensional, as the kernels index
with ``.x`` only; grid * block covers ``n`` unless the kernel is a
grid-stride loop; every pointer argument is an ``ndarray`` of the pointee's
dtype, C-contiguous and on the current device, and with 32-bit indices has
fewer than 2**31 elements; every scalar argument is a NumPy scalar of
exactly the parameter's C type (CuPy passes a Python int as a 64-bit
integer and a Python float as a double, whatever the kernel takes).
"""

import dataclasses
import re
import sys
import types

import numpy as np

from cudcn import _kernels
from cudcn import _launch as _cudcn_launch

INT32_MAX = 2**31 - 1
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_BLOCK = (1024, 1024, 64)
MAX_THREADS_PER_BLOCK = 1024
REGISTERS = 48
# What cupy.cuda.runtime.getDeviceProperties gives of an H100 (SXM), as far as
# cudcn reads it.
DEVICE_PROPERTIES = {"name": b"NVIDIA H100 80GB HBM3 (double)", "major": 9, "minor": 0,
                     "multiProcessorCount": 132, "maxThreadsPerMultiProcessor": 2048,
                     "maxBlocksPerMultiProcessor": 32, "regsPerMultiprocessor": 65536}


class LaunchError(TypeError):
    """A launch that a GPU would run wrongly or refuse."""


@dataclasses.dataclass
class ModuleRecord:
    code: str
    options: tuple
    name_expressions: tuple
    device: int


@dataclasses.dataclass
class LaunchRecord:
    name: str  # the name expression
    kernel: object  # _kernels.Kernel
    dtype: str
    index: str
    grid: tuple
    block: tuple
    arg_types: tuple  # C type of each argument, as passed
    device: int
    stream: int
    module: ModuleRecord


class _State:
    def __init__(self):
        self.devices = [0]
        self.streams = [0]  # 0: the legacy default stream
        self.modules = []
        self.launches = []
        self.nvrtc_version = (13, 0)


STATE = _State()


# --- devices and streams -------------------------------------------------

class Device:
    def __init__(self, device=None):
        self.id = STATE.devices[-1] if device is None else int(device)

    def __enter__(self):
        STATE.devices.append(self.id)
        return self

    def __exit__(self, *exc):
        STATE.devices.pop()

    def use(self):
        STATE.devices[-1] = self.id

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


class ExternalStream:
    def __init__(self, ptr, device_id=-1):
        self.ptr = int(ptr)
        self.device_id = device_id

    def __enter__(self):
        STATE.streams.append(self.ptr)
        return self

    def __exit__(self, *exc):
        STATE.streams.pop()


# --- arrays --------------------------------------------------------------

class _Flags:
    """CuPy's ndarray flags: no ``writeable`` (device memory always is)."""

    def __init__(self, host):
        self.c_contiguous = host.flags.c_contiguous
        self.f_contiguous = host.flags.f_contiguous
        self.owndata = host.flags.owndata


def _host(x, what):
    """The NumPy view of stand-ins inside ``x``; NumPy arrays are refused, as CuPy does."""
    if isinstance(x, ndarray):
        return x._host
    if isinstance(x, np.ndarray):
        raise TypeError(f"{what}: got a numpy.ndarray where CuPy takes a cupy.ndarray "
                        "(CuPy never converts host arrays implicitly)")
    if isinstance(x, (list, tuple)):
        return type(x)(_host(v, what) for v in x)
    return x


def _device(x, device):
    """Results as CuPy gives them: arrays (and reductions to scalars) on the device."""
    if isinstance(x, np.ndarray):
        return ndarray(x, device)
    if isinstance(x, np.generic):
        return ndarray(np.asarray(x), device)
    if isinstance(x, tuple):
        return tuple(_device(v, device) for v in x)
    return x


def _device_of(args, kwargs):
    for v in (*args, *kwargs.values()):
        if isinstance(v, ndarray):
            return v._device_id
    return STATE.devices[-1]


def _on_device(fn, what):
    def call(*args, **kwargs):
        device = _device_of(args, kwargs)
        result = fn(*_host(args, what), **{k: _host(v, what) for k, v in kwargs.items()})
        return _device(result, device)

    call.__name__ = what
    return call


class ndarray:
    """A cupy.ndarray stand-in holding a NumPy array on a (pretended) device."""

    __module__ = "cupy"
    __array_ufunc__ = None  # NumPy ufuncs refuse it, as they refuse CuPy arrays

    def __init__(self, host, device_id=None):
        if not isinstance(host, np.ndarray):
            raise TypeError("ndarray stand-ins hold numpy arrays")
        self._host = host
        self._device_id = STATE.devices[-1] if device_id is None else device_id

    shape = property(lambda self: self._host.shape)
    ndim = property(lambda self: self._host.ndim)
    dtype = property(lambda self: self._host.dtype)
    size = property(lambda self: self._host.size)
    itemsize = property(lambda self: self._host.itemsize)
    nbytes = property(lambda self: self._host.nbytes)
    strides = property(lambda self: self._host.strides)
    flags = property(lambda self: _Flags(self._host))
    device = property(lambda self: Device(self._device_id))

    def get(self):
        return self._host.copy()

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} does not take cupy.ndarray stand-ins")

    def __getattr__(self, name):
        if name.startswith("__"):  # no __array_interface__ and the like: no host memory
            raise AttributeError(name)
        value = getattr(self._host, name)
        if callable(value):
            return _on_device(value, f"ndarray.{name}")
        return _device(value, self._device_id) if isinstance(value, np.ndarray) else value

    def __setitem__(self, key, value):
        self._host[_host(key, "ndarray.__setitem__")] = _host(value, "ndarray.__setitem__")

    def __len__(self):
        return len(self._host)

    def __float__(self):
        return float(self._host)

    def __int__(self):
        return int(self._host)

    def __bool__(self):
        return bool(self._host)

    def __dlpack__(self, **kwargs):
        return self._host.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._host.__dlpack_device__()

    def __repr__(self):
        return f"cupy_double.ndarray({self._host!r}, device={self._device_id})"


def _operator(name):
    def op(self, *args):
        result = getattr(self._host, name)(*_host(args, f"ndarray.{name}"))
        if result is NotImplemented:
            return result
        if name in _IN_PLACE:  # the same array, as CuPy's in-place operators
            return self
        return _device(result, self._device_id)

    op.__name__ = name
    return op


_IN_PLACE = {"__iadd__", "__isub__", "__imul__", "__itruediv__"}
for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
              "xor", "lt", "le", "gt", "ge", "eq", "ne", "neg", "pos", "abs", "invert",
              "getitem", "radd", "rsub", "rmul", "rtruediv", "rmatmul", "iadd", "isub", "imul",
              "itruediv"):
    setattr(ndarray, f"__{_name}__", _operator(f"__{_name}__"))
ndarray.__hash__ = None


# --- module functions ----------------------------------------------------

def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    """Host data to the current device (a copy); stand-ins as they are unless
    a dtype or copy asks otherwise."""
    if isinstance(a, ndarray):
        if copy or (dtype is not None and a.dtype != np.dtype(dtype)):
            return a.astype(dtype or a.dtype)
        return a
    return ndarray(np.array(a, dtype=dtype, order=order or "K", copy=True))


array = asarray


def from_dlpack(array, *, device=None, copy=None):
    """A stand-in viewing the producer's (host) memory, on the current device."""
    return ndarray(np.from_dlpack(array))


def memoize(for_each_device=False):
    def decorate(fn):
        cache = {}

        def cached(*args, **kwargs):
            key = (STATE.devices[-1] if for_each_device else None, args,
                   tuple(sorted(kwargs.items())))
            if key not in cache:
                cache[key] = fn(*args, **kwargs)
            return cache[key]

        return cached

    return decorate


# --- RawModule and RawKernel ---------------------------------------------

def _cython_typed(name, value, expected, allow_none=True):
    """Cython-typed parameters (``str code``, ``tuple options``) refuse other types."""
    if value is None and allow_none:
        return
    if not isinstance(value, expected):
        raise TypeError(f"Argument '{name}' has incorrect type (expected "
                        f"{expected.__name__}, got {type(value).__name__})")


class RawModule:
    def __init__(self, code=None, *, path=None, options=(), backend='nvrtc',
                 translate_cucomplex=False, enable_cooperative_groups=False,
                 name_expressions=None, jitify=None):
        _cython_typed("code", code, str)
        _cython_typed("path", path, str)
        _cython_typed("options", options, tuple)
        _cython_typed("backend", backend, str)
        if (code is None) == (path is None):
            raise TypeError("Exactly one of code and path keyword arguments must be given.")
        if name_expressions is not None:
            name_expressions = tuple(name_expressions)
            if not all(isinstance(n, str) for n in name_expressions):
                raise TypeError("name_expressions must be strings")
        self.code = code
        self.options = options
        self.name_expressions = name_expressions
        self.record = ModuleRecord(code, options, name_expressions or (), STATE.devices[-1])
        STATE.modules.append(self.record)

    def get_function(self, name):
        _cython_typed("name", name, str, allow_none=False)
        if name not in self.record.name_expressions:
            raise LaunchError(f"{name!r} is not a name expression of this module; it has "
                              f"{list(self.record.name_expressions)}")
        if not re.search(rf"__global__\s+void\s+{re.escape(_short(name))}\s*\(", self.code):
            raise LaunchError(f"{name!r}: the module's code defines no such kernel")
        kernel = RawKernel(self.code, name, self.options)
        kernel._module = self
        return kernel


class RawKernel:
    def __init__(self, code, name, options=(), backend='nvrtc', translate_cucomplex=False, *,
                 enable_cooperative_groups=False, jitify=None):
        _cython_typed("code", code, str, allow_none=False)
        _cython_typed("name", name, str, allow_none=False)
        _cython_typed("options", options, tuple)
        self.code, self.name, self.options = code, name, options
        self._module = None

    @property
    def num_regs(self):
        """A stand-in for the compiled kernel's registers per thread (CuPy reads
        CU_FUNC_ATTRIBUTE_NUM_REGS); the default path's are 23 to 56 on sm_90."""
        return REGISTERS

    def __call__(self, grid, block, args, *, shared_mem=0):
        if self._module is None:
            raise NotImplementedError("the double launches kernels of a RawModule only")
        kernel, scalar, index = _parse_name(self.name)
        grid, block = _dims("grid", grid, MAX_GRID), _dims("block", block, MAX_BLOCK)
        where = self.name
        if block[0] * block[1] * block[2] > MAX_THREADS_PER_BLOCK:
            raise LaunchError(f"{where}: block {block} has more than 1024 threads")
        if grid[1:] != (1, 1) or block[1:] != (1, 1):
            raise LaunchError(f"{where}: the kernels index with .x only; got grid {grid}, "
                              f"block {block}")
        args = tuple(args)
        if len(args) != len(kernel.params):
            raise LaunchError(f"{where}: {len(args)} arguments for {len(kernel.params)} parameters")
        arg_types = tuple(_check_argument(where, name, ctype, value, scalar, index)
                          for (name, ctype), value in zip(kernel.params, args))
        n = int(args[kernel.items_at])
        if grid[0] * block[0] < n and not _grid_strided(self.code, _short(self.name)):
            raise LaunchError(f"{where}: grid {grid[0]} x block {block[0]} threads do not cover "
                              f"n = {n} and the kernel is no grid-stride loop")
        STATE.launches.append(LaunchRecord(
            self.name, kernel, scalar.dtype_name, index, grid, block, arg_types,
            STATE.devices[-1], STATE.streams[-1], self._module.record))
        _run_on_cpu(kernel, scalar, index, grid[0], block[0], args)


def _short(name):
    return name.split("<", 1)[0].rsplit("::", 1)[-1]


def _parse_name(name):
    """(Kernel, ScalarType, index type) of a name expression 'ns::kernel<T, I>'."""
    match = re.fullmatch(r"([\w:]+)<(.+), (.+)>", name)
    kernels = {k.name: k for k in _kernels.KERNELS}
    scalars = {s.c_name: s for s in _kernels.SCALAR_TYPES.values()}
    if (not match or match.group(1) not in kernels or match.group(2) not in scalars
            or match.group(3) not in _kernels.INDEX_TYPES):
        raise LaunchError(f"{name!r} names no instantiation of a kernel in cudcn/_kernels.py")
    return kernels[match.group(1)], scalars[match.group(2)], match.group(3)


def _dims(what, value, limits):
    dims = (value,) if isinstance(value, int) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) for d in dims):
        raise LaunchError(f"{what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    for axis, (d, limit) in enumerate(zip(dims, limits)):
        if not 1 <= d <= limit:
            raise LaunchError(f"{what}.{'xyz'[axis]} = {d} is outside CUDA's 1..{limit}")
    return dims


_C_NAMES = {"float32": "float", "float64": "double", "float16": "__half",
            "bfloat16": "__nv_bfloat16", "int32": "int", "int64": "long long"}


def _check_argument(where, name, ctype, value, scalar, index):
    """The C type the argument is passed as; LaunchError unless it is the parameter's."""
    expected = _kernels.resolve_type(ctype, scalar, index).replace("const ", "")
    if expected.endswith("*"):
        if not isinstance(value, ndarray):
            raise LaunchError(f"{where}: {name} must be a cupy.ndarray ({expected}), got "
                              f"{type(value).__module__}.{type(value).__name__}")
        passed = _C_NAMES.get(value.dtype.name, value.dtype.name) + "*"
        if passed != expected:
            raise LaunchError(f"{where}: {name} is a {value.dtype} array ({passed}), the "
                              f"kernel takes {expected}")
        if not value._host.flags.c_contiguous:
            raise LaunchError(f"{where}: {name} is not C-contiguous")
        if value._device_id != STATE.devices[-1]:
            raise LaunchError(f"{where}: {name} is on device {value._device_id}, the launch "
                              f"on device {STATE.devices[-1]}")
        if index == "int" and value.size > INT32_MAX:
            raise LaunchError(f"{where}: {name} has {value.size} elements, too many for "
                              "int indices")
        return passed
    if not isinstance(value, np.generic):
        raise LaunchError(f"{where}: {name} is a Python {type(value).__name__}, not a NumPy "
                          f"scalar of the kernel's C type {expected} (CuPy would pass a Python "
                          "int as a 64-bit integer and a float as a double)")
    passed = _C_NAMES.get(value.dtype.name, value.dtype.name)
    if passed != expected:
        raise LaunchError(f"{where}: {name} is a numpy.{value.dtype.name} ({passed}), the "
                          f"kernel takes {expected}")
    return passed


def _grid_strided(code, short_name):
    """Whether the kernel's body is a grid-stride loop over n (CUDCN_KERNEL_LOOP)."""
    start = re.search(rf"__global__\s+void\s+{re.escape(short_name)}\s*\(", code)
    body = code[start.end():]
    following = body.find("__global__")
    body = body if following < 0 else body[:following]
    return re.search(r"CUDCN_KERNEL_LOOP\(\s*\w+\s*,\s*\w+\s*,\s*n\s*\)", body) is not None


def _run_on_cpu(kernel, scalar, index, grid, block, args):
    """The launch by the CPU executor (the same instantiation), on the held arrays."""
    from cudcn._executors import cpu

    host_args = tuple(a._host if isinstance(a, ndarray) else a for a in args)
    cpu.run(_cudcn_launch.Launch(kernel, scalar, index, grid, block, host_args))


# --- the module ----------------------------------------------------------

def _numpy_attribute(name):
    """Any other cupy.<name>: NumPy's types as they are, its functions on stand-ins."""
    value = getattr(np, name)
    if isinstance(value, type) or not callable(value):
        return value
    return _on_device(value, f"cupy.{name}")


def planned_target():
    """The target cudcn's CuPy executor plans for on the double's device, for
    planning the same launches on the CPU backend (cudcn._launch.planning_for)."""
    from cudcn import _device

    props = DEVICE_PROPERTIES
    device = _device.Device(props["name"].decode(), props["multiProcessorCount"],
                            props["maxThreadsPerMultiProcessor"],
                            props["maxBlocksPerMultiProcessor"], props["regsPerMultiprocessor"])
    return _cudcn_launch.Target("gpu", device, lambda kernel, scalar, index: REGISTERS)


def install(monkeypatch, nvrtc_version=(13, 0)):
    """Make ``import cupy`` give the double (fresh state) until the test ends;
    cudcn's CuPy executor is imported anew against it. Returns the module."""
    global STATE
    STATE = _State()
    STATE.nvrtc_version = tuple(nvrtc_version)
    module = types.ModuleType("cupy", __doc__)
    module.ndarray, module.asarray, module.array = ndarray, asarray, array
    module.from_dlpack, module.memoize = from_dlpack, memoize
    module.RawModule, module.RawKernel = RawModule, RawKernel
    module.cuda = types.SimpleNamespace(
        Device=Device, ExternalStream=ExternalStream,
        nvrtc=types.SimpleNamespace(getVersion=lambda: STATE.nvrtc_version),
        runtime=types.SimpleNamespace(runtimeGetVersion=lambda: STATE.nvrtc_version[0] * 1000,
                                      getDeviceProperties=lambda device: dict(DEVICE_PROPERTIES)),
    )
    module.__getattr__ = _numpy_attribute
    module.state = lambda: STATE
    monkeypatch.setitem(sys.modules, "cupy", module)
    import cudcn._executors

    monkeypatch.delitem(sys.modules, "cudcn._executors.cupy", raising=False)
    monkeypatch.delattr(cudcn._executors, "cupy", raising=False)
    return module
