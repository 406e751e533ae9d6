"""The compiled GELU, LayerNorm and softmax (``_kernels.gelu``, ``layer_norm``,
``softmax``, the Vision Transformer's steps between its condensed products) against their
NumPy definitions in float64.

Every case runs on each CPU path of the build (``set_cpu_path``; a path this CPU cannot
run is skipped) and on 1 and 2 threads, with the serial thresholds lowered so that small
arrays do split into several work items; the results must be the same bits on either
thread count (each element or row is computed the same way wherever it falls).
"""

import math

import numpy as np
import pytest
from scipy.special import erf

from srigl_np import _kernels, thread_policy
from srigl_np.kernels import gelu, layer_norm, softmax



@pytest.fixture
def split_small(monkeypatch):
    """Thresholds lowered so that arrays of a few elements run on several threads in
    several work items."""
    monkeypatch.setattr(thread_policy, "GRAIN_WORK", 1)
    monkeypatch.setattr(_kernels, "ROWWISE_SERIAL", 0)
    monkeypatch.setattr(_kernels, "GELU_CHUNK", 5)


def gelu_definition(x):
    x = x.astype(np.float64)
    return x / 2 * (1 + erf(x / math.sqrt(2)))


def layer_norm_definition(x, weight, bias, eps):
    x = x.astype(np.float64)
    centred = x - x.mean(axis=-1, keepdims=True)
    return centred / np.sqrt((centred ** 2).mean(axis=-1, keepdims=True) + eps) * weight + bias


def softmax_definition(x):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


SHAPES = [(1,), (1, 1), (3, 17), (2, 5, 33), (4, 64), (1, 197)]


@pytest.mark.parametrize("shape", SHAPES)
def test_gelu_matches_the_definition_on_every_path_and_thread_count(shape, path,
                                                                     split_small):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    x.flat[0] = 12.0 if x.size > 1 else x.flat[0]       # past the clamp
    one = gelu(x, 1)
    # The fit's float32 error (tools/fit_erf.py: 3.8e-7 on erf) times |x| / 2, plus
    # float32 rounding of the result.
    bound = 4e-7 * np.maximum(np.abs(x), 1)
    assert one.dtype == np.float32 and one.shape == x.shape
    assert (np.abs(one - gelu_definition(x)) <= bound).all()
    np.testing.assert_array_equal(gelu(x, 2), one)


def test_gelu_over_its_whole_range_is_within_the_fit(path):
    x = np.linspace(-10, 10, 200_001, dtype=np.float32)
    error = np.abs(gelu(x) - gelu_definition(x)) / np.maximum(np.abs(x), 1)
    assert error.max() < 4e-7
    assert np.isnan(gelu(np.array([np.nan], np.float32)))[0]
    assert gelu(np.array([np.inf], np.float32))[0] == np.inf


@pytest.mark.parametrize("shape", SHAPES)
def test_layer_norm_matches_the_definition_on_every_path_and_thread_count(shape, path,
                                                                          split_small):
    rng = np.random.default_rng(len(shape) + shape[-1])
    x = (rng.standard_normal(shape) * 3 + 5).astype(np.float32)
    weight = rng.standard_normal(shape[-1]).astype(np.float32)
    bias = rng.standard_normal(shape[-1]).astype(np.float32)
    one = layer_norm(x, weight, bias, 1e-5, 1)
    expected = layer_norm_definition(x, weight, bias, 1e-5)
    np.testing.assert_allclose(one, expected, rtol=0, atol=2e-5 * max(1, np.abs(expected).max()))
    np.testing.assert_array_equal(layer_norm(x, weight, bias, 1e-5, 2), one)


@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_matches_the_definition_on_every_path_and_thread_count(shape, path,
                                                                      split_small):
    rng = np.random.default_rng(7 * len(shape) + shape[-1])
    x = (rng.standard_normal(shape) * 6).astype(np.float32)
    one = softmax(x, 1)
    expected = softmax_definition(x)
    # The polynomial's 1.1e-7 (tools/fit_exp.py) plus the float32 rounding of x - max.
    np.testing.assert_allclose(one, expected, rtol=3e-6, atol=1e-30)
    np.testing.assert_array_equal(softmax(x, 2), one)


def test_softmax_of_far_apart_and_nan_rows(path):
    x = np.array([[0.0, -200.0, 1000.0], [1.0, np.nan, 2.0]], np.float32)
    y = softmax(x)
    assert y[0, 2] == 1 and y[0, 0] < 1e-37 and y[0, 1] < 1e-37
    assert np.isnan(y[1]).all()


@pytest.mark.parametrize("function, args", [
    (gelu, ()), (softmax, ()),
    (layer_norm, (np.ones(6, np.float32), np.zeros(6, np.float32), 1e-5)),
])
def test_out_may_be_x_and_a_strided_x_is_copied_first(function, args):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((4, 12)).astype(np.float32)
    strided = base[:, ::2]                   # not C-contiguous: copied, base untouched
    expected = function(np.ascontiguousarray(strided), *args)
    before = base.copy()
    np.testing.assert_array_equal(function(strided, *args), expected)
    np.testing.assert_array_equal(base, before)
    x = np.ascontiguousarray(strided)
    assert function(x, *args, out=x) is x
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("call, error, match", [
    (lambda: gelu(np.ones(3)), TypeError, "x must be a float32"),
    (lambda: gelu([1.0]), TypeError, "x must be a float32"),
    (lambda: gelu(np.ones(3, np.float32), out=np.ones(3)), TypeError, "out must be"),
    (lambda: gelu(np.ones(3, np.float32), out=np.ones(4, np.float32)), ValueError,
     "out must have x's shape"),
    (lambda: gelu(np.ones(4, np.float32), out=np.ones(8, np.float32)[::2]), ValueError,
     "out must be C-contiguous"),
    (lambda: gelu(np.ones(3, np.float32), threads=-1), ValueError, "threads"),
    (lambda: softmax(np.ones((2, 0), np.float32)), ValueError, "last axis of at least 1"),
    (lambda: layer_norm(np.ones((2, 3), np.float32), np.ones(4, np.float32),
                        np.ones(4, np.float32), 1e-5), ValueError, r"shape \(3,\)"),
    (lambda: layer_norm(np.ones((2, 3), np.float32), np.ones(3), np.ones(3, np.float32),
                        1e-5), TypeError, "weight must be"),
    (lambda: layer_norm(np.ones((2, 3), np.float32), np.ones(3, np.float32),
                        np.ones(3, np.float32), 0.0), ValueError, "eps must be"),
])
def test_bad_arguments_are_refused_naming_them(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_out_overlapping_x_partly_is_refused():
    buffer = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="out must be x itself or not overlap it"):
        gelu(buffer[:6], out=buffer[2:])
