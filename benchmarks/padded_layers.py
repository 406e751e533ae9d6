"""What padding costs the unstructured methods' condensed layers: each layer's share of
padding slots as training moves the masks, and the time of an ordinary step.

RigL, SET and static train condensed padded to each layer's largest fan-in
(``srigl_np.nn.condensed_compute``, "Padded layout"): a step's products run over
n_active * k slots, of which nnz hold weights. This trains the model with the trainer's
data, model, optimizer, schedule and DynamicSparsity through --updates topology updates
(ΔT = --delta, t_end past them, so each drops about --alpha of the weights), printing at
the start and after each update every sparse layer's fan-in range, k and padding share
(computed from the masks; on --compute condensed, the default, also the layers that
run condensed: one past ``condensed_compute.PADDED_SLOT_LIMIT`` runs masked), then
times ordinary steps (no grow-score window, no update) on the topology reached, in
--rounds interleaved rounds of --time-steps steps of each variant: masked, condensed
(padded where that pays), and condensed with every padded layer padded (no limit):

    python benchmarks/padded_layers.py --model cnn --method rigl --sparsity 0.9

``--break-even`` instead times one layer's forward and both backward products, dense
against condensed at slot densities k/F from 0.1 to 0.7 (a padded layer costs what a
constant fan-in one of the same k does), for the mlp's and cnn's larger layers: where
the limits come from.

    python benchmarks/padded_layers.py --break-even

Float32, batch 128, one thread unless --threads; a variant's step time is the median
over rounds of each round's mean, with the bench's load flag ("busy" when other
processes used the CPUs meanwhile).
"""

import argparse
import itertools
import sys
import time

from srigl_np import thread_waits

thread_waits.set_training_defaults()   # before NumPy loads OpenBLAS

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from srigl_np import data as data_module  # noqa: E402
from srigl_np import dst  # noqa: E402
from srigl_np import train as train_module  # noqa: E402
from srigl_np import train_config  # noqa: E402
from srigl_np.bench import LoadMeter, load_flags  # noqa: E402
from srigl_np.bench.machine import machine_info  # noqa: E402
from srigl_np.dst.sparsity import train_step  # noqa: E402
from srigl_np.nn import condensed_compute  # noqa: E402
from srigl_np.nn.layers import Conv2d, Linear  # noqa: E402


DEFAULT_LIMITS = dict(condensed_compute.PADDED_SLOT_LIMIT)
# Timed variants: (compute, padded-slot limit); None keeps PADDED_SLOT_LIMIT's.
VARIANTS = {"masked": ("masked", None), "condensed": ("condensed", None),
            "condensed, every layer padded": ("condensed", 1.0)}


def use(ds, compute, limit):
    """Switch ``ds``'s layers to a variant at the topology they have: out through
    dense_view and back in as ``compute`` and the limit call for (a benchmark's
    reach into DynamicSparsity, to time the variants on one topology and load)."""
    with ds.dense_view():
        ds.compute = compute
        for kind, default in DEFAULT_LIMITS.items():
            condensed_compute.PADDED_SLOT_LIMIT[kind] = default if limit is None else limit


def padding_of(mask):
    """(low, k, padding share) of a mask padded to its largest fan-in."""
    counts = mask.reshape(mask.shape[0], -1).sum(axis=1)
    active = counts[counts > 0]
    k = int(active.max())
    return int(active.min()), k, 1.0 - active.sum() / (active.size * k)


def _layer_ms(layer, x, reps):
    """Mean ms of a forward and a backward (with the input gradient) of ``layer``."""
    g = np.random.default_rng(1).standard_normal(layer.forward(x, True).shape).astype(x.dtype)
    layer.backward(g)   # warm-up
    started = time.perf_counter()
    for _ in range(reps):
        layer.forward(x, True)
        layer.backward(g)
    return 1e3 * (time.perf_counter() - started) / reps


def break_even(threads):
    """Dense against condensed per layer at slot densities k/F (module docstring)."""
    layers = {"Linear 784->300": (lambda rng: Linear(784, 300, rng=rng), (128, 784), 30),
              "Linear 300->100": (lambda rng: Linear(300, 100, rng=rng), (128, 300), 30),
              "Linear 9216->128": (lambda rng: Linear(9216, 128, rng=rng), (128, 9216), 10),
              "Conv2d 32->64 3x3, 28x28": (lambda rng: Conv2d(32, 64, 3, rng=rng),
                                           (128, 32, 28, 28), 3)}
    with threadpool_limits(limits=threads), LoadMeter() as meter:
        for label, (make, shape, reps) in layers.items():
            x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
            dense = make(np.random.default_rng(0))
            cells = [f"dense {_layer_ms(dense, x, reps):.2f}"]
            for density in (0.1, 0.2, 0.3, 0.4, 0.5, 0.7):
                layer = make(np.random.default_rng(0))
                weight = layer.params["weight"]
                mask = dst.constant_fan_in_mask(weight.shape, 1 - density,
                                                np.random.default_rng(3))
                condensed_compute.attach(layer, weight * mask, mask)
                cells.append(f"{density:g}: {_layer_ms(layer, x, reps):.2f}")
            print(f"{label} (ms, forward + backward, batch {shape[0]}): " + "; ".join(cells))
    info = machine_info()
    print(f"{info['cpu']}, kernels' path {info['cpu_path']}, {threads} thread(s), float32; "
          + ("; ".join(load_flags(meter.other_cpus, meter.resolution)) or "quiet"))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("mlp", "cnn"), default="cnn")
    p.add_argument("--method", choices=("rigl", "set", "static"), default="rigl")
    p.add_argument("--compute", choices=("condensed", "masked"), default="condensed")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--dataset", default="auto")
    p.add_argument("--delta", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.3)
    p.add_argument("--updates", type=int, default=5)
    p.add_argument("--time-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--break-even", action="store_true",
                   help="time dense against condensed layers instead (see above)")
    args = p.parse_args(argv)
    if args.break_even:
        return break_even(args.threads)
    config = train_config.config_from_args(train_config.make_parser().parse_args(
        ["--dataset", args.dataset, "--model", args.model, "--method", args.method,
         "--sparsity", str(args.sparsity), "--delta", str(args.delta), "--alpha",
         str(args.alpha), "--compute", args.compute, "--epochs", "100"]))
    (x_train, y_train, _, _, data_info, model, optimizer, schedule, ds,
     _) = train_module._build_run(config)
    steps = args.delta * args.updates + 1   # the last update included
    order = itertools.chain.from_iterable(
        data_module.batches(len(x_train), 128, np.random.default_rng([0, epoch]))
        for epoch in itertools.count())
    print(f"{args.model} {args.method} {100 * args.sparsity:g}% ({args.compute}), "
          f"{data_info['name']}, ΔT {args.delta}, alpha {args.alpha}; per layer: fan-in "
          f"low-k, padding slots")

    def report(label):
        cells = [f"{name} {low}-{k} {100 * share:.0f}%" for name, (low, k, share) in
                 ((n, padding_of(ds.masks[n])) for n in ds.names if ds.layer_sparsity[n] > 0)]
        condensed = [n for n in ds.names if n in ds.condensed and n not in ds.kept_dense()]
        print(f"  {label:10s} " + "  ".join(cells)
              + (f"; condensed: {', '.join(condensed) or 'none'}"
                 if args.compute == "condensed" else ""))

    def one_step(step):
        idx = next(order)
        optimizer.lr = schedule(step)
        return train_step(model, optimizer, ds, x_train[idx], y_train[idx], step)[1]

    with threadpool_limits(limits=args.threads):
        report("start")
        for step in range(steps):
            if one_step(step):
                report(f"step {step}")
        # Ordinary steps (no grow-score window, no update) on this topology, each variant
        # in turn in every round so that all see the same load.
        ordinary = next(s for s in range(steps, steps + args.delta)
                        if not (ds.accumulates(s) or ds.is_update_step(s)))
        times = {variant: [] for variant in VARIANTS}
        with LoadMeter() as meter:
            for _ in range(args.rounds):
                for variant, (compute, limit) in VARIANTS.items():
                    use(ds, compute, limit)
                    one_step(ordinary)   # warm-up: the kernels' buffers, the layout
                    started = time.perf_counter()
                    for _ in range(args.time_steps):
                        one_step(ordinary)
                    times[variant].append((time.perf_counter() - started) / args.time_steps)
        use(ds, args.compute, None)
    info = machine_info()
    print(f"  ordinary step, median of {args.rounds} rounds of {args.time_steps} steps: "
          + "; ".join(f"{variant} {1e3 * np.median(t):.1f} ms" for variant, t in times.items()))
    print(f"  {info['cpu']}, kernels' path {info['cpu_path']}, {args.threads} thread(s), "
          f"batch 128, float32; "
          + ("; ".join(load_flags(meter.other_cpus, meter.resolution)) or "quiet"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
