"""The one ranking rule of every update: "top r by score", ties to the lower index.

"Top r by score" picks the r largest scores; at equal score the lower flat index wins
(inside one row, the lower column). Every ranking of dst (the magnitude keep, the
saliency step's gradient ranking, the per-neuron cap and regrowth, the random masks'
keys) goes through these two functions, so the rule is written once and the updates are
deterministic.
"""

import math

import numpy as np

__all__ = ["top_per_row", "top_positions"]


def top_per_row(score, counts):
    """bool (m, F): in row i, the counts[i] largest entries of score (ties: lower column).

    score: (m, F) float, -inf marks positions that may not be chosen; counts: (m,) ints
    with 0 <= counts[i] <= the row's finite entries. O(m*F) via np.partition: the
    counts[i]-th largest value is the row's threshold, and ties at the threshold are
    broken by their order along the row.
    """
    m, width = score.shape
    counts = np.asarray(counts, dtype=np.int64)
    widest = int(counts.max()) if m else 0
    if widest == 0:
        return np.zeros(score.shape, dtype=bool)
    top = np.partition(score, width - widest, axis=1)[:, width - widest:]
    if np.all(counts == widest):
        threshold = top[:, 0]
    else:
        top.sort(axis=1)
        position = np.clip(widest - counts, 0, widest - 1)
        threshold = np.where(counts > 0, top[np.arange(m), position], np.inf)
    threshold = threshold[:, None]
    # Row i holds at least counts[i] entries >= its threshold; exactly that many in
    # every row (no tie straddles a threshold) iff the totals agree.
    chosen = score >= threshold
    if np.count_nonzero(chosen) == counts.sum():
        return chosen
    above = score > threshold
    at_threshold = chosen & ~above
    still_needed = counts - np.count_nonzero(above, axis=1)
    rank = np.cumsum(at_threshold, axis=1, dtype=np.int32)
    return above | (at_threshold & (rank <= still_needed[:, None]))


def top_positions(index, values, count, shape):
    """bool ``shape``: True at the flat ``index`` entries holding the ``count`` largest
    ``values`` (index ascending, so ties go to the lower flat index)."""
    chosen = np.zeros(math.prod(shape), dtype=bool)
    chosen[index[top_per_row(values.reshape(1, -1), np.array([count]))[0]]] = True
    return chosen.reshape(shape)
