"""`python -m cudcn compile-check`: NVRTC 12 and 13 builds of every GPU instantiation.

The test environment installs the NVRTC and header wheels of every CUDA
version the check covers (the `test` extra); a missing one fails here. The
full matrix runs in CI as `make check-kernels`; here one architecture per
version keeps the suite fast.
"""

import subprocess
import sys

import pytest

from cudcn import _cuda_install, _gpu_build, _kernels, _nvrtc, cli
from cudcn.cli import compile_check as _compile_check

MAJORS = tuple(_compile_check.ARCHITECTURES)
PER_ARCH = len(_kernels.KERNELS) * len(_kernels.GPU_DTYPES) * len(_kernels.INDEX_TYPES)


KERNEL_NAMES = {kernel.name.rsplit("::", 1)[-1] for kernel in _kernels.KERNELS}


def _table_rows(stdout):
    """(cuda, arch, kernel, dtype, registers, spill stores, spill loads, status)
    per instantiation line of the table."""
    rows = []
    for line in stdout.splitlines():
        words = line.split()
        if len(words) >= 9 and words[2] in KERNEL_NAMES:
            rows.append((*words[:4], *words[-4:]))
    return rows


def test_every_cuda_version_of_the_matrix_is_installed_with_its_headers():
    assert set(MAJORS) <= set(_nvrtc.installed_majors())
    for major in MAJORS:
        assert _nvrtc.load(major).version[0] == major
        assert _cuda_install.header_major(_cuda_install.header_dirs()[major]) == major


@pytest.mark.parametrize("major", MAJORS)
def test_each_version_compiles_its_oldest_architecture_without_spills(major):
    arch = _compile_check.ARCHITECTURES[major][0]
    result = subprocess.run(
        [sys.executable, "-m", "cudcn", "compile-check", "--cuda", str(major), "--arch", arch],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _table_rows(result.stdout)
    cuda = "{}.{}".format(*_nvrtc.load(major).version)
    assert {(r[0], r[1]) for r in rows} == {(cuda, arch)}
    assert len(rows) == PER_ARCH
    assert {r[-1] for r in rows} == {"ok"}
    assert all(int(r[4]) > 0 and r[5] == r[6] == "0" for r in rows)
    summary = f"NVRTC {cuda}: {PER_ARCH} instantiations, {PER_ARCH} compiled, 0 failed"
    assert summary in result.stdout


@pytest.mark.parametrize("major", MAJORS)
def test_each_version_compiles_with_its_own_headers(major):
    options = _compile_check.compile_options(major, _compile_check.ARCHITECTURES[major][0])
    cuda_includes = [o[2:] for o in options if o.startswith("-I") and o[2:] != str(
        _gpu_build._sources.kernel_dir())]
    assert [_cuda_install.header_major(d) for d in cuda_includes] == [major]
    assert set(_gpu_build.CUPY_IMPLICIT_OPTIONS) <= set(options)


@pytest.mark.parametrize("major", MAJORS)
def test_the_executor_takes_the_headers_of_the_nvrtc_cupy_uses(monkeypatch, major):
    cupy = pytest.importorskip("cupy")
    monkeypatch.setattr(cupy.cuda.nvrtc, "getVersion", lambda: (major, 0))
    _gpu_build.cuda_include_dirs.cache_clear()
    try:
        (folder,) = _gpu_build.cuda_include_dirs()
        assert _cuda_install.header_major(folder) == major
        assert f"-I{folder}" in _gpu_build.options()
    finally:
        _gpu_build.cuda_include_dirs.cache_clear()


@pytest.mark.parametrize("major", MAJORS)
def test_nvrtc_binding_reports_lowered_names_and_errors(major):
    nvrtc = _nvrtc.load(major)
    good = nvrtc.compile("template <typename T> __global__ void k(T* x) { x[0] = 1; }", "k.cu",
                         ("--gpu-architecture=sm_80",), ("k<float>", "k<double>"))
    assert good.ok and good.lowered == {"k<float>": "_Z1kIfEvPT_", "k<double>": "_Z1kIdEvPT_"}
    bad = nvrtc.compile("__global__ void k() { undeclared(); }", "bad.cu", ())
    assert not bad.ok and "undeclared" in bad.log and bad.lowered == {}
    missing = nvrtc.compile("__global__ void k() {}", "k.cu", (), ("not_there<int>",))
    assert not missing.ok and "not_there" in missing.log
    with pytest.raises(_nvrtc.NVRTCError, match="nvrtcAddNameExpression.*INVALID_PROGRAM"):
        nvrtc._call("nvrtcAddNameExpression", None, b"k")


def test_a_kernel_that_does_not_compile_fails_the_check(monkeypatch, capsys):
    monkeypatch.setattr(_gpu_build, "source_text", lambda source: "this is not C++;")
    assert cli.main(["compile-check", "--arch", "sm_80", "--jobs", "1"]) == 1
    out = capsys.readouterr()
    assert "compile failed" in out.out and "0 compiled" in out.out
    assert "error" in out.err


def test_spills_fail_the_check(monkeypatch, capsys):
    first_file = _kernels.sources()[:1]
    monkeypatch.setattr(_kernels, "sources", lambda: first_file)
    real = _compile_check.parse_ptxas_log
    monkeypatch.setattr(_compile_check, "parse_ptxas_log",
                        lambda log: {k: (r, 8, 8) for k, (r, _, _) in real(log).items()})
    assert cli.main(["compile-check", "--arch", "sm_90", "--cuda", "13", "--jobs", "1"]) == 1
    assert "SPILLS" in capsys.readouterr().out


def test_a_missing_cuda_version_fails_with_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr(_nvrtc, "installed_majors", lambda: (13,))
    assert cli.main(["compile-check", "--cuda", "12"]) == 1
    assert "nvidia-cuda-nvrtc-cu12" in capsys.readouterr().err


def test_parse_ptxas_log():
    log = """ptxas info    : Compiling entry function '_Z1kPf' for 'sm_80'
ptxas info    : Function properties for _Z1kPf
ptxas         .     0 bytes stack frame, 12 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 37 registers, used 0 barriers
ptxas info    : Compiling entry function '_Z1gPd' for 'sm_80'
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers"""
    assert _compile_check.parse_ptxas_log(log) == {"_Z1kPf": (37, 12, 4), "_Z1gPd": (8, 0, 0)}


def test_matrix_gives_each_version_its_own_architectures():
    tasks = _compile_check.matrix(MAJORS)
    for major, archs in _compile_check.ARCHITECTURES.items():
        assert {a for _, a, m in tasks if m == major} == set(archs)
    per_file = sum(map(len, _compile_check.ARCHITECTURES.values()))
    assert len(tasks) == len(_kernels.sources()) * per_file
    assert {m for _, a, m in _compile_check.matrix(MAJORS, {"sm_70"})} == {12}


@pytest.mark.parametrize("args, code, words", [
    (["--help"], 0, "--cuda"),
    (["--arch", "sm_60"], 2, "invalid choice: 'sm_60'"),
    (["--cuda", "11"], 2, "invalid choice: '11'"),
    (["--cuda", "12", "--arch", "sm_120"], 2, "none of ['sm_120'] is checked with CUDA 12"),
])
def test_help_and_bad_arguments(args, code, words):
    result = subprocess.run([sys.executable, "-m", "cudcn", "compile-check", *args],
                            capture_output=True, text=True)
    assert result.returncode == code and words in result.stdout + result.stderr
