"""``python -m srigl_np.bench`` end to end on a tiny layer, its layer builder, and each of
its parts by hand-worked numbers: the baselines (MKL found from pip's wheel), the best
alternative, the limit figures, load detection from injected /proc/stat readings, the
--targets gate, --quick's time by arithmetic, the plot and benchmarks/bench_kernels.py.
Runs without torch, MKL or matplotlib (their tests skip)."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from srigl_np import bench
from srigl_np.bench import command, cpu_baselines, machine


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
        assert r["median_s"] > 0 and r["repeats"] >= bench.QUICK_ROUNDS   # one per turn
        assert r["speedup_vs_dense"] > 0 and r["speedup_vs_csr"] > 0
    for r in records:
        if r["implementation"] == "dense":
            assert r["speedup_vs_dense"] == 1.0
        if r["implementation"] == "csr":
            assert r["speedup_vs_csr"] == 1.0 and "faster orientation" in r["note"]
    out = capsys.readouterr().out
    assert "machine:" in out and "SRigL paper" in out and "48->80" in out
    # The header names the vector ISA, the kernels' path and this machine's own limits,
    # measured in this run at each thread count.
    assert "vectors: " in out and "condensed kernel path: " in out
    assert "this machine now" in out and "1 thread: read " in out and "2 threads: read " in out
    assert report["machine"]["vector_isa"] and report["machine"]["cpu_path"]
    assert set(report["machine"]["limits"]) == {"1", "2"}
    for figures in report["machine"]["limits"].values():
        assert figures["read_gb_s"] > 0 and figures["sgemm_gflop_s"] > 0
    assert report["quick"] is True and report["wall_s"] > 0 and "bench took" in out
    for r in records:
        assert r["best_alternative"] in bench.ALTERNATIVES
        assert r["speedup_vs_best_alternative"] > 0 and r["speedup_vs_best_csr"] > 0
        assert isinstance(r["load_flags"], list) and "other_cpus" in r
        assert r["cpu_path"] == report["machine"]["cpu_path"]
        assert r["machine_read_gb_s"] == report["machine"]["limits"][str(r["threads"])][
            "read_gb_s"]
        if r["implementation"] == "condensed":
            assert r["achieved_gb_s"] > 0 and r["achieved_gflop_s"] > 0
    assert "condensed vs best alternative" in out and "limit: condensed" in out
    assert "Summary: condensed against the fastest alternative" in out
    assert "NOT met" not in out   # the development targets need --targets


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
    records = bench.time_all(impls, sampler, min_time=1.0, rounds=3)
    assert calls == ["a", "slow", "fast"] * 3
    by_name = {r["implementation"]: r for r in records}
    assert by_name["dense"]["median_s"] == 3.0 and by_name["dense"]["note"] == "blas"
    assert by_name["csr"]["median_s"] == 1.0
    assert by_name["csr"]["note"] == "x @ Wt (faster orientation)"
    assert by_name["csr"]["repeats"] == 3 * 2   # ceil(5 / 3) calls per turn


def test_plot_is_written(tmp_path, fixed_limits):
    pytest.importorskip("matplotlib")
    path = tmp_path / "speedups.png"
    assert bench.main(["--quick", "--shape", "48x80", "--batch-sizes", "1", "--threads", "1",
                       "--min-time", "0.001", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["speedups.png"]   # no temp file left


def test_plot_without_matplotlib_is_refused_before_any_timing(monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: None if name == "matplotlib" else real_find_spec(name))
    with pytest.raises(SystemExit) as exc:
        bench.main(["--plot", "out.png"])
    assert exc.value.code == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_rows_are_labelled_with_the_sparsity_actually_built(tmp_path, capsys, fixed_limits):
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
    monkeypatch.setattr(command, "run", lambda *a, **k: pytest.fail("timed before refusing"))
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


def test_a_thread_count_past_the_bound_is_a_one_line_error(capsys, monkeypatch):
    with pytest.raises(SystemExit):
        bench.parse_args(["--threads", "100000"])
    assert "--threads must be in [0," in capsys.readouterr().err
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    with pytest.raises(SystemExit) as stop:
        bench.parse_args(["--threads", "1", "2"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("python -m srigl_np.bench: error: --threads must be in "
                                       "[0, 1] (this process may use 1 CPU), got 2\n")
    assert bench.parse_args([]).threads == [1]   # the default: 1 and all of them


# --- the baselines: every implementation computes the same product ----------------------

@pytest.fixture
def fixed_limits(monkeypatch):
    """main() with known machine figures instead of the real probes (which take a
    second or two per thread count): the limit lines then have fixed denominators."""
    def fake(thread_counts, quick=False, meter=None):
        return {t: {"read_gb_s": 10.0, "read_bytes": 2**28, "sgemm_gflop_s": 50.0,
                    "sgemm_n": 1024 if quick else 2048, "llc_bytes": None,
                    "other_cpus": 0.0, "load_flags": []} for t in thread_counts}
    monkeypatch.setattr(command, "measure_limits", fake)


def _outputs_agree(impls, weight, layer):
    """Each callable's product against x @ W.T (x: the dense callable's input)."""
    expected = impls["dense"][0]()
    for name, impl in impls.items():
        fns = impl if isinstance(impl, dict) else {impl[1]: impl[0]}
        for note, fn in fns.items():
            got = np.asarray(fn())
            want = expected[:, layer.active] if name in ("structured", "condensed") else expected
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4,
                                       err_msg=f"{name} {note}")


def test_every_available_implementation_computes_the_same_product():
    from srigl_np.inference.condensed import CondensedLinear

    rng = np.random.default_rng(3)
    weight = bench.constant_fan_in_weight(64, 40, 0.8, 0.25, rng)
    layer = CondensedLinear.from_dense(weight)
    impls = bench.implementations(weight, layer, 5, 1, rng)
    assert {"dense", "structured", "csr", "condensed"} <= set(impls)
    _outputs_agree(impls, weight, layer)


def test_mkl_csr_runs_both_orientations_and_matches_dense():
    pytest.importorskip("sparse_dot_mkl")
    mkl, why = bench.sparse_dot_mkl()
    if mkl is None:
        pytest.skip(f"sparse_dot_mkl is installed but {why}")
    from srigl_np.inference.condensed import CondensedLinear

    rng = np.random.default_rng(4)
    weight = bench.constant_fan_in_weight(96, 50, 0.9, 0.0, rng)
    layer = CondensedLinear.from_dense(weight)
    impls = bench.implementations(weight, layer, 7, 1, rng)
    assert set(impls["mkl-csr"]) == {"(W_csr @ x.T).T", "x @ Wt_csr"}
    _outputs_agree(impls, weight, layer)
    assert bench.baselines()["mkl"].startswith("MKL ")


def test_without_sparse_dot_mkl_there_is_no_mkl_row_and_the_header_says_how(monkeypatch):
    from srigl_np.inference.condensed import CondensedLinear

    monkeypatch.setattr(cpu_baselines, "sparse_dot_mkl",
                        lambda: (None, 'not installed (pip install "srigl_np[bench]")'))
    rng = np.random.default_rng(5)
    weight = bench.constant_fan_in_weight(32, 16, 0.5, 0.0, rng)
    impls = bench.implementations(weight, CondensedLinear.from_dense(weight), 2, 1, rng)
    assert "mkl-csr" not in impls
    assert "srigl_np[bench]" in bench.baselines()["mkl"]


def test_a_missing_sparse_dot_mkl_is_a_reason_not_an_error(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: None if name == "sparse_dot_mkl" else real_find_spec(name))
    module, why = bench.import_sparse_dot_mkl(environ={})
    assert module is None and why == 'not installed (pip install "srigl_np[bench]")'


def _fake_sparse_dot_mkl(tmp_path, monkeypatch, body):
    """A stand-in sparse_dot_mkl package on sys.path, whose import runs ``body``."""
    (tmp_path / "sparse_dot_mkl.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sparse_dot_mkl", raising=False)


def test_the_mkl_wheels_library_is_pointed_at_for_the_import_only(tmp_path, monkeypatch):
    lib = tmp_path / "lib" / "libmkl_rt.so.3"
    lib.parent.mkdir()
    lib.write_bytes(b"")
    _fake_sparse_dot_mkl(tmp_path, monkeypatch,
                         "import os\nSEEN = os.environ.get('MKL_RT')\n")
    environ = {}
    module, why = bench.import_sparse_dot_mkl(
        environ=environ, candidates=[str(tmp_path / "lib" / "libmkl_rt.so.4"), str(lib)])
    assert why is None
    # sparse_dot_mkl reads $MKL_RT when it is imported; the variable does not outlive that.
    assert module.SEEN is None   # the fake read os.environ, not the dict passed in
    assert "MKL_RT" not in environ and environ["KMP_BLOCKTIME"] == bench.MKL_BLOCKTIME_MS


def test_mkl_rt_seen_by_sparse_dot_mkl_is_the_wheels_unless_the_user_set_one(tmp_path,
                                                                          monkeypatch):
    lib = tmp_path / "libmkl_rt.so.3"
    lib.write_bytes(b"")
    _fake_sparse_dot_mkl(tmp_path, monkeypatch,
                         "import os\nSEEN = os.environ.get('MKL_RT')\n")
    monkeypatch.delenv("MKL_RT", raising=False)
    monkeypatch.setenv("KMP_BLOCKTIME", "200")   # the user's value is kept
    module, _ = bench.import_sparse_dot_mkl(candidates=[str(lib)])
    assert module.SEEN == str(lib)
    assert "MKL_RT" not in os.environ and os.environ["KMP_BLOCKTIME"] == "200"

    monkeypatch.setenv("MKL_RT", "/opt/intel/libmkl_rt.so")
    monkeypatch.delitem(sys.modules, "sparse_dot_mkl")
    module, _ = bench.import_sparse_dot_mkl(candidates=[str(lib)])
    assert module.SEEN == "/opt/intel/libmkl_rt.so"
    assert os.environ["MKL_RT"] == "/opt/intel/libmkl_rt.so"


def test_sparse_dot_mkl_that_cannot_load_mkl_gives_its_first_line(tmp_path, monkeypatch):
    _fake_sparse_dot_mkl(tmp_path, monkeypatch,
                         "raise ImportError('Unable to load the MKL libraries.\\nmore')\n")
    module, why = bench.import_sparse_dot_mkl(environ={}, candidates=[])
    assert module is None
    assert why == "sparse_dot_mkl cannot load MKL: Unable to load the MKL libraries."


def test_find_mkl_rt_takes_the_first_existing_file(tmp_path):
    present = tmp_path / "libmkl_rt.so.2"
    present.write_bytes(b"")
    assert bench.find_mkl_rt([str(tmp_path / "nope.so"), str(tmp_path), str(present)]) \
        == str(present)
    assert bench.find_mkl_rt([str(tmp_path / "nope.so")]) is None


def test_mkl_candidates_include_this_environments_lib(monkeypatch, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libmkl_rt.so.2").write_bytes(b"")
    (lib / "libmkl_rt.so.3").write_bytes(b"")
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    candidates = bench.mkl_rt_candidates()
    ours = [c for c in candidates if c.startswith(str(lib))]
    assert ours == [str(lib / "libmkl_rt.so.3"), str(lib / "libmkl_rt.so.2")]


def test_mkl_version_is_read_from_mkls_string():
    class Fake:
        @staticmethod
        def mkl_get_version_string():
            return "Intel(R) oneAPI Math Kernel Library Version 2026.2-Product Build 2026"
    assert bench.mkl_version(Fake) == "MKL 2026.2"
    assert bench.mkl_version(object()) == "MKL"


# --- the best alternative -----------------------------------------------------------------

def _case(**medians):
    return [{"implementation": name.replace("_", "-"), "median_s": s}
            for name, s in medians.items()]


def test_the_best_alternative_is_the_fastest_that_is_not_ours():
    case = bench.compare(_case(dense=4.0, structured=3.0, csr=6.0, condensed=1.0,
                               torch_dense=2.0, torch_csr=5.0, mkl_csr=2.5))
    ours = next(r for r in case if r["implementation"] == "condensed")
    assert ours["best_alternative"] == "torch-dense"
    assert ours["speedup_vs_best_alternative"] == 2.0
    assert ours["best_dense"] == "torch-dense" and ours["speedup_vs_best_dense"] == 2.0
    assert ours["best_csr"] == "mkl-csr" and ours["speedup_vs_best_csr"] == 2.5
    assert ours["speedup_vs_dense"] == 4.0 and ours["speedup_vs_csr"] == 6.0
    # condensed is never its own best alternative, even when it is the fastest overall,
    # and every record gets the row's names.
    assert all(r["best_alternative"] == "torch-dense" for r in case)
    mkl = next(r for r in case if r["implementation"] == "mkl-csr")
    assert mkl["speedup_vs_best_alternative"] == 2.0 / 2.5


def test_without_torch_or_mkl_the_best_csr_is_scipys():
    case = bench.compare(_case(dense=2.0, structured=2.0, csr=3.0, condensed=1.0))
    ours = next(r for r in case if r["implementation"] == "condensed")
    assert ours["best_alternative"] == "dense" and ours["best_csr"] == "csr"
    assert ours["speedup_vs_best_csr"] == 3.0
    assert bench.best_of({"dense": 1.0}, bench.CSR_KINDS) == (None, None)


# --- the limit: achieved bandwidth and GFLOP/s ----------------------------------------------

def test_condensed_traffic_counts_values_indices_and_x():
    # 3072 -> 768 at k=307 with int16 indices, batch 1: 768 * 307 weights.
    nnz = 768 * 307
    nbytes, flops = bench.condensed_traffic(nnz, 2, 3072, 1)
    assert nbytes == nnz * 4 + nnz * 2 + 3072 * 4 == 1_426_944
    assert flops == 2 * nnz
    assert bench.condensed_traffic(nnz, 4, 3072, 16) == (nnz * 8 + 3072 * 4 * 16, 2 * nnz * 16)
    assert bench.dense_traffic(3072, 768, 1) == (4 * 3072 * 768 + 4 * 3072, 2 * 3072 * 768)
    gb_s, gflop_s = bench.achieved(nbytes, flops, 1e-4)
    assert gb_s == pytest.approx(14.26944) and gflop_s == pytest.approx(4.71552)


class _Layer:
    def __init__(self, nnz, index_dtype):
        self.nnz, self.indices = nnz, np.zeros(1, dtype=index_dtype)


def test_limits_on_a_known_row():
    nnz = 1000
    limits = {"read_gb_s": 20.0, "sgemm_gflop_s": 100.0, "llc_bytes": None}
    for batch, seconds in ((1, 1e-6), (32, 1e-5)):
        case = [{"implementation": "condensed", "median_s": seconds, "shape": [768, 64],
                 "batch": batch, "threads": 2, "device": "cpu"},
                {"implementation": "csr", "median_s": seconds, "shape": [768, 64],
                 "batch": batch, "threads": 2, "device": "cpu"}]
        bench.add_limits(case, _Layer(nnz, np.int16), limits, "avx2")
        ours, csr = case
        assert ours["bytes_read"] == 1000 * 6 + 768 * 4 * batch
        assert ours["achieved_gb_s"] == pytest.approx(ours["bytes_read"] / seconds / 1e9)
        assert ours["achieved_gflop_s"] == pytest.approx(2 * nnz * batch / seconds / 1e9)
        assert ours["read_fraction"] == pytest.approx(ours["achieved_gb_s"] / 20.0)
        assert ours["sgemm_fraction"] == pytest.approx(ours["achieved_gflop_s"] / 100.0)
        assert ours["cpu_path"] == csr["cpu_path"] == "avx2"
        assert "achieved_gb_s" not in csr and csr["machine_read_gb_s"] == 20.0
        line = bench.limit_line(ours)
        if batch == 1:   # 9072 bytes in 1 us: 9.07 GB/s, 45% of 20 GB/s
            assert "reads 0.00907 MB per call (values+indices+x) at 9.1 GB/s" in line
            assert "= 45% of this machine's 20.0 GB/s read (2 threads)" in line
        else:            # 64000 flops in 10 us: 6.4 GFLOP/s, 6% of 100
            assert "runs 6.4 GFLOP/s (2*nnz*batch per call) = 6% of dense sgemm's " \
                   "100.0 GFLOP/s (2 threads)" in line


def test_a_row_whose_bytes_fit_in_cache_says_so():
    case = [{"implementation": "condensed", "median_s": 1e-6, "shape": [768, 64],
             "batch": 1, "threads": 1, "device": "cpu"}]
    bench.add_limits(case, _Layer(1000, np.int32), {"read_gb_s": 20.0, "sgemm_gflop_s": 1.0,
                                                    "llc_bytes": 2**20}, None)
    assert "fit in the 1 MiB last-level cache" in bench.limit_line(case[0])
    assert "of read GB/s (in cache)" in bench.summary_lines(case)[1]
    assert case[0]["bytes_read"] == 1000 * 8 + 768 * 4


def test_probes_measure_something(tmp_path):
    assert 0 < bench.read_bandwidth(1, nbytes=2**22, repeats=2) < float("inf")
    assert 0 < bench.read_bandwidth(2, repeats=2, buffer=np.ones(2**20, np.float32))
    assert 0 < bench.sgemm_gflops(1, n=64, repeats=2) < float("inf")


def test_the_read_test_is_larger_than_the_cache(tmp_path):
    for index, (level, size) in enumerate((("1", "48K"), ("2", "2048K"), ("3", "96M"))):
        d = tmp_path / f"index{index}"
        d.mkdir()
        (d / "size").write_text(size + "\n")
        (d / "level").write_text(level + "\n")
    assert bench.last_level_cache_bytes(str(tmp_path)) == 96 * 2**20
    assert bench.last_level_cache_bytes(str(tmp_path / "none")) is None
    assert bench.probe_bytes(96 * 2**20) == 4 * 96 * 2**20
    assert bench.probe_bytes(None) == bench.probe_bytes(2**20) == bench.READ_PROBE_BYTES
    assert bench.probe_bytes(None, memory=2**30) == 2**27


def test_quick_probes_are_shorter(monkeypatch):
    calls = []
    monkeypatch.setattr(machine, "read_bandwidth",
                        lambda threads, repeats, buffer: calls.append(("read", repeats)) or 1.0)
    monkeypatch.setattr(machine, "sgemm_gflops",
                        lambda threads, n, repeats: calls.append(("sgemm", n, repeats)) or 2.0)
    monkeypatch.setattr(machine, "probe_bytes", lambda llc, memory: 1024)
    limits = bench.measure_limits([1, 2], quick=True)
    assert calls == [("read", 3), ("sgemm", 1024, 3)] * 2
    assert limits[2]["read_gb_s"] == 1.0 and limits[2]["sgemm_gflop_s"] == 2.0
    calls.clear()
    bench.measure_limits([1], quick=False)
    assert calls == [("read", bench.PROBE_REPEATS), ("sgemm", 2048, bench.PROBE_REPEATS)]


# --- the machine: vector ISA and the kernels' CPU path ------------------------------------

def test_vector_isa_names_the_widest_and_its_width():
    assert bench.vector_isa({"sse2", "avx", "avx2", "avx512f"}) == "AVX-512 (512-bit)"
    assert bench.vector_isa({"sse2", "avx", "avx2"}) == "AVX2 (256-bit)"
    assert bench.vector_isa({"asimd"}) == "NEON (128-bit)"
    assert bench.vector_isa(set(), machine="riscv64") == "unknown (riscv64)"


def test_the_cpu_path_falls_back_when_the_kernels_do_not_say(monkeypatch):
    from srigl_np import kernels

    monkeypatch.setattr(kernels, "cpu_path", lambda: "avx2", raising=False)
    assert bench.kernel_cpu_path() == "avx2"
    monkeypatch.delattr(kernels, "cpu_path", raising=False)
    assert bench.kernel_cpu_path() == "not reported"


# --- load detection ---------------------------------------------------------------------------

PROC_STAT = """cpu  1000 10 200 5000 40 5 6 7 0 0
cpu0 600 5 100 2500 20 3 3 4 0 0
cpu1 400 5 100 2500 20 2 3 3 0 0
intr 12345
ctxt 678
"""


def test_proc_stat_busy_ticks(tmp_path):
    path = tmp_path / "stat"
    path.write_text(PROC_STAT)
    assert bench.read_cpu_busy(str(path)) == 1000 + 10 + 200 + 5 + 6 + 7   # no idle, iowait
    assert bench.read_cpu_busy(str(path), cpus=[1]) == 400 + 5 + 100 + 2 + 3 + 3
    assert bench.read_cpu_busy(str(path), cpus=[0, 7]) == 1228   # unknown CPU: all of them
    assert bench.read_cpu_busy(str(tmp_path / "missing")) is None   # not Linux


def test_other_cpus_is_the_machines_busy_time_less_ours():
    # 2 s of wall time; the CPUs were busy 300 ticks (3 s at 100 ticks/s), we used 1 s.
    assert bench.other_cpus(1000, 1300, 5.0, 6.0, 2.0, 100) == pytest.approx(1.0)
    assert bench.other_cpus(1000, 1100, 5.0, 6.5, 2.0, 100) == 0.0   # never negative
    assert bench.other_cpus(None, None, 5.0, 6.0, 2.0, 100) is None
    assert bench.other_cpus(1000, 1300, 5.0, 6.0, 0.0, 100) is None


class _Readings:
    """Successive values for an injected reader."""

    def __init__(self, *values):
        self.values = list(values)

    def __call__(self):
        return self.values.pop(0)


def test_load_meter_with_injected_readers():
    meter = bench.LoadMeter(read_busy=_Readings(0, 400), own_cpu=_Readings(10.0, 11.0),
                            clock=_Readings(0.0, 1.0), ticks_per_second=100, n_cpus=2)
    with meter:
        pass
    assert meter.wall == 1.0 and meter.other_cpus == pytest.approx(3.0)
    assert meter.resolution == pytest.approx(0.04)   # 2 CPUs x 1 tick at each end, over 1 s
    assert bench.load_flags(meter.other_cpus, meter.resolution) == \
        ["busy: other load used 3.0 CPUs"]
    # Where /proc/stat cannot be read (not Linux) there is no reading and no flag.
    quiet = bench.LoadMeter(read_busy=lambda: None, own_cpu=_Readings(0.0, 1.0),
                            clock=_Readings(0.0, 1.0), ticks_per_second=100, n_cpus=2)
    with quiet:
        pass
    assert quiet.other_cpus is None and bench.load_flags(None, quiet.resolution) == []


def test_busy_needs_more_than_the_tick_resolution():
    assert bench.load_flags(0.3, 0.01) == ["busy: other load used 0.3 CPUs"]
    assert bench.load_flags(0.3, 0.2) == []   # a short row: 0.3 could be rounding
    assert bench.load_flags(0.1, 0.0) == []


def test_unstable_repeats_are_flagged():
    assert bench.spread([1.0, 1.0, 1.0, 1.0]) == 0.0
    assert bench.spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx((4 - 2) / 3)
    assert bench.spread([1.0, 2.0]) is None
    assert bench.load_flags(None, None, 0.5, "csr") == ["unstable: csr IQR 50% of its median"]
    assert bench.load_flags(None, None, 0.1, "csr") == []


def _loaded_case(iqrs, busy_ticks):
    """A compared case (dense 2, structured 2, csr 3, condensed 1) whose implementations
    spread by ``iqrs`` over one second on 2 CPUs that were busy for ``busy_ticks`` of
    200 ticks, this process using 1 CPU-second of them; ``add_load`` applied."""
    case = bench.compare(_case(dense=2.0, structured=2.0, csr=3.0, condensed=1.0))
    for r, iqr in zip(case, iqrs):
        r.update(iqr_over_median=iqr, note="", shape=[8, 4], sparsity=0.5, batch=1,
                 threads=1, device="cpu")
    meter = bench.LoadMeter(read_busy=_Readings(0, busy_ticks), own_cpu=_Readings(0.0, 1.0),
                            clock=_Readings(0.0, 1.0), ticks_per_second=100, n_cpus=2)
    with meter:
        pass
    bench.add_load(case, meter)
    return case


def test_a_busy_row_is_marked_in_the_records_and_the_table():
    case = _loaded_case((0.05, 0.05, 0.45, 0.1), busy_ticks=190)
    assert all(r["other_cpus"] == pytest.approx(0.9) for r in case)
    assert case[0]["row_spread"] == 0.45 and case[0]["row_spread_of"] == "csr"
    assert case[0]["load_flags"] == ["busy: other load used 0.9 CPUs",
                                     "unstable: csr IQR 45% of its median"]
    text = bench.format_case(case)
    assert "! busy: other load used 0.9 CPUs; unstable: csr IQR 45% of its median" in text
    assert "vs best alternative dense: 2.00x?" in text   # the ratio is marked, not silent
    summary = "\n".join(bench.summary_lines(case))
    assert "2.00x?" in summary and "busy: other load used 0.9 CPUs" in summary


def test_an_idle_row_has_no_flags():
    case = _loaded_case((0.02,) * 4, busy_ticks=100)
    assert case[0]["load_flags"] == [] and case[0]["other_cpus"] == 0.0
    assert "!" not in bench.format_case(case)
    assert "2.00x?" not in bench.format_case(case)


def test_run_measures_each_row_with_the_meter(fixed_limits, tmp_path):
    made = []

    class Busy:
        other_cpus, resolution = 1.5, 0.01

        def __init__(self):
            made.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    records = bench.run([(48, 80)], [0.9], [1, 2], [1], min_time=0.0, rounds=1,
                        meter=Busy, log=lambda text: None)
    assert len(made) == 2   # one per row
    assert all(r["load_flags"][0] == "busy: other load used 1.5 CPUs" for r in records)


# --- output for users: the paper's figures always, our targets only on request ---------------

def test_targets_are_printed_only_with_the_flag(fixed_limits, monkeypatch, capsys):
    monkeypatch.setattr(command, "target_lines", lambda records: ["  768->3072 ... NOT met"])
    argv = ["--quick", "--shape", "48x80", "--batch-sizes", "1", "--threads", "1",
            "--min-time", "0"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "SRigL paper" in out and "0.48x" in out
    assert "NOT met" not in out and "target" not in out.lower()
    assert bench.main(argv + ["--targets"]) == 0
    out = capsys.readouterr().out
    assert "development targets" in out and "768->3072 ... NOT met" in out


def test_target_lines_compare_against_the_best_csr():
    record = {"implementation": "condensed", "device": "cpu", "threads": 2, "sparsity": 0.9,
              "batch": 1, "shape": [768, 3072], "speedup_vs_dense": 3.6,
              "speedup_vs_csr": 5.0, "speedup_vs_best_csr": 1.9, "best_csr": "mkl-csr",
              "load_flags": []}
    (line,) = bench.target_lines([record])
    assert "vs best csr (mkl-csr) 1.90x (target >= 2.0x)  NOT met" in line
    assert bench.target_lines([dict(record, speedup_vs_best_csr=2.1)])[0].endswith("  met")
    assert bench.target_lines([dict(record, shape=[48, 80])]) == []   # not a target case


# --- --quick keeps its promise --------------------------------------------------------------

def test_the_estimate_is_what_the_timing_loop_spends():
    clock = [0.0]
    cost = {"a": 0.004, "b": 0.05, "c": 0.2}

    def call(name):
        def fn():
            clock[0] += cost[name]
        return fn

    def sampler(fn, seconds, min_repeats):
        return bench.sample_seconds(fn, seconds, min_repeats, clock=lambda: clock[0])

    impls = {"a": (call("a"), ""), "csr": {"b": call("b"), "c": call("c")}}
    for rounds, min_repeats in ((bench.QUICK_ROUNDS, bench.QUICK_TURN_REPEATS), (10, None)):
        clock[0] = 0.0
        records = bench.time_all(impls, sampler, 0.03, rounds, min_repeats)
        assert clock[0] == pytest.approx(bench.estimate_row_seconds(
            [0.004, 0.05, 0.2], 0.03, rounds, min_repeats))
        least = min_repeats or bench.turn_repeats(rounds)
        assert {r["implementation"]: r["repeats"] for r in records}["csr"] == rounds * least


def test_quick_default_run_fits_its_promise_by_its_own_arithmetic():
    # A pessimistic model of 2 cores: every callable (9 with torch and MKL, each CSR
    # orientation counted) as slow as a dense product at 50 GFLOP/s, and no call under 20 us.
    # The rows may take half of the promise; layers, imports and probes the rest.
    args = bench.parse_args(["--quick", "--threads", "1", "2"])
    assert args.rounds == bench.QUICK_ROUNDS and args.min_time == bench.QUICK_MIN_TIME
    total = 0.0
    for n_in, n_out in args.shape:
        for batch in args.batch_sizes:
            for _ in args.threads:
                call = max(20e-6, 2 * n_in * n_out * batch / 50e9)
                total += bench.estimate_row_seconds([call] * 9, args.min_time, args.rounds,
                                                    args.min_repeats)
    assert total < bench.QUICK_SECONDS / 2
    # The full run, same model: the promise is --quick's alone.
    full = bench.parse_args(["--threads", "1", "2"])
    assert sum(bench.estimate_row_seconds([max(20e-6, 2 * i * o * b / 50e9)] * 9,
                                          full.min_time, full.rounds, full.min_repeats)
               for i, o in full.shape for b in full.batch_sizes for _ in full.threads) \
        > bench.QUICK_SECONDS


# --- the plot ---------------------------------------------------------------------------------

def test_the_plot_has_a_title_a_1x_line_and_one_panel_per_shape():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    records = []
    for shape in ([48, 80], [80, 48]):
        for batch in (1, 16):
            case = bench.compare(_case(dense=2.0, structured=2.0, csr=3.0, condensed=1.0))
            for r in case:
                r.update(shape=shape, sparsity=0.9, batch=batch, threads=2, device="cpu",
                         load_flags=["busy: x"] if batch == 16 else [])
            records += case
    fig = bench.plot_figure(records, {"cpu": "Test CPU", "vector_isa": "AVX2 (256-bit)"})
    try:
        axes = fig.get_axes()
        assert len(axes) == 2
        title = fig._suptitle.get_text()
        assert "Test CPU" in title and "AVX2" in title and "threads 2" in title
        assert "float32" in title and "90%" in title
        for ax, shape in zip(axes, ("48 -> 80", "80 -> 48")):
            assert shape in ax.get_title()
            assert ax.get_xlabel() == "batch size, threads"
            assert any(list(line.get_ydata()) == [1.0, 1.0] for line in ax.get_lines())
            labels = [t.get_text() for t in ax.get_xticklabels()]
            assert labels == ["batch 1\n2 threads", "batch 16\n2 threads\n(busy)"]
        assert "speedup over NumPy dense" in axes[0].get_ylabel()
    finally:
        plt.close(fig)


# --- benchmarks/bench_kernels.py: the Markdown table -----------------------------------------

@pytest.fixture(scope="module")
def kernels_script():
    from scripts import load_script

    return load_script("benchmarks/bench_kernels.py")


def _report():
    case = bench.compare(_case(dense=4e-3, structured=4e-3, csr=3e-3, condensed=1e-3,
                               mkl_csr=2e-3))
    for r in case:
        r.update(shape=[768, 3072], sparsity=0.9, batch=256, threads=2, device="cpu",
                 load_flags=[])
    bench.add_limits(case, _Layer(768 * 307, np.int16),
                     {"read_gb_s": 20.0, "sgemm_gflop_s": 100.0, "llc_bytes": None}, "avx2")
    return {"machine": {"cpu": "Test CPU", "cores": 2, "vector_isa": "AVX2 (256-bit)",
                        "cpu_path": "avx2"}, "records": case}


def test_the_markdown_table_has_the_issues_columns(kernels_script):
    lines = kernels_script.markdown_table(_report())
    assert lines[0].startswith("Test CPU, 2 cores; vectors AVX2 (256-bit); condensed kernel "
                               "path avx2")
    header, rule, row = lines[2], lines[3], lines[4]
    assert "numpy dense ms | scipy CSR ms | MKL CSR ms | condensed ms" in header
    assert "torch" not in header   # columns only for what ran
    assert rule.count("|") == header.count("|")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["768→3072, 90%, 256, 2", "4", "3", "2", "1"]
    assert cells[5:9] == ["mkl-csr", "2.00x", "4.00x", "2.00x"]
    # 2 * 768 * 307 * 256 flops in 1 ms: 120.7 GFLOP/s, 121% of a 100 GFLOP/s sgemm.
    assert cells[9] == "120.7 GFLOP/s (121% of sgemm)" and cells[10] == ""


def test_the_markdown_table_marks_a_busy_row(kernels_script):
    report = _report()
    for r in report["records"]:
        r["load_flags"] = ["busy: other load used 1.0 CPUs"]
    row = kernels_script.markdown_table(report)[4]
    assert "2.00x?" in row and "busy: other load used 1.0 CPUs" in row


def test_bench_kernels_reads_a_saved_report(kernels_script, tmp_path, capsys):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(_report()))
    assert kernels_script.main(["--from-json", str(path)]) == 0
    assert "| 768→3072, 90%, 256, 2 |" in capsys.readouterr().out
    path.write_text("{}")
    with pytest.raises(SystemExit):
        kernels_script.main(["--from-json", str(path)])
    assert "not a bench report" in capsys.readouterr().err


def test_bench_kernels_runs_the_bench(kernels_script, fixed_limits, capsys):
    assert kernels_script.main(["--quick", "--shape", "48x80", "--batch-sizes", "1",
                                "--threads", "1", "--min-time", "0"]) == 0
    out = capsys.readouterr().out
    assert "Summary: condensed" in out and "| 48→80, 92%, 1, 1 |" in out   # the sparsity built


@pytest.mark.parametrize("user_value, expected", [(None, "18"), ("4", "4")])
def test_the_bench_shortens_openblas_spin_before_numpy_loads(user_value, expected):
    # OpenBLAS reads the variable only as NumPy loads it: record it at that moment.
    import subprocess

    probe = """if True:
        import builtins, os
        seen = []
        real_import = builtins.__import__
        def spy(name, *args, **kwargs):
            if name == "numpy" and not seen:
                seen.append(os.environ.get("OPENBLAS_THREAD_TIMEOUT"))
            return real_import(name, *args, **kwargs)
        builtins.__import__ = spy
        import srigl_np.bench
        print(seen[0])
    """
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if user_value is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = user_value
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [expected]


def test_cpu_path_flag_switches_the_kernels_and_refuses_unknown_paths(capsys):
    from srigl_np.kernels import cpu_path, set_cpu_path

    before = cpu_path()
    try:
        with pytest.raises(SystemExit) as stop:
            bench.parse_args(["--cpu-path", "avx1024"])
        assert stop.value.code == 2
        assert "--cpu-path: name must be one of" in capsys.readouterr().err
        bench.parse_args(["--cpu-path", "generic"])
        assert cpu_path() == "generic"
    finally:
        set_cpu_path(before)


# -- a benchmark script's row flags and progress lines -------------------------------------

class _Meter:
    def __init__(self, other, resolution=0.0):
        self.other_cpus, self.resolution = other, resolution


def test_row_flags_take_off_the_expected_load_and_judge_the_worst_spread():
    records = [{"implementation": "a", "iqr_over_median": 0.05},
               {"implementation": "b", "iqr_over_median": 0.5},
               {"implementation": "c", "iqr_over_median": None}]
    assert bench.row_flags(_Meter(0.1)) == []
    assert bench.row_flags(_Meter(1.2)) == ["busy: other load used 1.2 CPUs"]
    assert bench.row_flags(_Meter(1.2), expected_other=1.0) == []   # our own neighbour
    assert bench.row_flags(_Meter(None), records) == ["unstable: b IQR 50% of its median"]


def test_flagged_figures_name_their_flags():
    assert bench.flagged("1.25x", []) == "1.25x"
    assert bench.flagged("1.25x", ["busy: other load used 1.2 CPUs",
                                   "unstable: b IQR 50% of its median"]) == \
        "1.25x (busy; unstable)"


def test_progress_lines_carry_the_elapsed_time():
    import io

    ticks = iter([10.0, 22.5])
    stream = io.StringIO()
    progress = bench.Progress(stream, clock=lambda: next(ticks))
    progress("layer b1 ...")
    assert stream.getvalue() == "[   12.5 s] layer b1 ...\n"


def test_gather_data_sampling_line(tmp_path):
    path = tmp_path / "gds"
    path.write_text("Mitigation: Microcode\n")
    assert bench.gather_data_sampling(str(path)) == "Mitigation: Microcode"
    assert bench.gather_data_sampling(str(tmp_path / "missing")) == "not reported"


def test_batch1_kernel_names_the_path_and_the_kernel():
    from srigl_np import kernels

    weights = kernels.CondensedWeights(np.ones((2, 1), np.float32),
                                       np.zeros((2, 1), np.int16), 3)
    assert bench.batch1_kernel(weights) == \
        f"{kernels.cpu_path()} {kernels.vector_kernel(weights)}"
