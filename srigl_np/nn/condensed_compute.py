"""Condensed training compute: a constant fan-in Linear or Conv2d trained on its nnz.

Between topology updates a SRigL layer is ``values[n_active, k]`` + ``indices[n_active,
k]`` (+ ``rows[n_active]``, the active neurons): the forward, both backward products
and the optimizer step then cost O(batch * nnz) and O(nnz), never O(n * n_in)
(``srigl_np.training_kernels``). ``attach(layer, weight, mask)`` switches a Linear or
Conv2d (groups 1) to this form: the layer's ``params["weight"]`` and
``grads["weight"]`` become the values and their gradient, and its forward and backward
run through the returned ``CondensedCompute``; ``attach_layout`` does the same from a
layout (rows, indices, values), with no dense array. ``detach`` puts the dense weight
back.

Layout (canonical, so that a topology rebuilt from a mask is the same arrays bit for bit:
what makes a resumed run repeat an uninterrupted one): ``rows`` ascending; each row's
``indices`` ascending, i.e. the mask's nonzeros in row-major order; int16 indices where
the fan-in dimension F = n_in (Linear) or channels*kh*kw (Conv2d) fits, else int32.

Padded layout (``attach(..., padded=True)``: RigL, SET and static, whose unstructured
masks give each neuron its own fan-in): k = the largest count over the active rows, and
a row holding c < k weights gets k - c padding slots, at the lowest columns it does not
use (all below k, since it uses at most c of them), merged into its ascending indices.
A padding slot's value is 0 and stays 0: its weight gradient is zeroed in every backward
pass (O(padding)), so every optimizer step of ``nn.optim`` (SGD with momentum, Nesterov
and weight decay; AdamW) leaves its value and state at exactly 0, and it adds exact
zeros to the forward and input gradient. Its column lies outside the mask, where the
dense weight, gradient and optimizer state are 0, so ``expand``/``gather`` round-trip
as without padding. ``valid`` (bool[n_active, k], False at padding slots) is None for a
layout without padding, which then costs nothing extra. The products run over the
padding slots too: a padded layer costs n_active * k, not nnz (``padding_fraction``),
and RigL's masks drift far from uniform (the grow score favours some neurons: the
mlp's first layer at 90% goes from k = 85 to k = 633 of 784 in three updates), so
``worth_padding`` says when a padded layer still beats the dense products.

Ablated neurons (rows of the mask with no weight) are not in the arrays: their output is
their bias alone, as in the masked model, and their bias still trains (its gradient is
the column sum of the output gradient, every neuron's).

The grow score of the next topology update needs the dense gradient, on the steps of a
grow-score window only: when ``want_dense_grad`` is set (``DynamicSparsity.before_forward``
sets it on those steps) the backward pass keeps it for ``add_grow_term``, which hands it
to the layer's ``dst.GrowScore``. A Linear keeps its factors, the step's dy (batch, n)
and x (batch, F), so that the score can be read in row blocks (``dy[:, r0:r1]^T x``) and
no array of the layer's dense size ever exists; a Conv2d computes dy^T im2col(x) in the
weight's shape (its dense weight is small beside the im2col'd input the factors would
need).
"""

import numpy as np

from ..backend import array_module, is_cupy_array
from ..kernels import im2col
from ..training_kernels import (conv2d_backward, conv2d_forward, linear_backward,
                                linear_forward, transposed_index)
from .layers import Conv2d, Linear, as_dtype


# The share of the dense weight's size (n_active * k / (n * F)) up to which a padded
# layer trains condensed: past it the condensed forward and both backward products
# cost more than the dense ones. Break-evens over three runs of
# benchmarks/padded_layers.py --break-even (float32, batch 128, one thread, 2-vCPU AMD
# EPYC, avx512; quiet to busy): Linear 9216->128 0.15-0.2, 784->300 0.3, 300->100
# 0.15-0.3; Conv2d 32->64 3x3 on 28x28 0.3-0.5. One limit per kind, between them.
PADDED_SLOT_LIMIT = {Linear: 0.2, Conv2d: 0.4}


def condensable(layer):
    """Whether ``attach`` applies: a Linear, or a Conv2d with groups 1, on NumPy arrays."""
    if not isinstance(layer, (Linear, Conv2d)) or getattr(layer, "groups", 1) != 1:
        return False
    weight = layer.params["weight"]
    return isinstance(weight, np.ndarray) and not is_cupy_array(weight)


def worth_padding(layer, mask):
    """Whether ``layer`` (``condensable``) should train condensed under ``mask`` (its
    weight's shape, bool): always at constant fan-in (no padding; a layer kept dense
    included), padded while its n_active * k slots stay within ``PADDED_SLOT_LIMIT`` of
    the dense size; never with no active neuron."""
    counts = mask.reshape(mask.shape[0], -1).sum(axis=1)
    active = counts[counts > 0]
    if active.size == 0:
        return False
    k = int(active.max())
    if (active == k).all():
        return True
    kind = Linear if isinstance(layer, Linear) else Conv2d
    return active.size * k <= PADDED_SLOT_LIMIT[kind] * mask.size


def index_dtype(dense_fan_in):
    """The indices' dtype for a dense fan-in F: int16 where every column fits, else int32."""
    return np.int16 if dense_fan_in <= np.iinfo(np.int16).max + 1 else np.int32


def condense_rows(weight, mask):
    """(rows int64[n_active], indices int16/int32[n_active, k], values[n_active, k]) of a
    dense ``weight`` (n, *fan_in_dims) under a constant fan-in ``mask`` (same shape, bool).

    ValueError when the active rows do not all hold the same count."""
    n = mask.shape[0]
    row_mask = mask.reshape(n, -1)
    counts = row_mask.sum(axis=1)
    rows = np.flatnonzero(counts)
    k = int(counts[rows[0]]) if rows.size else 0
    if rows.size == 0 or (counts[rows] != k).any():
        raise ValueError(f"mask must have one fan-in over its active neurons to condense, got "
                         f"{sorted(set(counts[rows].tolist()))[:4] or 'no active neuron'}")
    _, columns = np.nonzero(row_mask[rows])
    indices = columns.astype(index_dtype(row_mask.shape[1])).reshape(rows.size, k)
    values = np.ascontiguousarray(weight.reshape(n, -1)[rows[:, None], indices])
    return rows, indices, values


def condense_rows_padded(weight, mask):
    """(rows, indices, values, valid) of a dense ``weight`` (n, *fan_in_dims) under a
    ``mask`` whose active rows may hold different counts: ``condense_rows``' layout with
    every row padded to k = the largest count (see "Padded layout" above). valid
    bool[n_active, k] is False at the padding slots, whose values are 0; it is None when
    the active rows all hold k (the layout is then ``condense_rows``'). Canonical: a
    function of the mask alone. ValueError when no row is active."""
    n = mask.shape[0]
    row_mask = mask.reshape(n, -1)
    counts = row_mask.sum(axis=1)
    rows = np.flatnonzero(counts)
    if rows.size == 0:
        raise ValueError("mask must have an active neuron to condense, got no active neuron")
    k = int(counts[rows].max())
    if (counts[rows] == k).all():
        return condense_rows(weight, mask) + (None,)
    active = row_mask[rows]
    # Row r's k - c_r lowest unused columns all lie below k: a free column's rank
    # among the free ones (cumsum) picks them.
    free = ~active[:, :k]
    padding = free & (np.cumsum(free, axis=1) <= (k - counts[rows])[:, None])
    slots = active.copy()
    slots[:, :k] |= padding
    local, columns = np.nonzero(slots)   # row-major: each row's columns ascending
    indices = columns.astype(index_dtype(row_mask.shape[1])).reshape(rows.size, k)
    valid = active[local, columns].reshape(rows.size, k)
    values = np.where(valid, weight.reshape(n, -1)[rows[:, None], indices], 0)
    return rows, indices, np.ascontiguousarray(values, dtype=weight.dtype), valid


class CondensedCompute:
    """The condensed form of one layer's weight, and its forward/backward.

    ``rows``, ``indices`` as in ``condense_rows`` (``padded``: ``condense_rows_padded``,
    with ``valid``; None without padding); the values are the layer's
    ``params["weight"]``. ``shape``: the dense weight's. Not built directly: ``attach``
    or ``attach_layout``.
    """

    def __init__(self, layer, shape, padded=False):
        self.layer = layer
        self.shape = tuple(shape)
        self.padded = bool(padded)
        self.want_dense_grad = False
        self._grow_term = None
        self._x = self._x_columns = None

    # -- the topology -----------------------------------------------------------------
    def rewire(self, weight, mask):
        """Take the topology of ``mask`` and the values of ``weight`` (both dense): a new
        layout (rows, indices) and the layer's weight and weight gradient in it."""
        if self.padded:
            rows, indices, values, valid = condense_rows_padded(weight, mask)
        else:
            (rows, indices, values), valid = condense_rows(weight, mask), None
        self.set_layout(rows, indices, values, valid)

    def set_layout(self, rows, indices, values, valid=None):
        """Take the layout (rows, indices, in ``condense_rows``' canonical order), the
        values in it and, padded, ``valid``: what ``rewire`` does from a dense weight and
        mask, and a condensed update (``dst.srigl_update_rows``) without them."""
        self.rows, self.indices, self.valid = rows, indices, valid
        # The flat positions of the padding slots, zeroed in every weight gradient.
        self._padding = None if valid is None else np.flatnonzero(~valid)
        self.all_rows = self.rows.size == self.shape[0]
        self._transposed = None   # the Linear's input-gradient gather index, built lazily
        self.layer.params["weight"] = values
        self.layer.grads["weight"] = np.zeros_like(values)

    def padding_fraction(self):
        """The share of the n_active * k slots that are padding (0.0 without padding)."""
        return 0.0 if self._padding is None else self._padding.size / self.indices.size

    def gather(self, dense):
        """values-shaped (n_active, k) entries of a dense weight-shaped array, 0 at the
        padding slots."""
        values = np.ascontiguousarray(
            dense.reshape(self.shape[0], -1)[self.rows[:, None], self.indices])
        return self._zero_padding(values)

    def _zero_padding(self, values):
        if self._padding is not None:
            np.put(values, self._padding, 0)   # flat positions, whatever the strides
        return values

    def expand(self, values):
        """The dense weight-shaped array holding ``values`` at the stored positions, 0
        elsewhere."""
        dense = np.zeros((self.shape[0], int(np.prod(self.shape[1:]))), dtype=values.dtype)
        dense[self.rows[:, None], self.indices] = values
        return dense.reshape(self.shape)

    def dense_weight(self):
        return self.expand(self.layer.params["weight"])

    # -- compute ------------------------------------------------------------------------
    def _bias(self):
        bias = self.layer.params.get("bias")
        if bias is None or self.all_rows:
            return bias
        return np.ascontiguousarray(bias[self.rows])

    def _scatter(self, y_active, out_shape):
        """The full output from the active neurons' (axis 1): ablated ones give their bias."""
        if self.all_rows:
            return y_active
        bias = self.layer.params.get("bias")
        y = np.zeros(out_shape, dtype=y_active.dtype)
        if bias is not None:
            y += bias.reshape((1, -1) + (1,) * (len(out_shape) - 2))
        y[:, self.rows] = y_active
        return y

    def _active(self, grad_out):
        return grad_out if self.all_rows else np.ascontiguousarray(grad_out[:, self.rows])

    def add_grow_term(self, score):
        """Add the dense gradient the last backward pass kept (``want_dense_grad``) to
        ``score`` (a ``dst.GrowScore`` of this weight), once."""
        if self._grow_term is None:
            raise RuntimeError("the condensed layer kept no dense gradient: set "
                               "want_dense_grad before the forward pass "
                               "(DynamicSparsity.before_forward)")
        term, self._grow_term = self._grow_term, None
        if isinstance(term, tuple):
            score.add_product(*term)
        else:
            score.add(term)

    def _finish_backward(self, grad_out, dvalues, bias_axes):
        # The kernels' fresh, contiguous gradient; a padding slot gets none.
        self.layer.grads["weight"] = self._zero_padding(dvalues)
        if "bias" in self.layer.params:
            grad_out.sum(axis=bias_axes, out=self.layer.grads["bias"])


class CondensedLinearCompute(CondensedCompute):
    """y = x W^T + b from the condensed W; x (batch, [...,] n_in) as Linear's."""

    def forward(self, x, training):
        layer = self.layer
        values = layer.params["weight"]
        x = as_dtype(x, values.dtype)
        if x.ndim < 2 or x.shape[-1] != layer.in_features:
            raise ValueError(f"Linear expects x of shape (batch, [..., ]{layer.in_features}), "
                             f"got {x.shape}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, layer.in_features)
        if training:
            y, self._x_columns = linear_forward(values, self.indices, x2, self._bias(),
                                                keep_columns=True)
            self._x, self._lead = x2, lead
        else:
            y = linear_forward(values, self.indices, x2, self._bias())
        y = self._scatter(y, (x2.shape[0], layer.out_features))
        return y.reshape(*lead, layer.out_features)

    def backward(self, grad_out, input_grad=True):
        layer = self.layer
        values = layer.params["weight"]
        dy = np.ascontiguousarray(as_dtype(grad_out, values.dtype)
                                  ).reshape(-1, layer.out_features)
        if input_grad and self._transposed is None:
            # Once per topology: the input gradient then gathers per input instead of
            # scattering per neuron, the same sums 1.5-2.4x faster.
            self._transposed = transposed_index(self.indices, layer.in_features)
        dx, dvalues = linear_backward(values, self.indices, self._x, self._active(dy),
                                      input_grad=input_grad, x_columns=self._x_columns,
                                      transposed=self._transposed if input_grad else None)
        self._finish_backward(dy, dvalues, 0)
        # The grow score's factors, copied: nothing may write into them before the update.
        self._grow_term = (dy.copy(), self._x.copy()) if self.want_dense_grad else None
        return dx.reshape(*self._lead, layer.in_features) if input_grad else None


class CondensedConvCompute(CondensedCompute):
    """Conv2d (groups 1) from the condensed W, straight from the images
    (``training_kernels.conv2d_forward``/``conv2d_backward``, lowering "direct")."""

    def forward(self, x, training):
        layer = self.layer
        values = layer.params["weight"]
        x = np.ascontiguousarray(as_dtype(x, values.dtype))
        if x.ndim != 4 or x.shape[1] != layer.in_channels:
            raise ValueError(f"Conv2d expects x of shape (batch, {layer.in_channels}, height, "
                             f"width), got {x.shape}")
        y = conv2d_forward(values, self.indices, x, layer.kernel_size, layer.stride,
                           layer.padding, self._bias())
        if training:
            self._x = x
        return self._scatter(y, (x.shape[0], layer.out_channels) + y.shape[2:])

    def backward(self, grad_out, input_grad=True):
        layer = self.layer
        values = layer.params["weight"]
        dy = np.ascontiguousarray(as_dtype(grad_out, values.dtype))
        dx, dvalues = conv2d_backward(values, self.indices, self._x, self._active(dy),
                                      layer.kernel_size, layer.stride, layer.padding,
                                      input_grad=input_grad)
        self._finish_backward(dy, dvalues, (0, 2, 3))
        self._grow_term = self._dense_grad(dy) if self.want_dense_grad else None
        return dx

    def _dense_grad(self, dy):
        """dL/dW in the dense weight shape: (dy as NHWC rows)^T @ im2col(x)."""
        layer = self.layer
        kh, kw = layer.kernel_size
        cols = im2col(self._x, kh, kw, layer.stride, layer.padding)
        g = dy.transpose(0, 2, 3, 1).reshape(-1, layer.out_channels)
        return (g.T @ cols).reshape(self.shape)


def attach(layer, weight, mask, padded=False):
    """Switch ``layer`` (``condensable``) to condensed compute with the topology of
    ``mask`` and the values of the dense ``weight``; returns its CondensedCompute (also
    ``layer.condensed``). ``padded``: rows of different counts are padded to the largest
    (the unstructured methods); otherwise the mask must have constant fan-in."""
    compute = _compute_of(layer, weight.shape, padded)
    compute.rewire(weight, mask)
    layer.condensed = compute
    return compute


def attach_layout(layer, shape, rows, indices, values):
    """``attach`` from a constant fan-in layout itself: rows int64 (n_active,) ascending,
    indices (n_active, k) each row ascending, of the index dtype ``index_dtype`` gives F,
    values (n_active, k) the layer's dtype, for a dense weight of ``shape``; no dense
    array is read or made (a layer whose dense form is never built: DynamicSparsity's
    condensed start)."""
    compute = _compute_of(layer, shape, False)
    compute.set_layout(rows, indices, values)
    layer.condensed = compute
    return compute


def _compute_of(layer, shape, padded):
    if not condensable(layer):
        raise TypeError(f"layer must be a Linear or a groups-1 Conv2d on NumPy arrays, got "
                        f"{layer!r}")
    kind = CondensedLinearCompute if isinstance(layer, Linear) else CondensedConvCompute
    return kind(layer, shape, padded)


def detach(layer, weight=None):
    """Back to a dense weight: ``weight`` (the dense weight a topology update made), by
    default the values expanded (zeros outside the stored positions); returns it."""
    compute = layer.condensed
    weight = compute.dense_weight() if weight is None else weight
    layer.params["weight"] = weight
    layer.grads["weight"] = array_module(weight).zeros_like(weight)
    layer.condensed = None
    return weight
