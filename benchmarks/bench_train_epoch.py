"""Time one training epoch: dense, masked-sparse and condensed-sparse SRigL, and PyTorch.

An epoch is what ``python -m srigl_np.train`` does per mini-batch: gather the batch,
forward, softmax cross-entropy, backward (no gradient for the data), SGD with momentum
0.9, and for the sparse rows DynamicSparsity's hooks with SRigL's topology updates
(``--compute masked`` and ``--compute condensed``). Every variant of a (model, threads)
cell runs in one process, in interleaved rounds (each round times every variant once),
on synthetic Fashion-MNIST-shaped float32 data (timing does not depend on pixel values);
the table reports medians. Torch runs the same network (``torch.set_num_threads``).

Update steps are timed apart. A step in a grow-score window or with a topology update
(``DynamicSparsity.accumulates``/``is_update_step``) costs more than the others (the
dense gradient, the ranking, the rewiring), so each variant reports the mean time of an
ordinary step and of an update step, and the epoch figure composes them for the
trainer's defaults: a 60000-image epoch of 469 batches at batch 128 with ΔT = 100 has
4 update steps (in the first 75% of training):

    epoch = (469 - 4) * ordinary step + 4 * update step

The timed sample is ``--samples``/``--cnn-samples`` images with ΔT chosen so that it
holds at least one update. Each row carries the other load seen while it ran
(``srigl_np.bench.LoadMeter``): a row marked "busy" ran beside other work and its
ratios are not figures to quote. Progress goes to stderr while it runs.

    python benchmarks/bench_train_epoch.py                          # mlp and cnn, 1 and 2 threads
    python benchmarks/bench_train_epoch.py --models cnn --threads 1 --sparsities 0.9,0.99
    python benchmarks/bench_train_epoch.py --json docs/bench/train_epoch.json
"""

import argparse
import statistics
import sys
import time

from srigl_np import thread_waits

# Before NumPy loads OpenBLAS: see thread_waits.
thread_waits.set_training_defaults()

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from srigl_np.bench import LoadMeter, load_flags  # noqa: E402
from srigl_np.bench.machine import machine_info  # noqa: E402
from srigl_np.dst.sparsity import DynamicSparsity, train_step  # noqa: E402
from srigl_np.fileio import write_json  # noqa: E402
from srigl_np.nn.models import MODEL_NAMES, build  # noqa: E402
from srigl_np.nn.optim import SGD  # noqa: E402
from srigl_np.validation import check_thread_flag, usable_cpus  # noqa: E402

FULL_EPOCH = 60000          # images in a Fashion-MNIST epoch
FULL_BATCHES = 469          # ... at batch 128
UPDATES_PER_EPOCH = 4       # ΔT = 100 within those 469 steps
SPARSITIES = (0.8, 0.9, 0.95, 0.99)


def synthetic_data(n, seed=0):
    """Normalised float32 images (n, 1, 28, 28) and int64 labels in [0, 10)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)
    x = (images.astype(np.float32) / 255.0 - np.float32(0.286)) / np.float32(0.353)
    return x.astype(np.float32), rng.integers(0, 10, size=n)


def batch_order(n, batch_size, seed):
    order = np.random.default_rng(seed).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def ours_epoch(model_name, x, y, batch_size, seed, compute=None, sparsity=0.0, delta=100):
    """(ordinary step seconds, update step seconds or None) of one epoch of srigl_np:
    dense when ``compute`` is None, else SRigL at ``sparsity`` with that compute path."""
    model = build(model_name, rng=np.random.default_rng(seed))
    optimizer = SGD(model.named_parameters(), lr=0.01, momentum=0.9)
    batches = batch_order(len(x), batch_size, seed)
    ds = None
    if compute is not None:
        ds = DynamicSparsity(model, optimizer, method="srigl", sparsity=sparsity, delta=delta,
                             t_end=len(batches) + 1, seed=seed, compute=compute)
    ordinary, update = [], []
    for step, idx in enumerate(batches):
        start = time.perf_counter()
        train_step(model, optimizer, ds, x[idx], y[idx], step)
        seconds = time.perf_counter() - start
        special = ds is not None and (ds.accumulates(step) or ds.is_update_step(step))
        (update if special else ordinary).append(seconds)
    return statistics.fmean(ordinary), (statistics.fmean(update) if update else None)


def torch_model(torch, name):
    nn = torch.nn
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100),
                             nn.ReLU(), nn.Linear(100, 10))
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(), nn.Linear(9216, 128),
                         nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))


def torch_epoch(torch, model_name, x, y, batch_size, seed):
    """(seconds per step, None) of one epoch of the same network in PyTorch (dense)."""
    torch.manual_seed(seed)
    model = torch_model(torch, model_name)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    batches = [torch.from_numpy(idx) for idx in batch_order(len(x), batch_size, seed)]
    loss_fn = torch.nn.functional.cross_entropy
    start = time.perf_counter()
    for idx in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt[idx]), yt[idx])
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / len(batches), None


def variants(model_name, sparsities, torch, delta):
    """[(label, sparsity, function(x, y, batch_size, seed) -> step times)] of one cell."""
    out = [("dense", 0.0, lambda x, y, b, s: ours_epoch(model_name, x, y, b, s))]
    if torch is not None:
        out.append(("torch dense", 0.0, lambda x, y, b, s: torch_epoch(torch, model_name, x, y,
                                                                       b, s)))
    for sparsity in sparsities:
        for compute in ("masked", "condensed"):
            out.append((compute, sparsity,
                        lambda x, y, b, s, c=compute, p=sparsity:
                        ours_epoch(model_name, x, y, b, s, c, p, delta)))
    return out


def epoch_seconds(step, update):
    if update is None:
        return FULL_BATCHES * step
    return (FULL_BATCHES - UPDATES_PER_EPOCH) * step + UPDATES_PER_EPOCH * update


def measure_cell(model_name, threads, x, y, args, torch):
    """One row per variant of (model_name, threads), from args.repeats interleaved rounds."""
    n_batches = -(-len(x) // args.batch_size)
    delta = min(100, max(1, n_batches // 2))
    cell = variants(model_name, args.sparsities, torch, delta)
    times = {label_s: [] for label_s in ((label, s) for label, s, _ in cell)}
    others = {key: [] for key in times}
    with threadpool_limits(limits=threads):
        if torch is not None:
            torch.set_num_threads(threads)
        warm = min(len(x), 2 * args.batch_size)   # first touches, thread pools
        for _, _, run in cell:
            run(x[:warm], y[:warm], args.batch_size, 0)
        for r in range(args.repeats):
            started = time.perf_counter()
            for label, sparsity, run in cell:
                with LoadMeter() as meter:
                    times[(label, sparsity)].append(run(x, y, args.batch_size, r))
                others[(label, sparsity)].append((meter.other_cpus, meter.resolution))
            print(f"  {model_name}, {threads} thread(s): round {r + 1}/{args.repeats} "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    rows = []
    for (label, sparsity), samples in times.items():
        step = statistics.median(s for s, _ in samples)
        updates = [u for _, u in samples if u is not None]
        update = statistics.median(updates) if updates else None
        other = [o for o, _ in others[(label, sparsity)] if o is not None]
        resolution = max(res for _, res in others[(label, sparsity)])
        flags = load_flags(max(other) if other else None, resolution)
        rows.append({"model": model_name, "threads": threads, "variant": label,
                     "sparsity": sparsity, "batch_size": args.batch_size, "dtype": "float32",
                     "samples": len(x), "batches": n_batches, "delta": delta,
                     "repeats": args.repeats, "step_ms": 1e3 * step,
                     "update_step_ms": None if update is None else 1e3 * update,
                     "epoch_s": epoch_seconds(step, update), "flags": flags,
                     "other_cpus": max(other) if other else None})
    dense = next(r["epoch_s"] for r in rows if r["variant"] == "dense")
    torch_s = next((r["epoch_s"] for r in rows if r["variant"] == "torch dense"), None)
    for row in rows:
        row["vs_dense"] = row["epoch_s"] / dense
        row["vs_torch"] = None if torch_s is None else row["epoch_s"] / torch_s
    return rows


def print_rows(rows):
    print(f"{'model':5s} {'thr':>3s} {'variant':11s} {'sparsity':>8s} {'step ms':>8s} "
          f"{'update ms':>9s} {'epoch s':>8s} {'/ dense':>7s} {'/ torch':>7s}  flags")
    for r in rows:
        update = "-" if r["update_step_ms"] is None else f"{r['update_step_ms']:.1f}"
        vs_torch = "-" if r["vs_torch"] is None else f"{r['vs_torch']:.2f}"
        sparsity = "-" if r["sparsity"] == 0 else f"{100 * r['sparsity']:g}%"
        print(f"{r['model']:5s} {r['threads']:3d} {r['variant']:11s} {sparsity:>8s} "
              f"{r['step_ms']:8.2f} {update:>9s} {r['epoch_s']:8.2f} {r['vs_dense']:7.2f} "
              f"{vs_torch:>7s}  {'; '.join(r['flags'])}")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODEL_NAMES),
                   help="comma-separated subset of " + ", ".join(MODEL_NAMES))
    p.add_argument("--samples", type=int, default=12800,
                   help="images per timed mlp epoch (100 batches at batch 128)")
    p.add_argument("--cnn-samples", type=int, default=2560,
                   help="images per timed cnn epoch (20 batches at batch 128)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", default=",".join(str(t) for t in sorted({1, min(2, usable_cpus())})),
                   help="comma-separated thread counts, each at most the CPUs this process "
                        "may use")
    p.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)),
                   help="comma-separated SRigL sparsities")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODEL_NAMES:
            p.error(f"--models: unknown model {m!r} (choose from {', '.join(MODEL_NAMES)})")
    for flag in ("samples", "cnn_samples", "batch_size", "repeats"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    try:
        args.threads = [check_thread_flag("--threads", int(t), minimum=1)
                        for t in args.threads.split(",")]
        args.sparsities = [float(s) for s in args.sparsities.split(",")]
    except ValueError as exc:
        p.error(str(exc))
    if not all(0 < s < 1 for s in args.sparsities):
        p.error(f"--sparsities must lie in (0, 1), got {args.sparsities}")
    args.models = models
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        torch = None
        print("torch is not installed: skipping the PyTorch rows")
    info = machine_info()
    info["torch"] = None if torch is None else torch.__version__
    print(f"machine: {info['cpu']} ({info['cores']} cores, {info['vector_isa']}, kernels' "
          f"path {info['cpu_path']}), numpy {info['numpy']} [{info['blas']}], torch "
          f"{info['torch']}; float32, batch {args.batch_size}, x[{args.batch_size},1,28,28]")
    rows = []
    for name in args.models:
        x, y = synthetic_data(args.cnn_samples if name == "cnn" else args.samples)
        for threads in args.threads:
            rows += measure_cell(name, threads, x, y, args, torch)
    print(f"\none epoch of {FULL_BATCHES} batches (forward + backward + SGD momentum 0.9; the "
          f"sparse rows with SRigL's hooks), composed from the medians of {args.repeats} "
          f"interleaved rounds: epoch = {FULL_BATCHES - UPDATES_PER_EPOCH} ordinary steps + "
          f"{UPDATES_PER_EPOCH} update steps (ΔT = 100)")
    print_rows(rows)
    if any(r["flags"] for r in rows):
        print("rows with flags ran beside other load: their ratios are not figures to quote")
    if args.json:
        write_json(args.json, {"machine": info, "argv": sys.argv[1:], "rows": rows})
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
