"""MobileNet-V3 Large and Small (Howard et al., 2019) as torchvision builds them
(``torchvision.models.mobilenet_v3_large`` / ``mobilenet_v3_small``, no dilation, full
tail), with torchvision's state_dict keys as parameter names:

    features.0.0.weight, features.0.1.*              stem: 3x3 conv stride 2, BN, Hardswish
    features.N.block.J.0.weight, ...block.J.1.*      inverted residual N's convolutions
                                                     (1x1 expand, depthwise kxk, 1x1
                                                     project), each Conv + BN [+ act]
    features.N.block.J.fc1.weight, .fc2.*            its squeeze-and-excitation
    features.<last>.0.weight, .1.*                   1x1 conv to 6x channels, BN, Hardswish
    classifier.0.*, classifier.3.*                   Linear, Hardswish, Dropout, Linear

x: (batch, 3, H, W) (224x224 on ImageNet; any size that survives five halvings) ->
logits (batch, num_classes). BatchNorm eps 1e-3, momentum 0.01, as torchvision's.
Channel counts are torchvision's ``_make_divisible(c * width_mult, 8)``; the squeeze
width is ``_make_divisible(expanded // 4, 8)``.

Small versions for tests: ``width_mult`` (0.25 gives 8-240 channels) and ``blocks``,
which keeps only the first ``blocks`` inverted residuals of the configuration (the
last 1x1 conv then reads the last kept block's output). Weights start as every
srigl_np layer does (Kaiming-normal, zero biases, identity BatchNorm).
"""

import numpy as np

from ..validation import positive_int
from .activations import Hardswish
from .blocks import Residual, SqueezeExcite
from .layers import Conv2d, Dropout, Linear, ReLU, Sequential
from .normalization import BatchNorm2d
from .pooling import GlobalAvgPool2d

# (input, kernel, expanded, out, squeeze-excite, activation, stride) per inverted
# residual, before width_mult: torchvision's tables (the paper's Tables 1 and 2).
LARGE = (
    (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1), (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
)
SMALL = (
    (16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1), (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2), (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1),
)
LAST_CHANNEL = {"large": 1280, "small": 1024}   # the classifier's hidden width
BN_EPS, BN_MOMENTUM = 1e-3, 0.01


def make_divisible(value, divisor=8):
    """torchvision's (and TF-slim's) channel rounding: the nearest multiple of
    ``divisor``, at least ``divisor``, and never below 90% of ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_norm_activation(c_in, c_out, kernel, *, stride=1, groups=1, activation, rng,
                         dtype=np.float32):
    """torchvision's Conv2dNormActivation: Conv2d ("0", no bias, padding (k-1)/2),
    BatchNorm2d ("1") and the activation ("2": "RE" ReLU, "HS" Hardswish, None none)."""
    layers = [Conv2d(c_in, c_out, kernel, stride=stride, padding=(kernel - 1) // 2,
                     groups=groups, bias=False, rng=rng, dtype=dtype),
              BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM, dtype=dtype)]
    if activation is not None:
        layers.append(ReLU(inplace=True) if activation == "RE" else Hardswish())
    return Sequential(*layers)


def inverted_residual(c_in, kernel, expanded, c_out, use_se, activation, stride, *, rng,
                      dtype=np.float32):
    """torchvision's InvertedResidual (channels already scaled): "block" holds the 1x1
    expansion (left out when expanded == c_in), the depthwise kxk convolution, the
    squeeze-and-excitation (hard-sigmoid gate) and the linear 1x1 projection; the input
    is added back when stride == 1 and c_in == c_out.
    (batch, c_in, H, W) -> (batch, c_out, H/stride, W/stride)."""
    layers = []
    if expanded != c_in:
        layers.append(conv_norm_activation(c_in, expanded, 1, activation=activation, rng=rng,
                                           dtype=dtype))
    layers.append(conv_norm_activation(expanded, expanded, kernel, stride=stride,
                                       groups=expanded, activation=activation, rng=rng,
                                       dtype=dtype))
    if use_se:
        layers.append(SqueezeExcite(expanded, make_divisible(expanded // 4), rng=rng,
                                    dtype=dtype))
    layers.append(conv_norm_activation(expanded, c_out, 1, activation=None, rng=rng,
                                       dtype=dtype))
    block = Sequential(*layers)
    if stride == 1 and c_in == c_out:
        return Residual(block, body_name="block")
    return Sequential(block, names=["block"])


def _mobilenet_v3(table, last_channel, *, width_mult, num_classes, dropout, blocks, rng,
                  dtype):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if blocks is not None:
        if not 1 <= positive_int("blocks", blocks) <= len(table):
            raise ValueError(f"blocks must be in [1, {len(table)}], got {blocks}")
        table = table[:blocks]
    num_classes = positive_int("num_classes", num_classes)

    def scaled(c):
        return make_divisible(c * width_mult)

    features = [conv_norm_activation(3, scaled(table[0][0]), 3, stride=2, activation="HS",
                                     rng=rng, dtype=dtype)]
    for c_in, kernel, expanded, c_out, use_se, activation, stride in table:
        features.append(inverted_residual(scaled(c_in), kernel, scaled(expanded), scaled(c_out),
                                          use_se, activation, stride, rng=rng, dtype=dtype))
    last_in = scaled(table[-1][3])
    features.append(conv_norm_activation(last_in, 6 * last_in, 1, activation="HS", rng=rng,
                                         dtype=dtype))
    hidden = scaled(last_channel)
    classifier = Sequential(Linear(6 * last_in, hidden, rng=rng, dtype=dtype), Hardswish(),
                            Dropout(dropout), Linear(hidden, num_classes, rng=rng, dtype=dtype))
    model = Sequential(Sequential(*features), GlobalAvgPool2d(), classifier,
                       names=["features", "avgpool", "classifier"])
    model.set_rng(rng.spawn(1)[0])   # the Dropout's masks; replace per epoch with set_rng
    return model


def mobilenet_v3_large(*, width_mult=1.0, num_classes=1000, dropout=0.2, blocks=None, rng,
                       dtype=np.float32):
    """torchvision's ``mobilenet_v3_large(width_mult=...)``: 15 inverted residuals (fewer
    with ``blocks``), classifier 1280*width_mult wide. See the module docstring."""
    return _mobilenet_v3(LARGE, LAST_CHANNEL["large"], width_mult=width_mult,
                         num_classes=num_classes, dropout=dropout, blocks=blocks, rng=rng,
                         dtype=dtype)


def mobilenet_v3_small(*, width_mult=1.0, num_classes=1000, dropout=0.2, blocks=None, rng,
                       dtype=np.float32):
    """torchvision's ``mobilenet_v3_small(width_mult=...)``: 11 inverted residuals (fewer
    with ``blocks``), classifier 1024*width_mult wide. See the module docstring."""
    return _mobilenet_v3(SMALL, LAST_CHANNEL["small"], width_mult=width_mult,
                         num_classes=num_classes, dropout=dropout, blocks=blocks, rng=rng,
                         dtype=dtype)
