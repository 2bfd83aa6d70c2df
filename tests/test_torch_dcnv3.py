"""cudcn.adapters.torch.dcnv3 / dcnv4 as torch ops: the NumPy API's bits
through the adapter, autograd and gradcheck, torch.compile, torch.export,
FX, autocast, deterministic mode, bad input. (The modules and the
grid_sample path: test_torch_dcn_modules.py.)"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cudcn  # noqa: E402
import cudcn.adapters.torch as ct  # noqa: E402
from cudcn.testing import dcnv3_inputs  # noqa: E402

FLOATS = ("input", "offset", "mask", "offset_mask")


def _tensors(args, grad=True):
    return {k: (torch.from_numpy(np.ascontiguousarray(v)).requires_grad_(grad)
                if k in FLOATS else v) for k, v in args.items()}


def _params(args):
    return {k: v for k, v in args.items() if k not in FLOATS}


@pytest.mark.parametrize("packed", [False, True], ids=["dcnv3", "dcnv4"])
def test_the_numpy_apis_bits_forward_and_backward(packed):
    args = dcnv3_inputs(size=(6, 7), kernel=(3, 5), padding=(1, 2), stride=(1, 2), groups=2,
                        group_channels=4, offset_scale=0.5, packed=packed, seed=31)
    t = _tensors(args)
    op, backward = (ct.dcnv4, cudcn.dcnv4_backward) if packed else (ct.dcnv3, cudcn.dcnv3_backward)
    out = op(**t)
    want = (cudcn.dcnv4 if packed else cudcn.dcnv3)(**args)
    assert np.array_equal(out.detach().numpy(), want)
    grad = np.random.default_rng(32).standard_normal(want.shape)
    out.backward(torch.from_numpy(grad))
    grads = backward(grad, **args)
    for name, g in grads._asdict().items():
        assert np.array_equal(t[name].grad.numpy(), g), name


def test_gradcheck():
    args = dcnv3_inputs(batch=1, size=(4, 3), groups=2, group_channels=2,
                        away_from_kinks=True, seed=33)
    t = _tensors(args)

    def f(input, offset, mask):
        return ct.dcnv3(input, offset, mask, **_params(args))

    assert torch.autograd.gradcheck(f, (t["input"], t["offset"], t["mask"]), eps=1e-6,
                                    atol=1e-7)


def test_compile_export_and_fx():
    args = dcnv3_inputs(seed=34)
    t = _tensors(args, grad=False)
    params = _params(args)
    want = ct.dcnv3(**t)

    class Layer(torch.nn.Module):
        def forward(self, input, offset, mask):
            return ct.dcnv3(input, offset, mask, **params) * 2

    layer = Layer()
    positional = (t["input"], t["offset"], t["mask"])
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*positional), 2 * want, rtol=0, atol=0)
    program = torch.export.export(layer, positional)
    assert any("cudcn.dcnv3" in str(node.target) for node in program.graph.nodes)
    torch.testing.assert_close(program.module()(*positional), 2 * want, rtol=0, atol=0)
    graph = torch.fx.symbolic_trace(layer).graph
    assert [n.target for n in graph.nodes if n.op == "call_function"][0] is ct.dcnv3


@pytest.mark.parametrize("packed", [False, True], ids=["dcnv3", "dcnv4"])
def test_compiled_training_step_has_the_eager_gradients(packed):
    args = dcnv3_inputs(packed=packed, seed=35)
    eager, compiled_inputs = _tensors(args), _tensors(args)
    op = ct.dcnv4 if packed else ct.dcnv3
    op(**eager).square().sum().backward()
    step = torch.compile(lambda t: op(**t).square().sum(), backend="aot_eager", fullgraph=True)
    step(compiled_inputs).backward()
    for name in FLOATS:
        if name in args:
            torch.testing.assert_close(compiled_inputs[name].grad, eager[name].grad, rtol=0,
                                       atol=0)


def test_autocast_runs_in_bfloat16():
    args = dcnv3_inputs(dtype=np.float32, seed=36)
    t = _tensors(args, grad=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ct.dcnv3(**t)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ct.dcnv3(**t), rtol=5e-2, atol=5e-2)


def test_deterministic_algorithms_and_no_double_backward():
    args = dcnv3_inputs(seed=37)
    torch.use_deterministic_algorithms(True)
    try:
        t = _tensors(args)
        ct.dcnv3(**t).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    want = cudcn.dcnv3_backward(np.ones((2, 7, 6, 6)), **args)
    assert np.array_equal(t["input"].grad.numpy(), want.input)
    t = _tensors(args)
    (g,) = torch.autograd.grad(ct.dcnv3(**t).sum(), t["offset"], create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        g.sum().backward()


def test_bad_input_is_a_torch_error():
    args = dcnv3_inputs(seed=38)
    t = _tensors(args, grad=False)
    with pytest.raises(ValueError, match="groups = 4 does not divide") as caught:
        ct.dcnv3(**{**t, "groups": 4})
    assert isinstance(caught.value, RuntimeError)
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        ct.dcnv3(**{**t, "input": args["input"]})
    with pytest.raises(TypeError, match="remove_center must be a bool"):
        ct.dcnv3(**{**t, "remove_center": 0})
    packed = _tensors(dcnv3_inputs(packed=True, seed=39), grad=False)
    with pytest.raises(ValueError, match="offset_mask has 50 channels"):
        ct.dcnv4(**{**packed, "offset_mask": packed["offset_mask"][..., :50]})
