"""Global average pooling: the head of ResNet, WRN and MobileNet-V3 (``MaxPool2d`` is in
``layers``). It follows the ``nn.layers.Layer`` contract."""

from ..backend import array_module
from .layers import Layer


class GlobalAvgPool2d(Layer):
    """y[b, c] = mean over (h, w) of x[b, c, h, w]: (batch, C, H, W) -> (batch, C).

    PyTorch writes it AdaptiveAvgPool2d(1) followed by flatten; here the flatten is
    part of the layer. dL/dx[b, c, h, w] = g[b, c] / (H*W).
    """

    def __init__(self):
        super().__init__()
        self.x_shape = None

    def forward(self, x, training):
        if x.ndim != 4:
            raise ValueError(f"GlobalAvgPool2d expects x of shape (batch, channels, height, "
                             f"width), got {x.shape}")
        self.x_shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, grad_out):
        xp = array_module(grad_out)
        height, width = self.x_shape[2:]
        spread = grad_out[:, :, None, None] * grad_out.dtype.type(1.0 / (height * width))
        return xp.ascontiguousarray(xp.broadcast_to(spread, self.x_shape))
