"""What one SRigL layer allocates, and how long its steps take, in DynamicSparsity on each
compute path: an ordinary step, a step in a grow-score window and an update step.

    PYTHONPATH=. python benchmarks/update_memory.py                     # 4096 x 4096, 99%
    PYTHONPATH=. python benchmarks/update_memory.py --n-in 8192 --grad-accumulation 3

The model is a sparse Linear n_in -> n_out (uniform sparsity, float32) followed by a
kept-dense Linear n_out -> 10, SGD with momentum, batch --batch of standard normal x;
100 steps with ΔT 10, so steps 10, 20, ..., 90 update, and a grad-accumulation window
ends at each. Each step runs as the trainer runs it (before_forward, forward, backward,
before_step, optimizer step, after_step) under tracemalloc, which reports the peak of
the Python heap and NumPy's arrays during the step. Steps up to the first update warm
up; the table gives, per path, the largest peak of the later ordinary, window and
update steps and the median time of the 8 later update steps (grow score, update,
rewiring). A measurement, not a test; tests/test_condensed_training.py asserts the
bounds it documents.
"""

import argparse
import statistics
import sys
import time
import tracemalloc

import numpy as np

from srigl_np.bench import LoadMeter, load_flags
from srigl_np.bench.machine import machine_info
from srigl_np.dst.sparsity import DynamicSparsity, train_step
from srigl_np.nn.layers import Linear, Sequential
from srigl_np.nn.optim import SGD

MIB = 2**20


def build(n_in, n_out, sparsity, grad_accumulation, compute, seed=0):
    """(model, optimizer, DynamicSparsity, Generator): the sparse Linear n_in -> n_out and
    its kept-dense head, SRigL at ``sparsity`` with updates at 10, 20, ..., 90."""
    rng = np.random.default_rng(seed)
    model = Sequential(Linear(n_in, n_out, rng=rng), Linear(n_out, 10, rng=rng))
    optimizer = SGD(model.named_parameters(), lr=0.01, momentum=0.9)
    dynamic = DynamicSparsity(model, optimizer, method="srigl", sparsity=sparsity, delta=10,
                              t_end=100, distribution="uniform", dense_layers=(1,),
                              grad_accumulation=grad_accumulation, compute=compute)
    return model, optimizer, dynamic, rng


def step(model, optimizer, sparsity, x, y, index):
    """One trainer step; (peak bytes allocated, seconds)."""
    tracemalloc.start()
    started = time.perf_counter()
    train_step(model, optimizer, sparsity, x, y, index)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-in", type=int, default=4096)
    parser.add_argument("--n-out", type=int, default=4096)
    parser.add_argument("--sparsity", type=float, default=0.99)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--grad-accumulation", type=int, default=1)
    parser.add_argument("--computes", nargs="+", default=["condensed", "masked"],
                        choices=["condensed", "masked"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    info = machine_info()
    print(f"# {info['cpu']}, {info['cores']} logical CPUs, kernels' path {info['cpu_path']}, "
          f"BLAS {info['blas']}; float32; sparse Linear "
          f"{args.n_in} -> {args.n_out} at {args.sparsity:g} (dense weight "
          f"{args.n_in * args.n_out * 4 / MIB:.0f} MiB), batch {args.batch}, "
          f"grad-accumulation {args.grad_accumulation}; tracemalloc peak per step",
          flush=True)
    print("| compute | ordinary step | window step | update step | update step time (median "
          "of 8) | load |")
    print("|---|---|---|---|---|---|")
    for compute in args.computes:
        model, optimizer, sparsity, rng = build(args.n_in, args.n_out, args.sparsity,
                                                args.grad_accumulation, compute, args.seed)
        x = rng.standard_normal((args.batch, args.n_in)).astype(np.float32)
        y = rng.integers(0, 10, args.batch)
        peaks = {"ordinary": 0, "window": 0, "update": 0}
        update_seconds = []
        with LoadMeter() as meter:
            for index in range(100):   # updates at 10, 20, ..., 90; the first warms up
                peak, seconds = step(model, optimizer, sparsity, x, y, index)
                if index <= 10:
                    continue
                kind = ("update" if sparsity.is_update_step(index) else
                        "window" if sparsity.accumulates(index) else "ordinary")
                peaks[kind] = max(peaks[kind], peak)
                if kind == "update":
                    update_seconds.append(seconds)
                    print(f"  {compute}: update at step {index} took {seconds * 1e3:.0f} ms",
                          file=sys.stderr, flush=True)
        load = "; ".join(load_flags(meter.other_cpus, meter.resolution)) or "quiet"
        window_cell = (f"{peaks['window'] / MIB:.1f} MiB" if args.grad_accumulation > 1
                       else "(none: window 1)")
        print(f"| {compute} | {peaks['ordinary'] / MIB:.1f} MiB | {window_cell} | "
              f"{peaks['update'] / MIB:.1f} MiB | "
              f"{statistics.median(update_seconds) * 1e3:.0f} ms | {load} |", flush=True)


if __name__ == "__main__":
    main()
