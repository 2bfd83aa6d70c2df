"""``cudcn info``: what this installation can run, and where its caches are."""

import os
import pathlib


def _folder_size(path):
    path = pathlib.Path(path)
    if not path.is_dir():
        return None
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _mib(size):
    return "absent" if size is None else f"{size / 2**20:.1f} MiB"


def _nvrtc_versions():
    """Each installed NVRTC (compile-check uses them all; CuPy uses one)."""
    from .. import _nvrtc

    found = []
    for major in _nvrtc.installed_majors():
        try:
            found.append("{}.{}".format(*_nvrtc.load(major).version))
        except (OSError, _nvrtc.NVRTCError) as exc:
            found.append(f"CUDA {major} not loadable ({exc})")
    if not found:
        return ("not available (pip install nvidia-cuda-nvrtc nvidia-cuda-runtime, or "
                "nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12)")
    return ", ".join(found) + " (with CUDA headers)"


def collect():
    """Facts as (label, value) pairs, in display order."""
    import numpy as np

    import cudcn
    from .._executors import cpu

    rows = [("cudcn", cudcn.__version__), ("numpy", np.__version__)]
    try:
        command = cpu.compiler()
        version = cpu._compiler_version(tuple(command)).splitlines()[0]
        rows.append(("CPU backend", f"yes: {' '.join(command)} ({version})"))
        isa = cpu.native_vector_isa(command)
        rows.append(("CPU kernels", f"built for this CPU (-march=native): {isa}" if isa else
                     "built for the compiler's default target (it refuses -march=native)"))
    except cpu.CompilerNotFoundError as exc:
        rows.append(("CPU backend", f"no: {exc}"))
    try:
        import cupy

        rows.append(("CuPy", cupy.__version__))
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # no driver
            count, reason = 0, str(exc).splitlines()[0]
        else:
            reason = "no device"
        if count:
            names = []
            for i in range(count):
                props = cupy.cuda.runtime.getDeviceProperties(i)
                names.append(f"{i}: {props['name'].decode()} (sm_{props['major']}{props['minor']})")
            rows.append(("GPU backend", f"yes: {count} device(s): " + "; ".join(names)))
        else:
            rows.append(("GPU backend", f"no: {reason}"))
    except ImportError:
        rows.append(("CuPy", "not installed (pip install cupy-cuda13x for the GPU backend)"))
        rows.append(("GPU backend", "no: CuPy is not installed"))
    rows.append(("NVRTC", _nvrtc_versions()))
    try:
        import torch

        rows.append(("torch", f"{torch.__version__} (cudcn.adapters.torch)"))
    except ImportError:
        rows.append(("torch", "not installed"))
    cupy_cache = os.environ.get("CUPY_CACHE_DIR", os.path.expanduser("~/.cupy/kernel_cache"))
    cpu_cache = cpu.cache_dir()
    rows.append(("CPU kernel cache", f"{cpu_cache} ({_mib(_folder_size(cpu_cache))})"))
    rows.append(("CuPy kernel cache", f"{cupy_cache} ({_mib(_folder_size(cupy_cache))})"))
    rows.append(("workspace limit", f"{cudcn.get_workspace_limit('cpu') / 2**20:g} MiB (CPU), "
                                    f"{cudcn.get_workspace_limit('gpu') / 2**20:g} MiB (GPU)"))
    return rows


def show(out):
    rows = collect()
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label.ljust(width)}  {value}", file=out)
    return 0
