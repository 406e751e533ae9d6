"""Hypothesis strategies shared by the test files: ``from strategies import ...``.

Each strategy draws the *structure* (shapes, sparsity, counts) with hypothesis, so a
failure shrinks to a small case, and one integer ``seed`` from which a
``numpy.random.Generator`` fills the values. Everything a test needs to reproduce a
case by hand is in what the strategy returns.

Constant fan-in layers and update inputs come from the public kit,
``srigl_np.testing`` (``constant_fan_in_layers``, ``update_inputs``): the tests dog-food
it. What is here is what the kit lacks: layers with any mask, convolution problems,
whole sparse models, condensed weights, and the builders of seeded fan-in masks, which
come from ``dst.constant_fan_in_mask`` (its ablated= option removes neurons) the way
training starts them.
"""

import math
from typing import NamedTuple

import numpy as np
from hypothesis import strategies as st

from srigl_np import dst, testing
from srigl_np.nn.layers import Conv2d, Dropout, Flatten, Linear, ReLU, Sequential
from srigl_np.nn.pooling import MaxPool2d
from srigl_np.nn.normalization import BatchNorm1d, BatchNorm2d

seeds = st.integers(0, 2**32 - 1)
float_dtypes = testing.float_dtypes


# -- builders (plain functions; the strategies below call them) ---------------------------

def fan_in_mask(shape, fan_in, rng, ablated=()):
    """``dst.constant_fan_in_mask`` for an exact ``fan_in`` (>= 1) per live neuron: the
    sparsity that gives the live rows fan_in * n_live weights in all. Rows in
    ``ablated`` keep none."""
    n_out, dense_fan_in = shape[0], math.prod(shape[1:])
    if not 1 <= fan_in <= dense_fan_in:
        raise ValueError(f"fan_in must be in [1, {dense_fan_in}], got {fan_in}")
    n_live = n_out - len(set(ablated))
    sparsity = 1.0 - fan_in * n_live / (n_out * dense_fan_in)
    mask = dst.constant_fan_in_mask(shape, sparsity, rng, ablated=ablated)
    assert dst.fan_in_after_ablation(shape, sparsity, len(ablated)) == fan_in
    return mask


def fan_in_weight(shape, fan_in, rng, ablated=(), dtype=np.float32):
    """A weight of ``shape`` whose live rows keep ``fan_in`` non-zeros (fan_in_mask,
    values_on_mask); ``ablated`` rows are zero."""
    return values_on_mask(fan_in_mask(shape, fan_in, rng, ablated), rng, dtype)


def values_on_mask(mask, rng, dtype=np.float32):
    """Weights that are non-zero exactly on ``mask``: random sign, magnitude in [0.1, 1.1),
    so ``(weight != 0) == mask`` holds in any float dtype."""
    magnitude = rng.uniform(0.1, 1.1, mask.shape)
    sign = np.where(rng.random(mask.shape) < 0.5, -1.0, 1.0)
    return (sign * magnitude * mask).astype(dtype)


def sparse_weight(shape, sparsity, n_ablated, rng, dtype=np.float32):
    """(weight, mask, fan_in, ablated) for a layer of ``shape`` at ``sparsity`` with
    ``n_ablated`` neurons ablated, as SRigL leaves it: every live neuron has
    fan_in = dst.fan_in_after_ablation(shape, sparsity, n_ablated) inputs, ablated rows
    (a sorted random subset, int64) are all zero."""
    fan_in = dst.fan_in_after_ablation(shape, sparsity, n_ablated)
    ablated = np.sort(rng.choice(shape[0], size=n_ablated, replace=False)).astype(np.int64)
    mask = dst.constant_fan_in_mask(shape, sparsity, rng, ablated=ablated)
    return values_on_mask(mask, rng, dtype), mask, fan_in, ablated


# -- layers with any mask -------------------------------------------------------------------

class AnyMaskLayer(NamedTuple):
    """weight: zero off ``mask``; mask: bool, any pattern; ties: whether the values are
    small integers; seed: the generator that filled them (callers go on with seed + 1)."""
    weight: np.ndarray
    mask: np.ndarray
    ties: bool
    seed: int


def sample_values(rng, shape, ties, dtype):
    """Standard normal values, or (ties) integers -2..2: many exact ties and zeros."""
    if ties:
        return rng.integers(-2, 3, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


@st.composite
def any_mask_layers(draw, shapes=testing.layer_shapes, dtypes=testing.float_dtypes):
    """An AnyMaskLayer: the layer an update may meet that the kit's constant fan-in
    strategies (``srigl_np.testing.constant_fan_in_layers``) never draw, a RigL
    checkpoint's, say. Draws a shape, a dtype, a ties flag, a seed and a density in
    [0.05, 1]; the seed's generator draws each position's presence and the values
    (``sample_values``)."""
    shape, dtype = draw(shapes), draw(dtypes)
    ties, seed = draw(st.booleans()), draw(seeds)
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < draw(st.floats(0.05, 1.0))
    return AnyMaskLayer(sample_values(rng, shape, ties, dtype) * mask, mask, ties, seed)


# -- convolution problems -------------------------------------------------------------------

class ConvProblem(NamedTuple):
    """x_shape: (batch, channels, height, width); a kh x kw kernel, stride, padding and the
    dtype of x. out_h, out_w >= 1 (height + 2*padding >= kh, likewise the width)."""
    x_shape: tuple
    kh: int
    kw: int
    stride: int
    padding: int
    dtype: type

    @property
    def out_h(self):
        return (self.x_shape[2] + 2 * self.padding - self.kh) // self.stride + 1

    @property
    def out_w(self):
        return (self.x_shape[3] + 2 * self.padding - self.kw) // self.stride + 1


@st.composite
def conv_problems(draw, dtypes=float_dtypes, max_size=9, max_kernel=4, max_stride=3,
                  max_padding=2, max_batch=3, max_channels=3):
    """A ConvProblem: kh, kw in [1, max_kernel], stride in [1, max_stride], padding in
    [0, max_padding], then height and width in [max(1, kernel - 2*padding), max_size]
    (so at least one output pixel), batch and channels in [1, max_batch / max_channels],
    a dtype from ``dtypes``."""
    kh, kw = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
    stride, padding = draw(st.integers(1, max_stride)), draw(st.integers(0, max_padding))
    height = draw(st.integers(max(1, kh - 2 * padding), max(max_size, kh)))
    width = draw(st.integers(max(1, kw - 2 * padding), max(max_size, kw)))
    batch, channels = draw(st.integers(1, max_batch)), draw(st.integers(1, max_channels))
    return ConvProblem((batch, channels, height, width), kh, kw, stride, padding, draw(dtypes))


# -- small sparse models --------------------------------------------------------------------

class SparseModel(NamedTuple):
    """model: a float32 Sequential; x: a float32 input batch for it; seed: what filled the
    values; ablated: per Linear/Conv2d in order, the sorted rows that were zeroed."""
    model: Sequential
    x: np.ndarray
    seed: int
    ablated: list


def sparsify_model(model, rng, sparsities, n_ablated):
    """Give every Linear/Conv2d of ``model`` (in order) a constant fan-in weight at
    ``sparsities[i]`` with ``n_ablated[i]`` rows zeroed, a random bias, and every
    BatchNorm random running statistics (var in [0.5, 2)) and affine parameters.
    Returns the list of ablated rows per weighted layer."""
    weighted = [layer for layer in model.layers if isinstance(layer, (Linear, Conv2d))]
    ablated_rows = []
    for layer, sparsity, count in zip(weighted, sparsities, n_ablated, strict=True):
        weight = layer.params["weight"]
        weight[...], _, _, ablated = sparse_weight(weight.shape, sparsity, count, rng)
        ablated_rows.append(ablated)
        if "bias" in layer.params:
            layer.params["bias"][...] = 0.3 * rng.standard_normal(weight.shape[0])
    for layer in model.layers:
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            n = layer.num_features
            layer.buffers["running_mean"][...] = rng.standard_normal(n)
            layer.buffers["running_var"][...] = rng.uniform(0.5, 2.0, n)
            layer.params["weight"][...] = rng.uniform(0.5, 1.5, n)
            layer.params["bias"][...] = rng.standard_normal(n)
    return ablated_rows


def _mlp_layers(draw, rng):
    n_in = draw(st.integers(1, 12))
    widths = draw(st.lists(st.integers(1, 10), min_size=1, max_size=3))
    layers, width = [], n_in
    for hidden in widths[:-1]:
        layers.append(Linear(width, hidden, rng=rng))
        if draw(st.booleans()):
            layers.append(BatchNorm1d(hidden))
        layers.append(ReLU())
        if draw(st.booleans()):
            layers.append(Dropout(0.5))
        width = hidden
    layers.append(Linear(width, widths[-1], rng=rng))
    return layers, (n_in,)


def _cnn_layers(draw, rng):
    in_channels, size = draw(st.integers(1, 3)), draw(st.integers(4, 8))
    layers, channels, height = [], in_channels, size
    for i in range(draw(st.integers(1, 2))):
        kernel = draw(st.integers(1, min(3, height)))
        padding, stride = draw(st.integers(0, 1)), draw(st.integers(1, 2))
        out_channels = draw(st.integers(1, 6))
        layers.append(Conv2d(channels, out_channels, kernel, stride=stride, padding=padding,
                             rng=rng))
        height = (height + 2 * padding - kernel) // stride + 1
        if draw(st.booleans()):
            layers.append(BatchNorm2d(out_channels))
        layers.append(ReLU())
        if height >= 2 and draw(st.booleans()):
            layers.append(MaxPool2d(2))
            height = (height - 2) // 2 + 1
        channels = out_channels
    layers.append(Flatten())
    features = channels * height * height
    if draw(st.booleans()):
        layers.append(BatchNorm1d(features))
    layers.append(Linear(features, draw(st.integers(1, 6)), rng=rng))
    return layers, (in_channels, size, size)


@st.composite
def sparse_models(draw, kinds=st.sampled_from(["mlp", "cnn"]), max_batch=4):
    """A SparseModel. Draws a kind from ``kinds``:
    "mlp": Linear layers (n_in <= 12, 1-3 layers of width <= 10), each hidden one followed
    by an optional BatchNorm1d, a ReLU and an optional Dropout(0.5);
    "cnn": a (channels <= 3, size x size, size in [4, 8]) input, 1-2 blocks of Conv2d
    (kernel <= 3, stride <= 2, padding <= 1, <= 6 channels), optional BatchNorm2d, ReLU,
    optional MaxPool2d(2); then Flatten, an optional BatchNorm1d and a Linear (<= 6 outputs).
    Then per Linear/Conv2d a sparsity in [0, 0.9] and a number of ablated neurons in
    [0, n_out - 1], a seed filling the weights (constant fan-in, see sparse_weight), biases
    and BatchNorm statistics (sparsify_model), and x: (batch <= max_batch, *input) float32."""
    kind, seed = draw(kinds), draw(seeds)
    rng = np.random.default_rng(seed)
    layers, input_shape = (_mlp_layers if kind == "mlp" else _cnn_layers)(draw, rng)
    model = Sequential(*layers)
    weighted = [layer for layer in layers if isinstance(layer, (Linear, Conv2d))]
    sparsities = [draw(st.floats(0.0, 0.9)) for _ in weighted]
    n_ablated = [draw(st.integers(0, layer.params["weight"].shape[0] - 1)) for layer in weighted]
    ablated = sparsify_model(model, rng, sparsities, n_ablated)
    batch = draw(st.integers(1, max_batch))
    x = rng.standard_normal((batch,) + input_shape).astype(np.float32)
    return SparseModel(model, x, seed, ablated)


# -- condensed weights ----------------------------------------------------------------------

@st.composite
def condensed_weights(draw, index_dtype, n_in=st.integers(1, 120), n_active=st.integers(1, 40),
                      max_k=300):
    """(values, indices, n_in): the arrays of ``CondensedWeights(values, indices, n_in)``.

    Draws n_in from ``n_in`` (values past the range of ``index_dtype`` are filtered out),
    n_active from ``n_active``, a fan-in k in [1, min(n_in, max_k)] and a seed, whose
    generator fills indices[n_active, k] of ``index_dtype`` (each row k distinct inputs in
    [0, n_in), ascending: the k smallest of n_in uniform keys, ties to the lower index)
    and then values[n_active, k] float32 (standard normal)."""
    limit = int(np.iinfo(index_dtype).max) + 1
    width = draw(n_in.filter(lambda n: n <= limit))
    rows = draw(n_active)
    k = draw(st.integers(1, min(width, max_k)))
    rng = np.random.default_rng(draw(seeds))
    keys = rng.random((rows, width))
    indices = np.sort(np.argsort(keys, axis=1, kind="stable")[:, :k], axis=1)
    values = rng.standard_normal((rows, k)).astype(np.float32)
    return values, indices.astype(index_dtype), width
