"""Where one training step's time goes: each layer's forward and backward, and the
optimizer step with DynamicSparsity's hooks, timed separately over ordinary steps (no
grow-score window, no update) of the mlp or cnn.

    python benchmarks/profile_train_step.py --model cnn --sparsity 0.99               # condensed
    python benchmarks/profile_train_step.py --model cnn --sparsity 0.9 --compute masked
    python benchmarks/profile_train_step.py --model mlp --compute dense

Synthetic float32 input, batch 128, one thread unless --threads; milliseconds per step,
means over --steps steps after one warm-up step, with the bench's load flag ("busy"
when other processes used the CPUs meanwhile). A breakdown for reading, not a
benchmark: the timers add their own cost to each layer call, and bench_train_epoch.py
is what compares the variants.
"""

import argparse
import sys
import time

from srigl_np import thread_waits

thread_waits.set_training_defaults()   # before NumPy loads OpenBLAS

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from srigl_np.bench import LoadMeter, load_flags  # noqa: E402
from srigl_np.bench.machine import machine_info  # noqa: E402
from srigl_np.dst.sparsity import DynamicSparsity  # noqa: E402
from srigl_np.nn.losses import softmax_cross_entropy  # noqa: E402
from srigl_np.nn.models import MODEL_NAMES, build  # noqa: E402
from srigl_np.nn.optim import SGD  # noqa: E402


def timed(totals, key, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        totals[key] = totals.get(key, 0.0) + time.perf_counter() - start
        return result
    return wrapper


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=MODEL_NAMES, default="cnn")
    p.add_argument("--compute", choices=("condensed", "masked", "dense"), default="condensed")
    p.add_argument("--sparsity", type=float, default=0.99)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    model = build(args.model, rng=np.random.default_rng(0))
    optimizer = SGD(model.named_parameters(), lr=0.01, momentum=0.9)
    ds = None
    if args.compute != "dense":   # updates far beyond the timed steps
        ds = DynamicSparsity(model, optimizer, method="srigl", sparsity=args.sparsity,
                             delta=10**6, t_end=2 * 10**6, compute=args.compute)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((args.batch_size, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, args.batch_size)
    totals = {}
    for name, layer in model.named_layers():
        label = f"{name} {type(layer).__name__}"
        layer.forward = timed(totals, f"{label} forward", layer.forward)
        layer.backward = timed(totals, f"{label} backward", layer.backward)
    with threadpool_limits(limits=args.threads), LoadMeter() as meter:
        for step in range(args.steps + 1):
            if step == 1:   # the first step is the warm-up
                totals.clear()
                started = time.perf_counter()
            if ds is not None:
                ds.before_forward(step + 1)
            _, grad = softmax_cross_entropy(model.forward(x, training=True), y)
            model.backward(grad, input_grad=False)
            grads = model.named_grads()
            start = time.perf_counter()
            if ds is None or ds.before_step(step + 1, grads):
                optimizer.step(grads)
            if ds is not None:
                ds.after_step(step + 1, grads)
            totals["optimizer + hooks"] = (totals.get("optimizer + hooks", 0.0)
                                           + time.perf_counter() - start)
        total = time.perf_counter() - started
    info = machine_info()
    print(f"{info['cpu']}, kernels' path {info['cpu_path']}; {args.model}, {args.compute}"
          + (f" {100 * args.sparsity:g}%" if ds is not None else "")
          + f", batch {args.batch_size}, float32, {args.threads} thread(s), "
            f"mean of {args.steps} steps; "
          + ("; ".join(load_flags(meter.other_cpus, meter.resolution)) or "quiet"))
    for key, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {key:28s} {1e3 * seconds / args.steps:8.2f} ms")
    print(f"  {'step':28s} {1e3 * total / args.steps:8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
