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
