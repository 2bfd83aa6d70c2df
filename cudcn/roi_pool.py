"""Deformable RoI pooling (mmcv) and deformable position-sensitive RoI pooling
(R-FCN, the original Deformable-ConvNets operator): forward and backward.

RoIs are converted to the computation dtype (float32 for half inputs), so
any floating dtype is accepted for them.
"""

import collections
import functools

from . import _backend, _checks, _kernels, _launch, _sorted_sum, _workspace

DeformRoIPoolGrads = collections.namedtuple("DeformRoIPoolGrads", ("input", "offset", "mask"))
DeformRoIPoolGrads.__doc__ = """The gradients :func:`cudcn.deform_roi_pool_backward` returns.

    Each gradient has the shape and dtype of its argument of
    :func:`cudcn.deform_roi_pool`; rois get none.

    Attributes:
        input: (N, C, H, W); None when "input" is not in ``needs``.
        offset: (K, 2, PH, PW); None when "offset" is not in ``needs`` or
            offset was None.
        mask: (K, 1, PH, PW); None when "mask" is not in ``needs`` or mask was
            None.
    """
DeformPSRoIPoolGrads = collections.namedtuple("DeformPSRoIPoolGrads", ("input", "offset"))
DeformPSRoIPoolGrads.__doc__ = """The gradients :func:`cudcn.deform_psroi_pool_backward` returns.

    Each gradient has the shape and dtype of its argument of
    :func:`cudcn.deform_psroi_pool`; rois get none.

    Attributes:
        input: (N, output_dim * group_size**2, H, W); None when "input" is not
            in ``needs``.
        offset: (K, 2 * num_classes, part_size, part_size); None when "offset"
            is not in ``needs`` or offset was None.
    """


def _common(input, rois, arrays):
    """Checks shared by both operators; returns (xp, dtype, acc dtype, rois)."""
    _checks.array("input", input, 4, "(N, C, H, W)")
    _checks.array("rois", rois, 2, "(K, 5): batch index, x1, y1, x2, y2")
    xp = _checks.same_backend(dict(input=input, rois=rois, **arrays))
    dtype = _checks.float_dtype(dict(input=input, **arrays), xp)
    acc_dtype = xp.dtype(_kernels.scalar_type(dtype).acc_dtype_name)
    rois = _checks.rois(rois, xp, acc_dtype)
    _checks.fits_int32(**{"input channels": input.shape[1], "input height": input.shape[2],
                          "input width": input.shape[3], "number of RoIs": rois.shape[0]})
    return xp, dtype, acc_dtype, rois


def _index(*extents):
    return _launch.index_type(*extents)


class _RoIPool:
    """Checked arguments of deform_roi_pool and the values every kernel takes."""

    def __init__(self, input, rois, offset, mask, output_size, spatial_scale, sampling_ratio,
                 gamma, grad_output=None):
        extra = {} if grad_output is None else dict(grad_output=grad_output)
        for name, value, layout in (("offset", offset, "(K, 2, PH, PW)"),
                                    ("mask", mask, "(K, 1, PH, PW)"),
                                    ("grad_output", grad_output, "(K, C, PH, PW)")):
            if value is not None:
                _checks.array(name, value, 4, layout)
        self.xp, self.dtype, self.acc_dtype, self.rois = _common(
            input, rois, dict(offset=offset, mask=mask, **extra))
        self.pooled = _checks.int_pair("output_size", output_size, 1)
        self.spatial_scale = _checks.real("spatial_scale", spatial_scale, positive=True)
        self.sampling_ratio = _checks.integer("sampling_ratio", sampling_ratio, None)
        self.gamma = _checks.real("gamma", gamma)
        n, c, h, w = input.shape
        k = self.rois.shape[0]
        ph, pw = self.pooled
        if offset is not None:
            _checks.shape("offset", offset, (k, 2, ph, pw), "K, 2, PH, PW")
        if mask is not None:
            _checks.shape("mask", mask, (k, 1, ph, pw), "K, 1, PH, PW")
        if grad_output is not None:
            _checks.shape("grad_output", grad_output, (k, c, ph, pw), "K, C, PH, PW")
        xp = self.xp
        self.given_input = input
        self.offset = None if offset is None else xp.ascontiguousarray(offset)
        self.mask = None if mask is None else xp.ascontiguousarray(mask)
        self.grad_output = None if grad_output is None else xp.ascontiguousarray(grad_output)
        self.output_shape = (k, c, ph, pw)
        # The sorted strategy's entries: 4 corners of each kept sample of each
        # bin, and a bin keeps at most (H + 3) x (W + 3) adaptive samples.
        per_bin = self.sampling_ratio**2 if self.sampling_ratio > 0 else (h + 3) * (w + 3)
        self.index = _index(k * c * ph * pw, n * c * h * w, k * ph * pw * 4 * per_bin)

    @functools.cached_property
    def input(self):
        """The input, C-contiguous: copied when first asked for, which the
        CPU's forward of a channels-last input never does."""
        return self.xp.ascontiguousarray(self.given_input)

    def samples_per_bin(self):
        """Samples a bin sums (its threads' loop). With adaptive sampling that
        depends on the RoIs: read from them when planning, else a typical 4."""
        if self.sampling_ratio > 0:
            return self.sampling_ratio**2
        if not _launch.is_planning() or self.rois.shape[0] == 0:
            return 4
        import numpy as np

        rois = np.asarray(self.rois.get() if hasattr(self.rois, "get") else self.rois, np.float64)
        sizes = (rois[:, 3:5] - rois[:, 1:3]) * self.spatial_scale
        grid = np.ceil(sizes / np.array(self.pooled[::-1]))
        grid = grid[np.all(np.isfinite(grid), axis=1)].clip(0, None)
        return int((grid[:, 0] * grid[:, 1]).max()) if grid.size else 0

    def geometry(self):
        """The geometry arguments every RoI pooling kernel takes."""
        n, c, h, w = self.given_input.shape
        return dict(batch=n, channels=c, height=h, width=w, pooled_h=self.pooled[0],
                    pooled_w=self.pooled[1], sampling_ratio=self.sampling_ratio)

    def values(self, stand_in=None):
        # Absent offset and mask are never read; an array of the dtype (the
        # input unless given) stands in for their pointers.
        stand_in = self.input if stand_in is None else stand_in
        return dict(
            rois=self.rois, offset=stand_in if self.offset is None else self.offset,
            mask=stand_in if self.mask is None else self.mask,
            use_offset=int(self.offset is not None), use_mask=int(self.mask is not None),
            spatial_scale=self.spatial_scale, gamma=self.gamma, **self.geometry())


@_backend.on_arrays_device
def deform_roi_pool(input, rois, offset=None, output_size=7, spatial_scale=1.0,
                    sampling_ratio=0, gamma=0.1, mask=None):
    """Deformable RoI pooling, mmcv's ``deform_roi_pool`` (and, with ``mask``,
    its modulated variant).

    Each RoI is divided into PH x PW bins; each bin, moved by its offset,
    averages a grid of bilinear samples (RoIAlign's, with the half-pixel
    shift of ``aligned=True``) and is multiplied by its mask.

    Args:
        input: (N, C, H, W) feature map, NumPy (CPU) or CuPy (GPU).
        rois: (K, 5) boxes ``(batch index, x1, y1, x2, y2)`` in input-image
            coordinates, any floating dtype (converted to float32 for 16-bit
            inputs).
        offset: (K, 2, PH, PW) normalised bin offsets, channel 0 = x, 1 = y;
            None gives RoIAlign (torchvision ``roi_align(..., aligned=True)``).
        output_size: PH = PW, or a pair (PH, PW), each at least 1.
        spatial_scale: feature-map size over input-image size (1/16 for
            stride 16), positive.
        sampling_ratio: samples per bin and axis; 0 or less (mmcv's 0,
            torchvision's -1) picks ceil(roi size / bins).
        gamma: the offset is scaled by ``gamma * roi size``.
        mask: (K, 1, PH, PW) modulation multiplied into each bin, or None.

    input, offset and mask share one dtype: float32, float64, float16 or
    bfloat16 (``ml_dtypes.bfloat16``); the 16-bit ones are computed in
    float32.

    Returns:
        (K, C, PH, PW) array of the input's type, dtype and device. An RoI
        whose batch index is not in [0, N), or whose coordinates are not
        finite, pools zeros.

    Raises:
        TypeError: an argument that is not a NumPy or CuPy array, input,
            offset and mask of different or unsupported dtypes, rois of a
            non-floating dtype, output_size that is not an int or a pair of
            ints, sampling_ratio that is not an int, spatial_scale or gamma
            that is not a real number.
        ValueError: an array of the wrong rank or shape, arrays on different
            backends or devices, output_size < 1, spatial_scale not positive
            and finite, gamma not finite, a size that does not fit in a
            32-bit int.
        cudcn.CompilerNotFoundError: on the CPU, when the kernels are not yet
            loaded and no C++ compiler is found (see also :class:`cudcn.CompileError`).

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
        >>> rois = np.array([[0, 0.0, 0.0, 4.0, 4.0]])
        >>> cudcn.deform_roi_pool(x, rois, output_size=2)
        array([[[[ 2.5,  4.5],
                 [10.5, 12.5]]]])
    """
    p = _RoIPool(input, rois, offset, mask, output_size, spatial_scale, sampling_ratio, gamma)
    output = p.xp.empty(p.output_shape, dtype=p.dtype)
    samples = p.samples_per_bin()
    item = p.dtype.itemsize
    if _launch.strategy(p.xp, deterministic=False) == "planes":
        # Channels-last pixels: each sample's corners have their channels side
        # by side. A channels-last input is them already.
        if _backend.channels_last(p.given_input):
            pixels = p.given_input.transpose(0, 2, 3, 1)
        else:
            n, c, h, w = p.given_input.shape
            pixels = _workspace.scratch(p.xp, "roi_pixels", (n, h, w, c), p.dtype)
            _launch.run(_launch.make_launch(
                _kernels.DEFORM_ROI_POOL_FILL_PIXELS, p.dtype, n * h, p.index, input=p.input,
                pixels=pixels, **p.geometry()))
        k, c, ph, pw = p.output_shape
        blocks = -(-c // _kernels.ROI_PIXEL_CHANNELS)
        _launch.run(_launch.make_launch(
            _kernels.DEFORM_ROI_POOL_FORWARD_PIXELS, p.dtype, k * ph * pw * blocks, p.index,
            pixels=pixels, output=output, **p.values(stand_in=pixels)))
        return output
    _launch.run(_launch.make_launch(
        _kernels.DEFORM_ROI_POOL_FORWARD, p.dtype, output.size, p.index, input=p.input,
        output=output, **p.values(),
        work=_launch.Work(samples, output.size * (2 + 4 * samples) * item, output.size)))
    return output


@_backend.on_arrays_device
def deform_roi_pool_backward(grad_output, input, rois, offset=None, output_size=7,
                             spatial_scale=1.0, sampling_ratio=0, gamma=0.1, mask=None,
                             needs=("input", "offset", "mask"), deterministic=False):
    """Gradients of :func:`cudcn.deform_roi_pool`.

    Args:
        grad_output: (K, C, PH, PW), the gradient with respect to the output,
            of the input's dtype.
        input, rois, offset, mask: exactly as given to
            :func:`cudcn.deform_roi_pool` (the same shapes; input, offset and
            mask of one dtype: float32, float64, float16 or bfloat16).
        output_size, spatial_scale, sampling_ratio, gamma: exactly as given to
            :func:`cudcn.deform_roi_pool`.
        needs: the gradients to compute, out of "input", "offset", "mask"
            (default all; a lone string names one).
        deterministic: bit-identical gradients run after run and for any
            thread count, on both backends (the CPU always runs this way).

    Returns:
        :class:`cudcn.DeformRoIPoolGrads` (input, offset, mask); None where not
        asked for, and for offset and mask when they were None. rois get no
        gradient.

    Raises:
        TypeError: as :func:`cudcn.deform_roi_pool` (grad_output included), or
            ``needs`` that is not a string or a collection of strings.
        ValueError: as :func:`cudcn.deform_roi_pool`, a grad_output whose
            shape is not the output's, or ``needs`` naming an unknown gradient.

    The offset gradient is the exact derivative of the forward: it is zero
    along an axis where the sampling point was clamped to the border (mmcv's
    kernel differs there; both agree inside the image).

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
        >>> rois = np.array([[0, 0.0, 0.0, 4.0, 4.0]])
        >>> offset = np.zeros((1, 2, 2, 2))
        >>> grad_output = np.ones((1, 1, 2, 2))
        >>> grads = cudcn.deform_roi_pool_backward(grad_output, x, rois, offset, output_size=2)
        >>> grads.input[0, 0]
        array([[0.25, 0.25, 0.25, 0.25],
               [0.25, 0.25, 0.25, 0.25],
               [0.25, 0.25, 0.25, 0.25],
               [0.25, 0.25, 0.25, 0.25]])
        >>> grads.offset.shape, grads.mask is None
        ((1, 2, 2, 2), True)
    """
    wanted = _checks.needs(needs, DeformRoIPoolGrads._fields)
    p = _RoIPool(input, rois, offset, mask, output_size, spatial_scale, sampling_ratio, gamma,
                 grad_output=grad_output)
    xp = p.xp
    grad_input = grad_offset = grad_mask = None
    values = p.values()
    k, c, ph, pw = p.output_shape
    samples = p.samples_per_bin()
    item, acc = p.dtype.itemsize, p.acc_dtype.itemsize
    if "input" in wanted:
        grad_input = xp.zeros(p.input.shape, dtype=p.acc_dtype)
        strategy = _launch.strategy(xp, deterministic)
        if strategy == "planes":
            blocks = -(-c // _kernels.ROI_CHANNELS)
            _launch.run(_launch.make_launch(
                _kernels.DEFORM_ROI_POOL_BACKWARD_INPUT_PLANES, p.dtype,
                p.input.shape[0] * blocks, p.index, grad_output=p.grad_output,
                grad_input=grad_input, num_rois=k, **values))
        elif strategy == "items":
            outputs = p.grad_output.size
            _launch.run(_launch.make_launch(
                _kernels.DEFORM_ROI_POOL_BACKWARD_INPUT, p.dtype, outputs, p.index,
                grad_output=p.grad_output, grad_input=grad_input, **values,
                work=_launch.Work(samples, outputs * (2 * item + 4 * samples * 2 * acc),
                                  outputs)))
        else:
            _sorted_roi_grad_input(p, grad_input)
        grad_input = grad_input.astype(p.dtype, copy=False)
    want_offset = "offset" in wanted and p.offset is not None
    want_mask = "mask" in wanted and p.mask is not None
    if want_offset or want_mask:
        bins = k * ph * pw
        kernel = (_kernels.DEFORM_ROI_POOL_BACKWARD_OFFSET_PARTIAL_PLANES
                  if _launch.strategy(xp, deterministic) == "planes"
                  else _kernels.DEFORM_ROI_POOL_BACKWARD_OFFSET_PARTIAL)
        # The peer (mmcv) has a thread per output element for this work.
        block = _launch.channel_block(xp, kernel, p.dtype, p.index, bins, c, k * c * ph * pw,
                                      per_channel=max(samples, 1),
                                      max_blocks=_launch.MAX_SERIAL)
        blocks = -(-c // block)
        partials = xp.empty((blocks, 3, bins), dtype=p.acc_dtype)
        _launch.run(_launch.make_launch(
            kernel, p.dtype, blocks * bins, p.index, grad_output=p.grad_output, input=p.input,
            rois=values["rois"], offset=values["offset"], partials=partials,
            use_offset=values["use_offset"], channel_block=block,
            spatial_scale=p.spatial_scale, gamma=p.gamma,
            **{n: values[n] for n in ("batch", "channels", "height", "width", "pooled_h",
                                      "pooled_w", "sampling_ratio")},
            work=_launch.Work(block * samples, bins * c * (1 + 4 * samples) * item
                              + blocks * bins * 3 * acc, k * c * ph * pw)))
        grad_offset = xp.empty(p.offset.shape, dtype=p.dtype) if want_offset else None
        grad_mask = xp.empty(p.mask.shape, dtype=p.dtype) if want_mask else None
        # An unwanted gradient is never written; the wanted one stands in.
        _launch.run(_launch.make_launch(
            _kernels.DEFORM_ROI_POOL_BACKWARD_OFFSET_REDUCE, p.dtype, 3 * bins, p.index,
            partials=partials, grad_offset=grad_mask if grad_offset is None else grad_offset,
            grad_mask=grad_offset if grad_mask is None else grad_mask, blocks=blocks,
            want_grad_offset=int(want_offset), want_grad_mask=int(want_mask), **values,
            work=_launch.Work(blocks, 3 * bins * (blocks * acc + 2 * item), k * c * ph * pw,
                              auxiliary=True)))
    return DeformRoIPoolGrads(grad_input, grad_offset, grad_mask)


def _sorted_roi_grad_input(p, grad_input):
    """deform_roi_pool's grad input without atomics: every kept sample's
    corners as entries, summed per input pixel in a fixed order."""
    xp, values = p.xp, p.values()
    k, c, ph, pw = p.output_shape
    n, _, h, w = p.input.shape
    bins = k * ph * pw
    index_dtype = _kernels.INDEX_DTYPES[p.index]
    entry_first = xp.empty(bins, dtype=index_dtype)
    none = xp.empty(0, dtype=index_dtype)

    def scatter(fill, keys, sources, weights):
        _launch.run(_launch.make_launch(
            _kernels.DEFORM_ROI_POOL_SCATTER_ENTRIES, p.dtype, bins, p.index,
            entry_first=entry_first, keys=keys, sources=sources, weights=weights, fill=fill,
            **{name: v for name, v in values.items() if name != "sampling_ratio"},
            sampling_ratio=values["sampling_ratio"],
            work=_launch.Work(4 * p.samples_per_bin(), bins * 6 * index_dtype.itemsize,
                              k * c * ph * pw, auxiliary=True)))

    scatter(0, none, none, xp.empty(0, dtype=p.acc_dtype))
    counts = entry_first.copy()
    entries = int(counts.sum())
    entry_first[...] = xp.cumsum(counts) - counts
    keys = xp.empty(entries, dtype=index_dtype)
    sources = xp.empty(entries, dtype=index_dtype)
    weights = xp.empty(entries, dtype=p.acc_dtype)
    scatter(1, keys, sources, weights)
    plane = h * w
    _sorted_sum.scatter_add(
        xp, p.dtype, p.index, keys, sources, weights, p.grad_output.reshape(-1), c, ph * pw,
        grad_input.reshape(-1), lambda key: (key // plane) * (c * plane) + key % plane, plane,
        k * c * ph * pw)


class _PSRoIPool:
    """Checked arguments of deform_psroi_pool and the values every kernel takes."""

    def __init__(self, input, rois, offset, output_dim, group_size, pooled_size, part_size,
                 sample_per_part, trans_std, spatial_scale, grad_output=None):
        extra = {} if grad_output is None else dict(grad_output=grad_output)
        if offset is not None:
            _checks.array("offset", offset, 4, "(K, 2 * num_classes, part_size, part_size)")
        if grad_output is not None:
            _checks.array("grad_output", grad_output, 4, "(K, output_dim, pooled, pooled)")
        self.xp, self.dtype, self.acc_dtype, self.rois = _common(
            input, rois, dict(offset=offset, **extra))
        self.output_dim = _checks.integer("output_dim", output_dim, 1)
        self.group_size = _checks.integer("group_size", group_size, 1)
        self.pooled_size = _checks.integer("pooled_size", pooled_size, 1)
        self.part_size = _checks.integer(
            "part_size", pooled_size if part_size is None else part_size, 1)
        self.sample_per_part = _checks.integer("sample_per_part", sample_per_part, 1)
        self.trans_std = _checks.real("trans_std", trans_std)
        self.spatial_scale = _checks.real("spatial_scale", spatial_scale, positive=True)
        _checks.fits_int32(**{"pooled_size * max(part_size, group_size)":
                              self.pooled_size * max(self.part_size, self.group_size),
                              "output_dim * group_size**2": output_dim * group_size**2})
        n, c, h, w = input.shape
        k = self.rois.shape[0]
        if c != output_dim * group_size**2:
            raise ValueError(
                f"input has {c} channels but output_dim * group_size**2 = {output_dim} * "
                f"{group_size}**2 = {output_dim * group_size**2}"
            )
        self.num_classes = 1
        if offset is not None:
            if offset.shape[1] == 0 or offset.shape[1] % 2:
                raise ValueError(f"offset.shape[1] must be 2 * num_classes > 0, got {offset.shape[1]}")
            self.num_classes = offset.shape[1] // 2
            if output_dim % self.num_classes:
                raise ValueError(f"output_dim = {output_dim} must be divisible by num_classes = "
                                 f"{self.num_classes} (offset.shape[1] // 2)")
            _checks.shape("offset", offset,
                          (k, 2 * self.num_classes, self.part_size, self.part_size),
                          "K, 2 * num_classes, part_size, part_size")
        self.output_shape = (k, output_dim, pooled_size, pooled_size)
        if grad_output is not None:
            _checks.shape("grad_output", grad_output, self.output_shape,
                          "K, output_dim, pooled_size, pooled_size")
        xp = self.xp
        self.input = xp.ascontiguousarray(input)
        self.offset = None if offset is None else xp.ascontiguousarray(offset)
        self.grad_output = None if grad_output is None else xp.ascontiguousarray(grad_output)
        self.index = _index(k * output_dim * pooled_size**2, n * c * h * w,
                            k * 2 * self.num_classes * self.part_size**2,
                            k * output_dim * pooled_size**2 * 4 * self.sample_per_part**2)

    def geometry(self):
        n, c, h, w = self.input.shape
        return dict(batch=n, channels=c, height=h, width=w, output_dim=self.output_dim,
                    group_size=self.group_size, pooled_size=self.pooled_size,
                    part_size=self.part_size, sample_per_part=self.sample_per_part,
                    num_classes=self.num_classes)

    def values(self):
        return dict(rois=self.rois, spatial_scale=self.spatial_scale, trans_std=self.trans_std,
                    **self.geometry())

    def offset_values(self):
        # An absent offset is never read; input stands in for its pointer.
        return dict(offset=self.input if self.offset is None else self.offset,
                    use_offset=int(self.offset is not None))


@_backend.on_arrays_device
def deform_psroi_pool(input, rois, offset=None, *, output_dim, group_size, pooled_size,
                      part_size=None, sample_per_part=4, trans_std=0.0, spatial_scale=0.0625):
    """Deformable position-sensitive RoI pooling (R-FCN; Deformable-ConvNets).

    Bin (i, j) of output channel ctop averages samples of the input channel
    that the position-sensitive grid assigns to it, within the bin moved by
    its part's offset.

    Args:
        input: (N, output_dim * group_size**2, H, W) position-sensitive score
            maps, NumPy (CPU) or CuPy (GPU).
        rois: (K, 5) boxes ``(batch index, x1, y1, x2, y2)`` in input-image
            coordinates (rounded to integers, as in the original), any floating
            dtype (converted to float32 for 16-bit inputs).
        offset: (K, 2 * num_classes, part_size, part_size) normalised part
            offsets, channel 2c = x and 2c + 1 = y of class c; output channel
            ctop uses class ``ctop // (output_dim // num_classes)``, so
            num_classes must divide output_dim. None: no offsets.
        output_dim, group_size, pooled_size: output channels, position-sensitive
            grid, bins per side; keyword-only ints, each at least 1.
        part_size: offset cells per side, at least 1 (default pooled_size).
        sample_per_part: samples per bin and axis, at least 1.
        trans_std: the offsets are scaled by ``trans_std * roi size``.
        spatial_scale: feature-map size over input-image size, positive.

    input and offset share one dtype: float32, float64, float16 or bfloat16
    (``ml_dtypes.bfloat16``); the 16-bit ones are computed in float32.

    Returns:
        (K, output_dim, pooled_size, pooled_size) array of the input's type,
        dtype and device: the mean of the samples of each bin that fall inside
        the map (0 when none does).

    Raises:
        TypeError: an argument that is not a NumPy or CuPy array, input and
            offset of different or unsupported dtypes, rois of a non-floating
            dtype, a size that is not an int, trans_std or spatial_scale that
            is not a real number.
        ValueError: an array of the wrong rank or shape, arrays on different
            backends or devices, a size < 1, spatial_scale not positive and
            finite, trans_std not finite, input channels other than
            output_dim * group_size**2, an odd or empty offset.shape[1], a
            num_classes that does not divide output_dim, a size that does not
            fit in a 32-bit int.
        cudcn.CompilerNotFoundError: on the CPU, when the kernels are not yet
            loaded and no C++ compiler is found (see also :class:`cudcn.CompileError`).

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> from cudcn import reference
        >>> x = np.arange(8 * 36.0).reshape(1, 8, 6, 6)
        >>> rois = np.array([[0, 0.0, 0.0, 5.0, 5.0]])
        >>> sizes = dict(output_dim=2, group_size=2, pooled_size=2, spatial_scale=1.0)
        >>> out = cudcn.deform_psroi_pool(x, rois, **sizes)
        >>> out.shape
        (1, 2, 2, 2)
        >>> bool(np.allclose(out, reference.deform_psroi_pool(x, rois, **sizes)))
        True
    """
    p = _PSRoIPool(input, rois, offset, output_dim, group_size, pooled_size, part_size,
                   sample_per_part, trans_std, spatial_scale)
    output = p.xp.empty(p.output_shape, dtype=p.dtype)
    samples = p.sample_per_part**2
    _launch.run(_launch.make_launch(
        _kernels.DEFORM_PSROI_POOL_FORWARD, p.dtype, output.size, p.index, input=p.input,
        output=output, **p.values(), **p.offset_values(),
        work=_launch.Work(samples, output.size * (1 + 4 * samples) * p.dtype.itemsize,
                          output.size)))
    return output


@_backend.on_arrays_device
def deform_psroi_pool_backward(grad_output, input, rois, offset=None, *, output_dim, group_size,
                               pooled_size, part_size=None, sample_per_part=4, trans_std=0.0,
                               spatial_scale=0.0625, needs=("input", "offset"),
                               deterministic=False):
    """Gradients of :func:`cudcn.deform_psroi_pool`.

    Args:
        grad_output: (K, output_dim, pooled_size, pooled_size), of the input's
            dtype.
        input, rois, offset: exactly as given to :func:`cudcn.deform_psroi_pool`
            (the same shapes; input and offset of one dtype: float32, float64,
            float16 or bfloat16).
        output_dim, group_size, pooled_size, part_size, sample_per_part: ints,
            exactly as given to :func:`cudcn.deform_psroi_pool`.
        trans_std, spatial_scale: exactly as given to
            :func:`cudcn.deform_psroi_pool`.
        needs: the gradients to compute, out of "input", "offset" (default
            both; a lone string names one).
        deterministic: bit-identical gradients run after run and for any
            thread count, on both backends (the CPU always runs this way).

    Returns:
        :class:`cudcn.DeformPSRoIPoolGrads` (input, offset); None where not
        asked for, and for offset when it was None. The per-bin sample counts
        are recomputed from the arguments; nothing is carried over from the
        forward call.

    Raises:
        TypeError: as :func:`cudcn.deform_psroi_pool` (grad_output included),
            or ``needs`` that is not a string or a collection of strings.
        ValueError: as :func:`cudcn.deform_psroi_pool`, a grad_output whose
            shape is not the output's, or ``needs`` naming an unknown gradient.

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> x = np.ones((1, 8, 6, 6))
        >>> rois = np.array([[0, 0.0, 0.0, 5.0, 5.0]])
        >>> offset = np.zeros((1, 2, 2, 2))
        >>> grads = cudcn.deform_psroi_pool_backward(
        ...     np.ones((1, 2, 2, 2)), x, rois, offset, output_dim=2, group_size=2,
        ...     pooled_size=2, trans_std=0.1, spatial_scale=1.0)
        >>> grads.input.shape, grads.offset.shape
        ((1, 8, 6, 6), (1, 2, 2, 2))
        >>> float(grads.input.sum())  # each of the 8 bins spreads its 1 over the input
        8.0
    """
    wanted = _checks.needs(needs, DeformPSRoIPoolGrads._fields)
    p = _PSRoIPool(input, rois, offset, output_dim, group_size, pooled_size, part_size,
                   sample_per_part, trans_std, spatial_scale, grad_output=grad_output)
    xp = p.xp
    grad_input = grad_offset = None
    outputs = p.grad_output.size
    samples = p.sample_per_part**2
    item, acc = p.dtype.itemsize, p.acc_dtype.itemsize
    if "input" in wanted:
        grad_input = xp.zeros(p.input.shape, dtype=p.acc_dtype)
        values = dict(grad_output=p.grad_output, grad_input=grad_input, **p.values(),
                      **p.offset_values())
        strategy = _launch.strategy(xp, deterministic)
        if strategy == "planes":
            launch = _launch.make_launch(
                _kernels.DEFORM_PSROI_POOL_BACKWARD_INPUT_PLANES, p.dtype,
                p.input.shape[0] * p.input.shape[1], p.index, num_rois=p.rois.shape[0], **values)
        elif strategy == "items":
            launch = _launch.make_launch(
                _kernels.DEFORM_PSROI_POOL_BACKWARD_INPUT, p.dtype, outputs, p.index, **values,
                work=_launch.Work(samples, outputs * (2 * item + 8 * samples * acc), outputs))
        else:
            launch = None
            _sorted_psroi_grad_input(p, grad_input)
        if launch is not None:
            _launch.run(launch)
        grad_input = grad_input.astype(p.dtype, copy=False)
    if "offset" in wanted and p.offset is not None:
        grad_offset = xp.empty(p.offset.shape, dtype=p.dtype)
        partials = xp.empty((2, outputs), dtype=p.acc_dtype)
        _launch.run(_launch.make_launch(
            _kernels.DEFORM_PSROI_POOL_BACKWARD_OFFSET_PARTIAL, p.dtype, outputs, p.index,
            grad_output=p.grad_output, input=p.input, rois=p.rois, offset=p.offset,
            partials=partials, spatial_scale=p.spatial_scale, trans_std=p.trans_std,
            **p.geometry(),
            work=_launch.Work(samples, outputs * (2 * item + 4 * samples * item + 2 * acc),
                              outputs)))
        cells = p.offset.size
        per_cell = (p.output_dim // p.num_classes) * (-(-p.pooled_size // p.part_size)) ** 2
        _launch.run(_launch.make_launch(
            _kernels.DEFORM_PSROI_POOL_BACKWARD_OFFSET_REDUCE, p.dtype, cells, p.index,
            partials=partials, rois=p.rois, offset=p.offset, grad_offset=grad_offset,
            outputs=outputs, spatial_scale=p.spatial_scale, trans_std=p.trans_std,
            **p.geometry(),
            work=_launch.Work(per_cell, 2 * outputs * acc + cells * item, outputs,
                              auxiliary=True)))
    return DeformPSRoIPoolGrads(grad_input, grad_offset)


def _sorted_psroi_grad_input(p, grad_input):
    """deform_psroi_pool's grad input without atomics: every kept sample's
    corners as entries, summed per input element in a fixed order."""
    xp = p.xp
    outputs = p.grad_output.size
    samples = outputs * p.sample_per_part**2
    index_dtype = _kernels.INDEX_DTYPES[p.index]
    keys = xp.empty(4 * samples, dtype=index_dtype)
    sources = xp.empty(4 * samples, dtype=index_dtype)
    weights = xp.empty(4 * samples, dtype=p.acc_dtype)
    # A thread per sample, which counts its bin's kept samples.
    _launch.run(_launch.make_launch(
        _kernels.DEFORM_PSROI_POOL_SCATTER_ENTRIES, p.dtype, samples, p.index, keys=keys,
        sources=sources, weights=weights, **p.values(), **p.offset_values(),
        work=_launch.Work(p.sample_per_part**2,
                          4 * samples * (2 * index_dtype.itemsize + p.acc_dtype.itemsize),
                          outputs)))
    # Each key is the grad_input element itself: one channel per entry.
    _sorted_sum.scatter_add(xp, p.dtype, p.index, keys, sources, weights,
                            p.grad_output.reshape(-1), 1, 0, grad_input.reshape(-1),
                            lambda key: key, 0, outputs)
