"""The paper's residual networks, with the parameter names of the PyTorch models they
reproduce: every key of ``named_parameters()`` and ``named_buffers()`` is a key of that
model's ``state_dict()`` and the reverse, BatchNorm's ``num_batches_tracked`` aside.

    cifar_resnet18   kuangliu's CIFAR ResNet-18, as the SRigL authors train it
                     (rigl_torch/models/resnet.py); x: (batch, 3, 32, 32)
    wide_resnet22    the authors' pre-activation WRN-22-2 (rigl_torch/models/
                     wide_resnet.py, Zagoruyko & Komodakis 2016); x: (batch, 3, 32, 32)
    resnet50         torchvision's ResNet-50 (v1.5: the stride on the 3x3 conv of each
                     bottleneck), the authors' ImageNet model; x: (batch, 3, H, W)

Each builder takes width and depth arguments so tests build small versions of the same
graph, and returns a ``Sequential`` whose blocks are nested ``Sequential``s and
``blocks.Residual``s named as the PyTorch modules are ("layer1.0.conv1.weight").
Weights start as every srigl_np layer starts (Kaiming-normal over the fan-in, zero
biases, BatchNorm at the identity), not with PyTorch's initialisers: a model trained
here or imported from a checkpoint does not depend on them.

The CIFAR models end in F.avg_pool2d(out, 4) (ResNet-18) and F.avg_pool2d(out, 8)
(WRN), which on the 32x32 images they are written for is a mean over the whole last
map: ``GlobalAvgPool2d`` here. On other image sizes the PyTorch models fail or pool
differently; these keep the global mean.
"""

import numpy as np

from ..validation import positive_int
from .activations import LogSoftmax
from .blocks import Residual
from .layers import Conv2d, Dropout, Linear, ReLU, Sequential
from .normalization import BatchNorm2d
from .pooling import GlobalAvgPool2d, MaxPool2d


def _sizes(name, values, length):
    """A tuple of ``length`` positive ints (blocks per stage)."""
    values = tuple(values)
    if len(values) != length:
        raise ValueError(f"{name} must hold {length} block counts, got {values!r}")
    return tuple(positive_int(name, v) for v in values)


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


def _conv(c_in, c_out, kernel, stride, rng, dtype):
    """A bias-free convolution with PyTorch's "same" padding for odd kernels."""
    return Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False,
                  rng=rng, dtype=dtype)


def _projection(c_in, c_out, stride, rng, dtype):
    """The 1x1 strided convolution + BatchNorm shortcut, named "0" and "1"."""
    return Sequential(_conv(c_in, c_out, 1, stride, rng, dtype), BatchNorm2d(c_out, dtype=dtype))


# -- CIFAR ResNet-18 -------------------------------------------------------------------

def basic_block(c_in, planes, stride, *, rng, dtype=np.float32):
    """kuangliu's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), the
    shortcut a 1x1 conv + BN ("shortcut.0", "shortcut.1") where the shape changes.
    (batch, c_in, H, W) -> (batch, planes, H/stride, W/stride)."""
    body = Sequential(_conv(c_in, planes, 3, stride, rng, dtype), BatchNorm2d(planes, dtype=dtype),
                      ReLU(inplace=True),
                      _conv(planes, planes, 3, 1, rng, dtype), BatchNorm2d(planes, dtype=dtype),
                      names=["conv1", "bn1", "relu1", "conv2", "bn2"])
    shortcut = None
    if stride != 1 or c_in != planes:
        shortcut = _projection(c_in, planes, stride, rng, dtype)
    return Sequential(Residual(body, shortcut, body_name="", shortcut_name="shortcut"),
                      ReLU(inplace=True), names=["", "relu"])


def cifar_resnet18(*, width=64, blocks=(2, 2, 2, 2), num_classes=10, rng, dtype=np.float32):
    """kuangliu's CIFAR ResNet-18 (the SRigL authors' ``ResNet(BasicBlock, [2, 2, 2, 2])``).

    x: (batch, 3, 32, 32) -> logits (batch, num_classes). A 3x3 stem (conv1, bn1, relu;
    no max-pool), four stages layer1..layer4 of ``blocks`` BasicBlocks with width,
    2*width, 4*width, 8*width channels (stride 1, 2, 2, 2), the global mean (the
    authors' avg_pool2d(4) on the 4x4 map) and ``linear``. width=64 is the paper's.
    """
    _check_rng(rng)
    width = positive_int("width", width)
    blocks = _sizes("blocks", blocks, 4)
    layers = [_conv(3, width, 3, 1, rng, dtype), BatchNorm2d(width, dtype=dtype),
              ReLU(inplace=True)]
    c_in = width
    for stage, count in enumerate(blocks):
        planes = width * 2 ** stage
        stage_blocks = []
        for i in range(count):
            stage_blocks.append(basic_block(c_in, planes, 2 if stage and not i else 1,
                                            rng=rng, dtype=dtype))
            c_in = planes
        layers.append(Sequential(*stage_blocks))
    layers += [GlobalAvgPool2d(), Linear(c_in, positive_int("num_classes", num_classes),
                                         rng=rng, dtype=dtype)]
    return Sequential(*layers, names=["conv1", "bn1", "relu", "layer1", "layer2", "layer3",
                                      "layer4", "avgpool", "linear"])


# -- WRN-22-2 --------------------------------------------------------------------------

def wide_basic_block(c_in, c_out, stride, drop_rate, *, rng, dtype=np.float32):
    """The authors' pre-activation WRN BasicBlock.

    Same widths (identity shortcut): x + conv2(dropout(relu(bn2(conv1(relu(bn1(x))))))).
    Different widths: with a = relu(bn1(x)), convShortcut(a) + conv2(dropout(relu(bn2(
    conv1(a))))) - the 1x1 shortcut reads the pre-activated input, so bn1 and relu sit
    before the Residual. (batch, c_in, H, W) -> (batch, c_out, H/stride, W/stride).
    """
    pre = [BatchNorm2d(c_in, dtype=dtype), ReLU()]
    body = [_conv(c_in, c_out, 3, stride, rng, dtype), BatchNorm2d(c_out, dtype=dtype),
            ReLU(inplace=True), Dropout(drop_rate), _conv(c_out, c_out, 3, 1, rng, dtype)]
    names = ["conv1", "bn2", "relu2", "dropout", "conv2"]
    if c_in == c_out:
        if stride != 1:
            raise ValueError(f"stride must be 1 where c_in == c_out (an identity shortcut), "
                             f"got {stride}")
        return Residual(Sequential(*pre, *body, names=["bn1", "relu1", *names]), body_name="")
    shortcut = Sequential(Conv2d(c_in, c_out, 1, stride=stride, bias=False, rng=rng,
                                 dtype=dtype), names=["convShortcut"])
    return Sequential(*pre, Residual(Sequential(*body, names=names), shortcut, body_name="",
                                     shortcut_name=""), names=["bn1", "relu1", ""])


def wide_resnet22(*, depth=22, widen_factor=2, num_classes=10, drop_rate=0.3, rng,
                  dtype=np.float32):
    """The authors' WideResNet(depth, widen_factor) (WRN-22-2 by default).

    x: (batch, 3, 32, 32) -> log-probabilities (batch, num_classes): the authors'
    forward ends in log_softmax. conv1 (3 -> 16), block1..block3 (keys
    "block<i>.layer.<j>...") of (depth - 4) / 6 pre-activation blocks with
    16*widen_factor, 32*widen_factor, 64*widen_factor channels (stride 1, 2, 2), then
    bn1, relu, the global mean (their avg_pool2d(8) on the 8x8 map) and ``fc``.
    ``drop_rate``: the dropout inside every block (their dropRate, 0.3).
    """
    _check_rng(rng)
    depth = positive_int("depth", depth)
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"depth must be 6*n + 4 with n >= 1 (10, 16, 22, ...), got {depth}")
    widen_factor = positive_int("widen_factor", widen_factor)
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    per_group = (depth - 4) // 6
    channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    groups = []
    for group, stride in zip(range(3), (1, 2, 2)):
        c_in, c_out = channels[group], channels[group + 1]
        groups.append(Sequential(Sequential(*[
            wide_basic_block(c_in if not i else c_out, c_out, stride if not i else 1,
                             drop_rate, rng=rng, dtype=dtype)
            for i in range(per_group)]), names=["layer"]))
    model = Sequential(Conv2d(3, 16, 3, padding=1, bias=False, rng=rng, dtype=dtype), *groups,
                       BatchNorm2d(channels[3], dtype=dtype), ReLU(inplace=True),
                       GlobalAvgPool2d(),
                       Linear(channels[3], positive_int("num_classes", num_classes), rng=rng,
                              dtype=dtype),
                       LogSoftmax(),
                       names=["conv1", "block1", "block2", "block3", "bn1", "relu", "avgpool",
                              "fc", "log_softmax"])
    model.set_rng(rng.spawn(1)[0])   # the Dropouts' masks; replace per epoch with set_rng
    return model


# -- ResNet-50 -------------------------------------------------------------------------

def bottleneck(c_in, planes, stride, *, rng, dtype=np.float32):
    """torchvision's Bottleneck (expansion 4, stride on conv2): relu(bn3(conv3(relu(bn2(
    conv2(relu(bn1(conv1(x))))))) + downsample(x)), downsample a 1x1 conv + BN
    ("downsample.0", "downsample.1") where the shape changes.
    (batch, c_in, H, W) -> (batch, 4*planes, H/stride, W/stride)."""
    c_out = 4 * planes
    body = Sequential(_conv(c_in, planes, 1, 1, rng, dtype), BatchNorm2d(planes, dtype=dtype),
                      ReLU(inplace=True),
                      _conv(planes, planes, 3, stride, rng, dtype),
                      BatchNorm2d(planes, dtype=dtype), ReLU(inplace=True),
                      _conv(planes, c_out, 1, 1, rng, dtype), BatchNorm2d(c_out, dtype=dtype),
                      names=["conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "conv3", "bn3"])
    downsample = None
    if stride != 1 or c_in != c_out:
        downsample = _projection(c_in, c_out, stride, rng, dtype)
    return Sequential(Residual(body, downsample, body_name="", shortcut_name="downsample"),
                      ReLU(inplace=True), names=["", "relu"])


def resnet50(*, width=64, layers=(3, 4, 6, 3), num_classes=1000, rng, dtype=np.float32):
    """torchvision's ResNet-50 (``torchvision.models.resnet50``), the authors' ImageNet model.

    x: (batch, 3, H, W) (224x224 on ImageNet; any H, W >= 32 that survive the five
    halvings) -> logits (batch, num_classes). Stem conv1 (7x7, stride 2, padding 3), bn1,
    relu, maxpool (3, stride 2, padding 1); layer1..layer4 of ``layers`` bottlenecks
    with width, 2*width, 4*width, 8*width inner channels (4x that out; stride 1, 2, 2, 2
    on the first block's conv2); the global mean ("avgpool") and ``fc``. width=64 is
    torchvision's (its ``width_per_group`` stays 64: the stem and the inner widths scale
    together here).
    """
    _check_rng(rng)
    width = positive_int("width", width)
    layers = _sizes("layers", layers, 4)
    stem = [Conv2d(3, width, 7, stride=2, padding=3, bias=False, rng=rng, dtype=dtype),
            BatchNorm2d(width, dtype=dtype), ReLU(inplace=True), MaxPool2d(3, 2, padding=1)]
    stages = []
    c_in = width
    for stage, count in enumerate(layers):
        planes = width * 2 ** stage
        stage_blocks = []
        for i in range(count):
            stage_blocks.append(bottleneck(c_in, planes, 2 if stage and not i else 1,
                                           rng=rng, dtype=dtype))
            c_in = 4 * planes
        stages.append(Sequential(*stage_blocks))
    return Sequential(*stem, *stages, GlobalAvgPool2d(),
                      Linear(c_in, positive_int("num_classes", num_classes), rng=rng,
                             dtype=dtype),
                      names=["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3",
                             "layer4", "avgpool", "fc"])
