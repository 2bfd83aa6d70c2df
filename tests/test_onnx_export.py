"""torch.onnx.export of cudcn models (both exporters), run in ONNX Runtime's
CPU provider and compared with the PyTorch model (float32, 1e-5)."""

import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import cudcn.adapters.torch as ct  # noqa: E402
from cudcn.testing import rois_for  # noqa: E402

pytestmark = [pytest.mark.torchvision,
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

EXPORTERS = ["dynamo", "torchscript"]
TOLERANCE = dict(rtol=1e-5, atol=1e-5)
# Ops a hand-written bilinear fallback would need; a DeformConv export uses none of them.
FALLBACK_OPS = {"Floor", "Ceil", "Where", "GridSample", "GatherElements", "GatherND",
                "ScatterND", "ScatterElements", "Loop"}


def export(model, args, path, exporter, dynamic=None, opset=19):
    """torch.onnx.export as a user types it; ``dynamic`` maps an argument
    position to the axes named dynamic (dynamic_shapes or dynamic_axes)."""
    names = [f"in{i}" for i in range(len(args))]
    dynamic = dynamic or {}
    if exporter == "dynamo":
        dims = {}
        shapes = tuple({axis: dims.setdefault(name, torch.export.Dim(name))
                        for axis, name in dynamic[i].items()} if i in dynamic else None
                       for i in range(len(args)))
        torch.onnx.export(model, args, str(path), dynamo=True, opset_version=opset,
                          input_names=names, dynamic_shapes=shapes if dynamic else None)
    else:
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=opset,
                          input_names=names,
                          dynamic_axes={names[i]: axes for i, axes in dynamic.items()})
    return onnx.load(str(path))


def session(path, optimized=None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized is not None:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess, *args):
    feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)}
    return sess.run(None, feeds)


def assert_matches(sess, model, *args, tolerance=TOLERANCE):
    with torch.no_grad():
        expected = model(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = run(sess, *args)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == tuple(e.shape), i
        np.testing.assert_allclose(g, e.numpy(), err_msg=f"output {i}", **tolerance)


def randomize_offsets(model, std=0.3, seed=0):
    """Non-zero offset predictors, so that every sample leaves the grid."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, ct.DeformConv2dPack):
            with torch.no_grad():
                m.conv_offset.weight.normal_(0, std, generator=g)
                m.conv_offset.bias.normal_(0, 1.0, generator=g)
    return model


# --- deform_conv2d: a grid of layer configurations in one model -------------

# (module, DeformConv attributes, has bias, has mask)
LAYERS = [
    (lambda: ct.DeformConv2dPack(4, 6, 3, padding=1, bias=True),
     dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1,
          offset_group=1), True, False),
    (lambda: ct.ModulatedDeformConv2dPack(4, 6, (3, 2), stride=(2, 1), padding=(1, 0),
                                          dilation=(1, 2), groups=2, bias=False,
                                          deform_groups=2),
     dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 0], dilations=[1, 2], group=2,
          offset_group=2), False, True),
    (lambda: ct.DeformConv2dPack(4, 4, (1, 3), stride=(1, 2), padding=(0, 2), dilation=(2, 1),
                                 groups=2, bias=False, deform_groups=4),
     dict(kernel_shape=[1, 3], strides=[1, 2], pads=[0, 2, 0, 2], dilations=[2, 1], group=2,
          offset_group=4), False, False),
    (lambda: ct.ModulatedDeformConv2dPack(4, 2, (2, 3), stride=(1, 3), padding=(2, 1)),
     dict(kernel_shape=[2, 3], strides=[1, 3], pads=[2, 1, 2, 1], dilations=[1, 1], group=1,
          offset_group=1), True, True),
]
# The functional form, offset and mask as model inputs: v2 without bias.
FUNCTIONAL = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[0, 1, 0, 1], dilations=[1, 1],
                  group=1, offset_group=2)


class ConvGrid(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList(make() for make, *_ in LAYERS)
        self.weight = torch.nn.Parameter(torch.randn(5, 4, 3, 3))
        randomize_offsets(self)

    def forward(self, x, offset, mask):
        outputs = [layer(x) for layer in self.layers]
        return (*outputs, ct.deform_conv2d(x, offset, self.weight, padding=(0, 1), mask=mask))


def grid_inputs(batch, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 9, 8, generator=g)
    # The functional layer: 3x3, padding (0, 1) on 9x8 gives 7x8; two offset groups.
    offset = 2 * torch.randn(batch, 36, 7, 8, generator=g)
    return x, offset, torch.rand(batch, 18, 7, 8, generator=g)


@pytest.fixture(scope="module", params=EXPORTERS)
def conv_grid(request, tmp_path_factory):
    model = ConvGrid().eval()
    path = tmp_path_factory.mktemp("onnx") / f"grid_{request.param}.onnx"
    batch = {0: "batch"}
    graph = export(model, grid_inputs(2, 0), path, request.param,
                   dynamic={0: batch, 1: batch, 2: batch})
    return model, graph, session(path)


@pytest.mark.parametrize("batch", [1, 3])
def test_conv_grid_matches_pytorch(conv_grid, batch):
    """v1/v2, bias or not, groups, offset groups, asymmetric stride, padding and
    dilation, non-square kernels; one export with a dynamic batch, run at 1 and 3."""
    model, _, sess = conv_grid
    assert_matches(sess, model, *grid_inputs(batch, seed=batch))


def test_conv_grid_is_one_deform_conv_per_layer(conv_grid):
    _, graph, _ = conv_grid
    nodes = [n for n in graph.graph.node if n.op_type == "DeformConv"]
    assert len(nodes) == len(LAYERS) + 1
    assert {n.domain for n in graph.graph.node} <= {"", "ai.onnx"}
    assert not FALLBACK_OPS & {n.op_type for n in graph.graph.node}
    expected = [(attrs, bias, mask) for _, attrs, bias, mask in LAYERS]
    expected.append((FUNCTIONAL, False, True))
    # Each layer's output is one graph output, produced by its own DeformConv.
    by_output = {n.output[0]: n for n in nodes}
    for graph_output, (attrs, bias, mask) in zip(graph.graph.output, expected):
        node = by_output[graph_output.name]
        got = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert {k: (list(v) if isinstance(v, list) else v) for k, v in got.items()} == attrs
        inputs = list(node.input) + [""] * (5 - len(node.input))
        assert (inputs[3] != "", inputs[4] != "") == (bias, mask)


@pytest.mark.parametrize("exporter, opset", [("dynamo", 18), ("torchscript", 18),
                                             ("torchscript", 11)])
def test_opset_below_19_says_how_to_ask(tmp_path, exporter, opset):
    model = ct.DeformConv2dPack(4, 4, 3, padding=1).eval()
    with pytest.raises(Exception) as error:
        export(model, (torch.randn(1, 4, 5, 5),), tmp_path / "m.onnx", exporter, opset=opset)
    message = str(error.value)
    assert "DeformConv, which needs opset 19" in message
    assert "opset_version=19" in message


def test_exported_program_exports_through_the_ops(tmp_path):
    """The dynamo translations sit on torch.ops.cudcn.deform_conv2d and
    deform_roi_pool themselves, so an ExportedProgram made beforehand exports
    too (DeformConv, and RoiAlign for pooling without offset)."""

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = randomize_offsets(ct.ModulatedDeformConv2dPack(4, 4, 3, padding=1))
            self.pool = ct.DeformRoIPool(2, spatial_scale=0.5, sampling_ratio=2)

        def forward(self, x, rois):
            return self.pool(self.conv(x), rois)

    model = Model().eval()
    args = (torch.randn(2, 4, 6, 5), torch.from_numpy(rois_for(2, 6, 5, 4, 0.5)).float())
    program = torch.export.export(model, args)
    torch.onnx.export(program, dynamo=True, opset_version=19, f=str(tmp_path / "m.onnx"))
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops.count("DeformConv") == 1 and ops.count("RoiAlign") == 1
    assert_matches(session(tmp_path / "m.onnx"), model, *args)


def test_roi_align_needs_opset_16(tmp_path):
    x, rois = torch.randn(1, 4, 8, 8), torch.tensor([[0, 1.0, 1.0, 6.0, 5.0]])
    with pytest.raises(ValueError, match="RoiAlign .*needs opset 16.*opset_version=16"):
        export(ct.DeformRoIPool(2), (x, rois), tmp_path / "p.onnx", "torchscript", opset=15)


# --- a converted ResNet-18 ---------------------------------------------------

@pytest.mark.parametrize("exporter", EXPORTERS)
def test_converted_resnet18_logits_match(tmp_path, exporter):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    names = ct.convert_to_deformable(model, modulated=True, deform_groups=2)
    names += ct.convert_to_deformable(model, layers=["layer2.0.conv1"])  # v1, stride 2
    model = randomize_offsets(model, std=0.05).eval()
    x = torch.randn(2, 3, 64, 64)
    graph = export(model, (x,), tmp_path / "r.onnx", exporter, dynamic={0: {0: "batch"}})
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("DeformConv") == len(names) == 4
    assert not FALLBACK_OPS & set(ops)
    assert_matches(session(tmp_path / "r.onnx"), model, torch.randn(1, 3, 64, 64))


# --- ONNX Runtime's DeformConv border rule is cudcn's ------------------------

def test_border_samples_match_cudcn(tmp_path):
    """Samples exactly on y = -1 and y = H (zero), just inside and beyond,
    along each axis: the exported DeformConv gives cudcn's values."""
    height, width = 4, 5
    x = torch.arange(1.0, 1 + height * width).reshape(1, 1, height, width)
    weight = torch.ones(1, 1, 1, 1)

    class Sample(torch.nn.Module):
        def forward(self, x, offset):
            return ct.deform_conv2d(x, offset, weight)

    offset = torch.zeros(1, 2, height, width)
    export(Sample(), (x, offset), tmp_path / "b.onnx", "torchscript")
    sess = session(tmp_path / "b.onnx")
    tiny = 2.0**-20
    for axis, size in ((0, height), (1, width)):
        for position in (-1 - tiny, -1.0, -1 + tiny, -0.5, 0.0, size - 1, size - 0.5, size - tiny,
                         float(size), size + tiny, size + 0.5):
            offset = torch.zeros(1, 2, height, width)
            offset[0, axis, 0, 0] = position  # the sample of output (0, 0)
            offset[0, 1 - axis, 0, 0] = 1.25
            (got,) = run(sess, x, offset)
            expected = Sample()(x, offset)
            assert got[0, 0, 0, 0] == pytest.approx(float(expected[0, 0, 0, 0]), abs=1e-6), \
                (axis, position)
            if position <= -1 or position >= size:
                assert got[0, 0, 0, 0] == 0.0, (axis, position)


# --- float16 ----------------------------------------------------------------

@pytest.mark.parametrize("exporter", EXPORTERS)
def test_float16_model_exports_and_runs_on_cpu_through_float32(tmp_path, exporter):
    """A half model exports with float16 DeformConv. ONNX Runtime's CPU
    provider has no float16 DeformConv kernel (ORT 1.31): it inserts Casts
    and computes that node in float32. The last assert fails the day that
    changes; the Deploy guide says so."""
    torch.manual_seed(0)
    model = randomize_offsets(ct.ModulatedDeformConv2dPack(4, 6, 3, padding=1,
                                                           deform_groups=2), std=0.1).eval()
    half = model.half()
    x = torch.randn(2, 4, 9, 9).half()
    graph = export(half, (x,), tmp_path / "h.onnx", exporter)
    assert [n.op_type for n in graph.graph.node].count("DeformConv") == 1
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    sess = session(tmp_path / "h.onnx", optimized=tmp_path / "h_ort.onnx")
    (got,) = run(sess, x)
    assert got.dtype == np.float16
    with torch.no_grad():
        expected = half(x)  # cudcn's float16 kernels: float32 inside, float16 out
    # Both round the offsets and the output to float16, at different steps: a few ulps.
    np.testing.assert_allclose(got.astype(np.float32), expected.float().numpy(), rtol=2e-3,
                               atol=2e-3)
    optimized = onnx.load(str(tmp_path / "h_ort.onnx"))
    (deform,) = [n for n in optimized.graph.node if n.op_type == "DeformConv"]
    producers = {o: n.op_type for n in optimized.graph.node for o in n.output}
    assert producers[deform.input[0]] == "Cast", "ORT now runs float16 DeformConv on the CPU"


# --- RoI pooling --------------------------------------------------------------

class Pools(torch.nn.Module):
    """Every exportable form of deformable RoI pooling, one output each."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.adaptive = ct.DeformRoIPool((3, 2), spatial_scale=0.5, sampling_ratio=0)
        self.adaptive_minus_one = ct.DeformRoIPool((3, 2), spatial_scale=0.5,
                                                 sampling_ratio=-1)  # torchvision's
        self.fixed = ct.DeformRoIPool(3, spatial_scale=0.5, sampling_ratio=2)
        self.pack = ct.DeformRoIPoolPack((3, 2), 4, deform_fc_channels=16, spatial_scale=0.5,
                                         sampling_ratio=2)
        self.modulated = ct.ModulatedDeformRoIPoolPack(2, 4, deform_fc_channels=16,
                                                       spatial_scale=0.5, sampling_ratio=3)
        self.ps = ct.DeformPSRoIPool(0.5, output_dim=1, group_size=2, pooled_size=3,
                                     sample_per_part=2, trans_std=0.1)
        with torch.no_grad():
            for p in [*self.pack.parameters(), *self.modulated.parameters()]:
                p.normal_(0, 0.3)  # offsets and masks far from their zero start

    def forward(self, x, rois, mask, ps_offset):
        return (self.adaptive(x, rois), self.fixed(x, rois),
                self.adaptive_minus_one(x, rois, None, mask), self.pack(x, rois),
                self.modulated(x, rois), self.ps(x, rois), self.ps(x, rois, ps_offset))


def pool_inputs(count, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 12, 10, generator=g)
    rois = torch.from_numpy(rois_for(2, 12, 10, count, 0.5, seed=seed)).float()
    rois[0, 0] = 2  # no such image: pools zeros, as in cudcn
    return (x, rois, torch.rand(count, 1, 3, 2, generator=g),
            torch.randn(count, 2, 3, 3, generator=g))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_roi_pools_match_pytorch(tmp_path, exporter):
    """RoiAlign without offsets, the standard-op decomposition with them, and
    position-sensitive pooling; the TorchScript export with a dynamic RoI count."""
    model = Pools().eval()
    dynamic = {}
    if exporter == "torchscript":  # the dynamo export of dynamic RoI counts is much slower
        dynamic = {i: {0: "rois"} for i in (1, 2, 3)}
    graph = export(model, pool_inputs(5, 0), tmp_path / "p.onnx", exporter, dynamic=dynamic)
    ops = {n.op_type for n in graph.graph.node}
    assert "RoiAlign" in ops and {n.domain for n in graph.graph.node} <= {"", "ai.onnx"}
    sess = session(tmp_path / "p.onnx")
    assert_matches(sess, model, *pool_inputs(5, 0))
    if dynamic:
        assert_matches(sess, model, *pool_inputs(8, 1))


def test_roi_pool_border_samples_match_cudcn(tmp_path):
    """RoIs whose samples fall exactly on -1 and H (kept, clamped) and just
    beyond (zero), with and without offsets; psroi's -0.5 and H - 0.5."""
    height, width = 6, 7
    x = torch.randn(1, 2, height, width)

    class Border(torch.nn.Module):
        def forward(self, x, rois, offset, ps_offset):
            return (ct.deform_roi_pool(x, rois, None, 1, 1.0, 1, 0.1),
                    ct.deform_roi_pool(x, rois, offset, 1, 1.0, 1, 0.1),
                    ct.deform_psroi_pool(x, rois, ps_offset, output_dim=2, group_size=1,
                                         pooled_size=1, sample_per_part=1, trans_std=1.0,
                                         spatial_scale=1.0))

    # One sample per bin, at start + size/2 = (a + b)/2 - 0.5 for a box [a, b].
    tiny = 2.0**-18
    rows = [-0.5, -0.5 - tiny, height + 0.5, height + 0.5 + tiny, 2.0]  # y = -1, H, inside
    columns = [-0.5, -0.5 - tiny, width + 0.5, width + 0.5 + tiny, 2.0]
    rois = torch.tensor([[0, 2.0, e, 2.0, e] for e in rows]
                        + [[0, e, 2.0, e, 2.0] for e in columns])
    offset = torch.zeros(len(rois), 2, 1, 1)
    # psroi samples sit at round(a) - 0.5 + offset (trans_std 1): onto -0.5, W - 0.5 and
    # H - 0.5 exactly (kept) and a hair beyond (skipped).
    ps_offset = torch.zeros(len(rois), 2, 1, 1)
    ps_offset[:, 0, 0, 0] = torch.tensor([0] * 5 + [1.0, 1.0 - tiny, -1.0, -1.0 + tiny, 0])
    ps_offset[:, 1, 0, 0] = torch.tensor([1.0, 1.0 - tiny, -1.0, -1.0 + tiny, 0] + [0] * 5)
    args = (x, rois, offset, ps_offset)
    export(Border(), args, tmp_path / "b.onnx", "torchscript")
    assert_matches(session(tmp_path / "b.onnx"), Border(), *args, tolerance=dict(atol=1e-6))
    with torch.no_grad():
        outputs = Border()(*args)
    for pooled in outputs:  # the cases do sit on both sides of each border
        zero = pooled.abs().sum(dim=(1, 2, 3)) == 0
        assert zero[[1, 3, 6, 8]].all() and not zero[[0, 2, 4, 5, 7, 9]].any()


@pytest.mark.parametrize("exporter, sampling_ratio", [("dynamo", 0), ("torchscript", 0),
                                                      ("torchscript", -1)])
def test_offsets_with_adaptive_sampling_raise(tmp_path, exporter, sampling_ratio):
    model = ct.DeformRoIPoolPack(2, 4, deform_fc_channels=8,
                                 sampling_ratio=sampling_ratio).eval()
    x, rois = torch.randn(1, 4, 8, 8), torch.tensor([[0, 1.0, 1.0, 6.0, 5.0]])
    with pytest.raises(Exception, match=r"deform_roi_pool with an offset .*adaptive "
                                        r"sampling_ratio \(<= 0\)"):
        export(model, (x, rois), tmp_path / "p.onnx", exporter)


def test_psroi_pool_in_exported_program_raises(tmp_path):
    """The decomposition runs during torch.onnx.export; an ExportedProgram made
    beforehand holds the opaque op, and the exporter says what to do."""
    model = ct.DeformPSRoIPool(0.5, output_dim=1, group_size=2, pooled_size=2)
    x, rois = torch.randn(1, 4, 8, 8), torch.tensor([[0, 1.0, 1.0, 6.0, 5.0]])
    program = torch.export.export(model, (x, rois))
    with pytest.raises(Exception, match="deform_psroi_pool reached the ONNX exporter"):
        torch.onnx.export(program, dynamo=True, f=str(tmp_path / "p.onnx"))


# --- the Deploy guide's example runs as written -------------------------------
# (tests/test_guides.py leaves docs/guides/deploy.md's ```py block to this test)

def test_deploy_guide_example(tmp_path, monkeypatch):
    guide = pathlib.Path(__file__).resolve().parents[1] / "docs" / "guides" / "deploy.md"
    (block,) = re.findall(r"```py\n(.*?)```", guide.read_text(), re.S)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, str(guide), "exec"), namespace)  # noqa: S102 - our own guide
    with torch.no_grad():
        expected = namespace["model"](namespace["x"]).numpy()
    np.testing.assert_allclose(namespace["y"], expected, **TOLERANCE)


def test_importing_the_adapter_does_not_load_the_exporter():
    """The dynamo exporter's registry (and onnxscript, over half a second)
    load only when an export does; the translations are added then."""
    code = ("import sys, torch, cudcn.adapters.torch; "
            "assert 'onnxscript' not in sys.modules, 'onnxscript imported'; "
            "from torch.onnx._internal.exporter._torchlib import _torchlib_registry as r; "
            "names = {str(m.fx_target) for m in r.get_torchlib_ops()}; "
            "assert any('cudcn.deform_conv2d' in n for n in names), sorted(names)[:5]")
    subprocess.run([sys.executable, "-c", code], check=True)
