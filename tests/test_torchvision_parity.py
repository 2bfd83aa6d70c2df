"""cudcn.deform_conv2d against torchvision.ops.deform_conv2d, output and every gradient."""

import numpy as np
import pytest

import cudcn
from cudcn.testing import deform_conv2d_inputs
from conftest import assert_close
from deform_conv2d_cases import case_params

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

pytestmark = pytest.mark.torchvision
TOLERANCE = {np.float64: 1e-10, np.float32: 1e-4}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", case_params())
def test_matches_torchvision(case, dtype, strategy):
    args = deform_conv2d_inputs(dtype=dtype, seed=20, **case)
    names = ("input", "offset", "weight", "bias", "mask")
    tensors = {n: None if args[n] is None else torch.from_numpy(args[n]).requires_grad_()
               for n in names}
    expected = torchvision.ops.deform_conv2d(
        tensors["input"], tensors["offset"], tensors["weight"], tensors["bias"],
        stride=args["stride"], padding=args["padding"], dilation=args["dilation"],
        mask=tensors["mask"],
    )
    grad_output = np.random.default_rng(21).standard_normal(expected.shape).astype(dtype)
    expected.backward(torch.from_numpy(grad_output))

    out = cudcn.deform_conv2d(**args)
    grads = cudcn.deform_conv2d_backward(grad_output, **args)
    tol = TOLERANCE[dtype]
    scale = max(1.0, float(np.abs(out).max()))
    assert_close(out, expected.detach().numpy(), rtol=tol, atol=tol * scale, what="output")
    for name in names:
        if tensors[name] is None:
            assert getattr(grads, name) is None
            continue
        want = tensors[name].grad.numpy()
        scale = max(1.0, float(np.abs(want).max()))
        assert_close(getattr(grads, name), want, rtol=tol, atol=tol * scale, what=name)
