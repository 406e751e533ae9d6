"""srigl_np.dst.authors: the SRigL authors' rules, written once, and its two users
(``erk_table``'s authors' columns, ``testing``'s ``reading="authors"``) agreeing on them.

The (1, 100) layer at 90% is the case that once split them: the authors' code computes
int(100*(1 - 0.9)) = int(9.999999999999998) = 9 (rigl_utils.py,
``get_fan_in_after_ablation``, lines 312-314 at their commit 3052bb8), where dst's
layer_budget forgives the rounding and gives 10.
"""

import numpy as np
import pytest

from srigl_np import dst, erk_table, testing
from srigl_np.dst import authors


def test_a_one_neuron_layer_of_100_at_90_percent_holds_9_weights_by_their_rule():
    assert authors.budget((1, 100), 0.9) == 9 and authors.fan_in((1, 100), 0.9) == 9
    assert dst.layer_budget((1, 100), 0.9) == 10
    assert dst.fan_in_after_ablation((1, 100), 0.9, 0) == 10
    # Their uniform sparsity for a density of 0.1 is this very float
    # (rigl_scheduler.py, line 420: 1 - (N*0.1 - 0)/N).
    assert 1 - (100 * 0.1 - 0) / 100 == 0.9


def test_the_conformance_kit_reads_the_budget_as_the_authors_do():
    weight = np.zeros((1, 100))
    weight[0, :10] = np.arange(1.0, 11.0)
    grad = np.arange(100.0)[None, :]
    kwargs = dict(drop_fraction=0.3, sparsity=0.9, ablation=False)
    ours = testing.srigl_reference(weight, weight != 0, grad, **kwargs)
    theirs = testing.srigl_reference(weight, weight != 0, grad, reading="authors", **kwargs)
    assert (ours.fan_in, int(ours.mask.sum())) == (10, 10)
    assert (theirs.fan_in, int(theirs.mask.sum())) == (authors.fan_in((1, 100), 0.9), 9)
    # The 7 largest |W| stay in both; the grown positions are the largest |G| not kept.
    assert np.array_equal(np.flatnonzero(theirs.mask[0] & ours.mask[0])[:7], np.arange(3, 10))


@pytest.mark.parametrize("model, sparsity", [("mlp", 0.9), ("cnn", 0.95), ("cnn", 0.99)])
def test_erk_table_takes_its_authors_columns_from_the_module(model, sparsity):
    rows = erk_table.layer_rows(model, sparsity)
    shapes = [r["shape"] for r in rows]
    assert [r["authors_sparsity"] for r in rows] == authors.erk_sparsities(
        shapes, round(1.0 - sparsity, 12))
    for r in rows:
        s = r["authors_sparsity"]
        assert r["authors_budget"] == authors.budget(r["shape"], s)
        assert r["authors_nnz"] == authors.unstructured_nnz(r["shape"], s)
        if not r["authors_dense"]:
            assert r["authors_fan_in"] == authors.fan_in(r["shape"], s)


@pytest.mark.parametrize("shape, sparsity", [((1, 100), 0.9), ((4, 25), 0.9), ((3, 7), 0.6),
                                             ((8, 3, 3, 3), 0.8), ((5, 12), 0.9)])
def test_both_users_agree_on_the_budget_and_the_fan_in(shape, sparsity):
    """The same layer, no ablation: the kit's authors' fan-in is the module's (clipped to F),
    and so is the fan-in erk_table would print for a layer at that sparsity."""
    rng = np.random.default_rng(0)
    mask = dst.constant_fan_in_mask(shape, sparsity, rng)
    weight = np.where(mask, rng.standard_normal(shape), 0.0)
    result = testing.srigl_reference(weight, mask, rng.standard_normal(shape),
                                     drop_fraction=0.3, sparsity=sparsity, ablation=False,
                                     reading="authors")
    dense_fan_in = int(np.prod(shape[1:]))
    assert result.fan_in == min(dense_fan_in, authors.fan_in(shape, sparsity))
    assert int(result.mask.sum()) == result.fan_in * shape[0] <= authors.budget(shape, sparsity)


def test_their_fan_in_of_0_is_refused_by_the_module_and_the_kit():
    with pytest.raises(ValueError, match="fan-in after ablation is 0"):
        authors.fan_in((4, 4), 0.875)
    weight = np.eye(4)
    with pytest.raises(ValueError, match="fan-in after ablation is 0"):
        testing.srigl_reference(weight, weight != 0, np.ones((4, 4)), drop_fraction=0.5,
                                sparsity=0.875, ablation=False, reading="authors")


def test_their_ablation_rule():
    # γ_sal = 0: no ablation; γ_sal = 1: one salient weight (a count); else floor(γ·F).
    assert authors.ablation_rule(4, 10, 20, 0.0) is None
    assert authors.ablation_rule(4, 10, 20, 1.0) == dst.AblationRule(1, 3, 4)
    # 0.3·10 = 3 salient weights; ceil(21/10) + 1 = 4 neurons at least (commit 0ca2365).
    assert authors.ablation_rule(6, 10, 21, 0.3) == dst.AblationRule(3, 4, 6)
    assert authors.ablation_rule(2, 10, 21, 0.3).min_active == 2   # min(n, .)
