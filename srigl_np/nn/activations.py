"""Smooth and piecewise activations of the paper's newer architectures (``ReLU`` is in
``layers``): ``Sigmoid``, ``Hardsigmoid`` and ``Hardswish`` (MobileNet-V3, Howard et al.,
2019), ``GELU`` (ViT) and ``LogSoftmax`` (the WRN-22-2's output). Each follows the
``nn.layers.Layer`` contract and keeps its input (LogSoftmax: its output) for the
backward pass; none has parameters.

Derivatives at the kinks of the piecewise ones (x = -3 and x = 3) take PyTorch's side,
so gradients agree with torch everywhere:
    hardsigmoid'(x) = 1/6 on the open interval (-3, 3), 0 elsewhere;
    hardswish'(x) = 0 for x <= -3, x/3 + 1/2 on (-3, 3), 1 for x >= 3.
"""

import math

from ..backend import array_module, is_cupy_array
from .layers import Layer


def erf(x):
    """The error function, element-wise, for NumPy (scipy.special) or CuPy (cupyx) arrays."""
    if is_cupy_array(x):
        from cupyx.scipy.special import erf as device_erf
        return device_erf(x)
    from scipy.special import erf as host_erf
    return host_erf(x)


class Sigmoid(Layer):
    """y = 1 / (1 + exp(-x)); dL/dx = g * y * (1 - y)."""

    def __init__(self):
        super().__init__()
        self.y = None

    def forward(self, x, training):
        xp = array_module(x)
        # exp(-|x|) never overflows: sigmoid(x) = 1/(1+e) for x >= 0, e/(1+e) below.
        e = xp.exp(-xp.abs(x))
        self.y = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
        return self.y

    def backward(self, grad_out):
        return grad_out * self.y * (1 - self.y)


class Hardsigmoid(Layer):
    """y = min(max(x + 3, 0), 6) / 6, the piecewise-linear sigmoid of MobileNet-V3."""

    def __init__(self):
        super().__init__()
        self.x = None
        self.gate = None

    def forward(self, x, training):
        xp = array_module(x)
        self.x = x
        self.gate = xp.clip(x + 3, 0, 6) / 6
        return self.gate

    def _inside(self):
        """Where the slope is 1/6: the open interval (-3, 3), as PyTorch."""
        return (self.x > -3) & (self.x < 3)

    def backward(self, grad_out):
        return grad_out * self._inside() / 6


class Hardswish(Hardsigmoid):
    """y = x * hardsigmoid(x) = x * min(max(x + 3, 0), 6) / 6 (MobileNet-V3).

    dL/dx = g * (hardsigmoid(x) + x * hardsigmoid'(x)): the product rule, which with
    hardsigmoid's slope convention gives PyTorch's slopes, 0 at -3 and 1 at 3.
    """

    def forward(self, x, training):
        return x * super().forward(x, training)

    def backward(self, grad_out):
        return grad_out * (self.gate + self.x * self._inside() / 6)


class GELU(Layer):
    """y = x * Phi(x) = x/2 * (1 + erf(x / sqrt(2))), the exact GELU (Hendrycks & Gimpel).

    PyTorch's default (approximate="none") and the form ViT-B/16 was trained with; the
    tanh approximation is not offered. dL/dx = g * (Phi(x) + x * phi(x)), phi the
    standard normal density.
    """

    def __init__(self):
        super().__init__()
        self.x = None
        self.cdf = None

    def forward(self, x, training):
        self.x = x
        self.cdf = (1 + erf(x * (1 / math.sqrt(2)))) / 2
        return x * self.cdf

    def backward(self, grad_out):
        xp = array_module(grad_out)
        x = self.x
        density = xp.exp(-x * x / 2) * (1 / math.sqrt(2 * math.pi))
        return grad_out * (self.cdf + x * density)


class LogSoftmax(Layer):
    """y = x - logsumexp(x) over the last axis: log-probabilities, the output of the
    authors' WRN-22-2 (``F.log_softmax(out, dim=1)``). dL/dx = g - softmax(x) * sum(g)."""

    def __init__(self):
        super().__init__()
        self.y = None

    def forward(self, x, training):
        xp = array_module(x)
        shifted = x - x.max(axis=-1, keepdims=True)
        self.y = shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))
        return self.y

    def backward(self, grad_out):
        xp = array_module(grad_out)
        return grad_out - xp.exp(self.y) * grad_out.sum(axis=-1, keepdims=True)
