"""CPU executor: the unchanged ``.cu`` files, built by the host C++ compiler.

``cpu_shim.h`` maps the CUDA keywords and launch model onto C++ and its own threads;
this module generates one ``extern "C"`` entry point per kernel instantiation,
compiles each kernel file once into a shared library cached on disk, and calls
the entry point through ctypes (which releases the GIL during the call).
"""

import ctypes
import functools
import hashlib
import os
import pathlib
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

from .. import _kernels, _launch, _sources

# -fno-trapping-math: nothing reads the floating-point exception flags, and
# without it GCC keeps every comparison and float-to-int conversion behind
# its branch, which leaves the point loops of point_sampling.cuh unvectorized
# (values are the same: it allows no reassociation or contraction).
CXXFLAGS = ("-std=c++17", "-O3", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math",
            "-pthread")
OPENMP_FLAGS = ("-fopenmp",)
# The kernels are built where they run, so for this CPU's instruction set:
# with AVX-512 the gathers' channel loops run wider (at N=2, C=64, 56x56 the
# forward's gather 1.04-1.13 -> 0.66-0.75 ms; the forward 0.92-0.94x the
# time, forward+backward 0.97-0.98, where the offset/mask gradients' kernel
# is 5-10% slower). -ffp-contract=off keeps a * b + c two roundings, as
# without FMA instructions: the same bits as a baseline build's, and two
# kernels that compute one value (the pixel and the item gathers, the 32-
# and 64-bit index paths) still agree. The cache key holds the target's
# predefined macros: machines sharing a cache directory get a library per
# instruction set.
NATIVE_FLAGS = ("-march=native", "-ffp-contract=off")
# Tried in order; the first that compiles is kept (a compiler without OpenMP,
# or without -march=native, still builds the kernels).
FLAG_SETS = (CXXFLAGS + OPENMP_FLAGS + NATIVE_FLAGS, CXXFLAGS + OPENMP_FLAGS,
             CXXFLAGS + NATIVE_FLAGS, CXXFLAGS)


class CompilerNotFoundError(RuntimeError):
    """No host C++ compiler for the CPU backend.

    The CPU backend builds its kernels on their first use in a process with
    the command in the ``CXX`` environment variable, else ``c++``, and caches
    the built libraries (under ``$CUDCN_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/cudcn``, else ``~/.cache/cudcn``); the cache is keyed
    by the compiler's version, so a cached build is found with the compiler
    too. This is raised when that command is not on PATH; its message says
    how to install a compiler. A subclass of ``RuntimeError``.
    """


class CompileError(RuntimeError):
    """The host compiler rejected a kernel file.

    Raised by the CPU backend's first use of a kernel file when every set of
    compiler flags it tries (with and without OpenMP and ``-march=native``)
    fails; the message holds the last command and the compiler's output. A
    subclass of ``RuntimeError``.
    """


class RaceError(RuntimeError):
    """A launch whose threads would race on a GPU (race-checking builds only)."""


@functools.lru_cache(maxsize=None)  # a launch asks for it every time
def symbol(kernel, scalar, index):
    short = kernel.name.rsplit("::", 1)[-1]
    return f"cudcn_cpu_{short}_{scalar.dtype_name}_{'i64' if index == 'long long' else 'i32'}"


def wrapper_source(source):
    """C++ that includes one kernel file and exports each instantiation."""
    lines = ['#include "cpu_shim.h"', f'#include "{source}"', ""]
    for kernel, scalar, index in _kernels.instantiations(source, _kernels.CPU_DTYPES):
        lines += [
            f'extern "C" void {symbol(kernel, scalar, index)}(unsigned int grid, '
            "unsigned int block, long long active, void** params) {",
            # Fails to compile if _kernels.py and the .cu file disagree.
            f"  void (*kernel)({_kernels.c_signature(kernel, scalar, index)}) = "
            f"&{_kernels.instantiation(kernel, scalar, index)};",
            "  cudcn_cpu::launch(kernel, grid, block, active, params);",
            "}",
        ]
    lines += [
        'extern "C" void cudcn_use_openmp(int on) { cudcn_cpu::Pool::openmp() = on; }',
        'extern "C" int cudcn_uses_openmp() { return cudcn_cpu::Pool::openmp(); }',
        'extern "C" int cudcn_launch_threads() { return cudcn_cpu::launch_threads(); }',
    ]
    for suffix, scalar in (("f32", "float"), ("f64", "double")):
        lines += [
            f'extern "C" void cudcn_gemm_{suffix}(const cudcn_cpu::GemmTiles<{scalar}>* tiles, '
            "long long batch) {",
            "  cudcn_cpu::run_gemm_tiles(*tiles, batch);",
            "}",
        ]
    lines += [
        "#ifdef CUDCN_RACECHECK",
        'extern "C" int cudcn_racecheck_report(const void** address, long long* first, '
        "long long* second) {",
        "  const cudcn_cpu::race::Conflict& c = cudcn_cpu::race::last_conflict();",
        "  *address = c.address;",
        "  *first = c.first;",
        "  *second = c.second;",
        "  return c.kind;",
        "}",
        "#endif",
    ]
    return "\n".join(lines) + "\n"


def compiler():
    """The host compiler command: $CXX, else c++."""
    command = shlex.split(os.environ.get("CXX", "c++"))
    if not command or shutil.which(command[0]) is None:
        raise CompilerNotFoundError(
            "cudcn's CPU backend compiles its kernels with a C++17 compiler and found none "
            f"({' '.join(command) or '$CXX'!r} is not on PATH). Install one (for example "
            "'apt-get install g++', 'dnf install gcc-c++' or Xcode's command line tools) "
            "or point the CXX environment variable at it."
        )
    return command


@functools.cache
def _compiler_version(command):
    result = subprocess.run([*command, "--version"], capture_output=True, text=True,
                            env=_compiler_env())
    return result.stdout + result.stderr


def cache_dir():
    root = os.environ.get("CUDCN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cudcn"
    )
    return pathlib.Path(root) / "cpu"


def extra_flags():
    """$CUDCN_CXXFLAGS: extra host-compiler flags (sanitizers, coverage)."""
    return tuple(shlex.split(os.environ.get("CUDCN_CXXFLAGS", "")))


def _compiler_env():
    # A sanitizer runtime preloaded into Python must not be preloaded into the compiler.
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


@functools.cache
def _target_macros(command, flags):
    """What the compiler predefines for these flags: with -march=native, the
    host CPU's instruction set (__AVX512F__, ...)."""
    result = subprocess.run([*command, *flags, "-x", "c++", "-E", "-dM", os.devnull],
                            capture_output=True, text=True, env=_compiler_env())
    return result.stdout + result.stderr


# Predefined macros of vector instruction sets, widest first.
_VECTOR_ISAS = (("__AVX512F__", "AVX-512"), ("__AVX2__", "AVX2"), ("__AVX__", "AVX"),
                ("__ARM_FEATURE_SVE", "SVE"), ("__ARM_NEON", "NEON"), ("__SSE2__", "SSE2"))


def native_vector_isa(command):
    """The widest vector instruction set the compiler targets with
    NATIVE_FLAGS, or None if it refuses them."""
    macros = _target_macros(tuple(command), CXXFLAGS + NATIVE_FLAGS)
    if "#define __cplusplus" not in macros:  # the compiler failed
        return None
    defined = {line.split()[1] for line in macros.splitlines() if line.startswith("#define ")}
    return next((name for macro, name in _VECTOR_ISAS if macro in defined), "scalar")


def _build(source, command, flags):
    flags = tuple(flags) + extra_flags()
    code = wrapper_source(source)
    key = hashlib.sha256(
        "\0".join([_sources.sources_digest(), code, *command, *flags,
                   _compiler_version(tuple(command)),
                   _target_macros(tuple(command), flags)]).encode()
    ).hexdigest()[:32]
    library = cache_dir() / f"{pathlib.Path(source).stem}-{key}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    # A coverage build keeps its folder: the .gcno notes and the .gcda counts live there.
    keep = "--coverage" in flags
    tmp = pathlib.Path(tempfile.mkdtemp(dir=library.parent, prefix=f"build-{library.stem}-"))
    try:
        wrapper = tmp / "wrapper.cpp"
        wrapper.write_text(code)
        built = tmp / library.name
        argv = [*command, *flags, f"-I{_sources.kernel_dir()}", str(wrapper), "-o", str(built)]
        result = subprocess.run(argv, capture_output=True, text=True, env=_compiler_env())
        if result.returncode != 0:
            raise CompileError(f"{' '.join(argv)}\nfailed:\n{result.stderr}")
        # Atomic, so that concurrent processes never load a half-written file.
        os.replace(built, library)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return library


@functools.cache
def library(source):
    """The loaded shared library of one kernel file, built on first use."""
    command = compiler()
    for flags in FLAG_SETS:
        try:
            path = _build(source, command, flags)
            break
        except CompileError:
            if flags == FLAG_SETS[-1]:
                raise
    lib = ctypes.CDLL(str(path))
    lib.build_flags = flags  # without OpenMP, the shim's own pool runs everything
    lib.openmp_state = None
    for kernel, scalar, index in _kernels.instantiations(source, _kernels.CPU_DTYPES):
        fn = getattr(lib, symbol(kernel, scalar, index))
        fn.argtypes = (ctypes.c_uint, ctypes.c_uint, ctypes.c_longlong,
                       ctypes.POINTER(ctypes.c_void_p))
        fn.restype = None
    lib.cudcn_launch_threads.restype = ctypes.c_int
    for suffix in ("f32", "f64"):
        getattr(lib, f"cudcn_gemm_{suffix}").argtypes = (ctypes.c_void_p, ctypes.c_longlong)
        getattr(lib, f"cudcn_gemm_{suffix}").restype = None
    # Only a race-checking build (-DCUDCN_RACECHECK) exports the report.
    lib.race_report = getattr(lib, "cudcn_racecheck_report", None)
    if lib.race_report is not None:
        lib.race_report.restype = ctypes.c_int
    return lib


def share_torchs_openmp(lib):
    """Launch on the OpenMP runtime's threads when torch is in the process.

    torch runs its CPU ops on OpenMP threads that spin for milliseconds after
    each op, and cudcn's own pool would take turns with them on the cores (the
    adapter's forward after an F.conv2d at N=2, C=64, 56x56: 12.9 ms on
    cudcn's pool, 6.1 ms on torch's threads). On the same threads, the next
    region finds them awake. torch and cudcn's kernel libraries load one
    libgomp.so.1.
    """
    want = int("torch" in sys.modules)
    if lib.openmp_state != want:
        lib.cudcn_use_openmp(want)
        lib.openmp_state = want


class GemmTiles(ctypes.Structure):
    """cpu_shim.h's GemmTiles<T>: one batch of row-major products, each split
    into ``tiles`` single-threaded BLAS calls (cudcn/_blas.py fills it)."""

    _fields_ = [("gemm", ctypes.c_void_p),
                *((name, ctypes.c_int) for name in ("trans_a", "trans_b", "m", "n", "k",
                                                    "lda", "ldb", "ldc")),
                *((name, ctypes.c_void_p) for name in ("a", "b", "c", "a_offsets", "b_offsets",
                                                       "c_offsets")),
                ("tiles", ctypes.c_int), ("split_rows", ctypes.c_int)]


def launch_threads(source):
    """How many threads ``source``'s launches run on (the pool's, or torch's
    OpenMP threads where torch is in the process)."""
    lib = library(source)
    share_torchs_openmp(lib)
    return lib.cudcn_launch_threads()


def run_gemm(source, tiles, batch, double):
    """Runs ``batch`` products described by ``tiles`` (a GemmTiles), in
    float64 if ``double`` else float32, on the thread pool of ``source``'s
    kernels, the one the op's launches use."""
    lib = library(source)
    share_torchs_openmp(lib)
    entry = lib.cudcn_gemm_f64 if double else lib.cudcn_gemm_f32
    entry(ctypes.byref(tiles), batch)


# Each argument in a slot of 8 bytes, at which the params that the shim
# takes (cuLaunchKernel's convention) point: an array as its data pointer, a
# scalar in its exact C type (the launch description chose it).
_SLOTS = {np.dtype(np.int32): "i4x", np.dtype(np.int64): "q", np.dtype(np.float32): "f4x",
          np.dtype(np.float64): "d"}


@functools.lru_cache(maxsize=None)
def _entry(lib, kernel, scalar, index):
    """(entry point, argument packer) of an instantiation in a loaded
    library, resolved once: a launch is made per call and often has little
    work, a few microseconds of kernel against the microsecond that each
    ctypes object costs."""
    params, _ = _launch.parameters(kernel, scalar, index)
    packer = struct.Struct("=" + "".join("Q" if p.array else _SLOTS[p.dtype] for p in params))
    return getattr(lib, symbol(kernel, scalar, index)), packer


def run(launch):
    if launch.scalar.dtype_name not in _kernels.CPU_DTYPES:
        raise TypeError(f"the CPU backend does not run {launch.scalar.dtype_name}")
    lib = library(launch.kernel.source)
    fn, packer = _entry(lib, launch.kernel, launch.scalar, launch.index)
    share_torchs_openmp(lib)
    count = len(launch.args)
    slots = (ctypes.c_uint64 * count)()
    packer.pack_into(slots, 0, *[a.ctypes.data if isinstance(a, np.ndarray) else a
                                 for a in launch.args])
    first = ctypes.addressof(slots)
    params = (ctypes.c_void_p * count)(*range(first, first + 8 * count, 8))
    # Threads from launch.items on have no work: the shim does not run them.
    fn(launch.grid, launch.block, launch.items, params)
    if lib.race_report is not None:
        _raise_on_race(launch, lib.race_report)


_RACES = {1: "is stored by {a} and by {b}",
          2: "is read by {a} and written by {b} in the same launch",
          3: "is stored by {a} and atomically updated by {b}"}


def _raise_on_race(launch, report):
    """After a launch of a race-checking build (-DCUDCN_RACECHECK): the
    conflict the shim found, named by array, element and (block, thread)."""
    address, first, second = ctypes.c_void_p(), ctypes.c_longlong(), ctypes.c_longlong()
    kind = report(ctypes.byref(address), ctypes.byref(first), ctypes.byref(second))
    if not kind:
        return
    where = f"address {address.value:#x}"
    for name, arg in zip(launch.kernel.param_names, launch.args):
        if isinstance(arg, np.ndarray) and arg.size:
            offset = address.value - arg.ctypes.data
            if 0 <= offset < arg.nbytes:
                where = f"{name}[{offset // arg.itemsize}]"
                break

    def thread(t):
        return f"thread (block {t // launch.block}, thread {t % launch.block})"

    name = _kernels.instantiation(launch.kernel, launch.scalar, launch.index)
    raise RaceError(f"{name}: {where} " + _RACES[kind].format(a=thread(first.value),
                                                              b=thread(second.value)))
