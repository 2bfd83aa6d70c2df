"""Every asv benchmark runs once on the CPU for each of its parameter sets
with the smallest shape; GPU parameters skip cleanly here."""

import importlib
import itertools
import pathlib
import sys

import pytest

BENCH_ROOT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _suites():
    sys.path.insert(0, str(BENCH_ROOT))
    try:
        for path in sorted((BENCH_ROOT / "benchmarks").glob("bench_*.py")):
            module = importlib.import_module(f"benchmarks.{path.stem}")
            for value in vars(module).values():
                if isinstance(value, type) and hasattr(value, "params"):
                    yield pytest.param(value, id=f"{path.stem}.{value.__name__}")
    finally:
        sys.path.remove(str(BENCH_ROOT))


@pytest.mark.parametrize("suite", list(_suites()))
def test_benchmark_runs_on_cpu_and_skips_gpu(suite):
    names = [n for n in dir(suite) if n.startswith(("time_", "peakmem_"))]
    assert {n.split("_")[0] for n in names} == {"time", "peakmem"}
    combos = list(itertools.product(*suite.params))
    cpu = [c for c in combos if "cpu" in c and "float32" in c]
    gpu = [c for c in combos if "gpu" in c]
    params = min(cpu, key=lambda c: (len(str(c)), str(c)))
    if "shape" in suite.param_names:  # the smallest shape keeps this quick
        params = tuple("N1-C128-28" if n == "shape" else v
                       for n, v in zip(suite.param_names, params))
    bench = suite()
    bench.setup(*params)
    for name in names:
        getattr(bench, name)(*params)
    from conftest import gpu_count

    if gpu and not gpu_count():
        with pytest.raises(NotImplementedError):
            suite().setup(*gpu[0])
