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

Argument errors come as :class:`cudcn.adapters.torch.ArgumentValueError`/
:class:`cudcn.adapters.torch.ArgumentTypeError`
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

    Same arguments, defaults and result as torchvision's; shapes and
    semantics as :func:`cudcn.deform_conv2d`. The tensors are float32,
    float64, float16 or bfloat16, all of one dtype, all on the CPU or all on
    one CUDA device; groups and offset_groups are read from the shapes.

    Args:
        input: (N, C_in, H, W).
        offset: (N, 2 * offset_groups * kh * kw, H_out, W_out); channel
            ``2 * (g * kh * kw + k)`` is the y offset of kernel point k
            (row-major) of offset group g, the next channel its x offset.
        weight: (C_out, C_in / groups, kh, kw).
        bias: (C_out,), or None for no bias.
        stride, padding, dilation: int or (h, w) pair of ints; stride and
            dilation at least 1, padding at least 0.
        mask: (N, offset_groups * kh * kw, H_out, W_out) modulation
            (DCN v2), or None for all ones (DCN v1).

    Returns:
        A (N, C_out, H_out, W_out) tensor of the input's dtype and device,
        ``H_out = (H + 2 * pad_h - (dil_h * (kh - 1) + 1)) // stride_h + 1``
        (likewise W_out). Under ``torch.autocast`` the floating tensors are
        cast to the autocast dtype (float64 ones excepted) and the result
        comes in it. The backward (first derivatives only) runs cudcn's
        deterministic kernels under ``torch.use_deterministic_algorithms(True)``;
        differentiating a gradient taken with ``create_graph=True`` raises a
        ``RuntimeError``.

    Raises:
        cudcn.adapters.torch.ArgumentTypeError: an argument that is not a
            tensor, an unsupported or mixed dtype, a stride, padding or
            dilation that is not an int or a pair of ints.
        cudcn.adapters.torch.ArgumentValueError: ranks or shapes that
            disagree (channels that groups or offset_groups do not divide,
            an offset or mask not of the output's size), a stride or
            dilation below 1 or a negative padding, an empty output, tensors
            not on the CPU or CUDA or on different devices.
        NotImplementedError: forward-mode differentiation
            (``torch.func.jvp``, ``torch.func.jacfwd``,
            ``torch.autograd.forward_ad``).

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4).requires_grad_()
        >>> weight = torch.ones(2, 1, 3, 3)
        >>> offset = torch.zeros(1, 2 * 3 * 3, 2, 2, requires_grad=True)
        >>> y = ct.deform_conv2d(x, offset, weight)
        >>> tuple(y.shape), y.dtype
        ((1, 2, 2, 2), torch.float32)
        >>> y[0, 0].tolist()  # zero offsets: the plain convolution
        [[45.0, 54.0], [81.0, 90.0]]
        >>> y.sum().backward()
        >>> tuple(x.grad.shape), tuple(offset.grad.shape)
        ((1, 1, 4, 4), (1, 18, 2, 2))
    """
    _bridge.check_tensors(("bias", "mask"), input=input, offset=offset, weight=weight, bias=bias,
                          mask=mask)
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
    differentiable in input, offset and mask.

    Semantics as :func:`cudcn.deform_roi_pool`. input, offset and mask are
    float32, float64, float16 or bfloat16, all of one dtype; rois may have
    any floating dtype. All on the CPU or all on one CUDA device.

    Args:
        input: (N, C, H, W) feature map.
        rois: (K, 5) boxes ``(batch index, x1, y1, x2, y2)`` in input-image
            coordinates; they get no gradient. An RoI whose batch index is
            not in [0, N) pools zeros.
        offset: (K, 2, PH, PW) normalised bin offsets (channel 0 = x,
            1 = y), or None (RoIAlign).
        output_size: PH = PW as an int, or a pair (PH, PW); at least 1.
        spatial_scale: feature-map size over input-image size (positive,
            finite).
        sampling_ratio: samples per bin and axis, an int; 0 or less picks
            ``ceil(roi size / bins)``.
        gamma: the offset is scaled by ``gamma * roi size`` (finite).
        mask: (K, 1, PH, PW) modulation multiplied into each bin, or None.

    Returns:
        A (K, C, PH, PW) tensor of the input's dtype and device (the
        autocast dtype under ``torch.autocast``). The backward as for
        :func:`cudcn.adapters.torch.deform_conv2d`: first derivatives only,
        deterministic kernels under ``torch.use_deterministic_algorithms(True)``.
        Under ``torch.onnx.export`` it is written as standard ONNX operators.

    Raises:
        cudcn.adapters.torch.ArgumentTypeError: an argument that is not a
            tensor (or None where allowed), an unsupported or mixed dtype,
            integer rois, an output_size or sampling_ratio that is not an
            int (or pair of ints), a spatial_scale or gamma that is not a
            real number.
        cudcn.adapters.torch.ArgumentValueError: ranks or shapes that
            disagree, an output_size below 1, a spatial_scale that is not
            positive and finite, a gamma that is not finite, tensors not on
            the CPU or CUDA or on different devices.
        NotImplementedError: forward-mode differentiation
            (``torch.func.jvp``, ``torch.func.jacfwd``,
            ``torch.autograd.forward_ad``).

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> rois = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]])
        >>> ct.deform_roi_pool(x, rois, output_size=2)[0, 0].tolist()
        [[2.5, 4.5], [10.5, 12.5]]
        >>> offset = torch.zeros(1, 2, 2, 2, requires_grad=True)
        >>> y = ct.deform_roi_pool(x, rois, offset, output_size=2)
        >>> tuple(y.shape)
        (1, 1, 2, 2)
        >>> y.sum().backward()
        >>> tuple(offset.grad.shape)
        (1, 2, 2, 2)
    """
    _bridge.check_tensors(("offset", "mask"), input=input, rois=rois, offset=offset, mask=mask)
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
    differentiable in input and offset.

    Semantics as :func:`cudcn.deform_psroi_pool`. input and offset are
    float32, float64, float16 or bfloat16, of one dtype; rois may have any
    floating dtype. All on the CPU or all on one CUDA device. The arguments
    after offset are keyword only.

    Args:
        input: (N, output_dim * group_size ** 2, H, W) position-sensitive
            score maps.
        rois: (K, 5) boxes ``(batch index, x1, y1, x2, y2)`` in input-image
            coordinates; they get no gradient.
        offset: (K, 2 * num_classes, part_size, part_size) normalised part
            offsets (channel 2c = x, 2c + 1 = y of class c; num_classes
            must divide output_dim), or None for no offsets.
        output_dim, group_size, pooled_size: output channels, side of the
            position-sensitive grid, bins per side; ints of at least 1.
        part_size: offset cells per side, an int of at least 1 (default
            pooled_size).
        sample_per_part: samples per bin and axis, an int of at least 1.
        trans_std: the offsets are scaled by ``trans_std * roi size``
            (finite).
        spatial_scale: feature-map size over input-image size (positive,
            finite).

    Returns:
        A (K, output_dim, pooled_size, pooled_size) tensor of the input's
        dtype and device (the autocast dtype under ``torch.autocast``). The
        backward as for :func:`cudcn.adapters.torch.deform_conv2d`. Under
        ``torch.onnx.export`` it is written as standard ONNX operators.

    Raises:
        cudcn.adapters.torch.ArgumentTypeError: an argument that is not a
            tensor (or None where allowed), an unsupported or mixed dtype,
            integer rois, a size that is not an int, a trans_std or
            spatial_scale that is not a real number.
        cudcn.adapters.torch.ArgumentValueError: ranks or shapes that
            disagree (input channels other than
            ``output_dim * group_size ** 2``, an offset of another size,
            output_dim not a multiple of num_classes), a size below 1, a
            spatial_scale that is not positive and finite, tensors not on
            the CPU or CUDA or on different devices.
        NotImplementedError: forward-mode differentiation
            (``torch.func.jvp``, ``torch.func.jacfwd``,
            ``torch.autograd.forward_ad``).

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> x = torch.ones(1, 2 * 2 * 2, 4, 4, requires_grad=True)
        >>> rois = torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0]])
        >>> y = ct.deform_psroi_pool(x, rois, output_dim=2, group_size=2,
        ...                          pooled_size=2, spatial_scale=1.0)
        >>> tuple(y.shape), y.flatten().tolist()
        ((1, 2, 2, 2), [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
        >>> y.sum().backward()
        >>> tuple(x.grad.shape)
        (1, 8, 4, 4)
    """
    _bridge.check_tensors(("offset",), input=input, rois=rois, offset=offset)
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
    attention_weights.

    Semantics as :func:`cudcn.ms_deform_attn`. value, sampling_locations
    and attention_weights are float32, float64, float16 or bfloat16, of one
    dtype; spatial_shapes and level_start_index have an integer dtype
    (int64 or int32). All on the CPU or all on one CUDA device.

    Args:
        value: (N, S, M, D): the levels' feature maps flattened and stacked
            (S = sum of H_l * W_l), M heads of D channels.
        spatial_shapes: (L, 2), (H_l, W_l) of each level.
        level_start_index: (L,), the first row of each level in S.
        sampling_locations: (N, Lq, M, L, P, 2) (x, y) normalised to
            [0, 1]; with ``points_per_level``, (N, Lq, M, sum(points_per_level), 2).
        attention_weights: (N, Lq, M, L, P), the softmax already applied;
            with ``points_per_level``, (N, Lq, M, sum(points_per_level)).
        im2col_step: an int of at least 1, accepted for drop-in use; it
            changes nothing.
        points_per_level: None, or a sequence of L ints P_l, the points of
            each level (RT-DETRv2, D-FINE).

    Returns:
        A (N, Lq, M * D) tensor of value's dtype and device (the autocast
        dtype under ``torch.autocast``). The backward as for
        :func:`cudcn.adapters.torch.deform_conv2d`. Under
        ``torch.onnx.export`` it is written as standard ONNX operators.

    Raises:
        cudcn.adapters.torch.ArgumentTypeError: an argument that is not a
            tensor, an unsupported or mixed floating dtype, level tables
            without an integer dtype, an im2col_step or points_per_level
            entry that is not an int.
        cudcn.adapters.torch.ArgumentValueError: ranks or shapes that
            disagree, spatial_shapes and level_start_index inconsistent with
            each other or with S, a points_per_level without one entry per
            level, an im2col_step or points_per_level entry below 1, tensors
            not on the CPU or CUDA or on different devices.
        NotImplementedError: forward-mode differentiation
            (``torch.func.jvp``, ``torch.func.jacfwd``,
            ``torch.autograd.forward_ad``).

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> value = torch.ones(1, 5, 1, 2, requires_grad=True)
        >>> shapes = torch.tensor([[2, 2], [1, 1]])
        >>> starts = torch.tensor([0, 4])
        >>> locations = torch.full((1, 1, 1, 2, 1, 2), 0.5)
        >>> weights = torch.full((1, 1, 1, 2, 1), 0.5)
        >>> y = ct.ms_deform_attn(value, shapes, starts, locations, weights)
        >>> tuple(y.shape), y.tolist()
        ((1, 1, 2), [[[1.0, 1.0]]])
        >>> y.sum().backward()
        >>> tuple(value.grad.shape)
        (1, 5, 1, 2)
    """
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
    differentiable in input, offset and mask.

    Channels-last; semantics as :func:`cudcn.dcnv3`. The tensors are
    float32, float64, float16 or bfloat16, all of one dtype, all on the CPU
    or all on one CUDA device. K = kh * kw kernel points (one fewer with
    remove_center).

    Args:
        input: (N, H, W, G * C).
        offset: (N, H_out, W_out, G * K * 2): per group, K (dx, dy) pairs,
            the kernel points x-outer, y-inner.
        mask: (N, H_out, W_out, G * K), the softmax (if any) already applied.
        kernel_size, stride, padding, dilation: int or (h, w) pair of ints;
            padding at least 0, the others at least 1.
        groups: G, an int of at least 1 that divides input's channels.
        offset_scale: real number, InternImage's ``offset_scale`` (the
            factor of the offsets and of the kernel's extent around its
            centre).
        remove_center: bool: skip the kernel's centre point (odd square
            kernels of at least 3 x 3).

    Returns:
        A (N, H_out, W_out, G * C) tensor of the input's dtype and device
        (the autocast dtype under ``torch.autocast``),
        ``H_out = (H + 2 * pad_h - (dil_h * (kh - 1) + 1)) // stride_h + 1``
        (likewise W_out). The backward as for
        :func:`cudcn.adapters.torch.deform_conv2d`. Under
        ``torch.onnx.export`` it is written as standard ONNX operators.

    Raises:
        cudcn.adapters.torch.ArgumentTypeError: an argument that is not a
            tensor, an unsupported or mixed dtype, a size that is not an int
            or a pair of ints, an offset_scale that is not a real number, a
            remove_center that is not a bool.
        cudcn.adapters.torch.ArgumentValueError: ranks or shapes that
            disagree, channels that groups does not divide, remove_center
            with an even or non-square kernel, a size out of range, an empty
            output, tensors not on the CPU or CUDA or on different devices.
        NotImplementedError: forward-mode differentiation
            (``torch.func.jvp``, ``torch.func.jacfwd``,
            ``torch.autograd.forward_ad``).

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> x = torch.arange(4.0).reshape(1, 2, 2, 1).requires_grad_()
        >>> offset = torch.zeros(1, 2, 2, 2)
        >>> mask = torch.ones(1, 2, 2, 1)
        >>> y = ct.dcnv3(x, offset, mask, kernel_size=1)
        >>> tuple(y.shape), y[..., 0].tolist()
        ((1, 2, 2, 1), [[[0.0, 1.0], [2.0, 3.0]]])
        >>> y.sum().backward()
        >>> x.grad.flatten().tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
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
    gradient).

    :func:`cudcn.adapters.torch.dcnv3` with offsets and mask packed in one
    tensor and no softmax; semantics as :func:`cudcn.dcnv4`. The tensors
    are float32, float64, float16 or bfloat16, of one dtype, on the CPU or
    on one CUDA device.

    Args:
        input: (N, H, W, G * C).
        offset_mask: (N, H_out, W_out, D), ``D >= G * 3K``: per group g,
            the values at ``g * 3K`` to ``g * 3K + 2K - 1`` are the K
            (dx, dy) pairs and the next K the mask; channels from ``G * 3K``
            on (DCNv4 pads D to a multiple of 8) are ignored.
        kernel_size, stride, padding, dilation, groups, offset_scale, remove_center:
            as :func:`cudcn.adapters.torch.dcnv3`.

    Returns:
        A (N, H_out, W_out, G * C) tensor of the input's dtype and device
        (the autocast dtype under ``torch.autocast``), as
        :func:`cudcn.adapters.torch.dcnv3`.

    Raises:
        cudcn.adapters.torch.ArgumentTypeError: as
            :func:`cudcn.adapters.torch.dcnv3`.
        cudcn.adapters.torch.ArgumentValueError: as
            :func:`cudcn.adapters.torch.dcnv3`, and an offset_mask narrower
            than ``G * 3K``.
        NotImplementedError: forward-mode differentiation
            (``torch.func.jvp``, ``torch.func.jacfwd``,
            ``torch.autograd.forward_ad``).

    Example:
        >>> import torch
        >>> import cudcn.adapters.torch as ct
        >>> x = torch.arange(4.0).reshape(1, 2, 2, 1)
        >>> offset_mask = torch.zeros(1, 2, 2, 8, requires_grad=True)
        >>> with torch.no_grad():
        ...     offset_mask[..., 2] = 1.0  # the mask of the one point
        >>> y = ct.dcnv4(x, offset_mask, kernel_size=1)
        >>> tuple(y.shape), y[..., 0].tolist()
        ((1, 2, 2, 1), [[[0.0, 1.0], [2.0, 3.0]]])
        >>> y.sum().backward()
        >>> tuple(offset_mask.grad.shape)
        (1, 2, 2, 8)
    """
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
