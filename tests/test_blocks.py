"""Residual and SqueezeExcite: finite-difference gradients of the input and every
parameter, agreement with the same blocks written in torch, the flat dotted names that
share the sub-layers' arrays, and argument checks."""

import numpy as np
import pytest

from srigl_np.nn.blocks import Residual, SqueezeExcite
from srigl_np.nn.layers import Conv2d, Dropout, Linear, ReLU, Sequential
from srigl_np.nn.normalization import BatchNorm2d
from srigl_np.dst.sparsity import sparse_parameter_names

from gradcheck import check_layer_gradients, compare_with_torch

F64 = np.float64


def basic_block(in_c, out_c, stride, seed=0):
    """ResNet's basic block without its final ReLU: conv-bn-relu-conv-bn, with a strided
    1x1 conv-bn projection when the shape changes."""
    rng = np.random.default_rng(seed)
    body = Sequential(Conv2d(in_c, out_c, 3, stride=stride, padding=1, bias=False, rng=rng,
                             dtype=F64),
                      BatchNorm2d(out_c, dtype=F64), ReLU(),
                      Conv2d(out_c, out_c, 3, padding=1, bias=False, rng=rng, dtype=F64),
                      BatchNorm2d(out_c, dtype=F64))
    shortcut = None
    if stride != 1 or in_c != out_c:
        shortcut = Sequential(Conv2d(in_c, out_c, 1, stride=stride, bias=False, rng=rng,
                                     dtype=F64), BatchNorm2d(out_c, dtype=F64))
    block = Residual(body, shortcut)
    for name, param in block.params.items():
        if name.endswith("1.weight") or name.endswith("4.weight") or name == "shortcut.1.weight":
            param[...] = rng.uniform(0.5, 1.5, param.shape)
        elif param.ndim == 1:
            param[...] = rng.standard_normal(param.shape)
    return block, rng


def torch_basic_block(in_c, out_c, stride):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(in_c, out_c, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out_c), nn.ReLU(),
                nn.Conv2d(out_c, out_c, 3, padding=1, bias=False), nn.BatchNorm2d(out_c))
            self.shortcut = None
            if stride != 1 or in_c != out_c:
                self.shortcut = nn.Sequential(nn.Conv2d(in_c, out_c, 1, stride=stride,
                                                        bias=False), nn.BatchNorm2d(out_c))

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    return Block()


BLOCK_CASES = [(3, 3, 1), (2, 4, 2)]   # identity shortcut; projection shortcut


@pytest.mark.parametrize("in_c, out_c, stride", BLOCK_CASES)
@pytest.mark.parametrize("training", [True, False])
def test_residual_gradients(in_c, out_c, stride, training):
    block, rng = basic_block(in_c, out_c, stride)
    check_layer_gradients(block, rng.standard_normal((2, in_c, 4, 4)), training=training)


@pytest.mark.parametrize("in_c, out_c, stride", BLOCK_CASES)
def test_residual_matches_torch(in_c, out_c, stride):
    module = torch_basic_block(in_c, out_c, stride)
    block, rng = basic_block(in_c, out_c, stride)
    # Our flat names are torch's named_parameters keys.
    compare_with_torch(block, module, rng.standard_normal((2, in_c, 5, 5)),
                       {name: name for name in block.params})


def test_residual_names_share_the_sub_layers_arrays():
    block, _ = basic_block(2, 4, 2)
    conv = block.body.layers[0]
    assert block.params["body.0.weight"] is conv.params["weight"]
    assert block.grads["body.0.weight"] is conv.grads["weight"]
    assert block.buffers["shortcut.1.running_mean"] is \
        block.shortcut.layers[1].buffers["running_mean"]
    assert sorted(block.params) == sorted(
        ["body.0.weight", "body.1.weight", "body.1.bias", "body.3.weight", "body.4.weight",
         "body.4.bias", "shortcut.0.weight", "shortcut.1.weight", "shortcut.1.bias"])
    model = Sequential(block, ReLU())
    named = model.named_parameters()
    assert named["0.shortcut.0.weight"] is block.shortcut.layers[0].params["weight"]
    named["0.body.0.weight"] *= 0          # an optimizer's or a mask's in-place update
    assert not conv.params["weight"].any()
    block.to("cpu")
    assert block.params["body.0.weight"] is conv.params["weight"]
    assert "0.body.1.running_var" in model.state_dict()


def test_residual_without_input_grad_gives_the_same_parameter_grads():
    block, rng = basic_block(2, 4, 2)
    model = Sequential(block)
    x = rng.standard_normal((2, 2, 4, 4))
    g = rng.standard_normal((2, 4, 2, 2))
    model.forward(x, True)
    model.backward(g.copy())
    grads = {k: v.copy() for k, v in model.named_grads().items()}
    model.forward(x, True)
    assert model.backward(g.copy(), input_grad=False) is None
    for name, grad in model.named_grads().items():
        np.testing.assert_allclose(grad, grads[name], rtol=1e-12, err_msg=name)


def test_residual_identity_gradient_is_not_overwritten_by_an_in_place_body():
    rng = np.random.default_rng(3)
    body = Sequential(Linear(3, 3, rng=rng, dtype=F64), ReLU(inplace=True))
    block = Residual(body)
    x = rng.standard_normal((4, 3))
    check_layer_gradients(block, x)


def test_set_rng_reaches_the_dropouts_inside_residual_blocks():
    inner = Dropout(0.5)
    outer = Dropout(0.5)
    model = Sequential(Residual(Sequential(Residual(Sequential(inner)))), outer)
    rng = np.random.default_rng(0)
    model.set_rng(rng)
    assert inner.rng is rng and outer.rng is rng


def test_residual_rejects_parts_that_are_not_sequential():
    conv = Conv2d(2, 2, 3, rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="body must be a Sequential"):
        Residual(conv)
    with pytest.raises(TypeError, match="shortcut must be a Sequential"):
        Residual(Sequential(conv), conv)


# -- SqueezeExcite ------------------------------------------------------------------

def squeeze_excite(gate, seed=0):
    rng = np.random.default_rng(seed)
    layer = SqueezeExcite(6, 3, gate=gate, rng=rng, dtype=F64)
    for name in ("fc1.bias", "fc2.bias"):
        layer.params[name][...] = rng.standard_normal(layer.params[name].shape) * 0.5
    return layer, rng


def torch_squeeze_excite(gate):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class SE(nn.Module):   # torchvision's SqueezeExcitation, written out
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Conv2d(6, 3, 1)
            self.fc2 = nn.Conv2d(3, 6, 1)
            self.gate = nn.Hardsigmoid() if gate == "hardsigmoid" else nn.Sigmoid()

        def forward(self, x):
            scale = nn.functional.adaptive_avg_pool2d(x, 1)
            return x * self.gate(self.fc2(nn.functional.relu(self.fc1(scale))))

    return SE()


@pytest.mark.parametrize("gate", ["hardsigmoid", "sigmoid"])
def test_squeeze_excite_gradients(gate):
    layer, rng = squeeze_excite(gate)
    x = rng.standard_normal((2, 6, 3, 4))
    layer.forward(x, True)
    # Away from the kinks: ReLU's at 0 and the hard gate's at -3 and 3.
    assert np.abs(layer.hidden[layer.hidden > 0]).min() > 1e-3
    check_layer_gradients(layer, x)


@pytest.mark.parametrize("gate", ["hardsigmoid", "sigmoid"])
def test_squeeze_excite_matches_torch(gate):
    module = torch_squeeze_excite(gate)
    layer, rng = squeeze_excite(gate)
    compare_with_torch(layer, module, rng.standard_normal((2, 6, 3, 4)),
                       {name: name for name in layer.params})


def test_squeeze_excite_shapes_float32_and_errors():
    layer = SqueezeExcite(8, 2, rng=np.random.default_rng(0))
    assert layer.params["fc1.weight"].shape == (2, 8, 1, 1)
    assert layer.params["fc2.weight"].shape == (8, 2, 1, 1)
    y = layer.forward(np.ones((2, 8, 3, 3)), True)
    assert y.dtype == np.float32 and layer.backward(np.ones_like(y)).dtype == np.float32
    assert layer.backward(np.ones_like(y), input_grad=False) is None
    with pytest.raises(ValueError, match="SqueezeExcite expects"):
        layer.forward(np.ones((2, 7, 3, 3), np.float32), True)
    with pytest.raises(ValueError, match="gate"):
        SqueezeExcite(8, 2, gate="relu", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="squeeze_channels"):
        SqueezeExcite(8, 0, rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="channels"):
        SqueezeExcite(8.0, 2, rng=np.random.default_rng(0))


# -- names: a model that carries PyTorch's state_dict keys --------------------------------

def _named_block(rng):
    body = Sequential(Conv2d(4, 4, 3, padding=1, bias=False, rng=rng), BatchNorm2d(4),
                      names=["conv1", "bn1"])
    shortcut = Sequential(Conv2d(4, 4, 1, bias=False, rng=rng), BatchNorm2d(4))
    return Residual(body, shortcut, body_name="", shortcut_name="downsample")


def test_named_sequential_gives_torch_style_keys_and_layers():
    rng = np.random.default_rng(0)
    model = Sequential(Conv2d(3, 4, 3, rng=rng), Sequential(_named_block(rng), names=["0"]),
                       names=["conv1", "layer1"])
    assert list(model.named_parameters()) == [
        "conv1.weight", "conv1.bias", "layer1.0.conv1.weight", "layer1.0.bn1.weight",
        "layer1.0.bn1.bias", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight",
        "layer1.0.downsample.1.bias"]
    assert "layer1.0.bn1.running_mean" in model.named_buffers()
    assert [name for name, _ in model.named_layers()] == [
        "conv1", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.downsample.0",
        "layer1.0.downsample.1"]
    assert sparse_parameter_names(model) == [
        "conv1.weight", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight"]
    assert model["layer1"][0] is model.layers[1].layers[0]


def test_sparse_parameter_names_reach_attention_and_squeeze_excite():
    rng = np.random.default_rng(0)
    model = Sequential(SqueezeExcite(8, 4, rng=rng), names=["se"])
    assert sparse_parameter_names(model) == ["se.fc1.weight", "se.fc2.weight"]
    from srigl_np.nn.attention import MultiheadSelfAttention
    model = Sequential(MultiheadSelfAttention(8, 2, rng=rng), names=["self_attention"])
    assert sparse_parameter_names(model) == ["self_attention.in_proj_weight",
                                             "self_attention.out_proj.weight"]


@pytest.mark.parametrize("names, message", [
    (["a"], "names must be 2 strings"),
    (["a", "b.c"], "without dots"),
    (["a", "a"], "unique"),
    (["", ""], "same names"),
])
def test_bad_sequential_names_are_refused(names, message):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=message):
        Sequential(Linear(2, 2, rng=rng), Linear(2, 2, rng=rng), names=names)


def test_residual_parts_with_clashing_names_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="same names"):
        Residual(Sequential(Linear(2, 2, rng=rng)), Sequential(Linear(2, 2, rng=rng)),
                 body_name="", shortcut_name="")
    with pytest.raises(ValueError, match="body_name"):
        Residual(Sequential(Linear(2, 2, rng=rng)), body_name="a.b")


def test_linear_on_tokens_matches_rows():
    rng = np.random.default_rng(1)
    layer = Linear(5, 3, rng=rng, dtype=np.float64)
    x = rng.standard_normal((2, 4, 5))
    y = layer.forward(x, training=True)
    assert y.shape == (2, 4, 3)
    np.testing.assert_allclose(y, x @ layer.params["weight"].T + layer.params["bias"])
    g = rng.standard_normal((2, 4, 3))
    dx = layer.backward(g)
    np.testing.assert_allclose(dx, g @ layer.params["weight"])
    np.testing.assert_allclose(layer.grads["weight"],
                               g.reshape(-1, 3).T @ x.reshape(-1, 5))
