"""Turning an existing model's convolutions deformable, and offset learning rates."""

from torch import nn

from .modules import DeformConv2dPack, ModulatedDeformConv2dPack


def _last_3x3_convs(model, count=3):
    names = [name for name, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    return set(names[-count:])


def convert_to_deformable(model, layers=None, modulated=False, deform_groups=1,
                          offset_lr_mult=1.0):
    """Replace chosen nn.Conv2d layers of ``model`` by Pack layers, in place.

    Args:
        model: any nn.Module.
        layers: names of the convs to replace (as in ``model.named_modules()``),
            or a predicate ``(name, conv) -> bool``; default the last three 3x3
            convs, as the paper does for ResNet's last stage.
        modulated: ModulatedDeformConv2dPack (DCN v2) instead of
            DeformConv2dPack (DCN v1).
        deform_groups, offset_lr_mult: passed to the Pack layers.

    Returns:
        The list of names replaced. Each Pack layer keeps the conv's weight,
        bias and geometry and starts with zero offsets: with DCN v1 the model's
        output is unchanged until training moves the offsets. (DCN v2's masks
        start at 0.5, as in the paper and mmcv, which halves those layers'
        outputs before the bias.)
    """
    if layers is None:
        chosen = _last_3x3_convs(model)
        select = lambda name, conv: name in chosen  # noqa: E731
    elif callable(layers):
        select = layers
    else:
        wanted = set(layers)
        select = lambda name, conv: name in wanted  # noqa: E731
    pack = ModulatedDeformConv2dPack if modulated else DeformConv2dPack
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Conv2d) and select(name, m)]
    if not callable(layers) and layers is not None:
        missing = set(layers) - {name for name, _ in targets}
        if missing:
            raise ValueError(f"layers names no nn.Conv2d of the model: {sorted(missing)}")
    for name, conv in targets:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"{name}: only zero padding given as numbers can be converted, got "
                             f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
        layer = pack(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                     conv.padding, conv.dilation, conv.groups, deform_groups=deform_groups,
                     bias=conv.bias is not None, offset_lr_mult=offset_lr_mult)
        layer = layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
        layer.weight.data.copy_(conv.weight.data)
        if conv.bias is not None:
            layer.bias.data.copy_(conv.bias.data)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    return [name for name, _ in targets]


def param_groups(model, lr, **options):
    """Optimizer parameter groups in which the offset predictors of every Pack
    layer learn at ``lr * layer.offset_lr_mult`` (mmcv's dcn_offset_lr_mult)
    and every other parameter at ``lr``. ``options`` go into every group."""
    special = {}
    for module in model.modules():
        if isinstance(module, DeformConv2dPack) and module.offset_lr_mult != 1.0:
            for p in module.conv_offset.parameters():
                special[id(p)] = (p, module.offset_lr_mult)
    plain = [p for p in model.parameters() if id(p) not in special]
    groups = [dict(params=plain, lr=lr, **options)] if plain else []
    by_mult = {}
    for p, mult in special.values():
        by_mult.setdefault(mult, []).append(p)
    groups += [dict(params=ps, lr=lr * mult, **options) for mult, ps in by_mult.items()]
    return groups
