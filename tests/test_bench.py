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
