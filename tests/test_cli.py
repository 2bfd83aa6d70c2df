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


OPS = ("deform_conv2d", "deform_roi_pool", "deform_psroi_pool", "ms_deform_attn", "dcnv3",
       "dcnv4")


def test_check_passes_and_lists_every_op_and_cpu_dtype():
    """6 ops x (forward + 18 gradients in all) x 4 dtypes = 96 rows."""
    result = _cudcn("check")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line.startswith(OPS)]
    seen = {(r[0], r[-5], r[-4]) for r in rows}
    for op in OPS:
        for dtype in ("float32", "float64", "float16", "bfloat16"):
            assert (op, "cpu", dtype) in seen
    passes = {(r[0], " ".join(r[1:-5])) for r in rows}
    assert ("deform_conv2d", "grad weight") in passes and ("deform_roi_pool", "grad mask") in passes
    assert ("ms_deform_attn", "grad sampling_locations") in passes
    assert ("dcnv4", "grad offset_mask") in passes
    assert all(r[-1] == "ok" for r in rows) and len(rows) == 96


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

    results = demo.run(out=tmp_path, steps=4, batch=16, seed=1, seeds=2, jobs=1)
    out = capsys.readouterr().out
    for s in (1, 2):
        for kind in ("plain", "deformable"):
            assert f"[seed {s} {kind}] step    4/4" in out
    assert "| plain CNN |" in out and "| conv5 |" in out
    for name in ("sampling_locations.png", "offset_field.png", "effective_dilation.png"):
        with Image.open(tmp_path / name) as image:
            image.verify()
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.size[0] > 500 and image.size[1] > 200
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == results
    assert saved["steps"] == 4 and saved["seeds"] == [1, 2]
    layers = ["conv3", "conv4", "conv5"]
    assert saved["layers"] == layers
    bins = {"small", "medium", "large", "background"}
    for model in ("plain", "deformable"):
        assert len(saved["accuracy"][model]) == 2
        assert all(0.0 <= a <= 1.0 for a in saved["accuracy"][model])
        assert saved["accuracy_mean"][model] == pytest.approx(sum(saved["accuracy"][model]) / 2)
    for key in ("effective_dilation", "effective_dilation_std", "effective_dilation_seed_std",
                "effective_dilation_per_seed"):
        assert list(saved[key]) == layers and all(set(saved[key][n]) == bins for n in layers)
    for name in layers:
        for b in bins:
            per_seed = saved["effective_dilation_per_seed"][name][b]
            assert len(per_seed) == 2 and all(v > 0 for v in per_seed)
            assert saved["effective_dilation"][name][b] == pytest.approx(sum(per_seed) / 2,
                                                                         abs=1e-4)
    # Every test position in exactly one bin (794 images, 10x10 maps).
    assert [sum(saved["positions_per_seed"][b][k] for b in bins) for k in (0, 1)] == [79400] * 2


def test_demo_worker_processes_give_what_one_process_gives():
    """Two spawned workers (one thread each) against this process on one thread:
    the same accuracies and effective dilations, and the workers' log lines."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    import io

    from cudcn.cli import demo

    tasks = [(3, "deformable", 3, 8, 1.0, "cpu", True), (3, "plain", 3, 8, 1.0, "cpu", False)]
    log = io.StringIO()
    parallel = demo._run_tasks(tasks, 2, log)
    assert "[seed 3 deformable] step    3/3" in log.getvalue()
    assert "[seed 3 plain] test accuracy" in log.getvalue()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = demo._run_tasks(tasks, 1, io.StringIO())
    finally:
        torch.set_num_threads(threads)
    for p, s in zip(parallel, serial):
        assert (p["seed"], p["kind"], p["accuracy"]) == (s["seed"], s["kind"], s["accuracy"])
    assert parallel[0]["layers"] == ["conv3", "conv4", "conv5"]
    assert parallel[0]["stats"] == serial[0]["stats"]
    for name, value in serial[0]["state"].items():
        torch.testing.assert_close(parallel[0]["state"][name], value, rtol=0, atol=0)


def _stretched_offsets(sy, sx, kernel=3, size=(4, 5), n=2):
    """Offsets (n, 2 * k * k, *size) that stretch a regular k x k grid by sy, sx."""
    import numpy as np

    centre = (kernel - 1) / 2
    off = np.zeros((n, kernel, kernel, 2, *size))
    for i in range(kernel):
        for j in range(kernel):
            off[:, i, j, 0] = (sy - 1) * (i - centre)
            off[:, i, j, 1] = (sx - 1) * (j - centre)
    return off.reshape(n, 2 * kernel * kernel, *size)


@pytest.mark.parametrize("kernel, dilation, expected", [
    ((3, 3), (1, 1), 1.0), ((3, 3), (2, 2), 2.0), ((5, 5), (3, 3), 3.0),
    # 3x3, dilation (1, 2): 6 horizontal pairs 2 apart, 6 vertical pairs 1 apart.
    ((3, 3), (1, 2), 1.5),
    # 3x5, dilation (2, 1): 12 horizontal pairs 1 apart, 10 vertical pairs 2 apart.
    ((3, 5), (2, 1), 32 / 22),
])
def test_effective_dilation_of_zero_offsets_is_the_dilation(kernel, dilation, expected):
    import numpy as np

    from cudcn.cli.demo import effective_dilation

    for groups in (1, 2):
        offset = np.zeros((2, 2 * groups * kernel[0] * kernel[1], 4, 3), np.float32)
        ed = effective_dilation(offset, kernel, dilation)
        assert ed.shape == (2, groups, 4, 3)
        np.testing.assert_allclose(ed, expected, rtol=1e-15)


def test_effective_dilation_of_known_offset_fields():
    import numpy as np

    from cudcn.cli.demo import effective_dilation

    # A grid stretched by s: every adjacent pair s * dilation apart.
    np.testing.assert_allclose(effective_dilation(_stretched_offsets(2.5, 2.5)), 2.5, rtol=1e-14)
    # 5x5 at dilation 2, each point pushed 2 further from its neighbours: 4 apart.
    np.testing.assert_allclose(effective_dilation(_stretched_offsets(3, 3, kernel=5), (5, 5),
                                                  (2, 2)), 4.0, rtol=1e-14)
    # Stretched by 3 across and 1 down: (6 * 3 + 6 * 1) / 12.
    np.testing.assert_allclose(effective_dilation(_stretched_offsets(1, 3)), 2.0, rtol=1e-14)
    # A common shift of all 9 points moves the filter, not its spacing.
    shift = np.zeros((1, 18, 2, 2))
    shift[:, 0::2], shift[:, 1::2] = 0.7, -1.9
    np.testing.assert_allclose(effective_dilation(shift), 1.0, rtol=1e-14)
    # Only the centre point (k = 4) moved right by 0.5: its pairs are 1.5 (left), 0.5
    # (right) and sqrt(1 + 0.25) (up, down) apart, the other 8 pairs 1 apart.
    centre = np.zeros((1, 18, 1, 1))
    centre[0, 2 * 4 + 1] = 0.5
    np.testing.assert_allclose(effective_dilation(centre), (8 + 2 + 2 * 1.25 ** 0.5) / 12,
                               rtol=1e-14)
    # Random offsets against a loop over the 12 pairs, per position and deform group.
    rng = np.random.default_rng(0)
    offset = rng.normal(size=(2, 2 * 2 * 9, 3, 4))
    ed = effective_dilation(offset, (3, 3), (2, 1))
    for n, g, y, x in np.ndindex(2, 2, 3, 4):
        loc = {(i, j): (2 * i + offset[n, g * 18 + 2 * (3 * i + j), y, x],
                        j + offset[n, g * 18 + 2 * (3 * i + j) + 1, y, x])
               for i in range(3) for j in range(3)}
        pairs = [(a, (a[0], a[1] + 1)) for a in loc if a[1] < 2]
        pairs += [(a, (a[0] + 1, a[1])) for a in loc if a[0] < 2]
        assert len(pairs) == 12
        want = np.mean([np.hypot(loc[a][0] - loc[b][0], loc[a][1] - loc[b][1]) for a, b in pairs])
        assert ed[n, g, y, x] == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError):
        effective_dilation(np.zeros((1, 17, 2, 2)))


def test_effective_dilation_reads_offsets_as_the_deformable_layer_uses_them():
    """Offsets that stretch the 3x3 grid by 2, set as conv_offset's bias, make the
    layer a dilation-2 conv; the demo reads them back as effective dilation 2."""
    torch = pytest.importorskip("torch")
    import numpy as np

    from cudcn.adapters.torch import DeformConv2dPack
    from cudcn.cli.demo import _layer_offsets, effective_dilation

    torch.manual_seed(0)
    layer = DeformConv2dPack(4, 5, 3, padding=1)
    with torch.no_grad():
        layer.conv_offset.bias.copy_(torch.tensor(_stretched_offsets(2, 2, size=(1, 1), n=1)
                                                  .reshape(18), dtype=torch.float32))
    x = torch.randn(2, 4, 7, 6)
    regular = torch.nn.functional.conv2d(x, layer.weight, padding=2, dilation=2)
    torch.testing.assert_close(layer(x), regular, rtol=1e-5, atol=1e-5)
    offsets, layers = _layer_offsets(torch.nn.Sequential(layer), x)
    assert list(layers) == ["0"] and offsets["0"].shape == (2, 18, 7, 6)
    np.testing.assert_allclose(effective_dilation(offsets["0"]), 2.0, rtol=1e-6)


def test_positions_bin_by_box_and_scale():
    import numpy as np

    from cudcn.cli.demo import ink_boxes, position_bins

    images = np.zeros((4, 1, 40, 40), np.float32)
    images[:, 0, 10:21, 5:8] = 0.5  # ink on rows 10-20, columns 5-7
    images[:, 0, 30, 30] = 0.1  # not brighter than INK: no ink
    images[3] = 0.0  # no digit at all
    boxes = ink_boxes(images)
    np.testing.assert_array_equal(boxes[:3], [[9.5, 20.5, 4.5, 7.5]] * 3)
    assert np.isnan(boxes[3]).all()
    # Thirds of 0.55-1.35: small below 0.8167, large from 1.0833.
    bins = position_bins(boxes, [0.55, 0.9, 1.35, 1.0], (10, 10))
    # Position centres (r + 0.5) * 4 - 0.5 = 1.5, 5.5, ..., 37.5: rows 3-4 (13.5, 17.5)
    # and column 1 (5.5) lie in the box; row 2 (9.5) on its edge counts as inside.
    inside = np.zeros((10, 10), bool)
    inside[2:5, 1] = True
    for k, expected in enumerate((0, 1, 2)):
        np.testing.assert_array_equal(bins[k], np.where(inside, expected, 3))
    assert (bins[3] == 3).all()


def test_demo_without_a_gpu_says_so(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("there is a GPU here")
    result = _cudcn("demo", "--device", "cuda", "--out", str(tmp_path))
    assert result.returncode != 0 and "no CUDA device" in result.stderr
