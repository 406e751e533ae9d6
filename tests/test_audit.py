"""srigl_np.audit: the record schema, reading a trail back, the command's table, the layers
kept dense, --plot, and errors."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from srigl_np import audit
from srigl_np.dst import trail


def _record(**changes):
    """A valid record as DynamicSparsity writes it (NumPy values, as the update has them)."""
    values = dict(step=np.int64(5), layer="3.weight", method="srigl",
                  drop_fraction=np.float64(0.15), pruned=np.int64(40), grown=np.int64(40),
                  regrown=np.int64(3), fan_in_before=[np.int64(7), np.int64(7)],
                  fan_in_after=[9, 9], active_neurons=np.int64(30), neurons=32,
                  ablated=np.array([4, 17], dtype=np.int64), nnz=np.int64(270),
                  zeros_in_mask=np.int64(41), size=4608, itop=np.float64(0.125))
    values.update(changes)
    return trail.make_record(**values)


def _write(path, *lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "srigl_np.audit", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


# -- the schema ------------------------------------------------------------------------------

def test_make_record_writes_plain_json_values_in_schema_order():
    record = _record()
    assert tuple(record) == trail.KEYS == tuple(key for key, _, _ in trail.FIELDS)
    assert record == {
        "step": 5, "layer": "3.weight", "method": "srigl", "drop_fraction": 0.15,
        "pruned": 40, "grown": 40, "regrown": 3, "fan_in_before": [7, 7],
        "fan_in_after": [9, 9], "active_neurons": 30, "neurons": 32, "ablated": [4, 17],
        "nnz": 270, "zeros_in_mask": 41, "size": 4608, "itop": 0.125, "invariants": "ok"}
    assert all(type(record[k]) is int for k in ("step", "pruned", "regrown", "nnz",
                                                "zeros_in_mask"))
    assert json.loads(json.dumps(record)) == record
    trail.check_record(json.loads(json.dumps(record)), "here")


def test_make_record_names_missing_and_unknown_keys():
    values = {key: 0 for key in trail.KEYS if key not in ("invariants", "itop")}
    with pytest.raises(TypeError, match=r"missing \['itop'\], unknown \[\]"):
        trail.make_record(**values)
    with pytest.raises(TypeError, match=r"unknown \['invariants'\]"):
        trail.make_record(**values, itop=0.5, invariants="ok")


@pytest.mark.parametrize("key", trail.ADDED_KEYS)
def test_the_added_keys_are_always_written(key):
    values = {k: 0 for k in trail.KEYS if k not in ("invariants", key)}
    with pytest.raises(TypeError, match=rf"missing \['{key}'\]"):
        trail.make_record(**values)


# A line of an audit.jsonl written before regrown and zeros_in_mask existed.
_OLD_LINE = ('{"step": 5, "layer": "1.weight", "method": "srigl", "drop_fraction": '
             '0.22499999999999998, "pruned": 4093, "grown": 4093, "fan_in_before": [62, 62], '
             '"fan_in_after": [62, 62], "active_neurons": 300, "neurons": 300, "ablated": [], '
             '"nnz": 18600, "size": 235200, "itop": 0.09648384353741496, "invariants": "ok"}')


def test_a_record_written_before_the_added_keys_still_reads():
    record = json.loads(_OLD_LINE)
    assert set(trail.KEYS) - set(record) == set(trail.ADDED_KEYS)
    trail.check_record(record, "old")
    # Today's writer gives the same line with the added keys in their schema places.
    today = _record(**{k: v for k, v in record.items() if k != "invariants"},
                    regrown=12, zeros_in_mask=4093)
    assert {k: v for k, v in today.items() if k not in trail.ADDED_KEYS} == record
    assert json.dumps(today) == _OLD_LINE.replace(
        '"grown": 4093, ', '"grown": 4093, "regrown": 12, ').replace(
        '"nnz": 18600, ', '"nnz": 18600, "zeros_in_mask": 4093, ')


# -- reading a trail back ----------------------------------------------------------------------

def test_read_trail_returns_the_records(tmp_path):
    records = [_record(), _record(step=10, ablated=[])]
    path = _write(tmp_path / "audit.jsonl", *map(json.dumps, records))
    assert trail.read_trail(path) == records


def test_an_empty_trail_has_no_records(tmp_path):
    # What the trainer writes for a static run, or before the first update.
    assert trail.read_trail(_write(tmp_path / "audit.jsonl")) == []


def _without(key):
    record = _record()
    del record[key]
    return json.dumps(record)


def _with(key, value):
    return json.dumps({**_record(), key: value})


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", r"not JSON \(Expecting property name"),
    ('{"step": 5', "not JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ("", "blank line, expected one JSON record per line"),
    (_without("itop"), r"missing keys \['itop'\]"),
    (_with("pruned", "40"), "'pruned' must be an integer, got '40'"),
    (_with("step", 5.0), "'step' must be an integer, got 5.0"),
    (_with("nnz", True), "'nnz' must be an integer, got True"),
    (_with("itop", None), "'itop' must be a finite number, got None"),
    (_with("layer", 3), "'layer' must be a string, got 3"),
    (_with("fan_in_after", [9]), r"'fan_in_after' must be a list of 2 integers, got \[9\]"),
    (_with("ablated", [1.5]), r"'ablated' must be a list of integers, got \[1.5\]"),
    (_with("regrown", 1.5), "'regrown' must be an integer, got 1.5"),
    (_with("zeros_in_mask", None), "'zeros_in_mask' must be an integer, got None"),
    (_with("invariants", False), "'invariants' must be a string, got False"),
    (_with("itop", float("nan")), "'itop' must be a finite number, got nan"),
    (_with("drop_fraction", float("inf")), "'drop_fraction' must be a finite number, got inf"),
])
def test_a_bad_line_is_one_error_naming_file_and_line(tmp_path, bad_line, message):
    path = _write(tmp_path / "audit.jsonl", json.dumps(_record()), bad_line,
                  json.dumps(_record()))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:2: {message}"):
        trail.read_trail(path)


def test_bytes_that_are_not_text_are_not_json(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:1: not JSON"):
        trail.read_trail(path)


@pytest.mark.parametrize("bad_line, message", [
    # json.loads raised RecursionError (a traceback) on these
    ("[" * 100000 + "]" * 100000, "JSON nested too deeply for a record"),
    ('{"a": ' * 5000 + "1" + "}" * 5000, "JSON nested too deeply for a record"),
    # a record is a few hundred characters; this line is read no further than the bound
    ("[" + "{}," * 1_500_000 + "{}]", "a line of more than 4194304 characters"),
])
def test_a_deep_or_huge_line_is_one_error_before_it_is_parsed(tmp_path, bad_line, message):
    from npz_files import peak_bytes
    path = _write(tmp_path / "audit.jsonl", json.dumps(_record()), bad_line)
    error, peak = peak_bytes(lambda: trail.read_trail(path))
    assert str(error).startswith(f"{path}:2: {message}") and "\n" not in str(error)
    assert peak < 64 << 20   # parsed, the last line would take ~100 MB of dicts


def test_a_missing_trail_is_one_error_naming_the_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(path))}: no such file"):
        trail.read_trail(path)


# -- the command ---------------------------------------------------------------------------------

def _good_trail(path):
    return _write(path / "audit.jsonl",
                  json.dumps(_record(step=5, layer="0.weight", ablated=[], fan_in_before=[6, 6],
                                     fan_in_after=[6, 6], active_neurons=32, pruned=10,
                                     grown=10, regrown=0, zeros_in_mask=10)),
                  json.dumps(_record(step=5)),
                  json.dumps(_record(step=10, ablated=[4, 20, 21], fan_in_before=[9, 9],
                                     fan_in_after=[10, 10], active_neurons=29, pruned=5,
                                     grown=8, regrown=2, nnz=290, zeros_in_mask=9,
                                     itop=0.25)))


def test_the_table_of_a_good_trail(tmp_path, capsys):
    _good_trail(tmp_path)
    assert audit.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{tmp_path / 'audit.jsonl'}: 3 records, 2 updates (steps 5..10)"
    assert lines[1].split() == ["layer", "method", "updates", "pruned", "grown", "regrown",
                                "ablated", "newly", "ablated", "returned", "active", "fan-in",
                                "density", "zeros", "in", "mask", "ITOP", "checks"]
    assert set(lines[2]) <= {"-", " "}
    assert lines[3].split() == ["0.weight", "srigl", "1", "10", "10", "0", "0", "→", "0", "0",
                                "0", "32/32", "6", "→", "6", "5.9%", "10", "12.5%", "ok"]
    # pruned and grown are summed net of regrown; zeros in mask is the last update's;
    # neuron 17 returns at step 10 while 20 and 21 are ablated: 2 → 3, 4 ablated, 1 back.
    assert lines[4].split() == ["3.weight", "srigl", "2", "45", "48", "5", "2", "→", "3", "4",
                                "1", "29/32", "7", "→", "10", "6.3%", "9", "25.0%", "ok"]
    notes = lines[5:5 + len(audit.TABLE_NOTES)]
    assert notes == list(audit.TABLE_NOTES)
    assert any(note.startswith("ITOP: in-time over-parameterisation, the fraction of "
                               "weights ever active") for note in notes)
    assert any(note.startswith("pruned, grown: net of regrown") for note in notes)
    # Every update its own row: counts after it, +newly ablated, -returned ("-": the
    # layer has no update at that step).
    assert lines[5 + len(audit.TABLE_NOTES):] == [
        "", audit.ABLATION_NOTE,
        "step  0.weight  3.weight",
        "----  --------  --------",
        "5     0         2 +2",
        "10    -         3 +2 -1"]


def test_ablation_events_follow_every_neuron_through_every_update():
    records = [_record(step=step, ablated=ablated, neurons=8) for step, ablated in
               ((100, [1, 2]), (200, [2, 5]), (300, [2, 5]), (400, [1, 5]))]
    events = audit.ablation_events(records)["3.weight"]
    assert events["steps"] == [100, 200, 300, 400]
    assert events["ablated"] == [2, 2, 2, 2]      # the net count never moves ...
    assert events["newly_ablated"] == [[1, 2], [5], [], [1]]   # ... the neurons do
    assert events["returned"] == [[], [1], [], [2]]
    assert events["timeline"] == {"1": {"ablated": [100, 400], "returned": [200]},
                                  "2": {"ablated": [100], "returned": [400]},
                                  "5": {"ablated": [200], "returned": []}}
    assert audit.ablation_counts(events) == ([2, 1, 0, 1], [0, 1, 0, 1])


def test_a_short_run_that_ablates_and_returns_shows_both(tmp_path, capsys):
    """The README's settings (mlp at 99%, γ_sal 0.7) on a run of a few seconds."""
    from srigl_np.train import main as train

    out = tmp_path / "run"
    assert train(["--dataset", "embedded", "--epochs", "20", "--sparsity", "0.99",
                  "--gamma-sal", "0.7", "--progress", "off", "--out", str(out)]) == 0
    capsys.readouterr()
    assert audit.main([str(out), "--json"]) == 0
    ablation = json.loads(capsys.readouterr().out)["ablation"]
    records = trail.read_trail(out / "audit.jsonl")
    assert set(ablation) == {r["layer"] for r in records}
    for layer, events in ablation.items():   # every update, none sampled
        assert events["steps"] == [r["step"] for r in records if r["layer"] == layer]
    returned = {(layer, i): steps["returned"] for layer, e in ablation.items()
                for i, steps in e["timeline"].items() if steps["returned"]}
    assert returned, "no neuron returned"
    (layer, neuron), steps = next(iter(returned.items()))
    step = steps[0]
    before, after = ([r for r in records if r["layer"] == layer and r["step"] == s][0]
                     for s in (step - 100, step))
    assert int(neuron) in before["ablated"] and int(neuron) not in after["ablated"]
    assert audit.main([str(out)]) == 0
    table = capsys.readouterr().out
    assert re.search(r" -\d", table) and re.search(r" \+\d", table)


def test_a_trail_written_before_the_added_keys_shows_them_unknown(tmp_path, capsys):
    old = json.loads(_OLD_LINE)
    _write(tmp_path / "audit.jsonl", _OLD_LINE, json.dumps({**old, "step": 10}))
    assert audit.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3].split() == ["1.weight", "srigl", "2", "8186", "8186", "-", "0", "→", "0",
                                "0", "0", "300/300", "62", "→", "62", "7.9%", "-", "9.6%", "ok"]
    assert lines[4 + len(audit.TABLE_NOTES)].startswith("-: not in this trail")
    # A run resumed by a newer trainer: the regrown it knows is a lower bound.
    assert audit.summarise([old, _record(layer="1.weight", regrown=7)])[0]["regrown"] == ">=7"


def test_the_table_of_an_empty_trail(tmp_path, capsys):
    _write(tmp_path / "audit.jsonl")
    assert audit.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["no topology updates recorded"]


def test_an_old_trail_with_a_failed_check_is_reported_with_status_1(tmp_path, capsys):
    failure = "layer '3.weight': neuron 0 has 8 active weights, expected fan-in 7"
    _write(tmp_path / "audit.jsonl", json.dumps(_record()),
           json.dumps({**_record(step=10), "invariants": failure}))
    assert audit.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "1 FAILED" in out
    assert out.splitlines()[-1] == f"step 10 3.weight: {failure}"


@pytest.mark.parametrize("content, message", [
    (None, "audit.jsonl: no such file"),
    ("{oops\n", "audit.jsonl:1: not JSON"),
    (json.dumps({"step": 5}) + "\n", "audit.jsonl:1: missing keys ['layer'"),
    ('{"step": "5"}\n', "audit.jsonl:1: missing keys"),
    (_with("grown", -1.5) + "\n", "audit.jsonl:1: 'grown' must be an integer, got -1.5"),
])
def test_the_command_exits_1_with_one_line_for_a_bad_trail(tmp_path, content, message):
    if content is not None:
        (tmp_path / "audit.jsonl").write_text(content)
    result = _cli(tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"python -m srigl_np.audit: error: {tmp_path}")
    assert message in lines[0]


# -- the layers kept dense -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One epoch of SRigL at 90% ERK on the embedded subset: updates at steps 5 and 10, and
    the small output layer (100x10) kept dense by ERK."""
    from srigl_np.train import main

    out = tmp_path_factory.mktemp("run") / "mlp-srigl"
    assert main(["--dataset", "embedded", "--epochs", "1", "--batch-size", "256",
                 "--delta", "5", "--progress", "off", "--out", str(out)]) == 0
    return out


def _copy_with_meta(run, out, change):
    """A copy of the run directory whose checkpoint meta went through ``change(meta)``."""
    out.mkdir()
    for name in ("audit.jsonl", "metrics.json"):
        (out / name).write_bytes((run / name).read_bytes())
    with np.load(run / "checkpoint.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["meta"]))
    change(meta)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(out / "checkpoint.npz", **arrays)
    return out


_KEPT_DENSE = ["kept dense by the distribution (no updates, no records):",
               "  5.weight  10x100  ERK gives it density 1"]


def test_a_run_lists_the_layers_its_distribution_kept_dense(run, capsys):
    assert audit.kept_dense(run) == {"5.weight": ([10, 100], "ERK gives it density 1")}
    assert audit.main([str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index(_KEPT_DENSE[0])
    assert lines[at:at + 2] == _KEPT_DENSE
    assert audit.main([str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kept_dense"] == {"5.weight": {"shape": [10, 100],
                                                 "reason": "ERK gives it density 1"}}
    assert [row["layer"] for row in report["trail"]] == ["1.weight", "3.weight"]


def test_a_checkpoint_without_the_record_gives_the_layers_with_full_masks(run, tmp_path,
                                                                          capsys):
    def forget(meta):
        del meta["kept_dense"], meta["layer_sparsity"]

    old = _copy_with_meta(run, tmp_path / "old", forget)
    assert audit.kept_dense(old) == audit.kept_dense(run)
    assert audit.main([str(old)]) == 0
    assert "\n".join(_KEPT_DENSE) in capsys.readouterr().out


def test_a_dense_run_or_a_bare_trail_keeps_no_layer_dense(run, tmp_path):
    def dense(meta):
        meta["config"]["method"] = "dense"

    assert audit.kept_dense(_copy_with_meta(run, tmp_path / "dense", dense)) == {}
    _good_trail(tmp_path)
    assert audit.kept_dense(tmp_path) == {}


def test_a_bad_kept_dense_record_is_one_error(run, tmp_path):
    def bad(meta):
        meta["kept_dense"] = {"9.weight": "no such layer"}

    result = _cli(_copy_with_meta(run, tmp_path / "bad", bad))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "meta 'kept_dense'" in result.stderr


# -- --plot --------------------------------------------------------------------------------------

def _png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_plot_draws_a_row_of_panels_per_layer(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    _good_trail(tmp_path)
    figure = tmp_path / "trail.png"
    assert audit.main([str(tmp_path), "--plot", str(figure)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == (f"plot: {figure} (2 layers x 5 panels: active neurons, neurons "
                         f"newly ablated (up) / returned (down), fan-in k (min-max), ITOP %, "
                         f"pruned / grown / regrown per update)")
    # 3.2 x 5 panels wide, 2.2 per layer + 0.6 high, at 100 dpi.
    assert _png_size(figure) == (1600, 500)
    assert sorted(os.listdir(tmp_path)) == ["audit.jsonl", "trail.png"]   # no temporary left


@pytest.mark.parametrize("name, start", [("trail.svg", b"<?xml"), ("trail.pdf", b"%PDF"),
                                         ("trail", b"\x89PNG")])
def test_plot_format_follows_the_suffix(tmp_path, name, start):
    pytest.importorskip("matplotlib")
    _good_trail(tmp_path)
    assert audit.main([str(tmp_path), "--plot", str(tmp_path / name)]) == 0
    assert (tmp_path / name).read_bytes().startswith(start)


def test_plot_of_an_old_trail_and_of_a_run_with_its_checkpoint(run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    _write(tmp_path / "audit.jsonl", _OLD_LINE)
    assert audit.main([str(tmp_path), "--plot", str(tmp_path / "old.png")]) == 0
    assert _png_size(tmp_path / "old.png") == (1600, 280)
    capsys.readouterr()
    assert audit.main([str(run), "--plot", str(tmp_path / "run.png")]) == 0
    out = capsys.readouterr().out
    assert "2 layers x 5 panels" in out and "run, structure from mask" in out
    assert _png_size(tmp_path / "run.png") == (1600, 500)


@pytest.mark.parametrize("lines, name, message", [
    ((), "trail.png", "nothing to plot into"),
    ((_OLD_LINE,), "trail.xyz", "unknown image format 'xyz'; the suffix must be one of "),
])
def test_plot_errors_are_one_line(tmp_path, lines, name, message):
    pytest.importorskip("matplotlib")
    _write(tmp_path / "audit.jsonl", *lines)
    figure = tmp_path / name
    result = _cli(tmp_path, "--plot", figure)
    assert result.returncode == 1 and result.stdout == ""
    errors = result.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith("python -m srigl_np.audit: error: ")
    assert message in errors[0]
    assert not figure.exists()


def test_plot_of_a_model_file_says_it_needs_a_run(run, tmp_path):
    figure = tmp_path / "trail.png"
    result = _cli(run / "checkpoint.npz", "--plot", figure)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == (
        f"python -m srigl_np.audit: error: --plot draws a run's audit trail, and "
        f"{run / 'checkpoint.npz'} has none: give the run directory, not a model file")
    assert not figure.exists()


def test_plot_without_matplotlib_is_one_line_saying_how_to_install_it(tmp_path):
    _good_trail(tmp_path)
    figure = tmp_path / "trail.png"
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from srigl_np.audit import main\n"
            f"sys.exit(main([{str(tmp_path)!r}, '--plot', {str(figure)!r}]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == ("python -m srigl_np.audit: error: --plot needs "
                                     "matplotlib: pip install matplotlib (or srigl_np[plot])")
    assert not figure.exists()


def test_a_trail_with_a_gap_is_refused(tmp_path):
    path = _write(tmp_path / "audit.jsonl", *(json.dumps(_record(step=step))
                                               for step in (100, 200, 400, 500)))
    with pytest.raises(ValueError, match=r"gap: layer '3.weight' has no update between "
                                         r"step 200 and step 400"):
        trail.read_trail(path)
    assert audit.main([str(tmp_path)]) == 1


@pytest.mark.parametrize("key", ["size", "neurons"])
def test_a_record_with_a_zero_size_is_refused(tmp_path, key):
    path = _write(tmp_path / "audit.jsonl", json.dumps({**_record(), key: 0}))
    with pytest.raises(ValueError, match=rf"audit.jsonl:1: '{key}' must be an integer > 0"):
        trail.read_trail(path)


@pytest.mark.parametrize("steps, layers, message", [
    ((10, 5), ("3.weight", "3.weight"),
     "step 5 after step 10: the records must be in step order, as the trainer writes them"),
    ((5, 10, 10, 5), ("0.weight", "0.weight", "3.weight", "3.weight"),
     "step 5 after step 10: the records must be in step order, as the trainer writes them"),
    ((5, 5), ("3.weight", "3.weight"),
     "a second record of layer '3.weight' at step 5 (the first is line 1)"),
    ((5, 5, 5), ("0.weight", "3.weight", "0.weight"),
     "a second record of layer '0.weight' at step 5 (the first is line 1)"),
])
def test_a_reversed_or_duplicated_trail_is_refused_naming_the_line(tmp_path, steps, layers,
                                                                    message):
    """Such trails read as a clean run before (the audit said "check ok")."""
    path = _write(tmp_path / "audit.jsonl", *(json.dumps(_record(step=step, layer=layer))
                                               for step, layer in zip(steps, layers)))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:{len(steps)}: "
                                         rf"{re.escape(message)}$"):
        trail.read_trail(path)
    result = _cli(tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"python -m srigl_np.audit: error: {path}:{len(steps)}: {message}\n"


def test_records_of_several_layers_per_step_in_step_order_read(tmp_path):
    lines = [json.dumps(_record(step=step, layer=layer)) for step in (5, 10, 15)
             for layer in ("0.weight", "3.weight")]
    assert len(trail.read_trail(_write(tmp_path / "audit.jsonl", *lines))) == 6
