"""Batch-1 condensed products on each CPU path and batch-1 kernel, beside dense and CSR.

    python benchmarks/bench_batch1.py                         # 768x3072, 3072x768, 4096x4096
    python benchmarks/bench_batch1.py --paths avx2 --threads 1 2 --rounds 9

One process, one random 90%-sparse constant fan-in layer per shape
(``bench.constant_fan_in_weight``), batch 1, float32; every column of a row timed in
interleaved rounds (``bench.time_all``), medians in ms. Columns:

    numpy, torch               dense x @ W.T (BLAS, torch), held to the row's threads
    scipy-csr, torch-csr       W_csr @ x.T (scipy runs one thread whatever the row says)
    <path>                     ``CondensedLinear.forward`` on CPU path <path> (forced with
                               ``kernels.set_cpu_path``): the batch-1 kernel that path
                               picks for the layer, named in brackets
    <path> <kernel>            ``condensed_matvec`` forced onto one batch-1 kernel
                               (``_kernels._condensed_matvec_kernel``), each kernel the
                               path has
    vs dense, vs csr           the best dense and the best CSR time over the first <path>'s

Each row ends with the load flags of ``bench.load_flags`` (other CPU-bound processes
measured while it ran, and the widest spread), and the header gives the CPU model, the
vector ISA, /sys/devices/system/cpu/vulnerabilities/gather_data_sampling and the time of
a call of a 1 x 1 layer (k = 1: the fixed cost of a call) on each path. Progress goes to
stderr. Speeds are for reading, not for tests.
"""

import argparse
import sys
import warnings

import numpy as np
import scipy.sparse
from threadpoolctl import threadpool_limits

from srigl_np import bench, kernels
from srigl_np._kernels import _condensed_matvec_kernel, vector_kernel
from srigl_np.inference.condensed import CondensedLinear

DEFAULT_SHAPES = ((768, 3072), (3072, 768), (4096, 4096))
KERNELS = ("lookup", "interleaved", "gather-dot")
GDS = "/sys/devices/system/cpu/vulnerabilities/gather_data_sampling"


def gather_data_sampling(path=GDS):
    """The kernel's word on the GDS ("Downfall") mitigation, which makes AVX2/AVX-512
    gathers microcoded where it applies, or "not reported"."""
    try:
        with open(path) as f:
            return f.read().strip() or "not reported"
    except OSError:
        return "not reported"


def on_path(path, call):
    """``call`` run on CPU path ``path`` (set for the call, then put back)."""
    def run():
        previous = kernels.set_cpu_path(path)
        try:
            return call()
        finally:
            kernels.set_cpu_path(previous)
    return run


def path_kernels(path):
    """The batch-1 kernels CPU path ``path`` carries, of KERNELS."""
    weights = kernels.CondensedWeights(np.ones((1, 1), np.float32), np.zeros((1, 1), np.int16), 1)
    have = []
    for kernel in KERNELS:
        try:
            on_path(path, lambda: _condensed_matvec_kernel(
                weights, np.ones(1, np.float32), kernel=kernel))()
            have.append(kernel)
        except ValueError:
            pass
    return have


def baselines(weight, x, threads):
    """name -> (callable, note): dense and CSR products of weight (n_out, n_in) with x (1, n_in)."""
    import torch

    x_t = np.ascontiguousarray(x.T)
    csr = scipy.sparse.csr_array(weight)
    tw, tx = torch.from_numpy(weight), torch.from_numpy(x)
    with warnings.catch_warnings():   # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        tw_csr = tw.to_sparse_csr()
    tx_t = torch.from_numpy(x_t)
    torch.set_num_threads(threads)
    return {"numpy": (lambda: x @ weight.T, ""), "torch": (lambda: tx @ tw.T, ""),
            "scipy-csr": (lambda: csr @ x_t, ""), "torch-csr": (lambda: tw_csr @ tx_t, "")}


def variants(layer, x, threads, paths):
    """name -> (callable, note) for ``bench.time_all``: each path's own choice, then each
    of its kernels forced."""
    impls = {}
    for path in paths:
        chosen = on_path(path, lambda: vector_kernel(layer.weights))()
        impls[path] = (on_path(path, lambda: layer.forward(x, threads)), chosen)
    for path in paths:
        for kernel in path_kernels(path):
            impls[f"{path} {kernel}"] = (on_path(path, lambda k=kernel: _condensed_matvec_kernel(
                layer.weights, x[0], layer.bias, threads, kernel=k)), kernel)
    return impls


def call_cost(paths, min_time):
    """path -> (condensed_matvec us, CondensedLinear.forward us) for a 1 x 1 layer, k = 1,
    one thread: what a call costs beyond its arithmetic."""
    layer = CondensedLinear.from_dense(np.ones((1, 1), np.float32))
    x = np.ones(1, np.float32)
    costs = {}
    for path in paths:
        matvec = on_path(path, lambda: kernels.condensed_matvec(layer.weights, x, layer.bias, 1))
        forward = on_path(path, lambda: layer.forward(x, 1))
        records = bench.time_all({"matvec": (matvec, ""), "forward": (forward, "")},
                                 lambda fn, s, m: bench.sample_seconds(fn, s, m), min_time, 5)
        medians = {r["implementation"]: r["median_s"] * 1e6 for r in records}
        costs[path] = (medians["matvec"], medians["forward"])
    return costs


def measure(shapes, thread_counts, paths, min_time, rounds, seed=0):
    """[(shape, threads, {name: median ms}, {name: note}, flags)] for every case."""
    rng = np.random.default_rng(seed)
    rows = []
    for n_in, n_out in shapes:
        weight = bench.constant_fan_in_weight(n_in, n_out, 0.9, 0.0, rng)
        layer = CondensedLinear.from_dense(weight)
        x = rng.standard_normal((1, n_in), dtype=np.float32)
        for threads in thread_counts:
            print(f"  {n_in}x{n_out}, {threads} thread(s)...", file=sys.stderr, flush=True)
            impls = {**baselines(weight, x, threads), **variants(layer, x, threads, paths)}
            with threadpool_limits(threads), bench.LoadMeter() as meter:
                records = bench.time_all(impls, lambda fn, s, m: bench.sample_seconds(fn, s, m),
                                         min_time, rounds)
            worst = max(records, key=lambda r: r["iqr_over_median"] or 0.0)
            flags = bench.load_flags(meter.other_cpus, meter.resolution,
                                     worst["iqr_over_median"], worst["implementation"])
            rows.append(((n_in, n_out), threads,
                         {r["implementation"]: r["median_s"] * 1e3 for r in records},
                         {r["implementation"]: r["note"] for r in records}, flags))
    return rows


def markdown_table(rows, paths):
    names = [name for name in rows[0][2]]
    ours = paths[0]
    lines = ["| layer (in→out), threads | " + " | ".join(names)
             + f" | {ours} vs dense | {ours} vs csr | flags |",
             "|---" * (len(names) + 4) + "|"]
    for (n_in, n_out), threads, medians, notes, flags in rows:
        cells = [f"{medians[name]:.4g}" + (f" ({notes[name]})" if name in paths else "")
                 for name in names]
        dense = min(medians["numpy"], medians["torch"]) / medians[ours]
        csr = min(medians["scipy-csr"], medians["torch-csr"]) / medians[ours]
        lines.append(f"| {n_in}→{n_out}, {threads} | " + " | ".join(cells)
                     + f" | {dense:.2f}x | {csr:.2f}x | {'; '.join(flags) or 'quiet'} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", action="append", type=bench.parse_shape, metavar="N_INxN_OUT",
                        help="a layer (repeatable); default 768x3072, 3072x768, 4096x4096")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--paths", nargs="+", default=None,
                        help="CPU paths to run, the first compared in the last columns "
                             "(default: all this CPU has, avx2 first where present)")
    parser.add_argument("--min-time", type=float, default=1.0,
                        help="seconds of calls per column and case, over the rounds")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    if args.min_time <= 0 or args.rounds < 1:
        parser.error("--min-time must be positive and --rounds at least 1")
    bench.check_thread_counts(parser, args.threads)
    available = kernels.cpu_paths()
    paths = args.paths or sorted(available, key=lambda p: p != "avx2")
    if not set(paths) <= set(available):
        parser.error(f"--paths must be among this CPU's {available}, got {paths}")
    machine = bench.machine_info()
    print(f"{machine['cpu']}, {machine['cores']} cores; vectors {machine['vector_isa']}; "
          f"gather_data_sampling: {gather_data_sampling()}; BLAS {machine['blas']}")
    print("fixed cost of a call (1 x 1 layer, k = 1, batch 1, 1 thread; matvec / "
          "layer.forward, us): " + ", ".join(
              f"{path} {matvec:.2f} / {forward:.2f}"
              for path, (matvec, forward) in call_cost(paths, args.min_time / 4).items()))
    print("batch 1, float32, 90% sparse (constant fan-in), medians in ms over "
          f"{args.rounds} interleaved rounds")
    print()
    rows = measure(args.shape or DEFAULT_SHAPES, args.threads, paths, args.min_time,
                   args.rounds)
    print("\n".join(markdown_table(rows, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
