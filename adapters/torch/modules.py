"""Drop-in nn.Modules over the cudcn ops.

Each module follows the library it is named after: constructor (positional
order included), parameter names and default initialisation.

- DeformConv2d is torchvision's, so a torchvision state_dict loads unchanged
  and one seed gives the same weights.
- DeformConv2dPack and ModulatedDeformConv2dPack are mmcv's: torchvision has
  no Pack layers, so mmcv's positional order ``(..., groups, deform_groups,
  bias)`` misleads nobody and keeps mmcv code and configs working as written.
  Their ``conv_offset`` starts at zero, so a fresh DeformConv2dPack is the
  undeformed conv (a fresh ModulatedDeformConv2dPack, masks at 0.5, half of it).
- The RoI pooling modules follow mmcv's names (``offset_fc``, ``mask_fc``).
- MultiScaleDeformableAttention is mmcv's (Deformable DETR's layer): its
  constructor, ``batch_first``, state_dict keys (``sampling_offsets``,
  ``attention_weights``, ``value_proj``, ``output_proj``), initialisation and
  forward, with cudcn's kernel on every device.
"""

import math
import warnings

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from . import ops


class DeformConv2d(nn.Module):
    """``torchvision.ops.DeformConv2d``: ``forward(input, offset, mask=None)``.

    Constructor, parameter names and initialisation are torchvision's: weight
    ``kaiming_uniform_(a=sqrt(5))``, bias uniform in ``+-1 / sqrt(fan_in)``
    (``torch.nn.Conv2d``'s), so one seed gives torchvision's weights.

    Parameters: weight (out_channels, in_channels // groups, kh, kw), bias
    (out_channels,) or None, float32 as created (``.to()`` converts them).

    Args:
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: int or (kh, kw) pair.
        stride, padding, dilation: int or (h, w) pair (1, 0, 1).
        groups: convolution groups (1); in_channels and out_channels must
            divide by it.
        bias: whether the layer has a bias (True).

    Forward: ``forward(input, offset, mask=None)`` is
    :func:`cudcn.adapters.torch.deform_conv2d` with the layer's weight, bias
    and geometry: input (N, in_channels, H, W), offset
    (N, 2 * offset_groups * kh * kw, H_out, W_out), mask
    (N, offset_groups * kh * kw, H_out, W_out) or None; returns
    (N, out_channels, H_out, W_out). The tensors are float32, float64,
    float16 or bfloat16, of the parameters' dtype (or under
    ``torch.autocast``).

    Raises:
        ValueError: (constructor) in_channels or out_channels that groups
            does not divide.
        cudcn.adapters.torch.ArgumentTypeError: (forward) as
            :func:`cudcn.adapters.torch.deform_conv2d`: a dtype other than
            the parameters', for one.
        cudcn.adapters.torch.ArgumentValueError: (forward) as
            :func:`cudcn.adapters.torch.deform_conv2d`: offset or mask
            shapes that do not fit, for one.

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> _ = torch.manual_seed(0)
        >>> layer = ct.DeformConv2d(4, 8, kernel_size=3, padding=1)
        >>> x = torch.randn(2, 4, 5, 5)
        >>> offset = torch.zeros(2, 2 * 3 * 3, 5, 5, requires_grad=True)
        >>> y = layer(x, offset)
        >>> tuple(y.shape)
        (2, 8, 5, 5)
        >>> conv = torch.nn.functional.conv2d(x, layer.weight, layer.bias, padding=1)
        >>> torch.allclose(y, conv, atol=1e-5)  # zero offsets: a plain convolution
        True
        >>> y.sum().backward()
        >>> tuple(offset.grad.shape), tuple(layer.weight.grad.shape)
        ((2, 18, 5, 5), (8, 4, 3, 3))
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True):
        super().__init__()
        if in_channels % groups:
            raise ValueError(f"in_channels = {in_channels} must be divisible by groups = {groups}")
        if out_channels % groups:
            raise ValueError(f"out_channels = {out_channels} must be divisible by groups = {groups}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               *self.kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        # torchvision's (and nn.Conv2d's) initialisation.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input, offset, mask=None):
        return ops.deform_conv2d(input, offset, self.weight, self.bias, stride=self.stride,
                                 padding=self.padding, dilation=self.dilation, mask=mask)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}")


def _deform_groups(value, in_channels):
    # A bool here is most likely cudcn's old order (..., groups, bias,
    # deform_groups) written positionally: refuse it rather than misread it.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"deform_groups must be an int, got {value!r}; the Pack layers take "
                        "mmcv's order (..., groups, deform_groups, bias)")
    if value < 1 or in_channels % value:
        raise ValueError(f"in_channels = {in_channels} must be divisible by deform_groups "
                         f"= {value} (>= 1)")
    return value


class DeformConv2dPack(DeformConv2d):
    """mmcv's ``DeformConv2dPack`` (DCN v1): a deformable conv that predicts its
    own offsets with ``conv_offset``, a ``torch.nn.Conv2d`` with the layer's
    geometry and ``2 * deform_groups * kh * kw`` outputs; ``forward(input)``.

    Constructor as mmcv's, positionally too: ``(in_channels, out_channels,
    kernel_size, stride=1, padding=0, dilation=1, groups=1, deform_groups=1,
    bias=False, im2col_step=32)``. ``bias=True`` is allowed (mmcv refuses it;
    :func:`cudcn.adapters.torch.convert_to_deformable` needs it for convs
    with a bias).

    Initialisation, mmcv's: weight ``kaiming_uniform_(nonlinearity='relu')``
    (bound ``sqrt(6 / fan_in)``), bias (if any) zeros, ``conv_offset`` weight
    and bias zeros; with one seed, the same weight as mmcv's layer. A fresh
    layer is therefore the undeformed convolution.

    Parameters: weight (out_channels, in_channels // groups, kh, kw), bias
    (out_channels,) or None, ``conv_offset.weight``
    (2 * deform_groups * kh * kw, in_channels, kh, kw) and
    ``conv_offset.bias``; float32 as created.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups:
            as :class:`cudcn.adapters.torch.DeformConv2d`.
        deform_groups: offset groups (1), an int of at least 1 that divides
            in_channels.
        bias: whether the layer has a bias (False, as mmcv).
        im2col_step: an int of at least 1 (32), accepted for mmcv's callers;
            it has no effect: cudcn sizes its own work.
        offset_lr_mult: keyword only (1.0): the learning-rate factor of
            ``conv_offset`` that :func:`cudcn.adapters.torch.param_groups`
            applies.

    Forward: ``forward(input)``, input (N, in_channels, H, W) of float32,
    float64, float16 or bfloat16 (the parameters' dtype, or under
    ``torch.autocast``); returns (N, out_channels, H_out, W_out) as
    :func:`cudcn.adapters.torch.deform_conv2d`.

    Raises:
        TypeError: (constructor) a deform_groups that is not an int (a bool
            is refused: it is most likely an old positional order).
        ValueError: (constructor) a deform_groups below 1 or that does not
            divide in_channels, an im2col_step that is not an int of at
            least 1, in_channels or out_channels that groups does not
            divide.
        cudcn.adapters.torch.ArgumentTypeError: (forward) as
            :func:`cudcn.adapters.torch.deform_conv2d`.
        cudcn.adapters.torch.ArgumentValueError: (forward) as
            :func:`cudcn.adapters.torch.deform_conv2d`.

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> _ = torch.manual_seed(0)
        >>> layer = ct.DeformConv2dPack(4, 8, 3, padding=1, deform_groups=2)
        >>> tuple(layer.conv_offset.weight.shape)
        (36, 4, 3, 3)
        >>> x = torch.randn(2, 4, 5, 5)
        >>> y = layer(x)
        >>> tuple(y.shape)
        (2, 8, 5, 5)
        >>> conv = torch.nn.functional.conv2d(x, layer.weight, padding=1)
        >>> torch.allclose(y, conv, atol=1e-5)  # zero offsets at initialisation
        True
        >>> y.sum().backward()
        >>> tuple(layer.conv_offset.weight.grad.shape)
        (36, 4, 3, 3)
    """

    offset_channels_per_point = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, deform_groups=1, bias=False, im2col_step=32, *, offset_lr_mult=1.0):
        deform_groups = _deform_groups(deform_groups, in_channels)
        if isinstance(im2col_step, bool) or not isinstance(im2col_step, int) or im2col_step < 1:
            raise ValueError(f"im2col_step must be an int >= 1, got {im2col_step!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias)
        self.deform_groups = deform_groups
        self.im2col_step = im2col_step
        self.offset_lr_mult = offset_lr_mult
        points = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(in_channels,
                                     self.offset_channels_per_point * deform_groups * points,
                                     self.kernel_size, self.stride, self.padding, self.dilation,
                                     bias=True)
        self.init_offset()

    def reset_parameters(self):
        # mmcv's DeformConv2d.reset_parameters.
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def init_offset(self):
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, input):
        return super().forward(input, self.conv_offset(input))

    def extra_repr(self):
        return super().extra_repr() + f", deform_groups={self.deform_groups}"


class ModulatedDeformConv2dPack(DeformConv2dPack):
    """mmcv's ``ModulatedDeformConv2dPack`` (DCN v2): ``conv_offset`` gives
    ``3 * deform_groups * kh * kw`` channels, the y/x offsets (first two
    thirds) and a mask through a sigmoid (0.5 at initialisation);
    ``forward(input)``.

    Constructor as mmcv's, positionally too: ``(in_channels, out_channels,
    kernel_size, stride=1, padding=0, dilation=1, groups=1, deform_groups=1,
    bias=True)``; ``offset_lr_mult`` keyword only.

    Initialisation, mmcv's (``init_weights``): weight uniform in
    ``+-1 / sqrt(in_channels * kh * kw)``, bias zeros, ``conv_offset`` zeros,
    drawn in mmcv's order, so one seed gives mmcv's weight. A fresh layer
    gives half the undeformed convolution, plus the bias.

    Parameters: as :class:`cudcn.adapters.torch.DeformConv2dPack`, with
    ``conv_offset.weight`` (3 * deform_groups * kh * kw, in_channels, kh, kw).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups:
            as :class:`cudcn.adapters.torch.DeformConv2d`.
        deform_groups: offset groups (1), an int of at least 1 that divides
            in_channels.
        bias: whether the layer has a bias (True, as mmcv).
        offset_lr_mult: keyword only (1.0): the learning-rate factor of
            ``conv_offset`` that :func:`cudcn.adapters.torch.param_groups`
            applies.

    Forward: ``forward(input)``, input (N, in_channels, H, W) of float32,
    float64, float16 or bfloat16 (the parameters' dtype, or under
    ``torch.autocast``); returns (N, out_channels, H_out, W_out) as
    :func:`cudcn.adapters.torch.deform_conv2d` with a mask.

    Raises:
        TypeError: (constructor) a deform_groups that is not an int (a bool
            included).
        ValueError: (constructor) a deform_groups below 1 or that does not
            divide in_channels, in_channels or out_channels that groups does
            not divide.
        cudcn.adapters.torch.ArgumentTypeError: (forward) as
            :func:`cudcn.adapters.torch.deform_conv2d`.
        cudcn.adapters.torch.ArgumentValueError: (forward) as
            :func:`cudcn.adapters.torch.deform_conv2d`.

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> _ = torch.manual_seed(0)
        >>> layer = ct.ModulatedDeformConv2dPack(4, 8, 3, padding=1)
        >>> tuple(layer.conv_offset.weight.shape)
        (27, 4, 3, 3)
        >>> x = torch.randn(2, 4, 5, 5)
        >>> y = layer(x)
        >>> tuple(y.shape)
        (2, 8, 5, 5)
        >>> conv = torch.nn.functional.conv2d(x, layer.weight, layer.bias, padding=1)
        >>> torch.allclose(y, 0.5 * conv, atol=1e-5)  # masks of 0.5, zero bias
        True
        >>> y.sum().backward()
        >>> tuple(layer.conv_offset.weight.grad.shape)
        (27, 4, 3, 3)
    """

    offset_channels_per_point = 3

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, deform_groups=1, bias=True, *, offset_lr_mult=1.0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, deform_groups, bias, offset_lr_mult=offset_lr_mult)

    def reset_parameters(self):
        # mmcv's ModulatedDeformConv2d.init_weights: the fan counts all
        # in_channels, whatever the groups.
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def init_weights(self):
        """mmcv's: weight and bias drawn again, ``conv_offset`` zeroed."""
        self.reset_parameters()
        super().init_offset()

    def init_offset(self):
        # mmcv's Pack calls init_weights once conv_offset exists.
        self.init_weights()

    def forward(self, input):
        out = self.conv_offset(input)
        # Slices rather than torch.chunk, whose result torch.fx cannot unpack.
        offsets = 2 * self.deform_groups * self.kernel_size[0] * self.kernel_size[1]
        return DeformConv2d.forward(self, input, out[:, :offsets], torch.sigmoid(out[:, offsets:]))


class DeformRoIPool(nn.Module):
    """mmcv's ``DeformRoIPool``: ``forward(input, rois, offset=None, mask=None)``.

    No parameters: the layer holds the pooling's settings and calls
    :func:`cudcn.adapters.torch.deform_roi_pool`.

    Args:
        output_size: PH = PW as an int, or a pair (PH, PW).
        spatial_scale: feature-map size over input-image size (1.0).
        sampling_ratio: samples per bin and axis (0: ``ceil(roi size / bins)``).
        gamma: the offset is scaled by ``gamma * roi size`` (0.1).

    Forward: input (N, C, H, W) of float32, float64, float16 or bfloat16;
    rois (K, 5) ``(batch index, x1, y1, x2, y2)`` of any floating dtype;
    offset (K, 2, PH, PW) or None; mask (K, 1, PH, PW) or None; returns
    (K, C, PH, PW), differentiable in input, offset and mask.

    Raises:
        TypeError: (constructor) a spatial_scale or gamma that ``float()``
            refuses, a sampling_ratio that ``int()`` refuses (None, for one).
        ValueError: (constructor) a string that ``float()`` or ``int()``
            cannot read.
        cudcn.adapters.torch.ArgumentTypeError: (forward) as
            :func:`cudcn.adapters.torch.deform_roi_pool`; output_size is
            only checked there.
        cudcn.adapters.torch.ArgumentValueError: (forward) as
            :func:`cudcn.adapters.torch.deform_roi_pool`, an output_size
            below 1 or a spatial_scale that is not positive among them.

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> pool = ct.DeformRoIPool(output_size=2)
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> rois = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]])
        >>> pool(x, rois).tolist()
        [[[[2.5, 4.5], [10.5, 12.5]]]]
        >>> offset = torch.zeros(1, 2, 2, 2, requires_grad=True)
        >>> pool(x, rois, offset).sum().backward()
        >>> tuple(offset.grad.shape)
        (1, 2, 2, 2)
    """

    def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.gamma = float(gamma)

    def forward(self, input, rois, offset=None, mask=None):
        return ops.deform_roi_pool(input, rois, offset, self.output_size, self.spatial_scale,
                                   self.sampling_ratio, self.gamma, mask)

    def extra_repr(self):
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, gamma={self.gamma}")


def _head(in_features, hidden, out_features, layers):
    """Linear-ReLU stack whose last Linear starts at zero."""
    dims = [in_features] + [hidden] * (layers - 1)
    modules = []
    for a, b in zip(dims[:-1], dims[1:]):
        modules += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    last = nn.Linear(dims[-1], out_features)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return modules + [last]


class DeformRoIPoolPack(DeformRoIPool):
    """mmcv's ``DeformRoIPoolPack``: pools once without offsets, predicts the
    normalised bin offsets with ``offset_fc`` (three Linear layers, the last
    zero-initialised) and pools again with them; ``forward(input, rois)``.

    A fresh layer pools as RoIAlign (zero offsets). Parameters: those of
    ``offset_fc``, float32 as created, from ``PH * PW * output_channels``
    inputs to ``PH * PW * 2`` outputs.

    Args:
        output_size: PH = PW as an int, or a pair (PH, PW).
        output_channels: C, the input's channels.
        deform_fc_channels: width of the hidden Linear layers (1024).
        spatial_scale, sampling_ratio, gamma: as
            :class:`cudcn.adapters.torch.DeformRoIPool` (1.0, 0, 0.1).

    Forward: input (N, output_channels, H, W) of float32, float64, float16
    or bfloat16 (the parameters' dtype, or under ``torch.autocast``), rois
    (K, 5) ``(batch index, x1, y1, x2, y2)`` of any floating dtype; returns
    (K, output_channels, PH, PW), differentiable in input and the
    parameters.

    Raises:
        TypeError: (constructor) as :class:`cudcn.adapters.torch.DeformRoIPool`;
            also a size that is not an int, refused by ``torch.nn.Linear``.
        ValueError: (constructor) as :class:`cudcn.adapters.torch.DeformRoIPool`.
        RuntimeError: (constructor) a negative deform_fc_channels; (forward)
            an input with other than output_channels channels, which the
            first ``torch.nn.Linear`` of ``offset_fc`` cannot take.
        cudcn.adapters.torch.ArgumentTypeError: (forward) as
            :func:`cudcn.adapters.torch.deform_roi_pool`.
        cudcn.adapters.torch.ArgumentValueError: (forward) as
            :func:`cudcn.adapters.torch.deform_roi_pool`.

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> _ = torch.manual_seed(0)
        >>> pool = ct.DeformRoIPoolPack(output_size=2, output_channels=3, deform_fc_channels=16)
        >>> x = torch.randn(1, 3, 8, 8, requires_grad=True)
        >>> rois = torch.tensor([[0.0, 1.0, 1.0, 6.0, 6.0], [0.0, 0.0, 0.0, 4.0, 4.0]])
        >>> y = pool(x, rois)
        >>> tuple(y.shape)
        (2, 3, 2, 2)
        >>> torch.equal(y, ct.deform_roi_pool(x, rois, output_size=2))  # zero offsets at first
        True
        >>> y.sum().backward()
        >>> tuple(x.grad.shape)
        (1, 3, 8, 8)
    """

    def __init__(self, output_size, output_channels, deform_fc_channels=1024, spatial_scale=1.0,
                 sampling_ratio=0, gamma=0.1):
        super().__init__(output_size, spatial_scale, sampling_ratio, gamma)
        self.output_channels = output_channels
        self.deform_fc_channels = deform_fc_channels
        bins = self.output_size[0] * self.output_size[1]
        self.offset_fc = nn.Sequential(*_head(bins * output_channels, deform_fc_channels,
                                              bins * 2, layers=3))

    def _offset(self, input, rois):
        x = super().forward(input, rois)
        # flatten, not reshape(k, -1): -1 is ambiguous for K = 0 RoIs (in eager
        # PyTorch and in an exported Reshape alike).
        return x, self.offset_fc(x.flatten(1)).reshape(rois.shape[0], 2, *self.output_size)

    def forward(self, input, rois):
        _, offset = self._offset(input, rois)
        return super().forward(input, rois, offset)


class ModulatedDeformRoIPoolPack(DeformRoIPoolPack):
    """mmcv's ``ModulatedDeformRoIPoolPack``: adds ``mask_fc`` (Linear, ReLU,
    zero-initialised Linear, Sigmoid) whose output modulates each bin;
    ``forward(input, rois)``.

    A fresh layer pools as RoIAlign times 0.5 (zero offsets, masks of
    ``sigmoid(0)``). Parameters: those of ``offset_fc`` (as
    :class:`cudcn.adapters.torch.DeformRoIPoolPack`) and ``mask_fc``, to
    ``PH * PW`` outputs.

    Args:
        output_size: PH = PW as an int, or a pair (PH, PW).
        output_channels: C, the input's channels.
        deform_fc_channels: width of the hidden Linear layers (1024).
        spatial_scale, sampling_ratio, gamma: as
            :class:`cudcn.adapters.torch.DeformRoIPool` (1.0, 0, 0.1).

    Forward: as :class:`cudcn.adapters.torch.DeformRoIPoolPack`; returns
    (K, output_channels, PH, PW).

    Raises:
        TypeError: (constructor) as :class:`cudcn.adapters.torch.DeformRoIPool`;
            also a size that is not an int, refused by ``torch.nn.Linear``.
        ValueError: (constructor) as :class:`cudcn.adapters.torch.DeformRoIPool`.
        RuntimeError: (constructor) a negative deform_fc_channels; (forward)
            an input with other than output_channels channels, which the
            first ``torch.nn.Linear`` of ``offset_fc`` cannot take.
        cudcn.adapters.torch.ArgumentTypeError: (forward) as
            :func:`cudcn.adapters.torch.deform_roi_pool`.
        cudcn.adapters.torch.ArgumentValueError: (forward) as
            :func:`cudcn.adapters.torch.deform_roi_pool`.

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> _ = torch.manual_seed(0)
        >>> pool = ct.ModulatedDeformRoIPoolPack(output_size=2, output_channels=3,
        ...                                      deform_fc_channels=16)
        >>> x = torch.randn(1, 3, 8, 8, requires_grad=True)
        >>> rois = torch.tensor([[0.0, 1.0, 1.0, 6.0, 6.0]])
        >>> y = pool(x, rois)
        >>> tuple(y.shape)
        (1, 3, 2, 2)
        >>> torch.allclose(y, 0.5 * ct.deform_roi_pool(x, rois, output_size=2))
        True
        >>> y.sum().backward()
        >>> tuple(pool.mask_fc[0].weight.grad.shape)
        (16, 12)
    """

    def __init__(self, output_size, output_channels, deform_fc_channels=1024, spatial_scale=1.0,
                 sampling_ratio=0, gamma=0.1):
        super().__init__(output_size, output_channels, deform_fc_channels, spatial_scale,
                         sampling_ratio, gamma)
        bins = self.output_size[0] * self.output_size[1]
        self.mask_fc = nn.Sequential(*_head(bins * output_channels, deform_fc_channels, bins,
                                            layers=2), nn.Sigmoid())

    def forward(self, input, rois):
        x, offset = self._offset(input, rois)
        mask = self.mask_fc(x.flatten(1)).reshape(rois.shape[0], 1, *self.output_size)
        return DeformRoIPool.forward(self, input, rois, offset, mask)


class DeformPSRoIPool(nn.Module):
    """Deformable position-sensitive RoI pooling (R-FCN):
    ``forward(input, rois, offset=None)``.

    No parameters: the layer holds the pooling's settings and calls
    :func:`cudcn.adapters.torch.deform_psroi_pool`. Note the positional
    order: spatial_scale first.

    Args:
        spatial_scale: feature-map size over input-image size.
        output_dim: output channels.
        group_size: side of the position-sensitive grid.
        pooled_size: bins per side.
        part_size: offset cells per side (pooled_size if None).
        sample_per_part: samples per bin and axis (4).
        trans_std: the offsets are scaled by ``trans_std * roi size`` (0.0).

    Forward: input (N, output_dim * group_size ** 2, H, W) of float32,
    float64, float16 or bfloat16; rois (K, 5) ``(batch index, x1, y1, x2,
    y2)`` of any floating dtype; offset (K, 2 * num_classes, part_size,
    part_size) or None; returns (K, output_dim, pooled_size, pooled_size),
    differentiable in input and offset.

    Raises:
        TypeError: (constructor) a value that ``float()`` or ``int()``
            refuses (None, for one, except for part_size).
        ValueError: (constructor) a string that ``float()`` or ``int()``
            cannot read.
        cudcn.adapters.torch.ArgumentTypeError: (forward) as
            :func:`cudcn.adapters.torch.deform_psroi_pool`.
        cudcn.adapters.torch.ArgumentValueError: (forward) as
            :func:`cudcn.adapters.torch.deform_psroi_pool`, sizes below 1
            and a spatial_scale that is not positive among them.

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> pool = ct.DeformPSRoIPool(spatial_scale=1.0, output_dim=2, group_size=2,
        ...                           pooled_size=2)
        >>> x = torch.ones(1, 2 * 2 * 2, 4, 4, requires_grad=True)
        >>> rois = torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0]])
        >>> offset = torch.zeros(1, 2, 2, 2, requires_grad=True)
        >>> y = pool(x, rois, offset)
        >>> tuple(y.shape), y.flatten().tolist()
        ((1, 2, 2, 2), [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
        >>> y.sum().backward()
        >>> tuple(x.grad.shape), tuple(offset.grad.shape)
        ((1, 8, 4, 4), (1, 2, 2, 2))
    """

    def __init__(self, spatial_scale, output_dim, group_size, pooled_size, part_size=None,
                 sample_per_part=4, trans_std=0.0):
        super().__init__()
        self.spatial_scale = float(spatial_scale)
        self.output_dim = int(output_dim)
        self.group_size = int(group_size)
        self.pooled_size = int(pooled_size)
        self.part_size = int(pooled_size if part_size is None else part_size)
        self.sample_per_part = int(sample_per_part)
        self.trans_std = float(trans_std)

    def forward(self, input, rois, offset=None):
        return ops.deform_psroi_pool(
            input, rois, offset, output_dim=self.output_dim, group_size=self.group_size,
            pooled_size=self.pooled_size, part_size=self.part_size,
            sample_per_part=self.sample_per_part, trans_std=self.trans_std,
            spatial_scale=self.spatial_scale)


class MultiScaleDeformableAttention(nn.Module):
    """mmcv's ``MultiScaleDeformableAttention`` (Deformable DETR), run by cudcn.

    Args:
        embed_dims: channels of queries and values (256).
        num_heads: attention heads (8); embed_dims must divide by it.
        num_levels: feature levels (4).
        num_points: sampling points per head and level (4).
        im2col_step: accepted for mmcv configs; changes nothing.
        dropout: dropout on the output before the residual (0.1).
        batch_first: queries and values are (bs, n, embed_dims) if True, else
            (n, bs, embed_dims), as in mmcv.
        norm_cfg, init_cfg: accepted for mmcv configs; unused.
        value_proj_ratio: value_proj's output width over embed_dims (1.0).

    Forward: ``forward(query, key=None, value=None, identity=None,
    query_pos=None, key_padding_mask=None, reference_points=None,
    spatial_shapes=None, level_start_index=None)``, as mmcv's:

    - query: (num_query, bs, embed_dims), or (bs, num_query, embed_dims)
      with ``batch_first``; float32, float64, float16 or bfloat16 (the
      parameters' dtype, or under ``torch.autocast``), as are value,
      identity, query_pos and reference_points.
    - key: ignored (mmcv's signature).
    - value: (num_value, bs, embed_dims) in the same layout, the levels'
      maps flattened and stacked (num_value = sum of H_l * W_l); None:
      the query.
    - identity: added to the result; None: the query (before query_pos).
    - query_pos: added to the query, or None.
    - key_padding_mask: (bs, num_value) bool, True where a value is
      padding (set to zero), or None.
    - reference_points: (bs, num_query, num_levels, 2) normalised (x, y),
      or (..., 4) boxes (x, y, w, h); required.
    - spatial_shapes: (num_levels, 2) integer tensor, (H_l, W_l) per level.
    - level_start_index: (num_levels,) integer tensor, the first row of
      each level in value.

    Returns ``dropout(output_proj(attention)) + identity`` in the query's
    layout and shape. mmcv's old keyword ``residual`` is still accepted for
    identity, with a ``DeprecationWarning``; other extra keywords are
    ignored.

    Raises:
        ValueError: (constructor) an embed_dims that num_heads does not
            divide; (forward) reference_points, spatial_shapes or
            level_start_index left out (None), reference_points whose last
            axis is not 2 or 4.
        cudcn.adapters.torch.ArgumentTypeError: (forward) as
            :func:`cudcn.adapters.torch.ms_deform_attn`.
        cudcn.adapters.torch.ArgumentValueError: (forward) as
            :func:`cudcn.adapters.torch.ms_deform_attn` (spatial_shapes that
            do not sum to num_value, for one).

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> _ = torch.manual_seed(0)
        >>> attn = ct.MultiScaleDeformableAttention(embed_dims=8, num_heads=2, num_levels=2,
        ...                                         num_points=2, batch_first=True)
        >>> shapes = torch.tensor([[4, 4], [2, 2]])
        >>> starts = torch.tensor([0, 16])
        >>> value = torch.randn(1, 4 * 4 + 2 * 2, 8)
        >>> query = torch.randn(1, 3, 8, requires_grad=True)
        >>> reference_points = torch.rand(1, 3, 2, 2)
        >>> y = attn(query, value=value, reference_points=reference_points,
        ...          spatial_shapes=shapes, level_start_index=starts)
        >>> tuple(y.shape)
        (1, 3, 8)
        >>> y.sum().backward()
        >>> tuple(query.grad.shape), tuple(attn.sampling_offsets.weight.grad.shape)
        ((1, 3, 8), (16, 8))
    """

    def __init__(self, embed_dims=256, num_heads=8, num_levels=4, num_points=4, im2col_step=64,
                 dropout=0.1, batch_first=False, norm_cfg=None, init_cfg=None,
                 value_proj_ratio=1.0):
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f"embed_dims must be divisible by num_heads, but got {embed_dims} "
                             f"and {num_heads}")
        self.norm_cfg, self.init_cfg = norm_cfg, init_cfg
        self.dropout = nn.Dropout(dropout)
        self.batch_first = batch_first
        self.im2col_step = im2col_step
        self.embed_dims = embed_dims
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        samples = num_heads * num_levels * num_points
        self.sampling_offsets = nn.Linear(embed_dims, samples * 2)
        self.attention_weights = nn.Linear(embed_dims, samples)
        value_proj_size = int(embed_dims * value_proj_ratio)
        self.value_proj = nn.Linear(embed_dims, value_proj_size)
        self.output_proj = nn.Linear(value_proj_size, embed_dims)
        self.init_weights()

    def init_weights(self):
        """mmcv's: offsets start on a ring of directions, one per head, the
        i-th point i+1 cells out (normalised by the larger of |cos|, |sin|);
        uniform attention; Xavier-uniform projections with zero biases."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angle = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        ring = torch.stack([angle.cos(), angle.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True)[0]
        grid = ring.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, query, key=None, value=None, identity=None, query_pos=None,
                key_padding_mask=None, reference_points=None, spatial_shapes=None,
                level_start_index=None, **kwargs):
        if "residual" in kwargs:  # mmcv's old name, which it still accepts
            warnings.warn("MultiScaleDeformableAttention: 'residual' is deprecated, use "
                          "'identity'", DeprecationWarning, stacklevel=2)
            identity = kwargs.pop("residual")
        for name, given in (("reference_points", reference_points),
                            ("spatial_shapes", spatial_shapes),
                            ("level_start_index", level_start_index)):
            if given is None:  # mmcv fails on None.shape; say which one is missing
                raise ValueError(f"MultiScaleDeformableAttention needs {name}")
        if value is None:
            value = query
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query, value = query.permute(1, 0, 2), value.permute(1, 0, 2)
        bs, num_query, _ = query.shape
        _, num_value, _ = value.shape
        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(bs, num_value, self.num_heads, -1)
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(bs, num_query, heads, levels, points, 2)
        weights = self.attention_weights(query).view(bs, num_query, heads, levels * points)
        weights = weights.softmax(-1).view(bs, num_query, heads, levels, points)
        if reference_points.shape[-1] == 2:
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            locations = (reference_points[:, :, None, :, None, :]
                         + offsets / normalizer[None, None, None, :, None, :])
        elif reference_points.shape[-1] == 4:
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"Last dim of reference_points must be 2 or 4, but get "
                             f"{reference_points.shape[-1]} instead.")
        output = ops.ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights,
                                    self.im2col_step)
        output = self.output_proj(output)
        if not self.batch_first:
            output = output.permute(1, 0, 2)
        return self.dropout(output) + identity
