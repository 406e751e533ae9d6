"""One weight of a trained model condensed: the pure core of ``condensing.condense``.

``condense_weight(spec, state, stages)`` turns a Linear / Conv2d weight (grouped and
depthwise ones, a squeeze-excite's 1x1 convolutions, an attention's projections) into a
stage: ``CondensedLinear`` / ``CondensedConv2d`` when its rows share one fan-in, a padded
condensed layer or a dense one when they do not (``PADDED_DENSITY_LIMIT``). ``_Features``
(``state``) records which input features the previous stages removed (ablated neurons)
and the constant value each of them still outputs; the weight drops those columns and
folds their constants into its bias, and its own empty rows become removed features of
its output.
"""

from dataclasses import dataclass

import numpy as np

from .condensed import CondensedConv2d, CondensedLinear, _index_dtype
from .stages import DenseConv2d, DenseLinear, Scatter

# A layer that is not constant fan-in (unstructured RigL, SET, a fan-in of 77-78) is
# condensed padded to k = its largest fan-in (explicit zero weights in the shorter rows)
# when k is at most this fraction of its inputs, and stays dense (BLAS) above it.
# Measured: CondensedLinear.forward against x @ W.T, 1 thread (the 2 cores were shared
# with other jobs, so 2-thread timings were noise), best of 15 interleaved rounds,
# float32, 2-core Intel Xeon (AVX-512 path); dense time / condensed time at padded
# densities k / n_in = 0.1, 0.3, 0.5, 0.7, 0.9 (above 1: padded condensed is faster):
#     784->300   batch 1   2.05 1.26 0.88 0.69 0.48   batch 32  7.71 2.83 2.89 1.48 1.26
#                batch 256 4.58 1.26 1.20 0.66 0.83
#     3072->768  batch 1  16.4  2.92 1.30 0.96 0.83   batch 32  8.07 3.30 1.90 1.56 1.10
#                batch 256 5.62 1.91 1.49 0.94 0.69
#     1152->128  batch 1   1.45 0.91 0.68 0.67 0.45   batch 32  5.08 2.79 2.01 1.61 1.24
#                batch 256 2.46 1.49 1.15 0.88 0.73
#     576->64    batch 1   0.78 0.84 0.51 0.47 0.52   batch 32  2.70 1.90 1.54 1.25 1.05
#                batch 256 2.20 1.51 1.18 0.88 0.74
# Padded wins everywhere at 0.1 but the tiny 576->64 at batch 1 (a few microseconds,
# call overhead), and loses from 0.5 up at batch 1: the limit sits between 0.3 and 0.5.
PADDED_DENSITY_LIMIT = 0.4


@dataclass
class WeightSpec:
    """A weight to condense. weight: (n_out, in_channels/groups, kh, kw) for a Conv2d,
    (n_out, n_in) for a Linear; bias: (n_out,) or None; mask: a bool array of weight's
    shape, or None to read the structure from weight != 0; conv: (kernel_size, stride,
    padding) for a convolution, None for a linear map; groups: the convolution's groups
    (output channel o sees input channels of group o // (n_out / groups))."""

    name: str
    weight: np.ndarray
    bias: np.ndarray = None
    mask: np.ndarray = None
    conv: tuple = None
    groups: int = 1


class _Features:
    """Which features (the channel axis, or a token's last axis) of the original tensor
    the condensed tensor still holds, and the constant value of each removed one.

    kept: (n_kept,) int64 positions, strictly increasing; constants: (n_features,)
    float64, read at removed positions only. ``flatten_at`` is the index in its pipeline
    of the FlattenStage applied to a channel-level state (None otherwise): the features
    are then channels whose blocks of height*width flat features are not known yet.
    """

    def __init__(self, kept, constants, flatten_at=None):
        self.kept, self.constants, self.flatten_at = kept, constants, flatten_at

    @property
    def removed(self):
        return np.setdiff1d(np.arange(self.constants.size), self.kept)

    def copy(self):
        return _Features(self.kept.copy(), self.constants.copy(), self.flatten_at)

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

    def scatter(self, axis=1):
        return Scatter(self.kept.astype(np.int64), self.constants.astype(np.float32), axis)


def batch_norm_affine(layer):
    """Evaluation-mode BatchNorm as y = x * scale + shift (float64, per channel):
    scale = gamma / sqrt(running_var + eps), shift = beta - running_mean * scale."""
    scale = layer.params["weight"] / np.sqrt(layer.buffers["running_var"].astype(np.float64)
                                             + layer.eps)
    return scale, layer.params["bias"] - layer.buffers["running_mean"] * scale


def condense_weight(spec, state, stages, index_dtype=None, affine=None, axis=1):
    """Append the condensed form of ``spec`` to ``stages``; return (state of its output,
    report entry).

    state: the input's ``_Features`` or None (every feature present). Entries inside the
    mask are weights even when their value is 0: they stay explicit condensed entries.
    Input features the previous stages removed are dropped from the weight's columns and
    their constants times those columns folded into the bias (exact for Linear and for a
    convolution without padding; a padded one gets removed features whose constant is
    not 0 back through a Scatter first, as its border pixels see fewer taps). affine:
    (scale, shift) of a BatchNorm that follows, folded in: W' = W * scale per row,
    b' = b * scale + shift. Rows that are then empty are removed: each outputs its
    constant bias. axis: where a Scatter puts features back (1, or -1 for tokens).
    """
    weight = np.asarray(spec.weight)
    n_out, fan = weight.shape[0], int(np.prod(weight.shape[1:]))
    matrix = weight.reshape(n_out, fan).astype(np.float64)
    pattern = matrix != 0 if spec.mask is None else np.asarray(spec.mask).reshape(n_out, fan)
    full_counts = pattern.sum(axis=1)
    bias = (np.zeros(n_out) if spec.bias is None
            else np.asarray(spec.bias).astype(np.float64))
    if affine is not None:
        scale, shift = affine
        matrix *= scale[:, None]
        bias = bias * scale + shift
    taps = int(np.prod(weight.shape[2:])) if spec.conv else 1
    in_per_group = weight.shape[1]
    n_inputs = in_per_group * spec.groups
    padding = spec.conv[2] if spec.conv else 0
    if state is not None and padding and state.constants[state.removed].any():
        stages.append(state.scatter(axis))
        state = None
    kept_mask = np.ones(n_inputs, dtype=bool)
    constants = np.zeros(n_inputs)
    if state is not None:
        state = state.expanded(n_inputs)
        kept_mask[:] = False
        kept_mask[state.kept] = True
        constants[~kept_mask] = state.constants[~kept_mask]
    # Column j of row o reads input channel offset[o] + j // taps at tap j % taps.
    offset = (np.arange(n_out) // (n_out // spec.groups)) * in_per_group
    channel = offset[:, None] + np.arange(fan) // taps
    bias = bias + (matrix * constants[channel]).sum(axis=1)
    new_position = np.cumsum(kept_mask) - 1
    reduced = new_position[channel] * taps + np.arange(fan) % taps
    pattern_in = pattern & kept_mask[channel]
    counts = pattern_in.sum(axis=1)
    active = np.flatnonzero(counts)
    n_kept = int(kept_mask.sum())
    n_columns = n_kept * taps
    live = full_counts[full_counts > 0]
    structured = np.unique(live).size <= 1
    k = int(counts[active].max()) if active.size else 0
    padded = not structured and k <= PADDED_DENSITY_LIMIT * n_columns
    rows, columns = np.nonzero(pattern_in[active])
    values = matrix[active][rows, columns]
    columns = reduced[active][rows, columns]
    has_bias = spec.bias is not None or affine is not None or bool(bias.any())
    active_bias = bias[active].astype(np.float32) if has_bias else None
    if structured or padded:
        stored = rows.size
        rows, columns, values = _pad_rows(rows, columns, values, counts[active], k)
        linear = CondensedLinear(values.astype(np.float32).reshape(active.size, k),
                                 columns.astype(_index_dtype(n_columns, index_dtype))
                                 .reshape(active.size, k),
                                 active, n_out, n_columns, active_bias)
        stage = (CondensedConv2d(linear, n_kept, *spec.conv) if spec.conv else linear)
    else:
        dense = np.zeros((active.size, n_columns), dtype=np.float32)
        dense[rows, columns] = values
        stage = (DenseConv2d(dense.reshape(active.size, n_kept, *spec.conv[0]), active_bias,
                             *spec.conv[1:]) if spec.conv else DenseLinear(dense, active_bias))
    stages.append(stage)
    out_constants = bias.copy()
    out_constants[active] = 0.0
    low, high = (int(counts[active].min()), k) if active.size else (0, 0)
    if structured:
        result, reason = "condensed", "constant fan-in"
    elif padded:
        cost = (active.size * k - stored) / max(stored, 1)
        result = "padded"
        reason = f"fan-in {low}-{high}, padded to {k} (+{100 * cost:.1f}% multiply-adds)"
    else:
        result = "dense"
        reason = (f"fan-in {low}-{high}: padded to {k} it would fill "
                  f"{100 * k / max(n_columns, 1):.0f}% of its {n_columns} inputs, above the "
                  f"{100 * PADDED_DENSITY_LIMIT:.0f}% where dense is faster, so it stays dense")
    entry = {"layer": spec.name, "structure":
             "weight != 0" if spec.mask is None else "mask", "result": result,
             "n_out": int(n_out), "n_active": int(active.size), "nnz": int(full_counts.sum()),
             "k": k if result != "dense" else None, "fan_in": [low, high], "reason": reason}
    return _Features(active, out_constants), entry


def _pad_rows(rows, columns, values, counts, k):
    """Entries (row, column, value) with explicit zeros added so that every row holds k,
    sorted by row then column. A row with c < k entries gets the first k - c columns in
    [0, k) it does not use (there are that many: it uses at most c of them)."""
    need = k - counts
    short = np.flatnonzero(need)
    if short.size:
        slot = np.full(counts.size, -1)
        slot[short] = np.arange(short.size)
        used = np.zeros((short.size, k), dtype=bool)
        hit = (slot[rows] >= 0) & (columns < k)
        used[slot[rows[hit]], columns[hit]] = True
        free_first = np.argsort(used, axis=1, kind="stable")
        take = np.arange(k) < need[short][:, None]
        rows = np.concatenate([rows, np.repeat(short, need[short])])
        columns = np.concatenate([columns, free_first[take]])
        values = np.concatenate([values, np.zeros(int(need.sum()))])
    order = np.lexsort((columns, rows))
    return rows[order], columns[order], values[order]
