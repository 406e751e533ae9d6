"""srigl_np.dst: a plain-Python reference and property tests.

The hand-worked updates, with their reasoning, are doctests in docs/tutorial.md (run
by tests/test_docs.py). The reference (``_reference_srigl``/``_reference_rigl``) walks
neurons and weights in Python loops and ranks with ``sorted(key=(-score, flat_index))``:
it *defines* the update (issue 3 semantics, ties to the lower flat index) and the
vectorised code must match it bit for bit on random layers, including ones full of ties
and zeros.
"""

import doctest
import math
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from srigl_np import dst, testing
from strategies import any_mask_layers, sample_values, seeds

# -- plain-Python reference ------------------------------------------------------------


def _top(candidates, score, count):
    """The ``count`` candidate flat indices with the largest score; ties: lower index."""
    return sorted(candidates, key=lambda p: (-score[p], p))[:count]


def _reference_keep(w, m, drop_fraction):
    """Step 1: (non-zero active flat indices, n_keep, n_prune)."""
    n_ones = int(m.sum())
    n_keep = n_ones - math.floor(n_ones * drop_fraction)
    nonzero = [p for p in range(w.size) if m[p] and w[p] != 0]
    n_keep = min(n_keep, len(nonzero))
    return nonzero, n_keep, n_ones - n_keep


def _reference_srigl(weight, mask, grad, drop_fraction, sparsity, gamma_sal, ablation):
    n = weight.shape[0]
    fan = weight.size // n
    w, m, g = weight.reshape(-1), mask.reshape(-1), grad.reshape(-1)
    magnitude, grad_magnitude = np.abs(w), np.abs(g)
    budget = dst.layer_budget(weight.shape, sparsity)
    nonzero, n_keep, n_prune = _reference_keep(w, m, drop_fraction)

    active = list(range(n))
    if ablation:
        salient = set(_top(nonzero, magnitude, n_keep))
        salient |= set(_top(range(w.size), grad_magnitude, n_prune))
        counts = [sum(1 for p in salient if p // fan == i) for i in range(n)]
        threshold = max(1, math.floor(gamma_sal * (budget // n)))
        order = sorted(range(n), key=lambda i: (-counts[i], i))
        min_active = min(n, budget // fan + 1)
        threshold = min(threshold, counts[order[min_active - 1]])
        active = sorted([i for i in order if counts[i] >= threshold][:max(1, budget)])
    k = min(fan, max(1, budget // len(active)))

    kept = _top([p for p in nonzero if p // fan in active], magnitude, n_keep)
    new = np.zeros(w.size, dtype=bool)
    regrown = np.zeros(w.size, dtype=bool)
    for i in active:
        row = [p for p in kept if p // fan == i]
        for p in _top(row, magnitude, k):
            new[p] = True
        missing = k - min(len(row), k)
        free = [i * fan + j for j in range(fan) if i * fan + j not in kept]
        for p in _top(free, grad_magnitude, missing):
            new[p] = True
            regrown[p] = m[p]          # dropped (or zero), grown back in the same update
    new_weight = np.where(new & m, w, 0).astype(weight.dtype)
    ablated = np.array([i for i in range(n) if i not in active], dtype=np.int64)
    return (new.reshape(weight.shape), new_weight.reshape(weight.shape), ablated, k,
            regrown.reshape(weight.shape))


def _reference_rigl(weight, mask, grad, drop_fraction):
    w, m, g = weight.reshape(-1), mask.reshape(-1), grad.reshape(-1)
    nonzero, n_keep, n_prune = _reference_keep(w, m, drop_fraction)
    kept = set(_top(nonzero, np.abs(w), n_keep))
    grown = _top([p for p in range(w.size) if p not in kept], np.abs(g), n_prune)
    new = np.zeros(w.size, dtype=bool)
    new[list(kept | set(grown))] = True
    regrown = np.zeros(w.size, dtype=bool)
    regrown[[p for p in grown if m[p]]] = True
    new_weight = np.where(new & m, w, 0).astype(weight.dtype)
    return (new.reshape(weight.shape), new_weight.reshape(weight.shape),
            regrown.reshape(weight.shape))


# -- strategies --------------------------------------------------------------------------

shapes = st.one_of(
    st.tuples(st.integers(1, 10), st.integers(1, 12)),                        # Linear
    st.tuples(st.integers(1, 5), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
)
sparsities = st.floats(0.0, 0.995, exclude_min=True)
fractions = st.floats(0.0, 1.0)


@st.composite
def layers(draw, structured=True):
    """(weight, mask, seed, ties, sparsity): a sparse layer with weights 0 off the mask,
    ``seed`` seeding the test's further draws. Either a constant fan-in layer of the kit
    (``testing.constant_fan_in_layers``, ablated neurons included) or, and always when
    not ``structured``, any mask (``strategies.any_mask_layers``): an update must repair
    it (e.g. after a RigL-trained checkpoint)."""
    if structured and draw(st.booleans()):
        ties = draw(st.booleans())
        layer = draw(testing.constant_fan_in_layers(shapes=shapes, ablation=True, ties=ties))
        return layer.weight, layer.mask, draw(seeds), ties, layer.sparsity
    layer = draw(any_mask_layers(shapes=shapes))
    return layer.weight, layer.mask, layer.seed, layer.ties, draw(sparsities)


def _assert_srigl_result(result, weight, mask, sparsity, ablation):
    """Every invariant an SRigL update promises (issue 3, 'Result')."""
    n = weight.shape[0]
    rows = result.mask.reshape(n, -1)
    counts = rows.sum(axis=1)
    ablated = result.ablated
    assert result.mask.shape == weight.shape and result.mask.dtype == bool
    assert result.weight.shape == weight.shape and result.weight.dtype == weight.dtype
    assert ablated.dtype == np.int64 and np.all(np.diff(ablated) > 0)
    if not ablation:
        assert ablated.size == 0
    live = np.ones(n, dtype=bool)
    live[ablated] = False
    assert np.all(counts[live] == result.fan_in)             # constant fan-in
    assert np.all(counts[~live] == 0)                        # ablated neurons empty
    assert result.fan_in == dst.fan_in_after_ablation(weight.shape, sparsity, ablated.size)
    budget, n_active = dst.layer_budget(weight.shape, sparsity), int(live.sum())
    nnz = int(result.mask.sum())
    assert nnz == result.fan_in * n_active
    if budget >= n_active:
        # floor(budget / n_active) per neuron: short of the budget by the remainder only.
        assert 0 <= budget - nnz < n_active
    else:   # fan-in floor of 1 (documented): only without ablation, or budget 0
        assert result.fan_in == 1 and (not ablation or budget == 0)
    assert np.all(result.weight[~result.mask] == 0)          # zero outside the mask
    assert np.all(result.weight[result.grown] == 0)          # grown weights start at 0
    assert np.array_equal(result.pruned, mask & ~result.mask)
    assert np.array_equal(result.grown, result.mask & ~mask)
    assert result.regrown.dtype == bool and result.regrown.shape == weight.shape
    assert not np.any(result.regrown & ~(mask & result.mask))   # in both masks
    stayed = mask & result.mask
    assert np.array_equal(result.weight[stayed], weight[stayed])
    dst.check_invariants(result.weight, result.mask, result.fan_in, ablated,
                         layer="under test", budget=budget)


# -- hand-worked examples ------------------------------------------------------------------
# The hand-worked updates, each with its reasoning, are doctests in docs/tutorial.md
# (tests/test_docs.py runs them); here, only the layer the validation tests below reuse.

W3x4 = np.array([[0.9, 0.1, 0.0, 0.0],
                 [0.0, 0.8, 0.7, 0.0],
                 [0.0, 0.0, 0.2, 0.3]])
G3x4 = np.array([[0.0, 0.0, 0.5, 0.1],
                 [0.05, 0.0, 0.0, 0.6],
                 [0.4, 0.3, 0.0, 0.0]])
TUTORIAL = pathlib.Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"


def test_the_hand_worked_examples_are_doctests_of_the_tutorial():
    """The examples moved to docs/tutorial.md are still there, as doctests that call the
    updates and the budget, fan-in, mask and ERK functions."""
    examples = doctest.DocTestParser().get_examples(TUTORIAL.read_text(encoding="utf-8"))
    source = "".join(example.source for example in examples)
    for call, at_least in [("dst.srigl_update(", 7), ("dst.rigl_update(", 2),
                           ("dst.layer_budget(", 1), ("dst.fan_in_after_ablation(", 3),
                           ("dst.constant_fan_in_mask(", 2), ("dst.erk_sparsities(", 2),
                           ("dst.cosine_drop_fraction(", 1)]:
        assert source.count(call) >= at_least, call


def test_srigl_drop_fraction_zero_and_one():
    rng = np.random.default_rng(3)
    mask = dst.constant_fan_in_mask((6, 10), 0.7, rng)
    weight = rng.standard_normal((6, 10)) * mask
    grad = rng.standard_normal((6, 10))
    same = dst.srigl_update(weight, mask, grad, drop_fraction=0.0, sparsity=0.7)
    assert np.array_equal(same.mask, mask) and not same.pruned.any() and not same.grown.any()
    # Drop everything: no weight is kept, each neuron's new mask is its top-3 |G|.
    fresh = dst.srigl_update(weight, mask, grad, drop_fraction=1.0, sparsity=0.7,
                             ablation=False)
    top3 = np.argsort(-np.abs(grad), axis=1, kind="stable")[:, :3]
    expected = np.zeros_like(mask)
    np.put_along_axis(expected, top3, True, axis=1)
    assert np.array_equal(fresh.mask, expected)


# -- reference and property tests ----------------------------------------------------------

@settings(max_examples=80)
@given(layer=layers(), drop=fractions, gamma=st.floats(0.0, 1.0), ablation=st.booleans())
def test_srigl_matches_reference_over_update_sequences(layer, drop, gamma, ablation):
    weight, mask, seed, ties, sparsity = layer
    rng = np.random.default_rng(seed + 1)
    for _ in range(3):
        grad = sample_values(rng, weight.shape, ties, weight.dtype)
        copies = weight.copy(), mask.copy(), grad.copy()
        result = dst.srigl_update(weight, mask, grad, drop_fraction=drop, sparsity=sparsity,
                                  gamma_sal=gamma, ablation=ablation)
        for original, copy in zip((weight, mask, grad), copies):
            assert np.array_equal(original, copy)          # inputs untouched
        new_mask, new_weight, ablated, fan_in, regrown = _reference_srigl(
            weight, mask, grad, drop, sparsity, gamma, ablation)
        assert np.array_equal(result.mask, new_mask)
        assert np.array_equal(result.weight, new_weight)
        assert np.array_equal(result.regrown, regrown)
        assert result.ablated.tolist() == ablated.tolist() and result.fan_in == fan_in
        _assert_srigl_result(result, weight, mask, sparsity, ablation)
        again = dst.srigl_update(weight, mask, grad, drop_fraction=drop, sparsity=sparsity,
                                 gamma_sal=gamma, ablation=ablation)
        assert np.array_equal(again.mask, result.mask)
        assert np.array_equal(again.weight, result.weight)
        # A training step: every active weight moves (grown ones leave 0).
        weight = result.weight + sample_values(rng, weight.shape, ties, weight.dtype) * result.mask
        mask = result.mask


@settings(max_examples=60)
@given(layer=layers(structured=False), drop=fractions)
def test_rigl_matches_reference_and_keeps_nnz(layer, drop):
    weight, mask, seed, ties, _ = layer
    rng = np.random.default_rng(seed + 2)
    for _ in range(3):
        grad = sample_values(rng, weight.shape, ties, weight.dtype)
        copies = weight.copy(), mask.copy(), grad.copy()
        result = dst.rigl_update(weight, mask, grad, drop_fraction=drop)
        for original, copy in zip((weight, mask, grad), copies):
            assert np.array_equal(original, copy)
        new_mask, new_weight, regrown = _reference_rigl(weight, mask, grad, drop)
        assert np.array_equal(result.mask, new_mask)
        assert np.array_equal(result.weight, new_weight)
        assert np.array_equal(result.regrown, regrown)
        assert result.mask.sum() == mask.sum()
        assert np.all(result.weight[result.grown] == 0)
        assert np.all(result.weight[~result.mask] == 0)
        dst.check_invariants(result.weight, result.mask)
        weight = result.weight + sample_values(rng, weight.shape, ties, weight.dtype) * result.mask
        mask = result.mask


@settings(max_examples=60)
@given(layer=layers(structured=False), drop=fractions)
def test_set_keeps_nnz_grows_off_the_kept_set_and_repeats_per_seed(layer, drop):
    weight, mask, seed, _, _ = layer
    result = dst.set_update(weight, mask, drop_fraction=drop, rng=np.random.default_rng(seed))
    again = dst.set_update(weight, mask, drop_fraction=drop, rng=np.random.default_rng(seed))
    assert np.array_equal(result.mask, again.mask)
    assert result.mask.sum() == mask.sum()
    # The kept set is RigL's (same drop rule): it survives, and growth happens off it.
    w = weight.reshape(-1)
    nonzero, n_keep, n_prune = _reference_keep(w, mask.reshape(-1), drop)
    kept = np.zeros(w.size, dtype=bool)
    kept[_top(nonzero, np.abs(w), n_keep)] = True
    kept = kept.reshape(mask.shape)
    assert np.all(result.mask[kept])
    assert np.count_nonzero(result.mask & ~kept) == n_prune
    assert np.all(result.weight[result.grown] == 0)
    assert np.all(result.weight[~result.mask] == 0)


def test_set_grows_uniformly_and_depends_on_the_seed():
    mask = np.zeros((50, 40), dtype=bool)
    mask[:, :4] = True
    weight = np.where(mask, 1.0, 0.0)
    # All |W| tie, so the 100 kept are the lowest flat indices: neurons 0-24. The 100
    # grown are drawn from the other 1900 positions, the 100 just dropped included.
    kept = np.zeros_like(mask)
    kept[:25, :4] = True
    hits = np.zeros(mask.shape)
    for seed in range(40):
        r = dst.set_update(weight, mask, drop_fraction=0.5, rng=np.random.default_rng(seed))
        assert np.all(r.mask[kept]) and np.count_nonzero(r.mask & ~kept) == 100
        hits += r.mask & ~kept
    frequency = hits[~kept] / 40
    assert frequency.mean() == pytest.approx(100 / 1900)
    # Dropped positions come back as often as never-active ones (no bias either way).
    assert hits[25:, :4].mean() / 40 == pytest.approx(100 / 1900, abs=0.02)
    assert hits[:, 4:].mean(axis=0).max() / 40 < 100 / 1900 + 0.04
    a = dst.set_update(weight, mask, drop_fraction=0.5, rng=np.random.default_rng(0))
    b = dst.set_update(weight, mask, drop_fraction=0.5, rng=np.random.default_rng(1))
    assert not np.array_equal(a.mask, b.mask)


class SRigLTraining(RuleBasedStateMachine):
    """Interleave SRigL updates and training steps; invariants hold after every rule."""

    @initialize(shape=shapes, sparsity=sparsities, seed=st.integers(0, 2**32 - 1))
    def start(self, shape, sparsity, seed):
        self.rng = np.random.default_rng(seed)
        self.sparsity = sparsity
        self.mask = dst.constant_fan_in_mask(shape, sparsity, self.rng)
        self.weight = self.rng.standard_normal(shape).astype(np.float32) * self.mask
        self.fan_in = dst.fan_in_after_ablation(shape, sparsity, 0)
        self.ablated = np.zeros(0, np.int64)

    @rule(drop=fractions, gamma=st.floats(0.0, 1.0), ablation=st.booleans())
    def update(self, drop, gamma, ablation):
        grad = self.rng.standard_normal(self.weight.shape).astype(np.float32)
        result = dst.srigl_update(self.weight, self.mask, grad, drop_fraction=drop,
                                  sparsity=self.sparsity, gamma_sal=gamma, ablation=ablation)
        _assert_srigl_result(result, self.weight, self.mask, self.sparsity, ablation)
        self.weight, self.mask = result.weight, result.mask
        self.fan_in, self.ablated = result.fan_in, result.ablated

    @rule()
    def train(self):
        noise = self.rng.standard_normal(self.weight.shape).astype(np.float32)
        self.weight = self.weight + noise * self.mask

    @invariant()
    def layer_is_valid(self):
        dst.check_invariants(self.weight, self.mask, self.fan_in, self.ablated,
                             budget=dst.layer_budget(self.weight.shape, self.sparsity))


TestSRigLTraining = SRigLTraining.TestCase
TestSRigLTraining.settings = settings(max_examples=25, stateful_step_count=8, deadline=None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_weight_keeps_shape_and_dtype(dtype):
    rng = np.random.default_rng(5)
    shape = (8, 3, 3, 3)
    mask = dst.constant_fan_in_mask(shape, 0.8, rng)
    weight = (rng.standard_normal(shape) * mask).astype(dtype)
    grad = rng.standard_normal(shape).astype(dtype)
    r = dst.srigl_update(weight, mask, grad, drop_fraction=0.3, sparsity=0.8)
    assert r.mask.shape == shape and r.weight.dtype == dtype
    # Neurons are filters: the fan-in is counted over (in_channels, kh, kw).
    counts = r.mask.reshape(8, -1).sum(axis=1)
    assert set(counts.tolist()) <= {0, r.fan_in}


# -- masks, budgets, schedules, distributions ------------------------------------------------

@given(shape=shapes, sparsity=st.floats(0.0, 0.995), seed=st.integers(0, 2**32 - 1))
def test_constant_fan_in_mask_properties(shape, sparsity, seed):
    mask = dst.constant_fan_in_mask(shape, sparsity, np.random.default_rng(seed))
    k = dst.fan_in_after_ablation(shape, sparsity, 0)
    assert mask.shape == shape and mask.dtype == bool
    assert np.all(mask.reshape(shape[0], -1).sum(axis=1) == k)
    assert np.array_equal(mask, dst.constant_fan_in_mask(shape, sparsity,
                                                         np.random.default_rng(seed)))


def test_constant_fan_in_mask_is_uniform_per_neuron():
    mask = dst.constant_fan_in_mask((4000, 5), 0.6, np.random.default_rng(1))
    assert np.all(mask.sum(axis=1) == 2)
    # Each input is chosen with probability 2/5; 4000 draws: std of the mean ~0.008.
    assert np.all(np.abs(mask.mean(axis=0) - 0.4) < 0.04)


@given(shape=shapes, sparsity=st.floats(0.0, 0.995), seed=st.integers(0, 2**32 - 1),
       data=st.data())
def test_constant_fan_in_mask_with_ablated_neurons(shape, sparsity, seed, data):
    n = shape[0]
    ablated = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n - 1))
    mask = dst.constant_fan_in_mask(shape, sparsity, np.random.default_rng(seed),
                                    ablated=ablated)
    k = dst.fan_in_after_ablation(shape, sparsity, len(ablated))
    counts = mask.reshape(n, -1).sum(axis=1)
    kept = np.setdiff1d(np.arange(n), ablated)
    assert mask.shape == shape and mask.dtype == bool
    assert np.all(counts[ablated] == 0) and np.all(counts[kept] == k)
    dst.check_invariants(np.where(mask, 1.0, 0.0), mask, fan_in=k, ablated=ablated,
                         budget=dst.layer_budget(shape, sparsity))
    # The other neurons keep the inputs they would have without ablation, up to k.
    plain = dst.constant_fan_in_mask(shape, sparsity, np.random.default_rng(seed))
    k0 = dst.fan_in_after_ablation(shape, sparsity, 0)
    rows, plain_rows = mask.reshape(n, -1)[kept], plain.reshape(n, -1)[kept]
    smaller, larger = (rows, plain_rows) if k <= k0 else (plain_rows, rows)
    assert np.all(larger[smaller])


def test_constant_fan_in_mask_without_ablation_is_unchanged():
    """ablated=() draws exactly what the mask always drew (pinned on a known layer)."""
    shape = (6, 2, 3, 3)
    a = dst.constant_fan_in_mask(shape, 0.7, np.random.default_rng(3))
    b = dst.constant_fan_in_mask(shape, 0.7, np.random.default_rng(3), ablated=())
    keys = -np.random.default_rng(3).random((6, 18))
    expected = np.zeros((6, 18), dtype=bool)
    np.put_along_axis(expected, np.argsort(keys, axis=1, kind="stable")[:, -5:], True, axis=1)
    assert np.array_equal(a, b)
    assert np.array_equal(a.reshape(6, 18), expected)


@pytest.mark.parametrize("ablated, fragment", [
    ([0.5], "integer neuron indices"),
    ([True], "integer neuron indices"),
    ([[0, 1]], "integer neuron indices"),
    ([4], r"in \[0, 4\), got \[4\]"),
    ([-1], r"in \[0, 4\)"),
    ([1, 1], "not repeat"),
    ([0, 1, 2, 3], "at least one of the 4 neurons"),
])
def test_constant_fan_in_mask_refuses_bad_ablated(ablated, fragment):
    with pytest.raises(ValueError, match=f"ablated must .*{fragment}"):
        dst.constant_fan_in_mask((4, 10), 0.7, np.random.default_rng(0), ablated=ablated)


@given(shape=shapes, sparsity=st.floats(0.0, 0.995), seed=st.integers(0, 2**32 - 1))
def test_random_mask_holds_the_budget_and_repeats_per_seed(shape, sparsity, seed):
    mask = dst.random_mask(shape, sparsity, np.random.default_rng(seed))
    assert mask.shape == shape and mask.dtype == bool
    assert int(mask.sum()) == dst.layer_budget(shape, sparsity)
    assert np.array_equal(mask, dst.random_mask(shape, sparsity, np.random.default_rng(seed)))


def test_random_mask_draws_one_permutation():
    """The active positions are the first ``budget`` of rng.permutation(N), pinned."""
    mask = dst.random_mask((8, 3, 2), 0.75, np.random.default_rng(9))
    expected = np.zeros(48, dtype=bool)
    expected[np.random.default_rng(9).permutation(48)[:12]] = True
    assert np.array_equal(mask.reshape(-1), expected)
    assert not np.array_equal(mask, dst.random_mask((8, 3, 2), 0.75, np.random.default_rng(10)))
    # Unstructured: over many neurons the fan-ins differ.
    wide = dst.random_mask((200, 50), 0.9, np.random.default_rng(0))
    assert wide.sum() == 1000 and len(set(wide.sum(axis=1).tolist())) > 1


def test_random_mask_refuses_bad_arguments():
    with pytest.raises(ValueError, match="sparsity"):
        dst.random_mask((4, 4), 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape"):
        dst.random_mask((4,), 0.5, np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        dst.random_mask((4, 4), 0.5, 0)


def test_fan_in_after_ablation_refuses_ablating_every_neuron():
    # The values, worked by hand, are in docs/tutorial.md (section 1).
    with pytest.raises(ValueError, match="n_ablated"):
        dst.fan_in_after_ablation((4, 3), 0.5, 4)


def test_cosine_drop_fraction():
    assert dst.cosine_drop_fraction(0, 0.3, 100) == pytest.approx(0.3)
    assert dst.cosine_drop_fraction(50, 0.3, 100) == pytest.approx(0.15)
    assert dst.cosine_drop_fraction(100, 0.3, 100) == pytest.approx(0.0)
    for args, fragment in [((0, 1.5, 10), "alpha"), ((0, 0.3, 0), "t_end"),
                           ((11, 0.3, 10), "step")]:
        with pytest.raises(ValueError, match=fragment):
            dst.cosine_drop_fraction(*args)


SHAPES = [(300, 784), (100, 300), (10, 100)]


def _nnz(shapes, sparsities):
    return sum(math.prod(s) * (1 - x) for s, x in zip(shapes, sparsities))


@given(sparsity=st.floats(0.0, 0.99), power=st.floats(0.0, 2.0),
       dense=st.sets(st.integers(0, 2), max_size=1))
def test_distributions_keep_the_global_budget(sparsity, power, dense):
    total = sum(math.prod(s) for s in SHAPES)
    if sum(math.prod(SHAPES[i]) for i in dense) >= (1 - sparsity) * total:
        for spread in (dst.erk_sparsities, dst.uniform_sparsities):
            with pytest.raises(ValueError, match="dense_layers"):
                spread(SHAPES, sparsity, dense_layers=tuple(dense))
        return
    for values in (dst.erk_sparsities(SHAPES, sparsity, power, dense_layers=tuple(dense)),
                   dst.uniform_sparsities(SHAPES, sparsity, dense_layers=tuple(dense))):
        assert len(values) == 3 and all(0.0 <= v < 1.0 for v in values)
        assert all(values[i] == 0.0 for i in dense)
        assert _nnz(SHAPES, values) == pytest.approx((1 - sparsity) * total, rel=1e-9)


@pytest.mark.parametrize("dense, error", [
    ((True,), TypeError), ((False,), TypeError), ((np.True_,), TypeError),
    (np.array([True, False, False]), TypeError), ((1.0,), TypeError), (("0",), TypeError),
    ((None,), TypeError), (3, TypeError), ("0", TypeError),
    ((-1,), ValueError), ((3,), ValueError), ((0, 0), ValueError), ((1, 2, 1), ValueError),
])
def test_distributions_refuse_bad_dense_layers(dense, error):
    # True would otherwise read as layer 1 (a mask taken for indices).
    for spread in (dst.erk_sparsities, dst.uniform_sparsities):
        with pytest.raises(error, match="dense_layers"):
            spread(SHAPES, 0.5, dense_layers=dense)


def test_dynamic_sparsity_refuses_bad_dense_layers():
    from srigl_np.nn.layers import Linear, Sequential
    from srigl_np.nn.optim import SGD
    from srigl_np.dst.sparsity import DynamicSparsity
    rng = np.random.default_rng(0)
    model = Sequential(Linear(8, 6, rng=rng), Linear(6, 4, rng=rng))
    optimizer = SGD(model.named_parameters(), lr=0.1)
    for dense, error in (((True,), TypeError), (1, TypeError), ((0, 0), ValueError),
                         ((2,), ValueError)):
        with pytest.raises(error, match="dense_layers"):
            DynamicSparsity(model, optimizer, method="rigl", sparsity=0.5, t_end=10,
                            dense_layers=dense)


def test_a_zero_budget_layer_with_no_weights_is_valid():
    shape, sparsity = (10, 10), 0.999999
    assert dst.layer_budget(shape, sparsity) == 0
    mask = dst.random_mask(shape, sparsity, np.random.default_rng(0))
    weight = np.zeros(shape, dtype=np.float32)
    assert not mask.any()
    dst.check_invariants(weight, mask, ablated=dst.INFER, budget=0)
    assert dst.invariant_violations(weight, mask, budget=0) == []
    # Only nnz == budget is excused: a budget of 5 with no weights still fails.
    assert [v.kind for v in dst.invariant_violations(weight, mask, budget=5)] == ["budget"]
    one = mask.copy()
    one[0, 0] = True
    weight[0, 0] = 1.0
    assert dst.invariant_violations(weight, one, budget=0) == []    # the fan-in floor of 1


def test_erk_with_power_zero_is_uniform_and_conv_kernels_count():
    assert dst.erk_sparsities(SHAPES, 0.8, power_scale=0.0) == pytest.approx([0.8] * 3)
    assert dst.uniform_sparsities(SHAPES, 0.8) == pytest.approx([0.8] * 3)
    # ERK: larger layers sparser; conv kernel dims enter sum/prod of the shape.
    erk = dst.erk_sparsities([(32, 1, 3, 3), (64, 32, 3, 3), (128, 9216), (10, 128)], 0.9)
    assert erk[1] > erk[0] and erk[2] > erk[3]
    assert dst.erk_sparsities(SHAPES, 0.0) == [0.0, 0.0, 0.0]


def test_distributions_refuse_bad_arguments():
    with pytest.raises(ValueError, match="sparsity"):
        dst.uniform_sparsities(SHAPES, 1.0)
    with pytest.raises(ValueError, match="dense_layers"):
        dst.erk_sparsities(SHAPES, 0.5, dense_layers=(3,))
    with pytest.raises(ValueError, match="dense_layers"):
        dst.uniform_sparsities(SHAPES, 0.99, dense_layers=(0,))    # 235200 > budget
    with pytest.raises(ValueError, match="power_scale"):
        dst.erk_sparsities(SHAPES, 0.5, power_scale=-1.0)
    with pytest.raises(ValueError, match="shape"):
        dst.erk_sparsities([(10,)], 0.5)


# -- validation and invariant checking ----------------------------------------------------------

def _layer():
    mask = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 0]], dtype=bool)
    return np.where(mask, 1.0, 0.0), mask


def test_check_invariants_accepts_a_valid_layer_and_names_each_violation():
    weight, mask = _layer()
    dst.check_invariants(weight, mask, fan_in=2, ablated=[2], layer="fc1", budget=4)
    assert issubclass(dst.InvariantError, AssertionError)
    cases = [
        (dict(fan_in=3, ablated=[2]), "layer 'fc1': neuron 0 has 2 active weights, "
                                      "expected fan-in 3"),
        (dict(fan_in=2), "neuron 2 has 0 active weights, expected fan-in 2"),
        (dict(fan_in=2, ablated=[1, 2]), "ablated neuron 1 has 2 active weights"),
        (dict(budget=3), "nnz 4 leaves the budget"),
        (dict(budget=6), "nnz 4 leaves the budget"),
    ]
    for kwargs, message in cases:
        with pytest.raises(dst.InvariantError, match=message):
            dst.check_invariants(weight, mask, layer="fc1", **kwargs)
    leaky = weight.copy()
    leaky[2, 0] = 0.5
    with pytest.raises(dst.InvariantError, match="outside the mask; first at neuron 2"):
        dst.check_invariants(leaky, mask, layer="fc1")


def test_check_invariants_allows_the_documented_budget_exceptions():
    # Fan-in floor of 1 above a budget of 2; fully dense neurons below a budget of 9.
    dst.check_invariants(np.eye(4), np.eye(4, dtype=bool), fan_in=1, budget=2)
    dst.check_invariants(np.ones((2, 3)), np.ones((2, 3), dtype=bool), fan_in=3, budget=9)


def test_check_invariants_infers_the_fan_in_and_the_ablated_neurons():
    weight, mask = _layer()                       # counts [2, 2, 0]
    dst.check_invariants(weight, mask, fan_in="infer", ablated="infer", budget=4)
    assert dst.invariant_violations(weight, mask, "infer", "infer", budget=4) == []
    # Inferred ablation: the empty neuron 2; inferred fan-in: the most common count.
    mask = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=bool)
    with pytest.raises(dst.InvariantError, match=(
            r"^layer 'fc1': neuron 2 has 1 active weights, expected fan-in 2 \(the most "
            r"common count; 2 of 4 active neurons differ\)$")):
        dst.check_invariants(np.where(mask, 1.0, 0.0), mask, "infer", "infer", layer="fc1")
    # Ties between counts go to the larger; without ablation inferred, empty rows count.
    mask = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)
    [violation] = dst.invariant_violations(mask * 1.0, mask, fan_in="infer")
    assert (violation.kind, violation.neuron, violation.expected, violation.got,
            violation.count) == ("fan_in", 0, 2, 1, 2)
    # No neuron with a weight: fan-in 1 is expected of each (the floor), and an all-empty
    # layer has no active neuron when the ablation is inferred.
    empty = np.zeros((2, 3), dtype=bool)
    assert [v.kind for v in dst.invariant_violations(empty * 1.0, empty, "infer")] == ["fan_in"]
    assert [v.kind for v in dst.invariant_violations(empty * 1.0, empty, "infer", "infer")] \
        == ["no_active_neuron"]


def test_check_invariants_reports_every_violation_at_once():
    weight, mask = _layer()
    weight[2, 0] = 0.5                            # off the mask
    weight[0, 2] = -2.0                           # off the mask
    with pytest.raises(dst.InvariantError) as info:
        dst.check_invariants(weight, mask, fan_in=3, ablated=[1], layer="fc1", budget=2)
    error = info.value
    assert [v.kind for v in error.violations] == [
        "outside_mask", "ablated_active", "fan_in", "budget"]
    assert str(error).splitlines() == [
        "layer 'fc1': 2 weights are non-zero outside the mask; first at neuron 0, input 2: "
        "-2.0",
        "layer 'fc1': ablated neuron 1 has 2 active weights, expected 0 (1 of 1 ablated "
        "neurons hold weights)",
        "layer 'fc1': neuron 0 has 2 active weights, expected fan-in 3 (2 of 2 active "
        "neurons differ)",
        "layer 'fc1': nnz 4 leaves the budget: expected 0 < nnz <= 2 for budget 2 with 2 "
        "active neurons",
    ]
    outside = error.violations[0]
    assert (outside.neuron, outside.expected, outside.got, outside.count) == (0, 0, -2.0, 2)
    assert error.violations[3].neuron is None and error.violations[3].got == 4
    # A message-only InvariantError (as the trainer re-raises) has no records.
    assert dst.InvariantError("step 3: ...").violations == []


def test_check_invariants_refuses_a_boolean_ablated_and_unknown_words():
    weight, mask = _layer()
    with pytest.raises(TypeError, match="ablated must hold neuron indices, not a boolean"):
        dst.check_invariants(weight, mask, fan_in=2, ablated=np.array([False, False, True]))
    with pytest.raises(TypeError, match="ablated"):
        dst.invariant_violations(weight, mask, ablated=[True])
    with pytest.raises(ValueError, match="ablated must be neuron indices or 'infer'"):
        dst.check_invariants(weight, mask, ablated="guess")
    with pytest.raises(ValueError, match="fan_in must be an integer, None or 'infer'"):
        dst.check_invariants(weight, mask, fan_in="most")
    with pytest.raises(ValueError, match=r"ablated must hold neuron indices in \[0, 3\)"):
        dst.check_invariants(weight, mask, ablated=[3])
    everyone = dst.invariant_violations(weight * 0, mask & False, fan_in=1, ablated=[0, 1, 2])
    assert [v.kind for v in everyone] == ["no_active_neuron"]


def _plain_violations(weight, mask, fan_in, ablated, budget):
    """(kind, first neuron, count) per broken invariant, neuron by neuron in Python."""
    n = weight.shape[0]
    rows, row_mask = weight.reshape(n, -1), mask.reshape(n, -1)
    counts = [int(row.sum()) for row in row_mask]
    found = []
    outside = [(i, j) for i in range(n) for j in range(rows.shape[1])
               if rows[i, j] != 0 and not row_mask[i, j]]
    if outside:
        found.append(("outside_mask", outside[0][0], len(outside)))
    holding = [i for i in sorted(set(ablated)) if counts[i] > 0]
    if holding:
        found.append(("ablated_active", holding[0], len(holding)))
    live = [i for i in range(n) if i not in ablated]
    if not live:
        if budget != 0:
            found.append(("no_active_neuron", None, n))
    elif fan_in is not None:
        wrong = [i for i in live if counts[i] != fan_in]
        if wrong:
            found.append(("fan_in", wrong[0], len(wrong)))
    if budget is not None:
        active = [c for c in counts if c > 0]
        nnz = sum(counts)
        if (nnz > budget and any(c != 1 for c in active)) or (
                nnz < budget and nnz <= budget - len(active) and not (active and all(
                    c == rows.shape[1] for c in active))):
            found.append(("budget", None, 1))
    return found


@given(shape=shapes, sparsity=sparsities, seed=st.integers(0, 2**32 - 1),
       flips=st.integers(0, 3), leaks=st.integers(0, 2), n_ablated=st.integers(0, 3))
def test_invariant_violations_match_a_neuron_by_neuron_check(shape, sparsity, seed, flips,
                                                             leaks, n_ablated):
    rng = np.random.default_rng(seed)
    n = shape[0]
    ablated = rng.choice(n, size=min(n_ablated, n), replace=False).tolist()
    mask = dst.constant_fan_in_mask(shape, sparsity, rng)
    fan_in = int(mask.reshape(n, -1).sum(axis=1)[0])
    flat = mask.reshape(-1)
    flat[rng.choice(flat.size, size=min(flips, flat.size), replace=False)] ^= True
    weight = np.where(mask, rng.uniform(0.5, 1.5, shape), 0.0)
    weight.reshape(-1)[rng.choice(flat.size, size=min(leaks, flat.size), replace=False)] = 2.0
    budget = dst.layer_budget(shape, sparsity)
    records = dst.invariant_violations(weight, mask, fan_in, ablated, budget=budget)
    assert [(v.kind, v.neuron, v.count) for v in records] == _plain_violations(
        weight, mask, fan_in, ablated, budget)
    # Inferring the ablated neurons takes exactly the empty rows.
    empty = np.flatnonzero(~mask.reshape(n, -1).any(axis=1)).tolist()
    assert dst.invariant_violations(weight, mask, fan_in, "infer") == \
        dst.invariant_violations(weight, mask, fan_in, empty)


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(mask=np.ones((3, 4))), TypeError, "mask must be bool"),
    (dict(mask=np.ones((4, 3), dtype=bool)), ValueError, "mask must have shape"),
    (dict(grad=np.ones((3, 5))), ValueError, "grad must have shape"),
    (dict(grad=np.ones((3, 4), dtype=np.int64)), TypeError, "grad must be"),
    (dict(grad=np.full((3, 4), np.nan)), ValueError, "grad must be finite"),
    (dict(weight=np.ones((3, 4), dtype=np.int32)), TypeError, "weight must be"),
    (dict(weight=np.ones(4), mask=np.ones(4, dtype=bool), grad=np.ones(4)), ValueError,
     "shape must be"),
    (dict(drop_fraction=1.2), ValueError, "drop_fraction must be in"),
    (dict(sparsity=1.0), ValueError, "sparsity must be in"),
    (dict(gamma_sal=-0.1), ValueError, "gamma_sal"),
])
def test_srigl_update_refuses_bad_arguments(kwargs, error, fragment):
    args = dict(weight=W3x4, mask=W3x4 != 0, grad=G3x4, drop_fraction=0.3, sparsity=0.5,
                gamma_sal=0.3)
    args.update(kwargs)
    with pytest.raises(error, match=fragment):
        dst.srigl_update(args.pop("weight"), args.pop("mask"), args.pop("grad"), **args)


def test_set_update_requires_a_generator():
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        dst.set_update(W3x4, W3x4 != 0, drop_fraction=0.3, rng=0)


def test_an_update_result_prints_in_a_few_lines_not_its_arrays():
    rng = np.random.default_rng(0)
    mask = dst.constant_fan_in_mask((10, 12), 0.8, rng)
    weight = (rng.standard_normal((10, 12)) * mask).astype(np.float32)
    grad = rng.standard_normal((10, 12)).astype(np.float32)
    result = dst.srigl_update(weight, mask, grad, drop_fraction=0.3, sparsity=0.8,
                              gamma_sal=0.3, trace=True)
    lines = repr(result).splitlines()
    assert len(lines) == 3 and str(result) == repr(result)
    assert lines[0] == (f"UpdateResult(shape=(10, 12), float32, k={result.fan_in}, "
                        f"nnz={int(result.mask.sum())}, pruned={int(result.pruned.sum())}, "
                        f"grown={int(result.grown.sum())}, regrown={int(result.regrown.sum())},")
    assert lines[1] == f"  ablated={result.ablated.tolist()},"
    trace = result.trace
    assert lines[2] == (f"  trace=UpdateTrace(srigl, d=0.3, n_ones={trace.n_ones}, "
                        f"n_keep={trace.n_keep}, n_prune={trace.n_prune}, "
                        f"threshold={trace.threshold_used}, "
                        f"salient_counts={trace.salient_counts.tolist()}, k0={trace.k0}, "
                        f"k={trace.fan_in}))")
    # A wide layer's ids are cut short, with their number.
    many = dst.UpdateResult(mask, weight, mask, mask, np.arange(40), 2)
    assert "15, ... (40 in all)]" in repr(many) and "trace=None" in repr(many)
