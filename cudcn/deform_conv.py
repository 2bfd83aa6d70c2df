"""Deformable convolution, DCN v1 and (with ``mask``) v2: forward and backward.

Per chunk of images: a kernel gathers the bilinearly sampled input into a
column buffer (B, C_in * kh * kw, H_out * W_out), and a batched GEMM per
group multiplies it by the weights straight into the output layout. The
backward runs the GEMMs the other way and two adjoint kernels.
"""

import collections
import dataclasses

from . import _backend, _checks, _gemm, _kernels, _launch, _sorted_sum, _workspace

GRADIENT_NAMES = ("input", "offset", "weight", "bias", "mask")

DeformConv2dGrads = collections.namedtuple("DeformConv2dGrads", GRADIENT_NAMES)
DeformConv2dGrads.__doc__ = """The gradients :func:`cudcn.deform_conv2d_backward` returns.

    Each gradient has the shape and dtype of its argument of
    :func:`cudcn.deform_conv2d`.

    Attributes:
        input: (N, C_in, H, W); None when "input" is not in ``needs``.
        offset: (N, 2 * offset_groups * kh * kw, H_out, W_out); None when
            "offset" is not in ``needs``.
        weight: (C_out, C_in / groups, kh, kw); None when "weight" is not in
            ``needs``.
        bias: (C_out,); None when "bias" is not in ``needs`` or bias was None.
        mask: (N, offset_groups * kh * kw, H_out, W_out); None when "mask" is
            not in ``needs`` or mask was None.
    """


@dataclasses.dataclass(frozen=True)
class _Geometry:
    xp: object
    dtype: object
    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    groups: int
    offset_groups: int
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    out_size: tuple

    @property
    def kernel_points(self):
        return self.kernel[0] * self.kernel[1]

    @property
    def out_pixels(self):
        return self.out_size[0] * self.out_size[1]

    @property
    def column_rows(self):
        return self.channels * self.kernel_points

    def kernel_values(self):
        """The geometry arguments every deform_conv2d kernel takes."""
        return dict(
            channels=self.channels, height=self.height, width=self.width,
            kernel_h=self.kernel[0], kernel_w=self.kernel[1],
            stride_h=self.stride[0], stride_w=self.stride[1],
            pad_h=self.padding[0], pad_w=self.padding[1],
            dil_h=self.dilation[0], dil_w=self.dilation[1],
            offset_groups=self.offset_groups,
            out_h=self.out_size[0], out_w=self.out_size[1],
        )


def _geometry(input, offset, weight, bias, mask, stride, padding, dilation, extra=None):
    arrays = dict(input=input, offset=offset, weight=weight, bias=bias, mask=mask, **(extra or {}))
    _checks.array("input", input, 4, "(N, C_in, H, W)")
    _checks.array("offset", offset, 4, "(N, 2 * offset_groups * kh * kw, H_out, W_out)")
    _checks.array("weight", weight, 4, "(C_out, C_in / groups, kh, kw)")
    if bias is not None:
        _checks.array("bias", bias, 1, "(C_out,)")
    if mask is not None:
        _checks.array("mask", mask, 4, "(N, offset_groups * kh * kw, H_out, W_out)")
    for name, x in (extra or {}).items():
        _checks.array(name, x, 4, "(N, C_out, H_out, W_out)")
    xp = _checks.same_backend(arrays)
    dtype = _checks.float_dtype(arrays, xp)
    stride = _checks.int_pair("stride", stride, 1)
    padding = _checks.int_pair("padding", padding, 0)
    dilation = _checks.int_pair("dilation", dilation, 1)

    n, c, h, w = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    if c_per_group == 0 or c % c_per_group:
        raise ValueError(
            f"weight.shape[1] = {c_per_group} must divide the input channels C_in = {c} "
            "(groups = C_in // weight.shape[1])"
        )
    groups = c // c_per_group
    if c_out == 0 or c_out % groups:
        raise ValueError(
            f"weight.shape[0] = {c_out} (C_out) must be a positive multiple of groups = {groups}"
        )
    if kh == 0 or kw == 0:
        raise ValueError(f"weight must have a non-empty kernel, got shape {tuple(weight.shape)}")
    _checks.fits_int32(**{"input H + 2 * padding": h + 2 * padding[0],
                          "input W + 2 * padding": w + 2 * padding[1],
                          "dilated kernel height": dilation[0] * (kh - 1) + 1,
                          "dilated kernel width": dilation[1] * (kw - 1) + 1,
                          "C_in * kh * kw": c * kh * kw})
    out_size = tuple(
        (size + 2 * p - (d * (k - 1) + 1)) // s + 1
        for size, p, d, k, s in zip((h, w), padding, dilation, (kh, kw), stride)
    )
    if min(out_size) < 1:
        raise ValueError(
            f"input of spatial size {(h, w)} with padding {padding}, dilation {dilation} and "
            f"kernel {(kh, kw)} gives an empty output of size {out_size}"
        )
    points = kh * kw
    if offset.shape[1] == 0 or offset.shape[1] % (2 * points):
        raise ValueError(
            f"offset.shape[1] must be a positive multiple of 2 * kh * kw = {2 * points}, "
            f"got {offset.shape[1]}"
        )
    offset_groups = offset.shape[1] // (2 * points)
    if c % offset_groups:
        raise ValueError(
            f"the input channels C_in = {c} must divide into offset_groups = {offset_groups} "
            f"(offset.shape[1] // (2 * kh * kw))"
        )
    _checks.shape("offset", offset, (n, 2 * offset_groups * points, *out_size),
                  "N, 2 * offset_groups * kh * kw, H_out, W_out")
    if mask is not None:
        _checks.shape("mask", mask, (n, offset_groups * points, *out_size),
                      "N, offset_groups * kh * kw, H_out, W_out")
    if bias is not None:
        _checks.shape("bias", bias, (c_out,), "C_out,")
    for name, x in (extra or {}).items():
        _checks.shape(name, x, (n, c_out, *out_size), "N, C_out, H_out, W_out")
    return _Geometry(xp, dtype, n, c, h, w, c_out, groups, offset_groups, (kh, kw), stride,
                     padding, dilation, out_size)


def _chunks(batch, most):
    """(largest chunk, [(start, stop)]): the batch in as few chunks of at most
    ``most`` images as it takes, of sizes within one image of each other. A
    last chunk of one image multiplies less efficiently: the forward at N=8,
    C=256, 14x14 in chunks of 4 and 4 took 0.95-0.98x the time of 7 and 1."""
    count = -(-batch // most)
    if count == 0:
        return most, []
    return -(-batch // count), [(batch * i // count, batch * (i + 1) // count)
                                for i in range(count)]


class _Plan:
    """Chunks, index type and strategy of one call, and its launches.

    ``buffers`` is how many column-sized buffers the call keeps at once; a
    chunk holds at most as many images as fit them under the workspace limit
    (the batch split evenly, see _chunks), with what the strategy adds per
    image (the plane strategy's padded pixels, the forward's pixel-major
    product, the backward's cells and padded grad pixels; the item strategy's
    offset gradients' partial sums, the sorted strategy's entries) and, for
    16-bit dtypes, the float32 copies the GEMMs multiply.
    """

    def __init__(self, g, buffers, deterministic, coord=False, col2im=False, weight=False,
                 forward=False):
        self.g = g
        xp = g.xp
        self.strategy = _launch.strategy(xp, deterministic)
        self.group_channels = g.channels // g.offset_groups
        self.items_per_image = g.offset_groups * g.kernel_points * g.out_pixels
        self.acc = xp.dtype(_kernels.scalar_type(g.dtype).acc_dtype_name)
        per_image = buffers * g.column_rows * g.out_pixels * g.dtype.itemsize
        if _gemm.compute_dtype(g.dtype) != g.dtype:
            per_image += ((g.column_rows + g.out_channels) * g.out_pixels
                          * _gemm.WIDENED_ITEMSIZE)
        padded_plane = (g.height + _kernels.PLANE_PADDING) * (g.width + _kernels.PLANE_PADDING)
        # The plane strategy samples its columns (the forward's, and the
        # backward's for the weight gradient) from channels-last pixels into
        # pixel-major columns; the backward's adjoints read cells, pixel-major
        # gradient columns and (the offset gradient) the same pixels.
        planes = self.strategy == "planes"
        self.pixels = planes and (forward or weight or coord)
        self.cells = planes and not forward and (coord or col2im)
        if self.pixels:  # the padded pixels, and the forward's pixel-major product
            per_image += g.channels * padded_plane * g.dtype.itemsize
            if forward:
                per_image += (g.out_channels * g.out_pixels
                              * _gemm.compute_dtype(g.dtype).itemsize)
        # col2im's padded pixels of each thread's block of channels, per image
        self.grad_pixels = (g.offset_groups * -(-self.group_channels // _kernels.PIXEL_CHANNELS)
                            * padded_plane * _kernels.PIXEL_CHANNELS)
        if self.cells:  # the cells (2 indices, 6 weights an item), the padded grad pixels
            per_image += self.items_per_image * (2 * 8 + 6 * 8)
            if col2im:
                per_image += self.grad_pixels * self.acc.itemsize
        if not planes and coord:  # partial sums of at most MAX_SERIAL channel blocks
            per_image += (min(self.group_channels, _launch.MAX_SERIAL) * 3
                          * self.items_per_image * self.acc.itemsize)
        if self.strategy == "sorted" and col2im:
            per_image += _sorted_sum.workspace_bytes(
                4 * self.items_per_image, g.offset_groups * g.height * g.width,
                self.group_channels, xp.dtype(xp.int64), self.acc)
        self.size, self.chunks = _chunks(g.batch,
                                         _workspace.images_per_chunk(g.batch, per_image, xp))
        # One index type for every chunk: the largest decides.
        self.index = _launch.index_type(
            self.size * self.items_per_image * 4,
            self.size * g.column_rows * g.out_pixels,
            self.size * self.grad_pixels,  # no fewer than the padded pixels
            self.size * g.out_channels * g.out_pixels,
            self.size * 2 * self.items_per_image,
            self.size * self.items_per_image * 3 * self.group_channels,
        )
        self.corner_base = self.corner_weight = None
        self.padded_grad_pixels = self.padded_pixels = None
        if self.pixels:
            padded = (self.size, g.height + _kernels.PLANE_PADDING,
                      g.width + _kernels.PLANE_PADDING, g.channels)
            self.padded_pixels = _workspace.padded_scratch(xp, "padded_pixels", padded, g.dtype)
        if self.cells:
            items = self.size * self.items_per_image
            self.corner_base = _workspace.scratch(xp, "corner_base", (items, 2),
                                                  _kernels.INDEX_DTYPES[self.index])
            self.corner_weight = _workspace.scratch(xp, "corner_weight", (items, 6), self.acc)
            if col2im:  # each col2im thread clears its own
                self.padded_grad_pixels = _workspace.scratch(
                    xp, "padded_grad_pixels", (self.size * self.grad_pixels,), self.acc)

    def launch(self, kernel, n, work=None, **arrays):
        _launch.run(_launch.make_launch(kernel, self.g.dtype, n, self.index, work=work,
                                        **arrays, **self.g.kernel_values()))

    def corners(self, offset):
        """Plane strategy only: fill the cell buffers for a chunk."""
        g, images = self.g, offset.shape[0]
        rows = images * g.offset_groups * g.out_size[0]
        self.launch(_kernels.DEFORM_CONV2D_CORNERS, rows, offset=offset,
                    **self._corner_args(images))

    def input_for(self, input):
        """The input as the strategy reads it: the plane strategy reads a
        channels-last input's memory as it is (fill_pixels; nothing else
        of it reads the input), the others a C-contiguous array."""
        if self.strategy == "planes" and _backend.channels_last(input):
            return input
        return self.g.xp.ascontiguousarray(input)

    def fill_pixels(self, x):
        """The padded pixels' interior <- a chunk's images, channels last."""
        nhwc = _backend.channels_last(x)
        self.launch(_kernels.DEFORM_CONV2D_FILL_PIXELS, x.shape[0] * self.g.height,
                    input=x.transpose(0, 2, 3, 1) if nhwc else x, channels_last=int(nhwc),
                    padded_pixels=self.padded_pixels[:x.shape[0]])

    def im2col_pixels(self, offset, mask, columns_t):
        """columns_t (images, P, groups, KK * C / groups) <- the sampled
        pixels of a chunk, after fill_pixels."""
        g, images = self.g, offset.shape[0]
        self.launch(_kernels.DEFORM_CONV2D_IM2COL_PIXELS, images * g.offset_groups * g.out_size[0],
                    padded_pixels=self.padded_pixels[:images], offset=offset,
                    mask=offset if mask is None else mask, columns_t=columns_t,
                    use_mask=int(mask is not None), conv_group_channels=g.channels // g.groups)

    def weight_for_pixels(self, weight):
        """(groups, KK * C / groups, C_out / groups) in the compute dtype: the
        right operand of the GEMM with pixel-major columns."""
        g = self.g
        c_out_g, c_g = g.out_channels // g.groups, g.channels // g.groups
        weight_t = _workspace.scratch(g.xp, "weight_for_pixels",
                                      (g.groups, g.kernel_points * c_g, c_out_g), self.acc)
        tiles = (-(-c_out_g // _kernels.OUTPUT_TILE)
                 * -(-(c_g * g.kernel_points) // _kernels.OUTPUT_TILE))
        _launch.run(_launch.make_launch(
            _kernels.DEFORM_CONV2D_WEIGHT_FOR_PIXELS, g.dtype, g.groups * tiles,
            _launch.index_type(weight.size),
            weight=weight, weight_t=weight_t, group_out_channels=c_out_g, group_channels=c_g,
            kernel_points=g.kernel_points))
        return weight_t

    def weight_rows_for_pixels(self, weight):
        """(groups, C_out / groups, KK * C / groups) in the compute dtype: the
        right operand of the backward's GEMM into pixel-major columns."""
        g = self.g
        c_g = g.channels // g.groups
        weight_rows = _workspace.scratch(
            g.xp, "weight_rows_for_pixels",
            (g.groups, g.out_channels // g.groups, g.kernel_points * c_g), self.acc)
        _launch.run(_launch.make_launch(
            _kernels.DEFORM_CONV2D_WEIGHT_ROWS_FOR_PIXELS, g.dtype, g.out_channels,
            _launch.index_type(weight.size), weight=weight, weight_rows=weight_rows,
            group_channels=c_g, kernel_points=g.kernel_points))
        return weight_rows

    def weight_from_pixel_rows(self, weight_rows):
        """The weight gradient (C_out, C / groups, kh, kw) in the dtype from its
        accumulation in pixel-major order (groups, C_out / groups, KK * C / groups)."""
        g = self.g
        c_g = g.channels // g.groups
        weight = g.xp.empty((g.out_channels, c_g, *g.kernel), dtype=g.dtype)
        _launch.run(_launch.make_launch(
            _kernels.DEFORM_CONV2D_WEIGHT_FROM_PIXEL_ROWS, g.dtype, g.out_channels,
            _launch.index_type(weight.size), weight_rows=weight_rows, weight=weight,
            group_channels=c_g, kernel_points=g.kernel_points))
        return weight

    def output_from_pixels(self, product, bias, out):
        """out (images, C_out, P) <- product (images, groups, P, C_out / groups) + bias."""
        g, images = self.g, out.shape[0]
        c_out_g = g.out_channels // g.groups
        tiles = (-(-g.out_pixels // _kernels.OUTPUT_TILE)) * -(-c_out_g // _kernels.OUTPUT_TILE)
        _launch.run(_launch.make_launch(
            _kernels.DEFORM_CONV2D_OUTPUT_FROM_PIXELS, g.dtype, images * g.groups * tiles,
            self.index, product=product, bias=out if bias is None else bias, output=out,
            use_bias=int(bias is not None), groups=g.groups, group_out_channels=c_out_g,
            pixels=g.out_pixels))

    def _pixel_blocks(self, images):
        blocks = -(-self.group_channels // _kernels.PIXEL_CHANNELS)
        return images * self.g.offset_groups * blocks

    def _corner_args(self, images):
        n = images * self.items_per_image
        return dict(corner_base=self.corner_base[:n], corner_weight=self.corner_weight[:n])

    def _sampling_threads(self, kernel, images, **limits):
        """(channel block, threads) of an items launch over a chunk; the
        peer (torchvision) has a thread per (channel, image, output pixel)."""
        items = images * self.items_per_image
        peer = self.g.channels * images * self.g.out_pixels
        block = _launch.channel_block(self.g.xp, kernel, self.g.dtype, self.index, items,
                                      self.group_channels, peer, **limits)
        return block, items * -(-self.group_channels // block), peer

    def im2col(self, x, offset, mask, columns):
        """columns <- sampled x, for a chunk (items and sorted strategies)."""
        images = x.shape[0]
        # Kernels read mask only when use_mask; offset stands in for the pointer.
        mask_arg = offset if mask is None else mask
        kernel = _kernels.DEFORM_CONV2D_IM2COL
        block, threads, peer = self._sampling_threads(kernel, images)
        item = self.g.dtype.itemsize
        samples = images * self.items_per_image * self.group_channels
        self.launch(kernel, threads, input=x, offset=offset, mask=mask_arg, columns=columns,
                    use_mask=int(mask is not None), channel_block=block,
                    work=_launch.Work(block, threads * 3 * item + samples * 5 * item, peer))

    def coord(self, grad_columns, x, offset, mask, grad_offset, grad_mask):
        """Offset (and, when grad_mask is given, mask) gradients for a chunk;
        planes: from pixel-major grad_columns, after corners(offset) and
        fill_pixels(x)."""
        images = x.shape[0]
        mask_arg = offset if mask is None else mask
        if self.strategy == "planes":
            # grad_mask is written only when asked for; grad_offset stands in for the pointer.
            items = self.g.kernel_points * self.g.out_pixels
            blocks = -(-items // _kernels.COORD_BLOCK)
            self.launch(_kernels.DEFORM_CONV2D_COL2IM_COORD_PIXELS,
                        images * self.g.offset_groups * blocks,
                        grad_columns_t=grad_columns, padded_pixels=self.padded_pixels[:images],
                        mask=mask_arg, grad_offset=grad_offset,
                        grad_mask=grad_offset if grad_mask is None else grad_mask,
                        use_mask=int(mask is not None), want_grad_mask=int(grad_mask is not None),
                        conv_group_channels=self.g.channels // self.g.groups,
                        **self._corner_args(images))
            return
        items = images * self.items_per_image
        kernel = _kernels.DEFORM_CONV2D_COORD_PARTIAL
        # The peer (torchvision) has a thread per offset entry: two per item.
        block, threads, _ = self._sampling_threads(kernel, images, max_blocks=_launch.MAX_SERIAL)
        block_count = threads // items
        partials = _workspace.scratch(self.g.xp, "coord_partials", (block_count, 3, items),
                                      self.acc)
        item, acc = self.g.dtype.itemsize, self.acc.itemsize
        self.launch(kernel, threads, grad_columns=grad_columns, input=x, offset=offset,
                    partials=partials, channel_block=block,
                    work=_launch.Work(block, threads * (2 * item + 3 * acc)
                                      + items * self.group_channels * 5 * item, 2 * items))
        components = 2 + int(grad_mask is not None)
        self.launch(_kernels.DEFORM_CONV2D_COORD_REDUCE, components * items, partials=partials,
                    mask=mask_arg, grad_offset=grad_offset,
                    grad_mask=grad_offset if grad_mask is None else grad_mask, items=items,
                    blocks=block_count, use_mask=int(mask is not None),
                    work=_launch.Work(block_count, components * items * (block_count * acc
                                                                         + 2 * item),
                                      2 * items, auxiliary=True))

    def col2im(self, grad_columns, offset, mask, grad_input):
        """grad_input += adjoint of im2col; planes: grad_input = adjoint (every
        element written) of pixel-major grad_columns, after corners(offset)."""
        images = offset.shape[0]
        mask_arg = offset if mask is None else mask
        if self.strategy == "planes":
            nhwc = _backend.channels_last(grad_input)
            self.launch(_kernels.DEFORM_CONV2D_COL2IM_PIXELS, self._pixel_blocks(images),
                        grad_columns_t=grad_columns, mask=mask_arg,
                        padded_grad_pixels=self.padded_grad_pixels[:images * self.grad_pixels],
                        grad_input=grad_input.transpose(0, 2, 3, 1) if nhwc else grad_input,
                        use_mask=int(mask is not None),
                        conv_group_channels=self.g.channels // self.g.groups,
                        channels_last=int(nhwc), **self._corner_args(images))
        elif self.strategy == "items":
            kernel = _kernels.DEFORM_CONV2D_COL2IM
            block, threads, peer = self._sampling_threads(kernel, images)
            item, acc = self.g.dtype.itemsize, self.acc.itemsize
            samples = images * self.items_per_image * self.group_channels
            self.launch(kernel, threads, grad_columns=grad_columns, offset=offset, mask=mask_arg,
                        grad_input=grad_input, use_mask=int(mask is not None),
                        channel_block=block,
                        work=_launch.Work(block, threads * 3 * item
                                          + samples * (item + 8 * acc), peer))
        else:
            self._sorted_col2im(grad_columns, offset, mask_arg, mask is not None, grad_input)

    def _sorted_col2im(self, grad_columns, offset, mask, use_mask, grad_input):
        """col2im without atomics: every sample corner as an entry, summed per
        input pixel in a fixed order (cudcn/_sorted_sum.py)."""
        g, xp = self.g, self.g.xp
        images = offset.shape[0]
        items = images * self.items_per_image
        index_dtype = _kernels.INDEX_DTYPES[self.index]
        keys = xp.empty(4 * items, dtype=index_dtype)
        sources = xp.empty(4 * items, dtype=index_dtype)
        weights = xp.empty(4 * items, dtype=self.acc)
        peer = g.channels * images * g.out_pixels
        self.launch(_kernels.DEFORM_CONV2D_SCATTER_ENTRIES, items, offset=offset, mask=mask,
                    keys=keys, sources=sources, weights=weights, use_mask=int(use_mask),
                    work=_launch.Work(4, items * (3 * g.dtype.itemsize + 4 * (
                        2 * index_dtype.itemsize + self.acc.itemsize)), peer, auxiliary=True))
        plane = g.height * g.width
        # key (b * G + g) * H * W + pixel -> grad_input index of the group's first channel
        _sorted_sum.scatter_add(
            xp, g.dtype, self.index, keys, sources, weights, grad_columns.reshape(-1),
            self.group_channels, g.kernel_points * g.out_pixels, grad_input.reshape(-1),
            lambda key: (key // plane) * (self.group_channels * plane) + key % plane, plane,
            peer)


def _add_weight_gradient_of_pixels(xp, grad_out, cols, grad_weight, first, deterministic):
    """grad_weight (groups, C_out / groups, KK * C / groups) += (or, for the
    ``first`` chunk, =) the sum over a chunk's images of grad_out (images,
    groups, C_out / groups, P) times their pixel-major columns (images, P,
    groups, KK * C / groups): one GEMM whose inner dimension runs over the
    images' pixels, rather than a GEMM and an addition of the whole
    gradient per image."""
    images, groups, c_out_g, pixels = grad_out.shape
    # (groups, C_out / groups, images * P); a view for one image
    rows = xp.ascontiguousarray(grad_out.transpose(1, 2, 0, 3)).reshape(
        groups, c_out_g, images * pixels)
    stacked = cols.reshape(images * pixels, groups, -1).swapaxes(0, 1)
    if first:
        _gemm.matmul(xp, rows, stacked, out=grad_weight, deterministic=deterministic)
    else:
        grad_weight += _gemm.matmul(xp, rows, stacked, deterministic=deterministic)


def _contiguous(xp, *arrays):
    return [None if a is None else xp.ascontiguousarray(a) for a in arrays]


@_backend.on_arrays_device
def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Deformable 2-D convolution, DCN v1 and (with ``mask``) v2.

    The semantics of ``torchvision.ops.deform_conv2d``: each output pixel's
    kernel points are moved by their offsets, the input is sampled there
    bilinearly (corners outside the input read 0), the samples are multiplied
    by the mask and convolved with the weights.

    Args:
        input: (N, C_in, H, W) array, NumPy (CPU backend) or CuPy (GPU
            backend). On the CPU a channels-last input (the memory of an (N,
            H, W, C_in) array, as a torch channels_last tensor's) is read
            where it lies.
        offset: (N, 2 * offset_groups * kh * kw, H_out, W_out); offset_groups
            is taken from its shape and must divide C_in. Channel
            2 * (g * kh * kw + k) is the y offset of kernel point k (row-major)
            for offset group g, the next channel its x offset, in input pixels.
        weight: (C_out, C_in / groups, kh, kw); groups = C_in //
            weight.shape[1], and must divide C_out.
        bias: (C_out,) or None.
        stride, padding, dilation: int or (h, w) pair; stride and dilation
            at least 1, padding at least 0.
        mask: (N, offset_groups * kh * kw, H_out, W_out) modulation (DCN v2),
            or None for all ones (DCN v1).

    Every float argument shares one dtype: float32, float64, float16 or
    bfloat16 (``ml_dtypes.bfloat16`` arrays). The 16-bit ones are sampled in
    float32 and stored in their own dtype in the column buffer, whose
    products with the weights accumulate in float32 and are rounded once into
    the output.

    Returns:
        (N, C_out, H_out, W_out) array of the input's type, dtype and device, with
        H_out = (H + 2 * pad_h - (dil_h * (kh - 1) + 1)) // stride_h + 1, likewise W_out.

    Raises:
        TypeError: an argument that is not a NumPy or CuPy array, float
            arguments of different or unsupported dtypes, a stride, padding or
            dilation that is not an int or a pair of ints.
        ValueError: an array of the wrong rank or shape, arrays on different
            backends or devices, stride or dilation < 1 or padding < 0, channel
            counts that groups or offset_groups do not divide, an empty
            kernel or output, a size that does not fit in a 32-bit int.
        cudcn.CompilerNotFoundError: on the CPU, when the kernels are not yet
            loaded and no C++ compiler is found (see also :class:`cudcn.CompileError`).

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> from cudcn import reference
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
        >>> weight = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
        >>> offset = rng.uniform(-1, 1, (2, 2 * 3 * 3, 5, 5)).astype(np.float32)
        >>> out = cudcn.deform_conv2d(x, offset, weight, padding=1)
        >>> out.shape, out.dtype
        ((2, 8, 5, 5), dtype('float32'))
        >>> expected = reference.deform_conv2d(x, offset, weight, padding=1)
        >>> bool(np.allclose(out, expected, atol=1e-4))
        True
    """
    g = _geometry(input, offset, weight, bias, mask, stride, padding, dilation)
    xp = g.xp
    offset, weight, mask = _contiguous(xp, offset, weight, mask)
    out = xp.empty((g.batch, g.out_channels, *g.out_size), dtype=g.dtype)
    out_grouped = out.reshape(g.batch, g.groups, g.out_channels // g.groups, g.out_pixels)
    weight_grouped = weight.reshape(g.groups, g.out_channels // g.groups, -1)
    bias_grouped = None if bias is None else bias.reshape(g.groups, -1, 1)
    plan = _Plan(g, buffers=1, deterministic=False, forward=True)
    x = plan.input_for(input)
    columns = _workspace.scratch(xp, "columns", (plan.size, g.column_rows, g.out_pixels), g.dtype)
    if plan.pixels:
        _pixel_major_forward(plan, x, offset, weight, bias, mask, columns, out)
        return out
    for start, stop in plan.chunks:
        cols = columns[: stop - start]
        off_c, mask_c = offset[start:stop], None if mask is None else mask[start:stop]
        plan.im2col(x[start:stop], off_c, mask_c, cols)
        _gemm.matmul(xp, weight_grouped, cols.reshape(stop - start, g.groups, -1, g.out_pixels),
                     out=out_grouped[start:stop], addend=bias_grouped)
    return out


def _pixel_major_forward(plan, x, offset, weight, bias, mask, columns, out):
    """The plane strategy's forward: pixel-major columns (each item's channels
    side by side, written in one stream), the GEMM's product pixel-major too
    (as fast as the usual orientation, where the product of the usual
    weights with transposed columns is not), then transposed into the
    output with the bias by a kernel."""
    g, xp = plan.g, plan.g.xp
    c_out_g = g.out_channels // g.groups
    weight_t = plan.weight_for_pixels(weight)
    bias = None if bias is None else xp.ascontiguousarray(bias)
    product = _workspace.scratch(xp, "pixel_major_product",
                                 (plan.size, g.groups, g.out_pixels, c_out_g),
                                 _gemm.compute_dtype(g.dtype))
    for start, stop in plan.chunks:
        images = stop - start
        cols = columns[:images].reshape(images, g.out_pixels, g.groups, -1)
        plan.fill_pixels(x[start:stop])
        plan.im2col_pixels(offset[start:stop], None if mask is None else mask[start:stop], cols)
        if g.groups == 1:  # one GEMM for several small images: the weights packed once
            step = max(1, _gemm.STACKED_ROWS // g.out_pixels)
            for first in range(0, images, step):
                last = min(images, first + step)
                rows = (last - first) * g.out_pixels
                _gemm.matmul(xp, cols[first:last].reshape(rows, -1), weight_t[0],
                             out=product[first:last].reshape(rows, c_out_g))
        else:
            _gemm.matmul(xp, cols.swapaxes(1, 2), weight_t, out=product[:images])
        plan.output_from_pixels(product[:images], bias, out[start:stop])


@_backend.on_arrays_device
def deform_conv2d_backward(grad_output, input, offset, weight, bias=None, stride=1, padding=0,
                           dilation=1, mask=None, needs=GRADIENT_NAMES, deterministic=False):
    """Gradients of :func:`cudcn.deform_conv2d`.

    Args:
        grad_output: (N, C_out, H_out, W_out), the gradient of the loss with
            respect to deform_conv2d's output, of the other arguments' dtype.
        input, offset, weight, bias, stride, padding, dilation, mask: exactly as
            given to :func:`cudcn.deform_conv2d` (the same shapes and one float
            dtype: float32, float64, float16 or bfloat16).
        needs: the gradients to compute, out of "input", "offset", "weight",
            "bias", "mask" (default all; a lone string names one). Work only
            another one needs is skipped.
        deterministic: bit-identical gradients run after run and for any
            number of threads, on both backends (no floating-point atomics).
            The CPU backend's kernels always run this way; with it, its matrix
            products are split into the same tiles whatever the thread count,
            and on the GPU it is slower.

    Returns:
        :class:`cudcn.DeformConv2dGrads` (input, offset, weight, bias, mask),
        each of the shape and dtype of its argument, None where not asked for,
        and None for bias and mask when they were None. On the CPU the
        gradient of a channels-last input comes in the same layout.

    Raises:
        TypeError: as :func:`cudcn.deform_conv2d` (grad_output included), or
            ``needs`` that is not a string or a collection of strings.
        ValueError: as :func:`cudcn.deform_conv2d`, a grad_output whose shape
            is not the output's, or ``needs`` naming an unknown gradient.

    Where the bilinear weight has a kink, the offset gradient follows
    torchvision: d/dy is taken on the cell [floor(y), floor(y) + 1] (likewise
    x) wherever y >= -1 and x >= -1, so a point exactly on y = -1 or x = -1
    (zero offsets with padding 1) gets the one-sided gradient though it
    samples 0; a point with y < -1, y >= H, x < -1 or x >= W gets none.

    Example:
        >>> import numpy as np
        >>> import cudcn
        >>> x = np.ones((1, 2, 4, 4))
        >>> offset = np.full((1, 2 * 3 * 3, 4, 4), 0.25)
        >>> weight = np.ones((3, 2, 3, 3))
        >>> grad_output = np.ones((1, 3, 4, 4))
        >>> grads = cudcn.deform_conv2d_backward(grad_output, x, offset, weight, padding=1,
        ...                                      needs=("offset", "weight"))
        >>> grads.offset.shape, grads.weight.shape, grads.offset.dtype
        ((1, 18, 4, 4), (3, 2, 3, 3), dtype('float64'))
        >>> grads.input is None, grads.bias is None
        (True, True)
    """
    wanted = _checks.needs(needs, GRADIENT_NAMES)
    g = _geometry(input, offset, weight, bias, mask, stride, padding, dilation,
                  extra=dict(grad_output=grad_output))
    xp = g.xp
    grad_output, offset, weight, mask = _contiguous(xp, grad_output, offset, weight, mask)
    acc_dtype = xp.dtype(_kernels.scalar_type(g.dtype).acc_dtype_name)
    want_bias = "bias" in wanted and bias is not None
    want_mask = "mask" in wanted and mask is not None
    want_weight = "weight" in wanted
    want_input = "input" in wanted
    want_coord = "offset" in wanted or want_mask

    grad_bias = grad_output.sum(axis=(0, 2, 3), dtype=acc_dtype).astype(g.dtype) if want_bias else None
    grad_offset = xp.empty(offset.shape, dtype=g.dtype) if want_coord else None
    grad_mask = xp.empty(mask.shape, dtype=g.dtype) if want_mask else None
    grad_weight = None
    c_out_g = g.out_channels // g.groups
    weight_grouped = weight.reshape(g.groups, c_out_g, -1)
    grad_out_grouped = grad_output.reshape(g.batch, g.groups, c_out_g, g.out_pixels)
    plan = _Plan(g, buffers=int(want_weight) + int(want_input or want_coord),
                 deterministic=deterministic, coord=want_coord, col2im=want_input,
                 weight=want_weight)
    x = plan.input_for(input)
    grad_input = None
    if want_input and _backend.channels_last(x):  # input_for kept the layout: planes
        grad_input = xp.empty((g.batch, g.height, g.width, g.channels),
                              acc_dtype).transpose(0, 3, 1, 2)
    elif want_input:  # the plane strategy's col2im writes it whole; the others add into it
        grad_input = (xp.empty if plan.strategy == "planes" else xp.zeros)(x.shape, acc_dtype)
    if want_weight:  # pixel-major columns' order, (KK, C / groups), with plan.pixels
        grad_weight = (xp.empty if plan.pixels and g.batch else xp.zeros)(weight_grouped.shape,
                                                                           acc_dtype)
    columns = (_workspace.scratch(xp, "columns", (plan.size, g.column_rows, g.out_pixels),
                                  g.dtype)
               if want_weight else None)
    grad_columns = (_workspace.scratch(xp, "grad_columns",
                                       (plan.size, g.column_rows, g.out_pixels), g.dtype)
                    if want_input or want_coord else None)
    weight_rows = plan.weight_rows_for_pixels(weight) if plan.cells else None
    for start, stop in plan.chunks:
        images = stop - start
        x_c, off_c = x[start:stop], offset[start:stop]
        mask_c = None if mask is None else mask[start:stop]
        if plan.cells:
            plan.corners(off_c)
        if plan.pixels:
            plan.fill_pixels(x_c)
        if want_weight and plan.pixels:
            cols = columns[:images].reshape(images, g.out_pixels, g.groups, -1)
            plan.im2col_pixels(off_c, mask_c, cols)
            _add_weight_gradient_of_pixels(xp, grad_out_grouped[start:stop], cols, grad_weight,
                                           first=start == 0, deterministic=deterministic)
        elif want_weight:
            cols = columns[:images]
            plan.im2col(x_c, off_c, mask_c, cols)
            cols_grouped = cols.reshape(images, g.groups, -1, g.out_pixels)
            for i in range(images):
                grad_weight += _gemm.matmul(xp, grad_out_grouped[start + i],
                                            cols_grouped[i].swapaxes(-1, -2),
                                            deterministic=deterministic)
        if not (want_input or want_coord):
            continue
        gcols = grad_columns[:images]
        if plan.cells:  # pixel-major, (images, P, groups, KK * C / groups)
            _gemm.matmul(xp, grad_out_grouped[start:stop].swapaxes(-1, -2), weight_rows,
                         out=gcols.reshape(images, g.out_pixels, g.groups, -1).swapaxes(1, 2),
                         deterministic=deterministic)
        else:
            _gemm.matmul(xp, weight_grouped.swapaxes(-1, -2), grad_out_grouped[start:stop],
                         out=gcols.reshape(images, g.groups, -1, g.out_pixels),
                         deterministic=deterministic)
        if want_input:
            plan.col2im(gcols, off_c, mask_c, grad_input[start:stop])
        if want_coord:
            plan.coord(gcols, x_c, off_c, mask_c, grad_offset[start:stop],
                       None if grad_mask is None else grad_mask[start:stop])

    if grad_input is not None:
        grad_input = grad_input.astype(g.dtype, copy=False)
    if grad_weight is not None:
        grad_weight = (plan.weight_from_pixel_rows(grad_weight) if plan.pixels else
                       grad_weight.reshape(weight.shape).astype(g.dtype, copy=False))
    return DeformConv2dGrads(
        input=grad_input,
        offset=grad_offset if "offset" in wanted else None,
        weight=grad_weight,
        bias=grad_bias,
        mask=grad_mask,
    )
