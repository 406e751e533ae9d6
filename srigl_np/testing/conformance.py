"""``check_update``: test an update against the reference in named stages and return the
first (shrunk) counterexample, with a readable per-neuron diff and the reference's numbers.

Stages, in order (``STAGES``): "boundary", the fixed cases of ``boundary_cases`` (no
luck involved: the same cases every run); "distinct", a hypothesis search with distinct
magnitudes and γ_sal, drop fractions biased to boundary fractions; "ties", the same with
integer values -3..3 (ties and zeros decided by the tie-break rule).
"""

import math
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, Phase, Verbosity, given, seed as hypothesis_seed
from hypothesis import settings as hypothesis_settings

from .. import dst
from ..dst import authors
from .boundary import boundary_cases
from .reference import METHODS, READINGS, _check_choice, reference_update
from .strategies import UpdateInputs, boundary_fractions, update_inputs

__all__ = ["LEGEND", "STAGES", "ConformanceError", "Counterexample", "check_update"]

STAGES = ("boundary", "distinct", "ties")


class ConformanceError(AssertionError):
    """check_update(..., raise_on_mismatch=True) found a counterexample (``counterexample``)."""

    def __init__(self, counterexample):
        super().__init__(str(counterexample))
        self.counterexample = counterexample


@dataclass(frozen=True, eq=False)
class Counterexample:
    """The smallest inputs hypothesis found on which an update disagrees with the reference.

    inputs:    UpdateInputs (NumPy, the reference's layout).
    method:    "srigl" or "rigl"; reading: the reference's reading.
    expected:  the reference's dst.UpdateResult.
    mask, weight: their result mapped back by ``from_theirs`` (bool mask), None if their
               call failed; error: "ExceptionType: message" then, else None.
    neurons:   int64, the neurons whose masks differ (the diff's "*" rows); all of them
               when their call failed.
    weight_mismatches: int64 flat indices where the masks agree but the weights differ.
    violations: dst.Violation records of their layer (fan-in, ablation, budget, mask).
    stage:     the stage that found it: "boundary", "distinct", "ties" or "inputs" (your
               ``inputs`` strategy).
    ``expected.trace`` (method "srigl") holds the reference's numbers, printed in the
    diff: n_keep, n_prune, salient counts, threshold, k. ``str()`` gives the diff.
    """

    inputs: UpdateInputs
    method: str
    reading: str
    expected: dst.UpdateResult
    mask: np.ndarray | None
    weight: np.ndarray | None
    error: str | None
    neurons: np.ndarray
    weight_mismatches: np.ndarray
    violations: list
    stage: str = "inputs"

    @property
    def diff(self):
        return _format_counterexample(self)

    def __str__(self):
        return self.diff


class _Mismatch(Exception):
    def __init__(self, counterexample):
        super().__init__("update mismatch")
        self.counterexample = counterexample


def check_update(update, *, method="srigl", reading="srigl_np", to_theirs=None,
                 from_theirs=None, inputs=None, ties=True, boundary=None, compare_weights=True,
                 max_examples=200, seed=0, raise_on_mismatch=False):
    """Test ``update`` against the reference; return the first Counterexample (shrunk in
    the random stages), or None when every case agrees.

    update:      your function, called ``update(*to_theirs(weight, mask, grad), **kwargs)``
                 with the keyword arguments of dst.srigl_update (drop_fraction, sparsity,
                 gamma_sal, ablation) or, for method "rigl", of rigl_update (drop_fraction).
    to_theirs:   (weight, mask, grad) NumPy arrays (copies) -> your positional arguments
                 (a tuple; anything else is passed as one); default: the arrays as they are.
    from_theirs: your result -> (new_mask, new_weight) array-likes in the weight's shape
                 (mask bool or 0/1); default: ``.mask``/``.weight`` of the result (a
                 dst.UpdateResult), else the result unpacked as a pair.
    method:      "srigl" (reference srigl_reference) or "rigl" (dst.rigl_update).
    reading:     "srigl_np" or "authors" (module notes; "srigl" only).
    inputs:      None: the stages "boundary", "distinct" (max_examples draws of
                 update_inputs(ties=False) with boundary_fractions for γ_sal and the drop
                 fraction) and "ties" (max_examples draws of update_inputs(ties=True)), in
                 that order. A strategy of UpdateInputs: one stage "inputs" drawing from it
                 (the boundary stage runs only when ``boundary`` says so). Under reading
                 "authors" only layers whose budget int(N*(1 - sparsity)) holds at least one
                 weight per neuron are used.
    ties:        False leaves out the "ties" stage, for rankings that break ties otherwise.
    boundary:    the "boundary" stage: None (on when ``inputs`` is None), True, False, or a
                 predicate on UpdateInputs choosing the cases to run (e.g. ``lambda case:
                 not case.ablation`` for an update without ablation).
    compare_weights: also compare the weights where the two masks agree (kept weights
                 keep their value, grown ones are 0).
    max_examples, seed: hypothesis's example count per random stage and seed (same seed,
                 same run).
    raise_on_mismatch: raise ConformanceError (an AssertionError carrying the
                 counterexample) instead of returning it: the form for a test suite.

    Your function raising, or returning arrays of the wrong shape, is a counterexample too.
    """
    _check_choice("method", method, METHODS)
    _check_choice("reading", reading, READINGS)
    if method == "rigl" and reading != "srigl_np":
        raise ValueError(f"reading {reading!r} applies to method 'srigl' only")
    if not callable(update):
        raise TypeError(f"update must be callable, got {type(update).__name__}")
    if boundary is not None and not isinstance(boundary, bool) and not callable(boundary):
        raise TypeError(f"boundary must be None, a bool or a predicate, got "
                        f"{type(boundary).__name__}")
    if not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(f"max_examples must be a positive int, got {max_examples!r}")
    to_theirs = to_theirs or (lambda weight, mask, grad: (weight, mask, grad))
    from_theirs = from_theirs or _default_from_theirs
    usable = _usable(reading)

    def compare(case, stage):
        return _compare(update, case, method, reading, to_theirs, from_theirs,
                        compare_weights, stage)

    if boundary is None:
        boundary = inputs is None
    if boundary is not False:
        chosen = boundary if callable(boundary) else (lambda case: True)
        for case in boundary_cases(seed=seed):
            if usable(case) and chosen(case):
                found = compare(case, "boundary")
                if found is not None:
                    return _finish(found, raise_on_mismatch)
    if inputs is None:
        searches = [("distinct", update_inputs(
            ties=False, budget_below_neurons=reading == "srigl_np",
            gamma_sals=boundary_fractions, drop_fractions=boundary_fractions))]
        if ties:
            searches.append(("ties", update_inputs(
                ties=True, budget_below_neurons=reading == "srigl_np")))
    else:
        searches = [("inputs", inputs)]
    for stage, strategy in searches:
        found = _search(compare, stage, strategy.filter(usable), max_examples, seed)
        if found is not None:
            return _finish(found, raise_on_mismatch)
    return None


def _usable(reading):
    """The cases a reading's reference accepts: under "authors" their fan-in is 0 (they
    raise) below a weight per neuron."""
    if reading == "authors":
        return lambda case: authors.budget(case.weight.shape, case.sparsity) \
            >= case.weight.shape[0]
    return lambda case: True


def _search(compare, stage, strategy, max_examples, seed):
    """The shrunk Counterexample of a hypothesis search of ``strategy``, or None."""
    @hypothesis_settings(max_examples=max_examples, deadline=None, database=None,
                         derandomize=False, verbosity=Verbosity.quiet, print_blob=False,
                         report_multiple_bugs=False, suppress_health_check=list(HealthCheck),
                         phases=(Phase.explicit, Phase.generate, Phase.shrink))
    @hypothesis_seed(seed)
    @given(strategy)
    def agrees(case):
        found = compare(case, stage)
        if found is not None:
            raise _Mismatch(found)

    try:
        agrees()
    except _Mismatch as mismatch:
        return mismatch.counterexample
    return None


def _finish(found, raise_on_mismatch):
    if raise_on_mismatch:
        raise ConformanceError(found)
    return found


def _default_from_theirs(result):
    if hasattr(result, "mask") and hasattr(result, "weight"):
        return result.mask, result.weight
    new_mask, new_weight = result
    return new_mask, new_weight


def _compare(update, case, method, reading, to_theirs, from_theirs, compare_weights, stage):
    """None when ``update`` agrees with the reference on ``case``, else a Counterexample
    (its ``expected`` traced, for the report's numbers)."""
    expected = reference_update(case, method=method, reading=reading, trace=True)
    shape = case.weight.shape
    mask = weight = error = None
    try:
        args = to_theirs(case.weight.copy(), case.mask.copy(), case.grad.copy())
        result = update(*(args if isinstance(args, tuple) else (args,)), **case.kwargs(method))
        mask, weight = (np.asarray(a) for a in from_theirs(result))
        for name, a in (("mask", mask), ("weight", weight)):
            if a.shape != shape:
                raise ValueError(f"from_theirs gave a {name} of shape {a.shape}, expected "
                                 f"{shape}")
        if mask.dtype != bool:
            if not np.isin(mask, (0, 1)).all():
                raise ValueError("from_theirs gave a mask with values other than 0 and 1 "
                                 "(it returns (new_mask, new_weight))")
            mask = mask != 0
    except Exception as exc:   # their failure is a finding, reported with its inputs
        mask = weight = None
        error = f"{type(exc).__name__}: {exc}"
    n = shape[0]
    if error is None:
        neurons = np.flatnonzero((mask != expected.mask).reshape(n, -1).any(axis=1))
        agree = mask == expected.mask
        weight_mismatches = np.flatnonzero(
            agree & (weight.astype(np.float64) != expected.weight.astype(np.float64))
            if compare_weights else np.zeros(0))
        if not neurons.size and not weight_mismatches.size:
            return None
        violations = dst.invariant_violations(
            weight.astype(np.float64), mask, "infer" if method == "srigl" else None,
            "infer" if method == "srigl" else (),
            budget=case.budget if method == "srigl" else None)
    else:
        neurons, weight_mismatches, violations = np.arange(n), np.zeros(0, np.int64), []
    return Counterexample(case, method, reading, expected, mask, weight, error,
                          neurons.astype(np.int64), weight_mismatches.astype(np.int64),
                          violations, stage)


# -- the readable diff -------------------------------------------------------------------------

LEGEND = "one character per input: # kept  + grown  - pruned  . absent"


def _format_counterexample(found):
    case, expected = found.inputs, found.expected
    n = case.weight.shape[0]
    reference = (f"dst.{found.method}_update" if found.reading == "srigl_np"
                 else f"srigl_reference(reading={found.reading!r})")
    if found.error is not None:
        head = f"their {found.method} update raised {found.error} (reference: {reference})"
    elif found.neurons.size:
        head = (f"their {found.method} update disagrees with {reference} on "
                f"{found.neurons.size} of {n} neurons; first: neuron {found.neurons[0]}")
    else:
        neuron = found.weight_mismatches[0] // (case.weight.size // n)
        head = (f"their {found.method} update keeps the masks of {reference} but not its "
                f"weights at {_count(found.weight_mismatches.size, 'position')}; first: "
                f"neuron {neuron}")
    settings = ", ".join(f"{key} {value!r}" for key, value in case.kwargs(found.method).items())
    lines = [head,
             f"inputs (stage {found.stage!r}): weight {case.weight.shape} "
             f"{case.weight.dtype}, budget {case.budget}, "
             f"{settings}"]
    lines += _numbers_lines(expected.trace)
    lines.append("reference: " + _summary(case.mask, expected.mask))
    if found.mask is not None:
        lines.append("theirs:    " + _summary(case.mask, found.mask))
    lines.append(LEGEND)
    trace = expected.trace
    lines += _table(case, expected.mask, found.mask, found.neurons,
                    None if trace is None else trace.salient_counts)
    if found.weight_mismatches.size:
        lines.append(_weight_lines(case, expected.weight, found.weight, found.weight_mismatches))
    if found.violations:
        lines.append("their layer breaks:")
        lines += ["  " + v.message for v in found.violations]
    return "\n".join(lines)


def _numbers_lines(trace):
    """The reference's numbers for the layer: steps 1-3 of dst.srigl_update's docstring."""
    if trace is None:
        return []
    step1 = (f"reference numbers: step 1: n_ones {trace.n_ones}, n_keep {trace.n_keep}, "
             f"n_prune {trace.n_prune}")
    floor_prune = math.floor(trace.n_ones * trace.drop_fraction)
    if trace.n_prune != floor_prune:
        step1 += (f" (raised from floor(n_ones*drop_fraction) = {floor_prune}: only "
                  f"{trace.n_nonzero} weights are non-zero)")
    if trace.method != "srigl":
        return [step1]
    lines = [step1]
    if trace.threshold is not None:
        lowered = (f", lowered to {trace.threshold_used} to keep {trace.min_active} neurons"
                   if trace.threshold_lowered else "")
        lines.append(
            f"  step 2: salient counts {trace.salient_counts.tolist()} (kept by |W| united "
            f"with the top {trace.n_prune} |G|), threshold {trace.threshold} = max(1, "
            f"floor(gamma_sal*k0)), k0 = {trace.k0}{lowered}; active between "
            f"{trace.min_active} and {trace.max_active} neurons")
    else:
        lines.append("  step 2: ablation off, every neuron active")
    lines.append(f"  step 3: k = {trace.fan_in} for {int(trace.active.sum())} active "
                 f"neurons (budget {trace.budget})")
    return lines


def _summary(old_mask, new_mask):
    """'fan-in 2, ablated [1], pruned 3, grown 3' for one result."""
    n = old_mask.shape[0]
    counts = new_mask.reshape(n, -1).sum(axis=1)
    positive = np.unique(counts[counts > 0])
    fan_in = ("none" if not positive.size else str(positive[0]) if positive.size == 1
              else f"varies {positive[0]}..{positive[-1]}")
    pruned = int(np.count_nonzero(old_mask & ~new_mask))
    grown = int(np.count_nonzero(new_mask & ~old_mask))
    return (f"fan-in {fan_in}, ablated {np.flatnonzero(counts == 0).tolist()}, "
            f"pruned {pruned}, grown {grown}")


def _grid(old_row, new_row):
    """One character per input of a neuron: # kept, + grown, - pruned, . absent."""
    codes = np.array(list(".+-#"))
    return "".join(codes[old_row.astype(int) * 2 + new_row.astype(int)])


def _numbers(row):
    return " ".join(f"{value + 0:g}" for value in row)   # + 0: -0.0 prints as 0


def _table(case, expected_mask, their_mask, neurons, salient_counts=None, max_rows=16):
    """The per-neuron rows: before, reference, theirs, the reference's salient count, W,
    G; "*" marks a difference."""
    n = case.weight.shape[0]
    old, grad = case.mask.reshape(n, -1), case.grad.reshape(n, -1)
    magnitude = case.weight.reshape(n, -1)
    ours = expected_mask.reshape(n, -1)
    theirs = None if their_mask is None else their_mask.reshape(n, -1)
    shown = np.arange(n) if n <= max_rows else neurons[:max_rows]
    differ = np.zeros(n, dtype=bool)
    differ[neurons] = True
    salient = ["-"] * n if salient_counts is None else [str(c) for c in salient_counts]
    rows = [["", "neuron", "before", "reference", "theirs", "salient", "W", "G"]]
    for i in shown:
        rows.append(["*" if differ[i] and theirs is not None else "", str(i),
                     _grid(old[i], old[i]), _grid(old[i], ours[i]),
                     "?" if theirs is None else _grid(old[i], theirs[i]), salient[i],
                     _numbers(magnitude[i]), _numbers(grad[i])])
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if c in (1, 5) else cell.ljust(w)
                       for c, (cell, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    if len(shown) < n:
        lines.append(f"({n - len(shown)} more neurons not shown)")
    return lines


def _weight_lines(case, expected_weight, their_weight, positions, limit=5):
    fan = case.weight.size // case.weight.shape[0]
    parts = [f"neuron {p // fan}, input {p % fan}: reference "
             f"{float(expected_weight.flat[p]):g}, theirs {float(their_weight.flat[p]):g}"
             for p in positions[:limit]]
    more = f" (and {positions.size - limit} more)" if positions.size > limit else ""
    return (f"weights differ at {_count(positions.size, 'position')} where both masks "
            f"agree: " + "; ".join(parts) + more)


def _count(count, noun):
    return f"{count} {noun}" + ("" if count == 1 else "s")
