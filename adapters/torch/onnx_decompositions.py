"""cudcn's RoI pooling, multi-scale deformable attention and DCNv3 / DCNv4
written with plain tensor operations, for ONNX export.

Both of ``torch.onnx.export``'s exporters translate these operations
(arithmetic, Floor, Where, Gather; GridSample for dcnv3 and dcnv4) into
standard ONNX, so a model exported while they run computes what the cudcn
kernels compute (SPEC.md sections 2, 3, 6 and 7): the same sample points in
the same arithmetic order, RoIAlign's clamping rule, the zero-outside rules,
and zeros for an RoI whose batch index is not in [0, N) or whose box is not
finite. The pooling ones need a number of samples per bin fixed at export
time: deform_roi_pool's sampling_ratio > 0 and deform_psroi_pool's
sample_per_part.

They are never used to compute in eager mode: the kernels are faster and use
far less memory (these gather every sample of every bin at once).
"""

import warnings

import torch

from cudcn.dcnv3 import kernel_points


def _accumulation_dtype(dtype):
    """The kernels compute half types in float32 (SPEC.md section 4)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _as(t, dtype):
    """t in dtype, without a graph node when it already is."""
    return t if t.dtype == dtype else t.to(dtype)


def _constant(values, dtype):
    """A constant of the exported graph (index tables, sample steps), built in
    Python so that no node computes it. (The TorchScript tracer warns that
    such tensors become constants: that is the intent.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.tensor(values, dtype=dtype)


def batch_indices(first_column, batch):
    """An RoI's image (SPEC.md section 4): the batch-index column truncated,
    valid only when 0 <= value < N.

    Args:
        first_column: the rois' batch-index column, floating, any shape.
        batch: N, the input's batch size (an int or a symbolic size).

    Returns:
        (index, valid): int64 in [0, N) (0 for an invalid RoI) and bool, of
        first_column's shape.
    """
    valid = (first_column >= 0) & (first_column < batch)  # False for NaN
    return first_column.masked_fill(~valid, 0).to(torch.int64), valid


def roi_boxes(rois, batch, spatial_scale):
    """An RoI's image and its box on the feature map (SPEC.md section 2,
    aligned: scaled corners less half a pixel).

    Args:
        rois: (K, 5, ...) batch index, x1, y1, x2, y2 along dimension 1.
        batch: N.
        spatial_scale: the op's spatial_scale.

    Returns:
        (index, valid, start_x, start_y, roi_w, roi_h), each of shape
        (K, ...); valid is False where the batch index is out of [0, N) or
        the size is not finite.
    """
    index, valid = batch_indices(rois[:, 0], batch)
    start_x = rois[:, 1] * spatial_scale - 0.5
    start_y = rois[:, 2] * spatial_scale - 0.5
    roi_w = rois[:, 3] * spatial_scale - 0.5 - start_x
    roi_h = rois[:, 4] * spatial_scale - 0.5 - start_y
    valid = valid & (roi_w - roi_w == 0) & (roi_h - roi_h == 0)
    return index, valid, start_x, start_y, roi_w, roi_h


def sanitized_rois(rois, batch, output_size, spatial_scale, sampling_ratio):
    """RoIs that RoIAlign may read safely, and which of them pool anything.

    An RoI pools zeros when its batch index is not in [0, N), its size is not
    finite, or (with an adaptive sampling_ratio) its grid would not fit in an
    int, as in the kernel; such an RoI is replaced by a zero box of image 0
    (ONNX Runtime's RoiAlign rejects an out-of-range batch index and would
    read out of bounds at a NaN coordinate), and the caller zeroes its output.

    Args:
        rois: (K, 5) batch index, x1, y1, x2, y2, in the accumulation dtype.
        batch: N.
        output_size: (ph, pw).
        spatial_scale: the op's spatial_scale.
        sampling_ratio: the op's sampling_ratio (<= 0: adaptive).

    Returns:
        (boxes, index, valid): (K, 4) boxes, (K,) int64 batch index, (K,) bool.
    """
    index, valid, _, _, roi_w, roi_h = roi_boxes(rois, batch, spatial_scale)
    if sampling_ratio <= 0:
        limit = 2147483647.0
        valid = valid & (torch.ceil(roi_h / output_size[0]) < limit) \
            & (torch.ceil(roi_w / output_size[1]) < limit)
    boxes = rois[:, 1:5].masked_fill(~valid[:, None], 0)
    return boxes, index.masked_fill(~valid, 0), valid


def _clamped_corners(y, size):
    """RoIAlign's sampling along one axis at points already kept: clamp into
    [0, size-1]; the low and high corners and the weight of the high one."""
    y = y.clamp(0, size - 1)
    low = torch.floor(y)
    high = (low + 1).clamp(max=size - 1)
    return low.to(torch.int64), high.to(torch.int64), y - low


def _bilinear(gather, y, x, keep_y, keep_x, height, width, channels_last):
    """Sum over the kept (y, x) sample pairs of the clamped bilinear value.

    y, keep_y: (..., Sy); x, keep_x: (..., Sx), leading shapes broadcastable.
    gather(row, column) reads the input at the broadcast (..., Sy, Sx)
    positions, with a trailing channel axis when ``channels_last``. Returns
    the sum over (Sy, Sx): (..., C) or (...).
    """
    y = y.masked_fill(~keep_y, 0)  # finite coordinates: no index out of bounds
    x = x.masked_fill(~keep_x, 0)
    y0, y1, ly = _clamped_corners(y, height)
    x0, x1, lx = _clamped_corners(x, width)
    ly, lx = ly[..., :, None], lx[..., None, :]
    hy, hx = 1 - ly, 1 - lx
    y0, y1, x0, x1 = y0[..., :, None], y1[..., :, None], x0[..., None, :], x1[..., None, :]
    keep = keep_y[..., :, None] & keep_x[..., None, :]
    per_value = (lambda t: t[..., None]) if channels_last else (lambda t: t)
    sample = 0
    for row, column, weight in ((y0, x0, hy * hx), (y0, x1, hy * lx), (y1, x0, ly * hx),
                                (y1, x1, ly * lx)):
        sample = sample + per_value(weight) * gather(row, column)
    sample_axes = (keep_y.dim() - 1, keep_y.dim())
    return sample.masked_fill(~per_value(keep), 0).sum(dim=sample_axes)


def deform_roi_pool(input, rois, offset, mask, output_size, spatial_scale, sampling_ratio, gamma):
    """SPEC.md section 2 with a fixed sub-grid (sampling_ratio > 0).

    Args:
        input: (N, C, H, W).
        rois: (K, 5) batch index, x1, y1, x2, y2.
        offset: (K, 2, ph, pw), channel 0 = x, 1 = y, or None.
        mask: (K, 1, ph, pw) or None.
        output_size: (ph, pw); spatial_scale, gamma: floats; sampling_ratio: int > 0.

    Returns:
        (K, C, ph, pw) in input's dtype.
    """
    n, c, height, width = input.shape
    ph, pw = output_size
    grid = sampling_ratio
    acc = _accumulation_dtype(input.dtype)
    box = _as(rois, acc).reshape(-1, 5, 1, 1, 1)  # each coordinate (K, 1, 1, 1)
    index, valid, start_x, start_y, roi_w, roi_h = roi_boxes(box, n, spatial_scale)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    shift_x = shift_y = 0
    if offset is not None:
        offset = _as(offset, acc)[..., None]  # (K, 2, ph, pw, 1)
        shift_x = gamma * roi_w * offset[:, 0]
        shift_y = gamma * roi_h * offset[:, 1]
    bin_row = _constant([[[i]] for i in range(ph)], acc)  # (ph, 1, 1)
    bin_column = _constant([[j] for j in range(pw)], acc)  # (pw, 1)
    steps = _constant([i + 0.5 for i in range(grid)], acc)
    # The kernel's order: start + shift + bin * bin_size, then + (i + 0.5) * bin_size / grid.
    y = start_y + shift_y + bin_row * bin_h + steps * bin_h / grid  # (K, ph, pw|1, grid)
    x = start_x + shift_x + bin_column * bin_w + steps * bin_w / grid  # (K, ph|1, pw, grid)
    keep_y = (y >= -1) & (y <= height)
    keep_x = (x >= -1) & (x <= width)

    rows = _as(input, acc).permute(0, 2, 3, 1).reshape(-1, c)  # (N*H*W, C)
    image = index[..., None]  # (K, 1, 1, 1, 1)

    def gather(row, column):
        at = (image * height + row) * width + column  # (K, ph, pw, grid, grid)
        return rows.index_select(0, at.reshape(-1)).reshape(-1, ph, pw, grid, grid, c)

    total = _bilinear(gather, y, x, keep_y, keep_x, height, width, True)  # (K, ph, pw, C)
    pooled = (total / float(grid * grid)).masked_fill(~valid, 0)
    if mask is not None:
        pooled = _as(mask, acc).reshape(-1, ph, pw, 1) * pooled
    return _as(pooled.permute(0, 3, 1, 2), input.dtype)


def _round_half_away(v):
    """C's round(): halves away from zero; |v| - floor(|v|) is exact, unlike
    floor(|v| + 0.5) just below a half."""
    magnitude = v.abs()
    whole = torch.floor(magnitude)
    rounded = whole + (magnitude - whole >= 0.5).to(v.dtype)
    return torch.where(v < 0, -rounded, rounded)


def _psroi_tables(output_dim, group_size, pooled_size, part_size, num_classes):
    """Per (ctop, i, j), as nested lists of (output_dim, P, P): the input
    channel, and the flat index of its x offset in one RoI's
    (2 * num_classes * part * part) offsets (the y offset is part * part on)."""
    group = [min(i * group_size // pooled_size, group_size - 1) for i in range(pooled_size)]
    part = [i * part_size // pooled_size for i in range(pooled_size)]
    per_class = output_dim // num_classes
    channel = [[[(ctop * group_size + gi) * group_size + gj for gj in group] for gi in group]
               for ctop in range(output_dim)]
    offset_x = [[[(ctop // per_class) * 2 * part_size * part_size + pi * part_size + pj
                  for pj in part] for pi in part] for ctop in range(output_dim)]
    return channel, offset_x


def deform_psroi_pool(input, rois, offset, output_dim, group_size, pooled_size, part_size,
                      sample_per_part, trans_std, spatial_scale):
    """SPEC.md section 3.

    Args:
        input: (N, output_dim * group_size**2, H, W).
        rois: (K, 5) batch index, x1, y1, x2, y2.
        offset: (K, 2 * num_classes, part_size, part_size) or None.
        output_dim, group_size, pooled_size, part_size, sample_per_part: ints;
        trans_std, spatial_scale: floats.

    Returns:
        (K, output_dim, pooled_size, pooled_size) in input's dtype.
    """
    n, channels, height, width = input.shape
    size, samples = pooled_size, sample_per_part
    acc = _accumulation_dtype(input.dtype)
    box = _as(rois, acc).reshape(-1, 5, 1, 1, 1, 1)  # each coordinate (K, 1, 1, 1, 1)
    index, valid = batch_indices(box[:, 0], n)
    start_w = _round_half_away(box[:, 1]) * spatial_scale - 0.5
    start_h = _round_half_away(box[:, 2]) * spatial_scale - 0.5
    roi_w = (_round_half_away(box[:, 3]) + 1) * spatial_scale - 0.5 - start_w
    roi_h = (_round_half_away(box[:, 4]) + 1) * spatial_scale - 0.5 - start_h
    roi_w = roi_w.masked_fill(~(roi_w > 0.1), 0.1)  # NaN becomes 0.1 too, as in the kernel
    roi_h = roi_h.masked_fill(~(roi_h > 0.1), 0.1)
    bin_w, bin_h = roi_w / size, roi_h / size
    sub_w, sub_h = bin_w / samples, bin_h / samples
    num_classes = 1 if offset is None else offset.shape[1] // 2
    channel, offset_x = _psroi_tables(output_dim, group_size, size, part_size, num_classes)
    trans_x = trans_y = _constant(0.0, acc)
    if offset is not None:
        cells = _as(offset, acc).flatten(1)  # reshape(k, -1) fails at K = 0
        at = _constant(offset_x, torch.int64).reshape(-1)
        plane = part_size * part_size
        trans_x = cells.index_select(1, at).reshape(-1, output_dim, size, size, 1) * trans_std
        trans_y = cells.index_select(1, at + plane).reshape(-1, output_dim, size, size,
                                                            1) * trans_std
    bin_column = _constant([[j] for j in range(size)], acc)  # (P, 1)
    bin_row = _constant([[[i]] for i in range(size)], acc)  # (P, 1, 1)
    steps = _constant([float(i) for i in range(samples)], acc)
    # The kernel's order: bin * bin_size + start + trans * roi_size (trans is 0 without
    # offset), then + i * sub.
    w = bin_column * bin_w + start_w + trans_x * roi_w + steps * sub_w  # (K, D|1, P|1, P, S)
    h = bin_row * bin_h + start_h + trans_y * roi_h + steps * sub_h
    keep_h = (h >= -0.5) & (h <= height - 0.5)
    keep_w = (w >= -0.5) & (w <= width - 0.5)
    kept = keep_h.sum(-1, dtype=acc) * keep_w.sum(-1, dtype=acc)  # (K, D|1, P, P)

    flat = _as(input, acc).reshape(-1)
    plane = (index[..., 0] * channels + _constant(channel, torch.int64))[..., None, None]

    def gather(row, column):  # plane: (K, D, P, P, 1, 1)
        at = (plane * height + row) * width + column  # (K, D, P, P, S, S)
        return flat.index_select(0, at.reshape(-1)).reshape(-1, output_dim, size, size,
                                                               samples, samples)

    total = _bilinear(gather, h, w, keep_h, keep_w, height, width, False)  # (K, D, P, P)
    pooled = (total / kept.clamp(min=1)).masked_fill(~valid[..., 0], 0)  # 0 when none kept
    return _as(pooled, input.dtype)


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights, points_per_level):
    """Multi-scale deformable attention (SPEC.md section 6) with Gather and
    arithmetic: each point's four corners are rows of ``value`` found from
    ``spatial_shapes`` and ``level_start_index`` as tensors, so that the
    exported graph takes any level sizes, batch and query count (a per-level
    GridSample would fix the level sizes at export). A point outside the
    open window, or NaN, adds nothing; so does a corner outside its map.

    Args: as :func:`cudcn.ms_deform_attn` takes them (``points_per_level``
    None or a list of ints).

    Returns:
        (N, Lq, M * D) in value's dtype (computed in float32 for half types).
    """
    n, s, heads, channels = value.shape
    queries = sampling_locations.shape[1]
    acc = _accumulation_dtype(value.dtype)
    if points_per_level is None:
        levels, per = sampling_locations.shape[3], sampling_locations.shape[4]
        points_per_level = [per] * levels
    level_of_point = _constant([lvl for lvl, count in enumerate(points_per_level)
                                for _ in range(count)], torch.int64)
    points = int(level_of_point.shape[0])
    loc = _as(sampling_locations, acc).reshape(n, queries, heads, points, 2)
    weights = _as(attention_weights, acc).reshape(n, queries, heads, points)
    shapes = spatial_shapes.to(torch.int64).index_select(0, level_of_point)  # (P, 2)
    height, width = shapes[:, 0], shapes[:, 1]
    starts = level_start_index.to(torch.int64).index_select(0, level_of_point)
    x = loc[..., 0] * _as(width, acc) - 0.5  # (N, Lq, M, P)
    y = loc[..., 1] * _as(height, acc) - 0.5
    inside = (y > -1) & (y < _as(height, acc)) & (x > -1) & (x < _as(width, acc))  # NaN: False
    x = torch.where(inside, x, torch.zeros_like(x))
    y = torch.where(inside, y, torch.zeros_like(y))
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.to(torch.int64), y0.to(torch.int64)
    # Row (n * S + row) * M + m of value seen as (N * S * M, D).
    batch = torch.arange(n, dtype=torch.int64).reshape(-1, 1, 1, 1)
    head = _constant(list(range(heads)), torch.int64).reshape(1, 1, -1, 1)
    rows = value.reshape(-1, channels)
    out = None
    for dy in (0, 1):
        for dx in (0, 1):
            cy, cx = y0 + dy, x0 + dx
            valid = inside & (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)
            corner = (fy if dy else 1 - fy) * (fx if dx else 1 - fx)
            scale = torch.where(valid, corner * weights, torch.zeros_like(corner))
            at = starts + torch.minimum(torch.maximum(cy, torch.zeros_like(cy)), height - 1) \
                * width + torch.minimum(torch.maximum(cx, torch.zeros_like(cx)), width - 1)
            index = (batch * s + at) * heads + head  # (N, Lq, M, P)
            picked = _as(rows.index_select(0, index.reshape(-1)), acc).reshape(
                n, queries, heads, points, channels)
            term = (picked * scale.unsqueeze(-1)).sum(3)  # (N, Lq, M, D)
            out = term if out is None else out + term
    return _as(out.reshape(n, queries, heads * channels), value.dtype)


def _dcnv3_taps(kernel_h, kernel_w, dil_h, dil_w, remove_center):
    """Each kernel point's distance in pixels from the window's first point,
    as two lists (x of each, y of each), in SPEC.md section 7's point order:
    x-outer, y-inner, the centre skipped on request."""
    points = kernel_points(kernel_h, kernel_w, remove_center)
    return [i * dil_w for i, _ in points], [j * dil_h for _, j in points]


# Where GridSample is sent for a point outside the window: with
# align_corners=False, -3 is pixel -W - 0.5 (likewise rows), whose corners
# are both left of the map, so nothing is read. ONNX Runtime's GridSample
# (1.32) reads pixels of the map at NaN, inf and huge coordinates (an inf
# there would make the zero weight's product NaN), hence this Where too.
_OUTSIDE_GRID = -3.0


def _dcnv3_sample(input, offset, mask, out_size, kernel_size, stride, padding, dilation,
                  groups, offset_scale, remove_center):
    """SPEC.md section 7 with one GridSample (bilinear, zeros padding,
    align_corners=False) over the unpadded input.

    Sampling the unpadded map at ``p0 - pad`` is what sampling the padded map
    at p0 computes (the padding is zeros, as GridSample's border), without a
    Pad node. Pixel p of GridSample with align_corners=False covers
    [p - 0.5, p + 0.5], so location x is grid ``(2x + 1) / W - 1``, and its
    zeros padding reads a point as 0 exactly when it is outside
    -1 < x < W, -1 < y < H: SPEC's window. A point outside the window, NaN
    or infinite included, is sent to a grid value that reads nothing and
    weighted 0, so its mask (even inf or NaN) adds nothing either.

    Args:
        input: (N, H, W, G * C) in the accumulation dtype.
        offset: (N, H_out, W_out, G, K, 2) (dx, dy) pairs, accumulation dtype.
        mask: (N, H_out, W_out, G, K), accumulation dtype.
        out_size: (H_out, W_out), read from a 4-d argument's shape: the
            TorchScript exporter loses track of sizes read after an
            unflatten and would write them as constants.
        kernel_size, stride, padding, dilation: (h, w) pairs.
        groups: G; offset_scale: float; remove_center: bool.

    Returns:
        (N, H_out, W_out, G * C) in the accumulation dtype.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    batch, height, width, channels = input.shape
    out_h, out_w = out_size
    acc = input.dtype
    half_h, half_w = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    tap_x, tap_y = _dcnv3_taps(kh, kw, dh, dw, remove_center)
    # The reference's arithmetic order: (half - pad + o * stride) - half * s, then
    # + (tap + d) * s, so that float64 results agree to rounding.
    p0_x = torch.arange(out_w, dtype=acc) * sw + (half_w - pw) - half_w * offset_scale
    p0_y = torch.arange(out_h, dtype=acc) * sh + (half_h - ph) - half_h * offset_scale
    step_x = _constant(tap_x, acc) + offset[..., 0]  # (N, H_out, W_out, G, K)
    step_y = _constant(tap_y, acc) + offset[..., 1]
    if offset_scale != 1:
        step_x, step_y = step_x * offset_scale, step_y * offset_scale
    x = p0_x.reshape(-1, 1, 1) + step_x
    y = p0_y.reshape(-1, 1, 1, 1) + step_y
    inside = (x > -1) & (x < width) & (y > -1) & (y < height)  # False for NaN
    grid = torch.stack([(2 * x + 1) / width - 1, (2 * y + 1) / height - 1], dim=-1)
    grid = torch.where(inside.unsqueeze(-1), grid, _constant(_OUTSIDE_GRID, acc))
    weights = torch.where(inside, mask, _constant(0.0, acc))

    # One plane per (image, group): (N * G, C, H, W), sampled at the group's
    # (H_out * W_out, K) points. Every size is spelt out, none -1: ONNX's
    # Reshape cannot infer a -1 among sizes whose product is 0, so the
    # dynamo exporter's graph takes N = 0. (The TorchScript exporter writes
    # its own -1 and 0 into every Reshape of dynamic sizes: its graphs do not.)
    points, group_channels = len(tap_x), channels // groups
    planes = input.reshape(batch, height, width, groups, group_channels).permute(0, 3, 4, 1, 2)
    planes = planes.reshape(batch * groups, group_channels, height, width)
    grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(batch * groups, out_h * out_w, points, 2)
    samples = torch.nn.functional.grid_sample(planes, grid, mode="bilinear",
                                              padding_mode="zeros", align_corners=False)
    weights = weights.permute(0, 3, 1, 2, 4).reshape(batch * groups, 1, out_h * out_w, points)
    out = (samples * weights).sum(-1)  # (N * G, C, H_out * W_out)
    return out.reshape(batch, channels, out_h, out_w).permute(0, 2, 3, 1)


def _example_size(size):
    """A size of the example being exported as an int, or None when it is a
    dynamic dimension of torch.export's (a SymInt, whose value checks would
    turn into guards). The TorchScript tracer's sizes are 0-d tensors;
    reading their example value adds nothing to the trace."""
    if isinstance(size, torch.Tensor):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return int(size)
    return size if isinstance(size, int) else None


def _dcnv3_points(input, out_size, kernel_size, stride, padding, dilation, groups,
                  remove_center):
    """K, after the checks of cudcn.dcnv3 that export would otherwise skip
    (the kernels make them in eager mode; the traced graph would compute
    garbage or fail with a less helpful message), on the example's sizes
    where the exporter knows them.

    Args:
        input: (N, H, W, G * C); out_size: the offsets' (H_out, W_out);
        the rest the op's arguments.
    """
    kh, kw = kernel_size
    if remove_center and (kh != kw or kh % 2 == 0 or kh < 3):
        raise ValueError(f"remove_center needs an odd square kernel of at least 3 x 3, got "
                         f"kernel_size {(kh, kw)}")
    _, height, width, channels = (_example_size(size) for size in input.shape)
    out_size = tuple(_example_size(size) for size in out_size)
    if channels is not None and channels % groups:
        raise ValueError(f"input has {channels} channels, which groups = {groups} does not "
                         "divide")
    if None not in (height, width, *out_size):
        expected = tuple((size + 2 * pad - (dil * (k - 1) + 1)) // step + 1 for size, pad, dil, k,
                         step in zip((height, width), padding, dilation, kernel_size, stride))
        if out_size != expected:
            raise ValueError(f"the offsets are given on a {out_size} grid but input "
                             f"{(height, width)} with kernel {tuple(kernel_size)}, stride "
                             f"{tuple(stride)}, padding {tuple(padding)} and dilation "
                             f"{tuple(dilation)} gives a {expected} output")
    return kh * kw - (1 if remove_center else 0)


def dcnv3(input, offset, mask, kernel_size, stride, padding, dilation, groups, offset_scale,
          remove_center):
    """DCNv3's core (SPEC.md section 7) with GridSample and arithmetic.

    Args:
        input: (N, H, W, G * C).
        offset: (N, H_out, W_out, G * K * 2), per group K (dx, dy) pairs.
        mask: (N, H_out, W_out, G * K).
        kernel_size, stride, padding, dilation: (h, w) pairs of ints.
        groups: G; offset_scale: float; remove_center: bool.

    Returns:
        (N, H_out, W_out, G * C) in input's dtype (computed in float32 for
        half types). H_out and W_out are the offsets' (the kernels require
        them to be the geometry's); the batch and all spatial sizes may be
        dynamic.
    """
    points = _dcnv3_points(input, offset.shape[1:3], kernel_size, stride, padding, dilation,
                           groups, remove_center)
    for name, tensor, per_group in (("offset", offset, 2 * points), ("mask", mask, points)):
        size = _example_size(tensor.shape[-1])
        if size is not None and size != groups * per_group:
            raise ValueError(f"{name} has {size} channels, groups * {per_group} = "
                             f"{groups * per_group} expected")
    acc = _accumulation_dtype(input.dtype)
    out = _dcnv3_sample(_as(input, acc), _as(offset, acc).unflatten(-1, (groups, points, 2)),
                        _as(mask, acc).unflatten(-1, (groups, points)), offset.shape[1:3],
                        kernel_size, stride, padding, dilation, groups, offset_scale,
                        remove_center)
    return _as(out, input.dtype)


def dcnv4(input, offset_mask, kernel_size, stride, padding, dilation, groups, offset_scale,
          remove_center):
    """DCNv4's core: ``dcnv3`` (this module's) on the offsets and mask of DCNv4's packing.

    Args:
        input: (N, H, W, G * C).
        offset_mask: (N, H_out, W_out, D), D >= G * 3K: per group the K
            (dx, dy) pairs then the K mask values; the rest is ignored.
        The others as for ``dcnv3``.

    Returns:
        (N, H_out, W_out, G * C) in input's dtype.
    """
    points = _dcnv3_points(input, offset_mask.shape[1:3], kernel_size, stride, padding,
                           dilation, groups, remove_center)
    width = _example_size(offset_mask.shape[-1])
    if width is not None and width < groups * 3 * points:
        raise ValueError(f"offset_mask has {width} channels but groups * 3K = {groups} * 3 * "
                         f"{points} = {groups * 3 * points} are needed")
    acc = _accumulation_dtype(input.dtype)
    packed = _as(offset_mask[..., :groups * 3 * points], acc).unflatten(-1, (groups, 3 * points))
    offset = packed[..., :2 * points].unflatten(-1, (points, 2))  # (N, Ho, Wo, G, K, 2)
    mask = packed[..., 2 * points:]  # (N, Ho, Wo, G, K)
    out = _dcnv3_sample(_as(input, acc), offset, mask, offset_mask.shape[1:3], kernel_size,
                        stride, padding, dilation, groups, offset_scale, remove_center)
    return _as(out, input.dtype)
