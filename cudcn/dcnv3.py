"""DCNv3 and DCNv4 (InternImage's and FlashInternImage's deformable
convolution): forward and backward, on NumPy (CPU) and CuPy (GPU) arrays.

The semantics are InternImage's CUDA kernel (SPEC section 7): channels-last
and group-wise, no weight inside the op; each output pixel's group samples
its input channels at the kernel's K points moved by the offsets and sums
the samples times the mask. DCNv4 is the same computation with offsets and
mask packed in one array per pixel (padded; the padding is ignored).
"""

import collections

import numpy as np

from . import _backend, _checks, _kernels, _launch, _point_sampling

DCNv3Grads = collections.namedtuple("DCNv3Grads", ("input", "offset", "mask"))
DCNv3Grads.__doc__ = """The gradients :func:`cudcn.dcnv3_backward` returns.

    Each gradient has the shape and dtype of its argument of
    :func:`cudcn.dcnv3`.

    Attributes:
        input: (N, H, W, G * C); None when "input" is not in ``needs``.
        offset: (N, H_out, W_out, G * K * 2); None when "offset" is not in
            ``needs``.
        mask: (N, H_out, W_out, G * K); None when "mask" is not in ``needs``.
    """
DCNv4Grads = collections.namedtuple("DCNv4Grads", ("input", "offset_mask"))
DCNv4Grads.__doc__ = """The gradients :func:`cudcn.dcnv4_backward` returns.

    Each gradient has the shape and dtype of its argument of
    :func:`cudcn.dcnv4`.

    Attributes:
        input: (N, H, W, G * C); None when "input" is not in ``needs``.
        offset_mask: (N, H_out, W_out, D), its padding channels (from G * 3K
            on) zero; None when "offset_mask" is not in ``needs``.
    """

_KERNELS = _point_sampling.SamplingKernels(
    forward=_kernels.DCNV3_FORWARD,
    points_partial=_kernels.DCNV3_BACKWARD_POINTS_PARTIAL,
    value_items=_kernels.DCNV3_BACKWARD_VALUE,
    value_planes=_kernels.DCNV3_BACKWARD_VALUE_PLANES,
    scatter_entries=_kernels.DCNV3_SCATTER_ENTRIES)


def kernel_points(kernel_h, kernel_w, remove_center):
    """(i, j) of each kernel point in SPEC section 7's order: x-outer (i <
    kernel_w), y-inner (j < kernel_h), the centre skipped with remove_center."""
    return [(i, j) for i in range(kernel_w) for j in range(kernel_h)
            if not (remove_center and i == kernel_w // 2 and j == kernel_h // 2)]


class _DCNv3:
    """Checked arguments of dcnv3 / dcnv4 and the values every kernel takes.

    ``offset_mask`` (DCNv4) or ``offset`` and ``mask`` (DCNv3) are given.
    """

    def __init__(self, input, kernel_size, stride, padding, dilation, groups, offset_scale,
                 remove_center, offset=None, mask=None, offset_mask=None, grad_output=None):
        packed = offset_mask is not None
        _checks.array("input", input, 4, "(N, H, W, groups * group_channels)")
        if packed:
            _checks.array("offset_mask", offset_mask, 4, "(N, H_out, W_out, D >= groups * 3K)")
        else:
            _checks.array("offset", offset, 4, "(N, H_out, W_out, groups * K * 2)")
            _checks.array("mask", mask, 4, "(N, H_out, W_out, groups * K)")
        if grad_output is not None:
            _checks.array("grad_output", grad_output, 4, "(N, H_out, W_out, channels)")
        floats = dict(input=input, offset_mask=offset_mask, offset=offset, mask=mask,
                      grad_output=grad_output)
        self.xp = xp = _checks.same_backend(floats)
        self.dtype = _checks.float_dtype(floats, xp)
        self.acc_dtype = xp.dtype(_kernels.scalar_type(self.dtype).acc_dtype_name)
        kh, kw = _checks.int_pair("kernel_size", kernel_size, 1)
        sh, sw = _checks.int_pair("stride", stride, 1)
        ph, pw = _checks.int_pair("padding", padding, 0)
        dh, dw = _checks.int_pair("dilation", dilation, 1)
        groups = _checks.integer("groups", groups, 1)
        offset_scale = _checks.real("offset_scale", offset_scale)
        if not isinstance(remove_center, bool):
            raise TypeError(f"remove_center must be a bool, got {type(remove_center).__name__}")
        if remove_center and (kh != kw or kh % 2 == 0 or kh < 3):
            raise ValueError(f"remove_center needs an odd square kernel of at least 3 x 3, got "
                             f"kernel_size {(kh, kw)}")

        n, h, w, channels = input.shape
        if channels % groups:
            raise ValueError(f"input has {channels} channels, which groups = {groups} does "
                             "not divide")
        out_h = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
        out_w = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
        if out_h < 1 or out_w < 1:
            raise ValueError(f"the output would be {out_h} x {out_w}: input {h} x {w} is too "
                             f"small for kernel {(kh, kw)}, padding {(ph, pw)} and dilation "
                             f"{(dh, dw)}")
        k = kh * kw - (1 if remove_center else 0)
        if packed:
            width = offset_mask.shape[3]
            expected = (n, out_h, out_w, width)
            _checks.shape("offset_mask", offset_mask, expected, "N, H_out, W_out, D")
            if width < groups * 3 * k:
                raise ValueError(f"offset_mask has {width} channels but groups * 3K = "
                                 f"{groups} * 3 * {k} = {groups * 3 * k} are needed")
        else:
            _checks.shape("offset", offset, (n, out_h, out_w, groups * k * 2),
                          f"N, H_out, W_out, groups * K * 2 with K = {k}")
            _checks.shape("mask", mask, (n, out_h, out_w, groups * k),
                          f"N, H_out, W_out, groups * K with K = {k}")
        self.output_shape = (n, out_h, out_w, channels)
        if grad_output is not None:
            _checks.shape("grad_output", grad_output, self.output_shape, "N, H_out, W_out, channels")
        _checks.fits_int32(**{"batch N": n, "input rows H * W": h * w,
                              "output pixels H_out * W_out": out_h * out_w,
                              "offset_mask channels": width if packed else 0})

        self.value = xp.ascontiguousarray(input)
        self.grad_output = None if grad_output is None else xp.ascontiguousarray(grad_output)
        if packed:
            self.offset_mask = xp.ascontiguousarray(offset_mask)
            flat = self.offset_mask.reshape(-1)
            # One array, two views: the mask of group g starts 2K after its offsets.
            self.offset, self.mask = flat, flat[2 * k:]
            strides = dict(offset_pixel_stride=width, offset_group_stride=3 * k,
                           mask_pixel_stride=width, mask_group_stride=3 * k)
        else:
            self.offset = xp.ascontiguousarray(offset)
            self.mask = xp.ascontiguousarray(mask)
            strides = dict(offset_pixel_stride=groups * 2 * k, offset_group_stride=2 * k,
                           mask_pixel_stride=groups * k, mask_group_stride=k)
        self.points = k
        self.channels = channels // groups
        self.heads_total = n * out_h * out_w * groups  # (n, output pixel, group)
        self.planes = n * groups  # the planes strategy's (n, group)
        self.index = _launch.index_type(self.value.size, self.offset.size, self.mask.size,
                                        n * out_h * out_w * channels, 4 * self.heads_total * k)
        grid = [(i * dw, j * dh) for i, j in kernel_points(kh, kw, remove_center)]
        point_grid = xp.asarray(np.array(grid, dtype=_kernels.INDEX_DTYPES[self.index]))
        self._values = dict(
            offset=self.offset, mask=self.mask, point_grid=point_grid, batch=n, height=h,
            width=w, out_h=out_h, out_w=out_w, groups=groups, group_channels=self.channels,
            kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw, pad_h=ph, pad_w=pw, dil_h=dh,
            dil_w=dw, points=k, offset_scale=offset_scale, **strides)

    def values(self):
        return self._values

    def sample_bytes(self):
        """Bytes a point's sample reads: its offset, mask and four corners' channels."""
        return self.dtype.itemsize * (3 + 4 * self.channels)

    def backward(self, want_input, want_offset, want_mask, deterministic):
        """(grad_input, grad_offset, grad_mask) into the given arrays' layout:
        DCNv3's separate arrays, or DCNv4's one offset_mask (then returned as
        grad_offset, its padding zero; grad_mask None)."""
        xp = self.xp
        packed = hasattr(self, "offset_mask")
        want_points = want_offset or want_mask
        sums = _point_sampling.backward(self, _KERNELS, want_points, want_input, deterministic)
        grad_offset = grad_mask = None
        if want_points:
            if packed:
                grad_offset = xp.zeros(self.offset_mask.shape, dtype=self.dtype)
                flat = grad_offset.reshape(-1)
                targets = dict(grad_offset=flat, grad_mask=flat[2 * self.points:])
            else:
                grad_offset = xp.empty(self.offset.shape, dtype=self.dtype)
                grad_mask = xp.empty(self.mask.shape, dtype=self.dtype)
                targets = dict(grad_offset=grad_offset, grad_mask=grad_mask)
            _point_sampling.reduce_points(
                self, _kernels.DCNV3_BACKWARD_POINTS_REDUCE, sums, 4 * self.dtype.itemsize,
                want_offset=int(want_offset), want_mask=int(want_mask), **targets)
        grad_input = None if sums.grad_value is None else sums.grad_value.astype(self.dtype,
                                                                                 copy=False)
        return grad_input, grad_offset, grad_mask


_ARGS_DOC = """kernel_size, stride, padding, dilation: int or (h, w) pair; padding
            at least 0, the others at least 1.
        groups: G, an int of at least 1; input's channels must be a multiple
            of it.
        offset_scale: the factor of the offsets (and of the kernel's extent
            around its centre), InternImage's ``offset_scale``; a finite real.
        remove_center: a bool: skip the kernel's centre point (odd square
            kernels of at least 3 x 3); K = kh * kw - 1 then.

    Every float array shares one dtype: float32, float64, float16 or bfloat16
    (``ml_dtypes.bfloat16``); the 16-bit ones are computed in float32."""


@_backend.on_arrays_device
def dcnv3(input, offset, mask, kernel_size, stride=1, padding=0, dilation=1, groups=1,
          offset_scale=1.0, remove_center=False):
    """DCNv3's core (InternImage's ``DCNv3Function``), channels-last.

    Args:
        input: (N, H, W, G * C), channels last; NumPy (CPU) or CuPy (GPU).
        offset: (N, H_out, W_out, G * K * 2): per group, K (dx, dy) pairs,
            K = kh * kw kernel points x-outer, y-inner.
        mask: (N, H_out, W_out, G * K), the softmax (if any) already applied.
        {args}

    Returns:
        (N, H_out, W_out, G * C) array of the input's type, dtype and device,
        ``H_out = (H + 2 * pad_h - (dil_h * (kh - 1)
        + 1)) // stride_h + 1`` (likewise W_out): for each output pixel and
        group, the sum over the K points of the mask times the bilinear
        sample of the group's channels at ``x = p0_x - half_x * s + (i *
        dil_w + dx) * s`` (``p0_x = half_x - pad_w + wo * stride_w``, ``half_x
        = dil_w * (kw - 1) // 2``, s = offset_scale; likewise y), corners
        outside the input reading 0; a point outside ``-1 < y < H, -1 < x <
        W`` (NaN and inf included) adds nothing.

    Raises:
        TypeError: a non-array, mixed or unsupported float dtypes, a
            non-integer size, a non-real offset_scale, a non-bool
            remove_center.
        ValueError: ranks or shapes that disagree, a size below its minimum,
            a non-finite offset_scale, channels that groups does not divide,
            remove_center with an even, non-square or 1 x 1 kernel, an empty
            output, arrays on different backends or devices, a size that
            does not fit in a 32-bit int.
        cudcn.CompilerNotFoundError: on the CPU, when the kernels are not yet
            loaded and no C++ compiler is found (see also :class:`cudcn.CompileError`).

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> x = np.arange(4.0).reshape(1, 2, 2, 1)
        >>> offset = np.zeros((1, 2, 2, 2))
        >>> mask = np.ones((1, 2, 2, 1))
        >>> cudcn.dcnv3(x, offset, mask, kernel_size=1)[..., 0]
        array([[[0., 1.],
                [2., 3.]]])
        >>> offset[..., 0] = 0.5  # half a pixel right: the right column reads 0 half
        >>> cudcn.dcnv3(x, offset, mask, kernel_size=1)[..., 0]
        array([[[0.5, 0.5],
                [2.5, 1.5]]])
    """
    a = _DCNv3(input, kernel_size, stride, padding, dilation, groups, offset_scale,
               remove_center, offset=offset, mask=mask)
    return _point_sampling.forward(a, _KERNELS)


dcnv3.__doc__ = dcnv3.__doc__.replace("{args}", _ARGS_DOC)


@_backend.on_arrays_device
def dcnv3_backward(grad_output, input, offset, mask, kernel_size, stride=1, padding=0,
                   dilation=1, groups=1, offset_scale=1.0, remove_center=False,
                   needs=("input", "offset", "mask"), deterministic=False):
    """Gradients of :func:`cudcn.dcnv3`.

    Args:
        grad_output: (N, H_out, W_out, G * C), of the input's dtype.
        input, offset, mask: exactly as given to :func:`cudcn.dcnv3` (the same
            shapes and one dtype: float32, float64, float16 or bfloat16).
        kernel_size, stride, padding, dilation, groups, offset_scale: exactly
            as given to :func:`cudcn.dcnv3`.
        remove_center: exactly as given to :func:`cudcn.dcnv3`.
        needs: the gradients to compute, out of "input", "offset", "mask"
            (default all; a lone string names one).
        deterministic: bit-identical gradients run after run and for any
            thread count, on both backends (the CPU always runs this way).

    Returns:
        :class:`cudcn.DCNv3Grads` (input, offset, mask), each in its
        argument's shape and dtype, None where not asked for. A point outside
        the open window gets zero gradients; inside, the offset's gradient is
        the derivative on the cell [floor(y), floor(y) + 1] x [floor(x),
        floor(x) + 1], as InternImage's kernel computes it.

    Raises:
        TypeError: as :func:`cudcn.dcnv3` (grad_output included), or ``needs``
            that is not a string or a collection of strings.
        ValueError: as :func:`cudcn.dcnv3`, a grad_output whose shape is not
            the output's, or ``needs`` naming an unknown gradient.

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> x = np.arange(4.0).reshape(1, 2, 2, 1)
        >>> grads = cudcn.dcnv3_backward(np.ones((1, 2, 2, 1)), x, np.zeros((1, 2, 2, 2)),
        ...                              np.ones((1, 2, 2, 1)), kernel_size=1)
        >>> grads.input[..., 0]
        array([[[1., 1.],
                [1., 1.]]])
        >>> grads.mask[..., 0]  # each point's sample
        array([[[0., 1.],
                [2., 3.]]])
        >>> grads.offset.shape
        (1, 2, 2, 2)
    """
    wanted = _checks.needs(needs, DCNv3Grads._fields)
    a = _DCNv3(input, kernel_size, stride, padding, dilation, groups, offset_scale,
               remove_center, offset=offset, mask=mask, grad_output=grad_output)
    grad_input, grad_offset, grad_mask = a.backward(
        "input" in wanted, "offset" in wanted, "mask" in wanted, deterministic)
    return DCNv3Grads(grad_input, grad_offset if "offset" in wanted else None,
                      grad_mask if "mask" in wanted else None)


@_backend.on_arrays_device
def dcnv4(input, offset_mask, kernel_size, stride=1, padding=0, dilation=1, groups=1,
          offset_scale=1.0, remove_center=False):
    """DCNv4's core (FlashInternImage's ``DCNv4Function``), channels-last:
    :func:`cudcn.dcnv3` with offsets and mask in one array, and no softmax.

    Args:
        input: (N, H, W, G * C), channels last; NumPy (CPU) or CuPy (GPU).
        offset_mask: (N, H_out, W_out, D), D >= G * 3K: per group g, the
            values at g * 3K ... g * 3K + 2K - 1 are the K (dx, dy) pairs and
            the next K the mask; channels from G * 3K on (DCNv4 pads D to a
            multiple of 8) are ignored.
        {args}

    Returns:
        (N, H_out, W_out, G * C), as :func:`cudcn.dcnv3`.

    Raises:
        TypeError: as :func:`cudcn.dcnv3`.
        ValueError: as :func:`cudcn.dcnv3`, or an offset_mask narrower than
            G * 3K.
        cudcn.CompilerNotFoundError: as :func:`cudcn.dcnv3`.

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> x = np.arange(4.0).reshape(1, 2, 2, 1)
        >>> offset_mask = np.zeros((1, 2, 2, 8))
        >>> offset_mask[..., 2] = 1.0  # the mask of the one point
        >>> cudcn.dcnv4(x, offset_mask, kernel_size=1)[..., 0]
        array([[[0., 1.],
                [2., 3.]]])
    """
    a = _DCNv3(input, kernel_size, stride, padding, dilation, groups, offset_scale,
               remove_center, offset_mask=offset_mask)
    return _point_sampling.forward(a, _KERNELS)


dcnv4.__doc__ = dcnv4.__doc__.replace("{args}", _ARGS_DOC)


@_backend.on_arrays_device
def dcnv4_backward(grad_output, input, offset_mask, kernel_size, stride=1, padding=0,
                   dilation=1, groups=1, offset_scale=1.0, remove_center=False,
                   needs=("input", "offset_mask"), deterministic=False):
    """Gradients of :func:`cudcn.dcnv4`.

    Args:
        grad_output: (N, H_out, W_out, G * C), of the input's dtype.
        input, offset_mask: exactly as given to :func:`cudcn.dcnv4` (the same
            shapes and one dtype: float32, float64, float16 or bfloat16).
        kernel_size, stride, padding, dilation, groups, offset_scale: exactly
            as given to :func:`cudcn.dcnv4`.
        remove_center: exactly as given to :func:`cudcn.dcnv4`.
        needs: the gradients to compute, out of "input", "offset_mask"
            (default both; a lone string names one).
        deterministic: as for :func:`cudcn.dcnv3_backward`.

    Returns:
        :class:`cudcn.DCNv4Grads` (input, offset_mask), each in its
        argument's shape and dtype, None where not asked for; offset_mask's
        padding channels get zero gradient.

    Raises:
        TypeError: as :func:`cudcn.dcnv4` (grad_output included), or ``needs``
            that is not a string or a collection of strings.
        ValueError: as :func:`cudcn.dcnv4`, a grad_output whose shape is not
            the output's, or ``needs`` naming an unknown gradient.

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> x = np.arange(4.0).reshape(1, 2, 2, 1)
        >>> offset_mask = np.zeros((1, 2, 2, 8))
        >>> offset_mask[..., 2] = 1.0
        >>> grads = cudcn.dcnv4_backward(np.ones((1, 2, 2, 1)), x, offset_mask, kernel_size=1)
        >>> grads.offset_mask[0, 0, 0]  # d/d(dx, dy, mask) at pixel (0, 0), then padding
        array([1., 2., 0., 0., 0., 0., 0., 0.])
        >>> grads.input.shape
        (1, 2, 2, 1)
    """
    wanted = _checks.needs(needs, DCNv4Grads._fields)
    a = _DCNv3(input, kernel_size, stride, padding, dilation, groups, offset_scale,
               remove_center, offset_mask=offset_mask, grad_output=grad_output)
    want_points = "offset_mask" in wanted
    grad_input, grad_offset_mask, _ = a.backward("input" in wanted, want_points, want_points,
                                                 deterministic)
    return DCNv4Grads(grad_input, grad_offset_mask)
