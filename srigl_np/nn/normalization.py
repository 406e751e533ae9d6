"""Normalisation layers: ``BatchNorm1d`` over features, ``BatchNorm2d`` over channels,
``LayerNorm`` over the last axis of each sample (ViT).

They follow the ``nn.layers.Layer`` contract (params, grads, buffers updated in place;
``forward`` and ``backward`` side by side); the running statistics are buffers, so a
checkpoint saves them and ``inference.condensing`` folds them into a per-channel affine.
"""

import numpy as np

from ..backend import array_module
from ..validation import positive_int
from .layers import Layer, as_dtype, check_dtype


class _BatchNorm(Layer):
    """Batch normalisation over every axis but the channel axis 1 (Ioffe & Szegedy, 2015).

    Training: x_hat = (x - mean_B) / sqrt(var_B + eps), y = weight * x_hat + bias, with
    batch statistics (biased variance); running_mean/var move by ``momentum`` towards
    the batch mean and the *unbiased* batch variance (PyTorch's convention).
    Evaluation: the running statistics replace the batch ones.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32):
        super().__init__()
        self.num_features = positive_int("num_features", num_features)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.eps = float(eps)
        self.momentum = float(momentum)
        dtype = check_dtype(dtype)
        self._add_param("weight", np.ones(self.num_features, dtype=dtype))
        self._add_param("bias", np.zeros(self.num_features, dtype=dtype))
        self.buffers["running_mean"] = np.zeros(self.num_features, dtype=dtype)
        self.buffers["running_var"] = np.ones(self.num_features, dtype=dtype)
        self.x_hat = None
        self.inv_std = None
        self.training = False

    def _check_input(self, x):
        raise NotImplementedError

    def _channel(self, v, ndim):
        """A (C,) vector shaped to broadcast against x: (1, C) or (1, C, 1, 1)."""
        return v.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, x, training):
        weight = self.params["weight"]
        x = as_dtype(x, weight.dtype)
        self._check_input(x)
        xp = array_module(x)
        axes = (0,) + tuple(range(2, x.ndim))
        self.training = bool(training)
        if training:
            n = x.size // self.num_features
            if n < 2:
                raise ValueError(f"BatchNorm in training needs > 1 value per channel, got {n}")
            mean = x.mean(axis=axes)
            var = x.var(axis=axes)
            m = self.momentum
            self.buffers["running_mean"] *= 1 - m
            self.buffers["running_mean"] += m * mean
            self.buffers["running_var"] *= 1 - m
            self.buffers["running_var"] += (m * n / (n - 1)) * var
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        self.inv_std = 1.0 / xp.sqrt(var + self.eps)
        self.x_hat = (x - self._channel(mean, x.ndim)) * self._channel(self.inv_std, x.ndim)
        return (self.x_hat * self._channel(weight, x.ndim)
                + self._channel(self.params["bias"], x.ndim))

    def backward(self, grad_out, input_grad=True):
        """dL/dweight = sum g*x_hat, dL/dbias = sum g; in training
        dL/dx = weight*inv_std/n * (n*g - sum g - x_hat * sum g*x_hat), sums per channel."""
        weight = self.params["weight"]
        grad_out = as_dtype(grad_out, weight.dtype)
        ndim = grad_out.ndim
        axes = (0,) + tuple(range(2, ndim))
        grad_out.sum(axis=axes, out=self.grads["bias"])
        (grad_out * self.x_hat).sum(axis=axes, out=self.grads["weight"])
        if not input_grad:
            return None
        scale = self._channel(weight * self.inv_std, ndim)
        if not self.training:
            return grad_out * scale
        n = grad_out.size // self.num_features
        return scale * (grad_out - self._channel(self.grads["bias"] / n, ndim)
                        - self.x_hat * self._channel(self.grads["weight"] / n, ndim))

    def __repr__(self):
        return f"{type(self).__name__}({self.num_features})"


class BatchNorm1d(_BatchNorm):
    """BatchNorm over features: x, y: (batch, num_features)."""

    def _check_input(self, x):
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm1d expects x of shape (batch, {self.num_features}), "
                             f"got {x.shape}")


class BatchNorm2d(_BatchNorm):
    """BatchNorm over channels: x, y: (batch, num_features, height, width)."""

    def _check_input(self, x):
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d expects x of shape (batch, {self.num_features}, "
                             f"height, width), got {x.shape}")


class LayerNorm(Layer):
    """Normalisation over the last axis of each sample (Ba et al., 2016), as PyTorch's
    LayerNorm(normalized_shape) with an int ``normalized_shape``.

    x, y: (..., normalized_shape); weight, bias: (normalized_shape,).
    x_hat = (x - mean) / sqrt(var + eps) with mean and the biased var over the last axis,
    y = weight * x_hat + bias. The same in training and evaluation (no running statistics).
    """

    def __init__(self, normalized_shape, eps=1e-5, dtype=np.float32):
        super().__init__()
        self.normalized_shape = positive_int("normalized_shape", normalized_shape)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = float(eps)
        dtype = check_dtype(dtype)
        self._add_param("weight", np.ones(self.normalized_shape, dtype=dtype))
        self._add_param("bias", np.zeros(self.normalized_shape, dtype=dtype))
        self.x_hat = None
        self.inv_std = None

    def forward(self, x, training):
        weight = self.params["weight"]
        x = as_dtype(x, weight.dtype)
        if x.ndim < 1 or x.shape[-1] != self.normalized_shape:
            raise ValueError(f"LayerNorm expects x of shape (..., {self.normalized_shape}), "
                             f"got {x.shape}")
        xp = array_module(x)
        mean = x.mean(axis=-1, keepdims=True)
        self.inv_std = 1.0 / xp.sqrt(x.var(axis=-1, keepdims=True) + self.eps)
        self.x_hat = (x - mean) * self.inv_std
        return self.x_hat * weight + self.params["bias"]

    def backward(self, grad_out, input_grad=True):
        """dL/dweight = sum g*x_hat, dL/dbias = sum g over every axis but the last; with
        d = g*weight, dL/dx = inv_std * (d - mean(d) - x_hat * mean(d*x_hat)), means over
        the last axis."""
        weight = self.params["weight"]
        grad_out = as_dtype(grad_out, weight.dtype)
        leading = tuple(range(grad_out.ndim - 1))
        grad_out.sum(axis=leading, out=self.grads["bias"])
        (grad_out * self.x_hat).sum(axis=leading, out=self.grads["weight"])
        if not input_grad:
            return None
        d = grad_out * weight
        return self.inv_std * (d - d.mean(axis=-1, keepdims=True)
                               - self.x_hat * (d * self.x_hat).mean(axis=-1, keepdims=True))

    def __repr__(self):
        return f"LayerNorm({self.normalized_shape}, eps={self.eps})"
