"""benchmarks/bench_cpu_paths.py: every CPU path and batch-1 kernel in one table (the
figures themselves are not judged here)."""

import pytest

from scripts import load_script
from srigl_np.kernels import cpu_paths

script = load_script("benchmarks/bench_cpu_paths.py")


def test_the_lookup_is_on_avx512_only_and_the_interleaved_rows_on_the_x86_paths():
    for path in cpu_paths():
        assert script.has_kernel(path, "lookup") == (path == "avx512")
        assert script.has_kernel(path, "interleaved") == (path in ("avx512", "avx2"))
        assert script.has_kernel(path, "gather-dot")


def test_table_has_a_column_per_path_and_batch_1_kernel(capsys):
    assert script.main(["--shape", "40x16", "--batch-sizes", "1", "3", "--threads", "1",
                        "--min-time", "0.001", "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[2]
    for path in cpu_paths():
        assert f" {path} |" in header and f" {path} gather-dot |" in header
    assert (" avx512 lookup |" in header) == ("avx512" in cpu_paths())
    assert (" avx2 interleaved |" in header) == ("avx2" in cpu_paths())
    rows = [line for line in lines if line.startswith("| 40→16")]
    assert [row.split("|")[1].strip() for row in rows] == ["40→16, 1, 1", "40→16, 3, 1"]
    assert header.endswith(" flags |")   # each row's load flags, "-" for none
    batch_1 = [cell.strip() for cell in rows[0].split("|")[2:-2]]
    assert all(float(cell) > 0 for cell in batch_1)
    batch_3 = [cell.strip() for cell in rows[1].split("|")[2:-2]]
    forced = sum(script.has_kernel(path, kernel) for path in cpu_paths()
                 for kernel in script.KERNELS)
    assert batch_3.count("-") == forced


@pytest.mark.parametrize("argv", [["--batch-sizes", "0"], ["--threads", "0"],
                                  ["--min-time", "0"], ["--rounds", "0"],
                                  ["--shape", "40by16"]])
def test_bad_arguments_stop_with_usage(argv):
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 2
