"""Imported PyTorch checkpoints onto srigl_np's models: ``identify`` and ``to_model``.

``importing.read_torch_checkpoint`` reads a file into an ``ImportedCheckpoint`` (its model
state, masks and metadata); this module says which of our models that state is
(``identify``, from keys and shapes alone, building nothing) and maps the state onto it
(``to_model``), parameter by parameter, or says in one line why it cannot. The layouts:

    the paper's architectures (``layouts.ARCHITECTURE_NAMES``: cifar_resnet18,
        wide_resnet22, resnet50, mobilenet_v3_large, mobilenet_v3_small, vit_b_16),
        recognised with their sizes by ``recognition.recognise`` and built by
        ``nn.architectures.build_architecture``, whose parameter and buffer names are
        the torch keys: the state loads key for key (BatchNorm's num_batches_tracked
        counters dropped)
    "skinny_resnet18" the authors' SkinnyResNet18 where each stage is one width (their
                     fixture's 8/16/16/32): cifar_resnet18's graph at those widths
    "mnist_net"      the authors' MnistNet, onto ``models.build("cnn")`` or its widths
    "linear_stack"   Linear layers whose shapes chain, onto Sequential(Flatten, Linear,
                     ReLU, ..., Linear)

An unknown layout keeps its layers in ``imported.state_dict`` for an audit.
"""

import dataclasses

import numpy as np

from ..nn import models
from ..nn.layers import Flatten, Linear, ReLU, Sequential
from ..validation import check_float32_range
from .layouts import ARCHITECTURE_NAMES, EXTRA_NAMES
from .recognition import Recognition, families, recognise

# MnistNet (rigl_torch/models/mnist.py): (module, weight shape, index in models.build("cnn")).
MNIST_NET = (("conv1", (32, 1, 3, 3), 0), ("conv2", (64, 32, 3, 3), 2),
             ("fc1", (128, 9216), 7), ("fc2", (10, 128), 10))


@dataclasses.dataclass(frozen=True)
class Layout:
    """What ``identify`` found. name: one of ``ARCHITECTURE_NAMES``, "skinny_resnet18",
    "mnist_net", "linear_stack", or None (unknown); sizes: the builder's keyword arguments; notes:
    what was assumed rather than read; why_not: one line when name is None."""
    name: object
    sizes: dict
    notes: tuple = ()
    why_not: object = None

    def describe(self):
        """One line: the model and its sizes, or why there is none."""
        if self.name is None:
            return f"no srigl_np model for this layout, so it cannot be condensed: {self.why_not}"
        return Recognition(self.name, self.sizes).describe()


def identify(state, *, arch=None, sizes=None):
    """The Layout of ``state`` ({torch key: array}, our key names), from its keys and
    shapes alone. arch: one of ARCHITECTURE_NAMES to try alone (the user named it);
    sizes: overrides for what the shapes do not hold (ViT's num_heads)."""
    shapes = {key: value.shape for key, value in state.items()}
    found, why = recognise(shapes, arch=arch, sizes=sizes)
    if found is not None:
        return Layout(found.name, dict(found.sizes), found.notes)
    if arch is not None or families(shapes):   # resembles one: its reason says it all
        return Layout(None, {}, why_not=why)
    key_map, widths, why_not_mnist = _mnist_net_map(state)
    if key_map is not None:
        channels, hidden = widths
        return Layout("mnist_net", {"channels": channels, "hidden": hidden})
    modules, why_not_stack = _linear_stack(state)
    if modules is not None:
        return Layout("linear_stack", {"modules": tuple(modules)})
    return Layout(None, {}, why_not=f"{why}; not MnistNet ({why_not_mnist}); not a stack "
                                    f"of Linear layers ({why_not_stack})")


def to_model(imported, *, arch=None, sizes=None, rng=None):
    """Our model for ``imported`` -> (Sequential or None, masks, notes).

    The state is identified (``identify``; ``arch`` and ``sizes`` as there) and loaded:
    one of the paper's architectures is built at its sizes and takes every parameter
    and BatchNorm statistic under its torch key. MnistNet's state (conv1, conv2, fc1,
    fc2 with its shapes) maps onto ``models.build("cnn")``: conv1 -> "0", conv2 -> "2",
    fc1 -> "7", fc2 -> "10" (at other widths, onto ``models.cnn_layers`` with those
    widths). A stack of Linear layers (keys "<module>.weight"/"<module>.bias" only, 2-D
    weights whose shapes chain in the file's order) maps onto Sequential(Flatten,
    Linear, ReLU, ..., Linear), module i -> index 2i + 1; a state_dict holds no
    activations, so ReLU between the layers is assumed. Weights and statistics are
    copied in as float32; ``masks`` is ``imported.masks`` keyed by our parameter names.
    Any other layout gives (None, {}, [one line saying why]); its layers stay in
    ``imported.state_dict`` for an audit.

    rng: numpy Generator for the initial weights (all overwritten) and the Dropout
    layers (default: seed 0).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    state = imported.state_dict
    layout = identify(state, arch=arch, sizes=sizes)
    if layout.name is None:
        return None, {}, [layout.describe()]
    if layout.name in ARCHITECTURE_NAMES + EXTRA_NAMES:
        return _architecture(imported, layout, rng)
    if layout.name == "mnist_net":
        key_map, widths, _ = _mnist_net_map(state)
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
        modules = layout.sizes["modules"]
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
        ours: _float32(imported.path, theirs, state[theirs]) for theirs, ours in key_map.items()})
    masks = {key_map[key]: mask for key, mask in imported.masks.items()}
    return model, masks, notes


def _architecture(imported, layout, rng):
    """(model, masks, notes) for one of the paper's architectures: built at the layout's
    sizes, every array loaded under its torch key."""
    from ..nn.architectures import ARCHITECTURES, build_architecture

    if layout.name == "skinny_resnet18":
        model = _skinny_resnet18(rng=rng, **layout.sizes)
    elif layout.name not in ARCHITECTURES:
        return None, {}, [f"{layout.describe()}: recognised, but srigl_np builds no "
                          f"{layout.name} yet (it builds {', '.join(ARCHITECTURES)})"]
    else:
        model = build_architecture(layout.name, rng=rng, dtype=np.float32, **layout.sizes)
    state = {key: value for key, value in imported.state_dict.items()
             if not key.endswith("num_batches_tracked")}
    model.load_state_dict({key: _float32(imported.path, key, value)
                           for key, value in state.items()})
    notes = [f"{layout.describe()}: recognised from its keys and shapes, "
             f"{len(state)} arrays loaded under their torch names", *layout.notes]
    return model, dict(imported.masks), notes


def _skinny_resnet18(*, stem, widths, blocks, num_classes, rng):
    """The authors' SkinnyResNet18 with one width per stage: ``cifar_resnet18``'s graph
    and names (nn.resnets' BasicBlocks, stage strides 1, 2, 2, 2, the global mean, their
    avg_pool2d(4) on CIFAR's 4x4 map) at the stem and stage widths its diet left."""
    from ..nn.layers import Conv2d
    from ..nn.normalization import BatchNorm2d
    from ..nn.pooling import GlobalAvgPool2d
    from ..nn.resnets import basic_block

    stages, n_in = [], stem
    for stage, (planes, count) in enumerate(zip(widths, blocks)):
        stage_blocks = []
        for i in range(count):
            stage_blocks.append(basic_block(n_in, planes, 2 if stage and not i else 1, rng=rng))
            n_in = planes
        stages.append(Sequential(*stage_blocks))
    return Sequential(Conv2d(3, stem, 3, padding=1, bias=False, rng=rng), BatchNorm2d(stem),
                      ReLU(inplace=True), *stages, GlobalAvgPool2d(),
                      Linear(n_in, num_classes, rng=rng),
                      names=["conv1", "bn1", "relu", "layer1", "layer2", "layer3", "layer4",
                             "avgpool", "linear"])


def _float32(path, key, value):
    """``value`` as float32, refused (one line naming the key) past float32's range."""
    return check_float32_range(f"{path}: {key}", value).astype(np.float32, copy=False)


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
