"""benchmarks/bench_train_epoch.py and benchmarks/profile_train_step.py run and print what
they promise (the figures themselves are not judged here)."""

from scripts import load_script

epoch = load_script("benchmarks/bench_train_epoch.py")
profile = load_script("benchmarks/profile_train_step.py")


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
