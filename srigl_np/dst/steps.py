"""The steps of a topology update, one pure function each, each returning its record.

``srigl_update`` is steps 1-5 in order; ``rigl_update`` and ``set_update`` are step 1 and
a layer-wide growth (``grow_by_gradient``, ``grow_at_random``). A step reads the (n, F)
rows of the layer and the records of the steps before it, never writes into them, and
returns a NamedTuple of what it decided; ``trace=True`` hands those records back
(``UpdateTrace``), so the trace is the computation itself. srigl_np's numbers for step 2
(``ablation_rule``) and step 3 (``fan_in_of_budget``) are separate functions, so
``srigl_np.testing``'s ``reading="authors"`` runs the same steps with the authors' rules
(``srigl_np.dst.authors``).

Arrays: ``rows`` (n, F) is the weight, ``row_mask`` (n, F) bool its mask, ``grow_score``
(n, F) the dense |gradient|; "(n,)" is one entry per neuron.

``STEPS`` is the one numbering of SRigL's update, in the order the code runs it: the
module docstring of ``srigl_np.dst.updates``, the UpdateTrace's fields, the text of
``python -m srigl_np.explain`` and docs/tutorial.md §3 use these numbers and names
(tests/test_step_numbering.py checks that they agree).
"""

import math
from typing import NamedTuple

import numpy as np

from .masks import fan_in_of_budget
from .ranking import top_per_row, top_positions

__all__ = [
    "Ablation", "AblationRule", "FanInCap", "Growth", "MagnitudeKeep", "NewFanIn",
    "ablate", "ablation_rule", "active_neurons", "cap_fan_in", "grow_at_random",
    "STEPS", "grow_by_gradient", "magnitude_keep", "new_fan_in", "regrow",
]

# (number, name, function) of each step of srigl_update, in the order it runs them.
# RigL and SET run steps 1 and 5 (their growth: grow_by_gradient, grow_at_random).
STEPS = (
    (1, "prune by magnitude", "magnitude_keep"),
    (2, "saliency and ablation", "ablate"),
    (3, "new fan-in", "new_fan_in"),
    (4, "per-neuron cap", "cap_fan_in"),
    (5, "regrow by gradient", "regrow"),
)


# -- step 1: prune by magnitude -----------------------------------------------------------

class MagnitudeKeep(NamedTuple):
    """Step 1: the n_keep largest |W| layer-wide survive the drop.

    keep:       bool (n, F), the kept positions (before ablation and the cap).
    n_ones:     nnz of the old mask; n_keep = min(n_ones - floor(n_ones*drop_fraction),
                n_nonzero), n_prune = n_ones - n_keep.
    candidates: int64, ascending flat indices of the active non-zero weights, the only
                ones magnitude can keep (n_nonzero of them); magnitudes: their |W|.
    """

    keep: np.ndarray
    n_ones: int
    n_keep: int
    n_prune: int
    candidates: np.ndarray
    magnitudes: np.ndarray

    @property
    def n_nonzero(self):
        return int(self.candidates.size)


def magnitude_keep(rows, row_mask, drop_fraction):
    """Step 1 (every method): a MagnitudeKeep. Ties: the lower flat index is kept."""
    # Ranking the compressed candidates rather than a full (n, F) score with -inf
    # elsewhere matters: np.partition slows down about tenfold on an array that is 90%
    # one value.
    index = np.flatnonzero(row_mask)
    magnitude = np.abs(rows.reshape(-1)[index])
    nonzero = magnitude != 0
    index, magnitude = index[nonzero], magnitude[nonzero]
    n_ones = int(np.count_nonzero(row_mask))
    n_keep = min(n_ones - math.floor(n_ones * drop_fraction), index.size)
    return MagnitudeKeep(top_positions(index, magnitude, n_keep, rows.shape), n_ones, n_keep,
                         n_ones - n_keep, index, magnitude)


# -- step 2: saliency and ablation --------------------------------------------------------

class AblationRule(NamedTuple):
    """Step 2's numbers: a neuron needs ``threshold`` salient weights to stay active,
    lowered so at least ``min_active`` stay; at most ``max_active`` stay."""

    threshold: int
    min_active: int
    max_active: int


def ablation_rule(n, dense_fan_in, budget, gamma_sal):
    """srigl_np's AblationRule for n neurons of dense fan-in F and ``budget`` weights.

    threshold = max(1, floor(gamma_sal*k0)) with k0 = floor(budget/n); at least
    min(n, floor(budget/F) + 1) neurons stay, enough to hold the budget at fan-in <= F;
    at most max(1, budget), so the fan-in stays >= 1. All three are srigl_np's readings
    (docs/tutorial.md, "Where srigl_np departs"; the authors' are in dst.authors).
    """
    return AblationRule(max(1, math.floor(gamma_sal * (budget // n))),
                        min(n, budget // dense_fan_in + 1), max(1, budget))


class Ablation(NamedTuple):
    """Step 2: which neurons stay active. Without ablation (no rule) every neuron stays
    and the other fields are None.

    salient:        bool (n, F), the kept positions united with the n_prune largest |G|.
    salient_counts: int64 (n,), salient weights per neuron.
    threshold, min_active, max_active: the AblationRule applied.
    threshold_used: the threshold after lowering it to keep min_active neurons.
    active:         bool (n,), the neurons that stay.
    """

    salient: np.ndarray | None
    salient_counts: np.ndarray | None
    threshold: int | None
    min_active: int | None
    max_active: int | None
    threshold_used: int | None
    active: np.ndarray

    @property
    def ablated(self):
        """int64, the sorted indices of the neurons not active."""
        return np.flatnonzero(~self.active).astype(np.int64)


def ablate(kept, grow_score, rule):
    """Step 2 (SRigL): an Ablation from step 1's ``kept`` and ``rule`` (an AblationRule,
    or None for no ablation). Saliency is layer-wide: the n_prune largest |G| of all
    positions, ties to the lower flat index."""
    n = kept.keep.shape[0]
    if rule is None:
        return Ablation(None, None, None, None, None, None, np.ones(n, dtype=bool))
    top_grad = top_per_row(grow_score.reshape(1, -1), np.array([kept.n_prune]))
    salient = kept.keep | top_grad.reshape(kept.keep.shape)
    salient_counts = np.count_nonzero(salient, axis=1).astype(np.int64)
    active, threshold_used = active_neurons(salient_counts, rule)
    return Ablation(salient, salient_counts, *rule, threshold_used, active)


def active_neurons(salient_counts, rule):
    """(bool (n,) the neurons that stay active, the threshold applied) under ``rule``.

    The neurons with at least ``rule.threshold`` salient weights stay, the threshold
    lowered so ``rule.min_active`` stay, at most ``rule.max_active`` (ties: the lower
    neuron stays).
    """
    n = salient_counts.size
    order = np.argsort(-salient_counts, kind="stable")   # most salient first, ties: low index
    threshold = min(rule.threshold, int(salient_counts[order[rule.min_active - 1]]))
    n_active = min(int(np.count_nonzero(salient_counts >= threshold)), rule.max_active)
    active = np.zeros(n, dtype=bool)
    active[order[:n_active]] = True
    return active, threshold


# -- step 3: new fan-in -------------------------------------------------------------------

class NewFanIn(NamedTuple):
    """Step 3: budget, k0 = floor(budget/n) (the share without ablation), n_active and
    the constant fan-in k of the active neurons."""

    budget: int
    k0: int
    n_active: int
    fan_in: int


def new_fan_in(budget, active, dense_fan_in):
    """Step 3 (SRigL): a NewFanIn for the neurons ``active`` (bool (n,)) keeps:
    k = fan_in_of_budget(budget, n_active, F), never 0."""
    n_active = int(active.sum())
    return NewFanIn(budget, budget // active.size, n_active,
                    fan_in_of_budget(budget, n_active, dense_fan_in))


# -- step 4: per-neuron cap (keep in the active neurons, at most k each) ------------------

class FanInCap(NamedTuple):
    """Step 4: the kept positions of the active neurons, at most k per neuron.

    keep:           bool (n, F).
    kept_counts:    int64 (n,), weights each neuron keeps from the old mask.
    removed_by_cap: bool (n, F), kept weights a neuron over k dropped (its smallest |W|).
    """

    keep: np.ndarray
    kept_counts: np.ndarray
    removed_by_cap: np.ndarray

    @property
    def capped_counts(self):
        """int64 (n,), weights the cap removed per neuron."""
        return np.count_nonzero(self.removed_by_cap, axis=1).astype(np.int64)


def cap_fan_in(rows, kept, active, fan_in):
    """Step 4 (SRigL): a FanInCap. The n_keep largest |W| outside the ablated neurons are
    kept (ranked again without them, so their share goes to the next-largest weights of
    active neurons); a neuron with more than ``fan_in`` keeps its ``fan_in`` largest |W|
    (the authors' code drops an arbitrary surplus: docs/tutorial.md, "Where srigl_np
    departs")."""
    if active.all():
        keep = kept.keep.copy()
    else:
        in_active = active[kept.candidates // rows.shape[1]]
        index, magnitude = kept.candidates[in_active], kept.magnitudes[in_active]
        keep = top_positions(index, magnitude, min(kept.n_keep, index.size), rows.shape)
    kept_counts = np.count_nonzero(keep, axis=1)
    over = np.flatnonzero(kept_counts > fan_in)
    removed_by_cap = np.zeros(rows.shape, dtype=bool)
    if over.size:
        capped_score = np.where(keep[over], np.abs(rows[over]), -np.inf)
        capped = top_per_row(capped_score, np.full(over.size, fan_in))
        removed_by_cap[over] = keep[over] & ~capped
        keep[over] = capped
        kept_counts[over] = fan_in
    return FanInCap(keep, kept_counts.astype(np.int64), removed_by_cap)


# -- step 5: regrow by gradient (RigL's and SET's layer-wide growth too) ------------------

class Growth(NamedTuple):
    """Step 5: the new mask.

    mask:         bool (n, F), the kept positions and the grown ones.
    regrown:      bool (n, F), positions dropped and grown back in the same update (in
                  both the old and the new mask; they keep their old value).
    grown_counts: int64 (n,), weights grown per neuron, regrown ones included.
    """

    mask: np.ndarray
    regrown: np.ndarray
    grown_counts: np.ndarray


def regrow(grow_score, row_mask, cap, active, fan_in):
    """Step 5 (SRigL): each active neuron grows its missing ``fan_in - kept`` weights at its
    largest |G| among the positions it does not keep (ties: the lower column)."""
    missing = np.where(active, fan_in - cap.kept_counts, 0)
    short = np.flatnonzero(missing > 0)
    if short.size == missing.size:   # the usual case: a slice avoids copying every row twice
        short = slice(None)
    new_mask = cap.keep.copy()
    regrown = np.zeros(new_mask.shape, dtype=bool)
    if missing.any():
        score = np.where(cap.keep[short], -np.inf, grow_score[short])   # only where not kept
        growth = top_per_row(score, missing[short])
        regrown[short] = growth & row_mask[short]
        new_mask[short] |= growth
    return Growth(new_mask, regrown, missing.astype(np.int64))


def grow_by_gradient(grow_score, row_mask, kept):
    """Step 5 of RigL: the n_prune largest |G| layer-wide among the positions not kept."""
    score = np.where(kept.keep, -np.inf, grow_score)   # grow only where nothing is kept
    growth = top_per_row(score.reshape(1, -1), np.array([kept.n_prune])).reshape(score.shape)
    return _growth(kept, growth, row_mask)


def grow_at_random(row_mask, kept, rng):
    """Step 5 of SET: n_prune positions drawn uniformly (``rng``) from those not kept."""
    growth = np.zeros(kept.keep.size, dtype=bool)
    growth[rng.choice(np.flatnonzero(~kept.keep.reshape(-1)), size=kept.n_prune,
                      replace=False)] = True
    return _growth(kept, growth.reshape(kept.keep.shape), row_mask)


def _growth(kept, growth, row_mask):
    return Growth(kept.keep | growth, growth & row_mask,
                  np.count_nonzero(growth, axis=1).astype(np.int64))
