"""How the GPU kernels are compiled: source text, options, name expressions.

Shared by the CuPy executor and ``python -m cudcn compile-check``, so that
the check compiles exactly what the executor would.
"""

import functools

from . import _kernels, _sources


@functools.cache
def cuda_include_dirs():
    """Folders holding cuda_fp16.h and cuda_bf16.h, when they can be found.

    NVRTC has no default include path; CuPy adds the toolkit's, but the
    ``nvidia-cuda-runtime`` wheel keeps its headers elsewhere.
    """
    try:
        from cuda import pathfinder
    except ImportError:
        return ()
    try:
        found = pathfinder.find_nvidia_header_directory("cudart")
    except Exception:  # pathfinder raises its own errors on odd installs
        return ()
    return (found,) if found else ()


def options():
    """NVRTC options, the same for every kernel file and architecture."""
    includes = (_sources.kernel_dir(), *cuda_include_dirs())
    return ("-std=c++17", *(f"-I{d}" for d in includes))


# What CuPy's RawModule adds to every NVRTC compile besides the architecture;
# the compile check adds them too so that it builds exactly what CuPy builds.
CUPY_IMPLICIT_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")


def source_text(source):
    """The code handed to NVRTC for one kernel file.

    The first line carries the digest of every kernel file: CuPy keys its
    on-disk cache on the code text and options only, not on included headers.
    """
    body = (_sources.kernel_dir() / source).read_text()
    return f"// cudcn kernel sources {_sources.sources_digest()}\n{body}"


def name_expressions(source):
    return tuple(
        _kernels.instantiation(kernel, scalar, index)
        for kernel, scalar, index in _kernels.instantiations(source, _kernels.GPU_DTYPES)
    )
