"""Condensed layers: the representation of a constant fan-in layer (SRigL, Lasby et al. 2024, §4.4).

A layer trained with constant fan-in gives every active neuron exactly k incoming
weights, so it is stored as two dense (n_active, k) arrays,

    values[r, j]   the j-th kept weight of active neuron r      float32
    indices[r, j]  its input column, strictly increasing in j   int16 (n_in <= 32767) / int32

plus ``active`` (the neurons' output positions, strictly increasing) and the bias of the
active neurons. Rows that are entirely zero are ablated neurons: they are not stored.
The forward pass y[b, r] = bias[r] + sum_j values[r, j] * x[b, indices[r, j]] is
``kernels.condensed_product`` (defined by ``kernels.condensed_reference``; the Cython
kernels run it for NumPy input, the CUDA kernels for CuPy input).

``CondensedLinear.forward`` and ``CondensedConv2d.forward`` are the one place where a
condensed model calls the kernels (every stage that multiplies by condensed weights,
inside residual blocks, squeeze-excite gates and attention too, goes through them), so a
faster kernel or layout is switched there.

This module also holds the stage protocol that every step of a ``CondensedModel``
follows (``Stage``): ``forward(x, threads)`` on x's device, ``to(device)``, and a
serialisation derived from one description per class. The model and its file format
are in ``condensed_model.py``; the pass that turns a trained network into one is
``condensing.condense``.
"""

import copy

import numpy as np

from ..backend import array_module, is_cupy_array, parse_device, select, to_device, to_numpy
from ..kernels import (CondensedWeights, condensed_conv, condensed_matmul, condensed_matvec,
                       condensed_product, condensed_reference, conv_output_size, im2col)
from ..validation import FLOATING, check_array, check_float32_range, count, positive_int

INT16_MAX_COLUMNS = 32767
INDEX_DTYPES = (np.int16, np.int32)


# -- the stage protocol -----------------------------------------------------------------

class Stage:
    """One step of a CondensedModel: ``forward(x, threads=0)`` -> y, computed on x's device.

    The class describes what it is made of, and saving, loading and moving are derived
    from that description:

        kind       its name in a condensed model file
        ARRAYS     attributes that are arrays, saved as ``stage<i>.<name>``
        OPTIONAL   array attributes that may be None (saved only when present)
        SETTINGS   attributes that are integers, floats or tuples of them, saved in the
                   JSON metadata
        DEFAULTS   {setting: value} for settings that files of an older format may lack
        PIPELINES  attributes that are lists of stages (or None where OPTIONAL_PIPELINES
                   allows it): the sub-graphs of a residual block, a squeeze-excite gate
                   or an attention's projections, saved nested (``model_file``)

    ``from_fields(**arrays, **settings, **pipelines)`` rebuilds (and so re-validates) a
    stage; by default it is the constructor, whose parameters carry the same names.
    ``to(device)`` returns a copy whose arrays (and sub-stages) live on ``device``
    (itself when they already do).
    """

    kind = None
    ARRAYS = OPTIONAL = SETTINGS = PIPELINES = OPTIONAL_PIPELINES = ()
    DEFAULTS = {}

    def forward(self, x, threads=0):
        raise NotImplementedError

    def __call__(self, x, threads=0):
        return self.forward(x, threads)

    def fields(self):
        """(arrays, settings): the saved form, arrays as NumPy, settings as JSON values."""
        arrays = {name: to_numpy(getattr(self, name)) for name in self.ARRAYS}
        arrays.update({name: to_numpy(getattr(self, name)) for name in self.OPTIONAL
                       if getattr(self, name) is not None})
        settings = {name: _json_setting(getattr(self, name)) for name in self.SETTINGS}
        return arrays, settings

    @classmethod
    def from_fields(cls, **fields):
        return cls(**fields)

    @property
    def device(self):
        """"cpu", or "cuda:N" when the stage's arrays (or its sub-stages') live on GPU N."""
        for value in vars(self).values():
            if is_cupy_array(value):
                return f"cuda:{value.device.id}"
        for _, stages in self.sub_stages():
            for stage in stages:
                if stage.device != "cpu":
                    return stage.device
        return "cpu"

    def to(self, device):
        select(device)   # validates the name; DeviceError without CuPy or a GPU
        if _same_device(self.device, device):
            return self
        moved = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, np.ndarray) or is_cupy_array(value):
                setattr(moved, name, to_device(value, device))
        for name in self.PIPELINES:
            stages = getattr(self, name)
            if stages is not None:
                setattr(moved, name, [stage.to(device) for stage in stages])
        return moved

    def sub_stages(self):
        """(pipeline name, its stages) of every sub-graph this stage holds."""
        return [(name, getattr(self, name)) for name in self.PIPELINES
                if getattr(self, name) is not None]


def _same_device(current, device):
    kind, index = parse_device(device)
    return current == ("cpu" if kind == "cpu" else f"cuda:{index}")


def _json_setting(value):
    return list(value) if isinstance(value, tuple) else value


# -- shared input and geometry checks -------------------------------------------------------

def _index_dtype(n_in, index_dtype):
    """int16 when every column index fits (n_in <= 32767), else int32; or the one asked."""
    if index_dtype is None:
        return np.dtype(np.int16) if n_in <= INT16_MAX_COLUMNS else np.dtype(np.int32)
    index_dtype = np.dtype(index_dtype)
    if index_dtype not in INDEX_DTYPES:
        raise TypeError(f"index_dtype must be int16 or int32, got {index_dtype}")
    if index_dtype == np.int16 and n_in > INT16_MAX_COLUMNS:
        raise ValueError(f"index_dtype int16 holds columns < {INT16_MAX_COLUMNS + 1}, "
                         f"but n_in is {n_in}")
    return index_dtype


def _check_weight(name, a, ndim):
    """A finite float32/float64 NumPy weight of ``ndim`` dimensions that float32 holds
    (for from_dense)."""
    return check_float32_range(name, check_array(
        name, a, dtypes=(np.float32, np.float64), ndim=ndim, finite=True, device="cpu"))


def _check_bias(bias, n_out, name="bias"):
    if bias is None:
        return None
    return check_float32_range(name, check_array(
        name, bias, dtypes=(np.float32, np.float64), shape=(n_out,), finite=True,
        device="cpu"))


def float_input(x, name="x"):
    """x as a C-contiguous float32 array on its device (any float dtype or strides)."""
    xp = array_module(x)
    x = xp.asarray(x)
    check_array(name, x, dtypes=FLOATING)
    return xp.ascontiguousarray(x, dtype=xp.float32)


def describe_counts(counts, rows):
    """'12 rows have 5 non-zeros (e.g. rows [0, 1, 2]), 3 rows have 7 (...)' for an error."""
    parts = []
    for n in np.unique(counts):
        where = rows[counts == n]
        parts.append(f"{where.size} rows have {n} non-zeros (e.g. rows {where[:5].tolist()})")
    return "; ".join(parts)


def pattern_arrays(matrix, pattern, index_dtype):
    """(active, values, indices) of the rows of ``pattern`` that have any entry.

    matrix, pattern: (n_out, n_in). Every such row must hold the same count k (checked
    by the caller); entries come out in row-major order, so each row's indices are
    strictly increasing.
    """
    counts = pattern.sum(axis=1)
    active = np.flatnonzero(counts)
    k = int(counts[active[0]]) if active.size else 0
    rows, cols = np.nonzero(pattern[active])
    values = np.ascontiguousarray(matrix[active][rows, cols], dtype=np.float32)
    return (active, values.reshape(active.size, k),
            cols.astype(index_dtype).reshape(active.size, k))


# -- CondensedLinear --------------------------------------------------------------------

class CondensedLinear(Stage):
    """A constant fan-in Linear layer over its active neurons: y = x @ W[active].T + bias.

    Outputs: ``forward(x)`` gives one column per *active* neuron, (batch, n_active),
    column j being neuron ``active[j]`` of the dense layer's n_out (``condense`` removes
    the others structurally); ``layer @ x`` gives all n_out rows, as the dense matrix
    of ``shape`` (n_out, n_in) would, without bias.

    values: (n_active, k) float32, read-only; indices: (n_active, k) int16/int32,
    read-only, each row strictly increasing in [0, n_in); active: (n_active,) int64,
    strictly increasing in [0, n_out); bias: (n_active,) float32 or None.
    k >= 1 whenever n_active >= 1. The constructor checks all of it (like scipy's
    ``check_format``) and hands the weights to a ``CondensedWeights``, which keeps
    immutable copies, so the kernel never re-checks an index. After ``to("cuda")`` the
    weights are a ``cuda.CudaCondensedWeights`` and the bias a CuPy array; ``active``
    stays a NumPy array (it is bookkeeping, not read by the product).
    """

    kind = "linear"
    ARRAYS = ("values", "indices", "active")
    OPTIONAL = ("bias",)
    SETTINGS = ("n_out", "n_in")

    def __init__(self, values, indices, active, n_out, n_in, bias=None):
        n_out, n_in = positive_int("n_out", n_out), count("n_in", n_in)
        check_array("active", active, dtypes="integer", ndim=1, device="cpu")
        if active.size and (active[0] < 0 or active[-1] >= n_out
                            or (np.diff(active) <= 0).any()):
            raise ValueError(f"active must be strictly increasing in [0, n_out={n_out})")
        check_array("values", values, dtypes=(np.float32,), ndim=2, finite=True,
                    device="cpu")
        if values.shape[0] != active.size:
            raise ValueError(f"values must have shape (n_active={active.size}, k), "
                             f"got {values.shape}")
        check_array("indices", indices, dtypes=INDEX_DTYPES, device="cpu")
        if indices.shape != values.shape:
            raise ValueError(f"indices must have the shape of values {values.shape}, "
                             f"got {indices.shape}")
        if (np.diff(indices.astype(np.int32), axis=1) <= 0).any():
            raise ValueError("indices must be strictly increasing along each row")
        if bias is not None:
            check_array("bias", bias, dtypes=(np.float32,), shape=(active.size,),
                        finite=True, device="cpu")
            bias = np.array(bias, dtype=np.float32)
            bias.setflags(write=False)
        self.n_out, self.n_in = n_out, n_in
        self.active = np.array(active, dtype=np.int64)
        self.active.setflags(write=False)
        self.bias = bias
        # Validates dtype, shape, k >= 1 and the index range; keeps immutable copies.
        # A layer without active neurons has no weights: the kernels need k >= 1.
        self.weights = CondensedWeights(values, indices, n_in) if active.size else None
        self._index_dtype = np.dtype(indices.dtype)

    @property
    def values(self):
        """(n_active, k) float32: read-only on the CPU, a copy on the GPU."""
        if self.weights is None:
            return np.zeros((0, 0), dtype=np.float32)
        return self.weights.values

    @property
    def indices(self):
        """(n_active, k) int16/int32: read-only on the CPU, a copy on the GPU."""
        if self.weights is None:
            return np.zeros((0, 0), dtype=self._index_dtype)
        return self.weights.indices

    @property
    def n_active(self):
        return self.active.size

    @property
    def k(self):
        """Constant fan-in of the active neurons (0 when there are none)."""
        return 0 if self.weights is None else self.weights.k

    @property
    def shape(self):
        """(n_out, n_in): the dense weight's shape, as a scipy.sparse matrix's."""
        return (self.n_out, self.n_in)

    @property
    def nnz(self):
        """Stored weights: n_active * k (explicit zeros inside the mask count)."""
        return self.n_active * self.k

    def __matmul__(self, x):
        """``layer @ x`` = W @ x for the dense (n_out, n_in) weight W, without bias, like a
        scipy.sparse matrix: x (n_in,) -> (n_out,), x (n_in, m) -> (n_out, m), float32;
        inactive rows give 0. (``forward`` instead maps x (batch, n_in) to the active
        neurons only, (batch, n_active), with bias; output j is neuron ``active[j]``.)"""
        xp = array_module(x)
        x = xp.asarray(x)
        if x.ndim not in (1, 2) or x.shape[0] != self.n_in:
            raise ValueError(f"x must have shape ({self.n_in},) or ({self.n_in}, m), "
                             f"got {x.shape}")
        columns = x.reshape(self.n_in, -1).T
        rows = (condensed_product(self.weights, columns) if self.weights is not None
                else xp.zeros((columns.shape[0], 0), dtype=xp.float32))
        out = xp.zeros((columns.shape[0], self.n_out), dtype=xp.float32)
        out[:, xp.asarray(self.active)] = rows
        return out[0] if x.ndim == 1 else out.T

    def toarray(self):
        """The dense weight (n_out, n_in) float32, as scipy's ``toarray`` (= to_dense)."""
        return self.to_dense()

    @property
    def device(self):
        if isinstance(self.weights, CondensedWeights):
            return "cpu"
        if self.weights is not None:
            return self.weights.device
        return Stage.device.fget(self)   # an empty layer: where its bias lives

    @classmethod
    def from_dense(cls, weight, bias=None, *, index_dtype=None):
        """Condense a masked weight (n_out, n_in) whose non-zero rows share one count k.

        bias: (n_out,) or None; only the active neurons' entries are kept. Rows that are
        all zero are inactive (ablated). A weight whose non-zero rows differ in count is
        refused with the rows and counts in the message.
        """
        _check_weight("weight", weight, 2)
        bias = _check_bias(bias, weight.shape[0])
        pattern = weight != 0
        counts = pattern.sum(axis=1)
        rows = np.flatnonzero(counts)
        if rows.size and (counts[rows] != counts[rows[0]]).any():
            raise ValueError("weight must have constant fan-in (every non-zero row the same "
                             "number of non-zeros), got " + describe_counts(counts[rows], rows))
        active, values, indices = pattern_arrays(
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
        if matrix.dtype.kind not in "biuf":
            raise TypeError(f"matrix must hold real numbers (weights are float32), got "
                            f"{matrix.dtype}")
        # Duplicates are summed in the matrix's float precision (at least float32).
        wide = matrix.dtype.kind == "f" and matrix.dtype.itemsize > 4
        csr = scipy.sparse.csr_array(matrix, dtype=matrix.dtype if wide else np.float32,
                                     copy=True)
        csr.sum_duplicates()
        if not np.isfinite(csr.data).all():
            raise ValueError("matrix must be finite, found NaN or Inf")
        check_float32_range("matrix", csr.data)
        n_out, n_in = csr.shape
        bias = _check_bias(bias, n_out)
        counts = np.diff(csr.indptr)
        rows = np.flatnonzero(counts)
        if rows.size and (counts[rows] != counts[rows[0]]).any():
            raise ValueError("matrix must have constant fan-in (every non-empty row the same "
                             "number of entries), got " + describe_counts(counts[rows], rows))
        k = int(counts[rows[0]]) if rows.size else 0
        values = csr.data.astype(np.float32).reshape(rows.size, k)
        indices = csr.indices.astype(_index_dtype(n_in, index_dtype)).reshape(rows.size, k)
        return cls(values, indices, rows, n_out, n_in,
                   None if bias is None else bias[rows].astype(np.float32))

    def to_dense(self):
        """The weight as a dense (n_out, n_in) float32 NumPy array, zero rows where inactive."""
        weight = np.zeros((self.n_out, self.n_in), dtype=np.float32)
        weight[self.active[:, None], to_numpy(self.indices)] = to_numpy(self.values)
        return weight

    def dense_bias(self):
        """The bias as (n_out,) float32 NumPy, zero for inactive neurons (None without bias)."""
        if self.bias is None:
            return None
        bias = np.zeros(self.n_out, dtype=np.float32)
        bias[self.active] = to_numpy(self.bias)
        return bias

    def to_csr(self):
        """The weight as a scipy.sparse.csr_array (n_out, n_in) with k entries per active row."""
        import scipy.sparse

        counts = np.zeros(self.n_out, dtype=np.int64)
        counts[self.active] = self.k
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return scipy.sparse.csr_array(
            (to_numpy(self.values).ravel().copy(),
             to_numpy(self.indices).ravel().astype(np.int32), indptr),
            shape=(self.n_out, self.n_in))

    def forward(self, x, threads=0):
        """x: (batch, n_in) or (n_in,), any float dtype -> y: (batch, n_active) or (n_active,),
        float32, on x's device (which must be the layer's). Tokens (batch, ..., n_in) give
        (batch, ..., n_active): the leading axes are one batch of rows."""
        if type(x) is np.ndarray and type(self.weights) is CondensedWeights:
            # NumPy input on CPU weights, the common case: straight to the kernel, which
            # validates x (the generic path below cost 1.2 us of a 2 us batch-1 call of a
            # 1 x 1 layer, Intel Xeon).
            if x.ndim == 1:
                return condensed_matvec(self.weights, x, self.bias, threads)
            if x.ndim == 2:
                return condensed_matmul(self.weights, x, self.bias, threads)
        xp = array_module(x)
        x = xp.asarray(x)
        if x.ndim > 2:
            rows = self.forward(x.reshape(-1, x.shape[-1]), threads)
            return rows.reshape(*x.shape[:-1], rows.shape[-1])
        vector = x.ndim == 1
        x2 = x.reshape(1, -1) if vector else x
        if self.weights is None:
            # No kernel applies to a layer without weights (k = 0): the definition does.
            if x2.ndim != 2 or x2.shape[1] != self.n_in:
                raise ValueError(f"x must have shape (batch, {self.n_in}), got {x.shape}")
            empty = xp.zeros((0, 0), dtype=xp.float32)
            y = condensed_reference(empty, empty.astype(self._index_dtype),
                                    float_input(x2))
        else:
            y = condensed_product(self.weights, x2, self.bias, threads)
        return y[0] if vector else y

    def to(self, device):
        """This layer with its weights and bias on ``device`` ("cpu", "cuda", "cuda:N")."""
        select(device)
        if _same_device(self.device, device):
            return self
        moved = copy.copy(self)
        if parse_device(device)[0] == "cpu":
            moved.weights = None if self.weights is None else CondensedWeights(
                to_numpy(self.weights.values), to_numpy(self.weights.indices), self.n_in)
        elif self.weights is not None:
            from ..cuda import CudaCondensedWeights

            moved.weights = CudaCondensedWeights.from_host(self.weights)
        moved.bias = to_device(self.bias, device)
        if moved.bias is not None and not is_cupy_array(moved.bias):
            moved.bias.setflags(write=False)
        return moved

    def __repr__(self):
        return (f"CondensedLinear(n_in={self.n_in}, n_out={self.n_out}, "
                f"n_active={self.n_active}, k={self.k})")


# -- convolutions -------------------------------------------------------------------------

MAX_CONV_GEOMETRY = 2**20   # no kernel size, stride or padding at or past this


def conv_geometry(kernel_size, stride, padding):
    """((kh, kw), stride, padding), validated: each below MAX_CONV_GEOMETRY, so a model
    file cannot ask the kernels for sizes near 2**31."""
    if isinstance(kernel_size, (int, np.integer)):
        kernel_size = (kernel_size, kernel_size)
    if not isinstance(kernel_size, (tuple, list)) or len(kernel_size) != 2:
        raise ValueError(f"kernel_size must be an int or a pair, got {kernel_size!r}")
    kh, kw = (positive_int("kernel_size", size) for size in kernel_size)
    stride, padding = positive_int("stride", stride), count("padding", padding)
    for name, value in (("kernel_size", max(kh, kw)), ("stride", stride),
                        ("padding", padding)):
        if value >= MAX_CONV_GEOMETRY:
            raise ValueError(f"{name} must be < {MAX_CONV_GEOMETRY}, got {value}")
    return (kh, kw), stride, padding


def conv_rows(x, in_channels, kernel_size, stride, padding, threads):
    """x[batch, in_channels, height, width] -> (cols[batch*out_h*out_w, in_channels*kh*kw],
    batch, out_h, out_w), cols as ``kernels.im2col`` lays them out, on x's device."""
    x = float_input(x)
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"x must have shape (batch, {in_channels}, height, width), got {x.shape}")
    kh, kw = kernel_size
    out_h = conv_output_size(x.shape[2], kh, stride, padding)
    out_w = conv_output_size(x.shape[3], kw, stride, padding)
    return im2col(x, kh, kw, stride, padding, threads), x.shape[0], out_h, out_w


def rows_to_images(rows, batch, out_h, out_w):
    """(batch*out_h*out_w, channels) NHWC rows -> (batch, channels, out_h, out_w) NCHW."""
    xp = array_module(rows)
    return xp.ascontiguousarray(
        rows.reshape(batch, out_h, out_w, rows.shape[1]).transpose(0, 3, 1, 2))


class CondensedConv2d(Stage):
    """A constant fan-in Conv2d over its active output channels (``kernels.condensed_conv``:
    on the CPU straight from the images, on the GPU im2col + the condensed product).

    Output channel o's fan-in is over its flattened filter weight[o]: in_channels*kh*kw
    taps ordered (channel, ki, kj), the column order of ``im2col``; ``linear`` is the
    CondensedLinear of the (out_channels, in_channels*kh*kw) weight.
    x: (batch, in_channels, height, width) -> y: (batch, n_active, out_h, out_w).
    """

    kind = "conv2d"
    ARRAYS = CondensedLinear.ARRAYS
    OPTIONAL = CondensedLinear.OPTIONAL
    SETTINGS = CondensedLinear.SETTINGS + ("in_channels", "kernel_size", "stride", "padding")

    def __init__(self, linear, in_channels, kernel_size, stride=1, padding=0):
        if not isinstance(linear, CondensedLinear):
            raise TypeError(f"linear must be a CondensedLinear, got {type(linear).__name__}")
        self.in_channels = count("in_channels", in_channels)
        self.kernel_size, self.stride, self.padding = conv_geometry(kernel_size, stride, padding)
        kh, kw = self.kernel_size
        if linear.n_in != self.in_channels * kh * kw:
            raise ValueError(f"linear.n_in must be in_channels*kh*kw = "
                             f"{self.in_channels * kh * kw}, got {linear.n_in}")
        self.linear = linear

    @classmethod
    def from_fields(cls, *, in_channels, kernel_size, stride, padding, **linear_fields):
        return cls(CondensedLinear(**linear_fields), in_channels, tuple(kernel_size),
                   stride, padding)

    @classmethod
    def from_dense(cls, weight, bias=None, *, stride=1, padding=0, index_dtype=None):
        """Condense a masked conv weight (out_channels, in_channels, kh, kw); see
        CondensedLinear.from_dense for the rules (fan-in counted per output channel)."""
        _check_weight("weight", weight, 4)
        out_channels, in_channels, kh, kw = weight.shape
        linear = CondensedLinear.from_dense(weight.reshape(out_channels, -1), bias,
                                            index_dtype=index_dtype)
        return cls(linear, in_channels, (kh, kw), stride, padding)

    active = property(lambda self: self.linear.active)
    nnz = property(lambda self: self.linear.nnz)
    shape = property(lambda self: (self.out_channels, self.in_channels, *self.kernel_size))
    values = property(lambda self: self.linear.values)
    indices = property(lambda self: self.linear.indices)
    bias = property(lambda self: self.linear.bias)
    n_active = property(lambda self: self.linear.n_active)
    k = property(lambda self: self.linear.k)
    n_out = out_channels = property(lambda self: self.linear.n_out)
    n_in = property(lambda self: self.linear.n_in)
    device = property(lambda self: self.linear.device)

    def toarray(self):
        """The dense weight (out_channels, in_channels, kh, kw) float32 (= to_dense)."""
        return self.to_dense()

    def to_dense(self):
        """The weight as (out_channels, in_channels, kh, kw) float32."""
        return self.linear.to_dense().reshape(self.out_channels, self.in_channels,
                                              *self.kernel_size)

    def forward(self, x, threads=0, *, relu=False, residual=None, out=None):
        """x (batch, in_channels, H, W) -> relu(conv(x) + bias + residual), the epilogue
        (``relu``, ``residual`` of the output's shape, ``out`` to write into, which may be
        the residual) fused into the kernel's stores (``kernels.condensed_conv``)."""
        if self.linear.weights is None:   # no active channel: the definition does it
            cols, batch, out_h, out_w = conv_rows(x, self.in_channels, self.kernel_size,
                                                  self.stride, self.padding, threads)
            y = rows_to_images(self.linear.forward(cols, threads), batch, out_h, out_w)
            y = y if residual is None else y + residual
            return array_module(y).maximum(y, 0) if relu else y
        x = float_input(x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (batch, {self.in_channels}, height, width), "
                             f"got {x.shape}")
        return condensed_conv(self.linear.weights, x, self.kernel_size, self.stride,
                              self.padding, self.linear.bias, threads, relu=relu,
                              residual=residual, out=out)

    def to(self, device):
        moved = copy.copy(self)
        moved.linear = self.linear.to(device)
        return self if moved.linear is self.linear else moved

    def __repr__(self):
        return (f"CondensedConv2d(in_channels={self.in_channels}, out_channels="
                f"{self.out_channels}, kernel_size={self.kernel_size}, n_active="
                f"{self.n_active}, k={self.k})")
