"""The CuPy double itself: CuPy's own call signatures, and launch checks that fire.

The signatures are read from the installed CuPy's docstrings (its Cython
classes carry them on their first line), so a CuPy that changes them fails
here rather than on someone's GPU.
"""

import ast
import inspect
import re

import numpy as np
import pytest

from cudcn import _backend, _gpu_build, _kernels, _launch, _sources

import cupy_double

IM2COL = _kernels.DEFORM_CONV2D_IM2COL
SOURCE = IM2COL.source


def _documented(line):
    """[(name, kind, default)] of a Cython signature line such as
    "RawModule(str code=None, *, tuple options=(), name_expressions=None)"."""
    params = line[line.index("(") + 1:line.rindex(")")].replace("\\*", "*")
    params = re.sub(r"\b(?:str|bool|tuple|int|list|dict|object)\s+(?=\w)", "", params)
    args = ast.parse(f"def f({params}): pass").body[0].args
    found = []
    defaults = [None] * (len(args.args) - len(args.defaults)) + list(args.defaults)
    for arg, default in zip(args.args, defaults):
        found.append((arg.arg, "positional", _literal(default)))
    if args.vararg:
        found.append((args.vararg.arg, "*args", inspect.Parameter.empty))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        found.append((arg.arg, "keyword", _literal(default)))
    if args.kwarg:
        found.append((args.kwarg.arg, "**kwargs", inspect.Parameter.empty))
    return found


def _literal(node):
    return inspect.Parameter.empty if node is None else ast.literal_eval(node)


_KINDS = {inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
          inspect.Parameter.POSITIONAL_ONLY: "positional",
          inspect.Parameter.KEYWORD_ONLY: "keyword",
          inspect.Parameter.VAR_POSITIONAL: "*args", inspect.Parameter.VAR_KEYWORD: "**kwargs"}


def _implemented(fn):
    return [(p.name, _KINDS[p.kind], p.default) for p in inspect.signature(fn).parameters.values()]


def _doc_line(obj, starts):
    lines = [line.strip() for line in (obj.__doc__ or "").splitlines()]
    matching = [line for line in lines if line.startswith(starts)]
    assert matching, f"CuPy's docstring of {obj!r} has no line starting {starts!r}: {lines[:3]}"
    return matching[0]


SIGNATURES = [  # (what, CuPy object -> its documented line, the double's callable)
    ("RawModule", lambda cp: _doc_line(cp.RawModule, "RawModule("), cupy_double.RawModule),
    ("RawModule.get_function",
     lambda cp: _doc_line(cp.RawModule.get_function, "RawModule.get_function("),
     cupy_double.RawModule.get_function),
    ("RawKernel", lambda cp: _doc_line(cp.RawKernel, "RawKernel("), cupy_double.RawKernel),
    # Its first line is the generic (self, grid, block, args, **kwargs); the
    # documented keywords follow on a line of their own.
    ("RawKernel.__call__", lambda cp: _doc_line(cp.RawKernel.__call__, "__call__("),
     cupy_double.RawKernel.__call__),
    ("memoize", lambda cp: _doc_line(cp.memoize, "memoize("), cupy_double.memoize),
    ("cuda.Device", lambda cp: _doc_line(cp.cuda.Device, "Device("), cupy_double.Device),
    ("from_dlpack", lambda cp: _doc_line(cp.from_dlpack, "from_dlpack("),
     cupy_double.from_dlpack),
]


@pytest.mark.parametrize("what, documented, double", SIGNATURES, ids=[s[0] for s in SIGNATURES])
def test_signatures_are_the_installed_cupys(what, documented, double):
    cupy = pytest.importorskip("cupy")
    line = documented(cupy)
    expected = _documented(line)
    if what.endswith("__call__"):
        expected = [("self", "positional", inspect.Parameter.empty)] + expected[1:]
    assert _implemented(double) == expected, f"CuPy {cupy.__version__} documents {line}"


@pytest.mark.parametrize("name", ["ExternalStream", "asarray"])
def test_python_signatures_are_the_installed_cupys(name):
    cupy = pytest.importorskip("cupy")
    real = cupy.cuda.ExternalStream if name == "ExternalStream" else cupy.asarray
    double = cupy_double.ExternalStream if name == "ExternalStream" else cupy_double.asarray
    assert _implemented(double) == _implemented(real)


def test_the_documented_line_parser():
    line = ("RawModule(str code=None, *, str path=None, tuple options=(), "
            "bool translate_cucomplex=False, name_expressions=None)")
    assert _documented(line) == [
        ("code", "positional", None), ("path", "keyword", None), ("options", "keyword", ()),
        ("translate_cucomplex", "keyword", False), ("name_expressions", "keyword", None)]
    assert _documented("__call__(self, grid, block, args, \\*, shared_mem=0)")[-1] == (
        "shared_mem", "keyword", 0)


# --- the stand-in array --------------------------------------------------

@pytest.fixture
def cupy(monkeypatch):
    return cupy_double.install(monkeypatch)


def test_arrays_pass_for_cupy_arrays_and_never_convert_implicitly(cupy):
    x = cupy.asarray(np.arange(6.0).reshape(2, 3))
    assert _backend.is_cupy_array(x) and not isinstance(x, np.ndarray)
    assert _backend.array_module(x) is cupy
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(x)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        cupy.matmul(x, np.ones((3, 2)))
    with pytest.raises(TypeError):
        x + np.ones(3)
    assert not hasattr(x.flags, "writeable") and x.flags.c_contiguous
    view = x.reshape(3, 2)[1:]
    view += 10
    np.testing.assert_array_equal(x.get(), [[0, 1, 12], [13, 14, 15]])
    assert type(x.sum()) is cupy.ndarray and float(x.sum()) == 55.0


# --- launch checks -------------------------------------------------------

def _module(cupy):
    return cupy.RawModule(code=_gpu_build.source_text(SOURCE), options=_gpu_build.options(),
                          name_expressions=_gpu_build.name_expressions(SOURCE))


def _args(cupy, **change):
    """An im2col launch's arguments as the launch description makes them."""
    values = dict(
        input=cupy.zeros((1, 4, 5, 5), np.float32), offset=cupy.zeros((1, 2, 5, 5), np.float32),
        mask=cupy.zeros((1, 1, 5, 5), np.float32), columns=cupy.zeros((1, 4, 25), np.float32),
        use_mask=0, channel_block=4, channels=4, height=5, width=5, kernel_h=1, kernel_w=1, stride_h=1,
        stride_w=1, pad_h=0, pad_w=0, dil_h=1, dil_w=1, offset_groups=1, out_h=5, out_w=5)
    launch = _launch.make_launch(IM2COL, np.float32, 25, "int", **values)
    args = dict(zip(IM2COL.param_names, launch.args), **change)
    return (launch.grid,), (launch.block,), tuple(args.values())


NAME = _kernels.instantiation(IM2COL, _kernels.SCALAR_TYPES["float32"], "int")


def test_a_launch_as_the_executor_makes_it_runs_and_is_recorded(cupy):
    grid, block, args = _args(cupy)
    args[0][...] = cupy.asarray(np.arange(100, dtype=np.float32).reshape(1, 4, 5, 5))
    _module(cupy).get_function(NAME)(grid, block, args)
    np.testing.assert_array_equal(args[3].get().ravel(), np.arange(100))
    (launch,) = cupy.state().launches
    assert launch.name == NAME and launch.grid == (1, 1, 1) and launch.block == (256, 1, 1)
    assert launch.arg_types[:6] == ("float*", "float*", "float*", "float*", "int", "int")


@pytest.mark.parametrize("change, words", [
    (dict(n=25), "n is a Python int, not a NumPy scalar of the kernel's C type int"),
    (dict(n=np.int64(25)), "n is a numpy.int64 (long long), the kernel takes int"),
    (dict(channels=4.0), "channels is a Python float"),
    (dict(input=np.zeros((1, 4, 5, 5), np.float32)),
     "input must be a cupy.ndarray (float*), got numpy.ndarray"),
    (dict(columns="columns"), "columns must be a cupy.ndarray"),
], ids=["python-int", "wrong-width", "python-float", "numpy-array", "not-an-array"])
def test_scalar_and_pointer_arguments_must_have_the_exact_c_type(cupy, change, words):
    grid, block, args = _args(cupy, **change)
    with pytest.raises(cupy_double.LaunchError, match=re.escape(words)):
        _module(cupy).get_function(NAME)(grid, block, args)
    assert not cupy.state().launches


def test_arrays_must_have_the_pointee_dtype_layout_and_device(cupy):
    kernel = _module(cupy).get_function(NAME)
    grid, block, args = _args(cupy, columns=cupy.zeros((1, 4, 25), np.float64))
    with pytest.raises(cupy_double.LaunchError, match=r"columns is a float64 array \(double\*\)"):
        kernel(grid, block, args)
    grid, block, args = _args(cupy, columns=cupy.zeros((1, 25, 4), np.float32).swapaxes(1, 2))
    with pytest.raises(cupy_double.LaunchError, match="columns is not C-contiguous"):
        kernel(grid, block, args)
    with cupy.cuda.Device(1):
        on_1 = cupy.zeros((1, 4, 25), np.float32)
    grid, block, args = _args(cupy, columns=on_1)
    with pytest.raises(cupy_double.LaunchError,
                       match="columns is on device 1, the launch on device 0"):
        kernel(grid, block, args)


@pytest.mark.parametrize("grid, block, words", [
    ((2**31,), (32,), "grid.x = 2147483648 is outside CUDA's 1..2147483647"),
    ((1,), (2048,), "block.x = 2048 is outside CUDA's 1..1024"),
    ((1,), (64, 32), "has more than 1024 threads"),
    ((1, 2), (32,), "the kernels index with .x only"),
    ((0,), (32,), "grid.x = 0"),
    ((1.5,), (32,), "tuple of 1 to 3 ints"),
])
def test_grid_and_block_within_cuda_limits(cupy, grid, block, words):
    _, _, args = _args(cupy)
    with pytest.raises(cupy_double.LaunchError, match=re.escape(words)):
        _module(cupy).get_function(NAME)(grid, block, args)


def test_a_grid_that_does_not_cover_n_fails_unless_the_kernel_strides(cupy):
    _, _, args = _args(cupy)
    kernel = _module(cupy).get_function(NAME)
    kernel((1,), (8,), args)  # 8 threads for 25 items: the kernel strides over the grid
    looped = _gpu_build.source_text(SOURCE)
    once = re.sub(r"CUDCN_KERNEL_LOOP\((\w+), (\w+), n\)", r"if (\2 \1 = threadIdx.x; \1 < n)",
                  looped)
    assert once != looped
    single = cupy.RawModule(code=once, options=_gpu_build.options(), name_expressions=(NAME,))
    with pytest.raises(cupy_double.LaunchError, match="do not cover n = 25 and the kernel is no "
                                                      "grid-stride loop"):
        single.get_function(NAME)((1,), (8,), args)


def test_every_kernel_is_a_grid_stride_loop_by_cudcns_macro():
    header = (_sources.kernel_dir() / "cudcn_common.cuh").read_text()
    # The GPU's (and the race check's) definition first, then the host's,
    # which walks the range of items its worker was given.
    gpu, host = re.findall(r"#define CUDCN_KERNEL_LOOP\(i, I, n\)((?:.*\\\n)*.*)", header)
    assert "#if defined(CUDCN_GPU) || defined(CUDCN_RACECHECK)\n#define CUDCN_KERNEL_LOOP" in header
    assert "i += static_cast<I>(blockDim.x) * gridDim.x" in gpu
    assert "cudcn_first_item" in host and "cudcn_end_item" in host
    for kernel in _kernels.KERNELS:
        code = _gpu_build.source_text(kernel.source)
        assert cupy_double._grid_strided(code, kernel.name.rsplit("::", 1)[-1]), kernel.name


def test_names_must_be_name_expressions_the_module_defines(cupy):
    module = _module(cupy)
    other = _kernels.instantiation(_kernels.DEFORM_ROI_POOL_FORWARD,
                                   _kernels.SCALAR_TYPES["float32"], "int")
    with pytest.raises(cupy_double.LaunchError, match="is not a name expression of this module"):
        module.get_function(other)
    lying = cupy.RawModule(code="// nothing", name_expressions=(NAME,))
    with pytest.raises(cupy_double.LaunchError, match="defines no such kernel"):
        lying.get_function(NAME)


def test_cython_typed_arguments_refuse_other_types(cupy):
    with pytest.raises(TypeError, match="'options' has incorrect type"):
        cupy.RawModule(code="", options=list(_gpu_build.options()))
    with pytest.raises(TypeError, match="'code' has incorrect type"):
        cupy.RawModule(code=b"")
    with pytest.raises(TypeError, match="Exactly one of code and path"):
        cupy.RawModule()
