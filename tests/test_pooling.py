"""GlobalAvgPool2d: the mean over (H, W), its gradient, torch agreement and input checks."""

import numpy as np
import pytest

from srigl_np.nn.pooling import GlobalAvgPool2d

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
    with pytest.raises(ValueError, match="GlobalAvgPool2d expects"):
        layer.forward(np.ones((2, 3, 4), np.float32), True)
