"""Any number of RoIs, none included (a detector's frame with no proposals):
every RoI function and module, plain, modulated, position-sensitive and
their Pack forms, in eager PyTorch, under torch.compile and exported by
both exporters with a dynamic RoI count, run in ONNX Runtime at K = 0, 1
and 9 (issue 30)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

import cudcn.adapters.torch as ct  # noqa: E402
from cudcn.testing import rois_for  # noqa: E402

pytestmark = [pytest.mark.torchvision,
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

COUNTS = [0, 1, 9]
SIZE, CHANNELS = (12, 10), 4


class Pools(torch.nn.Module):
    """Every RoI module, each form with its own output."""

    FORMS = ("plain", "offset-mask", "pack", "modulated-pack", "ps", "ps-offset")

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.plain = ct.DeformRoIPool((3, 2), spatial_scale=0.5, sampling_ratio=2)
        self.pack = ct.DeformRoIPoolPack((3, 2), CHANNELS, deform_fc_channels=16,
                                         spatial_scale=0.5, sampling_ratio=2)
        self.modulated = ct.ModulatedDeformRoIPoolPack(2, CHANNELS, deform_fc_channels=16,
                                                       spatial_scale=0.5, sampling_ratio=3)
        self.ps = ct.DeformPSRoIPool(0.5, output_dim=1, group_size=2, pooled_size=3,
                                     sample_per_part=2, trans_std=0.1)
        with torch.no_grad():
            for p in [*self.pack.parameters(), *self.modulated.parameters()]:
                p.normal_(0, 0.3)

    def forward(self, x, rois, offset, mask, ps_offset):
        return (self.plain(x, rois), self.plain(x, rois, offset, mask), self.pack(x, rois),
                self.modulated(x, rois), self.ps(x, rois), self.ps(x, rois, ps_offset))


def inputs(count, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, CHANNELS, *SIZE, generator=g)
    rois = torch.from_numpy(rois_for(2, *SIZE, count, 0.5, seed=seed)).float().reshape(count, 5)
    return (x, rois, torch.randn(count, 2, 3, 2, generator=g) * 0.1,
            torch.rand(count, 1, 3, 2, generator=g), torch.randn(count, 2, 3, 3, generator=g))


def expected_shapes(count):
    return [(count, CHANNELS, 3, 2)] * 3 + [(count, CHANNELS, 2, 2)] + [(count, 1, 3, 3)] * 2


@pytest.fixture(scope="module")
def model():
    return Pools().eval()


@pytest.mark.parametrize("count", COUNTS)
def test_eager_forward_and_gradients(model, count):
    """(K, ...) results; at K = 0 every gradient is there and zero."""
    args = [a.clone().requires_grad_() for a in inputs(count)]
    outputs = model(*args)
    assert [tuple(o.shape) for o in outputs] == expected_shapes(count)
    model.zero_grad()
    sum(o.sum() for o in outputs).backward()
    grads = [args[0].grad, *(a.grad for a in args[2:]),
             *(p.grad for p in model.parameters())]
    assert all(g is not None for g in grads)
    if count == 0:
        assert all(not g.any() for g in grads)
    else:
        assert args[0].grad.any()


@pytest.mark.parametrize("count", COUNTS)
def test_compiled_forward_and_gradients(model, count):
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    args = [a.clone().requires_grad_() for a in inputs(count)]
    want = model(*args)
    got = compiled(*args)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    sum(o.sum() for o in got).backward()
    if count == 0:
        assert not args[0].grad.any()


@pytest.fixture(scope="module", params=["dynamo", "torchscript"])
def exported(request, model, tmp_path_factory):
    """The model exported once per exporter with a dynamic RoI count (inputs
    named in0, in1, ... by test_onnx_export's export)."""
    onnx_tests = pytest.importorskip("test_onnx_export")
    path = tmp_path_factory.mktemp("rois") / f"{request.param}.onnx"
    example = inputs(5)
    graph = onnx_tests.export(model, example, path, request.param,
                              dynamic={i: {0: "rois"} for i in range(1, len(example))})
    onnx_tests.onnx.checker.check_model(graph)
    return onnx_tests.session(path), [f"in{i}" for i in range(len(example))]


@pytest.mark.parametrize("count", COUNTS)
def test_exported_model_runs_at_any_rois_count(model, exported, count):
    session, names = exported
    args = inputs(count, seed=count + 1)
    got = session.run(None, {n: a.numpy() for n, a in zip(names, args)})
    with torch.no_grad():
        want = model(*args)
    assert [g.shape for g in got] == expected_shapes(count)
    for form, w, g in zip(Pools.FORMS, want, got):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-5, err_msg=form)
