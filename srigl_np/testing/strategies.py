"""Hypothesis strategies that draw what an update sees: ``constant_fan_in_layers``,
``ablated_layers`` and ``update_inputs`` (tie-break rule and value choices: the package
notes)."""

import math
from typing import NamedTuple

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .. import dst
from .reference import METHODS, _check_choice

__all__ = ["Layer", "UpdateInputs", "ablated_layers", "boundary_fractions",
           "constant_fan_in_layers", "conv_shapes", "float_dtypes", "layer_shapes",
           "linear_shapes", "update_inputs"]

# Small on purpose: a counterexample's diff has one row per neuron, one column per input.
linear_shapes = st.tuples(st.integers(1, 6), st.integers(1, 8))
conv_shapes = st.tuples(st.integers(1, 4), st.integers(1, 2), st.integers(1, 2),
                        st.integers(1, 2))
layer_shapes = st.one_of(linear_shapes, conv_shapes)
float_dtypes = st.sampled_from([np.float32, np.float64])
# Fractions t/d (d <= 8) half the time: γ_sal·k0 and n_ones·drop_fraction then land on
# integers, where floor, ceil, round and the denominators k0, F part ways.
boundary_fractions = st.one_of(
    st.sampled_from(sorted({t / d for d in range(1, 9) for t in range(d + 1)})),
    st.floats(0.0, 1.0))

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
    mask = dst.top_per_row(keys.astype(np.float64), counts).reshape(shape)
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
