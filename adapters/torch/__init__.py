"""cudcn for PyTorch: differentiable functions, torch.compile-ready ops
(``torch.ops.cudcn.*``), drop-in modules and model conversion. Models holding them export to
standard ONNX with plain ``torch.onnx.export`` (see ``cudcn.adapters.torch.onnx_export``).

CPU tensors run on cudcn's CPU backend and CUDA tensors on its GPU backend,
sharing memory with the tensors through DLPack (no copies). Tensors are
float32, float64, float16 or bfloat16 (the 16-bit ones computed in float32
inside the kernels). Argument errors are
:class:`cudcn.adapters.torch.ArgumentValueError` and
:class:`cudcn.adapters.torch.ArgumentTypeError`, ``ValueError``/``TypeError``
that are also ``RuntimeError`` (as torchvision's), and the functions are
``torch.fx`` leaves. Gradients are first derivatives only: differentiating
a gradient raises a ``RuntimeError``.
"""

from ._errors import ArgumentTypeError, ArgumentValueError
from .convert import convert_to_deformable, param_groups
from .dcn_modules import DCNv3, DCNv4
from .hub_kernels import kernelize
from .modules import (
    DeformConv2d,
    DeformConv2dPack,
    DeformPSRoIPool,
    DeformRoIPool,
    DeformRoIPoolPack,
    ModulatedDeformConv2dPack,
    ModulatedDeformRoIPoolPack,
    MultiScaleDeformableAttention,
)
from .ops import dcnv3, dcnv4, deform_conv2d, deform_psroi_pool, deform_roi_pool, ms_deform_attn
from . import onnx_export as _onnx_export

_onnx_export.register()  # torch.onnx.export writes cudcn's ops as standard ONNX

__all__ = [
    "ArgumentTypeError",
    "ArgumentValueError",
    "DCNv3",
    "DCNv4",
    "DeformConv2d",
    "DeformConv2dPack",
    "DeformPSRoIPool",
    "DeformRoIPool",
    "DeformRoIPoolPack",
    "ModulatedDeformConv2dPack",
    "ModulatedDeformRoIPoolPack",
    "MultiScaleDeformableAttention",
    "convert_to_deformable",
    "dcnv3",
    "dcnv4",
    "deform_conv2d",
    "deform_psroi_pool",
    "deform_roi_pool",
    "kernelize",
    "ms_deform_attn",
    "param_groups",
]
