"""Every asv benchmark runs once on its smallest parameters (not timed here)."""

import importlib.util
import itertools
import pathlib

import pytest

BENCH_DIR = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "benchmarks"


def _suites():
    for path in sorted(BENCH_DIR.glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for value in vars(module).values():
            if isinstance(value, type) and hasattr(value, "params"):
                yield pytest.param(value, id=f"{path.stem}.{value.__name__}")


@pytest.mark.parametrize("suite", list(_suites()))
def test_benchmark_runs(suite):
    names = [n for n in dir(suite) if n.startswith(("time_", "peakmem_"))]
    assert names
    params = min(itertools.product(*suite.params), key=str)
    bench = suite()
    bench.setup(*params)
    for name in names:
        getattr(bench, name)(*params)
