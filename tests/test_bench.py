"""`cudcn bench`: the measurement machinery on a tiny workload (the real
figures are the closing notes' and the benchmarks guide's, not a test's)."""

import io

import pytest

from cudcn.cli import bench

pytestmark = pytest.mark.torchvision
pytest.importorskip("torchvision")


def test_interleaved_rounds_call_each_once_in_varying_orders():
    order = []
    calls = {name: (lambda n=name: order.append(n)) for name in "abcd"}
    times = bench.interleaved_ms(calls, rounds=12)
    assert set(times) == set("abcd") and all(t >= 0 for t in times.values())
    assert order[:4] == list("abcd")  # the warm-up round
    rounds = [order[4 + 4 * r: 8 + 4 * r] for r in range(12)]
    assert all(sorted(r) == list("abcd") for r in rounds)
    # Unlike a rotation, a contender does not always follow the same one.
    followers_of_a = {r[r.index("a") + 1] for r in rounds if r[-1] != "a"}
    assert len(followers_of_a) >= 2


def test_interleaved_medians_are_the_callables_times(fake_clock):
    clock = fake_clock(bench)
    times = bench.interleaved_ms({"fast": lambda: clock.sleep(0.001),
                                  "slow": lambda: clock.sleep(0.01)}, rounds=3)
    assert times == pytest.approx({"fast": 1.0, "slow": 10.0})


def test_what_runs_before_each_call_is_not_timed(fake_clock):
    clock = fake_clock(bench)
    calls = []
    times = bench.interleaved_ms({"fast": lambda: (calls.append("fast"), clock.sleep(0.001))},
                                 rounds=3,
                                 before=lambda: (calls.append("before"), clock.sleep(0.01)))
    assert calls == ["before", "fast"] * 4  # the warm-up and 3 rounds
    assert times == pytest.approx({"fast": 1.0})


def test_short_rounds_run_more_within_the_seconds_and_the_cap(fake_clock):
    clock = fake_clock(bench)
    counts = {"a": 0, "b": 0}

    def call(name):
        counts[name] += 1
        clock.sleep(0.002)

    calls = {n: (lambda n=n: call(n)) for n in counts}
    # The warm-up round takes 4 ms: 0.1 s holds 25 rounds, capped at 12.
    times = bench.interleaved_ms(calls, rounds=3, seconds=0.1, most=12)
    assert counts == {"a": 13, "b": 13} and times.rounds == 12
    counts.update(a=0, b=0)
    # 0.05 s holds 12 rounds of 4 ms (12.5, rounded down).
    times = bench.interleaved_ms(calls, rounds=3, seconds=0.05, most=100)
    assert counts == {"a": 13, "b": 13} and times.rounds == 12
    counts.update(a=0, b=0)
    # Rounds longer than the seconds: the rounds asked for, no fewer.
    times = bench.interleaved_ms(calls, rounds=3, seconds=0.001)
    assert counts == {"a": 4, "b": 4} and times.rounds == 3
    assert bench.interleaved_ms({"a": lambda: None}, rounds=5).rounds == 5


def test_measure_prints_every_contender_and_ratio():
    out = io.StringIO()
    result = bench.measure(rounds=1, conv_shapes=((1, 4, 8),), memory=False, threads=False,
                           environment=False, rois=False, msda=False, profile_shape=(1, 4, 8),
                           seconds=None, out=out)
    text = out.getvalue()
    for word in ("cudcn torch ms", "cudcn NumPy ms", "torchvision ms", "F.conv2d ms",
                 "tv / cudcn", "cudcn / conv2d", "torch / NumPy", "rounds", "forward+backward",
                 "where the time goes", "deform_conv2d_im2col_pixels", "matrix products"):
        assert word in text
    backward = result["profile"]["backward"]
    assert {"deform_conv2d_col2im_pixels", "matrix products", "total"} <= set(backward)
    forward = result["conv"][(1, 4, 8)]["forward"]
    # onnxruntime is in the test extra: ONNX Runtime's DeformConv is a peer.
    assert {"cudcn (torch)", "cudcn (NumPy)", "torchvision", "F.conv2d",
            "ONNX Runtime"} <= set(forward)


def test_msda_rows_time_cudcn_and_the_grid_sample_path_on_one_computation(monkeypatch):
    """The rows' two contenders compute the same attention (here on small
    levels), and each row has both passes and both contenders."""
    import torch

    monkeypatch.setattr(bench, "MSDA_LEVELS", ((4, 4), (2, 3), (2, 2), (1, 1)))
    monkeypatch.setattr(bench, "MSDA_QUERIES", (("encoder", 6), ("decoder", 3)))
    ours, peer = bench._msda_calls(bench._msda_tensors(5, grad=False))
    with torch.no_grad():
        torch.testing.assert_close(ours(), peer(), rtol=1e-5, atol=1e-5)
    rows = bench.msda_rows(rounds=1)
    assert list(rows) == ["encoder (Lq=6)", "decoder (Lq=3)"]
    for fwd, both, peer_name in rows.values():
        assert peer_name == "grid_sample"
        assert set(fwd) == set(both) == {"cudcn", "grid_sample"}
    assert bench._msda_memory(peer=False)["mib"] >= 0


def test_the_end_to_end_row_times_a_kernelized_and_a_default_detector(monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("kernels")
    monkeypatch.setattr(bench, "DETR_SIZE", 128)
    fwd, step = bench.detr_rows(rounds=1)
    assert set(fwd) == set(step) == {"cudcn", "grid_sample"}
    assert fwd.rounds == 1 and step.rounds == 3


def _leaves(node):
    """The leaf tensors a backward from ``node`` accumulates into."""
    leaves, stack, visited = [], [node], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        if hasattr(node, "variable"):  # AccumulateGrad
            leaves.append(node.variable)
        stack.extend(f for f, _ in node.next_functions)
    return leaves


def test_each_torch_backward_starts_as_after_zero_grad(monkeypatch):
    """As in a training step after optimizer.zero_grad(): every leaf's
    gradient is None, for cudcn and its peers alike, in the rows and the
    profile."""
    seen = []
    real = bench._backward

    def checked(y):
        leaves = _leaves(y.grad_fn)
        seen.append(bool(leaves) and all(t.grad is None for t in leaves))
        real(y)

    monkeypatch.setattr(bench, "_backward", checked)
    monkeypatch.setattr(bench, "MSDA_LEVELS", ((4, 4), (2, 2), (1, 1), (1, 1)))
    monkeypatch.setattr(bench, "MSDA_QUERIES", (("encoder", 6), ("decoder", 3)))
    monkeypatch.setattr(bench, "DETR_SIZE", 128)
    monkeypatch.setattr(bench, "DCNV3_STAGES", ((5, 8, 2), (4, 8, 4), (3, 16, 4)))
    bench.measure(rounds=2, conv_shapes=((1, 4, 8),), memory=False, threads=False,
                  environment=False, rois=True, profile_shape=(1, 4, 8), seconds=None,
                  out=io.StringIO())
    # Each (warm-up + rounds): conv, 2 torch contenders x (1 + 2); pools, 3 rows x 2
    # contenders x (1 + 3); attention, 2 rows x 2 contenders x (1 + 3); dcnv3, 3
    # stages and the layer x 2 contenders x (1 + 3); the profile, 1 + 3 x 2.
    assert len(seen) == 2 * 3 + 3 * 2 * 4 + 2 * 2 * 4 + 4 * 2 * 4 + 7
    assert all(seen)


def test_the_modulated_roi_pool_row_learns_its_offset_and_mask(monkeypatch):
    """As DeformRoIPoolPack trains them: the row's backward computes the
    offset and mask gradients too."""
    monkeypatch.setattr(bench, "ROI_MAP", (1, 4, 16, 16))
    monkeypatch.setattr(bench, "ROIS", 3)
    seen = []
    real = bench._backward

    def recorded(y):
        seen.append(sorted(tuple(t.shape) for t in _leaves(y.grad_fn)))
        real(y)

    monkeypatch.setattr(bench, "_backward", recorded)
    bench.roi_rows(rounds=1)
    assert [(1, 4, 16, 16), (3, 1, 7, 7), (3, 2, 7, 7)] in seen


def test_fresh_process_cases_run_round_by_round_to_medians(monkeypatch):
    calls = []
    times = iter([1.0, 10.0, 3.0, 30.0, 2.0, 20.0])

    def measured(kind, shape, threads=None, workspace_mib=None):
        calls.append((kind, threads))
        return {"forward": next(times)}

    monkeypatch.setattr(bench, "_in_subprocess", measured)
    result = bench.processes_interleaved({"a": ("time", 1), "b": ("env-x", None)})
    assert calls == [("time", 1), ("env-x", None)] * 3
    assert result == {"a": {"forward": 2.0}, "b": {"forward": 20.0}}


def test_the_measuring_process_runs_without_the_openblas_variables(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    env = bench._clean_env({"OMP_NUM_THREADS": "1"})
    assert "OPENBLAS_CORETYPE" not in env and env["OMP_NUM_THREADS"] == "1"


def test_a_fresh_process_measures_one_case():
    times = bench._in_subprocess("time", (1, 4, 8), threads=1)
    assert set(times) == {"forward", "forward+backward"} and times["forward"] > 0


def test_profile_times_each_kernel_and_product_and_restores_them():
    import numpy as np

    import cudcn
    from cudcn import _gemm, _launch
    from cudcn.cli import profile
    from cudcn.testing import deform_conv2d_inputs

    args = deform_conv2d_inputs(batch=2, in_channels=4, size=(9, 8), dtype=np.float32, seed=3)
    run, matmul = _launch.run, _gemm.matmul
    times = profile.phases(lambda: cudcn.deform_conv2d(**args), rounds=3)
    assert {"deform_conv2d_fill_pixels", "deform_conv2d_im2col_pixels",
            "deform_conv2d_output_from_pixels", profile.GEMMS, profile.REST,
            profile.TOTAL} <= set(times)
    assert all(t >= 0 for name, t in times.items() if name != profile.REST)
    assert times[profile.TOTAL] >= times[profile.GEMMS]
    calls = []

    def second_fails():  # the warm-up passes; the timed call raises inside the timers
        calls.append(1)
        offset = args["offset"] if len(calls) == 1 else args["offset"][:, :2]
        cudcn.deform_conv2d(**{**args, "offset": offset})

    with pytest.raises(ValueError):
        profile.phases(second_fails, rounds=1)
    assert len(calls) == 2
    assert (_launch.run, _gemm.matmul) == (run, matmul)
    # Structure only: which phase is largest is the machine's business (a
    # busy CI machine once measured the weight relayout second).
    rows = profile.table({"forward": times, "again": times})
    assert rows[0][0] == profile.TOTAL and rows[-1][0] == profile.REST
    assert {row[0] for row in rows} == set(times)
    middle = [row[1] for row in rows[1:-1]]
    assert middle == sorted(middle, reverse=True)
    assert all(row[1] == row[2] for row in rows)
