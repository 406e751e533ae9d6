"""``python -m srigl_np.bench``: condensed inference against its baselines on this machine.

Reproduces the comparison of the SRigL paper (Lasby et al. 2024, Sec. 4.4, Fig. 4) on
single layers condensed from random constant fan-in masks:

    dense        x @ W.T with NumPy (BLAS), W the masked (n_out, n_in) weight
    structured   x @ W[active].T: dense over the active neurons only (the paper's
                 "structured" baseline; equal to dense unless --ablated-frac > 0)
    csr          scipy.sparse CSR, the faster of (W_csr @ x.T).T and x @ Wt_csr
                 (Wt_csr = CSR of W.T); the table says which one ran
    condensed    srigl_np's condensed kernel (ours)
    torch-dense, torch-csr   the same products in PyTorch, when torch is installed

BLAS, OpenMP and torch are all held to the row's thread count (threadpoolctl,
the kernel's ``threads=``, ``torch.set_num_threads``); scipy.sparse is single-threaded.
Each figure is the median of repeated calls (at least ``--min-time`` seconds and 5 calls
per row). The implementations of a case take turns: ROUNDS rounds, each giving every
implementation a warm-up call and then 1/ROUNDS of its time, so a burst of load from
elsewhere on a shared machine falls on all of them rather than on one. Speedups are
ratios of medians taken in the same run.

Layer construction (``dst.constant_fan_in_mask``): n_active = n_out - round(ablated_frac
* n_out) neurons keep k = floor(budget / n_active) weights each (at most n_in), budget =
floor((1 - sparsity) * n_in * n_out), so the density stays (1 - sparsity) whatever the
ablation, as SRigL redistributes the weights of ablated neurons.
"""

import argparse
import importlib.util
import os
import platform
import sys
import time
import warnings

import numpy as np

from . import dst

DEFAULT_SHAPES = ((768, 3072), (3072, 768), (4096, 4096))
PAPER_FIGURES = ("SRigL paper, condensed vs dense at 90% sparsity: CPU batch 1 3.4x "
                 "(vs CSR 2.5x); GPU batch 256 1.7x (vs CSR 13x).")
# (batch 1?, big layer?) -> minimum speedup vs (dense, csr), from the issue; 2 threads.
TARGETS = {
    (True, True): (3.5, 3.5),
    (True, False): (1.1, 2.5),
    (False, True): (3.0, 4.0),
    (False, False): (3.0, 4.0),
}
# GPU targets at batch 256 (vs cuBLAS dense, vs cuSPARSE CSR) and batch 1 (vs dense).
GPU_TARGETS = {256: (2.0, 15.0), 1: (1.0, None)}
BIG_LAYER_FLOATS = 8 * 1024 * 1024   # a weight this large (32 MiB) no longer fits in L3
# The bench holds a layer several times over (float64 draw keys, mask, float32 values,
# weight, active rows, two CSR copies): about this many bytes per dense weight element.
BYTES_PER_WEIGHT_ELEMENT = 48
MAX_ELEMENTS = 2**31   # no dense weight or input batch past this many elements


def machine_info():
    """CPU model, core count, BLAS library and kernel build, for every report."""
    from threadpoolctl import threadpool_info

    from .kernels import max_threads, openmp_enabled

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    blas = [f"{pool.get('internal_api')} {pool.get('version')} ({pool.get('architecture')})"
            for pool in threadpool_info() if pool.get("user_api") == "blas"]
    return {"cpu": cpu, "cores": os.cpu_count(), "blas": ", ".join(blas) or "unknown",
            "openmp": openmp_enabled(), "max_threads": max_threads(),
            "python": platform.python_version(), "numpy": np.__version__}


def constant_fan_in_weight(n_in, n_out, sparsity, ablated_frac, rng):
    """A (n_out, n_in) float32 weight with constant fan-in and round(ablated_frac * n_out)
    random neurons ablated: ``dst.constant_fan_in_mask`` with ablated=, so the live
    neurons share the layer's whole budget (k = dst.fan_in_after_ablation), and
    standard-normal values on the mask (never exactly 0)."""
    n_ablated = int(round(ablated_frac * n_out))
    if n_ablated >= n_out:
        raise ValueError(f"ablated_frac must leave a neuron active, got {ablated_frac}")
    ablated = rng.choice(n_out, n_ablated, replace=False)
    mask = dst.constant_fan_in_mask((n_out, n_in), sparsity, rng, ablated=ablated)
    values = rng.standard_normal((n_out, n_in), dtype=np.float32)
    values[values == 0] = 1.0
    return np.where(mask, values, np.float32(0))


ROUNDS = 10


def sample_seconds(fn, min_time, min_repeats=5, max_repeats=100_000):
    """Wall times of fn() (a list) over at least min_time s and min_repeats calls,
    after one warm-up call."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_repeats or (time.perf_counter() - start < min_time
                                       and len(times) < max_repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_seconds(fn, min_time, min_repeats=5):
    """Median wall time of fn() over repeats after one warm-up call, and the count."""
    times = sample_seconds(fn, min_time, min_repeats)
    return float(np.median(times)), len(times)


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def implementations(weight, layer, batch, threads, rng):
    """name -> (callable, note) for one layer and input batch."""
    import scipy.sparse

    x = rng.standard_normal((batch, weight.shape[1]), dtype=np.float32)
    x_t = np.ascontiguousarray(x.T)
    w_active = np.ascontiguousarray(weight[layer.active])
    csr = scipy.sparse.csr_array(weight)
    csr_t = scipy.sparse.csr_array(weight.T)
    impls = {
        "dense": (lambda: x @ weight.T, "NumPy BLAS"),
        "structured": (lambda: x @ w_active.T, f"{layer.n_active} active rows"),
        "csr": {"(W_csr @ x.T).T": lambda: (csr @ x_t).T, "x @ Wt_csr": lambda: x @ csr_t},
        "condensed": (lambda: layer.forward(x, threads), f"k={layer.k}, {layer.indices.dtype}"),
    }
    torch = _torch()
    if torch is not None:
        tx, tw = torch.from_numpy(x), torch.from_numpy(weight)
        with warnings.catch_warnings():   # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            tw_csr = tw.to_sparse_csr()
        tx_t = torch.from_numpy(x_t)
        impls["torch-dense"] = (lambda: tx @ tw.T, f"torch {torch.__version__}")
        impls["torch-csr"] = (lambda: (tw_csr @ tx_t).T, "(W_csr @ x.T).T")
    return impls


def _time_all(impls, sampler, min_time, rounds=ROUNDS):
    """Records {implementation, median_s, repeats, note} for name -> (fn, note) or, for
    csr, name -> {orientation: fn} (the faster orientation is kept and named).

    ``sampler(fn, seconds, min_repeats)`` returns a list of times; every callable gets
    one turn per round (see the module docstring)."""
    variants = {name: impl if isinstance(impl, dict) else {impl[1]: impl[0]}
                for name, impl in impls.items()}
    times = {(name, note): [] for name, fns in variants.items() for note in fns}
    for _ in range(rounds):
        for name, fns in variants.items():
            for note, fn in fns.items():
                times[name, note] += sampler(fn, min_time / rounds, -(-5 // rounds))
    records = []
    for name, fns in variants.items():
        medians = {note: float(np.median(times[name, note])) for note in fns}
        note = min(medians, key=medians.get)
        records.append({"implementation": name, "median_s": medians[note],
                        "repeats": len(times[name, note]),
                        "note": f"{note} (faster orientation)" if len(fns) > 1 else note})
    return records


def run_case(weight, layer, batch, threads, min_time, rng, device="cpu"):
    """Time every implementation at one (layer, batch, threads); records without speedups.
    On "cuda" the GPU rows are timed with CUDA events and ``threads`` is not used."""
    if device != "cpu":
        return _time_all(gpu_implementations(weight, layer.to(device), batch, rng),
                         gpu_sample_seconds, min_time)
    from threadpoolctl import threadpool_limits

    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)
    with threadpool_limits(limits=threads):
        return _time_all(implementations(weight, layer, batch, threads, rng),
                         sample_seconds, min_time)


# -- the GPU rows of ``--device cuda`` ------------------------------------------------

def gpu_sample_seconds(fn, min_time, min_repeats=5, max_repeats=10_000):
    """GPU times of fn() (a list; CUDA events around each call) over at least min_time
    s of GPU time and min_repeats calls, after one warm-up call."""
    from .backend import cupy

    cp = cupy()
    fn()
    cp.cuda.Stream.null.synchronize()
    start_event, stop_event = cp.cuda.Event(), cp.cuda.Event()
    times, spent = [], 0.0
    while len(times) < min_repeats or (spent < min_time and len(times) < max_repeats):
        start_event.record()
        fn()
        stop_event.record()
        stop_event.synchronize()
        seconds = cp.cuda.get_elapsed_time(start_event, stop_event) / 1e3
        times.append(seconds)
        spent += seconds
    return times


def gpu_implementations(weight, layer, batch, rng):
    """name -> (callable, note) for one layer on the GPU (``layer`` already moved there):
    cuBLAS dense, structured, cuSPARSE CSR (both orientations; the bench keeps the
    faster) and condensed (ours)."""
    from .backend import cupy

    cp = cupy()
    import cupyx.scipy.sparse

    x = cp.asarray(rng.standard_normal((batch, weight.shape[1]), dtype=np.float32))
    x_t = cp.ascontiguousarray(x.T)
    w = cp.asarray(weight)
    w_active = cp.asarray(np.ascontiguousarray(weight[layer.active]))
    csr = cupyx.scipy.sparse.csr_matrix(w)
    csr_t = cupyx.scipy.sparse.csr_matrix(cp.ascontiguousarray(w.T))
    return {
        "dense": (lambda: x @ w.T, f"cuBLAS (CuPy {cp.__version__})"),
        "structured": (lambda: x @ w_active.T, f"{layer.n_active} active rows"),
        "csr": {"(W_csr @ x.T).T": lambda: (csr @ x_t).T,
                "(W_csc @ x.T).T": lambda: (csr_t.T @ x_t).T},
        "condensed": (lambda: layer.forward(x),
                      f"k={layer.k}, {layer.indices.dtype}"),
    }


def gpu_name():
    """The current GPU's name, for the bench's machine line."""
    from .backend import cupy

    cp = cupy()
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def run(shapes, sparsities, batch_sizes, thread_counts, *, ablated_frac=0.0, min_time=0.5,
        seed=0, device="cpu", log=print):
    """All records: one per implementation/shape/sparsity/batch/threads."""
    from .condensed import CondensedLinear

    rng = np.random.default_rng(seed)
    records = []
    for n_in, n_out in shapes:
        for sparsity in sparsities:
            weight = constant_fan_in_weight(n_in, n_out, sparsity, ablated_frac, rng)
            layer = CondensedLinear.from_dense(weight)
            built = built_sparsity(layer, weight.size)
            for batch in batch_sizes:
                for threads in thread_counts:
                    case = run_case(weight, layer, batch, threads, min_time, rng, device)
                    by_name = {r["implementation"]: r["median_s"] for r in case}
                    for record in case:
                        record.update(
                            shape=[n_in, n_out], sparsity=sparsity,
                            built_sparsity=built, batch=batch,
                            threads=threads, device=device, ablated_frac=ablated_frac,
                            speedup_vs_dense=by_name["dense"] / record["median_s"],
                            speedup_vs_csr=by_name["csr"] / record["median_s"])
                    records.extend(case)
                    log(format_case(case))
    return records


def built_sparsity(layer, size):
    """The sparsity the layer really has, 1 - nnz/size: small layers cannot always hold
    the requested one (k is at least 1 and a whole number per neuron)."""
    return 1.0 - layer.nnz / size


def sparsity_label(record):
    """'sparsity 90%', or the built sparsity with the requested one beside it when the
    layer could not hold the request (tiny shapes, extreme sparsities)."""
    requested = record["sparsity"]
    built = record.get("built_sparsity", requested)
    if abs(built - requested) <= 1e-9:
        return f"sparsity {requested:.0%}"
    return f"sparsity {built:.2%} (requested {requested:.2%})"


def format_case(case):
    first = case[0]
    n_in, n_out = first["shape"]
    where = (f"threads {first['threads']}" if first["device"] == "cpu"
             else f"device {first['device']}")
    lines = [f"\n{n_in}->{n_out}  {sparsity_label(first)}  batch {first['batch']}  "
             f"{where}",
             f"  {'implementation':<13}{'median ms':>11}{'vs dense':>10}{'vs csr':>9}  note"]
    for r in case:
        lines.append(f"  {r['implementation']:<13}{r['median_s'] * 1e3:>11.4f}"
                     f"{r['speedup_vs_dense']:>9.2f}x{r['speedup_vs_csr']:>8.2f}x  {r['note']}")
    return "\n".join(lines)


def target_lines(records):
    """The issue's targets (90% sparsity, 2 threads) next to the measured ratios."""
    lines = []
    for r in records:
        if r["implementation"] == "condensed" and r["device"] != "cpu" and (
                abs(r["sparsity"] - 0.9) < 1e-9 and r["batch"] in GPU_TARGETS):
            need_dense, need_csr = GPU_TARGETS[r["batch"]]
            met = r["speedup_vs_dense"] >= need_dense and (
                need_csr is None or r["speedup_vs_csr"] >= need_csr)
            n_in, n_out = r["shape"]
            lines.append(f"  GPU {n_in}->{n_out} batch {r['batch']}: vs dense "
                         f"{r['speedup_vs_dense']:.2f}x (target >= {need_dense}x), vs csr "
                         f"{r['speedup_vs_csr']:.2f}x" + (f" (target >= {need_csr}x)"
                                                          if need_csr else "")
                         + f"  {'met' if met else 'NOT met'}")
            continue
        if (r["implementation"] != "condensed" or r["device"] != "cpu" or r["threads"] != 2
                or abs(r["sparsity"] - 0.9) > 1e-9 or r["batch"] not in (1, 256)):
            continue
        n_in, n_out = r["shape"]
        need_dense, need_csr = TARGETS[(r["batch"] == 1, n_in * n_out >= BIG_LAYER_FLOATS)]
        met = r["speedup_vs_dense"] >= need_dense and r["speedup_vs_csr"] >= need_csr
        lines.append(f"  {n_in}->{n_out} batch {r['batch']}: vs dense {r['speedup_vs_dense']:.2f}x"
                     f" (target >= {need_dense}x), vs csr {r['speedup_vs_csr']:.2f}x "
                     f"(target >= {need_csr}x)  {'met' if met else 'NOT met'}")
    return lines


def plot(records, path):
    """Bar chart of speedups vs dense, written atomically to ``path`` (PNG by default)."""
    import matplotlib

    from .fileio import atomic_write

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(tuple(r["shape"]), r["sparsity"], r["batch"], r["threads"])
                    for r in records})
    names = list(dict.fromkeys(r["implementation"] for r in records))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cases)), 4))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        speedups = [next((r["speedup_vs_dense"] for r in records
                          if r["implementation"] == name
                          and (tuple(r["shape"]), r["sparsity"], r["batch"], r["threads"]) == c),
                         np.nan) for c in cases]
        ax.bar(np.arange(len(cases)) + j * width, speedups, width, label=name)
    ax.set_xticks(np.arange(len(cases)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{c[0][0]}->{c[0][1]}\nb{c[2]} t{c[3]}" for c in cases], fontsize=7)
    ax.set_ylabel("speedup vs dense NumPy")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    suffix = os.path.splitext(path)[1][1:] or "png"
    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format=suffix))
    plt.close(fig)


def _shape(text):
    try:
        n_in, n_out = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be N_INxN_OUT, e.g. 768x3072, got {text!r}")
    if n_in < 1 or n_out < 1:
        raise argparse.ArgumentTypeError(f"shape sizes must be positive, got {text!r}")
    return n_in, n_out


def _memory_bytes():
    """Physical memory of this machine in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def check_sizes(shapes, batch_sizes, memory=None):
    """None, or one line saying which --shape / --batch-sizes could not be allocated:
    a dense weight or input batch over MAX_ELEMENTS elements, or a layer the bench would
    hold in more bytes than this machine has (BYTES_PER_WEIGHT_ELEMENT per element)."""
    memory = _memory_bytes() if memory is None else memory
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


def check_output_path(flag, path):
    """None, or one line saying why ``path`` cannot be written: its directory is missing
    or not a directory, or the path is a directory."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"{flag} {path}: is a directory; give a file name"
    if not os.path.exists(directory):
        return f"{flag} {path}: directory {directory} does not exist"
    if not os.path.isdir(directory):
        return f"{flag} {path}: {directory} is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{flag} {path}: directory {directory} is not writable"
    return None


def parse_args(argv=None):
    from .kernels import max_threads

    parser = argparse.ArgumentParser(prog="python -m srigl_np.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=_shape, action="append", metavar="N_INxN_OUT",
                        help="layer shape (repeatable); default: 768x3072, 3072x768, 4096x4096")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="thread counts; default: 1 and all (OpenMP's default)")
    parser.add_argument("--ablated-frac", type=float, default=0.0,
                        help="fraction of neurons ablated (removed by 'structured' and "
                             "'condensed'); default 0")
    parser.add_argument("--min-time", type=float, default=None,
                        help="seconds of timing per row (default 0.5, --quick 0.03)")
    parser.add_argument("--quick", action="store_true", help="a short run (< 60 s)")
    parser.add_argument("--device", default="cpu",
                        help="'cpu', or 'cuda[:N]' for the GPU rows (needs CuPy): cuBLAS "
                             "dense, cuSPARSE CSR, structured and the CUDA condensed kernel, "
                             "timed with CUDA events")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write the records as JSON")
    parser.add_argument("--plot", metavar="PATH", help="bar chart of speedups (matplotlib)")
    args = parser.parse_args(argv)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
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
    if args.min_time is not None and not 0.0 <= args.min_time < float("inf"):
        parser.error(f"--min-time must be a finite number of seconds >= 0, got {args.min_time}")
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            problem = check_output_path(flag, path)
            if problem:
                parser.error(problem)
    from .backend import parse_device

    try:
        kind, index = parse_device(args.device)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    args.device = "cpu" if kind == "cpu" else f"cuda:{index}"
    if args.device != "cpu":
        args.threads = [0]   # not used on the GPU; one row per case
    if args.threads is None:
        args.threads = sorted({1, max_threads()})
    if args.device == "cpu" and any(t < 1 for t in args.threads):
        parser.error(f"thread counts must be >= 1, got {args.threads}")
    from .validation import check_threads

    for threads in args.threads:
        try:
            check_threads(threads)
        except ValueError as exc:
            parser.error(f"--{exc}")
    if args.min_time is None:
        args.min_time = 0.03 if args.quick else 0.5
    args.shape = args.shape or list(DEFAULT_SHAPES)
    problem = check_sizes(args.shape, args.batch_sizes)
    if problem:
        parser.error(problem)
    return args


def main(argv=None):
    args = parse_args(argv)
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores; BLAS: {info['blas']}; "
          f"kernels built with OpenMP: {info['openmp']} (max threads {info['max_threads']})")
    if args.device != "cpu":
        from .backend import DeviceError, select

        try:
            select(args.device)
            info["gpu"] = gpu_name()
        except DeviceError as exc:
            print(f"python -m srigl_np.bench: error: {exc}", file=sys.stderr)
            return 1
        print(f"GPU: {info['gpu']} ({args.device}); times from CUDA events")
    print(f"float32, {'threads ' + str(args.threads) if args.device == 'cpu' else args.device}, "
          f"sparsities {args.sparsities}, batches {args.batch_sizes}, "
          f"ablated fraction {args.ablated_frac}")
    records = run(args.shape, args.sparsities, args.batch_sizes, args.threads,
                  ablated_frac=args.ablated_frac, min_time=args.min_time, seed=args.seed,
                  device=args.device)
    print("\n" + PAPER_FIGURES)
    targets = target_lines(records)
    if targets:
        print("Targets (90% sparsity; CPU rows at 2 threads):"
              + (f" [{args.min_time} s per row: short timings on a shared machine are "
                 "noisy; the default run is the one to quote]" if args.min_time < 0.5 else ""))
        print("\n".join(targets))
    if args.json:
        from .fileio import write_json

        write_json(args.json, {"machine": info, "records": records})
    if args.plot:
        plot(records, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
