"""The asv suite without running it: the configuration builds one wheel, the
suite is discovered as asv discovers it and covers every op, the quick history
subset selects what the Makefile says, and every benchmark runs once on the
CPU at a small shape (GPU parameters skip cleanly here)."""

import ast
import importlib.util
import itertools
import json
import math
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH_ROOT = ROOT / "benchmarks"
CONF = json.loads((BENCH_ROOT / "asv.conf.json").read_text())

asv_runner_discovery = pytest.importorskip("asv_runner.discovery")


def _discover():
    sys.path.insert(0, str(BENCH_ROOT))
    try:
        return {b.name: b for b in asv_runner_discovery.disc_benchmarks(
            str(BENCH_ROOT / CONF["benchmark_dir"]))}
    finally:
        sys.path.remove(str(BENCH_ROOT))


BENCHMARKS = _discover()
from benchmarks import common, interleave, workloads  # noqa: E402  (importable once discovered)


def _kind(name):
    return name.rsplit(".", 1)[1].split("_", 1)[0]


def _grid(bench):
    """Each parameter's values (asv keeps their reprs)."""
    return [[ast.literal_eval(v) for v in values] for values in bench.params]


def _combos(bench):
    """Every parameter set as a dict, in asv's index order."""
    return [dict(zip(bench.param_names, c)) for c in itertools.product(*_grid(bench))]


# --- configuration ---------------------------------------------------------

def test_asv_config_builds_each_commit_in_its_own_virtualenv():
    assert CONF["version"] == 1 and CONF["repo"] == ".." and CONF["branches"] == ["main"]
    assert CONF["environment_type"] == "virtualenv"  # a real build per commit
    # The default build also drops NumPy's wheel into the cache ("Found multiple wheels").
    (build,) = CONF["build_command"]
    assert "pip wheel" in build and "--no-deps" in build and "-w {build_cache_dir}" in build
    assert any("--no-deps" in c and "{wheel_file}" in c for c in CONF["install_command"])
    req = CONF["matrix"]["req"]
    assert {"numpy", "torch", "torchvision", "onnx", "onnxruntime", "setuptools"} <= set(req)
    for directory in ("env_dir", "results_dir", "html_dir"):
        assert CONF[directory].startswith("../.asv/")
    assert (BENCH_ROOT / CONF["benchmark_dir"] / "__init__.py").is_file()
    assert ".asv/" in (ROOT / ".gitignore").read_text().split()


def test_build_command_writes_exactly_one_wheel(tmp_path):
    """asv's build step, run as asv runs it: one wheel, cudcn's."""
    (build,) = CONF["build_command"]
    # From a copy of the tracked files, as asv builds a clean checkout.
    source, cache = tmp_path / "src", tmp_path / "cache"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    command = build.replace("{build_cache_dir}", str(cache)).replace("{build_dir}", str(source))
    assert command.startswith("python ")
    subprocess.run([sys.executable, *command.split()[1:]], check=True, capture_output=True,
                   cwd=source)
    wheels = [p.name for p in cache.glob("*.whl")]
    assert len(wheels) == 1 and wheels[0].startswith("cudcn-"), wheels


# --- discovery ---------------------------------------------------------------

def test_the_suite_covers_every_op_both_apis_and_the_peers():
    names = set(BENCHMARKS)
    for op in ("DeformConv2d", "DeformRoIPool", "DeformPSRoIPool", "MSDeformAttn", "DCNv3"):
        numpy_api = {n.rsplit(".", 1)[1] for n in names if n.split(".")[1] == op}
        assert {"time_forward", "time_backward", "peakmem_forward_backward"} <= numpy_api, op
    for op in ("DeformConv2d", "DeformRoIPool", "DeformPSRoIPool"):
        numpy_api = {n.rsplit(".", 1)[1] for n in names if n.split(".")[1] == op}
        assert {"time_forward", "time_backward", "peakmem_forward_backward"} <= numpy_api
        adapter = {n.rsplit(".", 1)[1] for n in names if n.split(".")[1] == f"Torch{op}"}
        assert {"time_forward", "time_forward_backward"} <= adapter
    tracks = {n.rsplit(".", 1)[1] for n in names if _kind(n) == "track"}
    for peer in ("torchvision", "conv2d", "onnxruntime", "roi_align", "ps_roi_align",
                 "grid_sample"):
        assert any(t.endswith(f"_vs_{peer}") for t in tracks), peer
    for name, bench in BENCHMARKS.items():
        assert _grid(bench)[bench.param_names.index("backend")] == ["cpu", "gpu"], name
        if bench.type == "track":
            assert bench.unit.startswith(("cudcn / ", "adapter / ")), name


def test_dtype_grid_is_every_dtype_cudcn_has():
    """The grid is fixed (asv runs benchmarks by parameter index in every
    commit's build); it must still name every dtype the kernels exist for."""
    from cudcn import _kernels

    assert set(common.DTYPES) == set(_kernels.SCALAR_TYPES)
    assert set(_kernels.CPU_DTYPES) | set(_kernels.GPU_DTYPES) <= set(common.DTYPES)
    for bench in BENCHMARKS.values():
        if "dtype" in bench.param_names:
            assert _grid(bench)[bench.param_names.index("dtype")] == list(common.DTYPES)


def _make_variable(name):
    """A variable of the Makefile, its $(...) references expanded."""
    assignments = dict(re.findall(r"^([A-Z_]+) [:?]?= (.*)$", (ROOT / "Makefile").read_text(),
                                  re.M))
    return re.sub(r"\$\(([A-Z_]+)\)", lambda m: _make_variable(m.group(1)), assignments[name])


def _history_selection():
    """{benchmark: [parameter sets]} that `make bench-history` runs, selected
    by asv's own matching of its regex against `name(param, ...)`."""
    from asv.benchmarks import Benchmarks

    entries = [{"name": n, "params": b.params} for n, b in BENCHMARKS.items()]
    conf = type("Conf", (), {"benchmark_dir": "benchmarks"})()
    selected = Benchmarks(conf, entries, _make_variable("HISTORY_BENCH"))
    return {name: [combo for i, combo in enumerate(_combos(BENCHMARKS[name]))
                   if i in selected.benchmark_selection[name]]
            for name in selected}


def test_quick_history_runs_each_op_and_peer_once_at_one_cpu_float32_point():
    selection = _history_selection()
    methods = {tuple(n.split(".")[1:]) for n in selection}
    for op in ("DeformConv2d", "DeformRoIPool", "DeformPSRoIPool"):
        assert {(op, "time_forward"), (op, "time_backward")} <= methods
    assert {("TorchDeformConv2d", "time_forward"),
            ("TorchDeformConv2d", "time_forward_backward")} <= methods
    assert {n for n in BENCHMARKS if ".DeformConv2dVsPeers.track_" in n} <= set(selection)
    tracks = {m for c, m in methods if m.startswith("track_")}
    for peer in ("torchvision", "conv2d", "onnxruntime", "roi_align", "ps_roi_align"):
        assert f"track_forward_vs_{peer}" in tracks
    for name, combos in selection.items():
        assert len(combos) == 1, (name, combos)
        (values,) = combos
        assert values["backend"] == "cpu" and values.get("dtype", "float32") == "float32"
        assert values.get("shape", workloads.QUICK_SHAPE) == workloads.QUICK_SHAPE
        # The poolings' own times with everything switched on, their ratio to
        # torchvision where both compute the same (RoIAlign).
        assert values.get("variant") in (None, "no-offset" if "track" in name else "offset-mask")
    assert len(selection) == 15


# --- one run of each benchmark -----------------------------------------------

def _cheapest_cpu_index(bench):
    """CPU, float32, the smallest shape."""
    return next(i for i, c in enumerate(_combos(bench)) if c["backend"] == "cpu" and
                c.get("dtype", "float32") == "float32" and
                c.get("shape", "N1-C128-28") == "N1-C128-28")


def _setup_and_run(bench, index):
    bench.set_param_idx(index)
    if bench.do_setup():  # asv's skip (NotImplementedError in setup)
        return "skipped"
    try:
        return bench.do_run()
    finally:
        bench.do_teardown()


@pytest.fixture
def small_and_once(monkeypatch):
    """One interleaved round, and small workloads under the same parameter
    names: these runs check the benchmarks' mechanics, not speed."""
    monkeypatch.setattr(interleave, "MIN_ROUNDS", 1)
    monkeypatch.setattr(interleave, "MAX_ROUNDS", 1)
    monkeypatch.setitem(workloads.SHAPES, "N1-C128-28", (1, 8, 9))
    monkeypatch.setattr(workloads, "FEATURE_MAP", (2, 8, 12, 16))
    monkeypatch.setattr(workloads, "ROIS", 16)
    monkeypatch.setattr(workloads, "PS_CLASSES", 2)
    monkeypatch.setattr(workloads, "MSDA_LEVELS", ((4, 4), (2, 3)))
    monkeypatch.setitem(workloads.MSDA_QUERIES, "encoder", 22)
    monkeypatch.setitem(workloads.MSDA_QUERIES, "decoder", 5)
    for stage in workloads.DCNV3_STAGES:
        monkeypatch.setitem(workloads.DCNV3_STAGES, stage, (5, 8, 2))


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_runs_once_on_cpu(name, small_and_once):
    bench = BENCHMARKS[name]
    if bench.type == "time":  # one call, not asv's calibrated repeats
        bench.number, bench.repeat, bench.warmup_time, bench.min_run_count = 1, 1, 0, 1
    onnxruntime_missing = (importlib.util.find_spec("onnxruntime") is None
                           or importlib.util.find_spec("onnx") is None)
    result = _setup_and_run(bench, _cheapest_cpu_index(bench))
    if name.endswith("_vs_onnxruntime") and onnxruntime_missing:
        assert result is None or (isinstance(result, float) and math.isnan(result))
        return
    assert result != "skipped"
    if bench.type == "track":  # per-round ratios, as asv samples
        assert result["number"] == 1 and len(result["samples"]) == 1
        assert all(0 < r < math.inf for r in result["samples"])


def test_gpu_and_missing_dtypes_skip(small_and_once):
    """Combinations the machine or the build cannot run are asv skips, and a
    dtype the CPU kernels have is run, whatever the build has today."""
    from conftest import gpu_count

    from cudcn import _kernels

    for name in ("bench_deform_conv2d.DeformConv2d.time_forward",
                 "bench_torch_adapter.TorchDeformConv2d.time_forward"):
        bench = BENCHMARKS[name]
        for index, values in enumerate(_combos(bench)):
            if values.get("shape", "N1-C128-28") != "N1-C128-28" or values.get(
                    "variant", "no-offset") != "no-offset":
                continue
            bench.set_param_idx(index)
            runnable = ((values["backend"] == "cpu" and values["dtype"] in _kernels.CPU_DTYPES)
                        or (values["backend"] == "gpu" and gpu_count() > 0
                            and values["dtype"] in _kernels.GPU_DTYPES))
            skipped = bench.do_setup()
            bench.do_teardown()
            assert bool(skipped) != runnable, (name, values)


def test_interleaved_rounds_alternate_after_a_warm_up(monkeypatch, fake_clock):
    clock = fake_clock(interleave)
    order = []
    calls = [lambda: order.append("a"), lambda: order.append("b")]
    times = interleave.interleaved_times(calls, rounds=4)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert times == [[0.0] * 4, [0.0] * 4]
    # As many rounds as fit in the budget, within the bounds.
    monkeypatch.setattr(interleave, "BUDGET_SECONDS", 0.0625)  # dyadic: exact sums
    quick = [lambda: clock.sleep(2**-10)]
    assert len(interleave.interleaved_times(quick)[0]) == interleave.MAX_ROUNDS
    slow = [lambda: clock.sleep(2**-5)]
    assert len(interleave.interleaved_times(slow)[0]) == interleave.MIN_ROUNDS
    middling = [lambda: clock.sleep(2**-7)]  # 8 rounds fit
    assert len(interleave.interleaved_times(middling)[0]) == 8


def test_a_ratio_below_one_means_cudcn_is_faster(fake_clock):
    clock = fake_clock(interleave)
    result = interleave.ratio_samples(lambda: clock.sleep(0.004), lambda: clock.sleep(0.02), 3)
    assert result["number"] == 1
    assert result["samples"] == pytest.approx([0.2] * 3)
