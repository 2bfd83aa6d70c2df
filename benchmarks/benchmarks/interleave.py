"""Ratios of times measured side by side, for the track_* benchmarks.

On a shared machine an absolute time moves with whatever else runs. The
contenders are therefore timed in interleaved rounds, each round calling every
contender once, back to back, the order rotating from round to round (issue
12's measurement), and each round gives one ratio: both of its times met the
same load, which the ratio cancels. With two contenders a rotation treats
both alike (each follows itself in half the rounds, the other in the other
half); `cudcn bench`, with up to five, shuffles each round instead.

A track_* returns those per-round ratios as asv's samples, so that asv records
their median with a confidence interval, and `asv continuous` / `asv compare`
call a ratio changed only when the change is significant, not on one noisy
round.
"""

import time

# Rounds after the warm-up: as many as fit in BUDGET_SECONDS, within these bounds.
MIN_ROUNDS, MAX_ROUNDS = 5, 15
BUDGET_SECONDS = 5.0


def _timed(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def interleaved_times(calls, rounds=None):
    """Seconds of each callable in ``calls``, one list per callable, one entry
    per round. One warm-up round comes first; it also sets the number of rounds
    when ``rounds`` is None. Each callable waits for its own device."""
    warm_up = sum(_timed(call) for call in calls)
    if rounds is None:
        rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, BUDGET_SECONDS // max(warm_up, 1e-9))))
    samples = [[] for _ in calls]
    for r in range(rounds):
        for i in range(len(calls)):
            k = (i + r) % len(calls)
            samples[k].append(_timed(calls[k]))
    return samples


def ratio_samples(cudcn_call, peer_call, rounds=None):
    """What a track_* returns: cudcn's time over the peer's in each round, as
    asv samples (asv records their median). Below 1, cudcn is faster; as for
    time_* benchmarks, a rise is a regression."""
    ours, theirs = interleaved_times([cudcn_call, peer_call], rounds)
    return {"samples": [a / b for a, b in zip(ours, theirs)], "number": 1}


def unit(text):
    """Set the unit asv shows for a track_* benchmark."""

    def mark(function):
        function.unit = text
        return function

    return mark
