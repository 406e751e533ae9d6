"""Whole-model inference of the paper's architectures: condensed vs torch eval, same weights.

    python benchmarks/bench_models.py                          # the plan below, 2 threads
    python benchmarks/bench_models.py --models resnet50 vit_b_16 --batches 1 --rounds 5
    python benchmarks/bench_models.py --models cifar_resnet18 --dense-first-conv --json r.json

Each model (srigl_np.nn.architectures, full size) gets SRigL-like masks: a random
constant fan-in mask at --sparsity (0.9) on every sparse weight (convolutions, the
attention projections, squeeze-excite, the classifier; --dense-first-conv keeps the
first convolution dense, as the paper's runs do), --ablated-frac of each weight's rows
ablated (none of the classifier's), and BatchNorm running statistics that are not the
identity. The same weights go into torch's reference module (tests/torch_models.py:
torchvision's where it imports, else a torch.nn rewrite of the same graph) in eval mode
under torch.inference_mode(), torch.set_num_threads(--threads); the condensed model
(``inference.condensing.condense``) runs on srigl_np's kernels with threads=--threads, BLAS
and OpenMP held to the same count (threadpoolctl). float32 input of random normal
values (batch, 3, H, W).

Before timing, the condensed logits are checked against torch's: the largest
difference relative to the largest |logit| is printed, and one over TOLERANCE stops
the bench (exit status 1), so the times compare the same computation. The two take
turns in --rounds interleaved rounds (``bench.time_all``: medians), with the other
load on the machine measured (``bench.LoadMeter``; "busy"/"unstable" flags). The CPU
model and the kernels' CPU path are printed beside the figures.

Default plan (the issue's): ResNet-50 and ViT-B/16 at batch 1 and 32, CIFAR ResNet-18
at batch 1 and 256, MobileNet-V3 Large at batch 1; --batches replaces the batch sizes
of every model chosen.
"""

import argparse
import importlib.util
import json
import os
import sys
import time

# First, before NumPy and torch load their thread pools: idle OpenMP threads sleep at
# once and OpenBLAS's after ~0.1 ms (srigl_np.thread_waits, unless set by the user).
# A ViT alternates the kernels' OpenMP team with BLAS (the attention's products); with
# the libraries' default waits each pool's idle threads spin on the cores the other
# needs: the condensed ViT-B/16 at batch 1 took 2.0-3.1 s against 0.29-0.46 s with
# these (2 shared cores), and torch's own 0.7-3.7 s against 0.5-0.76 s.
# Run as a script only: a test that loads this module keeps its process's settings.
from srigl_np import thread_waits  # noqa: I001

if __name__ == "__main__":
    thread_waits.set_training_defaults()

from srigl_np import bench  # noqa: E402

import numpy as np  # noqa: E402
from srigl_np.inference.condensing import condense
from srigl_np.nn.architectures import ARCHITECTURES, build_architecture
from srigl_np.nn.layers import prefixed
from srigl_np.nn.normalization import BatchNorm1d, BatchNorm2d

TOLERANCE = 1e-4
PLAN = {"resnet50": (1, 32), "vit_b_16": (1, 32), "cifar_resnet18": (1, 256),
        "mobilenet_v3_large": (1,)}
IMAGE = {"cifar_resnet18": 32, "wide_resnet22": 32}   # others: 224


class TorchMismatch(AssertionError):
    """The condensed logits differ from torch's by more than TOLERANCE (relative)."""


def srigl_masks(model, sparsity, ablated_frac, dense_first_conv, rng):
    """Constant fan-in masks on every sparse weight, applied to the weights; returns them.
    k = max(1, round((1 - sparsity) * fan_in)) per row, ``ablated_frac`` of the rows
    empty (not in the last weight); the first weight all True with dense_first_conv."""
    weights = [(prefixed(path, name), layer.params[name])
               for path, layer in model.named_layers() for name in layer.sparse_weights]
    masks = {}
    for i, (name, weight) in enumerate(weights):
        n_out, fan = weight.shape[0], int(np.prod(weight.shape[1:]))
        if i == 0 and dense_first_conv:
            masks[name] = np.ones(weight.shape, dtype=bool)
            continue
        k = max(1, round((1 - sparsity) * fan))
        columns = np.argpartition(rng.random((n_out, fan), dtype=np.float32), k - 1,
                                  axis=1)[:, :k]
        mask = np.zeros((n_out, fan), dtype=bool)
        mask[np.arange(n_out)[:, None], columns] = True
        if i < len(weights) - 1 and ablated_frac:
            mask[rng.random(n_out) < ablated_frac] = False
        masks[name] = mask.reshape(weight.shape)
        weight *= masks[name]
    for _, layer in model.named_layers():
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            n = layer.num_features
            layer.buffers["running_mean"][...] = 0.1 * rng.standard_normal(n)
            layer.buffers["running_var"][...] = rng.uniform(0.5, 1.5, n)
    return masks


def torch_reference(name, model, sizes):
    """The torch module of ``name`` (built with ``sizes``) holding ``model``'s weights,
    in eval mode."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    import torch_models

    return torch_models.load_ours_into_torch(model, torch_models.BUILDERS[name](**sizes)).eval()


def bench_model(name, batches, args, log):
    """Rows {model, batch, threads, torch_s, condensed_s, speedup, flags, ...} of one model."""
    import torch
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    model = build_architecture(name, rng=rng, **args.sizes)
    masks = srigl_masks(model, args.sparsity, args.ablated_frac, args.dense_first_conv, rng)
    module = torch_reference(name, model, args.sizes)
    condensed = condense(model, masks=masks, warn=False)
    results = {e["result"] for e in condensed.report}
    log(f"{name}: built, masked and condensed in {time.perf_counter() - start:.1f} s "
        f"({len(condensed.report)} weights: {', '.join(sorted(results))})")
    del model
    size = args.image or IMAGE.get(name, 224)
    rows = []
    saved_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(args.threads)
        for batch in batches:
            x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
            tx = torch.from_numpy(x)
            with threadpool_limits(limits=args.threads), torch.inference_mode():
                expected = module(tx).numpy()
                got = condensed.logits(x, args.threads)
                difference = float(np.abs(got - expected).max() / np.abs(expected).max())
                if not difference <= TOLERANCE:
                    raise TorchMismatch(f"{name} batch {batch}: condensed logits differ from "
                                        f"torch's by {difference:.2e} of the largest logit")
                impls = {"torch": (lambda: module(tx), f"torch {torch.__version__}"),
                         "condensed": (lambda: condensed.logits(x, args.threads),
                                       "condensed")}
                with bench.LoadMeter() as meter:
                    records = {r["implementation"]: r for r in bench.time_all(
                        impls, bench.sample_seconds, args.min_time, args.rounds, 1)}
            worst = max(records.values(), key=lambda r: r["iqr_over_median"] or 0)
            row = {"model": name, "batch": batch, "threads": args.threads,
                   "torch_s": records["torch"]["median_s"],
                   "condensed_s": records["condensed"]["median_s"],
                   "repeats": {k: r["repeats"] for k, r in records.items()},
                   "relative_difference": difference,
                   "flags": bench.load_flags(meter.other_cpus, meter.resolution,
                                             worst["iqr_over_median"], worst["implementation"])}
            row["speedup"] = row["torch_s"] / row["condensed_s"]
            rows.append(row)
            log(format_row(row))
    finally:
        torch.set_num_threads(saved_threads)
    return rows


def format_row(row):
    flags = f"  [{'; '.join(row['flags'])}]" if row["flags"] else ""
    return (f"  {row['model']:<20} batch {row['batch']:>4}  threads {row['threads']}  "
            f"torch {1e3 * row['torch_s']:9.2f} ms  condensed {1e3 * row['condensed_s']:9.2f} ms"
            f"  {row['speedup']:5.2f}x torch  (logits within {row['relative_difference']:.1e})"
            f"{flags}")


def make_parser():
    parser = argparse.ArgumentParser(prog="bench_models.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(ARCHITECTURES),
                        default=list(PLAN), help="architectures (default: the plan above)")
    parser.add_argument("--batches", nargs="+", type=int,
                        help="batch sizes for every model (default: each model's plan)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both (default 2)")
    parser.add_argument("--rounds", type=int, default=bench.ROUNDS,
                        help=f"interleaved rounds (default {bench.ROUNDS})")
    parser.add_argument("--min-time", type=float, default=1.0,
                        help="seconds of timed calls per implementation and row, over the "
                             "rounds (default 1.0; at least one call per round)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--ablated-frac", type=float, default=0.0,
                        help="fraction of each weight's rows ablated (default 0)")
    parser.add_argument("--dense-first-conv", action="store_true",
                        help="keep the first convolution dense")
    parser.add_argument("--sizes", type=json.loads, default={}, metavar="JSON",
                        help='the builders\' size arguments for a quick run, e.g. '
                             '\'{"width": 8}\' (default: full size)')
    parser.add_argument("--image", type=int, help="image size (default: 32 for the CIFAR "
                        "models, 224 for the others)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write header and rows as JSON")
    return parser


def main(argv=None, log=print):
    args = make_parser().parse_args(argv)
    for flag, value, low in (("--threads", args.threads, 1), ("--rounds", args.rounds, 1)):
        if value < low:
            raise SystemExit(f"bench_models.py: error: {flag} must be >= {low}, got {value}")
    if not 0.0 <= args.sparsity < 1.0 or not 0.0 <= args.ablated_frac < 1.0:
        raise SystemExit("bench_models.py: error: --sparsity and --ablated-frac must be in [0, 1)")
    if args.batches and min(args.batches) < 1:
        raise SystemExit("bench_models.py: error: --batches must be >= 1")
    if importlib.util.find_spec("torch") is None:
        raise SystemExit("bench_models.py: error: needs torch (pip install torch==2.13.0+cpu)")
    machine = bench.machine_info()
    header = (f"CPU: {machine['cpu']} ({machine['cores']} cores, {machine['vector_isa']}); "
              f"kernel path {machine['cpu_path']}; BLAS {machine['blas']}; float32; "
              f"sparsity {args.sparsity}, ablated {args.ablated_frac}, first conv "
              f"{'dense' if args.dense_first_conv else 'sparse'}; medians of "
              f"{args.rounds} interleaved rounds; OMP_WAIT_POLICY="
              f"{os.environ.get('OMP_WAIT_POLICY')}, OPENBLAS_THREAD_TIMEOUT="
              f"{os.environ.get('OPENBLAS_THREAD_TIMEOUT')}")
    log(header)
    rows = []
    try:
        for name in args.models:
            rows += bench_model(name, args.batches or PLAN.get(name, (1,)), args, log)
    except TorchMismatch as exc:
        log(f"bench_models.py: {exc}")
        return 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "header": header, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
