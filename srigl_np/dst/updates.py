"""The topology updates of one layer: ``srigl_update``, ``rigl_update``, ``set_update``.

Each is a short composition of the named steps of ``srigl_np.dst.steps`` on the layer's
(n, F) rows; ``trace=True`` returns the steps' own records in an ``UpdateTrace``.

SRigL's update, step by step
----------------------------
weight: (n, *fan_in_dims) float32/float64, 0 outside ``mask``; mask: same shape, bool;
grad: same shape, the dense (unmasked) gradient. With N = n*F and
budget = layer_budget(weight.shape, sparsity), the steps in the order the code runs them
(``srigl_np.dst.steps.STEPS``; explain, the trace and docs/tutorial.md §3 use the same
numbers and names):

1. prune by magnitude (``magnitude_keep``): n_ones = nnz(mask), n_prune =
   floor(n_ones*drop_fraction), n_keep = n_ones - n_prune, the n_keep largest |W|
   layer-wide are kept. A zero weight is never kept: with fewer than n_keep non-zero
   active weights (n_nonzero), all of those are kept, n_keep = n_nonzero and n_prune is
   raised to n_ones - n_nonzero, which step 2 then uses too.
2. saliency and ablation (``ablate``): the salient set is the n_keep kept weights united
   with the top n_prune positions by |G| of the whole layer (anywhere, kept or not). It
   is not RigL's keep-and-grow set: RigL grows its n_prune largest |G| among the
   positions *not* kept, so the salient set lies inside RigL's and is smaller in every
   neuron where the top |G| lies on kept weights.
   A neuron with fewer than max(1, floor(gamma_sal*k0)) salient weights, k0 =
   floor(budget/n), is ablated; the threshold is lowered so the
   min(n, floor(budget/F) + 1) most salient neurons stay active (enough to hold the
   budget at fan-in <= F), and at most max(1, budget) neurons stay active (fan-in >= 1;
   ties: lower neuron index stays) (``ablation_rule``). Decided afresh each update, so
   neurons can return.
3. new fan-in (``new_fan_in``): k = fan_in_after_ablation(shape, sparsity, n_ablated).
4. per-neuron cap (``cap_fan_in``): keep the top n_keep active weights by |W| outside
   ablated neurons; a neuron with more than k keeps its k largest.
5. regrow by gradient (``regrow``): each active neuron grows its missing weights at its
   largest |G| among positions not kept (a position pruned in 1 or 4 may come back, with
   its old value: ``regrown``); new weights are 0.

Afterwards every active neuron has exactly k weights and ablated neurons none.
``ablation=False`` keeps every neuron; the caller passes it for the output layer, which is
never ablated (DynamicSparsity does). The k0 denominator, the fewest and most active
neurons, the fan-in floor of 1 and the cap's choice are srigl_np's readings of §4: see
docs/tutorial.md, "Where srigl_np departs".
"""

import functools
from dataclasses import dataclass, replace

import numpy as np

from ..backend import is_cupy_array, on_device_of, to_numpy
from ..validation import FLOATING, check_array
from .masks import _check_mask, _check_rng, _check_shape, _check_sparsity, layer_budget
from .steps import (Ablation, FanInCap, Growth, MagnitudeKeep, NewFanIn, ablate,
                    ablation_rule, cap_fan_in, grow_at_random, grow_by_gradient,
                    magnitude_keep, new_fan_in, regrow)

__all__ = ["UpdateResult", "UpdateTrace", "check_update_args", "rigl_update", "set_update",
           "srigl_update", "update_result"]


def _read(step, name):
    """A property of UpdateTrace reading ``name`` of the record ``step`` (None without it)."""
    def value(trace):
        record = getattr(trace, step)
        return None if record is None else getattr(record, name)
    return property(value, doc=f"``{step}.{name}`` (None when the step did not run).")


@dataclass(frozen=True, eq=False)
class UpdateTrace:
    """The decisions of one update, step by step: ``srigl_update(..., trace=True)``.

    The records the update's steps returned (``srigl_np.dst.steps``), so every number
    here is the one that made the result. Host NumPy arrays; ``(n,)`` is one entry per
    neuron, ``(n, F)`` one per weight, rows as in the module conventions. A step that is
    not part of a method (2-4 for RigL/SET) is None.

    method:        "srigl", "rigl" or "set"; drop_fraction, gamma_sal: the arguments.
    The records, by step (``srigl_np.dst.steps.STEPS``):
    magnitude_keep: MagnitudeKeep, step 1, prune by magnitude (every method).
    ablation:      Ablation, step 2, saliency and ablation (SRigL; with ablation=False
                   every neuron is active and its other fields are None).
    new_fan_in:    NewFanIn, step 3, new fan-in (SRigL).
    fan_in_cap:    FanInCap, step 4, per-neuron cap (SRigL).
    growth:        Growth, step 5, regrow by gradient (every method; SET grows at random).

    The flat names read those records (None where the step did not run):
    Step 1, prune by magnitude (every method):
    n_ones:        nnz of the old mask; n_prune = n_ones - n_keep, n_keep =
                   min(n_ones - floor(n_ones*drop_fraction), n_nonzero): n_prune is
                   raised above floor(n_ones*drop_fraction) when too few are non-zero.
    n_nonzero:     active weights that are non-zero, the only ones magnitude can keep.
    kept_by_magnitude: bool (n, F), the n_keep largest |W| layer-wide (before ablation
                   and the cap; SRigL's saliency counts these).
    budget, k0:    layer_budget(shape, sparsity) and floor(budget/n) (SRigL).
    Step 2, saliency and ablation (SRigL with ablation; None with ablation=False):
    salient:       bool (n, F), kept_by_magnitude united with the n_prune largest |G| of
                   the layer, kept or not (not RigL's keep-and-grow set).
    salient_counts: int64 (n,), salient weights per neuron.
    threshold:     max(1, floor(gamma_sal*k0)), the salient weights a neuron needs.
    threshold_used: the threshold applied: lowered to the min_active-th largest count
                   when fewer than min_active neurons reach ``threshold``.
    min_active, max_active: min(n, floor(budget/F) + 1) and max(1, budget), the fewest
                   and the most neurons that stay active (see docs/tutorial.md, "Where
                   srigl_np departs").
    Steps 3, new fan-in, 4, per-neuron cap, and 5, regrow by gradient:
    active:        bool (n,), the neurons that stay (SRigL; all True without ablation).
    fan_in:        the new constant fan-in k (SRigL).
    removed_by_cap: bool (n, F), kept weights a neuron over k dropped (its smallest
                   |W|) (SRigL).
    kept_counts:   int64 (n,), weights each neuron keeps from the old mask (after the cap).
    capped_counts: int64 (n,), weights the cap removed per neuron (SRigL).
    grown_counts:  int64 (n,), weights grown per neuron by |G| (SRigL: k - kept for an
                   active neuron) or at random (SET), regrown positions included.
    """

    method: str
    drop_fraction: float
    magnitude_keep: MagnitudeKeep
    growth: Growth
    gamma_sal: float | None = None
    ablation: Ablation | None = None
    new_fan_in: NewFanIn | None = None
    fan_in_cap: FanInCap | None = None

    n_ones = _read("magnitude_keep", "n_ones")
    n_keep = _read("magnitude_keep", "n_keep")
    n_prune = _read("magnitude_keep", "n_prune")
    n_nonzero = _read("magnitude_keep", "n_nonzero")
    kept_by_magnitude = _read("magnitude_keep", "keep")
    salient = _read("ablation", "salient")
    salient_counts = _read("ablation", "salient_counts")
    threshold = _read("ablation", "threshold")
    threshold_used = _read("ablation", "threshold_used")
    min_active = _read("ablation", "min_active")
    max_active = _read("ablation", "max_active")
    active = _read("ablation", "active")
    budget = _read("new_fan_in", "budget")
    k0 = _read("new_fan_in", "k0")
    fan_in = _read("new_fan_in", "fan_in")
    removed_by_cap = _read("fan_in_cap", "removed_by_cap")
    capped_counts = _read("fan_in_cap", "capped_counts")
    grown_counts = _read("growth", "grown_counts")

    @property
    def kept_counts(self):
        """int64 (n,), weights each neuron keeps from the old mask (after the cap)."""
        if self.fan_in_cap is not None:
            return self.fan_in_cap.kept_counts
        return np.count_nonzero(self.magnitude_keep.keep, axis=1).astype(np.int64)

    @property
    def threshold_lowered(self):
        """True when the threshold was lowered to keep min_active neurons (None: no ablation)."""
        return None if self.threshold is None else self.threshold_used < self.threshold

    @property
    def ablated(self):
        """int64, the neurons not in ``active`` (empty without SRigL ablation)."""
        return (np.zeros(0, np.int64) if self.active is None
                else np.flatnonzero(~self.active).astype(np.int64))

    def __repr__(self):
        """One line of the update's numbers; the arrays stay in the fields."""
        parts = [f"{self.method}", f"d={self.drop_fraction:g}",
                 f"n_ones={self.n_ones}", f"n_keep={self.n_keep}", f"n_prune={self.n_prune}"]
        if self.threshold is not None:
            parts += [f"threshold={self.threshold_used}"
                      + (f" (lowered from {self.threshold})" if self.threshold_lowered else ""),
                      f"salient_counts={_ints_text(self.salient_counts)}"]
        if self.fan_in is not None:
            parts += [f"k0={self.k0}", f"k={self.fan_in}"]
        return f"UpdateTrace({', '.join(parts)})"


# The most integers a repr lists before it ends in "...".
_REPR_INTS = 16


def _ints_text(values):
    """'[0, 3, 4]', or the first _REPR_INTS of a longer list, '...' and how many in all."""
    values = [int(v) for v in values]
    if len(values) <= _REPR_INTS:
        return str(values)
    return f"[{', '.join(map(str, values[:_REPR_INTS]))}, ... ({len(values)} in all)]"


@dataclass(frozen=True, eq=False)
class UpdateResult:
    """The outcome of one topology update; every array has the weight's shape.

    mask:    bool, the new mask.
    weight:  the new weight (input dtype): old values where kept, 0 elsewhere. A position
             dropped and grown back in the same update keeps its old value, as in the
             SRigL authors' code (only connections absent from the old mask start at 0).
    pruned:  bool, old mask & ~new mask.      grown: bool, new mask & ~old mask (all 0).
    ablated: int64, sorted indices of neurons with no weights (SRigL only, else empty).
    fan_in:  the constant fan-in k of the active neurons (SRigL), None for RigL/SET.
    regrown: bool, positions dropped (not kept by magnitude, or removed by ablation or the
             cap) and grown back in the same update: in both masks, so counted in neither
             ``pruned`` nor ``grown``, and they keep their old value. The updates always
             set it; None only in a result built by hand without it.
    trace:   an UpdateTrace with ``trace=True``, else None.
    """

    mask: np.ndarray
    weight: np.ndarray
    pruned: np.ndarray
    grown: np.ndarray
    ablated: np.ndarray
    fan_in: int | None
    regrown: np.ndarray | None = None
    trace: UpdateTrace | None = None

    def __repr__(self):
        """A few lines (shape, k, counts, ablated ids, the trace's numbers), not the arrays:
        ``print(result)`` of a 10x12 update is 3 lines, not ~150."""
        def count(a):
            return "-" if a is None else int(a.sum())
        lines = [f"UpdateResult(shape={tuple(self.mask.shape)}, {self.weight.dtype}, "
                 f"k={self.fan_in}, nnz={count(self.mask)}, pruned={count(self.pruned)}, "
                 f"grown={count(self.grown)}, regrown={count(self.regrown)},",
                 f"  ablated={_ints_text(self.ablated)},",
                 f"  trace={self.trace!r})"]
        return "\n".join(lines)


# -- the updates -----------------------------------------------------------------------

def _host_round_trip(update):
    """Let a NumPy ``update(weight, mask, ...)`` take CuPy arrays (see the module notes)."""
    @functools.wraps(update)
    def wrapper(weight, mask, *args, **kwargs):
        if not is_cupy_array(weight):
            return update(weight, mask, *args, **kwargs)
        def host(a):
            return to_numpy(a) if is_cupy_array(a) else a
        result = update(weight.get(), host(mask), *map(host, args),
                        **{key: host(value) for key, value in kwargs.items()})
        return replace(result, **{field: on_device_of(getattr(result, field), weight)
                                  for field in ("mask", "weight", "pruned", "grown",
                                                "regrown")})
    return wrapper


@_host_round_trip
def srigl_update(weight, mask, grad, *, drop_fraction, sparsity, gamma_sal=0.3, ablation=True,
                 trace=False):
    """One SRigL topology update of one layer (paper §4): the five steps of the module
    docstring, composed in this order:

    1. prune by magnitude (``magnitude_keep``), 2. saliency and ablation (``ablate``),
    3. new fan-in (``new_fan_in``), 4. per-neuron cap (``cap_fan_in``), 5. regrow by
    gradient (``regrow``).

    weight: (n, *fan_in_dims) float32/float64, 0 outside ``mask``; mask: same shape, bool;
    grad: same shape, the dense (unmasked) gradient. Afterwards every active neuron has
    exactly k weights and ablated neurons none. ``ablation=False`` keeps every neuron (the
    output layer's update). ``trace=True`` also returns the steps' records in
    ``result.trace`` (an UpdateTrace); the result is the same either way. Returns an
    UpdateResult; inputs are untouched.

    Saliency (step 2) is the n_keep weights kept by |W| united with the n_prune largest
    |G| of the layer, wherever they lie: a top |G| on a kept weight adds nothing, so a
    neuron's salient count can be below what RigL would keep and grow in it (never
    above).

    The n_prune raise (step 1): magnitude never keeps a zero weight, so when fewer than
    n_keep = n_ones - floor(n_ones*drop_fraction) active weights are non-zero, n_keep
    becomes n_nonzero and n_prune is raised to n_ones - n_nonzero. Step 2 then counts
    that many largest |G| as salient, more than drop_fraction alone would give, so a
    neuron can reach the threshold on its gradient alone (docs/tutorial.md §3).
    """
    rows, row_mask, row_grad = check_update_args(weight, mask, grad, drop_fraction,
                                                 sparsity=sparsity, gamma_sal=gamma_sal)
    n, dense_fan_in = rows.shape
    budget = layer_budget(weight.shape, sparsity)
    grow_score = np.abs(row_grad)
    kept = magnitude_keep(rows, row_mask, drop_fraction)
    rule = ablation_rule(n, dense_fan_in, budget, gamma_sal) if ablation else None
    neurons = ablate(kept, grow_score, rule)
    k = new_fan_in(budget, neurons.active, dense_fan_in)
    cap = cap_fan_in(rows, kept, neurons.active, k.fan_in)
    growth = regrow(grow_score, row_mask, cap, neurons.active, k.fan_in)
    steps = (UpdateTrace("srigl", drop_fraction, kept, growth, gamma_sal, neurons, k, cap)
             if trace else None)
    return update_result(weight, mask, growth.mask, growth.regrown, ablated=neurons.ablated,
                         fan_in=k.fan_in, trace=steps)


@_host_round_trip
def rigl_update(weight, mask, grad, *, drop_fraction, trace=False):
    """One RigL update of one layer: drop the smallest |W|, grow the largest |G|.

    Step 1 of srigl_update (``magnitude_keep``) layer-wide without a per-neuron cap, then
    the top n_prune positions by |G| among those not kept are grown (``grow_by_gradient``;
    a dropped one may come back: ``regrown``). nnz is unchanged. Shapes and dtypes as in
    srigl_update; fan_in is None. ``trace=True`` records steps 1 and 5 in ``result.trace``.
    """
    rows, row_mask, row_grad = check_update_args(weight, mask, grad, drop_fraction)
    kept = magnitude_keep(rows, row_mask, drop_fraction)
    growth = grow_by_gradient(np.abs(row_grad), row_mask, kept)
    return update_result(weight, mask, growth.mask, growth.regrown,
                         trace=UpdateTrace("rigl", drop_fraction, kept, growth) if trace else None)


@_host_round_trip
def set_update(weight, mask, *, drop_fraction, rng, trace=False):
    """One SET update of one layer: drop the smallest |W|, grow uniformly at random.

    As rigl_update, but the n_prune grown positions are a uniform random subset of the
    positions not kept, drawn from ``rng`` (a numpy.random.Generator: ``grow_at_random``).
    nnz is unchanged. ``trace=True`` records steps 1 and 5 in ``result.trace``.
    """
    rows, row_mask, _ = check_update_args(weight, mask, None, drop_fraction)
    _check_rng(rng)
    kept = magnitude_keep(rows, row_mask, drop_fraction)
    growth = grow_at_random(row_mask, kept, rng)
    return update_result(weight, mask, growth.mask, growth.regrown,
                         trace=UpdateTrace("set", drop_fraction, kept, growth) if trace else None)


def update_result(weight, mask, new_mask, regrown, *, ablated=(), fan_in=None, trace=None):
    """The UpdateResult in the weight's shape from the new (n, F) mask and ``regrown``.

    The new weight keeps the old values where old and new mask agree, 0 elsewhere;
    ``ablated``: the neuron indices (int64), ``fan_in``: k (SRigL) or None.
    """
    n = weight.shape[0]
    rows, row_mask = weight.reshape(n, -1), mask.reshape(n, -1)
    survived = new_mask & row_mask
    # rows*survived is 2-3x faster than np.where on a scattered mask; adding +0.0 turns
    # the -0.0 of dropped negative weights into +0.0 and leaves every other value exact.
    new_weight = np.multiply(rows, survived, dtype=rows.dtype)
    new_weight += 0
    return UpdateResult(
        mask=new_mask.reshape(weight.shape), weight=new_weight.reshape(weight.shape),
        pruned=(row_mask ^ survived).reshape(weight.shape),
        grown=(new_mask ^ survived).reshape(weight.shape),
        ablated=np.asarray(ablated, dtype=np.int64), fan_in=fan_in,
        regrown=regrown.reshape(weight.shape), trace=trace)


def check_update_args(weight, mask, grad, drop_fraction, *, sparsity=None, gamma_sal=None):
    """Validate an update's arguments (``sparsity`` and ``gamma_sal`` when given), then
    return (weight, mask, grad) viewed as (n, F) rows (grad may be None)."""
    check_array("weight", weight, dtypes=(np.float32, np.float64), device="cpu")
    _check_mask(mask, weight.shape)
    if not 0.0 <= drop_fraction <= 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1], got {drop_fraction}")
    n = _check_shape(weight.shape)[0]
    check_array("weight", weight, finite=True)
    row_grad = None
    if grad is not None:
        check_array("grad", grad, dtypes=FLOATING, shape=weight.shape, finite=True,
                    device="cpu")
        row_grad = grad.reshape(n, -1)
    if sparsity is not None:
        _check_sparsity(sparsity)
    if gamma_sal is not None and not 0.0 <= gamma_sal <= 1.0:
        raise ValueError(f"gamma_sal must be in [0, 1], got {gamma_sal}")
    return weight.reshape(n, -1), mask.reshape(n, -1), row_grad
