"""srigl_update_rows (the row-blocked SRigL update on the condensed form) against
dst.srigl_update: the dense mask and weight rebuilt from its result equal
srigl_update's bit for bit, with the same ablated neurons and fan-in, on many random
small layers (ties in |W| and |G|, zero weights, neurons ablated and returning, ablation
on and off, block sizes 1, 3 and more than n)."""

import numpy as np
import pytest

from srigl_np.dst import constant_fan_in_mask, srigl_update
from srigl_np.dst.condensed_update import srigl_update_rows, top_gradient_positions
from srigl_np.dst.ranking import top_per_row
from srigl_np.nn.condensed_compute import condense_rows

SPARSITIES = (0.0, 0.3, 0.5, 0.7, 0.9, 0.95)


def _layer(rng, n, fan_in, sparsity, dtype, ties):
    """A dense (weight, mask, grad) whose mask has constant fan-in over its active rows,
    some rows ablated; ``ties``: small integer magnitudes (many equal |W| and |G|, zeros
    among the kept weights)."""
    shape = (n, fan_in)
    n_ablated = int(rng.integers(0, n))
    ablated = rng.choice(n, size=n_ablated, replace=False)
    mask = constant_fan_in_mask(shape, sparsity, rng, ablated=ablated)
    if ties:
        weight = rng.integers(-2, 3, size=shape).astype(dtype) * dtype(0.5)
        grad = rng.integers(-2, 3, size=shape).astype(dtype)
    else:
        weight = rng.standard_normal(shape).astype(dtype)
        grad = rng.standard_normal(shape).astype(dtype)
    weight *= mask
    weight += 0   # no -0.0 in the input: condensed and dense hold the same bits
    if rng.random() < 0.3:   # a large |G| on an ablated row makes it return
        grad[ablated] *= 10
    return weight, mask, grad


def _dense(result, shape, dtype):
    mask = np.zeros(shape, dtype=bool)
    weight = np.zeros(shape, dtype=dtype)
    mask[result.rows[:, None], result.indices] = True
    weight[result.rows[:, None], result.indices] = result.values
    return mask, weight


def _check_case(rng, case, largest=(9, 13)):
    n, fan_in = int(rng.integers(1, largest[0])), int(rng.integers(1, largest[1]))
    sparsity = float(rng.choice(SPARSITIES))
    dtype = np.float32 if case % 2 else np.float64
    weight, mask, grad = _layer(rng, n, fan_in, sparsity, dtype, ties=case % 3 != 0)
    drop = float(rng.choice([0.0, 0.1, 0.3, 0.5, 1.0, rng.random()]))
    gamma = float(rng.choice([0.0, 0.3, 0.7, 1.0]))
    ablation = bool(case % 4 != 1)
    expected = srigl_update(weight, mask, grad, drop_fraction=drop, sparsity=sparsity,
                            gamma_sal=gamma, ablation=ablation)
    rows, indices, values = condense_rows(weight, mask)
    calls = []

    def grad_block(r0, r1):
        calls.append((r0, r1))
        return grad[r0:r1]

    passes = set()
    for block_rows, speculate in ((1, True), (3, False), (3, True), (n + 2, True)):
        calls.clear()
        got = srigl_update_rows(values, rows, indices, n, fan_in, grad_block,
                                drop_fraction=drop, sparsity=sparsity, gamma_sal=gamma,
                                ablation=ablation, block_rows=block_rows,
                                speculate=speculate)
        passes.add((ablation, speculate, got.gradient_passes))
        new_mask, new_weight = _dense(got, (n, fan_in), dtype)
        where = f"case {case}, block_rows {block_rows}, speculate {speculate}"
        np.testing.assert_array_equal(new_mask, expected.mask, err_msg=where)
        # Bit for bit, the sign of zero included.
        np.testing.assert_array_equal(new_weight.view(np.uint8),
                                      expected.weight.view(np.uint8), err_msg=where)
        np.testing.assert_array_equal(got.ablated, expected.ablated, err_msg=where)
        assert got.fan_in == expected.fan_in, where
        assert (got.pruned, got.grown, got.regrown) == (
            expected.pruned.sum(), expected.grown.sum(), expected.regrown.sum()), where
        # The layout is canonical, and source points at the old slot of every position
        # in both masks (kept or regrown), -1 at the grown ones.
        assert (np.diff(got.rows) > 0).all() and got.indices.dtype == indices.dtype
        assert got.fan_in == 1 or (np.diff(got.indices, axis=1) > 0).all()
        old_slot = np.full((n, fan_in), -1)
        old_slot[rows[:, None], indices] = np.arange(values.size).reshape(values.shape)
        np.testing.assert_array_equal(got.source, old_slot[got.rows[:, None], got.indices])
        # Blocks of at most block_rows rows, each asked at most twice (once per pass).
        assert all(0 <= r0 < r1 <= min(n, r0 + block_rows) for r0, r1 in calls)
        assert max(map(calls.count, calls), default=0) <= 2
    return expected, bool(np.setdiff1d(got.rows, rows).size), passes


def test_matches_srigl_update_on_random_layers():
    rng = np.random.default_rng(2024)
    ablated_some = returned = 0
    passes = set()
    for case in range(400):
        # A few larger layers: many blocks, the top-|G| set cut back several times.
        expected, came_back, case_passes = _check_case(rng, case,
                                                       (9, 13) if case % 20 else (41, 61))
        ablated_some += expected.ablated.size > 0
        returned += came_back
        passes |= case_passes
    # The cases reach the interesting branches: neurons ablated, ablated ones back, step 5
    # taken from the speculative pass (1 pass with ablation) and redone (2 passes).
    assert ablated_some > 20 and returned > 10
    assert {(True, True, 1), (True, True, 2), (True, False, 2), (False, True, 1)} <= passes


def test_neurons_come_back():
    """An ablated neuron whose gradient dominates returns, in both updates alike."""
    n, fan_in, sparsity = 6, 10, 0.7
    mask = constant_fan_in_mask((n, fan_in), sparsity, np.random.default_rng(1), ablated=[2, 4])
    rng = np.random.default_rng(2)
    weight = (rng.standard_normal((n, fan_in)) * mask) + 0
    grad = rng.standard_normal((n, fan_in)) * 0.01
    grad[2] = 5.0   # ties within the row: the lower columns win
    expected = srigl_update(weight, mask, grad, drop_fraction=0.5, sparsity=sparsity)
    assert 2 not in expected.ablated
    rows, indices, values = condense_rows(weight, mask)
    got = srigl_update_rows(values, rows, indices, n, fan_in, lambda r0, r1: grad[r0:r1],
                            drop_fraction=0.5, sparsity=sparsity, block_rows=4)
    new_mask, new_weight = _dense(got, (n, fan_in), weight.dtype)
    np.testing.assert_array_equal(new_mask, expected.mask)
    np.testing.assert_array_equal(new_weight, expected.weight)
    assert 2 in got.rows and (got.source[list(got.rows).index(2)] == -1).all()


def test_take_carries_state():
    rng = np.random.default_rng(5)
    weight, mask, grad = _layer(rng, 7, 9, 0.6, np.float64, ties=False)
    rows, indices, values = condense_rows(weight, mask)
    got = srigl_update_rows(values, rows, indices, 7, 9, lambda r0, r1: grad[r0:r1],
                            drop_fraction=0.4, sparsity=0.6, block_rows=2)
    momentum = rng.standard_normal(values.shape)
    carried = got.take(momentum)
    np.testing.assert_array_equal(carried[got.source < 0], 0)
    np.testing.assert_array_equal(carried[got.source >= 0],
                                  momentum.reshape(-1)[got.source[got.source >= 0]])


@pytest.mark.parametrize("count", [0, 1, 5, 17, 60])
@pytest.mark.parametrize("block_rows", [1, 2, 7])
def test_top_gradient_positions(count, block_rows):
    """The running top-n equals the dense ranking (ties to the lower flat index)."""
    rng = np.random.default_rng(count * 10 + block_rows)
    grad = rng.integers(-3, 4, size=(6, 10)).astype(np.float32)
    got = top_gradient_positions(lambda r0, r1: grad[r0:r1], 6, 10, count, block_rows)
    expected = np.flatnonzero(top_per_row(np.abs(grad).reshape(1, -1), np.array([count])))
    np.testing.assert_array_equal(got, expected)


def test_bad_arguments():
    weight = np.ones((2, 3))
    mask = np.ones((2, 3), dtype=bool)
    rows, indices, values = condense_rows(weight, mask)

    def grad(r0, r1):
        return np.ones((r1 - r0, 3))

    def call(**changes):
        args = dict(values=values, rows=rows, indices=indices, n_out=2, dense_fan_in=3,
                    grad_block=grad, drop_fraction=0.3, sparsity=0.0)
        args.update(changes)
        return srigl_update_rows(**args)

    with pytest.raises(ValueError, match="rows"):
        call(rows=rows[::-1].copy())
    with pytest.raises(ValueError, match="indices"):
        call(indices=indices[:, ::-1].copy())
    with pytest.raises(ValueError, match="drop_fraction"):
        call(drop_fraction=1.5)
    with pytest.raises(ValueError, match="block_rows"):
        call(block_rows=0)
    with pytest.raises(ValueError, match="grad_block"):
        call(grad_block=lambda r0, r1: np.ones((r1 - r0, 4)))
    with pytest.raises(ValueError, match="grad_block"):
        call(grad_block=lambda r0, r1: np.full((r1 - r0, 3), np.nan))


@pytest.mark.parametrize("gamma, ablated_rows", [(0.3, 0), (0.7, 40)])
def test_matches_srigl_update_on_a_larger_layer(gamma, ablated_rows):
    """300 x 400 at 95%, 43 blocks: the top-|G| set is cut back many times; with 40 rows
    ablated before, gamma 0.7 and a large gradient on half of them, neurons leave and
    others return (the two-pass route)."""
    rng = np.random.default_rng(7)
    n, fan_in, sparsity = 300, 400, 0.95
    before = rng.choice(n, ablated_rows, replace=False)
    mask = constant_fan_in_mask((n, fan_in), sparsity, rng, ablated=before)
    weight = (rng.standard_normal((n, fan_in)).astype(np.float32) * mask) + 0
    grad = np.round(rng.standard_normal((n, fan_in)), 2).astype(np.float32)   # many ties
    grad[before[:ablated_rows // 2]] *= 10
    expected = srigl_update(weight, mask, grad, drop_fraction=0.3, sparsity=sparsity,
                            gamma_sal=gamma)
    rows, indices, values = condense_rows(weight, mask)
    got = srigl_update_rows(values, rows, indices, n, fan_in, lambda r0, r1: grad[r0:r1],
                            drop_fraction=0.3, sparsity=sparsity, gamma_sal=gamma,
                            block_rows=7)
    new_mask, new_weight = _dense(got, (n, fan_in), np.float32)
    np.testing.assert_array_equal(new_mask, expected.mask)
    np.testing.assert_array_equal(new_weight, expected.weight)
    np.testing.assert_array_equal(got.ablated, expected.ablated)
    assert got.fan_in == expected.fan_in
    assert got.gradient_passes == (2 if ablated_rows else 1)
    if ablated_rows:   # some leave, some come back
        assert np.setdiff1d(got.ablated, before).size and np.setdiff1d(before, got.ablated).size
