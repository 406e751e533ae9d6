"""Importing PyTorch checkpoints (srigl_np.formats.importing): the SRigL authors' training
checkpoint, bare state_dicts, prune pairs and DDP prefixes map onto our models with
their masks, and every malformed layout is one ValueError naming what is wrong.

The core tests write torch-format files with ``torch_files.write_torch_zip`` (no torch);
the cross-checks against real ``torch.save`` files and torch's forward pass skip
without torch.
"""

import json
import pathlib
import re

import numpy as np
import pytest

from srigl_np.nn import models
from srigl_np.formats.importing import ZEROS_NOTE, ImportedCheckpoint, read_torch_checkpoint
from srigl_np.formats.model_map import MNIST_NET, to_model
from srigl_np.nn.layers import Flatten, Linear, ReLU
from strategies import fan_in_mask
from torch_files import Call, Global, NewObj, write_torch_zip

MODULE_NAMES = [module for module, _, _ in MNIST_NET]
SHAPES = {module: shape for module, shape, _ in MNIST_NET}
OUR_INDEX = {module: index for module, _, index in MNIST_NET}
# ERK at dense_allocation 0.1 leaves MnistNet's conv1 and fc2 dense (the authors'
# _erk_sparsity_dist: their raw densities exceed 1); conv2 and fc1 are sparse, with
# constant fan-in and a few ablated neurons.
FAN_IN = {"conv2": 24, "fc1": 960}
ABLATED = {"conv2": (3, 17), "fc1": (5, 64, 100)}


# The globals a real checkpoint names beside its tensors, as Python's pickler writes
# them: the Hydra config (an omegaconf DictConfig: NEWOBJ, then BUILD with its state) and
# checkpoint_dir (a pathlib.PosixPath: REDUCE over its parts). The reader makes them
# Placeholders and imports neither.
CFG = NewObj(Global("omegaconf.dictconfig", "DictConfig"), (),
             {"_content": {"rigl": {"dense_allocation": 0.1, "const_fan_in": True}}})
CHECKPOINT_DIR = Call(Global("pathlib", "PosixPath"),
                      ("/", "artifacts", "checkpoints", "20240101_3fh2k9xq"))


class DictConfig:
    """Stands in for omegaconf's DictConfig in files torch.save writes (a class of this
    module, which the reader must not import either)."""

    def __init__(self, content):
        self.content = content


def mnist_masks(seed):
    """{module: bool mask or None} in the authors' layer order."""
    rng = np.random.default_rng(seed)
    return {module: (fan_in_mask(SHAPES[module], FAN_IN[module], rng, ABLATED[module])
                     if module in FAN_IN else None)
            for module in MODULE_NAMES}


def mnist_state(seed, masks):
    """MnistNet's state_dict as float32 arrays, weights zero outside their masks."""
    rng = np.random.default_rng(seed)
    state = {}
    for module in MODULE_NAMES:
        shape = SHAPES[module]
        weight = (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
        if masks[module] is not None:
            weight *= masks[module]
        state[f"{module}.weight"] = weight
        state[f"{module}.bias"] = rng.uniform(-0.1, 0.1, shape[0]).astype(np.float32)
    return state


def pruner_state(masks, bool_array=np.asarray, scalar=np.asarray):
    """RigLConstFanScheduler.state_dict() after some RigL steps: every key the authors'
    scheduler keeps (its __dict__ minus model, _logger, optimizer, backward_hook_objects,
    meters, use_sparse_init and W). ``bool_array``/``scalar`` make the tensors (NumPy
    for write_torch_zip, torch for torch.save)."""
    backward_masks = [None if mask is None else bool_array(mask) for mask in masks.values()]
    densities = [1.0 if mask is None else mask.mean() for mask in masks.values()]
    active_neurons = [list(range(SHAPES[m][0])) if mask is None
                      else np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)).tolist()
                      for m, mask in masks.items()]
    return {
        "explored_params": [bool_array(np.ones(SHAPES[m], bool) if mask is None else mask)
                            for m, mask in masks.items()],
        "static_ablation": False, "dynamic_ablation": True,
        "filter_ablation_threshold": None, "erk_power_scale": 1.0, "delta_T": 100,
        "alpha": 0.3, "T_end": 10_500, "dense_allocation": 0.1,
        "min_salient_weights_per_neuron": 0.3, "init_method_str": "grad_flow_init",
        "use_sparse_const_fan_in_for_ablation": True, "keep_first_layer_dense": False,
        "initialize_grown_weights": 0, "no_ablation_module_names": [],
        "_linear_layers_mask": [0, 0, 1, 1], "_mha_layers_mask": [0, 0, 0, 0],
        "module_names": list(MODULE_NAMES),
        "N": [int(np.prod(SHAPES[m])) for m in MODULE_NAMES],
        "_max_inactive_weights": [0.0, 0.0, 0.0, 0.0],
        "sparsity_distribution": "erk", "static_topo": 0, "grad_accumulation_n": 1,
        "ignore_linear_layers": False, "ignore_mha_layers": False,
        "backward_masks": backward_masks,
        "S": [0.0 if mask is None else float(1 - d) for mask, d in zip(masks.values(), densities)],
        "static_ablated_filters": [0, 0, 0, 0],
        "step": 1400, "rigl_steps": 14, "itop_rs": scalar(np.float32(0.23)),
        "active_neurons": active_neurons,
        "active_neuron_count": sum(len(ids) for ids in active_neurons),
        "ablated_filters": [[0, scalar(np.int64(len(ABLATED["conv2"]))),
                             scalar(np.int64(len(ABLATED["fc1"]))), 0]],
        "dynamically_ablated_neuron_idx": [[], list(ABLATED["conv2"]), list(ABLATED["fc1"]), []],
        "_min_sal_per_layer": [7, 288],
    }


def authors_checkpoint(model_state, pruner, optimizer=None, scheduler=None, scaler=None, *,
                       cfg=CFG, checkpoint_dir=CHECKPOINT_DIR):
    """The dict Checkpoint.get_state() saves (rigl_torch/utils/checkpoint.py)."""
    return {
        "run_id": "3fh2k9xq",
        "cfg": cfg,
        "model": model_state,
        "optimizer": optimizer if optimizer is not None else {
            "state": {}, "param_groups": [{"lr": 1.0, "rho": 0.9, "eps": 1e-6,
                                           "weight_decay": 0, "params": list(range(8))}]},
        "scheduler": scheduler if scheduler is not None else {
            "T_max": 14, "eta_min": 0, "base_lrs": [1.0], "last_epoch": 3,
            "_step_count": 4, "_last_lr": [0.9]},
        "scaler": scaler if scaler is not None else {},
        "pruner": pruner,
        "epoch": 3, "step": 1400, "best_acc": 98.5, "current_acc": 98.5, "is_best": True,
        "checkpoint_dir": checkpoint_dir,
        "f_name": "checkpoint.pt.tar", "best_file_name": "best-checkpoint.pt.tar",
        "parent_dir": "/artifacts/checkpoints",
    }


@pytest.fixture(scope="module")
def mnist():
    """(masks, state) of a sparse MnistNet, shared read-only by the tests."""
    masks = mnist_masks(0)
    return masks, mnist_state(1, masks)


def write(tmp_path, obj, name="checkpoint.pt.tar"):
    path = tmp_path / name
    write_torch_zip(path, obj)
    return path


def read_authors(tmp_path, model_state, masks):
    """read_torch_checkpoint of the authors' checkpoint of ``model_state`` and ``masks``."""
    return read_torch_checkpoint(write(tmp_path, authors_checkpoint(model_state,
                                                                    pruner_state(masks))))


def check_cnn(model, our_masks, state, masks):
    """``model`` holds ``state`` (float32) under our names; ``our_masks`` are ``masks``'."""
    params = model.named_parameters()
    for module in MODULE_NAMES:
        index = OUR_INDEX[module]
        for param in ("weight", "bias"):
            assert params[f"{index}.{param}"].dtype == np.float32
            np.testing.assert_array_equal(params[f"{index}.{param}"], state[f"{module}.{param}"])
    expected = {f"{OUR_INDEX[m]}.weight": mask for m, mask in masks.items() if mask is not None}
    assert sorted(our_masks) == sorted(expected)
    for key, mask in expected.items():
        assert our_masks[key].dtype == np.bool_
        np.testing.assert_array_equal(our_masks[key], mask)


# -- the authors' training checkpoint, written without torch ------------------------------

def test_authors_checkpoint_imports_masks_and_meta(tmp_path, mnist):
    masks, state = mnist
    path = write(tmp_path, authors_checkpoint(state, pruner_state(masks)))
    imported = read_torch_checkpoint(path)

    assert isinstance(imported, ImportedCheckpoint)
    assert imported.path == str(path)
    assert (imported.kind, imported.mask_source) == ("srigl-authors", "pruner")
    assert list(imported.state_dict) == list(state)
    for key, value in state.items():
        np.testing.assert_array_equal(imported.state_dict[key], value)
    assert sorted(imported.masks) == ["conv2.weight", "fc1.weight"]
    for module in FAN_IN:
        np.testing.assert_array_equal(imported.masks[f"{module}.weight"], masks[module])
    meta = imported.meta
    assert meta["dense_layers"] == ["conv1.weight", "fc2.weight"]
    assert (meta["epoch"], meta["step"], meta["pruner_step"]) == (3, 1400, 1400)
    assert meta["dense_allocation"] == 0.1
    assert meta["module_names"] == MODULE_NAMES
    assert meta["S"][0] == 0.0 and meta["S"][3] == 0.0 and 0.8 < meta["S"][2] < 1
    assert meta["pruner_class"] == "RigLConstFanScheduler"
    assert meta["dynamically_ablated"] == [0, 2, 3, 0]
    assert meta["itop_rs"] == pytest.approx(0.23)
    assert "backward_masks" in meta["pruner_keys"] and "_min_sal_per_layer" in meta["pruner_keys"]
    # Placeholders are summarised by their class, never imported.
    assert meta["cfg"] == "omegaconf.dictconfig.DictConfig"
    assert meta["checkpoint_dir"] == "/artifacts/checkpoints/20240101_3fh2k9xq"  # its parts
    assert meta["optimizer"]["param_groups"][0]["lr"] == 1.0
    assert meta["scheduler"]["last_epoch"] == 3
    assert meta["fan_in"] == {"conv2.weight": [24, 24], "fc1.weight": [960, 960]}
    assert meta["ablated"] == {"conv2.weight": 2, "fc1.weight": 3}
    assert any("SRigL authors'" in note for note in imported.notes)


def test_authors_checkpoint_maps_onto_the_cnn(tmp_path, mnist):
    masks, state = mnist
    imported = read_authors(tmp_path, state, masks)
    model, our_masks, notes = to_model(imported)

    assert repr(model) == repr(models.build("cnn", rng=np.random.default_rng(0)))
    check_cnn(model, our_masks, state, masks)
    assert any("MnistNet" in note for note in notes)
    x = np.random.default_rng(2).standard_normal((2, 1, 28, 28)).astype(np.float32)
    assert model.forward(x, training=False).shape == (2, 10)


def test_ddp_prefixes_are_stripped(tmp_path, mnist):
    masks, state = mnist
    prefixed = {f"module.{key}": value for key, value in state.items()}
    imported = read_authors(tmp_path, prefixed, masks)

    assert list(imported.state_dict) == list(state)
    assert sorted(imported.masks) == ["conv2.weight", "fc1.weight"]
    assert any("'module.'" in note for note in imported.notes)
    model, our_masks, _ = to_model(imported)
    check_cnn(model, our_masks, state, masks)


def test_weights_outside_the_mask_are_kept_and_noted(tmp_path, mnist):
    masks, state = mnist
    state = dict(state, **{"fc1.weight": state["fc1.weight"].copy()})
    outside = np.argwhere(~masks["fc1"])[:3]
    state["fc1.weight"][tuple(outside.T)] = 0.5
    imported = read_authors(tmp_path, state, masks)
    assert ("non-zero weights outside their mask (kept as stored): {'fc1.weight': 3}"
            in imported.notes)
    np.testing.assert_array_equal(imported.state_dict["fc1.weight"], state["fc1.weight"])


def test_dense_run_without_pruner_infers_masks_from_zeros(tmp_path, mnist):
    _, state = mnist
    imported = read_torch_checkpoint(write(tmp_path, authors_checkpoint(state, None)))
    assert (imported.kind, imported.mask_source) == ("srigl-authors", "zeros")
    assert any("pruner is None" in note for note in imported.notes)
    assert ZEROS_NOTE in imported.notes


def test_masks_without_module_names_match_weighted_layers_in_order(tmp_path, mnist):
    masks, state = mnist
    pruner = pruner_state(masks)
    del pruner["module_names"]
    imported = read_torch_checkpoint(write(tmp_path, authors_checkpoint(state, pruner)))
    assert sorted(imported.masks) == ["conv2.weight", "fc1.weight"]
    np.testing.assert_array_equal(imported.masks["fc1.weight"], masks["fc1"])


def test_module_names_are_leaf_names_matched_in_walk_order(tmp_path):
    # A nested model: two modules with the leaf name "conv" and a BatchNorm2d between
    # them (its 1-D weight is not a weighted layer for the authors; N[i] tells them apart).
    rng = np.random.default_rng(3)
    state = {"block1.conv.weight": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
             "block1.bn.weight": np.ones(4, np.float32),
             "block1.bn.running_mean": np.zeros(4, np.float32),
             "block2.conv.weight": rng.standard_normal((6, 4, 3, 3)).astype(np.float32),
             "head.weight": rng.standard_normal((3, 6)).astype(np.float32)}
    mask = fan_in_mask((6, 4, 3, 3), 9, rng)
    state["block2.conv.weight"] *= mask
    pruner = {"backward_masks": [None, mask, None], "module_names": ["conv", "conv", "head"],
              "N": [72, 216, 18], "S": [0.0, 0.75, 0.0], "dense_allocation": 0.5, "step": 7}
    imported = read_torch_checkpoint(write(tmp_path, authors_checkpoint(state, pruner)))
    assert list(imported.masks) == ["block2.conv.weight"]
    assert imported.meta["dense_layers"] == ["block1.conv.weight", "head.weight"]
    assert imported.meta["pruner_class"] == "RigLScheduler"
    model, our_masks, notes = to_model(imported)
    assert model is None and our_masks == {}
    assert "no srigl_np model" in notes[0]


# -- bare state_dicts, prune pairs, wrappers ---------------------------------------------

def test_bare_state_dict_infers_masks_from_zeros(tmp_path, mnist):
    masks, state = mnist
    imported = read_torch_checkpoint(write(tmp_path, state, "model.pt"))

    assert (imported.kind, imported.mask_source) == ("state_dict", "zeros")
    assert ZEROS_NOTE in imported.notes
    assert sorted(imported.masks) == sorted(f"{m}.weight" for m in MODULE_NAMES)
    for module in MODULE_NAMES:
        np.testing.assert_array_equal(imported.masks[f"{module}.weight"],
                                      state[f"{module}.weight"] != 0)
    # Random float32 weights are never exactly zero, so the inferred masks are the masks.
    np.testing.assert_array_equal(imported.masks["conv2.weight"], masks["conv2"])
    assert imported.masks["conv1.weight"].all()
    model, our_masks, _ = to_model(imported)
    assert sorted(our_masks) == ["0.weight", "10.weight", "2.weight", "7.weight"]


def test_prune_pairs_give_orig_times_mask(tmp_path, mnist):
    masks, state = mnist
    rng = np.random.default_rng(4)
    pruned = {}
    for key, value in state.items():
        if key in ("conv2.weight", "fc1.weight"):
            orig = rng.standard_normal(value.shape).astype(np.float32)
            pruned[key + "_orig"] = orig
            pruned[key + "_mask"] = masks[key.split(".")[0]].astype(np.float32)
        else:
            pruned[key] = value
    imported = read_torch_checkpoint(write(tmp_path, pruned, "pruned.pt"))

    assert (imported.kind, imported.mask_source) == ("state_dict", "weight_mask")
    assert list(imported.state_dict) == list(state)   # each pair at its place
    for key in ("conv2.weight", "fc1.weight"):
        np.testing.assert_array_equal(imported.state_dict[key],
                                      pruned[key + "_orig"] * pruned[key + "_mask"])
        np.testing.assert_array_equal(imported.masks[key], masks[key.split(".")[0]])
    model, our_masks, _ = to_model(imported)
    assert sorted(our_masks) == ["2.weight", "7.weight"]
    np.testing.assert_array_equal(model.named_parameters()["7.weight"],
                                  imported.state_dict["fc1.weight"])


def test_wrapped_state_dict(tmp_path, mnist):
    _, state = mnist
    imported = read_torch_checkpoint(
        write(tmp_path, {"state_dict": state, "epoch": 5, "note": "x"}))
    assert imported.kind == "wrapped-state-dict"
    assert list(imported.state_dict) == list(state)
    assert any("'state_dict' entry" in note for note in imported.notes)


# -- mapping onto our models --------------------------------------------------------------

@pytest.mark.parametrize("names", [("fc1", "fc2", "fc3"), ("layers.0", "layers.2", "layers.4")])
def test_linear_stack_maps_onto_an_mlp(tmp_path, names):
    rng = np.random.default_rng(5)
    sizes = (784, 300, 100, 10)
    state = {}
    for name, n_in, n_out in zip(names, sizes, sizes[1:]):
        state[f"{name}.weight"] = rng.standard_normal((n_out, n_in)).astype(np.float32) * 0.05
        state[f"{name}.bias"] = rng.uniform(-0.1, 0.1, n_out).astype(np.float32)
    state[f"{names[1]}.weight"] *= fan_in_mask((100, 300), 30, rng)
    imported = read_torch_checkpoint(write(tmp_path, state, "mlp.pt"))
    model, our_masks, notes = to_model(imported)

    assert [type(layer) for layer in model.layers] == [Flatten, Linear, ReLU, Linear, ReLU,
                                                       Linear]
    assert sorted(our_masks) == ["1.weight", "3.weight", "5.weight"]
    np.testing.assert_array_equal(our_masks["3.weight"], state[f"{names[1]}.weight"] != 0)
    assert "ReLU between the layers is assumed" in notes[0]
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    h = x.reshape(3, -1)
    for i, name in enumerate(names):
        h = h @ state[f"{name}.weight"].T + state[f"{name}.bias"]
        if i < len(names) - 1:
            h = np.maximum(h, 0)
    np.testing.assert_allclose(model.forward(x, training=False), h, rtol=1e-5, atol=1e-5)


def test_linear_stack_without_biases(tmp_path):
    rng = np.random.default_rng(6)
    state = {"a.weight": rng.standard_normal((5, 8)).astype(np.float32),
             "b.weight": rng.standard_normal((2, 5)).astype(np.float32)}
    model, _, _ = to_model(read_torch_checkpoint(write(tmp_path, state, "mlp.pt")))
    assert sorted(model.named_parameters()) == ["1.weight", "3.weight"]


@pytest.mark.parametrize("case, reason", [
    ("batchnorm", "'bn.running_mean' is not a layer's weight or bias"),
    # conv1 sets the width: its bias and conv2 no longer fit it.
    ("mnist_shapes", "MnistNet's keys with other shapes: conv1.bias (32,) (MnistNet: (16,))"),
    ("broken_chain", "'fc1' gives 20 outputs but 'fc2' takes 30 inputs"),
])
def test_unknown_architecture_gives_none_and_a_note(tmp_path, mnist, case, reason):
    rng = np.random.default_rng(7)
    if case == "batchnorm":
        state = {"conv.weight": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
                 "bn.weight": np.ones(4, np.float32),
                 "bn.running_mean": np.zeros(4, np.float32)}
    elif case == "mnist_shapes":
        state = dict(mnist[1])
        state["conv1.weight"] = rng.standard_normal((16, 1, 3, 3)).astype(np.float32)
    else:
        state = {"fc1.weight": rng.standard_normal((20, 10)).astype(np.float32),
                 "fc2.weight": rng.standard_normal((5, 30)).astype(np.float32)}
    imported = read_torch_checkpoint(write(tmp_path, state, "other.pt"))
    model, our_masks, notes = to_model(imported)
    assert model is None and our_masks == {}
    assert len(notes) == 1 and reason in notes[0]
    assert list(imported.state_dict) == list(state)   # still there for an audit


# -- malformed layouts: one clear ValueError each ------------------------------------------

def _shape_mismatch(ckpt):
    ckpt["pruner"]["backward_masks"][1] = ckpt["pruner"]["backward_masks"][1].reshape(64, 32, 9)


def _missing_weight(ckpt):
    del ckpt["model"]["fc1.weight"]


def _fewer_module_names(ckpt):
    ckpt["pruner"]["module_names"] = ["conv1", "conv2", "fc1"]


def _module_names_not_a_list(ckpt):
    ckpt["pruner"]["module_names"] = "conv1 conv2 fc1 fc2"


def _no_names_fewer_masks(ckpt):
    del ckpt["pruner"]["module_names"]
    del ckpt["pruner"]["N"]
    ckpt["pruner"]["backward_masks"] = ckpt["pruner"]["backward_masks"][:3]


def _wrong_numel(ckpt):
    ckpt["pruner"]["N"][1] = 99


def _no_backward_masks(ckpt):
    del ckpt["pruner"]["backward_masks"]


def _non_binary_mask(ckpt):
    ckpt["pruner"]["backward_masks"][2] = np.full((128, 9216), 0.5, np.float32)


def _pruner_not_a_dict(ckpt):
    ckpt["pruner"] = NewObj(Global("rigl_torch.rigl_constant_fan", "RigLConstFanScheduler"))


def _no_model(ckpt):
    del ckpt["model"]


def _model_not_a_state(ckpt):
    ckpt["model"]["fc2.bias"] = "zeros"


@pytest.mark.parametrize("corrupt, message", [
    (_shape_mismatch, r"backward_masks\[1\] \(layer 'conv2', weight 'conv2.weight'\) has "
                      r"shape \(64, 32, 9\), the weight \(64, 32, 3, 3\)"),
    (_missing_weight, r"pruner layer 2 \('fc1'\) has no weight in the model state"),
    (_fewer_module_names, r"the pruner has 4 backward_masks but 3 module_names"),
    (_module_names_not_a_list, r"the pruner's module_names must be a list of names, found str"),
    (_no_names_fewer_masks, r"the pruner has 3 backward_masks but the model state has 4 "
                            r"weighted layers"),
    (_wrong_numel, r"pruner N\[1\] = 99 but 'conv2.weight' \(layer 1, 'conv2'\) has 18432 "
                   r"elements"),
    (_no_backward_masks, r"the pruner state has no backward_masks list"),
    (_non_binary_mask, r"backward_masks\[2\] must hold only 0 and 1"),
    (_pruner_not_a_dict, r"the 'pruner' entry must be the RigLScheduler state_dict"),
    (_no_model, r"looks like a training checkpoint .* has no 'model' entry: no weights"),
    (_model_not_a_state, r"model state entry 'fc2.bias' must be a tensor, found str"),
])
def test_malformed_authors_checkpoint_is_refused(tmp_path, mnist, corrupt, message):
    masks, state = mnist
    ckpt = authors_checkpoint(dict(state), pruner_state(masks))
    corrupt(ckpt)
    path = write(tmp_path, ckpt)
    with pytest.raises(ValueError, match=message) as error:
        read_torch_checkpoint(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("obj, message", [
    (np.zeros((3, 3), np.float32), r"not a checkpoint: expected a dict .* found a float32 tensor"),
    ([np.zeros(3, np.float32)], r"not a checkpoint: expected a dict .* found a list of 1 items"),
    ({"foo": 1, "bar": "x"}, r"not a checkpoint this reader knows: a dict with keys "
                             r"\['foo', 'bar'\]"),
    ({"weights": {"a": "b"}, "epoch": 2}, r"not a checkpoint this reader knows"),
    ({"fc.weight_orig": np.ones((2, 2), np.float32)}, r"prune pair incomplete: "
                                                      r"'fc.weight_orig' has no 'fc.weight_mask'"),
    ({"fc.weight_orig": np.ones((2, 2), np.float32),
      "fc.weight_mask": np.ones((2, 3), np.float32)}, r"'fc.weight_mask' has shape \(2, 3\)"),
])
def test_not_a_checkpoint_is_refused(tmp_path, obj, message):
    path = write(tmp_path, obj, "thing.pt")
    with pytest.raises(ValueError, match=message) as error:
        read_torch_checkpoint(path)
    assert str(path) in str(error.value)


def test_a_file_that_is_not_a_torch_zip_is_refused(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a zip file at all" * 10)
    with pytest.raises(ValueError):
        read_torch_checkpoint(path)


# -- cross-checks against real torch files --------------------------------------------------

def torch_mnist_net(torch):
    """The authors' MnistNet (rigl_torch/models/mnist.py), rebuilt here."""
    nn, functional = torch.nn, torch.nn.functional

    class MnistNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, 1)
            self.conv2 = nn.Conv2d(32, 64, 3, 1)
            self.dropout1 = nn.Dropout(0.25)
            self.dropout2 = nn.Dropout(0.5)
            self.fc1 = nn.Linear(9216, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = functional.relu(self.conv2(functional.relu(self.conv1(x))))
            x = self.dropout1(functional.max_pool2d(x, 2))
            x = functional.relu(self.fc1(torch.flatten(x, 1)))
            return self.fc2(self.dropout2(x))

    return MnistNet()


def trained_sparse_mnist_net(torch, masks):
    """A MnistNet masked like the authors' pruner, after one masked SGD step; with its
    optimizer and scheduler."""
    torch.manual_seed(0)
    net = torch_mnist_net(torch)
    weights = {m: getattr(net, m).weight for m in MODULE_NAMES}
    torch_masks = {m: torch.from_numpy(mask) for m, mask in masks.items() if mask is not None}
    with torch.no_grad():
        for module, mask in torch_masks.items():
            weights[module] *= mask
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    x = torch.randn(8, 1, 28, 28)
    loss = torch.nn.functional.cross_entropy(net(x), torch.randint(0, 10, (8,)))
    loss.backward()
    with torch.no_grad():
        for module, mask in torch_masks.items():
            weights[module].grad *= mask
    optimizer.step()
    with torch.no_grad():
        for module, mask in torch_masks.items():
            weights[module] *= mask
    scheduler.step()
    return net.eval(), optimizer, scheduler


def assert_same_logits(torch, net, model):
    x = np.random.default_rng(8).standard_normal((4, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(x)).numpy()
    ours = model.forward(x, training=False)
    assert np.max(np.abs(ours - expected)) <= 1e-4


@pytest.mark.parametrize("ddp", [False, True])
def test_torch_saved_authors_checkpoint_matches_torch_forward(tmp_path, ddp):
    torch = pytest.importorskip("torch")
    masks = mnist_masks(9)
    net, optimizer, scheduler = trained_sparse_mnist_net(torch, masks)
    model_state = net.state_dict()
    if ddp:
        model_state = type(model_state)((f"module.{k}", v) for k, v in model_state.items())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    pruner = pruner_state(masks, bool_array=torch.from_numpy, scalar=torch.tensor)
    ckpt = authors_checkpoint(
        model_state, pruner, optimizer.state_dict(), scheduler.state_dict(),
        scaler.state_dict(), cfg=DictConfig({"rigl": {"dense_allocation": 0.1}}),
        checkpoint_dir=pathlib.PosixPath("/artifacts/checkpoints/20240101_3fh2k9xq"))
    path = tmp_path / "checkpoint.pt.tar"
    torch.save(ckpt, path)

    imported = read_torch_checkpoint(path)
    assert (imported.kind, imported.mask_source) == ("srigl-authors", "pruner")
    assert imported.meta["optimizer"]["state_entries"] == 8
    assert imported.meta["scheduler"]["last_epoch"] == 1
    assert imported.meta["cfg"].endswith(".DictConfig")
    # pathlib is never imported: the path is its pickled parts, joined.
    assert imported.meta["checkpoint_dir"] == "/artifacts/checkpoints/20240101_3fh2k9xq"
    model, our_masks, _ = to_model(imported)
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    check_cnn(model, our_masks, state, masks)
    assert_same_logits(torch, net, model)


def test_torch_pruned_state_dict_matches_torch_forward(tmp_path):
    torch = pytest.importorskip("torch")
    prune = pytest.importorskip("torch.nn.utils.prune")
    torch.manual_seed(1)
    net = torch_mnist_net(torch)
    prune.l1_unstructured(net.fc1, "weight", amount=0.9)
    prune.random_unstructured(net.conv2, "weight", amount=0.5)
    path = tmp_path / "pruned.pt"
    torch.save(net.state_dict(), path)

    imported = read_torch_checkpoint(path)
    assert imported.mask_source == "weight_mask"
    for module in ("fc1", "conv2"):
        np.testing.assert_array_equal(imported.masks[f"{module}.weight"],
                                      getattr(net, module).weight_mask.numpy() != 0)
        np.testing.assert_array_equal(imported.state_dict[f"{module}.weight"],
                                      getattr(net, module).weight.detach().numpy())
    model, our_masks, _ = to_model(imported)
    assert sorted(our_masks) == ["2.weight", "7.weight"]
    assert_same_logits(torch, net, model)


def test_torch_mlp_matches_torch_forward(tmp_path):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100),
                        nn.ReLU(), nn.Linear(100, 10))
    path = tmp_path / "mlp.pt"
    torch.save(net.state_dict(), path)

    model, our_masks, _ = to_model(read_torch_checkpoint(path))
    assert sorted(our_masks) == ["1.weight", "3.weight", "5.weight"]
    assert_same_logits(torch, net, model)


def _shared_chain(depth):
    """(x, x) nested ``depth`` deep: a pickle of a few bytes per level whose spelled-out
    tree has 2**depth leaves."""
    value = []
    for _ in range(depth):
        value = (value, value)
    return value


def _self_containing(n):
    value = []
    value.extend([value] * n)
    return value


@pytest.mark.parametrize("epoch", [_shared_chain(40), _self_containing(9000),
                                   [list(range(5000))] * 5000])
def test_metadata_summaries_are_bounded(tmp_path, epoch):
    """A training checkpoint's plain entries are summarised for the report: a shared chain
    took 2**depth steps (a hang), a list holding itself a RecursionError traceback, a list
    of one list shared 5,000 times 25 million values."""
    import json
    import time
    path = write_torch_zip(tmp_path / "c.pt", {"model": {"fc.weight": np.ones((2, 3),
                                                                             np.float32)},
                                               "epoch": epoch, "step": 7})
    start = time.perf_counter()
    imported = read_torch_checkpoint(path)
    assert time.perf_counter() - start < 5 and imported.meta["step"] == 7
    assert len(json.dumps(imported.meta)) < 2_000_000
    assert " items>" in json.dumps(imported.meta["epoch"])


# -- other programs' checkpoints: named by what they hold, their masks used -------------

def linear_stack(seed):
    """({name: weight/bias}, {weight key: mask}) of Linear(10, 20), Linear(20, 5) with
    constant fan-in masks; the weights are zero outside their masks."""
    rng = np.random.default_rng(seed)
    masks = {"fc1.weight": fan_in_mask((20, 10), 3, rng),
             "fc2.weight": fan_in_mask((5, 20), 4, rng)}
    state = {}
    for key, mask in masks.items():
        state[key] = (rng.standard_normal(mask.shape) * mask).astype(np.float32)
        state[key.replace("weight", "bias")] = np.zeros(mask.shape[0], np.float32)
    return state, masks


TRAINING = {"optimizer": {"state": {}, "param_groups": []}, "epoch": 4}


@pytest.mark.parametrize("layout", ["masks_dict", "masks_by_module", "masks_list",
                                    "mask_entry", "top_level", "buffers", "wrapped"])
def test_masks_saved_beside_the_model_are_used(tmp_path, layout):
    state, masks = linear_stack(1)
    as_ints = {key: mask.astype(np.uint8) for key, mask in masks.items()}
    checkpoint = {
        "masks_dict": {"model": state, **TRAINING, "masks": masks},
        "masks_by_module": {"model": state, **TRAINING,
                            "masks": {"module.fc1": as_ints["fc1.weight"],
                                      "fc2": as_ints["fc2.weight"]}},
        "masks_list": {"model": state, **TRAINING, "masks": list(masks.values())},
        "mask_entry": {"model": state, **TRAINING, "mask": masks},
        "top_level": {"model": state, **TRAINING,
                      **{f"{key}_mask": mask for key, mask in masks.items()}},
        "buffers": {**state, **{f"{key}_mask": mask for key, mask in as_ints.items()}},
        "wrapped": {"state_dict": state, "masks": masks},
    }[layout]
    imported = read_torch_checkpoint(write(tmp_path, checkpoint))
    assert imported.mask_source == "masks"
    assert imported.masks.keys() == masks.keys()
    for key, mask in masks.items():
        np.testing.assert_array_equal(imported.masks[key], mask)
    assert list(imported.state_dict) == list(state)   # buffers are not layers
    expected_kind = {"buffers": "state_dict", "wrapped": "wrapped-state-dict"}.get(
        layout, "training-checkpoint")
    assert imported.kind == expected_kind
    assert not any("SRigL authors'" in note or "dense run" in note for note in imported.notes)
    model, our_masks, _ = to_model(imported)
    np.testing.assert_array_equal(our_masks["1.weight"], masks["fc1.weight"])


def test_a_generic_training_checkpoint_is_not_called_the_authors(tmp_path):
    """{"model", "optimizer", "epoch", "masks"} was reported as the SRigL authors'
    checkpoint of a dense run, its masks ignored."""
    state, masks = linear_stack(2)
    imported = read_torch_checkpoint(write(tmp_path, {"model": state, **TRAINING,
                                                      "masks": masks}))
    assert imported.kind == "training-checkpoint"
    assert imported.notes[0].startswith("training checkpoint (keys ['model', 'optimizer', "
                                        "'epoch', 'masks']): model state read from the "
                                        "'model' entry; epoch 4")
    assert imported.meta["epoch"] == 4 and "pruner_class" not in imported.meta


def test_a_generic_checkpoint_audits_its_masks(tmp_path, capsys):
    from srigl_np import audit
    state, masks = linear_stack(3)
    state["fc1.weight"][0, np.flatnonzero(masks["fc1.weight"][0])[0]] = 0.0  # a zero in mask
    path = write(tmp_path, {"model": state, **TRAINING, "masks": masks})
    assert audit.main([str(path), "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert [(layer["structure"], layer["k"]) for layer in layers] == [("mask", 3), ("mask", 4)]
    assert layers[0]["zeros_in_mask"] == 1


@pytest.mark.parametrize("masks, message", [
    ({"fc3.weight": np.ones((2, 2), bool)}, r"masks mask 'fc3.weight' names no weight of "
                                            r"the model state \(weights: \['fc1.weight', "
                                            r"'fc2.weight'\]\)"),
    ({"fc1": np.ones((20, 9), bool)}, r"masks mask 'fc1' has shape \(20, 9\), the weight "
                                      r"'fc1.weight' \(20, 10\)"),
    ([np.ones((20, 10), bool)], r"the 'masks' entry lists 1 masks but the model state has "
                                r"2 Conv/Linear weights"),
    ("all", r"the 'masks' entry must map weight names to 0/1 tensors, found str 'all'"),
    ({"fc1": np.full((20, 10), 2, np.uint8)}, r"masks mask 'fc1' must hold only 0 and 1"),
])
def test_bad_saved_masks_are_refused(tmp_path, masks, message):
    state, _ = linear_stack(4)
    with pytest.raises(ValueError, match=message):
        read_torch_checkpoint(write(tmp_path, {"model": state, **TRAINING, "masks": masks}))


MODULE_STATE = {"training": True, "_parameters": {}, "_buffers": {}, "_modules": {}}
HINT = "save torch.save(model.state_dict(), path) instead"


@pytest.mark.parametrize("obj", [
    NewObj(Global("__main__", "Net"), (), MODULE_STATE),
    {"model": NewObj(Global("__main__", "Net"), (), MODULE_STATE), "epoch": 3},
])
def test_a_pickled_module_gets_a_state_dict_hint(tmp_path, obj):
    with pytest.raises(ValueError, match=re.escape(HINT)) as error:
        read_torch_checkpoint(write(tmp_path, obj))
    assert "\n" not in str(error.value) and "__main__.Net object" in str(error.value)


def test_torch_save_of_a_whole_model_gets_the_hint(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from srigl_np import audit
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(3, 2)), path)
    assert audit.main([str(path)]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and HINT in err
    assert "torch.nn.modules.container.Sequential object" in err
