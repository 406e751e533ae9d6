"""benchmarks/cnn_gap_report.py on a fake cnn-gap runs directory (synthetic metrics.json
and audit.jsonl, nothing trained): the four tables hold the right figures, runs missing,
unfinished or of another setting are listed rather than counted, and --out is written
only when new or with --force."""

import json

import pytest

from srigl_np import experiments
from scripts import load_script

STEPS = range(100, 1001, 100)   # 10 updates, as the cnn's 3 epochs at ΔT 100
# (layer, neurons, size, ERK budget B) of two of the cnn's layers.
LAYERS = (("0.weight", 32, 288, 48), ("7.weight", 128, 1179648, 11648))
BUDGETS = {layer: budget for layer, _, _, budget in LAYERS}


@pytest.fixture(scope="module")
def script():
    return load_script("benchmarks/cnn_gap_report.py")


def _run(method, seed, gamma=None, loop="step"):
    return next(r for r in experiments.grid("cnn-gap")
                if (r["method"], r["gamma_sal"], r["loop"], r["seed"]) ==
                (method, gamma, loop, seed))


def _record(step, layer, neurons, size, method, active, k, nnz, itop, ablated=()):
    fan_in = [k, k] if method == "srigl" else [1, k]
    return {"step": step, "layer": layer, "method": method, "drop_fraction": 0.1,
            "pruned": 0, "grown": 0, "regrown": 0, "fan_in_before": fan_in,
            "fan_in_after": fan_in, "active_neurons": active, "neurons": neurons,
            "ablated": list(ablated), "nnz": nnz, "zeros_in_mask": 0, "size": size,
            "itop": itop, "invariants": "ok"}


def _trail(method, ablate_at=None):
    """Records of LAYERS at STEPS. SRigL: k 1 in 0.weight until ``ablate_at``, where 8
    neurons go and k rises to 2 (the budget of 48 then fully used); RigL: its budget."""
    records = []
    for step in STEPS:
        for layer, neurons, size, budget in LAYERS:
            if method == "rigl":
                records.append(_record(step, layer, neurons, size, "rigl", neurons - 2, 6,
                                       budget, 0.2))
            elif layer == "0.weight" and ablate_at is not None and step >= ablate_at:
                records.append(_record(step, layer, neurons, size, "srigl", 24, 2, 48, 0.15,
                                       ablated=range(8)))
            else:
                k = budget // neurons
                records.append(_record(step, layer, neurons, size, "srigl", neurons, k,
                                       k * neurons, 0.1))
    return records


def _write(root, run, accuracy, trail=None, finished=True, config=None, epochs=3):
    out = root / experiments.run_name(run)
    out.mkdir()
    method = "srigl" if run["method"].startswith("srigl") else run["method"]
    config = {"model": "cnn", "method": method, "seed": run["seed"], "epochs": 3,
              "lr": 0.05, "sparsity": 0.99, "distribution": "erk",
              "gamma_sal": run["gamma_sal"] or 0.3,
              "no_ablation": run["method"] == "srigl-noabl",
              "optimizer_on_update": run["loop"] or "step", **(config or {})}
    metrics = {"test_accuracy": accuracy, "config": config,
               "epochs": [{"epoch": e + 1, "active_neurons": 200 + e, "neurons": 234,
                           "itop": 0.01 * (e + 1)} for e in range(epochs)]}
    if finished is not None:
        metrics["finished"] = finished
    (out / "metrics.json").write_text(json.dumps(metrics))
    if trail is not None:
        (out / "audit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trail))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cnn-gap")
    _write(root, _run("rigl", 0), 0.82, _trail("rigl"))
    _write(root, _run("rigl", 1), 0.80, _trail("rigl"))
    _write(root, _run("srigl", 0, 0.3), 0.79, _trail("srigl", ablate_at=300))
    _write(root, _run("srigl", 1, 0.3), 0.78, _trail("srigl", ablate_at=500))
    _write(root, _run("srigl-noabl", 0, 0.3), 0.77, _trail("srigl"))
    # An older trainer's run: no "finished", no loop recorded (read as "skip").
    old = _write(root, _run("srigl", 0, 0.3, "skip"), 0.80, _trail("srigl", 100),
                 finished=None)
    metrics = json.loads((old / "metrics.json").read_text())
    del metrics["config"]["optimizer_on_update"]
    (old / "metrics.json").write_text(json.dumps(metrics))
    _write(root, _run("rigl", 0, loop="skip"), 0.81, _trail("rigl"))
    _write(root, _run("srigl", 0, 0.95), 0.75, _trail("srigl")[:4], finished=False,
           epochs=1)
    _write(root, _run("static", 0, loop=None), 0.70, config={"lr": 0.1})   # not the grid's
    return root


def _row(table, start):
    rows = [line for line in table.splitlines() if line.startswith(start)]
    assert len(rows) == 1, (start, rows)
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_the_report_holds_the_four_tables(script, runs):
    text = script.report(str(runs), budgets=BUDGETS)
    accuracy, layers, steps, loops = (text.split(f"## {n}.")[1].split("##")[0]
                                      for n in (1, 2, 3, 4))
    # 1: mean ± sample std, per seed, the difference to RigL in the same loop.
    rigl = _row(accuracy, "| RigL (step)")
    assert rigl[1:4] == ["2", "81.00 ± 1.41", "s0 82.00, s1 80.00"]
    assert rigl[4:6] == ["202/234", "3.0 ± 0.0"]   # the last epoch's neurons and ITOP
    srigl = _row(accuracy, "| SRigL γ0.3 (step)")
    assert srigl[2] == "78.50 ± 0.71" and srigl[6] == "-2.50"
    assert srigl[7] == "-2.50 (s0 -3.00, s1 -2.00)"
    assert _row(accuracy, "| SRigL γ0.3 (skip)")[6:8] == ["-1.00", "-1.00 (s0 -1.00)"]
    assert _row(accuracy, "| SRigL γ0.95 (step)")[2] == "not run yet"   # unfinished
    assert _row(accuracy, "| static")[2] == "not run yet"   # its config is not the grid's
    # 2: k raised by ablation, the first ablating step per seed, the budget use.
    conv = _row(layers, "| SRigL γ0.3 (step) | 0.weight")
    assert conv[2:] == ["32", "s0, s1", "24.0 (24, 24)", "k 1 → 2", "15.0", "300, 500",
                        "48 / 48 (100%)", "16.67%"]
    noabl = _row(layers, "| SRigL, no ablation (step) | 0.weight")
    assert noabl[5:] == ["k 1", "10.0", "-", "32 / 48 (67%)", "11.11%"]
    assert _row(layers, "| RigL (step) | 0.weight")[4:8] == ["30.0 (30, 30)", "1-6", "20.0",
                                                             "n/a"]
    assert "| SRigL γ0.95" not in layers and "| static" not in layers
    # 3: seed 0 at the first, 25%, 50%, 75% and last update.
    assert "| layer | 100 | 300 | 500 | 800 | 1000 |" in steps
    assert "| 0.weight | 32 (k 1) | 24 (k 2) | 24 (k 2) | 24 (k 2) | 24 (k 2) |" in steps
    assert "**SRigL γ0.95 (step)**: not run yet" in steps
    # 4: step against skip, paired per seed.
    assert _row(loops, "| RigL") == ["RigL", "81.00 ± 1.41 (n 2)", "81.00 (n 1)",
                                     "3.0 ± 0.0 / 3.0", "s0 +1.00", "+1.00"]
    assert _row(loops, "| SRigL γ0.3")[4:] == ["s0 -1.00", "-1.00"]


def test_runs_not_counted_are_listed(script, runs):
    text = script.report(str(runs), budgets=BUDGETS).split("## Runs not counted")[1]
    assert "`cnn-srigl-s0.99-g0.95-seed0`: unfinished (1 of 3 epochs)" in text
    assert "`cnn-rigl-s0.99-seed2`: not run yet" in text
    assert "`cnn-static-s0.99-seed0`: left out (its config differs: lr 0.1, the grid 0.05)" \
        in text
    assert "cnn-rigl-s0.99-seed0`" not in text


def test_an_empty_directory_reports_every_run_as_not_run(script, tmp_path):
    text = script.report(str(tmp_path), budgets={})
    assert "0 of 24 runs finished" in text
    assert text.count("`: not run yet") == 24


def test_out_is_written_once_unless_forced(script, runs, tmp_path, capsys):
    out = tmp_path / "cnn_gap.md"
    assert script.main(["--runs", str(runs), "--out", str(out)]) == 0
    assert out.read_text() == capsys.readouterr().out
    out.write_text("kept")
    with pytest.raises(SystemExit) as stop:
        script.main(["--runs", str(runs), "--out", str(out)])
    assert stop.value.code == 2 and "--force" in capsys.readouterr().err
    assert out.read_text() == "kept"
    assert script.main(["--runs", str(runs), "--out", str(out), "--force"]) == 0
    assert out.read_text().startswith("# The cnn 99% gap")
