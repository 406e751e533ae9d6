"""Conformance kit: property-test your own SRigL (or RigL) update against srigl_np's.

Like ``hypothesis.extra.numpy`` this module is public and imports hypothesis
(``pip install hypothesis``). It has three parts (docs/conformance.md walks through them):

* strategies that draw what an update sees: ``constant_fan_in_layers``,
  ``ablated_layers`` and ``update_inputs`` (a layer, its dense gradient, the drop
  fraction, γ_sal and whether the layer may ablate);
* assertion helpers that report every broken invariant of a layer at once:
  ``assert_constant_fan_in``, ``assert_valid_update`` (and ``update_violations``, the
  records behind it), built on ``dst.invariant_violations``;
* ``check_update``: draws inputs, runs your update and ``dst.srigl_update`` (or
  ``dst.rigl_update``) on each, compares the masks and the weights, and returns the
  shrunk counterexample with a per-neuron diff of the two masks (or raises it).

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
the reference follow their rule instead (``srigl_reference``). With n neurons, dense
fan-in F, budget B = dst.layer_budget(shape, sparsity), nnz = the old mask's count and
k0 = floor(B/n):

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
fan-in k               min(F, max(1, floor(B/n_active)))    min(F, floor(B/n_active)); 0 is
                       (never 0: one weight per neuron)     refused (ValueError), as their
                                                            ``get_fan_in_after_ablation`` does
=====================  ===================================  ==================================

The authors' reading is the same update with those three rules swapped: step 2 (which
neurons stay active) is computed from the reading's numbers, then ``dst.srigl_update``
itself runs steps 4-5 on the active neurons alone (ablation off, with its drop fraction
and sparsity chosen so that it keeps the same n_keep weights at fan-in k). Not modelled:
their fallback when k would exceed F (it re-ablates all but ceil(nnz/F) neurons; the
clip to F stands in), and the order in which their per-neuron cap drops surplus kept
weights (a sort of a boolean mask; srigl_np keeps the k largest |W|). ``check_update``
with ``reading="authors"`` draws only budgets of at least one weight per neuron, where
their k is never 0.

Every random choice comes from hypothesis, seeded by ``check_update(seed=...)``.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

try:
    from hypothesis import HealthCheck, Phase, Verbosity, given, seed as hypothesis_seed
    from hypothesis import settings as hypothesis_settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as exc:   # pragma: no cover - exercised without hypothesis only
    raise ImportError("srigl_np.testing needs hypothesis: pip install hypothesis") from exc

from . import dst

__all__ = [
    "ConformanceError", "Counterexample", "Layer", "READINGS", "UpdateInputs",
    "ablated_layers", "assert_constant_fan_in", "assert_valid_update", "check_update",
    "constant_fan_in_layers", "conv_shapes", "float_dtypes", "layer_shapes",
    "linear_shapes", "reference_update", "srigl_reference", "update_inputs",
    "update_violations",
]

READINGS = ("srigl_np", "authors")
METHODS = ("srigl", "rigl")

# Small on purpose: a counterexample's diff has one row per neuron, one column per input.
linear_shapes = st.tuples(st.integers(1, 6), st.integers(1, 8))
conv_shapes = st.tuples(st.integers(1, 4), st.integers(1, 2), st.integers(1, 2),
                        st.integers(1, 2))
layer_shapes = st.one_of(linear_shapes, conv_shapes)
float_dtypes = st.sampled_from([np.float32, np.float64])


# -- strategies ---------------------------------------------------------------------------

class Layer(NamedTuple):
    """A constant fan-in layer as SRigL leaves it.

    weight:   (n, *fan_in_dims) float32/float64, 0 off ``mask``.
    mask:     bool, same shape; every neuron not in ``ablated`` has ``fan_in`` ones.
    sparsity: 1 - budget/N, so dst.layer_budget(shape, sparsity) == budget.
    budget:   the layer's weight budget, in [1, N].
    fan_in:   dst.fan_in_after_ablation(shape, sparsity, len(ablated)).
    ablated:  int64, sorted indices of the neurons with no weights.
    """

    weight: np.ndarray
    mask: np.ndarray
    sparsity: float
    budget: int
    fan_in: int
    ablated: np.ndarray

    @property
    def shape(self):
        return self.weight.shape


def _values(draw, shape, ties):
    """float64 of ``shape``: integers -3..3 (ties, exact zeros) or distinct non-zero ones."""
    if ties:
        return draw(hnp.arrays(np.int64, shape, elements=st.integers(-3, 3))).astype(np.float64)
    size = math.prod(shape)
    magnitude = np.array(draw(st.permutations(range(1, size + 1))), dtype=np.float64)
    negative = draw(hnp.arrays(np.bool_, shape))
    return np.where(negative, -1.0, 1.0) * magnitude.reshape(shape)


@st.composite
def constant_fan_in_layers(draw, *, shapes=layer_shapes, dtypes=float_dtypes, ablation=False,
                           min_ablated=0, ties=True, budget_below_neurons=True):
    """A ``Layer``. Draws, in this order (so failures shrink to small, simple layers):

    * a shape from ``shapes`` (default: Linear (n <= 6, F <= 8) or Conv2d (n <= 4,
      in <= 2, kh, kw <= 2)) and a dtype from ``dtypes`` (float32 or float64);
    * a budget B in [1, N], or in [n, N] when ``budget_below_neurons`` is False (then
      every neuron can hold a weight, and the fan-in floor of 1 never acts);
    * with ``ablation``: between ``min_ablated`` and n - 1 ablated neurons (at least one
      neuron stays active), which ones by a drawn permutation;
    * each active neuron's ``fan_in`` inputs: the largest of drawn keys in 0..7 (ties:
      the lower input), so shrinking moves them to the first inputs;
    * the weights on the mask: integers -3..3 when ``ties`` (exact zeros on the mask
      included: a grown weight is 0), else distinct non-zero integers, in the dtype.
    """
    shape = draw(shapes)
    dtype = draw(dtypes)
    n, size = shape[0], math.prod(shape)
    budget = draw(st.integers(1 if budget_below_neurons else min(n, size), size))
    sparsity = 1.0 - budget / size
    n_ablated = draw(st.integers(min(min_ablated, n - 1), n - 1)) if ablation else 0
    ablated = np.zeros(0, dtype=np.int64)
    if n_ablated:
        ablated = np.sort(draw(st.permutations(range(n)))[:n_ablated]).astype(np.int64)
    fan_in = dst.fan_in_after_ablation(shape, sparsity, n_ablated)
    counts = np.full(n, fan_in)
    counts[ablated] = 0
    keys = draw(hnp.arrays(np.int64, (n, size // n), elements=st.integers(0, 7)))
    mask = dst._top_per_row(keys.astype(np.float64), counts).reshape(shape)
    weight = (_values(draw, shape, ties) * mask).astype(dtype)
    return Layer(weight, mask, sparsity, budget, fan_in, ablated)


def ablated_layers(*, shapes=layer_shapes, **options):
    """``constant_fan_in_layers`` with at least one ablated neuron (shapes with n >= 2);
    ``options`` are its other keywords (dtypes, ties, budget_below_neurons)."""
    return constant_fan_in_layers(shapes=shapes.filter(lambda shape: shape[0] >= 2),
                                  ablation=True, min_ablated=1, **options)


class UpdateInputs(NamedTuple):
    """One topology update's inputs, named as dst.srigl_update's arguments.

    weight, mask: a ``Layer``'s; grad: (same shape) the dense gradient, the weight's dtype;
    drop_fraction, sparsity, gamma_sal, ablation: the update's keyword arguments.
    """

    weight: np.ndarray
    mask: np.ndarray
    grad: np.ndarray
    drop_fraction: float
    sparsity: float
    gamma_sal: float
    ablation: bool

    @property
    def budget(self):
        return dst.layer_budget(self.weight.shape, self.sparsity)

    def kwargs(self, method="srigl"):
        """The keyword arguments of ``dst.srigl_update`` (or ``rigl_update``) for these."""
        _check_choice("method", method, METHODS)
        if method == "rigl":
            return {"drop_fraction": self.drop_fraction}
        return {"drop_fraction": self.drop_fraction, "sparsity": self.sparsity,
                "gamma_sal": self.gamma_sal, "ablation": self.ablation}


@st.composite
def update_inputs(draw, *, layers=None, drop_fractions=st.floats(0.0, 1.0),
                  gamma_sals=st.floats(0.0, 1.0), ablation=st.booleans(), ties=True,
                  budget_below_neurons=True):
    """``UpdateInputs``. Draws a layer from ``layers`` (default: constant_fan_in_layers
    with ablated neurons allowed, ``ties`` and ``budget_below_neurons`` passed on), then
    the dense gradient (integers -3..3 when ``ties``: ties and exact zeros; else distinct
    non-zero integers), a drop fraction from ``drop_fractions`` (default [0, 1]), γ_sal
    from ``gamma_sals`` (default [0, 1]) and the ablation flag from ``ablation``
    (default either; pass ``st.just(False)`` for an implementation without ablation)."""
    if layers is None:
        layers = constant_fan_in_layers(ablation=True, ties=ties,
                                        budget_below_neurons=budget_below_neurons)
    layer = draw(layers)
    grad = _values(draw, layer.weight.shape, ties).astype(layer.weight.dtype)
    return UpdateInputs(layer.weight, layer.mask, grad, draw(drop_fractions), layer.sparsity,
                        draw(gamma_sals), draw(ablation))


# -- the reference, in either reading ------------------------------------------------------

def srigl_reference(weight, mask, grad, *, drop_fraction, sparsity, gamma_sal=0.3,
                    ablation=True, reading="srigl_np"):
    """``dst.srigl_update`` under ``reading`` (see the module notes): "srigl_np" is
    dst.srigl_update itself, "authors" swaps in the authors' γ_sal threshold, minimum
    number of active neurons and fan-in rule. Returns a dst.UpdateResult."""
    _check_choice("reading", reading, READINGS)
    kwargs = dict(drop_fraction=drop_fraction, sparsity=sparsity, gamma_sal=gamma_sal,
                  ablation=ablation)
    if reading == "srigl_np":
        return dst.srigl_update(weight, mask, grad, **kwargs)
    return _srigl_by_reading(weight, mask, grad, reading=reading, **kwargs)


def reference_update(inputs, *, method="srigl", reading="srigl_np"):
    """The reference result for ``UpdateInputs``: srigl_reference, or dst.rigl_update."""
    _check_choice("method", method, METHODS)
    if method == "rigl":
        if reading != "srigl_np":
            raise ValueError(f"reading {reading!r} applies to method 'srigl' only")
        return dst.rigl_update(inputs.weight, inputs.mask, inputs.grad,
                               **inputs.kwargs("rigl"))
    return srigl_reference(inputs.weight, inputs.mask, inputs.grad, reading=reading,
                           **inputs.kwargs("srigl"))


def _srigl_by_reading(weight, mask, grad, *, drop_fraction, sparsity, gamma_sal, ablation,
                      reading):
    """dst.srigl_update with step 2 (ablation) and step 3 (k) under ``reading``.

    Steps 1-2 as in dst (its helpers, so the same rankings and ties); steps 4-5 are
    dst.srigl_update on the active rows alone with ablation off: a drop fraction that
    makes it keep the same n_keep weights, a sparsity that makes its fan-in k.
    """
    rows, row_mask, row_grad = dst._check_update_args(weight, mask, grad, drop_fraction)
    dst._check_sparsity(sparsity)
    if not 0.0 <= gamma_sal <= 1.0:
        raise ValueError(f"gamma_sal must be in [0, 1], got {gamma_sal}")
    n, dense_fan_in = rows.shape
    budget = dst.layer_budget(weight.shape, sparsity)
    index, magnitude = dst._keep_candidates(rows, row_mask)
    n_keep, n_prune = dst._keep_and_prune_counts(row_mask, index.size, drop_fraction)

    active = np.ones(n, dtype=bool)
    threshold, min_active, max_active = _ablation_numbers(
        reading, n, dense_fan_in, budget, int(np.count_nonzero(row_mask)), gamma_sal)
    if ablation and threshold is not None:
        keep = dst._top_positions(index, magnitude, n_keep, rows.shape)
        top_grad = dst._top_per_row(np.abs(row_grad).reshape(1, -1), np.array([n_prune]))
        salient_counts = np.count_nonzero(keep | top_grad.reshape(rows.shape), axis=1)
        active, _ = dst._active_neurons(salient_counts, threshold, min_active, max_active)
    fan_in = _fan_in(reading, budget, int(active.sum()), dense_fan_in)

    active_mask = row_mask[active]
    n_ones = int(np.count_nonzero(active_mask))
    target = min(n_keep, int(np.count_nonzero(active[index // dense_fan_in])))
    # floor(n_ones * drop) = n_ones - target exactly: the +0.5 keeps rounding off the floor.
    drop = 1.0 if target == 0 else (n_ones - target + 0.5) / n_ones
    part = dst.srigl_update(rows[active], active_mask, row_grad[active], drop_fraction=drop,
                            sparsity=1.0 - fan_in / dense_fan_in, ablation=False)
    if part.fan_in != fan_in:   # the sparsity above is chosen to make them equal
        raise dst.InvariantError(f"steps 4-5 ran at fan-in {part.fan_in}, expected {fan_in}")
    new_mask = np.zeros(rows.shape, dtype=bool)
    new_mask[active] = part.mask
    regrown = np.zeros(rows.shape, dtype=bool)
    regrown[active] = part.regrown
    return dst._result(weight, mask, rows, row_mask, new_mask,
                       np.flatnonzero(~active).astype(np.int64), fan_in, regrown=regrown)


def _ablation_numbers(reading, n, dense_fan_in, budget, nnz, gamma_sal):
    """Step 2 under ``reading``: (threshold or None for no ablation, min_active, max_active)."""
    if reading == "srigl_np":
        return dst._ablation_rule(n, dense_fan_in, budget, gamma_sal)
    if gamma_sal == 0:
        return None, n, n
    threshold = 1 if gamma_sal >= 1 else max(1, math.floor(gamma_sal * dense_fan_in))
    return threshold, min(n, -(-nnz // dense_fan_in) + 1), n


def _fan_in(reading, budget, n_active, dense_fan_in):
    if reading == "srigl_np":
        return dst._fan_in(budget, n_active, dense_fan_in)
    if budget < n_active:
        raise ValueError(f"fan-in after ablation is 0 in the authors' reading: budget "
                         f"{budget} < {n_active} active neurons (srigl_np keeps one weight "
                         f"per neuron)")
    return min(dense_fan_in, budget // n_active)


# -- assertion helpers -----------------------------------------------------------------------

def assert_constant_fan_in(weight, mask, fan_in="infer", ablated="infer", *, budget=None,
                           sparsity=None, layer=""):
    """Raise dst.InvariantError listing every invariant the layer breaks, else return.

    weight: (n, *fan_in_dims), mask: same shape, bool. By default the fan-in is the most
    common count and the ablated neurons are those with no weight (pass integers / index
    sequences to require specific ones); ``budget`` (or ``sparsity``, which gives it)
    adds the budget check. See dst.invariant_violations for the checks.
    """
    if sparsity is not None:
        if budget is not None:
            raise ValueError("pass budget or sparsity, not both")
        budget = dst.layer_budget(weight.shape, sparsity)
    dst.check_invariants(weight, mask, fan_in, ablated, layer=layer, budget=budget)


def update_violations(before, after, *, method="srigl", sparsity=None, drop_fraction=None):
    """Every rule one update breaks, as a list of dst.Violation (empty: a valid update).

    before: the layer before, ``(weight, mask)`` or an object with ``.weight``, ``.mask``;
    after: the same for the layer after, e.g. a dst.UpdateResult (its ``fan_in``,
    ``ablated``, ``pruned`` and ``grown``, when present, are checked too). Checks:
    * the layer after: dst.invariant_violations with its fan-in and ablated neurons
      (inferred when not given; method "srigl" only), and with ``sparsity`` the budget;
    * "kept_weight": a position in both masks keeps its old value;
    * "grown_weight": a position new to the mask starts at 0;
    * "pruned_record" / "grown_record": ``after.pruned`` / ``after.grown`` are exactly
      old & ~new / new & ~old;
    * RigL/SET ("rigl", "set"): "nnz": nnz is unchanged; with ``drop_fraction``,
      "pruned_count": at most n_prune positions left the mask, n_prune =
      n_ones - min(n_ones - floor(n_ones*drop_fraction), non-zero active weights).
    """
    _check_choice("method", method, ("srigl", "rigl", "set"))
    if drop_fraction is not None and method == "srigl":
        raise ValueError("drop_fraction bounds the pruned count of RigL/SET only; SRigL's "
                         "per-neuron cap and ablation may prune more")
    weight, mask = _weight_and_mask("before", before)
    new_weight, new_mask = _weight_and_mask("after", after)
    if new_weight.shape != weight.shape:
        raise ValueError(f"after must have the shape of before {weight.shape}, got "
                         f"{new_weight.shape}")
    budget = None if sparsity is None else dst.layer_budget(weight.shape, sparsity)
    if method == "srigl":
        fan_in = getattr(after, "fan_in", None)
        ablated = getattr(after, "ablated", None)
        violations = dst.invariant_violations(
            new_weight, new_mask, "infer" if fan_in is None else fan_in,
            "infer" if ablated is None else ablated, budget=budget)
    else:
        violations = dst.invariant_violations(new_weight, new_mask)

    n = weight.shape[0]
    kept, grown = mask & new_mask, new_mask & ~mask
    changed = kept & (new_weight != weight)
    violations += _position_violations(
        "kept_weight", changed, n, lambda i: f"before {weight.flat[i].item()!r}, after "
                                             f"{new_weight.flat[i].item()!r}",
        "kept weights changed value")
    violations += _position_violations(
        "grown_weight", grown & (new_weight != 0), n,
        lambda i: repr(new_weight.flat[i].item()),
        "grown weights are non-zero (a new weight starts at 0)")
    for name, expected in (("pruned", mask & ~new_mask), ("grown", grown)):
        record = getattr(after, name, None)
        if record is not None:
            wrong = np.asarray(record).astype(bool).reshape(weight.shape) != expected
            violations += _position_violations(
                f"{name}_record", wrong, n, lambda i, e=expected: f"expected {bool(e.flat[i])}",
                f"positions of after.{name} are wrong")

    if method != "srigl":
        nnz_before, nnz_after = int(mask.sum()), int(new_mask.sum())
        if nnz_after != nnz_before:
            violations.append(dst.Violation(
                "nnz", None, nnz_before, nnz_after, 1,
                f"nnz changed from {nnz_before} to {nnz_after}, expected it unchanged"))
        if drop_fraction is not None:
            n_ones = nnz_before
            nonzero = int(np.count_nonzero(mask & (weight != 0)))
            n_prune = n_ones - min(n_ones - math.floor(n_ones * drop_fraction), nonzero)
            n_pruned = int(np.count_nonzero(mask & ~new_mask))
            if n_pruned > n_prune:
                violations.append(dst.Violation(
                    "pruned_count", None, f"<= {n_prune}", n_pruned, 1,
                    f"{n_pruned} positions left the mask, expected at most n_prune = "
                    f"{n_prune} (drop_fraction {drop_fraction}, {n_ones} ones)"))
    return violations


def assert_valid_update(before, after, *, method="srigl", sparsity=None, drop_fraction=None,
                        layer=""):
    """Raise dst.InvariantError listing every rule the update breaks (update_violations),
    one line each, prefixed by ``layer``; its ``violations`` holds the records."""
    violations = update_violations(before, after, method=method, sparsity=sparsity,
                                   drop_fraction=drop_fraction)
    if violations:
        where = f"layer {layer!r}: " if layer else ""
        raise dst.InvariantError("\n".join(where + v.message for v in violations), violations)


def _weight_and_mask(name, layer):
    """(weight, mask) as NumPy arrays from a (weight, mask) pair or a .weight/.mask object."""
    if hasattr(layer, "weight") and hasattr(layer, "mask"):
        weight, mask = layer.weight, layer.mask
    else:
        try:
            weight, mask = layer
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a (weight, mask) pair or have .weight and "
                            f".mask, got {type(layer).__name__}") from None
    weight, mask = np.asarray(weight), np.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"{name}: the mask must be bool, got {mask.dtype} (pairs are "
                        f"(weight, mask))")
    if mask.shape != weight.shape:
        raise ValueError(f"{name}: mask shape {mask.shape} differs from weight shape "
                         f"{weight.shape}")
    return weight, mask


def _position_violations(kind, wrong, n, detail, what):
    """[] or one Violation for the positions flagged in ``wrong`` (weight-shaped bool)."""
    flat = np.flatnonzero(wrong)
    if not flat.size:
        return []
    first = int(flat[0])
    neuron, column = divmod(first, wrong.size // n)
    return [dst.Violation(kind, neuron, None, detail(first), flat.size,
                          f"{flat.size} {what}; first at neuron {neuron}, input {column}: "
                          f"{detail(first)}")]


# -- the harness -----------------------------------------------------------------------------

class ConformanceError(AssertionError):
    """check_update(..., raise_on_mismatch=True) found a counterexample (``counterexample``)."""

    def __init__(self, counterexample):
        super().__init__(str(counterexample))
        self.counterexample = counterexample


@dataclass(frozen=True, eq=False)
class Counterexample:
    """The smallest inputs hypothesis found on which an update disagrees with the reference.

    inputs:    UpdateInputs (NumPy, the reference's layout).
    method:    "srigl" or "rigl"; reading: the reference's reading.
    expected:  the reference's dst.UpdateResult.
    mask, weight: their result mapped back by ``from_theirs`` (bool mask), None if their
               call failed; error: "ExceptionType: message" then, else None.
    neurons:   int64, the neurons whose masks differ (the diff's "*" rows); all of them
               when their call failed.
    weight_mismatches: int64 flat indices where the masks agree but the weights differ.
    violations: dst.Violation records of their layer (fan-in, ablation, budget, mask).
    ``str()`` gives the readable diff (``diff``).
    """

    inputs: UpdateInputs
    method: str
    reading: str
    expected: dst.UpdateResult
    mask: np.ndarray | None
    weight: np.ndarray | None
    error: str | None
    neurons: np.ndarray
    weight_mismatches: np.ndarray
    violations: list

    @property
    def diff(self):
        return _format_counterexample(self)

    def __str__(self):
        return self.diff


class _Mismatch(Exception):
    def __init__(self, counterexample):
        super().__init__("update mismatch")
        self.counterexample = counterexample


def check_update(update, *, method="srigl", reading="srigl_np", to_theirs=None,
                 from_theirs=None, inputs=None, ties=True, compare_weights=True,
                 max_examples=200, seed=0, raise_on_mismatch=False):
    """Property-test ``update`` against the reference; return the shrunk Counterexample,
    or None when every drawn example agrees.

    update:      your function, called ``update(*to_theirs(weight, mask, grad), **kwargs)``
                 with the keyword arguments of dst.srigl_update (drop_fraction, sparsity,
                 gamma_sal, ablation) or, for method "rigl", of rigl_update (drop_fraction).
    to_theirs:   (weight, mask, grad) NumPy arrays (copies) -> your positional arguments
                 (a tuple; anything else is passed as one); default: the arrays as they are.
    from_theirs: your result -> (new_mask, new_weight) array-likes in the weight's shape
                 (mask bool or 0/1); default: ``.mask``/``.weight`` of the result (a
                 dst.UpdateResult), else the result unpacked as a pair.
    method:      "srigl" (reference srigl_reference) or "rigl" (dst.rigl_update).
    reading:     "srigl_np" or "authors" (module notes; "srigl" only).
    inputs:      a strategy of UpdateInputs; default update_inputs(ties=ties), with budgets
                 of at least one weight per neuron under reading "authors".
    ties:        False draws distinct magnitudes, for rankings that break ties otherwise.
    compare_weights: also compare the weights where the two masks agree (kept weights
                 keep their value, grown ones are 0).
    max_examples, seed: hypothesis's example count and seed (same seed, same run).
    raise_on_mismatch: raise ConformanceError (an AssertionError carrying the
                 counterexample) instead of returning it: the form for a test suite.

    Your function raising, or returning arrays of the wrong shape, is a counterexample too.
    """
    _check_choice("method", method, METHODS)
    _check_choice("reading", reading, READINGS)
    if method == "rigl" and reading != "srigl_np":
        raise ValueError(f"reading {reading!r} applies to method 'srigl' only")
    if not callable(update):
        raise TypeError(f"update must be callable, got {type(update).__name__}")
    if inputs is None:
        inputs = update_inputs(ties=ties, budget_below_neurons=reading == "srigl_np")
    to_theirs = to_theirs or (lambda weight, mask, grad: (weight, mask, grad))
    from_theirs = from_theirs or _default_from_theirs

    @hypothesis_settings(max_examples=max_examples, deadline=None, database=None,
                         derandomize=False, verbosity=Verbosity.quiet, print_blob=False,
                         report_multiple_bugs=False, suppress_health_check=list(HealthCheck),
                         phases=(Phase.explicit, Phase.generate, Phase.shrink))
    @hypothesis_seed(seed)
    @given(inputs)
    def agrees(case):
        found = _compare(update, case, method, reading, to_theirs, from_theirs,
                         compare_weights)
        if found is not None:
            raise _Mismatch(found)

    try:
        agrees()
    except _Mismatch as mismatch:
        if raise_on_mismatch:
            raise ConformanceError(mismatch.counterexample) from None
        return mismatch.counterexample
    return None


def _default_from_theirs(result):
    if hasattr(result, "mask") and hasattr(result, "weight"):
        return result.mask, result.weight
    new_mask, new_weight = result
    return new_mask, new_weight


def _compare(update, case, method, reading, to_theirs, from_theirs, compare_weights):
    """None when ``update`` agrees with the reference on ``case``, else a Counterexample."""
    expected = reference_update(case, method=method, reading=reading)
    shape = case.weight.shape
    mask = weight = error = None
    try:
        args = to_theirs(case.weight.copy(), case.mask.copy(), case.grad.copy())
        result = update(*(args if isinstance(args, tuple) else (args,)), **case.kwargs(method))
        mask, weight = (np.asarray(a) for a in from_theirs(result))
        for name, a in (("mask", mask), ("weight", weight)):
            if a.shape != shape:
                raise ValueError(f"from_theirs gave a {name} of shape {a.shape}, expected "
                                 f"{shape}")
        if mask.dtype != bool:
            if not np.isin(mask, (0, 1)).all():
                raise ValueError("from_theirs gave a mask with values other than 0 and 1 "
                                 "(it returns (new_mask, new_weight))")
            mask = mask != 0
    except Exception as exc:   # their failure is a finding, reported with its inputs
        mask = weight = None
        error = f"{type(exc).__name__}: {exc}"
    n = shape[0]
    if error is None:
        neurons = np.flatnonzero((mask != expected.mask).reshape(n, -1).any(axis=1))
        agree = mask == expected.mask
        weight_mismatches = np.flatnonzero(
            agree & (weight.astype(np.float64) != expected.weight.astype(np.float64))
            if compare_weights else np.zeros(0))
        if not neurons.size and not weight_mismatches.size:
            return None
        violations = dst.invariant_violations(
            weight.astype(np.float64), mask, "infer" if method == "srigl" else None,
            "infer" if method == "srigl" else (),
            budget=case.budget if method == "srigl" else None)
    else:
        neurons, weight_mismatches, violations = np.arange(n), np.zeros(0, np.int64), []
    return Counterexample(case, method, reading, expected, mask, weight, error,
                          neurons.astype(np.int64), weight_mismatches.astype(np.int64),
                          violations)


# -- the readable diff -------------------------------------------------------------------------

LEGEND = "one character per input: # kept  + grown  - pruned  . absent"


def _format_counterexample(found):
    case, expected = found.inputs, found.expected
    n = case.weight.shape[0]
    reference = (f"dst.{found.method}_update" if found.reading == "srigl_np"
                 else f"srigl_reference(reading={found.reading!r})")
    if found.error is not None:
        head = f"their {found.method} update raised {found.error} (reference: {reference})"
    elif found.neurons.size:
        head = (f"their {found.method} update disagrees with {reference} on "
                f"{found.neurons.size} of {n} neurons; first: neuron {found.neurons[0]}")
    else:
        neuron = found.weight_mismatches[0] // (case.weight.size // n)
        head = (f"their {found.method} update keeps the masks of {reference} but not its "
                f"weights at {_count(found.weight_mismatches.size, 'position')}; first: "
                f"neuron {neuron}")
    settings = ", ".join(f"{key} {value!r}" for key, value in case.kwargs(found.method).items())
    lines = [head,
             f"inputs: weight {case.weight.shape} {case.weight.dtype}, budget {case.budget}, "
             f"{settings}",
             "reference: " + _summary(case.mask, expected.mask)]
    if found.mask is not None:
        lines.append("theirs:    " + _summary(case.mask, found.mask))
    lines.append(LEGEND)
    lines += _table(case, expected.mask, found.mask, found.neurons)
    if found.weight_mismatches.size:
        lines.append(_weight_lines(case, expected.weight, found.weight, found.weight_mismatches))
    if found.violations:
        lines.append("their layer breaks:")
        lines += ["  " + v.message for v in found.violations]
    return "\n".join(lines)


def _summary(old_mask, new_mask):
    """'fan-in 2, ablated [1], pruned 3, grown 3' for one result."""
    n = old_mask.shape[0]
    counts = new_mask.reshape(n, -1).sum(axis=1)
    positive = np.unique(counts[counts > 0])
    fan_in = ("none" if not positive.size else str(positive[0]) if positive.size == 1
              else f"varies {positive[0]}..{positive[-1]}")
    pruned = int(np.count_nonzero(old_mask & ~new_mask))
    grown = int(np.count_nonzero(new_mask & ~old_mask))
    return (f"fan-in {fan_in}, ablated {np.flatnonzero(counts == 0).tolist()}, "
            f"pruned {pruned}, grown {grown}")


def _grid(old_row, new_row):
    """One character per input of a neuron: # kept, + grown, - pruned, . absent."""
    codes = np.array(list(".+-#"))
    return "".join(codes[old_row.astype(int) * 2 + new_row.astype(int)])


def _numbers(row):
    return " ".join(f"{value:g}" for value in row)


def _table(case, expected_mask, their_mask, neurons, max_rows=16):
    """The per-neuron rows: before, reference, theirs, |W|, |G|; "*" marks a difference."""
    n = case.weight.shape[0]
    old, grad = case.mask.reshape(n, -1), np.abs(case.grad.reshape(n, -1))
    magnitude = np.abs(case.weight.reshape(n, -1))
    ours = expected_mask.reshape(n, -1)
    theirs = None if their_mask is None else their_mask.reshape(n, -1)
    shown = np.arange(n) if n <= max_rows else neurons[:max_rows]
    differ = np.zeros(n, dtype=bool)
    differ[neurons] = True
    rows = [["", "neuron", "before", "reference", "theirs", "|W|", "|G|"]]
    for i in shown:
        rows.append(["*" if differ[i] and theirs is not None else "", str(i),
                     _grid(old[i], old[i]), _grid(old[i], ours[i]),
                     "?" if theirs is None else _grid(old[i], theirs[i]),
                     _numbers(magnitude[i]), _numbers(grad[i])])
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if c == 1 else cell.ljust(w)
                       for c, (cell, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    if len(shown) < n:
        lines.append(f"({n - len(shown)} more neurons not shown)")
    return lines


def _weight_lines(case, expected_weight, their_weight, positions, limit=5):
    fan = case.weight.size // case.weight.shape[0]
    parts = [f"neuron {p // fan}, input {p % fan}: reference "
             f"{float(expected_weight.flat[p]):g}, theirs {float(their_weight.flat[p]):g}"
             for p in positions[:limit]]
    more = f" (and {positions.size - limit} more)" if positions.size > limit else ""
    return (f"weights differ at {_count(positions.size, 'position')} where both masks "
            f"agree: " + "; ".join(parts) + more)


def _count(count, noun):
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, "
                         f"got {value!r}")
