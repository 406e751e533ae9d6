"""check_update at its defaults catches every planted porting bug of SRigL, each with a
readable counterexample, and passes a correct port.

``_port`` is dst.srigl_update's five steps written out with the step functions of
srigl_np.dst.steps; its ``bug=`` switch plants one mistake a porter is likely to make
(the list in docs/conformance.md, "What the default search catches"). Every bug must be
caught by ``check_update(port)`` with no other argument: the kit's fixed boundary stage
makes that deterministic, not a matter of the random search's luck.
"""

import math
import re
import time
from functools import partial

import numpy as np
import pytest
from hypothesis import strategies as st

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


def _disagrees(found, bug):
    """Rerunning both updates on the counterexample shows the reported difference."""
    case = found.inputs
    expected = dst.srigl_update(case.weight, case.mask, case.grad, **case.kwargs())
    mask, weight = _port(case.weight, case.mask, case.grad, **case.kwargs(), bug=bug)
    return not (np.array_equal(mask, expected.mask) and np.array_equal(weight, expected.weight))


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_check_update_at_its_defaults_catches_each_planted_bug(bug):
    found = testing.check_update(partial(_port, bug=bug))
    assert found is not None, f"missed: {BUGS[bug]}"
    assert found.error is None and (found.neurons.size or found.weight_mismatches.size)
    assert _disagrees(found, bug)
    # Only a tie-break bug needs the ties stage; every other is caught by a fixed case.
    assert found.stage == ("ties" if bug == "grad_ties_to_higher_index" else "boundary")
    assert found.inputs.weight.size <= 16           # a layer worked by hand
    text = str(found)
    for number in ("n_keep", "n_prune", "k = ", "budget"):
        assert number in text, text
    if found.inputs.ablation:
        assert "salient counts" in text and "threshold" in text, text


def test_the_gamma_denominator_report_shows_why_the_neurons_differ():
    found = testing.check_update(partial(_port, bug="gamma_dense_fan_in"))
    trace = found.expected.trace
    shape, gamma_sal = found.inputs.weight.shape, found.inputs.gamma_sal
    dense_fan_in = math.prod(shape[1:])
    # The case sits where the denominators part ways: their threshold is higher.
    assert math.floor(gamma_sal * dense_fan_in) > trace.threshold
    text = str(found)
    assert (f"salient counts {trace.salient_counts.tolist()}" in text
            and f"threshold {trace.threshold} = max(1, floor(gamma_sal*k0)), k0 = "
                f"{trace.k0}" in text), text
    assert re.search(r"^\*\s+\d+\s", text, flags=re.MULTILINE), text


def test_a_correct_port_and_srigl_update_pass_the_defaults_quickly():
    start = time.perf_counter()
    assert testing.check_update(partial(_port, bug=None)) is None
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"check_update's default budget took {elapsed:.1f} s"
    assert testing.check_update(dst.srigl_update, ties=False, max_examples=20) is None


def test_the_issue_layer_separates_srigl_saliency_from_rigl_keep_and_grow():
    """W, G of issue 24 at d = 0.5: salient counts [2, 1]; RigL's keep ∪ grow gives [3, 1]."""
    weight = np.array([[.9, .1, 0, 0], [.8, .7, 0, 0]])
    grad = np.array([[1, .5, .4, 0], [0, 0, 0, .3]])
    result = dst.srigl_update(weight, weight != 0, grad, drop_fraction=0.5, sparsity=0.5,
                              gamma_sal=1.0, trace=True)
    assert result.trace.salient_counts.tolist() == [2, 1]
    rigl = dst.rigl_update(weight, weight != 0, grad, drop_fraction=0.5)
    assert rigl.mask.sum(axis=1).tolist() == [3, 1]


def test_boundary_cases_are_fixed_small_distinct_and_valid():
    cases = testing.boundary_cases()
    again = testing.boundary_cases()
    assert len(cases) == len(again) > 500
    assert all(np.array_equal(a.weight, b.weight) and a.gamma_sal == b.gamma_sal
               for a, b in zip(cases, again))
    sizes = [case.weight.size for case in cases]
    assert sizes == sorted(sizes) and max(sizes) <= 16
    for case in cases[::7]:
        magnitude = np.abs(case.grad).ravel()
        assert np.unique(magnitude).size == magnitude.size
        testing.assert_constant_fan_in(case.weight, case.mask, budget=case.budget)
    assert any(not case.ablation for case in cases)
    assert any(case.budget < case.weight.shape[0] for case in cases)
    assert testing.boundary_cases(seed=1)[0].grad.tolist() != cases[0].grad.tolist() or \
        any(not np.array_equal(a.grad, b.grad)
            for a, b in zip(testing.boundary_cases(seed=1), cases))
    with pytest.raises(ValueError, match="per_shape"):
        testing.boundary_cases(per_shape=0)


def test_the_boundary_stage_can_be_filtered_or_switched_off():
    no_ablation_bug = partial(_port, bug="gamma_dense_fan_in")
    assert testing.check_update(no_ablation_bug, boundary=lambda case: not case.ablation,
                                inputs=testing.update_inputs(ablation=st.just(False)),
                                max_examples=30) is None
    found = testing.check_update(partial(_port, bug="no_return"), boundary=False,
                                 ties=False, max_examples=60)
    assert found is None or found.stage == "distinct"
    with pytest.raises(TypeError, match="boundary"):
        testing.check_update(no_ablation_bug, boundary="yes")
    with pytest.raises(ValueError, match="max_examples"):
        testing.check_update(no_ablation_bug, max_examples=0)
