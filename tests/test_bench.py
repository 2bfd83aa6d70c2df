"""`cudcn bench`: the measurement machinery on a tiny workload (the real
figures are the closing notes' and the README's, not a test's)."""

import io
import time

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


def test_interleaved_medians_are_the_callables_times():
    times = bench.interleaved_ms({"fast": lambda: time.sleep(0.001),
                                  "slow": lambda: time.sleep(0.01)}, rounds=3)
    assert 0.9 <= times["fast"] < 5 and 9.9 <= times["slow"] < 30


def test_what_runs_before_each_call_is_not_timed():
    calls = []
    times = bench.interleaved_ms({"fast": lambda: calls.append("fast")}, rounds=3,
                                 before=lambda: (calls.append("before"), time.sleep(0.01)))
    assert calls == ["fast"] + ["before", "fast"] * 3  # not before the warm-up
    assert times["fast"] < 5


def test_measure_prints_every_contender_and_ratio():
    out = io.StringIO()
    result = bench.measure(rounds=1, conv_shapes=((1, 4, 8),), memory=False, threads=False,
                           environment=False, rois=False, out=out)
    text = out.getvalue()
    for word in ("cudcn torch ms", "cudcn NumPy ms", "torchvision ms", "F.conv2d ms",
                 "tv / cudcn", "cudcn / conv2d", "torch / NumPy", "forward+backward"):
        assert word in text
    forward = result["conv"][(1, 4, 8)]["forward"]
    # onnxruntime is in the test extra: ONNX Runtime's DeformConv is a peer.
    assert {"cudcn (torch)", "cudcn (NumPy)", "torchvision", "F.conv2d",
            "ONNX Runtime"} <= set(forward)


def test_the_measuring_process_runs_without_the_openblas_variables(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    env = bench._clean_env({"OMP_NUM_THREADS": "1"})
    assert "OPENBLAS_CORETYPE" not in env and env["OMP_NUM_THREADS"] == "1"


def test_a_fresh_process_measures_one_case():
    times = bench._in_subprocess("time", (1, 4, 8), threads=1)
    assert set(times) == {"forward", "forward+backward"} and times["forward"] > 0
