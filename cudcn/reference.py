"""Slow float64 NumPy references, written from the formulas of SPEC.md.

They share no code with the kernels and exist to check them (tests, and
``cudcn check``). Every argument is as for the op of the same name: arrays
are NumPy arrays (or anything ``numpy.asarray`` takes) of any real dtype,
converted to float64, and the result is a float64 NumPy array. Nothing is
checked: arguments that do not fit together fail inside NumPy, or give
meaningless results; the ops check the same arguments.
"""

import numpy as np

__all__ = [
    "bilinear_zero_border",
    "deform_conv2d",
    "deform_roi_pool",
    "deform_psroi_pool",
    "ms_deform_attn",
    "dcnv3",
    "dcnv4",
]


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _checked_against(op, build, shape):
    """Add the Raises and Example sections every op's reference shares to
    its docstring: ``build`` calls the cudcn.testing builder of its
    arguments, ``shape`` is its result's. The function is left as it is."""

    def document(fn):
        fn.__doc__ = fn.__doc__.rstrip() + f"""

    Raises:
        TypeError: from NumPy, for an argument it cannot convert to float64
            (a CuPy array, say).
        ValueError: from NumPy, for most arrays whose shapes do not fit
            together. Nothing is checked: :func:`cudcn.{op}` checks the same
            arguments.

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> from cudcn import reference, testing
        >>> args = testing.{build}
        >>> expected = reference.{op}(**args)
        >>> expected.shape, expected.dtype
        ({shape}, dtype('float64'))
        >>> bool(np.allclose(cudcn.{op}(**args), expected))
        True
    """
        return fn

    return document


def bilinear_zero_border(planes, y, x):
    """Sample planes (N, C, H, W) at points y, x (N, Ho, Wo) -> (N, C, Ho, Wo).

    0 when y <= -1, y >= H, x <= -1 or x >= W (and for NaN); otherwise the
    weighted sum of the four integer corners, corners outside reading 0.
    The bilinear sampling of :func:`cudcn.deform_conv2d`,
    :func:`cudcn.ms_deform_attn` and :func:`cudcn.dcnv3`.

    Args:
        planes: (N, C, H, W) float array.
        y, x: (N, Ho, Wo) float arrays, the points' row and column in pixels
            (any trailing shape after N works: the result has it after C).

    Returns:
        (N, C, Ho, Wo) float64 array.

    Raises:
        ValueError: from NumPy, when y and x do not broadcast together.
            Nothing is checked beforehand.

    Example:
        >>> import numpy as np
        >>> from cudcn import reference
        >>> planes = np.arange(4.0).reshape(1, 1, 2, 2)
        >>> y = np.array([[[0.5, -1.0]]])
        >>> x = np.array([[[0.5, 0.0]]])
        >>> reference.bilinear_zero_border(planes, y, x)  # the mean of 4 pixels; outside
        array([[[[1.5, 0. ]]]])
    """
    n, _, h, w = planes.shape
    with np.errstate(invalid="ignore"):
        inside = (y > -1) & (y < h) & (x > -1) & (x < w)
    y = np.where(inside, y, 0.0)
    x = np.where(inside, x, 0.0)
    y0, x0 = np.floor(y), np.floor(x)
    batch = np.arange(n)[:, None, None]
    out = np.zeros(planes.shape[:2] + y.shape[1:])
    for qy in (y0, y0 + 1):
        for qx in (x0, x0 + 1):
            weight = (1 - np.abs(y - qy)) * (1 - np.abs(x - qx))
            ok = inside & (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
            iy = np.clip(qy, 0, h - 1).astype(np.int64)
            ix = np.clip(qx, 0, w - 1).astype(np.int64)
            values = np.moveaxis(planes[batch, :, iy, ix], -1, 1)  # (N, C, Ho, Wo)
            out += np.where(ok[:, None], weight[:, None] * values, 0.0)
    return out


@_checked_against("deform_conv2d", "deform_conv2d_inputs()", "(2, 6, 7, 6)")
def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """:func:`cudcn.deform_conv2d` in float64 (SPEC.md section 1).

    Args:
        input: (N, C_in, H, W).
        offset: (N, 2 * offset_groups * kh * kw, H_out, W_out).
        weight: (C_out, C_in / groups, kh, kw).
        bias: (C_out,) or None.
        stride, padding, dilation: int or (h, w) pair.
        mask: (N, offset_groups * kh * kw, H_out, W_out) or None.

    Returns:
        (N, C_out, H_out, W_out) float64 array.
    """
    x = np.asarray(input, dtype=np.float64)
    offset = np.asarray(offset, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    groups = c // c_per_group
    points = kh * kw
    offset_groups = offset.shape[1] // (2 * points)
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    oh = np.arange(ho)[None, :, None]
    ow = np.arange(wo)[None, None, :]
    # sampled[n, c, k, oh, ow] = m * sample(input[n, c], y, x) at kernel point k
    sampled = np.zeros((n, c, points, ho, wo))
    per_offset_group = c // offset_groups
    for g in range(offset_groups):
        channels = slice(g * per_offset_group, (g + 1) * per_offset_group)
        for i in range(kh):
            for j in range(kw):
                k = i * kw + j
                dy = offset[:, 2 * (g * points + k)]
                dx = offset[:, 2 * (g * points + k) + 1]
                m = 1.0 if mask is None else np.asarray(mask, np.float64)[:, g * points + k][:, None]
                y = oh * sh - ph + i * dh + dy
                xs = ow * sw - pw + j * dw + dx
                sampled[:, channels, k] = m * bilinear_zero_border(x[:, channels], y, xs)
    out = np.zeros((n, c_out, ho, wo))
    c_out_g = c_out // groups
    for gi in range(groups):
        outs = slice(gi * c_out_g, (gi + 1) * c_out_g)
        ins = slice(gi * c_per_group, (gi + 1) * c_per_group)
        out[:, outs] = np.einsum(
            "ock,nckhw->nohw", weight[outs].reshape(c_out_g, c_per_group, points), sampled[:, ins]
        )
    if bias is not None:
        out += np.asarray(bias, np.float64)[None, :, None, None]
    return out


def _clamped_bilinear(planes, y, x):
    """Sample (C, H, W) planes at one point already known to be kept: clamp
    into [0, H-1] x [0, W-1] and interpolate (RoIAlign's rule)."""
    _, h, w = planes.shape
    y = min(max(y, 0.0), h - 1.0)
    x = min(max(x, 0.0), w - 1.0)
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * planes[:, y0, x0] + (1 - ly) * lx * planes[:, y0, x1]
            + ly * (1 - lx) * planes[:, y1, x0] + ly * lx * planes[:, y1, x1])


def _round_half_away(v):
    """C's round(): halves go away from zero (np.round goes to even).

    floor(|v| + 0.5) would be wrong just below a half (0.49999999999999994 + 0.5
    rounds to 1.0); |v| - floor(|v|) is exact.
    """
    if not np.isfinite(v):
        return float(v)
    whole = np.floor(abs(v))
    return float(np.copysign(whole + (abs(v) - whole >= 0.5), v))


def _batch_index(value, batch):
    with np.errstate(invalid="ignore"):
        return int(value) if 0 <= value < batch else None


@_checked_against("deform_roi_pool", "deform_roi_pool_inputs()", "(5, 3, 3, 3)")
def deform_roi_pool(input, rois, offset=None, output_size=7, spatial_scale=1.0,
                    sampling_ratio=0, gamma=0.1, mask=None):
    """:func:`cudcn.deform_roi_pool` in float64 (SPEC.md section 2).

    Args:
        input: (N, C, H, W).
        rois: (K, 5) boxes ``(batch index, x1, y1, x2, y2)``.
        offset: (K, 2, PH, PW) or None.
        output_size: PH = PW, or a pair (PH, PW).
        spatial_scale, sampling_ratio, gamma: as for
            :func:`cudcn.deform_roi_pool`.
        mask: (K, 1, PH, PW) or None.

    Returns:
        (K, C, PH, PW) float64 array.
    """
    x = np.asarray(input, dtype=np.float64)
    rois = np.asarray(rois, dtype=np.float64)
    n, c, h, w = x.shape
    ph, pw = _pair(output_size)
    out = np.zeros((rois.shape[0], c, ph, pw))
    for k, (b, x1, y1, x2, y2) in enumerate(rois):
        b = _batch_index(b, n)
        start_x, start_y = x1 * spatial_scale - 0.5, y1 * spatial_scale - 0.5
        roi_w = x2 * spatial_scale - 0.5 - start_x
        roi_h = y2 * spatial_scale - 0.5 - start_y
        if b is None or not np.isfinite(roi_w) or not np.isfinite(roi_h):
            continue
        bin_h, bin_w = roi_h / ph, roi_w / pw
        grid_h = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_h / ph))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_w / pw))
        for i in range(ph):
            for j in range(pw):
                sy, sx = start_y, start_x
                if offset is not None:
                    sx += gamma * roi_w * float(offset[k, 0, i, j])
                    sy += gamma * roi_h * float(offset[k, 1, i, j])
                total = np.zeros(c)
                for iy in range(max(grid_h, 0)):
                    yy = sy + i * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(max(grid_w, 0)):
                        xx = sx + j * bin_w + (ix + 0.5) * bin_w / grid_w
                        if -1 <= yy <= h and -1 <= xx <= w:
                            total += _clamped_bilinear(x[b], yy, xx)
                out[k, :, i, j] = total / max(grid_h * grid_w, 1)
                if mask is not None:
                    out[k, :, i, j] *= float(mask[k, 0, i, j])
    return out


@_checked_against("deform_psroi_pool", "deform_psroi_pool_inputs()", "(5, 4, 3, 3)")
def deform_psroi_pool(input, rois, offset=None, *, output_dim, group_size, pooled_size,
                      part_size=None, sample_per_part=4, trans_std=0.0, spatial_scale=0.0625):
    """:func:`cudcn.deform_psroi_pool` in float64 (SPEC.md section 3).

    Args:
        input: (N, output_dim * group_size**2, H, W).
        rois: (K, 5) boxes ``(batch index, x1, y1, x2, y2)``.
        offset: (K, 2 * num_classes, part_size, part_size) or None.
        output_dim, group_size, pooled_size, part_size: ints, as for
            :func:`cudcn.deform_psroi_pool` (part_size None: pooled_size).
        sample_per_part, trans_std, spatial_scale: as for
            :func:`cudcn.deform_psroi_pool`.

    Returns:
        (K, output_dim, pooled_size, pooled_size) float64 array.
    """
    x = np.asarray(input, dtype=np.float64)
    rois = np.asarray(rois, dtype=np.float64)
    n, _, h, w = x.shape
    part_size = pooled_size if part_size is None else part_size
    num_classes = 1 if offset is None else offset.shape[1] // 2
    out = np.zeros((rois.shape[0], output_dim, pooled_size, pooled_size))
    for k, (b, x1, y1, x2, y2) in enumerate(rois):
        b = _batch_index(b, n)
        if b is None:
            continue
        start_w = _round_half_away(x1) * spatial_scale - 0.5
        start_h = _round_half_away(y1) * spatial_scale - 0.5
        roi_w = (_round_half_away(x2) + 1) * spatial_scale - 0.5 - start_w
        roi_h = (_round_half_away(y2) + 1) * spatial_scale - 0.5 - start_h
        roi_w = roi_w if roi_w > 0.1 else 0.1
        roi_h = roi_h if roi_h > 0.1 else 0.1
        bin_w, bin_h = roi_w / pooled_size, roi_h / pooled_size
        for ctop in range(output_dim):
            cls = ctop // (output_dim // num_classes)
            for i in range(pooled_size):
                for j in range(pooled_size):
                    part_h = i * part_size // pooled_size  # floor(i / pooled * part)
                    part_w = j * part_size // pooled_size
                    tx = ty = 0.0
                    if offset is not None:
                        tx = float(offset[k, 2 * cls, part_h, part_w]) * trans_std
                        ty = float(offset[k, 2 * cls + 1, part_h, part_w]) * trans_std
                    wstart = j * bin_w + start_w + tx * roi_w
                    hstart = i * bin_h + start_h + ty * roi_h
                    gi = min(max(int(np.floor(i * group_size / pooled_size)), 0), group_size - 1)
                    gj = min(max(int(np.floor(j * group_size / pooled_size)), 0), group_size - 1)
                    channel = (ctop * group_size + gi) * group_size + gj
                    values = []
                    for ih in range(sample_per_part):
                        for iw in range(sample_per_part):
                            yy = hstart + ih * bin_h / sample_per_part
                            xx = wstart + iw * bin_w / sample_per_part
                            if -0.5 <= xx <= w - 0.5 and -0.5 <= yy <= h - 0.5:
                                values.append(_clamped_bilinear(x[b, channel:channel + 1], yy, xx)[0])
                    out[k, ctop, i, j] = np.mean(values) if values else 0.0
    return out


@_checked_against("ms_deform_attn", "ms_deform_attn_inputs()", "(2, 5, 8)")
def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights, im2col_step=64, points_per_level=None):
    """:func:`cudcn.ms_deform_attn` in float64 (SPEC.md section 6): each
    level's map sampled with :func:`cudcn.reference.bilinear_zero_border` at
    (loc_y * H - 0.5, loc_x * W - 0.5).

    Args:
        value: (N, S, M, D).
        spatial_shapes: (L, 2) integers, (H_l, W_l) of each level.
        level_start_index: (L,) integers, the first row of each level in S.
        sampling_locations: (N, Lq, M, L, P, 2), or (N, Lq, M,
            sum(points_per_level), 2).
        attention_weights: (N, Lq, M, L, P), or (N, Lq, M,
            sum(points_per_level)).
        im2col_step: accepted and ignored.
        points_per_level: None, or P_l for each level.

    Returns:
        (N, Lq, M * D) float64 array.
    """
    value = np.asarray(value, np.float64)
    n, _, m, d = value.shape
    shapes = np.asarray(spatial_shapes).reshape(-1, 2)
    starts = np.asarray(level_start_index).reshape(-1)
    loc = np.asarray(sampling_locations, np.float64)
    weights = np.asarray(attention_weights, np.float64)
    lq = loc.shape[1]
    if points_per_level is None:
        per = loc.shape[4]
        points_per_level = [per] * len(shapes)
        loc = loc.reshape(n, lq, m, -1, 2)
        weights = weights.reshape(n, lq, m, -1)
    out = np.zeros((n * m, d, lq))
    first = 0
    for (h, w), start, count in zip(shapes, starts, points_per_level):
        h, w, start = int(h), int(w), int(start)
        planes = value[:, start:start + h * w].reshape(n, h, w, m, d)
        planes = planes.transpose(0, 3, 4, 1, 2).reshape(n * m, d, h, w)
        level_loc = loc[:, :, :, first:first + count].transpose(0, 2, 1, 3, 4)  # (N, M, Lq, P, 2)
        y = level_loc[..., 1].reshape(n * m, lq, count) * h - 0.5
        x = level_loc[..., 0].reshape(n * m, lq, count) * w - 0.5
        level_weights = weights[:, :, :, first:first + count].transpose(0, 2, 1, 3)
        samples = bilinear_zero_border(planes, y, x)  # (N*M, D, Lq, P)
        out += np.sum(samples * level_weights.reshape(n * m, 1, lq, count), axis=-1)
        first += count
    return out.reshape(n, m, d, lq).transpose(0, 3, 1, 2).reshape(n, lq, m * d)


def _dcn_kernel_points(kernel_h, kernel_w, remove_center):
    """(i, j) of each kernel point, x-outer, y-inner, the centre skipped on request."""
    return [(i, j) for i in range(kernel_w) for j in range(kernel_h)
            if not (remove_center and i == kernel_w // 2 and j == kernel_h // 2)]


@_checked_against("dcnv3", "dcnv3_inputs()", "(2, 7, 6, 6)")
def dcnv3(input, offset, mask, kernel_size, stride=1, padding=0, dilation=1, groups=1,
          offset_scale=1.0, remove_center=False):
    """:func:`cudcn.dcnv3` in float64 (SPEC.md section 7): point (i, j) of
    output (ho, wo) samples group g's channels with
    :func:`cudcn.reference.bilinear_zero_border` at
    x = p0_x - half_x * s + (i * dil_w + dx) * s, likewise y.

    Args:
        input: (N, H, W, G * C), channels last.
        offset: (N, H_out, W_out, G * K * 2).
        mask: (N, H_out, W_out, G * K).
        kernel_size, stride, padding, dilation: int or (h, w) pair.
        groups, offset_scale, remove_center: as for :func:`cudcn.dcnv3`.

    Returns:
        (N, H_out, W_out, G * C) float64 array.
    """
    x_in = np.asarray(input, np.float64)
    offset = np.asarray(offset, np.float64)
    mask = np.asarray(mask, np.float64)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (_pair(v) for v in (kernel_size, stride, padding,
                                                                 dilation))
    n, h, w, channels = x_in.shape
    g, c = groups, channels // groups
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    points = _dcn_kernel_points(kh, kw, remove_center)
    k = len(points)
    offset = offset.reshape(n, ho, wo, g, k, 2)
    mask = mask.reshape(n, ho, wo, g, k)
    half_x, half_y = (dw * (kw - 1)) // 2, (dh * (kh - 1)) // 2
    p0_x = (half_x - pw + np.arange(wo) * sw) - half_x * offset_scale  # (Wo,)
    p0_y = (half_y - ph + np.arange(ho) * sh) - half_y * offset_scale  # (Ho,)
    i = np.array([p[0] for p in points], np.float64)
    j = np.array([p[1] for p in points], np.float64)
    xs = p0_x[None, None, :, None, None] + (i * dw + offset[..., 0]) * offset_scale
    ys = p0_y[None, :, None, None, None] + (j * dh + offset[..., 1]) * offset_scale
    planes = x_in.reshape(n, h, w, g, c).transpose(0, 3, 4, 1, 2).reshape(n * g, c, h, w)
    # (N, Ho, Wo, G, K) -> (N * G, Ho * Wo, K), the planes' order
    ys = ys.transpose(0, 3, 1, 2, 4).reshape(n * g, ho * wo, k)
    xs = xs.transpose(0, 3, 1, 2, 4).reshape(n * g, ho * wo, k)
    samples = bilinear_zero_border(planes, ys, xs)  # (N*G, C, Ho*Wo, K)
    weights = mask.transpose(0, 3, 1, 2, 4).reshape(n * g, 1, ho * wo, k)
    out = np.sum(samples * weights, axis=-1).reshape(n, g, c, ho, wo)
    return out.transpose(0, 3, 4, 1, 2).reshape(n, ho, wo, channels)


@_checked_against("dcnv4", "dcnv3_inputs(packed=True)", "(2, 7, 6, 6)")
def dcnv4(input, offset_mask, kernel_size, stride=1, padding=0, dilation=1, groups=1,
          offset_scale=1.0, remove_center=False):
    """:func:`cudcn.dcnv4` in float64: SPEC.md section 7's DCNv4 packing,
    unpacked and handed to :func:`cudcn.reference.dcnv3`.

    Args:
        input: (N, H, W, G * C), channels last.
        offset_mask: (N, H_out, W_out, D), D >= G * 3K.
        kernel_size, stride, padding, dilation: int or (h, w) pair.
        groups, offset_scale, remove_center: as for :func:`cudcn.dcnv4`.

    Returns:
        (N, H_out, W_out, G * C) float64 array.
    """
    offset_mask = np.asarray(offset_mask, np.float64)
    (kh, kw) = _pair(kernel_size)
    k = kh * kw - (1 if remove_center else 0)
    n, ho, wo, _ = offset_mask.shape
    packed = offset_mask[..., :groups * 3 * k].reshape(n, ho, wo, groups, 3 * k)
    offset = packed[..., :2 * k].reshape(n, ho, wo, groups * 2 * k)
    mask = packed[..., 2 * k:].reshape(n, ho, wo, groups * k)
    return dcnv3(input, offset, mask, kernel_size, stride, padding, dilation, groups,
                 offset_scale, remove_center)
