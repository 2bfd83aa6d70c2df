"""`python -m cudcn compile-check`: NVRTC builds of every GPU instantiation."""

import subprocess
import sys

import pytest

from cudcn import _gpu_build, _kernels, cli
from cudcn.cli import compile_check as _compile_check

pytest.importorskip("cuda.bindings.nvrtc")


def test_every_instantiation_compiles_for_every_arch_without_spills():
    result = subprocess.run([sys.executable, "-m", "cudcn", "compile-check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line.startswith("deform")]
    expected = len(_kernels.KERNELS) * len(_kernels.GPU_DTYPES) * 2 * 4
    assert len(rows) == expected
    assert {row[-1] for row in rows} == {"ok"}
    archs = {row[-5] for row in rows}
    assert archs == {"sm_75", "sm_80", "sm_90", "sm_100"}
    assert f"{expected} instantiations, {expected} compiled, 0 failed" in result.stdout


def test_a_kernel_that_does_not_compile_fails_the_check(monkeypatch, capsys):
    monkeypatch.setattr(_gpu_build, "source_text", lambda source: "this is not C++;")
    assert cli.main(["compile-check", "--arch", "sm_80"]) == 1
    out = capsys.readouterr()
    assert "compile failed" in out.out and "0 compiled" in out.out


def test_spills_fail_the_check(monkeypatch, capsys):
    real = _compile_check.parse_ptxas_log
    monkeypatch.setattr(_compile_check, "parse_ptxas_log",
                        lambda log: {k: (r, 8, 8) for k, (r, _, _) in real(log).items()})
    assert cli.main(["compile-check", "--arch", "sm_90"]) == 1
    assert "SPILLS" in capsys.readouterr().out


def test_parse_ptxas_log():
    log = """ptxas info    : Compiling entry function '_Z1kPf' for 'sm_80'
ptxas info    : Function properties for _Z1kPf
ptxas         .     0 bytes stack frame, 12 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 37 registers, used 0 barriers
ptxas info    : Compiling entry function '_Z1gPd' for 'sm_80'
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers"""
    assert _compile_check.parse_ptxas_log(log) == {"_Z1kPf": (37, 12, 4), "_Z1gPd": (8, 0, 0)}


def test_help_and_bad_arguments():
    ok = subprocess.run([sys.executable, "-m", "cudcn", "compile-check", "--help"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "--arch" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "cudcn", "compile-check", "--arch", "sm_70"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'sm_70'" in bad.stderr
