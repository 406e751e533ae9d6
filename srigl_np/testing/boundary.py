"""``boundary_cases``: the fixed first stage of ``check_update``, small layers built so
each number of the update sits at a boundary a port is likely to get wrong.

A random search finds a mistake only when it happens to draw a layer where the mistake
changes the mask; some likely ones (the γ_sal denominator, the n_prune rounding, the
re-ranking after ablation) change it on a few percent of draws. These cases are built
for them, from a seeded Generator, so the stage is the same on every run:

* distinct non-zero magnitudes (no tie decides anything), in every case;
* γ_sal at the thresholds' boundaries: γ = t/k0 (t = 1..k0) puts γ·k0 exactly on an
  integer, where floor(γ·k0) and floor(γ·F), floor(γ·B/n_active) part ways;
* drop fractions where n_ones·drop_fraction is an integer or a half (floor, ceil and
  round part ways), and 0 and 1;
* old layers with ablated neurons (return; the old layer's fan-in differs from k0),
  exact zeros on the mask (the n_prune raise), budgets below n (the fan-in floor of 1),
  and ablation on and off.

Cases come smallest first (by weight count, then neurons), so the first disagreement is
the smallest of the stage.
"""

import math

import numpy as np

from .. import dst
from .strategies import UpdateInputs

__all__ = ["boundary_cases"]

# (n, *fan_in_dims): Linear and one Conv2d, at most 16 weights, so a report stays small.
SHAPES = ((1, 2), (2, 2), (2, 3), (3, 2), (3, 3), (2, 4), (4, 2), (3, 4), (4, 3), (4, 4),
          (2, 1, 2, 2))


def boundary_cases(*, seed=0, per_shape=120):
    """A list of UpdateInputs (float64), smallest layers first; ``per_shape`` cases per
    shape of SHAPES, drawn from ``numpy.random.default_rng(seed)``."""
    if not isinstance(per_shape, int) or per_shape < 1:
        raise ValueError(f"per_shape must be a positive int, got {per_shape!r}")
    rng = np.random.default_rng(seed)
    cases = [_case(rng, shape, i) for shape in SHAPES for i in range(per_shape)]
    return sorted(cases, key=lambda case: (case.weight.size, case.weight.shape[0]))


def _case(rng, shape, i):
    """One case of ``shape``; ``i`` cycles through the boundary kinds."""
    n, size = shape[0], math.prod(shape)
    dense_fan_in = size // n
    budget = int(rng.integers(1, size)) if i % 6 == 5 else int(rng.integers(n, size + 1))
    if i % 8 == 7:
        budget = int(rng.integers(1, n)) if n > 1 else 1      # below one weight per neuron
    sparsity = 1.0 - budget / size
    n_ablated = int(rng.integers(1, n)) if n > 1 and i % 3 != 0 else 0
    ablated = rng.permutation(n)[:n_ablated]
    fan_in = dst.fan_in_after_ablation(shape, sparsity, n_ablated)
    counts = np.full(n, fan_in)
    counts[ablated] = 0
    mask = dst.top_per_row(rng.random((n, dense_fan_in)), counts).reshape(shape)
    weight = _distinct(rng, shape) * mask + 0.0            # +0.0: no -0 in a report
    if i % 4 == 2 and mask.sum() > 1:                          # zeros on the mask
        on = np.flatnonzero(mask)
        weight.flat[rng.choice(on, size=int(rng.integers(1, on.size)), replace=False)] = 0
    grad = _distinct(rng, shape)
    n_ones = int(mask.sum())
    drops = [0.0, 1.0] + [j / (2 * n_ones) for j in range(1, 2 * n_ones)]
    drop_fraction = float(drops[int(rng.integers(len(drops)))])
    k0 = max(1, budget // n)
    gammas = [t / k0 for t in range(1, k0 + 1)] + [t / dense_fan_in
                                                   for t in range(1, dense_fan_in + 1)]
    gamma_sal = float(min(1.0, gammas[int(rng.integers(len(gammas)))]))
    return UpdateInputs(weight, mask, grad, drop_fraction, sparsity, gamma_sal,
                        bool(i % 5 != 4))


def _distinct(rng, shape):
    """float64 ``shape``: the magnitudes 1..size in a random order, random signs."""
    size = math.prod(shape)
    signs = np.where(rng.random(size) < 0.5, -1.0, 1.0)
    return (signs * (rng.permutation(size) + 1)).reshape(shape)
