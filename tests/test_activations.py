"""Activations: finite-difference gradients away from the kinks, forward and backward
against torch (kinks included, where the derivative is a convention), float32 kept."""

import numpy as np
import pytest

from srigl_np.nn.activations import GELU, Hardsigmoid, Hardswish, Sigmoid

from gradcheck import check_layer_gradients, compare_with_torch

ACTIVATIONS = [Sigmoid, Hardsigmoid, Hardswish, GELU]
TORCH_NAMES = {Sigmoid: "Sigmoid", Hardsigmoid: "Hardsigmoid", Hardswish: "Hardswish",
               GELU: "GELU"}
KINKS = np.array([-3.0, 3.0])


def away_from_kinks(rng, shape, margin=1e-2):
    """Values in [-5, 5] (all three pieces of the hard ones) at least ``margin`` from ±3."""
    x = rng.uniform(-5, 5, shape)
    near = np.abs(np.abs(x) - 3) < margin
    return np.where(near, x + np.sign(x) * 2 * margin, x)


@pytest.mark.parametrize("layer_class", ACTIVATIONS)
def test_activation_gradients(layer_class):
    rng = np.random.default_rng(0)
    x = away_from_kinks(rng, (3, 4, 5))
    assert np.min(np.abs(np.abs(x) - KINKS[1])) > 1e-3
    check_layer_gradients(layer_class(), x)


@pytest.mark.parametrize("layer_class", ACTIVATIONS)
def test_activation_matches_torch_including_the_kinks(layer_class):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(-6, 6, 40), [-3.0, 3.0, 0.0, -40.0, 40.0]])
    module = getattr(torch.nn, TORCH_NAMES[layer_class])()
    # rtol 1e-7, not 1e-12: torch's float64 hardsigmoid backward multiplies by a float32 1/6.
    compare_with_torch(layer_class(), module, x.reshape(5, 9), {}, rtol=1e-7, atol=1e-15)


@pytest.mark.parametrize("layer_class", ACTIVATIONS)
def test_activation_keeps_float32(layer_class):
    layer = layer_class()
    x = np.linspace(-5, 5, 12, dtype=np.float32).reshape(3, 4)
    y = layer.forward(x, True)
    assert y.dtype == np.float32
    assert layer.backward(np.ones_like(y)).dtype == np.float32


def test_hard_activations_by_hand():
    x = np.array([-4.0, -3.0, -1.5, 0.0, 1.5, 3.0, 4.0])
    np.testing.assert_allclose(Hardsigmoid().forward(x, True),
                               [0, 0, 0.25, 0.5, 0.75, 1, 1])
    np.testing.assert_allclose(Hardswish().forward(x, True),
                               [0, 0, -0.375, 0, 1.125, 3, 4])
    hardswish = Hardswish()
    hardswish.forward(x, True)
    # PyTorch's choices at the kinks: the outer pieces' slopes, 0 at -3 and 1 at 3.
    np.testing.assert_allclose(hardswish.backward(np.ones(7)),
                               [0, 0, 0, 0.5, 1, 1, 1])
    hardsigmoid = Hardsigmoid()
    hardsigmoid.forward(x, True)
    np.testing.assert_allclose(hardsigmoid.backward(np.ones(7)),
                               [0, 0, 1 / 6, 1 / 6, 1 / 6, 0, 0])


def test_gelu_is_the_exact_erf_form_and_sigmoid_is_stable():
    x = np.array([-1.0, 0.0, 1.0, 2.0])
    phi = np.array([0.15865525393145707, 0.5, 0.8413447460685429, 0.9772498680518208])
    np.testing.assert_allclose(GELU().forward(x, True), x * phi, rtol=1e-14)
    with np.errstate(over="raise"):
        y = Sigmoid().forward(np.array([-1000.0, 0.0, 1000.0]), True)
    np.testing.assert_array_equal(y, [0.0, 0.5, 1.0])
