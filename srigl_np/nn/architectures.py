"""The paper's architectures by name: ``ARCHITECTURES`` (name -> builder),
``build_architecture``, their input shapes and small versions for tests.

    name                builder                       input (INPUT_SHAPES)  reproduces
    cifar_resnet18      resnets.cifar_resnet18        (B, 3, 32, 32)        kuangliu's ResNet-18,
                                                                            as the authors use it
    wide_resnet22       resnets.wide_resnet22         (B, 3, 32, 32)        the authors' WRN-22-2
    resnet50            resnets.resnet50              (B, 3, 224, 224)      torchvision's resnet50
    mobilenet_v3_large  mobilenet.mobilenet_v3_large  (B, 3, 224, 224)      torchvision's
    mobilenet_v3_small  mobilenet.mobilenet_v3_small  (B, 3, 224, 224)      torchvision's
    vit_b_16            vit.vit_b_16                  (B, 3, 224, 224)      torchvision's ViT-B/16

Every builder takes keyword arguments only: ``rng`` (numpy Generator for the weights),
``dtype`` (float32 or float64) and its own size arguments (widths, depths, classes) so
tests build small versions; it returns a ``Sequential`` whose Dropouts hold a Generator
spawned from ``rng``. The model's parameter and buffer names are the PyTorch model's
state_dict keys (BatchNorm's num_batches_tracked aside).

``SMALL_SIZES``: for each name, size arguments and a per-sample input shape of a
version that keeps every kind of block of the full model (ResNet-18's identity and
projection shortcuts, all fifteen and eleven MobileNet blocks at a quarter width, two
ViT encoder layers) and runs forward and backward in well under a second, with no
dropout so that training-mode runs are deterministic.
"""

import numpy as np

from . import mobilenet, resnets, vit

ARCHITECTURES = {
    "cifar_resnet18": resnets.cifar_resnet18,
    "wide_resnet22": resnets.wide_resnet22,
    "resnet50": resnets.resnet50,
    "mobilenet_v3_large": mobilenet.mobilenet_v3_large,
    "mobilenet_v3_small": mobilenet.mobilenet_v3_small,
    "vit_b_16": vit.vit_b_16,
}

INPUT_SHAPES = {"cifar_resnet18": (3, 32, 32), "wide_resnet22": (3, 32, 32),
                "resnet50": (3, 224, 224), "mobilenet_v3_large": (3, 224, 224),
                "mobilenet_v3_small": (3, 224, 224), "vit_b_16": (3, 224, 224)}

SMALL_SIZES = {
    "cifar_resnet18": (dict(width=4, blocks=(2, 1, 1, 1)), (3, 32, 32)),
    "wide_resnet22": (dict(depth=10, widen_factor=1, drop_rate=0.0), (3, 32, 32)),
    "resnet50": (dict(width=4, layers=(2, 1, 1, 1)), (3, 48, 48)),
    "mobilenet_v3_large": (dict(width_mult=0.25, dropout=0.0), (3, 32, 32)),
    "mobilenet_v3_small": (dict(width_mult=0.25, dropout=0.0), (3, 32, 32)),
    "vit_b_16": (dict(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16,
                      mlp_dim=32), (3, 16, 16)),
}


def build_architecture(name, *, rng, dtype=np.float32, **sizes):
    """A freshly initialised ``name`` (a key of ARCHITECTURES) as a Sequential.

    ``sizes``: the builder's own keyword arguments (e.g. width=8, num_classes=10). As
    ``models.build``, the builders give the Dropout layers a Generator spawned from
    ``rng`` (replace it per epoch with ``model.set_rng``).
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"name must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return ARCHITECTURES[name](rng=rng, dtype=dtype, **sizes)
