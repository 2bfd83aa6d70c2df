"""Deterministic scatter-add as a sorted gather: the glue around segmented_sum.cu.

An op's scatter_entries kernel lists every contribution to its gradient as
an entry (key, source, weight): key names the destination (-1: none),
source the element of the incoming gradient it scales (for channel 0),
weight the factor. Here the array library sorts the entries by key with a
stable sort, cuts each key's run into chunks of at most CHUNK entries, and
the two kernels of segmented_sum.cu add them up: every destination's value
is the same sum in the same order whatever the thread count or the GPU, and
no thread waits on another.
"""

from . import _kernels, _launch

CHUNK = 16  # entries one thread of segmented_sum_chunks adds


def _pieces(xp, index_dtype, bounds, size):
    """Runs [bounds[k], bounds[k + 1]) cut into pieces of at most ``size``,
    in order: (pieces per run, each run's first piece with the count of
    pieces appended, each piece's first element with bounds[-1] appended)."""
    per_run = (xp.diff(bounds) + (size - 1)) // size
    run_first = xp.concatenate([xp.zeros(1, dtype=index_dtype),
                                xp.cumsum(per_run, dtype=index_dtype)])
    pieces = int(run_first[-1])
    piece_run = xp.repeat(xp.arange(int(per_run.size), dtype=index_dtype), per_run)
    within = xp.arange(pieces, dtype=index_dtype) - run_first[piece_run]
    piece_first = xp.concatenate([bounds[piece_run] + size * within, bounds[-1:]])
    return per_run, run_first, xp.ascontiguousarray(piece_first, dtype=index_dtype)


def scatter_add(xp, dtype, index, keys, sources, weights, source, channels, source_stride,
                dest, dest_of_keys, dest_stride, peer_threads):
    """For every key and channel c < ``channels``:
    ``dest[dest_of_keys(key) + c * dest_stride] = sum of weight *
    source[source_index + c * source_stride]`` over the key's entries, in
    entry order. ``dest`` (flat, of the accumulation dtype) is written only
    where some entry leads; the caller zero-fills it. ``source`` is flat.
    ``peer_threads`` is the parallelism of the peer's scatter, for gpu-plan.
    """
    index_dtype = _kernels.INDEX_DTYPES[index]
    live = xp.flatnonzero(keys >= 0)
    if live.size == 0:
        return
    order = live[xp.argsort(keys[live], kind="stable")]
    sorted_keys = keys[order]
    entries = int(order.size)
    boundary = xp.ones(entries, dtype=bool)
    boundary[1:] = sorted_keys[1:] != sorted_keys[:-1]
    starts = xp.flatnonzero(boundary).astype(index_dtype)
    segments = int(starts.size)
    chunks_per_segment, segment_first_chunk, chunk_first = _pieces(
        xp, index_dtype, xp.concatenate([starts, xp.asarray([entries], dtype=index_dtype)]),
        CHUNK)
    chunks = int(segment_first_chunk[-1])
    acc = weights.dtype
    partials = xp.empty(chunks * channels, dtype=acc)
    item = source.dtype.itemsize
    _launch.run(_launch.make_launch(
        _kernels.SEGMENTED_SUM_CHUNKS, dtype, chunks * channels, index,
        source=source, entry_source=xp.ascontiguousarray(sources[order], dtype=index_dtype),
        entry_weight=xp.ascontiguousarray(weights[order]), chunk_first=chunk_first,
        partials=partials, channels=channels, source_stride=source_stride,
        work=_launch.Work(serial=CHUNK, peer_threads=peer_threads,
                          dram_bytes=entries * (2 * index_dtype.itemsize + acc.itemsize)
                          + entries * channels * item + chunks * channels * acc.itemsize)))
    # A long segment's chunk sums are added in groups of at most MAX_SERIAL,
    # level by level, so that no thread of the last pass adds more (tens of
    # thousands of queries' points can meet on one pixel of a coarse level).
    first_chunk, per_segment = segment_first_chunk, chunks_per_segment
    longest = int(per_segment.max())
    most = _launch.MAX_SERIAL
    while longest > most:
        groups_per_segment, group_offsets, group_first = _pieces(xp, index_dtype, first_chunk,
                                                                 most)
        groups = int(group_offsets[-1])
        grouped = xp.empty(groups * channels, dtype=acc)
        _launch.run(_launch.make_launch(
            _kernels.SEGMENTED_SUM_SEGMENTS, dtype, groups * channels, index, partials=partials,
            segment_first_chunk=group_first,
            segment_dest=xp.arange(groups, dtype=index_dtype) * channels, dest=grouped,
            channels=channels, dest_stride=1,
            work=_launch.Work(serial=most, peer_threads=peer_threads,
                              dram_bytes=(int(partials.size) + groups * channels)
                              * acc.itemsize)))
        partials, first_chunk, per_segment = grouped, group_offsets, groups_per_segment
        longest = -(-longest // most)
    _launch.run(_launch.make_launch(
        _kernels.SEGMENTED_SUM_SEGMENTS, dtype, segments * channels, index, partials=partials,
        segment_first_chunk=first_chunk,
        segment_dest=xp.ascontiguousarray(dest_of_keys(sorted_keys[starts]), dtype=index_dtype),
        dest=dest, channels=channels, dest_stride=dest_stride,
        work=_launch.Work(serial=longest, peer_threads=peer_threads,
                          dram_bytes=(int(partials.size) + segments * channels)
                          * acc.itemsize)))


def workspace_bytes(entries, segments, channels, index_dtype, acc_dtype):
    """An upper bound of what scatter_add allocates for ``entries`` entries
    over at most ``segments`` keys: the sort's index arrays, the sorted
    entries and the chunk tables, and the chunk sums."""
    index = index_dtype.itemsize
    chunks = entries // CHUNK + min(entries, segments) + 1
    return (entries * (8 * 3 + 3 * index + acc_dtype.itemsize + 1)
            + chunks * (3 * index + channels * acc_dtype.itemsize))
