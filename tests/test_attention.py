"""MultiheadSelfAttention: finite-difference gradients of the input and every parameter,
torch.nn.MultiheadAttention(batch_first=True) agreement, and argument checks."""

import numpy as np
import pytest

from srigl_np.nn.attention import MultiheadSelfAttention

from gradcheck import check_layer_gradients, compare_with_torch

NAMES = {name: name for name in ("in_proj_weight", "in_proj_bias", "out_proj.weight",
                                 "out_proj.bias")}


def attention(embed_dim=6, num_heads=2, seed=0):
    rng = np.random.default_rng(seed)
    layer = MultiheadSelfAttention(embed_dim, num_heads, rng=rng, dtype=np.float64)
    for name in ("in_proj_bias", "out_proj.bias"):
        layer.params[name][...] = rng.standard_normal(layer.params[name].shape)
    return layer, rng


@pytest.mark.parametrize("embed_dim, num_heads", [(6, 2), (4, 1), (6, 6)])
def test_attention_gradients(embed_dim, num_heads):
    layer, rng = attention(embed_dim, num_heads)
    check_layer_gradients(layer, rng.standard_normal((2, 3, embed_dim)))


@pytest.mark.parametrize("embed_dim, num_heads", [(6, 2), (8, 4)])
def test_attention_matches_torch(embed_dim, num_heads):
    torch = pytest.importorskip("torch")

    class SelfAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = torch.nn.MultiheadAttention(embed_dim, num_heads,
                                                         batch_first=True)

        def forward(self, x):
            return self.attention(x, x, x, need_weights=False)[0]

    module = SelfAttention()
    layer, rng = attention(embed_dim, num_heads, seed=1)
    compare_with_torch(layer, module, rng.standard_normal((3, 5, embed_dim)),
                       {name: f"attention.{name}" for name in NAMES})


def test_attention_is_stable_for_large_scores_and_keeps_float32():
    layer, rng = attention()
    y = layer.forward(rng.standard_normal((2, 3, 6)) * 1e4, True)
    assert np.isfinite(y).all()
    l32 = MultiheadSelfAttention(6, 3, rng=np.random.default_rng(0))
    y = l32.forward(rng.standard_normal((2, 3, 6)), True)
    assert y.dtype == np.float32 and l32.backward(np.ones_like(y)).dtype == np.float32
    assert l32.backward(np.ones_like(y), input_grad=False) is None
    assert sorted(l32.params) == sorted(NAMES)


def test_attention_validates_arguments_and_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="num_heads must divide"):
        MultiheadSelfAttention(6, 4, rng=rng)
    with pytest.raises(ValueError, match="embed_dim"):
        MultiheadSelfAttention(0, 1, rng=rng)
    with pytest.raises(TypeError, match="num_heads"):
        MultiheadSelfAttention(6, 2.0, rng=rng)
    with pytest.raises(ValueError, match="MultiheadSelfAttention expects"):
        MultiheadSelfAttention(6, 2, rng=rng).forward(np.ones((2, 3, 5)), True)
