"""The SRigL authors' rules, each written once, where srigl_np's differ from them.

srigl_np's updates never call this module: it models the authors' code so that what
departs from it can be computed and shown. Its users are ``srigl_np.erk_table`` (their ERK
allocation and budgets beside dst's) and ``srigl_np.testing``'s ``reading="authors"``
(their γ_sal threshold, fewest active neurons and fan-in inside dst's own steps). Why
srigl_np departs, rule by rule: docs/tutorial.md, "Where srigl_np departs".

The code is calgaryml/condensed-sparsity, read (not copied) at commit 3052bb8 (April 2024,
``COMMIT``), files under src/rigl_torch/; each rule names its lines there. One rule, the
fewest active neurons, follows their earlier commit 0ca2365 (``FEWEST_ACTIVE_COMMIT``),
as the conformance kit's authors' reading always has: see ``ablation_rule``.

Budgets in their code are ``int(numel * (1 - sparsity))`` of the float sparsity, with no
allowance for binary rounding: 100 weights at 90% give int(9.999999999999998) = 9, where
``dst.layer_budget`` gives 10.
"""

import math

from .steps import AblationRule

__all__ = ["COMMIT", "FEWEST_ACTIVE_COMMIT", "ablation_rule", "budget", "erk_sparsities",
           "fan_in", "unstructured_nnz"]

COMMIT = "3052bb8bd708918576df4e6e66f273e37c960b24"
FEWEST_ACTIVE_COMMIT = "0ca2365fa562b3327083d04b8524f6d7ec33d4a3"


def budget(shape, sparsity):
    """Their weight budget of a constant fan-in layer: int(N*(1 - sparsity)).

    utils/rigl_utils.py, ``get_fan_in_after_ablation``, lines 312-314
    (``remaining_non_zero_elements``), and rigl_constant_fan.py, ``_get_neurons_to_ablate``,
    line 395 (``n_ones_max``). For 100 weights at sparsity 0.9 this is 9: their uniform
    sparsity 1 - (N*0.1)/N (rigl_scheduler.py, line 420) is the float 0.9, and
    100*(1 - 0.9) = 9.999999999999998.
    """
    return int(math.prod(shape) * (1 - sparsity))


def fan_in(shape, sparsity, n_ablated=0):
    """Their constant fan-in: budget(shape, sparsity) // (n - n_ablated), no clip to F.

    utils/rigl_utils.py, ``get_fan_in_after_ablation``, lines 305-321; a fan-in of 0
    raises ValueError there and here (dst floors it at 1: ``dst.fan_in_of_budget``).
    """
    n_active = shape[0] - n_ablated
    weights = budget(shape, sparsity)
    if weights // n_active == 0:
        raise ValueError(f"fan-in after ablation is 0 in the authors' rule: budget "
                         f"int(N*(1 - s)) = {weights} < {n_active} active neurons (their "
                         f"get_fan_in_after_ablation raises here; srigl_np keeps one "
                         f"weight per neuron)")
    return weights // n_active


def ablation_rule(n, dense_fan_in, nnz, gamma_sal):
    """Their step-2 numbers as a dst AblationRule, or None where they do not ablate.

    n neurons of dense fan-in F; nnz: the old mask's count (their ``n_ones``). At 3052bb8,
    rigl_constant_fan.py, ``_get_neurons_to_ablate``:
    * gamma_sal = 0 turns ablation off (line 392: ``min_salient_weights_per_neuron != 0``);
    * the threshold is max(1, int(gamma_sal*F)) with the dense fan-in F (lines 427-440,
      ``use_sparse_const_fan_in_for_ablation`` off, their default); a gamma_sal >= 1 is
      read as a count (lines 423-426), so gamma_sal = 1 means one salient weight;
    * no cap on the active neurons: max_active = n.
    The fewest active neurons follow commit 0ca2365 (lines 397-400 and 444-450): their
    threshold is lowered to the count of the neuron at index ceil(nnz/F) of the sorted
    counts, so min(n, ceil(nnz/F) + 1) stay (the min guards the index their code would
    overrun). Since their commit 5cc3f6d (Oct 2023; 3052bb8 lines 395-397 and 441-447)
    the index is floor(budget/F), the rule srigl_np uses (docs/tutorial.md).
    """
    if gamma_sal == 0:
        return None
    threshold = 1 if gamma_sal >= 1 else max(1, math.floor(gamma_sal * dense_fan_in))
    return AblationRule(threshold, min(n, -(-nnz // dense_fan_in) + 1), n)


def erk_sparsities(shapes, dense_allocation, power_scale=1.0, dense_layers=()):
    """Their ERK allocation: rigl_scheduler.py, ``RigLScheduler._erk_sparsity_dist``,
    lines 438-513. Returns a list of floats.

    shapes: the weight shapes (out, in[, kh, kw]) in layer order; ``dense_allocation``:
    their density 1 - sparsity, as their config writes it (0.1 for 90%);
    ``dense_layers``: indices kept dense from the start (their ``ignore_linear_layers``
    and ``keep_first_layer_dense``, lines 454-462; both off in their configs).

    Their rule, as it differs from ``dst.erk_sparsities``:
    * each layer's weights are rounded before eps is solved (lines 471-482): a sparse
      layer contributes N - int(N*(1 - d)) to the right-hand side, a dense one takes
      int(N*(1 - d)) off it, where dst uses the real-valued budget d*sum(N) - sum(N_dense);
    * while eps * max(raw) > 1, only the first layer (lowest index) with the largest raw
      density is made dense before eps is re-solved (lines 492-500, the ``break``); dst
      makes all the tied ones dense at once. The result is the same: eps only grows as
      layers are made dense, so a tied layer left sparse would be made dense next pass.
    raw = (sum(shape) / prod(shape)) ** power_scale includes a conv's kernel dimensions
    (lines 483-486), as dst's does. Like theirs, this fails (ValueError here) if every
    layer would end dense.
    """
    shapes = [tuple(int(d) for d in s) for s in shapes]
    sizes = [math.prod(s) for s in shapes]
    raw = [(sum(s) / math.prod(s)) ** power_scale for s in shapes]
    # int() of the float product, as their n_zeros = int(n_params * (1 - dense_allocation)).
    zeros = [int(n * (1 - dense_allocation)) for n in sizes]
    dense = set(dense_layers)
    while True:
        sparse = [i for i in range(len(shapes)) if i not in dense]
        if not sparse:
            raise ValueError("every layer would be dense (the authors' code fails here too)")
        rhs = sum(sizes[i] - zeros[i] for i in sparse) - sum(zeros[i] for i in dense)
        # Summed in layer order, as their loop does, so eps agrees to the last bit.
        divisor = 0.0
        for i in sparse:
            divisor += raw[i] * sizes[i]
        eps = rhs / divisor
        top = max(raw[i] for i in sparse)
        if top * eps <= 1:
            break
        dense.add(next(i for i in sparse if raw[i] == top))
    return [0.0 if i in dense else 1.0 - eps * raw[i] for i in range(len(shapes))]


def unstructured_nnz(shape, sparsity):
    """The nnz of their initial unstructured mask: rigl_scheduler.py, ``random_sparsify``,
    lines 579-586: int(s*N) of the N weights are zeroed, so N - int(s*N) stay (dst's
    random_mask keeps layer_budget(shape, s))."""
    n = math.prod(shape)
    return n - int(sparsity * n)
