"""cudcn.adapters.torch.ms_deform_attn against the grid_sample path that
mmcv and transformers fall back to (float64), and as a torch op: autograd,
gradcheck, torch.compile, torch.export, FX, autocast, deterministic mode."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

import cudcn.adapters.torch as ct  # noqa: E402
from cudcn.testing import grid_sample_ms_deform_attn as grid_sample_attention  # noqa: E402
from cudcn.testing import ms_deform_attn_inputs  # noqa: E402

pytestmark = pytest.mark.torchvision


def _tensors(args, grad=True):
    floats = ("value", "sampling_locations", "attention_weights")
    return {k: (torch.from_numpy(np.ascontiguousarray(v)).requires_grad_(grad and k in floats)
                if isinstance(v, np.ndarray) else v) for k, v in args.items()}


SHAPES = [((6, 5), (3, 4)), ((8, 8), (4, 4), (2, 2), (1, 1))]


@pytest.mark.parametrize("shapes", SHAPES, ids=["two-levels", "four-levels"])
def test_forward_and_gradients_match_grid_sample(shapes):
    """Away from the bilinear kinks, where grid_sample's one-sided gradient
    and the kernel's agree (at a tie they may pick different sides)."""
    args = ms_deform_attn_inputs(shapes=shapes, heads=2, channels=5, points=3,
                                 away_from_kinks=True, seed=21)
    ours, theirs = _tensors(args), _tensors(args)
    out = ct.ms_deform_attn(**{k: v for k, v in ours.items() if k != "points_per_level"})
    want = grid_sample_attention(theirs["value"], theirs["spatial_shapes"],
                                 theirs["sampling_locations"], theirs["attention_weights"])
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    grad = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out.backward(grad)
    want.backward(grad)
    for name in ("value", "sampling_locations", "attention_weights"):
        torch.testing.assert_close(ours[name].grad, theirs[name].grad, rtol=1e-10, atol=1e-10,
                                   msg=name)


def _call(t):
    return ct.ms_deform_attn(t["value"], t["spatial_shapes"], t["level_start_index"],
                             t["sampling_locations"], t["attention_weights"])


def test_gradcheck():
    args = ms_deform_attn_inputs(batch=1, queries=2, heads=2, channels=3, shapes=((3, 4), (2, 2)),
                                 points=2, away_from_kinks=True, seed=22)
    t = _tensors(args)
    inputs = (t["value"], t["sampling_locations"], t["attention_weights"])

    def f(value, loc, weights):
        return ct.ms_deform_attn(value, t["spatial_shapes"], t["level_start_index"], loc, weights)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


def test_points_per_level_through_the_adapter():
    args = ms_deform_attn_inputs(points_per_level=(2, 5), seed=23)
    t = _tensors(args)
    out = ct.ms_deform_attn(t["value"], t["spatial_shapes"], t["level_start_index"],
                            t["sampling_locations"], t["attention_weights"],
                            points_per_level=[2, 5])
    import cudcn

    want = cudcn.ms_deform_attn(**args)
    assert np.array_equal(out.detach().numpy(), want)
    out.sum().backward()
    assert t["sampling_locations"].grad.shape == t["sampling_locations"].shape


def test_compile_export_and_fx():
    args = ms_deform_attn_inputs(seed=24)
    t = _tensors(args, grad=False)
    want = _call(t)

    class Layer(torch.nn.Module):
        def forward(self, value, shapes, starts, loc, weights):
            return ct.ms_deform_attn(value, shapes, starts, loc, weights) * 2

    layer = Layer()
    positional = (t["value"], t["spatial_shapes"], t["level_start_index"],
                  t["sampling_locations"], t["attention_weights"])
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*positional), 2 * want, rtol=0, atol=0)
    program = torch.export.export(layer, positional)
    assert any("cudcn.ms_deform_attn" in str(node.target) for node in program.graph.nodes)
    torch.testing.assert_close(program.module()(*positional), 2 * want, rtol=0, atol=0)
    graph = torch.fx.symbolic_trace(layer).graph
    assert [n.target for n in graph.nodes if n.op == "call_function"][0] is ct.ms_deform_attn


def test_compiled_training_step_has_the_eager_gradients():
    args = ms_deform_attn_inputs(seed=25)
    eager, compiled_inputs = _tensors(args), _tensors(args)
    _call(eager).square().sum().backward()
    step = torch.compile(lambda t: _call(t).square().sum(), backend="aot_eager", fullgraph=True)
    step(compiled_inputs).backward()
    for name in ("value", "sampling_locations", "attention_weights"):
        torch.testing.assert_close(compiled_inputs[name].grad, eager[name].grad, rtol=0, atol=0)


def test_autocast_runs_in_bfloat16():
    args = ms_deform_attn_inputs(dtype=np.float32, seed=26)
    t = _tensors(args, grad=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _call(t)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), _call(t), rtol=5e-2, atol=5e-2)


def test_deterministic_algorithms_and_no_double_backward():
    args = ms_deform_attn_inputs(seed=27)
    torch.use_deterministic_algorithms(True)
    try:
        t = _tensors(args)
        _call(t).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    import cudcn

    want = cudcn.ms_deform_attn_backward(np.ones((2, 5, 8)), **args)
    assert np.array_equal(t["value"].grad.numpy(), want.value)
    t = _tensors(args)
    (g,) = torch.autograd.grad(_call(t).sum(), t["value"], create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        g.sum().backward()


def test_bad_input_is_a_torch_error():
    args = ms_deform_attn_inputs(seed=28)
    t = _tensors(args, grad=False)
    with pytest.raises(ValueError, match="level_start_index") as caught:
        ct.ms_deform_attn(t["value"], t["spatial_shapes"], t["level_start_index"] + 1,
                          t["sampling_locations"], t["attention_weights"])
    assert isinstance(caught.value, RuntimeError)
    with pytest.raises(TypeError, match="value must be a torch.Tensor"):
        ct.ms_deform_attn(args["value"], t["spatial_shapes"], t["level_start_index"],
                          t["sampling_locations"], t["attention_weights"])


# --- mmcv's MultiScaleDeformableAttention ---------------------------------------------

def _attention_layer_inputs(batch_first, boxes, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[6, 5], [3, 4]])
    starts = torch.tensor([0, 30])
    bs, nq, nv, dims = 2, 7, 42, 32
    query = torch.randn(bs, nq, dims, generator=g, dtype=torch.float64)
    value = torch.randn(bs, nv, dims, generator=g, dtype=torch.float64)
    refs = torch.rand(bs, nq, 2, 4 if boxes else 2, generator=g, dtype=torch.float64)
    padding = torch.rand(bs, nv, generator=g) < 0.1
    if not batch_first:
        query, value = query.transpose(0, 1), value.transpose(0, 1)
    return dict(query=query.requires_grad_(), value=value.requires_grad_(), reference_points=refs,
                spatial_shapes=shapes, level_start_index=starts, key_padding_mask=padding)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("boxes", [False, True], ids=["points", "boxes"])
def test_attention_layer_matches_the_grid_sample_path(monkeypatch, batch_first, boxes):
    """The same layer through cudcn's kernel and through the grid_sample path
    (mmcv's CPU fallback): outputs and every parameter's gradient, float64,
    with the sampling offsets moved off their fresh ring (off the ties)."""
    from cudcn.adapters.torch import ops

    torch.manual_seed(1)
    layer = ct.MultiScaleDeformableAttention(embed_dims=32, num_heads=4, num_levels=2,
                                             num_points=3, dropout=0.0,
                                             batch_first=batch_first).double()
    with torch.no_grad():
        layer.sampling_offsets.weight.normal_(0, 0.3)
        layer.attention_weights.weight.normal_(0, 0.3)
    results = []
    for path in ("cudcn", "grid_sample"):
        if path == "grid_sample":
            monkeypatch.setattr(ops, "ms_deform_attn", lambda v, s, starts, loc, w, step:
                                grid_sample_attention(v, s, loc, w))
        inputs = _attention_layer_inputs(batch_first, boxes)
        layer.zero_grad()
        out = layer(**inputs)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in layer.named_parameters()},
                        inputs["query"].grad, inputs["value"].grad))
    (out, grads, dq, dv), (want, want_grads, want_dq, want_dv) = results
    assert out.shape == ((2, 7, 32) if batch_first else (7, 2, 32))
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    for name in want_grads:
        torch.testing.assert_close(grads[name], want_grads[name], rtol=1e-9, atol=1e-9, msg=name)
    torch.testing.assert_close(dq, want_dq, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(dv, want_dv, rtol=1e-9, atol=1e-9)


def test_attention_layer_names_a_missing_geometry_argument():
    """mmcv's layer fails on None.shape; cudcn's names what is missing."""
    layer = ct.MultiScaleDeformableAttention(embed_dims=16, num_heads=2, num_levels=1,
                                            num_points=2, batch_first=True)
    query, value = torch.zeros(1, 3, 16), torch.zeros(1, 4, 16)
    shapes, starts = torch.tensor([[2, 2]]), torch.tensor([0])
    points = torch.full((1, 3, 1, 2), 0.5)
    given = dict(reference_points=points, spatial_shapes=shapes, level_start_index=starts)
    assert layer(query, value=value, **given).shape == (1, 3, 16)
    for name in given:
        with pytest.raises(ValueError, match=f"needs {name}"):
            layer(query, value=value, **{**given, name: None})


def test_attention_layer_keys_and_initialisation_are_mmcvs():
    layer = ct.MultiScaleDeformableAttention(embed_dims=64, num_heads=4, num_levels=3,
                                             num_points=2, value_proj_ratio=0.5)
    assert list(layer.state_dict()) == [
        "sampling_offsets.weight", "sampling_offsets.bias", "attention_weights.weight",
        "attention_weights.bias", "value_proj.weight", "value_proj.bias", "output_proj.weight",
        "output_proj.bias"]
    assert layer.value_proj.weight.shape == (32, 64) and layer.output_proj.weight.shape == (64, 32)
    assert not layer.sampling_offsets.weight.any() and not layer.attention_weights.weight.any()
    assert not layer.attention_weights.bias.any() and not layer.value_proj.bias.any()
    ring = layer.sampling_offsets.bias.view(4, 3, 2, 2)
    # Head h points along angle 2 pi h / 4, scaled so the larger component is 1,
    # point i at i + 1 times that, on every level.
    expected = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    for i in range(2):
        torch.testing.assert_close(ring[:, :, i], (i + 1) * expected[:, None].expand(4, 3, 2),
                                   atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        ct.MultiScaleDeformableAttention(embed_dims=30, num_heads=4)
