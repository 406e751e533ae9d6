"""benchmarks/bench_train_epoch.py, benchmarks/profile_train_step.py and
benchmarks/padded_layers.py run and print what they promise (the figures themselves are
not judged here)."""

from scripts import load_script
from srigl_np.nn import condensed_compute

epoch = load_script("benchmarks/bench_train_epoch.py")
profile = load_script("benchmarks/profile_train_step.py")
padded = load_script("benchmarks/padded_layers.py")


def test_the_epoch_table_has_every_variant_with_update_steps_apart(capsys, tmp_path):
    out = tmp_path / "epoch.json"
    assert epoch.main(["--models", "mlp", "--samples", "512", "--threads", "1",
                       "--sparsities", "0.9", "--repeats", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    rows = [line.split() for line in text.splitlines() if line.startswith("mlp ")]
    variants = [" ".join(row[2:4]) if row[2] == "torch" else row[2] for row in rows]
    assert {"dense", "masked", "condensed"} <= set(variants)
    sparse = [row for row in rows if row[2] in ("masked", "condensed")]
    assert all(row[3] == "90%" and row[5] != "-" for row in sparse)   # update ms apart
    assert out.exists()


def test_the_step_profile_names_each_layer_and_the_optimizer(capsys):
    assert profile.main(["--model", "mlp", "--steps", "1", "--batch-size", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "condensed 99%" in lines[0] and "mean of 1 steps" in lines[0]
    names = [line.split("  ")[1].strip() for line in lines[1:] if "ms" in line]
    assert "1 Linear forward" in names and "optimizer + hooks" in names
    assert lines[-1].split()[0] == "step"


def test_the_padding_report_follows_the_updates_and_times_each_variant(capsys):
    limits = dict(condensed_compute.PADDED_SLOT_LIMIT)
    assert padded.main(["--model", "mlp", "--method", "rigl", "--dataset", "embedded",
                        "--delta", "2", "--updates", "2", "--time-steps", "1",
                        "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("mlp rigl 90% (condensed), ")
    assert [line.split()[0:2] for line in lines[1:4]] == [["start", "1.weight"],
                                                         ["step", "2"], ["step", "4"]]
    assert all("; condensed: " in line for line in lines[1:4])
    assert all(f"{variant} " in lines[4] for variant in padded.VARIANTS)
    assert condensed_compute.PADDED_SLOT_LIMIT == limits   # put back
