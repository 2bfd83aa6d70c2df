"""cudcn's operations as torch ops in the ``cudcn::`` namespace.

Each forward and each backward is a ``torch.library.custom_op`` with a fake
implementation (so ``torch.compile(fullgraph=True)`` traces through them) and
the forward's autograd is registered to call the backward op. The backward
ops are not differentiable: asking for a double backward raises. Under
``torch.use_deterministic_algorithms(True)`` the backward runs cudcn's
deterministic kernels (bit-identical gradients, no floating-point atomics).

Dtypes: float16, bfloat16, float32 and float64 tensors run in their own
dtype on both devices (16-bit ones computed in float32 inside the kernels);
outputs and gradients come in the input's dtype.

Autocast policy: under ``torch.autocast``, floating inputs other than float64
(and other than RoIs) are cast to the autocast dtype (bfloat16 by default on
the CPU, float16 on CUDA), and the op runs that dtype's kernels; the output
comes in that dtype.

Plain CPU tensors in eager mode skip torch's dispatcher, to the same
kernels (see ``_Op``); torch.compile, export, tracing, torch.func, modes, the
profiler, tensor subclasses and CUDA tensors see the ``cudcn::`` ops.

Argument errors come as :class:`ArgumentValueError`/:class:`ArgumentTypeError`
(``ValueError``/``TypeError`` that are also ``RuntimeError``, as torchvision
raises), before any kernel runs. Under ``torch.fx.symbolic_trace`` each public
function is a leaf: one ``call_function`` node, as torchvision's ops.
"""

from typing import List, Optional

import torch

import cudcn
from cudcn import _checks

from . import _bridge, _errors, _fx

Tensor = torch.Tensor


def _autocast(*tensors):
    device = "cuda" if _bridge.on_cuda(tensors[0]) else "cpu"  # check_tensors allowed no other
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(
        t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
        for t in tensors
    )


def _run(reference, fn, *args, **kwargs):
    """Call a cudcn function on tensors: arrays in, tensors out, no copies."""
    try:
        return _run_arrays(reference, fn, *args, **kwargs)
    except (ValueError, TypeError) as error:
        raise _errors.as_torch_error(error) from None


def _run_arrays(reference, fn, *args, **kwargs):
    if not _bridge.on_cuda(reference):  # no device or stream to enter
        return _arrays_in_tensors_out(fn, args, kwargs)
    with _bridge.on_device_of(reference):
        return _arrays_in_tensors_out(fn, args, kwargs)


def _arrays_in_tensors_out(fn, args, kwargs):
    arrays = [_bridge.to_array(a) if isinstance(a, Tensor) else a for a in args]
    kw = {k: _bridge.to_array(v) if isinstance(v, Tensor) else v for k, v in kwargs.items()}
    result = fn(*arrays, **kw)
    if isinstance(result, tuple):  # a named tuple of gradients
        return [_bridge.to_tensor(g) for g in result if g is not None]
    return _bridge.to_tensor(result)


def _not_twice(name):
    def backward(ctx, *grads):
        raise RuntimeError(f"cudcn::{name} is not differentiable: cudcn's operations have first "
                           f"derivatives only (no double backward of "
                           f"{name.removesuffix('_backward')}: a gradient taken with "
                           f"create_graph=True cannot be differentiated again)")

    def setup(ctx, inputs, output):
        pass

    return backward, setup


def _autograd(tensor_count, differentiable, run_backward):
    """(setup_context, backward) of an op whose first ``tensor_count``
    arguments are tensors, ``differentiable`` their positions with gradients,
    in the order ``run_backward(grad, *tensors, *params, needs, deterministic)``
    returns them."""

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:tensor_count])
        ctx.params = inputs[tensor_count:]

    def backward(ctx, grad):
        needs = [bool(ctx.needs_input_grad[i]) for i in differentiable]
        # torch.use_deterministic_algorithms(True) selects cudcn's deterministic kernels.
        deterministic = torch.are_deterministic_algorithms_enabled()
        grads = iter(run_backward(grad, *ctx.saved_tensors, *ctx.params, needs, deterministic)
                     if any(needs) else ())
        result = [None] * (tensor_count + len(ctx.params))
        for position, wanted in zip(differentiable, needs):
            if wanted:
                result[position] = next(grads)
        return tuple(result)

    return setup, backward


class _Op:
    """One cudcn op in torch, called two ways with the same kernels.

    ``op`` is the custom op ``cudcn::<name>``: what torch.compile, export,
    jit tracing, torch.func, dispatch and function modes, the profiler and
    tensor subclasses see. Plain CPU tensors in eager mode, which nothing
    watches, skip torch's dispatcher: ``impl`` directly, or an
    ``autograd.Function`` with the same backward when a gradient is wanted.
    The dispatcher's path costs about 0.2 ms a call once other work has run
    in between (deform_conv2d at N=1, C=128, 28x28: 2.15 ms against 1.91
    direct, interleaved with torchvision, F.conv2d and ONNX Runtime), and
    a forward+backward through the op and its autograd took 0.9-1.7 ms more
    at the bench's four shapes (interleaved, 15 rounds). CUDA tensors keep
    the op.

    Building one registers the op's autograd (and the backward op's "no
    double backward") with torch.
    """

    def __init__(self, name, impl, backward_impl, tensor_count, differentiable):
        self.name = name
        self.tensor_count = tensor_count
        self.impl = impl
        self.op = getattr(torch.ops.cudcn, name)
        self.backward_op = backward_op = getattr(torch.ops.cudcn, f"{name}_backward")
        setup, backward = _autograd(tensor_count, differentiable, backward_op)
        torch.library.register_autograd(f"cudcn::{name}", backward, setup_context=setup)
        twice, twice_setup = _not_twice(f"{name}_backward")
        torch.library.register_autograd(f"cudcn::{name}_backward", twice,
                                        setup_context=twice_setup)

        def run_backward(*args):
            # With create_graph, through the op: its autograd raises "no double backward".
            return (self.backward_op if torch.is_grad_enabled() else backward_impl)(*args)

        eager_setup, eager_backward = _autograd(tensor_count, differentiable, run_backward)

        def forward(ctx, *args):
            # ctx set up here, not in a setup_context: with one, every apply
            # binds its arguments to forward's inspect.signature (~50 us).
            eager_setup(ctx, args, None)
            return impl(*args)

        self.function = type(f"{name}_function", (torch.autograd.Function,), {
            "forward": staticmethod(forward), "backward": staticmethod(eager_backward)})

    def __call__(self, *args):
        tensors = args[: self.tensor_count]
        if not _unwatched(tensors):
            _refuse_forward_mode(self.name, tensors)
            return self.op(*args)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            return self.function.apply(*args)
        return self.impl(*args)


def _unwatched(tensors):
    """Whether a call on these tensors may skip torch's dispatcher: plain CPU
    tensors, and nothing that needs to see the op (see _Op)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False  # first: dynamo folds it, and traces none of the rest
    return (all(t is None or (type(t) is Tensor and not _bridge.on_cuda(t)) for t in tensors)
            and not torch._C._is_torch_function_mode_enabled()
            and torch._C._len_torch_dispatch_stack() == 0
            and torch._C._functorch.peek_interpreter_stack() is None
            and torch.autograd.forward_ad._current_level < 0
            and not torch._C._autograd._profiler_enabled())


def _refuse_forward_mode(name, tensors):
    """cudcn has no forward-mode derivatives, and torch gives a custom op
    without one no error but no tangent (torch.func.jvp returns zeros,
    forward_ad None; torchvision's ops do the same): raise instead."""
    # torch.func.jvp and jacfwd make dual tensors at a forward-AD level too.
    if torch.autograd.forward_ad._current_level >= 0 and any(
            t is not None and torch.autograd.forward_ad.unpack_dual(t).tangent is not None
            for t in tensors):
        raise NotImplementedError(
            f"cudcn::{name} has no forward-mode derivative (torch.func.jvp, jacfwd, "
            f"torch.autograd.forward_ad); use reverse mode (backward, torch.autograd.grad)")


def _custom_op(name, impl):
    """cudcn::<name>, computed by ``impl`` (whose annotations give its schema)."""
    return torch.library.custom_op(f"cudcn::{name}", impl, mutates_args=())


def _wanted(names, needs):
    return [n for n, w in zip(names, needs) if w]


def _fake_grads(tensors, needs):
    return [torch.empty_like(t) for t, w in zip(tensors, needs) if w]


# --- deform_conv2d -------------------------------------------------------

def _deform_conv2d_impl(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor],
                        mask: Optional[Tensor], stride: List[int], padding: List[int],
                        dilation: List[int]) -> Tensor:
    return _run(input, cudcn.deform_conv2d, input, offset, weight, bias, tuple(stride),
                tuple(padding), tuple(dilation), mask)


_deform_conv2d = _custom_op("deform_conv2d", _deform_conv2d_impl)


@_deform_conv2d.register_fake
def _(input, offset, weight, bias, mask, stride, padding, dilation):
    size = [(s + 2 * p - (d * (k - 1) + 1)) // st + 1 for s, p, d, k, st in
            zip(input.shape[2:], padding, dilation, weight.shape[2:], stride)]
    return input.new_empty((input.shape[0], weight.shape[0], *size))


def _deform_conv2d_backward_impl(grad: Tensor, input: Tensor, offset: Tensor, weight: Tensor,
                                 bias: Optional[Tensor], mask: Optional[Tensor], stride: List[int],
                                 padding: List[int], dilation: List[int],
                                 needs: List[bool], deterministic: bool) -> List[Tensor]:
    return _run(input, cudcn.deform_conv2d_backward, grad, input, offset, weight, bias,
                tuple(stride), tuple(padding), tuple(dilation), mask,
                needs=_wanted(cudcn.deform_conv.GRADIENT_NAMES, needs),
                deterministic=deterministic)


_deform_conv2d_backward = _custom_op("deform_conv2d_backward", _deform_conv2d_backward_impl)


@_deform_conv2d_backward.register_fake
def _(grad, input, offset, weight, bias, mask, stride, padding, dilation, needs, deterministic):
    return _fake_grads((input, offset, weight, bias, mask), needs)


_deform_conv2d_op = _Op("deform_conv2d", _deform_conv2d_impl, _deform_conv2d_backward_impl,
                        5, (0, 1, 2, 3, 4))


@_fx.leaf
@_errors.torch_errors
def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0),
                  dilation=(1, 1), mask=None):
    """``torchvision.ops.deform_conv2d``, run by cudcn; differentiable in every tensor.

    Shapes as in :func:`cudcn.deform_conv2d`: input (N, C_in, H, W), offset
    (N, 2 * offset_groups * kh * kw, H_out, W_out), weight
    (C_out, C_in / groups, kh, kw), bias (C_out,), mask
    (N, offset_groups * kh * kw, H_out, W_out).
    """
    _bridge.check_tensors(input=input, offset=offset, weight=weight, bias=bias, mask=mask)
    input, offset, weight, bias, mask = _autocast(input, offset, weight, bias, mask)
    return _deform_conv2d_op(input, offset, weight, bias, mask,
                             list(_checks.int_pair("stride", stride, 1)),
                             list(_checks.int_pair("padding", padding, 0)),
                             list(_checks.int_pair("dilation", dilation, 1)))


# --- deform_roi_pool -----------------------------------------------------

def _deform_roi_pool_impl(input: Tensor, rois: Tensor, offset: Optional[Tensor],
                          mask: Optional[Tensor], output_size: List[int], spatial_scale: float,
                          sampling_ratio: int, gamma: float) -> Tensor:
    return _run(input, cudcn.deform_roi_pool, input, rois, offset, tuple(output_size),
                spatial_scale, sampling_ratio, gamma, mask)


_deform_roi_pool = _custom_op("deform_roi_pool", _deform_roi_pool_impl)


@_deform_roi_pool.register_fake
def _(input, rois, offset, mask, output_size, spatial_scale, sampling_ratio, gamma):
    return input.new_empty((rois.shape[0], input.shape[1], *output_size))


def _deform_roi_pool_backward_impl(grad: Tensor, input: Tensor, rois: Tensor,
                                   offset: Optional[Tensor], mask: Optional[Tensor],
                                   output_size: List[int], spatial_scale: float,
                                   sampling_ratio: int, gamma: float, needs: List[bool],
                                   deterministic: bool) -> List[Tensor]:
    return _run(input, cudcn.deform_roi_pool_backward, grad, input, rois, offset,
                tuple(output_size), spatial_scale, sampling_ratio, gamma, mask,
                needs=_wanted(cudcn.DeformRoIPoolGrads._fields, needs),
                deterministic=deterministic)


_deform_roi_pool_backward = _custom_op("deform_roi_pool_backward", _deform_roi_pool_backward_impl)


@_deform_roi_pool_backward.register_fake
def _(grad, input, rois, offset, mask, output_size, spatial_scale, sampling_ratio, gamma, needs,
      deterministic):
    return _fake_grads((input, offset, mask), needs)


_deform_roi_pool_op = _Op("deform_roi_pool", _deform_roi_pool_impl,
                          _deform_roi_pool_backward_impl, 4, (0, 2, 3))


@_fx.leaf
@_errors.torch_errors
def deform_roi_pool(input, rois, offset=None, output_size=7, spatial_scale=1.0,
                    sampling_ratio=0, gamma=0.1, mask=None):
    """mmcv's ``deform_roi_pool`` (modulated with ``mask``), run by cudcn;
    differentiable in input, offset and mask. See :func:`cudcn.deform_roi_pool`."""
    _bridge.check_tensors(input=input, rois=rois, offset=offset, mask=mask)
    input, offset, mask = _autocast(input, offset, mask)
    params = (list(_checks.int_pair("output_size", output_size, 1)),
              _checks.real("spatial_scale", spatial_scale, positive=True),
              _checks.integer("sampling_ratio", sampling_ratio, None),
              _checks.real("gamma", gamma))
    if torch.onnx.is_in_onnx_export():  # standard ONNX operators instead of the kernel
        from . import onnx_export
        return onnx_export.deform_roi_pool(input, rois, offset, mask, *params)
    return _deform_roi_pool_op(input, rois, offset, mask, *params)


# --- deform_psroi_pool ---------------------------------------------------

def _deform_psroi_pool_impl(input: Tensor, rois: Tensor, offset: Optional[Tensor],
                            output_dim: int, group_size: int, pooled_size: int, part_size: int,
                            sample_per_part: int, trans_std: float,
                            spatial_scale: float) -> Tensor:
    return _run(input, cudcn.deform_psroi_pool, input, rois, offset, output_dim=output_dim,
                group_size=group_size, pooled_size=pooled_size, part_size=part_size,
                sample_per_part=sample_per_part, trans_std=trans_std,
                spatial_scale=spatial_scale)


_deform_psroi_pool = _custom_op("deform_psroi_pool", _deform_psroi_pool_impl)


@_deform_psroi_pool.register_fake
def _(input, rois, offset, output_dim, group_size, pooled_size, part_size, sample_per_part,
      trans_std, spatial_scale):
    return input.new_empty((rois.shape[0], output_dim, pooled_size, pooled_size))


def _deform_psroi_pool_backward_impl(grad: Tensor, input: Tensor, rois: Tensor,
                                     offset: Optional[Tensor], output_dim: int, group_size: int,
                                     pooled_size: int, part_size: int, sample_per_part: int,
                                     trans_std: float, spatial_scale: float,
                                     needs: List[bool], deterministic: bool) -> List[Tensor]:
    return _run(input, cudcn.deform_psroi_pool_backward, grad, input, rois, offset,
                output_dim=output_dim, group_size=group_size, pooled_size=pooled_size,
                part_size=part_size, sample_per_part=sample_per_part, trans_std=trans_std,
                spatial_scale=spatial_scale,
                needs=_wanted(cudcn.DeformPSRoIPoolGrads._fields, needs),
                deterministic=deterministic)


_deform_psroi_pool_backward = _custom_op("deform_psroi_pool_backward",
                                         _deform_psroi_pool_backward_impl)


@_deform_psroi_pool_backward.register_fake
def _(grad, input, rois, offset, output_dim, group_size, pooled_size, part_size,
      sample_per_part, trans_std, spatial_scale, needs, deterministic):
    return _fake_grads((input, offset), needs)


_deform_psroi_pool_op = _Op("deform_psroi_pool", _deform_psroi_pool_impl,
                            _deform_psroi_pool_backward_impl, 3, (0, 2))


@_fx.leaf
@_errors.torch_errors
def deform_psroi_pool(input, rois, offset=None, *, output_dim, group_size, pooled_size,
                      part_size=None, sample_per_part=4, trans_std=0.0, spatial_scale=0.0625):
    """Deformable position-sensitive RoI pooling (R-FCN), run by cudcn;
    differentiable in input and offset. See :func:`cudcn.deform_psroi_pool`."""
    _bridge.check_tensors(input=input, rois=rois, offset=offset)
    input, offset = _autocast(input, offset)
    pooled_size = _checks.integer("pooled_size", pooled_size, 1)
    params = (_checks.integer("output_dim", output_dim, 1),
              _checks.integer("group_size", group_size, 1), pooled_size,
              _checks.integer("part_size", pooled_size if part_size is None else part_size, 1),
              _checks.integer("sample_per_part", sample_per_part, 1),
              _checks.real("trans_std", trans_std),
              _checks.real("spatial_scale", spatial_scale, positive=True))
    if torch.onnx.is_in_onnx_export():  # standard ONNX operators instead of the kernel
        from . import onnx_export
        return onnx_export.deform_psroi_pool(input, rois, offset, *params)
    return _deform_psroi_pool_op(input, rois, offset, *params)


# --- ms_deform_attn ------------------------------------------------------

def _ms_deform_attn_impl(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                         sampling_locations: Tensor, attention_weights: Tensor, im2col_step: int,
                         points_per_level: Optional[List[int]]) -> Tensor:
    return _run(value, cudcn.ms_deform_attn, value, spatial_shapes, level_start_index,
                sampling_locations, attention_weights, im2col_step=im2col_step,
                points_per_level=points_per_level)


_ms_deform_attn = _custom_op("ms_deform_attn", _ms_deform_attn_impl)


@_ms_deform_attn.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
      im2col_step, points_per_level):
    n, _, heads, channels = value.shape
    return value.new_empty((n, sampling_locations.shape[1], heads * channels))


def _ms_deform_attn_backward_impl(grad: Tensor, value: Tensor, spatial_shapes: Tensor,
                                  level_start_index: Tensor, sampling_locations: Tensor,
                                  attention_weights: Tensor, im2col_step: int,
                                  points_per_level: Optional[List[int]], needs: List[bool],
                                  deterministic: bool) -> List[Tensor]:
    return _run(value, cudcn.ms_deform_attn_backward, grad, value, spatial_shapes,
                level_start_index, sampling_locations, attention_weights,
                im2col_step=im2col_step, points_per_level=points_per_level,
                needs=_wanted(cudcn.MSDeformAttnGrads._fields, needs),
                deterministic=deterministic)


_ms_deform_attn_backward = _custom_op("ms_deform_attn_backward", _ms_deform_attn_backward_impl)


@_ms_deform_attn_backward.register_fake
def _(grad, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
      im2col_step, points_per_level, needs, deterministic):
    return _fake_grads((value, sampling_locations, attention_weights), needs)


_ms_deform_attn_op = _Op("ms_deform_attn", _ms_deform_attn_impl, _ms_deform_attn_backward_impl,
                         5, (0, 3, 4))


@_fx.leaf
@_errors.torch_errors
def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights, im2col_step=64, points_per_level=None):
    """Multi-scale deformable attention (mmcv's ``MultiScaleDeformableAttnFunction``),
    run by cudcn; differentiable in value, sampling_locations and
    attention_weights. See :func:`cudcn.ms_deform_attn` for the shapes."""
    _bridge.check_tensors(value=value, spatial_shapes=spatial_shapes,
                          level_start_index=level_start_index,
                          sampling_locations=sampling_locations,
                          attention_weights=attention_weights)
    value, sampling_locations, attention_weights = _autocast(value, sampling_locations,
                                                             attention_weights)
    im2col_step = _checks.integer("im2col_step", im2col_step, 1)
    if points_per_level is not None:
        points_per_level = [_checks.integer("points_per_level", p, 1) for p in points_per_level]
    if torch.onnx.is_in_onnx_export():  # standard ONNX operators instead of the kernel
        from . import onnx_export
        return onnx_export.ms_deform_attn(value, spatial_shapes, level_start_index,
                                          sampling_locations, attention_weights, points_per_level)
    return _ms_deform_attn_op(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights, im2col_step, points_per_level)


# --- dcnv3 / dcnv4 --------------------------------------------------------

def _dcnv3_output(input, kernel_size, stride, padding, dilation):
    n, h, w, channels = input.shape
    size = [(s + 2 * p - (d * (k - 1) + 1)) // st + 1 for s, p, d, k, st in
            zip((h, w), padding, dilation, kernel_size, stride)]
    return input.new_empty((n, *size, channels))


def _dcnv3_impl(input: Tensor, offset: Tensor, mask: Tensor, kernel_size: List[int],
                stride: List[int], padding: List[int], dilation: List[int], groups: int,
                offset_scale: float, remove_center: bool) -> Tensor:
    return _run(input, cudcn.dcnv3, input, offset, mask, tuple(kernel_size), tuple(stride),
                tuple(padding), tuple(dilation), groups, offset_scale, remove_center)


_dcnv3 = _custom_op("dcnv3", _dcnv3_impl)


@_dcnv3.register_fake
def _(input, offset, mask, kernel_size, stride, padding, dilation, groups, offset_scale,
      remove_center):
    return _dcnv3_output(input, kernel_size, stride, padding, dilation)


def _dcnv3_backward_impl(grad: Tensor, input: Tensor, offset: Tensor, mask: Tensor,
                         kernel_size: List[int], stride: List[int], padding: List[int],
                         dilation: List[int], groups: int, offset_scale: float,
                         remove_center: bool, needs: List[bool],
                         deterministic: bool) -> List[Tensor]:
    return _run(input, cudcn.dcnv3_backward, grad, input, offset, mask, tuple(kernel_size),
                tuple(stride), tuple(padding), tuple(dilation), groups, offset_scale,
                remove_center, needs=_wanted(cudcn.DCNv3Grads._fields, needs),
                deterministic=deterministic)


_dcnv3_backward = _custom_op("dcnv3_backward", _dcnv3_backward_impl)


@_dcnv3_backward.register_fake
def _(grad, input, offset, mask, kernel_size, stride, padding, dilation, groups, offset_scale,
      remove_center, needs, deterministic):
    return _fake_grads((input, offset, mask), needs)


_dcnv3_op = _Op("dcnv3", _dcnv3_impl, _dcnv3_backward_impl, 3, (0, 1, 2))


def _dcnv4_impl(input: Tensor, offset_mask: Tensor, kernel_size: List[int], stride: List[int],
                padding: List[int], dilation: List[int], groups: int, offset_scale: float,
                remove_center: bool) -> Tensor:
    return _run(input, cudcn.dcnv4, input, offset_mask, tuple(kernel_size), tuple(stride),
                tuple(padding), tuple(dilation), groups, offset_scale, remove_center)


_dcnv4 = _custom_op("dcnv4", _dcnv4_impl)


@_dcnv4.register_fake
def _(input, offset_mask, kernel_size, stride, padding, dilation, groups, offset_scale,
      remove_center):
    return _dcnv3_output(input, kernel_size, stride, padding, dilation)


def _dcnv4_backward_impl(grad: Tensor, input: Tensor, offset_mask: Tensor,
                         kernel_size: List[int], stride: List[int], padding: List[int],
                         dilation: List[int], groups: int, offset_scale: float,
                         remove_center: bool, needs: List[bool],
                         deterministic: bool) -> List[Tensor]:
    return _run(input, cudcn.dcnv4_backward, grad, input, offset_mask, tuple(kernel_size),
                tuple(stride), tuple(padding), tuple(dilation), groups, offset_scale,
                remove_center, needs=_wanted(cudcn.DCNv4Grads._fields, needs),
                deterministic=deterministic)


_dcnv4_backward = _custom_op("dcnv4_backward", _dcnv4_backward_impl)


@_dcnv4_backward.register_fake
def _(grad, input, offset_mask, kernel_size, stride, padding, dilation, groups, offset_scale,
      remove_center, needs, deterministic):
    return _fake_grads((input, offset_mask), needs)


_dcnv4_op = _Op("dcnv4", _dcnv4_impl, _dcnv4_backward_impl, 2, (0, 1))


def _dcnv3_params(kernel_size, stride, padding, dilation, groups, offset_scale, remove_center):
    """The ops' non-tensor arguments, checked, in the schema's types."""
    if not isinstance(remove_center, bool):
        raise TypeError(f"remove_center must be a bool, got {type(remove_center).__name__}")
    return (list(_checks.int_pair("kernel_size", kernel_size, 1)),
            list(_checks.int_pair("stride", stride, 1)),
            list(_checks.int_pair("padding", padding, 0)),
            list(_checks.int_pair("dilation", dilation, 1)),
            _checks.integer("groups", groups, 1), _checks.real("offset_scale", offset_scale),
            remove_center)


@_fx.leaf
@_errors.torch_errors
def dcnv3(input, offset, mask, kernel_size, stride=1, padding=0, dilation=1, groups=1,
          offset_scale=1.0, remove_center=False):
    """InternImage's DCNv3 core (``DCNv3Function``), run by cudcn;
    differentiable in input, offset and mask. Channels-last: input
    (N, H, W, G * C), offset (N, H_out, W_out, G * K * 2), mask
    (N, H_out, W_out, G * K); see :func:`cudcn.dcnv3`."""
    _bridge.check_tensors(input=input, offset=offset, mask=mask)
    input, offset, mask = _autocast(input, offset, mask)
    params = _dcnv3_params(kernel_size, stride, padding, dilation, groups, offset_scale,
                           remove_center)
    if torch.onnx.is_in_onnx_export():  # standard ONNX operators instead of the kernel
        from . import onnx_export
        return onnx_export.dcnv3(input, offset, mask, *params)
    return _dcnv3_op(input, offset, mask, *params)


@_fx.leaf
@_errors.torch_errors
def dcnv4(input, offset_mask, kernel_size, stride=1, padding=0, dilation=1, groups=1,
          offset_scale=1.0, remove_center=False):
    """FlashInternImage's DCNv4 core (``DCNv4Function``), run by cudcn;
    differentiable in input and offset_mask (its padding channels get zero
    gradient). input (N, H, W, G * C), offset_mask (N, H_out, W_out,
    D >= G * 3K); see :func:`cudcn.dcnv4`."""
    _bridge.check_tensors(input=input, offset_mask=offset_mask)
    input, offset_mask = _autocast(input, offset_mask)
    params = _dcnv3_params(kernel_size, stride, padding, dilation, groups, offset_scale,
                           remove_center)
    if torch.onnx.is_in_onnx_export():  # standard ONNX operators instead of the kernel
        from . import onnx_export
        return onnx_export.dcnv4(input, offset_mask, *params)
    return _dcnv4_op(input, offset_mask, *params)


# FX leaves also through this module's globals (what torchvision does).
torch.fx.wrap("deform_conv2d")
torch.fx.wrap("deform_roi_pool")
torch.fx.wrap("deform_psroi_pool")
torch.fx.wrap("ms_deform_attn")
torch.fx.wrap("dcnv3")
torch.fx.wrap("dcnv4")
