"""cudcn's ops in ``torch.onnx.export``, with both exporters and no extra argument.

What each op becomes (standard ONNX only, no custom domain):

- ``deform_conv2d``: one ``DeformConv`` node (opset 19), with bias and mask
  inputs present or absent as in the call. Its offset layout, mask layout and
  border rule are cudcn's (SPEC.md section 5).
- ``deform_roi_pool`` without offset: ``RoiAlign`` (opset 16,
  coordinate_transformation_mode "half_pixel", mode "avg": RoIAlign with
  aligned=True, adaptive sub-grid included), times the mask if one is given.
- ``deform_roi_pool`` with offset and a fixed ``sampling_ratio`` > 0, and
  ``deform_psroi_pool``: standard arithmetic, Gather and reductions written
  by ``onnx_decompositions``.
- ``deform_roi_pool`` with offset and an adaptive ``sampling_ratio`` (<= 0):
  an error; the number of samples then depends on each RoI's size at run time.
- ``ms_deform_attn``: Gather and arithmetic (``onnx_decompositions``),
  reading the level sizes from ``spatial_shapes`` at run time.
- ``dcnv3`` and ``dcnv4``: one ``GridSample`` (opset 16; bilinear, zeros
  padding, align_corners=False) over the unpadded input, with Where and
  arithmetic (``onnx_decompositions``); batch and spatial sizes may be
  dynamic. ONNX Runtime's CPU provider runs float64 GridSample from opset 20
  only: export float64 models with ``opset_version=20`` or later.

How. Importing ``cudcn.adapters.torch`` registers, for the TorchScript
exporter (``dynamo=False``), symbolic functions through the public
``torch.onnx.register_custom_op_symbolic``, and for the dynamo exporter
translations in torch's own ONNX registry (the one that holds the aten ops;
internal API, checked by the tests), per opset, so that an export below opset
19 meets a clear error instead of writing a DeformConv its opset lacks. The
public ``torch.onnx.ops.symbolic`` cannot do that: the op does not learn the
target opset. The decompositions run in the Python functions of
``ops.py``, which call ``deform_roi_pool``, ``deform_psroi_pool``,
``ms_deform_attn``, ``dcnv3`` or ``dcnv4`` here while
``torch.onnx.is_in_onnx_export()``; both exporters trace them (the dynamo
exporter in torch.export's non-strict capture, its first attempt;
TorchDynamo's strict capture reads ``is_in_onnx_export()`` as False, and the
translations of the ops then raise an error that says so).
"""

import importlib.abc
import importlib.util
import sys

import torch

from . import onnx_decompositions

DEFORM_CONV_OPSET = 19
ROI_ALIGN_OPSET = 16


def _opset_error(op, onnx_op, needed, target):
    return ValueError(
        f"cudcn's {op} exports to the standard ONNX operator {onnx_op}, which needs opset "
        f"{needed} or later, but this export targets opset {target}; ask for it with "
        f"torch.onnx.export(..., opset_version={needed})")


def _opaque_error(op, condition=""):
    return ValueError(
        f"cudcn's {op}{condition} reached the ONNX exporter as one opaque op, which no "
        "standard ONNX operator expresses. cudcn writes it with standard operators while "
        "torch.onnx.export captures the model itself with torch.export's non-strict mode (the "
        "exporter's first attempt); this graph came from elsewhere: an ExportedProgram made "
        "beforehand, or the exporter's strict-mode retry after the non-strict capture failed "
        "(its error is reported above)")


def _adaptive_sampling_error():
    return ValueError(
        "cudcn's deform_roi_pool with an offset cannot be exported to ONNX with an adaptive "
        "sampling_ratio (<= 0): the number of samples per bin then follows each RoI's size, "
        "which standard ONNX operators cannot express with offsets. Export the model with a "
        "fixed sampling_ratio > 0 (e.g. 2; this changes the op's results)")


def _deform_conv_attributes(input_shape, weight_shape, offset_shape, stride, padding, dilation):
    """DeformConv's attributes; group and offset_group come from the channel
    counts, which must be static (the batch and image sizes may be dynamic)."""
    sizes = (input_shape[1], weight_shape[1], weight_shape[2], weight_shape[3], offset_shape[1])
    if not all(isinstance(s, int) for s in sizes):
        raise ValueError("cudcn's deform_conv2d exports to ONNX with static channel counts and "
                         f"kernel size; got input channels, weight shape and offset channels "
                         f"{sizes}")
    channels, group_channels, kh, kw, offset_channels = sizes
    return dict(kernel_shape=[kh, kw], strides=list(stride),
                pads=[padding[0], padding[1], padding[0], padding[1]],
                dilations=list(dilation), group=channels // group_channels,
                offset_group=offset_channels // (2 * kh * kw))


# --- export-time paths of the pooling ops (called from ops.py) ------------

def deform_roi_pool(input, rois, offset, mask, output_size, spatial_scale, sampling_ratio, gamma):
    """cudcn.adapters.torch.deform_roi_pool while exporting to ONNX; the
    arguments are the op's, already checked."""
    if offset is None:
        return _roi_align(input, rois, mask, output_size, spatial_scale, sampling_ratio, gamma)
    if sampling_ratio <= 0:
        raise _adaptive_sampling_error()
    return onnx_decompositions.deform_roi_pool(input, rois, offset, mask, output_size,
                                               spatial_scale, sampling_ratio, gamma)


def _roi_align(input, rois, mask, output_size, spatial_scale, sampling_ratio, gamma):
    """The op on RoIs that RoiAlign reads safely (see sanitized_rois), the
    others zeroed; half types go through float32, as in the kernels (RoiAlign
    would otherwise round the boxes to the input's type)."""
    dtype = input.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    boxes, index, valid = onnx_decompositions.sanitized_rois(
        rois.to(compute), input.shape[0], output_size, spatial_scale, sampling_ratio)
    rois = torch.cat([index.to(compute)[:, None], boxes], dim=1)
    pooled = torch.ops.cudcn.deform_roi_pool(input.to(compute), rois, None, None,
                                             list(output_size), spatial_scale, sampling_ratio,
                                             gamma)
    pooled = pooled.masked_fill(~valid[:, None, None, None], 0)
    if mask is not None:
        pooled = mask.to(compute) * pooled
    return pooled.to(dtype)


def deform_psroi_pool(input, rois, offset, output_dim, group_size, pooled_size, part_size,
                      sample_per_part, trans_std, spatial_scale):
    """cudcn.adapters.torch.deform_psroi_pool while exporting to ONNX."""
    return onnx_decompositions.deform_psroi_pool(input, rois, offset, output_dim, group_size,
                                                 pooled_size, part_size, sample_per_part,
                                                 trans_std, spatial_scale)


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights, points_per_level):
    """cudcn.adapters.torch.ms_deform_attn while exporting to ONNX."""
    return onnx_decompositions.ms_deform_attn(value, spatial_shapes, level_start_index,
                                              sampling_locations, attention_weights,
                                              points_per_level)


def dcnv3(input, offset, mask, kernel_size, stride, padding, dilation, groups, offset_scale,
          remove_center):
    """cudcn.adapters.torch.dcnv3 while exporting to ONNX."""
    return onnx_decompositions.dcnv3(input, offset, mask, kernel_size, stride, padding,
                                     dilation, groups, offset_scale, remove_center)


def dcnv4(input, offset_mask, kernel_size, stride, padding, dilation, groups, offset_scale,
          remove_center):
    """cudcn.adapters.torch.dcnv4 while exporting to ONNX."""
    return onnx_decompositions.dcnv4(input, offset_mask, kernel_size, stride, padding,
                                     dilation, groups, offset_scale, remove_center)


# --- translations of the ops themselves ----------------------------------

def _check_roi_align(has_offset, has_mask, sampling_ratio):
    """The op translation writes RoiAlign: deform_roi_pool without offset or mask."""
    if has_offset and sampling_ratio <= 0:
        raise _adaptive_sampling_error()
    if has_offset or has_mask:
        raise _opaque_error("deform_roi_pool", " with an offset or a mask")


# --- TorchScript exporter (dynamo=False) ----------------------------------

def _torchscript_sizes(g, value, position):
    """A 4-d input's sizes: the ONNX graph's where shape inference found them,
    else the traced ones (ONNX shape inference loses the channel count of
    e.g. a Concat of Split outputs; the traced shape has it)."""
    from torch.onnx import symbolic_helper as sh

    sizes = sh._get_tensor_sizes(value) or [None] * 4
    traced = g.original_node.inputsAt(position).type()
    traced = traced.sizes() if isinstance(traced, torch._C.TensorType) else None
    if traced and len(traced) == len(sizes):
        sizes = [s if s is not None else t for s, t in zip(sizes, traced)]
    return sizes


def _torchscript_deform_conv2d(g, input, offset, weight, bias, mask, stride, padding, dilation):
    from torch.onnx import symbolic_helper as sh

    if g.opset < DEFORM_CONV_OPSET:
        raise _opset_error("deform_conv2d", "DeformConv", DEFORM_CONV_OPSET, g.opset)
    attributes = _deform_conv_attributes(
        _torchscript_sizes(g, input, 0), _torchscript_sizes(g, weight, 2),
        _torchscript_sizes(g, offset, 1), sh._maybe_get_const(stride, "is"),
        sh._maybe_get_const(padding, "is"), sh._maybe_get_const(dilation, "is"))
    inputs = [input, weight, offset]
    if not sh._is_none(mask):
        inputs += [sh._optional_input_placeholder_tensor(g) if sh._is_none(bias) else bias, mask]
    elif not sh._is_none(bias):
        inputs.append(bias)
    return g.op("DeformConv", *inputs, kernel_shape_i=attributes["kernel_shape"],
                strides_i=attributes["strides"], pads_i=attributes["pads"],
                dilations_i=attributes["dilations"], group_i=attributes["group"],
                offset_group_i=attributes["offset_group"])


def _torchscript_deform_roi_pool(g, input, rois, offset, mask, output_size, spatial_scale,
                                 sampling_ratio, gamma):
    from torch.onnx import symbolic_helper as sh

    _check_roi_align(not sh._is_none(offset), not sh._is_none(mask),
                     sh._maybe_get_const(sampling_ratio, "i"))
    if g.opset < ROI_ALIGN_OPSET:
        raise _opset_error("deform_roi_pool", "RoiAlign (half_pixel)", ROI_ALIGN_OPSET, g.opset)
    pooled_h, pooled_w = sh._maybe_get_const(output_size, "is")
    boxes = sh._slice_helper(g, rois, axes=[1], starts=[1], ends=[5])
    column = g.op("Constant", value_t=torch.tensor(0, dtype=torch.int64))
    index = g.op("Cast", g.op("Gather", rois, column, axis_i=1),
                 to_i=torch._C._onnx.TensorProtoDataType.INT64)
    return g.op("RoiAlign", input, g.op("CastLike", boxes, input), index,
                coordinate_transformation_mode_s="half_pixel", mode_s="avg",
                output_height_i=pooled_h, output_width_i=pooled_w,
                sampling_ratio_i=max(sh._maybe_get_const(sampling_ratio, "i"), 0),  # 0: adaptive
                spatial_scale_f=sh._maybe_get_const(spatial_scale, "f"))


def _torchscript_deform_psroi_pool(g, *args):
    raise _opaque_error("deform_psroi_pool")


def _torchscript_ms_deform_attn(g, *args):
    raise _opaque_error("ms_deform_attn")


def _torchscript_dcnv3(g, *args):
    raise _opaque_error("dcnv3")


def _torchscript_dcnv4(g, *args):
    raise _opaque_error("dcnv4")


# --- dynamo exporter (dynamo=True, the default) ---------------------------

def _static_shape(value):
    shape = value.shape
    return [None] * 4 if shape is None else [d if isinstance(d, int) else None for d in shape]


def _dynamo_deform_conv2d(input, offset, weight, bias, mask, stride, padding, dilation):
    from onnxscript.onnx_opset import opset19

    attributes = _deform_conv_attributes(_static_shape(input), _static_shape(weight),
                                         _static_shape(offset), stride, padding, dilation)
    return opset19.DeformConv(input, weight, offset, bias, mask, **attributes)


def _dynamo_deform_conv2d_below_19(*args, **kwargs):
    raise _opset_error("deform_conv2d", "DeformConv", DEFORM_CONV_OPSET, "18 or lower")


def _dynamo_deform_roi_pool(input, rois, offset, mask, output_size, spatial_scale,
                            sampling_ratio, gamma):
    from onnxscript.onnx_opset import opset18 as op

    _check_roi_align(offset is not None, mask is not None, sampling_ratio)
    boxes = op.Slice(rois, op.Constant(value_ints=[1]), op.Constant(value_ints=[5]),
                     op.Constant(value_ints=[1]))
    index = op.Cast(op.Gather(rois, op.Constant(value_int=0), axis=1), to=7)  # INT64
    return op.RoiAlign(input, op.CastLike(boxes, input), index,
                       coordinate_transformation_mode="half_pixel", mode="avg",
                       output_height=output_size[0], output_width=output_size[1],
                       sampling_ratio=max(sampling_ratio, 0), spatial_scale=spatial_scale)


def _dynamo_deform_psroi_pool(*args, **kwargs):
    raise _opaque_error("deform_psroi_pool")


def _dynamo_ms_deform_attn(*args, **kwargs):
    raise _opaque_error("ms_deform_attn")


def _dynamo_dcnv3(*args, **kwargs):
    raise _opaque_error("dcnv3")


def _dynamo_dcnv4(*args, **kwargs):
    raise _opaque_error("dcnv4")


# --- registration ---------------------------------------------------------

def _register_torchscript():
    for name, symbolic in (("deform_conv2d", _torchscript_deform_conv2d),
                           ("deform_roi_pool", _torchscript_deform_roi_pool),
                           ("deform_psroi_pool", _torchscript_deform_psroi_pool),
                           ("ms_deform_attn", _torchscript_ms_deform_attn),
                           ("dcnv3", _torchscript_dcnv3),
                           ("dcnv4", _torchscript_dcnv4)):
        # Registered from opset 1 so that every target opset reaches cudcn's own checks.
        torch.onnx.register_custom_op_symbolic(f"cudcn::{name}", symbolic, 1)


# The dynamo exporter's registries: each imports the other, so translations
# are added once both have finished loading.
_REGISTRIES = ("torch.onnx._internal.exporter._registration",
               "torch.onnx._internal.exporter._torchlib._torchlib_registry")


class _AfterImports(importlib.abc.MetaPathFinder):
    """Runs a callback once all of some modules have been imported: the
    dynamo exporter's registry imports onnxscript (over half a second), which
    an import of cudcn.adapters.torch should not pay for when nobody exports."""

    def __init__(self, names, callback):
        self.pending = {n for n in names if n not in sys.modules}
        self.callback = callback
        if not self.pending:
            callback()
        else:
            sys.meta_path.insert(0, self)

    def _loaded(self, name):
        self.pending.discard(name)
        if not self.pending:
            sys.meta_path.remove(self)
            self.callback()

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.pending:
            return None
        sys.meta_path.remove(self)  # find the real spec without us
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader, loaded = spec.loader, self._loaded

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                loaded(fullname)

        spec.loader = Loader()
        return spec


def _register_dynamo():
    """Adds cudcn's translations to the registry the dynamo exporter builds
    for each export, once that registry is imported. Skipped without
    onnxscript (the dynamo exporter needs it anyway)."""
    if importlib.util.find_spec("onnxscript") is None:
        return
    _AfterImports(_REGISTRIES, _add_dynamo_translations)


def _add_dynamo_translations():
    """Where torch's registry has another shape, nothing is added: export
    then raises there."""
    ops = torch.ops.cudcn
    entries = ((ops.deform_conv2d.default, _dynamo_deform_conv2d_below_19, 18),
               (ops.deform_conv2d.default, _dynamo_deform_conv2d, DEFORM_CONV_OPSET),
               (ops.deform_roi_pool.default, _dynamo_deform_roi_pool, 18),
               (ops.deform_psroi_pool.default, _dynamo_deform_psroi_pool, 18),
               (ops.ms_deform_attn.default, _dynamo_ms_deform_attn, 18),
               (ops.dcnv3.default, _dynamo_dcnv3, 18),
               (ops.dcnv4.default, _dynamo_dcnv4, 18))
    try:
        from torch.onnx._internal.exporter._torchlib._torchlib_registry import onnx_impl

        for target, function, opset in entries:
            # The registry keeps, per op, the entries of the highest opset not above the target.
            onnx_impl(target, no_compile=True, opset_introduced=opset)(function)
    except (ImportError, TypeError):  # a torch whose registry differs: export raises there
        return


def register():
    """Called once when cudcn.adapters.torch is imported, after ops.py."""
    _register_torchscript()
    _register_dynamo()
