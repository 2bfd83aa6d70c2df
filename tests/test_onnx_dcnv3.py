"""torch.onnx.export of dcnv3 and dcnv4 (the ops and InternImage's DCNv3 /
DCNv4's DCNv4 layers) to standard ONNX: one GridSample per call, run in
ONNX Runtime at other batch and map sizes than exported with and compared
with cudcn's kernels; the decomposition itself against the float64
reference."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import cudcn  # noqa: E402
import cudcn.adapters.torch as ct  # noqa: E402
from cudcn import reference  # noqa: E402
from cudcn.adapters.torch import onnx_decompositions  # noqa: E402
from cudcn.testing import dcnv3_inputs  # noqa: E402
from test_onnx_export import export, session  # noqa: E402

pytestmark = [pytest.mark.torchvision,
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

EXPORTERS = ["dynamo", "torchscript"]
TOLERANCE = dict(rtol=1e-5, atol=1e-5)
PARAMS = ("kernel_size", "stride", "padding", "dilation", "groups", "offset_scale",
          "remove_center")
CHANNELS = 6  # every geometry's groups divide it

# Each geometry: dcnv3_inputs' keyword arguments (groups * group_channels = CHANNELS).
GEOMETRIES = {
    "pad_h_neq_pad_w": dict(kernel=3, padding=(2, 0)),
    "rect_kernel": dict(kernel=(2, 3), padding=(0, 1)),
    "stride": dict(kernel=3, stride=(2, 1), padding=(0, 2)),
    "dilation": dict(kernel=3, dilation=(2, 1), padding=(2, 1)),
    "offset_scale": dict(kernel=3, padding=1, offset_scale=0.6),
    "remove_center": dict(kernel=3, padding=1, remove_center=True),
    "groups": dict(kernel=(3, 1), padding=(1, 0), groups=3, group_channels=2),
    "one_group_far_outside": dict(kernel=3, padding=1, groups=1, group_channels=6,
                                  offset_scale=1.5, outside=0.6),
}


def _geometry(name):
    """dcnv3_inputs' keyword arguments of a geometry (two groups of three
    channels unless it says otherwise)."""
    return {"groups": 2, "group_channels": 3, **GEOMETRIES[name]}


def _params(args):
    return {name: args[name] for name in PARAMS}


def _nonfinite(offset, step):
    """Writes NaN, +-inf and the dtype's largest value into some (dx, dy)
    entries (every ``step``-th of the flattened array) of a float array, in
    place; the kernels count such points as outside."""
    flat = offset.reshape(-1)
    for start, value in enumerate((np.nan, np.inf, -np.inf, np.finfo(offset.dtype).max)):
        flat[start::step] = value
    return offset


def _case(name, batch, size, dtype, seed):
    """One geometry's arguments as numpy arrays: input, offset and mask for
    dcnv3, offset_mask packing the same offsets and mask for dcnv4 (with
    random padding), the offsets with non-finite entries; and the params."""
    args = dcnv3_inputs(batch=batch, size=size, packed=True, dtype=dtype, seed=seed,
                        **_geometry(name))
    plain = dcnv3_inputs(batch=batch, size=size, dtype=dtype, seed=seed, **_geometry(name))
    offset, mask = _nonfinite(plain["offset"], 23), plain["mask"]
    n, out_h, out_w, points = mask.shape
    groups = args["groups"]
    points //= groups
    per_group = np.concatenate([offset.reshape(n, out_h, out_w, groups, 2 * points),
                                mask.reshape(n, out_h, out_w, groups, points)], axis=-1)
    args["offset_mask"][..., :groups * 3 * points] = per_group.reshape(
        n, out_h, out_w, groups * 3 * points)
    args.update(offset=offset, mask=mask)
    return args


class Grid(torch.nn.Module):
    """Every geometry through ct.dcnv3 and ct.dcnv4, on one shared input:
    forward(x, offset_0, mask_0, offset_mask_0, offset_1, ...) returns the
    dcnv3 and dcnv4 outputs of each geometry in turn."""

    def __init__(self):
        super().__init__()
        self.params = [_params(dcnv3_inputs(batch=1, **_geometry(name))) for name in GEOMETRIES]

    def forward(self, x, *tensors):
        outputs = []
        for index, params in enumerate(self.params):
            offset, mask, offset_mask = tensors[3 * index:3 * index + 3]
            outputs.append(ct.dcnv3(x, offset, mask, **params))
            outputs.append(ct.dcnv4(x, offset_mask, **params))
        return tuple(outputs)


def grid_inputs(batch, size, seed, dtype=np.float32):
    """(x, offset_0, mask_0, offset_mask_0, ...) for Grid, as tensors."""
    x = np.random.default_rng(seed).standard_normal((batch, *size, CHANNELS)).astype(dtype)
    tensors = [x]
    for index, name in enumerate(GEOMETRIES):
        case = _case(name, batch, size, dtype, seed + index)
        tensors += [case["offset"], case["mask"], case["offset_mask"]]
    return tuple(torch.from_numpy(t) for t in tensors)


class Both(torch.nn.Module):
    """dcnv3 and dcnv4 of one geometry: forward(x, offset, mask, offset_mask)."""

    def __init__(self, name):
        super().__init__()
        self.params = _params(dcnv3_inputs(batch=1, **_geometry(name)))

    def forward(self, x, offset, mask, offset_mask):
        return ct.dcnv3(x, offset, mask, **self.params), ct.dcnv4(x, offset_mask, **self.params)


def both_inputs(name, batch, dtype, seed, size=(7, 6)):
    """(x, offset, mask, offset_mask) of a geometry, as tensors."""
    case = _case(name, batch, size, dtype, seed)
    tensors = (case["input"], case["offset"], case["mask"], case["offset_mask"])
    return tuple(torch.from_numpy(t) for t in tensors)


BATCH_AXES = {i: {0: "batch"} for i in range(4)}


def map_axes(count):
    """Dynamic axes of a model taking x, then ``count`` tensors three per
    geometry on its output grid (offset, mask, offset_mask): x's batch, H
    and W, and each geometry's own (H_out, W_out) names (the graph reads
    the output grid from the offsets, and never ties it to H and W)."""
    axes = [{0: "batch", 1: "height", 2: "width"}]
    for index in range(count):
        axes.append({0: "batch", 1: f"out_h{index // 3}", 2: f"out_w{index // 3}"})
    return axes


def export_grid(model, inputs, path, exporter):
    """test_onnx_export's export of Grid. The TorchScript export has
    dynamic batch, H and W (map_axes); the dynamo export a dynamic batch
    only: with every map size dynamic it takes 45 s on two cores (20 s with
    the batch alone), so a single op covers its dynamic map sizes
    (test_dynamo_export_with_dynamic_map_sizes). Grid takes its offsets as
    ``*tensors``, which torch.export's dynamic_shapes gives as one nested
    entry: built here for the dynamo exporter."""
    if exporter == "torchscript":
        return export(model, inputs, path, exporter,
                      dynamic=dict(enumerate(map_axes(len(inputs) - 1))))
    batch = {0: torch.export.Dim("batch")}
    torch.onnx.export(model, inputs, str(path), dynamo=True, opset_version=19,
                      input_names=[f"in{i}" for i in range(len(inputs))],
                      dynamic_shapes=(batch, (batch,) * (len(inputs) - 1)))
    return onnx.load(str(path))


def graph_ops(graph):
    """The graph's op types; asserts it is standard ONNX only."""
    onnx.checker.check_model(graph)
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}
    return [node.op_type for node in graph.graph.node]


def assert_session_matches(sess, model, inputs, tolerance=TOLERANCE):
    with torch.no_grad():
        expected = model(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = sess.run(None, {f"in{i}": t.numpy() for i, t in enumerate(inputs)})
    assert len(got) == len(expected)
    for index, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == tuple(e.shape), index
        assert g.dtype == e.numpy().dtype, index
        assert np.isfinite(g).all(), index
        np.testing.assert_allclose(g, e.numpy(), err_msg=f"output {index}", **tolerance)


# --- the ops: every geometry, dynamic batch and map size --------------------

@pytest.fixture(scope="module", params=EXPORTERS)
def exported_grid(request, tmp_path_factory):
    model = Grid().eval()
    path = tmp_path_factory.mktemp("onnx") / f"dcnv3_grid_{request.param}.onnx"
    graph = export_grid(model, grid_inputs(2, (7, 6), seed=0), path, request.param)
    return model, graph, session(path), request.param


def test_grid_is_one_grid_sample_per_call_and_no_cudcn_op(exported_grid):
    _, graph, _, _ = exported_grid
    ops = graph_ops(graph)
    assert ops.count("GridSample") == 2 * len(GEOMETRIES)
    assert "Pad" not in ops  # the unpadded input is sampled at p0 - pad
    assert not any("cudcn" in op.lower() or "dcn" in op.lower() for op in ops)


@pytest.mark.parametrize("batch, size", [(2, (7, 6)), (1, (9, 5)), (3, (5, 8))])
def test_grid_matches_cudcn(exported_grid, batch, size):
    """pad_h != pad_w, a rectangular kernel, stride, dilation, offset_scale,
    remove_center, groups, points far outside, NaN / inf / huge offsets; at
    the exported batch and map size and at others (dynamic axes; the
    dynamo export's map size is the exported one, see export_grid)."""
    model, _, sess, exporter = exported_grid
    if exporter == "dynamo":
        size = (7, 6)
    assert_session_matches(sess, model, grid_inputs(batch, size, seed=batch))


def test_dynamo_export_with_dynamic_map_sizes(tmp_path):
    """Stride and pad_h != pad_w: an output grid unlike the input's; an
    empty batch too. (The TorchScript exporter's graphs cannot take N = 0:
    it writes 0 = "copy this size" and -1 into each Reshape of dynamic
    sizes, and ONNX's Reshape cannot infer a -1 with zero elements.)"""
    name = "stride"
    model = Both(name).eval()
    args = both_inputs(name, 2, np.float32, 0)
    graph = export(model, args, tmp_path / "m.onnx", "dynamo",
                   dynamic=dict(enumerate(map_axes(3))))
    assert graph_ops(graph).count("GridSample") == 2
    sess = session(tmp_path / "m.onnx")
    for batch, size in ((2, (7, 6)), (1, (9, 5)), (3, (5, 8)), (0, (6, 4))):
        assert_session_matches(sess, model, both_inputs(name, batch, np.float32, batch, size))


# --- float64 and float16 ----------------------------------------------------

@pytest.mark.parametrize("exporter", EXPORTERS)
def test_float64_runs_in_double_from_opset_20(tmp_path, exporter):
    """ONNX Runtime's CPU provider has a double GridSample from opset 20 on
    (ORT 1.32; GridSample-16 is float only): a float64 model exported at
    opset 20 computes in double and agrees with cudcn's float64 kernels to
    rounding."""
    model = Both("dilation").eval()
    graph = export(model, both_inputs("dilation", 2, np.float64, 0), tmp_path / "d.onnx",
                   exporter, dynamic=BATCH_AXES, opset=20)
    assert graph_ops(graph).count("GridSample") == 2
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert_session_matches(session(tmp_path / "d.onnx"), model,
                           both_inputs("dilation", 3, np.float64, 1),
                           tolerance=dict(rtol=1e-12, atol=1e-12))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_float16_computes_in_float32(tmp_path, exporter):
    """Half inputs: the decomposition casts to float32 (as the kernels
    compute) and back, so the graph's GridSample is float32's."""
    model = Both("offset_scale").eval()
    graph = export(model, both_inputs("offset_scale", 2, np.float16, 0), tmp_path / "h.onnx",
                   exporter, dynamic=BATCH_AXES)
    assert graph_ops(graph).count("GridSample") == 2
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    # Both round offsets and output to float16, at different steps: a few ulps.
    assert_session_matches(session(tmp_path / "h.onnx"), model,
                           both_inputs("offset_scale", 1, np.float16, 1),
                           tolerance=dict(rtol=2e-3, atol=2e-3))


# --- the window's border ----------------------------------------------------

def test_border_samples_match_cudcn(tmp_path):
    """A 1 x 1 kernel's single point placed just inside, on and just beyond
    each border (-1 and H, -1 and W), at inf and NaN: ONNX Runtime's GridSample
    behind the Where gives cudcn's values, zero on and beyond the borders."""
    height, width = 4, 5
    x = torch.arange(1.0, 1 + height * width).reshape(1, height, width, 1)

    class Sample(torch.nn.Module):
        def forward(self, x, offset, mask):
            return ct.dcnv3(x, offset, mask, kernel_size=1)

    mask = torch.ones(1, height, width, 1)
    export(Sample(), (x, torch.zeros(1, height, width, 2), mask), tmp_path / "b.onnx",
           "torchscript")
    sess = session(tmp_path / "b.onnx")
    tiny = 2.0**-20
    for axis, size in ((0, width), (1, height)):  # (dx, dy)
        for position in (-1 - tiny, -1.0, -1 + tiny, -0.5, 0.0, size - 1, size - 0.5,
                         size - tiny, float(size), size + tiny, size + 0.5, float("inf"),
                         float("nan")):
            offset = torch.zeros(1, height, width, 2)
            offset[0, 0, 0, axis] = position  # output (0, 0) samples at p0 = (0, 0) + offset
            offset[0, 0, 0, 1 - axis] = 1.25
            (got,) = sess.run(None, {"in0": x.numpy(), "in1": offset.numpy(),
                                     "in2": mask.numpy()})
            expected = float(Sample()(x, offset, mask)[0, 0, 0, 0])
            assert got[0, 0, 0, 0] == pytest.approx(expected, abs=1e-6), (axis, position)
            if not -1 < position < size:
                assert got[0, 0, 0, 0] == 0.0, (axis, position)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_points_outside_read_nothing(tmp_path, exporter):
    """Points at NaN, +-inf, huge or merely far locations add exactly
    nothing, even over an input that is inf everywhere and whatever their
    mask: ONNX Runtime's GridSample reads pixels of the map at such
    coordinates (1.32 does), so the graph must not hand it them."""
    args = both_inputs("groups", 2, np.float32, 0)
    model = Both("groups").eval()
    export(model, args, tmp_path / "o.onnx", exporter, dynamic=BATCH_AXES)
    x, offset, mask, offset_mask = (t.clone() for t in args)
    x.fill_(float("inf"))
    far = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 50.0, -50.0])
    offset.copy_(far[torch.arange(offset.numel()) % len(far)].reshape(offset.shape))
    mask[..., ::2] = float("inf")
    points = 3  # the "groups" geometry's 3 x 1 kernel
    packed = offset_mask[..., :3 * 3 * points].unflatten(-1, (3, 3 * points))
    packed[..., :2 * points] = offset.unflatten(-1, (3, 2 * points))
    packed[..., 2 * points:] = mask.unflatten(-1, (3, points))
    offset_mask[..., :3 * 3 * points] = packed.flatten(-2)
    with torch.no_grad():
        assert all((out == 0).all() for out in model(x, offset, mask, offset_mask))
    assert_session_matches(session(tmp_path / "o.onnx"), model, (x, offset, mask, offset_mask),
                           tolerance=dict(rtol=0, atol=0))


# --- the layers ---------------------------------------------------------------

def _randomize(layer, names, seed):
    """Non-zero offset and mask predictors (both start at zero), so that the
    points leave their places and some leave the map."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in names:
            projection = getattr(layer, name)
            projection.weight.normal_(0, 0.5, generator=g)
            projection.bias.normal_(0, 1.0, generator=g)
    return layer


@pytest.mark.parametrize("exporter, center_feature_scale", [
    ("dynamo", True), ("torchscript", False), ("torchscript", True)])
def test_dcnv3_layer_exports_with_dynamic_batch_and_map(tmp_path, exporter,
                                                        center_feature_scale):
    torch.manual_seed(0)
    layer = ct.DCNv3(channels=8, kernel_size=3, pad=2, dilation=2, group=2, offset_scale=0.8,
                     center_feature_scale=center_feature_scale, remove_center=True)
    model = _randomize(layer, ("offset", "mask"), seed=0).eval()
    x = torch.randn(2, 7, 6, 8)
    graph = export(model, (x,), tmp_path / "l.onnx", exporter,
                   dynamic={0: {0: "batch", 1: "height", 2: "width"}})
    assert graph_ops(graph).count("GridSample") == 1
    sess = session(tmp_path / "l.onnx")
    for shape in ((2, 7, 6, 8), (1, 5, 9, 8), (3, 4, 4, 8)):
        assert_session_matches(sess, model, (torch.randn(shape),))


# The layer checks its token count against shape=(H, W) in Python, which
# the TorchScript tracer warns it cannot record: H and W are fixed anyway.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_dcnv4_layer_exports_with_dynamic_batch(tmp_path, exporter):
    torch.manual_seed(0)
    height, width = 5, 7

    class Tokens(torch.nn.Module):
        """DCNv4 on (N, H * W, C) tokens of a fixed (H, W) map."""

        def __init__(self):
            super().__init__()
            self.layer = _randomize(ct.DCNv4(channels=16, group=2, dw_kernel_size=3),
                                    ("offset_mask",), seed=1)

        def forward(self, tokens):
            return self.layer(tokens, shape=(height, width))

    model = Tokens().eval()
    graph = export(model, (torch.randn(2, height * width, 16),), tmp_path / "v4.onnx", exporter,
                   dynamic={0: {0: "batch"}})
    assert graph_ops(graph).count("GridSample") == 1
    sess = session(tmp_path / "v4.onnx")
    for batch in (2, 1, 4):
        assert_session_matches(sess, model, (torch.randn(batch, height * width, 16),))


# --- the decomposition in eager torch -----------------------------------------

@pytest.mark.parametrize("packed", [False, True], ids=["dcnv3", "dcnv4"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_decomposition_matches_the_float64_reference(name, packed):
    """The torch code the exporters trace, run eagerly in float64, is the
    reference to rounding; non-finite offsets count as outside."""
    args = _case(name, 2, (7, 6), np.float64, seed=5)
    params = _params(args)
    if packed:
        expected = reference.dcnv4(args["input"], args["offset_mask"], **params)
        got = onnx_decompositions.dcnv4(torch.from_numpy(args["input"]),
                                        torch.from_numpy(args["offset_mask"]), **params)
    else:
        expected = reference.dcnv3(args["input"], args["offset"], args["mask"], **params)
        got = onnx_decompositions.dcnv3(torch.from_numpy(args["input"]),
                                        torch.from_numpy(args["offset"]),
                                        torch.from_numpy(args["mask"]), **params)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_decomposition_ignores_the_mask_of_points_outside():
    """An inf or NaN mask at a point outside the window (or at a NaN
    location) adds nothing, as in the kernels; one inside propagates."""
    args = dcnv3_inputs(batch=1, size=(4, 5), groups=1, group_channels=2, seed=0)
    offset, mask = args["offset"], args["mask"]
    offset[0, 0, 0, 0], mask[0, 0, 0, 0] = np.nan, np.inf
    offset[0, 1, 1, 2], mask[0, 1, 1, 1] = 50.0, np.nan
    params = _params(args)
    expected = cudcn.dcnv3(args["input"], offset, mask, **params)
    got = onnx_decompositions.dcnv3(*(torch.from_numpy(a) for a in (args["input"], offset, mask)),
                                    **params).numpy()
    assert np.isfinite(expected).all() and np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    mask[0, 2, 2, 4] = np.nan  # the centre point of output (2, 2), inside
    got = onnx_decompositions.dcnv3(*(torch.from_numpy(a) for a in (args["input"], offset, mask)),
                                    **params).numpy()
    assert np.isnan(got[0, 2, 2]).all() and np.isnan(
        cudcn.dcnv3(args["input"], offset, mask, **params)[0, 2, 2]).all()


def test_decomposition_of_an_empty_batch():
    args = dcnv3_inputs(batch=0, packed=True, seed=0)
    got = onnx_decompositions.dcnv4(torch.from_numpy(args["input"]),
                                    torch.from_numpy(args["offset_mask"]), **_params(args))
    assert tuple(got.shape) == (0, 7, 6, 6)


# --- errors --------------------------------------------------------------------

def test_opset_below_16_says_so(tmp_path):
    args = both_inputs("stride", 1, np.float32, 0)
    with pytest.raises(Exception, match=r"grid_sampler.*opset version 15.*version 16"):
        export(Both("stride"), args, tmp_path / "o.onnx", "torchscript", opset=15)


@pytest.mark.parametrize("op", ["dcnv3", "dcnv4"])
def test_geometry_that_disagrees_with_the_offsets_raises(tmp_path, op):
    """The kernels check the offsets' grid and channels in eager mode; the
    export path checks them on the example too rather than write a graph
    that computes nonsense. (The dynamo exporter would report this error
    only in its log, then fail its strict retry on the opaque op.)"""
    args = both_inputs("stride", 1, np.float32, 0)

    class Wrong(torch.nn.Module):
        def forward(self, x, offset, mask, offset_mask):
            if op == "dcnv3":
                return ct.dcnv3(x, offset, mask, 3, stride=1, padding=1, groups=2)
            return ct.dcnv4(x, offset_mask, 3, stride=1, padding=1, groups=2)

    with pytest.raises(ValueError, match=r"offsets are given on a \(3, 8\) grid .* \(7, 6\)"):
        export(Wrong(), args, tmp_path / "w.onnx", "torchscript", dynamic=BATCH_AXES)

    class Narrow(torch.nn.Module):
        def forward(self, x, offset, mask, offset_mask):
            if op == "dcnv3":
                return ct.dcnv3(x, offset, mask[..., :-1], 3, (2, 1), (0, 2), groups=2)
            return ct.dcnv4(x, offset_mask[..., :30], 3, (2, 1), (0, 2), groups=2)

    with pytest.raises(ValueError, match="mask has 17 channels|offset_mask has 30 channels"):
        export(Narrow(), args, tmp_path / "n.onnx", "torchscript", dynamic=BATCH_AXES)


class Opaque(torch.nn.Module):
    """Calls the custom op itself, which no decomposition replaces."""

    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, x, offset, mask, offset_mask):
        params = [[3, 3], [2, 1], [0, 2], [1, 1], 2, 1.0, False]  # the "stride" geometry
        if self.op == "dcnv3":
            return torch.ops.cudcn.dcnv3(x, offset, mask, *params)
        return torch.ops.cudcn.dcnv4(x, offset_mask, *params)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("op", ["dcnv3", "dcnv4"])
def test_the_opaque_op_raises_a_clear_error(tmp_path, exporter, op):
    args = both_inputs("stride", 1, np.float32, 0)
    with pytest.raises(Exception, match=f"cudcn's {op} reached the ONNX exporter as one opaque"):
        export(Opaque(op), args, tmp_path / "o.onnx", exporter)


def test_exported_program_made_beforehand_raises(tmp_path):
    """The decomposition runs during torch.onnx.export; an ExportedProgram
    made beforehand holds the opaque op, and the exporter says so."""
    model = Both("stride")
    program = torch.export.export(model, both_inputs("stride", 1, np.float32, 0))
    with pytest.raises(Exception, match="dcnv3 reached the ONNX exporter"):
        torch.onnx.export(program, dynamo=True, f=str(tmp_path / "p.onnx"))
