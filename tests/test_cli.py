"""The cudcn command line: info, check, demo, and argument handling."""

import json
import pathlib
import subprocess
import sys

import pytest

import cudcn
from cudcn.cli import check as _check


def _cudcn(*args):
    return subprocess.run([sys.executable, "-m", "cudcn", *args], capture_output=True, text=True)


def test_info_lists_backends_and_caches():
    result = _cudcn("info")
    assert result.returncode == 0, result.stderr
    assert f"cudcn              {cudcn.__version__}" in result.stdout
    assert "CPU backend        yes: " in result.stdout
    assert "CPU kernels        built for this CPU (-march=native): " in result.stdout
    assert "GPU backend" in result.stdout and "CPU kernel cache" in result.stdout


def test_check_passes_and_lists_every_op_and_cpu_dtype():
    """3 ops x (forward + 10 gradients in all) x 4 dtypes = 52 rows."""
    result = _cudcn("check")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line.startswith("deform")]
    seen = {(r[0], r[-5], r[-4]) for r in rows}
    for op in ("deform_conv2d", "deform_roi_pool", "deform_psroi_pool"):
        for dtype in ("float32", "float64", "float16", "bfloat16"):
            assert (op, "cpu", dtype) in seen
    passes = {(r[0], " ".join(r[1:-5])) for r in rows}
    assert ("deform_conv2d", "grad weight") in passes and ("deform_roi_pool", "grad mask") in passes
    assert all(r[-1] == "ok" for r in rows) and len(rows) == 52


def test_check_fails_on_a_wrong_op(monkeypatch, capsys):
    real = cudcn.deform_roi_pool
    monkeypatch.setattr(cudcn, "deform_roi_pool", lambda *a, **k: 1.01 * real(*a, **k))
    assert _check.show(sys.stdout) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "failed" in out


@pytest.mark.parametrize("command", ["info", "check", "bench", "demo", "compile-check", "gpu-plan"])
def test_every_subcommand_has_help(command):
    result = _cudcn(command, "--help")
    assert result.returncode == 0 and "usage: cudcn" in result.stdout


@pytest.mark.parametrize("args, words", [
    (["bogus"], "invalid choice: 'bogus'"),
    (["demo", "--steps", "many"], "invalid int value: 'many'"),
    (["demo", "--device", "tpu"], "invalid choice: 'tpu'"),
    ([], "the following arguments are required"),
])
def test_bad_arguments_exit_2_with_a_message(args, words):
    result = _cudcn(*args)
    assert result.returncode == 2 and words in result.stderr


def test_console_script_is_installed():
    script = pathlib.Path(sys.executable).parent / "cudcn"
    assert script.exists()
    assert subprocess.run([str(script), "--help"], capture_output=True).returncode == 0


def test_demo_end_to_end_at_reduced_size(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    Image = pytest.importorskip("PIL.Image")
    from cudcn.cli import demo

    results = demo.run(out=tmp_path, steps=4, batch=16, seed=1)
    out = capsys.readouterr().out
    assert "[plain] step    4/4" in out and "[deformable] step    4/4" in out
    assert "| plain CNN |" in out
    for name in ("sampling_locations.png", "offset_field.png"):
        with Image.open(tmp_path / name) as image:
            image.verify()
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.size[0] > 500 and image.size[1] > 200
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["steps"] == 4 and 0.0 <= saved["plain"] <= 1.0 and 0.0 <= saved["deformable"] <= 1.0
    assert results["plain"] == saved["plain"]


def test_demo_without_a_gpu_says_so(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("there is a GPU here")
    result = _cudcn("demo", "--device", "cuda", "--out", str(tmp_path))
    assert result.returncode != 0 and "no CUDA device" in result.stderr
