"""The inputs every benchmark times, built by cudcn's shared builders
(``cudcn.testing``), so that the NumPy API, the torch adapter and the peers
see the same numbers.

deform_conv2d: 3x3, padding 1, with mask and bias, C_in = C_out, at the
shapes of issue 12 (ResNet stages). RoI pooling: 512 RoIs on a stride-16 map
of an 800x1088 image, mmcv's and R-FCN's settings. Multi-scale deformable
attention: a 512x512 Deformable DETR's encoder and decoder.
"""

import numpy as np

# name -> (batch, channels, size); the names are the asv parameter values.
SHAPES = {
    "N2-C64-56": (2, 64, 56),
    "N4-C256-14": (4, 256, 14),
    "N1-C128-28": (1, 128, 28),
    "N8-C256-28": (8, 256, 28),
}
# The shape a quick history run measures (issue 12's headline shape).
QUICK_SHAPE = "N2-C64-56"

FEATURE_MAP = (2, 256, 50, 68)  # (batch, channels, H, W): 800x1088 at stride 16
ROIS = 512
SPATIAL_SCALE = 1 / 16
OUTPUT_SIZE = 7
SAMPLING_RATIO = 2
# deform_roi_pool without offset is RoIAlign (aligned); mmcv's DCN-RoI adds
# offsets, its modulated variant a mask.
ROI_VARIANTS = ("no-offset", "offset", "offset-mask")

PS_CLASSES = 21  # R-FCN on VOC: 21 x 7 x 7 score maps
PS_SAMPLES = 4  # per part and axis: 4 x 4 samples per bin

# Multi-scale deformable attention: Deformable DETR at a 512x512 image (the
# levels of strides 8 to 64), 8 heads of 32 channels, 4 points a level; the
# encoder's queries are every level's pixels, the decoder's 300 objects.
MSDA_LEVELS = ((64, 64), (32, 32), (16, 16), (8, 8))
MSDA_QUERIES = {"encoder": 5440, "decoder": 300}

# DCNv3 at InternImage-T's stages: batch 2, (H = W, channels, groups of 16
# channels), 3x3, padding 1.
DCNV3_STAGES = {"56-C64-G4": (56, 64, 4), "28-C128-G8": (28, 128, 8),
                "14-C256-G16": (14, 256, 16)}


def _build(builder, **kwargs):
    """Call cudcn.testing.<builder>; a build whose builders predate these
    arguments is skipped, not failed."""
    try:
        from cudcn import testing

        function = getattr(testing, builder)
    except (ImportError, AttributeError):
        raise NotImplementedError(f"this build has no cudcn.testing.{builder}") from None
    try:
        return function(**kwargs)
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        raise NotImplementedError(f"this build's {builder}: {exc}") from None


def deform_conv2d_args(shape, dtype, xp=np):
    """Keyword arguments of deform_conv2d for SHAPES[shape]."""
    batch, channels, size = SHAPES[shape]
    return _build("deform_conv2d_inputs", batch=batch, in_channels=channels,
                  out_channels=channels, size=size, dtype=dtype, offset_scale=1.0, xp=xp)


def deform_roi_pool_args(variant, dtype, xp=np):
    """Keyword arguments of deform_roi_pool for one of ROI_VARIANTS."""
    batch, channels, height, width = FEATURE_MAP
    return _build("deform_roi_pool_inputs", batch=batch, channels=channels,
                  size=(height, width), rois=ROIS, output_size=OUTPUT_SIZE,
                  spatial_scale=SPATIAL_SCALE, sampling_ratio=SAMPLING_RATIO,
                  offset=variant != "no-offset", mask=variant == "offset-mask", dtype=dtype,
                  xp=xp)


def deform_psroi_pool_args(dtype, xp=np, offset=True):
    """Keyword arguments of deform_psroi_pool: R-FCN's position-sensitive pooling."""
    batch, _, height, width = FEATURE_MAP
    return _build("deform_psroi_pool_inputs", batch=batch, output_dim=PS_CLASSES,
                  group_size=OUTPUT_SIZE, pooled_size=OUTPUT_SIZE, num_classes=1,
                  size=(height, width), rois=ROIS, spatial_scale=SPATIAL_SCALE,
                  sample_per_part=PS_SAMPLES, trans_std=0.1 if offset else 0.0, offset=offset,
                  dtype=dtype, xp=xp)


def ms_deform_attn_args(queries, dtype, xp=np):
    """Keyword arguments of ms_deform_attn for MSDA_QUERIES[queries]."""
    return _build("ms_deform_attn_inputs", batch=1, queries=MSDA_QUERIES[queries], heads=8,
                  channels=32, shapes=MSDA_LEVELS, points=4, dtype=dtype, xp=xp)


def dcnv3_args(stage, dtype, xp=np):
    """Keyword arguments of dcnv3 for DCNV3_STAGES[stage]."""
    size, channels, groups = DCNV3_STAGES[stage]
    return _build("dcnv3_inputs", batch=2, size=(size, size), groups=groups,
                  group_channels=channels // groups, dtype=dtype, xp=xp)
