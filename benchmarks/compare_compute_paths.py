"""Test accuracy of the two compute paths, ``--compute masked`` and ``--compute condensed``,
on the full Fashion-MNIST: the same SRigL runs (seeds, sparsities) trained both ways.

Each run is ``python -m srigl_np.train`` in its own process under ``--runs``
(``{model}-{sparsity}-{compute}-s{seed}``); a finished run is skipped, so the command can
be rerun to complete a grid. The table (markdown, also written to ``--table``) gives
per model and sparsity the mean and spread of each path's final test accuracy over the
seeds, the mean paired difference (condensed - masked, same seed) and the mean epoch
time of each path.

    python benchmarks/compare_compute_paths.py --models mlp          # 20 epochs, lr 0.1
    python benchmarks/compare_compute_paths.py --models cnn          # 3 epochs, lr 0.05
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from srigl_np.fileio import atomic_write

SETTINGS = {"mlp": {"epochs": 20, "lr": 0.1}, "cnn": {"epochs": 3, "lr": 0.05}}
COMPUTES = ("masked", "condensed")


def run_dir(runs, model, sparsity, compute, seed):
    return os.path.join(runs, f"{model}-{sparsity:g}-{compute}-s{seed}")


def finished(path):
    try:
        with open(os.path.join(path, "metrics.json")) as f:
            return json.load(f).get("finished") is True
    except (OSError, ValueError):
        return False


def train(args, model, sparsity, compute, seed):
    out = run_dir(args.runs, model, sparsity, compute, seed)
    if finished(out):
        return
    settings = SETTINGS[model]
    command = [sys.executable, "-m", "srigl_np.train", "--model", model, "--method", "srigl",
               "--sparsity", str(sparsity), "--compute", compute, "--seed", str(seed),
               "--epochs", str(settings["epochs"]), "--lr", str(settings["lr"]),
               "--dataset", "fashion-mnist", "--threads", str(args.threads),
               "--progress", "off", "--out", out]
    if os.path.exists(os.path.join(out, "checkpoint.npz")):
        command = [sys.executable, "-m", "srigl_np.train", "--resume", out, "--threads",
                   str(args.threads), "--progress", "off"]
    elif os.path.exists(out):
        command.append("--overwrite")   # a run that stopped before its first checkpoint
    started = time.perf_counter()
    print(f"{' '.join(command[1:])}", file=sys.stderr, flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    print(f"  done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)


def table(args):
    lines = ["| model | sparsity | seeds | masked: test acc. | condensed: test acc. | "
             "condensed - masked (paired) | masked s/epoch | condensed s/epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for model in args.models:
        for sparsity in args.sparsities:
            acc = {c: {} for c in COMPUTES}
            secs = {c: [] for c in COMPUTES}
            for compute in COMPUTES:
                for seed in args.seeds:
                    path = run_dir(args.runs, model, sparsity, compute, seed)
                    if not finished(path):
                        continue
                    with open(os.path.join(path, "metrics.json")) as f:
                        metrics = json.load(f)
                    acc[compute][seed] = 100 * metrics["test_accuracy"]
                    secs[compute] += [e["seconds"] for e in metrics["epochs"]]
            paired = [acc["condensed"][s] - acc["masked"][s] for s in args.seeds
                      if s in acc["condensed"] and s in acc["masked"]]
            if not paired:
                continue

            def summary(values):
                values = list(values)
                spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
                return f"{statistics.fmean(values):.2f}{spread}"
            lines.append(
                f"| {model} | {100 * sparsity:g}% | {len(paired)} | "
                f"{summary(acc['masked'].values())} | {summary(acc['condensed'].values())} | "
                f"{statistics.fmean(paired):+.2f} | {statistics.fmean(secs['masked']):.1f} | "
                f"{statistics.fmean(secs['condensed']):.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mlp", help="comma-separated: mlp, cnn")
    p.add_argument("--sparsities", default="0.9,0.99")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default=os.path.join("runs", "compute_paths"))
    p.add_argument("--table", default=None, help="also write the markdown table here")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    if set(args.models) - set(SETTINGS):
        p.error(f"--models: choose from {', '.join(SETTINGS)}, got {args.models}")
    args.sparsities = [float(s) for s in args.sparsities.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    for model in args.models:
        for sparsity in args.sparsities:
            for seed in args.seeds:
                for compute in COMPUTES:
                    train(args, model, sparsity, compute, seed)
    text = table(args)
    print(text)
    if args.table:
        atomic_write(args.table, lambda f: f.write(text.encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
