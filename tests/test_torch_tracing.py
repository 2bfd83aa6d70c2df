"""The torch adapter under graph capture: torch.fx (symbolic_trace, feature
extraction) with the ops as leaves, and torch.export; each captured graph runs
and matches eager."""

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import cudcn.adapters.torch as ct  # noqa: E402
from cudcn.adapters.torch import deform_conv2d as imported_deform_conv2d  # noqa: E402
from cudcn.testing import (  # noqa: E402
    deform_conv2d_inputs,
    deform_psroi_pool_inputs,
    deform_roi_pool_inputs,
)
from torch_inputs import as_tensors  # noqa: E402

PUBLIC_OPS = (ct.deform_conv2d, ct.deform_roi_pool, ct.deform_psroi_pool)




def _cudcn_nodes(graph):
    return [n for n in graph.nodes if n.op == "call_function" and n.target in PUBLIC_OPS]


def _nonzero_offset_heads(module, std=0.05):
    """Fresh Pack layers predict zero offsets; move them so that the
    comparisons below see deformed sampling."""
    torch.manual_seed(0)
    for m in module.modules():
        if isinstance(m, ct.DeformConv2dPack):
            torch.nn.init.normal_(m.conv_offset.weight, std=std)
        if isinstance(m, ct.DeformRoIPoolPack):
            torch.nn.init.normal_(m.offset_fc[-1].weight, std=std)
    return module


# --- torch.fx.symbolic_trace ---------------------------------------------------

class _CallsEachFunction(torch.nn.Module):
    """Calls the three functions the ways user code does: through the package,
    and through a name imported from it."""

    def forward(self, x, offset, weight, rois, roi_offset, ps_input, ps_offset):
        a = imported_deform_conv2d(x, offset, weight, padding=1)
        b = ct.deform_roi_pool(a, rois, roi_offset, 3, 0.5, 0, 0.1)
        c = ct.deform_psroi_pool(ps_input, rois, ps_offset, output_dim=4, group_size=2,
                                 pooled_size=3, sample_per_part=2, trans_std=0.1,
                                 spatial_scale=0.5)
        return b.sum() + c.sum(), a


def _function_args():
    conv = as_tensors(deform_conv2d_inputs(in_channels=3, out_channels=3, size=(12, 10), seed=1))
    roi = as_tensors(deform_roi_pool_inputs(seed=2))
    ps = as_tensors(deform_psroi_pool_inputs(seed=3))
    return (conv["input"], conv["offset"], conv["weight"], roi["rois"], roi["offset"],
            ps["input"], ps["offset"])


def test_functions_are_fx_leaves():
    model = _CallsEachFunction()
    traced = torch.fx.symbolic_trace(model)
    nodes = _cudcn_nodes(traced.graph)
    assert [n.target for n in nodes] == list(PUBLIC_OPS)  # each op once, as one node
    args = _function_args()
    expected, traced_out = model(*args), traced(*args)
    for e, t in zip(expected, traced_out):
        torch.testing.assert_close(t, e, rtol=0, atol=0)


def _all_modules():
    return {
        "DeformConv2d": (ct.DeformConv2d(3, 4, 3, padding=1), 1),
        "DeformConv2dPack": (ct.DeformConv2dPack(3, 4, 3, 1, 1, 1, 1, 3), 1),
        "ModulatedDeformConv2dPack": (ct.ModulatedDeformConv2dPack(3, 4, 3, 2, 1), 1),
        "DeformRoIPool": (ct.DeformRoIPool(3, spatial_scale=0.5, sampling_ratio=2), 1),
        "DeformRoIPoolPack": (ct.DeformRoIPoolPack(3, 3, deform_fc_channels=8,
                                                   spatial_scale=0.5), 2),
        "ModulatedDeformRoIPoolPack": (ct.ModulatedDeformRoIPoolPack(
            3, 3, deform_fc_channels=8, spatial_scale=0.5), 2),
        "DeformPSRoIPool": (ct.DeformPSRoIPool(0.5, output_dim=4, group_size=2, pooled_size=3,
                                               sample_per_part=2, trans_std=0.1), 1),
    }


def _module_args(name):
    roi = as_tensors(deform_roi_pool_inputs(channels=3, seed=4))
    x = roi["input"].float()
    if name == "DeformConv2d":
        conv = as_tensors(deform_conv2d_inputs(in_channels=3, size=(12, 10), dtype="float32",
                                               seed=5))
        return x, conv["offset"], conv["mask"]
    if name.endswith("Conv2dPack"):
        return (x,)
    if name == "DeformRoIPool":
        return x, roi["rois"], roi["offset"].float()
    if name == "DeformPSRoIPool":
        ps = as_tensors(deform_psroi_pool_inputs(dtype="float32", seed=6))
        return ps["input"], ps["rois"], ps["offset"]
    return x, roi["rois"]


@pytest.mark.parametrize("name", list(_all_modules()))
def test_modules_trace_with_the_ops_as_leaves(name):
    module, op_calls = _all_modules()[name]
    module = _nonzero_offset_heads(module)
    traced = torch.fx.symbolic_trace(module)
    assert len(_cudcn_nodes(traced.graph)) == op_calls
    args = _module_args(name)
    torch.testing.assert_close(traced(*args), module(*args), rtol=0, atol=0)


def test_feature_extractor_on_a_converted_resnet18():
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(7)
    model = torchvision.models.resnet18(weights=None).eval()
    ct.convert_to_deformable(model)  # layer4: DCN v1
    ct.convert_to_deformable(model, layers=["layer3.1.conv2"], modulated=True, deform_groups=2)
    _nonzero_offset_heads(model, std=0.01)
    extractor = create_feature_extractor(model, {"layer3": "c4", "layer4": "c5"})
    assert len(_cudcn_nodes(extractor.graph)) == 4
    x = torch.randn(1, 3, 48, 48, requires_grad=True)
    features = extractor(x)

    seen = {}
    hooks = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: seen.update({n: o}))
             for n in ("layer3", "layer4")]
    model(x)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(features["c4"], seen["layer3"], rtol=0, atol=0)
    torch.testing.assert_close(features["c5"], seen["layer4"], rtol=0, atol=0)
    (g,) = torch.autograd.grad(features["c5"].square().sum(), x)
    (g_eager,) = torch.autograd.grad(seen["layer4"].square().sum(), x)
    torch.testing.assert_close(g, g_eager, rtol=0, atol=0)


# --- torch.export ----------------------------------------------------------------

class _Detector(torch.nn.Module):
    """A backbone with both Pack layers and the three pooling heads."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.dcn = ct.DeformConv2dPack(8, 8, 3, 1, 1, 1, 1, 2)
        self.mdcn = ct.ModulatedDeformConv2dPack(8, 8, 3, 1, 1, 1, 2, 2)
        self.roi = ct.ModulatedDeformRoIPoolPack(3, 8, deform_fc_channels=16, spatial_scale=0.5)
        self.psroi = ct.DeformPSRoIPool(0.5, output_dim=2, group_size=2, pooled_size=3,
                                        sample_per_part=2)

    def forward(self, x, rois):
        h = self.mdcn(torch.relu(self.dcn(torch.relu(self.stem(x)))))
        return torch.cat([self.roi(h, rois).flatten(1), self.psroi(h, rois).flatten(1)], dim=1)


@pytest.mark.parametrize("strict", [False, True], ids=["non_strict", "strict"])
def test_export_runs_and_matches_eager(strict):
    model = _nonzero_offset_heads(_Detector()).eval()
    x = torch.randn(2, 3, 12, 10)
    rois = torch.from_numpy(deform_roi_pool_inputs(rois=4, seed=8)["rois"]).float()
    program = torch.export.export(model, (x, rois), strict=strict)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"cudcn.deform_conv2d.default", "cudcn.deform_roi_pool.default",
            "cudcn.deform_psroi_pool.default"} <= targets
    torch.testing.assert_close(program.module()(x, rois), model(x, rois), rtol=0, atol=0)
    x2 = torch.randn(2, 3, 12, 10)  # the program is not tied to the example's values
    torch.testing.assert_close(program.module()(x2, rois), model(x2, rois), rtol=0, atol=0)
