"""deform_roi_pool on the CPU backend: reference, RoIAlign parity, gradients, edge RoIs."""

import numpy as np
import pytest

import cudcn
from cudcn import reference
from cudcn.testing import deform_roi_pool_inputs
from conftest import assert_close, assert_directional_gradients, numpy_dtype

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}

CASES = {
    "offset": dict(),
    "offset-mask": dict(mask=True),
    "roi-align": dict(offset=False),
    "non-square-sr1": dict(output_size=(2, 4), sampling_ratio=1),
    "sr2-scale1": dict(sampling_ratio=2, spatial_scale=1.0, size=(9, 11)),
    "scale-1/16": dict(spatial_scale=1 / 16, size=(8, 7), output_size=7),
    "large-gamma": dict(gamma=0.6, mask=True),
    "one-rows": dict(size=(1, 6), output_size=(1, 2)),
}


def _params(names=None):
    return [pytest.param(CASES[n], id=n) for n in (names or CASES)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", _params())
def test_forward_matches_reference(case, dtype):
    args = deform_roi_pool_inputs(dtype=dtype, **case)
    out = cudcn.deform_roi_pool(**args)
    expected = reference.deform_roi_pool(**args)
    assert out.dtype == dtype and np.abs(expected).max() > 0.1
    assert_close(out, expected, **TOL[dtype])


@pytest.mark.parametrize("case", _params(["offset", "offset-mask", "non-square-sr1",
                                          "scale-1/16", "large-gamma"]))
def test_gradients_match_finite_differences(case, strategy):
    args = deform_roi_pool_inputs(seed=3, **case)
    rng = np.random.default_rng(4)
    grad_output = rng.standard_normal(cudcn.deform_roi_pool(**args).shape)
    grads = cudcn.deform_roi_pool_backward(grad_output, **args)
    assert_directional_gradients(reference.deform_roi_pool, args, grads, grad_output, rng,
                                 rel=1e-6, abs=1e-8, names=("input", "offset", "mask"))


def test_offset_gradient_is_zero_along_a_clamped_axis():
    """A bin sampled beyond the last column reads that column: the value does
    not change with x there, so neither does the offset's x gradient."""
    x = np.random.default_rng(5).standard_normal((1, 1, 4, 4))
    rois = np.array([[0, 3.9, 0.7, 4.3, 2.6]])  # x samples in (3, 4]: clamped to column 3
    offset = np.zeros((1, 2, 1, 1))
    grads = cudcn.deform_roi_pool_backward(np.ones((1, 1, 1, 1)), x, rois, offset,
                                           output_size=1, sampling_ratio=2, gamma=0.1)
    assert grads.offset[0, 0, 0, 0] == 0.0
    assert grads.offset[0, 1, 0, 0] != 0.0


@pytest.mark.torchvision
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("output_size", [7, (3, 5)])
def test_without_offset_equals_torchvision_roi_align(dtype, sampling_ratio, output_size,
                                                    strategy):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    args = deform_roi_pool_inputs(offset=False, dtype=dtype, output_size=output_size,
                                  sampling_ratio=sampling_ratio, rois=8, size=(14, 11),
                                  spatial_scale=0.25, seed=6)
    rois_t = torch.from_numpy(args["rois"]).to(torch.float64 if dtype == np.float64 else torch.float32)
    x_t = torch.from_numpy(args["input"]).requires_grad_()
    expected = torchvision.ops.roi_align(x_t, rois_t, output_size, 0.25, sampling_ratio,
                                         aligned=True)
    grad_output = np.random.default_rng(7).standard_normal(expected.shape).astype(dtype)
    expected.backward(torch.from_numpy(grad_output))
    tol = 1e-10 if dtype == np.float64 else 1e-5
    assert_close(cudcn.deform_roi_pool(**args), expected.detach().numpy(), rtol=tol, atol=tol)
    grads = cudcn.deform_roi_pool_backward(grad_output, **args)
    assert_close(grads.input, x_t.grad.numpy(), rtol=tol, atol=tol)
    assert grads.offset is None and grads.mask is None


@pytest.mark.parametrize("roi_dtype", [np.float32, np.float64, np.float16])
def test_rois_of_any_float_dtype(roi_dtype):
    args = deform_roi_pool_inputs(dtype=np.float32, seed=8)
    args["rois"] = np.round(args["rois"]).astype(roi_dtype)  # exact in every dtype
    expected = cudcn.deform_roi_pool(**dict(args, rois=args["rois"].astype(np.float32)))
    assert_close(cudcn.deform_roi_pool(**args), expected, rtol=0, atol=0)


def test_no_rois():
    args = deform_roi_pool_inputs(rois=0, mask=True)
    out = cudcn.deform_roi_pool(**args)
    assert out.shape == (0, 3, 3, 3)
    grads = cudcn.deform_roi_pool_backward(out, **args)
    assert grads.input.shape == args["input"].shape and not grads.input.any()
    assert grads.offset.shape == (0, 2, 3, 3) and grads.mask.shape == (0, 1, 3, 3)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bad_rois_pool_zeros_and_get_no_gradient(strategy, dtype):
    args = deform_roi_pool_inputs(rois=9, mask=True, seed=9, dtype=dtype)
    rois = args["rois"]
    rois[0, 0] = -1  # batch index out of range
    rois[1, 0] = 2
    rois[2, 0] = np.nan
    rois[3, 1] = np.nan  # NaN coordinate
    rois[4, 3] = np.inf
    rois[5, 1:] = [8, 8, 2, 3]  # inverted box: no samples with sampling_ratio 0
    rois[6, 1:] = [-1e7, -1e7, 1e7, 1e7]  # huge: the sample loop must stay bounded
    args["offset"][7, :, 0, 0] = np.nan
    guarded = np.full((4,) + args["input"].shape[1:], np.nan, dtype=dtype)
    guarded[1:3] = args["input"]
    args["input"] = guarded[1:3]
    out = cudcn.deform_roi_pool(**args)
    assert np.isfinite(out).all()
    assert not out[:6].any() and not out[7, :, 0, 0].any()
    only_8 = {k: v[8:9] for k, v in args.items() if k in ("rois", "offset", "mask")}
    assert_close(out[8:9], reference.deform_roi_pool(**dict(args, **only_8)), **TOL[dtype])
    grads = cudcn.deform_roi_pool_backward(np.ones_like(out), **args)
    for name in ("input", "offset", "mask"):
        assert np.isfinite(getattr(grads, name)).all(), name
    assert not grads.offset[:6].any() and not grads.mask[:6].any()
    assert not grads.offset[7, :, 0, 0].any()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_inverted_boxes_with_a_fixed_sampling_ratio_match_the_reference(strategy, dtype):
    """x2 < x1 and y2 < y1: negative bins, sampled backwards (mmcv does not
    clamp the size), some of their samples outside the image."""
    args = deform_roi_pool_inputs(rois=4, mask=True, sampling_ratio=2, spatial_scale=1.0,
                                  size=(9, 8), seed=12, dtype=dtype)
    args["rois"][:, 1:] = [[7.5, 6.0, 1.0, 2.5], [9.5, 8.5, -2.0, -1.0],
                           [3.0, 7.0, 2.0, 1.0], [6.0, 2.0, 5.5, 1.5]]
    out = cudcn.deform_roi_pool(**args)
    expected = reference.deform_roi_pool(**args)
    assert np.abs(expected).max() > 0.1
    assert_close(out, expected, **TOL[dtype])


@pytest.mark.parametrize("index64", [False, True], ids=["int", "long-long"])
@pytest.mark.parametrize("dtype_name", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("channels", [3, 130])
def test_pixel_forward_pools_what_the_item_forward_pools(channels, dtype_name, index64,
                                                         launches, monkeypatch):
    """The CPU's forward (channels-last pixels, blocks of ROI_PIXEL_CHANNELS
    channels: 130 is a full block and a partial one) against the GPU's (a
    thread per output element, from the planes), with offsets, a mask and
    RoIs on both images and outside them. The two add a sample's four
    corners in another order: equal up to rounding."""
    from cudcn import _kernels

    assert _kernels.ROI_PIXEL_CHANNELS < 130 < 2 * _kernels.ROI_PIXEL_CHANNELS
    dtype = numpy_dtype(dtype_name)
    monkeypatch.setattr(cudcn._launch, "_force_index64", index64)
    args = deform_roi_pool_inputs(channels=channels, rois=7, mask=True, sampling_ratio=2,
                                  seed=14)
    args["rois"][6, 1:] = [-30.0, -30.0, -20.0, -25.0]  # outside the image: pools zeros
    args = {k: v.astype(dtype) if isinstance(v, np.ndarray) and k != "rois" else v
            for k, v in args.items()}
    monkeypatch.setattr(cudcn._launch, "_force_strategy", "planes")
    pixels = cudcn.deform_roi_pool(**args)
    monkeypatch.setattr(cudcn._launch, "_force_strategy", "items")
    items = cudcn.deform_roi_pool(**args)
    names = [launch.kernel.name.rsplit("::", 1)[-1] for launch in launches]
    assert names == ["deform_roi_pool_fill_pixels", "deform_roi_pool_forward_pixels",
                     "deform_roi_pool_forward"]
    assert all(launch.index == ("long long" if index64 else "int") for launch in launches)
    tolerance = {"float64": 1e-14, "float32": 1e-6, "float16": 2e-3, "bfloat16": 1.6e-2}
    assert_close(pixels.astype(np.float64), items.astype(np.float64),
                 rtol=tolerance[dtype_name], atol=tolerance[dtype_name])
    assert np.abs(items.astype(np.float64)).max() > 0.1 and not pixels[6].astype(np.float64).any()


@pytest.mark.parametrize("block", [None, 3], ids=["all-channels", "blocks-of-3"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_plane_offset_gradients_sum_what_the_item_kernel_sums(dtype, block, launches,
                                                              monkeypatch):
    """The CPU's offset and mask gradients (each sample's corners computed
    once for all channels) against the GPU's kernel (once a channel), with
    RoIs on both images and one outside them: the same terms, added in
    another order."""
    args = deform_roi_pool_inputs(channels=7, rois=6, mask=True, sampling_ratio=2, seed=21,
                                  dtype=dtype)
    args["rois"][5, 1:] = [-30.0, -30.0, -20.0, -25.0]
    grad_output = np.random.default_rng(22).standard_normal(
        cudcn.deform_roi_pool(**args).shape).astype(dtype)
    grads = {}
    for strategy in ("planes", "items"):
        monkeypatch.setattr(cudcn._launch, "_force_strategy", strategy)
        monkeypatch.setattr(cudcn._launch, "_force_channel_block", block)
        grads[strategy] = cudcn.deform_roi_pool_backward(grad_output, **args,
                                                         needs=("offset", "mask"))
    names = [launch.kernel.name.rsplit("::", 1)[-1] for launch in launches
             if "offset_partial" in launch.kernel.name]
    assert names == ["deform_roi_pool_backward_offset_partial_planes",
                     "deform_roi_pool_backward_offset_partial"]
    blocks = [launch.args[launch.kernel.param_names.index("channel_block")]
              for launch in launches if "offset_partial" in launch.kernel.name]
    assert blocks == ([7, 7] if block is None else [3, 3])
    tolerance = 1e-13 if dtype == np.float64 else 2e-6
    for name in ("offset", "mask"):
        planes, items = getattr(grads["planes"], name), getattr(grads["items"], name)
        assert np.abs(items).max() > 0.1 and not planes[5].any()
        assert_close(planes, items, rtol=tolerance, atol=tolerance, what=name)


BAD = [
    ("rois-shape", dict(rois=np.zeros((5, 4))), ValueError, ["rois", "(K, 5)"]),
    ("rois-rank", dict(rois=np.zeros(5)), ValueError, ["rois", "2-D"]),
    ("rois-int", dict(rois=np.zeros((5, 5), np.int64)), TypeError, ["rois", "int64"]),
    ("rois-list", dict(rois=[[0, 1, 2, 3, 4]]), TypeError, ["rois", "list"]),
    ("offset-shape", dict(offset=np.zeros((5, 2, 3, 4))), ValueError, ["offset", "(5, 2, 3, 3)"]),
    ("offset-rank", dict(offset=np.zeros((5, 2, 9))), ValueError, ["offset", "4-D"]),
    ("mask-shape", dict(mask=np.zeros((5, 2, 3, 3))), ValueError, ["mask", "(5, 1, 3, 3)"]),
    ("output-size-zero", dict(output_size=0), ValueError, ["output_size", ">= 1"]),
    ("output-size-float", dict(output_size=2.5), TypeError, ["output_size"]),
    ("scale-zero", dict(spatial_scale=0.0), ValueError, ["spatial_scale", "positive"]),
    ("scale-nan", dict(spatial_scale=float("nan")), ValueError, ["spatial_scale"]),
    ("sampling-float", dict(sampling_ratio=2.0), TypeError, ["sampling_ratio", "int"]),
    ("gamma-string", dict(gamma="0.1"), TypeError, ["gamma"]),
    ("offset-dtype", dict(offset=np.zeros((5, 2, 3, 3), np.float32)), TypeError,
     ["offset", "float32"]),
    ("input-rank", dict(input=np.zeros((3, 12, 10))), ValueError, ["input", "4-D"]),
]


@pytest.mark.parametrize("change, error, words", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_bad_input(change, error, words, launches):
    args = dict(deform_roi_pool_inputs(), **change)
    with pytest.raises(error) as info:
        cudcn.deform_roi_pool(**args)
    for word in words:
        assert word in str(info.value)
    with pytest.raises((TypeError, ValueError)):
        cudcn.deform_roi_pool_backward(np.zeros((5, 3, 3, 3)), **args)
    assert launches == []


@pytest.mark.torchvision
def test_negative_sampling_ratio_is_adaptive_as_in_torchvision():
    """torchvision writes adaptive sampling as -1, mmcv as 0: both mean
    ceil(roi size / bins) samples per axis."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    args = deform_roi_pool_inputs(offset=False, sampling_ratio=-1, seed=9)
    out = cudcn.deform_roi_pool(**args)
    np.testing.assert_array_equal(out, cudcn.deform_roi_pool(**dict(args, sampling_ratio=0)))
    expected = torchvision.ops.roi_align(
        torch.from_numpy(args["input"]), torch.from_numpy(args["rois"]), args["output_size"],
        args["spatial_scale"], sampling_ratio=-1, aligned=True)
    assert_close(out, expected.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype_name", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("channels", [3, 130])
def test_a_channels_last_map_is_the_pixels_the_forward_reads(channels, dtype_name, launches):
    """The CPU's forward reads a channels-last map (the memory of an (N, H,
    W, C) array, as a torch channels_last tensor's) where it lies: no fill,
    the forward's pixels are its memory; output and gradients are those of
    a C-contiguous copy, bit for bit."""
    dtype = numpy_dtype(dtype_name)
    args = deform_roi_pool_inputs(channels=channels, rois=6, mask=True, sampling_ratio=2,
                                  seed=15)
    args = {k: v.astype(dtype) if isinstance(v, np.ndarray) and k != "rois" else v
            for k, v in args.items()}
    last = dict(args, input=np.ascontiguousarray(
        args["input"].transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))
    del launches[:]
    out = cudcn.deform_roi_pool(**last)
    assert [launch.kernel.name.rsplit("::", 1)[-1] for launch in launches] == [
        "deform_roi_pool_forward_pixels"]
    assert launches[0].args[0].ctypes.data == last["input"].ctypes.data
    assert np.array_equal(out.view(np.uint8), cudcn.deform_roi_pool(**args).view(np.uint8))
    grad_output = np.random.default_rng(16).standard_normal(out.shape).astype(dtype)
    got = cudcn.deform_roi_pool_backward(grad_output, **last)
    want = cudcn.deform_roi_pool_backward(grad_output, **args)
    for name in ("input", "offset", "mask"):
        assert np.array_equal(getattr(got, name).view(np.uint8),
                              getattr(want, name).view(np.uint8)), name
