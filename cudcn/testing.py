"""Input builders shared by the tests, the benchmarks and ``cudcn check``,
and the ``torch.nn.functional.grid_sample`` formulations the peers use.

The builders draw random arguments of an op from a seeded NumPy generator
(the same seed draws the same values, rounded to ``dtype``, for either
``xp``) and return them as a dict of keyword arguments of both the op and
its float64 reference in ``cudcn.reference``. They check nothing: a size
that is not an int, or is negative, fails inside NumPy.
"""

import numpy as np

from .dcnv3 import kernel_points

__all__ = [
    "deform_conv2d_inputs",
    "rois_for",
    "deform_roi_pool_inputs",
    "deform_psroi_pool_inputs",
    "ms_deform_attn_inputs",
    "dcnv3_inputs",
    "grid_sample_ms_deform_attn",
    "grid_sample_dcnv3",
    "grid_sample_dcnv4",
]


# The builders' docstrings' common parts, filled in after dcnv3_inputs.
_BUILDER_ARGS = """dtype: the float arrays' dtype (a NumPy dtype, ``ml_dtypes.bfloat16``
            included).
        seed: the seed of ``numpy.random.default_rng``.
        xp: the array module of the arrays, ``numpy`` or ``cupy``."""
_BUILDER_RAISES = """Raises:
        TypeError: from NumPy, for a size that is not an int.
        ValueError: from NumPy, for a negative size (an output size below
            zero included)."""


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def deform_conv2d_inputs(batch=2, in_channels=4, out_channels=6, size=(7, 6), kernel=(3, 3),
                         stride=1, padding=1, dilation=1, groups=1, offset_groups=1, mask=True,
                         bias=True, dtype=np.float64, offset_scale=2.0, away_from_kinks=False,
                         seed=0, xp=np):
    """Random arguments of :func:`cudcn.deform_conv2d`, as a dict of keyword arguments.

    ``offset_scale`` scales the offsets (large values leave the image).
    ``away_from_kinks`` makes every sampling point's fractional part lie in
    [0.15, 0.85], so that finite differences of width < 0.15 never cross a
    kink of the bilinear weight or the image border.

    Args:
        batch, in_channels, out_channels: N, C_in, C_out.
        size, kernel: (H, W) and (kh, kw), ints or pairs.
        stride, padding, dilation: ints or pairs, passed on.
        groups, offset_groups: they must divide in_channels (groups also
            out_channels) for the op to take the arguments.
        mask, bias: whether to draw a mask (uniform in [0, 1)) and a bias,
            else None.
        offset_scale: the standard deviation of the offsets, in pixels
            (roughly, with away_from_kinks).
        away_from_kinks: see above.
        {dtype_seed_xp}

    Returns:
        dict of input (N, C_in, H, W), offset (N, 2 * offset_groups * kh *
        kw, H_out, W_out), weight (C_out, C_in / groups, kh, kw), bias (C_out,)
        or None, mask (N, offset_groups * kh * kw, H_out, W_out) or None, and
        stride, padding, dilation as given.

    {raises}

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> from cudcn import testing
        >>> args = testing.deform_conv2d_inputs(batch=1, in_channels=2, out_channels=3,
        ...                                     size=5, dtype=np.float32)
        >>> sorted(args)
        ['bias', 'dilation', 'input', 'mask', 'offset', 'padding', 'stride', 'weight']
        >>> args["offset"].shape, args["offset"].dtype
        ((1, 18, 5, 5), dtype('float32'))
        >>> cudcn.deform_conv2d(**args).shape
        (1, 3, 5, 5)
    """
    rng = np.random.default_rng(seed)
    (h, w), (kh, kw) = _pair(size), _pair(kernel)
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    offset_shape = (batch, 2 * offset_groups * kh * kw, ho, wo)
    if away_from_kinks:
        whole = np.round(offset_scale * rng.standard_normal(offset_shape))
        offset = whole + rng.uniform(0.15, 0.85, offset_shape)
    else:
        offset = offset_scale * rng.standard_normal(offset_shape)
    args = dict(
        input=rng.standard_normal((batch, in_channels, h, w)),
        offset=offset,
        weight=rng.standard_normal((out_channels, in_channels // groups, kh, kw)),
        bias=rng.standard_normal(out_channels) if bias else None,
        mask=rng.uniform(0.0, 1.0, (batch, offset_groups * kh * kw, ho, wo)) if mask else None,
    )
    args = {k: None if v is None else xp.asarray(v.astype(dtype)) for k, v in args.items()}
    return dict(args, stride=stride, padding=padding, dilation=dilation)


def rois_for(batch, height, width, count, spatial_scale=1.0, outside=True, seed=0):
    """(count, 5) boxes in input-image coordinates on a map of height x width
    feature pixels: most inside, and with ``outside`` some partly or wholly
    outside the image.

    Args:
        batch: N; the boxes' batch indices are drawn from [0, N).
        height, width: the feature map's size in pixels.
        count: K, the number of boxes.
        spatial_scale: feature-map size over input-image size.
        outside: with at least 3 boxes, make the last one partly and the one
            before it wholly outside the image.
        seed: the seed of ``numpy.random.default_rng``.

    Returns:
        (K, 5) float64 NumPy array of ``(batch index, x1, y1, x2, y2)``.

    Raises:
        TypeError: from NumPy, for a count that is not an int.
        ValueError: from NumPy, for a negative count.

    Example:
        >>> import numpy as np
        >>> from cudcn import testing
        >>> boxes = testing.rois_for(batch=2, height=8, width=8, count=4)
        >>> boxes.shape, boxes.dtype
        ((4, 5), dtype('float64'))
        >>> bool(np.isin(boxes[:, 0], [0, 1]).all())
        True
    """
    rng = np.random.default_rng(seed)
    img_h, img_w = height / spatial_scale, width / spatial_scale
    x1 = rng.uniform(0, 0.7 * img_w, count)
    y1 = rng.uniform(0, 0.7 * img_h, count)
    x2 = x1 + rng.uniform(0.1, 0.6, count) * img_w
    y2 = y1 + rng.uniform(0.1, 0.6, count) * img_h
    boxes = np.stack([rng.integers(0, max(batch, 1), count), x1, y1, x2, y2], axis=1)
    if outside and count >= 3:
        boxes[-1, 1:] = [-0.5 * img_w, -0.4 * img_h, 0.3 * img_w, 0.5 * img_h]  # partly outside
        boxes[-2, 1:] = [1.5 * img_w, 1.2 * img_h, 2.0 * img_w, 1.9 * img_h]  # wholly outside
    return boxes


def deform_roi_pool_inputs(batch=2, channels=3, size=(12, 10), rois=5, output_size=3,
                           spatial_scale=0.5, sampling_ratio=0, gamma=0.1, offset=True,
                           mask=False, dtype=np.float64, seed=0, xp=np):
    """Random arguments of :func:`cudcn.deform_roi_pool`, as a dict of keyword arguments.

    Args:
        batch, channels: N, C.
        size: (H, W), an int or a pair.
        rois: K, the number of boxes (drawn by :func:`cudcn.testing.rois_for`
            with seed + 1, some outside the image).
        output_size, spatial_scale, sampling_ratio, gamma: passed on.
        offset, mask: whether to draw an offset (standard normal) and a mask
            (uniform in [0, 1)), else None.
        {dtype_seed_xp}

    Returns:
        dict of input (N, C, H, W), rois (K, 5) float64, offset (K, 2, PH, PW)
        or None, mask (K, 1, PH, PW) or None, and the other arguments as
        given.

    {raises}

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> from cudcn import testing
        >>> args = testing.deform_roi_pool_inputs(rois=4, output_size=2, mask=True,
        ...                                       dtype=np.float32)
        >>> args["offset"].shape, args["mask"].shape, args["rois"].dtype
        ((4, 2, 2, 2), (4, 1, 2, 2), dtype('float64'))
        >>> cudcn.deform_roi_pool(**args).shape
        (4, 3, 2, 2)
    """
    rng = np.random.default_rng(seed)
    h, w = _pair(size)
    ph, pw = _pair(output_size)
    args = dict(
        input=rng.standard_normal((batch, channels, h, w)).astype(dtype),
        rois=rois_for(batch, h, w, rois, spatial_scale, seed=seed + 1),
        offset=rng.standard_normal((rois, 2, ph, pw)).astype(dtype) if offset else None,
        mask=rng.uniform(0, 1, (rois, 1, ph, pw)).astype(dtype) if mask else None,
    )
    args = {k: None if v is None else xp.asarray(v) for k, v in args.items()}
    return dict(args, output_size=output_size, spatial_scale=spatial_scale,
                sampling_ratio=sampling_ratio, gamma=gamma)


def deform_psroi_pool_inputs(batch=2, output_dim=4, group_size=2, pooled_size=3, part_size=None,
                             num_classes=2, size=(12, 10), rois=5, spatial_scale=0.5,
                             sample_per_part=2, trans_std=0.1, offset=True, dtype=np.float64,
                             seed=0, xp=np):
    """Random arguments of :func:`cudcn.deform_psroi_pool`, as a dict of keyword arguments.

    Args:
        batch: N.
        output_dim, group_size, pooled_size, part_size: passed on; the input
            has output_dim * group_size**2 channels.
        num_classes: the offset's classes; it must divide output_dim.
        size: (H, W), an int or a pair.
        rois: K, the number of boxes (drawn by :func:`cudcn.testing.rois_for`
            with seed + 1, some outside the image).
        spatial_scale, sample_per_part, trans_std: passed on.
        offset: whether to draw an offset (standard normal), else None.
        {dtype_seed_xp}

    Returns:
        dict of input (N, output_dim * group_size**2, H, W), rois (K, 5)
        float64, offset (K, 2 * num_classes, part_size, part_size) or None,
        and the other arguments as given.

    {raises}

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> from cudcn import testing
        >>> args = testing.deform_psroi_pool_inputs(rois=4, output_dim=4, group_size=2,
        ...                                         pooled_size=3, dtype=np.float32)
        >>> args["input"].shape, args["offset"].shape
        ((2, 16, 12, 10), (4, 4, 3, 3))
        >>> cudcn.deform_psroi_pool(**args).shape
        (4, 4, 3, 3)
    """
    rng = np.random.default_rng(seed)
    h, w = _pair(size)
    part = pooled_size if part_size is None else part_size
    args = dict(
        input=rng.standard_normal((batch, output_dim * group_size**2, h, w)).astype(dtype),
        rois=rois_for(batch, h, w, rois, spatial_scale, seed=seed + 1),
        offset=(rng.standard_normal((rois, 2 * num_classes, part, part)).astype(dtype)
                if offset else None),
    )
    args = {k: None if v is None else xp.asarray(v) for k, v in args.items()}
    return dict(args, output_dim=output_dim, group_size=group_size, pooled_size=pooled_size,
                part_size=part_size, sample_per_part=sample_per_part, trans_std=trans_std,
                spatial_scale=spatial_scale)


def ms_deform_attn_inputs(batch=2, queries=5, heads=2, channels=4, shapes=((6, 5), (3, 4)),
                          points=3, points_per_level=None, outside=0.1, away_from_kinks=False,
                          dtype=np.float64, seed=0, xp=np):
    """Random arguments of ms_deform_attn, as a dict of keyword arguments.

    ``shapes`` are the levels' (H, W); ``points`` per level, or
    ``points_per_level``. About ``outside`` of the locations lie beyond the
    maps' borders (normalised coordinates in [-0.3, 1.3]), the rest in
    [0, 1]. ``away_from_kinks`` puts every sampling point's fractional part
    (of x = loc_x * W - 0.5, likewise y) in [0.15, 0.85] and keeps it inside
    the open window, so that finite differences of width < 0.15 / max(H, W)
    in normalised units cross no kink.

    Args:
        batch, queries, heads, channels: N, Lq, M, D.
        shapes: the levels' (H_l, W_l).
        points: P, the points per level when points_per_level is None.
        points_per_level: None, or P_l for each level.
        outside: the fraction of locations drawn from [-0.3, 1.3] rather
            than [0, 1].
        away_from_kinks: see above (outside is then ignored).
        {dtype_seed_xp}

    Returns:
        dict of value (N, S, M, D), spatial_shapes (L, 2) and
        level_start_index (L,) int64, sampling_locations (N, Lq, M, L, P, 2)
        and attention_weights (N, Lq, M, L, P) (with points_per_level: (N,
        Lq, M, sum(points_per_level), 2) and (N, Lq, M,
        sum(points_per_level))), and points_per_level as a tuple or None.

    {raises}

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> from cudcn import testing
        >>> args = testing.ms_deform_attn_inputs(queries=3, heads=2, channels=4,
        ...                                      points_per_level=(2, 4), dtype=np.float32)
        >>> args["sampling_locations"].shape, args["spatial_shapes"].tolist()
        ((2, 3, 2, 6, 2), [[6, 5], [3, 4]])
        >>> cudcn.ms_deform_attn(**args).shape
        (2, 3, 8)
    """
    rng = np.random.default_rng(seed)
    shapes = np.array(shapes, dtype=np.int64).reshape(-1, 2)
    starts = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])[:-1]]).astype(np.int64)
    counts = [points] * len(shapes) if points_per_level is None else list(points_per_level)
    rows = int((shapes[:, 0] * shapes[:, 1]).sum())
    total = sum(counts)
    level = np.repeat(np.arange(len(shapes)), counts)
    size = np.stack([shapes[level, 1], shapes[level, 0]], axis=-1)  # (P, 2): W, H for x, y
    loc_shape = (batch, queries, heads, total, 2)
    if away_from_kinks:
        whole = rng.integers(-1, size, loc_shape)  # the cell's low corner, -1 .. W-1
        pixel = whole + rng.uniform(0.15, 0.85, loc_shape)
        loc = (pixel + 0.5) / size
    else:
        loc = rng.uniform(0.0, 1.0, loc_shape)
        far = rng.uniform(0, 1, loc_shape) < outside
        loc = np.where(far, rng.uniform(-0.3, 1.3, loc_shape), loc)
    weights = rng.uniform(0.0, 1.0, (batch, queries, heads, total))
    if points_per_level is None:
        loc = loc.reshape(batch, queries, heads, len(shapes), points, 2)
        weights = weights.reshape(batch, queries, heads, len(shapes), points)
    return dict(value=xp.asarray(rng.standard_normal((batch, rows, heads, channels)).astype(dtype)),
                spatial_shapes=xp.asarray(shapes), level_start_index=xp.asarray(starts),
                sampling_locations=xp.asarray(loc.astype(dtype)),
                attention_weights=xp.asarray(weights.astype(dtype)),
                points_per_level=None if points_per_level is None else tuple(points_per_level))


def dcnv3_inputs(batch=2, size=(7, 6), groups=2, group_channels=3, kernel=(3, 3), stride=1,
                 padding=1, dilation=1, offset_scale=1.0, remove_center=False, outside=0.1,
                 away_from_kinks=False, packed=False, pad_to=8, dtype=np.float64, seed=0, xp=np):
    """Random arguments of dcnv3 (or, ``packed``, of dcnv4), as a dict of
    keyword arguments.

    Offsets are uniform in [-2, 2) pixels; about ``outside`` of them are
    pushed 2 to 8 pixels further, mostly beyond the border. The mask is
    uniform in [0, 1). ``packed``: DCNv4's offset_mask, its last dimension
    padded with random values up to a multiple of ``pad_to``.
    ``away_from_kinks`` puts every sampling point's fractional part in
    [0.15, 0.85] inside the open window, so that finite differences of the
    offsets of width < 0.15 / offset_scale cross no kink.

    Args:
        batch, size, groups, group_channels: N, (H, W) (an int or a pair),
            G, C.
        kernel, stride, padding, dilation: ints or pairs; returned as
            kernel_size, stride, padding, dilation pairs.
        offset_scale, remove_center: passed on; offset_scale also scales the
            offsets that ``away_from_kinks`` computes.
        outside: the fraction of offsets pushed further out.
        away_from_kinks: see above (outside is then ignored).
        packed, pad_to: see above.
        {dtype_seed_xp}

    Returns:
        dict of input (N, H, W, G * C), offset (N, H_out, W_out, G * K * 2)
        and mask (N, H_out, W_out, G * K), or with ``packed`` offset_mask (N,
        H_out, W_out, D), and kernel_size, stride, padding, dilation, groups,
        offset_scale, remove_center.

    {raises}

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> from cudcn import testing
        >>> args = testing.dcnv3_inputs(packed=True, pad_to=8, dtype=np.float32)
        >>> args["input"].shape, args["offset_mask"].shape  # G * 3K = 54, padded to 56
        ((2, 7, 6, 6), (2, 7, 6, 56))
        >>> cudcn.dcnv4(**args).shape
        (2, 7, 6, 6)
    """
    rng = np.random.default_rng(seed)
    (h, w), (kh, kw) = _pair(size), _pair(kernel)
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    out_h = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    out_w = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    points = kernel_points(kh, kw, remove_center)
    k = len(points)
    shape = (batch, out_h, out_w, groups, k, 2)
    if away_from_kinks:
        cell = np.stack([rng.integers(-1, w, shape[:-1]), rng.integers(-1, h, shape[:-1])], -1)
        target = cell + rng.uniform(0.15, 0.85, shape)  # (x, y) where each point samples
        half = np.array([(dw * (kw - 1)) // 2, (dh * (kh - 1)) // 2])
        p0 = np.stack(np.broadcast_arrays(
            (half[0] - pw + np.arange(out_w) * sw)[None, :], (half[1] - ph + np.arange(out_h)
                                                               * sh)[:, None]), -1)
        p0 = p0[None, :, :, None, None] - half * offset_scale
        along = np.array([[i * dw, j * dh] for i, j in points], np.float64)  # (K, 2)
        offset = (target - p0) / offset_scale - along
    else:
        offset = rng.uniform(-2, 2, shape)
        far = rng.uniform(0, 1, shape) < outside
        offset = np.where(far, np.sign(offset) * rng.uniform(2, 8, shape) + offset, offset)
    mask = rng.uniform(0, 1, (batch, out_h, out_w, groups, k))
    args = dict(input=rng.standard_normal((batch, h, w, groups * group_channels)),
                kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw),
                groups=groups, offset_scale=offset_scale, remove_center=remove_center)
    if packed:
        width = -(-groups * 3 * k // pad_to) * pad_to
        offset_mask = rng.uniform(-1, 1, (batch, out_h, out_w, width))
        offset_mask[..., :groups * 3 * k] = np.concatenate(
            [offset.reshape(*shape[:4], 2 * k), mask], -1).reshape(*shape[:3], groups * 3 * k)
        args["offset_mask"] = offset_mask
    else:
        args["offset"] = offset.reshape(*shape[:3], groups * 2 * k)
        args["mask"] = mask.reshape(*shape[:3], groups * k)
    floats = ("input", "offset", "mask", "offset_mask")
    return {name: xp.asarray(v.astype(dtype)) if name in floats else v
            for name, v in args.items()}


for _builder in (deform_conv2d_inputs, deform_roi_pool_inputs, deform_psroi_pool_inputs,
                 ms_deform_attn_inputs, dcnv3_inputs):
    _builder.__doc__ = (_builder.__doc__.replace("{dtype_seed_xp}", _BUILDER_ARGS)
                        .replace("{raises}", _BUILDER_RAISES))
del _builder


def grid_sample_ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights):
    """Multi-scale deformable attention the way mmcv, transformers and
    InternImage compute it without a kernel (torch tensors): per level,
    ``F.grid_sample`` at ``2 * loc - 1`` with zeros padding and
    ``align_corners=False``, then the weighted sum. Written from that
    definition; the peer the tests and ``cudcn bench`` compare with.

    Args:
        value: (N, S, M, D) tensor, the levels' maps flattened and stacked.
        spatial_shapes: (L, 2) tensor (or anything with ``tolist``), (H_l,
            W_l) of each level; the levels are taken in order, so no
            level_start_index is needed.
        sampling_locations: (N, Lq, M, L, P, 2) tensor, (x, y) in [0, 1].
        attention_weights: (N, Lq, M, L, P) tensor.

    The tensors share one float dtype and device.

    Returns:
        (N, Lq, M * D) tensor, as :func:`cudcn.ms_deform_attn`.

    Raises:
        ValueError: value that is not 4-D, or sampling_locations that is not
            6-D (the layout of points_per_level is not supported).

    Example:
        >>> import numpy as np
        >>> import torch
        >>> from cudcn import reference, testing
        >>> args = testing.ms_deform_attn_inputs()
        >>> names = ("value", "spatial_shapes", "sampling_locations", "attention_weights")
        >>> out = testing.grid_sample_ms_deform_attn(*(torch.from_numpy(args[n]) for n in names))
        >>> tuple(out.shape)
        (2, 5, 8)
        >>> bool(np.allclose(out.numpy(), reference.ms_deform_attn(**args)))
        True
    """
    import torch
    import torch.nn.functional as F

    n, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    level_shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    samples = []
    for level, (rows, (h, w)) in enumerate(zip(value.split([h * w for h, w in level_shapes],
                                                           dim=1), level_shapes)):
        maps = rows.permute(0, 2, 3, 1).reshape(n * heads, channels, h, w)
        grid = (2 * sampling_locations[:, :, :, level] - 1).transpose(1, 2)
        grid = grid.reshape(n * heads, queries, points, 2)
        samples.append(F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # (N*M, D, Lq, P)
    stacked = torch.stack(samples, dim=-2).flatten(-2)  # (N*M, D, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(n * heads, 1, queries, levels * points)
    out = (stacked * weights).sum(-1).view(n, heads * channels, queries)
    return out.transpose(1, 2).contiguous()


def grid_sample_dcnv3(input, offset, mask, kernel_size, stride=1, padding=0, dilation=1,
                      groups=1, offset_scale=1.0, remove_center=False):
    """DCNv3's core the way InternImage computes it without its kernel
    (``dcnv3_core_pytorch``; torch tensors): zero-pad the input, add each
    output's reference point, the kernel's dilation grid and the offsets
    (both scaled by ``offset_scale``), ``F.grid_sample`` (bilinear, zeros
    padding, ``align_corners=False``) over (N * G, C_g, H_pad, W_pad), times
    the mask, summed over the points. Written from that definition; the peer
    the tests and ``cudcn bench`` compare with.

    Two departures from InternImage, both towards its CUDA kernel (SPEC
    section 7): each axis is padded by its own amount (InternImage pads H by
    pad_w and W by pad_h), and the sampling grid is built in the input's
    dtype (InternImage builds it in float32, which rounds float64 locations
    and cannot be sampled with a half input).

    Args:
        input: (N, H, W, G * C_g) tensor, channels last.
        offset: (N, H_out, W_out, G * K * 2) tensor, per group K (dx, dy)
            pairs in pixels; point k = i * kh + j for column i < kw and row
            j < kh.
        mask: (N, H_out, W_out, G * K) tensor, the points' weights.
        kernel_size, stride, padding, dilation: int or (h, w).
        groups: G.
        offset_scale: scales both the dilation grid and the offsets.
        remove_center: skip the centre point (odd square kernels), so
            K = kh * kw - 1 rather than kh * kw.

    The tensors share one float dtype and device.

    Returns:
        (N, H_out, W_out, G * C_g) tensor.

    Raises:
        ValueError: remove_center with an even or non-square kernel, or
            input channels that groups does not divide.

    Example:
        >>> import numpy as np
        >>> import torch
        >>> from cudcn import reference, testing
        >>> args = testing.dcnv3_inputs()
        >>> tensors = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
        ...            for k, v in args.items()}
        >>> out = testing.grid_sample_dcnv3(**tensors)
        >>> tuple(out.shape)
        (2, 7, 6, 6)
        >>> bool(np.allclose(out.numpy(), reference.dcnv3(**args)))
        True
    """
    import torch
    import torch.nn.functional as F

    (kh, kw), (sh, sw) = _pair(kernel_size), _pair(stride)
    (ph, pw), (dh, dw) = _pair(padding), _pair(dilation)
    if remove_center and (kh != kw or kh % 2 == 0):
        raise ValueError(f"remove_center needs an odd square kernel, got {(kh, kw)}")
    n, h, w, channels = input.shape
    if channels % groups:
        raise ValueError(f"input's {channels} channels do not divide into {groups} groups")
    group_channels = channels // groups
    points = kh * kw - int(bool(remove_center))
    # F.pad takes the last dimension first: channels, then W, then H.
    padded = F.pad(input, (0, 0, pw, pw, ph, ph))
    hp, wp = h + 2 * ph, w + 2 * pw
    ho = (hp - (dh * (kh - 1) + 1)) // sh + 1
    wo = (wp - (dw * (kw - 1) + 1)) // sw + 1
    like = dict(dtype=input.dtype, device=input.device)

    # Locations in pixels of the padded map. grid_sample's pixel p covers
    # [p, p + 1) (align_corners=False), hence the half pixel on the centres.
    reach_h, reach_w = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    centre_x = reach_w + 0.5 + sw * torch.arange(wo, **like)
    centre_y = reach_h + 0.5 + sh * torch.arange(ho, **like)
    centres = torch.stack(torch.meshgrid(centre_x, centre_y, indexing="xy"), -1)  # (Ho, Wo, 2)
    tap_x = (dw * torch.arange(kw, **like) - reach_w).repeat_interleave(kh)  # x outer
    tap_y = (dh * torch.arange(kh, **like) - reach_h).repeat(kw)  # y inner
    taps = torch.stack([tap_x, tap_y], -1)  # (kh * kw, 2)
    if remove_center:
        taps = torch.cat([taps[:kh * kw // 2], taps[kh * kw // 2 + 1:]])
    offsets = offset.reshape(n, ho, wo, groups, points, 2)
    locations = centres[:, :, None, None] + (taps + offsets) * offset_scale  # (N, Ho, Wo, G, K, 2)
    grid = 2 * locations / torch.tensor([wp, hp], **like) - 1

    maps = padded.reshape(n, hp, wp, groups, group_channels).permute(0, 3, 4, 1, 2)
    grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(n * groups, ho * wo, points, 2)
    samples = F.grid_sample(maps.reshape(n * groups, group_channels, hp, wp), grid,
                            mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # (N * G, C_g, Ho * Wo, K)
    weights = mask.reshape(n, ho * wo, groups, points).transpose(1, 2)
    out = (samples * weights.reshape(n * groups, 1, ho * wo, points)).sum(-1)
    return out.reshape(n, channels, ho * wo).transpose(1, 2).reshape(n, ho, wo, channels)


def grid_sample_dcnv4(input, offset_mask, kernel_size, stride=1, padding=0, dilation=1,
                      groups=1, offset_scale=1.0, remove_center=False):
    """DCNv4's core (torch tensors): :func:`cudcn.testing.grid_sample_dcnv3` on the
    offsets and mask unpacked from DCNv4's ``offset_mask``, as DCNv4's own
    tests compare it with DCNv3 (no softmax).

    Args:
        input: (N, H, W, G * C_g) tensor, channels last.
        offset_mask: (N, H_out, W_out, D_pad) tensor, D_pad >= G * 3K: per
            group g, the values g * 3K ... g * 3K + 2K - 1 are the K (dx, dy)
            pairs and the next K the mask; the rest (DCNv4 pads to a multiple
            of 8) is ignored.
        kernel_size, stride, padding, dilation: as in
            :func:`cudcn.testing.grid_sample_dcnv3`.
        groups, offset_scale, remove_center: as in
            :func:`cudcn.testing.grid_sample_dcnv3`.

    Returns:
        (N, H_out, W_out, G * C_g) tensor.

    Raises:
        ValueError: as :func:`cudcn.testing.grid_sample_dcnv3`.

    Example:
        >>> import numpy as np
        >>> import torch
        >>> from cudcn import reference, testing
        >>> args = testing.dcnv3_inputs(packed=True)
        >>> tensors = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
        ...            for k, v in args.items()}
        >>> out = testing.grid_sample_dcnv4(**tensors)
        >>> bool(np.allclose(out.numpy(), reference.dcnv4(**args)))
        True
    """
    kh, kw = _pair(kernel_size)
    points = kh * kw - int(bool(remove_center))
    packed = offset_mask[..., :groups * 3 * points]
    per_group = packed.reshape(*packed.shape[:-1], groups, 3 * points)
    offset = per_group[..., :2 * points].flatten(-2)
    mask = per_group[..., 2 * points:].flatten(-2)
    return grid_sample_dcnv3(input, offset, mask, kernel_size, stride, padding, dilation, groups,
                             offset_scale, remove_center)
