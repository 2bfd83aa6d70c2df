"""Slow float64 NumPy references, written from the formulas of SPEC.md.

They share no code with the kernels and exist to check them (tests, and
``cudcn check``). Every argument is as for the op of the same name.
"""

import numpy as np


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def bilinear_zero_border(planes, y, x):
    """Sample planes (N, C, H, W) at points y, x (N, Ho, Wo) -> (N, C, Ho, Wo).

    0 when y <= -1, y >= H, x <= -1 or x >= W (and for NaN); otherwise the
    weighted sum of the four integer corners, corners outside reading 0.
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


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """SPEC.md section 1, in float64."""
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
