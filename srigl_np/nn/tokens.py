"""The pieces of a Vision Transformer (Dosovitskiy et al., 2021; torchvision's ViT)
between the patch convolution and the encoder, and after it: ``PatchTokens`` turns the
patch convolution's map into tokens, ``ClassToken`` prepends the learned class token,
``PositionEmbedding`` adds the learned position embedding, ``SelectToken`` takes the
class token's output for the head. They follow the ``nn.layers.Layer`` contract;
parameters carry torchvision's names and shapes ("class_token" (1, 1, D),
"pos_embedding" (1, L, D)) so a state_dict maps by name.
"""

import numpy as np

from ..backend import array_module
from ..validation import count, positive_int
from .layers import Layer, as_dtype, check_dtype


class PatchTokens(Layer):
    """(batch, dim, h, w) -> (batch, h*w, dim): one token per patch, row-major over the
    patch grid, as torchvision's ``_process_input`` orders them."""

    def __init__(self):
        super().__init__()
        self.shape = None

    def forward(self, x, training):
        if x.ndim != 4:
            raise ValueError(f"PatchTokens expects x of shape (batch, dim, h, w), got {x.shape}")
        self.shape = x.shape
        batch, dim = x.shape[:2]
        return array_module(x).ascontiguousarray(x.reshape(batch, dim, -1).transpose(0, 2, 1))

    def backward(self, grad_out, input_grad=True):
        batch, dim, height, width = self.shape
        return grad_out.transpose(0, 2, 1).reshape(batch, dim, height, width)


class ClassToken(Layer):
    """(batch, n, dim) -> (batch, 1 + n, dim): the learned ``class_token`` (1, 1, dim)
    first, as in torchvision (zeros at initialisation, as there)."""

    def __init__(self, dim, dtype=np.float32):
        super().__init__()
        self.dim = positive_int("dim", dim)
        self._add_param("class_token", np.zeros((1, 1, self.dim), dtype=check_dtype(dtype)))

    def forward(self, x, training):
        token = self.params["class_token"]
        x = as_dtype(x, token.dtype)
        if x.ndim != 3 or x.shape[2] != self.dim:
            raise ValueError(f"ClassToken expects x of shape (batch, tokens, {self.dim}), "
                             f"got {x.shape}")
        xp = array_module(x)
        return xp.concatenate([xp.broadcast_to(token, (x.shape[0], 1, self.dim)), x], axis=1)

    def backward(self, grad_out, input_grad=True):
        grad_out[:, :1].sum(axis=0, keepdims=True, out=self.grads["class_token"])
        return grad_out[:, 1:] if input_grad else None

    def __repr__(self):
        return f"ClassToken({self.dim})"


class PositionEmbedding(Layer):
    """x + pos_embedding for x (batch, length, dim); ``pos_embedding`` (1, length, dim)
    starts normal with std 0.02, as torchvision's."""

    def __init__(self, length, dim, *, rng, dtype=np.float32):
        super().__init__()
        self.length = positive_int("length", length)
        self.dim = positive_int("dim", dim)
        dtype = check_dtype(dtype)
        self._add_param("pos_embedding",
                        (0.02 * rng.standard_normal((1, self.length, self.dim))).astype(dtype))

    def forward(self, x, training):
        embedding = self.params["pos_embedding"]
        x = as_dtype(x, embedding.dtype)
        if x.shape[1:] != embedding.shape[1:]:
            raise ValueError(f"PositionEmbedding expects x of shape (batch, {self.length}, "
                             f"{self.dim}), got {x.shape}")
        return x + embedding

    def backward(self, grad_out, input_grad=True):
        grad_out.sum(axis=0, keepdims=True, out=self.grads["pos_embedding"])
        return grad_out if input_grad else None

    def __repr__(self):
        return f"PositionEmbedding({self.length}, {self.dim})"


class SelectToken(Layer):
    """(batch, length, dim) -> (batch, dim): the token at ``index`` (0, the class token)."""

    def __init__(self, index=0):
        super().__init__()
        self.index = count("index", index)
        self.shape = None

    def forward(self, x, training):
        if x.ndim != 3 or x.shape[1] <= self.index:
            raise ValueError(f"SelectToken({self.index}) expects x of shape (batch, length > "
                             f"{self.index}, dim), got {x.shape}")
        self.shape = x.shape
        return x[:, self.index].copy()

    def backward(self, grad_out, input_grad=True):
        grad = array_module(grad_out).zeros(self.shape, dtype=grad_out.dtype)
        grad[:, self.index] = grad_out
        return grad

    def __repr__(self):
        return f"SelectToken({self.index})"
