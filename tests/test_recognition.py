"""Recognising the paper's architectures from a state's keys and shapes
(``formats.recognition``) and the key tables it checks them against (``formats.layouts``).

The full-size tables are checked against torchvision's own state_dicts, saved as key and
shape lists in tests/data/torchvision_keys.json (tools/dump_torchvision_keys.py), and
against the authors' ResNet fixture; no torch is needed here.
"""

import json
import pathlib

import numpy as np
import pytest

from srigl_np.formats import layouts
from srigl_np.formats.importing import read_torch_checkpoint
from srigl_np.formats.recognition import canonical_keys, recognise
from srigl_np.nn.architectures import build_architecture

DATA = pathlib.Path(__file__).parent / "data"
TORCHVISION = json.loads((DATA / "torchvision_keys.json").read_text())
FULL_SIZES = {
    "resnet50": {"width": 64, "layers": (3, 4, 6, 3), "num_classes": 1000},
    "mobilenet_v3_large": {"width_mult": 1.0, "num_classes": 1000},
    "mobilenet_v3_small": {"width_mult": 1.0, "num_classes": 1000},
    "vit_b_16": {"image_size": 224, "patch_size": 16, "num_layers": 12, "num_heads": 12,
                 "hidden_dim": 768, "mlp_dim": 3072, "num_classes": 1000},
}
SMALL_SIZES = {
    "cifar_resnet18": {"width": 4, "blocks": (1, 2, 1, 1), "num_classes": 3},
    "wide_resnet22": {"depth": 10, "widen_factor": 1, "num_classes": 5},
    "resnet50": {"width": 4, "layers": (1, 1, 2, 1), "num_classes": 7},
    "mobilenet_v3_large": {"width_mult": 0.25, "num_classes": 6},
    "mobilenet_v3_small": {"width_mult": 0.5, "num_classes": 6, "blocks": 4},
    "vit_b_16": {"image_size": 32, "patch_size": 8, "num_layers": 2, "num_heads": 1,
                 "hidden_dim": 16, "mlp_dim": 24, "num_classes": 4},
}


def torchvision_shapes(name):
    return {key: tuple(shape) for key, shape in TORCHVISION[name]}


@pytest.mark.parametrize("name", FULL_SIZES)
def test_the_layouts_are_torchvisions_state_dicts_key_for_key_in_order(name):
    theirs = [(key, shape) for key, shape in torchvision_shapes(name).items()
              if not key.endswith("num_batches_tracked")]
    assert list(layouts.LAYOUTS[name](**FULL_SIZES[name]).items()) == theirs


@pytest.mark.parametrize("name", FULL_SIZES)
def test_torchvisions_full_size_models_are_recognised_with_their_sizes(name):
    found, why = recognise(torchvision_shapes(name))   # num_batches_tracked included
    assert why is None and found.name == name
    assert found.sizes == FULL_SIZES[name]


def test_vits_head_count_is_assumed_and_said_so():
    found, _ = recognise(torchvision_shapes("vit_b_16"))
    assert len(found.notes) == 1 and "num_heads is not in a state_dict: assumed 12" in found.notes[0]
    found, _ = recognise(torchvision_shapes("vit_b_16"), sizes={"num_heads": 3})
    assert found.sizes["num_heads"] == 3 and found.notes == ()


def test_the_authors_skinny_resnet_fixture_is_a_resnet18_at_its_diets_widths():
    state = read_torch_checkpoint(DATA / "authors" / "skinny_resnet.pt").state_dict
    shapes = {key: value.shape for key, value in state.items()}
    found, why = recognise(shapes)
    assert why is None and (found.name, found.sizes) == ("skinny_resnet18", {
        "stem": 8, "widths": (8, 16, 16, 32), "blocks": (2, 2, 2, 2), "num_classes": 10})
    found, why = recognise(shapes, arch="cifar_resnet18")
    assert why == ("not cifar_resnet18: its stages are (8, 16, 16, 32) wide, not 8 (the "
                   "stem's) times 1, 2, 4, 8, the only widths the paper's models have")


def test_a_cifar_resnet18_describes_itself_in_one_line():
    found, _ = recognise(layouts.cifar_resnet18(width=64, blocks=(2, 2, 2, 2), num_classes=10))
    assert found.describe() == "cifar_resnet18 (width=64, blocks=(2, 2, 2, 2), num_classes=10)"


@pytest.mark.parametrize("name", SMALL_SIZES)
def test_small_versions_are_recognised_at_their_sizes(name):
    shapes = layouts.LAYOUTS[name](**SMALL_SIZES[name])
    found, why = recognise(shapes, sizes={"num_heads": 1} if name == "vit_b_16" else None)
    assert why is None and found.name == name and found.sizes == SMALL_SIZES[name]
    found, why = recognise(shapes, arch=name)
    assert found.name == name


def test_the_wrn_reads_depth_and_widen_factor():
    found, _ = recognise(layouts.wide_resnet22(depth=22, widen_factor=2, num_classes=10))
    assert found.sizes == {"depth": 22, "widen_factor": 2, "num_classes": 10}


def test_many_width_multipliers_give_one_mobilenet_and_one_of_them_is_found():
    shapes = layouts.mobilenet_v3_large(width_mult=0.3, num_classes=10)
    found, _ = recognise(shapes)
    assert layouts.mobilenet_v3_large(**found.sizes) == shapes


@pytest.mark.parametrize("change, words", [
    (lambda s: s.pop("layer3.1.conv2.weight"), ["not resnet50", "1 key is missing",
                                               "'layer3.1.conv2.weight'"]),
    (lambda s: s.update({"layer1.0.conv2.weight": (8, 8, 5, 5)}),
      ["'layer1.0.conv2.weight' has shape (8, 8, 5, 5), expected (4, 4, 3, 3)"]),
    (lambda s: s.update({"extra.weight": (3, 3)}), ["1 key is not in it ('extra.weight')"]),
])
def test_a_state_that_almost_fits_says_what_differs(change, words):
    shapes = dict(layouts.resnet50(**SMALL_SIZES["resnet50"]))
    change(shapes)
    found, why = recognise(shapes)
    assert found is None
    for word in words:
        assert word in why
    assert "\n" not in why and len(why) < 400


def test_a_mobilenet_with_torchvisions_reduced_tail_is_not_recognised():
    shapes = torchvision_shapes("mobilenet_v3_large")
    shapes["features.13.block.3.0.weight"] = (80, 672, 1, 1)   # 160 // 2 output channels
    found, why = recognise(shapes)
    assert found is None and "not mobilenet_v3_large" in why


def test_an_unknown_architecture_is_one_short_line():
    found, why = recognise({"encoder.weight": (3, 4), "decoder.weight": (4, 3)})
    assert found is None and "match none of cifar_resnet18" in why and len(why) < 300


def test_a_named_architecture_that_does_not_fit_says_so():
    found, why = recognise(torchvision_shapes("resnet50"), arch="vit_b_16")
    assert found is None and why == "not vit_b_16: no 'conv_proj.weight'"
    with pytest.raises(ValueError, match="arch must be one of cifar_resnet18"):
        recognise({}, arch="resnet18")
    with pytest.raises(ValueError, match="got \\['depth'\\]"):
        recognise(torchvision_shapes("resnet50"), sizes={"depth": 3})


def test_torchvisions_old_vit_mlp_names_are_renamed_in_place():
    state = {"encoder.layers.encoder_layer_0.mlp.linear_1.weight": 1,
             "encoder.layers.encoder_layer_0.mlp.linear_1.bias": 2,
             "encoder.layers.encoder_layer_0.mlp.linear_2.weight": 3,
             "heads.head.weight": 4}
    renamed, note = canonical_keys(state)
    assert list(renamed) == ["encoder.layers.encoder_layer_0.mlp.0.weight",
                             "encoder.layers.encoder_layer_0.mlp.0.bias",
                             "encoder.layers.encoder_layer_0.mlp.3.weight", "heads.head.weight"]
    assert list(renamed.values()) == [1, 2, 3, 4] and "(3 keys)" in note
    assert canonical_keys({"a.mlp.0.weight": 1}) == ({"a.mlp.0.weight": 1}, None)
    with pytest.raises(ValueError, match="both torchvision's old and new"):
        canonical_keys({"mlp.linear_1.weight": 1, "mlp.0.weight": 2})


def test_make_divisible_is_mobilenets_channel_rule():
    assert [layouts.make_divisible(v) for v in (3, 4, 12, 16 * 0.3, 18, 72 * 0.25, 100)] == [
        8, 8, 16, 8, 24, 24, 104]


@pytest.mark.parametrize("name", SMALL_SIZES)
def test_the_layouts_are_the_keys_and_shapes_of_the_models_we_build(name):
    model = build_architecture(name, rng=np.random.default_rng(0), **SMALL_SIZES[name])
    ours = {key: value.shape for key, value in
            {**model.named_parameters(), **model.named_buffers()}.items()}
    assert ours == layouts.LAYOUTS[name](**SMALL_SIZES[name])


def test_a_broken_resnet50_is_told_as_a_resnet50_not_as_every_resnet_it_resembles():
    shapes = dict(layouts.resnet50(**SMALL_SIZES["resnet50"]))
    del shapes["fc.bias"]
    found, why = recognise(shapes)
    assert found is None and why == (
        "not resnet50: read as resnet50 (width=4, layers=(1, 1, 2, 1), num_classes=7), but 1 "
        "key is missing ('fc.bias')")
