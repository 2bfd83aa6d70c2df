"""Child process of test_threads.py: cudcn called from several Python threads
at once, alone or beside the user's own NumPy and torch products, every
result compared with its single-threaded value.

    python thread_stress.py MODE SECONDS

MODE "alone-numpy": 4 threads of cudcn's NumPy API (forward + backward),
torch not imported. "alone-torch": torch imported first, 2 threads of the
NumPy API and 2 of the torch adapter (forward + .backward()). "mixed": the
adapter, the NumPy API (forward + backward), two threads of NumPy products
and one of torch matmuls. Each thread runs for SECONDS; if one has not
finished SECONDS + 60 s later, the watchdog prints every thread's stack and
exits 3 (a hang fails the test instead of stopping the suite). On success
it prints one JSON line: calls and mismatches per thread.
"""

import faulthandler
import json
import os
import sys
import threading
import time

MODE, SECONDS = sys.argv[1], float(sys.argv[2])
if MODE != "alone-numpy":
    import torch  # first, as PyTorch users import it

import numpy as np

import cudcn
from cudcn.testing import deform_conv2d_inputs

ARGS = deform_conv2d_inputs(batch=2, in_channels=32, out_channels=32, size=24, mask=True,
                            dtype=np.float32, offset_scale=1.0, seed=36)
GRAD = np.random.default_rng(37).standard_normal((2, 32, 24, 24)).astype(np.float32)


def numpy_api():
    out = cudcn.deform_conv2d(**ARGS)
    return [out, *(g for g in cudcn.deform_conv2d_backward(GRAD, **ARGS) if g is not None)]


def adapter():
    from cudcn.adapters.torch import deform_conv2d

    names = ("input", "offset", "weight", "bias", "mask")
    tensors = {k: torch.from_numpy(ARGS[k].copy()).requires_grad_() for k in names}
    out = deform_conv2d(tensors["input"], tensors["offset"], tensors["weight"], tensors["bias"],
                        padding=ARGS["padding"], mask=tensors["mask"])
    out.backward(torch.from_numpy(GRAD))
    return [out.detach().numpy(), *(tensors[k].grad.numpy() for k in names)]


PRODUCT = np.random.default_rng(38).standard_normal((384, 384)).astype(np.float32)


def numpy_product():
    return [PRODUCT @ PRODUCT]


def torch_product():
    t = torch.from_numpy(PRODUCT[:256, :256].copy())
    return [(t @ t).numpy()]


WORKS = {"numpy_api": numpy_api, "adapter": adapter, "numpy_product": numpy_product,
         "torch_product": torch_product}
THREADS = {
    "alone-numpy": ["numpy_api"] * 4,
    "alone-torch": ["numpy_api", "numpy_api", "adapter", "adapter"],
    "mixed": ["adapter", "numpy_api", "numpy_product", "numpy_product", "torch_product"],
}[MODE]


def main():
    # Single-threaded values, each computed before any thread starts.
    want = {name: WORKS[name]() for name in set(THREADS)}
    results = [None] * len(THREADS)
    start = threading.Barrier(len(THREADS))

    def run(i, name):
        calls = wrong = 0
        worst = 0.0
        start.wait()
        until = time.monotonic() + SECONDS
        while True:  # at least one call, however late the thread starts
            got = WORKS[name]()
            calls += 1
            if not all(np.array_equal(w, g) for w, g in zip(want[name], got)):
                wrong += 1
                worst = max(worst, max(float(np.max(np.abs(w - g)))
                                       for w, g in zip(want[name], got)))
            if time.monotonic() >= until:
                break
        results[i] = {"work": name, "calls": calls, "wrong": wrong, "worst": worst}

    threads = [threading.Thread(target=run, args=(i, name), daemon=True)
               for i, name in enumerate(THREADS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + SECONDS + 60
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        print(f"hung: {[r for r in results if r is not None]}", flush=True)
        faulthandler.dump_traceback(all_threads=True)
        os._exit(3)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
