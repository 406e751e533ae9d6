"""Time one training epoch of srigl_np against PyTorch (CPU), side by side in one process.

An epoch is what ``python -m srigl_np.train`` does per mini-batch: gather the batch,
forward, softmax cross-entropy, backward (no gradient for the data itself), SGD step
with momentum 0.9. Both frameworks get the same architecture, batch size, float32 data
and thread count (``torch.set_num_threads(n)``; ``threadpool_limits(n)`` for our BLAS
and OpenMP). The data are synthetic Fashion-MNIST-shaped images (timing does not depend
on pixel values). Repeats alternate ours/torch and the table reports medians, with the
bench's load flags (``bench.LoadMeter``; a flagged ratio ends in "?"); each repeat is
reported on stderr as it starts.

With fewer samples than 60000 the per-epoch figure is extrapolated from the measured
time per mini-batch to the 469 batches of a 60000-image epoch, and says so.

    python benchmarks/bench_train_epoch.py                      # mlp 60000, cnn 10000
    python benchmarks/bench_train_epoch.py --models cnn --cnn-samples 60000 --repeats 1
    python benchmarks/bench_train_epoch.py --threads 2 --json results.json
"""

import argparse
import os
import platform
import statistics
import sys
import time

from srigl_np import thread_waits

# Before NumPy loads OpenBLAS: see thread_waits.
thread_waits.set_training_defaults()

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from srigl_np import bench, openmp_enabled
from srigl_np.fileio import write_json
from srigl_np.nn.losses import softmax_cross_entropy
from srigl_np.nn.models import MODEL_NAMES, build
from srigl_np.nn.optim import SGD
from srigl_np.validation import check_thread_flag, usable_cpus

FULL_EPOCH = 60000
ENV_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_NUM_THREADS",
            "OPENBLAS_THREAD_TIMEOUT", "MKL_NUM_THREADS")


def synthetic_data(n, seed=0):
    """Normalised float32 images (n, 1, 28, 28) and int64 labels in [0, 10)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)
    x = ((images.astype(np.float32) / 255.0 - np.float32(0.286)) / np.float32(0.353))
    return x.astype(np.float32), rng.integers(0, 10, size=n)


def batch_order(n, batch_size, seed):
    order = np.random.default_rng(seed).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def ours_epoch(model_name, x, y, batch_size, seed):
    """Seconds for one epoch of srigl_np (model built outside the timed region)."""
    model = build(model_name, rng=np.random.default_rng(seed))
    optimizer = SGD(model.named_parameters(), lr=0.01, momentum=0.9)
    grads = model.named_grads()
    batches = batch_order(len(x), batch_size, seed)
    start = time.perf_counter()
    for idx in batches:
        logits = model.forward(x[idx], training=True)
        _, grad = softmax_cross_entropy(logits, y[idx])
        model.backward(grad, input_grad=False)
        optimizer.step(grads)
    return time.perf_counter() - start


def torch_model(torch, name):
    nn = torch.nn
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100),
                             nn.ReLU(), nn.Linear(100, 10))
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(), nn.Linear(9216, 128),
                         nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))


def torch_epoch(torch, model_name, x, y, batch_size, seed):
    """Seconds for one epoch of the same network in PyTorch."""
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
    return time.perf_counter() - start


def machine_info(torch, threads):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    blas = [f"{p['internal_api']} {p['version']}" for p in threadpool_info()
            if p["user_api"] == "blas"]
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "numpy": np.__version__,
            "numpy_blas": ", ".join(blas) or "unknown", "srigl_np_openmp": openmp_enabled(),
            "torch": torch.__version__ if torch else None,
            "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ}}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODEL_NAMES),
                   help="comma-separated subset of " + ", ".join(MODEL_NAMES))
    p.add_argument("--samples", type=int, default=FULL_EPOCH,
                   help="samples per timed epoch for the mlp")
    p.add_argument("--cnn-samples", type=int, default=10000,
                   help="samples per timed epoch for the cnn (extrapolated to 60000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=min(2, usable_cpus()),
                   help="at most the CPUs this process may use")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODEL_NAMES:
            p.error(f"--models: unknown model {m!r} (choose from {', '.join(MODEL_NAMES)})")
    for flag in ("samples", "cnn_samples", "batch_size", "threads", "repeats"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    try:
        check_thread_flag("--threads", args.threads, minimum=1)
    except ValueError as exc:
        p.error(str(exc))
    args.models = models
    return args


def main(argv=None):
    args = parse_args(argv)
    progress = bench.Progress()
    try:
        import torch
    except ImportError:
        torch = None
        print("torch is not installed: skipping the PyTorch rows "
              "(pip install torch --index-url https://download.pytorch.org/whl/cpu)")
    if torch is not None:
        torch.set_num_threads(args.threads)
    info = machine_info(torch, args.threads)
    print(f"machine: {info['cpu']} ({info['cores']} cores), python {info['python']}, "
          f"numpy {info['numpy']} [{info['numpy_blas']}], torch {info['torch']}, "
          f"srigl_np OpenMP {info['srigl_np_openmp']}, env {info['env'] or '{}'}")
    rows = []
    full_batches = -(-FULL_EPOCH // args.batch_size)
    for name in args.models:
        n = args.cnn_samples if name == "cnn" else args.samples
        x, y = synthetic_data(n)
        n_batches = -(-n // args.batch_size)
        ours, theirs = [], []
        with threadpool_limits(limits=args.threads), bench.LoadMeter() as meter:
            warm = min(n, 4 * args.batch_size)   # first-touch allocations, BLAS thread start
            ours_epoch(name, x[:warm], y[:warm], args.batch_size, 0)
            if torch is not None:
                torch_epoch(torch, name, x[:warm], y[:warm], args.batch_size, 0)
            for r in range(args.repeats):
                progress(f"{name}: repeat {r + 1}/{args.repeats}, {n} samples ...")
                ours.append(ours_epoch(name, x, y, args.batch_size, r))
                if torch is not None:
                    theirs.append(torch_epoch(torch, name, x, y, args.batch_size, r))
        timed = [{"implementation": who, "iqr_over_median": bench.spread(times)}
                 for who, times in (("ours", ours), ("torch", theirs)) if times]
        scale = full_batches / n_batches
        row = {"model": name, "samples": n, "batches": n_batches, "batch_size": args.batch_size,
               "threads": args.threads, "dtype": "float32", "input_shape": [args.batch_size, 1, 28, 28],
               "repeats": args.repeats, "extrapolated": n != FULL_EPOCH,
               "ours_s": statistics.median(ours), "ours_all_s": ours,
               "ours_epoch_s": statistics.median(ours) * scale,
               "torch_s": statistics.median(theirs) if theirs else None, "torch_all_s": theirs,
               "torch_epoch_s": statistics.median(theirs) * scale if theirs else None}
        row["ratio"] = row["ours_s"] / row["torch_s"] if theirs else None
        row["flags"] = bench.row_flags(meter, timed)
        rows.append(row)
        progress(bench.flagged(f"{name}: ours {row['ours_s']:.2f} s", row["flags"]))

    print(f"\none training epoch (forward + backward + SGD momentum 0.9), batch "
          f"{args.batch_size}, float32, x[{args.batch_size},1,28,28], {args.threads} threads, "
          f"median of {args.repeats}")
    print(f"{'model':6s} {'samples':>8s} {'ours s':>8s} {'torch s':>8s} {'ours/torch':>10s} "
          f"{'ours s/epoch':>13s} {'torch s/epoch':>14s}")
    for row in rows:
        torch_s = f"{row['torch_s']:8.2f}" if row["torch_s"] is not None else f"{'-':>8s}"
        ratio = (f"{row['ratio']:9.2f}" + ("?" if row["flags"] else " ")
                 if row["ratio"] is not None else f"{'-':>10s}")
        torch_epoch_s = (f"{row['torch_epoch_s']:14.1f}" if row["torch_epoch_s"] is not None
                         else f"{'-':>14s}")
        mark = "*" if row["extrapolated"] else " "
        print(f"{row['model']:6s} {row['samples']:8d} {row['ours_s']:8.2f} {torch_s} {ratio} "
              f"{row['ours_epoch_s']:12.1f}{mark} {torch_epoch_s}{mark}"
              + (f"  [{'; '.join(row['flags'])}]" if row["flags"] else ""))
    if any(row["flags"] for row in rows):
        print("?: ran beside other load or with unstable timings; the ratio does not "
              "compare (rerun on an idle machine)")
    if any(row["extrapolated"] for row in rows):
        print(f"* extrapolated to a {FULL_EPOCH}-image epoch ({full_batches} batches) from the "
              f"measured time per batch")
    if args.json:
        write_json(args.json, {"machine": info, "rows": rows})
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
