"""A condensed network for inference: its stages, ``CondensedModel``, and its file format.

``condensing.condense(model)`` builds a ``CondensedModel`` from a trained ``Sequential``:
a list of stages applied in order. The stages are the condensed layers of
``condensed.py`` (``CondensedLinear``, ``CondensedConv2d``) and the ones here: dense
layers that are not constant fan-in, the element-wise steps between layers, and
``Scatter``, which puts back the constant outputs of removed neurons. Every stage
follows ``condensed.Stage``: it computes on its input's device, and saves, loads and
moves through one description of its arrays and settings.

File format (a ``.npz`` written atomically, read by ``formats.npz.NpzReader``: never
unpickled, every member checked before it is inflated, and no member read that the
metadata's stages do not name), format_version 1:

    format_version   int64 scalar, 1
    metadata         str scalar, JSON {"format": "srigl_np.condensed",
                     "stages": [{"type": <kind>, <settings>}, ...],
                     optional: "input": {"mean": [...], "std": [...]} (per channel,
                     [0, 1] scale: how raw uint8 images are normalised),
                     "n_classes": <int>}
    stage<i>.<name>  the arrays of stage i, e.g. stage0.values (float32 [n_active, k]),
                     stage0.indices (int16/int32 [n_active, k]), stage0.active
                     (int64 [n_active]), stage0.bias (float32 [n_active])

Each stage kind's arrays and settings are its class's ARRAYS, OPTIONAL and SETTINGS.
"""

import json
import math

import numpy as np

from ..backend import array_module, parse_device, select
from ..fileio import atomic_write
from ..formats.npz import NpzError, NpzReader
from ..kernels import max_pool2d
from ..nn.pooling import MaxPool2d
from ..validation import check_array, positive_int
from .condensed import (CondensedConv2d, CondensedLinear, Stage, _same_device,
                        conv_geometry, conv_rows, float_input, rows_to_images)

FORMAT_NAME = "srigl_np.condensed"
FORMAT_VERSION = 1


def _check_float32(name, a, ndim):
    return check_array(name, a, dtypes=(np.float32,), ndim=ndim, finite=True, device="cpu")


def _check_dense_params(weight, bias, ndim):
    _check_float32("weight", weight, ndim)
    if bias is not None:
        check_array("bias", bias, dtypes=(np.float32,), shape=(weight.shape[0],),
                    finite=True, device="cpu")
    return np.ascontiguousarray(weight), bias


class DenseLinear(Stage):
    """A Linear layer ``condense`` keeps dense because its rows differ in count
    (e.g. unstructured RigL): y = x @ weight.T + bias over its active rows.
    weight: (n_active, n_in) float32; bias: (n_active,) float32 or None."""

    kind = "dense_linear"
    ARRAYS = ("weight",)
    OPTIONAL = ("bias",)

    def __init__(self, weight, bias=None):
        self.weight, self.bias = _check_dense_params(weight, bias, 2)
        self.n_in = self.weight.shape[1]

    def forward(self, x, threads=0):
        x = float_input(x)
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"x must have shape (batch, {self.n_in}), got {x.shape}")
        y = x @ self.weight.T
        if self.bias is not None:
            y += self.bias
        return y

    def __repr__(self):
        return f"DenseLinear(n_in={self.n_in}, n_out={self.weight.shape[0]})"


class DenseConv2d(Stage):
    """The Conv2d counterpart of DenseLinear: weight (n_active, in_channels, kh, kw)."""

    kind = "dense_conv2d"
    ARRAYS = ("weight",)
    OPTIONAL = ("bias",)
    SETTINGS = ("stride", "padding")

    def __init__(self, weight, bias=None, stride=1, padding=0):
        self.weight, self.bias = _check_dense_params(weight, bias, 4)
        self.in_channels = self.weight.shape[1]
        self.kernel_size, self.stride, self.padding = conv_geometry(
            self.weight.shape[2:], stride, padding)

    def forward(self, x, threads=0):
        cols, batch, out_h, out_w = conv_rows(x, self.in_channels, self.kernel_size,
                                              self.stride, self.padding, threads)
        rows = cols @ self.weight.reshape(self.weight.shape[0], -1).T
        if self.bias is not None:
            rows += self.bias
        return rows_to_images(rows, batch, out_h, out_w)

    def __repr__(self):
        return f"DenseConv2d(weight={self.weight.shape}, stride={self.stride}, " \
               f"padding={self.padding})"


class Relu(Stage):
    """max(x, 0). ``CondensedModel.logits`` applies it in place to an array the model
    made itself (``forward(x, out=x)``): for a (256, 64, 24, 24) activation of the cnn a
    new array took 12.5 ms against 6.9 ms in place (np.maximum timed alone, Zen 5)."""

    kind = "relu"

    def forward(self, x, threads=0, out=None):
        return array_module(x).maximum(x, 0, out=out)

    def __repr__(self):
        return "ReLU()"


class MaxPool(Stage):
    """Max pooling (no padding), as srigl_np.nn.pooling.MaxPool2d in evaluation."""

    kind = "max_pool2d"
    SETTINGS = ("kernel_size", "stride")

    def __init__(self, kernel_size, stride):
        self._pool = MaxPool2d(kernel_size, stride)
        self.kernel_size, self.stride = self._pool.kernel_size, self._pool.stride

    @classmethod
    def from_fields(cls, kernel_size, stride):
        return cls(tuple(kernel_size), stride)

    def forward(self, x, threads=0):
        if array_module(x) is np and x.dtype == np.float32:   # the CPU kernel
            return max_pool2d(x, *self.kernel_size, self.stride, threads)
        return self._pool.forward(x, False)

    def __repr__(self):
        return repr(self._pool)


class FlattenStage(Stage):
    """(batch, ...) -> (batch, prod(...)), C order."""

    kind = "flatten"

    def forward(self, x, threads=0):
        # Not reshape(batch, -1): NumPy cannot infer the -1 of an empty batch.
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def __repr__(self):
        return "Flatten()"


class ChannelAffine(Stage):
    """x * scale + shift along axis 1: a BatchNorm in evaluation, on the kept channels.
    scale, shift: (channels,) float32."""

    kind = "channel_affine"
    ARRAYS = ("scale", "shift")

    def __init__(self, scale, shift):
        _check_float32("scale", scale, 1)
        _check_float32("shift", shift, 1)
        if shift.shape != scale.shape:
            raise ValueError(f"shift must have the shape of scale {scale.shape}, got {shift.shape}")
        self.scale, self.shift = scale, shift

    def forward(self, x, threads=0):
        if x.ndim < 2 or x.shape[1] != self.scale.size:
            raise ValueError(f"x must have {self.scale.size} channels on axis 1, got {x.shape}")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.scale.reshape(shape) + self.shift.reshape(shape)

    def __repr__(self):
        return f"ChannelAffine({self.scale.size})"


class Scatter(Stage):
    """Put the kept features back at their positions along axis 1 and fill the removed
    ones with their constant value (the output of an ablated neuron is constant).
    positions: (n_kept,) int64, strictly increasing in [0, n_features);
    constants: (n_features,) float32, read where no position points."""

    kind = "scatter"
    ARRAYS = ("positions", "constants")

    def __init__(self, positions, constants):
        _check_float32("constants", constants, 1)
        check_array("positions", positions, dtypes=(np.int64,), device="cpu")
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
        xp = array_module(x)
        out = xp.empty((x.shape[0], self.constants.size) + x.shape[2:], dtype=xp.float32)
        out[:, self.positions] = x
        shape = (1, -1) + (1,) * (x.ndim - 2)
        out[:, self._removed] = self.constants[self._removed].reshape(shape)
        return out

    def __repr__(self):
        return f"Scatter({self.positions.size} -> {self.constants.size})"


STAGE_TYPES = {cls.kind: cls for cls in (CondensedLinear, CondensedConv2d, DenseLinear,
                                         DenseConv2d, Relu, MaxPool, FlattenStage,
                                         ChannelAffine, Scatter)}


class CondensedModel:
    """A condensed network: ``stages`` applied in order (see ``condensing.condense``).

    ``model(x)`` / logits(x): x (batch, ...) -> (batch, n_classes) float32, equal to the
    masked dense model's output in evaluation up to float32 rounding. x is either what
    the trained model took (floats, already normalised; any float dtype) or raw uint8
    images (batch, H, W) / (batch, C, H, W), which are normalised first as in training,
    (x / 255 - mean) / std, with the ``input_stats`` stored in the model (an error when
    it has none). On a GPU model (``to("cuda")``) x may be NumPy or CuPy and the result
    is a CuPy array; ``threads`` applies to the CPU kernels only.

    input_stats: None or (mean, std), each a float or per-channel 1-D float64 array on
    the [0, 1] scale (``data.channel_stats``); n_classes: the logits' width or None.
    Both are saved with the model.
    """

    def __init__(self, stages, device="cpu", *, input_stats=None, n_classes=None):
        stages = list(stages)
        for i, stage in enumerate(stages):
            if type(stage) not in STAGE_TYPES.values():
                raise TypeError(f"stage {i} must be one of {sorted(STAGE_TYPES)}, "
                                f"got {type(stage).__name__}")
        kind, index = parse_device(device)
        self.device = "cpu" if kind == "cpu" else f"cuda:{index}"
        self.stages = stages
        self.input_stats = check_input_stats(input_stats)
        self.n_classes = None if n_classes is None else positive_int("n_classes", n_classes)
        self.report = []

    def logits(self, x, threads=0):
        if self.device != "cpu":
            x = select(self.device).asarray(x)
        xp = array_module(x)
        if getattr(x, "dtype", None) == np.uint8:
            x = self._normalise(xp.asarray(x))
        x = given = float_input(x)
        for stage in self.stages:
            if isinstance(stage, Relu) and not xp.may_share_memory(x, given):
                x = stage.forward(x, threads, out=x)   # an intermediate: nothing else holds it
            else:
                x = stage.forward(x, threads)
        if self.n_classes is not None and (x.ndim != 2 or x.shape[1] != self.n_classes):
            raise ValueError(f"the model's output has shape {x.shape}, but it was saved "
                             f"with n_classes={self.n_classes}")
        return x

    __call__ = logits

    def _normalise(self, x):
        """Raw uint8 images -> float32 (batch, C, H, W), as ``data.normalize`` does."""
        if self.input_stats is None:
            raise ValueError("x holds raw uint8 images, but this model stores no input "
                             "normalisation: pass the normalised float inputs the model "
                             "was trained on, or condense with input_stats=(mean, std)")
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise ValueError(f"raw images must have shape (batch, H, W) or (batch, C, H, W), "
                             f"got {x.shape}")
        xp = array_module(x)
        mean, std = (np.atleast_1d(a).astype(np.float64) for a in self.input_stats)
        if mean.size not in (1, x.shape[1]):
            raise ValueError(f"raw images have {x.shape[1]} channels, the model's input "
                             f"statistics {mean.size}")
        scale = xp.asarray((1.0 / (255.0 * std)).astype(np.float32).reshape(1, -1, 1, 1))
        shift = xp.asarray((mean / std).astype(np.float32).reshape(1, -1, 1, 1))
        return x.astype(xp.float32) * scale - shift

    def predict(self, x, threads=0):
        """Predicted class per example: (batch,) int64, on the model's device."""
        return self.logits(x, threads).argmax(axis=1)

    def predict_proba(self, x, threads=0):
        """Class probabilities, softmax of the logits: (batch, n_classes) float32."""
        logits = self.logits(x, threads)
        xp = array_module(logits)
        shifted = xp.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def to(self, device):
        """This model on ``device`` ("cpu", "cuda", "cuda:N"): itself when it is there,
        else a copy whose stages hold their arrays on that device (as ``Sequential.to``
        moves a training model). Needs CuPy and a GPU for "cuda"."""
        select(device)
        if _same_device(self.device, device):
            return self
        moved = CondensedModel([stage.to(device) for stage in self.stages], device,
                               input_stats=self.input_stats, n_classes=self.n_classes)
        moved.report = self.report
        return moved

    def save(self, path):
        """Write the model to ``path`` (.npz, written atomically; layout in the module
        docstring). A GPU model is saved from host copies of its arrays."""
        arrays = {"format_version": np.array(FORMAT_VERSION, dtype=np.int64)}
        stages = []
        for i, stage in enumerate(self.stages):
            stage_arrays, settings = stage.fields()
            stages.append({"type": stage.kind, **settings})
            arrays.update({f"stage{i}.{name}": a for name, a in stage_arrays.items()})
        metadata = {"format": FORMAT_NAME, "stages": stages}
        if self.input_stats is not None:
            metadata["input"] = {"mean": np.atleast_1d(self.input_stats[0]).tolist(),
                                 "std": np.atleast_1d(self.input_stats[1]).tolist()}
        if self.n_classes is not None:
            metadata["n_classes"] = self.n_classes
        arrays["metadata"] = np.array(json.dumps(metadata))
        atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path):
        return load(path)

    def __repr__(self):
        where = "" if self.device == "cpu" else f"device={self.device!r}, "
        return (f"CondensedModel({where}\n"
                + "".join(f"  {stage!r},\n" for stage in self.stages) + ")")


# The most (1 + |mean|) / std may be: raw images normalised with these statistics,
# (x/255 - mean) / std for x/255 in [0, 1], stay finite in float32 (with room for the
# scale and the shift the model applies them as).
MAX_NORMALISED = float(np.finfo(np.float32).max) / 4


def check_input_stats(input_stats):
    """(mean, std) as float64 1-D arrays of one size, finite, std > 0 and normalising with
    them finite in float32 ((1 + |mean|) / std <= MAX_NORMALISED); or None. ValueError
    otherwise."""
    if input_stats is None:
        return None
    try:
        mean, std = input_stats
    except (TypeError, ValueError):
        raise ValueError(f"input_stats must be a pair (mean, std), got {input_stats!r}") \
            from None
    mean, std = (np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (mean, std))
    if mean.ndim != 1 or mean.size == 0 or mean.shape != std.shape or not (
            np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise ValueError(f"input_stats must be finite (mean, std) of one length with "
                         f"std > 0, got mean {mean.tolist()}, std {std.tolist()}")
    with np.errstate(over="ignore"):
        largest = float(((1 + np.abs(mean)) / std).max())
    if not largest <= MAX_NORMALISED:
        raise ValueError(f"input_stats would overflow float32 when normalising: (1 + |mean|)"
                         f" / std must be at most {MAX_NORMALISED:.3g}, got mean "
                         f"{mean.tolist()}, std {std.tolist()}")
    return mean, std


def load(path):
    """Read a CondensedModel written by ``CondensedModel.save``, validating everything.

    A file that is not such an archive, has another format_version, lacks or adds
    arrays or settings, or holds arrays of the wrong dtype, shape or range is refused
    with a ValueError or TypeError saying what is wrong. The metadata is read first and
    a member it does not name is refused before any array is read. The model is on
    the CPU.
    """
    try:
        with NpzReader(path) as npz:
            return _load_archive(path, npz)
    except NpzError as exc:
        raise ValueError(f"{path!s} is not a readable .npz file: {exc.reason}") from None


def _load_archive(path, npz):
    keys = set(npz.members)
    for key in ("format_version", "metadata"):
        if key not in keys:
            raise ValueError(f"{path!s} lacks '{key}': not a condensed model file")
    declared = npz.members["format_version"]
    if declared.shape != () or declared.dtype.kind not in "iu":
        raise ValueError(f"format_version must be {FORMAT_VERSION}, got a {declared.dtype} "
                         f"array of shape {declared.shape}")
    version = npz.read("format_version")
    if int(version) != FORMAT_VERSION:
        raise ValueError(f"format_version must be {FORMAT_VERSION}, got {version!r}")
    metadata = _parse_metadata(path, npz)
    stage_types = [_stage_type(i, meta) for i, meta in enumerate(metadata["stages"])]
    named = {"format_version", "metadata"} | {
        f"stage{i}.{name}" for i, stage_type in enumerate(stage_types)
        for name in stage_type.ARRAYS + stage_type.OPTIONAL}
    if keys - named:   # refused before any of them is read
        raise ValueError(f"unexpected arrays in {path!s}: {sorted(keys - named)}")
    stages = [_load_stage(i, meta, stage_type, npz)
              for i, (meta, stage_type) in enumerate(zip(metadata["stages"], stage_types))]
    return CondensedModel(stages, input_stats=metadata.get("input_stats"),
                          n_classes=metadata.get("n_classes"))


def _stage_type(i, meta):
    stage_type = STAGE_TYPES.get(meta.get("type") if isinstance(meta, dict) else None)
    if stage_type is None:
        raise ValueError(f"stage {i} has unknown type {meta!r:.200}; known: "
                         f"{sorted(STAGE_TYPES)}")
    return stage_type


def _load_stage(i, meta, stage_type, npz):
    """Stage ``i`` rebuilt from its metadata entry and the archive's arrays."""
    _check_declared(i, meta, stage_type, npz.members)
    fields = {}
    for name in stage_type.ARRAYS + stage_type.OPTIONAL:
        key = f"stage{i}.{name}"
        if key in npz.members:
            fields[name] = npz.read(key)
        elif name in stage_type.ARRAYS:
            raise ValueError(f"stage {i} ({stage_type.kind}) lacks array '{key}'")
    unknown = set(meta) - {"type"} - set(stage_type.SETTINGS)
    if unknown:
        raise ValueError(f"stage {i} ({stage_type.kind}) has unknown settings {sorted(unknown)}")
    for name in stage_type.SETTINGS:
        if name not in meta:
            raise ValueError(f"stage {i} ({stage_type.kind}) lacks setting '{name}'")
        fields[name] = meta[name]
    try:
        return stage_type.from_fields(**fields)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"stage {i} ({stage_type.kind}): {exc}") from exc


# A stage whose arrays declare more than this in all has them checked against each other
# and its settings before any is read (smaller ones are read, and the stage's own checks
# word what is wrong more precisely).
PRECHECK_BYTES = 16 * 2**20


def _check_declared(i, meta, stage_type, members):
    """A big condensed layer's arrays as their headers declare them, before any is read:
    values (n_active, k) with n_active <= n_out and k <= n_in, indices of values' shape,
    active and bias (n_active,). A file whose arrays do not fit its own settings is
    refused without inflating them."""
    declared = {name: members[f"stage{i}.{name}"]
                for name in stage_type.ARRAYS + stage_type.OPTIONAL
                if f"stage{i}.{name}" in members}
    total = sum(int(np.prod(m.shape, dtype=np.float64)) * m.dtype.itemsize
                for m in declared.values())
    if total <= PRECHECK_BYTES or "values" not in declared:
        return
    n_out, n_in = meta.get("n_out"), meta.get("n_in")
    values = declared["values"].shape
    fits = (all(isinstance(v, int) and not isinstance(v, bool) for v in (n_out, n_in))
            and len(values) == 2 and values[0] <= n_out and values[1] <= n_in
            and declared.get("indices", declared["values"]).shape == values
            and all(declared[name].shape == values[:1]
                    for name in ("active", "bias") if name in declared))
    if not fits:
        shapes = ", ".join(f"{name} {m.shape}" for name, m in declared.items())
        raise ValueError(f"stage {i} ({stage_type.kind}): its arrays ({shapes}) do not fit "
                         f"its settings n_out={n_out!r}, n_in={n_in!r}: values (n_active, k) "
                         f"with n_active <= n_out and k <= n_in, indices as values, active "
                         f"and bias (n_active,)")


def _parse_metadata(path, npz):
    metadata = npz.read_json("metadata", f"{path!s}: metadata")
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"metadata must name format {FORMAT_NAME!r}")
    if not isinstance(metadata.get("stages"), list):
        raise ValueError("metadata must hold a list of stages")
    if "input" in metadata:   # optional: files written before it existed load too
        entry = metadata["input"]
        if not isinstance(entry, dict) or set(entry) != {"mean", "std"}:
            raise ValueError(f"metadata 'input' must be {{'mean': [...], 'std': [...]}}, "
                             f"got {entry!r}")
        try:
            metadata["input_stats"] = check_input_stats((entry["mean"], entry["std"]))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata 'input': {exc}") from None
    n_classes = metadata.get("n_classes")
    if n_classes is not None and (isinstance(n_classes, bool) or not isinstance(n_classes, int)
                                  or n_classes < 1):
        raise ValueError(f"metadata 'n_classes' must be a positive integer, got {n_classes!r}")
    return metadata
