"""benchmarks/bench_memory.py at a tiny shape (the full 40000 -> 50000 layer is the
benchmark's own run): it builds the condensed layer, trains, rewires with
srigl_update_rows and checks the layout; its row sampler draws distinct columns."""

import numpy as np

from scripts import load_script

bench = load_script("benchmarks/bench_memory.py")


def test_random_columns_are_distinct_ascending_and_cover_the_range():
    rng = np.random.default_rng(0)
    columns = bench.random_columns(rng, 300, 50, 20, 7, np.int16)
    assert columns.shape == (300, 20) and columns.dtype == np.int16
    assert (np.diff(columns, axis=1) > 0).all()
    assert columns.min() >= 0 and columns.max() < 50
    # Uniform: every column is drawn about 300 * 20 / 50 = 120 times.
    counts = np.bincount(columns.reshape(-1), minlength=50)
    assert counts.min() > 70 and counts.max() < 170
    # k = n_in: every column, however many repeats the draws hold.
    np.testing.assert_array_equal(bench.random_columns(rng, 5, 8, 8, 2, np.int16),
                                  np.tile(np.arange(8), (5, 1)))


def test_the_benchmark_trains_and_rewires_a_small_layer(capsys):
    # The limit is the whole process's peak, which earlier tests in this one set already.
    assert bench.main(["--n-in", "300", "--n-out", "200", "--k", "6", "--batch", "4",
                       "--steps", "4", "--update-every", "2", "--block-rows", "7",
                       "--limit-gb", "1000"]) == 0
    out = capsys.readouterr().out
    assert out.count("layout checked") == 2 and "peak RSS" in out


def test_update_memory_reports_each_paths_steps(capsys):
    """benchmarks/update_memory.py: a row per path, whose update step allocates more than
    its ordinary step (the grow score's blocks, the new layout)."""
    script = load_script("benchmarks/update_memory.py")
    script.main(["--n-in", "256", "--n-out", "48", "--sparsity", "0.9",
                 "--grad-accumulation", "2"])
    captured = capsys.readouterr()
    rows = [line.split(" | ") for line in captured.out.splitlines()
            if line.startswith("| condensed") or line.startswith("| masked")]
    assert [row[0] for row in rows] == ["| condensed", "| masked"]
    for row in rows:
        ordinary, window, update = (float(cell.split()[0]) for cell in row[1:4])
        assert update > ordinary and row[4].endswith(" ms")
    assert captured.err.count("update at step") == 16


def test_the_benchmark_trains_a_small_layer_through_the_trainer(capsys):
    assert bench.main(["--trainer", "--n-in", "300", "--n-out", "200", "--k", "6",
                       "--batch", "4", "--steps", "4", "--update-every", "2",
                       "--limit-gb", "1000"]) == 0
    out = capsys.readouterr().out
    assert "condensed, fan-in 6," in out
    assert out.count("with its update") == 2 and out.count("invariants ok") == 2
    assert "peak RSS" in out
