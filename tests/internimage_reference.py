"""Stand-ins for InternImage's DCNv3 layer (``ops_dcnv3/modules/dcnv3.py``)
and DCNv4's layer (``DCNv4_op/DCNv4/modules/dcnv4.py``), which need their
CUDA extensions: the same submodules in the same nesting and creation order
(so the same state_dict keys and, from one seed, the same parameters) and
the same forward, with the core op replaced by the grid_sample path
(cudcn.testing.grid_sample_dcnv3 / grid_sample_dcnv4, which InternImage's
``dcnv3_core_pytorch`` computes and DCNv4's tests unpack to).

Left out: DCNv3's warning for a group width that is not a power of 2 and
DCNv4's assertion that it is a multiple of 16 (advice and limits of their
CUDA kernels, which the grid_sample path does not share).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from cudcn.testing import grid_sample_dcnv3, grid_sample_dcnv4


class ToChannelsFirst(nn.Module):
    def forward(self, x):
        return x.permute(0, 3, 1, 2)


class ToChannelsLast(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


def build_norm_layer(dim, norm_layer, in_format="channels_last", out_format="channels_last",
                     eps=1e-6):
    """InternImage's: a Sequential of the norm and the permutes it needs."""
    layers = []
    if norm_layer == "BN":
        if in_format == "channels_last":
            layers.append(ToChannelsFirst())
        layers.append(nn.BatchNorm2d(dim))
        if out_format == "channels_last":
            layers.append(ToChannelsLast())
    elif norm_layer == "LN":
        if in_format == "channels_first":
            layers.append(ToChannelsLast())
        layers.append(nn.LayerNorm(dim, eps=eps))
        if out_format == "channels_first":
            layers.append(ToChannelsFirst())
    else:
        raise NotImplementedError(f"build_norm_layer does not support {norm_layer}")
    return nn.Sequential(*layers)


def build_act_layer(act_layer):
    if act_layer == "ReLU":
        return nn.ReLU(inplace=True)
    if act_layer == "SiLU":
        return nn.SiLU(inplace=True)
    if act_layer == "GELU":
        return nn.GELU()
    raise NotImplementedError(f"build_act_layer does not support {act_layer}")


class CenterFeatureScaleModule(nn.Module):
    def forward(self, query, weight, bias):
        return F.linear(query, weight=weight, bias=bias).sigmoid()


def _add_center_feature_scale(module, group, channels):
    module.center_feature_scale_proj_weight = nn.Parameter(
        torch.zeros((group, channels), dtype=torch.float))
    module.center_feature_scale_proj_bias = nn.Parameter(
        torch.tensor(0.0, dtype=torch.float).view((1,)).repeat(group))
    module.center_feature_scale_module = CenterFeatureScaleModule()


def _center_feature_blend(module, x, x_proj, gate_input):
    scale = module.center_feature_scale_module(gate_input, module.center_feature_scale_proj_weight,
                                               module.center_feature_scale_proj_bias)
    # (N, H, W, G) -> (N, H, W, G, C_g) -> (N, H, W, C)
    scale = scale[..., None].repeat(1, 1, 1, 1, module.channels // module.group).flatten(-2)
    return x * (1 - scale) + x_proj * scale


class ReferenceDCNv3(nn.Module):
    """InternImage's DCNv3, with the grid_sample path as its core."""

    def __init__(self, channels=64, kernel_size=3, dw_kernel_size=None, stride=1, pad=1,
                 dilation=1, group=4, offset_scale=1.0, act_layer="GELU", norm_layer="LN",
                 center_feature_scale=False, remove_center=False):
        super().__init__()
        if channels % group != 0:
            raise ValueError(f"channels must be divisible by group, but got {channels} and "
                             f"{group}")
        dw_kernel_size = dw_kernel_size if dw_kernel_size is not None else kernel_size
        self.offset_scale = offset_scale
        self.channels = channels
        self.kernel_size = kernel_size
        self.dw_kernel_size = dw_kernel_size
        self.stride = stride
        self.dilation = dilation
        self.pad = pad
        self.group = group
        self.group_channels = channels // group
        self.center_feature_scale = center_feature_scale
        self.remove_center = int(remove_center)
        if self.remove_center and self.kernel_size % 2 == 0:
            raise ValueError("remove_center is only compatible with odd kernel size.")

        self.dw_conv = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=dw_kernel_size, stride=1,
                      padding=(dw_kernel_size - 1) // 2, groups=channels),
            build_norm_layer(channels, norm_layer, "channels_first", "channels_last"),
            build_act_layer(act_layer))
        points = kernel_size * kernel_size - self.remove_center
        self.offset = nn.Linear(channels, group * points * 2)
        self.mask = nn.Linear(channels, group * points)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        self._reset_parameters()
        if center_feature_scale:
            _add_center_feature_scale(self, group, channels)

    def _reset_parameters(self):
        nn.init.constant_(self.offset.weight.data, 0.0)
        nn.init.constant_(self.offset.bias.data, 0.0)
        nn.init.constant_(self.mask.weight.data, 0.0)
        nn.init.constant_(self.mask.bias.data, 0.0)
        nn.init.xavier_uniform_(self.input_proj.weight.data)
        nn.init.constant_(self.input_proj.bias.data, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight.data)
        nn.init.constant_(self.output_proj.bias.data, 0.0)

    def forward(self, input):
        N, H, W, _ = input.shape
        x = self.input_proj(input)
        x_proj = x
        x1 = self.dw_conv(input.permute(0, 3, 1, 2))
        offset = self.offset(x1)
        mask = F.softmax(self.mask(x1).reshape(N, H, W, self.group, -1), -1)
        mask = mask.reshape(N, H, W, -1).type(x.dtype)
        x = grid_sample_dcnv3(x, offset, mask, self.kernel_size, self.stride, self.pad,
                              self.dilation, self.group, self.offset_scale, self.remove_center)
        if self.center_feature_scale:
            x = _center_feature_blend(self, x, x_proj, x1)
        return self.output_proj(x)


class ReferenceDCNv4(nn.Module):
    """DCNv4's DCNv4, with the grid_sample path as its core."""

    def __init__(self, channels=64, kernel_size=3, stride=1, pad=1, dilation=1, group=4,
                 offset_scale=1.0, dw_kernel_size=None, center_feature_scale=False,
                 remove_center=False, output_bias=True, without_pointwise=False, **kwargs):
        super().__init__()
        if channels % group != 0:
            raise ValueError(f"channels must be divisible by group, but got {channels} and "
                             f"{group}")
        self.offset_scale = offset_scale
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.pad = pad
        self.group = group
        self.group_channels = channels // group
        self.dw_kernel_size = dw_kernel_size
        self.center_feature_scale = center_feature_scale
        self.remove_center = int(remove_center)
        self.without_pointwise = without_pointwise

        self.K = group * (kernel_size * kernel_size - self.remove_center)
        if dw_kernel_size is not None:
            self.offset_mask_dw = nn.Conv2d(channels, channels, dw_kernel_size, stride=1,
                                            padding=(dw_kernel_size - 1) // 2, groups=channels)
        self.offset_mask = nn.Linear(channels, int(math.ceil((self.K * 3) / 8) * 8))
        if not without_pointwise:
            self.value_proj = nn.Linear(channels, channels)
            self.output_proj = nn.Linear(channels, channels, bias=output_bias)
        self._reset_parameters()
        if center_feature_scale:
            _add_center_feature_scale(self, group, channels)

    def _reset_parameters(self):
        nn.init.constant_(self.offset_mask.weight.data, 0.0)
        nn.init.constant_(self.offset_mask.bias.data, 0.0)
        if not self.without_pointwise:
            nn.init.xavier_uniform_(self.value_proj.weight.data)
            nn.init.constant_(self.value_proj.bias.data, 0.0)
            nn.init.xavier_uniform_(self.output_proj.weight.data)
            if self.output_proj.bias is not None:
                nn.init.constant_(self.output_proj.bias.data, 0.0)

    def forward(self, input, shape=None):
        N, L, C = input.shape
        if shape is not None:
            H, W = shape
        else:
            H, W = int(L**0.5), int(L**0.5)
        x = input
        if not self.without_pointwise:
            x = self.value_proj(x)
        x = x.reshape(N, H, W, -1)
        if self.dw_kernel_size is not None:
            offset_mask_input = self.offset_mask_dw(input.view(N, H, W, C).permute(0, 3, 1, 2))
            offset_mask_input = offset_mask_input.permute(0, 2, 3, 1).view(N, L, C)
        else:
            offset_mask_input = input
        offset_mask = self.offset_mask(offset_mask_input).reshape(N, H, W, -1)
        x_proj = x
        x = grid_sample_dcnv4(x, offset_mask, self.kernel_size, self.stride, self.pad,
                              self.dilation, self.group, self.offset_scale, self.remove_center)
        if self.center_feature_scale:
            x = _center_feature_blend(self, x, x_proj, x)
        x = x.view(N, L, -1)
        if not self.without_pointwise:
            x = self.output_proj(x)
        return x
