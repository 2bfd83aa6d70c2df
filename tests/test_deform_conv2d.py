"""deform_conv2d on the CPU backend against the float64 reference and finite differences."""

import contextvars

import numpy as np
import pytest

import cudcn
from cudcn import reference
from cudcn.testing import deform_conv2d_inputs
from conftest import assert_close, assert_directional_gradients, numpy_dtype
from deform_conv2d_cases import case_params

DIFFERENTIABLE = ("input", "offset", "weight", "bias", "mask")
# The item strategy's col2im adds with atomics, in an order threads decide.
_EXACT_UNLESS_ATOMIC = {"planes": dict(rtol=0, atol=0), "sorted": dict(rtol=0, atol=0),
                        "items": dict(rtol=1e-13, atol=1e-14)}
TOLERANCES = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-4)}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", case_params())
def test_forward_matches_reference(case, dtype, strategy):
    args = deform_conv2d_inputs(dtype=dtype, **case)
    out = cudcn.deform_conv2d(**args)
    assert out.dtype == dtype and isinstance(out, np.ndarray)
    assert_close(out, reference.deform_conv2d(**args), **TOLERANCES[dtype])


@pytest.mark.parametrize("case", case_params())
def test_gradients_match_finite_differences(case, strategy):
    """Directional derivatives of <grad_output, output> along random directions."""
    args = deform_conv2d_inputs(away_from_kinks=True, seed=1, **case)
    rng = np.random.default_rng(2)
    grad_output = rng.standard_normal(cudcn.deform_conv2d(**args).shape)
    grads = cudcn.deform_conv2d_backward(grad_output, **args)
    assert_directional_gradients(reference.deform_conv2d, args, grads, grad_output, rng,
                                 rel=1e-6, abs=1e-7, names=DIFFERENTIABLE)


@pytest.mark.parametrize("case", case_params(["3x3", "groups-and-offset-groups", "5x3-asymmetric"]))
def test_float32_gradients_match_float64(case):
    args64 = deform_conv2d_inputs(away_from_kinks=True, **case)
    args32 = deform_conv2d_inputs(away_from_kinks=True, dtype=np.float32, **case)
    grad_output = np.random.default_rng(3).standard_normal(cudcn.deform_conv2d(**args64).shape)
    g64 = cudcn.deform_conv2d_backward(grad_output, **args64)
    g32 = cudcn.deform_conv2d_backward(grad_output.astype(np.float32), **args32)
    for name in DIFFERENTIABLE:
        if getattr(g64, name) is not None:
            scale = np.abs(getattr(g64, name)).max()
            assert getattr(g32, name).dtype == np.float32
            assert_close(getattr(g32, name), getattr(g64, name), rtol=1e-4, atol=1e-5 * scale,
                         what=name)


@pytest.mark.torchvision
def test_zero_offsets_without_mask_equal_grouped_conv():
    torch = pytest.importorskip("torch")
    args = deform_conv2d_inputs(in_channels=6, out_channels=4, groups=2, offset_groups=3,
                                mask=False, stride=(2, 1), padding=(1, 2), dilation=(1, 2),
                                size=(10, 9))
    args["offset"] = np.zeros_like(args["offset"])
    conv = torch.nn.functional.conv2d(
        torch.from_numpy(args["input"]), torch.from_numpy(args["weight"]),
        torch.from_numpy(args["bias"]), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2,
    )
    assert_close(cudcn.deform_conv2d(**args), conv.numpy(), rtol=1e-12, atol=1e-12)


def test_batch_zero():
    args = deform_conv2d_inputs(batch=0)
    out = cudcn.deform_conv2d(**args)
    assert out.shape == (0, 6, 7, 6)
    grads = cudcn.deform_conv2d_backward(out, **args)
    for name in DIFFERENTIABLE:
        assert getattr(grads, name).shape == args[name].shape
    assert not grads.weight.any() and not grads.bias.any()


WORKSPACE_ARGS = ("columns", "grad_columns", "corner_base", "corner_weight", "padded_pixels",
                  "padded_grad_pixels")


def test_batch_33_runs_in_chunks_under_the_workspace_limit(launches, strategy):
    args = deform_conv2d_inputs(batch=33, in_channels=4, size=(6, 5), seed=4)
    rng = np.random.default_rng(5)
    expected = reference.deform_conv2d(**args)
    grad_output = rng.standard_normal(expected.shape)
    full = cudcn.deform_conv2d_backward(grad_output, **args)
    del launches[:]
    limit = 4 * (4 * 9 * 6 * 5 * 8)  # four images' column buffers
    with cudcn.workspace_limit(limit):
        out = cudcn.deform_conv2d(**args)
        forward_launches = list(launches)
        chunked = cudcn.deform_conv2d_backward(grad_output, **args)
    assert_close(out, expected, rtol=1e-10, atol=1e-12)
    gathers = [l for l in forward_launches if "im2col" in l.kernel.name]
    assert len(gathers) > 2  # several chunks
    for launch in launches:
        named = dict(zip(launch.kernel.param_names, launch.args))
        assert sum(named[n].nbytes for n in WORKSPACE_ARGS if n in named) <= limit
    for name in DIFFERENTIABLE:
        assert_close(getattr(chunked, name), getattr(full, name), rtol=1e-12, atol=1e-12, what=name)


@pytest.mark.parametrize("batch, most, sizes", [(4, 3, [2, 2]), (33, 4, [3, 4, 4] * 3),
                                                 (5, 5, [5]), (7, 1, [1] * 7)])
def test_chunks_are_as_few_as_fit_and_of_even_sizes(launches, monkeypatch, batch, most, sizes):
    """With room for ``most`` images, a batch runs in ceil(batch / most) chunks
    whose sizes differ by one image at most, forward and backward, with the
    unchunked results."""
    args = deform_conv2d_inputs(batch=batch, in_channels=4, size=(6, 5), seed=6)
    grad_output = np.random.default_rng(7).standard_normal(cudcn.deform_conv2d(**args).shape)
    whole = [cudcn.deform_conv2d(**args), *cudcn.deform_conv2d_backward(grad_output, **args)]
    monkeypatch.setattr(cudcn._workspace, "images_per_chunk",
                        lambda batch, per_image, xp=np: min(batch, most))
    del launches[:]
    chunked = [cudcn.deform_conv2d(**args), *cudcn.deform_conv2d_backward(grad_output, **args)]
    out_h = chunked[0].shape[2]
    gathers = [l.args[l.kernel.param_names.index("n")] // out_h for l in launches
               if l.kernel.name.endswith("im2col_pixels")]  # offset_groups = 1
    assert gathers == sizes * 2  # the forward's chunks, then the backward's
    for got, want in zip(chunked, whole):
        assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_workspace_limit_is_restored_and_checked():
    before = cudcn.get_workspace_limit()
    assert before == cudcn.DEFAULT_CPU_WORKSPACE_LIMIT == 16 * 2**20
    assert cudcn.get_workspace_limit("gpu") == cudcn.DEFAULT_WORKSPACE_LIMIT == 256 * 2**20
    with cudcn.workspace_limit(1024):
        assert cudcn.get_workspace_limit() == 1024
    assert cudcn.get_workspace_limit() == before
    with pytest.raises(ValueError, match="nbytes"):
        cudcn.set_workspace_limit(0)
    with pytest.raises(TypeError, match="nbytes"):
        cudcn.set_workspace_limit(1.5)

    def set_then_reset():
        cudcn.set_workspace_limit(2048)
        assert cudcn.get_workspace_limit() == cudcn.get_workspace_limit("gpu") == 2048
        cudcn.set_workspace_limit(None)  # each backend's default again
        return cudcn.get_workspace_limit(), cudcn.get_workspace_limit("gpu")

    assert contextvars.copy_context().run(set_then_reset) == (16 * 2**20, 256 * 2**20)


def test_any_memory_layout_gives_the_same_result(strategy):
    args = deform_conv2d_inputs(groups=2, in_channels=4, out_channels=4, seed=6)
    expected_out = cudcn.deform_conv2d(**args)
    grad_output = np.random.default_rng(7).standard_normal(expected_out.shape)
    expected = cudcn.deform_conv2d_backward(grad_output, **args)
    strided = dict(args)
    strided["input"] = np.asfortranarray(args["input"])
    strided["weight"] = np.asfortranarray(args["weight"])
    big = np.zeros(args["offset"].shape[:3] + (2 * args["offset"].shape[3],))
    big[..., ::2] = args["offset"]
    strided["offset"] = big[..., ::2]
    strided["mask"] = np.ascontiguousarray(args["mask"].transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    strided["bias"] = np.repeat(args["bias"], 2)[::2]
    for name in ("input", "offset", "weight", "mask", "bias"):
        assert not strided[name].flags.c_contiguous
    assert_close(cudcn.deform_conv2d(**strided), expected_out, rtol=0, atol=0)
    got = cudcn.deform_conv2d_backward(np.asfortranarray(grad_output), **strided)
    for name in DIFFERENTIABLE:
        assert_close(getattr(got, name), getattr(expected, name), what=name,
                     **_EXACT_UNLESS_ATOMIC[strategy])


def test_64bit_index_path_matches_32bit(force_index64, launches, strategy):
    args = deform_conv2d_inputs(groups=2, offset_groups=2, in_channels=4, out_channels=4)
    out64 = cudcn.deform_conv2d(**args)
    grads64 = cudcn.deform_conv2d_backward(out64, **args)
    assert launches and all(launch.index == "long long" for launch in launches)
    assert all(a.dtype == np.int64 for launch in launches for name, a in
               zip(launch.kernel.param_names, launch.args) if name in ("n", "corner_base"))
    cudcn._launch._force_index64 = False
    del launches[:]
    out32 = cudcn.deform_conv2d(**args)
    grads32 = cudcn.deform_conv2d_backward(out32, **args)
    assert all(launch.index == "int" for launch in launches)
    assert_close(out64, out32, rtol=0, atol=0)
    for name in DIFFERENTIABLE:
        assert_close(getattr(grads64, name), getattr(grads32, name), what=name,
                     **_EXACT_UNLESS_ATOMIC[strategy])


def test_index_type_switches_past_int32():
    assert cudcn._launch.index_type(2**31 - 1, 10) == "int"
    assert cudcn._launch.index_type(10, 2**31) == "long long"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30, -1e30, 3e9])
def test_non_finite_and_huge_offsets_sample_zero(bad, strategy):
    args = deform_conv2d_inputs(batch=2, seed=8)
    # A view into a NaN-filled buffer: a read before or after the input shows as NaN.
    guarded = np.full((4,) + args["input"].shape[1:], np.nan)
    guarded[1:3] = args["input"]
    args["input"] = guarded[1:3]
    assert args["input"].flags.c_contiguous
    args["offset"][0, 4, 2, 3] = bad  # dy of kernel point 2 at one pixel
    args["offset"][1, 7, :, :] = bad  # dx of kernel point 3 everywhere in image 1
    out = cudcn.deform_conv2d(**args)
    assert np.isfinite(out).all()
    assert_close(out, reference.deform_conv2d(**args), rtol=1e-10, atol=1e-12)
    grads = cudcn.deform_conv2d_backward(np.ones_like(out), **args)
    for name in DIFFERENTIABLE:
        assert np.isfinite(getattr(grads, name)).all(), name
    assert grads.offset[0, 4:6, 2, 3].tolist() == [0.0, 0.0]
    assert not grads.offset[1, 6:8].any() and not grads.mask[1, 3].any()


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_needs_computes_only_what_is_asked(name):
    args = deform_conv2d_inputs(seed=9)
    grad_output = np.random.default_rng(10).standard_normal(cudcn.deform_conv2d(**args).shape)
    every = cudcn.deform_conv2d_backward(grad_output, **args)
    only = cudcn.deform_conv2d_backward(grad_output, needs=(name,), **args)
    for other in DIFFERENTIABLE:
        if other == name:
            assert_close(getattr(only, other), getattr(every, other), rtol=0, atol=0)
        else:
            assert getattr(only, other) is None
    assert cudcn.deform_conv2d_backward(grad_output, needs=name, **args)._asdict().keys() == set(
        DIFFERENTIABLE)


def test_caller_arrays_are_never_written():
    args = deform_conv2d_inputs(seed=11)
    arrays = {k: v for k, v in args.items() if isinstance(v, np.ndarray)}
    copies = {k: v.copy() for k, v in arrays.items()}
    out = cudcn.deform_conv2d(**args)
    grad_output = np.ones_like(out)
    cudcn.deform_conv2d_backward(grad_output, **args)
    for k in arrays:
        np.testing.assert_array_equal(arrays[k], copies[k])
    assert (grad_output == 1).all()


def test_scratch_memory_is_reused_and_never_returned(launches):
    """The CPU keeps its temporary buffers between calls (no fresh pages each
    call); what a call returns is its own, never that memory."""
    a = deform_conv2d_inputs(seed=30)
    b = deform_conv2d_inputs(seed=31)
    first = cudcn.deform_conv2d(**a)
    kept = first.copy()
    grads_a = cudcn.deform_conv2d_backward(first, **a)
    kept_grads = [None if g is None else g.copy() for g in grads_a]
    columns = [l for l in launches if "im2col" in l.kernel.name]
    cudcn.deform_conv2d(**b)
    cudcn.deform_conv2d_backward(first, **b)
    assert np.array_equal(first, kept)
    for got, want in zip(grads_a, kept_grads):
        assert (got is None and want is None) or np.array_equal(got, want)
    again = [l for l in launches if "im2col" in l.kernel.name][len(columns):]
    def buffer(launch):
        named = dict(zip(launch.kernel.param_names, launch.args))
        return named["columns_t" if "columns_t" in named else "columns"]

    first_buffer, later_buffer = buffer(columns[0]), buffer(again[0])
    assert first_buffer.ctypes.data == later_buffer.ctypes.data  # the same memory
    cudcn.release_scratch()


@pytest.mark.parametrize("rows, gemms", [(50, 5), (100, 3), (1000, 1)])
def test_forward_stacks_small_images_into_gemms_of_bounded_rows(rows, gemms, monkeypatch):
    """With one group, a GEMM takes as many images (42 pixels each) as fit
    STACKED_ROWS: 1, 2 (and the last alone) or all 5 of them."""
    from cudcn import deform_conv

    monkeypatch.setattr(cudcn._launch, "_force_strategy", "planes")
    monkeypatch.setattr(deform_conv._gemm, "STACKED_ROWS", rows)
    products = []
    real = deform_conv._gemm.matmul

    def counted(xp, a, b, *rest, **kwargs):
        products.append(a.shape)
        return real(xp, a, b, *rest, **kwargs)

    monkeypatch.setattr(deform_conv._gemm, "matmul", counted)
    args = deform_conv2d_inputs(batch=5, size=(7, 6), seed=45)
    out = cudcn.deform_conv2d(**args)
    assert len(products) == gemms
    assert sum(shape[0] for shape in products) == 5 * 42
    assert_close(out, reference.deform_conv2d(**args), rtol=1e-10, atol=1e-12)


def test_backward_never_reads_memory_it_did_not_write(monkeypatch):
    """Every buffer the backward takes uninitialised (its scratch, the plane
    col2im's gradient, which its threads clear and write whole) starts as
    NaN here: the gradients are those of a run on zeroed memory, bit for bit."""
    args = deform_conv2d_inputs(batch=3, in_channels=6, out_channels=4, groups=2,
                                offset_groups=3, size=(7, 5), seed=40)
    grad_output = np.random.default_rng(41).standard_normal(
        cudcn.deform_conv2d(**args).shape)
    cudcn.release_scratch()
    monkeypatch.setattr(np, "empty", _zeroed(np.empty))
    clean = cudcn.deform_conv2d_backward(grad_output, **args)
    cudcn.release_scratch()
    monkeypatch.setattr(np, "empty", _poisoned(np.empty))
    poisoned = cudcn.deform_conv2d_backward(grad_output, **args)
    cudcn.release_scratch()
    for name in DIFFERENTIABLE:
        assert np.array_equal(getattr(poisoned, name), getattr(clean, name)), name


def test_padded_copies_keep_their_zeros_from_call_to_call(monkeypatch):
    """The padded copies' borders are cleared only when their memory first
    holds a layout (_workspace.padded_scratch): calls one after the other,
    in other geometries, batch sizes and dtypes in between, give each call's
    result on fresh memory, bit for bit (new memory starts as NaN here)."""
    monkeypatch.setattr(np, "empty", _poisoned(np.empty))
    calls = [deform_conv2d_inputs(batch=3, in_channels=4, out_channels=4, size=(6, 5), seed=50),
             deform_conv2d_inputs(batch=2, in_channels=4, out_channels=4, size=(5, 7), seed=51),
             deform_conv2d_inputs(batch=5, in_channels=4, out_channels=4, size=(6, 5), seed=52),
             deform_conv2d_inputs(batch=1, in_channels=4, out_channels=4, size=(6, 5), seed=53,
                                  dtype=np.float32),
             deform_conv2d_inputs(batch=2, in_channels=8, out_channels=4, size=(6, 5), seed=54),
             deform_conv2d_inputs(batch=4, in_channels=4, out_channels=4, size=(6, 5), seed=55)]

    def run(args):
        out = cudcn.deform_conv2d(**args)
        return [out, *cudcn.deform_conv2d_backward(out, **args)]

    fresh = []
    for args in calls:
        cudcn.release_scratch()
        fresh.append(run(args))
    cudcn.release_scratch()
    for i, (args, want) in enumerate(zip(calls, fresh)):
        for got, expected in zip(run(args), want):
            assert (got is None and expected is None) or np.array_equal(got, expected), i
    cudcn.release_scratch()


def _zeroed(empty):
    def zeroed(shape, dtype=float, *args, **kwargs):
        array = empty(shape, dtype, *args, **kwargs)
        array.fill(0)
        return array
    return zeroed


def _poisoned(empty):
    def poisoned(shape, dtype=float, *args, **kwargs):
        array = empty(shape, dtype, *args, **kwargs)
        array.view(np.uint8).fill(0xFF)  # NaN in every float dtype, -1 in the integers
        return array
    return poisoned


# The channels of an offset group across two convolution groups (the other
# cases' offset groups lie within one); wide, a channel block of the plane
# backward's scatter across them, and runs of its offset gradient longer
# than its vector lanes.
_PIXEL_LAYOUTS = dict(
    across_groups=dict(in_channels=6, out_channels=4, groups=2, size=(5, 19)),
    wide_across_groups=dict(in_channels=36, out_channels=4, groups=2, size=(5, 7)),
)


@pytest.mark.parametrize("index64", [False, True], ids=["int", "long-long"])
@pytest.mark.parametrize("dtype_name", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", case_params() + [
    pytest.param(c, id=name) for name, c in _PIXEL_LAYOUTS.items()])
def test_pixel_and_item_gathers_sample_the_same_columns(case, dtype_name, index64, launches,
                                                        monkeypatch):
    """The plane strategy's gather (the CPU's), from channels-last pixels into
    pixel-major columns (images, P, groups, KK, C / groups), and the item
    strategy's (the GPU's), from the input into (images, C * KK, P): the same
    values (a sum of four corners where the item gather adds only those in
    the image, so a zero may differ in sign)."""
    from cudcn import deform_conv

    dtype = numpy_dtype(dtype_name)
    monkeypatch.setattr(cudcn._launch, "_force_index64", index64)
    args = deform_conv2d_inputs(dtype=dtype, **case)
    x, offset, mask = args["input"], args["offset"], args["mask"]
    g = deform_conv._geometry(x, offset, args["weight"], args["bias"], mask, args["stride"],
                              args["padding"], args["dilation"])
    monkeypatch.setattr(cudcn._launch, "_force_strategy", "planes")
    pixels = deform_conv._Plan(g, 1, False, forward=True)
    monkeypatch.setattr(cudcn._launch, "_force_strategy", "items")
    items = deform_conv._Plan(g, 1, False, forward=True)
    assert pixels.pixels and not items.pixels
    pixel_major = np.full((g.batch, g.out_pixels, g.groups, g.column_rows // g.groups), np.nan,
                          dtype)
    usual = np.full((g.batch, g.column_rows, g.out_pixels), np.inf, dtype)
    pixels.fill_pixels(x)
    pixels.im2col_pixels(offset, mask, pixel_major)
    items.im2col(x, offset, mask, usual)
    names = [launch.kernel.name.rsplit("::", 1)[-1] for launch in launches]
    assert names == ["deform_conv2d_fill_pixels", "deform_conv2d_im2col_pixels",
                     "deform_conv2d_im2col"]
    assert all(launch.index == ("long long" if index64 else "int") for launch in launches)
    cw = g.channels // g.groups  # (b, p, group, k, c) -> (b, group, c, k, p)
    as_usual = pixel_major.reshape(g.batch, g.out_pixels, g.groups, g.kernel_points, cw)
    as_usual = as_usual.transpose(0, 2, 4, 3, 1).reshape(usual.shape)
    assert np.array_equal(as_usual.astype(np.float64), usual.astype(np.float64))


# Sums of tens of products in the accumulation type, or one rounding into a
# 16-bit one.
_ADJOINT_ROUNDOFF = {"float64": 2.0**-53 * 64, "float32": 2.0**-24 * 64, "float16": 2.0**-11,
                     "bfloat16": 2.0**-8}


@pytest.mark.parametrize("index64", [False, True], ids=["int", "long-long"])
@pytest.mark.parametrize("dtype_name", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", case_params() + [
    pytest.param(c, id=name) for name, c in _PIXEL_LAYOUTS.items()])
def test_pixel_and_item_adjoints_give_the_same_gradients(case, dtype_name, index64, launches,
                                                         monkeypatch):
    """The plane strategy's backward (the CPU's), whose adjoint kernels read
    pixel-major gradient columns and channels-last pixels and whose weight
    gradient comes in the pixel-major columns' order, and the item
    strategy's (the GPU's), on the usual layouts: the same gradients, to
    the rounding of their different summation orders."""
    dtype = numpy_dtype(dtype_name)
    monkeypatch.setattr(cudcn._launch, "_force_index64", index64)
    args = deform_conv2d_inputs(dtype=dtype, seed=7, **case)
    grad_output = np.random.default_rng(8).standard_normal(
        cudcn.deform_conv2d(**args).shape).astype(dtype)
    del launches[:]
    monkeypatch.setattr(cudcn._launch, "_force_strategy", "planes")
    planes = cudcn.deform_conv2d_backward(grad_output, **args)
    names = {launch.kernel.name.rsplit("::", 1)[-1] for launch in launches}
    assert {"deform_conv2d_corners", "deform_conv2d_col2im_pixels",
            "deform_conv2d_col2im_coord_pixels", "deform_conv2d_weight_rows_for_pixels",
            "deform_conv2d_weight_from_pixel_rows"} <= names
    assert all(launch.index == ("long long" if index64 else "int") for launch in launches)
    monkeypatch.setattr(cudcn._launch, "_force_strategy", "items")
    items = cudcn.deform_conv2d_backward(grad_output, **args)
    u = _ADJOINT_ROUNDOFF[dtype_name]
    for name in ("input", "offset", "weight", "mask"):
        got, want = getattr(planes, name), getattr(items, name)
        if want is None:
            assert got is None
            continue
        got, want = got.astype(np.float64), want.astype(np.float64)
        scale = max(1.0, float(np.abs(want).max()))
        assert_close(got, want, rtol=8 * u, atol=8 * u * scale, what=name)


@pytest.mark.parametrize("dtype_name", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", case_params())
def test_a_channels_last_input_gives_a_contiguous_inputs_bits(case, dtype_name, strategy,
                                                             launches):
    """An input laid out channels-last (the memory of an (N, H, W, C) array,
    as a torch channels_last tensor's) is read as it is by the plane
    strategy's fill_pixels, whose col2im writes the input gradient in the
    same layout, and copied for the others: the output and every gradient
    are those of a C-contiguous copy, bit for bit (to the rounding of the
    item strategy's atomic sums)."""
    dtype = numpy_dtype(dtype_name)
    args = deform_conv2d_inputs(dtype=dtype, seed=9, **case)
    nhwc = np.ascontiguousarray(args["input"].transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    last = dict(args, input=nhwc)
    grad_output = np.random.default_rng(10).standard_normal(
        cudcn.deform_conv2d(**args).shape).astype(dtype)
    del launches[:]
    out = cudcn.deform_conv2d(**last)
    grads = cudcn.deform_conv2d_backward(grad_output, **last)
    fills = [dict(zip(launch.kernel.param_names, launch.args))["channels_last"]
             for launch in launches if launch.kernel.name.endswith("deform_conv2d_fill_pixels")]
    read_as_it_is = strategy == "planes" and cudcn._backend.channels_last(nhwc)
    assert fills == ([1, 1] if read_as_it_is else [0, 0] if strategy == "planes" else [])
    assert np.array_equal(out.view(np.uint8), cudcn.deform_conv2d(**args).view(np.uint8))
    assert cudcn._backend.channels_last(grads.input) == read_as_it_is  # the input's layout
    want = cudcn.deform_conv2d_backward(grad_output, **args)
    for name in DIFFERENTIABLE:
        got, expected = getattr(grads, name), getattr(want, name)
        if expected is None:
            assert got is None
        elif strategy == "items":
            u = _ADJOINT_ROUNDOFF[dtype_name]
            scale = max(1.0, float(np.abs(expected.astype(np.float64)).max()))
            assert_close(got, expected, rtol=8 * u, atol=8 * u * scale, what=name)
        else:
            got = np.ascontiguousarray(got)
            assert np.array_equal(got.view(np.uint8), expected.view(np.uint8)), name


def test_a_channels_last_input_in_chunks(launches):
    """Chunks of a channels-last batch (room for one image at a time) are
    channels-last slices: the contiguous input's bits in the same chunks,
    every gradient and the input's alone."""
    args = deform_conv2d_inputs(batch=5, in_channels=20, out_channels=6, size=(9, 8), seed=3)
    last = dict(args, input=np.ascontiguousarray(
        args["input"].transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))
    grad_output = np.random.default_rng(4).standard_normal(cudcn.deform_conv2d(**args).shape)
    with cudcn.workspace_limit(30000):
        want = cudcn.deform_conv2d_backward(grad_output, **args)
        del launches[:]
        out = cudcn.deform_conv2d(**last)
        grads = cudcn.deform_conv2d_backward(grad_output, **last)
        alone = cudcn.deform_conv2d_backward(grad_output, **last, needs=("input",))
    fills = [launch for launch in launches if launch.kernel.name.endswith("fill_pixels")]
    assert [launch.items for launch in fills] == [9] * 10  # one image (9 rows) a launch
    assert np.array_equal(out, cudcn.deform_conv2d(**args))
    for name in DIFFERENTIABLE:
        assert np.array_equal(getattr(grads, name), getattr(want, name)), name
    assert cudcn._backend.channels_last(alone.input) and np.array_equal(alone.input, want.input)


def test_forward_on_the_plane_strategy_gathers_from_pixels(launches, monkeypatch):
    monkeypatch.setattr(cudcn._launch, "_force_strategy", "planes")
    cudcn.deform_conv2d(**deform_conv2d_inputs())
    assert [launch.kernel.name for launch in launches] == [
        "cudcn::deform_conv2d_weight_for_pixels", "cudcn::deform_conv2d_fill_pixels",
        "cudcn::deform_conv2d_im2col_pixels", "cudcn::deform_conv2d_output_from_pixels"]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", [dict(in_channels=4, out_channels=40, size=(6, 7)),
                                  dict(in_channels=6, out_channels=34, groups=2, size=(5, 9))])
def test_pixel_major_output_tiles_match_the_reference(case, bias, monkeypatch):
    """Partial tiles of the output transpose: 42 and 45 pixels, 40 and 17
    output channels a group (16 + 16 + 8, 16 + 1)."""
    monkeypatch.setattr(cudcn._launch, "_force_strategy", "planes")
    args = deform_conv2d_inputs(bias=bias, **case)
    assert_close(cudcn.deform_conv2d(**args), reference.deform_conv2d(**args), rtol=1e-10,
                 atol=1e-12)


def test_gradients_are_c_contiguous(strategy):
    args = deform_conv2d_inputs(groups=2, in_channels=4, out_channels=4)
    grads = cudcn.deform_conv2d_backward(cudcn.deform_conv2d(**args), **args)
    for name in DIFFERENTIABLE:
        assert getattr(grads, name).flags.c_contiguous, name
