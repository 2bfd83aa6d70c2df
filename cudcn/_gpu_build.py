"""How the GPU kernels are compiled: source text, options, name expressions.

Shared by the CuPy executor and ``python -m cudcn compile-check``, so that
the check compiles exactly what the executor would.
"""

import functools

from . import _cuda_install, _kernels, _sources


def executor_cuda_major():
    """The CUDA major version of the NVRTC CuPy compiles with, or None without CuPy.

    Asked of CuPy's NVRTC itself: with the wheels of two CUDA versions
    installed, that is the one whose headers the kernels must see.
    """
    try:
        import cupy
    except ImportError:
        return None
    try:
        return cupy.cuda.nvrtc.getVersion()[0]
    except Exception:  # NVRTC not loadable: CuPy's own CUDA version
        return cupy.cuda.runtime.runtimeGetVersion() // 1000


@functools.cache
def cuda_include_dirs(cuda_major=None):
    """Folders holding cuda_fp16.h and cuda_bf16.h of CUDA ``cuda_major``
    (default: the CuPy executor's), when they can be found.

    NVRTC has no default include path; CuPy adds the toolkit's, but the
    NVIDIA wheels keep their headers elsewhere, one folder per version.
    """
    if cuda_major is None:
        cuda_major = executor_cuda_major()
    found = _cuda_install.header_dirs().get(cuda_major)
    return (str(found),) if found else ()


def options(cuda_major=None):
    """NVRTC options, the same for every kernel file and architecture;
    ``cuda_major`` picks the CUDA headers (default: the CuPy executor's)."""
    includes = (_sources.kernel_dir(), *cuda_include_dirs(cuda_major))
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
