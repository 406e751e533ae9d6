"""The paper's architectures imported from files torch itself wrote: bare state_dicts as
the authors publish them (masks from weight != 0; a ``module.`` prefix; ViT's old
``mlp.linear_1``/``mlp.linear_2`` names) and checkpoints in the authors' format (masks
from their pruner). Each test builds a torch.nn reference module at a small size
(tests/torch_models.py), puts constant fan-in masks with ablated neurons and
BatchNorm statistics that are not the identity in, ``torch.save``s it, and reads the
file with our reader (no torch on the reading path): recognition and sizes, masks,
weights, the forward pass, and the audit's numbers. Skips without torch.
"""

import copy
import json

import numpy as np
import pytest

from srigl_np import audit
from srigl_np.formats.importing import read_torch_checkpoint
from srigl_np.formats.model_map import identify, to_model
from srigl_np.nn.architectures import ARCHITECTURES
from strategies import fan_in_mask

torch = pytest.importorskip("torch")
torch_models = pytest.importorskip("torch_models")

SIZES = {
    "cifar_resnet18": {"width": 4, "blocks": (1, 1, 1, 1), "num_classes": 5},
    "wide_resnet22": {"depth": 10, "widen_factor": 1, "num_classes": 5},
    "resnet50": {"width": 4, "layers": (1, 1, 1, 1), "num_classes": 5},
    "mobilenet_v3_large": {"width_mult": 0.25, "num_classes": 5, "blocks": 5},
    "mobilenet_v3_small": {"width_mult": 0.25, "num_classes": 5, "blocks": 4},
    "vit_b_16": {"image_size": 16, "patch_size": 8, "num_layers": 2, "num_heads": 1,
                 "hidden_dim": 16, "mlp_dim": 24, "num_classes": 5},
}
INPUT = {"cifar_resnet18": 32, "wide_resnet22": 32, "resnet50": 32,
         "mobilenet_v3_large": 32, "mobilenet_v3_small": 32, "vit_b_16": 16}
NAMES = [name for name in SIZES if name in ARCHITECTURES and name in torch_models.BUILDERS]
# The builder takes sizes the state does not hold (ViT's head count).
OVERRIDES = {"vit_b_16": {"num_heads": 1}}


def sparse_keys(state):
    return [key for key, value in state.items()
            if key.endswith(("weight", "in_proj_weight")) and value.ndim >= 2]


def masked_module(name, seed=0):
    """(torch module in eval mode, {weight key: mask}, {weight key: k}): every weighted
    layer but the first constant fan-in at about 1/3 of its fan-in with one ablated
    neuron (none where a layer has a single neuron or a fan-in of 1), the first dense;
    BatchNorm statistics and affine parameters random."""
    rng = np.random.default_rng(seed)
    module = torch_models.BUILDERS[name](**SIZES[name]).eval()
    state = module.state_dict()
    masks, k = {}, {}
    keys = sparse_keys(state)
    with torch.no_grad():
        for key in keys[1:]:
            shape = tuple(state[key].shape)
            fan_in = int(np.prod(shape[1:]))
            if fan_in < 2:
                continue
            k[key] = max(1, fan_in // 3)
            ablated = (int(rng.integers(shape[0])),) if shape[0] > 2 else ()
            masks[key] = fan_in_mask(shape, k[key], rng, ablated)
            values = rng.uniform(0.2, 1.0, shape) * np.where(rng.random(shape) < 0.5, -1, 1)
            state[key].copy_(torch.from_numpy((values * masks[key]).astype(np.float32)))
        for key, tensor in state.items():
            if key.endswith("running_var"):
                tensor.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, tensor.shape)))
            elif key.endswith(("running_mean", "bn1.bias", "bn2.bias")):
                tensor.copy_(torch.from_numpy(rng.normal(0, 0.1, tensor.shape)))
    return module, masks, k


def forward_torch(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module", params=NAMES)
def published(request, tmp_path_factory):
    """(name, path of the bare state_dict, module, masks, k), as the authors publish
    ImageNet models: torch.save(model.state_dict())."""
    name = request.param
    module, masks, k = masked_module(name)
    path = tmp_path_factory.mktemp(name) / f"{name}_srigl_sparsity-0.90.pt"
    torch.save(module.state_dict(), path)
    return name, path, module, masks, k


def test_a_bare_state_dict_is_recognised_with_its_sizes(published):
    name, path, _, _, _ = published
    imported = read_torch_checkpoint(path)
    assert (imported.kind, imported.mask_source) == ("state_dict", "zeros")
    layout = identify(imported.state_dict, sizes=OVERRIDES.get(name))
    assert (layout.name, layout.sizes) == (name, SIZES[name])


def test_its_masks_are_the_non_zero_weights_and_its_weights_load(published):
    name, path, module, masks, _ = published
    imported = read_torch_checkpoint(path)
    model, our_masks, notes = to_model(imported, sizes=OVERRIDES.get(name))
    assert model is not None and notes[0].startswith(f"{name} (")
    theirs = torch_models.torch_state(module)
    ours = {**model.named_parameters(), **model.named_buffers()}
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)
    assert set(our_masks) == set(sparse_keys(theirs))   # zeros: every weighted layer
    for key, mask in masks.items():
        np.testing.assert_array_equal(our_masks[key], mask, err_msg=key)
    x = np.random.default_rng(1).standard_normal((2, 3, INPUT[name], INPUT[name]))
    x = x.astype(np.float32)
    np.testing.assert_allclose(model.forward(x, training=False), forward_torch(module, x),
                               rtol=1e-4, atol=1e-4)


def test_the_audit_counts_what_the_masks_hold(published, capsys):
    name, path, module, masks, k = published
    argv = [str(path), "--json", "--expect-constant-fan-in"]
    if name in OVERRIDES:
        argv += ["--arch", name]
    assert audit.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    model = report["model"]
    assert model["name"] == name and model["mask_source"].startswith("weight != 0")
    layers = {layer["layer"]: layer for layer in model["layers"]}
    state = torch_models.torch_state(module)
    assert list(layers) == sparse_keys(state)
    ablated = {key: int((~mask.reshape(mask.shape[0], -1).any(axis=1)).sum())
               for key, mask in masks.items()}
    neurons = sum(state[key].shape[0] for key in layers)
    assert model["neurons"] == neurons
    assert model["active_neurons"] == neurons - sum(ablated.values())
    assert model["active_percent"] == pytest.approx(100 * model["active_neurons"] / neurons)
    for key, layer in layers.items():
        assert layer["k"] == k.get(key, layer["fan_in"]), key
        assert layer["active_neurons"] == state[key].shape[0] - ablated.get(key, 0), key
        assert layer["dense"] == (key not in masks), key
    assert model["constant_fan_in"] and model["not_constant"] == []
    assert model["sparse_layers"] == len(masks)
    assert all(a["claimed"] and a["ok"] for a in report["layers"])


def test_a_ragged_row_fails_the_expected_constant_fan_in_naming_layer_and_row(
        published, tmp_path, capsys):
    name, _, module, masks, k = published
    key = max(masks, key=lambda key: k[key])   # a layer with room for one more weight
    state = {name: tensor.clone() for name, tensor in module.state_dict().items()}
    mask = masks[key].reshape(masks[key].shape[0], -1)
    row = int(np.flatnonzero(mask.any(axis=1))[-1])
    column = int(np.flatnonzero(~mask[row])[0])
    with torch.no_grad():
        state[key].view(mask.shape[0], -1)[row, column] = 0.5
    path = tmp_path / "ragged.pt"
    torch.save(state, path)
    arch = ["--arch", name] if name in OVERRIDES else []
    assert audit.main([str(path), *arch]) == 0   # a bare state_dict claims nothing
    capsys.readouterr()
    assert audit.main([str(path), "--expect-constant-fan-in", *arch]) == 1
    out = capsys.readouterr().out
    assert f"{key}: neuron {row} has {k[key] + 1} active weights, expected fan-in {k[key]}" in out
    assert (f"  {key}: fan-in {k[key]}-{k[key] + 1}; 1 of "
            f"{int(mask.any(axis=1).sum())} active rows are not at k={k[key]} "
            f"(first: row {row})") in out
    summary = out[out.index("\nmodel: "):].splitlines()[1:]   # the per-model lines
    assert summary[0].startswith(f"model: {name} (") and max(map(len, summary)) < 300


@pytest.mark.parametrize("name", [name for name in ("resnet50", "vit_b_16") if name in NAMES])
def test_a_ddp_prefix_and_vits_old_mlp_names_are_read(name, tmp_path):
    module, masks, _ = masked_module(name, seed=2)
    state = {f"module.{key}".replace("mlp.0.", "mlp.linear_1.").replace(
        "mlp.3.", "mlp.linear_2."): tensor for key, tensor in module.state_dict().items()}
    torch.save(state, tmp_path / "ddp.pt")
    imported = read_torch_checkpoint(tmp_path / "ddp.pt")
    assert any("stripped the 'module.' prefix" in note for note in imported.notes)
    assert list(imported.state_dict) == list(module.state_dict())
    if name == "vit_b_16":
        assert any("mlp.linear_1/mlp.linear_2 to mlp.0/mlp.3" in note for note in imported.notes)
    model, our_masks, _ = to_model(imported, sizes=OVERRIDES.get(name))
    assert model is not None
    for key, mask in masks.items():
        np.testing.assert_array_equal(our_masks[key], mask, err_msg=key)


def authors_state(module, masks, dense_allocation=0.1):
    """Checkpoint.get_state() as the authors' training loop saves it (their signature
    entries, the pruner's backward_masks in get_W's order, None for a dense layer)."""
    state = module.state_dict()
    keys = sparse_keys(state)
    return {
        "run_id": "test", "cfg": {"model": {"name": "x"}}, "model": state,
        "optimizer": {"state": {}, "param_groups": []}, "scheduler": None, "scaler": None,
        "pruner": {
            "backward_masks": [torch.from_numpy(masks[key]) if key in masks else None
                               for key in keys],
            "module_names": [key.rsplit(".", 2)[-2] for key in keys],   # leaf names
            "N": [int(state[key].numel()) for key in keys],
            "dense_allocation": dense_allocation,
            "dynamically_ablated_neuron_idx": [[] for _ in keys],
        },
        "epoch": 3, "step": 100, "best_acc": 0.0, "current_acc": 0.0, "is_best": False,
        "checkpoint_dir": "/tmp", "f_name": "checkpoint.pt.tar",
        "best_file_name": "best.pt.tar", "parent_dir": "/tmp",
    }


def test_the_authors_checkpoint_format_takes_its_masks_from_the_pruner(published, tmp_path,
                                                                       capsys):
    name, _, module, masks, k = published
    module = copy.deepcopy(module)
    # A mask that holds a zero weight: only the pruner knows the weight is active.
    key = next(iter(masks))
    weight = module.state_dict()[key]
    position = np.unravel_index(int(np.flatnonzero(masks[key])[0]), masks[key].shape)
    with torch.no_grad():
        weight[position] = 0.0
    path = tmp_path / "checkpoint.pt.tar"
    torch.save(authors_state(module, masks), path)
    imported = read_torch_checkpoint(path)
    assert (imported.kind, imported.mask_source) == ("srigl-authors", "pruner")
    model, our_masks, _ = to_model(imported, sizes=OVERRIDES.get(name))
    assert model is not None and set(our_masks) == set(masks)
    for mask_key, mask in masks.items():
        np.testing.assert_array_equal(our_masks[mask_key], mask, err_msg=mask_key)
    arch = ["--arch", name] if name in OVERRIDES else []
    assert audit.main([str(path), "--json", *arch]) == 0   # the pruner claims constant fan-in
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["name"] == name
    assert report["model"]["mask_source"] == "the authors' pruner (its backward_masks)"
    layer = next(a for a in report["layers"] if a["layer"] == key)
    assert layer["k"] == k[key] and layer["zeros_in_mask"] == 1 and layer["claimed"]
