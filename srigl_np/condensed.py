"""Condensed inference for constant fan-in layers (SRigL, Lasby et al. 2024, Sec. 4.4).

A layer trained with constant fan-in gives every active neuron exactly k incoming
weights, so it is stored as two dense (n_active, k) arrays,

    values[r, j]   the j-th kept weight of active neuron r      float32
    indices[r, j]  its input column, strictly increasing in j   int16 (n_in <= 32767) / int32

plus ``active`` (the neurons' output positions, strictly increasing) and the bias of the
active neurons. Rows that are entirely zero are ablated neurons: they are not stored.
The forward pass y[b, r] = bias[r] + sum_j values[r, j] * x[b, indices[r, j]] runs in the
compiled kernels (``srigl_np._kernels.condensed_matmul``).

``condense(model)`` turns a trained ``Sequential`` into a ``CondensedModel`` whose layers
shrink structurally (see ``condense`` for the rules), and ``CondensedModel.save`` /
``load`` store it in a versioned ``.npz`` file (layout in ``CondensedModel.save``).
"""

import json

import numpy as np

from . import kernels  # noqa: F401  (sets up OpenMP and explains a missing build)
from .checkpoint import atomic_write
from .kernels import CondensedWeights, condensed_matmul, conv_output_size, im2col
from .layers import (
    BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential)

FORMAT_NAME = "srigl_np.condensed"
FORMAT_VERSION = 1
INT16_MAX_COLUMNS = 32767


def _index_dtype(n_in, index_dtype):
    """int16 when every column index fits (n_in <= 32767), else int32; or the one asked."""
    if index_dtype is None:
        return np.dtype(np.int16) if n_in <= INT16_MAX_COLUMNS else np.dtype(np.int32)
    index_dtype = np.dtype(index_dtype)
    if index_dtype not in (np.int16, np.int32):
        raise TypeError(f"index_dtype must be int16 or int32, got {index_dtype}")
    if index_dtype == np.int16 and n_in > INT16_MAX_COLUMNS:
        raise ValueError(f"index_dtype int16 holds columns < {INT16_MAX_COLUMNS + 1}, "
                         f"but n_in is {n_in}")
    return index_dtype


def _check_real_array(name, a, ndim):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite, found NaN or Inf")


def _check_bias(bias, n_out, name="bias"):
    if bias is None:
        return None
    _check_real_array(name, bias, 1)
    if bias.shape != (n_out,):
        raise ValueError(f"{name} must have shape ({n_out},), got {bias.shape}")
    return bias


def _describe_counts(counts, rows):
    """'12 rows have 5 non-zeros (e.g. rows [0, 1, 2]), 3 rows have 7 (...)' for an error."""
    parts = []
    for count in np.unique(counts):
        where = rows[counts == count]
        parts.append(f"{where.size} rows have {count} non-zeros (e.g. rows {where[:5].tolist()})")
    return "; ".join(parts)


def _pattern_arrays(matrix, pattern, index_dtype):
    """(active, values, indices) of the rows of ``pattern`` that have any entry.

    Every such row must hold the same count k (checked by the caller); entries come
    out in row-major order, so each row's indices are strictly increasing.
    """
    counts = pattern.sum(axis=1)
    active = np.flatnonzero(counts)
    k = int(counts[active[0]]) if active.size else 0
    rows, cols = np.nonzero(pattern[active])
    values = np.ascontiguousarray(matrix[active][rows, cols], dtype=np.float32)
    return (active, values.reshape(active.size, k),
            cols.astype(index_dtype).reshape(active.size, k))


class CondensedLinear:
    """A constant fan-in Linear layer over its active neurons: y = x @ W[active].T + bias.

    values: (n_active, k) float32, read-only; indices: (n_active, k) int16/int32,
    read-only, each row strictly increasing in [0, n_in); active: (n_active,) int64,
    strictly increasing in [0, n_out); bias: (n_active,) float32 or None.
    k >= 1 whenever n_active >= 1. The constructor checks all of it (like scipy's
    ``check_format``); the arrays cannot change afterwards, so the kernel never
    re-checks an index.
    """

    def __init__(self, values, indices, active, n_out, n_in, bias=None):
        n_out, n_in = _positive("n_out", n_out), _count("n_in", n_in)
        if not isinstance(active, np.ndarray) or active.dtype.kind not in "iu":
            raise TypeError(f"active must be an integer numpy array, got "
                            f"{getattr(active, 'dtype', type(active).__name__)}")
        if active.ndim != 1:
            raise ValueError(f"active must be 1-D, got shape {active.shape}")
        if active.size and (active[0] < 0 or active[-1] >= n_out
                            or (np.diff(active) <= 0).any()):
            raise ValueError(f"active must be strictly increasing in [0, n_out={n_out})")
        if not isinstance(values, np.ndarray) or values.dtype != np.float32:
            raise TypeError(f"values must be a float32 array, got "
                            f"{getattr(values, 'dtype', type(values).__name__)}")
        if values.ndim != 2 or values.shape[0] != active.size:
            raise ValueError(f"values must have shape (n_active={active.size}, k), "
                             f"got {values.shape}")
        if not np.isfinite(values).all():
            raise ValueError("values must be finite, found NaN or Inf")
        _check_indices(indices, values.shape)
        if (np.diff(indices.astype(np.int32), axis=1) <= 0).any():
            raise ValueError("indices must be strictly increasing along each row")
        if bias is not None:
            if not isinstance(bias, np.ndarray) or bias.dtype != np.float32:
                raise TypeError(f"bias must be a float32 array or None, got "
                                f"{getattr(bias, 'dtype', type(bias).__name__)}")
            if bias.shape != (active.size,):
                raise ValueError(f"bias must have shape (n_active={active.size},), "
                                 f"got {bias.shape}")
            if not np.isfinite(bias).all():
                raise ValueError("bias must be finite, found NaN or Inf")
            bias = np.array(bias, dtype=np.float32)
            bias.setflags(write=False)
        self.n_out, self.n_in = n_out, n_in
        self.active = np.array(active, dtype=np.int64)
        self.active.setflags(write=False)
        self.bias = bias
        if active.size:
            # Validates dtype, shape, k >= 1 and the index range; keeps immutable copies.
            self.weights = CondensedWeights(values, indices, n_in)
        else:
            self.weights = None
            self._empty_indices = np.zeros(values.shape, dtype=indices.dtype)

    @property
    def values(self):
        """(n_active, k) float32, read-only."""
        if self.weights is None:
            return np.zeros((0, 0), dtype=np.float32)
        return self.weights.values

    @property
    def indices(self):
        """(n_active, k) int16/int32, read-only."""
        return self._empty_indices if self.weights is None else self.weights.indices

    @property
    def n_active(self):
        return self.active.size

    @property
    def k(self):
        """Constant fan-in of the active neurons (0 when there are none)."""
        return 0 if self.weights is None else self.weights.k

    @classmethod
    def from_dense(cls, weight, bias=None, *, index_dtype=None):
        """Condense a masked weight (n_out, n_in) whose non-zero rows share one count k.

        bias: (n_out,) or None; only the active neurons' entries are kept. Rows that are
        all zero are inactive (ablated). A weight whose non-zero rows differ in count is
        refused with the rows and counts in the message.
        """
        _check_real_array("weight", weight, 2)
        bias = _check_bias(bias, weight.shape[0])
        pattern = weight != 0
        counts = pattern.sum(axis=1)
        rows = np.flatnonzero(counts)
        if rows.size and (counts[rows] != counts[rows[0]]).any():
            raise ValueError("weight must have constant fan-in (every non-zero row the same "
                             "number of non-zeros), got " + _describe_counts(counts[rows], rows))
        active, values, indices = _pattern_arrays(
            weight, pattern, _index_dtype(weight.shape[1], index_dtype))
        return cls(values, indices, active, weight.shape[0], weight.shape[1],
                   None if bias is None else bias[active].astype(np.float32))

    @classmethod
    def from_csr(cls, matrix, bias=None, *, index_dtype=None):
        """Condense a scipy.sparse matrix (n_out, n_in): its stored entries are the weights.

        Explicitly stored zeros count as weights (the pattern is the mask), so
        ``from_csr(layer.to_csr())`` round-trips exactly. Duplicates are summed first.
        """
        import scipy.sparse

        if not scipy.sparse.issparse(matrix):
            raise TypeError(f"matrix must be a scipy.sparse matrix, got {type(matrix).__name__}")
        csr = scipy.sparse.csr_array(matrix, dtype=np.float64 if matrix.dtype == np.float64
                                     else np.float32, copy=True)
        csr.sum_duplicates()
        if not np.isfinite(csr.data).all():
            raise ValueError("matrix must be finite, found NaN or Inf")
        n_out, n_in = csr.shape
        bias = _check_bias(bias, n_out)
        counts = np.diff(csr.indptr)
        rows = np.flatnonzero(counts)
        if rows.size and (counts[rows] != counts[rows[0]]).any():
            raise ValueError("matrix must have constant fan-in (every non-empty row the same "
                             "number of entries), got " + _describe_counts(counts[rows], rows))
        k = int(counts[rows[0]]) if rows.size else 0
        values = csr.data.astype(np.float32).reshape(rows.size, k)
        indices = csr.indices.astype(_index_dtype(n_in, index_dtype)).reshape(rows.size, k)
        return cls(values, indices, rows, n_out, n_in,
                   None if bias is None else bias[rows].astype(np.float32))

    def to_dense(self):
        """The weight as a dense (n_out, n_in) float32 array, zero rows where inactive."""
        weight = np.zeros((self.n_out, self.n_in), dtype=np.float32)
        weight[self.active[:, None], self.indices] = self.values
        return weight

    def dense_bias(self):
        """The bias as (n_out,) float32, zero for inactive neurons (None without bias)."""
        if self.bias is None:
            return None
        bias = np.zeros(self.n_out, dtype=np.float32)
        bias[self.active] = self.bias
        return bias

    def to_csr(self):
        """The weight as a scipy.sparse.csr_array (n_out, n_in) with k entries per active row."""
        import scipy.sparse

        counts = np.zeros(self.n_out, dtype=np.int64)
        counts[self.active] = self.k
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return scipy.sparse.csr_array(
            (self.values.ravel().copy(), self.indices.ravel().astype(np.int32), indptr),
            shape=(self.n_out, self.n_in))

    def forward(self, x, threads=0):
        """x: (batch, n_in) or (n_in,), any float dtype -> y: (batch, n_active) or (n_active,)."""
        x = np.asarray(x)
        vector = x.ndim == 1
        x2 = x.reshape(1, -1) if vector else x
        if self.weights is None:
            if x2.ndim != 2 or x2.shape[1] != self.n_in:
                raise ValueError(f"x must have shape (batch, {self.n_in}), got {x.shape}")
            y = np.zeros((x2.shape[0], 0), dtype=np.float32)
        else:
            y = condensed_matmul(self.weights, x2, self.bias, threads)
        return y[0] if vector else y

    __call__ = forward

    def to(self, device):
        """This layer on ``device``: itself for "cpu"; for "cuda[:N]" a one-stage
        ``srigl_np.cuda.CudaCondensedModel`` (``logits(x)`` is the layer's forward)."""
        return CondensedModel([self]).to(device) if device != "cpu" else self

    kind = "linear"
    array_names = ("values", "indices", "active")
    optional_arrays = ("bias",)

    def _arrays(self):
        arrays = {"values": self.values, "indices": self.indices, "active": self.active}
        if self.bias is not None:
            arrays["bias"] = self.bias
        return arrays

    def _meta(self):
        return {"n_out": self.n_out, "n_in": self.n_in}

    @classmethod
    def _from_saved(cls, meta, arrays):
        return cls(arrays["values"], arrays["indices"], arrays["active"], meta["n_out"],
                   meta["n_in"], arrays.get("bias"))

    def __repr__(self):
        return (f"CondensedLinear(n_in={self.n_in}, n_out={self.n_out}, "
                f"n_active={self.n_active}, k={self.k})")


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _count(name, value):
    """An integer >= 0 (a layer may read no inputs when all its inputs were ablated)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def _check_indices(indices, shape):
    if not isinstance(indices, np.ndarray) or indices.dtype not in (np.int16, np.int32):
        raise TypeError(f"indices must be an int16 or int32 array, got "
                        f"{getattr(indices, 'dtype', type(indices).__name__)}")
    if indices.shape != shape:
        raise ValueError(f"indices must have the shape of values {shape}, got {indices.shape}")


def _float_input(x, name="x"):
    """x as a C-contiguous float32 array (any float dtype or strides accepted)."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _conv_geometry(kernel_size, stride, padding):
    if isinstance(kernel_size, (int, np.integer)):
        kernel_size = (kernel_size, kernel_size)
    if len(kernel_size) != 2:
        raise ValueError(f"kernel_size must be an int or a pair, got {kernel_size!r}")
    kh, kw = (_positive("kernel_size", size) for size in kernel_size)
    return (kh, kw), _positive("stride", stride), _count("padding", padding)


def _conv_rows_to_images(rows, batch, out_h, out_w):
    """(batch*out_h*out_w, channels) NHWC rows -> (batch, channels, out_h, out_w) NCHW."""
    return np.ascontiguousarray(
        rows.reshape(batch, out_h, out_w, rows.shape[1]).transpose(0, 3, 1, 2))


def _im2col_input(x, in_channels, kernel_size, stride, padding, threads):
    x = _float_input(x)
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"x must have shape (batch, {in_channels}, height, width), got {x.shape}")
    kh, kw = kernel_size
    out_h = conv_output_size(x.shape[2], kh, stride, padding)
    out_w = conv_output_size(x.shape[3], kw, stride, padding)
    return im2col(x, kh, kw, stride, padding, threads), x.shape[0], out_h, out_w


class CondensedConv2d:
    """A constant fan-in Conv2d over its active output channels: im2col + condensed matmul.

    Output channel o's fan-in is over its flattened filter weight[o]: in_channels*kh*kw
    taps ordered (channel, ki, kj), the column order of ``im2col``; ``linear`` is the
    CondensedLinear of the (out_channels, in_channels*kh*kw) weight.
    x: (batch, in_channels, height, width) -> y: (batch, n_active, out_h, out_w).
    """

    kind = "conv2d"
    array_names = CondensedLinear.array_names
    optional_arrays = CondensedLinear.optional_arrays

    def __init__(self, linear, in_channels, kernel_size, stride=1, padding=0):
        if not isinstance(linear, CondensedLinear):
            raise TypeError(f"linear must be a CondensedLinear, got {type(linear).__name__}")
        self.in_channels = _count("in_channels", in_channels)
        self.kernel_size, self.stride, self.padding = _conv_geometry(kernel_size, stride, padding)
        kh, kw = self.kernel_size
        if linear.n_in != self.in_channels * kh * kw:
            raise ValueError(f"linear.n_in must be in_channels*kh*kw = "
                             f"{self.in_channels * kh * kw}, got {linear.n_in}")
        self.linear = linear

    @classmethod
    def from_dense(cls, weight, bias=None, *, stride=1, padding=0, index_dtype=None):
        """Condense a masked conv weight (out_channels, in_channels, kh, kw); see
        CondensedLinear.from_dense for the rules (fan-in counted per output channel)."""
        _check_real_array("weight", weight, 4)
        out_channels, in_channels, kh, kw = weight.shape
        linear = CondensedLinear.from_dense(weight.reshape(out_channels, -1), bias,
                                            index_dtype=index_dtype)
        return cls(linear, in_channels, (kh, kw), stride, padding)

    active = property(lambda self: self.linear.active)
    values = property(lambda self: self.linear.values)
    indices = property(lambda self: self.linear.indices)
    bias = property(lambda self: self.linear.bias)
    n_active = property(lambda self: self.linear.n_active)
    k = property(lambda self: self.linear.k)
    out_channels = property(lambda self: self.linear.n_out)

    def to_dense(self):
        """The weight as (out_channels, in_channels, kh, kw) float32."""
        return self.linear.to_dense().reshape(self.out_channels, self.in_channels,
                                              *self.kernel_size)

    def forward(self, x, threads=0):
        cols, batch, out_h, out_w = _im2col_input(x, self.in_channels, self.kernel_size,
                                                  self.stride, self.padding, threads)
        rows = self.linear.forward(cols, threads)
        return _conv_rows_to_images(rows, batch, out_h, out_w)

    __call__ = forward

    def _arrays(self):
        return self.linear._arrays()

    def _meta(self):
        return {**self.linear._meta(), "in_channels": self.in_channels,
                "kernel_size": list(self.kernel_size), "stride": self.stride,
                "padding": self.padding}

    @classmethod
    def _from_saved(cls, meta, arrays):
        return cls(CondensedLinear._from_saved(meta, arrays), meta["in_channels"],
                   tuple(meta["kernel_size"]), meta["stride"], meta["padding"])

    def __repr__(self):
        return (f"CondensedConv2d(in_channels={self.in_channels}, out_channels="
                f"{self.out_channels}, kernel_size={self.kernel_size}, n_active="
                f"{self.n_active}, k={self.k})")


def _check_dense_params(weight, bias, ndim):
    if not isinstance(weight, np.ndarray) or weight.dtype != np.float32:
        raise TypeError(f"weight must be a float32 array, got "
                        f"{getattr(weight, 'dtype', type(weight).__name__)}")
    if weight.ndim != ndim:
        raise ValueError(f"weight must have {ndim} dimensions, got shape {weight.shape}")
    if not np.isfinite(weight).all():
        raise ValueError("weight must be finite, found NaN or Inf")
    if bias is not None:
        if not isinstance(bias, np.ndarray) or bias.dtype != np.float32:
            raise TypeError(f"bias must be a float32 array or None, got "
                            f"{getattr(bias, 'dtype', type(bias).__name__)}")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {bias.shape}")
        if not np.isfinite(bias).all():
            raise ValueError("bias must be finite, found NaN or Inf")
    return np.ascontiguousarray(weight), bias


class DenseLinear:
    """A Linear layer ``condense`` keeps dense because its rows differ in count
    (e.g. unstructured RigL): y = x @ weight.T + bias over its active rows.
    weight: (n_active, n_in) float32; bias: (n_active,) float32 or None."""

    kind = "dense_linear"
    array_names = ("weight",)
    optional_arrays = ("bias",)

    def __init__(self, weight, bias=None):
        self.weight, self.bias = _check_dense_params(weight, bias, 2)
        self.n_in = self.weight.shape[1]

    def forward(self, x, threads=0):
        x = _float_input(x)
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"x must have shape (batch, {self.n_in}), got {x.shape}")
        y = x @ self.weight.T
        if self.bias is not None:
            y += self.bias
        return y

    def _arrays(self):
        return {"weight": self.weight} if self.bias is None else {
            "weight": self.weight, "bias": self.bias}

    def _meta(self):
        return {}

    @classmethod
    def _from_saved(cls, meta, arrays):
        return cls(arrays["weight"], arrays.get("bias"))

    def __repr__(self):
        return f"DenseLinear(n_in={self.n_in}, n_out={self.weight.shape[0]})"


class DenseConv2d:
    """The Conv2d counterpart of DenseLinear: weight (n_active, in_channels, kh, kw)."""

    kind = "dense_conv2d"
    array_names = ("weight",)
    optional_arrays = ("bias",)

    def __init__(self, weight, bias=None, stride=1, padding=0):
        self.weight, self.bias = _check_dense_params(weight, bias, 4)
        self.in_channels = self.weight.shape[1]
        self.kernel_size, self.stride, self.padding = _conv_geometry(
            self.weight.shape[2:], stride, padding)

    def forward(self, x, threads=0):
        cols, batch, out_h, out_w = _im2col_input(x, self.in_channels, self.kernel_size,
                                                  self.stride, self.padding, threads)
        rows = cols @ self.weight.reshape(self.weight.shape[0], -1).T
        if self.bias is not None:
            rows += self.bias
        return _conv_rows_to_images(rows, batch, out_h, out_w)

    _arrays = DenseLinear._arrays

    def _meta(self):
        return {"stride": self.stride, "padding": self.padding}

    @classmethod
    def _from_saved(cls, meta, arrays):
        return cls(arrays["weight"], arrays.get("bias"), meta["stride"], meta["padding"])

    def __repr__(self):
        return f"DenseConv2d(weight={self.weight.shape}, stride={self.stride}, " \
               f"padding={self.padding})"


class Relu:
    """max(x, 0)."""

    kind = "relu"
    array_names = optional_arrays = ()

    def forward(self, x, threads=0):
        return np.maximum(x, 0)

    def _arrays(self):
        return {}

    def _meta(self):
        return {}

    @classmethod
    def _from_saved(cls, meta, arrays):
        return cls()

    def __repr__(self):
        return "ReLU()"


class MaxPool:
    """Max pooling (no padding), as srigl_np.layers.MaxPool2d in evaluation."""

    kind = "max_pool2d"
    array_names = optional_arrays = ()

    def __init__(self, kernel_size, stride):
        self._pool = MaxPool2d(kernel_size, stride)

    def forward(self, x, threads=0):
        return self._pool.forward(x, False)

    _arrays = Relu._arrays

    def _meta(self):
        return {"kernel_size": list(self._pool.kernel_size), "stride": self._pool.stride}

    @classmethod
    def _from_saved(cls, meta, arrays):
        return cls(tuple(meta["kernel_size"]), meta["stride"])

    def __repr__(self):
        return repr(self._pool)


class FlattenStage:
    """(batch, ...) -> (batch, prod(...)), C order."""

    kind = "flatten"
    array_names = optional_arrays = ()

    def forward(self, x, threads=0):
        return x.reshape(x.shape[0], -1)

    _arrays = Relu._arrays
    _meta = Relu._meta

    @classmethod
    def _from_saved(cls, meta, arrays):
        return cls()

    def __repr__(self):
        return "Flatten()"


class ChannelAffine:
    """x * scale + shift along axis 1: a BatchNorm in evaluation, on the kept channels.
    scale, shift: (channels,) float32."""

    kind = "channel_affine"
    array_names = ("scale", "shift")
    optional_arrays = ()

    def __init__(self, scale, shift):
        for name, a in (("scale", scale), ("shift", shift)):
            _check_dense_params(a, None, 1)
        if shift.shape != scale.shape:
            raise ValueError(f"shift must have the shape of scale {scale.shape}, got {shift.shape}")
        self.scale, self.shift = scale, shift

    def forward(self, x, threads=0):
        if x.ndim < 2 or x.shape[1] != self.scale.size:
            raise ValueError(f"x must have {self.scale.size} channels on axis 1, got {x.shape}")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.scale.reshape(shape) + self.shift.reshape(shape)

    def _arrays(self):
        return {"scale": self.scale, "shift": self.shift}

    _meta = Relu._meta

    @classmethod
    def _from_saved(cls, meta, arrays):
        return cls(arrays["scale"], arrays["shift"])

    def __repr__(self):
        return f"ChannelAffine({self.scale.size})"


class Scatter:
    """Put the kept features back at their positions along axis 1 and fill the removed
    ones with their constant value (the output of an ablated neuron is constant).
    positions: (n_kept,) int64, strictly increasing in [0, n_features);
    constants: (n_features,) float32, read where no position points."""

    kind = "scatter"
    array_names = ("positions", "constants")
    optional_arrays = ()

    def __init__(self, positions, constants):
        _check_dense_params(constants, None, 1)
        if not isinstance(positions, np.ndarray) or positions.dtype != np.int64:
            raise TypeError(f"positions must be an int64 array, got "
                            f"{getattr(positions, 'dtype', type(positions).__name__)}")
        if positions.ndim != 1 or (positions.size and (
                positions[0] < 0 or positions[-1] >= constants.size
                or (np.diff(positions) <= 0).any())):
            raise ValueError(f"positions must be 1-D, strictly increasing in "
                             f"[0, {constants.size})")
        self.positions, self.constants = positions, constants
        self._removed = np.setdiff1d(np.arange(constants.size), positions)

    def forward(self, x, threads=0):
        if x.ndim < 2 or x.shape[1] != self.positions.size:
            raise ValueError(f"x must have {self.positions.size} features on axis 1, "
                             f"got {x.shape}")
        out = np.empty((x.shape[0], self.constants.size) + x.shape[2:], dtype=np.float32)
        out[:, self.positions] = x
        shape = (1, -1) + (1,) * (x.ndim - 2)
        out[:, self._removed] = self.constants[self._removed].reshape(shape)
        return out

    def _arrays(self):
        return {"positions": self.positions, "constants": self.constants}

    _meta = Relu._meta

    @classmethod
    def _from_saved(cls, meta, arrays):
        return cls(arrays["positions"], arrays["constants"])

    def __repr__(self):
        return f"Scatter({self.positions.size} -> {self.constants.size})"


STAGE_TYPES = {cls.kind: cls for cls in (CondensedLinear, CondensedConv2d, DenseLinear,
                                         DenseConv2d, Relu, MaxPool, FlattenStage,
                                         ChannelAffine, Scatter)}


class CondensedModel:
    """A condensed network: ``stages`` applied in order (see ``condense``).

    logits(x): x (batch, ...) of any float dtype -> (batch, n_classes) float32, equal to
    the masked dense model's output in evaluation up to float32 rounding.
    """

    def __init__(self, stages):
        stages = list(stages)
        for i, stage in enumerate(stages):
            if type(stage) not in STAGE_TYPES.values():
                raise TypeError(f"stage {i} must be one of {sorted(STAGE_TYPES)}, "
                                f"got {type(stage).__name__}")
        self.stages = stages

    def logits(self, x, threads=0):
        x = _float_input(x)
        for stage in self.stages:
            x = stage.forward(x, threads)
        return x

    def predict(self, x, threads=0):
        """Predicted class per example: (batch,) int64."""
        return self.logits(x, threads).argmax(axis=1)

    def to(self, device):
        """This model on ``device``: itself for "cpu"; for "cuda" or "cuda:N" a
        ``srigl_np.cuda.CudaCondensedModel`` holding copies of the arrays on that GPU
        (its ``logits``/``predict`` run the CUDA kernels). Needs CuPy for "cuda"."""
        from .cuda import CudaCondensedModel, parse_device

        if parse_device(device)[0] == "cpu":
            return self
        return CudaCondensedModel(self, device)

    def save(self, path):
        """Write the model to ``path`` (.npz, written atomically).

        Layout (format_version 1):
            format_version   int64 scalar, 1
            metadata         str scalar, JSON {"format": "srigl_np.condensed",
                             "stages": [{"type": <kind>, <integer settings>}, ...]}
            stage<i>.<name>  the arrays of stage i, e.g. stage0.values (float32
                             [n_active, k]), stage0.indices (int16/int32 [n_active, k]),
                             stage0.active (int64 [n_active]), stage0.bias (float32)
        Stage kinds and their arrays: see STAGE_TYPES (array_names, optional_arrays).
        """
        arrays = {"format_version": np.array(FORMAT_VERSION, dtype=np.int64)}
        stages = []
        for i, stage in enumerate(self.stages):
            stages.append({"type": stage.kind, **stage._meta()})
            arrays.update({f"stage{i}.{name}": np.asarray(a)
                           for name, a in stage._arrays().items()})
        arrays["metadata"] = np.array(json.dumps({"format": FORMAT_NAME, "stages": stages}))
        atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path):
        return load(path)

    def __repr__(self):
        return "CondensedModel(\n" + "".join(f"  {stage!r},\n" for stage in self.stages) + ")"


def load(path):
    """Read a CondensedModel written by ``CondensedModel.save``, validating everything.

    A file that is not such an archive, has another format_version, lacks or adds
    arrays, or holds arrays of the wrong dtype, shape or range is refused with a
    ValueError or TypeError saying what is wrong.
    """
    import zipfile

    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path!s} is not a readable .npz file: {exc}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path!s} is not a .npz archive")
    with archive:
        keys = set(archive.files)
        for key in ("format_version", "metadata"):
            if key not in keys:
                raise ValueError(f"{path!s} lacks '{key}': not a condensed model file")
        version = archive["format_version"]
        if version.shape != () or version.dtype.kind not in "iu" or int(version) != FORMAT_VERSION:
            raise ValueError(f"format_version must be {FORMAT_VERSION}, got {version!r}")
        metadata = _parse_metadata(archive["metadata"])
        stages, used = [], {"format_version", "metadata"}
        for i, meta in enumerate(metadata["stages"]):
            stage_type = STAGE_TYPES.get(meta.get("type") if isinstance(meta, dict) else None)
            if stage_type is None:
                raise ValueError(f"stage {i} has unknown type {meta!r}; known: "
                                 f"{sorted(STAGE_TYPES)}")
            arrays = {}
            for name in stage_type.array_names + stage_type.optional_arrays:
                key = f"stage{i}.{name}"
                if key in keys:
                    arrays[name] = archive[key]
                    used.add(key)
                elif name in stage_type.array_names:
                    raise ValueError(f"stage {i} ({stage_type.kind}) lacks array '{key}'")
            try:
                stages.append(stage_type._from_saved(meta, arrays))
            except KeyError as exc:
                raise ValueError(f"stage {i} ({stage_type.kind}) lacks setting {exc}") from exc
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"stage {i} ({stage_type.kind}): {exc}") from exc
        if keys - used:
            raise ValueError(f"unexpected arrays in {path!s}: {sorted(keys - used)}")
    return CondensedModel(stages)


def _parse_metadata(raw):
    if raw.shape != () or raw.dtype.kind != "U":
        raise ValueError(f"metadata must be a JSON string, got {raw.dtype} {raw.shape}")
    try:
        metadata = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise ValueError(f"metadata is not valid JSON: {exc}") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"metadata must name format {FORMAT_NAME!r}")
    if not isinstance(metadata.get("stages"), list):
        raise ValueError("metadata must hold a list of stages")
    return metadata


class _Features:
    """Bookkeeping of ``condense``: which features (axis 1) of the original tensor the
    condensed tensor still holds, and the constant value of each removed one.

    kept: (n_kept,) int64 positions, strictly increasing; constants: (n_features,)
    float64, read at removed positions only. ``flatten_at`` is the index of the
    FlattenStage applied to a channel-level state (None otherwise): the features are
    then channels whose blocks of height*width flat features are not known yet.
    """

    def __init__(self, kept, constants, flatten_at=None):
        self.kept, self.constants, self.flatten_at = kept, constants, flatten_at

    @property
    def removed(self):
        return np.setdiff1d(np.arange(self.constants.size), self.kept)

    def expanded(self, n_features):
        """The state over ``n_features`` flat features (after a pending Flatten)."""
        if self.flatten_at is None:
            if n_features != self.constants.size:
                raise ValueError(f"layer expects {n_features} input features, the previous "
                                 f"layer gives {self.constants.size}")
            return self
        channels = self.constants.size
        block = n_features // channels
        if block * channels != n_features:
            raise ValueError(f"layer expects {n_features} input features, not a multiple of "
                             f"the {channels} flattened channels")
        kept = (self.kept[:, None] * block + np.arange(block)).ravel()
        return _Features(kept, np.repeat(self.constants, block))

    def scatter(self):
        return Scatter(self.kept.astype(np.int64), self.constants.astype(np.float32))


def _pad_to_constant_fan_in(pattern, active):
    """Give every active row of ``pattern`` the largest count among them by marking the
    first free columns of shorter rows (explicit zero weights)."""
    counts = pattern.sum(axis=1)
    if not active.size:
        return pattern
    k = counts[active].max()
    short = active[counts[active] < k]
    if not short.size:
        return pattern
    free_first = np.argsort(pattern[short], axis=1, kind="stable")
    need = k - counts[short]
    pattern = pattern.copy()
    pattern[np.repeat(short, need), free_first[np.arange(pattern.shape[1]) < need[:, None]]] = True
    return pattern


def _condense_layer(layer, state, stages, index_dtype):
    """Append the condensed form of a Linear/Conv2d to ``stages``; return the new state.

    Inputs the previous layers removed are dropped from the weight's columns; their
    constant values times those columns are folded into the bias (exact for Linear and
    for Conv2d without padding; a padded Conv2d gets the removed channels back through
    a Scatter stage instead, as its border pixels see fewer taps). The layer's own rows
    that are then all zero are removed: each outputs its constant bias.
    """
    conv = isinstance(layer, Conv2d)
    weight = layer.params["weight"]
    n_out = weight.shape[0]
    matrix = weight.reshape(n_out, -1).astype(np.float64)
    bias = layer.params.get("bias")
    shift = np.zeros(n_out) if bias is None else bias.astype(np.float64)
    taps = int(np.prod(weight.shape[2:])) if conv else 1
    n_inputs = layer.in_channels if conv else layer.in_features
    if state is not None and conv and layer.padding and state.constants[state.removed].any():
        stages.append(state.scatter())
        state = None
    if state is None:
        kept = np.arange(n_inputs)
    else:
        state = state.expanded(n_inputs)
        kept, removed = state.kept, state.removed
        removed_columns = (removed[:, None] * taps + np.arange(taps)).ravel()
        shift = shift + matrix[:, removed_columns] @ np.repeat(state.constants[removed], taps)
    columns = (kept[:, None] * taps + np.arange(taps)).ravel()
    matrix_in = matrix[:, columns]
    counts = (matrix != 0).sum(axis=1)
    structured = np.unique(counts[counts > 0]).size <= 1
    pattern = matrix_in != 0
    active = np.flatnonzero(pattern.any(axis=1))
    has_bias = bias is not None or bool(shift.any())
    active_bias = shift[active].astype(np.float32) if has_bias else None
    if structured:
        pattern = _pad_to_constant_fan_in(pattern, active)
        _, values, indices = _pattern_arrays(
            matrix_in, pattern, _index_dtype(columns.size, index_dtype))
        core = CondensedLinear(values, indices, active, n_out, columns.size, active_bias)
        stage = (CondensedConv2d(core, kept.size, layer.kernel_size, layer.stride,
                                 layer.padding) if conv else core)
    else:
        dense = matrix_in[active].astype(np.float32)
        stage = (DenseConv2d(dense.reshape(active.size, kept.size, *layer.kernel_size),
                             active_bias, layer.stride, layer.padding)
                 if conv else DenseLinear(dense, active_bias))
    stages.append(stage)
    constants = shift.copy()
    constants[active] = 0.0
    return _Features(active, constants)


def _batch_norm_affine(layer):
    """Evaluation-mode BatchNorm as y = x * scale + shift (float64, per channel)."""
    scale = layer.params["weight"] / np.sqrt(layer.buffers["running_var"].astype(np.float64)
                                             + layer.eps)
    return scale, layer.params["bias"] - layer.buffers["running_mean"] * scale


def condense(model, *, index_dtype=None):
    """Convert a trained Sequential into a CondensedModel for inference.

    Every Linear/Conv2d becomes a CondensedLinear/CondensedConv2d when its non-zero
    rows share one count (constant fan-in: SRigL, or any dense layer, with k = n_in);
    a layer whose rows differ (unstructured RigL, SET) stays dense as DenseLinear /
    DenseConv2d, so any model condenses. Rows that are all zero are ablated neurons and
    are removed structurally: the layer shrinks, and the next layer drops the matching
    input columns (a conv channel's kh*kw taps; after Flatten its height*width block)
    and remaps its indices, so no work is spent on them. An ablated neuron still
    outputs a constant (its bias, through ReLU/BatchNorm): that constant is folded into
    the next layer's bias; before a padded Conv2d, or at the end of the network, a
    Scatter stage puts the constant features back. Rows of the next layer that lose
    weights to dropped columns are padded with explicit zeros to a common k.
    ReLU, MaxPool2d, Flatten, BatchNorm1d/2d (running statistics) and Dropout (the
    identity in evaluation) are supported between them; another layer is a TypeError.
    index_dtype: None (int16 when a layer's inputs fit, else int32), int16 or int32.
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a srigl_np.layers.Sequential, got {type(model).__name__}")
    stages, state = [], None
    for i, layer in enumerate(model.layers):
        if isinstance(layer, (Linear, Conv2d)):
            state = _condense_layer(layer, state, stages, index_dtype)
        elif isinstance(layer, ReLU):
            stages.append(Relu())
            if state is not None:
                state.constants = np.maximum(state.constants, 0.0)
        elif isinstance(layer, MaxPool2d):
            stages.append(MaxPool(layer.kernel_size, layer.stride))
        elif isinstance(layer, Flatten):
            stages.append(FlattenStage())
            if state is not None and state.flatten_at is None:
                state.flatten_at = len(stages) - 1
        elif isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            scale, shift = _batch_norm_affine(layer)
            if state is not None:
                state = state.expanded(layer.num_features)
                state.constants = state.constants * scale + shift
            kept = slice(None) if state is None else state.kept
            stages.append(ChannelAffine(scale[kept].astype(np.float32),
                                        shift[kept].astype(np.float32)))
        elif not isinstance(layer, Dropout):
            raise TypeError(f"condense cannot convert layer {i}: {type(layer).__name__}")
    if state is not None and state.removed.size:
        # Restore the full output: before a trailing Flatten of channels, or at the end.
        at = len(stages) if state.flatten_at is None else state.flatten_at
        stages.insert(at, state.scatter())
    return CondensedModel(stages)
