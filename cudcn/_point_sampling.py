"""The launches of the ops built on raw_kernels/point_sampling.cuh
(ms_deform_attn, dcnv3/dcnv4): forward, the points' partial sums and the
sampled map's gradient, by the strategy the target takes.

An op hands over its checked arguments as an object with: ``xp``,
``dtype``, ``acc_dtype``, ``index`` (the C index type), ``value`` (the
sampled (N, S, M, D) map), ``grad_output`` (N, Q, M, D) in the backward,
``heads_total`` (N * Q * M), ``points`` (P), ``channels`` (D), ``planes``
(N * M * the number of maps, the planes strategy's (n, m, level)),
``values()`` (every other argument of its kernels but the outputs) and
``sample_bytes()`` (what one point's sample reads, for gpu-plan); and its
kernels as a SamplingKernels. Its own reduce kernel then turns the
partial sums into the gradients of its points' parameters.
"""

import dataclasses

from . import _kernels, _launch, _sorted_sum


@dataclasses.dataclass(frozen=True)
class SamplingKernels:
    forward: _kernels.Kernel
    points_partial: _kernels.Kernel
    value_items: _kernels.Kernel
    value_planes: _kernels.Kernel
    scatter_entries: _kernels.Kernel


def forward(a, kernels):
    """The op's output (N, Q, M, D): each head's weighted samples."""
    xp = a.xp
    output = xp.empty(a.output_shape, dtype=a.dtype)
    peer = a.heads_total * a.channels  # the peers: a thread per output element
    block = _launch.channel_block(xp, kernels.forward, a.dtype, a.index, a.heads_total,
                                  a.channels, peer, per_channel=a.points)
    items = a.heads_total * -(-a.channels // block)
    _launch.run(_launch.make_launch(
        kernels.forward, a.dtype, items, a.index, value=a.value, output=output,
        channel_block=block, **a.values(),
        work=_launch.Work(block * a.points, a.heads_total * a.points * a.sample_bytes()
                          + output.size * a.dtype.itemsize, peer)))
    return output


@dataclasses.dataclass
class Sums:
    """The backward's intermediate results: the points' partial sums (3 per
    (head, point, block of channels), the blocks of a point side by side;
    None if not asked for) and the sampled map's gradient in the
    accumulation dtype (None if not asked for)."""
    partials: object
    blocks: int
    grad_value: object


def backward(a, kernels, want_points, want_value, deterministic):
    """The points' partial sums and the map's gradient, as asked.

    On the CPU (the planes strategy) one pass over the points gives both:
    each thread owns its (n, m, level) rows and sums its points' products
    over each block of kLanes channels on the way.
    """
    xp = a.xp
    peer = a.heads_total * a.channels
    items = a.heads_total * a.points
    item = a.dtype.itemsize
    acc = a.acc_dtype.itemsize
    strategy = _launch.strategy(xp, deterministic) if want_value else None
    fused = want_points and strategy == "planes"
    partials, blocks = None, 0
    if want_points and fused:
        blocks = -(-a.channels // _kernels.SAMPLING_LANES)
        partials = xp.empty(items * blocks * 3, dtype=a.acc_dtype)
    elif want_points:
        kernel = kernels.points_partial
        block = _launch.channel_block(xp, kernel, a.dtype, a.index, items, a.channels, peer,
                                      max_blocks=_launch.MAX_SERIAL)
        blocks = -(-a.channels // block)
        partials = xp.empty(items * blocks * 3, dtype=a.acc_dtype)
        _launch.run(_launch.make_launch(
            kernel, a.dtype, items * blocks, a.index, grad_output=a.grad_output, value=a.value,
            partials=partials, channel_block=block, **a.values(),
            work=_launch.Work(block, items * (a.sample_bytes() + a.channels * item
                                              + 3 * blocks * acc), peer)))
    grad_value = None
    if want_value:
        grad_value = xp.zeros(a.value.shape, dtype=a.acc_dtype)
        values = dict(grad_output=a.grad_output, grad_value=grad_value, **a.values())
        if strategy == "planes":
            _launch.run(_launch.make_launch(
                kernels.value_planes, a.dtype,
                a.planes, a.index, value=a.value,
                partials=partials if fused else xp.empty(1, dtype=a.acc_dtype),
                want_points=int(fused), **values))
        elif strategy == "items":
            kernel = kernels.value_items
            block = _launch.channel_block(xp, kernel, a.dtype, a.index, items, a.channels, peer,
                                          per_channel=4)
            _launch.run(_launch.make_launch(
                kernel, a.dtype, items * -(-a.channels // block), a.index, channel_block=block,
                **values,
                work=_launch.Work(4 * block, items * (3 * item + a.channels * item
                                                      + 4 * a.channels * acc), peer)))
        else:
            _sorted_grad_value(a, kernels.scatter_entries, grad_value)
    return Sums(partials, blocks, grad_value)


def reduce_points(a, kernel, sums, point_bytes, **values):
    """The op's reduce kernel over the partial sums: each point's blocks
    added, then its parameters' gradients (``values``: the kernel's own
    arguments). A thread takes a head's points in a run on the CPU, one
    point on a GPU. ``point_bytes``: what a point's gradients read and
    write besides the sums, for gpu-plan."""
    run = a.points if _launch.target(a.xp).kind == "cpu" else 1
    items = a.heads_total * a.points
    _launch.run(_launch.make_launch(
        kernel, a.dtype, a.heads_total * -(-a.points // run), a.index, partials=sums.partials,
        blocks=sums.blocks, run=run, **values, **a.values(),
        work=_launch.Work(run * sums.blocks,
                          items * (3 * sums.blocks * a.acc_dtype.itemsize + point_bytes),
                          a.heads_total * a.channels, auxiliary=True)))


def _sorted_grad_value(a, kernel, grad_value):
    """grad_value without atomics: every sample corner as an entry, summed
    per value row and head, channel by channel, in a fixed order."""
    xp = a.xp
    samples = a.heads_total * a.points
    index_dtype = _kernels.INDEX_DTYPES[a.index]
    keys = xp.empty(4 * samples, dtype=index_dtype)
    sources = xp.empty(4 * samples, dtype=index_dtype)
    weights = xp.empty(4 * samples, dtype=a.acc_dtype)
    _launch.run(_launch.make_launch(
        kernel, a.dtype, 4 * samples, a.index, keys=keys, sources=sources,
        entry_weights=weights, **a.values(),
        work=_launch.Work(1, samples * (3 * a.dtype.itemsize + 4 * (
            2 * index_dtype.itemsize + a.acc_dtype.itemsize)), a.heads_total * a.channels)))
    channels = a.channels
    _sorted_sum.scatter_add(xp, a.dtype, a.index, keys, sources, weights,
                            a.grad_output.reshape(-1), channels, 1, grad_value.reshape(-1),
                            lambda key: key * channels, 1, a.heads_total * channels)
