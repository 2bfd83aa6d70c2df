"""Drop-in details of the torch adapter: the modules' constructors and
initialisation as the library each is named after, and errors that code
written against torchvision catches."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import cudcn  # noqa: E402
import cudcn.adapters.torch as ct  # noqa: E402
from cudcn.testing import (  # noqa: E402
    deform_conv2d_inputs,
    deform_psroi_pool_inputs,
    deform_roi_pool_inputs,
)
from torch_inputs import as_tensors  # noqa: E402

# --- constructors ------------------------------------------------------------------
# mmcv (mmcv/ops/deform_conv.py, modulated_deform_conv.py):
#   DeformConv2d(in, out, k, stride=1, padding=0, dilation=1, groups=1,
#                deform_groups=1, bias=False, im2col_step=32), bias must be False
#   ModulatedDeformConv2d(in, out, k, stride=1, padding=0, dilation=1, groups=1,
#                         deform_groups=1, bias=True)
#   conv_offset: Conv2d(in, deform_groups * {2, 3} * kh * kw, k, stride, padding, dilation)


def _shapes(module):
    return {name: tuple(p.shape) for name, p in module.named_parameters()}


def test_mmcv_positional_call_builds_what_mmcv_builds():
    # (4, 4, 3, 1, 1, 1, 1, 2): stride 1, padding 1, dilation 1, groups 1, deform_groups 2.
    dcn = ct.DeformConv2dPack(4, 4, 3, 1, 1, 1, 1, 2)
    assert dcn.deform_groups == 2 and dcn.bias is None  # mmcv: no bias
    assert _shapes(dcn) == {"weight": (4, 4, 3, 3), "conv_offset.weight": (36, 4, 3, 3),
                            "conv_offset.bias": (36,)}
    mdcn = ct.ModulatedDeformConv2dPack(4, 4, 3, 1, 1, 1, 1, 2)
    assert mdcn.deform_groups == 2  # mmcv: bias by default
    assert _shapes(mdcn) == {"weight": (4, 4, 3, 3), "bias": (4,),
                             "conv_offset.weight": (54, 4, 3, 3), "conv_offset.bias": (54,)}
    # bias is the ninth positional argument, as in mmcv.
    assert ct.ModulatedDeformConv2dPack(4, 4, 3, 1, 1, 1, 1, 2, False).bias is None
    assert ct.DeformConv2dPack(4, 4, 3, 1, 1, 1, 2, 2, False, 2).groups == 2
    x = torch.randn(1, 4, 6, 5)
    assert dcn(x).shape == mdcn(x).shape == (1, 4, 6, 5)


def test_mmcv_keyword_calls_from_mmcv_tests():
    # As mmcv's tests/test_ops build them.
    dcn = ct.DeformConv2dPack(in_channels=1, out_channels=1, kernel_size=2, stride=1, padding=0,
                              im2col_step=2)
    assert dcn.conv_offset.out_channels == 8 and dcn.bias is None
    mdcn = ct.ModulatedDeformConv2dPack(1, 1, kernel_size=(2, 2), stride=1, padding=1,
                                        deform_groups=1, bias=False)
    assert mdcn.conv_offset.out_channels == 12 and mdcn.bias is None


def test_old_positional_order_is_refused_not_misread():
    # cudcn's order before issue 17 was (..., groups, bias, deform_groups).
    with pytest.raises(TypeError, match="deform_groups must be an int.*mmcv's order"):
        ct.DeformConv2dPack(4, 4, 3, 1, 1, 1, 1, True, 2)
    with pytest.raises(ValueError, match="deform_groups"):
        ct.ModulatedDeformConv2dPack(4, 4, 3, 1, 1, 1, 1, 3)  # 4 channels, 3 groups
    with pytest.raises(TypeError, match="positional arguments"):  # offset_lr_mult: keyword only
        ct.ModulatedDeformConv2dPack(4, 4, 3, 1, 1, 1, 1, 1, True, 0.1)


def test_torchvision_positional_call_builds_what_torchvision_builds():
    # torchvision: DeformConv2d(in, out, k, stride=1, padding=0, dilation=1, groups=1, bias=True)
    args = (4, 6, 3, 1, 1, 1, 2, False)
    assert _shapes(ct.DeformConv2d(*args)) == _shapes(torchvision.ops.DeformConv2d(*args))


# --- initialisation -------------------------------------------------------------------

def test_deform_conv2d_pack_initialises_as_mmcv():
    torch.manual_seed(1)
    ours = ct.DeformConv2dPack(4, 6, 3, 1, 1, 1, 2)
    # mmcv: DeformConv2d.reset_parameters, then the Pack's nn.Conv2d, zeroed.
    torch.manual_seed(1)
    weight = torch.empty(6, 2, 3, 3)
    torch.nn.init.kaiming_uniform_(weight, nonlinearity="relu")
    torch.testing.assert_close(ours.weight.data, weight, rtol=0, atol=0)
    assert ours.weight.abs().max() <= math.sqrt(6 / (2 * 9))
    assert not ours.conv_offset.weight.any() and not ours.conv_offset.bias.any()
    with_bias = ct.DeformConv2dPack(4, 6, 3, bias=True)
    assert not with_bias.bias.any()  # mmcv has no bias here; ours starts at 0


def test_modulated_pack_initialises_as_mmcv():
    torch.manual_seed(2)
    ours = ct.ModulatedDeformConv2dPack(4, 6, 3, 1, 1, 1, 2, 2)
    # mmcv: init_weights in ModulatedDeformConv2d.__init__, the Pack's
    # nn.Conv2d, then init_weights again (which zeroes conv_offset).
    torch.manual_seed(2)
    bound = 1 / math.sqrt(4 * 3 * 3)
    weight = torch.empty(6, 2, 3, 3).uniform_(-bound, bound)
    torch.nn.Conv2d(4, 2 * 3 * 9, 3, 1, 1, 1)
    weight.uniform_(-bound, bound)
    torch.testing.assert_close(ours.weight.data, weight, rtol=0, atol=0)
    assert not ours.bias.any()
    assert not ours.conv_offset.weight.any() and not ours.conv_offset.bias.any()


def test_converted_conv_with_bias_keeps_its_output():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, bias=True))
    x = torch.randn(2, 3, 7, 6)
    before = model(x)
    ct.convert_to_deformable(model, layers=["0"], deform_groups=3)
    assert model[0].bias is not None and model[0].deform_groups == 3
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


# --- errors --------------------------------------------------------------------------

def _conv_tensors():
    a = deform_conv2d_inputs(batch=2, in_channels=6, out_channels=2, size=(5, 4), kernel=(3, 2),
                             stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2,
                             offset_groups=3, seed=4)
    return a, as_tensors(a)


def _bad_calls():
    """(name, NumPy call, torch call): each with one wrong shape or dtype."""
    a, t = _conv_tensors()
    kw = dict(stride=(2, 1), padding=(1, 0), dilation=(2, 1))
    r = deform_roi_pool_inputs(seed=5)
    rt = as_tensors(r)
    p = deform_psroi_pool_inputs(seed=6)
    pt = as_tensors(p)
    ps_kw = dict(output_dim=4, group_size=2, pooled_size=3, sample_per_part=2, trans_std=0.1,
                 spatial_scale=0.5)
    return {
        # torchvision's test_wrong_sizes: offset[:, :2] and mask[:, :2].
        "offset": (ValueError,
                   lambda: cudcn.deform_conv2d(a["input"], a["offset"][:, :2], a["weight"], **kw),
                   lambda: ct.deform_conv2d(t["input"], t["offset"][:, :2], t["weight"], **kw)),
        "mask": (ValueError,
                 lambda: cudcn.deform_conv2d(a["input"], a["offset"], a["weight"],
                                             mask=a["mask"][:, :2], **kw),
                 lambda: ct.deform_conv2d(t["input"], t["offset"], t["weight"],
                                          mask=t["mask"][:, :2], **kw)),
        "roi_offset": (ValueError,
                       lambda: cudcn.deform_roi_pool(r["input"], r["rois"], r["offset"][:, :1],
                                                     3, 0.5),
                       lambda: ct.deform_roi_pool(rt["input"], rt["rois"], rt["offset"][:, :1],
                                                  3, 0.5)),
        "ps_offset": (ValueError,
                      lambda: cudcn.deform_psroi_pool(p["input"], p["rois"], p["offset"][:3],
                                                      **ps_kw),
                      lambda: ct.deform_psroi_pool(pt["input"], pt["rois"], pt["offset"][:3],
                                                   **ps_kw)),
        "weight_dtype": (TypeError,
                         lambda: cudcn.deform_conv2d(a["input"], a["offset"],
                                                     a["weight"].astype(np.float32), **kw),
                         lambda: ct.deform_conv2d(t["input"], t["offset"], t["weight"].float(),
                                                  **kw)),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_errors_are_also_runtime_errors_through_torch_only(case, launches):
    plain, numpy_call, torch_call = _bad_calls()[case]
    with pytest.raises(plain) as numpy_error:
        numpy_call()
    assert type(numpy_error.value) is plain  # the NumPy API's promise, unchanged
    with pytest.raises(RuntimeError) as torch_error:
        torch_call()
    assert isinstance(torch_error.value, plain)
    assert str(torch_error.value) == str(numpy_error.value)  # names the argument, as before
    assert launches == []  # raised before any kernel ran


def test_errors_keep_their_classes_under_torch_compile(launches):
    _, t = _conv_tensors()
    kw = dict(stride=(2, 1), padding=(1, 0), dilation=(2, 1))
    compiled = torch.compile(ct.deform_conv2d, fullgraph=True, dynamic=False)
    torch._dynamo.reset()
    with pytest.raises(RuntimeError, match="offset") as error:
        compiled(t["input"], t["offset"][:, :2], t["weight"], **kw)
    assert isinstance(error.value, ValueError)
    with pytest.raises(RuntimeError, match="mask") as error:
        compiled(t["input"], t["offset"], t["weight"], mask=t["mask"][:, :2], **kw)
    assert isinstance(error.value, ValueError)
    assert launches == []
    torch._dynamo.reset()
