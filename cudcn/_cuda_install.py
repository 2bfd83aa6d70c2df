"""Where each installed CUDA major version keeps NVRTC and the runtime headers.

NVIDIA's wheels of different major versions install side by side: CUDA 13's
under ``nvidia/cu13/{lib,include}``, CUDA 12's split into
``nvidia/cuda_nvrtc/lib`` and ``nvidia/cuda_runtime/include``. A toolkit
(``$CUDA_PATH``, ``$CUDA_HOME``, ``/usr/local/cuda``) is looked at after the
wheels. Versions are read from the files themselves (the soname's major, the
headers' ``CUDART_VERSION``), never guessed from folder names. Linux only.
"""

import functools
import os
import pathlib
import re
import sys

_NVRTC_SONAME = re.compile(r"libnvrtc\.so\.(\d+)$")
_CUDART_VERSION = re.compile(r"^#define\s+CUDART_VERSION\s+(\d+)", re.MULTILINE)


def _wheel_folders():
    """Every ``nvidia/<package>`` folder on sys.path, in import order."""
    for entry in sys.path:
        root = pathlib.Path(entry or ".") / "nvidia"
        if root.is_dir():
            yield from sorted(p for p in root.iterdir() if p.is_dir())


def _toolkit_folders():
    for variable in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(variable):
            yield pathlib.Path(os.environ[variable])
    yield pathlib.Path("/usr/local/cuda")


def header_major(include_dir):
    """The CUDA major version of the headers in ``include_dir``, or None."""
    try:
        text = (pathlib.Path(include_dir) / "cuda_runtime_api.h").read_text(errors="replace")
    except OSError:
        return None
    found = _CUDART_VERSION.search(text)
    return int(found.group(1)) // 1000 if found else None


@functools.cache
def nvrtc_libraries():
    """{CUDA major: path of libnvrtc.so.<major>}, the first found of each."""
    found = {}
    lib_dirs = [p / "lib" for p in _wheel_folders()]
    lib_dirs += [p / sub for p in _toolkit_folders() for sub in ("lib64", "lib")]
    for lib_dir in lib_dirs:
        if not lib_dir.is_dir():
            continue
        for path in sorted(lib_dir.iterdir()):
            match = _NVRTC_SONAME.match(path.name)
            if match:
                found.setdefault(int(match.group(1)), path)
    return found


@functools.cache
def header_dirs():
    """{CUDA major: folder holding cuda_runtime_api.h, cuda_fp16.h, cuda_bf16.h}."""
    found = {}
    candidates = [p / "include" for p in _wheel_folders()]
    candidates += [p / "include" for p in _toolkit_folders()]
    for folder in candidates:
        major = header_major(folder)
        if major is not None and (folder / "cuda_fp16.h").is_file():
            found.setdefault(major, folder)
    return found
