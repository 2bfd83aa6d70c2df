"""cudcn's DCNv3 and DCNv4 layers against stand-ins of InternImage's and
DCNv4's (tests/internimage_reference.py: their state_dict keys, creation
order and forward around the grid_sample path), the ops dcnv3/dcnv4
against the grid_sample path, and the grid_sample path itself against a
loop written straight from SPEC section 7."""

import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cudcn.adapters.torch as ct  # noqa: E402
from cudcn.adapters.torch.dcn_modules import DCNv3, DCNv4  # noqa: E402
from cudcn.testing import grid_sample_dcnv3, grid_sample_dcnv4  # noqa: E402
from internimage_reference import ReferenceDCNv3, ReferenceDCNv4  # noqa: E402

pytestmark = pytest.mark.torchvision


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _bilinear_zero_corners(image, y, x):
    """image (H, W, C) at (y, x), corners outside the image counting as 0."""
    h, w, _ = image.shape
    y0, x0 = math.floor(y), math.floor(x)
    value = np.zeros(image.shape[-1])
    for cy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for cx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= cy < h and 0 <= cx < w:
                value += wy * wx * image[cy, cx]
    return value


def spec_dcnv3(input, offset, mask, kernel_size, stride, padding, dilation, groups,
               offset_scale, remove_center):
    """SPEC section 7, read literally: NumPy float64 loops over every output,
    group and kernel point."""
    image, offset, mask = (t.detach().numpy() for t in (input, offset, mask))
    (kh, kw), (sh, sw) = _pair(kernel_size), _pair(stride)
    (ph, pw), (dh, dw) = _pair(padding), _pair(dilation)
    n, h, w, channels = image.shape
    group_channels = channels // groups
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    kernel_points = [(i, j) for i in range(kw) for j in range(kh)]  # k = i * kh + j
    if remove_center:
        del kernel_points[len(kernel_points) // 2]
    k_count, s = len(kernel_points), offset_scale
    out = np.zeros((n, ho, wo, channels))
    for b, oy, ox, g in itertools.product(range(n), range(ho), range(wo), range(groups)):
        p0_x = (dw * (kw - 1)) // 2 - pw + ox * sw
        p0_y = (dh * (kh - 1)) // 2 - ph + oy * sh
        channel_slice = slice(g * group_channels, (g + 1) * group_channels)
        for k, (i, j) in enumerate(kernel_points):
            dx, dy = offset[b, oy, ox, 2 * (g * k_count + k):2 * (g * k_count + k) + 2]
            x = p0_x - ((dw * (kw - 1)) // 2) * s + (i * dw + dx) * s
            y = p0_y - ((dh * (kh - 1)) // 2) * s + (j * dh + dy) * s
            if -1 < y < h and -1 < x < w:
                out[b, oy, ox, channel_slice] += (mask[b, oy, ox, g * k_count + k]
                                                  * _bilinear_zero_corners(
                                                      image[b, :, :, channel_slice], y, x))
    return torch.from_numpy(out)


OP_CASES = [
    dict(kernel_size=3, stride=1, padding=1, dilation=1, groups=2, offset_scale=1.0),
    dict(kernel_size=3, stride=2, padding=0, dilation=1, groups=1, offset_scale=1.0),
    dict(kernel_size=3, stride=1, padding=(2, 0), dilation=1, groups=2, offset_scale=1.0),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=3,
         offset_scale=0.5),
    dict(kernel_size=3, stride=(1, 2), padding=(0, 1), dilation=2, groups=3, offset_scale=2.0,
         remove_center=True),
    dict(kernel_size=5, stride=1, padding=(3, 1), dilation=1, groups=2, offset_scale=0.5,
         remove_center=True),
]
OP_IDS = ["3x3", "valid-stride2", "pad_h!=pad_w", "3x5-dilated", "remove-center-3x3",
          "remove-center-5x5"]


def _op_inputs(case, batch=2, size=(6, 7), group_channels=3, dtype=torch.float64, seed=0):
    """Random input, offset and mask for one of OP_CASES; offsets of a few
    pixels, so that some points fall outside the image."""
    g = torch.Generator().manual_seed(seed)
    (kh, kw), (sh, sw) = _pair(case["kernel_size"]), _pair(case["stride"])
    (ph, pw), (dh, dw) = _pair(case["padding"]), _pair(case["dilation"])
    h, w = size
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    groups = case["groups"]
    points = kh * kw - int(case.get("remove_center", False))
    input = torch.randn(batch, h, w, groups * group_channels, generator=g, dtype=dtype)
    offset = 2 * torch.randn(batch, ho, wo, groups * points * 2, generator=g, dtype=dtype)
    mask = torch.rand(batch, ho, wo, groups * points, generator=g, dtype=dtype)
    return input, offset, mask


def _pack_offset_mask(offset, mask, groups, junk_seed=None):
    """DCNv4's packing: per group K (dx, dy) pairs then K mask values, padded
    to a multiple of 8 (with junk if junk_seed is given, zeros otherwise)."""
    *lead, _ = mask.shape
    packed = torch.cat([offset.reshape(*lead, groups, -1), mask.reshape(*lead, groups, -1)],
                       -1).flatten(-2)
    width = math.ceil(packed.shape[-1] / 8) * 8
    padding = torch.zeros(*lead, width - packed.shape[-1], dtype=packed.dtype)
    if junk_seed is not None:
        padding = torch.randn(padding.shape, dtype=packed.dtype,
                              generator=torch.Generator().manual_seed(junk_seed))
    return torch.cat([packed, padding], -1)


@pytest.mark.parametrize("case", OP_CASES, ids=OP_IDS)
def test_grid_sample_dcnv3_follows_the_spec(case):
    input, offset, mask = _op_inputs(case)
    got = grid_sample_dcnv3(input, offset, mask, **case)
    torch.testing.assert_close(got, spec_dcnv3(input, offset, mask, **{
        "remove_center": False, **case}), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", OP_CASES[::2], ids=OP_IDS[::2])
def test_grid_sample_dcnv4_is_dcnv3_on_the_unpacked_channels(case):
    input, offset, mask = _op_inputs(case, seed=1)
    offset_mask = _pack_offset_mask(offset, mask, case["groups"], junk_seed=2)
    torch.testing.assert_close(grid_sample_dcnv4(input, offset_mask, **case),
                               grid_sample_dcnv3(input, offset, mask, **case),
                               rtol=0, atol=0)


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


@pytest.mark.parametrize("case", OP_CASES, ids=OP_IDS)
def test_ops_match_the_grid_sample_path(case):
    """The ops behind the modules, in geometries the modules cannot reach
    (pad_h != pad_w, stride, non-square kernels): values and gradients,
    float64. Random offsets keep every point off the bilinear kinks."""
    tensors = _op_inputs(case, seed=3)
    ours, theirs = _leaves(*tensors), _leaves(*tensors)
    out = ct.dcnv3(*ours, **case)
    want = grid_sample_dcnv3(*theirs, **case)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    grad = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(4))
    out.backward(grad)
    want.backward(grad)
    for name, a, b in zip(("input", "offset", "mask"), ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10, msg=name)

    input, offset, mask = tensors
    packed = _pack_offset_mask(offset, mask, case["groups"], junk_seed=5)
    ours, theirs = _leaves(input, packed), _leaves(input, packed)
    out = ct.dcnv4(*ours, **case)
    want = grid_sample_dcnv4(*theirs, **case)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    out.backward(grad)
    want.backward(grad)
    for name, a, b in zip(("input", "offset_mask"), ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10, msg=name)


DCNV3_CONFIGS = [
    dict(channels=8, group=2),
    dict(channels=12, group=3, kernel_size=5, pad=2, offset_scale=0.5),
    dict(channels=8, group=4, dilation=2, pad=2, dw_kernel_size=5),
    dict(channels=8, group=2, center_feature_scale=True),
    dict(channels=8, group=2, kernel_size=5, pad=2, remove_center=True, dw_kernel_size=3),
    dict(channels=6, group=1, norm_layer="BN", act_layer="ReLU", center_feature_scale=True,
         remove_center=True),
    dict(channels=8, group=2, act_layer="SiLU", offset_scale=2.0),
]
DCNV3_IDS = ["default", "5x5-groups3", "dilated", "center-scale", "remove-center-5x5",
             "bn-relu-center-scale-remove-center", "silu-offset-scale2"]

DCNV4_CONFIGS = [
    dict(channels=8, group=2),
    dict(channels=8, group=2, dw_kernel_size=3),
    dict(channels=12, group=3, kernel_size=5, pad=2, dw_kernel_size=5, offset_scale=0.5),
    dict(channels=8, group=4, dilation=2, pad=2, center_feature_scale=True),
    dict(channels=8, group=2, remove_center=True, output_bias=False),
    dict(channels=8, group=2, without_pointwise=True, center_feature_scale=True,
         dw_kernel_size=3),
]
DCNV4_IDS = ["default", "dw-conv", "5x5-groups3-dw", "dilated-center-scale",
             "remove-center-no-output-bias", "without-pointwise-center-scale-dw"]


def _randomise(module, seed):
    """Every parameter and buffer random (the default initialisation leaves
    the offsets at zero, on the bilinear kinks), the same for any two
    modules with the same state_dict keys."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
            else:
                tensor.copy_(0.5 * torch.randn(tensor.shape, generator=g))
    return module


def _pair_of_modules(reference_class, cudcn_class, config, dtype, seed=0):
    reference = _randomise(reference_class(**config), seed).to(dtype).eval()
    ours = cudcn_class(**config).to(dtype).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def _compare(reference, ours, inputs, extra=(), rtol=1e-10, atol=1e-10, grads=True):
    """Outputs, and with ``grads`` the gradients of the input and of every
    parameter by name, for one random output gradient."""
    ours_input, reference_input = _leaves(inputs, inputs)
    out = ours(ours_input, *extra)
    want = reference(reference_input, *extra)
    torch.testing.assert_close(out, want, rtol=rtol, atol=atol)
    if not grads:
        return
    grad = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(9))
    out.backward(grad)
    want.backward(grad)
    torch.testing.assert_close(ours_input.grad, reference_input.grad, rtol=rtol, atol=atol,
                               msg="input")
    reference_params = dict(reference.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, reference_params[name].grad, rtol=rtol,
                                   atol=atol, msg=name)


def _channels_last_input(channels, size=(5, 6), batch=2, dtype=torch.float64, seed=7):
    return torch.randn(batch, *size, channels, dtype=dtype,
                       generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("config", DCNV3_CONFIGS, ids=DCNV3_IDS)
def test_dcnv3_loads_internimage_weights_and_agrees(config):
    reference, ours = _pair_of_modules(ReferenceDCNv3, DCNv3, config, torch.float64)
    _compare(reference, ours, _channels_last_input(config["channels"]))


@pytest.mark.parametrize("config", DCNV4_CONFIGS, ids=DCNV4_IDS)
def test_dcnv4_loads_dcnv4_weights_and_agrees(config):
    reference, ours = _pair_of_modules(ReferenceDCNv4, DCNv4, config, torch.float64)
    tokens = _channels_last_input(config["channels"]).flatten(1, 2)
    _compare(reference, ours, tokens, extra=((5, 6),))


def test_dcnv4_takes_a_square_map_without_shape():
    config = DCNV4_CONFIGS[1]
    reference, ours = _pair_of_modules(ReferenceDCNv4, DCNv4, config, torch.float64)
    tokens = _channels_last_input(config["channels"], size=(6, 6)).flatten(1, 2)
    _compare(reference, ours, tokens)


@pytest.mark.parametrize("config", DCNV3_CONFIGS[:2] + DCNV3_CONFIGS[5:6],
                         ids=DCNV3_IDS[:2] + DCNV3_IDS[5:6])
def test_dcnv3_float32(config):
    reference, ours = _pair_of_modules(ReferenceDCNv3, DCNv3, config, torch.float32)
    _compare(reference, ours, _channels_last_input(config["channels"], dtype=torch.float32),
             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config", DCNV4_CONFIGS[1:2] + DCNV4_CONFIGS[5:],
                         ids=DCNV4_IDS[1:2] + DCNV4_IDS[5:])
def test_dcnv4_float32(config):
    reference, ours = _pair_of_modules(ReferenceDCNv4, DCNv4, config, torch.float32)
    tokens = _channels_last_input(config["channels"], dtype=torch.float32).flatten(1, 2)
    _compare(reference, ours, tokens, extra=((5, 6),), rtol=1e-4, atol=1e-5)


def _assert_same_state(a, b):
    a_state, b_state = a.state_dict(), b.state_dict()
    assert list(a_state) == list(b_state)
    for name in a_state:
        torch.testing.assert_close(a_state[name], b_state[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("reference_class, cudcn_class, config, size", [
    *[(ReferenceDCNv3, DCNv3, c, (5, 6)) for c in DCNV3_CONFIGS],
    *[(ReferenceDCNv4, DCNv4, c, (6, 6)) for c in DCNV4_CONFIGS],
], ids=[f"dcnv3-{i}" for i in DCNV3_IDS] + [f"dcnv4-{i}" for i in DCNV4_IDS])
def test_one_seed_gives_the_originals_parameters(reference_class, cudcn_class, config, size):
    """Same modules drawn in the same order; ``_reset_parameters`` (which the
    models' init_weights call) draws the same again; and the fresh layers
    (zero offsets, uniform mask) compute the same."""
    torch.manual_seed(11)
    reference = reference_class(**config)
    torch.manual_seed(11)
    ours = cudcn_class(**config)
    _assert_same_state(ours, reference)
    torch.manual_seed(12)
    reference._reset_parameters()
    torch.manual_seed(12)
    ours._reset_parameters()
    _assert_same_state(ours, reference)
    inputs = _channels_last_input(config["channels"], size=size, dtype=torch.float32)
    if cudcn_class is DCNv4:
        inputs = inputs.flatten(1, 2)
    _compare(reference.eval(), ours.eval(), inputs, rtol=1e-5, atol=1e-6, grads=False)


@pytest.mark.parametrize("cudcn_class, kwargs, message", [
    (DCNv3, dict(channels=10, group=4), "channels must be divisible by group"),
    (DCNv4, dict(channels=10, group=4), "channels must be divisible by group"),
    (DCNv3, dict(group=0), "group must be an int >= 1"),
    (DCNv4, dict(kernel_size=2.5), "kernel_size must be an int >= 1"),
    (DCNv3, dict(pad=-1), "pad must be an int >= 0"),
    (DCNv3, dict(kernel_size=4, pad=1, dilation=2, remove_center=True), "odd kernel size"),
    (DCNv4, dict(kernel_size=4, pad=3, dilation=2, remove_center=True), "odd kernel size"),
    (DCNv3, dict(stride=2), "keep the input's size"),
    (DCNv4, dict(stride=2), "keep the input's size"),
    (DCNv3, dict(kernel_size=5, pad=1), "keep the input's size"),
    (DCNv4, dict(pad=0), "keep the input's size"),
    (DCNv3, dict(kernel_size=4, pad=3, dilation=2),
     "kernel must be an odd int, got 4 \\(dw_kernel_size, which defaults to kernel_size\\)"),
    (DCNv4, dict(dw_kernel_size=2), "kernel must be an odd int, got 2 \\(dw_kernel_size\\)"),
    (DCNv3, dict(norm_layer="GN"), "norm_layer must be 'LN' or 'BN'"),
    (DCNv3, dict(act_layer="Tanh"), "act_layer must be one of"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_constructor_errors_are_clear_value_errors(cudcn_class, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cudcn_class(**kwargs)


def test_even_kernel_with_even_dilation_keeps_the_size():
    layer = DCNv3(channels=8, group=2, kernel_size=4, pad=3, dilation=2, dw_kernel_size=3)
    assert layer(_channels_last_input(8, dtype=torch.float32)).shape == (2, 5, 6, 8)


def test_dcnv4_ignores_dcnv3_arguments_as_dcnv4_does():
    layer = DCNv4(channels=8, group=2, act_layer="GELU", norm_layer="LN")
    assert layer.offset_mask.out_features == 56  # 2 groups * 9 points * 3, padded to 8


@pytest.mark.parametrize("shape, message", [(None, "pass shape=\\(H, W\\)"),
                                            ((4, 6), "gives 4 x 6 = 24")])
def test_dcnv4_token_count_must_match_the_shape(shape, message):
    tokens = _channels_last_input(8, size=(5, 6), dtype=torch.float32).flatten(1, 2)
    with pytest.raises(ValueError, match=message):
        DCNv4(channels=8, group=2)(tokens, shape)
