"""Whole-model inference: a trained model condensed vs the masked dense model and torch.

    python benchmarks/bench_condensed_model.py --run runs/mlp-srigl-s0
    python benchmarks/bench_condensed_model.py --run runs/cnn-srigl-s0 --min-time 0.05
    python benchmarks/bench_condensed_model.py --model cnn --sparsity 0.9   # no training

With --run (a directory written by ``python -m srigl_np.train``) or --checkpoint, the
model is rebuilt from the checkpoint's config and weights; any method that leaves
constant fan-in condenses fully (SRigL; a dense model condenses with k = n_in), others
keep their unstructured layers dense. Without one, every Linear/Conv2d of a fresh
model gets a random constant fan-in mask at --sparsity (a masked dense model), with
--ablated-frac of its neurons (all but the last layer's) ablated.

A trained model condenses by its DynamicSparsity masks (``checkpoint.load_model``), so
weights grown at zero stay condensed entries. Three implementations of the same
network are timed, on the same float32 input (batch, 1, 28, 28):

    dense      the masked dense model in srigl_np's NumPy layers, evaluation mode
               (NumPy BLAS)
    torch      the same network as a torch.nn.Sequential (Linear, Conv2d, ReLU,
               MaxPool2d, Flatten, BatchNorm with its running statistics, Dropout),
               in eval mode under torch.inference_mode(), torch.set_num_threads(threads)
               per row; skipped with a note when torch is not installed (or --no-torch)
    condensed  ``CondensedModel.logits`` on srigl_np's kernels

Before any timing, torch's logits are checked against the dense model's on every
batch timed: the largest absolute difference is printed, and one over TOLERANCE
(1e-4) stops the bench with exit status 1, so the times compare the same computation.
For each batch size and thread count the implementations take turns in interleaved
rounds (``bench.time_all``); each row gives the medians, the condensed model's
speedup against dense and against torch, and whether it predicts the classes the
dense model predicts, with the bench's load flags ("busy", "unstable": the row's
ratios then end in "?"); each row is reported on stderr as it runs. BLAS and OpenMP
are held to the row's thread count
(threadpoolctl), torch by ``torch.set_num_threads``, the kernels by ``threads=``.
--json PATH also writes the header and the rows as JSON.
"""

import argparse
import sys

import numpy as np

from srigl_np import bench, dst
from srigl_np.inference.condensing import condense, condense_run
from srigl_np.formats.checkpoint import load_model
from srigl_np.nn.layers import Conv2d, Dropout, Flatten, Linear, ReLU
from srigl_np.nn.pooling import MaxPool2d
from srigl_np.nn.normalization import BatchNorm1d, BatchNorm2d
from srigl_np.nn.models import MODEL_NAMES, build

TOLERANCE = 1e-4       # largest |logit difference| allowed between torch and our dense model
INPUT_SHAPE = (1, 28, 28)
IMPLEMENTATIONS = ("dense", "torch", "condensed")


class TorchMismatch(AssertionError):
    """torch's logits differ from the dense model's by more than TOLERANCE."""


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


def cpu_path():
    """The kernels' instruction-set path (``srigl_np.kernels.cpu_path``), or "unknown"
    when this build does not say."""
    from srigl_np import kernels

    path = getattr(kernels, "cpu_path", None)
    if callable(path):
        path = path()
    return "unknown" if path is None else str(path)


def import_torch():
    """(torch, None), or (None, why not) when it cannot be imported."""
    try:
        import torch
    except ImportError as exc:
        return None, f"torch is not installed ({exc})"
    return torch, None


# -- the same network in torch --------------------------------------------------------

def torch_sequential(model, torch):
    """A torch.nn.Sequential in eval mode computing what ``model`` (a srigl_np
    Sequential) computes in evaluation, with copies of its weights and buffers.

    Linear, Conv2d, ReLU, MaxPool2d, Flatten, BatchNorm1d/2d (running statistics) and
    Dropout (the identity in eval mode) map one to one; any other layer is a TypeError
    naming it. The weights are float32, as the model's are."""
    from srigl_np.backend import to_numpy

    nn = torch.nn

    def tensor(array):
        return torch.from_numpy(np.array(to_numpy(array), dtype=np.float32))

    def copy_into(module, arrays):
        with torch.no_grad():
            for name, array in arrays.items():
                getattr(module, name).copy_(tensor(array))
        return module

    modules = []
    for i, layer in enumerate(model.layers):
        has_bias = "bias" in layer.params
        if isinstance(layer, Linear):
            module = copy_into(nn.Linear(layer.in_features, layer.out_features, bias=has_bias),
                               layer.params)
        elif isinstance(layer, Conv2d):
            module = copy_into(nn.Conv2d(layer.in_channels, layer.out_channels,
                                         layer.kernel_size, stride=layer.stride,
                                         padding=layer.padding, bias=has_bias),
                               layer.params)
        elif isinstance(layer, ReLU):
            module = nn.ReLU(inplace=layer.inplace)
        elif isinstance(layer, MaxPool2d):
            module = nn.MaxPool2d(layer.kernel_size, stride=layer.stride)
        elif isinstance(layer, Flatten):
            module = nn.Flatten()
        elif isinstance(layer, Dropout):
            module = nn.Dropout(layer.p)      # the identity in eval mode
        elif isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            cls = nn.BatchNorm1d if isinstance(layer, BatchNorm1d) else nn.BatchNorm2d
            module = copy_into(cls(layer.num_features, eps=layer.eps, momentum=layer.momentum),
                               {**layer.params, **layer.buffers})
        else:
            raise TypeError(f"layer {i} ({layer!r}) has no torch equivalent in this bench")
        modules.append(module)
    return nn.Sequential(*modules).eval()


def torch_logits(tmodel, x, torch):
    """torch's logits for the NumPy batch ``x``, as a NumPy array."""
    with torch.inference_mode():
        return tmodel(torch.from_numpy(x)).numpy()


def check_torch(model, tmodel, inputs, torch, tolerance=TOLERANCE):
    """{batch: max |torch logits - dense logits|} over ``inputs`` ({batch: x});
    TorchMismatch when one exceeds ``tolerance`` (or the shapes differ)."""
    diffs = {}
    for batch, x in inputs.items():
        ours = model.forward(x, False)
        theirs = torch_logits(tmodel, x, torch)
        if ours.shape != theirs.shape:
            raise TorchMismatch(f"torch gives logits of shape {theirs.shape} at batch {batch}, "
                                f"the dense model {ours.shape}")
        diffs[batch] = float(np.max(np.abs(ours - theirs)))
        if not diffs[batch] <= tolerance:
            raise TorchMismatch(f"torch's logits differ from the dense model's by up to "
                                f"{diffs[batch]:.3g} at batch {batch} (tolerance "
                                f"{tolerance:g}): the torch network is not the same "
                                f"computation, so its times would not compare")
    return diffs


# -- timing ---------------------------------------------------------------------------

def make_inputs(batch_sizes, rng):
    """{batch: standard-normal float32 (batch, 1, 28, 28)}, one input per batch size."""
    return {batch: rng.standard_normal((batch,) + INPUT_SHAPE, dtype=np.float32)
            for batch in batch_sizes}


def run_rows(model, condensed, inputs, thread_counts, min_time, *, tmodel=None, torch=None,
             rounds=bench.ROUNDS, sampler=bench.sample_seconds, progress=lambda text: None):
    """One row per (batch, threads): {"batch", "threads", "<impl>_s" (median seconds,
    None for torch without ``tmodel``), "<impl>_repeats", "speedup_vs_dense",
    "speedup_vs_torch" (None without torch), "same_predictions", "flags" (the bench's
    load flags, ``bench.row_flags``)} for the implementations in IMPLEMENTATIONS, timed
    in ``rounds`` interleaved rounds; ``progress(text)`` is told each row."""
    from contextlib import nullcontext

    from threadpoolctl import threadpool_limits

    use_torch = tmodel is not None
    saved_threads = torch.get_num_threads() if use_torch else None
    rows = []
    try:
        for batch, x in inputs.items():
            tx = torch.from_numpy(x) if use_torch else None
            for threads in thread_counts:
                if use_torch:
                    torch.set_num_threads(threads)
                with threadpool_limits(limits=threads), \
                        (torch.inference_mode() if use_torch else nullcontext()):
                    impls = {"dense": (lambda: model.forward(x, False), "masked dense")}
                    if use_torch:
                        impls["torch"] = (lambda: tmodel(tx), f"torch {torch.__version__}")
                    impls["condensed"] = (lambda: condensed.logits(x, threads), "condensed")
                    progress(f"batch {batch}, {threads} threads ...")
                    with bench.LoadMeter() as meter:
                        timed = bench.time_all(impls, sampler, min_time, rounds)
                    records = {r["implementation"]: r for r in timed}
                    same = bool(np.array_equal(model.forward(x, False).argmax(1),
                                               condensed.predict(x, threads)))
                row = {"batch": batch, "threads": threads}
                for name in IMPLEMENTATIONS:
                    record = records.get(name)
                    row[f"{name}_s"] = record["median_s"] if record else None
                    row[f"{name}_repeats"] = record["repeats"] if record else None
                ours = row["condensed_s"]
                row["speedup_vs_dense"] = row["dense_s"] / ours
                row["speedup_vs_torch"] = row["torch_s"] / ours if use_torch else None
                row["same_predictions"] = same
                row["flags"] = bench.row_flags(meter, timed)
                rows.append(row)
                progress(bench.flagged(f"batch {batch}, {threads} threads: "
                                       f"{row['speedup_vs_dense']:.2f}x dense", row["flags"]))
    finally:
        if use_torch:
            torch.set_num_threads(saved_threads)
    return rows


COLUMNS = (("batch", 6), ("threads", 8), ("dense ms", 11), ("torch ms", 11),
           ("condensed ms", 14), ("vs dense", 10), ("vs torch", 10))


def format_table(rows):
    """The rows as text lines: a header, then one line per row. Missing torch figures
    are "-"; a row whose condensed predictions differ from dense ends with a flag."""
    def ms(seconds):
        return "-" if seconds is None else f"{seconds * 1e3:.3f}"

    def ratio(value, trusted):
        return "-" if value is None else f"{value:.2f}x" + ("" if trusted else "?")

    lines = ["".join(f"{title:>{width}}" for title, width in COLUMNS)]
    for row in rows:
        trusted = not row.get("flags")
        cells = (row["batch"], row["threads"], ms(row["dense_s"]), ms(row["torch_s"]),
                 ms(row["condensed_s"]), ratio(row["speedup_vs_dense"], trusted),
                 ratio(row["speedup_vs_torch"], trusted))
        lines.append("".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, COLUMNS))
                     + ("" if row["same_predictions"] else "  PREDICTIONS DIFFER")
                     + ("" if trusted else f"  [{'; '.join(row['flags'])}]"))
    return lines


# -- command line ---------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run directory of python -m srigl_np.train")
    parser.add_argument("--checkpoint", help="a checkpoint.npz instead of --run")
    parser.add_argument("--model", choices=MODEL_NAMES, default="cnn")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--ablated-frac", type=float, default=0.0)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--min-time", type=float, default=0.3,
                        help="seconds per implementation and row, over all rounds "
                             "(default 0.3; e.g. 0.02 for a quick look)")
    parser.add_argument("--rounds", type=int, default=bench.ROUNDS,
                        help=f"interleaved rounds per row (default {bench.ROUNDS})")
    parser.add_argument("--no-torch", action="store_true",
                        help="leave out the torch column even when torch is installed")
    parser.add_argument("--json", help="also write the header and rows to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.batch_sizes):
        parser.error(f"batch sizes must be >= 1, got {args.batch_sizes}")
    bench.check_thread_counts(parser, args.threads)
    if args.min_time < 0:
        parser.error(f"--min-time must be >= 0, got {args.min_time}")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.json:
        problem = bench.check_output_path("--json", args.json)
        if problem:
            parser.error(problem)
    return args


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    source = args.run or args.checkpoint
    if source:
        run = load_model(source)
        name, model = run.config["model"], run.model
        condensed = condense_run(run)
        origin = f"trained {name} from {source} (masks: {len(run.masks)} layers)"
    else:
        name = args.model
        model = masked_model(name, args.sparsity, args.ablated_frac, rng)
        condensed = condense(model)
        origin = (f"masked {name}, random constant fan-in at sparsity {args.sparsity}, "
                  f"ablated fraction {args.ablated_frac}")
    torch, torch_note = (None, "torch column skipped (--no-torch)") if args.no_torch \
        else import_torch()
    if torch is None and not args.no_torch:
        torch_note = f"{torch_note}: torch column skipped"

    info = bench.machine_info()
    isa = cpu_path()
    print(f"machine: {info['cpu']}, {info['cores']} cores; kernel ISA path: {isa}; "
          f"BLAS: {info['blas']}; kernels built with OpenMP: {info['openmp']}")
    print(f"torch: {torch.__version__} (eval mode, inference_mode, set_num_threads per row)"
          if torch is not None else f"torch: {torch_note}")
    print(f"{origin}\n{condensed!r}")
    for entry in condensed.report:
        print(f"  layer {entry['layer']} {entry['type']}: {entry['result']} "
              f"(structure from {entry['structure']}; {entry['reason']}; "
              f"{entry['n_active']}/{entry['n_out']} neurons active, k={entry['k']})")

    inputs = make_inputs(args.batch_sizes, rng)
    tmodel, torch_diffs = None, None
    if torch is not None:
        tmodel = torch_sequential(model, torch)
        try:
            torch_diffs = check_torch(model, tmodel, inputs, torch)
        except TorchMismatch as exc:
            print(f"bench_condensed_model.py: error: {exc}", file=sys.stderr)
            return 1
        print("torch vs dense, max |logit diff|: "
              + ", ".join(f"{d:.2g} (batch {b})" for b, d in torch_diffs.items())
              + f" <= {TOLERANCE:g}: same computation")
    print(f"dtype float32, input (batch, 1, 28, 28); batch {args.batch_sizes}; threads "
          f"{args.threads}; medians of {args.rounds} interleaved rounds, {args.min_time} s "
          f"per implementation and row")
    rows = run_rows(model, condensed, inputs, args.threads, args.min_time, tmodel=tmodel,
                    torch=torch, rounds=args.rounds, progress=bench.Progress())
    print("\n".join(format_table(rows)))
    if any(row["flags"] for row in rows):
        print("?: the row ran beside other load or with unstable timings; its ratios do "
              "not compare (rerun on an idle machine)")
    print("vs dense / vs torch: the condensed model's speedup (their median / its median)")
    if args.json:
        from srigl_np.fileio import write_json

        write_json(args.json, {
            "machine": {**info, "isa": isa}, "source": origin, "model": name,
            "dtype": "float32", "input_shape": list(INPUT_SHAPE),
            "batch_sizes": args.batch_sizes, "threads": args.threads,
            "rounds": args.rounds, "min_time": args.min_time,
            "torch": ({"version": torch.__version__, "tolerance": TOLERANCE,
                       "max_abs_logit_diff": {str(b): d for b, d in torch_diffs.items()}}
                      if torch is not None else {"skipped": torch_note}),
            "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
