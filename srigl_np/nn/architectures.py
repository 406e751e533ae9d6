"""The paper's architectures by name: ``ARCHITECTURES`` (name -> builder) and
``build_architecture``.

    name                 builder                    input            reproduces
    cifar_resnet18       resnets.cifar_resnet18     (B, 3, 32, 32)   kuangliu's ResNet-18 (the authors')
    wide_resnet22        resnets.wide_resnet22      (B, 3, 32, 32)   the authors' WRN-22-2
    resnet50             resnets.resnet50           (B, 3, 224, 224) torchvision resnet50
    mobilenet_v3_large   mobilenet.mobilenet_v3_large (B, 3, 224, 224) torchvision's
    mobilenet_v3_small   mobilenet.mobilenet_v3_small (B, 3, 224, 224) torchvision's
    vit_b_16             vit.vit_b_16               (B, 3, 224, 224) torchvision's ViT-B/16

Every builder takes keyword arguments only: ``rng`` (numpy Generator for the weights),
``dtype`` (float32 or float64) and its own size arguments (widths, depths, classes) so
tests build small versions. The model's parameter and buffer names are the PyTorch
model's state_dict keys (BatchNorm's num_batches_tracked aside).
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


def build_architecture(name, *, rng, dtype=np.float32, **sizes):
    """A freshly initialised ``name`` (a key of ARCHITECTURES) as a Sequential.

    ``sizes``: the builder's own keyword arguments (e.g. width=8, num_classes=10). Its
    Dropout layers get a Generator spawned from ``rng`` (replace it per epoch with
    ``model.set_rng``), as ``models.build`` does.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"name must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    model = ARCHITECTURES[name](rng=rng, dtype=dtype, **sizes)
    model.set_rng(rng.spawn(1)[0])
    return model
