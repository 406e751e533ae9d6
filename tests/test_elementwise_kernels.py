"""The compiled elementwise passes of training (ReLU, dropout, the 2 x 2 max pool) against
their definitions, bit for bit: every dtype, the vector steps and scalar tails, one and
two threads, the values that trip up a vectorised select (NaN, +-0, +-inf, ties)."""

import numpy as np
import pytest

# inf * 0 (a dropped or gated infinity) is NaN on both sides of each comparison.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

from srigl_np import _training_kernels as compiled
from srigl_np import training_kernels
from srigl_np.nn.layers import Dropout, ReLU

from gradcheck import assert_close, numeric_grad

DTYPES = (np.float32, np.float64)
SPECIALS = (np.nan, -0.0, 0.0, -np.inf, np.inf, -1.0, 1.0)


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def _awkward(shape, dtype, seed):
    """Random values with the special ones sprinkled in."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    spots = rng.choice(flat.size, size=min(flat.size, 2 * len(SPECIALS)), replace=False)
    flat[spots] = np.resize(np.array(SPECIALS, dtype=dtype), spots.size)
    return x


# -- ReLU ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 7, 16384, 16384 * 2 + 5])   # chunk boundaries
@pytest.mark.parametrize("threads", [1, 2])
def test_relu_and_its_gradient_have_the_definitions_bits(dtype, size, threads):
    x = _awkward((size,), dtype, size)
    y = compiled.relu(x, np.empty_like(x), threads)
    assert _bits(y).tobytes() == _bits(np.maximum(x, 0)).tobytes()
    g = _awkward((size,), dtype, size + 1)
    dx = compiled.relu_grad(g, y, np.empty_like(g), threads)
    assert _bits(dx).tobytes() == _bits(g * (y > 0)).tobytes()


def test_relu_layer_in_place_and_on_views():
    x = _awkward((4, 6, 5), np.float32, 3)
    expected = np.maximum(x, 0)
    layer = ReLU(inplace=True)
    y = layer.forward(x, True)
    assert y is x and _bits(y).tobytes() == _bits(expected).tobytes()
    view = _awkward((6, 8), np.float64, 4)[:, ::2]       # not contiguous: the definition
    assert np.array_equal(ReLU().forward(view, True), np.maximum(view, 0), equal_nan=True)
    g = np.ones_like(x)
    assert layer.backward(g) is g


def test_relu_gradient_matches_finite_differences():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 8))
    x[np.abs(x) < 1e-3] = 0.5          # away from the kink, where the derivative exists
    layer = ReLU()
    w = rng.standard_normal(x.shape)
    layer.forward(x, True)
    analytic = layer.backward(w)
    assert_close("relu", analytic, numeric_grad(lambda: float((ReLU().forward(x, True)
                                                               * w).sum()), x))


def test_the_compiled_elementwise_passes_refuse_bad_arguments():
    x = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        compiled.relu(x.astype(np.int32), x)
    with pytest.raises(ValueError, match="out must be float32 of shape"):
        compiled.relu(x, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="y must be float32 of shape"):
        compiled.relu_grad(x, np.zeros(4, np.float64), x)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        compiled.dropout(np.zeros(8, np.float32)[::2], x, 1, 2**31, 2.0)
    with pytest.raises(ValueError, match="threshold must be in"):
        compiled.dropout(x, x, 1, 2**32 + 1, 2.0)
    with pytest.raises(ValueError, match="key must be in"):
        compiled.dropout(x, x, -1, 2**31, 2.0)
    with pytest.raises(ValueError, match="threads"):
        compiled.relu(x, x, -1)


# -- dropout ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 9, 16384 + 3, 16384 * 3])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("p", [0.25, 0.5, 0.1])
def test_dropout_has_the_definitions_bits(dtype, size, threads, p):
    x = _awkward((size,), dtype, size)
    key = 0xDEADBEEF12345678 + size
    threshold = training_kernels.dropout_threshold(p)
    y = compiled.dropout(x, np.empty_like(x), key, threshold, 1.0 / (1.0 - p), threads)
    keep = training_kernels.dropout_bits(key, size) >= threshold
    expected = x * np.multiply(keep, dtype(1.0 / (1.0 - p)), dtype=dtype)
    assert _bits(y).tobytes() == _bits(expected).tobytes()


def test_dropout_bits_are_uniform_and_the_threshold_exact():
    assert training_kernels.dropout_threshold(0.25) == 2**30
    assert training_kernels.dropout_threshold(0.5) == 2**31
    assert training_kernels.dropout_threshold(0.0) == 0
    bits = training_kernels.dropout_bits(2024, 400_000)
    assert bits.max() < 2**32
    # Each of 16 equal bins holds 1/16 of the draws, within 5 standard deviations.
    counts = np.bincount((bits >> 28).astype(np.int64), minlength=16)
    sd = np.sqrt(bits.size / 16 * (15 / 16))
    assert np.all(np.abs(counts - bits.size / 16) < 5 * sd)
    # A different key is a different stream; one key always the same one.
    assert not np.array_equal(bits[:64], training_kernels.dropout_bits(2025, 64))
    assert np.array_equal(bits[:64], training_kernels.dropout_bits(2024, 64))


def test_dropout_layer_masks_backward_with_the_forward_mask_and_repeats_with_the_seed():
    x = np.ones((64, 9, 10), np.float32)
    layer = Dropout(0.25, rng=np.random.default_rng(3))
    y = layer.forward(x, True)
    assert set(np.unique(y).tolist()) <= {0.0, np.float32(4 / 3)}
    assert abs((y == 0).mean() - 0.25) < 0.02
    g = np.arange(x.size, dtype=np.float32).reshape(x.shape)
    np.testing.assert_array_equal(layer.backward(g), g * y)     # the same mask
    again = Dropout(0.25, rng=np.random.default_rng(3)).forward(x, True)
    assert np.array_equal(again, y)
    assert not np.array_equal(layer.forward(x, True), y)        # the next draw differs
    assert layer.forward(x, False) is x and layer.backward(g) is g


def test_dropout_non_contiguous_and_integer_inputs_run_the_definition():
    rng_seed = 8
    x = np.arange(60, dtype=np.float64).reshape(6, 10)
    view = x[:, ::2]
    a = Dropout(0.5, rng=np.random.default_rng(rng_seed)).forward(view, True)
    b = Dropout(0.5, rng=np.random.default_rng(rng_seed)).forward(view.copy(), True)
    np.testing.assert_array_equal(a, b)                         # same mask, C order
    ints = Dropout(0.5, rng=np.random.default_rng(rng_seed)).forward(
        np.ones((3, 4), np.int64), True)
    assert ints.dtype == np.float64 and set(np.unique(ints).tolist()) <= {0.0, 2.0}


def test_dropout_gradient_matches_finite_differences():
    x = np.random.default_rng(6).standard_normal((4, 7))
    w = np.random.default_rng(7).standard_normal(x.shape)
    layer = Dropout(0.4, rng=np.random.default_rng(1))
    layer.forward(x, True)
    key = layer.key
    analytic = layer.backward(w)
    numeric = numeric_grad(lambda: float((training_kernels.dropout(x, key, 0.4) * w).sum()), x)
    assert_close("dropout", analytic, numeric)


# -- the 2 x 2 max pool -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out_w", [1, 2, 3, 4, 5, 8, 11, 12, 13, 20])   # vector steps, tails
@pytest.mark.parametrize("threads", [1, 2])
def test_the_2x2_max_pool_keeps_the_definitions_maxima_winners_and_gradient(dtype, out_w,
                                                                           threads):
    rng = np.random.default_rng(out_w)
    x = np.round(rng.standard_normal((2, 3, 6, 2 * out_w)), 1).astype(dtype)   # ties
    x = np.maximum(x, 0)                # as after a ReLU: many tied zeros
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, 6, replace=False)] = [np.nan, np.nan, -np.inf, np.inf,
                                                     -0.0, 1.0]
    y, cells = compiled.maxpool_tiled(x, 2, 2, threads)
    windows = x.reshape(2, 3, 3, 2, out_w, 2).transpose(0, 1, 2, 4, 3, 5).reshape(
        2, 3, 3, out_w, 4)
    best, first = windows[..., 0].copy(), np.zeros(y.shape, np.uint8)
    for cell in range(1, 4):        # the definition's rule: first maximum, a NaN wins
        take = (best == best) & ~(windows[..., cell] <= best)
        best = np.where(take, windows[..., cell], best)
        first[take] = cell
    assert _bits(y).tobytes() == _bits(best).tobytes()
    np.testing.assert_array_equal(cells, first)
    g = rng.standard_normal(y.shape).astype(dtype)
    dx = compiled.maxpool_tiled_grad(g, cells, 2, 2, threads)
    expected = np.zeros_like(windows)
    np.put_along_axis(expected, first[..., None].astype(np.intp), g[..., None], axis=-1)
    expected = expected.reshape(2, 3, 3, out_w, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(
        x.shape)
    np.testing.assert_array_equal(dx, expected)
