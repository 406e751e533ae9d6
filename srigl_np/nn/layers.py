"""Layers with explicit forward and backward passes, and the Sequential container.

Every layer keeps three dicts of arrays:

    params   trainable arrays, e.g. {"weight": W, "bias": b}. Optimizers and sparsity
             masks update them IN PLACE; a layer never rebinds them to new arrays, so
             references taken once (``Sequential.named_parameters()``) stay valid.
    grads    same keys as ``params``; ``backward`` overwrites them in place.
    buffers  non-trainable state (BatchNorm running statistics), updated in place.

``forward(x, training)`` stores what ``backward(grad_out)`` needs; ``backward`` returns
the gradient with respect to the layer's input. Both sit side by side in each class.
Arrays are NCHW for images. Layers compute in their parameters' dtype (float32 for
training, float64 for gradient checks): inputs of another float dtype are cast once at
the layer boundary so float64 never creeps into a float32 model.

Devices: every layer takes its array module from its input or parameters
(``xp = array_module(x)``), so the same code runs on NumPy and, after
``Sequential.to("cuda")``, on CuPy. Layers are built on the host; ``to`` moves them.
Conv2d lowers with ``kernels.im2col``/``col2im``: the Cython kernels on the CPU (on one
thread, see LOWERING_THREADS), one strided copy per kernel tap on CuPy.
Dropout draws its masks on the host from its numpy Generator on both devices.

Initialisation: weights are Kaiming-normal over the fan-in (He et al., 2015, gain
sqrt(2) for ReLU); biases start at zero (a deliberate difference from PyTorch's small
uniform biases: zero biases keep a sparse neuron's pre-activation a function of its
active weights only).
"""

import math

import numpy as np

from ..backend import array_module, on_device_of, select, to_device
from ..kernels import col2im, conv_output_size, im2col
from ..thread_policy import blas_grain
from ..training_kernels import dropout, relu, relu_grad
from ..validation import count, positive_int

FLOAT_DTYPES = (np.float32, np.float64)


def check_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def pair(name, value):
    """An int or a pair of ints -> (int, int), each >= 1."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        return positive_int(name, value[0]), positive_int(name, value[1])
    size = positive_int(name, value)
    return size, size


def as_dtype(x, dtype):
    """``x`` as an array of ``dtype`` (no copy when it already is one)."""
    xp = array_module(x)
    return xp.asarray(x, dtype=dtype)


def kaiming_normal(shape, fan_in, rng, dtype=np.float32):
    """Weights drawn from N(0, 2 / fan_in), the He et al. (2015) init for ReLU networks.

    shape: (n, ...) any tuple; fan_in: inputs per neuron, either one number > 0 for
    every weight (a dense layer's in_features*kh*kw) or an array of shape (n,), each
    row's own fan-in (a sparse layer's active inputs per neuron, which
    DynamicSparsity passes). Returns an array of ``shape`` and ``dtype``.

    The two forms round differently, and both are kept so that every seed gives the
    weights it always gave (checkpoints and resumed runs stay bit-identical): one
    fan-in multiplies the float64 draws by the float64 std and rounds once to
    ``dtype``, so float32 and float64 models from the same seed start from the same
    (rounded) weights; per-row fan-ins round the draws and each row's std to ``dtype``
    first and multiply in ``dtype``, as the sparse-aware init always did. For float64
    the two agree bit for bit.
    """
    dtype = check_dtype(dtype)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if np.ndim(fan_in) == 0:
        if not fan_in > 0:
            raise ValueError(f"fan_in must be > 0, got {fan_in}")
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)
    fan_in = np.asarray(fan_in)
    if len(shape) < 1 or fan_in.shape != (shape[0],):
        raise ValueError(f"fan_in must be a number or an array of shape (shape[0],) = "
                         f"{tuple(shape[:1])}, got shape {fan_in.shape}")
    if not np.all(fan_in > 0):
        row = int(np.flatnonzero(~(fan_in > 0))[0])
        raise ValueError(f"fan_in must be > 0 in every row, got {fan_in[row]} at row {row}")
    std = np.sqrt(2.0 / fan_in.astype(np.float64)).astype(dtype)
    rows = rng.standard_normal(shape).astype(dtype).reshape(shape[0], -1)
    rows *= std[:, None]
    return rows.reshape(shape)


def kaiming_normal_at(shape, fan_in, rng, columns, dtype=np.float32, *, block_rows):
    """``kaiming_normal(shape, fan_in, rng, dtype)``'s entries at each row's ``columns``
    only: (n, k) of ``dtype``, for ``columns`` int (n, k) and ``fan_in`` an array (n,)
    (the per-row form). Drawn ``block_rows`` rows at a time, so no array of ``shape``
    exists: the blocks' draws are the one draw's rows in turn, rounded and
    scaled as kaiming_normal rounds and scales them, so the entries are its bit for bit.
    """
    dtype = check_dtype(dtype)
    n, dense_fan_in = shape[0], int(np.prod(shape[1:]))
    fan_in = np.asarray(fan_in)
    if columns.shape[0] != n or fan_in.shape != (n,) or not np.all(fan_in > 0):
        raise ValueError(f"columns (n, k) and fan_in (n,) > 0 expected for n = {n}, got "
                         f"{columns.shape} and {fan_in.shape}")
    std = np.sqrt(2.0 / fan_in.astype(np.float64)).astype(dtype)
    values = np.empty(columns.shape, dtype=dtype)
    for r0 in range(0, n, block_rows):
        r1 = min(n, r0 + block_rows)
        draws = rng.standard_normal((r1 - r0, dense_fan_in)).astype(dtype)
        values[r0:r1] = np.take_along_axis(draws, columns[r0:r1].astype(np.intp), axis=1)
        values[r0:r1] *= std[r0:r1, None]
    return values


class Layer:
    """Base class: empty ``params``/``grads``/``buffers``; subclasses fill them.

    ``sparse_weights`` names the params that sparse training masks and condensing
    condenses (each row of such a weight is one neuron's fan-in): ("weight",) for
    Linear and Conv2d, none for the layers without weights. Containers (Sequential,
    blocks.Residual) expose ``named_layers()`` instead.
    """

    sparse_weights = ()

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}

    def forward(self, x, training):
        raise NotImplementedError

    def backward(self, grad_out):
        raise NotImplementedError

    def _add_param(self, name, value):
        self.params[name] = value
        # zeros, not zeros_like: the pages stay untouched until written, so the gradient
        # of a weight trained condensed never takes memory.
        self.grads[name] = array_module(value).zeros(value.shape, dtype=value.dtype)

    def to(self, device):
        """Move params, grads and buffers to ``device`` ("cpu", "cuda", "cuda:N"); returns self.

        The dict entries are rebound to the moved arrays (a no-op, same arrays, when they
        are already there), so move a model before building its optimizer or
        DynamicSparsity: those keep references to the arrays.
        """
        select(device)   # validates the name; DeviceError without CuPy or a GPU
        for arrays in (self.params, self.grads, self.buffers):
            for name, array in arrays.items():
                arrays[name] = to_device(array, device)
        return self

    def __repr__(self):
        return f"{type(self).__name__}()"


class Linear(Layer):
    """y = x @ W.T + b.

    x: (batch, in_features), or (batch, ..., in_features) as ViT's tokens, the leading
    axes then flattened into rows and restored; weight: (out_features, in_features);
    bias: (out_features,); y: (batch, [...,] out_features). ``init=False`` leaves the
    weight at zeros that take no memory until written (``rng`` is then not needed), for
    a layer DynamicSparsity draws: with ``compute="condensed"`` a SRigL layer's dense
    weight is then never made (docs/training.md, "Memory").
    """

    sparse_weights = ("weight",)
    # A CondensedCompute while trained condensed (srigl_np.nn.condensed_compute.attach):
    # params["weight"] is then values[n_active, k] and forward/backward run through it.
    condensed = None

    def __init__(self, in_features, out_features, *, bias=True, rng=None, dtype=np.float32,
                 init=True):
        super().__init__()
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        dtype = check_dtype(dtype)
        shape = (self.out_features, self.in_features)
        # init=False: zeros whose pages stay untouched (no memory) until written, for a
        # weight whose values DynamicSparsity draws (it draws every sparse layer's, and
        # with compute="condensed" a SRigL layer's straight into its condensed form).
        self._add_param("weight", kaiming_normal(shape, self.in_features, rng, dtype) if init
                        else np.zeros(shape, dtype=dtype))
        if bias:
            self._add_param("bias", np.zeros(self.out_features, dtype=dtype))
        self.x = self.lead = None

    def forward(self, x, training):
        if self.condensed is not None:
            return self.condensed.forward(x, training)
        weight = self.params["weight"]
        x = as_dtype(x, weight.dtype)
        if x.ndim < 2 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear expects x of shape (batch, [..., ]{self.in_features}), "
                             f"got {x.shape}")
        self.lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        self.x = x
        with blas_grain(x.shape[0] * self.in_features * self.out_features):
            y = x @ weight.T
        if "bias" in self.params:
            y += self.params["bias"]
        return y.reshape(*self.lead, self.out_features)

    def backward(self, grad_out, input_grad=True):
        """dL/dW = g.T @ x, dL/db = sum_batch g, dL/dx = g @ W (skipped if not input_grad)."""
        if self.condensed is not None:
            return self.condensed.backward(grad_out, input_grad)
        weight = self.params["weight"]
        grad_out = as_dtype(grad_out, weight.dtype).reshape(-1, self.out_features)
        xp = array_module(grad_out)
        with blas_grain(grad_out.shape[0] * self.in_features * self.out_features):
            xp.matmul(grad_out.T, self.x, out=self.grads["weight"])
            grad_x = grad_out @ weight if input_grad else None
        if "bias" in self.params:
            grad_out.sum(axis=0, out=self.grads["bias"])
        return grad_x.reshape(*self.lead, self.in_features) if input_grad else None

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features})"


# Threads of Conv2d's im2col/col2im on the CPU. One, because the BLAS product that
# follows each of them owns the cores: with both pools at 2 threads, libgomp's workers
# still spin after a 2-thread copy while OpenBLAS's want the cores. The cnn's second
# convolution (32 -> 64 channels, 26x26, Zen 5, 2 cores; 2 threads against 1 for the
# copy, medians of 6 interleaved rounds): at batch 1, 8.4 against 0.28 ms with the
# libraries' default waits, 0.39 against 0.31 ms with the trainer's (thread_waits);
# forward + backward at batch 128, 145 against 123 ms, and 127 against 124 ms with the
# trainer's waits (101 against 109 ms with only OPENBLAS_THREAD_TIMEOUT=18 set).
LOWERING_THREADS = 1


class Conv2d(Layer):
    """2-D cross-correlation (PyTorch's Conv2d), as im2col + one GEMM.

    x: (batch, in_channels, height, width); weight: (out_channels, in_channels, kh, kw);
    bias: (out_channels,); y: (batch, out_channels, out_h, out_w) with
    out_h = floor((height + 2*padding - kh) / stride) + 1 (likewise out_w).

    With cols = im2col(x): (batch*out_h*out_w, in_channels*kh*kw) and W the weight
    flattened to (out_channels, in_channels*kh*kw), the output rows are cols @ W.T:
    one row per output pixel, one column per output channel (NHWC order), copied once
    to a C-contiguous NCHW array. ``cols`` is kept for the backward pass.

    Grouped convolution (``groups`` = G > 1, G dividing both channel counts): output
    channels [g*out/G, (g+1)*out/G) see only input channels [g*in/G, (g+1)*in/G), and
    weight is (out_channels, in_channels/G, kh, kw), as in PyTorch; groups = in_channels
    is the depthwise convolution of MobileNet. im2col's columns are ordered (c, ki, kj),
    so group g's columns are one contiguous block of (in/G)*kh*kw: the GEMM becomes one
    batched product over the G groups, (G, rows, in/G*kh*kw) @ (G, in/G*kh*kw, out/G)
    (an einsum when each group has one output channel). groups = 1 keeps the single-GEMM
    path.
    """

    sparse_weights = ("weight",)
    condensed = None   # as Linear's (groups 1 only)

    def __init__(self, in_channels, out_channels, kernel_size, *, stride=1, padding=0,
                 groups=1, bias=True, rng, dtype=np.float32):
        super().__init__()
        self.in_channels = positive_int("in_channels", in_channels)
        self.out_channels = positive_int("out_channels", out_channels)
        self.kernel_size = pair("kernel_size", kernel_size)
        self.stride = positive_int("stride", stride)
        self.padding = count("padding", padding)
        self.groups = positive_int("groups", groups)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"groups must divide in_channels ({self.in_channels}) and "
                             f"out_channels ({self.out_channels}), got {self.groups}")
        dtype = check_dtype(dtype)
        kh, kw = self.kernel_size
        group_in = self.in_channels // self.groups
        fan_in = group_in * kh * kw
        self._add_param("weight", kaiming_normal((self.out_channels, group_in, kh, kw),
                                                 fan_in, rng, dtype))
        if bias:
            self._add_param("bias", np.zeros(self.out_channels, dtype=dtype))
        self.x_shape = None
        # cols (forward) and _grad_cols (backward) are reused across steps: a fresh
        # (rows, in_channels*kh*kw) array per step costs page faults comparable to the
        # kernel or GEMM that fills it.
        self.cols = None
        self._grad_cols = None

    def to(self, device):
        super().to(device)
        # Forward-pass caches live on the old device; the next forward refills them.
        self.cols = self._grad_cols = None
        return self

    def forward(self, x, training):
        if self.condensed is not None:
            return self.condensed.forward(x, training)
        weight = self.params["weight"]
        xp = array_module(x)
        x = xp.ascontiguousarray(as_dtype(x, weight.dtype))
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d expects x of shape (batch, {self.in_channels}, height, "
                             f"width), got {x.shape}")
        batch, _, height, width = x.shape
        kh, kw = self.kernel_size
        out_h = conv_output_size(height, kh, self.stride, self.padding)
        out_w = conv_output_size(width, kw, self.stride, self.padding)
        shape = (batch * out_h * out_w, self.in_channels * kh * kw)
        reuse = (self.cols is not None and self.cols.shape == shape
                 and self.cols.dtype == x.dtype)
        self.cols = im2col(x, kh, kw, self.stride, self.padding, threads=LOWERING_THREADS,
                           out=self.cols if reuse else None)
        self.x_shape = x.shape
        if self.groups == 1:
            rows = self.cols @ weight.reshape(self.out_channels, -1).T
        else:
            rows = self._grouped_rows(self.cols, weight)
        if "bias" in self.params:
            rows += self.params["bias"]
        # One copy to NCHW keeps the element-wise layers and pooling on contiguous data.
        return xp.ascontiguousarray(
            rows.reshape(batch, out_h, out_w, self.out_channels).transpose(0, 3, 1, 2))

    # With one output channel per group (depthwise, MobileNet's) every group's product is
    # a thin (rows, k) @ (k, 1) that a batched GEMM runs poorly: einsum's own loop is 2-4x
    # faster there (96 channels, 3x3, batch 8 of 56x56, float32, 2 cores), and 4-18x
    # slower than the GEMM for groups of 24 channels, so each product has both forms.

    def _grouped_rows(self, cols, weight):
        """rows[:, group g's outputs] = cols[:, group g's inputs] @ W_g.T for every g."""
        xp = array_module(cols)
        w_groups = weight.reshape(self.groups, self.out_channels // self.groups, -1)
        cols_groups = cols.reshape(cols.shape[0], self.groups, -1)   # (rows, G, in/G*kh*kw)
        if self.out_channels == self.groups:
            rows = xp.einsum("rgk,gok->rgo", cols_groups, w_groups)
        else:
            rows = (cols_groups.transpose(1, 0, 2) @ w_groups.transpose(0, 2, 1)
                    ).transpose(1, 0, 2)
        return rows.reshape(cols.shape[0], self.out_channels)

    def backward(self, grad_out, input_grad=True):
        """With g the output gradient as rows (batch*out_h*out_w, out_channels):
        dL/dW = g.T @ cols, dL/db = sum_rows g, dL/dx = col2im(g @ W) (per group when
        groups > 1)."""
        if self.condensed is not None:
            return self.condensed.backward(grad_out, input_grad)
        weight = self.params["weight"]
        grad_out = as_dtype(grad_out, weight.dtype)
        xp = array_module(grad_out)
        # Rows in NHWC order: a free view when grad_out kept forward's memory order.
        g = xp.ascontiguousarray(grad_out.transpose(0, 2, 3, 1)).reshape(-1, self.out_channels)
        if self.groups > 1:
            return self._grouped_backward(g, weight, input_grad)
        w_flat = weight.reshape(self.out_channels, -1)
        xp.matmul(g.T, self.cols, out=self.grads["weight"].reshape(w_flat.shape))
        if "bias" in self.params:
            g.sum(axis=0, out=self.grads["bias"])
        if not input_grad:
            return None
        if self._grad_cols is None or self._grad_cols.shape != self.cols.shape:
            self._grad_cols = xp.empty_like(self.cols)
        xp.matmul(g, w_flat, out=self._grad_cols)
        kh, kw = self.kernel_size
        return col2im(self._grad_cols, self.x_shape, kh, kw, self.stride, self.padding,
                      threads=LOWERING_THREADS)

    def _grouped_backward(self, g, weight, input_grad):
        """Per group g: dL/dW_g = g_g.T @ cols_g, dL/dcols_g = g_g @ W_g."""
        xp = array_module(g)
        w_groups = weight.reshape(self.groups, self.out_channels // self.groups, -1)
        g_groups = g.reshape(g.shape[0], self.groups, -1)               # (rows, G, out/G)
        cols_groups = self.cols.reshape(g.shape[0], self.groups, -1)    # (rows, G, in/G*kh*kw)
        grad_weight = self.grads["weight"].reshape(w_groups.shape)
        depthwise = self.out_channels == self.groups
        if depthwise:
            grad_weight[...] = xp.einsum("rgo,rgk->gok", g_groups, cols_groups)
        else:
            xp.matmul(g_groups.transpose(1, 2, 0), cols_groups.transpose(1, 0, 2),
                      out=grad_weight)
        if "bias" in self.params:
            g.sum(axis=0, out=self.grads["bias"])
        if not input_grad:
            return None
        if depthwise:
            grad_cols = xp.einsum("rgo,gok->rgk", g_groups, w_groups)
        else:
            grad_cols = (g_groups.transpose(1, 0, 2) @ w_groups).transpose(1, 0, 2)
        kh, kw = self.kernel_size
        return col2im(xp.ascontiguousarray(grad_cols).reshape(self.cols.shape), self.x_shape, kh, kw, self.stride,
                      self.padding, threads=LOWERING_THREADS)

    def __repr__(self):
        groups = f", groups={self.groups}" if self.groups > 1 else ""
        return (f"Conv2d({self.in_channels}, {self.out_channels}, {self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{groups})")


class ReLU(Layer):
    """y = max(x, 0); dL/dx = g * (y > 0).

    ``inplace=True`` overwrites x in forward and grad_out in backward (saves two
    allocations per step); safe when nothing else holds those arrays, as in a
    Sequential where ReLU follows a Linear or Conv2d (which keep their *input*).
    """

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)
        self.y = None

    def forward(self, x, training):
        self.y = relu(x, inplace=self.inplace)
        return self.y

    def backward(self, grad_out):
        return relu_grad(grad_out, self.y, inplace=self.inplace)

    def __repr__(self):
        return "ReLU(inplace=True)" if self.inplace else "ReLU()"


class Flatten(Layer):
    """(batch, d1, d2, ...) -> (batch, d1*d2*...), C order; backward reshapes back."""

    def __init__(self):
        super().__init__()
        self.x_shape = None

    def forward(self, x, training):
        self.x_shape = x.shape
        # Not reshape(batch, -1): NumPy cannot infer the -1 of an empty batch.
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def backward(self, grad_out):
        return grad_out.reshape(self.x_shape)


class Dropout(Layer):
    """Inverted dropout: in training y = x * m / (1 - p), m ~ Bernoulli(1 - p) per element.

    Identity in evaluation. ``rng`` (a numpy Generator) draws one 64-bit key per forward
    pass; the mask is the counter-based stream of that key
    (``training_kernels.dropout``: an element is dropped with probability p rounded to
    32 bits), so the backward pass recomputes the mask instead of storing it, and a
    model on CuPy draws the same masks on the device as on the host. Set ``rng`` with
    ``Sequential.set_rng`` so every epoch's masks are reproducible.
    """

    def __init__(self, p, rng=None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p must be in [0, 1), got {p}")
        self.p = float(p)
        self.rng = rng
        self.key = None

    def forward(self, x, training):
        if not training or self.p == 0.0:
            self.key = None
            return x
        if not isinstance(self.rng, np.random.Generator):
            raise ValueError("Dropout.rng is not set: pass rng= or call Sequential.set_rng(rng)")
        self.key = int(self.rng.integers(0, 2**64, dtype=np.uint64))
        return dropout(x, self.key, self.p)

    def backward(self, grad_out):
        return grad_out if self.key is None else dropout(grad_out, self.key, self.p)

    def __repr__(self):
        return f"Dropout({self.p})"


def prefixed(prefix, name):
    """``name`` under ``prefix`` ("layer1" + "weight" -> "layer1.weight"); an empty
    prefix or name leaves the other as it is (a child whose names are its parent's)."""
    return f"{prefix}.{name}" if prefix and name else prefix or name


class Sequential:
    """Layers applied in order. Parameter names are "<layer name>.<name>": the layer's
    index by default ("0.weight"), or ``names[i]`` (str, no dot), so a model can carry
    PyTorch's state_dict keys ("conv1.weight", "layer1.0.downsample.1.running_mean");
    an empty name gives a layer's arrays the names it has inside (torchvision's
    ``class_token`` sits directly under the model). Names and dotted keys are unique.
    """

    def __init__(self, *layers, names=None):
        for i, layer in enumerate(layers):
            if not isinstance(layer, (Layer, Sequential)):
                raise TypeError(f"layer {i} must be a Layer or Sequential, got "
                                f"{type(layer).__name__}")
        self.layers = list(layers)
        if names is None:
            names = [str(i) for i in range(len(layers))]
        names = list(names)
        if len(names) != len(layers) or not all(isinstance(n, str) and "." not in n
                                                for n in names):
            raise ValueError(f"names must be {len(layers)} strings without dots, got {names}")
        named = [n for n in names if n]
        if len(set(named)) != len(named):
            raise ValueError(f"names must be unique, got {names}")
        self.names = names
        keys = [prefixed(prefix, key) for prefix, layer in zip(names, layers)
                for attribute in ("params", "buffers") for key in getattr(layer, attribute)]
        if len(set(keys)) != len(keys):
            twice = sorted({k for k in keys if keys.count(k) > 1})
            raise ValueError(f"two layers give arrays the same names: {twice}")

    @property
    def params(self):
        return self.named_parameters()

    @property
    def grads(self):
        return self.named_grads()

    @property
    def buffers(self):
        return self.named_buffers()

    def __getitem__(self, name):
        """The layer called ``name`` (str), or at position ``name`` (int)."""
        if isinstance(name, str):
            if name not in self.names or not name:
                raise KeyError(f"no layer named {name!r}; names: {self.names}")
            return self.layers[self.names.index(name)]
        return self.layers[name]

    def named_layers(self, prefix=""):
        """(dotted name, layer) of every layer that is not a container, depth first in
        forward order: the name is the prefix of its arrays ("layer1.0.conv1")."""
        for name, layer in zip(self.names, self.layers):
            inner = prefixed(prefix, name)
            if hasattr(layer, "named_layers"):
                yield from layer.named_layers(inner)
            else:
                yield inner, layer

    def forward(self, x, training):
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, grad_out, input_grad=True):
        """Back-propagate ``grad_out`` (the loss gradient w.r.t. the output), filling every
        layer's ``grads``. Returns the gradient w.r.t. the input, or None when
        ``input_grad=False``: then the layers before the first one with parameters are
        skipped, and that layer does not compute its input gradient (the data needs none;
        for the MLP this saves a third of the backward GEMM work)."""
        first = 0
        if not input_grad:
            first = next((i for i, layer in enumerate(self.layers) if layer.params),
                         len(self.layers))
        for i in range(len(self.layers) - 1, first - 1, -1):
            layer = self.layers[i]
            if i == first and not input_grad:
                return layer.backward(grad_out, input_grad=False)
            grad_out = layer.backward(grad_out)
        return None if not input_grad else grad_out

    def _named(self, attribute):
        return {prefixed(prefix, name): array
                for prefix, layer in zip(self.names, self.layers)
                for name, array in getattr(layer, attribute).items()}

    def named_parameters(self):
        """{"<i>.<name>": parameter array} in layer order; the arrays themselves, not copies."""
        return self._named("params")

    def named_grads(self):
        """{"<i>.<name>": gradient array}, same keys as named_parameters()."""
        return self._named("grads")

    def named_buffers(self):
        """{"<i>.<name>": buffer array} (BatchNorm running statistics)."""
        return self._named("buffers")

    def state_dict(self):
        """Copies of every parameter and buffer, keyed as named_parameters()/named_buffers()."""
        return {k: v.copy() for k, v in {**self.named_parameters(),
                                         **self.named_buffers()}.items()}

    def load_state_dict(self, state):
        """Copy ``state`` into the existing arrays in place (keys, shapes and dtypes must match)."""
        targets = {**self.named_parameters(), **self.named_buffers()}
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        if missing or unexpected:
            raise ValueError(f"state keys do not match the model: missing {missing}, "
                             f"unexpected {unexpected}")
        for key, target in targets.items():
            value = state[key]
            if value.shape != target.shape or value.dtype != target.dtype:
                raise ValueError(f"state[{key!r}] must be {target.dtype} {target.shape}, "
                                 f"got {value.dtype} {value.shape}")
        for key, target in targets.items():
            target[...] = on_device_of(state[key], target)

    def to(self, device):
        """Move every layer to ``device`` (see ``Layer.to``: do it before building the
        optimizer or DynamicSparsity); returns self."""
        for layer in self.layers:
            layer.to(device)
        return self

    def set_rng(self, rng):
        """Give every Dropout layer the Generator ``rng``, those inside blocks that hold
        Sequentials of their own (``blocks.Residual``, which has ``set_rng``) included."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        for layer in self.layers:
            if isinstance(layer, Dropout):
                layer.rng = rng
            elif hasattr(layer, "set_rng"):
                layer.set_rng(rng)

    def __repr__(self):
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n)"
