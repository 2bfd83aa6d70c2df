"""float16 and bfloat16 on the CPU backend: the same instantiations the GPU runs.

The shim's conversions are checked bit for bit against NumPy and ml_dtypes.
Every op, forward and every gradient, under both strategies, is compared with
float64 computed on the same (already rounded) inputs, within element-wise
bounds derived from the unit roundoff u of the dtype (2^-11 for float16,
2^-8 for bfloat16):

- a result is rounded at most twice in 16 bits: once in an intermediate
  buffer (deform_conv2d's columns or grad columns: every entry, so every
  term, within a factor 1 +- u) and once when stored; everything else runs
  in float32, whose chains of n <= 1024 products and sums err by at most
  g = n * 2^-24 <= 2^-14 of the sum of the terms' magnitudes;
- so |result - exact| <= (u + g)(1 + u) * sum|terms| + u * |exact|, which is
  at most (u + 2g) * sum|terms| + u * |exact| for both dtypes (u^2 <= g/4),
  plus 2^-25 absolute below half's normal range; without an intermediate
  16-bit buffer (the RoI poolings) the first u drops out.

With non-negative inputs, weights, masks and output gradients every term of
the outputs and of the input, weight, bias and mask gradients is >= 0, so
sum|terms| = |exact| and the bound is relative. Offset gradients are sums of
differences of input values; their sum|terms| is bounded from the float64
inputs below. Offsets are multiples of 1/64 and RoIs sit on a dyadic grid, so
that every sampling position is exact in float32 as in float64: only values
are rounded.
"""

import ctypes

import ml_dtypes
import numpy as np
import pytest

import cudcn
from cudcn import reference
from cudcn.testing import deform_conv2d_inputs
import shim_library
from deform_conv2d_cases import case_params

DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
FLOAT32_CHAINS = 2.0**-14
SUBNORMAL = 2.0**-25


def assert_within(actual, exact, bound, what):
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == exact.shape, what
    excess = np.abs(actual - exact) - bound
    worst = np.unravel_index(np.argmax(excess), excess.shape) if excess.size else ()
    assert excess.size == 0 or excess.max() <= 0, (
        f"{what}: |error| {abs(actual - exact)[worst]:.3g} exceeds its bound "
        f"{bound[worst]:.3g} at {worst} (exact {exact[worst]:.6g})")


def _in_dtype(args, dtype):
    """The array arguments rounded to ``dtype`` (offsets to multiples of 1/64
    first), and the same values in float64."""
    args = dict(args, offset=None if args["offset"] is None else np.round(args["offset"] * 64) / 64)
    low = {k: v.astype(dtype) if isinstance(v, np.ndarray) else v for k, v in args.items()}
    exact = {k: v.astype(np.float64) if isinstance(v, np.ndarray) else v for k, v in low.items()}
    return low, exact


# --- the shim's conversions ---------------------------------------------------------------

@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    """tests/shim_conversions.cpp, built like the kernels (compiler, flags, cpu_shim.h)."""
    return shim_library.build("shim_conversions.cpp", tmp_path_factory.mktemp("shim"))


def _convert(shim, name, values, out_dtype):
    values = np.ascontiguousarray(values)
    out = np.empty(values.shape, out_dtype)
    getattr(shim, name)(ctypes.c_void_p(values.ctypes.data), ctypes.c_void_p(out.ctypes.data),
                        ctypes.c_longlong(values.size))
    return out


@pytest.mark.parametrize("dtype_name, to_float", [("float16", "half_to_float"),
                                                  ("bfloat16", "bfloat16_to_float")])
def test_every_16_bit_pattern_widens_exactly(shim, dtype_name, to_float):
    bits = np.arange(2**16, dtype=np.uint16)
    ours = _convert(shim, to_float, bits, np.float32)
    expected = bits.view(DTYPES[dtype_name]).astype(np.float32)
    np.testing.assert_array_equal(ours.view(np.uint32), expected.view(np.uint32))


def _floats_to_round(dtype):
    """A dense sweep of float32 bit patterns, and around every finite value of
    ``dtype``: the midpoints to both neighbours (ties, exact in float32) and
    the floats just either side of them; subnormals, overflow, inf, NaN."""
    sweep = np.arange(0, 2**32, 1021, dtype=np.uint64).astype(np.uint32).view(np.float32)
    with np.errstate(invalid="ignore"):  # NaN bit patterns
        finite = np.arange(2**16, dtype=np.uint16).view(dtype).astype(np.float64)
    finite = np.unique(finite[np.isfinite(finite)])
    mids = ((finite[:-1] + finite[1:]) / 2).astype(np.float32)
    assert np.array_equal(mids.astype(np.float64), (finite[:-1] + finite[1:]) / 2)  # exact ties
    around = [mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))]
    tiny = np.arange(1, 4096, dtype=np.uint32).view(np.float32)  # float32 subnormals
    special = np.array([0.0, -0.0, 65504.0, 65519.996, 65520.0, -65520.0, 65536.0, 3.0e38,
                        np.inf, -np.inf, np.nan, -np.nan], dtype=np.float32)
    payload_nans = np.array([0x7f800001, 0xffc00123, 0x7fbfffff], dtype=np.uint32).view(np.float32)
    return np.concatenate([sweep, *around, tiny, -tiny, special, payload_nans])


@pytest.mark.parametrize("dtype_name, from_float", [("float16", "float_to_half"),
                                                    ("bfloat16", "float_to_bfloat16")])
def test_rounding_from_float_matches_numpy_and_ml_dtypes(shim, dtype_name, from_float):
    values = _floats_to_round(DTYPES[dtype_name])
    ours = _convert(shim, from_float, values, np.uint16)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow and NaN are the point
        expected = values.astype(DTYPES[dtype_name]).view(np.uint16)
    nan = np.isnan(values)
    np.testing.assert_array_equal(ours[~nan], expected[~nan])
    # CUDA's conversions give the canonical NaN whatever the input NaN's bits.
    assert nan.sum() >= 4 and np.all(ours[nan] == 0x7fff)


# --- the GEMMs' casts on the kernels' threads ----------------------------------------------

@pytest.mark.parametrize("index64", [False, True], ids=["int", "long-long"])
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16", "float32", "float64"])
def test_kernel_casts_match_the_array_library(dtype_name, index64, launches, monkeypatch):
    """deform_conv2d.cu's widen and narrow kernels (the CPU's casts of the
    GEMMs' 16-bit operands) against NumPy's and ml_dtypes' casts: the same
    bits, but for NaNs, which narrow to CUDA's canonical one. 32- and 64-bit
    instantiations copy."""
    from cudcn import _gemm, _kernels

    monkeypatch.setattr(cudcn._launch, "_force_index64", index64)
    dtype = DTYPES.get(dtype_name, np.dtype(dtype_name))
    wide = _gemm.compute_dtype(dtype)
    count = 3 * _gemm.CAST_RUN + 5  # a last, partial run
    if dtype.itemsize == 2:
        low = np.random.default_rng(1).integers(0, 2**16, count, dtype=np.uint16).view(dtype)
    else:
        low = np.random.default_rng(1).standard_normal(count).astype(dtype)
    widened = _gemm._cast(_kernels.DEFORM_CONV2D_WIDEN, low, np.empty(count, wide))
    with np.errstate(invalid="ignore"):
        expected = low.astype(wide)
    assert np.array_equal(widened.view(f"u{wide.itemsize}"), expected.view(f"u{wide.itemsize}"))

    with np.errstate(invalid="ignore"):  # NaN payloads
        high = _floats_to_round(DTYPES.get(dtype_name, np.float16)).astype(wide)
    narrowed = _gemm._cast(_kernels.DEFORM_CONV2D_NARROW, high, np.empty(high.shape, dtype))
    with np.errstate(over="ignore", invalid="ignore"):
        expected = high.astype(dtype)
    bits = f"u{dtype.itemsize}"
    nan = np.isnan(high)
    assert np.array_equal(narrowed[~nan].view(bits), expected[~nan].view(bits))
    if dtype.itemsize == 2:
        assert np.all(narrowed[nan].view(bits) == 0x7fff)
    assert [launch.kernel.name.rsplit("::", 1)[-1] for launch in launches] == [
        "deform_conv2d_widen", "deform_conv2d_narrow"]
    assert all(launch.index == ("long long" if index64 else "int") for launch in launches)


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_deform_conv2d_casts_on_kernel_threads_give_the_array_librarys_bits(
        dtype_name, launches, monkeypatch):
    """Columns past the kernels' casting threshold: the forward and every
    gradient as with the array library's casts, bit for bit."""
    from cudcn import _gemm

    args = {k: v.astype(DTYPES[dtype_name]) if isinstance(v, np.ndarray) else v for k, v in
            deform_conv2d_inputs(in_channels=16, out_channels=8, size=(17, 16), seed=9).items()}
    assert 16 * 9 * 17 * 16 >= _gemm.KERNEL_CAST_MIN
    out = cudcn.deform_conv2d(**args)
    grads = cudcn.deform_conv2d_backward(out, **args)
    names = {launch.kernel.name.rsplit("::", 1)[-1] for launch in launches}
    assert {"deform_conv2d_widen", "deform_conv2d_narrow"} <= names
    monkeypatch.setattr(_gemm, "KERNEL_CAST_MIN", 2**62)
    del launches[:]
    assert np.array_equal(cudcn.deform_conv2d(**args).view(np.uint16), out.view(np.uint16))
    library = cudcn.deform_conv2d_backward(out, **args)
    assert not {"deform_conv2d_widen", "deform_conv2d_narrow"} & {
        launch.kernel.name.rsplit("::", 1)[-1] for launch in launches}
    for name in ("input", "offset", "weight", "bias", "mask"):
        assert np.array_equal(getattr(grads, name).view(np.uint16),
                              getattr(library, name).view(np.uint16)), name


# --- deform_conv2d -------------------------------------------------------------------------

def _non_negative_conv_args(case, seed):
    args = deform_conv2d_inputs(seed=seed, **case)
    for name in ("input", "weight", "bias"):
        if args[name] is not None:
            args[name] = np.abs(args[name])
    return args


def _sampled_rows_and_columns(exact, gcol_abs):
    """sum|terms| of each offset gradient entry: sum over the group's channels
    of |grad column| * (the interpolation weights times |corner values|) of
    the two rows (for dy) or columns (for dx) of the sampling cell."""
    x = exact["input"]
    n, c, h, w = x.shape
    kh, kw = exact["weight"].shape[2:]
    stride, padding, dilation = (np.broadcast_to(exact[k], 2) for k in
                                 ("stride", "padding", "dilation"))
    offset = exact["offset"]
    points = kh * kw
    groups = offset.shape[1] // (2 * points)
    ho, wo = offset.shape[2:]
    oh, ow = np.arange(ho)[None, :, None], np.arange(wo)[None, None, :]
    mask = exact["mask"]
    bound = np.zeros_like(offset)
    per_group = c // groups
    for g in range(groups):
        chans = slice(g * per_group, (g + 1) * per_group)
        for k in range(points):
            i, j = divmod(k, kw)
            y = oh * stride[0] - padding[0] + i * dilation[0] + offset[:, 2 * (g * points + k)]
            xs = ow * stride[1] - padding[1] + j * dilation[1] + offset[:, 2 * (g * points + k) + 1]
            m = 1.0 if mask is None else mask[:, g * points + k][:, None]
            weights = m * gcol_abs[:, chans, k].reshape(n, per_group, ho, wo)

            def sampled(yy, xx):
                return np.sum(weights * reference.bilinear_zero_border(x[:, chans], yy, xx), axis=1)

            fy, fx = np.floor(y), np.floor(xs)
            bound[:, 2 * (g * points + k)] = sampled(fy, xs) + sampled(fy + 1, xs)
            bound[:, 2 * (g * points + k) + 1] = sampled(y, fx) + sampled(y, fx + 1)
    return bound


def _grad_columns(exact, grad_output):
    """weight^T @ grad_output per group: (N, C_in, kh * kw, H_out * W_out)."""
    weight = exact["weight"]
    c_out, c_per_group, kh, kw = weight.shape
    groups = exact["input"].shape[1] // c_per_group
    n, _, ho, wo = grad_output.shape
    wg = weight.reshape(groups, c_out // groups, c_per_group, kh * kw)
    go = grad_output.reshape(n, groups, c_out // groups, ho * wo)
    return np.einsum("gock,ngop->ngckp", wg, go).reshape(n, groups * c_per_group, kh * kw, -1)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("case", case_params(["3x3", "5x3-asymmetric", "groups-and-offset-groups",
                                              "v1-no-mask-no-bias", "offsets-leaving-image"]))
def test_deform_conv2d_within_the_rounding_bound(case, dtype_name, strategy):
    dtype, u = DTYPES[dtype_name], UNIT_ROUNDOFF[dtype_name]
    low, exact = _in_dtype(_non_negative_conv_args(case, seed=20), dtype)
    out = cudcn.deform_conv2d(**low)
    assert out.dtype == dtype
    expected = reference.deform_conv2d(**exact)
    bound = (2 * u + 2 * FLOAT32_CHAINS) * np.abs(expected) + SUBNORMAL
    assert_within(out, expected, bound, "output")

    rng = np.random.default_rng(21)
    grad_output = rng.uniform(0, 1, expected.shape).astype(dtype)
    grad64 = grad_output.astype(np.float64)
    grads = cudcn.deform_conv2d_backward(grad_output, **low)
    # float64 gradients on the same rounded values (checked against finite
    # differences in test_deform_conv2d.py).
    exact_grads = cudcn.deform_conv2d_backward(grad64, **exact)
    for name in ("input", "weight", "bias", "mask"):
        want = getattr(exact_grads, name)
        if want is None:
            assert getattr(grads, name) is None
            continue
        assert getattr(grads, name).dtype == dtype, name
        bound = (2 * u + 2 * FLOAT32_CHAINS) * np.abs(want) + SUBNORMAL
        assert_within(getattr(grads, name), want, bound, f"grad {name}")
    terms = _sampled_rows_and_columns(exact, _grad_columns(exact, grad64))
    bound = (u + 2 * FLOAT32_CHAINS) * terms + u * np.abs(exact_grads.offset) + SUBNORMAL
    assert grads.offset.dtype == dtype
    assert_within(grads.offset, exact_grads.offset, bound, "grad offset")


# --- RoI pooling ----------------------------------------------------------------------------

def _dyadic_rois(batch, count, rng):
    """Boxes whose corners are multiples of 1/2 and sizes multiples of 4 image
    pixels: with spatial scale 1/2 and 2 or 4 bins of 2 samples, every
    sampling position is exact in float32."""
    x1 = rng.integers(-4, 14, count) / 2
    y1 = rng.integers(-4, 16, count) / 2
    w = 4 * rng.integers(1, 5, count)
    h = 4 * rng.integers(1, 5, count)
    return np.stack([rng.integers(0, batch, count), x1, y1, x1 + w, y1 + h], axis=1)


def _roi_pool_args(mask, offset, seed):
    rng = np.random.default_rng(seed)
    return dict(input=rng.uniform(0, 1, (2, 3, 9, 11)), rois=_dyadic_rois(2, 6, rng),
                offset=rng.standard_normal((6, 2, 2, 4)) if offset else None,
                mask=rng.uniform(0, 1, (6, 1, 2, 4)) if mask else None,
                output_size=(2, 4), spatial_scale=0.5, sampling_ratio=2, gamma=0.125)


def _roi_sizes(rois, scale):
    return (rois[:, 3] - rois[:, 1]) * scale, (rois[:, 4] - rois[:, 2]) * scale


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("with_offset, with_mask", [(True, False), (True, True), (False, False)],
                         ids=["offset", "offset-mask", "roi-align"])
def test_deform_roi_pool_within_the_rounding_bound(with_offset, with_mask, dtype_name, strategy):
    dtype, u = DTYPES[dtype_name], UNIT_ROUNDOFF[dtype_name]
    low, exact = _in_dtype(_roi_pool_args(with_mask, with_offset, seed=30), dtype)
    # RoIs are converted to float32 for 16-bit inputs; these are exact there.
    low["rois"] = exact["rois"] = _roi_pool_args(with_mask, with_offset, seed=30)["rois"]
    out = cudcn.deform_roi_pool(**low)
    expected = reference.deform_roi_pool(**exact)
    assert out.dtype == dtype and np.abs(expected).max() > 0.1
    assert_within(out, expected, (u + 2 * FLOAT32_CHAINS) * np.abs(expected) + SUBNORMAL, "output")

    grad_output = np.random.default_rng(31).uniform(0, 1, expected.shape).astype(dtype)
    grads = cudcn.deform_roi_pool_backward(grad_output, **low)
    exact_grads = cudcn.deform_roi_pool_backward(grad_output.astype(np.float64), **exact)
    for name in ("input", "mask"):
        want = getattr(exact_grads, name)
        if want is None:
            assert getattr(grads, name) is None
            continue
        assert getattr(grads, name).dtype == dtype
        assert_within(getattr(grads, name), want,
                      (u + 2 * FLOAT32_CHAINS) * np.abs(want) + SUBNORMAL, f"grad {name}")
    if with_offset:
        # Each sample's derivative along an axis is a difference of two
        # interpolated values, at most 2 max|input| in size, times
        # gamma * roi size / count for each of at most `count` samples.
        roi_w, roi_h = _roi_sizes(exact["rois"], exact["spatial_scale"])
        g = np.abs(grad_output.astype(np.float64)).sum(axis=1)  # (K, PH, PW)
        m = 1.0 if exact["mask"] is None else exact["mask"][:, 0]
        scale = 2 * exact["input"].max() * exact["gamma"] * m * g
        terms = np.stack([scale * roi_w[:, None, None], scale * roi_h[:, None, None]], axis=1)
        bound = 2 * FLOAT32_CHAINS * terms + u * np.abs(exact_grads.offset) + SUBNORMAL
        assert grads.offset.dtype == dtype
        assert_within(grads.offset, exact_grads.offset, bound, "grad offset")


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_deform_psroi_pool_within_the_rounding_bound(dtype_name, strategy):
    dtype, u = DTYPES[dtype_name], UNIT_ROUNDOFF[dtype_name]
    rng = np.random.default_rng(40)
    pooled, group, output_dim, classes = 4, 2, 4, 2
    args = dict(input=rng.uniform(0, 1, (2, output_dim * group**2, 9, 11)),
                rois=_dyadic_rois(2, 6, rng).round(),  # the original rounds RoIs to pixels
                offset=rng.standard_normal((6, 2 * classes, pooled, pooled)),
                output_dim=output_dim, group_size=group, pooled_size=pooled,
                sample_per_part=2, trans_std=0.125, spatial_scale=0.5)
    low, exact = _in_dtype(args, dtype)
    low["rois"] = exact["rois"] = args["rois"]
    out = cudcn.deform_psroi_pool(**low)
    expected = reference.deform_psroi_pool(**exact)
    assert out.dtype == dtype and np.abs(expected).max() > 0.1
    assert_within(out, expected, (u + 2 * FLOAT32_CHAINS) * np.abs(expected) + SUBNORMAL, "output")

    grad_output = np.random.default_rng(41).uniform(0, 1, expected.shape).astype(dtype)
    grads = cudcn.deform_psroi_pool_backward(grad_output, **low)
    exact_grads = cudcn.deform_psroi_pool_backward(grad_output.astype(np.float64), **exact)
    assert grads.input.dtype == grads.offset.dtype == dtype
    assert_within(grads.input, exact_grads.input,
                  (u + 2 * FLOAT32_CHAINS) * np.abs(exact_grads.input) + SUBNORMAL, "grad input")
    # Part cells equal bins here (part_size = pooled_size); a class owns
    # output_dim / classes channels. Each sample's derivative is at most
    # 2 max|input| times trans_std * roi size / kept samples.
    rois = exact["rois"]
    roi_w = (rois[:, 3] + 1 - rois[:, 1]) * 0.5
    roi_h = (rois[:, 4] + 1 - rois[:, 2]) * 0.5
    g = np.abs(grad_output.astype(np.float64)).reshape(6, classes, -1, pooled, pooled).sum(axis=2)
    scale = 2 * exact["input"].max() * exact["trans_std"] * g  # (K, classes, P, P)
    terms = np.stack([scale * roi_w[:, None, None, None], scale * roi_h[:, None, None, None]],
                     axis=2).reshape(exact_grads.offset.shape)
    bound = 2 * FLOAT32_CHAINS * terms + u * np.abs(exact_grads.offset) + SUBNORMAL
    assert_within(grads.offset, exact_grads.offset, bound, "grad offset")


# --- accumulation in float32, never in 16 bits --------------------------------------------

def _sixteen_bit_sum_of_ones(dtype, count):
    total = np.zeros((), dtype)
    for _ in range(count):
        total = (total + np.ones((), dtype)).astype(dtype)
    return float(total)


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_sums_of_4096_ones_are_exact(dtype_name, strategy):
    """Sums of 4096 ones are 4096 in float32 accumulation, and stop at 2048
    (float16) or 256 (bfloat16) when accumulated in the 16-bit type: each of
    these checks fails for a kernel or GEMM that accumulates in 16 bits."""
    dtype = DTYPES[dtype_name]
    assert _sixteen_bit_sum_of_ones(dtype, 4096) < 4096  # the failure this guards against
    ones = lambda *shape: np.ones(shape, dtype)  # noqa: E731
    zeros = lambda *shape: np.zeros(shape, dtype)  # noqa: E731

    # The forward GEMM: 4096 input channels into one output.
    out = cudcn.deform_conv2d(ones(1, 4096, 1, 1), zeros(1, 2, 1, 1), ones(1, 4096, 1, 1))
    assert out.dtype == dtype and float(out[0, 0, 0, 0]) == 4096.0

    # grad weight and grad bias sum 64 x 64 pixels; grad input receives all 4096 samples,
    # sent to pixel (0, 0) by their offsets.
    oh, ow = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    offset = np.stack([-oh, -ow])[None].astype(dtype)
    grads = cudcn.deform_conv2d_backward(ones(1, 1, 64, 64), ones(1, 1, 64, 64), offset,
                                         ones(1, 1, 1, 1), bias=ones(1))
    assert float(grads.weight[0, 0, 0, 0]) == 4096.0 and float(grads.bias[0]) == 4096.0
    assert float(grads.input[0, 0, 0, 0]) == 4096.0 and float(grads.input.astype(float).sum()) == 4096.0

    # The offset gradient sums over the group's 4096 channels: each channel's
    # value rises by 1 from row 0 to row 1, sampled at y = 0.5.
    ramp = np.broadcast_to(np.arange(2, dtype=dtype)[:, None], (1, 4096, 2, 1)).copy()
    grads = cudcn.deform_conv2d_backward(ones(1, 1, 2, 1), ramp, np.full((1, 2, 2, 1), 0.5, dtype)
                                         * np.array([1, 0], dtype)[None, :, None, None],
                                         ones(1, 4096, 1, 1), needs=("offset",))
    assert float(grads.offset[0, 0, 0, 0]) == 4096.0

    # RoI pooling: a bin of 64 x 64 samples of ones averages to exactly 1.
    rois = np.array([[0, 0.0, 0.0, 8.0, 8.0]])
    pooled = cudcn.deform_roi_pool(ones(1, 1, 8, 8), rois, output_size=1, sampling_ratio=64)
    assert float(pooled[0, 0, 0, 0]) == 1.0
    ps = cudcn.deform_psroi_pool(ones(1, 1, 8, 8), rois, output_dim=1, group_size=1,
                                 pooled_size=1, sample_per_part=64, spatial_scale=1.0)
    assert float(ps[0, 0, 0, 0]) == 1.0


# --- bad input ---------------------------------------------------------------------------------

def test_mixed_dtypes_name_both_arguments():
    args = deform_conv2d_inputs(dtype=np.float32)
    args["input"] = args["input"].astype(np.float16)
    with pytest.raises(TypeError, match="offset has dtype float32 but input has float16"):
        cudcn.deform_conv2d(**args)
    args["input"] = args["input"].astype(ml_dtypes.bfloat16)
    with pytest.raises(TypeError, match="offset has dtype float32 but input has bfloat16"):
        cudcn.deform_conv2d(**args)
