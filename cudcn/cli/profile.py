"""Where an op's CPU time goes: each kernel, the matrix products and the rest
(Python, NumPy's passes over arrays, the framework), timed inside calls run
back to back. ``cudcn bench`` prints it for deform_conv2d through the torch
adapter, forward and backward.
"""

import collections
import contextlib
import statistics
import time

from .. import _gemm, _launch

GEMMS = "matrix products"
REST = "rest (Python, NumPy, torch)"
TOTAL = "total"


@contextlib.contextmanager
def _timed(totals):
    """Inside the block, each launch adds its time to ``totals`` under its
    kernel's name, each product under GEMMS (with the launches it makes
    itself, the 16-bit casts): the ops call both through their modules, so
    that this replaces them for every op."""
    run, matmul = _launch.run, _gemm.matmul
    in_product = [False]  # a product's own launches (16-bit casts) are the product's

    def timed_run(launch):
        if in_product[0]:
            return run(launch)
        start = time.perf_counter()
        try:
            return run(launch)
        finally:
            totals[launch.kernel.name.rsplit("::", 1)[-1]] += time.perf_counter() - start

    def timed_matmul(*args, **kwargs):
        start = time.perf_counter()
        in_product[0] = True
        try:
            return matmul(*args, **kwargs)
        finally:
            in_product[0] = False
            totals[GEMMS] += time.perf_counter() - start

    _launch.run, _gemm.matmul = timed_run, timed_matmul
    try:
        yield
    finally:
        _launch.run, _gemm.matmul = run, matmul


def phases(call, rounds, before=tuple):
    """{phase: median milliseconds} of ``call`` over ``rounds`` calls after a
    warm-up one, with TOTAL and REST (the total less the timed phases, per
    call). ``before()`` runs untimed before each call and returns its
    arguments. Medians of parts need not add up to the median total."""
    call(*before())
    samples = collections.defaultdict(list)
    for _ in range(rounds):
        arguments = before()
        totals = collections.defaultdict(float)
        with _timed(totals):
            start = time.perf_counter()
            call(*arguments)
            total = time.perf_counter() - start
        for name, seconds in totals.items():
            samples[name].append(seconds)
        samples[REST].append(total - sum(totals.values()))
        samples[TOTAL].append(total)
    return {name: 1e3 * statistics.median(s) for name, s in samples.items()}


def table(columns):
    """Rows of (phase, ms per column) for {column: phases(...)}, the total
    first and the rest last, the others by their largest time."""
    names = {n for p in columns.values() for n in p} - {TOTAL, REST}
    ordered = sorted(names, key=lambda n: -max(p.get(n, 0.0) for p in columns.values()))
    return [(name, *(p.get(name) for p in columns.values()))
            for name in (TOTAL, *ordered, REST)]
