"""The invariants of a sparse layer, checked all at once: constant fan-in, empty ablated
neurons, nothing outside the mask, the budget (``invariant_violations``,
``check_invariants``; for a layer held condensed, ``condensed_violations``,
``check_condensed_invariants``). Vectorised, and used by the training loop after every update.
"""

from dataclasses import dataclass

import numpy as np

from ..backend import is_cupy_array, to_numpy
from .masks import _check_mask, _check_shape

__all__ = ["INFER", "InvariantError", "Violation", "check_condensed_invariants", "check_invariants",
           "condensed_violations", "invariant_violations"]


@dataclass(frozen=True)
class Violation:
    """One broken invariant of a layer, as ``invariant_violations`` reports it.

    kind:     "outside_mask" (a non-zero weight where the mask is False), "layout" (a
              condensed layer's rows or indices out of order or range), "ablated_active"
              (a neuron listed as ablated holds weights), "no_active_neuron" (every neuron
              is ablated), "fan_in" (an active neuron's count differs from the fan-in) or
              "budget" (nnz outside the budget's range).
    neuron:   the first (lowest) offending neuron, None for a layer-wide violation.
    expected: what that neuron (or the layer) should have: 0, the fan-in, a range text.
    got:      what it has: a weight value, a count, nnz.
    count:    how many weights ("outside_mask") or neurons (the others) offend.
    message:  one line naming all of the above, without the layer name.
    """

    kind: str
    neuron: int | None
    expected: object
    got: object
    count: int
    message: str


class InvariantError(AssertionError):
    """A sparse layer breaks an invariant (constant fan-in, ablation, mask, budget).

    An AssertionError because it reports a broken internal guarantee, not a bad
    argument; unlike a bare ``assert`` it is raised under ``python -O`` too.
    ``violations`` holds the ``Violation`` records behind the message (empty when the
    error was raised with a message only).
    """

    def __init__(self, message="", violations=()):
        super().__init__(message)
        self.violations = list(violations)


INFER = "infer"


def invariant_violations(weight, mask, fan_in=None, ablated=(), *, budget=None):
    """Every invariant the layer breaks, as a list of ``Violation`` (empty: valid).

    weight: (n, *fan_in_dims), mask: same shape, bool. The checks, in this order:
    * "outside_mask": no weight is non-zero outside the mask;
    * "ablated_active": every neuron in ``ablated`` has no active weight;
      ``ablated="infer"`` takes the neurons whose mask row is empty (so this never fires);
    * "no_active_neuron": at least one neuron is not ablated (unless ``budget`` is 0);
    * "fan_in": with ``fan_in``, every neuron not ablated has exactly ``fan_in`` active
      weights; ``fan_in="infer"`` expects the most common count among the non-ablated
      neurons that have any (ties: the larger count), 1 if none has any;
    * "budget": with ``budget``, budget - n_active < nnz <= budget, n_active counting
      neurons with any weight, or nnz == budget (so a budget of 0 takes no weights);
      nnz may exceed the budget only when every active neuron
      has one weight (the fan-in floor of 1) and fall short only when every active
      neuron is dense.
    ``ablated`` is a sequence of neuron indices in [0, n) (repeats are harmless); a
    boolean array is refused (TypeError), since NumPy would read it as indices 0 and 1.
    Vectorised: one pass over the mask, no loop over neurons. CuPy arrays are checked
    on the host.
    """
    if is_cupy_array(weight) or is_cupy_array(mask):
        weight, mask = to_numpy(weight), to_numpy(mask)
    if not isinstance(weight, np.ndarray):
        raise TypeError(f"weight must be a numpy array, got {type(weight).__name__}")
    _check_mask(mask, weight.shape)
    n = _check_shape(weight.shape)[0]
    rows, row_mask = weight.reshape(n, -1), mask.reshape(n, -1)
    counts = np.count_nonzero(row_mask, axis=1)
    is_ablated = _ablated_flags(ablated, counts)
    violations = []

    outside = (rows != 0) & ~row_mask
    if outside.any():
        neuron, column = (int(i) for i in np.argwhere(outside)[0])
        value, total = rows[neuron, column], int(np.count_nonzero(outside))
        violations.append(Violation(
            "outside_mask", neuron, 0, value.item(), total,
            f"{total} weights are non-zero outside the mask; first at neuron {neuron}, "
            f"input {column}: {value.item()!r}"))

    violations.extend(_count_violations(counts, rows.shape[1], is_ablated, fan_in, budget))
    return violations


def check_invariants(weight, mask, fan_in=None, ablated=(), *, layer="", budget=None):
    """Raise InvariantError unless the layer is a valid sparse layer.

    The checks and arguments are those of ``invariant_violations`` (``fan_in`` and
    ``ablated`` may be "infer"). The error reports every violation at once, one line
    each, prefixed by the layer's name: the first offending neuron and the counts; its
    ``violations`` attribute holds the records. CuPy arrays are checked on the host.
    """
    _raise(invariant_violations(weight, mask, fan_in, ablated, budget=budget), layer)


def condensed_violations(rows, indices, shape, fan_in=None, ablated=(), *, budget=None):
    """``invariant_violations`` of a layer held condensed, without its dense form.

    rows int[n_active], indices int[n_active, k]: the canonical layout
    (``srigl_np.nn.condensed_compute.condense_rows``) of a weight of dense ``shape``
    (n, *fan_in_dims); the mask is True exactly at (rows[i], indices[i, j]). First
    "layout": rows strictly ascending in [0, n), each row's indices strictly ascending
    in [0, F) (so every stored neuron holds exactly k weights); when the layout holds,
    the count checks of ``invariant_violations`` ("ablated_active", "no_active_neuron",
    "fan_in", "budget"). "outside_mask" cannot arise: a weight exists only inside.
    O(nnz + n).
    """
    n = _check_shape(tuple(shape))[0]
    dense_fan_in = int(np.prod(shape[1:]))
    rows, indices = np.asarray(rows), np.asarray(indices)
    if rows.ndim != 1 or indices.ndim != 2 or indices.shape[0] != rows.size:
        raise ValueError(f"rows (n_active,) and indices (n_active, k) expected, got "
                         f"{rows.shape} and {indices.shape}")
    k = indices.shape[1]
    bad_rows = rows.size and (rows[0] < 0 or rows[-1] >= n or (np.diff(rows) <= 0).any())
    bad_columns = indices.size and (indices.min() < 0 or indices.max() >= dense_fan_in
                                    or (k > 1 and (np.diff(indices, axis=1) <= 0).any()))
    if bad_rows or bad_columns:
        what = (f"rows are not strictly ascending in [0, {n})" if bad_rows else
                f"a row's indices are not strictly ascending in [0, {dense_fan_in})")
        return [Violation("layout", None, "canonical", None, 1,
                          f"the condensed layout is broken: {what}")]
    counts = np.zeros(n, dtype=np.int64)
    counts[rows] = k
    return _count_violations(counts, dense_fan_in, _ablated_flags(ablated, counts), fan_in,
                             budget)


def check_condensed_invariants(rows, indices, shape, fan_in=None, ablated=(), *, layer="",
                               budget=None):
    """Raise InvariantError unless the condensed layer is valid (``condensed_violations``;
    the message as ``check_invariants``')."""
    _raise(condensed_violations(rows, indices, shape, fan_in, ablated, budget=budget), layer)


def _raise(violations, layer):
    if violations:
        where = f"layer {layer!r}: " if layer else ""
        raise InvariantError("\n".join(where + v.message for v in violations), violations)


def _count_violations(counts, dense_fan_in, is_ablated, fan_in, budget):
    """The checks that read only each neuron's count of active weights: "ablated_active",
    "no_active_neuron", "fan_in" and "budget" (``invariant_violations``)."""
    n = counts.size
    violations = []
    holding = np.flatnonzero(is_ablated & (counts > 0))
    if holding.size:
        neuron = int(holding[0])
        violations.append(Violation(
            "ablated_active", neuron, 0, int(counts[neuron]), holding.size,
            f"ablated neuron {neuron} has {counts[neuron]} active weights, expected 0 "
            f"({holding.size} of {int(is_ablated.sum())} ablated neurons hold weights)"))

    live = ~is_ablated
    if not live.any() and budget != 0:   # a budget of 0 leaves every neuron ablated
        violations.append(Violation(
            "no_active_neuron", None, ">= 1", 0, n,
            f"no neuron is active (all {n} ablated), expected at least one"))

    if fan_in is not None and live.any():
        inferred = isinstance(fan_in, str)
        if inferred and fan_in != INFER:
            raise ValueError(f"fan_in must be an integer, None or {INFER!r}, got {fan_in!r}")
        expected = _most_common_count(counts[live]) if inferred else int(fan_in)
        wrong = np.flatnonzero(live & (counts != expected))
        if wrong.size:
            neuron = int(wrong[0])
            how = "the most common count; " if inferred else ""
            violations.append(Violation(
                "fan_in", neuron, expected, int(counts[neuron]), wrong.size,
                f"neuron {neuron} has {counts[neuron]} active weights, expected fan-in "
                f"{expected} ({how}{wrong.size} of {int(live.sum())} active neurons "
                f"differ)"))

    if budget is not None:
        nnz = int(counts.sum())
        active_counts = counts[counts > 0]
        n_active = active_counts.size
        too_many = nnz > budget and not np.all(active_counts == 1)
        # nnz == budget is always right: a budget of 0 (an all-sparse small layer) leaves
        # no weight and no active neuron, where budget - n_active < nnz cannot hold.
        too_few = (nnz < budget and nnz <= budget - n_active
                   and not (n_active and np.all(active_counts == dense_fan_in)))
        if too_many or too_few:
            violations.append(Violation(
                "budget", None, f"{budget - n_active} < nnz <= {budget}", nnz, 1,
                f"nnz {nnz} leaves the budget: expected {budget - n_active} < nnz <= "
                f"{budget} for budget {budget} with {n_active} active neurons"))
    return violations


def _ablated_flags(ablated, counts):
    """bool (n,): the neurons ``ablated`` names ("infer": those with no active weight)."""
    n = counts.size
    if isinstance(ablated, str):
        if ablated != INFER:
            raise ValueError(f"ablated must be neuron indices or {INFER!r}, got {ablated!r}")
        return counts == 0
    indices = np.asarray(ablated)
    if indices.dtype == bool:
        raise TypeError(f"ablated must hold neuron indices, not a boolean array (it would "
                        f"read as indices 0 and 1); pass np.flatnonzero(...), got "
                        f"{indices.tolist()!r}")
    indices = indices.astype(np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise ValueError(f"ablated must hold neuron indices in [0, {n}), got {indices.tolist()}")
    flags = np.zeros(n, dtype=bool)
    flags[indices] = True
    return flags


def _most_common_count(counts):
    """The most common positive entry of ``counts`` (ties: the larger), 1 if none is."""
    tally = np.bincount(counts[counts > 0])
    if not tally.size:
        return 1
    return int(tally.size - 1 - np.argmax(tally[::-1]))
