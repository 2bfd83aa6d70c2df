"""Every kernel cudcn launches: its source file and exact C++ signature.

The signature is written once, here. The launch description converts each
argument to exactly the type listed; the CPU executor's generated wrapper
assigns the kernel to a function pointer of this signature, so a table that
drifts from the ``.cu`` file fails to compile instead of passing a wrong type.

In parameter types, ``T`` is the storage scalar, ``A`` its accumulation type
and ``I`` the index type of the instantiation.
"""

import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True)
class Kernel:
    name: str  # qualified C++ name of the template
    source: str  # file in raw_kernels/
    params: tuple  # ((name, C type with T/A/I placeholders), ...)

    @functools.cached_property
    def param_names(self):
        return tuple(name for name, _ in self.params)

    @functools.cached_property
    def items_at(self):
        """The position of n, the work items every kernel loops over."""
        return self.param_names.index("n")


@dataclasses.dataclass(frozen=True)
class ScalarType:
    dtype_name: str
    c_name: str
    acc_dtype_name: str
    acc_c_name: str


SCALAR_TYPES = {
    "float32": ScalarType("float32", "float", "float32", "float"),
    "float64": ScalarType("float64", "double", "float64", "double"),
    "float16": ScalarType("float16", "__half", "float32", "float"),
    "bfloat16": ScalarType("bfloat16", "__nv_bfloat16", "float32", "float"),
}


@functools.lru_cache(maxsize=None)
def scalar_type(dtype):
    """The ScalarType of a dtype (or anything np.dtype takes): looked up once
    per dtype, since NumPy computes ``dtype.name`` in Python on every read."""
    return SCALAR_TYPES[np.dtype(dtype).name]


# Both backends run the same instantiations: the CPU shim has the 16-bit types.
GPU_DTYPES = ("float32", "float64", "float16", "bfloat16")
CPU_DTYPES = GPU_DTYPES
INDEX_TYPES = ("int", "long long")
INDEX_DTYPES = {"int": np.dtype(np.int32), "long long": np.dtype(np.int64)}

_DEFORM_CONV_GEOMETRY = tuple(
    (name, "int")
    for name in (
        "channels", "height", "width", "kernel_h", "kernel_w", "stride_h", "stride_w",
        "pad_h", "pad_w", "dil_h", "dil_w", "offset_groups", "out_h", "out_w",
    )
)

DEFORM_CONV2D_IM2COL = Kernel(
    "cudcn::deform_conv2d_im2col",
    "deform_conv2d.cu",
    (("input", "const T*"), ("offset", "const T*"), ("mask", "const T*"), ("columns", "T*"),
     ("n", "I"), ("use_mask", "int"), ("channel_block", "int")) + _DEFORM_CONV_GEOMETRY,
)
DEFORM_CONV2D_COL2IM = Kernel(
    "cudcn::deform_conv2d_col2im",
    "deform_conv2d.cu",
    (("grad_columns", "const T*"), ("offset", "const T*"), ("mask", "const T*"),
     ("grad_input", "A*"), ("n", "I"), ("use_mask", "int"), ("channel_block", "int"))
    + _DEFORM_CONV_GEOMETRY,
)
DEFORM_CONV2D_COORD_PARTIAL = Kernel(
    "cudcn::deform_conv2d_coord_partial",
    "deform_conv2d.cu",
    (("grad_columns", "const T*"), ("input", "const T*"), ("offset", "const T*"),
     ("partials", "A*"), ("n", "I"), ("channel_block", "int")) + _DEFORM_CONV_GEOMETRY,
)
DEFORM_CONV2D_COORD_REDUCE = Kernel(
    "cudcn::deform_conv2d_coord_reduce",
    "deform_conv2d.cu",
    (("partials", "const A*"), ("mask", "const T*"), ("grad_offset", "T*"), ("grad_mask", "T*"),
     ("n", "I"), ("items", "I"), ("blocks", "int"), ("use_mask", "int"))
    + _DEFORM_CONV_GEOMETRY,
)
DEFORM_CONV2D_SCATTER_ENTRIES = Kernel(
    "cudcn::deform_conv2d_scatter_entries",
    "deform_conv2d.cu",
    (("offset", "const T*"), ("mask", "const T*"), ("keys", "I*"), ("sources", "I*"),
     ("weights", "A*"), ("n", "I"), ("use_mask", "int")) + _DEFORM_CONV_GEOMETRY,
)

DEFORM_CONV2D_CORNERS = Kernel(
    "cudcn::deform_conv2d_corners",
    "deform_conv2d.cu",
    (("offset", "const T*"), ("corner_base", "I*"), ("corner_weight", "A*"), ("n", "I"))
    + _DEFORM_CONV_GEOMETRY,
)
DEFORM_CONV2D_FILL_PIXELS = Kernel(
    "cudcn::deform_conv2d_fill_pixels",
    "deform_conv2d.cu",
    (("input", "const T*"), ("padded_pixels", "T*"), ("n", "I"), ("channels_last", "int"))
    + _DEFORM_CONV_GEOMETRY,
)
DEFORM_CONV2D_IM2COL_PIXELS = Kernel(
    "cudcn::deform_conv2d_im2col_pixels",
    "deform_conv2d.cu",
    (("padded_pixels", "const T*"), ("offset", "const T*"), ("mask", "const T*"),
     ("columns_t", "T*"), ("n", "I"), ("use_mask", "int"), ("conv_group_channels", "int"))
    + _DEFORM_CONV_GEOMETRY,
)
DEFORM_CONV2D_WEIGHT_FOR_PIXELS = Kernel(
    "cudcn::deform_conv2d_weight_for_pixels",
    "deform_conv2d.cu",
    (("weight", "const T*"), ("weight_t", "A*"), ("n", "I"), ("group_out_channels", "int"),
     ("group_channels", "int"), ("kernel_points", "int")),
)
DEFORM_CONV2D_WEIGHT_ROWS_FOR_PIXELS = Kernel(
    "cudcn::deform_conv2d_weight_rows_for_pixels",
    "deform_conv2d.cu",
    (("weight", "const T*"), ("weight_rows", "A*"), ("n", "I"), ("group_channels", "int"),
     ("kernel_points", "int")),
)
DEFORM_CONV2D_WEIGHT_FROM_PIXEL_ROWS = Kernel(
    "cudcn::deform_conv2d_weight_from_pixel_rows",
    "deform_conv2d.cu",
    (("weight_rows", "const A*"), ("weight", "T*"), ("n", "I"), ("group_channels", "int"),
     ("kernel_points", "int")),
)
DEFORM_CONV2D_OUTPUT_FROM_PIXELS = Kernel(
    "cudcn::deform_conv2d_output_from_pixels",
    "deform_conv2d.cu",
    (("product", "const A*"), ("bias", "const T*"), ("output", "T*"), ("n", "I"),
     ("use_bias", "int"), ("groups", "int"), ("group_out_channels", "int"), ("pixels", "I")),
)
DEFORM_CONV2D_COL2IM_PIXELS = Kernel(
    "cudcn::deform_conv2d_col2im_pixels",
    "deform_conv2d.cu",
    (("grad_columns_t", "const T*"), ("mask", "const T*"), ("corner_base", "const I*"),
     ("corner_weight", "const A*"), ("padded_grad_pixels", "A*"), ("grad_input", "A*"),
     ("n", "I"), ("use_mask", "int"), ("conv_group_channels", "int"), ("channels_last", "int"))
    + _DEFORM_CONV_GEOMETRY,
)
DEFORM_CONV2D_COL2IM_COORD_PIXELS = Kernel(
    "cudcn::deform_conv2d_col2im_coord_pixels",
    "deform_conv2d.cu",
    (("grad_columns_t", "const T*"), ("padded_pixels", "const T*"), ("mask", "const T*"),
     ("corner_base", "const I*"), ("corner_weight", "const A*"), ("grad_offset", "T*"),
     ("grad_mask", "T*"), ("n", "I"), ("use_mask", "int"), ("want_grad_mask", "int"),
     ("conv_group_channels", "int")) + _DEFORM_CONV_GEOMETRY,
)
DEFORM_CONV2D_WIDEN = Kernel(
    "cudcn::deform_conv2d_widen",
    "deform_conv2d.cu",
    (("source", "const T*"), ("dest", "A*"), ("n", "I"), ("count", "I"), ("run", "int")),
)
DEFORM_CONV2D_NARROW = Kernel(
    "cudcn::deform_conv2d_narrow",
    "deform_conv2d.cu",
    (("source", "const A*"), ("dest", "T*"), ("n", "I"), ("count", "I"), ("run", "int")),
)
# The plane kernels' constants in the .cu: items per coordinate thread
# (kCoordBlock), channels per scatter thread (kPixelChannels); padded planes
# and pixels are (H + 3) x (W + 3).
COORD_BLOCK = 64
PIXEL_CHANNELS = 16
PLANE_PADDING = 3
# Pixels and channels per thread of the forward's transposes (kOutputTile).
OUTPUT_TILE = 16

_ROI_POOL_GEOMETRY = tuple(
    (name, "int")
    for name in ("batch", "channels", "height", "width", "pooled_h", "pooled_w", "sampling_ratio")
)
_ROI_POOL_SCALARS = (("spatial_scale", "A"), ("gamma", "A"))

DEFORM_ROI_POOL_FORWARD = Kernel(
    "cudcn::deform_roi_pool_forward",
    "deform_roi_pool.cu",
    (("input", "const T*"), ("rois", "const A*"), ("offset", "const T*"), ("mask", "const T*"),
     ("output", "T*"), ("n", "I"), ("use_offset", "int"), ("use_mask", "int"))
    + _ROI_POOL_SCALARS + _ROI_POOL_GEOMETRY,
)
DEFORM_ROI_POOL_FILL_PIXELS = Kernel(
    "cudcn::deform_roi_pool_fill_pixels",
    "deform_roi_pool.cu",
    (("input", "const T*"), ("pixels", "T*"), ("n", "I")) + _ROI_POOL_GEOMETRY,
)
DEFORM_ROI_POOL_FORWARD_PIXELS = Kernel(
    "cudcn::deform_roi_pool_forward_pixels",
    "deform_roi_pool.cu",
    (("pixels", "const T*"), ("rois", "const A*"), ("offset", "const T*"), ("mask", "const T*"),
     ("output", "T*"), ("n", "I"), ("use_offset", "int"), ("use_mask", "int"))
    + _ROI_POOL_SCALARS + _ROI_POOL_GEOMETRY,
)
# Channels per thread of the CPU's RoI forward (kPixelChannels in the .cu).
ROI_PIXEL_CHANNELS = 128
# Channels per thread of the CPU's RoI grad-input (kRoIChannels in the .cu).
ROI_CHANNELS = 16
DEFORM_ROI_POOL_BACKWARD_INPUT = Kernel(
    "cudcn::deform_roi_pool_backward_input",
    "deform_roi_pool.cu",
    (("grad_output", "const T*"), ("rois", "const A*"), ("offset", "const T*"),
     ("mask", "const T*"), ("grad_input", "A*"), ("n", "I"), ("use_offset", "int"),
     ("use_mask", "int")) + _ROI_POOL_SCALARS + _ROI_POOL_GEOMETRY,
)
DEFORM_ROI_POOL_BACKWARD_INPUT_PLANES = Kernel(
    "cudcn::deform_roi_pool_backward_input_planes",
    "deform_roi_pool.cu",
    (("grad_output", "const T*"), ("rois", "const A*"), ("offset", "const T*"),
     ("mask", "const T*"), ("grad_input", "A*"), ("n", "I"), ("num_rois", "int"),
     ("use_offset", "int"), ("use_mask", "int")) + _ROI_POOL_SCALARS + _ROI_POOL_GEOMETRY,
)
DEFORM_ROI_POOL_SCATTER_ENTRIES = Kernel(
    "cudcn::deform_roi_pool_scatter_entries",
    "deform_roi_pool.cu",
    (("rois", "const A*"), ("offset", "const T*"), ("mask", "const T*"), ("entry_first", "I*"),
     ("keys", "I*"), ("sources", "I*"), ("weights", "A*"), ("n", "I"), ("fill", "int"),
     ("use_offset", "int"), ("use_mask", "int")) + _ROI_POOL_SCALARS + _ROI_POOL_GEOMETRY,
)
DEFORM_ROI_POOL_BACKWARD_OFFSET_PARTIAL = Kernel(
    "cudcn::deform_roi_pool_backward_offset_partial",
    "deform_roi_pool.cu",
    (("grad_output", "const T*"), ("input", "const T*"), ("rois", "const A*"),
     ("offset", "const T*"), ("partials", "A*"), ("n", "I"), ("use_offset", "int"),
     ("channel_block", "int")) + _ROI_POOL_SCALARS + _ROI_POOL_GEOMETRY,
)
DEFORM_ROI_POOL_BACKWARD_OFFSET_PARTIAL_PLANES = Kernel(
    "cudcn::deform_roi_pool_backward_offset_partial_planes",
    "deform_roi_pool.cu",
    DEFORM_ROI_POOL_BACKWARD_OFFSET_PARTIAL.params,
)
DEFORM_ROI_POOL_BACKWARD_OFFSET_REDUCE = Kernel(
    "cudcn::deform_roi_pool_backward_offset_reduce",
    "deform_roi_pool.cu",
    (("partials", "const A*"), ("rois", "const A*"), ("offset", "const T*"),
     ("mask", "const T*"), ("grad_offset", "T*"), ("grad_mask", "T*"), ("n", "I"),
     ("blocks", "int"), ("use_offset", "int"), ("use_mask", "int"), ("want_grad_offset", "int"),
     ("want_grad_mask", "int")) + _ROI_POOL_SCALARS + _ROI_POOL_GEOMETRY,
)

_PSROI_POOL_GEOMETRY = tuple(
    (name, "int")
    for name in ("batch", "channels", "height", "width", "output_dim", "group_size",
                 "pooled_size", "part_size", "sample_per_part", "num_classes")
)
_PSROI_POOL_SCALARS = (("spatial_scale", "A"), ("trans_std", "A"))

DEFORM_PSROI_POOL_FORWARD = Kernel(
    "cudcn::deform_psroi_pool_forward",
    "deform_psroi_pool.cu",
    (("input", "const T*"), ("rois", "const A*"), ("offset", "const T*"), ("output", "T*"),
     ("n", "I"), ("use_offset", "int")) + _PSROI_POOL_SCALARS + _PSROI_POOL_GEOMETRY,
)
DEFORM_PSROI_POOL_BACKWARD_INPUT = Kernel(
    "cudcn::deform_psroi_pool_backward_input",
    "deform_psroi_pool.cu",
    (("grad_output", "const T*"), ("rois", "const A*"), ("offset", "const T*"),
     ("grad_input", "A*"), ("n", "I"), ("use_offset", "int"))
    + _PSROI_POOL_SCALARS + _PSROI_POOL_GEOMETRY,
)
DEFORM_PSROI_POOL_BACKWARD_INPUT_PLANES = Kernel(
    "cudcn::deform_psroi_pool_backward_input_planes",
    "deform_psroi_pool.cu",
    (("grad_output", "const T*"), ("rois", "const A*"), ("offset", "const T*"),
     ("grad_input", "A*"), ("n", "I"), ("num_rois", "int"), ("use_offset", "int"))
    + _PSROI_POOL_SCALARS + _PSROI_POOL_GEOMETRY,
)
DEFORM_PSROI_POOL_SCATTER_ENTRIES = Kernel(
    "cudcn::deform_psroi_pool_scatter_entries",
    "deform_psroi_pool.cu",
    (("rois", "const A*"), ("offset", "const T*"), ("keys", "I*"), ("sources", "I*"),
     ("weights", "A*"), ("n", "I"), ("use_offset", "int"))
    + _PSROI_POOL_SCALARS + _PSROI_POOL_GEOMETRY,
)
DEFORM_PSROI_POOL_BACKWARD_OFFSET_PARTIAL = Kernel(
    "cudcn::deform_psroi_pool_backward_offset_partial",
    "deform_psroi_pool.cu",
    (("grad_output", "const T*"), ("input", "const T*"), ("rois", "const A*"),
     ("offset", "const T*"), ("partials", "A*"), ("n", "I"))
    + _PSROI_POOL_SCALARS + _PSROI_POOL_GEOMETRY,
)
DEFORM_PSROI_POOL_BACKWARD_OFFSET_REDUCE = Kernel(
    "cudcn::deform_psroi_pool_backward_offset_reduce",
    "deform_psroi_pool.cu",
    (("partials", "const A*"), ("rois", "const A*"), ("offset", "const T*"),
     ("grad_offset", "T*"), ("n", "I"), ("outputs", "I"))
    + _PSROI_POOL_SCALARS + _PSROI_POOL_GEOMETRY,
)

_MS_DEFORM_ATTN_GEOMETRY = tuple(
    (name, "int")
    for name in ("batch", "spatial", "queries", "heads", "channels", "points", "num_levels")
)
_MS_DEFORM_ATTN_SAMPLING = (("levels", "const I*"), ("point_level", "const I*"),
                            ("locations", "const T*"), ("weights", "const T*"))

MS_DEFORM_ATTN_FORWARD = Kernel(
    "cudcn::ms_deform_attn_forward",
    "ms_deform_attn.cu",
    (("value", "const T*"),) + _MS_DEFORM_ATTN_SAMPLING
    + (("output", "T*"), ("n", "I"), ("channel_block", "int")) + _MS_DEFORM_ATTN_GEOMETRY,
)
MS_DEFORM_ATTN_BACKWARD_POINTS_PARTIAL = Kernel(
    "cudcn::ms_deform_attn_backward_points_partial",
    "ms_deform_attn.cu",
    (("grad_output", "const T*"), ("value", "const T*")) + _MS_DEFORM_ATTN_SAMPLING
    + (("partials", "A*"), ("n", "I"), ("channel_block", "int")) + _MS_DEFORM_ATTN_GEOMETRY,
)
MS_DEFORM_ATTN_BACKWARD_POINTS_REDUCE = Kernel(
    "cudcn::ms_deform_attn_backward_points_reduce",
    "ms_deform_attn.cu",
    (("partials", "const A*"),) + _MS_DEFORM_ATTN_SAMPLING
    + (("grad_locations", "T*"), ("grad_weights", "T*"), ("n", "I"), ("blocks", "int"),
       ("run", "int"), ("want_locations", "int"), ("want_weights", "int"))
    + _MS_DEFORM_ATTN_GEOMETRY,
)
MS_DEFORM_ATTN_BACKWARD_VALUE = Kernel(
    "cudcn::ms_deform_attn_backward_value",
    "ms_deform_attn.cu",
    (("grad_output", "const T*"),) + _MS_DEFORM_ATTN_SAMPLING
    + (("grad_value", "A*"), ("n", "I"), ("channel_block", "int")) + _MS_DEFORM_ATTN_GEOMETRY,
)
MS_DEFORM_ATTN_BACKWARD_VALUE_PLANES = Kernel(
    "cudcn::ms_deform_attn_backward_value_planes",
    "ms_deform_attn.cu",
    (("grad_output", "const T*"), ("value", "const T*")) + _MS_DEFORM_ATTN_SAMPLING
    + (("grad_value", "A*"), ("partials", "A*"), ("n", "I"), ("want_points", "int"))
    + _MS_DEFORM_ATTN_GEOMETRY,
)
MS_DEFORM_ATTN_SCATTER_ENTRIES = Kernel(
    "cudcn::ms_deform_attn_scatter_entries",
    "ms_deform_attn.cu",
    _MS_DEFORM_ATTN_SAMPLING + (("keys", "I*"), ("sources", "I*"), ("entry_weights", "A*"),
                                ("n", "I")) + _MS_DEFORM_ATTN_GEOMETRY,
)
# Channels one thread of the CPU's sampling kernels takes side by side (kLanes in
# point_sampling.cuh): also the channel block of the planes' point sums.
SAMPLING_LANES = 16

_DCNV3_GEOMETRY = tuple(
    (name, "int")
    for name in ("batch", "height", "width", "out_h", "out_w", "groups", "group_channels",
                 "kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dil_h",
                 "dil_w", "points", "offset_pixel_stride",
                 "offset_group_stride", "mask_pixel_stride", "mask_group_stride")
) + (("offset_scale", "A"),)
_DCNV3_SAMPLING = (("offset", "const T*"), ("mask", "const T*"), ("point_grid", "const I*"))

DCNV3_FORWARD = Kernel(
    "cudcn::dcnv3_forward",
    "dcnv3.cu",
    (("value", "const T*"),) + _DCNV3_SAMPLING
    + (("output", "T*"), ("n", "I"), ("channel_block", "int")) + _DCNV3_GEOMETRY,
)
DCNV3_BACKWARD_POINTS_PARTIAL = Kernel(
    "cudcn::dcnv3_backward_points_partial",
    "dcnv3.cu",
    (("grad_output", "const T*"), ("value", "const T*")) + _DCNV3_SAMPLING
    + (("partials", "A*"), ("n", "I"), ("channel_block", "int")) + _DCNV3_GEOMETRY,
)
DCNV3_BACKWARD_POINTS_REDUCE = Kernel(
    "cudcn::dcnv3_backward_points_reduce",
    "dcnv3.cu",
    (("partials", "const A*"),) + _DCNV3_SAMPLING
    + (("grad_offset", "T*"), ("grad_mask", "T*"), ("n", "I"), ("blocks", "int"),
       ("run", "int"), ("want_offset", "int"), ("want_mask", "int")) + _DCNV3_GEOMETRY,
)
DCNV3_BACKWARD_VALUE = Kernel(
    "cudcn::dcnv3_backward_value",
    "dcnv3.cu",
    (("grad_output", "const T*"),) + _DCNV3_SAMPLING
    + (("grad_value", "A*"), ("n", "I"), ("channel_block", "int")) + _DCNV3_GEOMETRY,
)
DCNV3_BACKWARD_VALUE_PLANES = Kernel(
    "cudcn::dcnv3_backward_value_planes",
    "dcnv3.cu",
    (("grad_output", "const T*"), ("value", "const T*")) + _DCNV3_SAMPLING
    + (("grad_value", "A*"), ("partials", "A*"), ("n", "I"), ("want_points", "int"))
    + _DCNV3_GEOMETRY,
)
DCNV3_SCATTER_ENTRIES = Kernel(
    "cudcn::dcnv3_scatter_entries",
    "dcnv3.cu",
    _DCNV3_SAMPLING + (("keys", "I*"), ("sources", "I*"), ("entry_weights", "A*"), ("n", "I"))
    + _DCNV3_GEOMETRY,
)

SEGMENTED_SUM_CHUNKS = Kernel(
    "cudcn::segmented_sum_chunks",
    "segmented_sum.cu",
    (("source", "const T*"), ("entry_source", "const I*"), ("entry_weight", "const A*"),
     ("chunk_first", "const I*"), ("partials", "A*"), ("n", "I"), ("channels", "int"),
     ("source_stride", "I")),
)
SEGMENTED_SUM_SEGMENTS = Kernel(
    "cudcn::segmented_sum_segments",
    "segmented_sum.cu",
    (("partials", "const A*"), ("segment_first_chunk", "const I*"), ("segment_dest", "const I*"),
     ("dest", "A*"), ("n", "I"), ("channels", "int"), ("dest_stride", "I")),
)

KERNELS = (
    DEFORM_CONV2D_IM2COL, DEFORM_CONV2D_COL2IM, DEFORM_CONV2D_COORD_PARTIAL,
    DEFORM_CONV2D_COORD_REDUCE, DEFORM_CONV2D_SCATTER_ENTRIES,
    DEFORM_CONV2D_CORNERS, DEFORM_CONV2D_COL2IM_PIXELS,
    DEFORM_CONV2D_COL2IM_COORD_PIXELS, DEFORM_CONV2D_FILL_PIXELS, DEFORM_CONV2D_IM2COL_PIXELS,
    DEFORM_CONV2D_WEIGHT_FOR_PIXELS, DEFORM_CONV2D_WEIGHT_ROWS_FOR_PIXELS,
    DEFORM_CONV2D_WEIGHT_FROM_PIXEL_ROWS, DEFORM_CONV2D_WIDEN, DEFORM_CONV2D_NARROW,
    DEFORM_CONV2D_OUTPUT_FROM_PIXELS,
    DEFORM_ROI_POOL_FORWARD, DEFORM_ROI_POOL_FILL_PIXELS, DEFORM_ROI_POOL_FORWARD_PIXELS,
    DEFORM_ROI_POOL_BACKWARD_INPUT, DEFORM_ROI_POOL_BACKWARD_INPUT_PLANES,
    DEFORM_ROI_POOL_SCATTER_ENTRIES,
    DEFORM_ROI_POOL_BACKWARD_OFFSET_PARTIAL,
    DEFORM_ROI_POOL_BACKWARD_OFFSET_PARTIAL_PLANES, DEFORM_ROI_POOL_BACKWARD_OFFSET_REDUCE,
    DEFORM_PSROI_POOL_FORWARD, DEFORM_PSROI_POOL_BACKWARD_INPUT,
    DEFORM_PSROI_POOL_BACKWARD_INPUT_PLANES, DEFORM_PSROI_POOL_SCATTER_ENTRIES,
    DEFORM_PSROI_POOL_BACKWARD_OFFSET_PARTIAL, DEFORM_PSROI_POOL_BACKWARD_OFFSET_REDUCE,
    MS_DEFORM_ATTN_FORWARD, MS_DEFORM_ATTN_BACKWARD_POINTS_PARTIAL,
    MS_DEFORM_ATTN_BACKWARD_POINTS_REDUCE, MS_DEFORM_ATTN_BACKWARD_VALUE,
    MS_DEFORM_ATTN_BACKWARD_VALUE_PLANES, MS_DEFORM_ATTN_SCATTER_ENTRIES,
    DCNV3_FORWARD, DCNV3_BACKWARD_POINTS_PARTIAL, DCNV3_BACKWARD_POINTS_REDUCE,
    DCNV3_BACKWARD_VALUE, DCNV3_BACKWARD_VALUE_PLANES, DCNV3_SCATTER_ENTRIES,
    SEGMENTED_SUM_CHUNKS, SEGMENTED_SUM_SEGMENTS,
)


def sources():
    """The kernel files, in a stable order."""
    return tuple(sorted({kernel.source for kernel in KERNELS}))


def kernels_in(source):
    return tuple(kernel for kernel in KERNELS if kernel.source == source)


def resolve_type(ctype, scalar, index):
    """Spell a parameter type for one instantiation: 'const T*' -> 'const float*'."""
    base = ctype.replace("const ", "").rstrip("*")
    spelled = {"T": scalar.c_name, "A": scalar.acc_c_name, "I": index}.get(base, base)
    return ctype.replace(base, spelled, 1) if base in ("T", "A", "I") else ctype


def instantiation(kernel, scalar, index):
    """The name expression of one instantiation, as NVRTC and C++ spell it."""
    return f"{kernel.name}<{scalar.c_name}, {index}>"


def c_signature(kernel, scalar, index):
    """The parameter list of one instantiation, types only."""
    return ", ".join(resolve_type(ctype, scalar, index) for _, ctype in kernel.params)


def instantiations(source, dtype_names):
    """Every (kernel, scalar type, index type) of one file for the given dtypes."""
    return tuple(
        (kernel, SCALAR_TYPES[dtype_name], index)
        for kernel in kernels_in(source)
        for dtype_name in dtype_names
        for index in INDEX_TYPES
    )
