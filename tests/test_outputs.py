"""What the seven commands write and the values they take, on hostile input: every output
flag checked before any work (its format, its directory, an empty path, a FIFO or device
in its place), the one rule of ``fileio.atomic_write`` at each writer, a FIFO or device
given as a model refused by name (and never read: that would block), faults (out of
memory, nesting too deep) as one line from real commands, and numeric flags that would
empty a layer or overflow refused before anything is timed or written."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from srigl_np import audit, condense, erk_table, experiments, explain, train
from srigl_np.bench import command as bench_command
from srigl_np.fileio import file_kind
from srigl_np.inference.condensed_model import check_input_stats


def _run(main, argv, capsys):
    """(status, stdout, stderr lines) of an in-process command; argparse's exit counts."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err and len(lines) <= 1, captured.err
    return status, captured.out, lines[0] if lines else ""


def _cli(module, *args, timeout=60):
    """A command in a subprocess: a read that blocks fails the test instead of hanging it."""
    return subprocess.run([sys.executable, "-m", f"srigl_np.{module}", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def no_timing(monkeypatch):
    monkeypatch.setattr(bench_command, "run",
                        lambda *a, **k: pytest.fail("timed before refusing"))
    monkeypatch.setattr(bench_command, "measure_limits",
                        lambda *a, **k: pytest.fail("probed before refusing"))


# -- an empty path is refused, not read as "not given" -----------------------------------------

@pytest.mark.parametrize("main, argv", [
    (bench_command.main, ["--json", ""]),
    (bench_command.main, ["--plot", ""]),
    (audit.main, [""]),
    (audit.main, [".", "--plot", ""]),
    (condense.main, ["", "--out", "x.npz"]),
    (condense.main, ["run", "--out", ""]),
    (condense.main, ["run", "--out", "x.npz", "--data-path", ""]),
    (explain.main, ["--plot", ""]),
    (explain.main, ["--checkpoint", "", "--layer", "1.weight"]),
    (experiments.main, ["--out", "", "--summary-only"]),
    (experiments.main, ["--report", "", "--summary-only"]),
    (train.main, ["--out", ""]),
    (train.main, ["--resume", ""]),
    (train.main, ["--data-path", ""]),
])
def test_an_empty_path_is_a_one_line_error(main, argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, err = _run(main, argv, capsys)
    assert status == 2 and out == "" and "must be a path, got ''" in err
    assert list(tmp_path.iterdir()) == []


# -- output flags are checked before any work ----------------------------------------------------

def test_bench_checks_plot_and_json_before_any_timing(tmp_path, capsys, no_timing):
    pytest.importorskip("matplotlib")
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link").symlink_to(tmp_path / "pipe")
    for argv, message in [
            (["--plot", tmp_path / "x.xyz"], "unknown image format 'xyz'"),
            (["--json", tmp_path / "pipe"], "not a regular file (a FIFO); give a file path"),
            (["--json", tmp_path / "link"], "not a regular file (a FIFO); give a file path"),
            (["--plot", tmp_path], "is a directory; give a file name")]:
        status, out, err = _run(bench_command.main, argv, capsys)
        assert status == 2 and out == ""
        assert err.startswith(f"python -m srigl_np.bench: error: {argv[0]} {argv[1]}: ")
        assert message in err
    assert os.path.islink(tmp_path / "link") and not os.path.isfile(tmp_path / "pipe")


def test_explain_checks_plot_before_the_update(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(explain, "run_update", lambda *a: pytest.fail("updated first"))
    os.mkfifo(tmp_path / "pipe.png")
    for target, message in [
            (tmp_path / "x.xyz", "unknown image format 'xyz'"),
            (tmp_path, "is a directory; give a file name"),
            (tmp_path / "pipe.png", "not a regular file (a FIFO); give a file path"),
            (tmp_path / "missing" / "x.png", "does not exist")]:
        status, out, err = _run(explain.main, ["--plot", target], capsys)
        assert status == 1 and out == "" and message in err
        assert err.startswith(f"python -m srigl_np.explain: error: --plot {target}: ")
    assert not (tmp_path / "missing").exists()


def test_audit_checks_plot_before_reading_the_run(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(audit, "read_trail", lambda *a: pytest.fail("read first"))
    status, out, err = _run(audit.main, [tmp_path, "--plot", tmp_path / "trail.xyz"], capsys)
    assert status == 1 and out == "" and "unknown image format 'xyz'" in err


def test_a_plot_the_disk_refuses_is_one_line_naming_the_file(tmp_path):
    """A full disk, as a file-size limit makes it: the write fails with EFBIG."""
    pytest.importorskip("matplotlib")
    resource = pytest.importorskip("resource")
    figure = tmp_path / "update.png"

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    result = subprocess.run([sys.executable, "-m", "srigl_np.explain", "--plot", str(figure)],
                            capture_output=True, text=True, timeout=120,
                            preexec_fn=small_files)
    assert result.returncode == 1
    assert result.stderr == (f"python -m srigl_np.explain: error: cannot write {figure}: "
                             f"File too large\n")
    assert list(tmp_path.iterdir()) == []   # neither the figure nor a temporary


# -- the write rule at each writer ---------------------------------------------------------------

def test_condense_out_refuses_a_fifo_and_writes_through_a_symlink(srigl_run, tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe")
    status, out, err = _run(condense.main, [srigl_run, "--out", tmp_path / "pipe", "--force"],
                            capsys)
    assert status == 1 and out == ""
    assert err == (f"python -m srigl_np.condense: error: --out {tmp_path / 'pipe'}: not a "
                   f"regular file (a FIFO); give a file path")
    real = tmp_path / "model.npz"
    real.write_bytes(b"old")
    (tmp_path / "link.npz").symlink_to(real)
    status, _, err = _run(condense.main, [srigl_run, "--out", tmp_path / "link.npz", "--force"],
                          capsys)
    assert status == 0 and err == ""
    assert os.path.islink(tmp_path / "link.npz") and real.read_bytes()[:2] == b"PK"


def test_train_refuses_to_replace_a_fifo_among_its_run_files(srigl_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.npz", "audit.jsonl"):
        (run / name).write_bytes((srigl_run / name).read_bytes())
    os.mkfifo(run / "metrics.json")
    status, _, err = _run(train.main, ["--resume", run, "--progress", "off"], capsys)
    assert status == 1
    assert err == (f"python -m srigl_np.train: error: {run / 'metrics.json'}: not a regular "
                   f"file (a FIFO); give a file path")
    assert file_kind(run / "metrics.json") == "a FIFO"


def test_experiments_checks_its_report_files_before_any_run(tmp_path, capsys):
    report = tmp_path / "report"
    report.mkdir()
    os.mkfifo(report / "results.json")
    status, out, err = _run(experiments.main, ["--preset", "smoke", "--out", tmp_path / "runs",
                                               "--report", report], capsys)
    assert status == 2 and out == ""
    assert err.endswith(f"--report {report / 'results.json'}: not a regular file (a FIFO); "
                        f"give a file path")
    assert not any((tmp_path / "runs").iterdir())


# -- a FIFO or a device as a model or a run's file: named, never read ---------------------------

@pytest.mark.parametrize("command", [("audit",), ("condense", "--out", "x.npz")])
def test_a_fifo_or_a_device_given_as_a_model_says_what_it_is(tmp_path, command, capsys):
    os.mkfifo(tmp_path / "pipe")
    main = {"audit": audit.main, "condense": condense.main}[command[0]]
    for path, kind in [(tmp_path / "pipe", "a FIFO"), (os.devnull, "a character device")]:
        status, out, err = _run(main, [path, *command[1:]], capsys)
        assert status == 1 and out == ""
        assert err.endswith(f"{path}: not a regular file ({kind}); give a model file or a "
                            f"run directory")


def test_a_run_whose_trail_is_a_fifo_is_refused_not_read(srigl_run, tmp_path):
    """Opening a FIFO blocks until something writes to it: audit and --resume would hang."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.npz", "metrics.json"):
        (run / name).write_bytes((srigl_run / name).read_bytes())
    os.mkfifo(run / "audit.jsonl")
    result = _cli("audit", run)
    assert result.returncode == 1
    assert result.stderr == (f"python -m srigl_np.audit: error: {run / 'audit.jsonl'}: not a "
                             f"regular file\n")


def test_explain_names_a_fifo_given_as_its_checkpoint(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe")
    status, _, err = _run(explain.main, ["--checkpoint", tmp_path / "pipe", "--layer", "1.w"],
                          capsys)
    assert status == 1 and err.endswith(f"checkpoint {tmp_path / 'pipe'} is not a file "
                                        f"(a FIFO)")


# -- faults from real commands -------------------------------------------------------------------

NESTED = "[" * 200_000 + "]" * 200_000


def test_a_trail_nested_too_deeply_is_one_line(tmp_path, capsys):
    (tmp_path / "audit.jsonl").write_text(NESTED + "\n")
    status, out, err = _run(audit.main, [tmp_path], capsys)
    assert status == 1 and out == "" and err.startswith("python -m srigl_np.audit: error: ")


@pytest.mark.parametrize("main, argv", [
    (condense.main, ["deep.npz", "--out", "x.npz"]),
    (explain.main, ["--checkpoint", "deep.npz", "--layer", "1.weight"]),
])
def test_a_checkpoint_whose_meta_nests_too_deeply_is_one_line(main, argv, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "deep.npz", meta=np.array('{"config": ' + NESTED + "}"))
    status, out, err = _run(main, argv, capsys)
    assert status == 1 and out == "" and err.startswith("python -m srigl_np.")
    assert not (tmp_path / "x.npz").exists()


def test_a_number_past_a_float_in_a_checkpoint_is_one_line(srigl_run, tmp_path, capsys):
    """A 400-digit integer where the run's config holds gamma_sal: float() overflows."""
    arrays = dict(np.load(srigl_run / "checkpoint.npz"))
    meta = json.loads(str(arrays["meta"]))
    meta["config"]["gamma_sal"] = "HUGE"
    arrays["meta"] = np.array(json.dumps(meta).replace('"HUGE"', "1" + "0" * 400))
    np.savez(tmp_path / "huge.npz", **arrays)
    status, out, err = _run(explain.main, ["--checkpoint", tmp_path / "huge.npz", "--layer",
                                           "1.weight"], capsys)
    assert status == 1 and out == ""
    # the checkpoint's config is checked as the flags are (one line naming the key)
    assert err.startswith(f"python -m srigl_np.explain: error: {tmp_path / 'huge.npz'}: meta "
                          f"'config' 'gamma_sal' (--gamma-sal) must be in [0, 1], got 1000")
    assert "\n" not in err


def test_out_of_memory_in_a_real_command_is_one_line(srigl_run, tmp_path, capsys, monkeypatch):
    """numpy's MemoryError (an array past this machine's memory) while condensing."""
    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 7.45 EiB for an array with shape (2**60,) and "
                          "data type int64")

    monkeypatch.setattr("srigl_np.inference.condensing.condense", no_memory)
    status, out, err = _run(condense.main, [srigl_run, "--out", tmp_path / "x.npz"], capsys)
    assert status == 1
    assert err == ("python -m srigl_np.condense: error: out of memory: Unable to allocate "
                   "7.45 EiB for an array with shape (2**60,) and data type int64")
    assert not (tmp_path / "x.npz").exists()


# -- numeric flags ------------------------------------------------------------------------------

def test_erk_table_marks_where_the_authors_rule_fails_instead_of_failing(capsys):
    status, out, err = _run(erk_table.main, ["--model", "cnn", "--sparsity", "0.999"], capsys)
    assert status == 0 and err == ""
    rows = [line for line in out.splitlines() if line.startswith("| cnn | 99.9% |")]
    assert rows[0].endswith("| — [1] |") and rows[2].endswith("| 9 |")
    assert "[1] —: the authors' code gives no figure here: fan-in after ablation is 0" in out
    first = erk_table.layer_rows("cnn", 0.999)[0]
    assert first["authors_fan_in"] is None and first["authors_budget"] == 4
    assert "fan-in after ablation is 0" in first["authors_failure"]
    assert erk_table.layer_rows("cnn", 0.9)[0]["authors_failure"] is None


def test_erk_table_at_a_sparsity_where_the_authors_erk_fails(capsys):
    status, out, _ = _run(erk_table.main, ["--model", "cnn", "--sparsity", "1e-12"], capsys)
    assert status == 0 and "their ERK fails: every layer would be dense" in out
    assert all(r["authors_sparsity"] is None for r in erk_table.layer_rows("cnn", 1e-12))


def test_bench_refuses_an_ablated_fraction_that_empties_a_layer_before_timing(capsys,
                                                                             no_timing):
    status, _, err = _run(bench_command.main, ["--shape", "64x64", "--ablated-frac", "0.999"],
                          capsys)
    assert status == 2
    assert err == ("python -m srigl_np.bench: error: --ablated-frac 0.999 leaves no neuron of "
                   "--shape 64x64 active: round(0.999 x 64) = 64 of its 64 neurons would be "
                   "ablated")
    assert bench_command.ablation_problem([(64, 64)], 0.99) is None


def test_bench_refuses_a_timing_that_would_never_end(capsys, no_timing):
    status, _, err = _run(bench_command.main, ["--min-time", "1e300"], capsys)
    assert status == 2 and "--min-time must be a finite number of seconds in [0, 3600]" in err


@pytest.mark.parametrize("stats, message", [
    (("1e308", "1e-308"), "would overflow float32 when normalising"),
    (("0.2", "1e-40"), "would overflow float32 when normalising"),
    (("0.2", "0"), "std > 0"),
    (("nan", "0.3"), "argument --input-stats: must be a finite number, got nan"),
    (("0.2", "inf"), "argument --input-stats: must be a finite number, got inf"),
    (("0.2,x", "0.3"), "argument --input-stats: must be a number, got 'x'"),
    (("0.48,0.45", "0.22,0.2,0.2"), "--input-stats 0.48,0.45 0.22,0.2,0.2: input_stats must"),
])
def test_condense_refuses_input_stats_that_overflow_and_writes_nothing(srigl_run, tmp_path,
                                                                      capsys, stats, message):
    out_file = tmp_path / "x.npz"
    status, _, err = _run(condense.main, [srigl_run, "--out", out_file, "--input-stats",
                                          *stats], capsys)
    assert status == 2 and message in err and not out_file.exists()


def test_condense_takes_per_channel_input_stats(tmp_path, capsys):
    """ImageNet's per-channel statistics, comma-separated: stored, and a uint8 image then
    predicts as its normalised floats do."""
    torch = pytest.importorskip("torch")
    from srigl_np.inference.condensed_model import load
    from srigl_np.nn.architectures import SMALL_SIZES, build_architecture
    sizes, shape = SMALL_SIZES["cifar_resnet18"]
    model = build_architecture("cifar_resnet18", rng=np.random.default_rng(0), **sizes)
    source = tmp_path / "state.pt"
    torch.save({k: torch.from_numpy(v) for k, v in model.state_dict().items()}, source)
    out_file = tmp_path / "m.npz"
    status, out, _ = _run(condense.main, [source, "--out", out_file, "--input-stats",
                                          "0.485,0.456,0.406", "0.229,0.224,0.225"], capsys)
    assert status == 0 and "mean [0.485, 0.456, 0.406]" in out
    served = load(out_file)
    image = np.random.default_rng(1).integers(0, 256, (2, *shape), dtype=np.uint8)
    mean = np.array([0.485, 0.456, 0.406])[:, None, None]
    std = np.array([0.229, 0.224, 0.225])[:, None, None]
    normalised = ((image / 255.0 - mean) / std).astype(np.float32)
    np.testing.assert_allclose(served.logits(image), served.logits(normalised, input_scale=
                                                                   "normalised"), rtol=1e-4,
                               atol=1e-5)


def test_a_condensed_model_file_with_overflowing_stats_is_refused():
    with pytest.raises(ValueError, match="would overflow float32"):
        check_input_stats((0.5, 1e-39))
    with pytest.raises(ValueError, match="std > 0"):
        check_input_stats(([], []))
    mean, std = check_input_stats((0.286, 0.353))
    assert mean.tolist() == [0.286] and std.tolist() == [0.353]


@pytest.mark.parametrize("main, argv, fragment", [
    (explain.main, ["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (experiments.main, ["--dataset", "imagenet", "--summary-only"], "argument --dataset"),
    (experiments.main, ["--models", "resnet", "--summary-only"],
     "--models resnet: --preset reproduction has no run of these models"),
])
def test_other_values_are_refused_in_one_line(main, argv, fragment, capsys, tmp_path,
                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, _, err = _run(main, argv, capsys)
    assert status == 2 and fragment in err


def test_explain_refuses_a_layer_too_large_to_draw(capsys):
    status, _, err = _run(explain.main, ["--shape", "100000x100000"], capsys)
    assert status == 1
    assert err.startswith("python -m srigl_np.explain: error: --shape 100000x100000 has "
                          "10000000000 weights, more than the 16777216 the random layer "
                          "may have")


def test_bench_json_is_written_through_a_symlink(tmp_path, capsys, monkeypatch):
    figures = {"read_gb_s": 10.0, "read_bytes": 2**28, "sgemm_gflop_s": 50.0, "sgemm_n": 1024,
               "llc_bytes": None, "other_cpus": 0.0, "load_flags": []}
    monkeypatch.setattr(bench_command, "measure_limits",
                        lambda counts, **k: {t: figures for t in counts})
    monkeypatch.setattr(bench_command, "run", lambda *a, **k: [])
    monkeypatch.setattr(bench_command, "baselines", lambda: {"torch": "-", "mkl": "-"})
    real = tmp_path / "bench.json"
    (tmp_path / "link.json").symlink_to(real)
    status, _, err = _run(bench_command.main, ["--shape", "8x8", "--threads", "1",
                                               "--json", tmp_path / "link.json"], capsys)
    assert status == 0 and err == ""
    assert os.path.islink(tmp_path / "link.json")
    assert json.loads(real.read_text())["records"] == []
