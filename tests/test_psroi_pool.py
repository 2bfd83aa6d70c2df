"""deform_psroi_pool on the CPU backend: reference, gradients, edge RoIs, bad input."""

import numpy as np
import pytest

import cudcn
from cudcn import reference
from cudcn.testing import deform_psroi_pool_inputs
from conftest import assert_close, assert_directional_gradients

CASES = {
    "offset-2-classes": dict(),
    "no-offset": dict(offset=False),
    "group-1": dict(group_size=1, output_dim=3, num_classes=3),
    "group-3-pooled-5": dict(group_size=3, pooled_size=5, output_dim=2, num_classes=1),
    "part-differs": dict(pooled_size=4, part_size=3, trans_std=0.2),
    "scale-1/16": dict(spatial_scale=1 / 16, size=(9, 8), sample_per_part=4),
    "scale-1": dict(spatial_scale=1.0, size=(10, 13)),
}


def _params(names=None):
    return [pytest.param(CASES[n], id=n) for n in (names or CASES)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", _params())
def test_forward_matches_reference(case, dtype):
    args = deform_psroi_pool_inputs(dtype=dtype, **case)
    out = cudcn.deform_psroi_pool(**args)
    expected = reference.deform_psroi_pool(**args)
    assert out.dtype == dtype and np.abs(expected).max() > 0.1
    tol = 1e-10 if dtype == np.float64 else 1e-5
    assert_close(out, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", _params(["offset-2-classes", "group-3-pooled-5",
                                          "part-differs", "scale-1"]))
def test_gradients_match_finite_differences(case, strategy):
    args = deform_psroi_pool_inputs(seed=3, **case)
    rng = np.random.default_rng(4)
    grad_output = rng.standard_normal(cudcn.deform_psroi_pool(**args).shape)
    grads = cudcn.deform_psroi_pool_backward(grad_output, **args)
    assert_directional_gradients(reference.deform_psroi_pool, args, grads, grad_output, rng,
                                 rel=1e-6, abs=1e-8, names=("input", "offset"))


def test_backward_recomputes_the_sample_counts(strategy):
    """Bins partly outside the map average over their kept samples only; the
    backward divides by the same counts without being handed them."""
    args = deform_psroi_pool_inputs(offset=False, seed=5)
    args["rois"][0, 1:] = [-30, -30, 6, 6]  # mostly outside: few samples kept
    out = cudcn.deform_psroi_pool(**args)
    grads = cudcn.deform_psroi_pool_backward(np.ones_like(out), **args)
    # d(sum of outputs)/d(input) summed: each bin with kept samples adds 1.
    kept_bins = sum(
        np.count_nonzero(reference.deform_psroi_pool(**dict(args, input=np.ones_like(args["input"])))
                         [k]) for k in range(out.shape[0]))
    assert grads.input.sum() == pytest.approx(kept_bins, rel=1e-12)


def test_no_rois():
    args = deform_psroi_pool_inputs(rois=0)
    out = cudcn.deform_psroi_pool(**args)
    assert out.shape == (0, 4, 3, 3)
    grads = cudcn.deform_psroi_pool_backward(out, **args)
    assert grads.input.shape == args["input"].shape and not grads.input.any()
    assert grads.offset.shape == (0, 4, 3, 3)


def test_bad_rois_pool_zeros_and_get_no_gradient(strategy):
    args = deform_psroi_pool_inputs(rois=7, seed=6)
    rois = args["rois"]
    rois[0, 0] = 5  # batch index out of range
    rois[1, 0] = np.nan
    rois[2, 1:] = np.nan
    rois[3, 1:] = [np.inf, -np.inf, 1e30, -1e30]
    rois[4, 1:] = [9, 9, 1, 1]  # inverted: widened to 0.1, still pooled
    args["offset"][5] = np.nan
    out = cudcn.deform_psroi_pool(**args)
    assert np.isfinite(out).all() and not out[:4].any() and not out[5].any()
    assert_close(out[4], reference.deform_psroi_pool(**args)[4], rtol=1e-10, atol=1e-12)
    grads = cudcn.deform_psroi_pool_backward(np.ones_like(out), **args)
    assert np.isfinite(grads.input).all() and np.isfinite(grads.offset).all()
    assert not grads.offset[:4].any() and not grads.offset[5].any()


BAD = [
    ("channels", dict(output_dim=3), ValueError, ["16 channels", "output_dim * group_size**2"]),
    ("classes-not-dividing", dict(offset=np.zeros((5, 6, 3, 3))), ValueError,
     ["output_dim = 4", "num_classes = 3"]),
    ("offset-odd", dict(offset=np.zeros((5, 3, 3, 3))), ValueError, ["offset.shape[1]"]),
    ("offset-part", dict(offset=np.zeros((5, 4, 2, 2))), ValueError, ["offset", "(5, 4, 3, 3)"]),
    ("pooled-zero", dict(pooled_size=0), ValueError, ["pooled_size", ">= 1"]),
    ("group-zero", dict(group_size=0), ValueError, ["group_size"]),
    ("samples-zero", dict(sample_per_part=0), ValueError, ["sample_per_part"]),
    ("part-float", dict(part_size=2.0), TypeError, ["part_size", "int"]),
    ("trans-std-inf", dict(trans_std=float("inf")), ValueError, ["trans_std"]),
    ("rois-shape", dict(rois=np.zeros((5, 6))), ValueError, ["rois", "(K, 5)"]),
]


@pytest.mark.parametrize("change, error, words", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_bad_input(change, error, words, launches):
    args = dict(deform_psroi_pool_inputs(), **change)
    with pytest.raises(error) as info:
        cudcn.deform_psroi_pool(**args)
    for word in words:
        assert word in str(info.value)
    with pytest.raises((TypeError, ValueError)):
        cudcn.deform_psroi_pool_backward(np.zeros((5, 4, 3, 3)), **args)
    assert launches == []


def test_roi_coordinates_round_half_away_from_zero():
    """As C's round() in the original operator: -6.5 -> -7, 2.5 -> 3."""
    args = deform_psroi_pool_inputs(rois=1, offset=False, spatial_scale=1.0, seed=7)
    args["rois"][0] = [0, -6.5, 2.5, 3.5, 5.5]
    rounded = dict(args, rois=np.array([[0, -7.0, 3.0, 4.0, 6.0]]))
    assert_close(cudcn.deform_psroi_pool(**args), cudcn.deform_psroi_pool(**rounded), rtol=0, atol=0)
    nudged = dict(args, rois=np.array([[0, -6.0, 2.0, 3.0, 5.0]]))
    assert not np.allclose(cudcn.deform_psroi_pool(**args), cudcn.deform_psroi_pool(**nudged))
