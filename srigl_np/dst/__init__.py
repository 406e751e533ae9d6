"""Dynamic sparse training as pure functions: masks, layer sparsities, schedule, updates.

Every function here depends only on its arguments and never writes into them; the state
(masks, ablated neurons, optimizer buffers) lives in ``srigl_np.dst.sparsity.DynamicSparsity``.

Conventions shared by every function (and by tests/test_dst.py)
----------------------------------------------------------------
* A weight of shape ``(n, *fan_in_dims)`` is a matrix of ``n`` neurons (rows) by
  ``F = prod(fan_in_dims)`` dense fan-in: a Linear weight ``(out, in)`` has ``F = in``, a
  Conv2d weight ``(out, in, kh, kw)`` has one row per filter, ``F = in*kh*kw``. Results
  come back in the original shape.
* The budget of a layer is ``layer_budget(shape, s) = floor(N*(1 - s))``, ``N = n*F``.
* "Top r by score" picks the r largest scores; at equal score the lower flat index wins
  (inside one row: the lower column). Rankings are deterministic, so the updates are too.
* Fan-in is never 0: ``k = min(F, max(1, floor(budget / n_active)))``. A layer whose
  budget is smaller than its neuron count therefore keeps one weight per neuron without
  ablation (nnz = n > budget), and ablates down to ``budget`` neurons with it.
* Where these rules (and the others of srigl_update) depart from the authors' code, and
  why: docs/tutorial.md, "Where srigl_np departs", which also works the updates below
  through by hand as doctests.

Devices: the updates and check_invariants also accept CuPy arrays. They copy them to
the host, compute with NumPy, and return the weight-shaped results (mask, weight,
pruned, grown, regrown) on the input's device; ``ablated`` stays a host index array and
a ``trace`` holds host arrays. An update runs once per layer every ΔT steps, so the
copies cost little, and one implementation of the rankings and tie-breaks gives the
same masks on both devices.

SRigL is Lasby et al., "Dynamic Sparse Training with Structured Sparsity" (ICLR 2024,
arXiv 2305.02299), §4; RigL is Evci et al. (ICML 2020); SET is Mocanu et
al. (2018).

The modules, in the order of the data flow:
    ranking      the tie-break rule of every ranking (top_per_row, top_positions)
    masks        budgets, constant fan-in and random masks, ERK/uniform sparsities, the
                 drop schedule
    steps        the named steps of an update, each returning its record
    updates      srigl_update, rigl_update, set_update: compositions of the steps
    invariants   invariant_violations, check_invariants (and their condensed forms)
    condensed_update  srigl_update_rows: srigl_update's decisions on the condensed form
                 (values + indices), the dense gradient read in row blocks, O(nnz + block)
                 memory
    grow_score   GrowScore: a layer's grow score kept as its terms (a dense gradient, or
                 a Linear's dy and x), read whole or in row blocks
    authors      the SRigL authors' rules, where srigl_np departs from them (not used by
                 the updates; srigl_np.testing's reading="authors" and erk_table use them)
Every public name of these modules is importable from ``srigl_np.dst``.
"""

from . import authors
from .condensed_update import CondensedUpdate, srigl_update_rows, top_gradient_positions
from .grow_score import GrowScore
from .invariants import (INFER, InvariantError, Violation, check_condensed_invariants,
                         check_invariants, condensed_violations, invariant_violations)
from .masks import (constant_fan_in_columns, constant_fan_in_mask, cosine_drop_fraction,
                    default_block_rows, erk_sparsities,
                    fan_in_after_ablation, fan_in_of_budget, layer_budget, random_mask,
                    uniform_sparsities)
from .ranking import top_per_row, top_positions
from .steps import (Ablation, AblationRule, FanInCap, Growth, MagnitudeKeep, NewFanIn, ablate,
                    ablation_rule, active_neurons, cap_fan_in, grow_at_random,
                    grow_by_gradient, magnitude_keep, new_fan_in, regrow)
from .updates import (UpdateResult, UpdateTrace, check_update_args, rigl_update, set_update,
                      srigl_update, update_result)

__all__ = [
    "Ablation", "AblationRule", "CondensedUpdate", "FanInCap", "GrowScore", "Growth", "INFER",
    "InvariantError", "MagnitudeKeep", "NewFanIn", "UpdateResult", "UpdateTrace",
    "Violation", "ablate",
    "ablation_rule", "active_neurons", "authors", "cap_fan_in", "check_condensed_invariants",
    "check_invariants", "check_update_args", "condensed_violations",
    "constant_fan_in_columns", "constant_fan_in_mask",
    "cosine_drop_fraction", "default_block_rows", "erk_sparsities",
    "fan_in_after_ablation", "fan_in_of_budget", "grow_at_random", "grow_by_gradient",
    "invariant_violations", "layer_budget", "magnitude_keep", "new_fan_in", "random_mask",
    "regrow", "rigl_update", "set_update", "srigl_update", "srigl_update_rows",
    "top_gradient_positions", "top_per_row", "top_positions", "uniform_sparsities",
    "update_result",
]
