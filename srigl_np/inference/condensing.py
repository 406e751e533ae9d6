"""The condense pass: a trained ``Sequential`` -> a ``CondensedModel`` for inference.

``condense(model)`` walks the layers once, keeping a small record (``_Features``) of
which features of the original network the condensed tensor still holds and the
constant value of each removed one. Constant fan-in layers become ``CondensedLinear`` /
``CondensedConv2d``; ablated neurons are removed structurally and their constant output
folded into the next layer (see ``condense`` for the rules).
"""

import warnings

import numpy as np

from ..backend import to_numpy
from ..nn.layers import Conv2d, Dropout, Flatten, Linear, ReLU, Sequential
from ..nn.normalization import BatchNorm1d, BatchNorm2d
from ..nn.pooling import MaxPool2d
from ..validation import check_array
from .condensed import (CondensedConv2d, CondensedLinear, _index_dtype, describe_counts,
                        pattern_arrays)
from .condensed_model import (ChannelAffine, CondensedModel, DenseConv2d, DenseLinear,
                              FlattenStage, MaxPool, Relu, Scatter)


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


def _condense_layer(layer, mask, state, stages, index_dtype):
    """Append the condensed form of a Linear/Conv2d to ``stages``; return (new state,
    its report entry).

    mask: the layer's bool mask (weight-shaped), or None to judge structure by
    ``weight != 0``. Entries inside the mask are weights even when their value is 0
    (grown at a zero gradient, say): they stay explicit condensed entries.
    Inputs the previous layers removed are dropped from the weight's columns; their
    constant values times those columns are folded into the bias (exact for Linear and
    for Conv2d without padding; a padded Conv2d gets the removed channels back through
    a Scatter stage instead, as its border pixels see fewer taps). The layer's own rows
    that are then all zero are removed: each outputs its constant bias.
    """
    conv = isinstance(layer, Conv2d)
    if conv and layer.groups != 1:
        raise ValueError(f"condense supports Conv2d with groups=1 only, got {layer!r}")
    weight = layer.params["weight"]
    n_out = weight.shape[0]
    matrix = weight.reshape(n_out, -1).astype(np.float64)
    full_pattern = matrix != 0 if mask is None else mask.reshape(n_out, -1)
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
    counts = full_pattern.sum(axis=1)
    live = np.flatnonzero(counts)
    structured = np.unique(counts[live]).size <= 1
    pattern = full_pattern[:, columns]
    active = np.flatnonzero(pattern.any(axis=1))
    has_bias = bias is not None or bool(shift.any())
    active_bias = shift[active].astype(np.float32) if has_bias else None
    if structured:
        pattern = _pad_to_constant_fan_in(pattern, active)
        _, values, indices = pattern_arrays(
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
    entry = {"structure": "weight != 0" if mask is None else "mask",
             "result": "condensed" if structured else "dense",
             "n_out": int(n_out), "n_active": int(active.size), "nnz": int(counts.sum()),
             "k": int(stage.k) if structured else None,
             "reason": ("constant fan-in" if structured else
                        "ragged fan-in: " + describe_counts(counts[live], live))}
    return _Features(active, constants), entry


def _batch_norm_affine(layer):
    """Evaluation-mode BatchNorm as y = x * scale + shift (float64, per channel)."""
    scale = layer.params["weight"] / np.sqrt(layer.buffers["running_var"].astype(np.float64)
                                             + layer.eps)
    return scale, layer.params["bias"] - layer.buffers["running_mean"] * scale


def _layer_masks(model, masks):
    """{layer index: bool mask or None} for the model's Linear/Conv2d layers."""
    if masks is not None and not isinstance(masks, dict):
        masks = getattr(masks, "masks", None)   # a DynamicSparsity
        if not isinstance(masks, dict):
            raise TypeError("masks must be None, a dict of parameter name -> bool mask, or "
                            "a DynamicSparsity")
    masks = dict(masks or {})
    found = {}
    for i, layer in enumerate(model.layers):
        if not isinstance(layer, (Linear, Conv2d)):
            continue
        mask = masks.pop(f"{i}.weight", None)
        if mask is not None:
            weight = layer.params["weight"]
            mask = to_numpy(mask)
            check_array(f"masks['{i}.weight']", mask, dtypes=(bool,), shape=weight.shape)
            outside = (weight != 0) & ~mask
            if outside.any():
                raise ValueError(f"masks['{i}.weight'] does not cover the weight: "
                                 f"{int(outside.sum())} non-zero weights lie outside it "
                                 f"(first at {tuple(int(j) for j in np.argwhere(outside)[0])})")
        found[i] = mask
    if masks:
        raise ValueError(f"masks name parameters that are no Linear/Conv2d weight of the "
                         f"model: {sorted(masks)}")
    return found


def condense(model, *, masks=None, index_dtype=None, input_stats=None, warn=True):
    """Convert a trained Sequential into a CondensedModel for inference.

    Structure comes from the masks when there are any (``masks``: a dict of parameter
    name, e.g. "3.weight", -> bool mask of the weight's shape, or a DynamicSparsity):
    every entry inside a mask is a weight, also when its value is exactly 0 (it was
    grown at a zero gradient), so a constant fan-in mask always condenses. A layer
    without a mask is judged by ``weight != 0``, which under-counts such weights; the
    report says which source each layer used.

    Every Linear/Conv2d becomes a CondensedLinear/CondensedConv2d when its non-empty
    rows share one count (constant fan-in: SRigL, or any dense layer, with k = n_in);
    a layer whose rows differ (unstructured RigL, SET) stays dense as DenseLinear /
    DenseConv2d, named in a warning (``warn=False`` silences it) with its row counts.
    Rows that are empty are ablated neurons and are removed structurally: the layer
    shrinks, and the next layer drops the matching input columns (a conv channel's
    kh*kw taps; after Flatten its height*width block) and remaps its indices, so no
    work is spent on them. An ablated neuron still outputs a constant (its bias,
    through ReLU/BatchNorm): that constant is folded into the next layer's bias; before
    a padded Conv2d, or at the end of the network, a Scatter stage puts the constant
    features back. Rows of the next layer that lose weights to dropped columns are
    padded with explicit zeros to a common k.
    ReLU, MaxPool2d, Flatten, BatchNorm1d/2d (running statistics) and Dropout (the
    identity in evaluation) are supported between them; another layer is a TypeError.

    index_dtype: None (int16 when a layer's inputs fit, else int32), int16 or int32.
    input_stats: (mean, std) of the training images on the [0, 1] scale (scalars or per
    channel, as ``data.channel_stats`` gives them), stored so that the model takes raw
    uint8 images (see CondensedModel.logits). The result's ``report`` holds one entry
    per Linear/Conv2d: layer index, "condensed" or "dense", the structure source, k,
    active and total neurons, nnz and the reason.
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a srigl_np.nn.layers.Sequential, got {type(model).__name__}")
    _check_finite(model)
    layer_masks = _layer_masks(model, masks)
    stages, state, report = [], None, []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, (Linear, Conv2d)):
            state, entry = _condense_layer(layer, layer_masks[i], state, stages, index_dtype)
            report.append({"layer": i, "type": repr(layer), **entry})
            if warn and entry["result"] == "dense":
                warnings.warn(f"condense: layer {i} ({layer!r}) stays dense: {entry['reason']}",
                              stacklevel=2)
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
    last = [layer for layer in model.layers if isinstance(layer, (Linear, Conv2d))][-1:]
    n_classes = last[0].out_features if last and isinstance(last[0], Linear) else None
    condensed = CondensedModel(stages, input_stats=input_stats, n_classes=n_classes)
    condensed.report = report
    return condensed


def _check_finite(model):
    """Refuse a model with a NaN or infinite parameter or buffer, naming the first."""
    for name, value in {**model.named_parameters(), **model.named_buffers()}.items():
        value = to_numpy(value)
        bad = ~np.isfinite(value)
        if bad.any():
            index = [int(i) for i in np.unravel_index(int(np.argmax(bad)), value.shape)]
            raise ValueError(f"{name} holds {int(bad.sum())} NaN or infinite values (the "
                             f"first at index {index}: {float(value[tuple(index)])!r}); a model "
                             f"with non-finite weights cannot be condensed")


def condense_run(run, **kwargs):
    """``condense`` of a trained run (a ``formats.checkpoint.TrainedModel``, what
    ``load_model`` returns): its model, by its masks, with its input statistics, so the
    result takes raw uint8 images. ``kwargs``: the other arguments of ``condense``."""
    return condense(run.model, masks=run.masks, input_stats=run.input_stats, **kwargs)
