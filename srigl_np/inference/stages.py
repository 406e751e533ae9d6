"""The stages between condensed layers: dense layers that stay dense, element-wise steps,
normalisation, pooling, the token steps of a Vision Transformer and ``Scatter``.

Each follows ``condensed.Stage`` (forward on its input's device; saving, loading and
moving derived from ARRAYS / OPTIONAL / SETTINGS). Activations also give
``constant(c)``: the function on float64 NumPy values, with which ``condense`` carries
the constant output of a removed neuron through them. The composite stages (residual
blocks, squeeze-excite, attention) are in ``graph.py``.
"""

import math

import numpy as np

from ..backend import array_module
from ..kernels import gelu, layer_norm, max_pool2d
from ..nn.activations import erf
from ..nn.pooling import MaxPool2d
from ..validation import check_array, count
from .condensed import Stage, conv_geometry, conv_rows, float_input, rows_to_images


def _check_float32(name, a, ndim=None, shape=None):
    return check_array(name, a, dtypes=(np.float32,), ndim=ndim, shape=shape, finite=True,
                       device="cpu")


def _check_dense_params(weight, bias, ndim):
    _check_float32("weight", weight, ndim)
    if bias is not None:
        _check_float32("bias", bias, shape=(weight.shape[0],))
    return np.ascontiguousarray(weight), bias


# -- layers kept dense ----------------------------------------------------------------------

class DenseLinear(Stage):
    """A Linear layer ``condense`` keeps dense (its rows differ in count, and the measured
    rule of ``condense_layer.PADDED_DENSITY_LIMIT`` says dense is faster than padding them):
    y = x @ weight.T + bias over its active rows.
    weight: (n_active, n_in) float32; bias: (n_active,) float32 or None.
    x: (batch, n_in) or tokens (batch, ..., n_in)."""

    kind = "dense_linear"
    ARRAYS = ("weight",)
    OPTIONAL = ("bias",)

    def __init__(self, weight, bias=None):
        self.weight, self.bias = _check_dense_params(weight, bias, 2)
        self.n_in = self.weight.shape[1]

    def forward(self, x, threads=0):
        x = float_input(x)
        if x.ndim < 2 or x.shape[-1] != self.n_in:
            raise ValueError(f"x must have shape (batch, [..., ]{self.n_in}), got {x.shape}")
        y = x @ self.weight.T
        if self.bias is not None:
            y += self.bias
        return y

    def __repr__(self):
        return f"DenseLinear(n_in={self.n_in}, n_out={self.weight.shape[0]})"


class DenseConv2d(Stage):
    """The Conv2d counterpart of DenseLinear: weight (n_active, in_channels, kh, kw)."""

    kind = "dense_conv2d"
    ARRAYS = ("weight",)
    OPTIONAL = ("bias",)
    SETTINGS = ("stride", "padding")

    def __init__(self, weight, bias=None, stride=1, padding=0):
        self.weight, self.bias = _check_dense_params(weight, bias, 4)
        self.in_channels = self.weight.shape[1]
        self.kernel_size, self.stride, self.padding = conv_geometry(
            self.weight.shape[2:], stride, padding)

    def forward(self, x, threads=0):
        cols, batch, out_h, out_w = conv_rows(x, self.in_channels, self.kernel_size,
                                              self.stride, self.padding, threads)
        rows = cols @ self.weight.reshape(self.weight.shape[0], -1).T
        if self.bias is not None:
            rows += self.bias
        return rows_to_images(rows, batch, out_h, out_w)

    def __repr__(self):
        return f"DenseConv2d(weight={self.weight.shape}, stride={self.stride}, " \
               f"padding={self.padding})"


# -- element-wise -----------------------------------------------------------------------------

class Activation(Stage):
    """An element-wise function: ``function(xp, x)`` on arrays of any module; ``constant``
    the same on float64 NumPy values (a removed neuron's constant output)."""

    @staticmethod
    def function(xp, x):
        raise NotImplementedError

    def forward(self, x, threads=0):
        return self.function(array_module(x), x)

    @classmethod
    def constant(cls, c):
        return cls.function(np, np.asarray(c, dtype=np.float64))

    def __repr__(self):
        return f"{type(self).__name__}()"


class Relu(Activation):
    """max(x, 0). ``run_pipeline`` applies it in place to an array the model made itself
    (``forward(x, out=x)``): for a (256, 64, 24, 24) activation of the cnn a new array
    took 12.5 ms against 6.9 ms in place (np.maximum timed alone, Zen 5)."""

    kind = "relu"

    @staticmethod
    def function(xp, x):
        return xp.maximum(x, 0)

    def forward(self, x, threads=0, out=None):
        return array_module(x).maximum(x, 0, out=out)

    def __repr__(self):
        return "ReLU()"


class Sigmoid(Activation):
    """1 / (1 + exp(-x)), computed from exp(-|x|) so that it never overflows."""

    kind = "sigmoid"

    @staticmethod
    def function(xp, x):
        e = xp.exp(-xp.abs(x))
        return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


class Hardsigmoid(Activation):
    """min(max(x + 3, 0), 6) / 6 (MobileNet-V3)."""

    kind = "hardsigmoid"

    @staticmethod
    def function(xp, x):
        return xp.clip(x + 3, 0, 6) / 6


class Hardswish(Activation):
    """x * min(max(x + 3, 0), 6) / 6 (MobileNet-V3)."""

    kind = "hardswish"

    @staticmethod
    def function(xp, x):
        return x * (xp.clip(x + 3, 0, 6) / 6)


# erf by Abramowitz & Stegun 7.1.26: erf(z) = 1 - t (a1 + t (a2 + ... + t a5)) exp(-z^2),
# t = 1 / (1 + p z), z >= 0, absolute error below 1.5e-7 (float32's own rounding near 1
# is 6e-8). For ViT-B/16's (197, 3072) MLP activation in float32 (12 per image) GELU by
# scipy.special.erf took 17-19 ms, this 9 ms (1 thread, 2-core Xeon with other load).
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def gelu_fast(xp, x):
    """x * Phi(x) for float32 arrays, as relu(x) - |x| * Phi(-|x|) with Phi(-|x|) =
    erfc(|x| / sqrt 2) / 2 by A&S 7.1.26 (error below 3e-7 * |x| in float32); 20 NumPy
    passes. x*x overflowing to inf for |x| > 1.8e19 gives exp(-inf) = 0, as it should."""
    magnitude = xp.abs(x)
    t = magnitude * np.float32(_ERF_P / math.sqrt(2))
    t += 1
    xp.reciprocal(t, out=t)
    poly = t * np.float32(_ERF_A[4] / 2)          # the halves of erfc / 2 folded in
    for a in _ERF_A[3::-1]:
        poly += np.float32(a / 2)
        poly *= t
    with np.errstate(over="ignore"):
        gauss = x * x
    gauss *= np.float32(-0.5)
    xp.exp(gauss, out=gauss)                       # exp(-(|x| / sqrt 2)^2)
    poly *= gauss
    poly *= magnitude
    out = xp.maximum(x, np.float32(0))
    out -= poly
    return out


class Gelu(Activation):
    """The exact GELU, x/2 * (1 + erf(x / sqrt(2))) (ViT): float32 NumPy arrays by the
    compiled ``kernels.gelu`` (a fitted rational erf, within 1.9e-7 * |x|; ViT-B/16's
    (197, 3072) activation in 0.3-0.6 ms on one thread against 6 ms for ``gelu_fast``'s
    NumPy passes, 2-core Xeon under load), float32 CuPy arrays by ``gelu_fast``, and
    float64 (the constants ``condense`` carries) with scipy's erf. ``run_pipeline``
    applies it in place to an array the model made (``forward(x, out=x)``)."""

    kind = "gelu"

    def forward(self, x, threads=0, out=None):
        xp = array_module(x)
        if xp is not np or x.dtype != np.float32:
            y = self.function(xp, x)
            if out is None:
                return y
            out[...] = y
            return out
        return gelu(x, threads, out=out)

    @staticmethod
    def function(xp, x):
        if x.dtype == np.float32:
            return gelu_fast(xp, x)
        return x * ((1 + erf(x * (1 / math.sqrt(2)))) / 2)


class LogSoftmax(Activation):
    """x - logsumexp(x) over the last axis (the WRN-22-2's output). Not element-wise:
    ``condense`` puts every feature back before it."""

    kind = "log_softmax"

    @staticmethod
    def function(xp, x):
        shifted = x - x.max(axis=-1, keepdims=True)
        return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


# -- normalisation, pooling, reshaping -----------------------------------------------------------

class ChannelAffine(Stage):
    """x * scale + shift along axis 1: a BatchNorm in evaluation that follows no conv (the
    pre-activation WRN's bn -> relu -> conv), on the kept channels.
    scale, shift: (channels,) float32."""

    kind = "channel_affine"
    ARRAYS = ("scale", "shift")

    def __init__(self, scale, shift):
        _check_float32("scale", scale, 1)
        _check_float32("shift", shift, shape=scale.shape)
        self.scale, self.shift = scale, shift

    def forward(self, x, threads=0):
        if x.ndim < 2 or x.shape[1] != self.scale.size:
            raise ValueError(f"x must have {self.scale.size} channels on axis 1, got {x.shape}")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.scale.reshape(shape) + self.shift.reshape(shape)

    def __repr__(self):
        return f"ChannelAffine({self.scale.size})"


class LayerNorm(Stage):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (ViT).
    weight, bias: (features,) float32; eps > 0."""

    kind = "layer_norm"
    ARRAYS = ("weight", "bias")
    SETTINGS = ("eps",)

    def __init__(self, weight, bias, eps):
        _check_float32("weight", weight, 1)
        _check_float32("bias", bias, shape=weight.shape)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ValueError(f"eps must be a number in (0, 1), got {eps!r}")
        self.weight, self.bias, self.eps = weight, bias, float(eps)

    def forward(self, x, threads=0):
        if x.ndim < 2 or x.shape[-1] != self.weight.size:
            raise ValueError(f"x must have {self.weight.size} features on its last axis, "
                             f"got {x.shape}")
        xp = array_module(x)
        if xp is not np or x.dtype != np.float32:
            return self._normalise(xp, x)
        return layer_norm(x, self.weight, self.bias, self.eps, threads)

    def _normalise(self, xp, x):
        """The definition, on any array module (NumPy float32 runs ``kernels.layer_norm``,
        a compiled pass per row: 0.06 ms for ViT-B/16's (197, 768) tokens, one thread)."""
        centred = x - x.mean(axis=-1, keepdims=True)
        inv_std = 1 / xp.sqrt((centred * centred).mean(axis=-1, keepdims=True) + self.eps)
        centred *= inv_std
        centred *= self.weight
        centred += self.bias
        return centred

    def __repr__(self):
        return f"LayerNorm({self.weight.size}, eps={self.eps})"


class MaxPool(Stage):
    """Max pooling, as srigl_np.nn.pooling.MaxPool2d in evaluation; ``padding`` pads with
    -inf, as PyTorch does (ResNet-50's 3x3 stride-2 pool). Files of format_version 1
    have no padding setting: 0."""

    kind = "max_pool2d"
    SETTINGS = ("kernel_size", "stride", "padding")
    DEFAULTS = {"padding": 0}

    def __init__(self, kernel_size, stride, padding=0):
        self._pool = MaxPool2d(kernel_size, stride)
        self.kernel_size, self.stride = self._pool.kernel_size, self._pool.stride
        self.padding = count("padding", padding)
        if self.padding > min(self.kernel_size) // 2:
            raise ValueError(f"padding must be at most half the kernel size "
                             f"{self.kernel_size}, got {self.padding}")

    @classmethod
    def from_fields(cls, kernel_size, stride, padding=0):
        return cls(tuple(kernel_size), stride, padding)

    def forward(self, x, threads=0):
        xp = array_module(x)
        if self.padding:
            p = self.padding
            x = xp.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
        if xp is np and x.dtype == np.float32:   # the CPU kernel
            return max_pool2d(np.ascontiguousarray(x), *self.kernel_size, self.stride,
                              threads)
        return self._pool.forward(x, False)

    def __repr__(self):
        padding = f", padding={self.padding}" if self.padding else ""
        return f"MaxPool2d({self.kernel_size}, stride={self.stride}{padding})"


class GlobalAvgPool(Stage):
    """(batch, C, H, W) -> (batch, C): the mean over the image."""

    kind = "global_avg_pool2d"

    def forward(self, x, threads=0):
        if x.ndim != 4:
            raise ValueError(f"x must have shape (batch, channels, height, width), got {x.shape}")
        return x.mean(axis=(2, 3), dtype=x.dtype)

    def __repr__(self):
        return "GlobalAvgPool2d()"


class FlattenStage(Stage):
    """(batch, ...) -> (batch, prod(...)), C order."""

    kind = "flatten"

    def forward(self, x, threads=0):
        # Not reshape(batch, -1): NumPy cannot infer the -1 of an empty batch.
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def __repr__(self):
        return "Flatten()"


class Scatter(Stage):
    """Put the kept features back at their positions along ``axis`` (1: channels or flat
    features; -1: a token's features) and fill the removed ones with their constant value
    (the output of an ablated neuron is constant).
    positions: (n_kept,) int64, strictly increasing in [0, n_features);
    constants: (n_features,) float32, read where no position points. Files of
    format_version 1 have no axis setting: 1."""

    kind = "scatter"
    ARRAYS = ("positions", "constants")
    SETTINGS = ("axis",)
    DEFAULTS = {"axis": 1}

    def __init__(self, positions, constants, axis=1):
        _check_float32("constants", constants, 1)
        check_array("positions", positions, dtypes=(np.int64,), device="cpu")
        if positions.ndim != 1 or (positions.size and (
                positions[0] < 0 or positions[-1] >= constants.size
                or (np.diff(positions) <= 0).any())):
            raise ValueError(f"positions must be 1-D, strictly increasing in "
                             f"[0, {constants.size})")
        if axis not in (1, -1) or isinstance(axis, bool):
            raise ValueError(f"axis must be 1 or -1, got {axis!r}")
        self.positions, self.constants, self.axis = positions, constants, axis
        self._removed = np.setdiff1d(np.arange(constants.size), positions)

    def forward(self, x, threads=0):
        axis = self.axis % max(x.ndim, 2)
        if x.ndim < 2 or x.shape[axis] != self.positions.size:
            raise ValueError(f"x must have {self.positions.size} features on axis "
                             f"{self.axis}, got {x.shape}")
        xp = array_module(x)
        shape = list(x.shape)
        shape[axis] = self.constants.size
        out = xp.empty(shape, dtype=xp.float32)
        lead = (slice(None),) * axis
        out[lead + (xp.asarray(self.positions),)] = x
        fill = [1] * x.ndim
        fill[axis] = -1
        out[lead + (xp.asarray(self._removed),)] = xp.asarray(
            self.constants[self._removed].reshape(fill))
        return out

    def __repr__(self):
        where = "" if self.axis == 1 else f", axis={self.axis}"
        return f"Scatter({self.positions.size} -> {self.constants.size}{where})"


# -- a Vision Transformer's tokens ---------------------------------------------------------------

class PatchTokens(Stage):
    """(batch, dim, h, w) -> (batch, h*w, dim), one token per patch, row-major."""

    kind = "patch_tokens"

    def forward(self, x, threads=0):
        if x.ndim != 4:
            raise ValueError(f"x must have shape (batch, dim, h, w), got {x.shape}")
        batch, dim = x.shape[:2]
        return array_module(x).ascontiguousarray(x.reshape(batch, dim, -1).transpose(0, 2, 1))

    def __repr__(self):
        return "PatchTokens()"


class ClassToken(Stage):
    """(batch, n, dim) -> (batch, 1 + n, dim): the learned class_token (1, 1, dim) first."""

    kind = "class_token"
    ARRAYS = ("class_token",)

    def __init__(self, class_token):
        _check_float32("class_token", class_token, 3)
        if class_token.shape[:2] != (1, 1):
            raise ValueError(f"class_token must have shape (1, 1, dim), got {class_token.shape}")
        self.class_token = class_token

    def forward(self, x, threads=0):
        dim = self.class_token.shape[2]
        if x.ndim != 3 or x.shape[2] != dim:
            raise ValueError(f"x must have shape (batch, tokens, {dim}), got {x.shape}")
        xp = array_module(x)
        out = xp.empty((x.shape[0], x.shape[1] + 1, dim), dtype=xp.float32)
        out[:, :1] = self.class_token
        out[:, 1:] = x
        return out

    def __repr__(self):
        return f"ClassToken({self.class_token.shape[2]})"


class PositionEmbedding(Stage):
    """x + pos_embedding for tokens x (batch, length, dim); pos_embedding (1, length, dim)."""

    kind = "position_embedding"
    ARRAYS = ("pos_embedding",)

    def __init__(self, pos_embedding):
        _check_float32("pos_embedding", pos_embedding, 3)
        if pos_embedding.shape[0] != 1:
            raise ValueError(f"pos_embedding must have shape (1, length, dim), got "
                             f"{pos_embedding.shape}")
        self.pos_embedding = pos_embedding

    def forward(self, x, threads=0):
        if x.ndim != 3 or x.shape[1:] != self.pos_embedding.shape[1:]:
            raise ValueError(f"x must have shape (batch, {self.pos_embedding.shape[1]}, "
                             f"{self.pos_embedding.shape[2]}), got {x.shape}")
        return x + self.pos_embedding

    def __repr__(self):
        return f"PositionEmbedding{self.pos_embedding.shape[1:]}"


class SelectToken(Stage):
    """(batch, length, dim) -> (batch, dim): the token at ``index`` (0: the class token)."""

    kind = "select_token"
    SETTINGS = ("index",)

    def __init__(self, index=0):
        self.index = count("index", index)

    def forward(self, x, threads=0):
        if x.ndim != 3 or x.shape[1] <= self.index:
            raise ValueError(f"x must have shape (batch, length > {self.index}, dim), "
                             f"got {x.shape}")
        return array_module(x).ascontiguousarray(x[:, self.index])

    def __repr__(self):
        return f"SelectToken({self.index})"
