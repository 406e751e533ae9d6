"""Blocks built from other layers: ``Residual`` (ResNet, WRN, MobileNet-V3's inverted
residuals) and ``SqueezeExcite`` (MobileNet-V3). Both follow the ``nn.layers.Layer``
contract, so a ``Sequential`` holds them like any layer.
"""

import numpy as np

from ..validation import positive_int
from .activations import Hardsigmoid, Sigmoid
from .layers import (Layer, ReLU, Sequential, as_dtype, check_dtype, kaiming_normal,
                     prefixed)


class Residual(Layer):
    """y = body(x) + shortcut(x), the shortcut the identity when None (He et al., 2016).

    body, shortcut: ``Sequential``s (the shortcut typically a strided 1x1 Conv2d and a
    BatchNorm2d where the shape changes). ``params``, ``grads`` and ``buffers`` are flat
    dicts named "<body_name>.<i>.<name>" and "<shortcut_name>.<i>.<name>" ("body" and
    "shortcut" by default) whose values ARE the sub-layers' arrays, so optimizers and
    sparsity masks that update them in place reach the sub-layers; inside a Sequential
    the names become "3.body.0.weight". An empty name puts that part's names directly
    under the block, as PyTorch's blocks do (torchvision's Bottleneck: body_name="",
    shortcut_name="downsample" gives "conv1.weight", "downsample.0.weight").

    The body must not modify its input in place (no ReLU(inplace=True) first): the
    shortcut reads the same x. The backward pass gives the body its own gradient array
    only after the shortcut has used grad_out, so the body may overwrite it.
    """

    def __init__(self, body, shortcut=None, *, body_name="body", shortcut_name="shortcut"):
        super().__init__()
        for name, part in (("body", body), ("shortcut", shortcut)):
            if part is not None and not isinstance(part, Sequential):
                raise TypeError(f"{name} must be a Sequential, got {type(part).__name__}")
        for name, value in (("body_name", body_name), ("shortcut_name", shortcut_name)):
            if not isinstance(value, str) or "." in value:
                raise ValueError(f"{name} must be a string without dots, got {value!r}")
        self.body = body
        self.shortcut = shortcut
        self.body_name, self.shortcut_name = body_name, shortcut_name
        # The checks of a Sequential of the two (unique dotted names) cover the block's.
        Sequential(*[part for _, part in self._parts()],
                   names=[name for name, _ in self._parts()])
        self._collect()

    def _parts(self):
        parts = [(self.body_name, self.body)]
        return parts + ([(self.shortcut_name, self.shortcut)] if self.shortcut else [])

    def named_layers(self, prefix=""):
        """(dotted name, layer) of the body's layers, then the shortcut's."""
        for name, part in self._parts():
            yield from part.named_layers(prefixed(prefix, name))

    def _collect(self):
        """Fill the flat dicts with the sub-layers' own arrays (after building or moving)."""
        for attribute, named in (("params", "named_parameters"), ("grads", "named_grads"),
                                 ("buffers", "named_buffers")):
            arrays = getattr(self, attribute)
            arrays.clear()
            for prefix, part in self._parts():
                arrays.update({prefixed(prefix, key): array
                               for key, array in getattr(part, named)().items()})

    def to(self, device):
        for _, part in self._parts():
            part.to(device)
        self._collect()
        return self

    def set_rng(self, rng):
        """Give the Dropout layers of the body and the shortcut the Generator ``rng``."""
        for _, part in self._parts():
            part.set_rng(rng)

    def forward(self, x, training):
        y = self.body.forward(x, training)
        # A new array: the body's last layer may keep its output for its backward pass.
        return y + (x if self.shortcut is None else self.shortcut.forward(x, training))

    def backward(self, grad_out, input_grad=True):
        """dL/dx = body'(x)^T g + shortcut'(x)^T g (g itself for the identity)."""
        if self.shortcut is None:
            grad_x = grad_out.copy() if input_grad else None
        else:
            grad_x = self.shortcut.backward(grad_out, input_grad=input_grad)
        grad_body = self.body.backward(grad_out, input_grad=input_grad)
        if not input_grad:
            return None
        grad_x += grad_body
        return grad_x

    def __repr__(self):
        inner = f"{self.body!r}" + (f", shortcut={self.shortcut!r}" if self.shortcut else "")
        return f"Residual({inner})"


GATES = {"hardsigmoid": Hardsigmoid, "sigmoid": Sigmoid}


class SqueezeExcite(Layer):
    """Channel attention (Hu et al., 2018) as in MobileNet-V3 (torchvision's
    SqueezeExcitation): y = x * gate(fc2(relu(fc1(mean_hw(x))))).

    x, y: (batch, channels, H, W); fc1.weight: (squeeze_channels, channels, 1, 1) and
    fc2.weight: (channels, squeeze_channels, 1, 1) — 1x1 convolutions on the pooled
    (batch, channels, 1, 1) map, stored with torchvision's shapes and names so a
    state_dict maps by name; fc1.bias, fc2.bias. The gate is "hardsigmoid"
    (MobileNet-V3) or "sigmoid" (the original SE). Weights Kaiming-normal, biases zero.
    """

    sparse_weights = ("fc1.weight", "fc2.weight")

    def __init__(self, channels, squeeze_channels, *, gate="hardsigmoid", rng,
                 dtype=np.float32):
        super().__init__()
        self.channels = positive_int("channels", channels)
        self.squeeze_channels = positive_int("squeeze_channels", squeeze_channels)
        if gate not in GATES:
            raise ValueError(f"gate must be one of {sorted(GATES)}, got {gate!r}")
        self.gate_name = gate
        dtype = check_dtype(dtype)
        c, s = self.channels, self.squeeze_channels
        self._add_param("fc1.weight", kaiming_normal((s, c, 1, 1), c, rng, dtype))
        self._add_param("fc1.bias", np.zeros(s, dtype=dtype))
        self._add_param("fc2.weight", kaiming_normal((c, s, 1, 1), s, rng, dtype))
        self._add_param("fc2.bias", np.zeros(c, dtype=dtype))
        self.relu = ReLU()
        self.gate = GATES[gate]()
        self.x = self.pooled = self.hidden = self.scale = None

    def _matrix(self, name):
        weight = self.params[name]
        return weight.reshape(weight.shape[:2])

    def forward(self, x, training):
        weight = self.params["fc1.weight"]
        x = as_dtype(x, weight.dtype)
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"SqueezeExcite expects x of shape (batch, {self.channels}, "
                             f"height, width), got {x.shape}")
        self.x = x
        self.pooled = x.mean(axis=(2, 3))                                     # (B, C)
        squeezed = self.pooled @ self._matrix("fc1.weight").T + self.params["fc1.bias"]
        self.hidden = self.relu.forward(squeezed, training)                   # (B, S)
        excited = self.hidden @ self._matrix("fc2.weight").T + self.params["fc2.bias"]
        self.scale = self.gate.forward(excited, training)                     # (B, C)
        return x * self.scale[:, :, None, None]

    def backward(self, grad_out, input_grad=True):
        """Through the product y = x * scale: dL/dscale = sum_hw g*x, and dL/dx =
        g * scale + (the pooled path's gradient) / (H*W), spread over each channel."""
        weight = self.params["fc1.weight"]
        grad_out = as_dtype(grad_out, weight.dtype)
        x = self.x
        grad_excited = self.gate.backward((grad_out * x).sum(axis=(2, 3)))   # (B, C)
        self.grads["fc2.weight"][:, :, 0, 0] = grad_excited.T @ self.hidden
        grad_excited.sum(axis=0, out=self.grads["fc2.bias"])
        grad_squeezed = self.relu.backward(grad_excited @ self._matrix("fc2.weight"))
        self.grads["fc1.weight"][:, :, 0, 0] = grad_squeezed.T @ self.pooled
        grad_squeezed.sum(axis=0, out=self.grads["fc1.bias"])
        if not input_grad:
            return None
        grad_pooled = grad_squeezed @ self._matrix("fc1.weight")             # (B, C)
        height, width = x.shape[2:]
        return (grad_out * self.scale[:, :, None, None]
                + grad_pooled[:, :, None, None] * x.dtype.type(1.0 / (height * width)))

    def __repr__(self):
        return (f"SqueezeExcite({self.channels}, {self.squeeze_channels}, "
                f"gate={self.gate_name!r})")
