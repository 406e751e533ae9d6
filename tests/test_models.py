"""The two architectures: shapes, parameter counts, determinism, and that they learn."""

import numpy as np
import pytest

from srigl_np.nn.layers import Conv2d, Dropout, Linear
from srigl_np.nn.losses import accuracy, softmax_cross_entropy
from srigl_np.nn.models import MODEL_NAMES, build
from srigl_np.nn.optim import SGD

# (layer index, weight shape) of every Linear/Conv2d, and the total parameter count.
ARCHITECTURES = {
    "mlp": ([(1, (300, 784)), (3, (100, 300)), (5, (10, 100))], 266_610),
    "cnn": ([(0, (32, 1, 3, 3)), (2, (64, 32, 3, 3)), (7, (128, 9216)), (10, (10, 128))],
            1_199_882),
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_architecture_and_output_shape(name):
    model = build(name, rng=np.random.default_rng(0))
    weights, n_params = ARCHITECTURES[name]
    params = model.named_parameters()
    assert [(i, params[f"{i}.weight"].shape) for i, _ in weights] == weights
    assert sum(p.size for p in params.values()) == n_params
    assert all(p.dtype == np.float32 for p in params.values())
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    for training in (True, False):
        y = model.forward(x, training)
        assert y.shape == (3, 10) and y.dtype == np.float32


def test_cnn_has_the_dropout_rates_of_the_spec():
    model = build("cnn", rng=np.random.default_rng(0))
    assert [layer.p for layer in model.layers if isinstance(layer, Dropout)] == [0.25, 0.5]
    assert [type(layer) for layer in model.layers if isinstance(layer, (Conv2d, Linear))] == \
        [Conv2d, Conv2d, Linear, Linear]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_same_seed_same_model_and_same_training_step(name):
    x = np.random.default_rng(2).standard_normal((4, 1, 28, 28)).astype(np.float32)
    results = []
    for seed in (5, 5, 6):
        model = build(name, rng=np.random.default_rng(seed))
        y = model.forward(x, True)                      # dropout draws from the model's rng
        _, grad = softmax_cross_entropy(y, np.arange(4))
        model.backward(grad)
        results.append((y, model.named_grads()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    for key in results[0][1]:
        np.testing.assert_array_equal(results[0][1][key], results[1][1][key])
    assert not np.array_equal(results[0][0], results[2][0])


def test_float64_model_starts_from_the_same_weights():
    m32 = build("mlp", rng=np.random.default_rng(3))
    m64 = build("mlp", rng=np.random.default_rng(3), dtype=np.float64)
    for (k, a), b in zip(m32.named_parameters().items(), m64.named_parameters().values()):
        assert b.dtype == np.float64
        np.testing.assert_array_equal(a, b.astype(np.float32), err_msg=k)


@pytest.mark.parametrize("name, steps, lr", [("mlp", 30, 0.05), ("cnn", 12, 0.02)])
def test_overfits_a_tiny_synthetic_set(name, steps, lr):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    model = build(name, rng=np.random.default_rng(0))
    optimizer = SGD(model.named_parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss, grad = softmax_cross_entropy(model.forward(x, training=True), y)
        model.backward(grad, input_grad=False)
        optimizer.step(model.named_grads())
        losses.append(loss)
    assert losses[-1] < 0.5 * losses[0], losses
    assert accuracy(model.forward(x, training=False), y) > 0.5   # chance is 0.1


def test_unknown_model_and_bad_rng():
    with pytest.raises(ValueError, match="mlp"):
        build("resnet", rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        build("mlp", rng=0)
