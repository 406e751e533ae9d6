"""Every architecture of srigl_np.nn.architectures at a small size, condensed: its logits
against our evaluation forward of the masked model and against torch's evaluation
forward of the same weights (tests/torch_models.py), with random 90% constant fan-in
masks, ablated neurons and BatchNorm statistics that are not the identity."""

import numpy as np
import pytest

from srigl_np.inference.condensed_model import load
from srigl_np.inference.condensing import condense
from srigl_np.nn.architectures import ARCHITECTURES, build_architecture
from test_condense_graph import assert_close, constant_fan_in_masks, perturb_norms

# name: (small sizes, input shape); float32 throughout. The CIFAR models take 32x32
# (torch's average pooling of 4 or 8 wants it).
SMALL = {
    "cifar_resnet18": (dict(width=4, blocks=(2, 1, 1, 1)), (2, 3, 32, 32)),
    "wide_resnet22": (dict(depth=10, widen_factor=1), (2, 3, 32, 32)),
    "resnet50": (dict(width=4, layers=(2, 1, 1, 1), num_classes=10), (2, 3, 48, 48)),
    "mobilenet_v3_large": (dict(width_mult=0.25, num_classes=10), (2, 3, 48, 48)),
    "mobilenet_v3_small": (dict(width_mult=0.25, num_classes=10), (2, 3, 48, 48)),
    "vit_b_16": (dict(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16,
                      mlp_dim=32, num_classes=10), (2, 3, 16, 16)),
}


def test_every_architecture_has_a_small_size_here():
    assert set(SMALL) == set(ARCHITECTURES)


def masked(name, seed=0):
    rng = np.random.default_rng(seed)
    sizes, shape = SMALL[name]
    model = build_architecture(name, rng=rng, **sizes)
    masks = constant_fan_in_masks(model, rng)
    perturb_norms(model, rng)
    return model, masks, rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_condensed_architecture_computes_our_forward_and_torchs(name, tmp_path):
    model, masks, x = masked(name)
    ours = model.forward(x, False).astype(np.float64)
    condensed = condense(model, masks=masks)
    assert {e["result"] for e in condensed.report} == {"condensed"}
    assert sum(e["n_active"] < e["n_out"] for e in condensed.report) >= 3   # ablated rows
    got = condensed.logits(x)
    assert_close(got, ours)
    condensed.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(load(tmp_path / "m.npz").logits(x), got)
    torch = pytest.importorskip("torch")
    import torch_models

    module = torch_models.load_ours_into_torch(
        model, torch_models.BUILDERS[name](**SMALL[name][0])).eval()
    with torch.no_grad():
        theirs = module(torch.from_numpy(x)).numpy().astype(np.float64)
    assert_close(got, theirs)
