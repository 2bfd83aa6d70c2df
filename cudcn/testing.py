"""Input builders shared by the tests, the benchmarks and ``cudcn check``."""

import numpy as np


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def deform_conv2d_inputs(batch=2, in_channels=4, out_channels=6, size=(7, 6), kernel=(3, 3),
                         stride=1, padding=1, dilation=1, groups=1, offset_groups=1, mask=True,
                         bias=True, dtype=np.float64, offset_scale=2.0, away_from_kinks=False,
                         seed=0, xp=np):
    """Random arguments of deform_conv2d, as a dict of keyword arguments.

    ``offset_scale`` scales the offsets (large values leave the image).
    ``away_from_kinks`` makes every sampling point's fractional part lie in
    [0.15, 0.85], so that finite differences of width < 0.15 never cross a
    kink of the bilinear weight or the image border.
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
    outside the image."""
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
    """Random arguments of deform_roi_pool, as a dict of keyword arguments."""
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
    """Random arguments of deform_psroi_pool, as a dict of keyword arguments."""
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


def grid_sample_ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights):
    """Multi-scale deformable attention the way mmcv, transformers and
    InternImage compute it without a kernel (torch tensors): per level,
    ``F.grid_sample`` at ``2 * loc - 1`` with zeros padding and
    ``align_corners=False``, then the weighted sum. Written from that
    definition; the peer the tests and ``cudcn bench`` compare with."""
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
