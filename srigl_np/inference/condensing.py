"""The condense pass: a trained model (a ``Sequential``, nested blocks included) -> a
``CondensedModel`` for inference.

``condense(model)`` walks the model once in forward order, building one pipeline of
stages per container: the model's own, a residual block's body and shortcut, a
squeeze-excite gate, an attention's projections (``graph.py``). Beside it goes a small
record (``condense_layer._Features``) of which features of the original network the
condensed tensor still holds and the constant value of each removed one (see
``condense`` for the rules); each weight is condensed by ``condense_layer``.
"""

import warnings
from collections.abc import Mapping

import numpy as np

from ..backend import to_numpy
from ..nn.activations import GELU, Hardsigmoid, Hardswish, LogSoftmax, Sigmoid
from ..nn.attention import MultiheadSelfAttention
from ..nn.blocks import Residual, SqueezeExcite
from ..nn.layers import Conv2d, Dropout, Flatten, Linear, ReLU, Sequential, prefixed
from ..nn.normalization import BatchNorm1d, BatchNorm2d, LayerNorm
from ..nn.pooling import GlobalAvgPool2d, MaxPool2d
from ..nn.tokens import ClassToken, PatchTokens, PositionEmbedding, SelectToken
from ..validation import check_array
from . import graph, stages as st
from .condense_layer import WeightSpec, batch_norm_affine, condense_weight
from .condensed_model import CondensedModel

# Element-wise layers: the stage that computes each, and carries a removed neuron's
# constant output through it.
ACTIVATIONS = {ReLU: st.Relu, Sigmoid: st.Sigmoid, Hardsigmoid: st.Hardsigmoid,
               Hardswish: st.Hardswish, GELU: st.Gelu}


class _Walk:
    """One condense pass: the masks not yet used, the report, and the axis on which the
    current tensor holds its features (1: channels or flat features; -1: tokens)."""

    def __init__(self, masks, index_dtype, warn):
        self.masks, self.index_dtype, self.warn = masks, index_dtype, warn
        self.report = []
        self.axis = 1

    def restore(self, state, stages):
        """Put every removed feature back (a Scatter before a pending Flatten of channels,
        or at the end of ``stages``): for a layer that needs them all. Returns None, the
        state of a full tensor."""
        if state is not None and state.removed.size:
            at = len(stages) if state.flatten_at is None else state.flatten_at
            stages.insert(at, state.scatter(1 if state.flatten_at is not None else self.axis))
        return None

    def pipeline(self, sequential, prefix, state, stages):
        """Append the stages of ``sequential``'s layers to ``stages``; return the state of
        its output."""
        layers = list(zip(sequential.names, sequential.layers))
        i = 0
        while i < len(layers):
            name, layer = layers[i]
            path = prefixed(prefix, name)
            following = layers[i + 1][1] if i + 1 < len(layers) else None
            if isinstance(layer, (Linear, Conv2d)):
                affine = None
                norm = BatchNorm2d if isinstance(layer, Conv2d) else BatchNorm1d
                if (isinstance(following, norm)
                        and following.num_features == layer.params["weight"].shape[0]):
                    affine = batch_norm_affine(following)   # folded into the weight
                    i += 1
                state = self.weight(path, layer, state, stages, affine)
            else:
                state = self.layer(path, layer, state, stages)
            i += 1
        return state

    def layer(self, path, layer, state, stages):
        """Append the stages of one layer that is not a Linear/Conv2d; return the state."""
        if isinstance(layer, Sequential):
            return self.pipeline(layer, path, state, stages)
        if type(layer) in ACTIVATIONS:
            stage_type = ACTIVATIONS[type(layer)]
            stages.append(stage_type())
            if state is not None:
                state.constants = stage_type.constant(state.constants)
            return state
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            scale, shift = batch_norm_affine(layer)
            if state is not None:
                state = state.expanded(layer.num_features)
                state.constants = state.constants * scale + shift
            kept = slice(None) if state is None else state.kept
            stages.append(st.ChannelAffine(scale[kept].astype(np.float32),
                                           shift[kept].astype(np.float32)))
            return state
        if isinstance(layer, Dropout):
            return state          # the identity in evaluation
        if isinstance(layer, MaxPool2d):
            stages.append(st.MaxPool(layer.kernel_size, layer.stride,
                                     getattr(layer, "padding", 0)))
            return state          # the max of a constant is that constant
        if isinstance(layer, GlobalAvgPool2d):
            stages.append(st.GlobalAvgPool())
            return state          # so is its mean
        if isinstance(layer, Flatten):
            stages.append(st.FlattenStage())
            if state is not None and state.flatten_at is None:
                state.flatten_at = len(stages) - 1
            return state
        if isinstance(layer, PatchTokens):
            stages.append(st.PatchTokens())
            self.axis = -1        # the channels become each token's features
            return state
        if isinstance(layer, SelectToken):
            stages.append(st.SelectToken(layer.index))
            self.axis = 1         # a token's features become the flat features
            return state
        if isinstance(layer, Residual):
            return self.residual(path, layer, state, stages)
        if isinstance(layer, SqueezeExcite):
            return self.squeeze_excite(path, layer, state, stages)
        if isinstance(layer, MultiheadSelfAttention):
            return self.attention(path, layer, state, stages)
        full = {LayerNorm: lambda: st.LayerNorm(*_float32(layer, "weight", "bias"), layer.eps),
                ClassToken: lambda: st.ClassToken(*_float32(layer, "class_token")),
                PositionEmbedding: lambda: st.PositionEmbedding(
                    *_float32(layer, "pos_embedding")),
                LogSoftmax: st.LogSoftmax}.get(type(layer))
        if full is None:
            raise TypeError(f"condense cannot convert layer {path or '(model)'}: "
                            f"{type(layer).__name__}")
        # These read every feature (a norm over them, a token or embedding that differs
        # per position, a softmax): removed ones come back first.
        state = self.restore(state, stages)
        stages.append(full())
        return state

    def weight(self, path, layer, state, stages, affine=None, name="weight", bias="bias",
               matrix=False):
        """Condense one weight of ``layer`` (its ``name`` parameter, with ``bias``);
        ``matrix``: a 1x1 convolution applied as a linear map (squeeze-excite)."""
        weight = layer.params[name]
        conv = isinstance(layer, Conv2d) and not matrix
        spec = WeightSpec(
            name=prefixed(path, name),
            weight=weight.reshape(weight.shape[:2]) if matrix else weight,
            bias=layer.params.get(bias), groups=layer.groups if conv else 1,
            conv=(layer.kernel_size, layer.stride, layer.padding) if conv else None)
        mask = self.masks.pop(spec.name, None)
        spec.mask = None if mask is None else mask.reshape(spec.weight.shape)
        state, entry = condense_weight(spec, state, stages, self.index_dtype, affine,
                                       self.axis)
        entry["type"] = repr(layer)
        self.report.append(entry)
        if self.warn and entry["result"] != "condensed":
            verdict = "is padded" if entry["result"] == "padded" else "stays dense"
            warnings.warn(f"condense: {spec.name} ({layer!r}) {verdict}: {entry['reason']}",
                          stacklevel=4)
        return state

    def residual(self, path, block, state, stages):
        """body(x) + shortcut(x): both start from x's state (each drops or restores what
        x lost); both end with every channel, as the add needs."""
        if block.shortcut is None:
            state = self.restore(state, stages)   # the identity reads every channel
        axis = self.axis
        body = []
        self.restore(self.pipeline(block.body, prefixed(path, block.body_name),
                                   None if state is None else state.copy(), body), body)
        shortcut = None
        if block.shortcut is not None:
            self.axis, shortcut = axis, []
            self.restore(self.pipeline(block.shortcut, prefixed(path, block.shortcut_name),
                                       None if state is None else state.copy(), shortcut),
                         shortcut)
        stages.append(graph.Residual(body, shortcut))
        return None

    def squeeze_excite(self, path, block, state, stages):
        """x * gate(mean(x)): x keeps every channel (a removed channel's constant times a
        gate that varies is no constant); fc1 -> ReLU -> fc2 -> gate are condensed as
        linear maps of the pooled (batch, C), removed neurons of fc1 folded into fc2."""
        state = self.restore(state, stages)
        gate, axis, self.axis = [], self.axis, 1
        hidden = self.weight(path, block, None, gate, name="fc1.weight", bias="fc1.bias",
                             matrix=True)
        hidden = self.layer(path, block.relu, hidden, gate)
        scale = self.weight(path, block, hidden, gate, name="fc2.weight", bias="fc2.bias",
                            matrix=True)
        self.restore(self.layer(path, block.gate, scale, gate), gate)
        self.axis = axis
        stages.append(graph.SqueezeExcite(gate))
        return state

    def attention(self, path, block, state, stages):
        """Multi-head self-attention: in_proj (3*D x D, constant fan-in per row) and
        out_proj condensed as linear maps of the (rows, D) tokens; each gives every
        feature (q, k and v are all read)."""
        state = self.restore(state, stages)
        axis, self.axis = self.axis, 1
        in_proj, out_proj = [], []
        self.restore(self.weight(path, block, None, in_proj, name="in_proj_weight",
                                 bias="in_proj_bias"), in_proj)
        self.restore(self.weight(path, block, None, out_proj, name="out_proj.weight",
                                 bias="out_proj.bias"), out_proj)
        self.axis = axis
        stages.append(graph.Attention(in_proj, out_proj, block.num_heads))
        return state


def _float32(layer, *names):
    return [np.ascontiguousarray(to_numpy(layer.params[name]), dtype=np.float32)
            for name in names]


def _sparse_weights(model):
    """{dotted name: weight array} of every weight a sparse layer holds, forward order."""
    return {prefixed(path, name): layer.params[name]
            for path, layer in model.named_layers() for name in layer.sparse_weights}


def _check_masks(model, masks):
    """{weight name: bool mask} validated against the model's sparse weights."""
    if masks is not None and not isinstance(masks, Mapping):
        masks = getattr(masks, "masks", None)   # a DynamicSparsity
        if not isinstance(masks, Mapping):
            raise TypeError("masks must be None, a dict of parameter name -> bool mask, or "
                            "a DynamicSparsity")
    weights = _sparse_weights(model)
    unknown = sorted(set(masks or {}) - set(weights))
    if unknown:
        raise ValueError(f"masks name parameters that are no sparse weight (Linear/Conv2d, "
                         f"attention or squeeze-excite) of the model: {unknown}")
    checked = {}
    for name, mask in (masks or {}).items():
        weight = to_numpy(weights[name])
        mask = to_numpy(mask)
        check_array(f"masks['{name}']", mask, dtypes=(bool,), shape=weight.shape)
        outside = (weight != 0) & ~mask
        if outside.any():
            raise ValueError(f"masks['{name}'] does not cover the weight: "
                             f"{int(outside.sum())} non-zero weights lie outside it "
                             f"(first at {tuple(int(j) for j in np.argwhere(outside)[0])})")
        checked[name] = mask
    return checked


def condense(model, *, masks=None, index_dtype=None, input_stats=None, warn=True):
    """Convert a trained model into a CondensedModel for inference.

    model: a Sequential of srigl_np.nn layers, nested ones included: Sequential,
    blocks.Residual (identity or projection shortcut), blocks.SqueezeExcite,
    attention.MultiheadSelfAttention, the tokens layers (PatchTokens, ClassToken,
    PositionEmbedding, SelectToken), BatchNorm1d/2d, LayerNorm, GlobalAvgPool2d,
    MaxPool2d, Flatten, Dropout (dropped: the identity in evaluation), ReLU, Sigmoid,
    Hardsigmoid, Hardswish, GELU, LogSoftmax, Linear and Conv2d (grouped and depthwise
    too). Another layer is a TypeError naming it.

    Structure comes from the masks when there are any (``masks``: a dict of dotted
    weight name, e.g. "layer1.0.conv1.weight", -> bool mask of the weight's shape, or a
    DynamicSparsity): every entry inside a mask is a weight, also when its value is
    exactly 0 (grown at a zero gradient), so a constant fan-in mask always condenses. A
    weight without a mask is judged by ``weight != 0``; the report says which.

    Every weight becomes a CondensedLinear/CondensedConv2d when its non-empty rows share
    one count (constant fan-in: SRigL, or any dense layer, with k = n_in); a grouped
    convolution's rows index the input channels of their group. A layer whose rows
    differ (unstructured RigL, SET) is condensed padded to its largest fan-in, or stays
    dense where the measured rule (``condense_layer.PADDED_DENSITY_LIMIT``) says that is
    faster; the report gives the reason and the padding cost, and a warning names it
    (``warn=False`` silences it). A BatchNorm right after a Linear/Conv2d is folded into
    it (running statistics: W' = W * scale, b' = (b - mean) * scale + beta); one after
    anything else becomes a ChannelAffine stage.
    Ablated neurons (empty rows) are removed structurally: the next layer drops the
    matching input columns (a conv channel's kh*kw taps; after Flatten its height*width
    block) and folds their constant output (bias, through BatchNorm and activations)
    into its bias. A layer that reads every feature (a padded convolution when the
    constant is not 0, LayerNorm, class token, position embedding, log_softmax, an
    identity shortcut, squeeze-excite, attention, the model's output) gets them back
    from a Scatter stage; so does a residual block's output, as the add needs every
    channel. Rows that lose weights to dropped columns are padded with explicit zeros
    to a common k.

    index_dtype: None (int16 when a layer's inputs fit, else int32), int16 or int32.
    input_stats: (mean, std) of the training images on the [0, 1] scale (scalars or per
    channel, as ``data.channel_stats`` gives them), stored so that the model takes
    images (see CondensedModel.logits). The result's ``report`` holds one entry per
    weight: its dotted name ("layer", e.g. "3.weight"), its layer's type, "condensed", "padded" or "dense", the
    structure source, k, fan_in [lowest, highest], active and total neurons, nnz and
    the reason.
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a srigl_np.nn.layers.Sequential, got {type(model).__name__}")
    _check_finite(model)
    walk = _Walk(_check_masks(model, masks), index_dtype, warn)
    stages = []
    walk.restore(walk.pipeline(model, "", None, stages), stages)
    weighted = [layer for _, layer in model.named_layers() if isinstance(layer, (Linear, Conv2d))]
    n_classes = weighted[-1].out_features if weighted and isinstance(weighted[-1], Linear) \
        else None
    condensed = CondensedModel(stages, input_stats=input_stats, n_classes=n_classes)
    condensed.report = walk.report
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
