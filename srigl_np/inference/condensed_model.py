"""A condensed network for inference: ``CondensedModel``, the stages it may hold, and how
it takes its input.

``condensing.condense(model)`` builds a ``CondensedModel`` from a trained model: a list of
stages applied in order, some of which hold pipelines of their own (a residual block's
body and shortcut, a squeeze-excite gate, an attention's projections: ``graph.py``). The
stages are the condensed layers of ``condensed.py`` (``CondensedLinear``,
``CondensedConv2d``), those of ``stages.py`` (dense layers that are not constant fan-in,
element-wise steps, normalisation, pooling, tokens, ``Scatter``) and the composites of
``graph.py``. Its file format is ``model_file.py``.

Input: a model condensed with input statistics takes images, and is told which of three
forms they come in rather than guessing (``INPUT_SCALES``; see ``CondensedModel.logits``).
"""

import numpy as np

from ..backend import array_module, parse_device, select
from ..validation import positive_int
from . import model_file
from .condensed import CondensedConv2d, CondensedLinear, _same_device, float_input
from .graph import Attention, Residual, SqueezeExcite, run_pipeline
from .stages import (ChannelAffine, ClassToken, DenseConv2d, DenseLinear, FlattenStage,  # noqa: F401
                     Gelu, GlobalAvgPool, Hardsigmoid, Hardswish, LayerNorm, LogSoftmax,
                     MaxPool, PatchTokens, PositionEmbedding, Relu, Scatter, SelectToken,
                     Sigmoid)

STAGE_TYPES = {cls.kind: cls for cls in (
    CondensedLinear, CondensedConv2d, DenseLinear, DenseConv2d, Relu, Sigmoid, Hardsigmoid,
    Hardswish, Gelu, LogSoftmax, MaxPool, GlobalAvgPool, FlattenStage, ChannelAffine,
    LayerNorm, Scatter, PatchTokens, ClassToken, PositionEmbedding, SelectToken, Residual,
    SqueezeExcite, Attention)}

# What a float input holds, said by the caller (``logits(x, input_scale=...)``):
#   "uint8"       pixel values 0-255 (as a uint8 array has them, in a float array)
#   "unit"        images on the [0, 1] scale (torchvision's ToTensor())
#   "normalised"  (image - mean) / std on the [0, 1] scale: what the network was trained on
INPUT_SCALES = ("uint8", "unit", "normalised")


def named_stages(stages, prefix=""):
    """(path, stage) of every stage, nested ones included, depth first: "3", "3.body.1"."""
    for i, stage in enumerate(stages):
        path = f"{prefix}{i}"
        yield path, stage
        for name, sub in stage.sub_stages():
            yield from named_stages(sub, f"{path}.{name}.")


class CondensedModel:
    """A condensed network: ``stages`` applied in order (see ``condensing.condense``).

    ``model(x)`` / logits(x): x (batch, ...) -> (batch, n_classes) float32, equal to the
    trained model's output in evaluation up to float32 rounding. On a GPU model
    (``to("cuda")``) x may be NumPy or CuPy and the result is a CuPy array; ``threads``
    applies to the CPU kernels only. ``expects`` (and the repr) says what input it takes.

    input_stats: None or (mean, std), each a float or per-channel 1-D float64 array on
    the [0, 1] scale (``data.channel_stats``); n_classes: the logits' width or None.
    Both are saved with the model.
    """

    def __init__(self, stages, device="cpu", *, input_stats=None, n_classes=None):
        stages = list(stages)
        for path, stage in named_stages(stages):
            if type(stage) not in STAGE_TYPES.values():
                raise TypeError(f"stage {path} must be one of {sorted(STAGE_TYPES)}, "
                                f"got {type(stage).__name__}")
        kind, index = parse_device(device)
        self.device = "cpu" if kind == "cpu" else f"cuda:{index}"
        self.stages = stages
        self.input_stats = check_input_stats(input_stats)
        self.n_classes = None if n_classes is None else positive_int("n_classes", n_classes)
        self.report = []

    def named_stages(self):
        """(path, stage) of every stage, nested ones included ("4", "4.body.0", ...)."""
        return named_stages(self.stages)

    @property
    def expects(self):
        """One line: the input this model takes."""
        if self.input_stats is None:
            return ("input: normalised floats, as the network was trained on (no input "
                    "statistics stored, so no uint8 or [0, 1] images)")
        mean, std = (np.round(a, 4).tolist() for a in self.input_stats)
        return (f"input: uint8 images (batch, [C,] H, W), normalised with mean {mean} and "
                f"std {std} on the [0, 1] scale; a float array needs input_scale='unit' "
                f"([0, 1] images), 'uint8' (0-255 values) or 'normalised' (taken as such "
                f"without it only when it holds a negative value)")

    def logits(self, x, threads=0, *, input_scale=None):
        """The network's output for x: (batch, n_classes) float32.

        x: a uint8 array of images (batch, H, W) or (batch, C, H, W), normalised with the
        stored statistics as in training, (x / 255 - mean) / std; or a float array whose
        scale ``input_scale`` names: "uint8" (0-255 values), "unit" ([0, 1] images,
        torchvision's ToTensor()), "normalised" (what the network was trained on, any
        shape it takes). A model without statistics takes normalised floats only. On a
        model with statistics a float array without ``input_scale`` is refused unless it
        holds a negative value (then it cannot be an image on either scale): [0, 1]
        images taken as normalised silently lose accuracy (issue 21: 56.6% against 87.5%).
        """
        x = self._prepare(x, input_scale)
        y = run_pipeline(self.stages, x, threads)
        if self.n_classes is not None and (y.ndim != 2 or y.shape[1] != self.n_classes):
            raise ValueError(f"the model's output has shape {y.shape}, but it was saved "
                             f"with n_classes={self.n_classes}")
        return y

    __call__ = logits

    def _prepare(self, x, input_scale):
        """x as the network's float32 input, by the rules of ``logits``."""
        if input_scale is not None and input_scale not in INPUT_SCALES:
            raise ValueError(f"input_scale must be one of {INPUT_SCALES} or None, got "
                             f"{input_scale!r}")
        if self.device != "cpu":
            x = select(self.device).asarray(x)
        xp = array_module(x)
        x = xp.asarray(x)
        if x.dtype == np.uint8:
            if input_scale not in (None, "uint8"):
                raise ValueError(f"x is a uint8 array (0-255 pixel values), but input_scale "
                                 f"is {input_scale!r}: pass input_scale='uint8' or None")
            return self._normalise(x, 255.0)
        x = float_input(x)
        if input_scale == "normalised" or (input_scale is None and self.input_stats is None):
            return x
        if input_scale is None:
            if x.size and float(x.min()) < 0:
                return x     # negative: neither [0, 1] nor 0-255 images
            raise ValueError(
                "x is a float array with no negative value, which this model cannot tell "
                "apart: pass input_scale='unit' for [0, 1] images (ToTensor()), 'uint8' for "
                "0-255 pixel values or 'normalised' for inputs already normalised")
        top = 1.0 if input_scale == "unit" else 255.0
        if x.size and not (float(x.min()) >= 0 and float(x.max()) <= top):
            raise ValueError(f"input_scale={input_scale!r} means values in [0, {top:g}], but "
                             f"x holds [{float(x.min()):.4g}, {float(x.max()):.4g}]")
        return self._normalise(x, top)

    def _normalise(self, x, top):
        """Images on [0, top] -> float32 (batch, C, H, W), (x / top - mean) / std, as
        ``data.normalize`` does for top = 255."""
        if self.input_stats is None:
            raise ValueError("x holds images (uint8, or input_scale 'uint8'/'unit'), but this "
                             "model stores no input normalisation: pass the normalised float "
                             "inputs the model was trained on, or condense with "
                             "input_stats=(mean, std)")
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise ValueError(f"images must have shape (batch, H, W) or (batch, C, H, W), "
                             f"got {x.shape}")
        xp = array_module(x)
        mean, std = (np.atleast_1d(a).astype(np.float64) for a in self.input_stats)
        if mean.size not in (1, x.shape[1]):
            raise ValueError(f"images have {x.shape[1]} channels, the model's input "
                             f"statistics {mean.size}")
        scale = xp.asarray((1.0 / (top * std)).astype(np.float32).reshape(1, -1, 1, 1))
        shift = xp.asarray((mean / std).astype(np.float32).reshape(1, -1, 1, 1))
        return x.astype(xp.float32) * scale - shift

    def predict(self, x, threads=0, *, input_scale=None):
        """Predicted class per example: (batch,) int64, on the model's device."""
        return self.logits(x, threads, input_scale=input_scale).argmax(axis=1)

    def predict_proba(self, x, threads=0, *, input_scale=None):
        """Class probabilities, softmax of the logits: (batch, n_classes) float32."""
        logits = self.logits(x, threads, input_scale=input_scale)
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
        """Write the model to ``path`` (.npz, written atomically; layout in
        ``model_file``). A GPU model is saved from host copies of its arrays."""
        metadata = {}
        if self.input_stats is not None:
            metadata["input"] = {"mean": np.atleast_1d(self.input_stats[0]).tolist(),
                                 "std": np.atleast_1d(self.input_stats[1]).tolist()}
        if self.n_classes is not None:
            metadata["n_classes"] = self.n_classes
        model_file.save(path, self.stages, metadata)

    @classmethod
    def load(cls, path):
        return load(path)

    def __repr__(self):
        where = "" if self.device == "cpu" else f"device={self.device!r}, "
        return (f"CondensedModel({where}\n"
                + "".join(f"  {stage!r},\n" for stage in self.stages)
                + f"  # {self.expects}\n)")


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
    """Read a CondensedModel written by ``CondensedModel.save`` (format_version 2, or 1:
    files written before residual graphs), validating everything (``model_file.load``);
    the model is on the CPU."""
    stages, metadata = model_file.load(path, STAGE_TYPES)
    input_stats = None
    if "input" in metadata:   # optional: files written before it existed load too
        entry = metadata["input"]
        if not isinstance(entry, dict) or set(entry) != {"mean", "std"}:
            raise ValueError(f"metadata 'input' must be {{'mean': [...], 'std': [...]}}, "
                             f"got {entry!r}")
        try:
            input_stats = check_input_stats((entry["mean"], entry["std"]))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata 'input': {exc}") from None
    n_classes = metadata.get("n_classes")
    if n_classes is not None and (isinstance(n_classes, bool) or not isinstance(n_classes, int)
                                  or n_classes < 1):
        raise ValueError(f"metadata 'n_classes' must be a positive integer, got {n_classes!r}")
    return CondensedModel(stages, input_stats=input_stats, n_classes=n_classes)
