"""Layers: backward passes against central finite differences (float64), forward passes
against plain-NumPy references, and the Sequential bookkeeping the optimizer and the
sparsity wrapper rely on."""

import numpy as np
import pytest

from srigl_np.nn.layers import (Conv2d, Dropout, Flatten, Linear, ReLU, Sequential,
                                kaiming_normal)
from srigl_np.nn.pooling import MaxPool2d
from srigl_np.training_kernels import maxpool_tiled, maxpool_tiled_grad
from srigl_np.nn.normalization import BatchNorm1d, BatchNorm2d, LayerNorm

from gradcheck import assert_close, check_layer_gradients, compare_with_torch, numeric_grad

F64 = np.float64


def conv2d_reference(x, weight, bias, stride, padding):
    """Direct cross-correlation: y[b, o, i, j] = sum_{c,u,v} w[o,c,u,v] x_pad[b,c,i*s+u,j*s+v] + b[o]."""
    batch, _, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out_h = (height + 2 * padding - kh) // stride + 1
    out_w = (width + 2 * padding - kw) // stride + 1
    y = np.zeros((batch, out_channels, out_h, out_w))
    for u in range(kh):
        for v in range(kw):
            patch = xp[:, :, u:u + stride * (out_h - 1) + 1:stride, v:v + stride * (out_w - 1) + 1:stride]
            y += np.einsum("bchw,oc->bohw", patch, weight[:, :, u, v])
    return y + bias[None, :, None, None]


# -- Linear ---------------------------------------------------------------------

def test_linear_forward_is_affine_map():
    rng = np.random.default_rng(1)
    layer = Linear(5, 3, rng=rng, dtype=F64)
    layer.params["bias"][...] = rng.standard_normal(3)
    x = rng.standard_normal((4, 5))
    np.testing.assert_allclose(layer.forward(x, True),
                               x @ layer.params["weight"].T + layer.params["bias"])


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients(bias):
    rng = np.random.default_rng(2)
    layer = Linear(6, 4, bias=bias, rng=rng, dtype=F64)
    if bias:
        layer.params["bias"][...] = rng.standard_normal(4)
    check_layer_gradients(layer, rng.standard_normal((3, 6)))


def test_linear_backward_overwrites_grads_in_place():
    rng = np.random.default_rng(3)
    layer = Linear(4, 2, rng=rng, dtype=F64)
    grad_w = layer.grads["weight"]
    x = rng.standard_normal((3, 4))
    layer.forward(x, True)
    layer.backward(np.ones((3, 2)))
    first = grad_w.copy()
    layer.backward(np.ones((3, 2)))
    assert layer.grads["weight"] is grad_w
    np.testing.assert_allclose(grad_w, first)   # overwritten, not accumulated


def test_linear_rejects_wrong_input_width():
    layer = Linear(4, 2, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="in_features|4"):
        layer.forward(np.zeros((3, 5), np.float32), True)


def test_float32_layers_stay_float32_and_cast_float64_inputs():
    rng = np.random.default_rng(4)
    model = Sequential(Conv2d(1, 2, 3, rng=rng), ReLU(), MaxPool2d(2), Flatten(),
                       Linear(2 * 3 * 3, 3, rng=rng), BatchNorm1d(3))
    y = model.forward(rng.standard_normal((2, 1, 8, 8)), True)   # float64 input
    assert y.dtype == np.float32
    grad = model.backward(np.ones_like(y))
    assert grad.dtype == np.float32
    assert all(g.dtype == np.float32 for g in model.named_grads().values())


# -- Conv2d -----------------------------------------------------------------------

CONV_CASES = [
    # (in, out, kernel, stride, padding, x shape (B, H, W))
    (2, 3, 3, 1, 0, (2, 5, 5)),
    (2, 3, 3, 2, 1, (2, 7, 6)),       # stride 2, padding 1, non-square
    (1, 2, (2, 3), 1, 2, (1, 4, 5)),  # rectangular kernel, batch 1
    (3, 2, 1, 1, 0, (2, 3, 4)),       # 1x1 convolution
    (2, 2, 3, 3, 1, (1, 8, 7)),       # stride == kernel, padding
]


@pytest.mark.parametrize("in_c, out_c, kernel, stride, padding, xs", CONV_CASES)
def test_conv2d_forward_matches_direct_convolution(in_c, out_c, kernel, stride, padding, xs):
    rng = np.random.default_rng(5)
    layer = Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, rng=rng, dtype=F64)
    layer.params["bias"][...] = rng.standard_normal(out_c)
    x = rng.standard_normal((xs[0], in_c, xs[1], xs[2]))
    np.testing.assert_allclose(
        layer.forward(x, True),
        conv2d_reference(x, layer.params["weight"], layer.params["bias"], stride, padding),
        rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("in_c, out_c, kernel, stride, padding, xs", CONV_CASES)
def test_conv2d_gradients(in_c, out_c, kernel, stride, padding, xs):
    rng = np.random.default_rng(6)
    layer = Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, rng=rng, dtype=F64)
    layer.params["bias"][...] = rng.standard_normal(out_c)
    check_layer_gradients(layer, rng.standard_normal((xs[0], in_c, xs[1], xs[2])))


def test_conv2d_refills_its_column_buffer_between_steps():
    rng = np.random.default_rng(8)
    layer = Conv2d(2, 3, 3, stride=2, padding=1, rng=rng, dtype=F64)
    x1, x2 = rng.standard_normal((2, 2, 2, 7, 6))
    layer.forward(x1, True)
    cols = layer.cols
    y2 = layer.forward(x2, True)
    assert layer.cols is cols  # same shape: refilled, not reallocated
    np.testing.assert_allclose(y2, conv2d_reference(x2, layer.params["weight"],
                                                    layer.params["bias"], 2, 1),
                               rtol=1e-12, atol=1e-12)
    layer.forward(x2[:1], True)  # another batch size gets its own buffer
    assert layer.cols is not cols and layer.cols.shape[0] == cols.shape[0] // 2


def test_conv2d_lowers_on_one_thread_so_blas_has_the_cores(monkeypatch):
    from srigl_np.nn import layers

    calls = []
    for name in ("im2col", "col2im"):
        original = getattr(layers, name)
        monkeypatch.setattr(layers, name, lambda *a, _f=original, _n=name, **k: (
            calls.append((_n, k.get("threads"))), _f(*a, **k))[1])
    rng = np.random.default_rng(9)
    layer = Conv2d(2, 3, 3, rng=rng, dtype=F64)
    y = layer.forward(rng.standard_normal((2, 2, 5, 5)), True)
    layer.backward(np.ones_like(y))
    assert layers.LOWERING_THREADS == 1
    assert calls == [("im2col", 1), ("col2im", 1)]


def test_conv2d_float32_matches_float64():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 2, 9, 8))
    l32 = Conv2d(2, 4, 3, stride=2, padding=1, rng=np.random.default_rng(0))
    l64 = Conv2d(2, 4, 3, stride=2, padding=1, rng=np.random.default_rng(0), dtype=F64)
    l64.params["weight"][...] = l32.params["weight"]
    y32 = l32.forward(x.astype(np.float32), True)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, l64.forward(x, True), rtol=1e-4, atol=1e-5)
    g = rng.standard_normal(y32.shape)
    gx32 = l32.backward(g.astype(np.float32))
    np.testing.assert_allclose(gx32, l64.backward(g), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(l32.grads["weight"], l64.grads["weight"], rtol=1e-4, atol=1e-4)


def test_conv2d_attributes_and_errors():
    layer = Conv2d(3, 8, 5, stride=2, padding=1, rng=np.random.default_rng(0))
    assert (layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
            layer.padding) == (3, 8, (5, 5), 2, 1)
    assert layer.params["weight"].shape == (8, 3, 5, 5)
    with pytest.raises(ValueError, match="in_channels|3"):
        layer.forward(np.zeros((1, 2, 9, 9), np.float32), True)
    with pytest.raises(ValueError, match="stride"):
        Conv2d(1, 1, 3, stride=0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="padding"):
        Conv2d(1, 1, 3, padding=-1, rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="dtype"):
        Conv2d(1, 1, 3, rng=np.random.default_rng(0), dtype=np.int32)


GROUPED_CASES = [
    # (in, out, kernel, stride, padding, groups, x shape (B, H, W))
    (4, 6, 3, 1, 1, 2, (2, 5, 5)),       # two groups
    (3, 3, 3, 2, 1, 3, (2, 7, 6)),       # depthwise, stride 2
    (4, 8, (1, 3), 1, 0, 4, (1, 4, 5)),  # depthwise with a channel multiplier of 2
    (6, 3, 1, 1, 0, 3, (2, 3, 4)),       # grouped 1x1
]


def grouped_conv_reference(x, weight, bias, stride, padding, groups):
    """A grouped convolution as ``groups`` separate direct convolutions, concatenated."""
    x_groups = np.split(x, groups, axis=1)
    w_groups = np.split(weight, groups, axis=0)
    b_groups = np.split(bias, groups)
    return np.concatenate([conv2d_reference(xg, wg, bg, stride, padding)
                           for xg, wg, bg in zip(x_groups, w_groups, b_groups)], axis=1)


def _grouped_conv(in_c, out_c, kernel, stride, padding, groups, seed=5):
    rng = np.random.default_rng(seed)
    layer = Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups,
                   rng=rng, dtype=F64)
    layer.params["bias"][...] = rng.standard_normal(out_c)
    return layer, rng


@pytest.mark.parametrize("in_c, out_c, kernel, stride, padding, groups, xs", GROUPED_CASES)
def test_grouped_conv2d_forward_matches_separate_convolutions(in_c, out_c, kernel, stride,
                                                              padding, groups, xs):
    layer, rng = _grouped_conv(in_c, out_c, kernel, stride, padding, groups)
    assert layer.params["weight"].shape[:2] == (out_c, in_c // groups)
    x = rng.standard_normal((xs[0], in_c, xs[1], xs[2]))
    np.testing.assert_allclose(
        layer.forward(x, True),
        grouped_conv_reference(x, layer.params["weight"], layer.params["bias"], stride,
                               padding, groups), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("in_c, out_c, kernel, stride, padding, groups, xs", GROUPED_CASES)
def test_grouped_conv2d_gradients(in_c, out_c, kernel, stride, padding, groups, xs):
    layer, rng = _grouped_conv(in_c, out_c, kernel, stride, padding, groups)
    check_layer_gradients(layer, rng.standard_normal((xs[0], in_c, xs[1], xs[2])))


@pytest.mark.parametrize("in_c, out_c, kernel, stride, padding, groups, xs", GROUPED_CASES)
def test_grouped_conv2d_matches_torch(in_c, out_c, kernel, stride, padding, groups, xs):
    torch = pytest.importorskip("torch")
    layer, rng = _grouped_conv(in_c, out_c, kernel, stride, padding, groups)
    module = torch.nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding,
                             groups=groups)
    x = rng.standard_normal((xs[0], in_c, xs[1], xs[2]))
    compare_with_torch(layer, module, x, {"weight": "weight", "bias": "bias"})


def test_grouped_conv2d_without_input_grad_and_float32():
    layer, rng = _grouped_conv(4, 4, 3, 1, 1, 4)
    x = rng.standard_normal((2, 4, 5, 5))
    g = rng.standard_normal((2, 4, 5, 5))
    layer.forward(x, True)
    layer.backward(g)
    grads = {k: v.copy() for k, v in layer.grads.items()}
    layer.forward(x, True)
    assert layer.backward(g, input_grad=False) is None
    for name, grad in grads.items():
        np.testing.assert_array_equal(layer.grads[name], grad)
    l32 = Conv2d(4, 4, 3, padding=1, groups=4, rng=np.random.default_rng(5))
    y = l32.forward(x, True)
    assert y.dtype == np.float32 and l32.backward(g).dtype == np.float32


@pytest.mark.parametrize("in_c, out_c, groups, error, fragment", [
    (4, 6, 3, ValueError, "groups must divide"),   # 3 does not divide 4
    (4, 6, 4, ValueError, "groups must divide"),   # 4 does not divide 6
    (4, 4, 0, ValueError, "groups"),
    (4, 4, 2.5, TypeError, "groups"),
])
def test_grouped_conv2d_validates_groups(in_c, out_c, groups, error, fragment):
    with pytest.raises(error, match=fragment):
        Conv2d(in_c, out_c, 3, groups=groups, rng=np.random.default_rng(0))


def test_grouped_conv2d_repr_and_fan_in():
    layer = Conv2d(8, 8, 3, groups=8, rng=np.random.default_rng(0), dtype=F64)
    assert repr(layer) == "Conv2d(8, 8, (3, 3), stride=1, padding=0, groups=8)"
    assert repr(Conv2d(2, 2, 3, rng=np.random.default_rng(0))) == \
        "Conv2d(2, 2, (3, 3), stride=1, padding=0)"
    # Kaiming over the fan-in of one group: (in/groups)*kh*kw = 9 inputs per output.
    wide = Conv2d(8, 512, 3, groups=8, rng=np.random.default_rng(0), dtype=F64)
    assert abs(wide.params["weight"].std() - np.sqrt(2 / 9)) < 0.02


# -- ReLU, Flatten ------------------------------------------------------------------

@pytest.mark.parametrize("inplace", [False, True])
def test_relu_gradients(inplace):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 7))
    x[np.abs(x) < 0.05] = 0.5   # keep away from the kink
    layer = ReLU(inplace=inplace)
    if inplace:
        y = layer.forward(x.copy(), True)
        np.testing.assert_array_equal(y, np.maximum(x, 0))
        g = rng.standard_normal(x.shape)
        np.testing.assert_array_equal(layer.backward(g.copy()), g * (x > 0))
    else:
        check_layer_gradients(layer, x)
        before = x.copy()
        layer.forward(x, True)
        np.testing.assert_array_equal(x, before)   # not in place: input untouched


def test_flatten_round_trip():
    x = np.arange(24.0).reshape(2, 3, 2, 2)
    layer = Flatten()
    y = layer.forward(x, True)
    assert y.shape == (2, 12)
    np.testing.assert_array_equal(layer.backward(y), x)


# -- MaxPool2d ----------------------------------------------------------------------

def maxpool_reference(x, kh, kw, stride):
    b, c, h, w = x.shape
    out_h, out_w = (h - kh) // stride + 1, (w - kw) // stride + 1
    y = np.full((b, c, out_h, out_w), -np.inf)
    for i in range(kh):
        for j in range(kw):
            y = np.maximum(y, x[:, :, i:i + stride * (out_h - 1) + 1:stride,
                                j:j + stride * (out_w - 1) + 1:stride])
    return y


POOL_CASES = [
    # (kernel, stride, x shape (B, C, H, W))
    (2, None, (2, 3, 4, 6)),      # tiles exactly: the reshape fast path
    (2, 2, (2, 2, 5, 7)),         # stride == kernel, sizes do not divide
    (3, 2, (2, 2, 7, 6)),         # overlapping windows
    (2, 1, (1, 2, 4, 5)),         # overlapping, stride 1, batch 1
    ((2, 3), 1, (1, 1, 4, 6)),    # rectangular kernel
    (3, 3, (1, 2, 6, 9)),         # tiles with kernel 3
]


def _distinct_values(rng, shape):
    """A random permutation scaled: no ties, so the max is unique in every window."""
    return rng.permutation(np.prod(shape)).reshape(shape) / 7.0 - 3.0


@pytest.mark.parametrize("kernel, stride, xs", POOL_CASES)
def test_maxpool_forward_matches_reference(kernel, stride, xs):
    x = _distinct_values(np.random.default_rng(9), xs)
    layer = MaxPool2d(kernel, stride)
    kh, kw = layer.kernel_size
    for training in (True, False):
        np.testing.assert_array_equal(layer.forward(x, training),
                                      maxpool_reference(x, kh, kw, layer.stride))


@pytest.mark.parametrize("kernel, stride, xs", POOL_CASES)
def test_maxpool_gradients(kernel, stride, xs):
    rng = np.random.default_rng(10)
    check_layer_gradients(MaxPool2d(kernel, stride), _distinct_values(rng, xs), rng=rng)


@pytest.mark.parametrize("kernel, stride", [(2, None), (2, 1)])
def test_maxpool_ties_send_gradient_to_the_first_maximum_only(kernel, stride):
    x = np.zeros((1, 1, 4, 4))          # every window is a tie
    layer = MaxPool2d(kernel, stride)
    y = layer.forward(x, True)
    g = np.arange(1.0, y.size + 1).reshape(y.shape)
    grad = layer.backward(g)
    assert grad.sum() == g.sum()        # no gradient is duplicated
    expected = np.zeros_like(x)
    s = layer.stride
    for oh in range(y.shape[2]):
        for ow in range(y.shape[3]):
            expected[0, 0, oh * s, ow * s] += g[0, 0, oh, ow]   # window's top-left element
    np.testing.assert_array_equal(grad, expected)


def test_maxpool_fast_path_and_general_path_agree():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    x[0, 0, :2, :2] = 1.5               # a tie inside one window
    fast = MaxPool2d(2)
    y = fast.forward(x, True)
    g = rng.standard_normal(y.shape).astype(np.float32)
    grad_fast = fast.backward(g)
    assert fast.cells is not None       # the compiled tiled pass (maxpool_tiled)
    general = MaxPool2d(2)
    general.forward(x, False)           # eval forward: the general backward path
    assert general.winner is None
    np.testing.assert_array_equal(general.backward(g), grad_fast)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kh, kw", [(1, 1), (2, 2), (3, 3)])
def test_the_compiled_tiled_maxpool_keeps_the_definitions_winners(dtype, kh, kw):
    rng = np.random.default_rng(12)
    x = np.round(rng.standard_normal((2, 3, 6 * kh, 4 * kw)), 1).astype(dtype)  # ties
    x = x.transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2)   # non-contiguous input
    x[1, 2, 0, 0] = np.nan
    y, cells = maxpool_tiled(x, kh, kw, threads=2)
    expected = maxpool_reference(np.nan_to_num(x, nan=np.inf), kh, kw, kh)
    expected[1, 2, 0, 0] = np.nan
    np.testing.assert_array_equal(y, expected)
    windows = x.reshape(2, 3, 6, kh, 4, kw).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 6, 4, -1)
    first = np.argmax(np.nan_to_num(windows, nan=np.inf) == np.nan_to_num(
        y, nan=np.inf)[..., None], axis=-1)
    np.testing.assert_array_equal(cells, first)
    g = rng.standard_normal(y.shape).astype(dtype)
    dx = maxpool_tiled_grad(g, cells, kh, kw, threads=1)
    assert dx.sum(dtype=np.float64) == pytest.approx(g.sum(dtype=np.float64))
    assert (dx != 0).sum() == (g != 0).sum()


def test_the_compiled_tiled_maxpool_refuses_bad_arguments():
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="multiples of the window"):
        maxpool_tiled(x, 3, 3)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        maxpool_tiled(x.astype(np.int32), 2, 2)
    y, cells = maxpool_tiled(x, 2, 2)
    with pytest.raises(ValueError, match="winner must index"):
        maxpool_tiled_grad(y, cells + 4, 2, 2)
    with pytest.raises(ValueError, match="winner's shape"):
        maxpool_tiled_grad(y[:, :, :1], cells, 2, 2)


def test_maxpool_rejects_too_small_input():
    with pytest.raises(ValueError, match="does not fit"):
        MaxPool2d(3).forward(np.zeros((1, 1, 2, 5)), True)


# -- Dropout -----------------------------------------------------------------------

def test_dropout_scales_kept_units_and_is_identity_in_eval():
    x = np.ones((200, 100), np.float32)
    layer = Dropout(0.25, rng=np.random.default_rng(12))
    y = layer.forward(x, True)
    assert y.dtype == np.float32
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.01
    assert abs(y.mean() - 1.0) < 0.02                # inverted dropout keeps the mean
    g = np.full_like(x, 2.0)
    np.testing.assert_array_equal(layer.backward(g), 2.0 * y)
    assert layer.forward(x, False) is x


def test_dropout_same_seed_same_mask():
    x = np.ones((8, 8))
    a = Dropout(0.5, rng=np.random.default_rng(3)).forward(x, True)
    b = Dropout(0.5, rng=np.random.default_rng(3)).forward(x, True)
    c = Dropout(0.5, rng=np.random.default_rng(4)).forward(x, True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_dropout_gradients_with_fixed_mask():
    rng = np.random.default_rng(13)
    layer = Dropout(0.3, rng=np.random.default_rng(0))
    x = rng.standard_normal((4, 5))
    y = layer.forward(x, True)
    g = rng.standard_normal(x.shape)
    # y is linear in x for a fixed mask: dL/dx = g * (y / x).
    np.testing.assert_allclose(layer.backward(g), g * (y / x))


def test_dropout_errors():
    with pytest.raises(ValueError, match="p must be in"):
        Dropout(1.0)
    with pytest.raises(ValueError, match="rng"):
        Dropout(0.5).forward(np.ones(3), True)


# -- BatchNorm -----------------------------------------------------------------------

@pytest.mark.parametrize("layer_class, shape", [(BatchNorm1d, (6, 4)),
                                                (BatchNorm2d, (3, 4, 3, 2))])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradients(layer_class, shape, training):
    rng = np.random.default_rng(14)
    layer = layer_class(4, dtype=F64)
    layer.params["weight"][...] = rng.uniform(0.5, 1.5, 4)
    layer.params["bias"][...] = rng.standard_normal(4)
    layer.buffers["running_mean"][...] = rng.standard_normal(4)
    layer.buffers["running_var"][...] = rng.uniform(0.5, 2.0, 4)
    x = rng.standard_normal(shape) * 2 + 1
    if training:
        layer.momentum = 0.0      # keep running stats fixed during the many FD forwards
    check_layer_gradients(layer, x, training=training)


def test_batchnorm2d_normalises_per_channel_and_updates_running_stats():
    rng = np.random.default_rng(15)
    layer = BatchNorm2d(3, momentum=0.1, dtype=F64)
    x = rng.standard_normal((5, 3, 4, 4)) * np.array([1.0, 2.0, 3.0])[None, :, None, None] + 4
    y = layer.forward(x, True)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-4)
    n = 5 * 4 * 4
    np.testing.assert_allclose(layer.buffers["running_mean"], 0.1 * x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(layer.buffers["running_var"],
                               0.9 + 0.1 * x.var(axis=(0, 2, 3)) * n / (n - 1))
    # Evaluation uses the running statistics, not the batch's.
    mean, var = layer.buffers["running_mean"], layer.buffers["running_var"]
    expected = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(layer.forward(x, False), expected)


def test_batchnorm_errors():
    with pytest.raises(ValueError, match="BatchNorm1d expects"):
        BatchNorm1d(3).forward(np.ones((4, 2), np.float32), True)
    with pytest.raises(ValueError, match="> 1 value per channel"):
        BatchNorm1d(3).forward(np.ones((1, 3), np.float32), True)
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm2d(3, momentum=1.5)


# -- LayerNorm ----------------------------------------------------------------------

def _layernorm(width=5, seed=0):
    rng = np.random.default_rng(seed)
    layer = LayerNorm(width, eps=1e-5, dtype=F64)
    layer.params["weight"][...] = rng.uniform(0.5, 1.5, width)
    layer.params["bias"][...] = rng.standard_normal(width)
    return layer, rng


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 5)])
def test_layernorm_gradients(shape):
    layer, rng = _layernorm(shape[-1])
    check_layer_gradients(layer, rng.standard_normal(shape))


def test_layernorm_normalises_each_row_and_matches_torch():
    layer, rng = _layernorm()
    x = rng.standard_normal((2, 3, 5)) * 4 + 1
    layer.params["weight"][...] = 1
    layer.params["bias"][...] = 0
    y = layer.forward(x, False)
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=-1), 1, rtol=1e-4)
    torch = pytest.importorskip("torch")
    layer, rng = _layernorm(seed=1)
    compare_with_torch(layer, torch.nn.LayerNorm(5, eps=1e-5), rng.standard_normal((2, 3, 5)),
                       {"weight": "weight", "bias": "bias"})


def test_layernorm_errors_and_float32():
    with pytest.raises(ValueError, match="normalized_shape"):
        LayerNorm(0)
    with pytest.raises(TypeError, match="normalized_shape"):
        LayerNorm((4,))
    with pytest.raises(ValueError, match="eps"):
        LayerNorm(4, eps=0)
    layer = LayerNorm(4)
    with pytest.raises(ValueError, match="LayerNorm expects"):
        layer.forward(np.zeros((2, 5), np.float32), True)
    y = layer.forward(np.arange(8.0).reshape(2, 4), True)
    assert y.dtype == np.float32
    assert layer.backward(np.ones((2, 4))).dtype == np.float32
    assert layer.backward(np.ones((2, 4)), input_grad=False) is None


# -- Initialisation ---------------------------------------------------------------------

def test_kaiming_normal_scale_and_determinism():
    w = kaiming_normal((400, 250), 250, np.random.default_rng(16))
    assert w.dtype == np.float32
    assert abs(w.std() - np.sqrt(2 / 250)) < 0.002
    assert abs(w.mean()) < 0.002
    np.testing.assert_array_equal(w, kaiming_normal((400, 250), 250, np.random.default_rng(16)))
    w64 = kaiming_normal((400, 250), 250, np.random.default_rng(16), dtype=F64)
    np.testing.assert_array_equal(w, w64.astype(np.float32))
    with pytest.raises(ValueError, match="fan_in"):
        kaiming_normal((2, 2), 0, np.random.default_rng(0))


def test_kaiming_normal_per_row_fan_in_scales_each_row():
    fan_in = np.array([2, 8, 50, 200] * 25)
    w = kaiming_normal((100, 2000), fan_in, np.random.default_rng(17))
    assert w.shape == (100, 2000) and w.dtype == np.float32
    np.testing.assert_allclose(w.std(axis=1), np.sqrt(2 / fan_in), rtol=0.05)
    np.testing.assert_array_equal(w, kaiming_normal((100, 2000), fan_in,
                                                    np.random.default_rng(17)))
    # Conv-shaped weights: one row per filter, scaled over (in_channels, kh, kw).
    conv = kaiming_normal((3, 2, 3, 3), np.array([1, 4, 9]), np.random.default_rng(0),
                          dtype=F64)
    z = np.random.default_rng(0).standard_normal((3, 2, 3, 3))
    np.testing.assert_array_equal(conv, z * np.sqrt(2.0 / np.array([1, 4, 9]))[:, None, None, None])


def test_kaiming_normal_per_row_rounding_is_pinned():
    """Per-row fan-ins round draws and std to the dtype before multiplying (the sparse
    init's historical formula); one fan-in multiplies in float64 and rounds once."""
    z = np.random.default_rng(5).standard_normal((6, 7))
    fan_in = np.arange(1, 7)
    std = np.sqrt(2.0 / fan_in)
    per_row = kaiming_normal((6, 7), fan_in, np.random.default_rng(5))
    np.testing.assert_array_equal(per_row, z.astype(np.float32) * std.astype(np.float32)[:, None])
    one = kaiming_normal((6, 7), 3, np.random.default_rng(5))
    np.testing.assert_array_equal(one, (z * np.sqrt(2.0 / 3)).astype(np.float32))
    # In float64 both forms give the same bits.
    np.testing.assert_array_equal(
        kaiming_normal((6, 7), np.full(6, 3), np.random.default_rng(5), dtype=F64),
        kaiming_normal((6, 7), 3, np.random.default_rng(5), dtype=F64))


@pytest.mark.parametrize("fan_in, fragment", [
    (np.ones(3), r"array of shape \(shape\[0\],\) = \(4,\), got shape \(3,\)"),
    (np.ones((4, 1)), r"got shape \(4, 1\)"),
    (np.array([1, 2, 0, 3]), "> 0 in every row, got 0 at row 2"),
    (np.array([1.0, -2.0, 1.0, 1.0]), "at row 1"),
    (np.array([1.0, np.nan, 1.0, 1.0]), "at row 1"),
    (-3, "be > 0, got -3"),
])
def test_kaiming_normal_refuses_bad_fan_in(fan_in, fragment):
    with pytest.raises(ValueError, match=f"fan_in must .*{fragment}"):
        kaiming_normal((4, 5), fan_in, np.random.default_rng(0))


def test_biases_start_at_zero():
    rng = np.random.default_rng(0)
    assert not Linear(3, 4, rng=rng).params["bias"].any()
    assert not Conv2d(3, 4, 3, rng=rng).params["bias"].any()


# -- Sequential ------------------------------------------------------------------------

def _small_model(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return Sequential(Conv2d(1, 3, 3, padding=1, rng=rng, dtype=dtype), BatchNorm2d(3, dtype=dtype),
                      ReLU(), MaxPool2d(2), Dropout(0.2, rng=rng), Flatten(),
                      Linear(3 * 3 * 3, 4, rng=rng, dtype=dtype))


def test_sequential_whole_model_gradients_float64():
    rng = np.random.default_rng(17)
    model = _small_model(F64)
    for layer in model.layers:
        if isinstance(layer, BatchNorm2d):
            layer.momentum = 0.0
    x = rng.standard_normal((2, 1, 6, 6))
    r = rng.standard_normal((2, 4))

    def loss():
        model.set_rng(np.random.default_rng(1))     # same dropout mask every call
        return float(np.sum(model.forward(x, True) * r))

    loss()
    grad_x = model.backward(r)
    analytic = {k: v.copy() for k, v in model.named_grads().items()}
    assert_close("input", grad_x, numeric_grad(loss, x))
    for name, param in model.named_parameters().items():
        assert_close(name, analytic[name], numeric_grad(loss, param))


def test_sequential_names_and_in_place_identity():
    model = _small_model()
    params = model.named_parameters()
    assert list(params) == ["0.weight", "0.bias", "1.weight", "1.bias", "6.weight", "6.bias"]
    assert list(model.named_grads()) == list(params)
    assert list(model.named_buffers()) == ["1.running_mean", "1.running_var"]
    assert params["0.weight"] is model.layers[0].params["weight"]
    params["6.weight"] *= 0        # an optimizer-style in-place update is seen by the layer
    assert not model.layers[6].params["weight"].any()


def test_backward_without_input_grad_gives_same_parameter_grads():
    rng = np.random.default_rng(18)
    x = rng.standard_normal((3, 1, 6, 6)).astype(np.float32)
    grads = []
    for input_grad in (True, False):
        model = _small_model()
        model.set_rng(np.random.default_rng(2))
        y = model.forward(x, True)
        result = model.backward(np.ones_like(y), input_grad=input_grad)
        assert (result is None) == (not input_grad)
        grads.append({k: v.copy() for k, v in model.named_grads().items()})
    for name in grads[0]:
        np.testing.assert_array_equal(grads[0][name], grads[1][name])


def test_state_dict_copies_and_load_state_dict_restores_in_place():
    model = _small_model()
    state = model.state_dict()
    assert set(state) == set(model.named_parameters()) | set(model.named_buffers())
    weight = model.named_parameters()["0.weight"]
    state["0.weight"] += 1            # a copy: the model is untouched
    assert not np.array_equal(weight, state["0.weight"])
    other = _small_model(seed=5)
    other.load_state_dict(model.state_dict())
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[name], value)
    assert other.named_parameters()["0.weight"] is other.layers[0].params["weight"]


@pytest.mark.parametrize("mutate, fragment", [
    (lambda s: s.pop("0.bias"), "missing"),
    (lambda s: s.update(extra=np.zeros(1)), "unexpected"),
    (lambda s: s.update({"0.bias": np.zeros(4, np.float32)}), "0.bias"),
    (lambda s: s.update({"0.bias": np.zeros(3, np.float64)}), "float32"),
])
def test_load_state_dict_validates(mutate, fragment):
    model = _small_model()
    state = model.state_dict()
    mutate(state)
    before = model.state_dict()
    with pytest.raises(ValueError, match=fragment):
        model.load_state_dict(state)
    for name, value in before.items():   # nothing was half-loaded
        np.testing.assert_array_equal(model.state_dict()[name], value)


def test_set_rng_reaches_every_dropout():
    model = Sequential(Dropout(0.5), ReLU(), Dropout(0.1))
    rng = np.random.default_rng(0)
    model.set_rng(rng)
    assert model.layers[0].rng is rng and model.layers[2].rng is rng
    with pytest.raises(TypeError, match="Generator"):
        model.set_rng(42)
    with pytest.raises(TypeError, match="layer 1"):
        Sequential(ReLU(), "relu")
