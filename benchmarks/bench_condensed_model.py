"""Whole-model inference: a trained model condensed vs the masked dense model.

    python benchmarks/bench_condensed_model.py --run runs/mlp-srigl-s0
    python benchmarks/bench_condensed_model.py --model cnn --sparsity 0.9   # no training

With --run (a directory written by ``python -m srigl_np.train``) or --checkpoint, the
model is rebuilt from the checkpoint's config and weights; any method that leaves
constant fan-in condenses fully (SRigL; a dense model condenses with k = n_in), others
keep their unstructured layers dense. Without one, every Linear/Conv2d of a fresh
model gets a random constant fan-in mask at --sparsity (a masked dense model), with
--ablated-frac of its neurons (all but the last layer's) ablated.

A trained model condenses by its DynamicSparsity masks (``checkpoint.load_model``), so
weights grown at zero stay condensed entries. For batch 1 and 256 and each thread
count, prints the median seconds of the dense forward pass (NumPy BLAS, evaluation
mode) and of ``CondensedModel.logits``, timed in interleaved rounds, their ratio, and
checks that both predict the same classes.
"""

import argparse
import sys

import numpy as np

from srigl_np import bench, dst
from srigl_np.checkpoint import load_model
from srigl_np.condensing import condense
from srigl_np.kernels import max_threads
from srigl_np.layers import Conv2d, Linear
from srigl_np.models import MODEL_NAMES, build


def masked_model(name, sparsity, ablated_frac, rng):
    """A fresh model whose Linear/Conv2d weights have random constant fan-in masks."""
    model = build(name, rng=rng)
    layers = [layer for layer in model.layers if isinstance(layer, (Linear, Conv2d))]
    for i, layer in enumerate(layers):
        weight = layer.params["weight"]
        n_ablated = int(round(ablated_frac * weight.shape[0])) if i < len(layers) - 1 else 0
        ablated = rng.choice(weight.shape[0], n_ablated, replace=False)
        weight *= dst.constant_fan_in_mask(weight.shape, sparsity, rng, ablated=ablated)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run directory of python -m srigl_np.train")
    parser.add_argument("--checkpoint", help="a checkpoint.npz instead of --run")
    parser.add_argument("--model", choices=MODEL_NAMES, default="cnn")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--ablated-frac", type=float, default=0.0)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, max_threads()}))
    parser.add_argument("--min-time", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(args.seed)
    source = args.run or args.checkpoint
    if source:
        run = load_model(source)
        name, model = run.config["model"], run.model
        condensed = run.condense()
        origin = f"trained {name} from {source} (masks: {len(run.masks)} layers)"
    else:
        name = args.model
        model = masked_model(name, args.sparsity, args.ablated_frac, rng)
        condensed = condense(model)
        origin = (f"masked {name}, random constant fan-in at sparsity {args.sparsity}, "
                  f"ablated fraction {args.ablated_frac}")
    info = bench.machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores; BLAS: {info['blas']}; "
          f"kernels built with OpenMP: {info['openmp']}")
    print(f"{origin}\n{condensed!r}")
    for entry in condensed.report:
        print(f"  layer {entry['layer']} {entry['type']}: {entry['result']} "
              f"(structure from {entry['structure']}; {entry['reason']}; "
              f"{entry['n_active']}/{entry['n_out']} neurons active, k={entry['k']})")
    print(f"float32 input (batch, 1, 28, 28); medians of {bench.ROUNDS} interleaved rounds, "
          f"{args.min_time} s per implementation and row")
    print(f"{'batch':>6}{'threads':>8}{'dense ms':>11}{'condensed ms':>14}{'speedup':>9}")
    for batch in args.batch_sizes:
        x = rng.standard_normal((batch, 1, 28, 28), dtype=np.float32)
        for threads in args.threads:
            with threadpool_limits(limits=threads):
                impls = {"dense": (lambda: model.forward(x, False), "masked dense"),
                         "condensed": (lambda: condensed.logits(x, threads), "condensed")}
                times = {r["implementation"]: r["median_s"]
                         for r in bench._time_all(impls, bench.sample_seconds, args.min_time)}
                same = np.array_equal(model.forward(x, False).argmax(1),
                                      condensed.predict(x, threads))
            dense_s, condensed_s = times["dense"], times["condensed"]
            print(f"{batch:>6}{threads:>8}{dense_s * 1e3:>11.3f}{condensed_s * 1e3:>14.3f}"
                  f"{dense_s / condensed_s:>8.2f}x" + ("" if same else "  PREDICTIONS DIFFER"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
