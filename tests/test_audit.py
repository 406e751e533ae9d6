"""srigl_np.audit: the record schema, reading a trail back, and the command's table and errors."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from srigl_np import audit


def _record(**changes):
    """A valid record as DynamicSparsity writes it (NumPy values, as the update has them)."""
    values = dict(step=np.int64(5), layer="3.weight", method="srigl",
                  drop_fraction=np.float64(0.15), pruned=np.int64(40), grown=np.int64(40),
                  fan_in_before=[np.int64(7), np.int64(7)], fan_in_after=[9, 9],
                  active_neurons=np.int64(30), neurons=32,
                  ablated=np.array([4, 17], dtype=np.int64), nnz=np.int64(270), size=4608,
                  itop=np.float64(0.125))
    values.update(changes)
    return audit.make_record(**values)


def _write(path, *lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _cli(run_dir):
    return subprocess.run([sys.executable, "-m", "srigl_np.audit", str(run_dir)],
                          capture_output=True, text=True, timeout=60)


# -- the schema ------------------------------------------------------------------------------

def test_make_record_writes_plain_json_values_in_schema_order():
    record = _record()
    assert tuple(record) == audit.KEYS == tuple(key for key, _, _ in audit.FIELDS)
    assert record == {
        "step": 5, "layer": "3.weight", "method": "srigl", "drop_fraction": 0.15,
        "pruned": 40, "grown": 40, "fan_in_before": [7, 7], "fan_in_after": [9, 9],
        "active_neurons": 30, "neurons": 32, "ablated": [4, 17], "nnz": 270, "size": 4608,
        "itop": 0.125, "invariants": "ok"}
    assert all(type(record[k]) is int for k in ("step", "pruned", "nnz"))
    assert json.loads(json.dumps(record)) == record
    audit.check_record(json.loads(json.dumps(record)), "here")


def test_make_record_names_missing_and_unknown_keys():
    values = {key: 0 for key in audit.KEYS if key not in ("invariants", "itop")}
    with pytest.raises(TypeError, match=r"missing \['itop'\], unknown \[\]"):
        audit.make_record(**values)
    with pytest.raises(TypeError, match=r"unknown \['invariants'\]"):
        audit.make_record(**values, itop=0.5, invariants="ok")


def test_a_record_of_todays_trainer_still_reads():
    """A line of an audit.jsonl written before the schema moved here (keys and values)."""
    line = ('{"step": 5, "layer": "1.weight", "method": "srigl", "drop_fraction": '
            '0.22499999999999998, "pruned": 4093, "grown": 4093, "fan_in_before": [62, 62], '
            '"fan_in_after": [62, 62], "active_neurons": 300, "neurons": 300, "ablated": [], '
            '"nnz": 18600, "size": 235200, "itop": 0.09648384353741496, "invariants": "ok"}')
    record = json.loads(line)
    audit.check_record(record, "old")
    assert json.dumps(_record(**{k: v for k, v in record.items() if k != "invariants"})) == line


# -- reading a trail back ----------------------------------------------------------------------

def test_read_trail_returns_the_records(tmp_path):
    records = [_record(), _record(step=10, ablated=[])]
    path = _write(tmp_path / "audit.jsonl", *map(json.dumps, records))
    assert audit.read_trail(path) == records


def test_an_empty_trail_has_no_records(tmp_path):
    # What the trainer writes for a static run, or before the first update.
    assert audit.read_trail(_write(tmp_path / "audit.jsonl")) == []


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
    (_with("itop", None), "'itop' must be a number, got None"),
    (_with("layer", 3), "'layer' must be a string, got 3"),
    (_with("fan_in_after", [9]), r"'fan_in_after' must be a list of 2 integers, got \[9\]"),
    (_with("ablated", [1.5]), r"'ablated' must be a list of integers, got \[1.5\]"),
    (_with("invariants", False), "'invariants' must be a string, got False"),
])
def test_a_bad_line_is_one_error_naming_file_and_line(tmp_path, bad_line, message):
    path = _write(tmp_path / "audit.jsonl", json.dumps(_record()), bad_line,
                  json.dumps(_record()))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:2: {message}"):
        audit.read_trail(path)


def test_bytes_that_are_not_text_are_not_json(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:1: not JSON"):
        audit.read_trail(path)


def test_a_missing_trail_is_one_error_naming_the_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(path))}: no such file"):
        audit.read_trail(path)


# -- the command ---------------------------------------------------------------------------------

def test_the_table_of_a_good_trail(tmp_path, capsys):
    _write(tmp_path / "audit.jsonl",
           json.dumps(_record(step=5, layer="0.weight", ablated=[], fan_in_before=[6, 6],
                              fan_in_after=[6, 6], active_neurons=32, pruned=10, grown=10)),
           json.dumps(_record(step=5)),
           json.dumps(_record(step=10, ablated=[4, 17, 20], fan_in_before=[9, 9],
                              fan_in_after=[10, 10], active_neurons=29, pruned=5, grown=8,
                              nnz=290, itop=0.25)))
    assert audit.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{tmp_path / 'audit.jsonl'}: 3 records, 2 updates (steps 5..10)"
    assert lines[1].split() == ["layer", "method", "updates", "pruned", "grown", "ablated",
                                "over", "time", "active", "fan-in", "density", "ITOP", "checks"]
    assert set(lines[2]) <= {"-", " "}
    assert lines[3].split() == ["0.weight", "srigl", "1", "10", "10", "0", "32/32", "6", "→",
                                "6", "5.9%", "12.5%", "ok"]
    assert lines[4].split() == ["3.weight", "srigl", "2", "45", "48", "2", "→", "3", "29/32",
                                "7", "→", "10", "6.3%", "25.0%", "ok"]
    assert len(lines) == 5


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
