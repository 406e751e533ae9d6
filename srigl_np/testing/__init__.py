"""Conformance kit: property-test your own SRigL (or RigL) update against srigl_np's.

Like ``hypothesis.extra.numpy`` this package is public and imports hypothesis
(``pip install hypothesis``). It has three parts (docs/conformance.md walks through them):

* strategies that draw what an update sees: ``constant_fan_in_layers``,
  ``ablated_layers`` and ``update_inputs`` (a layer, its dense gradient, the drop
  fraction, γ_sal and whether the layer may ablate);
* assertion helpers that report every broken invariant of a layer at once:
  ``assert_constant_fan_in``, ``assert_valid_update`` (and ``update_violations``, the
  records behind it), built on ``dst.invariant_violations``;
* ``check_update``: runs your update and ``dst.srigl_update`` (or ``dst.rigl_update``)
  on the fixed ``boundary_cases``, then on hypothesis draws with distinct magnitudes,
  then with ties, compares the masks and the weights, and returns the first (shrunk)
  counterexample with a per-neuron diff and the reference's numbers (or raises it).

Tie-break rule. "Top r by score" picks the r largest scores; at equal score the lower
flat index wins (inside one row, the lower column). srigl_np applies it in every
ranking: the magnitude keep, the layer-wide gradient ranking of the saliency step, the
neuron order of ablation (equal counts: the lower neuron stays) and the per-neuron
regrowth. With ``ties=True`` (the default) the strategies draw weights and gradients
from the integers -3..3, so ties and exact zeros are frequent and an implementation
must follow this rule to agree; ``ties=False`` draws distinct non-zero magnitudes, for an
implementation whose ranking breaks ties some other way (``torch.topk`` does).

Readings. Where srigl_np deliberately departs from the authors' code
(calgaryml/condensed-sparsity, ``RigLConstFanScheduler``), ``reading="authors"`` makes
the reference follow their rule instead (``srigl_reference``); the rules are
``srigl_np.dst.authors``, each naming the lines of their code it follows. With n
neurons, dense fan-in F, budget B = dst.layer_budget(shape, sparsity), their budget
B' = int(N*(1 - sparsity)) (no allowance for binary rounding: 100 weights at sparsity
0.9 give B = 10, B' = 9), nnz = the old mask's count and k0 = floor(B/n):

=====================  ===================================  ==================================
rule                   "srigl_np" (default)                 "authors"
=====================  ===================================  ==================================
γ_sal threshold        max(1, floor(γ_sal * k0))            max(1, floor(γ_sal * F)); γ_sal = 0
                                                            turns ablation off, γ_sal = 1 means
                                                            one salient weight (their ``>= 1``
                                                            branch reads γ_sal as a count)
neurons kept active    at least min(n, floor(B/F) + 1)      at least min(n, ceil(nnz/F) + 1)
                       (the min(n, .) guards the index their code would overrun)
at most                max(1, B) neurons (fan-in >= 1)      n (no cap)
fan-in k               min(F, max(1, floor(B/n_active)))    min(F, floor(B'/n_active)); 0 is
                       (never 0: one weight per neuron)     refused (ValueError), as their
                                                            ``get_fan_in_after_ablation`` does
=====================  ===================================  ==================================

The authors' reading is the same update with those three rules swapped: dst's own steps
(``dst.magnitude_keep``, ``dst.ablate``, ``dst.cap_fan_in``, ``dst.regrow``) run with
the reading's AblationRule for step 2 and its fan-in for step 3. Not modelled:
their fallback when k would exceed F (it re-ablates all but ceil(nnz/F) neurons; the
clip to F stands in), and the order in which their per-neuron cap drops surplus kept
weights (a sort of a boolean mask; srigl_np keeps the k largest |W|). ``check_update``
with ``reading="authors"`` draws only layers whose budget B' holds at least one weight
per neuron, where their k is never 0.

Every random choice comes from hypothesis or, for the boundary cases, from
``numpy.random.default_rng``, both seeded by ``check_update(seed=...)``.

The kit is a package: ``reference`` (the reference update in either reading),
``strategies``, ``boundary`` (the fixed first stage), ``assertions`` and ``conformance``
(``check_update`` and its diff); every public name is importable from
``srigl_np.testing``.
"""

try:
    import hypothesis  # noqa: F401
except ImportError as exc:   # pragma: no cover - exercised without hypothesis only
    raise ImportError("srigl_np.testing needs hypothesis: pip install hypothesis") from exc

from .assertions import assert_constant_fan_in, assert_valid_update, update_violations
from .boundary import boundary_cases
from .conformance import LEGEND, STAGES, ConformanceError, Counterexample, check_update
from .reference import METHODS, READINGS, reference_update, srigl_reference
from .strategies import (Layer, UpdateInputs, ablated_layers, boundary_fractions,
                         constant_fan_in_layers, conv_shapes, float_dtypes, layer_shapes,
                         linear_shapes, update_inputs)

__all__ = [
    "LEGEND", "METHODS", "ConformanceError", "Counterexample", "Layer", "READINGS", "STAGES",
    "UpdateInputs",
    "ablated_layers", "assert_constant_fan_in", "assert_valid_update", "boundary_cases",
    "boundary_fractions", "check_update", "constant_fan_in_layers", "conv_shapes",
    "float_dtypes", "layer_shapes", "linear_shapes", "reference_update", "srigl_reference",
    "update_inputs", "update_violations",
]
