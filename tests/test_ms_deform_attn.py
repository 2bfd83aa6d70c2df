"""ms_deform_attn (SPEC section 6): forward against the float64 reference in
every dtype and layout, gradients against finite differences, every
strategy's kernels, bad input, NaN and inf locations, empty batches."""

import numpy as np
import pytest

import cudcn
from cudcn import reference
from cudcn.testing import ms_deform_attn_inputs
from conftest import assert_close, assert_directional_gradients, numpy_dtype

CASES = {
    "one-level": dict(shapes=((5, 7),), points=4),
    "multi-level": dict(shapes=((6, 5), (3, 4), (2, 2)), points=3),
    "deformable-detr-like": dict(shapes=((8, 8), (4, 4), (2, 2), (1, 1)), heads=8, channels=4,
                                 points=4, queries=6, batch=1),
    "points-per-level": dict(shapes=((6, 5), (3, 4)), points_per_level=(2, 5)),
    "wide-channels": dict(shapes=((4, 3), (2, 2)), channels=37, heads=1, points=2),
    "one-channel": dict(shapes=((4, 3), (2, 5)), channels=1, heads=3),
    "mostly-outside": dict(shapes=((3, 3), (5, 2)), outside=0.8),
    # 300 queries' points on one pixel: ~1200 entries of one key, more
    # chunks than a thread adds (the sorted path's grouped reduction).
    "crowded-pixel": dict(shapes=((1, 1), (2, 2)), queries=300, heads=1, channels=3, batch=1,
                          points=4, outside=0),
}
# Relative to the largest |expected|, as the peers' tests compare.
TOLERANCE = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-2, "bfloat16": 5e-2}
GRADS = ("value", "sampling_locations", "attention_weights")


def _cast(args, dtype):
    floats = ("value", "sampling_locations", "attention_weights")
    return {k: v.astype(dtype) if k in floats else v for k, v in args.items()}


def _scale(x):
    return max(1.0, float(np.abs(np.asarray(x, np.float64)).max()))


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference(case, dtype):
    args = _cast(ms_deform_attn_inputs(**CASES[case], seed=1), numpy_dtype(dtype))
    out = cudcn.ms_deform_attn(**args)
    want = reference.ms_deform_attn(**args)  # from the same (rounded) inputs
    assert out.dtype == numpy_dtype(dtype) and out.shape == want.shape
    tol = TOLERANCE[dtype] * _scale(want)
    assert_close(out, want, rtol=0, atol=tol, what=case)


@pytest.mark.parametrize("case", CASES)
def test_forward_of_every_strategy_and_index_type(case, strategy, force_index64):
    """The forward has one kernel; 'items' runs it in blocks of 3 channels."""
    args = ms_deform_attn_inputs(**CASES[case], seed=2)
    assert_close(cudcn.ms_deform_attn(**args), reference.ms_deform_attn(**args), rtol=0,
                 atol=1e-12, what=case)


@pytest.mark.parametrize("case", CASES)
def test_gradients_match_finite_differences(case, strategy):
    """value and attention_weights enter linearly (any point); the locations
    are differentiated away from the bilinear kinks."""
    rng = np.random.default_rng(3)
    args = ms_deform_attn_inputs(**CASES[case], seed=3)
    out = reference.ms_deform_attn(**args)
    grad_output = rng.standard_normal(out.shape)
    grads = cudcn.ms_deform_attn_backward(grad_output, **args)
    assert_directional_gradients(reference.ms_deform_attn, args, grads, grad_output, rng,
                                 rel=1e-7, abs=1e-9, names=("value", "attention_weights"))
    smooth = ms_deform_attn_inputs(**{**CASES[case], "outside": 0}, away_from_kinks=True,
                                   seed=4)
    grads = cudcn.ms_deform_attn_backward(grad_output, **smooth)
    assert_directional_gradients(reference.ms_deform_attn, smooth, grads, grad_output, rng,
                                 rel=1e-6, abs=1e-8, names=GRADS, eps=1e-5 / 8)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_gradients_in_every_dtype(dtype, strategy):
    """Each dtype's gradients against float64's from the same rounded inputs."""
    args = _cast(ms_deform_attn_inputs(**CASES["multi-level"], seed=5), numpy_dtype(dtype))
    grad_output = np.random.default_rng(6).standard_normal((2, 5, 8)).astype(numpy_dtype(dtype))
    got = cudcn.ms_deform_attn_backward(grad_output, **args)
    wide = _cast(args, np.float64)
    want = cudcn.ms_deform_attn_backward(grad_output.astype(np.float64), **wide)
    for name in GRADS:
        g, w = getattr(got, name), getattr(want, name)
        assert g.dtype == numpy_dtype(dtype) and g.shape == w.shape, name
        assert_close(g, w, rtol=0, atol=TOLERANCE[dtype] * 4 * _scale(w), what=name)


def test_strategies_agree_and_deterministic_ones_repeat_their_bits(monkeypatch):
    args = ms_deform_attn_inputs(**CASES["deformable-detr-like"], dtype=np.float32, seed=7)
    grad_output = np.random.default_rng(8).standard_normal((1, 6, 32)).astype(np.float32)
    results = {}
    for name in ("planes", "items", "sorted"):
        monkeypatch.setattr(cudcn._launch, "_force_strategy", name)
        first = cudcn.ms_deform_attn_backward(grad_output, deterministic=True, **args)
        again = cudcn.ms_deform_attn_backward(grad_output, deterministic=True, **args)
        if name != "items":  # the others add in a fixed order
            for f, a in zip(first, again):
                assert np.array_equal(f, a), name
        results[name] = first
    for name in ("items", "sorted"):
        for field in GRADS:
            assert_close(getattr(results[name], field), getattr(results["planes"], field),
                         rtol=1e-5, atol=1e-5, what=f"{name} {field}")
    # The point gradients come from one kernel in every strategy: the same bits.
    for field in ("sampling_locations", "attention_weights"):
        assert np.array_equal(getattr(results["items"], field),
                              getattr(results["planes"], field))


def test_needs_chooses_the_gradients():
    args = ms_deform_attn_inputs(seed=9)
    grad_output = np.ones((2, 5, 8))
    every = cudcn.ms_deform_attn_backward(grad_output, **args)
    for name in GRADS:
        only = cudcn.ms_deform_attn_backward(grad_output, needs=name, **args)
        for field in GRADS:
            value = getattr(only, field)
            if field == name:
                assert np.array_equal(value, getattr(every, field))
            else:
                assert value is None


def test_im2col_step_changes_nothing():
    args = ms_deform_attn_inputs(batch=3, seed=10)
    want = cudcn.ms_deform_attn(**args)
    for step in (1, 2, 64, 1000):
        assert np.array_equal(cudcn.ms_deform_attn(**args, im2col_step=step), want)


def test_nan_and_infinite_locations_count_as_outside():
    args = ms_deform_attn_inputs(seed=11)
    loc = args["sampling_locations"].copy()
    loc[0, 0, 0, 0, 0] = [np.nan, 0.5]
    loc[0, 1, 1, 1, 2] = [0.5, np.inf]
    loc[1, 2, 0, 0, 1] = [-np.inf, np.nan]
    args["sampling_locations"] = loc
    out = cudcn.ms_deform_attn(**args)
    assert np.isfinite(out).all()
    assert_close(out, reference.ms_deform_attn(**args), rtol=0, atol=1e-12)
    grads = cudcn.ms_deform_attn_backward(np.ones(out.shape), **args)
    assert all(np.isfinite(g).all() for g in grads)
    for at in [(0, 0, 0, 0, 0), (0, 1, 1, 1, 2), (1, 2, 0, 0, 1)]:
        assert not grads.sampling_locations[at].any() and grads.attention_weights[at] == 0


def test_points_on_the_window_edge():
    """x = -1 or y = H exactly (loc 0 - 0.5/W, 1 + 0.5/H) is outside the open
    window: no sample, zero gradients; just inside it samples one corner."""
    value = np.arange(1.0, 7.0).reshape(1, 6, 1, 1)  # one level of 2 x 3
    shapes, starts = np.array([[2, 3]]), np.array([0])
    loc = np.array([[-0.5 / 3, 0.5], [0.5, 1 + 0.5 / 2], [-0.25 / 3, 0.5]]).reshape(1, 1, 1, 1, 3, 2)
    weights = np.ones((1, 1, 1, 1, 3))
    out = cudcn.ms_deform_attn(value, shapes, starts, loc, weights)
    # (x, y) = (-0.75, 0.5): 0.25 of the row-0/1 average at x = 0, (1 + 4) / 2.
    assert out[0, 0, 0] == pytest.approx(0.25 * 2.5)
    grads = cudcn.ms_deform_attn_backward(np.ones((1, 1, 1)), value, shapes, starts, loc, weights)
    assert not grads.sampling_locations[0, 0, 0, 0, :2].any()
    assert not grads.attention_weights[0, 0, 0, 0, :2].any()


@pytest.mark.parametrize("shape", [dict(batch=0), dict(queries=0)], ids=["N=0", "Lq=0"])
def test_empty_batch_or_queries(shape):
    args = ms_deform_attn_inputs(**shape, seed=12)
    out = cudcn.ms_deform_attn(**args)
    assert out.shape == (args["value"].shape[0], args["sampling_locations"].shape[1], 8)
    grads = cudcn.ms_deform_attn_backward(out, **args)
    assert grads.value.shape == args["value"].shape and not grads.value.any()
    assert grads.sampling_locations.shape == args["sampling_locations"].shape


def _bad(**change):
    args = ms_deform_attn_inputs(seed=13)
    args.update(change)
    return args


@pytest.mark.parametrize("args, error, words", [
    (_bad(value=np.zeros((2, 42, 2))), ValueError, "value must be 4-D"),
    (_bad(value=[[1.0]]), TypeError, "value must be a numpy.ndarray"),
    (_bad(spatial_shapes=np.array([6, 5, 3, 4])), ValueError, "spatial_shapes must be 2-D"),
    (_bad(spatial_shapes=np.array([[6.0, 5.0], [3.0, 4.0]])), TypeError,
     "spatial_shapes must have an integer dtype"),
    (_bad(spatial_shapes=np.array([[6, 5], [3, 5]])), ValueError, "value has S = 42 rows"),
    (_bad(level_start_index=np.array([0, 31])), ValueError, "level_start_index[1] = 31"),
    (_bad(level_start_index=np.array([0, 30, 42])), ValueError, "level_start_index must have"),
    (_bad(spatial_shapes=np.array([[6, 5], [0, 4]])), ValueError, "spatial_shapes must be >= 1"),
    (_bad(sampling_locations=np.zeros((2, 5, 2, 2, 3, 3))), ValueError,
     "sampling_locations must have shape (2, 5, 2, 2, 3, 2)"),
    (_bad(attention_weights=np.zeros((2, 5, 2, 2, 4))), ValueError,
     "attention_weights must have shape (2, 5, 2, 2, 3)"),
    (_bad(attention_weights=np.zeros((2, 5, 2, 2, 3), np.float32)), TypeError,
     "attention_weights has dtype float32 but value has float64"),
    (_bad(value=np.zeros((2, 42, 2, 4), np.int64)), TypeError, "value has dtype int64"),
    (_bad(im2col_step=0), ValueError, "im2col_step must be >= 1"),
    (_bad(points_per_level=(3,)), ValueError, "sampling_locations must be 5-D"),
])
def test_bad_input_names_the_argument(args, error, words):
    with pytest.raises(error) as caught:
        cudcn.ms_deform_attn(**args)
    assert words in str(caught.value)


def test_bad_points_per_level():
    args = ms_deform_attn_inputs(points_per_level=(2, 5), seed=14)
    for ppl, error, words in [((2, 4), ValueError, "sum(points_per_level)"),
                              ((7,), ValueError, "points_per_level has 1 entries"),
                              ((2, 0, 5), ValueError, "points_per_level has 3"),
                              ((2.0, 5), TypeError, "points_per_level must be a sequence"),
                              (7, TypeError, "points_per_level must be a sequence")]:
        with pytest.raises(error) as caught:
            cudcn.ms_deform_attn(**{**args, "points_per_level": ppl})
        assert words in str(caught.value), ppl


def test_bad_grad_output_and_needs():
    args = ms_deform_attn_inputs(seed=15)
    with pytest.raises(ValueError, match="grad_output must have shape"):
        cudcn.ms_deform_attn_backward(np.zeros((2, 5, 9)), **args)
    with pytest.raises(ValueError, match="needs names unknown"):
        cudcn.ms_deform_attn_backward(np.zeros((2, 5, 8)), needs=("values",), **args)
