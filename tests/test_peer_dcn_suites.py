"""The DCNv3 / DCNv4 peers' own op tests, run against cudcn as a user
replacing them would (on the CPU here).

InternImage's classification/ops_dcnv3/test.py (its detection/,
segmentation/ and autonomous_driving/ copies are the same file without the
remove_center switch): its constants (8 x 8 input, N, M, D = 2, 4, 16, a 3 x 3 kernel, pad
1, stride 1, dilation 1, offset_scale 2), its data (input U[0, 1) * 0.01,
offsets U[0, 10) pixels, so many points fall off the map, and the mask
U[0, 1) + 1e-5 divided by its sum over each group's points: a sum
normalisation, not a softmax) and its float64 / float32 variants, with
cudcn.adapters.torch.dcnv3 in place of DCNv3Function and
cudcn.testing.grid_sample_dcnv3 in place of dcnv3_core_pytorch (the same
computation; ours pads each axis by its own amount and builds the grid in
the input's dtype, InternImage's in float32). The file prints and asserts
nothing; the assertions here are the torch.allclose it prints: default
tolerances (rtol 1e-5, atol 1e-8) for the float64 forward, rtol 1e-2 and
atol 1e-3 for the float32 forward and for every gradient, float64 or
float32. Its max_abs_err / max_rel_err are printed with no threshold (the
relative one divides by outputs that are 0 wherever every point falls
outside: 65 % of them), so they are not asserted as such; since the
file's atol 1e-3 exceeds most outputs (at most 3e-3), ours are added on
top: the largest error at most 1e-10 (float64 results) or 1e-5 (float32
results, among them the double check's gradients, float32 leaves) of the
largest |expected|, the bounds test_peer_msda_suites.py uses. Adapted:
each check seeds its own generator with the file's seed 3 (the file draws
from one global stream in call order); im2col_step (2) is dropped, cudcn
has none; the forward checks also run with the file's remove_center switch
on (K = 8). Left out:
check_time_cost (timing; no test here asserts on time). The file imports
gradcheck but has no check_gradient_numerical (nor had any version of it,
in any of its copies; its ancestor, Deformable-DETR's ops test, had one);
test_gradient_numerical below is ours: gradcheck in float64 at the
backward checks' shapes and channel counts, in torch's fast mode (the
full Jacobian has some 7,000 columns even for one channel, 3 s on 2 idle
cores and 30 s on busy ones).

DCNv4's DCNv4_op/scripts/test_dcnv4.py and test_dcnv4_bwd.py (the DCNv4
ones; test_flash_deform_attn*.py are for the other op): half precision, a
3 x 3 kernel, pad 1, offset_scale 2, the offsets packed per group after
their 2K offsets with their K mask values (no softmax) into DCNv4's
offset_mask, compared with DCNv3 on the unpacked data by torch.allclose
at rtol 1e-2, atol 1e-3. test_dcnv4.py (the forward): input U[0, 1),
offsets U[-10, 10), mask U[0, 1) + 1e-5, offset_mask zero-padded to a
multiple of 8; it asserts the forward. test_dcnv4_bwd.py: input U[0, 10),
offsets U[-2, 2), the same mask, offset_mask not padded (its pad() is
defined but unused; 108 channels, which cudcn takes: D_pad >= G * 3K),
loss sum / 10; it prints allclose for the input, offset and mask
gradients and the output, asserted here. Both scripts' active shape
(56 x 56, N, M, D = 64, 4, 32) and the four each lists commented out run.
Adapted: DCNv3Function and DCNv4Function are cudcn's dcnv3 and dcnv4;
since those share one kernel, everything is also compared, at the same
tolerance, with cudcn.testing.grid_sample_dcnv4 evaluated on the same
half-rounded inputs (float32 for the forward, float64 with autograd for
the gradients). At a sampling location exactly on a pixel line the
offset's derivative is one-sided: the kernels (DCNv3's, DCNv4's, cudcn's)
take the floor's side (and count a point at exactly -1 as outside), the
grid_sample path's normalisation round trip may land on either side,
and half-rounded offsets put some 0.1 % of the points exactly there;
those offset-gradient entries are compared with dcnv3 only.
The backward script's batch (64, 128 for the last shape) is cut to 8:
batch items are independent and the float64 autograd reference at full
size would take over 10 s per shape on 2 cores. The scripts pass extra
launch-tuning arguments (8, 512, 2, 256, True, True and 8, 128, 2, 256,
False) that the published DCNv4Function does not accept (it picks its
launch itself and runs with softmax off), and both import DCNv3Function
from DCNv4_op's functions package, which has no such module or name (the
repository keeps InternImage's ops_dcnv3 apart, under classification/):
as stored, neither script runs. Left out: their speed tests.
"""

import math

import pytest

torch = pytest.importorskip("torch")

import cudcn.adapters.torch as ct  # noqa: E402
from cudcn.testing import grid_sample_dcnv3, grid_sample_dcnv4  # noqa: E402

pytestmark = pytest.mark.torchvision


# --- InternImage's classification/ops_dcnv3/test.py ---------------------------------------

SIZE, KERNEL, PAD, STRIDE, DILATION, SCALE = 8, 3, 1, 1, 1, 2.0


def _points(remove_center):
    return KERNEL * KERNEL - int(remove_center)


def _out_size():
    return (SIZE + 2 * PAD - (DILATION * (KERNEL - 1) + 1)) // STRIDE + 1


def _internimage_inputs(n, m, d, remove_center=False, seed=3):
    """The file's draws: input * 0.01, offsets * 10, the mask over each
    group's points normalised to sum 1."""
    g = torch.Generator().manual_seed(seed)
    p, out = _points(remove_center), _out_size()
    x = torch.rand(n, SIZE, SIZE, m * d, generator=g) * 0.01
    offset = torch.rand(n, out, out, m * p * 2, generator=g) * 10
    mask = torch.rand(n, out, out, m, p, generator=g) + 1e-5
    mask /= mask.sum(-1, keepdim=True)
    return x, offset, mask.reshape(n, out, out, m * p)


# Ours, on top of the file's allclose (whose atol 1e-3 exceeds most of these
# outputs, at most 3e-3): the error relative to the largest |expected|, as
# the kernels-community checks in test_peer_msda_suites.py bound it.
OURS = {torch.float64: 1e-10, torch.float32: 1e-5}


def _dcnv3_args(m, remove_center=False):
    return dict(kernel_size=KERNEL, stride=STRIDE, padding=PAD, dilation=DILATION, groups=m,
                offset_scale=SCALE, remove_center=remove_center)


@pytest.mark.parametrize("remove_center", [False, True])
def test_forward_equal_with_pytorch_double(remove_center):
    x, offset, mask = (t.double() for t in _internimage_inputs(2, 4, 16, remove_center))
    args = _dcnv3_args(4, remove_center)
    expected = grid_sample_dcnv3(x, offset, mask, **args)
    got = ct.dcnv3(x, offset, mask, **args)
    assert got.dtype == torch.float64 and got.shape == expected.shape
    assert torch.allclose(got, expected)
    assert expected.abs().max() > 0  # not all points fell outside
    assert (got - expected).abs().max() <= OURS[torch.float64] * expected.abs().max()


@pytest.mark.parametrize("remove_center", [False, True])
def test_forward_equal_with_pytorch_float(remove_center):
    x, offset, mask = _internimage_inputs(2, 4, 16, remove_center)
    args = _dcnv3_args(4, remove_center)
    expected = grid_sample_dcnv3(x, offset, mask, **args)
    got = ct.dcnv3(x, offset, mask, **args)
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=1e-2, atol=1e-3)
    assert (got - expected).abs().max() <= OURS[torch.float32] * expected.abs().max()


CHANNELS = [1, 16, 30, 32, 64, 71, 1025]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["double", "float"])
@pytest.mark.parametrize("channels", CHANNELS)
def test_backward_equal_with_pytorch(dtype, channels):
    """N, M = 2, 2; float32 leaves, the op run in ``dtype`` (the double
    check converts inside the graph, so its gradients come back float32);
    sum().backward() through both."""
    data = _internimage_inputs(2, 2, channels)
    args = _dcnv3_args(2)
    ours = [t.clone().requires_grad_() for t in data]
    theirs = [t.clone().requires_grad_() for t in data]
    ct.dcnv3(*(t.to(dtype) for t in ours), **args).sum().backward()
    grid_sample_dcnv3(*(t.to(dtype) for t in theirs), **args).sum().backward()
    for name, a, b in zip(("input", "offset", "mask"), ours, theirs):
        assert a.grad.dtype == torch.float32
        assert torch.allclose(a.grad, b.grad, rtol=1e-2, atol=1e-3), name
        assert (a.grad - b.grad).abs().max() <= OURS[torch.float32] * b.grad.abs().max(), name
    assert ours[0].grad.abs().max() > 0 and ours[1].grad.abs().max() > 0


@pytest.mark.parametrize("channels", CHANNELS)
def test_gradient_numerical(channels):
    """Ours, not the file's (see the module docstring): gradcheck in float64
    at the backward checks' shapes, torch's fast mode."""
    inputs = tuple(t.double().requires_grad_() for t in _internimage_inputs(2, 2, channels))
    args = _dcnv3_args(2)

    def f(x, offset, mask):
        return ct.dcnv3(x, offset, mask, **args)

    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


# --- DCNv4's DCNv4_op/scripts/test_dcnv4.py and test_dcnv4_bwd.py -------------------------

# (H = W, N, M, D): each script's active shape first, then the ones it has
# commented out.
FORWARD_SHAPES = [(56, 64, 4, 32), (28, 64, 8, 32), (14, 64, 16, 32), (7, 64, 32, 32),
                  (8, 128, 4, 16)]
BACKWARD_SHAPES = [(56, 64, 4, 32), (28, 64, 16, 16), (14, 64, 32, 16), (7, 64, 64, 16),
                   (8, 128, 4, 16)]
BACKWARD_BATCH = 8
V4_POINTS = 9  # 3 x 3, remove_center off in both scripts


def _shape_id(shape):
    size, n, m, d = shape
    return f"{size}x{size}-N{n}-M{m}-D{d}"


def _v4_args(m):
    return dict(kernel_size=3, stride=1, padding=1, dilation=1, groups=m, offset_scale=2.0)


def _pack(offset, mask, m, pad_to_8):
    """DCNv4's offset_mask: per group its 2K offsets, then its K mask
    values; optionally zero-padded to a multiple of 8 channels."""
    p = V4_POINTS
    packed = torch.cat([offset.unflatten(-1, (m, 2 * p)), mask], -1).flatten(-2)
    if pad_to_8:
        extra = math.ceil(packed.shape[-1] / 8) * 8 - packed.shape[-1]
        packed = torch.cat([packed, packed.new_zeros(*packed.shape[:-1], extra)], -1)
    return packed


def _unpack(offset_mask, m):
    p = V4_POINTS
    per_group = offset_mask[..., :m * 3 * p].unflatten(-1, (m, 3 * p))
    return per_group[..., :2 * p].flatten(-2), per_group[..., 2 * p:]


def _close(a, b):
    return torch.allclose(a.to(b.dtype), b, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("shape", FORWARD_SHAPES, ids=_shape_id)
def test_dcnv4_forward_equal_with_dcnv3_half(shape):
    size, n, m, d = shape
    p = V4_POINTS
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n, size, size, m * d, generator=g).half()
    offset = ((torch.rand(n, size, size, m * p * 2, generator=g) * 2 - 1) * 10).half()
    mask = (torch.rand(n, size, size, m, p, generator=g) + 1e-5).half()
    offset_mask = _pack(offset, mask, m, pad_to_8=True)
    assert offset_mask.shape[-1] % 8 == 0 and offset_mask.shape[-1] >= m * 3 * p
    args = _v4_args(m)
    v3 = ct.dcnv3(x, offset, mask.flatten(-2), **args)
    v4 = ct.dcnv4(x, offset_mask, **args)
    assert v4.dtype == torch.float16 and v4.shape == (n, size, size, m * d)
    assert _close(v4, v3)
    expected = grid_sample_dcnv4(x.float(), offset_mask.float(), **args)
    assert _close(v4, expected)
    assert _close(v3, expected)


def _on_pixel_lines(offset, size, m):
    """Which offset entries put their point exactly on a pixel line (x or y
    an integer): the formula of SPEC section 7 for the scripts' geometry
    (3 x 3, pad 1, stride 1, dilation 1, offset_scale 2), in float64, where
    it is exact for half offsets."""
    p = V4_POINTS
    o = offset.double().unflatten(-1, (m, p, 2))
    i = torch.arange(3, dtype=torch.float64).repeat_interleave(3)  # x outer
    j = torch.arange(3, dtype=torch.float64).repeat(3)  # y inner
    wo = torch.arange(size, dtype=torch.float64)[None, None, :, None, None]
    ho = torch.arange(size, dtype=torch.float64)[None, :, None, None, None]
    # p0 - half * s + (tap + d) * s with p0 = wo (resp. ho), half = 1, s = 2
    x = wo - 2.0 + (i + o[..., 0]) * 2.0
    y = ho - 2.0 + (j + o[..., 1]) * 2.0
    loc = torch.stack([x, y], -1)
    return (loc == loc.floor()).flatten(-3)


@pytest.mark.parametrize("shape", BACKWARD_SHAPES, ids=_shape_id)
def test_dcnv4_backward_equal_with_dcnv3_half(shape):
    size, _, m, d = shape
    n, p = BACKWARD_BATCH, V4_POINTS
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(n, size, size, m * d, generator=g) * 10).half()
    offset = ((torch.rand(n, size, size, m * p * 2, generator=g) * 2 - 1) * 2).half()
    mask = (torch.rand(n, size, size, m, p, generator=g) + 1e-5).half()
    offset_mask = _pack(offset, mask, m, pad_to_8=False)
    args = _v4_args(m)

    v3_leaves = [t.clone().requires_grad_() for t in (x, offset, mask)]
    v3 = ct.dcnv3(v3_leaves[0], v3_leaves[1], v3_leaves[2].flatten(-2), **args)
    (v3.sum() / 10).backward()
    v4_leaves = [t.clone().requires_grad_() for t in (x, offset_mask)]
    v4 = ct.dcnv4(*v4_leaves, **args)
    (v4.sum() / 10).backward()
    ref_leaves = [t.double().requires_grad_() for t in (x, offset_mask)]
    ref = grid_sample_dcnv4(*ref_leaves, **args)
    (ref.sum() / 10).backward()

    v4_offset_grad, v4_mask_grad = _unpack(v4_leaves[1].grad, m)
    ref_offset_grad, ref_mask_grad = _unpack(ref_leaves[1].grad, m)
    assert v4_leaves[0].grad.dtype == v4_leaves[1].grad.dtype == torch.float16

    # The script's comparisons: DCNv4 against DCNv3.
    assert _close(v4_leaves[0].grad.float(), v3_leaves[0].grad.float())
    assert _close(v4_offset_grad.float(), v3_leaves[1].grad.float())
    assert _close(v4_mask_grad, v3_leaves[2].grad)
    assert _close(v4, v3)
    # The same, against the pure-PyTorch path.
    assert _close(v4, ref)
    assert _close(v4_leaves[0].grad, ref_leaves[0].grad)
    assert _close(v4_mask_grad, ref_mask_grad)
    kinks = _on_pixel_lines(offset, size, m)
    assert kinks.float().mean() < 0.01
    assert _close(v4_offset_grad[~kinks], ref_offset_grad[~kinks])
