"""Multi-head self-attention (Vaswani et al., 2017) as ViT-B/16 uses it, following the
``nn.layers.Layer`` contract. Parameters carry PyTorch's names and shapes
(torch.nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)), so a state_dict
maps by name; no attention dropout, no masks, no attention weights returned.
"""

import math

import numpy as np

from ..backend import array_module
from ..validation import positive_int
from .layers import Layer, as_dtype, check_dtype, kaiming_normal


class MultiheadSelfAttention(Layer):
    """y = concat_h(softmax(q_h k_h^T / sqrt(d)) v_h) @ W_out.T + b_out, with
    [q, k, v] = x @ in_proj_weight.T + in_proj_bias split into ``num_heads`` heads of
    d = embed_dim / num_heads features.

    x, y: (batch, length, embed_dim); in_proj_weight: (3*embed_dim, embed_dim), the q, k
    and v projections stacked in that order; in_proj_bias: (3*embed_dim,);
    out_proj.weight: (embed_dim, embed_dim); out_proj.bias: (embed_dim,). Weights start
    Kaiming-normal over the fan-in embed_dim (torch uses Xavier-uniform), biases at zero.
    """

    sparse_weights = ("in_proj_weight", "out_proj.weight")

    def __init__(self, embed_dim, num_heads, *, rng, dtype=np.float32):
        super().__init__()
        self.embed_dim = positive_int("embed_dim", embed_dim)
        self.num_heads = positive_int("num_heads", num_heads)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"num_heads must divide embed_dim ({self.embed_dim}), "
                             f"got {self.num_heads}")
        dtype = check_dtype(dtype)
        e = self.embed_dim
        self._add_param("in_proj_weight", kaiming_normal((3 * e, e), e, rng, dtype))
        self._add_param("in_proj_bias", np.zeros(3 * e, dtype=dtype))
        self._add_param("out_proj.weight", kaiming_normal((e, e), e, rng, dtype))
        self._add_param("out_proj.bias", np.zeros(e, dtype=dtype))
        self.x = self.q = self.k = self.v = self.attention = self.context = None

    def _heads(self, a):
        """(batch, length, embed_dim) -> (batch, heads, length, head_dim)."""
        batch, length, _ = a.shape
        return a.reshape(batch, length, self.num_heads, -1).transpose(0, 2, 1, 3)

    def _merge(self, a):
        """(batch, heads, length, head_dim) -> (batch, length, embed_dim)."""
        batch, _, length, _ = a.shape
        return a.transpose(0, 2, 1, 3).reshape(batch, length, self.embed_dim)

    def forward(self, x, training):
        weight = self.params["in_proj_weight"]
        x = as_dtype(x, weight.dtype)
        if x.ndim != 3 or x.shape[2] != self.embed_dim:
            raise ValueError(f"MultiheadSelfAttention expects x of shape (batch, length, "
                             f"{self.embed_dim}), got {x.shape}")
        xp = array_module(x)
        self.x = x
        qkv = x @ weight.T + self.params["in_proj_bias"]
        q, k, v = (self._heads(part) for part in xp.split(qkv, 3, axis=2))
        scale = 1 / math.sqrt(self.embed_dim // self.num_heads)
        scores = (q * scale) @ k.transpose(0, 1, 3, 2)                # (B, H, L, L)
        scores -= scores.max(axis=-1, keepdims=True)   # softmax without overflow
        attention = xp.exp(scores)
        attention /= attention.sum(axis=-1, keepdims=True)
        self.q, self.k, self.v, self.attention = q, k, v, attention
        self.context = self._merge(attention @ v)                      # (B, L, E)
        return self.context @ self.params["out_proj.weight"].T + self.params["out_proj.bias"]

    def backward(self, grad_out, input_grad=True):
        """Backwards through out_proj, attention @ v, the row softmax (dL/ds = a * (dL/da -
        sum_j a_j dL/da_j)), the scaled q k^T and in_proj, in that order."""
        weight = self.params["in_proj_weight"]
        grad_out = as_dtype(grad_out, weight.dtype)
        xp = array_module(grad_out)
        e = self.embed_dim
        g = grad_out.reshape(-1, e)
        xp.matmul(g.T, self.context.reshape(-1, e), out=self.grads["out_proj.weight"])
        g.sum(axis=0, out=self.grads["out_proj.bias"])
        grad_context = self._heads(grad_out @ self.params["out_proj.weight"])  # (B, H, L, D)
        a = self.attention
        grad_v = a.transpose(0, 1, 3, 2) @ grad_context
        grad_a = grad_context @ self.v.transpose(0, 1, 3, 2)
        grad_scores = a * (grad_a - (grad_a * a).sum(axis=-1, keepdims=True))
        grad_scores *= 1 / math.sqrt(e // self.num_heads)
        grad_q = grad_scores @ self.k
        grad_k = grad_scores.transpose(0, 1, 3, 2) @ self.q
        grad_qkv = xp.concatenate([self._merge(grad_q), self._merge(grad_k),
                                   self._merge(grad_v)], axis=2).reshape(-1, 3 * e)
        xp.matmul(grad_qkv.T, self.x.reshape(-1, e), out=self.grads["in_proj_weight"])
        grad_qkv.sum(axis=0, out=self.grads["in_proj_bias"])
        if not input_grad:
            return None
        return (grad_qkv @ weight).reshape(self.x.shape)

    def __repr__(self):
        return f"MultiheadSelfAttention({self.embed_dim}, num_heads={self.num_heads})"
