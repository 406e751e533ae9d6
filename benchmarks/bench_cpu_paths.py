"""The condensed kernels on each CPU path and, at batch 1, each batch-1 kernel, side by side.

    python benchmarks/bench_cpu_paths.py                       # the default layers
    python benchmarks/bench_cpu_paths.py --shape 768x3072 --batch-sizes 1 --threads 1 2

One process, one random 90%-sparse constant fan-in layer per shape (``bench``'s
``constant_fan_in_weight``), every variant in interleaved rounds (``bench.time_all``:
each gets one turn per round), medians in ms, one Markdown table. Columns:

    <path>               ``layer.forward`` with ``kernels.set_cpu_path(path)``, for each
                         path of ``kernels.cpu_paths()`` (the kernel each path picks)
    <path> lookup,       at batch 1 only: ``condensed_matvec`` forced onto one batch-1
    <path> interleaved,  kernel (``_kernels._condensed_matvec_kernel``), on the paths
    <path> gather-dot    that have it (lookup: avx512; interleaved: avx512, avx2)

The machine line (CPU, vector ISA, threads) heads the table; each row carries the
bench's load flags (``bench.LoadMeter``: "busy" when other processes used the CPUs,
"unstable" when a variant's timings spread), and each case is reported on stderr as it
runs. Speeds are for reading beside ``python -m srigl_np.bench``, not for tests.
"""

import argparse
import sys

import numpy as np

from srigl_np import bench, kernels
from srigl_np._kernels import _condensed_matvec_kernel
from srigl_np.inference.condensed import CondensedLinear

DEFAULT_SHAPES = ((768, 3072), (3072, 768), (4096, 4096))
KERNELS = ("lookup", "interleaved", "gather-dot")


class Turn:
    """One variant: ``call`` run on CPU path ``path`` (set for the turn, then put back)."""

    def __init__(self, path, call):
        self.path, self.call = path, call

    def sample(self, seconds, least):
        previous = kernels.set_cpu_path(self.path)
        try:
            return bench.sample_seconds(self.call, seconds, least)
        finally:
            kernels.set_cpu_path(previous)


def has_kernel(path, kernel):
    """Whether CPU path ``path`` carries the batch-1 kernel ``kernel``."""
    previous = kernels.set_cpu_path(path)
    try:
        weights = kernels.CondensedWeights(np.ones((1, 1), np.float32),
                                           np.zeros((1, 1), np.int16), 1)
        _condensed_matvec_kernel(weights, np.ones(1, np.float32), kernel=kernel)
        return True
    except ValueError:
        return False
    finally:
        kernels.set_cpu_path(previous)


def variants(layer, x, threads, paths):
    """name -> (Turn, note) for ``bench.time_all``."""
    impls = {path: (Turn(path, lambda: layer.forward(x, threads)), path) for path in paths}
    if x.shape[0] == 1:
        for path in paths:
            for kernel in KERNELS:
                if not has_kernel(path, kernel):
                    continue
                call = (lambda k=kernel: _condensed_matvec_kernel(
                    layer.weights, x[0], layer.bias, threads, kernel=k))
                impls[f"{path} {kernel}"] = (Turn(path, call), kernel)
    return impls


def measure(shapes, batch_sizes, thread_counts, min_time, rounds, seed=0,
            progress=lambda text: None):
    """[(shape, batch, threads, {name: median ms}, flags)] for every case; flags: the
    bench's load flags (``bench.row_flags``) of the case. ``progress(text)`` is told
    each case as it starts and ends."""
    rng = np.random.default_rng(seed)
    paths = kernels.cpu_paths()
    rows = []
    for n_in, n_out in shapes:
        weight = bench.constant_fan_in_weight(n_in, n_out, 0.9, 0.0, rng)
        layer = CondensedLinear.from_dense(weight)
        for batch in batch_sizes:
            x = rng.standard_normal((batch, n_in), dtype=np.float32)
            for threads in thread_counts:
                progress(f"{n_in}->{n_out}, batch {batch}, {threads} threads ...")
                with bench.LoadMeter() as meter:
                    records = bench.time_all(variants(layer, x, threads, paths),
                                             lambda turn, s, m: turn.sample(s, m),
                                             min_time, rounds)
                flags = bench.row_flags(meter, records)
                rows.append(((n_in, n_out), batch, threads,
                             {r["implementation"]: r["median_s"] * 1e3 for r in records},
                             flags))
                progress(bench.flagged("done", flags))
    return rows


def markdown_table(rows, machine):
    names = []
    for *_, medians, _ in rows:
        names += [name for name in medians if name not in names]
    lines = [f"{machine['cpu']}, {machine['cores']} cores; vectors {machine['vector_isa']}; "
             f"float32, 90% sparse, medians in ms", "",
             "| layer (in→out), batch, threads | " + " | ".join(names) + " | flags |",
             "|---" * (len(names) + 2) + "|"]
    for (n_in, n_out), batch, threads, medians, flags in rows:
        cells = [f"{medians[name]:.4g}" if name in medians else "-" for name in names]
        lines.append(f"| {n_in}→{n_out}, {batch}, {threads} | " + " | ".join(cells)
                     + f" | {'; '.join(flags) or '-'} |")
    if any(flags for *_, flags in rows):
        lines += ["", "A flagged row ran beside other load or with unstable timings: its "
                  "figures do not compare; rerun it on an idle machine."]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", action="append", type=bench.parse_shape, metavar="N_INxN_OUT",
                        help="a layer (repeatable); default 768x3072, 3072x768, 4096x4096")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--min-time", type=float, default=0.5,
                        help="seconds of calls per variant and case, over the rounds")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.batch_sizes):
        parser.error(f"--batch-sizes must be positive, got {args.batch_sizes}")
    if args.min_time <= 0 or args.rounds < 1:
        parser.error("--min-time must be positive and --rounds at least 1")
    bench.check_thread_counts(parser, args.threads)
    rows = measure(args.shape or DEFAULT_SHAPES, args.batch_sizes, args.threads,
                   args.min_time, args.rounds, progress=bench.Progress())
    print("\n".join(markdown_table(rows, bench.machine_info())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
