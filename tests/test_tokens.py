"""ViT's token layers (nn/tokens.py) and LogSoftmax: finite-difference gradients in
float64 and agreement with the torch operations they stand for."""

import numpy as np
import pytest

from srigl_np.nn.activations import LogSoftmax
from srigl_np.nn.tokens import ClassToken, PatchTokens, PositionEmbedding, SelectToken

from gradcheck import check_layer_gradients


def test_patch_tokens_order_and_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 2, 4))
    y = PatchTokens().forward(x, True)
    assert y.shape == (2, 8, 3) and y.flags.c_contiguous
    np.testing.assert_array_equal(y[1, 5], x[1, :, 1, 1])   # token 5 = row 1, column 1
    check_layer_gradients(PatchTokens(), x)


@pytest.mark.parametrize("make", [
    lambda rng: ClassToken(3, dtype=np.float64),
    lambda rng: PositionEmbedding(4, 3, rng=rng, dtype=np.float64),
    lambda rng: SelectToken(1),
    lambda rng: LogSoftmax(),
])
def test_token_layer_gradients(make):
    rng = np.random.default_rng(1)
    layer = make(rng)
    for array in layer.params.values():
        array[...] = rng.standard_normal(array.shape)
    check_layer_gradients(layer, rng.standard_normal((2, 4, 3)))


def test_class_token_comes_first():
    layer = ClassToken(3, dtype=np.float64)
    layer.params["class_token"][...] = [[[7.0, 8.0, 9.0]]]
    y = layer.forward(np.zeros((2, 4, 3)), True)
    assert y.shape == (2, 5, 3)
    np.testing.assert_array_equal(y[:, 0], [[7, 8, 9], [7, 8, 9]])


@pytest.mark.parametrize("layer, shape, message", [
    (ClassToken(3), (2, 4, 5), "ClassToken expects"),
    (PositionEmbedding(4, 3, rng=np.random.default_rng(0)), (2, 5, 3), "PositionEmbedding"),
    (SelectToken(2), (2, 2, 3), "SelectToken"),
    (PatchTokens(), (2, 3, 4), "PatchTokens"),
])
def test_wrong_shapes_are_refused(layer, shape, message):
    with pytest.raises(ValueError, match=message):
        layer.forward(np.zeros(shape, dtype=np.float32), True)


def test_log_softmax_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 10)) * 30
    ours = LogSoftmax()
    y = ours.forward(x, True)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.log_softmax(xt, dim=1)
    g = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(ours.backward(g), xt.grad.numpy(), rtol=1e-12, atol=1e-13)
