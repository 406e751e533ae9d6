"""Real checkpoints of the SRigL authors' code (tests/data/authors/, written by
tools/make_authors_checkpoints.py from their rigl_torch): ``Checkpoint.get_state()``
after a few RigLConstFanScheduler updates with dynamic ablation, pickling the run's
omegaconf DictConfig, pathlib paths, a defaultdict, scheduler state and numpy scalars.
They are read without torch: audit, import and condense. The cross-check against
torch.load needs torch and omegaconf, and skips without them.
"""

import json
import pathlib

import numpy as np
import pytest

from srigl_np import audit, condense as condense_cli
from srigl_np.formats.importing import read_torch_checkpoint
from srigl_np.formats.model_map import to_model
from srigl_np.inference.condensed_model import load as load_condensed

DATA = pathlib.Path(__file__).parent / "data" / "authors"
MNIST, RESNET = DATA / "mnist.pt", DATA / "skinny_resnet.pt"
# Neurons dynamic ablation removed, per sparse layer (the pruner's own count).
MNIST_ABLATED = {"conv1.weight": 2, "conv2.weight": 5, "fc1.weight": 20, "fc2.weight": 2}


@pytest.mark.parametrize("path, sparse_layers", [(MNIST, 4), (RESNET, 16)])
def test_audit_finds_constant_fan_in_in_every_masked_layer(path, sparse_layers, capsys):
    assert audit.main([str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    layers = report["layers"]
    assert len(layers) == sparse_layers
    for layer in layers:
        assert layer["claimed"] and layer["constant_fan_in"] and layer["ok"], layer["layer"]
        assert layer["structure"] == "mask" and layer["violations"] == []
        assert layer["nnz"] == layer["k"] * layer["active_neurons"]
    assert sum(len(layer["ablated"]) for layer in layers) > 0   # dynamic ablation ran


def test_the_authors_checkpoint_is_named_with_its_pruner_and_metadata():
    imported = read_torch_checkpoint(MNIST)
    assert (imported.kind, imported.mask_source) == ("srigl-authors", "pruner")
    assert imported.meta["pruner_class"] == "RigLConstFanScheduler"
    assert any("SRigL authors' training checkpoint: epoch 1, step 9" in note
               for note in imported.notes)
    meta = imported.meta
    assert (meta["run_id"], meta["dense_allocation"], meta["pruner_step"]) == (
        "fixture-mnist", 0.1, 9)
    assert meta["cfg"] == "omegaconf.dictconfig.DictConfig"
    assert meta["checkpoint_dir"] == "tests/data/authors"   # a PosixPath's parts
    assert meta["scheduler"]["step_size"] == 77
    assert meta["ablated"] == MNIST_ABLATED
    assert meta["dynamically_ablated"] == list(MNIST_ABLATED.values())
    assert meta["dense_layers"] == []
    assert [shape for shape in (imported.state_dict[key].shape for key in MNIST_ABLATED)] == [
        (8, 1, 3, 3), (16, 8, 3, 3), (32, 2304), (10, 32)]


def test_the_resnets_dense_layers_are_the_pruners():
    imported = read_torch_checkpoint(RESNET)
    assert imported.kind == "srigl-authors"
    assert imported.meta["dense_layers"] == [
        "conv1.weight", "layer2.0.shortcut.0.weight", "layer3.0.shortcut.0.weight",
        "layer4.0.shortcut.0.weight", "linear.weight"]
    assert len(imported.masks) == 16


def test_the_mnist_checkpoint_condenses_and_predicts_like_its_dense_model(tmp_path):
    out = tmp_path / "m.npz"
    lines = []
    assert condense_cli.main([str(MNIST), "--out", str(out)], log=lines.append) == 0
    assert any("channels (8, 16) and 32 hidden units" in line for line in lines)
    condensed = load_condensed(out)
    model, masks, _ = to_model(read_torch_checkpoint(MNIST))
    x = np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32)
    dense = model.forward(x, training=False)
    np.testing.assert_allclose(condensed.logits(x), dense, rtol=1e-4, atol=1e-4)


def test_the_resnet_checkpoint_loads_onto_our_model_and_predicts_like_torch():
    torch = pytest.importorskip("torch")
    torch_models = pytest.importorskip("torch_models")
    imported = read_torch_checkpoint(RESNET)
    model, masks, notes = to_model(imported)
    assert notes[0].startswith("skinny_resnet18 (stem=8, widths=(8, 16, 16, 32)")
    assert set(masks) == set(imported.masks) and len(masks) == 16

    class Skinny(torch.nn.Module):   # kuangliu's forward, the authors' SkinnyResNet18's
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 8, 3, 1, 1, bias=False)
            self.bn1 = torch.nn.BatchNorm2d(8)
            n_in = 8
            for stage, planes in enumerate((8, 16, 16, 32)):
                blocks = [torch_models.BasicBlock(n_in, planes, 2 if stage else 1),
                          torch_models.BasicBlock(planes, planes, 1)]
                setattr(self, f"layer{stage + 1}", torch.nn.Sequential(*blocks))
                n_in = planes
            self.linear = torch.nn.Linear(32, 10)

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
            return self.linear(torch.nn.functional.avg_pool2d(out, 4).flatten(1))

    module = Skinny().eval()
    module.load_state_dict({key: torch.from_numpy(value)
                            for key, value in imported.state_dict.items()})
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        theirs = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.forward(x, training=False), theirs, rtol=1e-4, atol=1e-5)


def test_our_reading_matches_torch_load():
    torch = pytest.importorskip("torch")
    pytest.importorskip("omegaconf")   # torch.load rebuilds the run's DictConfig
    for path in (MNIST, RESNET):
        theirs = torch.load(path, weights_only=False)
        ours = read_torch_checkpoint(path)
        assert list(ours.state_dict) == list(theirs["model"])
        for key, tensor in theirs["model"].items():
            np.testing.assert_array_equal(ours.state_dict[key], tensor.numpy(), err_msg=key)
        their_masks = [mask for mask in theirs["pruner"]["backward_masks"] if mask is not None]
        assert len(their_masks) == len(ours.masks)
        for mask, ours_mask in zip(their_masks, ours.masks.values()):
            np.testing.assert_array_equal(ours_mask, mask.numpy())


def test_an_injected_ragged_row_is_named_by_layer_and_row_without_torch():
    from srigl_np.model_audit import audit_source, open_source, summarise_model

    source = open_source(RESNET)
    assert source.model == "skinny_resnet18"
    name, weight, mask = source.layers[3]   # layer1.1.conv1.weight, k=62 per the pruner
    mask = mask.copy()
    rows = mask.reshape(mask.shape[0], -1)
    row = int(np.flatnonzero(rows.any(axis=1))[1])
    rows[row, int(np.flatnonzero(~rows[row])[0])] = True
    source.layers[3] = (name, weight, mask)
    audits = {a["layer"]: a for a in audit_source(source)}
    k = audits["layer1.0.conv1.weight"]["k"]   # untouched
    assert audits[name]["ok"] is False and not audits[name]["constant_fan_in"]
    fan_in = audits[name]["violations"][0]
    assert (fan_in["kind"], fan_in["neuron"]) == ("fan_in", row)
    assert fan_in["message"].startswith(f"neuron {row} has 63 active weights, expected "
                                        f"fan-in 62")
    summary = summarise_model(source)
    assert summary["not_constant"] == [{"layer": name, "fan_in_range": [62, 63],
                                        "k_most_common": 62, "off_rows": 1,
                                        "first_off_row": row, "active_neurons": 5}]
    assert k == 52 and not summary["constant_fan_in"]


def test_an_injected_ragged_row_in_the_file_fails_the_audit(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("omegaconf")   # torch.load rebuilds the run's DictConfig
    checkpoint = torch.load(RESNET, weights_only=False)
    masks = checkpoint["pruner"]["backward_masks"]
    index = next(i for i, mask in enumerate(masks) if mask is not None)
    rows = masks[index].view(masks[index].shape[0], -1)
    row = int(torch.nonzero(rows.any(dim=1))[-1])
    rows[row, int(torch.nonzero(~rows[row])[0])] = True
    path = tmp_path / "ragged.pt"
    torch.save(checkpoint, path)
    assert audit.main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "layer1.0.conv1.weight: neuron " + str(row) + " has 53 active weights, " \
           "expected fan-in 52" in out
    assert (f"  layer1.0.conv1.weight: fan-in 52-53; 1 of 6 active rows are not at k=52 "
            f"(first: row {row})") in out
