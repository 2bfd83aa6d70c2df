"""cudcn's operations as differentiable JAX functions.

Each is a ``jax.custom_vjp`` whose forward and backward rules run cudcn's
forward and backward functions as XLA custom calls (see ``_buffers``). The
forward rule is told which inputs JAX differentiates (``symbolic_zeros=True``
hands it each input's ``perturbed`` flag); it passes their names on to the
backward rule, which asks cudcn for those gradients only: under
``jax.grad(loss)(params)`` a first layer's data input gets no input gradient
and no col2im runs for it. rois never get a gradient (a zero cotangent).
Forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``) is not defined,
as for every ``custom_vjp``; neither is a second derivative (cudcn has no
double backward: differentiating a backward rule raises
``SecondDerivativeError``).

Each op casts its arrays to vary over the same mesh axes before its
``custom_vjp`` (``_buffers.vary_alike``), so that inside ``jax.shard_map``
a replicated argument's gradient is summed over the devices, as JAX does
for its own operations.
"""

import dataclasses
import os

import numpy as np

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

import cudcn
from cudcn import _backend
from cudcn import _checks as _cudcn_checks
from cudcn import deform_conv as _conv
from cudcn.dcnv3 import _DCNv3
from cudcn.ms_deform_attn import _MSDeformAttn
from cudcn import roi_pool as _pool

from . import _buffers, _checks

_stand_in = _checks.stand_in


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Needs:
    """The inputs JAX differentiates, carried from the forward rule to the
    backward rule as a static part of the residuals."""

    names: tuple


# XLA's switches for reproducible GPU results (the first is the one JAX's
# documentation names); a bare boolean flag means true, the last one given wins.
_DETERMINISTIC_FLAGS = ("xla_gpu_deterministic_ops", "xla_gpu_exclude_nondeterministic_ops")
_FLAG_VALUES = {"": True, "true": True, "1": True, "false": False, "0": False}


def _deterministic():
    """Whether XLA_FLAGS asks for deterministic GPU operations, read as XLA
    reads it: ``--flag``, ``--flag=true`` / ``=1`` (or ``-flag``), and
    ``=false`` / ``=0`` to turn it off again. On a GPU it selects cudcn's
    deterministic backward kernels; the CPU backward is deterministic
    whatever it says (see _on_gpu)."""
    enabled = {}
    for token in os.environ.get("XLA_FLAGS", "").split():
        name, _, value = token.lstrip("-").partition("=")
        if name in _DETERMINISTIC_FLAGS and value.lower() in _FLAG_VALUES:
            enabled[name] = _FLAG_VALUES[value.lower()]
    return any(enabled.values())


def _on_gpu(deterministic, array):
    """The deterministic flag of a backward call on ``array``'s device: XLA's
    switch is a GPU one. On the CPU cudcn's backward is deterministic run to
    run already; its deterministic mode there would only fix deform_conv2d's
    product tiles to those of 4 threads."""
    return deterministic and _backend.array_module(array) is not np


def _call(op, fn, arrays, static, results, per_image=frozenset(), result_per_image=None):
    """Run ``fn(**arrays, **static)`` as a custom call; None arrays are left out.

    per_image: the names whose axis 0 is the image axis N; result_per_image:
    per result, whether its axis 0 is N (the others are sums over the
    images). With both, the call divides over the images across devices
    under a sharded jax.jit."""
    present = {name: a for name, a in arrays.items() if a is not None}
    outputs_per_image = bool(per_image) and all(result_per_image)
    call = _buffers.Call(op, fn, tuple(present), tuple(a.ndim for a in present.values()),
                         frozenset(per_image), outputs_per_image, tuple(static),
                         cudcn._workspace.explicit_limit())
    split = None
    if per_image:
        split = _buffers.Split(tuple(name in per_image for name in present),
                               tuple(result_per_image))
    return _buffers.run(call, results, list(present.values()), split)


def _split(primals):
    """custom_vjp primals (symbolic_zeros=True) -> (values, names of perturbed ones)."""
    values = {name: None if p is None else p.value for name, p in primals.items()}
    needs = tuple(name for name, p in primals.items() if p is not None and p.perturbed)
    return values, needs


def _gradients(rule_inputs, needs, grads):
    """The backward rule's output: a gradient where one was computed, else None (zero)."""
    by_name = dict(zip(needs, grads))
    return tuple(by_name.get(name) for name in rule_inputs)


def _cotangent(g, like):
    return jnp.asarray(g, dtype=like.dtype)


def _forward_rule(primal, params, primals):
    """An op's custom_vjp forward rule: the output, and as residuals the input
    values with the names of those JAX differentiates (rois never)."""
    values, needs = _split(primals)
    needs = tuple(n for n in needs if n != "rois")
    return primal(params, *values.values()), (values, _Needs(needs))


def _backward_rule(op, backward, rule_inputs, params, residuals, g, per_image=frozenset(),
                   output_like="input"):
    """An op's custom_vjp backward rule: cudcn's ``backward`` asked for the
    gradients the forward rule named, None for the others. The cotangent
    takes the dtype of input ``output_like``."""
    values, needs = residuals
    if isinstance(g, SymbolicZero) or not needs.names:
        return (None,) * len(rule_inputs)
    static = (*params, ("needs", needs.names), ("deterministic", _deterministic()))
    grads = _call(op, backward, dict(grad_output=_cotangent(g, values[output_like]), **values),
                  static, [(values[n].shape, values[n].dtype) for n in needs.names],
                  per_image, tuple(n in per_image for n in needs.names))
    return _gradients(rule_inputs, needs.names, grads)


# --- deform_conv2d ---------------------------------------------------------

_CONV_INPUTS = ("input", "offset", "weight", "bias", "mask")
_CONV_PER_IMAGE = frozenset({"input", "offset", "mask", "grad_output"})


def _conv_forward(*, input, offset, weight, bias=None, mask=None, stride, padding, dilation):
    return (cudcn.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask),)


def _conv_backward(*, grad_output, input, offset, weight, bias=None, mask=None, stride, padding,
                   dilation, needs, deterministic):
    grads = cudcn.deform_conv2d_backward(grad_output, input, offset, weight, bias, stride,
                                         padding, dilation, mask, needs=needs,
                                         deterministic=_on_gpu(deterministic, input))
    return tuple(getattr(grads, name) for name in needs)


def _conv_primal(params, input, offset, weight, bias, mask):
    p = dict(params)
    size = [(s + 2 * pad - (d * (k - 1) + 1)) // st + 1 for s, pad, d, k, st in
            zip(input.shape[2:], p["padding"], p["dilation"], weight.shape[2:], p["stride"])]
    shape = (input.shape[0], weight.shape[0], *size)
    arrays = dict(input=input, offset=offset, weight=weight, bias=bias, mask=mask)
    (out,) = _call("deform_conv2d", _conv_forward, arrays, params, [(shape, input.dtype)],
                   _CONV_PER_IMAGE, (True,))
    return out


_conv_primal = jax.custom_vjp(_conv_primal, nondiff_argnums=(0,))


def _conv_fwd(params, input, offset, weight, bias, mask):
    return _forward_rule(_conv_primal, params,
                         dict(input=input, offset=offset, weight=weight, bias=bias, mask=mask))


def _conv_bwd(params, residuals, g):
    return _backward_rule("deform_conv2d", _conv_backward, _CONV_INPUTS, params, residuals, g,
                          _CONV_PER_IMAGE)


_conv_primal.defvjp(_conv_fwd, _conv_bwd, symbolic_zeros=True)


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Deformable 2-D convolution (``torchvision.ops.deform_conv2d`` semantics) on jax arrays.

    Semantics as :func:`cudcn.deform_conv2d`. The arrays are jax arrays (or
    NumPy arrays) of float32, float64 (with ``jax_enable_x64``), float16 or
    bfloat16, all of one dtype; groups and offset_groups are read from the
    shapes.

    Args:
        input: (N, C_in, H, W).
        offset: (N, 2 * offset_groups * kh * kw, H_out, W_out); channel
            2 * (g * kh * kw + k) is the y offset of kernel point k (row-major)
            of offset group g, the next channel its x offset.
        weight: (C_out, C_in / groups, kh, kw).
        bias: (C_out,) or None.
        stride, padding, dilation: int or (h, w) pair.
        mask: (N, offset_groups * kh * kw, H_out, W_out) modulation (DCN v2),
            or None (DCN v1).

    Returns:
        (N, C_out, H_out, W_out) in the inputs' dtype,
        ``H_out = (H + 2 * pad_h - (dil_h * (kh - 1) + 1)) // stride_h + 1``
        (likewise W_out). Differentiable in input, offset, weight, bias and
        mask (``jax.grad``, ``jax.vjp``; first derivatives only); works under
        ``jax.jit`` and ``jax.vmap``. Bad arguments raise cudcn's TypeError or
        ValueError when the call is traced.

    Raises:
        TypeError: an argument that is not a jax or NumPy array (or None
            where allowed), an unsupported or mixed dtype, a stride, padding
            or dilation that is not an int or a pair of ints (a traced value
            included); also JAX's own, for forward-mode differentiation
            (``jax.jvp``, ``jax.jacfwd``) of a ``custom_vjp``.
        ValueError: ranks or shapes that disagree (channels that groups or
            offset_groups do not divide, an offset or mask not of the
            output's size), a stride or dilation below 1 or a negative
            padding, an empty output.
        {limits}

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import cudcn.adapters.jax as cj
        >>> x = jnp.arange(16.0).reshape(1, 1, 4, 4)
        >>> weight = jnp.ones((2, 1, 3, 3))
        >>> offset = jnp.zeros((1, 2 * 3 * 3, 2, 2))
        >>> y = cj.deform_conv2d(x, offset, weight)
        >>> y.shape, y.dtype
        ((1, 2, 2, 2), dtype('float32'))
        >>> y[0, 0].tolist()  # zero offsets: the plain convolution
        [[45.0, 54.0], [81.0, 90.0]]
        >>> loss = lambda x, offset: cj.deform_conv2d(x, offset, weight).sum()
        >>> grad_x, grad_offset = jax.grad(loss, argnums=(0, 1))(x, offset)
        >>> grad_x.shape, grad_offset.shape
        ((1, 1, 4, 4), (1, 18, 2, 2))
        >>> jax.jit(cj.deform_conv2d)(x, offset, weight).shape
        (1, 2, 2, 2)
    """
    arrays = _checks.as_jax(optional=("bias", "mask"), input=input, offset=offset,
                             weight=weight, bias=bias, mask=mask)
    g = _conv._geometry(*map(_stand_in, arrays), stride, padding, dilation)
    params = (("stride", g.stride), ("padding", g.padding), ("dilation", g.dilation))
    return _conv_primal(params, *_buffers.vary_alike(arrays))


# --- deform_roi_pool -------------------------------------------------------

_ROI_INPUTS = ("input", "rois", "offset", "mask")


def _roi_forward(*, input, rois, offset=None, mask=None, **params):
    return (cudcn.deform_roi_pool(input, rois, offset, mask=mask, **params),)


def _roi_backward(*, grad_output, input, rois, offset=None, mask=None, needs, deterministic,
                  **params):
    grads = cudcn.deform_roi_pool_backward(grad_output, input, rois, offset, mask=mask,
                                           needs=needs,
                                           deterministic=_on_gpu(deterministic, input), **params)
    return tuple(getattr(grads, name) for name in needs)


def _roi_primal(params, input, rois, offset, mask):
    shape = (rois.shape[0], input.shape[1], *dict(params)["output_size"])
    arrays = dict(input=input, rois=rois, offset=offset, mask=mask)
    (out,) = _call("deform_roi_pool", _roi_forward, arrays, params, [(shape, input.dtype)])
    return out


_roi_primal = jax.custom_vjp(_roi_primal, nondiff_argnums=(0,))


def _roi_fwd(params, input, rois, offset, mask):
    return _forward_rule(_roi_primal, params,
                         dict(input=input, rois=rois, offset=offset, mask=mask))


def _roi_bwd(params, residuals, g):
    return _backward_rule("deform_roi_pool", _roi_backward, _ROI_INPUTS, params, residuals, g)


_roi_primal.defvjp(_roi_fwd, _roi_bwd, symbolic_zeros=True)


def deform_roi_pool(input, rois, offset=None, output_size=7, spatial_scale=1.0,
                    sampling_ratio=0, gamma=0.1, mask=None):
    """Deformable RoI pooling, mmcv's ``deform_roi_pool`` (modulated with ``mask``), on jax arrays.

    Semantics as :func:`cudcn.deform_roi_pool`. input, offset and mask are
    jax (or NumPy) arrays of float32, float64 (with ``jax_enable_x64``),
    float16 or bfloat16, of one dtype.

    Args:
        input: (N, C, H, W).
        rois: (K, 5) boxes ``(batch index, x1, y1, x2, y2)`` in input-image
            coordinates, any floating dtype; they get no gradient.
        offset: (K, 2, PH, PW) normalised bin offsets (channel 0 = x, 1 = y),
            or None (RoIAlign).
        output_size: PH = PW, or a pair (PH, PW).
        spatial_scale, sampling_ratio, gamma: as :func:`cudcn.deform_roi_pool`
            (spatial_scale positive, sampling_ratio an int, 0 or less for
            adaptive); Python numbers, fixed when ``jax.jit`` traces.
        mask: (K, 1, PH, PW) or None.

    Returns:
        (K, C, PH, PW) in the input's dtype, differentiable in input, offset
        and mask (``jax.grad``, ``jax.vjp``; first derivatives only); works
        under ``jax.jit`` and ``jax.vmap``.

    Raises:
        TypeError: an argument that is not a jax or NumPy array (or None
            where allowed), an unsupported or mixed dtype, integer rois, an
            output_size or sampling_ratio that is not an int (or pair of
            ints), a spatial_scale or gamma that is not a real number; also
            JAX's own, for forward-mode differentiation.
        ValueError: ranks or shapes that disagree, an output_size below 1,
            a spatial_scale that is not positive and finite, a gamma that
            is not finite.
        {limits}

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import cudcn.adapters.jax as cj
        >>> x = jnp.arange(16.0).reshape(1, 1, 4, 4)
        >>> rois = jnp.array([[0.0, 0.0, 0.0, 4.0, 4.0]])
        >>> cj.deform_roi_pool(x, rois, output_size=2)[0, 0].tolist()
        [[2.5, 4.5], [10.5, 12.5]]
        >>> offset = jnp.zeros((1, 2, 2, 2))
        >>> loss = lambda offset: cj.deform_roi_pool(x, rois, offset, output_size=2).sum()
        >>> jax.grad(loss)(offset).shape
        (1, 2, 2, 2)
    """
    input, rois, offset, mask = _checks.as_jax(optional=("offset", "mask"), input=input,
                                               rois=rois, offset=offset, mask=mask)
    p = _pool._RoIPool(_stand_in(input), _stand_in(rois), _stand_in(offset), _stand_in(mask),
                       output_size, spatial_scale, sampling_ratio, gamma)
    params = (("output_size", p.pooled), ("spatial_scale", p.spatial_scale),
              ("sampling_ratio", p.sampling_ratio), ("gamma", p.gamma))
    return _roi_primal(params, *_buffers.vary_alike([input, rois, offset, mask]))


# --- deform_psroi_pool -----------------------------------------------------

_PSROI_INPUTS = ("input", "rois", "offset")


def _psroi_forward(*, input, rois, offset=None, **params):
    return (cudcn.deform_psroi_pool(input, rois, offset, **params),)


def _psroi_backward(*, grad_output, input, rois, offset=None, needs, deterministic, **params):
    grads = cudcn.deform_psroi_pool_backward(grad_output, input, rois, offset, needs=needs,
                                             deterministic=_on_gpu(deterministic, input),
                                             **params)
    return tuple(getattr(grads, name) for name in needs)


def _psroi_primal(params, input, rois, offset):
    p = dict(params)
    shape = (rois.shape[0], p["output_dim"], p["pooled_size"], p["pooled_size"])
    (out,) = _call("deform_psroi_pool", _psroi_forward,
                   dict(input=input, rois=rois, offset=offset), params, [(shape, input.dtype)])
    return out


_psroi_primal = jax.custom_vjp(_psroi_primal, nondiff_argnums=(0,))


def _psroi_fwd(params, input, rois, offset):
    return _forward_rule(_psroi_primal, params, dict(input=input, rois=rois, offset=offset))


def _psroi_bwd(params, residuals, g):
    return _backward_rule("deform_psroi_pool", _psroi_backward, _PSROI_INPUTS, params, residuals, g)


_psroi_primal.defvjp(_psroi_fwd, _psroi_bwd, symbolic_zeros=True)


def deform_psroi_pool(input, rois, offset=None, *, output_dim, group_size, pooled_size,
                      part_size=None, sample_per_part=4, trans_std=0.0, spatial_scale=0.0625):
    """Deformable position-sensitive RoI pooling (R-FCN; Deformable-ConvNets) on jax arrays.

    Semantics as :func:`cudcn.deform_psroi_pool`. input and offset are jax
    (or NumPy) arrays of float32, float64 (with ``jax_enable_x64``),
    float16 or bfloat16, of one dtype. The arguments after offset are
    keyword only, Python numbers fixed when ``jax.jit`` traces.

    Args:
        input: (N, output_dim * group_size ** 2, H, W).
        rois: (K, 5) boxes ``(batch index, x1, y1, x2, y2)``, any floating
            dtype; they get no gradient.
        offset: (K, 2 * num_classes, part_size, part_size) normalised part
            offsets (channel 2c = x, 2c + 1 = y of class c; num_classes must
            divide output_dim), or None for no offsets.
        output_dim, group_size, pooled_size: output channels, side of the
            position-sensitive grid, bins per side; ints of at least 1.
        part_size: offset cells per side, an int of at least 1 (default
            pooled_size).
        sample_per_part: samples per bin and axis, an int of at least 1.
        trans_std: the offsets are scaled by ``trans_std * roi size``.
        spatial_scale: feature-map size over input-image size (positive).

    Returns:
        (K, output_dim, pooled_size, pooled_size) in the input's dtype,
        differentiable in input and offset (``jax.grad``, ``jax.vjp``; first
        derivatives only); works under ``jax.jit`` and ``jax.vmap``.

    Raises:
        TypeError: an argument that is not a jax or NumPy array (or None
            where allowed), an unsupported or mixed dtype, integer rois, a
            size that is not an int, a trans_std or spatial_scale that is
            not a real number; also JAX's own, for forward-mode
            differentiation.
        ValueError: ranks or shapes that disagree (input channels other
            than ``output_dim * group_size ** 2``, an offset of another size,
            output_dim not a multiple of num_classes), a size below 1, a
            spatial_scale that is not positive and finite.
        {limits}

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import cudcn.adapters.jax as cj
        >>> x = jnp.ones((1, 2 * 2 * 2, 4, 4))
        >>> rois = jnp.array([[0.0, 0.0, 0.0, 3.0, 3.0]])
        >>> pool = lambda x: cj.deform_psroi_pool(x, rois, output_dim=2, group_size=2,
        ...                                       pooled_size=2, spatial_scale=1.0)
        >>> y = pool(x)
        >>> y.shape, y.ravel().tolist()
        ((1, 2, 2, 2), [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
        >>> jax.grad(lambda x: pool(x).sum())(x).shape
        (1, 8, 4, 4)
    """
    input, rois, offset = _checks.as_jax(optional=("offset",), input=input, rois=rois,
                                         offset=offset)
    p = _pool._PSRoIPool(_stand_in(input), _stand_in(rois), _stand_in(offset), output_dim,
                         group_size, pooled_size, part_size, sample_per_part, trans_std,
                         spatial_scale)
    params = (("output_dim", p.output_dim), ("group_size", p.group_size),
              ("pooled_size", p.pooled_size), ("part_size", p.part_size),
              ("sample_per_part", p.sample_per_part), ("trans_std", p.trans_std),
              ("spatial_scale", p.spatial_scale))
    return _psroi_primal(params, *_buffers.vary_alike([input, rois, offset]))


# --- ms_deform_attn --------------------------------------------------------

_MSDA_INPUTS = ("value", "sampling_locations", "attention_weights")
_MSDA_PER_IMAGE = frozenset({"value", "sampling_locations", "attention_weights", "grad_output"})


def _levels(value, spatial_shapes, level_start_index):
    """The static level tables as arrays of value's backend (NumPy or CuPy)."""
    xp = _backend.array_module(value)
    return (xp.asarray(np.array(spatial_shapes, dtype=np.int64).reshape(-1, 2)),
            xp.asarray(np.array(level_start_index, dtype=np.int64)))


def _msda_forward(*, value, sampling_locations, attention_weights, spatial_shapes,
                  level_start_index, im2col_step, points_per_level):
    shapes, starts = _levels(value, spatial_shapes, level_start_index)
    return (cudcn.ms_deform_attn(value, shapes, starts, sampling_locations, attention_weights,
                                 im2col_step, points_per_level),)


def _msda_backward(*, grad_output, value, sampling_locations, attention_weights, spatial_shapes,
                   level_start_index, im2col_step, points_per_level, needs, deterministic):
    shapes, starts = _levels(value, spatial_shapes, level_start_index)
    grads = cudcn.ms_deform_attn_backward(grad_output, value, shapes, starts,
                                          sampling_locations, attention_weights, im2col_step,
                                          points_per_level, needs=needs,
                                          deterministic=_on_gpu(deterministic, value))
    return tuple(getattr(grads, name) for name in needs)


def _msda_primal(params, value, sampling_locations, attention_weights):
    n, _, heads, channels = value.shape
    shape = (n, sampling_locations.shape[1], heads * channels)
    arrays = dict(value=value, sampling_locations=sampling_locations,
                  attention_weights=attention_weights)
    (out,) = _call("ms_deform_attn", _msda_forward, arrays, params, [(shape, value.dtype)],
                   _MSDA_PER_IMAGE, (True,))
    return out


_msda_primal = jax.custom_vjp(_msda_primal, nondiff_argnums=(0,))


def _msda_fwd(params, value, sampling_locations, attention_weights):
    return _forward_rule(_msda_primal, params,
                         dict(value=value, sampling_locations=sampling_locations,
                              attention_weights=attention_weights))


def _msda_bwd(params, residuals, g):
    return _backward_rule("ms_deform_attn", _msda_backward, _MSDA_INPUTS, params, residuals, g,
                          _MSDA_PER_IMAGE, output_like="value")


_msda_primal.defvjp(_msda_fwd, _msda_bwd, symbolic_zeros=True)


def _static_ints(name, x):
    """A level table as a NumPy int64 array: the level sizes decide the
    kernels' launches, so they must be known when JAX traces."""
    if isinstance(x, jax.core.Tracer):
        raise TypeError(f"{name} must be static (known when jax.jit traces): pass a NumPy "
                        "array, a tuple, or a concrete jax array, not a traced value")
    array = np.asarray(x)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {array.dtype}")
    return array.astype(np.int64)


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights, im2col_step=64, points_per_level=None):
    """Multi-scale deformable attention (Deformable DETR) on jax arrays.

    Semantics as :func:`cudcn.ms_deform_attn`. value, sampling_locations
    and attention_weights are jax (or NumPy) arrays of float32, float64
    (with ``jax_enable_x64``), float16 or bfloat16, of one dtype; the level
    tables have an integer dtype and are static.

    Args:
        value: (N, S, M, D): the levels' feature maps flattened and stacked
            (S = sum of H_l * W_l), M heads of D channels.
        spatial_shapes: (L, 2) (H_l, W_l) per level, static: a NumPy array,
            a tuple or a concrete jax array (not a traced value).
        level_start_index: (L,) the first row of each level in S, static.
        sampling_locations: (N, Lq, M, L, P, 2) (x, y) in [0, 1] (with
            ``points_per_level``: (N, Lq, M, sum(points_per_level), 2)).
        attention_weights: (N, Lq, M, L, P) (or (N, Lq, M, sum(points_per_level))),
            the softmax already applied.
        im2col_step: an int of at least 1, accepted for drop-in use; it
            changes nothing.
        points_per_level: None, or a sequence of L ints P_l, the points of
            each level (RT-DETRv2, D-FINE).

    Returns:
        (N, Lq, M * D) in value's dtype, differentiable in value,
        sampling_locations and attention_weights (``jax.grad``, ``jax.vjp``;
        first derivatives only); works under ``jax.jit`` and ``jax.vmap``.
        Bad arguments raise cudcn's TypeError or ValueError when the call is
        traced.

    Raises:
        TypeError: an argument that is not a jax or NumPy array, an
            unsupported or mixed floating dtype, level tables that are traced
            or without an integer dtype, an im2col_step or points_per_level
            entry that is not an int; also JAX's own, for forward-mode
            differentiation.
        ValueError: ranks or shapes that disagree, spatial_shapes and
            level_start_index inconsistent with each other or with S, a
            points_per_level without one entry per level, an im2col_step or
            points_per_level entry below 1.
        {limits}

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import numpy as np
        >>> import cudcn.adapters.jax as cj
        >>> value = jnp.ones((1, 5, 1, 2))
        >>> shapes, starts = np.array([[2, 2], [1, 1]]), np.array([0, 4])
        >>> locations = jnp.full((1, 1, 1, 2, 1, 2), 0.5)
        >>> weights = jnp.full((1, 1, 1, 2, 1), 0.5)
        >>> y = cj.ms_deform_attn(value, shapes, starts, locations, weights)
        >>> y.shape, y.tolist()
        ((1, 1, 2), [[[1.0, 1.0]]])
        >>> loss = lambda value: cj.ms_deform_attn(value, shapes, starts, locations, weights).sum()
        >>> jax.grad(loss)(value).shape
        (1, 5, 1, 2)
    """
    value, sampling_locations, attention_weights = _checks.as_jax(
        value=value, sampling_locations=sampling_locations, attention_weights=attention_weights)
    shapes = _static_ints("spatial_shapes", spatial_shapes)
    starts = _static_ints("level_start_index", level_start_index)
    _MSDeformAttn(_stand_in(value), shapes, starts, _stand_in(sampling_locations),
                  _stand_in(attention_weights), im2col_step, points_per_level)  # the checks
    params = (("spatial_shapes", tuple(map(tuple, shapes.reshape(-1, 2).tolist()))),
              ("level_start_index", tuple(starts.tolist())), ("im2col_step", int(im2col_step)),
              ("points_per_level", None if points_per_level is None
               else tuple(int(p) for p in points_per_level)))
    return _msda_primal(params, *_buffers.vary_alike([value, sampling_locations,
                                                      attention_weights]))


# --- dcnv3 / dcnv4 ---------------------------------------------------------

_DCNV3_INPUTS = ("input", "offset", "mask")
_DCNV4_INPUTS = ("input", "offset_mask")
# Every array of both ops (and every gradient) has the image axis N first and
# nothing is shared between images: vmap always folds into N.
_DCNV3_PER_IMAGE = frozenset({"input", "offset", "mask", "offset_mask", "grad_output"})


def _dcnv3_forward(*, input, offset, mask, **params):
    return (cudcn.dcnv3(input, offset, mask, **params),)


def _dcnv3_backward(*, grad_output, input, offset, mask, needs, deterministic, **params):
    grads = cudcn.dcnv3_backward(grad_output, input, offset, mask, needs=needs,
                                 deterministic=_on_gpu(deterministic, input), **params)
    return tuple(getattr(grads, name) for name in needs)


def _dcnv4_forward(*, input, offset_mask, **params):
    return (cudcn.dcnv4(input, offset_mask, **params),)


def _dcnv4_backward(*, grad_output, input, offset_mask, needs, deterministic, **params):
    grads = cudcn.dcnv4_backward(grad_output, input, offset_mask, needs=needs,
                                 deterministic=_on_gpu(deterministic, input), **params)
    return tuple(getattr(grads, name) for name in needs)


def _dcnv3_output(input, per_pixel):
    """The result's (shape, dtype): (N, H_out, W_out) from offset or
    offset_mask (the checks made them agree with the geometry), input's
    channels and dtype."""
    return [((*per_pixel.shape[:3], input.shape[3]), input.dtype)]


def _dcnv3_primal(params, input, offset, mask):
    (out,) = _call("dcnv3", _dcnv3_forward, dict(input=input, offset=offset, mask=mask), params,
                   _dcnv3_output(input, offset), _DCNV3_PER_IMAGE, (True,))
    return out


_dcnv3_primal = jax.custom_vjp(_dcnv3_primal, nondiff_argnums=(0,))


def _dcnv3_fwd(params, input, offset, mask):
    return _forward_rule(_dcnv3_primal, params, dict(input=input, offset=offset, mask=mask))


def _dcnv3_bwd(params, residuals, g):
    return _backward_rule("dcnv3", _dcnv3_backward, _DCNV3_INPUTS, params, residuals, g,
                          _DCNV3_PER_IMAGE)


_dcnv3_primal.defvjp(_dcnv3_fwd, _dcnv3_bwd, symbolic_zeros=True)


def _dcnv4_primal(params, input, offset_mask):
    (out,) = _call("dcnv4", _dcnv4_forward, dict(input=input, offset_mask=offset_mask), params,
                   _dcnv3_output(input, offset_mask), _DCNV3_PER_IMAGE, (True,))
    return out


_dcnv4_primal = jax.custom_vjp(_dcnv4_primal, nondiff_argnums=(0,))


def _dcnv4_fwd(params, input, offset_mask):
    return _forward_rule(_dcnv4_primal, params, dict(input=input, offset_mask=offset_mask))


def _dcnv4_bwd(params, residuals, g):
    return _backward_rule("dcnv4", _dcnv4_backward, _DCNV4_INPUTS, params, residuals, g,
                          _DCNV3_PER_IMAGE)


_dcnv4_primal.defvjp(_dcnv4_fwd, _dcnv4_bwd, symbolic_zeros=True)


def _dcnv3_params(kernel_size, stride, padding, dilation, groups, offset_scale, remove_center):
    """The static arguments, normalised (``kernel_size=3`` and ``(3, 3)`` are
    one compiled program). cudcn's ``_DCNv3`` has checked them already."""
    return (("kernel_size", _cudcn_checks.int_pair("kernel_size", kernel_size, 1)),
            ("stride", _cudcn_checks.int_pair("stride", stride, 1)),
            ("padding", _cudcn_checks.int_pair("padding", padding, 0)),
            ("dilation", _cudcn_checks.int_pair("dilation", dilation, 1)),
            ("groups", _cudcn_checks.integer("groups", groups, 1)),
            ("offset_scale", _cudcn_checks.real("offset_scale", offset_scale)),
            ("remove_center", remove_center))


_DCNV3_ARGS_DOC = """kernel_size, stride, padding, dilation: int or (h, w) pair.
        groups: int G; input's channels must be a multiple of it.
        offset_scale: real number, InternImage's ``offset_scale`` (the factor
            of the offsets and of the kernel's extent around its centre).
        remove_center: bool: skip the kernel's centre point (odd square
            kernels of at least 3 x 3); K = kh * kw - 1 then."""


def dcnv3(input, offset, mask, kernel_size, stride=1, padding=0, dilation=1, groups=1,
          offset_scale=1.0, remove_center=False):
    """DCNv3's core (InternImage's ``DCNv3Function``), channels-last, on jax arrays.

    The arrays are jax (or NumPy) arrays of float32, float64 (with
    ``jax_enable_x64``), float16 or bfloat16, all of one dtype. The seven
    arguments after mask are static: Python values, fixed when ``jax.jit``
    traces (a traced value raises a TypeError).

    Args:
        input: (N, H, W, G * C).
        offset: (N, H_out, W_out, G * K * 2): per group, K (dx, dy) pairs,
            the K = kh * kw kernel points x-outer, y-inner.
        mask: (N, H_out, W_out, G * K), the softmax (if any) already applied.
        {args}

    Returns:
        (N, H_out, W_out, G * C) in the inputs' dtype, ``H_out = (H + 2 *
        pad_h - (dil_h * (kh - 1) + 1)) // stride_h + 1`` (likewise W_out);
        see :func:`cudcn.dcnv3`. Differentiable in input, offset and mask
        (``jax.grad``, ``jax.vjp``; first derivatives only); works under
        ``jax.jit`` and ``jax.vmap``. Bad arguments raise cudcn's TypeError
        or ValueError when the call is traced.

    Raises:
        TypeError: an argument that is not a jax or NumPy array, an
            unsupported or mixed dtype, a size that is not an int or a pair
            of ints (a traced value included), an offset_scale that is not a
            real number, a remove_center that is not a bool; also JAX's own,
            for forward-mode differentiation.
        ValueError: ranks or shapes that disagree, channels that groups does
            not divide, remove_center with an even or non-square kernel, a
            size out of range, an empty output.
        {limits}

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import cudcn.adapters.jax as cj
        >>> x = jnp.arange(4.0).reshape(1, 2, 2, 1)
        >>> offset = jnp.zeros((1, 2, 2, 2))
        >>> mask = jnp.ones((1, 2, 2, 1))
        >>> y = cj.dcnv3(x, offset, mask, kernel_size=1)
        >>> y.shape, y[..., 0].tolist()
        ((1, 2, 2, 1), [[[0.0, 1.0], [2.0, 3.0]]])
        >>> loss = lambda x: cj.dcnv3(x, offset, mask, kernel_size=1).sum()
        >>> jax.grad(loss)(x).ravel().tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
    input, offset, mask = _checks.as_jax(input=input, offset=offset, mask=mask)
    static = (kernel_size, stride, padding, dilation, groups, offset_scale, remove_center)
    # cudcn's checks, on stand-ins of the traced shapes and dtypes.
    _DCNv3(_stand_in(input), *static, offset=_stand_in(offset), mask=_stand_in(mask))
    return _dcnv3_primal(_dcnv3_params(*static), *_buffers.vary_alike([input, offset, mask]))


def dcnv4(input, offset_mask, kernel_size, stride=1, padding=0, dilation=1, groups=1,
          offset_scale=1.0, remove_center=False):
    """DCNv4's core (FlashInternImage's ``DCNv4Function``), channels-last, on
    jax arrays: :func:`cudcn.adapters.jax.dcnv3` with offsets and mask packed
    in one array, and no softmax.

    The arrays are jax (or NumPy) arrays of float32, float64 (with
    ``jax_enable_x64``), float16 or bfloat16, of one dtype. The seven
    arguments after offset_mask are static: Python values, fixed when
    ``jax.jit`` traces (a traced value raises a TypeError).

    Args:
        input: (N, H, W, G * C).
        offset_mask: (N, H_out, W_out, D), D >= G * 3K: per group g, the
            values at g * 3K ... g * 3K + 2K - 1 are the K (dx, dy) pairs and
            the next K the mask; channels from G * 3K on (DCNv4 pads D to a
            multiple of 8) are ignored.
        {args}

    Returns:
        (N, H_out, W_out, G * C) in the inputs' dtype, as
        :func:`cudcn.adapters.jax.dcnv3`. Differentiable in input and
        offset_mask (its padding channels get a zero gradient; first
        derivatives only); works under ``jax.jit`` and ``jax.vmap``. Bad
        arguments raise cudcn's TypeError or ValueError when the call is
        traced.

    Raises:
        TypeError: as :func:`cudcn.adapters.jax.dcnv3`.
        ValueError: as :func:`cudcn.adapters.jax.dcnv3`, and an offset_mask
            narrower than ``G * 3K``.
        {limits}

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import cudcn.adapters.jax as cj
        >>> x = jnp.arange(4.0).reshape(1, 2, 2, 1)
        >>> offset_mask = jnp.zeros((1, 2, 2, 8)).at[..., 2].set(1.0)  # the mask of the one point
        >>> y = cj.dcnv4(x, offset_mask, kernel_size=1)
        >>> y.shape, y[..., 0].tolist()
        ((1, 2, 2, 1), [[[0.0, 1.0], [2.0, 3.0]]])
        >>> loss = lambda offset_mask: cj.dcnv4(x, offset_mask, kernel_size=1).sum()
        >>> jax.grad(loss)(offset_mask).shape
        (1, 2, 2, 8)
    """
    input, offset_mask = _checks.as_jax(input=input, offset_mask=offset_mask)
    static = (kernel_size, stride, padding, dilation, groups, offset_scale, remove_center)
    # cudcn's checks, on stand-ins of the traced shapes and dtypes.
    _DCNv3(_stand_in(input), *static, offset_mask=_stand_in(offset_mask))
    return _dcnv4_primal(_dcnv3_params(*static), *_buffers.vary_alike([input, offset_mask]))


dcnv3.__doc__ = dcnv3.__doc__.replace("{args}", _DCNV3_ARGS_DOC)
dcnv4.__doc__ = dcnv4.__doc__.replace("{args}", _DCNV3_ARGS_DOC)

# What every op raises from the adapter's own limits, the same for all six.
_LIMITS_RAISES_DOC = """cudcn.adapters.jax.SecondDerivativeError: when a derivative of its
            gradient is traced (``jax.grad`` of ``jax.grad``).
        cudcn.adapters.jax.ExportError: under ``jax.export``.
        NotImplementedError: when lowered for a platform other than the CPU
            or a GPU, or for several platforms at once."""

for _op in (deform_conv2d, deform_roi_pool, deform_psroi_pool, ms_deform_attn, dcnv3, dcnv4):
    _op.__doc__ = _op.__doc__.replace("{limits}", _LIMITS_RAISES_DOC)
del _op
