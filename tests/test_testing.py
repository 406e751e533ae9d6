"""srigl_np.testing: the conformance kit accepts srigl_np's own updates, rejects wrong ones
with a shrunk, readable counterexample, and its strategies and helpers do what they say.

``_plain_srigl`` is an independent SRigL without ablation, written the way a user would
(one neuron at a time, its own ranking helper); its ``bug=`` switch plants the mistakes
the harness must catch. docs/conformance.md is executed here block by block.
"""

import contextlib
import importlib
import io
import math
import re
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from srigl_np import dst, testing

NO_ABLATION = testing.update_inputs(ablation=st.just(False))
DOC = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"


def _top(candidates, score, count, lower_index_wins=True):
    """The ``count`` candidates with the largest score; ties: the lower (or higher) index."""
    order = np.lexsort((candidates if lower_index_wins else -candidates, -score[candidates]))
    return candidates[order][:count]


def _plain_srigl(weight, mask, grad, *, drop_fraction, sparsity, gamma_sal, ablation,
                 bug=None):
    """SRigL without ablation. bug: None, "no_regrow_pruned" (regrow only positions absent
    from the old mask), "ceil_fan_in" (k = ceil(B/n)) or "ties_to_higher_index"."""
    top = partial(_top, lower_index_wins=bug != "ties_to_higher_index")
    n = weight.shape[0]
    rows, old, score = weight.reshape(n, -1), mask.reshape(n, -1), np.abs(grad.reshape(n, -1))
    budget = dst.layer_budget(weight.shape, sparsity)
    share = -(-budget // n) if bug == "ceil_fan_in" else budget // n
    fan_in = min(rows.shape[1], max(1, share))
    n_ones = int(old.sum())
    n_keep = n_ones - math.floor(n_ones * drop_fraction)
    magnitude = np.abs(rows).ravel()
    keep = np.zeros(rows.size, dtype=bool)
    keep[top(np.flatnonzero(old.ravel() & (magnitude != 0)), magnitude, n_keep)] = True
    keep = keep.reshape(rows.shape)
    new = np.zeros_like(keep)
    for i in range(n):
        kept = top(np.flatnonzero(keep[i]), np.abs(rows[i]), fan_in)
        new[i, kept] = True
        free = ~old[i] if bug == "no_regrow_pruned" else ~new[i]
        new[i, top(np.flatnonzero(free), score[i], fan_in - kept.size)] = True
    new_weight = np.where(new & old, rows, 0).astype(weight.dtype)
    return new.reshape(weight.shape), new_weight.reshape(weight.shape)


def _counting(update):
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return update(*args, **kwargs)
    return counted, calls


def _assert_names_first_neuron(found):
    """The header names the first differing neuron, and its table row is starred."""
    text = str(found)
    neuron = int(found.neurons[0])
    assert re.match(rf"their srigl update disagrees with .* first: neuron {neuron}\n", text)
    assert re.search(rf"^\*\s+{neuron}\s", text, flags=re.MULTILINE), text
    assert testing.LEGEND in text


# -- the harness accepts the references ------------------------------------------------------

def test_check_update_accepts_srigl_np_own_update_on_many_examples():
    update, calls = _counting(dst.srigl_update)
    assert testing.check_update(update, max_examples=300) is None
    assert len(calls) >= 300


def test_check_update_accepts_rigl_update_and_an_independent_srigl():
    update, calls = _counting(dst.rigl_update)
    assert testing.check_update(update, method="rigl", max_examples=100) is None
    assert len(calls) >= 100
    assert testing.check_update(_plain_srigl, inputs=NO_ABLATION, max_examples=100) is None


def test_the_authors_reading_composition_reproduces_srigl_update_under_srigl_np_rules():
    """_srigl_by_reading runs dst's public steps with the reading's step-2 rule and step-3
    fan-in; with srigl_np's numbers it must be dst.srigl_update, ties and all."""
    composed = partial(testing.reference._srigl_by_reading, reading="srigl_np")
    assert testing.check_update(composed, max_examples=200) is None
    assert testing.check_update(composed, ties=False, max_examples=60) is None


# -- ... and rejects wrong updates with a shrunk, readable counterexample ---------------------

@pytest.mark.parametrize("bug", ["no_regrow_pruned", "ceil_fan_in"])
def test_check_update_rejects_a_wrong_update_with_a_shrunk_counterexample(bug):
    found = testing.check_update(partial(_plain_srigl, bug=bug), inputs=NO_ABLATION)
    assert isinstance(found, testing.Counterexample)
    assert found.error is None and found.neurons.size >= 1
    assert found.inputs.weight.size <= 4          # shrunk to a layer worked by hand
    _assert_names_first_neuron(found)
    # The counterexample is a real disagreement: rerunning both shows it.
    case = found.inputs
    expected = dst.srigl_update(case.weight, case.mask, case.grad, **case.kwargs())
    mask, _ = _plain_srigl(case.weight, case.mask, case.grad, **case.kwargs(), bug=bug)
    assert np.array_equal(expected.mask, found.expected.mask)
    assert np.array_equal(mask, found.mask) and not np.array_equal(mask, expected.mask)
    if bug == "ceil_fan_in":
        assert any(v.kind == "budget" for v in found.violations)


def test_ties_false_accepts_an_update_that_breaks_ties_otherwise():
    wrong = partial(_plain_srigl, bug="ties_to_higher_index")
    found = testing.check_update(wrong, inputs=NO_ABLATION)
    assert found is not None
    _assert_names_first_neuron(found)
    distinct = testing.update_inputs(ablation=st.just(False), ties=False)
    assert testing.check_update(wrong, inputs=distinct, max_examples=100) is None


def test_check_update_reports_wrong_weights_a_crash_and_can_raise():
    def wrong_grown_value(weight, mask, grad, **kwargs):
        result = dst.srigl_update(weight, mask, grad, **kwargs)
        return result.mask, np.where(result.grown, 0.5, result.weight)

    found = testing.check_update(wrong_grown_value)
    assert found.neurons.size == 0 and found.weight_mismatches.size >= 1
    assert "but not its weights" in str(found) and "theirs 0.5" in str(found)
    assert any(v.kind == "grown_weight" for v in testing.update_violations(
        (found.inputs.weight, found.inputs.mask), (found.weight, found.mask)))

    def crashes(weight, mask, grad, **kwargs):
        if kwargs["drop_fraction"] > 0.5:
            raise RuntimeError("topk out of range")
        return dst.srigl_update(weight, mask, grad, **kwargs)

    found = testing.check_update(crashes)
    assert found.error == "RuntimeError: topk out of range" and found.mask is None
    assert str(found).startswith("their srigl update raised RuntimeError: topk out of range")
    with pytest.raises(testing.ConformanceError, match="raised RuntimeError") as info:
        testing.check_update(crashes, raise_on_mismatch=True)
    assert isinstance(info.value, AssertionError)
    assert info.value.counterexample.error == found.error


def test_check_update_adapters_and_the_same_seed_gives_the_same_counterexample():
    wrong = partial(_plain_srigl, bug="no_regrow_pruned")
    transposed = testing.update_inputs(ablation=st.just(False),
                                       layers=testing.constant_fan_in_layers(
                                           shapes=testing.linear_shapes))

    def their_layout(weight_t, mask_t, grad_t, **kwargs):   # (n_in, n_out), float mask
        new_mask, new_weight = wrong(weight_t.T, mask_t.T > 0, grad_t.T, **kwargs)
        return new_mask.T.astype(np.float32), new_weight.T

    found = testing.check_update(
        their_layout, inputs=transposed,
        to_theirs=lambda w, m, g: (w.T, m.T.astype(np.float32), g.T),
        from_theirs=lambda result: (result[0].T, result[1].T))
    again = testing.check_update(
        partial(wrong), inputs=transposed, seed=0)
    assert found.mask.dtype == bool
    assert str(found) == str(again)
    # A mask that is not 0/1 (the pair returned in the wrong order) is reported as such.
    weight = np.array([[2.0, 0.0], [0.0, -1.0]], np.float32)
    case = testing.UpdateInputs(weight, weight != 0, np.ones_like(weight), 0.5, 0.5, 0.3, True)
    found = testing.check_update(
        dst.srigl_update, inputs=st.just(case),
        from_theirs=lambda result: (result.weight, result.mask))
    assert found.error is not None and "(new_mask, new_weight)" in found.error


def test_check_update_refuses_bad_arguments():
    with pytest.raises(ValueError, match="reading must be one of"):
        testing.check_update(dst.srigl_update, reading="paper")
    with pytest.raises(ValueError, match="method must be one of"):
        testing.check_update(dst.srigl_update, method="set")
    with pytest.raises(ValueError, match="applies to method 'srigl' only"):
        testing.check_update(dst.rigl_update, method="rigl", reading="authors")
    with pytest.raises(TypeError, match="update must be callable"):
        testing.check_update("srigl")


# -- readings ------------------------------------------------------------------------------

def _differ(weight, grad, **kwargs):
    return [testing.srigl_reference(weight, weight != 0, grad, reading=reading, **kwargs)
            for reading in testing.READINGS]


def test_the_readings_differ_in_the_gamma_sal_denominator():
    # n = F = 4, B = 8, k0 = 2; salient counts [3, 2, 2, 1] (docs/conformance.md).
    weight = np.zeros((4, 4))
    weight[:, :2] = [[8, 7], [6, 5], [2, 2], [1, 1]]
    grad = np.zeros((4, 4))
    grad[[0, 2, 2, 3], [2, 2, 3, 2]] = [9, 8, 7, 6]
    ours, authors = _differ(weight, grad, drop_fraction=0.5, sparsity=0.5, gamma_sal=0.5)
    assert ours.ablated.tolist() == [] and authors.ablated.tolist() == [3]   # 1 vs floor(.5*4)
    assert ours.fan_in == authors.fan_in == 2
    assert np.array_equal(ours.mask[:3], authors.mask[:3]) and not authors.mask[3].any()
    # gamma_sal = 0: srigl_np still ablates neurons without salient weights, the authors
    # turn ablation off.
    ours, authors = _differ(weight, grad, drop_fraction=0.5, sparsity=0.5, gamma_sal=0.0)
    assert authors.ablated.tolist() == [] and authors.fan_in == 2


def test_the_readings_differ_in_the_fewest_active_neurons():
    # n = F = 4, B = 6 (sparsity 0.625), nnz = 6: floor(6/4) + 1 = 2 vs ceil(6/4) + 1 = 3.
    # Only neurons 0 and 1 hold salient weights; srigl_np keeps those two at k = 3, the
    # authors must keep 3 neurons, so the threshold drops to 0 and all 4 stay at k = 1.
    weight = np.array([[3, 2, 1, 0], [6, 5, 4, 0], [0, 0, 0, 0], [0, 0, 0, 0]], float)
    grad = np.zeros((4, 4))
    grad[[0, 1, 0], [3, 3, 0]] = [9, 8, 7]
    ours, authors = _differ(weight, grad, drop_fraction=0.5, sparsity=0.625, gamma_sal=0.25)
    assert ours.ablated.tolist() == [2, 3] and ours.fan_in == 3
    assert authors.ablated.tolist() == [] and authors.fan_in == 1


def test_the_readings_differ_in_the_fan_in_floor():
    # Budget 2 < 4 neurons, no ablation: srigl_np keeps one weight per neuron, the
    # authors' code has fan-in 0 and refuses.
    weight = np.eye(4)
    ours = testing.srigl_reference(weight, weight != 0, np.ones((4, 4)), drop_fraction=0.5,
                                   sparsity=0.875, ablation=False)
    assert ours.fan_in == 1 and ours.mask.sum() == 4
    with pytest.raises(ValueError, match="fan-in after ablation is 0"):
        testing.srigl_reference(weight, weight != 0, np.ones((4, 4)), drop_fraction=0.5,
                                sparsity=0.875, ablation=False, reading="authors")


def test_check_update_under_the_authors_reading():
    authors = partial(testing.srigl_reference, reading="authors")
    assert testing.check_update(authors, reading="authors", max_examples=150) is None
    found = testing.check_update(authors, max_examples=300)   # against srigl_np's reading
    assert found is not None and found.reading == "srigl_np"
    found = testing.check_update(dst.srigl_update, reading="authors", max_examples=300)
    assert found is not None and "srigl_reference(reading='authors')" in str(found)
    assert found.inputs.budget >= found.inputs.weight.shape[0]


# -- strategies ------------------------------------------------------------------------------

@given(testing.constant_fan_in_layers(ablation=True))
def test_constant_fan_in_layers_are_valid_layers(layer):
    assert dst.layer_budget(layer.shape, layer.sparsity) == layer.budget
    assert layer.fan_in == dst.fan_in_after_ablation(layer.shape, layer.sparsity,
                                                     layer.ablated.size)
    assert layer.ablated.dtype == np.int64 and np.all(np.diff(layer.ablated) > 0)
    dst.check_invariants(layer.weight, layer.mask, layer.fan_in, layer.ablated,
                         budget=layer.budget)
    testing.assert_constant_fan_in(layer.weight, layer.mask, fan_in=layer.fan_in,
                                   ablated=layer.ablated, sparsity=layer.sparsity)


@given(testing.ablated_layers(ties=False, budget_below_neurons=False))
def test_ablated_layers_ablate_and_distinct_values_are_distinct(layer):
    assert layer.ablated.size >= 1 and layer.budget >= layer.shape[0]
    on_mask = np.abs(layer.weight[layer.mask])
    assert np.all(on_mask > 0) and np.unique(on_mask).size == on_mask.size


@given(testing.update_inputs())
def test_update_inputs_are_accepted_and_the_results_are_valid_updates(case):
    assert case.grad.shape == case.weight.shape and case.grad.dtype == case.weight.dtype
    assert 0 <= case.drop_fraction <= 1 and 0 <= case.gamma_sal <= 1
    result = dst.srigl_update(case.weight, case.mask, case.grad, **case.kwargs())
    testing.assert_valid_update((case.weight, case.mask), result, sparsity=case.sparsity)
    result = dst.rigl_update(case.weight, case.mask, case.grad, **case.kwargs("rigl"))
    testing.assert_valid_update((case.weight, case.mask), result, method="rigl",
                                drop_fraction=case.drop_fraction)


@given(testing.update_inputs(ties=True))
def test_tied_update_inputs_hold_ties_and_zeros_often_enough(case):
    values = np.abs(np.concatenate([case.weight[case.mask], case.grad.ravel()]))
    assert np.all(values == np.round(values)) and values.max(initial=0) <= 3


# -- assertion helpers -------------------------------------------------------------------------

def test_assert_constant_fan_in_reports_every_violation_at_once():
    mask = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 0]], dtype=bool)
    weight = np.where(mask, 1.0, 0.0)
    weight[2, 0] = 0.5
    with pytest.raises(dst.InvariantError) as info:
        testing.assert_constant_fan_in(weight, mask, budget=4, layer="fc1")
    kinds = [v.kind for v in info.value.violations]
    assert kinds == ["outside_mask", "fan_in", "budget"]
    lines = str(info.value).splitlines()
    assert len(lines) == 3 and all(line.startswith("layer 'fc1': ") for line in lines)
    assert "neuron 1 has 1 active weights, expected fan-in 2" in lines[1]
    with pytest.raises(ValueError, match="not both"):
        testing.assert_constant_fan_in(weight, mask, budget=4, sparsity=0.5)


def test_assert_valid_update_reports_every_broken_rule_at_once():
    weight = np.array([[0.9, 0.1, 0.0, 0.0], [0.0, 0.8, 0.7, 0.0], [0.0, 0.0, 0.2, 0.3]])
    mask = weight != 0
    grad = np.array([[0.0, 0.0, 0.5, 0.1], [0.05, 0.0, 0.0, 0.6], [0.4, 0.3, 0.0, 0.0]])
    good = dst.srigl_update(weight, mask, grad, drop_fraction=0.5, sparsity=0.5)
    testing.assert_valid_update((weight, mask), good, sparsity=0.5)
    bad_weight = good.weight.copy()
    bad_weight[0, 0] = 0.25               # a kept weight changed
    bad_weight[2, 0] = 1.0                # a grown weight not 0
    bad_mask = good.mask.copy()
    bad_mask[1, 3] = True                 # neuron 1 over the fan-in (and a grown position)
    with pytest.raises(dst.InvariantError) as info:
        testing.assert_valid_update((weight, mask), (bad_weight, bad_mask), sparsity=0.5,
                                    layer="fc1")
    kinds = [v.kind for v in info.value.violations]
    assert kinds == ["fan_in", "budget", "kept_weight", "grown_weight"]
    assert "neuron 1 has 3 active weights, expected fan-in 2" in str(info.value)
    assert "first at neuron 0, input 0: before 0.9, after 0.25" in str(info.value)
    # A result's own records are checked too; RigL's nnz and pruned count.
    lying = dst.UpdateResult(good.mask, good.weight, ~good.pruned, good.grown, good.ablated,
                             good.fan_in)
    kinds = [v.kind for v in testing.update_violations((weight, mask), lying)]
    assert kinds == ["pruned_record"]
    rigl_mask = mask.copy()
    rigl_mask[0] = False
    kinds = [v.kind for v in testing.update_violations(
        (weight, mask), (np.where(rigl_mask, weight, 0), rigl_mask), method="rigl",
        drop_fraction=0.0)]
    assert kinds == ["nnz", "pruned_count"]
    # SRigL with drop_fraction: the n_keep largest |W| (0.9, 0.8, 0.7) stay in their
    # neurons at k = 2; neuron 1 trading 0.7 for a grown weight breaks that.
    testing.assert_valid_update((weight, mask), good, sparsity=0.5, drop_fraction=0.5)
    swapped_mask = good.mask.copy()
    swapped_mask[1] = [False, True, False, True]
    swapped = np.where(swapped_mask & mask, weight, 0.0)
    kinds = [v.kind for v in testing.update_violations((weight, mask), (swapped, swapped_mask),
                                                       drop_fraction=0.5)]
    assert kinds == ["kept_by_magnitude"]
    assert "first at neuron 1, input 2: |W| 0.7" in testing.update_violations(
        (weight, mask), (swapped, swapped_mask), drop_fraction=0.5)[0].message
    with pytest.raises(TypeError, match="mask must be bool"):
        testing.update_violations((weight, mask), (good.mask, good.weight))


def test_importing_without_hypothesis_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "hypothesis", None)
    monkeypatch.delitem(sys.modules, "srigl_np.testing")
    with pytest.raises(ImportError, match=r"^srigl_np.testing needs hypothesis: "
                                          r"pip install hypothesis$"):
        importlib.import_module("srigl_np.testing")


# -- docs/conformance.md runs -----------------------------------------------------------------

def _fenced_blocks(text):
    """[(language, body)] of the fenced code blocks of a markdown text, in order."""
    return [(m.group(1), m.group(2))
            for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, flags=re.S | re.M)]


def _output_shape(text):
    """Lines with trailing spaces stripped and every number written as 0: what the docs
    promise is the form of the output, not hypothesis's exact draws."""
    return [re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "0", line.rstrip())
            for line in text.strip().splitlines()]


def test_the_conformance_docs_run_and_print_what_they_show():
    blocks = _fenced_blocks(DOC.read_text(encoding="utf-8"))
    namespace = {"__name__": "conformance_doc"}
    ran = 0
    for i, (language, body) in enumerate(blocks):
        if language != "python":
            continue
        shown = blocks[i + 1][1] if i + 1 < len(blocks) and blocks[i + 1][0] == "text" else None
        if "import torch" in body:
            try:
                import torch  # noqa: F401
            except ImportError:
                continue
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(body, f"{DOC.name} block {i}", "exec"), namespace)
        ran += 1
        if shown is not None:
            assert _output_shape(printed.getvalue()) == _output_shape(shown), (
                f"{DOC.name} block {i} printed:\n{printed.getvalue()}")
    assert ran >= 6
    # The worked example's counterexample names the neuron it found.
    _assert_names_first_neuron(namespace["found"])
