"""torch.onnx.export of multi-scale deformable attention (the op, mmcv's
layer, a kernelized transformers Deformable DETR) to standard ONNX, run in
ONNX Runtime at other batch, query and level sizes than exported with."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import cudcn.adapters.torch as ct  # noqa: E402
from cudcn.testing import ms_deform_attn_inputs  # noqa: E402
from test_onnx_export import export, session  # noqa: E402

pytestmark = [pytest.mark.torchvision,
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

NAMES = ["value", "spatial_shapes", "level_start_index", "sampling_locations",
         "attention_weights"]


class Attention(torch.nn.Module):
    def forward(self, value, spatial_shapes, level_start_index, sampling_locations,
                attention_weights):
        return ct.ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                                 attention_weights)


def _inputs(batch, queries, shapes, seed):
    args = ms_deform_attn_inputs(batch=batch, queries=queries, heads=2, channels=4,
                                 shapes=shapes, points=3, dtype=np.float32, seed=seed)
    return tuple(torch.from_numpy(args[name]) for name in NAMES)


def _export(model, example, path, exporter, names, dynamic):
    """test_onnx_export's export with dynamic axes by input name; the graph
    checked and standard-only; a session of it."""
    graph = export(model, example, path, exporter,
                   dynamic={names.index(name): axes for name, axes in dynamic.items()})
    onnx.checker.check_model(graph)
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}
    return session(path)


def _feed(names, tensors):
    """ONNX Runtime's inputs, named in0, in1, ... as export names them."""
    return {f"in{names.index(n)}": t.numpy() for n, t in zip(names, tensors)}


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_the_op_exports_with_dynamic_batch_queries_and_level_sizes(tmp_path, exporter):
    model = Attention()
    example = _inputs(2, 5, ((6, 5), (3, 4)), seed=0)
    dynamic = {"value": {0: "batch", 1: "rows"}, "sampling_locations": {0: "batch", 1: "queries"},
               "attention_weights": {0: "batch", 1: "queries"}}
    ort_session = _export(model, example, tmp_path / "msda.onnx", exporter, NAMES, dynamic)
    for batch, queries, shapes in [(2, 5, ((6, 5), (3, 4))), (1, 9, ((8, 7), (2, 2))),
                                   (3, 2, ((4, 4), (5, 1)))]:
        inputs = _inputs(batch, queries, shapes, seed=batch)
        (got,) = ort_session.run(None, _feed(NAMES, inputs))
        want = model(*inputs).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_mmcv_layer_exports(tmp_path, exporter):
    torch.manual_seed(0)
    layer = ct.MultiScaleDeformableAttention(embed_dims=16, num_heads=2, num_levels=2,
                                             num_points=2, batch_first=True, dropout=0.0).eval()
    with torch.no_grad():
        layer.sampling_offsets.weight.normal_(0, 0.2)

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, query, value, reference_points):
            shapes = torch.tensor([[6, 5], [3, 4]])
            starts = torch.tensor([0, 30])
            return self.layer(query, value=value, reference_points=reference_points,
                              spatial_shapes=shapes, level_start_index=starts)

    def inputs(batch, queries, seed):
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(batch, queries, 16, generator=g),
                torch.randn(batch, 42, 16, generator=g),
                torch.rand(batch, queries, 2, 2, generator=g))

    names = ("query", "value", "reference_points")
    dynamic = {"query": {0: "batch", 1: "queries"}, "value": {0: "batch"},
               "reference_points": {0: "batch", 1: "queries"}}
    model = Wrapped().eval()
    ort_session = _export(model, inputs(2, 4, 0), tmp_path / "layer.onnx", exporter, names,
                          dynamic)
    for batch, queries in [(2, 4), (1, 7), (3, 1)]:
        x = inputs(batch, queries, batch + queries)
        (got,) = ort_session.run(None, _feed(names, x))
        with torch.no_grad():
            np.testing.assert_allclose(got, model(*x).numpy(), rtol=1e-5, atol=1e-5)


def test_kernelized_deformable_detr_exports(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("kernels")
    import test_transformers_kernelize as hf

    torch.manual_seed(0)
    model = hf.deformable_detr().eval()
    ct.kernelize(model)

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            out = self.model(pixel_values=pixel_values)
            return out.logits, out.pred_boxes

    wrapped = Logits().eval()
    pixels = torch.randn(1, 3, 128, 128)
    ort_session = _export(wrapped, (pixels,), tmp_path / "detr.onnx", "torchscript",
                          ("pixel_values",), {"pixel_values": {0: "batch"}})
    # cudcn's decomposition (Gather), not transformers' default grid_sample path.
    ops = {node.op_type for node in onnx.load(str(tmp_path / "detr.onnx")).graph.node}
    assert "GridSample" not in ops and "Gather" in ops
    for batch in (1, 2):
        x = torch.randn(batch, 3, 128, 128)
        got = ort_session.run(None, _feed(("pixel_values",), (x,)))
        with torch.no_grad():
            want = wrapped(x)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-4)
