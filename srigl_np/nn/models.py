"""The two architectures of the experiments, for x: (batch, 1, 28, 28) images, 10 classes.

mlp: Flatten, Linear(784, 300), ReLU, Linear(300, 100), ReLU, Linear(100, 10)
     (LeNet-300-100, the classic sparse-training MLP).
cnn: Conv2d(1, 32, 3), ReLU, Conv2d(32, 64, 3), ReLU, MaxPool2d(2), Dropout(0.25),
     Flatten, Linear(9216, 128), ReLU, Dropout(0.5), Linear(128, 10)
     (PyTorch's MNIST example network).
"""

import numpy as np

from .layers import Conv2d, Dropout, Flatten, Linear, ReLU, Sequential
from .pooling import MaxPool2d

MODEL_NAMES = ("mlp", "cnn")


def build(name, *, rng, dtype=np.float32, device="cpu"):
    """A freshly initialised model ``name`` (one of MODEL_NAMES) as a Sequential.

    rng: numpy Generator for the weights; the Dropout layers get a Generator spawned
    from it (replace it per epoch with ``model.set_rng``). Same seed, same model.
    ReLUs run in place: each follows a Linear or Conv2d, which keep their input, not
    their output, for the backward pass. The weights are drawn on the host, then the
    model is moved to ``device`` ("cpu", "cuda", "cuda:N"; see ``Sequential.to``), so
    the same seed gives the same initial weights on every device.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if name == "mlp":
        model = Sequential(
            Flatten(),
            Linear(784, 300, rng=rng, dtype=dtype), ReLU(inplace=True),
            Linear(300, 100, rng=rng, dtype=dtype), ReLU(inplace=True),
            Linear(100, 10, rng=rng, dtype=dtype))
    elif name == "cnn":
        model = cnn_layers(rng=rng, dtype=dtype)
    else:
        raise ValueError(f"name must be one of {MODEL_NAMES}, got {name!r}")
    model.set_rng(rng.spawn(1)[0])
    return model.to(device)


def cnn_layers(channels=(32, 64), hidden=128, *, rng, dtype=np.float32):
    """The cnn's layers with ``channels`` convolution outputs and ``hidden`` units (the
    cnn: (32, 64), 128): indices 0 and 2 are the Conv2d, 7 and 10 the Linear layers."""
    first, second = channels
    return Sequential(
        Conv2d(1, first, 3, rng=rng, dtype=dtype), ReLU(inplace=True),
        Conv2d(first, second, 3, rng=rng, dtype=dtype), ReLU(inplace=True),
        MaxPool2d(2), Dropout(0.25),
        Flatten(),
        Linear(second * 12 * 12, hidden, rng=rng, dtype=dtype), ReLU(inplace=True),
        Dropout(0.5),
        Linear(hidden, 10, rng=rng, dtype=dtype))
