"""benchmarks/bench_models.py on small architectures: its masks are constant fan-in at
the asked sparsity, and a quick run checks torch's logits and prints a row."""

import json

import numpy as np
import pytest

from scripts import load_script
from srigl_np.nn.architectures import build_architecture


@pytest.fixture(scope="module")
def script():
    return load_script("benchmarks/bench_models.py")


def test_masks_are_constant_fan_in_and_applied(script):
    rng = np.random.default_rng(0)
    model = build_architecture("resnet50", rng=rng, width=4, layers=(1, 1, 1, 1),
                               num_classes=10)
    masks = script.srigl_masks(model, 0.9, 0.25, True, rng)
    params = model.named_parameters()
    names = list(masks)
    assert masks[names[0]].all()                       # the dense first conv
    for name in names[1:]:
        rows = masks[name].reshape(masks[name].shape[0], -1)
        counts = rows.sum(axis=1)
        fan = rows.shape[1]
        assert set(counts[counts > 0]) == {max(1, round(0.1 * fan))}, name
        assert not (params[name] * ~masks[name]).any()
    assert masks[names[-1]].any(axis=1).all()          # the classifier keeps every class


def test_a_quick_run_checks_torch_and_prints_a_row(script, tmp_path):
    pytest.importorskip("torch")
    lines = []
    status = script.main(["--models", "cifar_resnet18", "--batches", "2", "--rounds", "1",
                          "--min-time", "0", "--sizes", '{"width": 4, "blocks": [1, 1, 1, 1]}',
                          "--json", str(tmp_path / "r.json")], log=lines.append)
    assert status == 0, lines
    assert lines[0].startswith("CPU: ") and "kernel path" in lines[0]
    assert "cifar_resnet18" in lines[-1] and "x torch" in lines[-1]
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert rows[0]["batch"] == 2 and rows[0]["relative_difference"] <= 1e-4
