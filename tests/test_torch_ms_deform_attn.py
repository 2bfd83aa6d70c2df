"""cudcn.adapters.torch.ms_deform_attn against the grid_sample path that
mmcv and transformers fall back to (float64), and as a torch op: autograd,
gradcheck, torch.compile, torch.export, FX, autocast, deterministic mode."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

import torch.nn.functional as F  # noqa: E402

import cudcn.adapters.torch as ct  # noqa: E402
from cudcn.testing import ms_deform_attn_inputs  # noqa: E402

pytestmark = pytest.mark.torchvision


def grid_sample_attention(value, spatial_shapes, sampling_locations, attention_weights):
    """The pure-PyTorch formulation (per level, F.grid_sample at 2 * loc - 1,
    zeros padding, align_corners=False), written from its definition."""
    n, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    samples = []
    for level, (rows, (h, w)) in enumerate(zip(value.split(sizes, dim=1),
                                              spatial_shapes.tolist())):
        maps = rows.permute(0, 2, 3, 1).reshape(n * heads, channels, int(h), int(w))
        grid = 2 * sampling_locations[:, :, :, level] - 1  # (N, Lq, M, P, 2)
        grid = grid.transpose(1, 2).reshape(n * heads, queries, points, 2)
        samples.append(F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # (N*M, D, Lq, P)
    stacked = torch.stack(samples, dim=-2).flatten(-2)  # (N*M, D, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(n * heads, 1, queries, levels * points)
    out = (stacked * weights).sum(-1).view(n, heads * channels, queries)
    return out.transpose(1, 2).contiguous()


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
