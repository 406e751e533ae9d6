"""benchmarks/bench_batch1.py: batch-1 kernels beside dense and CSR in one table (the figures
themselves are not judged here)."""

import pytest

from scripts import load_script
from srigl_np.kernels import cpu_paths

script = load_script("benchmarks/bench_batch1.py")


def test_gather_data_sampling_reads_the_kernel_file_or_says_not_reported(tmp_path):
    status = tmp_path / "gather_data_sampling"
    status.write_text("Mitigation: Microcode\n")
    assert script.gather_data_sampling(str(status)) == "Mitigation: Microcode"
    assert script.gather_data_sampling(str(tmp_path / "missing")) == "not reported"


def test_table_has_baselines_each_path_its_kernels_and_the_ratios(capsys):
    pytest.importorskip("torch")
    paths = list(cpu_paths())
    assert script.main(["--shape", "40x16", "--threads", "1", "--min-time", "0.002",
                        "--rounds", "1", "--paths", *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "gather_data_sampling: " in lines[0]
    assert lines[1].startswith("fixed cost of a call") and all(p in lines[1] for p in paths)
    header = next(line for line in lines if line.startswith("| layer"))
    for name in ["numpy", "torch", "scipy-csr", "torch-csr", *paths,
                 f"{paths[0]} vs dense", f"{paths[0]} vs csr", "flags"]:
        assert f" {name} |" in header
    for path in paths:
        for kernel in script.path_kernels(path):
            assert f" {path} {kernel} |" in header
    row = next(line for line in lines if line.startswith("| 40→16, 1 |"))
    assert row.count("|") == header.count("|")


@pytest.mark.parametrize("argv", [["--threads", "0"], ["--min-time", "0"], ["--rounds", "0"],
                                  ["--paths", "sse9"], ["--shape", "40by16"]])
def test_bad_arguments_stop_with_usage(argv):
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 2


def test_team_wake_script_times_both_team_sizes_and_puts_the_grain_back(capsys,
                                                                         monkeypatch):
    from srigl_np import thread_policy

    wake = load_script("benchmarks/batch1_team_wake.py")
    monkeypatch.setattr(wake, "SHAPES", ((16, 8),))
    real = wake.median_ms
    monkeypatch.setattr(wake, "median_ms",
                        lambda call, calls=2000, gap=0.0, rounds=7: real(call, 3, gap / 2, 3))
    grain = thread_policy.GRAIN_WORK
    wake.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("16->8: 1 thread ") and "; 2 threads " in lines[1]
    assert lines[-1] == "quiet" or lines[-1].startswith("busy")
    assert thread_policy.GRAIN_WORK == grain
