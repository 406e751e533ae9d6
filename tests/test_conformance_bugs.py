"""check_update at its defaults catches every planted porting bug of SRigL, each with a
readable counterexample, and passes a correct port.

``_port`` is dst.srigl_update's five steps written out with the step functions of
srigl_np.dst.steps; its ``bug=`` switch plants one mistake a porter is likely to make
(the list in docs/conformance.md, "What the default search catches"). Every bug must be
caught by ``check_update(port)`` with no other argument: the kit's fixed boundary stage
makes that deterministic, not a matter of the random search's luck.
"""

import math
import time
from functools import partial

import numpy as np
import pytest

from srigl_np import dst, testing
from srigl_np.dst import steps
from srigl_np.dst.ranking import top_per_row, top_positions

BUGS = {
    "gamma_dense_fan_in": "threshold max(1, floor(γ·F)), the authors' denominator, not γ·k0",
    "gamma_current_fan_in": "threshold from the old layer's fan-in (B // active neurons "
                            "before), not k0 = B // n",
    "gamma_no_floor_of_one": "threshold floor(γ·k0) without max(1, ·)",
    "rigl_salient_set": "saliency = kept ∪ RigL's grown set (top |G| among positions not "
                        "kept), not kept ∪ top |G| of all positions",
    "salient_grad_only": "saliency = the top n_prune |G| only, without the kept weights",
    "cap_by_index": "a neuron over k keeps its first k kept weights by column, not the "
                    "k largest |W|",
    "fan_in_floor_zero": "k = min(F, floor(B/n_active)), 0 allowed, no cap on active neurons",
    "no_return": "an ablated neuron (empty before) never becomes active again",
    "n_prune_ceil": "n_prune = ceil(n_ones·drop_fraction)",
    "n_prune_round": "n_prune = round(n_ones·drop_fraction)",
    "ablate_at_threshold": "ablate a neuron with <= threshold salient weights, not <",
    "no_n_prune_raise": "saliency's |G| count is floor(n_ones·drop_fraction), not raised to "
                        "n_ones - n_keep when fewer weights are non-zero",
    "no_min_active": "the threshold is never lowered to keep min(n, B//F + 1) neurons",
    "min_active_without_plus_one": "at least B//F neurons stay, not B//F + 1",
    "no_rerank_after_ablation": "the kept set is not ranked again without the ablated "
                                "neurons (their share is lost)",
    "no_regrow_pruned": "growth skips positions of the old mask",
    "regrown_weight_zero": "a pruned-and-regrown weight restarts at 0, not its old value",
    "neuron_ties_to_higher_index": "among neurons of equal saliency the higher index stays",
    "grad_ties_to_higher_index": "saliency's |G| ranking breaks ties to the higher index",
}


def _port(weight, mask, grad, *, drop_fraction, sparsity, gamma_sal, ablation, bug=None):
    """dst.srigl_update, step by step, with the mistake ``bug`` (a key of BUGS) planted."""
    n = weight.shape[0]
    rows, row_mask = weight.reshape(n, -1), mask.reshape(n, -1)
    score = np.abs(grad.reshape(n, -1))
    dense_fan_in = rows.shape[1]
    budget = dst.layer_budget(weight.shape, sparsity)

    # step 1
    kept = steps.magnitude_keep(rows, row_mask, drop_fraction)
    if bug in ("n_prune_ceil", "n_prune_round"):
        n_ones = kept.n_ones
        rounded = (math.ceil if bug == "n_prune_ceil" else round)(n_ones * drop_fraction)
        n_keep = min(n_ones - rounded, kept.candidates.size)
        kept = steps.MagnitudeKeep(
            top_positions(kept.candidates, kept.magnitudes, n_keep, rows.shape), n_ones,
            n_keep, n_ones - n_keep, kept.candidates, kept.magnitudes)

    # step 2
    active = np.ones(n, dtype=bool)
    if ablation:
        k0 = budget // n
        if bug == "gamma_dense_fan_in":
            k0 = dense_fan_in
        elif bug == "gamma_current_fan_in":
            k0 = budget // max(1, int(row_mask.any(axis=1).sum()))
        threshold = math.floor(gamma_sal * k0)
        if bug != "gamma_no_floor_of_one":
            threshold = max(1, threshold)
        min_active = min(n, budget // dense_fan_in + (0 if bug == "min_active_without_plus_one"
                                                       else 1))
        max_active = n if bug == "fan_in_floor_zero" else max(1, budget)
        if bug == "no_min_active":
            min_active = 1
        n_grad = (math.floor(kept.n_ones * drop_fraction) if bug == "no_n_prune_raise"
                  else kept.n_prune)
        flat_score = score.reshape(1, -1)
        if bug == "rigl_salient_set":
            flat_score = np.where(kept.keep.reshape(1, -1), -np.inf, flat_score)
            n_grad = min(n_grad, int(np.isfinite(flat_score).sum()))
        if bug == "grad_ties_to_higher_index":
            top_grad = top_per_row(flat_score[:, ::-1], np.array([n_grad]))[:, ::-1]
        else:
            top_grad = top_per_row(flat_score, np.array([n_grad]))
        top_grad = top_grad.reshape(rows.shape)
        salient = top_grad if bug == "salient_grad_only" else kept.keep | top_grad
        counts = salient.sum(axis=1)
        if bug == "neuron_ties_to_higher_index":
            order = n - 1 - np.argsort(-counts[::-1], kind="stable")
        else:
            order = np.argsort(-counts, kind="stable")
        if bug != "no_min_active":
            threshold = min(threshold, int(counts[order[min_active - 1]]))
        stays = counts > threshold if bug == "ablate_at_threshold" else counts >= threshold
        n_active = min(int(stays.sum()), max_active)
        active = np.zeros(n, dtype=bool)
        active[order[:n_active]] = True
        if bug == "no_return":
            active &= row_mask.any(axis=1)
            if not active.any():
                active[order[0]] = True

    # step 3
    n_active = int(active.sum())
    share = budget // n_active if n_active else 0
    fan_in = (min(dense_fan_in, share) if bug == "fan_in_floor_zero"
              else min(dense_fan_in, max(1, share)))

    # step 4
    if bug == "no_rerank_after_ablation":
        keep = kept.keep & active[:, None]
    else:
        in_active = active[kept.candidates // dense_fan_in]
        keep = top_positions(kept.candidates[in_active], kept.magnitudes[in_active],
                             min(kept.n_keep, int(in_active.sum())), rows.shape)
    capped_score = np.where(keep, np.abs(rows), -np.inf)
    if bug == "cap_by_index":
        capped_score = np.where(keep, 1.0, -np.inf)
    counts = keep.sum(axis=1)
    over = counts > fan_in
    keep[over] = top_per_row(capped_score[over], np.full(int(over.sum()), fan_in))

    # step 5
    missing = np.where(active, fan_in - keep.sum(axis=1), 0)
    blocked = keep | (row_mask if bug == "no_regrow_pruned" else False)
    grow = top_per_row(np.where(blocked, -np.inf, score),
                       np.minimum(missing, (~blocked).sum(axis=1)))
    new_mask = keep | grow
    survived = new_mask & row_mask
    if bug == "regrown_weight_zero":
        survived = keep & row_mask
    new_weight = (rows * survived).astype(weight.dtype) + 0
    return new_mask.reshape(weight.shape), new_weight.reshape(weight.shape)
