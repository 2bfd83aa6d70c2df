"""cudcn: deformable convolution, deformable RoI pooling, multi-scale
deformable attention and DCNv3/DCNv4 as CUDA kernels.

The same functions run on CuPy arrays (GPU) and on NumPy arrays (the same
kernel sources built for the CPU).
"""

from ._executors.cpu import CompileError, CompilerNotFoundError
from ._workspace import (
    DEFAULT_CPU_WORKSPACE_LIMIT,
    DEFAULT_WORKSPACE_LIMIT,
    get_workspace_limit,
    release_scratch,
    set_workspace_limit,
    workspace_limit,
)
from .dcnv3 import DCNv3Grads, DCNv4Grads, dcnv3, dcnv3_backward, dcnv4, dcnv4_backward
from .deform_conv import DeformConv2dGrads, deform_conv2d, deform_conv2d_backward
from .ms_deform_attn import MSDeformAttnGrads, ms_deform_attn, ms_deform_attn_backward
from .roi_pool import (
    DeformPSRoIPoolGrads,
    DeformRoIPoolGrads,
    deform_psroi_pool,
    deform_psroi_pool_backward,
    deform_roi_pool,
    deform_roi_pool_backward,
)

__version__ = "0.1.0"

__all__ = [
    "CompileError",
    "CompilerNotFoundError",
    "DEFAULT_CPU_WORKSPACE_LIMIT",
    "DCNv3Grads",
    "DCNv4Grads",
    "DEFAULT_WORKSPACE_LIMIT",
    "DeformConv2dGrads",
    "DeformPSRoIPoolGrads",
    "DeformRoIPoolGrads",
    "MSDeformAttnGrads",
    "dcnv3",
    "dcnv3_backward",
    "dcnv4",
    "dcnv4_backward",
    "deform_conv2d",
    "deform_conv2d_backward",
    "deform_psroi_pool",
    "deform_psroi_pool_backward",
    "deform_roi_pool",
    "deform_roi_pool_backward",
    "get_workspace_limit",
    "ms_deform_attn",
    "ms_deform_attn_backward",
    "release_scratch",
    "set_workspace_limit",
    "workspace_limit",
]
