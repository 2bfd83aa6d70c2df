"""Ratios of times measured side by side, as issue 12 measures them.

On a shared machine an absolute time moves with whatever else runs; a ratio of
medians of interleaved rounds (each round calls every contender once, the order
rotating from round to round) moves much less, because both sides of the ratio
meet the same load.
"""

import time

import numpy as np

# Rounds after the warm-up: as many as fit in BUDGET_SECONDS, within these bounds.
MIN_ROUNDS, MAX_ROUNDS = 5, 15
BUDGET_SECONDS = 5.0


def _timed(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def interleaved_medians(calls, rounds=None):
    """Median seconds of each callable in ``calls``, timed in turns. One
    warm-up round comes first; it also sets the number of rounds when
    ``rounds`` is None. Each callable waits for its own device."""
    warm_up = sum(_timed(call) for call in calls)
    if rounds is None:
        rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, BUDGET_SECONDS // max(warm_up, 1e-9))))
    samples = [[] for _ in calls]
    for r in range(rounds):
        for i in range(len(calls)):
            k = (i + r) % len(calls)
            samples[k].append(_timed(calls[k]))
    return [float(np.median(s)) for s in samples]


def ratio_of_medians(cudcn_call, peer_call, rounds=None):
    """cudcn's median time over the peer's: below 1 means cudcn is faster,
    and, as for asv's time_* benchmarks, a rise is a regression."""
    ours, theirs = interleaved_medians([cudcn_call, peer_call], rounds)
    return ours / theirs


def unit(text):
    """Set the unit asv shows for a track_* benchmark."""

    def mark(function):
        function.unit = text
        return function

    return mark
