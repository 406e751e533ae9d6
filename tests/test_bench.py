"""``python -m srigl_np.bench`` end to end on a tiny layer, and its layer builder."""

import json

import numpy as np
import pytest

from srigl_np import bench


def test_main_writes_one_record_per_implementation_and_case(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert bench.main(["--quick", "--shape", "48x80", "--batch-sizes", "1", "3",
                       "--threads", "1", "2", "--min-time", "0.001", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    records = report["records"]
    assert {"cpu", "cores", "blas"} <= set(report["machine"])
    names = {r["implementation"] for r in records}
    assert {"dense", "structured", "csr", "condensed"} <= names
    assert len(records) == len(names) * 2 * 2
    for r in records:
        assert r["shape"] == [48, 80] and r["sparsity"] == 0.9
        assert r["batch"] in (1, 3) and r["threads"] in (1, 2)
        assert r["median_s"] > 0 and r["repeats"] >= 5
        assert r["speedup_vs_dense"] > 0 and r["speedup_vs_csr"] > 0
    for r in records:
        if r["implementation"] == "dense":
            assert r["speedup_vs_dense"] == 1.0
        if r["implementation"] == "csr":
            assert r["speedup_vs_csr"] == 1.0 and "faster orientation" in r["note"]
    out = capsys.readouterr().out
    assert "machine:" in out and "SRigL paper" in out and "48->80" in out


@pytest.mark.parametrize("ablated_frac", [0.0, 0.25])
def test_layer_has_constant_fan_in_and_the_requested_density(ablated_frac):
    weight = bench.constant_fan_in_weight(100, 40, 0.9, ablated_frac,
                                          np.random.default_rng(0))
    counts = (weight != 0).sum(axis=1)
    active = counts[counts > 0]
    assert active.size == 40 - round(ablated_frac * 40)
    assert np.unique(active).size == 1
    assert abs(active.sum() / weight.size - 0.1) < 0.01


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        bench.parse_args(["--sparsities", "1.0"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--shape", "12by4"])


def test_implementations_take_turns_and_csr_keeps_its_faster_orientation():
    calls, speed = [], {"a": 3.0, "slow": 2.0, "fast": 1.0}

    def sampler(fn, seconds, min_repeats):
        calls.append(fn())
        return [speed[calls[-1]]] * min_repeats

    impls = {"dense": (lambda: "a", "blas"),
             "csr": {"W @ x.T": lambda: "slow", "x @ Wt": lambda: "fast"}}
    records = bench._time_all(impls, sampler, min_time=1.0, rounds=3)
    assert calls == ["a", "slow", "fast"] * 3
    by_name = {r["implementation"]: r for r in records}
    assert by_name["dense"]["median_s"] == 3.0 and by_name["dense"]["note"] == "blas"
    assert by_name["csr"]["median_s"] == 1.0
    assert by_name["csr"]["note"] == "x @ Wt (faster orientation)"
    assert by_name["csr"]["repeats"] == 3 * 2   # ceil(5 / 3) calls per turn


def test_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "speedups.png"
    assert bench.main(["--quick", "--shape", "48x80", "--batch-sizes", "1", "--threads", "1",
                       "--min-time", "0.001", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["speedups.png"]   # no temp file left


def test_plot_without_matplotlib_is_refused_before_any_timing(monkeypatch, capsys):
    real_find_spec = bench.importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec",
                        lambda name: None if name == "matplotlib" else real_find_spec(name))
    with pytest.raises(SystemExit) as exc:
        bench.main(["--plot", "out.png"])
    assert exc.value.code == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_rows_are_labelled_with_the_sparsity_actually_built(tmp_path, capsys):
    # 10x10 at 99%: budget 1 weight, but k >= 1 per neuron gives 10 weights, i.e. 90%.
    path = tmp_path / "bench.json"
    assert bench.main(["--shape", "10x10", "--sparsities", "0.99", "--batch-sizes", "1",
                       "--threads", "1", "--min-time", "0.001", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sparsity 90.00% (requested 99.00%)" in out
    assert "sparsity 99%" not in out
    for r in json.loads(path.read_text())["records"]:
        assert r["sparsity"] == 0.99 and r["built_sparsity"] == pytest.approx(0.9)


def test_a_request_the_layer_holds_keeps_its_plain_label():
    record = {"sparsity": 0.9, "built_sparsity": 0.9}
    assert bench.sparsity_label(record) == "sparsity 90%"


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--ablated-frac", "nan"], "--ablated-frac must be in [0, 1)"),
    (["--min-time", "nan"], "--min-time must be a finite"),
    (["--min-time", "-1"], "--min-time must be a finite"),
    (["--min-time", "inf"], "--min-time must be a finite"),
    (["--shape", "100000x100000"], "--shape 100000x100000: the dense weight would have"),
    (["--shape", "46341x46341"], "--shape 46341x46341: the dense weight would have"),
    (["--shape", "48x80", "--batch-sizes", "100000000"], "--batch-sizes 100000000"),
])
def test_bad_numbers_are_refused_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_sizes_over_this_machines_memory_are_refused():
    assert bench.check_sizes([(1000, 1000)], [1], memory=10**6).startswith(
        "--shape 1000x1000: the bench would need about")
    assert bench.check_sizes([(1000, 1000)], [1], memory=10**12) is None


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_unwritable_targets_are_refused_before_any_timing(flag, tmp_path, capsys, monkeypatch):
    if flag == "--plot":
        pytest.importorskip("matplotlib")
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("timed before refusing"))
    regular = tmp_path / "file"
    regular.write_text("x")
    for target, message in [(tmp_path / "missing" / "out", "does not exist"),
                            (regular / "out", "is not a directory"),
                            (tmp_path, "is a directory")]:
        with pytest.raises(SystemExit) as exc:
            bench.main([flag, str(target)])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"{flag} {target}" in err and message in err
    assert not (tmp_path / "missing").exists()


def test_a_thread_count_past_the_bound_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--threads", "100000"])
    assert "--threads must be in [0," in capsys.readouterr().err
