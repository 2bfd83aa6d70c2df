"""Multi-scale deformable attention (Deformable DETR's sampling core):
forward and backward, on NumPy (CPU) and CuPy (GPU) arrays.

The semantics are mmcv's and Deformable-DETR's CUDA kernel (SPEC section 6):
each query's head samples every level's map at its points, bilinearly with
zero corners outside the map, and sums the samples times their attention
weights. ``points_per_level`` is the RT-DETRv2 / D-FINE variant, a different
number of points on each level.
"""

import collections
import numbers

import numpy as np

from . import _backend, _checks, _kernels, _launch, _point_sampling

MSDeformAttnGrads = collections.namedtuple(
    "MSDeformAttnGrads", ("value", "sampling_locations", "attention_weights"))
MSDeformAttnGrads.__doc__ = """The gradients :func:`cudcn.ms_deform_attn_backward` returns.

    Each gradient has the shape and dtype of its argument of
    :func:`cudcn.ms_deform_attn`; spatial_shapes and level_start_index get
    none.

    Attributes:
        value: (N, S, M, D); None when "value" is not in ``needs``.
        sampling_locations: (N, Lq, M, L, P, 2), or (N, Lq, M,
            sum(points_per_level), 2); None when "sampling_locations" is not
            in ``needs``.
        attention_weights: (N, Lq, M, L, P), or (N, Lq, M,
            sum(points_per_level)); None when "attention_weights" is not in
            ``needs``.
    """

_KERNELS = _point_sampling.SamplingKernels(
    forward=_kernels.MS_DEFORM_ATTN_FORWARD,
    points_partial=_kernels.MS_DEFORM_ATTN_BACKWARD_POINTS_PARTIAL,
    value_items=_kernels.MS_DEFORM_ATTN_BACKWARD_VALUE,
    value_planes=_kernels.MS_DEFORM_ATTN_BACKWARD_VALUE_PLANES,
    scatter_entries=_kernels.MS_DEFORM_ATTN_SCATTER_ENTRIES)


def _host_ints(name, x):
    """An integer array's values on the host (a CuPy array is copied: a sync)."""
    if x.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {x.dtype}")
    return [int(v) for v in (x if isinstance(x, np.ndarray) else x.get()).reshape(-1)]


def _points_per_level(points_per_level, levels):
    if isinstance(points_per_level, (str, bytes)) or not hasattr(points_per_level, "__len__"):
        raise TypeError(f"points_per_level must be a sequence of ints, got {points_per_level!r}")
    counts = tuple(points_per_level)
    if not all(isinstance(p, numbers.Integral) and not isinstance(p, (bool, np.bool_))
               for p in counts):
        raise TypeError(f"points_per_level must be a sequence of ints, got {points_per_level!r}")
    if len(counts) != levels:
        raise ValueError(f"points_per_level has {len(counts)} entries but spatial_shapes has "
                         f"{levels} levels")
    if any(p < 1 for p in counts):
        raise ValueError(f"points_per_level must be >= 1 each, got {points_per_level!r}")
    return tuple(int(p) for p in counts)


class _MSDeformAttn:
    """Checked arguments of ms_deform_attn and the values every kernel takes."""

    def __init__(self, value, spatial_shapes, level_start_index, sampling_locations,
                 attention_weights, im2col_step, points_per_level, grad_output=None):
        _checks.array("value", value, 4, "(N, S, M, D)")
        _checks.array("spatial_shapes", spatial_shapes, 2, "(L, 2): (H_l, W_l) per level")
        _checks.array("level_start_index", level_start_index, 1, "(L,)")
        varying = points_per_level is not None
        _checks.array("sampling_locations", sampling_locations, 5 if varying else 6,
                      "(N, Lq, M, sum(points_per_level), 2)" if varying
                      else "(N, Lq, M, L, P, 2)")
        _checks.array("attention_weights", attention_weights, 4 if varying else 5,
                      "(N, Lq, M, sum(points_per_level))" if varying else "(N, Lq, M, L, P)")
        if grad_output is not None:
            _checks.array("grad_output", grad_output, 3, "(N, Lq, M * D)")
        self.xp = xp = _checks.same_backend(dict(
            value=value, spatial_shapes=spatial_shapes, level_start_index=level_start_index,
            sampling_locations=sampling_locations, attention_weights=attention_weights,
            grad_output=grad_output))
        self.dtype = _checks.float_dtype(dict(
            value=value, sampling_locations=sampling_locations,
            attention_weights=attention_weights, grad_output=grad_output), xp)
        self.acc_dtype = xp.dtype(_kernels.scalar_type(self.dtype).acc_dtype_name)
        _checks.integer("im2col_step", im2col_step, 1)  # drop-in only: changes nothing

        n, s, m, d = value.shape
        levels = spatial_shapes.shape[0]
        if spatial_shapes.shape[1] != 2:
            raise ValueError(f"spatial_shapes must have shape (L, 2), got "
                             f"{tuple(spatial_shapes.shape)}")
        _checks.shape("level_start_index", level_start_index, (levels,), "L")
        shapes = _host_ints("spatial_shapes", spatial_shapes)
        starts = _host_ints("level_start_index", level_start_index)
        if levels < 1:
            raise ValueError("spatial_shapes must have at least one level")
        heights, widths = shapes[0::2], shapes[1::2]
        if any(v < 1 for v in shapes):
            raise ValueError(f"spatial_shapes must be >= 1 each, got {shapes}")
        first = 0
        for level, (h, w, start) in enumerate(zip(heights, widths, starts)):
            if start != first:
                raise ValueError(
                    f"level_start_index[{level}] = {start} but the levels before it, "
                    f"spatial_shapes[:{level}], have {first} rows in all")
            first += h * w
        if first != s:
            raise ValueError(f"value has S = {s} rows but spatial_shapes sums to {first} "
                             "(sum of H_l * W_l)")

        lq = sampling_locations.shape[1]
        if varying:
            counts = _points_per_level(points_per_level, levels)
            point_level = [lvl for lvl, count in enumerate(counts) for _ in range(count)]
            expected = (n, lq, m, len(point_level), 2)
            _checks.shape("sampling_locations", sampling_locations, expected,
                          "N, Lq, M, sum(points_per_level), 2")
        else:
            per = sampling_locations.shape[4]
            point_level = [lvl for lvl in range(levels) for _ in range(per)]
            expected = (n, lq, m, levels, per, 2)
            _checks.shape("sampling_locations", sampling_locations, expected,
                          "N, Lq, M, L, P, 2")
        _checks.shape("attention_weights", attention_weights, expected[:-1],
                      "N, Lq, M, " + ("sum(points_per_level)" if varying else "L, P"))
        self.points = len(point_level)
        self.output_shape = (n, lq, m * d)
        if grad_output is not None:
            _checks.shape("grad_output", grad_output, self.output_shape, "N, Lq, M * D")
        _checks.fits_int32(**{"value rows S": s, "number of queries Lq": lq, "heads M": m,
                              "channels D": d, "points": self.points, "levels": levels,
                              "batch N": n})
        self.value = xp.ascontiguousarray(value)
        self.locations = xp.ascontiguousarray(sampling_locations)
        self.weights = xp.ascontiguousarray(attention_weights)
        self.grad_output = None if grad_output is None else xp.ascontiguousarray(grad_output)
        self.heads_total = n * lq * m  # (n, q, m) triples
        self.index = _launch.index_type(self.value.size, self.locations.size,
                                        n * lq * m * d, 4 * self.heads_total * self.points)
        index_dtype = _kernels.INDEX_DTYPES[self.index]
        self.levels = xp.asarray(np.array([[h, w, start] for h, w, start
                                           in zip(heights, widths, starts)],
                                          dtype=index_dtype))
        self.point_level = xp.asarray(np.array(point_level, dtype=index_dtype))
        self.num_levels = levels
        self.planes = n * m * levels  # the planes strategy's (n, m, level)

    def values(self):
        n, s, m, d = self.value.shape
        return dict(levels=self.levels, point_level=self.point_level, locations=self.locations,
                    weights=self.weights, batch=n, spatial=s, queries=self.locations.shape[1],
                    heads=m, channels=d, points=self.points, num_levels=self.num_levels)

    @property
    def channels(self):
        return self.value.shape[3]

    def sample_bytes(self):
        """Bytes a point's sample reads: its location, weight and four corners' channels."""
        item = self.dtype.itemsize
        return item * (3 + 4 * self.channels)


@_backend.on_arrays_device
def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights, im2col_step=64, points_per_level=None):
    """Multi-scale deformable attention (mmcv's ``MultiScaleDeformableAttnFunction``).

    Args:
        value: (N, S, M, D) the levels' feature maps, flattened and stacked
            (S = sum of H_l * W_l), M heads of D channels; NumPy (CPU) or
            CuPy (GPU).
        spatial_shapes: (L, 2) integers, (H_l, W_l) of each level, each at
            least 1.
        level_start_index: (L,) integers, the first row of each level in S
            (0, H_0 * W_0, ...).
        sampling_locations: (N, Lq, M, L, P, 2) (x, y) normalised to [0, 1]
            (with ``points_per_level``: (N, Lq, M, sum(points_per_level), 2),
            level 0's points first).
        attention_weights: (N, Lq, M, L, P) (with ``points_per_level``:
            (N, Lq, M, sum(points_per_level))), the softmax already applied.
        im2col_step: accepted for drop-in use; any positive int, no effect.
        points_per_level: None, or a sequence of ints, P_l >= 1 for each
            level (RT-DETRv2, D-FINE).

    value, sampling_locations and attention_weights share one dtype:
    float32, float64, float16 or bfloat16 (``ml_dtypes.bfloat16``); the
    16-bit ones are computed in float32. spatial_shapes and
    level_start_index have any integer dtype, on the same backend; their
    values are read on the host (for CuPy arrays, a copy that waits for the
    GPU).

    Returns:
        (N, Lq, M * D) array of value's type, dtype and device: for each
        query and head, the sum over its points of the attention weight
        times the bilinear sample of the point's level at ``(loc_x * W_l -
        0.5, loc_y * H_l - 0.5)``; a point outside the open window ``-1 < y
        < H_l, -1 < x < W_l`` (NaN and inf included) adds nothing.

    Raises:
        TypeError: a non-array, mixed or unsupported float dtypes,
            spatial_shapes or level_start_index of a non-integer dtype,
            im2col_step that is not an int, points_per_level that is not a
            sequence of ints.
        ValueError: ranks or shapes that disagree, spatial_shapes and
            level_start_index inconsistent with each other or with S, no
            level or an empty one, im2col_step < 1, points_per_level of
            another length than L or with an entry < 1, arrays on different
            backends or devices, a size that does not fit in a 32-bit int.
        cudcn.CompilerNotFoundError: on the CPU, when the kernels are not yet
            loaded and no C++ compiler is found (see also :class:`cudcn.CompileError`).

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> value = np.ones((1, 5, 1, 2), np.float32)  # levels of 2 x 2 and 1 x 1
        >>> shapes, starts = np.array([[2, 2], [1, 1]]), np.array([0, 4])
        >>> loc = np.full((1, 1, 1, 2, 1, 2), 0.5, np.float32)
        >>> weights = np.full((1, 1, 1, 2, 1), 0.5, np.float32)
        >>> cudcn.ms_deform_attn(value, shapes, starts, loc, weights)
        array([[[1., 1.]]], dtype=float32)
    """
    a = _MSDeformAttn(value, spatial_shapes, level_start_index, sampling_locations,
                      attention_weights, im2col_step, points_per_level)
    return _point_sampling.forward(a, _KERNELS)


@_backend.on_arrays_device
def ms_deform_attn_backward(grad_output, value, spatial_shapes, level_start_index,
                            sampling_locations, attention_weights, im2col_step=64,
                            points_per_level=None,
                            needs=("value", "sampling_locations", "attention_weights"),
                            deterministic=False):
    """Gradients of :func:`cudcn.ms_deform_attn`.

    Args:
        grad_output: (N, Lq, M * D), of value's dtype.
        value, spatial_shapes, level_start_index, sampling_locations: exactly
            as given to :func:`cudcn.ms_deform_attn`.
        attention_weights, im2col_step, points_per_level: exactly as given to
            :func:`cudcn.ms_deform_attn` (the float arrays of one dtype:
            float32, float64, float16 or bfloat16).
        needs: the gradients to compute, out of "value", "sampling_locations",
            "attention_weights" (default all; a lone string names one).
        deterministic: bit-identical gradients run after run and for any
            thread count, on both backends (the CPU always runs this way).

    Returns:
        :class:`cudcn.MSDeformAttnGrads` (value, sampling_locations,
        attention_weights), each in its argument's shape and dtype, None
        where not asked for. A point outside the open window gets zero
        gradients; inside, the location's gradient is the derivative on the
        cell [floor(y), floor(y) + 1] x [floor(x), floor(x) + 1], as the
        peer's kernel computes it.

    Raises:
        TypeError: as :func:`cudcn.ms_deform_attn` (grad_output included), or
            ``needs`` that is not a string or a collection of strings.
        ValueError: as :func:`cudcn.ms_deform_attn`, a grad_output whose shape
            is not the output's, or ``needs`` naming an unknown gradient.

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> value = np.ones((1, 4, 1, 2))  # one level of 2 x 2, one head
        >>> shapes, starts = np.array([[2, 2]]), np.array([0])
        >>> loc = np.full((1, 3, 1, 1, 1, 2), 0.5)  # 3 queries, 1 point each
        >>> weights = np.ones((1, 3, 1, 1, 1))
        >>> grads = cudcn.ms_deform_attn_backward(
        ...     np.ones((1, 3, 2)), value, shapes, starts, loc, weights,
        ...     needs=("value", "attention_weights"))
        >>> grads.value.shape, grads.attention_weights.shape
        ((1, 4, 1, 2), (1, 3, 1, 1, 1))
        >>> np.round(grads.attention_weights.ravel(), 4), grads.sampling_locations is None
        (array([2., 2., 2.]), True)
    """
    wanted = _checks.needs(needs, MSDeformAttnGrads._fields)
    a = _MSDeformAttn(value, spatial_shapes, level_start_index, sampling_locations,
                      attention_weights, im2col_step, points_per_level, grad_output=grad_output)
    xp = a.xp
    want_points = "sampling_locations" in wanted or "attention_weights" in wanted
    sums = _point_sampling.backward(a, _KERNELS, want_points, "value" in wanted, deterministic)
    grad_locations = grad_weights = None
    if want_points:
        grad_locations = xp.empty(a.locations.shape, dtype=a.dtype)
        grad_weights = xp.empty(a.weights.shape, dtype=a.dtype)
        _point_sampling.reduce_points(
            a, _kernels.MS_DEFORM_ATTN_BACKWARD_POINTS_REDUCE, sums, 6 * a.dtype.itemsize,
            grad_locations=grad_locations, grad_weights=grad_weights,
            want_locations=int("sampling_locations" in wanted),
            want_weights=int("attention_weights" in wanted))
        if "sampling_locations" not in wanted:
            grad_locations = None
        if "attention_weights" not in wanted:
            grad_weights = None
    grad_value = None if sums.grad_value is None else sums.grad_value.astype(a.dtype, copy=False)
    return MSDeformAttnGrads(grad_value, grad_locations, grad_weights)
