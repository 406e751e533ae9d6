"""benchmarks/bench_checkpoint_read.py on a narrow ResNet-50 (the full size, ~100 MB, is
the benchmark's own run): it writes the state_dict with torch, reads it back in fresh
processes and reports times and peaks against the tensor bytes. Skips without torch."""

import pytest

from scripts import load_script

pytest.importorskip("torch")


def test_the_benchmark_reads_a_resnet50_state_dict_within_twice_its_tensors(tmp_path):
    bench = load_script("benchmarks/bench_checkpoint_read.py")
    record = bench.run(str(tmp_path), repeats=1, width=16)
    assert record["tensors"] == 320 and record["masks"] == 54
    assert record["mask_source"] == "zeros" and record["constant_fan_in_layers"] == 54
    assert record["tensor_bytes"] == record["written_tensor_bytes"]
    assert record["seconds_median"] > 0
    # the tensors themselves (no copy), the masks (a quarter of the float32 weights) and,
    # at this small size, the reader's modules imported during the read
    assert record["tracemalloc_over_tensors"] < 2.0
