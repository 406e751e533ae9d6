"""Imported PyTorch checkpoints onto srigl_np's models: ``to_model(imported)``.

``importing.read_torch_checkpoint`` reads a file into an ``ImportedCheckpoint`` (its model
state, masks and metadata); this module maps that state onto one of our architectures,
parameter by parameter, or says why it cannot. The layouts it knows are listed in
``to_model``; an unknown one keeps its layers for an audit.
"""

import numpy as np

from ..nn import models
from ..nn.layers import Flatten, Linear, ReLU, Sequential
from ..validation import check_float32_range

# MnistNet (rigl_torch/models/mnist.py): (module, weight shape, index in models.build("cnn")).
MNIST_NET = (("conv1", (32, 1, 3, 3), 0), ("conv2", (64, 32, 3, 3), 2),
             ("fc1", (128, 9216), 7), ("fc2", (10, 128), 10))


def to_model(imported, *, rng=None):
    """Our model for ``imported`` -> (Sequential or None, masks, notes).

    MnistNet's state (conv1, conv2, fc1, fc2 with its shapes) maps onto
    ``models.build("cnn")``: conv1 -> "0", conv2 -> "2", fc1 -> "7", fc2 -> "10" (at
    other widths, onto ``models.cnn_layers`` with those widths). A
    stack of Linear layers (keys "<module>.weight"/"<module>.bias" only, 2-D weights
    whose shapes chain in the file's order) maps onto Sequential(Flatten, Linear,
    ReLU, ..., Linear), module i -> index 2i + 1; a state_dict holds no activations,
    so ReLU between the layers is assumed. Weights and biases are copied in as float32;
    ``masks`` is ``imported.masks`` keyed by our parameter names. Any other layout gives
    (None, {}, notes) with a note saying why; its layers stay in
    ``imported.state_dict`` for an audit.

    rng: numpy Generator for the Dropout layers (default: seed 0); the drawn initial
    weights are all overwritten.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    state = imported.state_dict
    key_map, widths, why_not_mnist = _mnist_net_map(state)
    if key_map is not None:
        channels, hidden = widths
        if widths == ((32, 64), 128):
            model, built = models.build("cnn", rng=rng), "models.build('cnn')"
        else:
            model = models.cnn_layers(channels, hidden, rng=rng)
            model.set_rng(rng)
            built = f"the cnn with channels {channels} and {hidden} hidden units"
        notes = [f"MnistNet layout -> {built}: "
                 + ", ".join(f"{module} -> {index}" for module, _, index in MNIST_NET)]
    else:
        modules, why_not_stack = _linear_stack(state)
        if modules is None:
            return None, {}, [f"no srigl_np model for this layout: not MnistNet "
                              f"({why_not_mnist}); not a stack of Linear layers "
                              f"({why_not_stack}); its layers are still in the state_dict"]
        layers, key_map = [Flatten()], {}
        for i, module in enumerate(modules):
            n_out, n_in = state[f"{module}.weight"].shape
            if i:
                layers.append(ReLU(inplace=True))
            key_map[f"{module}.weight"] = f"{len(layers)}.weight"
            if f"{module}.bias" in state:
                key_map[f"{module}.bias"] = f"{len(layers)}.bias"
            layers.append(Linear(n_in, n_out, bias=f"{module}.bias" in state, rng=rng))
        model = Sequential(*layers)
        model.set_rng(rng)
        notes = ["Linear stack -> Sequential(Flatten, Linear, ReLU, ..., Linear): "
                 + ", ".join(f"{module} -> {key_map[module + '.weight'].split('.')[0]}"
                             for module in modules)
                 + "; ReLU between the layers is assumed (a state_dict holds no activations)"]
    model.load_state_dict({
        ours: check_float32_range(f"{imported.path}: {theirs}", state[theirs]).astype(
            np.float32) for theirs, ours in key_map.items()})
    masks = {key_map[key]: mask for key, mask in imported.masks.items()}
    return model, masks, notes


def _mnist_net_map(state):
    """({torch key: our key}, (channels, hidden), None) for MnistNet's state, at its
    widths or narrower/wider ones (conv1 (c1, 1, 3, 3), conv2 (c2, c1, 3, 3), fc1
    (h, 144 c2), fc2 (10, h)), else (None, None, why not)."""
    expected = {}
    for module, shape, index in MNIST_NET:
        expected[f"{module}.weight"] = f"{index}.weight"
        expected[f"{module}.bias"] = f"{index}.bias"
    if set(state) != set(expected):
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        return None, None, f"missing {missing[:4]}, extra {extra[:4]}"
    first, second = state["conv1.weight"].shape[0], state["conv2.weight"].shape[0]
    hidden = state["fc1.weight"].shape[0]
    shapes = {"conv1": (first, 1, 3, 3), "conv2": (second, first, 3, 3),
              "fc1": (hidden, second * 12 * 12), "fc2": (10, hidden)}
    shapes |= {f"{module}.bias": (shape[0],) for module, shape in list(shapes.items())}
    wrong = [f"{key} {state[key].shape} (MnistNet: {shapes[key.removesuffix('.weight')]})"
             for key in expected if state[key].shape != shapes[key.removesuffix(".weight")]]
    if wrong:
        return None, None, "MnistNet's keys with other shapes: " + "; ".join(wrong)
    return expected, ((first, second), hidden), None


def _linear_stack(state):
    """(module names in the file's order, None) when ``state`` is a stack of Linear
    layers whose shapes chain, else (None, why not)."""
    modules = []
    for key in state:
        module, _, param = key.rpartition(".")
        if not module or param not in ("weight", "bias"):
            return None, f"{key!r} is not a layer's weight or bias"
        if module not in modules:
            modules.append(module)
    for module in modules:
        weight, bias = state.get(f"{module}.weight"), state.get(f"{module}.bias")
        if weight is None or weight.ndim != 2:
            found = "no weight" if weight is None else f"a weight of shape {weight.shape}"
            return None, f"{module!r} has {found}, not a 2-D Linear weight"
        if bias is not None and bias.shape != weight.shape[:1]:
            return None, f"{module!r} has bias {bias.shape} for weight {weight.shape}"
    for before, after in zip(modules, modules[1:]):
        n_out, n_in = state[f"{before}.weight"].shape[0], state[f"{after}.weight"].shape[1]
        if n_out != n_in:
            return None, f"{before!r} gives {n_out} outputs but {after!r} takes {n_in} inputs"
    return modules, None
