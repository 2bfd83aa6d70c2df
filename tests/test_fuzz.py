"""Property-based tests: random valid configurations against the float64
references (forward, and gradients by finite differences); random invalid
ones may only raise TypeError/ValueError; adversarial values never crash."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import cudcn
from cudcn import reference
from conftest import assert_close

TOL = {np.float64: dict(rtol=1e-9, atol=1e-10), np.float32: dict(rtol=2e-4, atol=2e-4)}


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 2]))
    offset_groups = draw(st.sampled_from([1, 2, 3]))
    per = draw(st.integers(1, 2))
    c_in = groups * offset_groups * per
    c_out = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    ho = (h + 2 * padding[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    wo = (w + 2 * padding[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    assume(ho >= 1 and wo >= 1)
    return dict(batch=draw(st.integers(0, 3)), c_in=c_in, c_out=c_out, groups=groups,
                offset_groups=offset_groups, kernel=(kh, kw), stride=stride, padding=padding,
                dilation=dilation, size=(h, w), out=(ho, wo), mask=draw(st.booleans()),
                bias=draw(st.booleans()), scale=draw(st.sampled_from([0.5, 2.0, 6.0])),
                seed=draw(st.integers(0, 2**16)))


def _conv_args(cfg, dtype, away_from_kinks=False):
    rng = np.random.default_rng(cfg["seed"])
    n, (kh, kw), (ho, wo) = cfg["batch"], cfg["kernel"], cfg["out"]
    offset_shape = (n, 2 * cfg["offset_groups"] * kh * kw, ho, wo)
    offset = cfg["scale"] * rng.standard_normal(offset_shape)
    if away_from_kinks:
        offset = np.round(offset) + rng.uniform(0.15, 0.85, offset_shape)
    return dict(
        input=rng.standard_normal((n, cfg["c_in"], *cfg["size"])).astype(dtype),
        offset=offset.astype(dtype),
        weight=rng.standard_normal((cfg["c_out"], cfg["c_in"] // cfg["groups"], kh, kw)).astype(dtype),
        bias=rng.standard_normal(cfg["c_out"]).astype(dtype) if cfg["bias"] else None,
        mask=(rng.uniform(0, 1, (n, cfg["offset_groups"] * kh * kw, ho, wo)).astype(dtype)
              if cfg["mask"] else None),
        stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"],
    )


@given(cfg=conv_configs(), dtype=st.sampled_from([np.float64, np.float32]))
def test_deform_conv2d_forward_matches_reference(cfg, dtype):
    args = _conv_args(cfg, dtype)
    assert_close(cudcn.deform_conv2d(**args), reference.deform_conv2d(**args), **TOL[dtype])


@given(cfg=conv_configs(), strategy=st.sampled_from(["planes", "items", "sorted"]))
def test_deform_conv2d_gradients_match_finite_differences(cfg, strategy, monkeypatch):
    monkeypatch.setattr(cudcn._launch, "_force_strategy", strategy)
    args = _conv_args(cfg, np.float64, away_from_kinks=True)
    out = cudcn.deform_conv2d(**args)
    rng = np.random.default_rng(cfg["seed"] + 1)
    grad_output = rng.standard_normal(out.shape)
    grads = cudcn.deform_conv2d_backward(grad_output, **args)
    loss = lambda a: float(np.sum(reference.deform_conv2d(**a) * grad_output))  # noqa: E731
    for name in ("input", "offset", "weight", "bias", "mask"):
        if args[name] is None:
            continue
        direction = rng.standard_normal(args[name].shape)
        eps = 1e-6
        numeric = (loss(dict(args, **{name: args[name] + eps * direction}))
                   - loss(dict(args, **{name: args[name] - eps * direction}))) / (2 * eps)
        analytic = float(np.sum(getattr(grads, name) * direction))
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-6), name


ADVERSARIAL = st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30, 3e9, -3e9, 1e-300])


@given(cfg=conv_configs(), bad=st.lists(ADVERSARIAL, min_size=1, max_size=6),
       where=st.integers(0, 2**16))
def test_deform_conv2d_adversarial_offsets(cfg, bad, where):
    assume(cfg["batch"] > 0)
    args = _conv_args(cfg, np.float64)
    flat = args["offset"].reshape(-1)
    positions = np.random.default_rng(where).integers(0, flat.size, len(bad))
    flat[positions] = bad
    out = cudcn.deform_conv2d(**args)
    assert np.isfinite(out).all()
    assert_close(out, reference.deform_conv2d(**args), **TOL[np.float64])
    grads = cudcn.deform_conv2d_backward(np.ones_like(out), **args)
    for value in grads:
        assert value is None or np.isfinite(value).all()


ANY_SHAPE = st.lists(st.integers(0, 5), min_size=0, max_size=5).map(tuple)
ANY_PARAM = st.one_of(st.integers(-2, 3), st.tuples(st.integers(-1, 3), st.integers(-1, 3)),
                      st.floats(allow_nan=True), st.none(), st.text(max_size=2),
                      st.lists(st.integers(0, 2), max_size=3))
ANY_DTYPE = st.sampled_from([np.float64, np.float32, np.float16, np.int32, np.bool_,
                             np.complex64])


@st.composite
def anything_array(draw, optional=False):
    if optional and draw(st.booleans()):
        return None
    kind = draw(st.sampled_from(["array", "array", "array", "list", "scalar"]))
    shape = draw(ANY_SHAPE)
    if kind == "list":
        return np.zeros(shape).tolist()
    if kind == "scalar":
        return draw(st.floats())
    return np.ones(shape, dtype=draw(ANY_DTYPE))


@given(input=anything_array(), offset=anything_array(), weight=anything_array(),
       bias=anything_array(optional=True), mask=anything_array(optional=True),
       stride=ANY_PARAM, padding=ANY_PARAM, dilation=ANY_PARAM)
def test_deform_conv2d_invalid_input_only_raises_type_or_value_errors(
        input, offset, weight, bias, mask, stride, padding, dilation):
    try:
        out = cudcn.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)
    except (TypeError, ValueError):
        return
    cudcn.deform_conv2d_backward(np.ones_like(out), input, offset, weight, bias, stride,
                                 padding, dilation, mask)


@st.composite
def roi_sets(draw, batch, height, width, scale):
    count = draw(st.integers(0, 6))
    boxes = []
    for _ in range(count):
        index = draw(st.sampled_from([0, batch - 1, -1, batch, 0.5]))
        x1 = draw(st.floats(-0.5 * width / scale, 1.3 * width / scale))
        y1 = draw(st.floats(-0.5 * height / scale, 1.3 * height / scale))
        boxes.append([index, x1, y1, x1 + draw(st.floats(-2, 1.2 * width / scale)),
                      y1 + draw(st.floats(-2, 1.2 * height / scale))])
    return np.array(boxes, dtype=np.float64).reshape(count, 5)


@st.composite
def roi_pool_cases(draw):
    batch, channels = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    scale = draw(st.sampled_from([1.0, 0.5, 1 / 16]))
    rois = draw(roi_sets(batch, h, w, scale))
    ph, pw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    k = rois.shape[0]
    return dict(
        input=rng.standard_normal((batch, channels, h, w)), rois=rois,
        offset=rng.standard_normal((k, 2, ph, pw)) if draw(st.booleans()) else None,
        mask=rng.uniform(0, 1, (k, 1, ph, pw)) if draw(st.booleans()) else None,
        output_size=(ph, pw), spatial_scale=scale, sampling_ratio=draw(st.integers(0, 3)),
        gamma=draw(st.sampled_from([0.1, 0.5])),
    )


@given(case=roi_pool_cases(), strategy=st.sampled_from(["planes", "items", "sorted"]))
def test_deform_roi_pool_matches_reference_and_finite_differences(case, strategy, monkeypatch):
    monkeypatch.setattr(cudcn._launch, "_force_strategy", strategy)
    out = cudcn.deform_roi_pool(**case)
    assert_close(out, reference.deform_roi_pool(**case), **TOL[np.float64])
    rng = np.random.default_rng(7)
    grad_output = rng.standard_normal(out.shape)
    grads = cudcn.deform_roi_pool_backward(grad_output, **case)
    # Input and mask enter linearly: finite differences are exact there.
    for name in ("input", "mask"):
        if case[name] is None:
            continue
        direction = rng.standard_normal(case[name].shape)
        plus = reference.deform_roi_pool(**dict(case, **{name: case[name] + direction}))
        minus = reference.deform_roi_pool(**dict(case, **{name: case[name] - direction}))
        numeric = float(np.sum((plus - minus) * grad_output)) / 2
        assert float(np.sum(getattr(grads, name) * direction)) == pytest.approx(
            numeric, rel=1e-8, abs=1e-9), name


@st.composite
def psroi_cases(draw):
    group, pooled = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    classes = draw(st.integers(1, 2))
    output_dim = classes * draw(st.integers(1, 2))
    batch, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    scale = draw(st.sampled_from([1.0, 0.5]))
    rois = draw(roi_sets(batch, h, w, scale))
    part = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return dict(
        input=rng.standard_normal((batch, output_dim * group**2, h, w)), rois=rois,
        offset=(rng.standard_normal((rois.shape[0], 2 * classes, part, part))
                if draw(st.booleans()) else None),
        output_dim=output_dim, group_size=group, pooled_size=pooled, part_size=part,
        sample_per_part=draw(st.integers(1, 3)), trans_std=draw(st.sampled_from([0.0, 0.1])),
        spatial_scale=scale,
    )


@given(case=psroi_cases(), strategy=st.sampled_from(["planes", "items", "sorted"]))
def test_deform_psroi_pool_matches_reference_and_its_input_gradient(case, strategy, monkeypatch):
    monkeypatch.setattr(cudcn._launch, "_force_strategy", strategy)
    if case["offset"] is None:
        case["part_size"] = None
    out = cudcn.deform_psroi_pool(**case)
    assert_close(out, reference.deform_psroi_pool(**case), **TOL[np.float64])
    rng = np.random.default_rng(8)
    grad_output = rng.standard_normal(out.shape)
    grads = cudcn.deform_psroi_pool_backward(grad_output, **case)
    direction = rng.standard_normal(case["input"].shape)
    plus = reference.deform_psroi_pool(**dict(case, input=case["input"] + direction))
    minus = reference.deform_psroi_pool(**dict(case, input=case["input"] - direction))
    numeric = float(np.sum((plus - minus) * grad_output)) / 2
    assert float(np.sum(grads.input * direction)) == pytest.approx(numeric, rel=1e-8, abs=1e-9)


HUGE = st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30, 1e7, -1e7])


@given(case=roi_pool_cases(), bad=st.lists(HUGE, min_size=1, max_size=4),
       where=st.integers(0, 2**16))
def test_roi_pools_survive_adversarial_rois(case, bad, where):
    assume(case["rois"].shape[0] > 0)
    flat = case["rois"].reshape(-1)
    flat[np.random.default_rng(where).integers(0, flat.size, len(bad))] = bad
    out = cudcn.deform_roi_pool(**case)
    assert np.isfinite(out).all()
    grads = cudcn.deform_roi_pool_backward(np.ones_like(out), **case)
    assert all(g is None or np.isfinite(g).all() for g in grads)
    group = 2
    x = np.random.default_rng(where).standard_normal((case["input"].shape[0], 2 * group**2, 6, 5))
    ps = cudcn.deform_psroi_pool(x, case["rois"], output_dim=2, group_size=group, pooled_size=3)
    assert np.isfinite(ps).all()
    assert np.isfinite(cudcn.deform_psroi_pool_backward(np.ones_like(ps), x, case["rois"],
                                                        output_dim=2, group_size=group,
                                                        pooled_size=3).input).all()
