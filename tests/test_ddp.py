"""cudcn's modules under DistributedDataParallel: 2 processes (gloo, CPU,
127.0.0.1) train exactly as one process does on the whole batch; and so does
the DDP model under torch.compile."""

import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torchvision

import ddp_worker  # noqa: E402  (tests/ is on sys.path: pytest puts it there)

TESTS = pathlib.Path(__file__).resolve().parent

WORLD = 2
TIMEOUT = 180  # seconds; the compiled run takes most of it


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each rank saved: both ranks run as subprocesses, killed after TIMEOUT seconds."""
    tmp = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               TORCHINDUCTOR_CACHE_DIR=str(tmp / "inductor"))  # hermetic compile
    port = _free_port()
    files = [tmp / f"rank{r}.pt" for r in range(WORLD)]
    procs = [subprocess.Popen([sys.executable, str(TESTS / "ddp_worker.py"), str(r), str(WORLD),
                               str(port), str(files[r])], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for r in range(WORLD)]
    deadline = time.monotonic() + TIMEOUT
    try:
        for r, p in enumerate(procs):
            output, _ = p.communicate(timeout=max(deadline - time.monotonic(), 1))
            assert p.returncode == 0, f"rank {r} failed:\n{output}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [torch.load(f) for f in files]


def _single_process():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        model = ddp_worker.make_model()
        return ddp_worker.train(model, list(model.parameters()))
    finally:
        torch.use_deterministic_algorithms(before)


def _assert_matches_single_process(ranks):
    grads, params = _single_process()
    for rank in ranks:
        for step, (got, expected) in enumerate(zip(rank["grads"], grads)):
            for g, e in zip(got, expected):
                assert e.abs().max() > 0
                torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=f"step {step}")
        for p, e in zip(rank["params"], params):
            torch.testing.assert_close(p, e, rtol=1e-10, atol=1e-12)
    # DDP's own invariant: every rank holds the same parameters, bit for bit.
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)


def test_ddp_training_equals_single_process(ranks):
    _assert_matches_single_process([r["eager"] for r in ranks])


def test_compiled_ddp_training_equals_single_process(ranks):
    _assert_matches_single_process([r["compiled"] for r in ranks])
