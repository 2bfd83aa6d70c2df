"""deterministic=True: bit-identical gradients run after run and for any
number of CPU threads, and the same values as the default path."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import cudcn
import cudcn._device
from conftest import assert_close
from cudcn.testing import deform_conv2d_inputs, deform_psroi_pool_inputs, deform_roi_pool_inputs

# Many samples landing on shared input points: where atomics would reorder sums.
OPS = {
    "deform_conv2d": (cudcn.deform_conv2d, cudcn.deform_conv2d_backward,
                      "deform_conv2d_inputs(batch=3, in_channels=8, out_channels=6, size=(20, 17),"
                      " offset_groups=2, offset_scale=0.7, dtype=np.float32, seed=50)"),
    # Products large enough that OpenBLAS's single-threaded driver gives
    # other bits than its threaded one.
    "deform_conv2d_wide": (cudcn.deform_conv2d, cudcn.deform_conv2d_backward,
                           "deform_conv2d_inputs(batch=2, in_channels=64, out_channels=64,"
                           " size=(28, 28), dtype=np.float32, seed=55)"),
    "deform_roi_pool": (cudcn.deform_roi_pool, cudcn.deform_roi_pool_backward,
                        "deform_roi_pool_inputs(rois=40, channels=6, size=(16, 14), mask=True,"
                        " sampling_ratio=3, dtype=np.float32, seed=51)"),
    "deform_psroi_pool": (cudcn.deform_psroi_pool, cudcn.deform_psroi_pool_backward,
                          "deform_psroi_pool_inputs(rois=40, size=(16, 14), sample_per_part=3,"
                          " dtype=np.float32, seed=52)"),
}

_CHILD = """
import hashlib, json, sys
import numpy as np
import cudcn
from cudcn.testing import *
op, backward, build, strategy = sys.argv[1:5]
cudcn._launch._force_strategy = strategy
args = eval(build)
out = getattr(cudcn, op)(**args)
grad_output = np.random.default_rng(53).standard_normal(out.shape).astype(out.dtype)
grads = getattr(cudcn, backward)(grad_output, deterministic=True, **args)
print(json.dumps({k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in grads._asdict().items()
                  if v is not None}))
"""


def _digests(op, threads, strategy):
    forward, backward, build = OPS[op]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    result = subprocess.run([sys.executable, "-c", _CHILD, forward.__name__, backward.__name__,
                             build, strategy],
                            env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


@pytest.mark.parametrize("deterministic_strategy", ["planes", "sorted"])
@pytest.mark.parametrize("op", OPS)
def test_bit_identical_for_any_thread_count_and_run(op, deterministic_strategy):
    """The CPU's deterministic strategy and the GPU's ('sorted'), each run
    on 1, 2 and 3 threads."""
    one = _digests(op, 1, deterministic_strategy)
    assert one == _digests(op, 2, deterministic_strategy) == _digests(op, 3, deterministic_strategy)
    assert "input" in one and len(one) >= 2


@pytest.mark.parametrize("op", OPS)
def test_deterministic_gradients_equal_the_default_ones(op, strategy):
    forward, backward, build = OPS[op]
    args = eval(build)  # noqa: S307 - a builder call from the table above
    out = forward(**args)
    grad_output = np.random.default_rng(54).standard_normal(out.shape).astype(out.dtype)
    fast = backward(grad_output, **args)
    exact = backward(grad_output, deterministic=True, **args)
    for name, value in fast._asdict().items():
        if value is not None:
            scale = max(1.0, float(np.abs(value).max()))
            assert_close(getattr(exact, name), value, rtol=1e-5, atol=1e-5 * scale, what=name)


ATOMIC_KERNELS = {"cudcn::deform_conv2d_col2im", "cudcn::deform_roi_pool_backward_input",
                  "cudcn::deform_psroi_pool_backward_input"}


def test_deterministic_mode_uses_no_atomic_kernels(launches, monkeypatch):
    monkeypatch.setattr(cudcn._launch, "_force_strategy", None)
    for forward, backward, build in OPS.values():
        args = eval(build)  # noqa: S307
        backward(forward(**args), deterministic=True, **args)
    names = {launch.kernel.name for launch in launches}
    assert "cudcn::deform_conv2d_col2im_pixels" in names
    assert not names & ATOMIC_KERNELS


def test_deterministic_mode_on_a_gpu_sorts_instead_of_atomics(launches):
    """Planned for a GPU (the H100 reference), deterministic mode runs the
    sorted gathers, the default the atomic scatters."""
    target = cudcn._launch.Target("gpu", cudcn._device.REFERENCE["sm_90"], lambda *a: 48)
    with cudcn._launch.planning_for(target):
        for forward, backward, build in OPS.values():
            args = eval(build)  # noqa: S307
            out = forward(**args)
            backward(out, **args)
            default = {launch.kernel.name for launch in launches}
            del launches[:]
            backward(out, deterministic=True, **args)
            deterministic = {launch.kernel.name for launch in launches}
            del launches[:]
            assert default & ATOMIC_KERNELS and not deterministic & ATOMIC_KERNELS
            assert "cudcn::segmented_sum_chunks" in deterministic
            assert not any(name.endswith("_planes") for name in default | deterministic)


_TORCH_CHILD = """
import hashlib, json, sys
import torch
import cudcn.adapters.torch as ct
from cudcn.testing import deform_conv2d_inputs
torch.use_deterministic_algorithms(True)
a = deform_conv2d_inputs(batch=2, in_channels=64, out_channels=64, size=(28, 28), seed=55)
t = {k: torch.from_numpy(v).requires_grad_() for k, v in a.items() if k in
     ("input", "offset", "weight", "bias", "mask")}
y = ct.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], padding=1, mask=t["mask"])
y.backward(torch.from_numpy(a["input"][:, :1].repeat(64, axis=1)))
print(json.dumps({k: hashlib.sha256(v.grad.numpy().tobytes()).hexdigest() for k, v in t.items()}))
"""


@pytest.mark.torchvision
def test_torch_adapter_deterministic_gradients_for_any_thread_count():
    """torch.use_deterministic_algorithms(True) through the adapter: the same
    bits on 1 and 2 threads (its products then run on one thread)."""
    pytest.importorskip("torch")
    digests = []
    for threads in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        result = subprocess.run([sys.executable, "-c", _TORCH_CHILD], env=env,
                                capture_output=True, text=True, check=True)
        digests.append(json.loads(result.stdout.splitlines()[-1]))
    assert digests[0] == digests[1]
    assert len(digests[0]) == 5
