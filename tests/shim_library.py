"""Test programs that include cpu_shim.h, built as the kernels are."""

import ctypes
import pathlib
import subprocess

from cudcn import _sources
from cudcn._executors import cpu


def build(source_name, directory):
    """tests/<source_name> compiled into a library in ``directory`` with the
    kernels' compiler and flags, loaded."""
    source = pathlib.Path(__file__).with_name(source_name)
    library = pathlib.Path(directory) / (source.stem + ".so")
    flags = cpu.library("deform_conv2d.cu").build_flags
    subprocess.run([*cpu.compiler(), *flags, *cpu.extra_flags(),
                    f"-I{_sources.kernel_dir()}", str(source), "-o", str(library)],
                   check=True, env=cpu._compiler_env())
    return ctypes.CDLL(str(library))
