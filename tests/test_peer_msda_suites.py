"""The multi-scale deformable attention peers' own tests, run against cudcn
as a user replacing them would.

mmcv's tests/test_ops/test_ms_deformable_attn.py: its cases, data and
thresholds, with cudcn.adapters.torch in place of mmcv's CUDA function (on
the CPU here) and of its MultiScaleDeformableAttention. Two adaptations:
mmcv's gradcheck on 1025 channels builds a dense Jacobian (61,500 x 4,100
doubles, 2 GB), so every gradcheck runs torch's fast mode (random
projections of the same Jacobians); mmcv compares with its pure-PyTorch
function, here cudcn.testing.grid_sample_ms_deform_attn, the same
computation written from its definition.

The kernels-community deformable-detr checks, as the issue names them:
relative to max |expected|, float64 1e-10, float32 1e-5, float16 1e-2,
bfloat16 5e-2; im2col_step 1, 2, 64; one and several levels, non-square;
points near pixel boundaries and off the map; D from 1 to 2048.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cudcn.adapters.torch as ct  # noqa: E402
from cudcn.testing import grid_sample_ms_deform_attn  # noqa: E402

pytestmark = pytest.mark.torchvision


def _mmcv_inputs(channels=2, seed=3):
    """mmcv's data: N, M = 1, 2; Lq, L, P = 2, 2, 2; levels (6, 4), (3, 2)."""
    n, m, lq, levels, points = 1, 2, 2, 2, 2
    shapes = torch.as_tensor([(6, 4), (3, 2)], dtype=torch.long)
    starts = torch.cat((shapes.new_zeros((1,)), shapes.prod(1).cumsum(0)[:-1]))
    s = int(shapes.prod(1).sum())
    torch.manual_seed(seed)
    value = torch.rand(n, s, m, channels) * 0.01
    loc = torch.rand(n, lq, m, levels, points, 2)
    weights = torch.rand(n, lq, m, levels, points) + 1e-5
    weights /= weights.sum(-1, keepdim=True).sum(-2, keepdim=True)
    return value, shapes, starts, loc, weights


def test_multiscale_deformable_attention():
    with pytest.raises(ValueError):
        ct.MultiScaleDeformableAttention(embed_dims=256, num_heads=7)
    msda = ct.MultiScaleDeformableAttention(embed_dims=3, num_levels=2, num_heads=3)
    msda.init_weights()
    query = torch.rand(5, 1, 3)
    key = torch.rand(5, 1, 3)
    out = msda(query, key, key, reference_points=torch.rand(1, 5, 2, 2),
               spatial_shapes=torch.tensor([[2, 2], [1, 1]]),
               level_start_index=torch.tensor([0, 4]))
    assert out.shape == (5, 1, 3)


def test_forward_equal_with_pytorch_double():
    value, shapes, starts, loc, weights = _mmcv_inputs()
    expected = grid_sample_ms_deform_attn(value.double(), shapes, loc.double(), weights.double())
    got = ct.ms_deform_attn(value.double(), shapes, starts, loc.double(), weights.double(), 2)
    assert torch.allclose(got, expected)
    assert (got - expected).abs().max() < 1e-18
    assert ((got - expected).abs() / expected.abs()).max() < 1e-15


def test_forward_equal_with_pytorch_float():
    value, shapes, starts, loc, weights = _mmcv_inputs()
    expected = grid_sample_ms_deform_attn(value, shapes, loc, weights)
    got = ct.ms_deform_attn(value, shapes, starts, loc, weights, 2)
    assert torch.allclose(got, expected, rtol=1e-2, atol=1e-3)
    assert (got - expected).abs().max() < 1e-9
    assert ((got - expected).abs() / expected.abs()).max() < 1e-6


@pytest.mark.parametrize("channels", [4, 30, 32, 64, 71, 1025])
def test_gradient_numerical(channels):
    value, shapes, starts, loc, weights = _mmcv_inputs(channels, seed=channels)
    inputs = tuple(t.double().requires_grad_() for t in (value, loc, weights))

    def f(value, loc, weights):
        return ct.ms_deform_attn(value, shapes, starts, loc, weights, 2)

    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


# --- the kernels-community deformable-detr checks -----------------------------------------

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2,
             torch.bfloat16: 5e-2}
LEVELS = {"one-level": [(7, 5)], "multi-level": [(9, 6), (4, 7), (2, 3), (1, 1)]}


def _kernels_inputs(levels, channels, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(levels)
    starts = torch.cat((shapes.new_zeros((1,)), shapes.prod(1).cumsum(0)[:-1]))
    s = int(shapes.prod(1).sum())
    n, lq, m, points = 2, 6, 2, 3
    value = torch.randn(n, s, m, channels, generator=g, dtype=torch.float64)
    loc = torch.rand(n, lq, m, len(levels), points, 2, generator=g, dtype=torch.float64)
    # A third of the points near pixel boundaries (x = k - 0.5 +- 1e-4 in
    # pixel units, centres included), a few off the map.
    size = torch.tensor([[w, h] for h, w in levels], dtype=torch.float64)[:, None, :]
    pixel = torch.floor(loc * size) + 0.5 + 1e-4 * torch.randn(loc.shape, generator=g,
                                                               dtype=torch.float64)
    near = torch.rand(loc.shape[:-1], generator=g) < 1 / 3
    loc = torch.where(near[..., None], pixel / size, loc)
    off = torch.rand(loc.shape[:-1], generator=g) < 0.1
    loc = torch.where(off[..., None], loc * 1.6 - 0.3, loc)
    weights = torch.rand(n, lq, m, len(levels), points, generator=g, dtype=torch.float64)
    return value.to(dtype), shapes, starts, loc.to(dtype), weights.to(dtype)


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("channels", [1, 7, 32, 256, 2048])
@pytest.mark.parametrize("levels", list(LEVELS))
@pytest.mark.parametrize("im2col_step", [1, 2, 64])
def test_forward_against_the_pytorch_reference(dtype, channels, levels, im2col_step):
    value, shapes, starts, loc, weights = _kernels_inputs(LEVELS[levels], channels, dtype,
                                                          seed=channels)
    got = ct.ms_deform_attn(value, shapes, starts, loc, weights, im2col_step)
    # The reference on the same rounded inputs, in float64.
    expected = grid_sample_ms_deform_attn(value.double(), shapes, loc.double(), weights.double())
    assert got.dtype == dtype
    error = (got.double() - expected).abs().max() / expected.abs().max()
    assert error <= TOLERANCE[dtype]


@pytest.mark.parametrize("channels", [1, 32, 2048])
@pytest.mark.parametrize("levels", list(LEVELS))
def test_gradients_against_the_pytorch_reference(channels, levels):
    """float64, points near boundaries but not on them (1e-4 away): every
    gradient relative to its largest value."""
    value, shapes, starts, loc, weights = _kernels_inputs(LEVELS[levels], channels,
                                                          torch.float64, seed=channels + 1)
    ours = [t.clone().requires_grad_() for t in (value, loc, weights)]
    theirs = [t.clone().requires_grad_() for t in (value, loc, weights)]
    out = ct.ms_deform_attn(ours[0], shapes, starts, ours[1], ours[2], 2)
    want = grid_sample_ms_deform_attn(theirs[0], shapes, theirs[1], theirs[2])
    grad = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out.backward(grad)
    want.backward(grad)
    for name, a, b in zip(("value", "sampling_locations", "attention_weights"), ours, theirs):
        scale = b.grad.abs().max()
        assert (a.grad - b.grad).abs().max() <= 1e-10 * scale, name
    assert np.isfinite(ours[1].grad.numpy()).all()
