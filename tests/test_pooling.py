"""GlobalAvgPool2d: the mean over (H, W), its gradient, torch agreement and input checks."""

import numpy as np
import pytest

from srigl_np.nn.pooling import GlobalAvgPool2d, MaxPool2d

from gradcheck import check_layer_gradients, compare_with_torch


def test_global_avg_pool_forward_and_gradients():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5))
    layer = GlobalAvgPool2d()
    np.testing.assert_allclose(layer.forward(x, True), x.mean(axis=(2, 3)))
    check_layer_gradients(layer, x)


def test_global_avg_pool_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((3, 4, 5, 2))
    module = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    compare_with_torch(GlobalAvgPool2d(), module, x, {}, rtol=1e-12)


def test_global_avg_pool_keeps_float32_and_rejects_other_shapes():
    layer = GlobalAvgPool2d()
    y = layer.forward(np.ones((2, 3, 4, 4), np.float32), True)
    assert y.shape == (2, 3) and y.dtype == np.float32
    grad = layer.backward(np.ones((2, 3), np.float32))
    assert grad.dtype == np.float32 and grad.flags.c_contiguous
    np.testing.assert_allclose(grad, 1 / 16)
    # A 1x1 map (ResNet-50's on 32x32 images) still gets a writable gradient.
    layer.forward(np.ones((2, 3, 1, 1), np.float32), True)
    assert layer.backward(np.ones((2, 3), np.float32)).flags.writeable
    with pytest.raises(ValueError, match="GlobalAvgPool2d expects"):
        layer.forward(np.ones((2, 3, 4), np.float32), True)


# -- MaxPool2d with padding (ResNet-50's stem: kernel 3, stride 2, padding 1) ----------

@pytest.mark.parametrize("kernel, stride, padding, size", [(3, 2, 1, 9), (3, 2, 1, 8),
                                                           (2, 2, 1, 5), (3, 1, 1, 4)])
def test_padded_maxpool_matches_torch_and_finite_differences(kernel, stride, padding, size):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(kernel + size)
    # Distinct values: finite differences need a unique maximum per window.
    x = rng.permutation(2 * 3 * size * size).reshape(2, 3, size, size) / 7.0 - 5.0
    layer = MaxPool2d(kernel, stride, padding)
    check_layer_gradients(layer, x.copy(), rng=rng)
    compare_with_torch(layer, torch.nn.MaxPool2d(kernel, stride, padding), x, {},
                       rtol=1e-12)


def test_padded_maxpool_pads_with_minus_infinity():
    # All inputs negative: a zero pad would win the border windows.
    x = -np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    layer = MaxPool2d(3, 2, padding=1)
    y = layer.forward(x, True)
    np.testing.assert_array_equal(y[0, 0], [[-1.0, -2.0], [-5.0, -6.0]])
    grad = layer.backward(np.ones_like(y))
    assert grad.shape == x.shape
    assert grad.sum() == 4 and grad[0, 0, 0, 0] == 1 and grad[0, 0, 1, 1] == 1


def test_maxpool_rejects_padding_over_half_the_kernel():
    with pytest.raises(ValueError, match="padding must be at most half"):
        MaxPool2d(3, 2, padding=2)
    assert repr(MaxPool2d(3, 2, 1)) == "MaxPool2d((3, 3), stride=2, padding=1)"
