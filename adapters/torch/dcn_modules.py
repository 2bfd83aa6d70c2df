"""InternImage's and FlashInternImage's deformable convolution layers, run by cudcn.

- DCNv3 is InternImage's ``ops_dcnv3.modules.DCNv3`` (and its twin
  ``DCNv3_pytorch``): constructor (positional order included), attributes,
  state_dict keys (``dw_conv.0``, ``dw_conv.1.1`` for the LayerNorm,
  ``offset``, ``mask``, ``input_proj``, ``output_proj``,
  ``center_feature_scale_proj_weight``/``_bias``), initialisation in the same
  order (one seed, the same parameters) and forward, on channels-last
  (N, H, W, C) features.
- DCNv4 is DCNv4's ``DCNv4.modules.DCNv4`` (FlashInternImage's layer), the
  same way: ``offset_mask_dw``, ``offset_mask``, ``value_proj``,
  ``output_proj``, ``forward(input, shape=None)`` on (N, H * W, C) tokens.

Both keep ``_reset_parameters``, which InternImage's and FlashInternImage's
model ``init_weights`` call. They drop their originals' advice and
requirements on the group width (a power of 2, a multiple of 16), which
their CUDA kernels' tiling needed and cudcn's do not.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import ops


class _ChannelsLast(nn.Module):
    """(N, C, H, W) -> (N, H, W, C), a module so that the norm layers keep
    their places (and state_dict keys) in InternImage's ``dw_conv``."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1)


def _channels_first_to_last_norm(channels, norm_layer):
    # InternImage's build_norm_layer(channels, norm_layer, 'channels_first',
    # 'channels_last'): the permute sits where it does there, so the norm's
    # keys are dw_conv.1.1.* for LN and dw_conv.1.0.* for BN.
    if norm_layer == "LN":
        return nn.Sequential(_ChannelsLast(), nn.LayerNorm(channels, eps=1e-6))
    if norm_layer == "BN":
        return nn.Sequential(nn.BatchNorm2d(channels), _ChannelsLast())
    raise ValueError(f"norm_layer must be 'LN' or 'BN', got {norm_layer!r}")


def _activation(act_layer):
    layers = {"ReLU": lambda: nn.ReLU(inplace=True), "SiLU": lambda: nn.SiLU(inplace=True),
              "GELU": nn.GELU}
    if act_layer not in layers:
        raise ValueError(f"act_layer must be one of {sorted(layers)}, got {act_layer!r}")
    return layers[act_layer]()


def _check_arguments(name, channels, group, kernel_size, dw_kernel_size, stride, pad, dilation,
                     remove_center, dw_kernel_size_note=""):
    """The originals' constructor checks, plus the geometry their forward
    needs but never checks. ``dw_kernel_size_note`` says where the depthwise
    kernel came from, for the error message."""
    for arg, value in (("channels", channels), ("group", group), ("kernel_size", kernel_size),
                       ("stride", stride), ("dilation", dilation)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: {arg} must be an int >= 1, got {value!r}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"{name}: pad must be an int >= 0, got {pad!r}")
    if channels % group:
        raise ValueError(f"{name}: channels must be divisible by group, but got {channels} "
                         f"and {group}")
    if remove_center and kernel_size % 2 == 0:
        raise ValueError(f"{name}: remove_center is only compatible with odd kernel size, got "
                         f"kernel_size = {kernel_size}")
    if dw_kernel_size is not None and (isinstance(dw_kernel_size, bool)
                                       or not isinstance(dw_kernel_size, int)
                                       or dw_kernel_size < 1 or dw_kernel_size % 2 == 0):
        # An even depthwise kernel would shrink the map the offsets come from.
        raise ValueError(f"{name}: the depthwise conv's kernel must be an odd int, got "
                         f"{dw_kernel_size!r} (dw_kernel_size{dw_kernel_size_note})")
    # The offsets are predicted at every input pixel, one set per output
    # point, so the output grid must be the input grid. InternImage's CUDA
    # path would misread the offsets otherwise, its PyTorch path fails.
    if stride != 1 or 2 * pad != dilation * (kernel_size - 1):
        raise ValueError(f"{name}: the output must keep the input's size, which needs stride = 1 "
                         f"and 2 * pad = dilation * (kernel_size - 1); got stride = {stride}, "
                         f"pad = {pad}, dilation = {dilation}, kernel_size = {kernel_size}")


def _center_feature_scale_parameters(module, group, channels):
    # Created after _reset_parameters and in float32, as the originals do:
    # the gate starts at sigmoid(0) = 0.5 everywhere.
    module.center_feature_scale_proj_weight = nn.Parameter(
        torch.zeros(group, channels, dtype=torch.float))
    module.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group, dtype=torch.float))


def _blend_with_center_features(module, sampled, projected, gate_input):
    """``sampled * (1 - s) + projected * s``, with the per-group gate
    ``s = sigmoid(linear(gate_input))`` spread over each group's channels.
    All tensors (N, H, W, C)."""
    gate = F.linear(gate_input, module.center_feature_scale_proj_weight,
                    module.center_feature_scale_proj_bias).sigmoid()  # (N, H, W, group)
    # Spread by expand, not repeat_interleave: torch's TorchScript ONNX
    # symbolic of repeat_interleave(dim=-1) rewrites a traced -1 that the
    # mask's reshape shares, which breaks the exported graph's dynamic axes.
    gate = gate.unsqueeze(-1).expand(*gate.shape, module.group_channels).flatten(-2)
    return sampled * (1 - gate) + projected * gate


class DCNv3(nn.Module):
    """InternImage's DCNv3 layer: ``forward(input)``, input and output
    (N, H, W, channels).

    Args:
        channels: C (64).
        kernel_size: the square kernel's side (3).
        dw_kernel_size: the depthwise conv's kernel (kernel_size if None).
        stride, pad, dilation: the sampling geometry (1, 1, 1); the output
            keeps the input's size, so stride 1 and
            ``2 * pad = dilation * (kernel_size - 1)``.
        group: G (4); channels must divide by it.
        offset_scale: scales the dilation grid and the offsets (1.0).
        act_layer: 'GELU' (default), 'ReLU' or 'SiLU' after the depthwise conv.
        norm_layer: 'LN' (default) or 'BN' after the depthwise conv.
        center_feature_scale: blend the result with the projected input
            through a learned per-group gate (False).
        remove_center: leave out the kernel's centre point (odd kernels);
            ``K = kernel_size ** 2 - 1`` then, else ``kernel_size ** 2``.

    Forward, as InternImage's: ``x = input_proj(input)``; the depthwise conv,
    norm and activation of the input give the features from which ``offset``
    (G * K * 2) and ``mask`` (G * K, softmax over each group's K points)
    are predicted; :func:`cudcn.adapters.torch.dcnv3` samples ``x``;
    optionally the center-feature gate; ``output_proj``. input
    (N, H, W, channels) of float32, float64, float16 or bfloat16 (the
    parameters' dtype, or under ``torch.autocast``); returns
    (N, H, W, channels).

    Initialisation, InternImage's: ``offset`` and ``mask`` zero (every point
    on its undeformed place with weight 1 / K), ``input_proj`` and
    ``output_proj`` Xavier-uniform with zero biases, the depthwise conv
    PyTorch's default; modules built in the original's order, so one seed
    gives the original's parameters.

    Raises:
        ValueError: (constructor) channels, group, kernel_size, stride or
            dilation not an int of at least 1, pad not an int of at least 0,
            channels that group does not divide, remove_center with an even
            kernel, an even or non-int dw_kernel_size, a geometry that does
            not keep the input's size (stride other than 1, or
            ``2 * pad != dilation * (kernel_size - 1)``), an act_layer other
            than 'GELU', 'ReLU' or 'SiLU', a norm_layer other than 'LN' or
            'BN'.
        cudcn.adapters.torch.ArgumentTypeError: (forward) as
            :func:`cudcn.adapters.torch.dcnv3`.
        cudcn.adapters.torch.ArgumentValueError: (forward) as
            :func:`cudcn.adapters.torch.dcnv3`.

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> _ = torch.manual_seed(0)
        >>> layer = ct.DCNv3(channels=8, group=2)
        >>> x = torch.randn(1, 5, 5, 8, requires_grad=True)
        >>> y = layer(x)
        >>> tuple(y.shape)
        (1, 5, 5, 8)
        >>> y.sum().backward()
        >>> tuple(x.grad.shape), tuple(layer.offset.weight.grad.shape)
        ((1, 5, 5, 8), (36, 8))
    """

    def __init__(self, channels=64, kernel_size=3, dw_kernel_size=None, stride=1, pad=1,
                 dilation=1, group=4, offset_scale=1.0, act_layer="GELU", norm_layer="LN",
                 center_feature_scale=False, remove_center=False):
        super().__init__()
        dw_kernel_size_note = ", which defaults to kernel_size" if dw_kernel_size is None else ""
        dw_kernel_size = kernel_size if dw_kernel_size is None else dw_kernel_size
        _check_arguments("DCNv3", channels, group, kernel_size, dw_kernel_size, stride, pad,
                         dilation, remove_center, dw_kernel_size_note)
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
        self.remove_center = int(remove_center)  # the original keeps it as an int

        self.dw_conv = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=dw_kernel_size, stride=1,
                      padding=(dw_kernel_size - 1) // 2, groups=channels),
            _channels_first_to_last_norm(channels, norm_layer),
            _activation(act_layer))
        points = group * (kernel_size * kernel_size - self.remove_center)
        self.offset = nn.Linear(channels, points * 2)
        self.mask = nn.Linear(channels, points)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        self._reset_parameters()
        if center_feature_scale:
            _center_feature_scale_parameters(self, group, channels)

    def _reset_parameters(self):
        for layer in (self.offset, self.mask):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for layer in (self.input_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, input):
        n, h, w, _ = input.shape
        x = self.input_proj(input)
        features = self.dw_conv(input.permute(0, 3, 1, 2))  # back channels-last
        offset = self.offset(features)
        mask = self.mask(features).reshape(n, h, w, self.group, -1).softmax(-1)
        # Under autocast the softmax runs in float32; the op takes x's dtype.
        mask = mask.reshape(n, h, w, -1).to(x.dtype)
        sampled = self.sample(x, offset, mask)
        if self.center_feature_scale:
            sampled = _blend_with_center_features(self, sampled, x, features)
        return self.output_proj(sampled)

    def sample(self, x, offset, mask):
        """The core op on channels-last x (:func:`cudcn.adapters.torch.dcnv3`): the one
        place where InternImage's ``DCNv3`` and ``DCNv3_pytorch`` differ."""
        return ops.dcnv3(x, offset, mask, self.kernel_size, self.stride, self.pad,
                         self.dilation, self.group, self.offset_scale, bool(self.remove_center))

    def extra_repr(self):
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, pad={self.pad}, dilation={self.dilation}, "
                f"group={self.group}, offset_scale={self.offset_scale}, "
                f"center_feature_scale={self.center_feature_scale}, "
                f"remove_center={bool(self.remove_center)}")


class DCNv4(nn.Module):
    """DCNv4's layer (FlashInternImage): ``forward(input, shape=None)``,
    input and output (N, L, channels) with L = H * W, ``shape`` = (H, W)
    (a square map if None). input is float32, float64, float16 or bfloat16
    (the parameters' dtype, or under ``torch.autocast``); the core op is
    :func:`cudcn.adapters.torch.dcnv4`.

    Args:
        channels: C (64).
        kernel_size, stride, pad, dilation: the sampling geometry (3, 1, 1,
            1); the output keeps the input's size, so stride 1 and
            ``2 * pad = dilation * (kernel_size - 1)``.
        group: G (4); channels must divide by it.
        offset_scale: scales the dilation grid and the offsets (1.0).
        dw_kernel_size: if given, a depthwise conv (no norm, no activation)
            of the input feeds ``offset_mask``; else the input itself.
        center_feature_scale: blend the result with the projected input
            through a per-group gate computed from the sampled result itself
            (DCNv4's choice; DCNv3's gate reads the depthwise features).
        remove_center: leave out the kernel's centre point (odd kernels);
            ``K = kernel_size ** 2 - 1`` then, else ``kernel_size ** 2``.
        output_bias: whether ``output_proj`` has a bias (True).
        without_pointwise: no ``value_proj`` and ``output_proj`` (False).
        **kwargs: ignored, as DCNv4 ignores them (FlashInternImage passes
            DCNv3's arguments when it swaps the core op).

    ``offset_mask`` is one Linear to ``ceil(G * K * 3 / 8) * 8`` outputs:
    per group the K (dx, dy) pairs then the K mask values, unnormalised (no
    softmax), then zero-weight padding to a multiple of 8 that the op
    ignores. Initialisation, DCNv4's: ``offset_mask`` zero, ``value_proj``
    and ``output_proj`` Xavier-uniform with zero biases, built in DCNv4's
    order so one seed gives DCNv4's parameters.

    Raises:
        ValueError: (constructor) channels, group, kernel_size, stride or
            dilation not an int of at least 1, pad not an int of at least 0,
            channels that group does not divide, remove_center with an even
            kernel, a dw_kernel_size that is not an odd int, a geometry that
            does not keep the input's size (stride other than 1, or
            ``2 * pad != dilation * (kernel_size - 1)``); (forward) a shape
            whose H * W is not L (with shape None: an L that is not a
            square).
        cudcn.adapters.torch.ArgumentTypeError: (forward) as
            :func:`cudcn.adapters.torch.dcnv4`.
        cudcn.adapters.torch.ArgumentValueError: (forward) as
            :func:`cudcn.adapters.torch.dcnv4`.

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> _ = torch.manual_seed(0)
        >>> layer = ct.DCNv4(channels=8, group=2)
        >>> tuple(layer.offset_mask.weight.shape)  # 2 * 9 * 3 = 54, padded to 56
        (56, 8)
        >>> x = torch.randn(1, 6 * 4, 8, requires_grad=True)
        >>> y = layer(x, shape=(6, 4))
        >>> tuple(y.shape)
        (1, 24, 8)
        >>> y.sum().backward()
        >>> tuple(x.grad.shape)
        (1, 24, 8)
    """

    def __init__(self, channels=64, kernel_size=3, stride=1, pad=1, dilation=1, group=4,
                 offset_scale=1.0, dw_kernel_size=None, center_feature_scale=False,
                 remove_center=False, output_bias=True, without_pointwise=False, **kwargs):
        super().__init__()
        _check_arguments("DCNv4", channels, group, kernel_size, dw_kernel_size, stride, pad,
                         dilation, remove_center)
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
        self.remove_center = int(remove_center)  # the original keeps it as an int
        self.without_pointwise = without_pointwise

        points = group * (kernel_size * kernel_size - self.remove_center)
        if dw_kernel_size is not None:
            self.offset_mask_dw = nn.Conv2d(channels, channels, dw_kernel_size, stride=1,
                                            padding=(dw_kernel_size - 1) // 2, groups=channels)
        self.offset_mask = nn.Linear(channels, math.ceil(points * 3 / 8) * 8)
        if not without_pointwise:
            self.value_proj = nn.Linear(channels, channels)
            self.output_proj = nn.Linear(channels, channels, bias=output_bias)
        self._reset_parameters()
        if center_feature_scale:
            _center_feature_scale_parameters(self, group, channels)

    def _reset_parameters(self):
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        if not self.without_pointwise:
            for layer in (self.value_proj, self.output_proj):
                nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

    def forward(self, input, shape=None):
        n, length, channels = input.shape
        h, w = (math.isqrt(length),) * 2 if shape is None else shape
        if h * w != length:
            raise ValueError(f"DCNv4: input has {length} tokens, shape = {shape} gives "
                             f"{h} x {w} = {h * w}" + ("; pass shape=(H, W) for a map that is "
                                                       "not square" if shape is None else ""))
        x = input if self.without_pointwise else self.value_proj(input)
        x = x.reshape(n, h, w, -1)
        features = input.reshape(n, h, w, channels)
        if self.dw_kernel_size is not None:
            features = self.offset_mask_dw(features.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        offset_mask = self.offset_mask(features)
        sampled = ops.dcnv4(x, offset_mask, self.kernel_size, self.stride, self.pad,
                            self.dilation, self.group, self.offset_scale,
                            bool(self.remove_center))
        if self.center_feature_scale:
            sampled = _blend_with_center_features(self, sampled, x, sampled)
        out = sampled.reshape(n, length, -1)
        return out if self.without_pointwise else self.output_proj(out)

    def extra_repr(self):
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, pad={self.pad}, dilation={self.dilation}, "
                f"group={self.group}, offset_scale={self.offset_scale}, "
                f"dw_kernel_size={self.dw_kernel_size}, "
                f"center_feature_scale={self.center_feature_scale}, "
                f"remove_center={bool(self.remove_center)}, "
                f"without_pointwise={self.without_pointwise}")
