"""dst.GrowScore (a layer's grow score kept as its terms) and the condensed invariant check.

The score must be the masked path's running sum bit for bit, read whole or in any row
blocks, and survive a checkpoint (dense() saved, load() back) mid-window with the bits
of an uninterrupted window.
"""

import numpy as np
import pytest

from srigl_np import dst
from srigl_np.dst import GrowScore, masks
from srigl_np.nn.condensed_compute import condense_rows


def _factors(rng, n, fan_in, steps, batch=5):
    return [(rng.standard_normal((batch, n)), rng.standard_normal((batch, fan_in)))
            for _ in range(steps)]


def _running_sum(factors, window):
    """The masked path's arithmetic: the gradient alone for a window of one, else
    ((0 + g1 / n) + g2 / n) + ... over the dense gradients."""
    if window == 1:
        return factors[0][0].T @ factors[0][1]
    total = np.zeros((factors[0][0].shape[1], factors[0][1].shape[1]))
    for dy, x in factors:
        total += (dy.T @ x) / window
    return total


@pytest.mark.parametrize("window", [1, 3])
@pytest.mark.parametrize("block_entries", [1, 40, 1 << 22])
def test_products_and_dense_terms_give_the_running_sum_in_any_blocks(
        monkeypatch, window, block_entries):
    monkeypatch.setattr(masks, "_BLOCK_ENTRIES", block_entries)
    rng = np.random.default_rng(0)
    n, fan_in = 7, 12
    factors = _factors(rng, n, fan_in, window)
    expected = _running_sum(factors, window)
    products, dense = GrowScore((n, fan_in), np.float64, window), \
        GrowScore((n, fan_in), np.float64, window)
    for dy, x in factors:
        products.add_product(dy, x)
        dense.add(dy.T @ x)
    assert np.array_equal(dense.dense(), expected)
    # A product's rows are a GEMM per block, whose bits may depend on the block's rows:
    # read over the fixed blocks (as srigl_update_rows and dense() read it), the score is
    # one array; with a single block it is the full product's bits.
    whole = products.dense()
    assert np.allclose(whole, expected, rtol=1e-13, atol=0)
    if products.block_rows >= n:
        assert np.array_equal(whole, expected)
    for r0 in range(0, n, products.block_rows):
        r1 = min(n, r0 + products.block_rows)
        assert np.array_equal(products.rows(r0, r1), whole[r0:r1])
    for r0, r1 in [(0, n), (0, 1), (2, 5), (6, 7)]:
        assert np.array_equal(dense.rows(r0, r1), expected[r0:r1])


def test_a_window_saved_and_loaded_midway_continues_with_the_same_bits(monkeypatch):
    monkeypatch.setattr(masks, "_BLOCK_ENTRIES", 24)   # two rows per block
    rng = np.random.default_rng(1)
    n, fan_in = 9, 12
    factors = _factors(rng, n, fan_in, 3)
    uninterrupted = GrowScore((n, fan_in), np.float64, 3)
    for dy, x in factors:
        uninterrupted.add_product(dy, x)
    first = GrowScore((n, fan_in), np.float64, 3)
    first.add_product(*factors[0])
    saved = first.dense().copy()
    resumed = GrowScore((n, fan_in), np.float64, 3)
    resumed.load(saved)
    for dy, x in factors[1:]:
        resumed.add_product(dy, x)
    assert np.array_equal(resumed.dense(), uninterrupted.dense())
    for r0 in range(0, n, 2):
        assert np.array_equal(resumed.rows(r0, min(n, r0 + 2)),
                              uninterrupted.rows(r0, min(n, r0 + 2)))


def test_a_dense_term_is_copied_and_an_empty_score_is_zero():
    score = GrowScore((3, 2, 2), np.float32, 1)
    assert not score and np.array_equal(score.dense(), np.zeros((3, 2, 2), np.float32))
    grad = np.ones((3, 2, 2), np.float32)
    score.add(grad)
    with pytest.raises(RuntimeError, match="one gradient"):
        score.add(grad)
    grad[...] = 0   # the caller masks its gradient in place afterwards
    assert score and score.dense().sum() == 12 and score.rows(1, 3).shape == (2, 4)
    score.clear()
    assert not score


def test_misuse_is_refused_with_one_line():
    score = GrowScore((4, 3), np.float64, 1)
    with pytest.raises(RuntimeError, match="empty"):
        score.rows(0, 4)
    with pytest.raises(ValueError, match=r"dy \(batch, 4\) and x \(batch, 3\)"):
        score.add_product(np.ones((2, 4)), np.ones((2, 5)))
    with pytest.raises(ValueError, match="expected"):
        score.add_product(np.ones((2, 4)), np.ones((3, 3)))
    score.add_product(np.ones((2, 4)), np.ones((2, 3)))
    with pytest.raises(RuntimeError, match="one gradient"):
        score.add_product(np.ones((2, 4)), np.ones((2, 3)))
    with pytest.raises(RuntimeError, match="cannot follow"):
        score.add(np.ones((4, 3)))


# -- the condensed invariant check ------------------------------------------------------

def _layout(rng, n, fan_in, k, ablate):
    mask = np.zeros((n, fan_in), dtype=bool)
    live = np.setdiff1d(np.arange(n), ablate)
    for row in live:
        mask[row, rng.choice(fan_in, k, replace=False)] = True
    rows, indices, _ = condense_rows(mask.astype(np.float64), mask)
    return mask, rows, indices


@pytest.mark.parametrize("seed", range(20))
def test_the_condensed_check_finds_what_the_dense_one_finds(seed):
    rng = np.random.default_rng(seed)
    n, fan_in = int(rng.integers(1, 8)), int(rng.integers(1, 9))
    k = int(rng.integers(1, fan_in + 1))
    truly_ablated = rng.choice(n, int(rng.integers(0, n)), replace=False)
    mask, rows, indices = _layout(rng, n, fan_in, k, truly_ablated)
    claimed = rng.choice(n, int(rng.integers(0, n + 1)), replace=False)   # may be wrong
    fan_in_claim = [None, k, k + 1, dst.INFER][seed % 4]
    budget = [None, k * rows.size, k * rows.size + n, max(0, k * rows.size - n - 1)][seed % 4]
    dense = dst.invariant_violations(mask.astype(np.float64), mask, fan_in_claim, claimed,
                                     budget=budget)
    condensed = dst.condensed_violations(rows, indices, (n, fan_in), fan_in_claim, claimed,
                                         budget=budget)
    assert condensed == dense


def test_a_broken_layout_is_one_violation_and_check_raises_naming_the_layer():
    rows, indices = np.array([0, 2]), np.array([[0, 3], [1, 2]], dtype=np.int16)
    assert dst.condensed_violations(rows, indices, (3, 4)) == []
    for bad_rows, bad_indices, what in [
            (np.array([2, 0]), indices, "rows are not strictly ascending in [0, 3)"),
            (np.array([0, 3]), indices, "rows are not strictly ascending"),
            (rows, np.array([[3, 0], [1, 2]]), "indices are not strictly ascending in [0, 4)"),
            (rows, np.array([[1, 1], [1, 2]]), "indices are not strictly ascending"),
            (rows, np.array([[0, 4], [1, 2]]), "indices are not strictly ascending")]:
        violations = dst.condensed_violations(bad_rows, bad_indices, (3, 4))
        assert [v.kind for v in violations] == ["layout"] and what in violations[0].message
    with pytest.raises(dst.InvariantError, match=r"^layer 'fc': ablated neuron 2 has 2 "):
        dst.check_condensed_invariants(rows, indices, (3, 4), ablated=[1, 2], layer="fc")
    with pytest.raises(ValueError, match="rows"):
        dst.condensed_violations(rows, indices[:1], (3, 4))
