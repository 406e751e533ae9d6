"""The bench's timers: interleaved rounds of timed calls, their medians and spread.

The implementations of a case take turns: ROUNDS rounds (QUICK_ROUNDS with --quick), each
giving every implementation a warm-up call and then 1/ROUNDS of its time, so a burst of
load from elsewhere on a shared machine falls on all of them rather than on one
(``time_all``). ``estimate_row_seconds`` is the same loop as arithmetic, which is how
--quick keeps its promise of QUICK_SECONDS.
"""

import math
import time

import numpy as np

ROUNDS = 10
# --quick: fewer interleaved rounds (each costs every implementation a warm-up call, and
# at batch 256 on the big layer a call is ~0.1 s) and shorter probes, so that the default
# shapes finish within QUICK_SECONDS on 2 idle cores (see estimate_row_seconds).
QUICK_ROUNDS = 3
QUICK_TURN_REPEATS = 1   # timed calls per turn at least: 3 samples of a slow call
QUICK_SECONDS = 60
QUICK_MIN_TIME = 0.03


def sample_seconds(fn, min_time, min_repeats=5, max_repeats=100_000, clock=time.perf_counter):
    """Wall times of fn() (a list) over at least min_time s and min_repeats calls,
    after one warm-up call. ``clock``: seconds (injectable for tests)."""
    fn()
    times = []
    start = clock()
    while len(times) < min_repeats or (clock() - start < min_time
                                       and len(times) < max_repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return times


def spread(times):
    """Interquartile range of ``times`` over their median; None for fewer than 3."""
    if len(times) < 3:
        return None
    q25, median, q75 = np.percentile(times, [25, 50, 75])
    return float((q75 - q25) / median) if median > 0 else None


def turn_repeats(rounds):
    """Timed calls each implementation gets at least per turn: 5 calls over the rounds."""
    return -(-5 // rounds)


def estimate_row_seconds(call_seconds, min_time, rounds, min_repeats=None):
    """Seconds ``time_all`` with ``sample_seconds`` spends on one row whose callables
    take ``call_seconds`` (a list, one per callable; csr-like entries count each
    orientation) each: per round and callable, a warm-up call and then calls until the
    turn's min_time / rounds has passed, at least ``min_repeats`` of them (default
    ``turn_repeats(rounds)``)."""
    turn = min_time / rounds
    least = turn_repeats(rounds) if min_repeats is None else min_repeats
    total = 0.0
    for call in call_seconds:
        calls = max(least, math.ceil(turn / call) if call > 0 else least)
        total += rounds * call * (1 + calls)
    return total


def time_all(impls, sampler, min_time, rounds=ROUNDS, min_repeats=None):
    """Records {implementation, median_s, repeats, iqr_over_median, note} for name ->
    (fn, note) or, for csr-like entries, name -> {orientation: fn} (the faster
    orientation is kept and named).

    ``sampler(fn, seconds, min_repeats)`` returns a list of times; every callable gets
    one turn per round (see the module docstring) of at least ``min_repeats`` calls
    (default ``turn_repeats(rounds)``: 5 over the rounds)."""
    least = turn_repeats(rounds) if min_repeats is None else min_repeats
    variants = {name: impl if isinstance(impl, dict) else {impl[1]: impl[0]}
                for name, impl in impls.items()}
    times = {(name, note): [] for name, fns in variants.items() for note in fns}
    for _ in range(rounds):
        for name, fns in variants.items():
            for note, fn in fns.items():
                times[name, note] += sampler(fn, min_time / rounds, least)
    records = []
    for name, fns in variants.items():
        medians = {note: float(np.median(times[name, note])) for note in fns}
        note = min(medians, key=medians.get)
        records.append({"implementation": name, "median_s": medians[note],
                        "repeats": len(times[name, note]),
                        "iqr_over_median": spread(times[name, note]),
                        "note": f"{note} (faster orientation)" if len(fns) > 1 else note})
    return records
