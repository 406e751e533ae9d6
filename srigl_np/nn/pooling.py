"""Pooling: ``MaxPool2d`` (the cnn's; ResNet-50's stem with padding 1) and
``GlobalAvgPool2d`` (the head of ResNet, WRN and MobileNet-V3). They follow the ``nn.layers.Layer`` contract."""

from ..backend import array_module, is_cupy_array
from ..kernels import conv_output_size
from ..training_kernels import maxpool_tiled, maxpool_tiled_grad
from ..validation import count, positive_int
from .layers import Layer, pair


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
        # A fresh writable array even for a 1x1 map (where a broadcast view would be
        # returned as it is): an in-place ReLU before the pool writes into it.
        grad = xp.empty(self.x_shape, dtype=grad_out.dtype)
        grad[...] = grad_out[:, :, None, None] * grad_out.dtype.type(1.0 / (height * width))
        return grad


class MaxPool2d(Layer):
    """Max over kernel windows, PyTorch's MaxPool2d (floor mode, no dilation).

    x: (batch, channels, height, width) -> y: (batch, channels, out_h, out_w),
    out_h = floor((height + 2*padding - kh) / stride) + 1. ``padding`` (at most half
    the kernel, as PyTorch requires) pads with -inf, so a padded cell never wins a
    window and never receives gradient. The gradient flows to one element per
    window, the first maximum in row-major window order (PyTorch's rule).

    The work is vectorised over all pixels; Python loops only over the kh*kw window
    taps. Each tap (i, j) is the strided view x[:, :, i::stride, j::stride] cropped to
    (out_h, out_w). When stride == kernel and the kernel tiles the image exactly, the
    windows partition x, and the backward pass is one broadcast multiply through the
    (batch, channels, out_h, kh, out_w, kw) reshape of a winner mask.
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = pair("kernel_size", kernel_size)
        self.stride = self.kernel_size[0] if stride is None else positive_int("stride", stride)
        self.padding = count("padding", padding)
        if 2 * self.padding > min(self.kernel_size):
            raise ValueError(f"padding must be at most half the kernel size "
                             f"{self.kernel_size}, got {self.padding}")
        self.x = self.x_shape = None
        self.winner = self.cells = None

    def _taps(self, x, out_h, out_w):
        """(i, j, view) for every window tap: view[b, c, oh, ow] = x[b, c, oh*s+i, ow*s+j]."""
        kh, kw = self.kernel_size
        s = self.stride
        for i in range(kh):
            for j in range(kw):
                yield i, j, x[:, :, i:i + s * (out_h - 1) + 1:s, j:j + s * (out_w - 1) + 1:s]

    def _tiles(self, x):
        """True when stride == kernel (square) and the windows tile x exactly."""
        kh, kw = self.kernel_size
        return (kh == kw == self.stride and x.shape[2] % kh == 0 and x.shape[3] % kw == 0)

    def forward(self, x, training):
        if x.ndim != 4:
            raise ValueError(f"MaxPool2d expects x of shape (batch, channels, height, width), "
                             f"got {x.shape}")
        kh, kw = self.kernel_size
        p = self.padding
        if x.shape[2] + 2 * p < kh or x.shape[3] + 2 * p < kw:
            raise ValueError(f"MaxPool2d kernel {self.kernel_size} does not fit input "
                             f"{x.shape[2:]} padded by {p}")
        xp = array_module(x)
        self.x_shape = x.shape
        if p:
            padded = xp.full(x.shape[:2] + (x.shape[2] + 2 * p, x.shape[3] + 2 * p), -xp.inf,
                             dtype=x.dtype)
            padded[:, :, p:p + x.shape[2], p:p + x.shape[3]] = x
            x = padded
        out_h = conv_output_size(x.shape[2], kh, self.stride, 0)
        out_w = conv_output_size(x.shape[3], kw, self.stride, 0)
        self.cells = None
        if self._tiles(x) and not is_cupy_array(x) and kh * kw <= 256:
            # The compiled pass (training_kernels.maxpool_tiled): the same maxima and
            # first-maximum winners as the NumPy form below, the definition.
            y, cells = maxpool_tiled(x, kh, kw)
            self.x, self.y = x, y
            self.cells, self.winner = (cells if training else None), None
            return y
        if self._tiles(x):
            # Max over window rows first: those views keep (out_w, kw) contiguous.
            x6 = x.reshape(x.shape[0], x.shape[1], out_h, kh, out_w, kw)
            rows = x6[:, :, :, 0].copy()
            for i in range(1, kh):
                xp.maximum(rows, x6[:, :, :, i], out=rows)
            y = rows[..., 0].copy()
            for j in range(1, kw):
                xp.maximum(y, rows[..., j], out=y)
        else:
            taps = self._taps(x, out_h, out_w)
            y = next(taps)[2].copy()
            for _, _, view in taps:
                xp.maximum(y, view, out=y)
        self.x, self.y = x, y
        # The winner mask costs about two forward passes: only training needs it.
        self.winner = self._winner_mask(x, y) if training and self._tiles(x) else None
        return y

    def _winner_mask(self, x, y):
        """Boolean (batch, channels, out_h, kh, out_w, kw): True at each window's first max."""
        xp = array_module(x)
        kh, kw = self.kernel_size
        b, c, out_h, out_w = y.shape
        winner = xp.empty((b, c, out_h, kh, out_w, kw), dtype=bool)
        unclaimed = xp.ones(y.shape, dtype=bool)
        for i, j, view in self._taps(x, out_h, out_w):
            hit = winner[:, :, :, i, :, j]
            xp.equal(view, y, out=hit)
            hit &= unclaimed
            xp.greater(unclaimed, hit, out=unclaimed)   # unclaimed and not hit
        return winner

    def backward(self, grad_out):
        """The gradient w.r.t. the (padded) input, cropped to the unpadded input."""
        grad_in = self._padded_backward(grad_out)
        p = self.padding
        if not p:
            return grad_in
        height, width = self.x_shape[2:]
        return array_module(grad_in).ascontiguousarray(grad_in[:, :, p:p + height, p:p + width])

    def _padded_backward(self, grad_out):
        x, y = self.x, self.y
        xp = array_module(grad_out)
        b, c, out_h, out_w = y.shape
        if self.cells is not None:
            return maxpool_tiled_grad(grad_out, self.cells, *self.kernel_size)
        if self.winner is not None:
            grad6 = xp.multiply(self.winner, grad_out.reshape(b, c, out_h, 1, out_w, 1))
            return grad6.reshape(x.shape)
        grad_in = xp.zeros(x.shape, dtype=grad_out.dtype)
        unclaimed = xp.ones(y.shape, dtype=bool)
        grad_taps = self._taps(grad_in, out_h, out_w)
        for (_, _, view), (_, _, grad_view) in zip(self._taps(x, out_h, out_w), grad_taps):
            hit = (view == y) & unclaimed
            xp.greater(unclaimed, hit, out=unclaimed)
            # Overlapping windows share pixels: accumulate, never assign.
            grad_view += grad_out * hit
        return grad_in

    def __repr__(self):
        padding = f", padding={self.padding}" if self.padding else ""
        return f"MaxPool2d({self.kernel_size}, stride={self.stride}{padding})"
