"""The Vision Transformer (Dosovitskiy et al., 2021) as torchvision builds it
(``torchvision.models.VisionTransformer``; ``vit_b_16`` at the defaults), with
torchvision's state_dict keys as parameter names:

    conv_proj.weight, conv_proj.bias            the patch embedding (a strided Conv2d)
    class_token                                 (1, 1, hidden_dim)
    encoder.pos_embedding                       (1, 1 + (image_size/patch_size)^2, hidden_dim)
    encoder.layers.encoder_layer_{i}.ln_1.*     pre-attention LayerNorm (eps 1e-6)
        ....self_attention.in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias
        ....ln_2.*, mlp.0.*, mlp.3.*            pre-MLP LayerNorm, Linear, GELU, Linear
    encoder.ln.*                                the final LayerNorm
    heads.head.weight, heads.head.bias          the classifier on the class token

x: (batch, 3, image_size, image_size) -> logits (batch, num_classes). Each encoder
layer is x + dropout(attention(ln_1(x))), then x + mlp(ln_2(x)): two ``Residual``s
with empty body names, so their parts sit directly under "encoder_layer_{i}". GELU is
the exact (erf) one; no attention dropout (torchvision's ViT-B/16 has none), and
``dropout`` (0 by default, as torchvision's) sits where torchvision puts it: after the
position embedding, after the attention, and after each MLP Linear.

Weights start as srigl_np's layers start (Kaiming-normal, zero biases, identity
LayerNorm, zero class token, position embedding N(0, 0.02^2)), not with torchvision's
Xavier/zero-head initialisers. Small versions for tests: image_size=16, patch_size=4,
hidden_dim=16, ...
"""

import numpy as np

from ..validation import positive_int
from .activations import GELU
from .attention import MultiheadSelfAttention
from .blocks import Residual
from .layers import Conv2d, Dropout, Linear, Sequential
from .normalization import LayerNorm
from .tokens import ClassToken, PatchTokens, PositionEmbedding, SelectToken

LN_EPS = 1e-6


def encoder_layer(hidden_dim, num_heads, mlp_dim, dropout, *, rng, dtype=np.float32):
    """torchvision's EncoderBlock: (batch, length, hidden_dim) -> the same shape."""
    attention = Sequential(LayerNorm(hidden_dim, eps=LN_EPS, dtype=dtype),
                           MultiheadSelfAttention(hidden_dim, num_heads, rng=rng, dtype=dtype),
                           Dropout(dropout), names=["ln_1", "self_attention", "dropout"])
    mlp = Sequential(Linear(hidden_dim, mlp_dim, rng=rng, dtype=dtype), GELU(), Dropout(dropout),
                     Linear(mlp_dim, hidden_dim, rng=rng, dtype=dtype), Dropout(dropout))
    feed_forward = Sequential(LayerNorm(hidden_dim, eps=LN_EPS, dtype=dtype), mlp,
                              names=["ln_2", "mlp"])
    # Empty names: torchvision keeps ln_1 ... mlp directly under the encoder layer.
    return Sequential(Residual(attention, body_name=""), Residual(feed_forward, body_name=""),
                      names=["", ""])


def vit_b_16(*, image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768,
             mlp_dim=3072, num_classes=1000, dropout=0.0, rng, dtype=np.float32):
    """torchvision's VisionTransformer(image_size, patch_size, num_layers, num_heads,
    hidden_dim, mlp_dim, num_classes=num_classes): ViT-B/16 at the defaults.

    x: (batch, 3, image_size, image_size), image_size a multiple of patch_size ->
    logits (batch, num_classes). See the module docstring for the keys.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    image_size = positive_int("image_size", image_size)
    patch_size = positive_int("patch_size", patch_size)
    if image_size % patch_size:
        raise ValueError(f"patch_size must divide image_size ({image_size}), got {patch_size}")
    hidden_dim = positive_int("hidden_dim", hidden_dim)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    length = 1 + (image_size // patch_size) ** 2
    layers = Sequential(*[encoder_layer(hidden_dim, num_heads, positive_int("mlp_dim", mlp_dim),
                                        dropout, rng=rng, dtype=dtype)
                          for _ in range(positive_int("num_layers", num_layers))],
                        names=[f"encoder_layer_{i}" for i in range(num_layers)])
    encoder = Sequential(PositionEmbedding(length, hidden_dim, rng=rng, dtype=dtype),
                         Dropout(dropout), layers, LayerNorm(hidden_dim, eps=LN_EPS, dtype=dtype),
                         names=["", "dropout", "layers", "ln"])
    heads = Sequential(Linear(hidden_dim, positive_int("num_classes", num_classes), rng=rng,
                              dtype=dtype), names=["head"])
    model = Sequential(
        Conv2d(3, hidden_dim, patch_size, stride=patch_size, rng=rng, dtype=dtype),
        PatchTokens(), ClassToken(hidden_dim, dtype=dtype), encoder, SelectToken(0), heads,
        names=["conv_proj", "patch_tokens", "", "encoder", "select_token", "heads"])
    model.set_rng(rng.spawn(1)[0])   # the Dropouts' masks; replace per epoch with set_rng
    return model
