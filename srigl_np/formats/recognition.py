"""Which of the paper's architectures a model state is, and at what sizes, from its keys
and shapes alone (no code of the file runs; nothing but names and shapes is read).

    canonical_keys(state) -> (state, note or None)     key variants renamed to ours
    recognise(shapes, arch=None, sizes=None) -> (Recognition or None, why not)
    families(shapes) -> [name]                          the architectures it resembles

Each architecture of ``layouts.ARCHITECTURE_NAMES`` (and the authors' narrowed ResNet-18,
``layouts.EXTRA_NAMES``, tried after them) has a reader of its sizes (widths,
blocks per stage, classes, ViT's image size from ``encoder.pos_embedding`` and patch
size from ``conv_proj``); a state is that architecture when ``layouts.LAYOUTS`` at the
inferred sizes gives exactly its keys and shapes (BatchNorm's ``num_batches_tracked``
counters aside). So a recognised state loads into ``nn.architectures`` at those sizes
with nothing left over and nothing missing; anything else is not recognised, with the
first difference as the reason.

Key variants: DistributedDataParallel's ``module.`` prefix is stripped by
``importing``; torchvision's older ViT MLP names ``mlp.linear_1`` and ``mlp.linear_2``
are ``mlp.0`` and ``mlp.3`` here.
"""

import dataclasses
import math
import re

from .layouts import (ARCHITECTURE_NAMES, EXTRA_NAMES, LAYOUTS, MOBILENET_BLOCKS,
                      MOBILENET_LAST_CHANNEL)

# A key that marks each family, to say which one a state that fits none came closest to.
_SIGNATURES = {"cifar_resnet18": "layer1.0.conv1.weight",
               "wide_resnet22": "block1.layer.0.conv1.weight",
               "resnet50": "layer1.0.conv3.weight",
               "mobilenet_v3_large": "features.0.0.weight",
               "mobilenet_v3_small": "features.0.0.weight",
               "vit_b_16": "conv_proj.weight"}
_VIT_MLP = re.compile(r"(^|\.)mlp\.linear_([12])\.")
_VIT_MLP_INDEX = {"1": "0", "2": "3"}
# ViT-B's head size: num_heads is nowhere in a state_dict.
VIT_HEAD_SIZE = 64


@dataclasses.dataclass(frozen=True)
class Recognition:
    """A state recognised as ``name`` (one of ARCHITECTURE_NAMES) at ``sizes`` (the
    keyword arguments of ``nn.architectures.build_architecture`` and
    ``layouts.LAYOUTS[name]``); ``notes``: what was assumed rather than read."""
    name: str
    sizes: dict
    notes: tuple = ()

    def describe(self):
        """One line: the architecture and its sizes."""
        sizes = ", ".join(f"{key}={value}" for key, value in self.sizes.items())
        return f"{self.name} ({sizes})"


def canonical_keys(state):
    """(state with our key names, note or None): torchvision's older ViT MLP keys
    ``...mlp.linear_1.*`` / ``...mlp.linear_2.*`` become ``...mlp.0.*`` / ``...mlp.3.*``,
    in place in the order. Works on any {key: value} (a state or its masks)."""
    renamed = {}
    for key in state:
        new = _VIT_MLP.sub(lambda m: f"{m.group(1)}mlp.{_VIT_MLP_INDEX[m.group(2)]}.", key)
        if new != key:
            renamed[key] = new
    if not renamed:
        return state, None
    clashes = [new for new in renamed.values() if new in state]
    if clashes:
        raise ValueError(f"both torchvision's old and new ViT MLP names are present "
                         f"({clashes[0]!r} and its mlp.linear_* twin)")
    note = (f"renamed torchvision's older ViT MLP keys mlp.linear_1/mlp.linear_2 to "
            f"mlp.0/mlp.3 ({len(renamed)} keys)")
    return {renamed.get(key, key): value for key, value in state.items()}, note


def recognise(shapes, arch=None, sizes=None):
    """(Recognition, None) when ``shapes`` ({key: shape}, our key names) is one of the
    architectures at some sizes, else (None, one line saying why not).

    arch: one of ARCHITECTURE_NAMES to try alone (the user named it), or None to try
    each. sizes: {size: value} that override what is read or assumed (e.g. ViT's
    num_heads, which the shapes do not hold); the state must still fit them.
    """
    if arch is not None and arch not in LAYOUTS:
        raise ValueError(f"arch must be one of {', '.join(LAYOUTS)}, got {arch!r}")
    shapes = {key: tuple(shape) for key, shape in shapes.items()
              if not key.endswith("num_batches_tracked")}
    names = (arch,) if arch else ARCHITECTURE_NAMES + EXTRA_NAMES
    reasons, read = {}, []
    for name in names:
        found, why, sizes_read = _try(name, shapes, sizes or {})
        if found is not None:
            return found, None
        reasons[name] = why
        if sizes_read:
            read.append(name)
    if arch:
        return None, f"not {arch}: {reasons[arch]}"
    # The closest: those whose sizes could be read, else those whose mark it holds.
    close = [name for name in ARCHITECTURE_NAMES if name in read] or families(shapes)
    if close:
        return None, "; ".join(f"not {name}: {reasons[name]}" for name in close)
    return None, (f"its keys match none of {', '.join(ARCHITECTURE_NAMES)} (e.g. no "
                  f"'layer1.0.conv1.weight', 'block1.layer.0.conv1.weight', "
                  f"'features.0.0.weight' or 'conv_proj.weight')")


def families(shapes):
    """The architectures whose mark (a key only they have) ``shapes`` holds: the ones a
    state that fits none of them came closest to."""
    return [name for name in ARCHITECTURE_NAMES if _SIGNATURES[name] in shapes]


def _try(name, shapes, overrides):
    """(Recognition or None, why not, whether its sizes could be read) for one
    architecture."""
    try:
        sizes, notes = _READERS[name](shapes)
    except _NotIt as why:
        return None, str(why), False
    unknown = set(overrides) - set(sizes)
    if unknown:
        raise ValueError(f"sizes for {name} are {', '.join(sizes)}; got {sorted(unknown)}")
    notes = tuple(note for size, note in notes.items() if size not in overrides)
    sizes |= overrides
    try:
        expected = LAYOUTS[name](**sizes)
    except (TypeError, ValueError, ZeroDivisionError) as error:
        return None, f"sizes {sizes} build nothing ({error})", True
    difference = _difference(expected, shapes)
    if difference:
        return None, f"read as {Recognition(name, sizes).describe()}, but {difference}", True
    return Recognition(name, sizes, tuple(notes)), None, True


def _difference(expected, shapes):
    """The first difference between two {key: shape} as a phrase, or None."""
    missing = [key for key in expected if key not in shapes]
    extra = [key for key in shapes if key not in expected]
    if missing:
        return (f"1 key is missing ({missing[0]!r})" if len(missing) == 1 else
                f"{len(missing)} keys are missing (first {missing[0]!r})")
    if extra:
        return (f"1 key is not in it ({extra[0]!r})" if len(extra) == 1 else
                f"{len(extra)} keys are not in it (first {extra[0]!r})")
    wrong = next((key for key in expected if shapes[key] != expected[key]), None)
    if wrong is not None:
        return f"{wrong!r} has shape {shapes[wrong]}, expected {expected[wrong]}"
    return None


class _NotIt(Exception):
    """The state is not this architecture; the message says why."""


def _shape(shapes, key, ndim):
    shape = shapes.get(key)
    if shape is None:
        raise _NotIt(f"no {key!r}")
    if len(shape) != ndim:
        raise _NotIt(f"{key!r} has shape {shape}, not {ndim}-D")
    return shape


def _count(shapes, pattern, start=0):
    """How many consecutive i from ``start`` have ``pattern.format(i)`` among the keys."""
    count = 0
    while pattern.format(start + count) in shapes:
        count += 1
    return count


def _stage_widths(shapes, stem, kernel):
    """(stage widths, blocks per stage) of a ResNet with stages layer1..layer4 after a
    ``kernel`` x ``kernel`` stem: each stage as wide as its first block's conv1."""
    if stem[2:] != (kernel, kernel):
        raise _NotIt(f"its stem 'conv1.weight' is {stem[2]}x{stem[3]}, not {kernel}x{kernel}")
    blocks = tuple(_count(shapes, f"layer{stage}.{{}}.conv1.weight") for stage in range(1, 5))
    if not all(blocks) or "layer5.0.conv1.weight" in shapes:
        raise _NotIt(f"stages layer1..layer4 have {blocks} blocks (expected 4 stages)")
    widths = tuple(_shape(shapes, f"layer{stage}.0.conv1.weight", 4)[0] for stage in range(1, 5))
    return widths, blocks


def _stages(shapes, stem, kernel):
    """(width, blocks per stage) of a ResNet whose stages are 1, 2, 4 and 8 times as
    wide as its stem (see _stage_widths)."""
    widths, blocks = _stage_widths(shapes, stem, kernel)
    width = stem[0]
    if widths != tuple(width * 2 ** stage for stage in range(4)):
        raise _NotIt(f"its stages are {widths} wide, not {width} (the stem's) times 1, 2, 4, "
                     f"8, the only widths the paper's models have")
    return width, blocks


def _cifar_resnet18(shapes):
    width, blocks = _stages(shapes, _shape(shapes, "conv1.weight", 4), 3)
    return {"width": width, "blocks": blocks,
            "num_classes": _shape(shapes, "linear.weight", 2)[0]}, {}


def _skinny_resnet18(shapes):
    stem = _shape(shapes, "conv1.weight", 4)
    widths, blocks = _stage_widths(shapes, stem, 3)
    return {"stem": stem[0], "widths": widths, "blocks": blocks,
            "num_classes": _shape(shapes, "linear.weight", 2)[0]}, {}


def _resnet50(shapes):
    _shape(shapes, "layer1.0.conv3.weight", 4)   # Bottleneck blocks, not BasicBlocks
    width, layers = _stages(shapes, _shape(shapes, "conv1.weight", 4), 7)
    return {"width": width, "layers": layers,
            "num_classes": _shape(shapes, "fc.weight", 2)[0]}, {}


def _wide_resnet22(shapes):
    per_stage = _count(shapes, "block1.layer.{}.conv1.weight")
    if not per_stage:
        raise _NotIt("no 'block1.layer.0.conv1.weight'")
    width = _shape(shapes, "block1.layer.0.conv1.weight", 4)[0]
    if width % 16:
        raise _NotIt(f"its first stage is {width} wide, not a multiple of 16")
    return {"depth": 6 * per_stage + 4, "widen_factor": width // 16,
            "num_classes": _shape(shapes, "fc.weight", 2)[0]}, {}


def _mobilenet(name, shapes):
    table = MOBILENET_BLOCKS[name]
    stem = _shape(shapes, "features.0.0.weight", 4)[0]
    blocks = _count(shapes, "features.{}.block.0.0.weight", start=1)
    if not 0 < blocks <= len(table):
        raise _NotIt(f"{blocks} inverted residual blocks, not 1 to {len(table)}")
    classes = _shape(shapes, "classifier.3.weight", 2)[0]
    hidden = _shape(shapes, "classifier.0.weight", 2)[0]
    # make_divisible maps many width multipliers to one set of channels; any of them
    # builds the same model. Candidates: 1, and the stem's and classifier's widths over
    # their table entries.
    sizes = {"width_mult": 1.0, "num_classes": classes}
    if blocks < len(table):
        sizes["blocks"] = blocks
    for width_mult in dict.fromkeys((1.0, hidden / MOBILENET_LAST_CHANNEL[name],
                                     stem / table[0][0])):
        sizes["width_mult"] = width_mult
        if LAYOUTS[name](**sizes) == shapes:
            break
    return sizes, {}


def _vit_b_16(shapes):
    patch = _shape(shapes, "conv_proj.weight", 4)
    hidden, patch_size = patch[0], patch[2]
    if patch[2] != patch[3]:
        raise _NotIt(f"'conv_proj.weight' has a {patch[2]}x{patch[3]} patch, not square")
    tokens = _shape(shapes, "encoder.pos_embedding", 3)[1] - 1
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise _NotIt(f"'encoder.pos_embedding' holds {tokens} patch positions, not a square "
                     f"grid")
    layers = _count(shapes, "encoder.layers.encoder_layer_{}.ln_1.weight")
    mlp = _shape(shapes, "encoder.layers.encoder_layer_0.mlp.0.weight", 2)[0]
    heads = max(1, hidden // VIT_HEAD_SIZE) if hidden % VIT_HEAD_SIZE == 0 else 1
    return {"image_size": side * patch_size, "patch_size": patch_size, "num_layers": layers,
            "num_heads": heads, "hidden_dim": hidden, "mlp_dim": mlp,
            "num_classes": _shape(shapes, "heads.head.weight", 2)[0]}, {
        "num_heads": f"num_heads is not in a state_dict: assumed {heads} (head size "
                     f"{hidden // heads}; ViT-B/16 has 12 heads of 64); another head count "
                     f"computes other attention from the same weights"}


_READERS = {"cifar_resnet18": _cifar_resnet18, "wide_resnet22": _wide_resnet22,
            "resnet50": _resnet50,
            "mobilenet_v3_large": lambda shapes: _mobilenet("mobilenet_v3_large", shapes),
            "mobilenet_v3_small": lambda shapes: _mobilenet("mobilenet_v3_small", shapes),
            "vit_b_16": _vit_b_16, "skinny_resnet18": _skinny_resnet18}
