"""The JAX adapter's overhead at (N=2, C=64, 56x56, 3x3, pad 1, float32).

Interleaved medians of cudcn.adapters.jax (jit, and eager) against the NumPy
API, and, per JAX iteration, the time spent outside cudcn's own functions
(dispatch, trace-time checks, the custom call, the result copy and, in the
forward+backward case, XLA's loss ops), and of that the copy of cudcn's
results into XLA's output buffers alone. Run once, on a quiet machine:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python tools/jax_overhead.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

import cudcn
import cudcn.adapters.jax as cj
from cudcn.adapters.jax import _buffers
from cudcn.testing import deform_conv2d_inputs

REPEATS = 40
NAMES = ("input", "offset", "weight", "bias", "mask")


def _timed_inside(fn, inside):
    """``fn`` adding its own duration to ``inside[0]``."""
    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        inside[0] += time.perf_counter() - start
        return result
    return timed


def _timed_copies(copied):
    """_buffers' per-call runner, adding the time of its result copies to
    ``copied[0]`` (its own body, with the copy timed)."""
    def run(self, args, outs):
        with cudcn.workspace_limit(self.workspace_limit):
            results = self.fn(**dict(zip(self.names, args)), **dict(self.static))
        start = time.perf_counter()
        for out, result in zip(outs, results):
            out[...] = result
        copied[0] += time.perf_counter() - start
    return run


def main():
    args = deform_conv2d_inputs(batch=2, in_channels=64, out_channels=64, size=56,
                                dtype=np.float32, offset_scale=1.0, seed=0)
    arrays = [jnp.asarray(args[n]) for n in NAMES]
    forward, backward = cudcn.deform_conv2d, cudcn.deform_conv2d_backward

    def f(*a):
        return cj.deform_conv2d(*a[:4], padding=1, mask=a[4])

    jit_forward = jax.jit(f)
    jit_both = jax.jit(jax.value_and_grad(lambda *a: 0.5 * jnp.sum(f(*a) ** 2),
                                          argnums=tuple(range(5))))
    cases = {
        "forward (jit)": (lambda: forward(**args),
                          lambda: jit_forward(*arrays).block_until_ready()),
        "forward+backward (jit)": (lambda: backward(forward(**args), **args),
                                   lambda: jax.block_until_ready(jit_both(*arrays))),
        "forward (eager)": (lambda: forward(**args), lambda: f(*arrays).block_until_ready()),
    }
    inside, copied = [0.0], [0.0]
    _buffers.Call._run = _timed_copies(copied)
    cudcn.deform_conv2d = _timed_inside(forward, inside)
    cudcn.deform_conv2d_backward = _timed_inside(backward, inside)
    for name, (numpy_run, jax_run) in cases.items():
        for _ in range(3):
            numpy_run()
            jax_run()
        numpy_times, jax_times, outside, copies = [], [], [], []
        for _ in range(REPEATS):
            start = time.perf_counter()
            numpy_run()
            numpy_times.append(time.perf_counter() - start)
            inside[0] = copied[0] = 0.0
            start = time.perf_counter()
            jax_run()
            jax_times.append(time.perf_counter() - start)
            outside.append(jax_times[-1] - inside[0])
            copies.append(copied[0])
        a, b = np.median(numpy_times) * 1e3, np.median(jax_times) * 1e3
        print(f"{name:24s} numpy {a:7.2f} ms  jax {b:7.2f} ms  ratio {b / a:.3f}  "
              f"outside cudcn's functions {np.median(outside) * 1e3:.2f} ms, of which the "
              f"result copy {np.median(copies) * 1e3:.2f} ms ({np.median(copies) / (b / 1e3):.1%})")


if __name__ == "__main__":
    main()
