"""Turning an existing model's convolutions deformable, and offset learning rates."""

from torch import nn

from .modules import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack


def _plain_convs(model):
    """(name, conv) of the model's nn.Conv2d layers, but those inside cudcn's
    deformable layers (a Pack layer's conv_offset predicts its offsets)."""
    owners = [name + "." for name, m in model.named_modules() if isinstance(m, DeformConv2d)]
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and not any(name.startswith(o) for o in owners)]


def _last_3x3_convs(model, count=3):
    names = [name for name, m in _plain_convs(model) if m.kernel_size == (3, 3)]
    return set(names[-count:])


def convert_to_deformable(model, layers=None, modulated=False, deform_groups=1,
                          offset_lr_mult=1.0):
    """Replace chosen ``torch.nn.Conv2d`` layers of ``model`` by Pack layers, in place.

    Args:
        model: any ``torch.nn.Module``.
        layers: names of the convs to replace (as in ``model.named_modules()``;
            one name may be given as a str), or a predicate
            ``(name, conv) -> bool``; default (None) the last three 3x3 convs
            in ``named_modules()`` order, as the paper does for ResNet's last
            stage. The convs inside cudcn's deformable layers (a Pack layer's
            ``conv_offset``) are never chosen.
        modulated: :class:`cudcn.adapters.torch.ModulatedDeformConv2dPack`
            (DCN v2) instead of :class:`cudcn.adapters.torch.DeformConv2dPack`
            (DCN v1).
        deform_groups, offset_lr_mult: passed to the Pack layers
            (deform_groups must divide each chosen conv's in_channels).

    Returns:
        The list of names replaced, in ``named_modules()`` order. Each Pack
        layer keeps the conv's weight, bias, geometry, groups, device and
        dtype and starts with zero offsets: with DCN v1 the model's output is
        unchanged until training moves the offsets. (DCN v2's masks start at
        0.5, as in the paper and mmcv, which halves those layers' outputs
        before the bias.)

    Raises:
        ValueError: a name in layers that is no ``torch.nn.Conv2d`` of the
            model (checked before anything is replaced); a chosen conv with
            a padding_mode other than 'zeros' or a string padding ('same');
            a deform_groups below 1 or that does not divide a chosen conv's
            in_channels. Every check runs before any conv is replaced: after
            an error the model is as it was.
        TypeError: a deform_groups that is not an int.

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        ...                             torch.nn.Conv2d(8, 8, 3, padding=1))
        >>> x = torch.randn(1, 3, 6, 6)
        >>> before = model(x)
        >>> ct.convert_to_deformable(model, layers=["2"])
        ['2']
        >>> type(model[2]).__name__
        'DeformConv2dPack'
        >>> torch.allclose(model(x), before, atol=1e-5)  # zero offsets: same output
        True
    """
    if layers is None:
        chosen = _last_3x3_convs(model)
        select = lambda name, conv: name in chosen  # noqa: E731
    elif callable(layers):
        select = layers
    else:
        if isinstance(layers, str):  # one name, not a set of its letters
            layers = [layers]
        wanted = set(layers)
        select = lambda name, conv: name in wanted  # noqa: E731
    pack = ModulatedDeformConv2dPack if modulated else DeformConv2dPack
    targets = [(name, m) for name, m in _plain_convs(model) if select(name, m)]
    if not callable(layers) and layers is not None:
        missing = set(layers) - {name for name, _ in targets}
        if missing:
            raise ValueError(f"layers names no nn.Conv2d of the model: {sorted(missing)}")
    # Every layer is built (and checked) before any is swapped in: an error
    # leaves the model as it was.
    layers = []
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
        layers.append(layer)
    for (name, _), layer in zip(targets, layers):
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    return [name for name, _ in targets]


def param_groups(model, lr, **options):
    """Optimizer parameter groups in which the offset predictors of every Pack
    layer learn at ``lr * layer.offset_lr_mult`` (mmcv's dcn_offset_lr_mult)
    and every other parameter at ``lr``.

    The Pack layers are :class:`cudcn.adapters.torch.DeformConv2dPack` and
    :class:`cudcn.adapters.torch.ModulatedDeformConv2dPack`; their
    ``conv_offset`` parameters with an ``offset_lr_mult`` other than 1.0 go
    into one group per multiplier, everything else into the first group.

    Args:
        model: any ``torch.nn.Module``.
        lr: the base learning rate.
        **options: other settings of every group (``weight_decay``,
            ``momentum``, ...), passed as they are.

    Returns:
        A list of dicts with ``params``, ``lr`` and the options, for any
        ``torch.optim`` optimizer. A group that would have no parameters is
        left out.

    Raises:
        TypeError: options that name ``params`` or ``lr``.

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1),
        ...                             ct.DeformConv2dPack(8, 8, 3, offset_lr_mult=0.1))
        >>> groups = ct.param_groups(model, lr=0.01, weight_decay=1e-4)
        >>> [(len(g["params"]), round(g["lr"], 6), g["weight_decay"]) for g in groups]
        [(3, 0.01, 0.0001), (2, 0.001, 0.0001)]
        >>> optimizer = torch.optim.SGD(groups, lr=0.01)
    """
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
