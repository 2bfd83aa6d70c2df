"""The built wheel carries the kernel sources and the adapters, and runs from them."""

import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(ROOT)], check=True)
    (found,) = out.glob("cudcn-*.whl")
    return found


def test_wheel_contains_kernel_sources_and_adapters(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    kernel_files = {p.name for p in (ROOT / "raw_kernels").iterdir()
                    if p.suffix in (".cu", ".cuh", ".h")}
    assert kernel_files >= {"deform_conv2d.cu", "cudcn_common.cuh", "cpu_shim.h"}
    for name in kernel_files:
        assert f"cudcn/raw_kernels/{name}" in names
    assert "cudcn/adapters/__init__.py" in names
    assert {"cudcn/adapters/torch/ops.py", "cudcn/adapters/jax/ops.py"} <= names
    assert "cudcn/__main__.py" in names and "cudcn/cli/__init__.py" in names


def test_installed_wheel_runs_from_its_own_files(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                    str(site), str(wheel)], check=True)
    code = f"""
import numpy as np, cudcn, cudcn.adapters
from cudcn import _sources
assert cudcn.__file__.startswith({str(site)!r}), cudcn.__file__
assert str(_sources.kernel_dir()).startswith({str(site)!r})
x = np.ones((1, 2, 4, 4)); w = np.ones((3, 2, 3, 3)); off = np.zeros((1, 18, 2, 2))
assert cudcn.deform_conv2d(x, off, w).tolist() == np.full((1, 3, 2, 2), 18.0).tolist()
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path,
                   env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin",
                        "CUDCN_CACHE_DIR": str(tmp_path / "cache")})
