"""deform_conv2d's offset gradient on the border of the image (SPEC section 1).

The derivative is the right-hand one on the cell [floor(y), floor(y) + 1]
wherever y >= -1 and x >= -1 (and y < H, x < W): a point exactly on y = -1
samples 0 but has torchvision's one-sided gradient. That is where zero
offsets with padding 1 put the first row and column of samples, so every
fresh Pack layer starts there.
"""

import numpy as np
import pytest

import cudcn
from cudcn import reference


def _torch():
    torch = pytest.importorskip("torch")
    return torch, pytest.importorskip("torchvision")


def _torchvision_grads(grad_output, x, offset, weight, mask, **geometry):
    torch, torchvision = _torch()
    tensors = [torch.from_numpy(a).requires_grad_() for a in (x, offset, weight, mask)]
    out = torchvision.ops.deform_conv2d(tensors[0], tensors[1], tensors[2], mask=tensors[3],
                                        **geometry)
    out.backward(torch.from_numpy(grad_output))
    return out.detach().numpy(), [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize("geometry", [dict(padding=1), dict(padding=(1, 2), dilation=(1, 2)),
                                      dict(padding=(3, 1), stride=(2, 1), dilation=(2, 1))],
                         ids=["pad1", "pad1x2-dil1x2", "pad3x1-stride2x1-dil2x1"])
@pytest.mark.torchvision
def test_zero_offsets_with_padding_match_torchvision(geometry, strategy):
    torch, _ = _torch()
    rng = np.random.default_rng(60)
    x = rng.standard_normal((2, 3, 7, 6))
    weight = rng.standard_normal((4, 3, 3, 3))
    h_out, w_out = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight),
                                              **geometry).shape[2:]
    offset = np.zeros((2, 18, h_out, w_out))
    mask = rng.uniform(0.2, 1.0, (2, 9, h_out, w_out))
    grad_output = rng.standard_normal((2, 4, h_out, w_out))
    expected_out, expected = _torchvision_grads(grad_output, x, offset, weight, mask, **geometry)
    out = cudcn.deform_conv2d(x, offset, weight, mask=mask, **geometry)
    grads = cudcn.deform_conv2d_backward(grad_output, x, offset, weight, mask=mask, **geometry)
    np.testing.assert_allclose(out, expected_out, rtol=1e-12, atol=1e-12)
    for name, want in zip(("input", "offset", "weight", "mask"), expected):
        np.testing.assert_allclose(getattr(grads, name), want, rtol=1e-12, atol=1e-12,
                                   err_msg=name)
    # Samples exactly on y = -1 (with x inside) really get a y gradient.
    stride, pad, dil = (np.broadcast_to(geometry.get(k, d), 2) for k, d in
                        (("stride", 1), ("padding", 0), ("dilation", 1)))
    on_line = []
    for k in range(9):
        i, j = divmod(k, 3)
        ys = np.arange(h_out) * stride[0] - pad[0] + i * dil[0]
        xs = np.arange(w_out) * stride[1] - pad[1] + j * dil[1]
        rows, cols = np.nonzero((ys[:, None] == -1) & (xs[None, :] >= 0) & (xs[None, :] < 6))
        on_line += list(grads.offset[:, 2 * k, rows, cols].ravel())
    assert len(on_line) > 0 and np.abs(on_line).max() > 0.1


# Sampling points of a 1x1 kernel placed exactly on the lines of interest of a
# 5 x 4 image, with x (or y) inside and off the integers.
LINES = {
    "y=-1": (-1.0, 1.3), "x=-1": (2.6, -1.0), "y=-1,x=-1": (-1.0, -1.0),
    "y=H-1": (4.0, 1.3), "x=W-1": (2.6, 3.0), "y=H-1,x=W-1": (4.0, 3.0),
    "y=0": (0.0, 1.3), "interior-integer": (2.0, 1.0),
    "y=H": (5.0, 1.3), "x=W": (2.6, 4.0), "y<-1": (-1.25, 1.3), "x<-1": (2.6, -1.5),
}


STRIDE = (4, 3)


def _one_point(y, x):
    rng = np.random.default_rng(61)
    inp = rng.standard_normal((1, 2, 5, 4))
    weight = rng.standard_normal((3, 2, 1, 1))
    # With stride (4, 3), output pixel (0, 0) samples at (y, x); the other
    # three at the image's corners (0, 3), (4, 0), (4, 3).
    offset = np.zeros((1, 2, 2, 2))
    offset[0, 0, 0, 0], offset[0, 1, 0, 0] = y, x
    mask = rng.uniform(0.2, 1.0, (1, 1, 2, 2))
    grad_output = rng.standard_normal((1, 3, 2, 2))
    return inp, offset, weight, mask, grad_output


@pytest.mark.parametrize("point", LINES.values(), ids=LINES.keys())
def test_points_on_the_border_lines_match_one_sided_differences(point, strategy):
    inp, offset, weight, mask, grad_output = _one_point(*point)
    grads = cudcn.deform_conv2d_backward(grad_output, inp, offset, weight, mask=mask,
                                         stride=STRIDE)

    def loss(off):
        out = reference.deform_conv2d(inp, off, weight, mask=mask, stride=STRIDE)
        return float(np.sum(out * grad_output))

    # Right-hand finite differences of the float64 reference.
    h = 1e-7
    for axis in (0, 1):
        step = np.zeros_like(offset)
        step[0, axis, 0, 0] = h
        numeric = (loss(offset + step) - loss(offset)) / h
        assert grads.offset[0, axis, 0, 0] == pytest.approx(numeric, rel=1e-5, abs=1e-6), axis
    y, x = point
    if y < -1 or y >= 5 or x < -1 or x >= 4:
        assert grads.offset[0, :, 0, 0].tolist() == [0.0, 0.0]
    elif (y == -1) != (x == -1):  # on one line, inside along the other: a gradient
        assert np.abs(grads.offset[0, :, 0, 0]).max() > 0.01


@pytest.mark.torchvision
@pytest.mark.parametrize("point", LINES.values(), ids=LINES.keys())
def test_points_on_the_border_lines_match_torchvision(point, strategy):
    inp, offset, weight, mask, grad_output = _one_point(*point)
    grads = cudcn.deform_conv2d_backward(grad_output, inp, offset, weight, mask=mask,
                                         stride=STRIDE)
    _, expected = _torchvision_grads(grad_output, inp, offset, weight, mask, stride=STRIDE)
    for name, want in zip(("input", "offset", "weight", "mask"), expected):
        np.testing.assert_allclose(getattr(grads, name), want, rtol=1e-12, atol=1e-12,
                                   err_msg=name)


@pytest.mark.torchvision
def test_a_point_on_y_minus_1_samples_zero_even_from_nan(strategy):
    """It reads no input value: a NaN in row 0 does not reach the output, as
    in torchvision, though the gradient there is taken on the cell [-1, 0]."""
    inp, offset, weight, mask, grad_output = _one_point(-1.0, 1.5)
    inp[0, :, 0, :] = np.nan
    torch, torchvision = _torch()
    out = cudcn.deform_conv2d(inp, offset, weight, mask=mask, stride=STRIDE)
    expected = torchvision.ops.deform_conv2d(*(torch.from_numpy(a) for a in (inp, offset, weight)),
                                             mask=torch.from_numpy(mask), stride=STRIDE).numpy()
    assert np.isfinite(out[0, :, 0, 0]).all()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
