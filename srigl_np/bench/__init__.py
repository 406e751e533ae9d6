"""The bench: ``python -m srigl_np.bench`` times condensed inference against its
baselines on this machine. What it measures and how is the docstring of ``bench.command``,
which is also its ``--help``.

Its modules, each importing only modules listed above it:
    timing          interleaved rounds of timed calls; medians, spread, --quick's arithmetic
    load            other load on the machine (/proc/stat), LoadMeter, busy/unstable flags
    progress        a script's progress lines, so that no benchmark is silent for minutes
    machine         CPU facts and this machine's own limits: read GB/s, sgemm GFLOP/s
    cpu_baselines   a row's CPU implementations (NumPy, scipy, torch, MKL, ours) and
                    the loaders of torch and MKL
    gpu             a row's GPU implementations (--device cuda) and their CUDA-event timer
    comparison      within a row: the best alternative, achieved vs the machine, load
    report          the row tables, the summary, the targets, the header lines
    plotting        the bar chart of --plot
    runner          the layers, and the loop over shapes, sparsities, batches, threads
    cli             the arguments, their checks, and main

This package's face holds the names that benchmarks/ and the tests use.
"""

import os

from .. import thread_waits

# OpenBLAS's idle threads spin for ~0.1 s after each call by default: in the interleaved
# rounds they would spin through the next implementation's turn (measured here, 2
# threads: 0.1 CPU-s burnt in the 0.15 s after a dense call; none with this setting).
# The training default (see thread_waits) keeps them awake between back-to-back calls
# but not into the next turn. It must be set before NumPy loads OpenBLAS, which the
# modules imported below do; a value the user set is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT",
                      thread_waits.TRAINING_DEFAULTS["OPENBLAS_THREAD_TIMEOUT"])

from .command import (check_output_path, check_sizes, check_thread_counts,  # noqa: E402
                  main, make_parser, parse_args, parse_shape)
from .comparison import (ALTERNATIVES, CSR_KINDS, DENSE_KINDS, OURS, achieved,  # noqa: E402
                         add_limits, add_load, best_of, compare, condensed_traffic,
                         dense_traffic)
from .cpu_baselines import (MKL_BLOCKTIME_MS, baselines, find_mkl_rt,  # noqa: E402
                            implementations, import_sparse_dot_mkl, mkl_rt_candidates,
                            mkl_version, sparse_dot_mkl)
from .load import (LoadMeter, flagged, load_flags, other_cpus, read_cpu_busy,  # noqa: E402
                   row_flags)
from .machine import (PROBE_REPEATS, READ_PROBE_BYTES, batch1_kernel,  # noqa: E402
                      gather_data_sampling, kernel_cpu_path,
                      last_level_cache_bytes, machine_info, measure_limits, probe_bytes,
                      read_bandwidth, sgemm_gflops, vector_isa)
from .plotting import plot, plot_figure  # noqa: E402
from .progress import Progress  # noqa: E402
from .report import (GFLOPS_FROM_BATCH, format_case, limit_line,  # noqa: E402
                     sparsity_label, summary_lines, target_lines)
from .runner import constant_fan_in_weight, run  # noqa: E402
from .timing import (QUICK_MIN_TIME, QUICK_ROUNDS, QUICK_SECONDS,  # noqa: E402
                     QUICK_TURN_REPEATS, ROUNDS, estimate_row_seconds, sample_seconds,
                     spread, time_all, turn_repeats)

__all__ = [
    "ALTERNATIVES", "CSR_KINDS", "DENSE_KINDS", "GFLOPS_FROM_BATCH", "LoadMeter",
    "MKL_BLOCKTIME_MS", "OURS", "PROBE_REPEATS", "Progress", "QUICK_MIN_TIME",
    "QUICK_ROUNDS", "QUICK_SECONDS", "QUICK_TURN_REPEATS", "READ_PROBE_BYTES", "ROUNDS",
    "achieved", "add_limits", "add_load", "baselines", "batch1_kernel", "best_of",
    "check_output_path", "check_sizes", "check_thread_counts", "compare",
    "condensed_traffic", "constant_fan_in_weight", "dense_traffic", "estimate_row_seconds",
    "find_mkl_rt", "flagged", "format_case", "gather_data_sampling", "implementations",
    "import_sparse_dot_mkl", "kernel_cpu_path", "last_level_cache_bytes", "limit_line",
    "load_flags", "machine_info", "main", "make_parser", "measure_limits",
    "mkl_rt_candidates", "mkl_version", "other_cpus", "parse_args", "parse_shape", "plot",
    "plot_figure", "probe_bytes", "read_bandwidth", "read_cpu_busy", "row_flags", "run",
    "sample_seconds", "sgemm_gflops", "sparse_dot_mkl", "sparsity_label", "spread",
    "summary_lines", "target_lines", "time_all", "turn_repeats", "vector_isa",
]
