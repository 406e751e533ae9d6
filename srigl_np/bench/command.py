"""``python -m srigl_np.bench``: condensed inference against its baselines on this machine.

Reproduces the comparison of the SRigL paper (Lasby et al. 2024, Sec. 4.4, Fig. 4) on
single layers condensed from random constant fan-in masks, against what a user would
pick instead:

    dense        x @ W.T with NumPy (BLAS), W the masked (n_out, n_in) weight
    structured   x @ W[active].T: dense over the active neurons only (the paper's
                 "structured" baseline; equal to dense unless --ablated-frac > 0)
    csr          scipy.sparse CSR, the faster of (W_csr @ x.T).T and x @ Wt_csr
                 (Wt_csr = CSR of W.T); the table says which one ran
    torch-dense, torch-csr   the same products in PyTorch, when torch is installed
                 (pip install "torch==2.13.0+cpu": the CPU build; a plain
                 `pip install torch` pulls gigabytes of CUDA libraries)
    mkl-csr      Intel MKL's CSR product through sparse_dot_mkl, both orientations as for
                 csr, when installed (pip install "srigl_np[bench]": sparse_dot_mkl and
                 mkl; the MKL library of pip's mkl wheel is found without setting paths)
    condensed    srigl_np's condensed kernel (ours)

Every row names the best alternative (the fastest implementation that is not ours) and
gives condensed's speedup over it, over the best dense one (dense, structured,
torch-dense) and over the best CSR one (csr, torch-csr, mkl-csr).

The limit: before the rows, the bench measures this machine's read bandwidth (the sum of
a float32 array far larger than the last-level cache) and dense BLAS throughput (a square
float32 sgemm) at each thread count. Each row then states the condensed kernel's
achieved bandwidth (batch < 16: bytes of values + indices + x read per call, over the
median seconds) or GFLOP/s (batch >= 16: 2 * nnz * batch per call) and the fraction of
the machine's figure that is.

Load: during each row the bench counts the CPU time that other processes used (Linux:
busy time of this process's CPUs in /proc/stat, less this process's own CPU time) and
the spread of each implementation's timings (interquartile range over median). A row
with other load or unstable repeats is marked "busy" or "unstable" and its ratios
should not be quoted: rerun on an idle machine.

BLAS, OpenMP, MKL and torch are all held to the row's thread count (threadpoolctl, the
kernel's ``threads=``, ``mkl_set_num_threads``, ``torch.set_num_threads``); scipy.sparse
is single-threaded. Each figure is the median of repeated calls (at least ``--min-time``
seconds and 5 calls per row; with --quick, 3). The implementations of a case take turns:
ROUNDS rounds (QUICK_ROUNDS with --quick), each giving every implementation a warm-up
call and then 1/ROUNDS of its time, so a burst of load from elsewhere on a shared machine
falls on all of them rather than on one. Speedups are ratios of medians taken in the
same run.

Layer construction (``dst.constant_fan_in_mask``): n_active = n_out - round(ablated_frac
* n_out) neurons keep k = floor(budget / n_active) weights each (at most n_in), budget =
floor((1 - sparsity) * n_in * n_out), so the density stays (1 - sparsity) whatever the
ablation, as SRigL redistributes the weights of ablated neurons.
"""

import argparse
import importlib.util
import os
import time

from .. import cli
from .comparison import OURS
from .cpu_baselines import baselines
from .gpu import gpu_name
from .machine import machine_info, measure_limits, memory_bytes
from .plotting import plot
from .report import DEFAULT_SHAPES, PAPER_FIGURES, limits_line, summary_lines, target_lines
from .runner import run
from .timing import (QUICK_MIN_TIME, QUICK_ROUNDS, QUICK_SECONDS, QUICK_TURN_REPEATS,
                     ROUNDS)

# The bench holds a layer several times over (float64 draw keys, mask, float32 values,
# weight, active rows, two CSR copies): about this many bytes per dense weight element.
BYTES_PER_WEIGHT_ELEMENT = 48
MAX_ELEMENTS = 2**31   # no dense weight or input batch past this many elements
MAX_MIN_TIME = 3600    # seconds of timing per row: past an hour a run would seem to hang


def parse_shape(text):
    """'768x3072' -> (768, 3072): the type of --shape."""
    try:
        n_in, n_out = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be N_INxN_OUT, e.g. 768x3072, got {text!r}")
    if n_in < 1 or n_out < 1:
        raise argparse.ArgumentTypeError(f"shape sizes must be positive, got {text!r}")
    return n_in, n_out


def check_sizes(shapes, batch_sizes, memory=None):
    """None, or one line saying which --shape / --batch-sizes could not be allocated:
    a dense weight or input batch over MAX_ELEMENTS elements, or a layer the bench would
    hold in more bytes than this machine has (BYTES_PER_WEIGHT_ELEMENT per element)."""
    memory = memory_bytes() if memory is None else memory
    for n_in, n_out in shapes:
        size = n_in * n_out
        if size > MAX_ELEMENTS:
            return (f"--shape {n_in}x{n_out}: the dense weight would have {size} elements, "
                    f"over the bench's limit of {MAX_ELEMENTS}")
        need = size * BYTES_PER_WEIGHT_ELEMENT
        if memory and need > memory:
            return (f"--shape {n_in}x{n_out}: the bench would need about {need / 2**30:.1f} "
                    f"GiB for this layer, more than this machine's {memory / 2**30:.1f} GiB")
    widest = max(max(shape) for shape in shapes)
    for batch in batch_sizes:
        size = batch * widest
        if size > MAX_ELEMENTS:
            return (f"--batch-sizes {batch}: a batch of {batch} x {widest} inputs would have "
                    f"{size} elements, over the bench's limit of {MAX_ELEMENTS}")
        need = size * 4 * 4   # x, x.T and the outputs, float32
        if memory and need > memory:
            return (f"--batch-sizes {batch}: the bench would need about {need / 2**30:.1f} "
                    f"GiB for the inputs, more than this machine's {memory / 2**30:.1f} GiB")
    return None


def ablation_problem(shapes, ablated_frac):
    """None, or one line saying which --shape --ablated-frac leaves without an active
    neuron (``runner.ablated_count`` of them ablated, all of its n_out)."""
    from .runner import ablated_count

    for n_in, n_out in shapes:
        if ablated_count(ablated_frac, n_out) >= n_out:
            return (f"--ablated-frac {ablated_frac:g} leaves no neuron of --shape "
                    f"{n_in}x{n_out} active: round({ablated_frac:g} x {n_out}) = {n_out} of "
                    f"its {n_out} neurons would be ablated")
    return None


# The check of --json and --plot (kept under its old name: bench exports it).
check_output_path = cli.check_output_file


PROG = "python -m srigl_np.bench"


def make_parser():
    """The bench's argument parser; ``parse_args`` checks what it reads."""
    parser = cli.create_parser(PROG, __doc__.replace("``", ""))
    parser.add_argument("--shape", type=parse_shape, action="append", metavar="N_INxN_OUT",
                        help="layer shape (repeatable) (default: 768x3072, 3072x768, "
                             "4096x4096)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9],
                        help="sparsities of the layers")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256],
                        help="batch sizes")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="thread counts, each at most the CPUs this process may use "
                             "(default: 1 and all, OpenMP's default)")
    parser.add_argument("--ablated-frac", type=float, default=0.0,
                        help="fraction of neurons ablated (removed by 'structured' and "
                             "'condensed')")
    parser.add_argument("--min-time", type=float, default=None,
                        help=f"seconds of timing per row (default: 0.5, --quick "
                             f"{QUICK_MIN_TIME})")
    parser.add_argument("--quick", action="store_true",
                        help=f"a short run: under {QUICK_SECONDS} s with the default shapes "
                             f"on 2 idle cores ({QUICK_ROUNDS} rounds, short machine probes)")
    parser.add_argument("--device", default="cpu",
                        help="'cpu', or 'cuda[:N]' for the GPU rows (needs CuPy): cuBLAS "
                             "dense, cuSPARSE CSR, structured and the CUDA condensed kernel, "
                             "timed with CUDA events")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random layers")
    parser.add_argument("--json", metavar="PATH", type=cli.path,
                        help="write the records as JSON")
    parser.add_argument("--plot", metavar="PATH", type=cli.path,
                        help="bar chart of speedups (matplotlib; the suffix gives the "
                             "format, PNG without one)")
    parser.add_argument("--targets", action="store_true",
                        help="also print srigl_np's own development targets and whether "
                             "this run meets them")
    parser.add_argument("--cpu-path", default=None,
                        help="run the condensed kernels on this CPU path (avx512, avx2, "
                             "generic) (default: the best this CPU supports)")
    return parser


def parse_args(argv=None):
    from ..kernels import max_threads
    from ..thread_policy import resolve_threads

    parser = make_parser()
    args = parser.parse_args(argv)
    if args.cpu_path is not None:
        from ..kernels import cpu_paths, set_cpu_path

        try:
            set_cpu_path(args.cpu_path)
        except ValueError as exc:
            parser.error(f"--cpu-path: {exc} (this CPU: {', '.join(cpu_paths())})")
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install matplotlib (or srigl_np[plot])")
    for s in args.sparsities:
        if not 0.0 <= s < 1.0:
            parser.error(f"sparsities must be in [0, 1), got {s}")
    if any(b < 1 for b in args.batch_sizes):
        parser.error(f"batch sizes must be >= 1, got {args.batch_sizes}")
    if not 0.0 <= args.ablated_frac < 1.0:
        parser.error(f"--ablated-frac must be in [0, 1), got {args.ablated_frac}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.min_time is not None and not 0.0 <= args.min_time <= MAX_MIN_TIME:
        parser.error(f"--min-time must be a finite number of seconds in [0, {MAX_MIN_TIME}], "
                     f"got {args.min_time}")
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            problem = cli.check_output_file(flag, path, image=flag == "--plot")
            if problem:
                parser.error(problem)
    from ..backend import parse_device

    try:
        kind, index = parse_device(args.device)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    args.device = "cpu" if kind == "cpu" else f"cuda:{index}"
    if args.device != "cpu":
        args.threads = [0]   # not used on the GPU; one row per case
    if args.threads is None:   # 1 and the kernels' default team (thread_policy)
        args.threads = sorted({1, resolve_threads(0, max_threads())})
    check_thread_counts(parser, args.threads, minimum=1 if args.device == "cpu" else 0)
    if args.min_time is None:
        args.min_time = QUICK_MIN_TIME if args.quick else 0.5
    args.rounds = QUICK_ROUNDS if args.quick else ROUNDS
    args.min_repeats = QUICK_TURN_REPEATS if args.quick else None
    args.shape = args.shape or list(DEFAULT_SHAPES)
    problem = (check_sizes(args.shape, args.batch_sizes)
               or ablation_problem(args.shape, args.ablated_frac))
    if problem:
        parser.error(problem)
    return args


def check_thread_counts(parser, counts, minimum=1):
    """``parser.error`` (one line, exit 2) unless every thread count is >= ``minimum`` and
    at most the CPUs this process may use (``validation.check_thread_flag``)."""
    from ..validation import check_thread_flag

    if any(t < minimum for t in counts):
        parser.error(f"thread counts must be >= {minimum}, got {counts}")
    for threads in counts:
        try:
            check_thread_flag("--threads", threads)
        except ValueError as exc:
            parser.error(str(exc))


@cli.command(PROG)
def main(argv=None):
    started = time.perf_counter()
    args = parse_args(argv)
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores; vectors: {info['vector_isa']}; "
          f"condensed kernel path: {info['cpu_path']}; gather_data_sampling: "
          f"{info['gather_data_sampling']}")
    print(f"BLAS: {info['blas']}; kernels built with OpenMP: {info['openmp']} "
          f"(max threads {info['max_threads']})")
    if args.device != "cpu":
        from ..backend import select

        select(args.device)     # a DeviceError is the command's one-line error
        info["gpu"] = gpu_name()
        print(f"GPU: {info['gpu']} ({args.device}); times from CUDA events")
    limits = None
    if args.device == "cpu":
        info["baselines"] = baselines()
        # How long idle BLAS/MKL threads spin (see the settings at the top): a run
        # whose user set these differently is not comparable.
        info["idle_spin"] = {name: os.environ.get(name)
                             for name in ("OPENBLAS_THREAD_TIMEOUT", "KMP_BLOCKTIME")}
        print(f"baselines: NumPy dense, structured, scipy CSR; torch: "
              f"{info['baselines']['torch']}; MKL CSR: {info['baselines']['mkl']}")
        limits = measure_limits(args.threads, quick=args.quick)
        info["limits"] = {str(t): figures for t, figures in limits.items()}
        print(limits_line(limits))
    print(f"float32, {'threads ' + str(args.threads) if args.device == 'cpu' else args.device}, "
          f"sparsities {args.sparsities}, batches {args.batch_sizes}, "
          f"ablated fraction {args.ablated_frac}")
    records = run(args.shape, args.sparsities, args.batch_sizes, args.threads,
                  ablated_frac=args.ablated_frac, min_time=args.min_time, seed=args.seed,
                  device=args.device, rounds=args.rounds, min_repeats=args.min_repeats,
                  limits=limits)
    print("\nSummary: condensed against the fastest alternative in each row "
          "(ratio > 1: condensed is faster; '?': a busy or unstable row)")
    print("\n".join(summary_lines(records)))
    flagged = sum(1 for r in records if r["implementation"] == OURS and r["load_flags"])
    if flagged:
        print(f"{flagged} row(s) ran with other load or unstable timings: their ratios are "
              "distorted; rerun on an idle machine before quoting them")
    print("\n" + PAPER_FIGURES)
    if args.targets:
        targets = target_lines(records)
        print("srigl_np's development targets (90% sparsity; CPU rows at 2 threads):"
              + (f" [{args.min_time} s per row: short timings on a shared machine are "
                 "noisy; the default run is the one to quote]" if args.min_time < 0.5 else ""))
        print("\n".join(targets) if targets else "  (no row of this run is a target case)")
    wall = time.perf_counter() - started
    print(f"\nbench took {wall:.1f} s")
    if args.json is not None:
        from ..fileio import write_json

        write_json(args.json, {"machine": info, "records": records, "wall_s": wall,
                               "quick": args.quick, "rounds": args.rounds,
                               "min_time": args.min_time})
    if args.plot is not None:
        plot(records, args.plot, info)
    return 0
