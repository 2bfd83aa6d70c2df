"""dcnv3 / dcnv4 (SPEC section 7): forward against the float64 reference in
every dtype and geometry, gradients against finite differences, both
packings, every strategy's kernels, bad input, NaN and inf offsets, empty
batches."""

import numpy as np
import pytest

import cudcn
from cudcn import reference
from cudcn.testing import dcnv3_inputs
from conftest import assert_close, assert_directional_gradients, numpy_dtype

CASES = {
    "3x3": dict(),
    "internimage-like": dict(batch=1, size=(6, 6), groups=4, group_channels=16),
    "rect-kernel-stride-dilation": dict(size=(9, 8), kernel=(3, 5), stride=(2, 1),
                                        padding=(2, 1), dilation=(1, 2), offset_scale=0.7),
    "pad-h-not-pad-w": dict(size=(6, 7), padding=(0, 2)),
    "remove-center": dict(remove_center=True, offset_scale=1.3),
    "remove-center-5x5": dict(size=(8, 7), kernel=5, padding=2, remove_center=True),
    "wide-channels": dict(groups=1, group_channels=37, size=(5, 4)),
    "one-channel": dict(groups=3, group_channels=1),
    "mostly-outside": dict(outside=0.8),
    "no-padding-1x1": dict(kernel=1, padding=0, size=(4, 5)),
}
TOLERANCE = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-2, "bfloat16": 5e-2}
FLOATS = ("input", "offset", "mask", "offset_mask")
GRADS = ("input", "offset", "mask")


def _cast(args, dtype):
    return {k: v.astype(dtype) if k in FLOATS else v for k, v in args.items()}


def _scale(x):
    return max(1.0, float(np.abs(np.asarray(x, np.float64)).max()))


def _unpack(args):
    """A dcnv4 call's arguments as dcnv3's."""
    return {**{k: v for k, v in args.items() if k != "offset_mask"},
            **dict(zip(("offset", "mask"), _split(args)))}


def _split(args):
    om = args["offset_mask"]
    kh, kw = args["kernel_size"]
    k = kh * kw - args["remove_center"]
    g = args["groups"]
    packed = om[..., :g * 3 * k].reshape(*om.shape[:3], g, 3 * k)
    return (packed[..., :2 * k].reshape(*om.shape[:3], -1),
            packed[..., 2 * k:].reshape(*om.shape[:3], -1))


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference(case, dtype):
    args = _cast(dcnv3_inputs(**CASES[case], seed=1), numpy_dtype(dtype))
    out = cudcn.dcnv3(**args)
    want = reference.dcnv3(**args)  # from the same (rounded) inputs
    assert out.dtype == numpy_dtype(dtype) and out.shape == want.shape
    assert_close(out, want, rtol=0, atol=TOLERANCE[dtype] * _scale(want), what=case)


@pytest.mark.parametrize("case", CASES)
def test_dcnv4_is_dcnv3_of_its_unpacked_arrays(case):
    """One kernel reads both packings: the same bits, forward and backward;
    offset_mask's padding is ignored and gets zero gradient."""
    args = dcnv3_inputs(**CASES[case], packed=True, seed=2)
    out = cudcn.dcnv4(**args)
    assert np.array_equal(out, cudcn.dcnv3(**_unpack(args)))
    assert_close(out, reference.dcnv4(**args), rtol=0, atol=1e-12 * _scale(out), what=case)
    grad_output = np.random.default_rng(3).standard_normal(out.shape)
    grads = cudcn.dcnv4_backward(grad_output, **args)
    unpacked = cudcn.dcnv3_backward(grad_output, **_unpack(args))
    assert np.array_equal(grads.input, unpacked.input)
    offset, mask = _split({**args, "offset_mask": grads.offset_mask})
    assert np.array_equal(offset, unpacked.offset) and np.array_equal(mask, unpacked.mask)
    used = args["groups"] * 3 * (np.prod(args["kernel_size"]) - args["remove_center"])
    assert not grads.offset_mask[..., used:].any()


@pytest.mark.parametrize("case", CASES)
def test_forward_of_every_strategy_and_index_type(case, strategy, force_index64):
    args = dcnv3_inputs(**CASES[case], seed=4)
    assert_close(cudcn.dcnv3(**args), reference.dcnv3(**args), rtol=0, atol=1e-12, what=case)


@pytest.mark.parametrize("case", CASES)
def test_gradients_match_finite_differences(case, strategy):
    """input and mask enter linearly (any point); the offsets are
    differentiated away from the bilinear kinks."""
    rng = np.random.default_rng(5)
    args = dcnv3_inputs(**CASES[case], seed=5)
    grad_output = rng.standard_normal(reference.dcnv3(**args).shape)
    grads = cudcn.dcnv3_backward(grad_output, **args)
    assert_directional_gradients(reference.dcnv3, args, grads, grad_output, rng, rel=1e-7,
                                 abs=1e-9, names=("input", "mask"))
    smooth = dcnv3_inputs(**CASES[case], away_from_kinks=True, seed=6)
    grads = cudcn.dcnv3_backward(grad_output, **smooth)
    assert_directional_gradients(reference.dcnv3, smooth, grads, grad_output, rng, rel=1e-6,
                                 abs=1e-8, names=GRADS, eps=1e-3)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_gradients_in_every_dtype(dtype, strategy):
    """Each dtype's gradients against float64's from the same rounded inputs."""
    args = _cast(dcnv3_inputs(**CASES["internimage-like"], seed=7), numpy_dtype(dtype))
    grad_output = np.random.default_rng(8).standard_normal((1, 6, 6, 64))
    got = cudcn.dcnv3_backward(grad_output.astype(numpy_dtype(dtype)), **args)
    want = cudcn.dcnv3_backward(grad_output, **_cast(args, np.float64))
    for name in GRADS:
        g, w = getattr(got, name), getattr(want, name)
        assert g.dtype == numpy_dtype(dtype) and g.shape == w.shape, name
        assert_close(g, w, rtol=0, atol=TOLERANCE[dtype] * 8 * _scale(w), what=name)


def test_strategies_agree_and_deterministic_ones_repeat_their_bits(monkeypatch):
    args = dcnv3_inputs(**CASES["internimage-like"], dtype=np.float32, seed=9)
    grad_output = np.random.default_rng(10).standard_normal((1, 6, 6, 64)).astype(np.float32)
    results = {}
    for name in ("planes", "items", "sorted"):
        monkeypatch.setattr(cudcn._launch, "_force_strategy", name)
        first = cudcn.dcnv3_backward(grad_output, deterministic=True, **args)
        again = cudcn.dcnv3_backward(grad_output, deterministic=True, **args)
        if name != "items":  # the others add in a fixed order
            for f, a in zip(first, again):
                assert np.array_equal(f, a), name
        results[name] = first
    for name in ("items", "sorted"):
        for field in GRADS:
            assert_close(getattr(results[name], field), getattr(results["planes"], field),
                         rtol=1e-5, atol=1e-5, what=f"{name} {field}")


def test_point_sums_in_channel_blocks(monkeypatch):
    """The GPU's points_partial kernel in blocks of 5 of 37 channels, the
    reduce adding them: the planes' fused sums within rounding."""
    args = dcnv3_inputs(**CASES["wide-channels"], seed=11)
    grad_output = np.random.default_rng(12).standard_normal(cudcn.dcnv3(**args).shape)
    fused = cudcn.dcnv3_backward(grad_output, **args)
    monkeypatch.setattr(cudcn._launch, "_force_channel_block", 5)
    blocked = cudcn.dcnv3_backward(grad_output, needs=("offset", "mask"), **args)
    for name in ("offset", "mask"):
        assert_close(getattr(blocked, name), getattr(fused, name), rtol=0, atol=1e-12, what=name)


def test_needs_chooses_the_gradients():
    args = dcnv3_inputs(seed=13)
    grad_output = np.ones(cudcn.dcnv3(**args).shape)
    every = cudcn.dcnv3_backward(grad_output, **args)
    for name in GRADS:
        only = cudcn.dcnv3_backward(grad_output, needs=name, **args)
        for field in GRADS:
            value = getattr(only, field)
            if field == name:
                assert np.array_equal(value, getattr(every, field)), name
            else:
                assert value is None
    packed = dcnv3_inputs(packed=True, seed=14)
    every = cudcn.dcnv4_backward(grad_output, **packed)
    assert cudcn.dcnv4_backward(grad_output, needs="input", **packed).offset_mask is None
    only = cudcn.dcnv4_backward(grad_output, needs="offset_mask", **packed)
    assert only.input is None and np.array_equal(only.offset_mask, every.offset_mask)


def test_nan_and_infinite_offsets_count_as_outside():
    args = dcnv3_inputs(seed=15)
    offset = args["offset"].copy()
    offset[0, 0, 0, 0] = np.nan
    offset[0, 1, 2, 5] = np.inf
    offset[1, 3, 1, 20] = -np.inf
    args["offset"] = offset
    out = cudcn.dcnv3(**args)
    assert np.isfinite(out).all()
    assert_close(out, reference.dcnv3(**args), rtol=0, atol=1e-12)
    grads = cudcn.dcnv3_backward(np.ones(out.shape), **args)
    assert all(np.isfinite(g).all() for g in grads)
    # point 0 of group 0, point 2 of group 0, point 1 of group 1 (K = 9)
    for at, point in [((0, 0, 0), 0), ((0, 1, 2), 2), ((1, 3, 1), 10)]:
        assert not grads.offset[at + (slice(2 * point, 2 * point + 2),)].any()
        assert grads.mask[at + (point,)] == 0


def test_the_first_sample_with_padding_1_is_on_the_window_edge():
    """Zero offsets and padding 1 put output (0, 0)'s first point at
    (-1, -1): outside the open window, no sample, no gradient, as in
    InternImage's kernel; its neighbour (-1, 0) is outside too."""
    x = np.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    offset = np.zeros((1, 3, 3, 18))
    mask = np.ones((1, 3, 3, 9))
    out = cudcn.dcnv3(x, offset, mask, 3, padding=1)
    assert out[0, 0, 0, 0] == 1 + 2 + 4 + 5  # the four points inside the image
    grads = cudcn.dcnv3_backward(np.ones(out.shape), x, offset, mask, 3, padding=1)
    assert grads.mask[0, 0, 0, 0] == 0 and grads.mask[0, 0, 0, 4] == 1  # (i, j) = (0, 0), (1, 1)


@pytest.mark.parametrize("packed", [False, True], ids=["dcnv3", "dcnv4"])
def test_empty_batch(packed):
    args = dcnv3_inputs(batch=0, packed=packed, seed=16)
    op, backward = ((cudcn.dcnv4, cudcn.dcnv4_backward) if packed
                    else (cudcn.dcnv3, cudcn.dcnv3_backward))
    out = op(**args)
    assert out.shape == (0, 7, 6, 6)
    grads = backward(out, **args)
    assert grads.input.shape == args["input"].shape
    assert grads[1].shape == args["offset_mask" if packed else "offset"].shape


def _bad(packed=False, **change):
    args = dcnv3_inputs(packed=packed, seed=17)
    args.update(change)
    return args


@pytest.mark.parametrize("args, error, words", [
    (_bad(input=np.zeros((2, 7, 6))), ValueError, "input must be 4-D"),
    (_bad(input=[[1.0]]), TypeError, "input must be a numpy.ndarray"),
    (_bad(groups=4), ValueError, "input has 6 channels, which groups = 4 does not divide"),
    (_bad(groups=0), ValueError, "groups must be >= 1"),
    (_bad(offset=np.zeros((2, 7, 6, 35))), ValueError,
     "offset must have shape (2, 7, 6, 36) (N, H_out, W_out, groups * K * 2 with K = 9)"),
    (_bad(mask=np.zeros((2, 7, 6, 9))), ValueError, "mask must have shape (2, 7, 6, 18)"),
    (_bad(mask=np.zeros((2, 7, 6, 18), np.float32)), TypeError,
     "mask has dtype float32 but input has float64"),
    (_bad(remove_center=True, kernel_size=(3, 5)), ValueError,
     "remove_center needs an odd square kernel"),
    (_bad(remove_center=True, kernel_size=4), ValueError, "remove_center needs an odd square"),
    (_bad(remove_center=1), TypeError, "remove_center must be a bool"),
    (_bad(kernel_size=(3, 0)), ValueError, "kernel_size must be >= 1"),
    (_bad(stride=1.5), TypeError, "stride must be an int or a pair of ints"),
    (_bad(offset_scale=np.nan), ValueError, "offset_scale must be finite"),
    (_bad(offset_scale="1"), TypeError, "offset_scale must be a real number"),
    (_bad(kernel_size=9, padding=0), ValueError, "the output would be -1 x -2"),
])
def test_bad_input_names_the_argument(args, error, words):
    with pytest.raises(error) as caught:
        cudcn.dcnv3(**args)
    assert words in str(caught.value)


def test_bad_offset_mask_names_it():
    args = _bad(packed=True)
    narrow = args["offset_mask"][..., :53]
    with pytest.raises(ValueError, match=r"offset_mask has 53 channels but groups \* 3K = "
                                         r"2 \* 3 \* 9 = 54 are needed"):
        cudcn.dcnv4(**{**args, "offset_mask": narrow})
    with pytest.raises(ValueError, match=r"offset_mask must have shape \(2, 7, 6, 56\)"):
        cudcn.dcnv4(**{**args, "offset_mask": args["offset_mask"][:, :6]})


def test_bad_grad_output_and_needs():
    args = dcnv3_inputs(seed=18)
    with pytest.raises(ValueError, match="grad_output must have shape"):
        cudcn.dcnv3_backward(np.zeros((2, 7, 6, 5)), **args)
    with pytest.raises(ValueError, match="needs names unknown"):
        cudcn.dcnv3_backward(np.zeros((2, 7, 6, 6)), needs=("offset_mask",), **args)
