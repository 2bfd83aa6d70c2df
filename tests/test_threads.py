"""cudcn from several Python threads at once: no hang and no changed bit, for
cudcn's results and for the user's own NumPy and torch products beside it
(issue 36). Each case runs tests/thread_stress.py in a child process with a
watchdog, so that a hang fails the case instead of stopping the suite."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

SECONDS = 2  # per thread; the child's own watchdog allows 60 s more
CASES = {
    "alone-numpy": ("alone-numpy", {}),
    "alone-torch": ("alone-torch", {}),
    "mixed": ("mixed", {}),
    # The user's NumPy on one BLAS thread (OpenBLAS's single-threaded driver).
    "mixed-openblas-1-thread": ("mixed", {"OPENBLAS_NUM_THREADS": "1"}),
}


def _stress(mode, env):
    script = pathlib.Path(__file__).with_name("thread_stress.py")
    try:
        result = subprocess.run([sys.executable, str(script), mode, str(SECONDS)],
                                env={**os.environ, **env}, capture_output=True, text=True,
                                timeout=SECONDS + 180)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{mode}: the child hung past its own watchdog")
    assert result.returncode == 0, f"{mode} exited {result.returncode}:\n" \
                                   f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES)
def test_every_thread_finishes_with_single_threaded_bits(case):
    mode, env = CASES[case]
    if mode != "alone-numpy":
        pytest.importorskip("torch")
    threads = _stress(mode, env)
    for thread in threads:
        # Each thread made calls, so the threads really overlapped.
        assert thread["calls"] >= 1, threads
        assert thread["wrong"] == 0, threads
