"""Where the kernel sources live, and a digest of all of them."""

import functools
import hashlib
import importlib.resources
import pathlib


@functools.cache
def kernel_dir():
    """The folder of the ``.cu``/``.cuh`` files (``cudcn.raw_kernels``)."""
    return pathlib.Path(str(importlib.resources.files("cudcn.raw_kernels")))


def source_files():
    """Every kernel source and header, sorted by name."""
    folder = kernel_dir()
    return sorted(p for p in folder.iterdir() if p.suffix in (".cu", ".cuh", ".h"))


def sources_digest():
    """sha256 over the name and text of every kernel file.

    A kernel file includes others by name, so caches keyed by this digest
    cannot serve a build made from a header that has since changed.
    """
    h = hashlib.sha256()
    for path in source_files():
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()
