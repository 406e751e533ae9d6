"""Summarise training runs: final test accuracy per group, mean and spread over seeds.

    python benchmarks/summarize_runs.py runs/mlp-*

Runs are grouped by (model, method, sparsity, distribution, dataset) read from each run's
``metrics.json``; seeds within a group are averaged.
"""

import argparse
import json
import os
import sys
from collections import defaultdict

import numpy as np


def _group_key(metrics):
    c = metrics["config"]
    sparsity = "-" if c["method"] == "dense" else f"{c['sparsity']:.2f} {c['distribution']}"
    return (c["model"], c["method"] + ("" if c["method"] != "srigl" or not c["no_ablation"]
                                       else " (no ablation)"), sparsity, metrics["data"]["name"])


def summarise(run_dirs):
    """Rows of (model, method, sparsity, dataset, seeds, mean %, std %, per-seed %)."""
    groups = defaultdict(list)
    for run in run_dirs:
        path = os.path.join(run, "metrics.json")
        if not os.path.exists(path):
            print(f"skipping {run}: no metrics.json", file=sys.stderr)
            continue
        with open(path) as f:
            metrics = json.load(f)
        groups[_group_key(metrics)].append(
            (metrics["config"]["seed"], 100 * metrics["test_accuracy"],
             len(metrics["epochs"]), metrics["epochs"][-1].get("active_neurons")))
    rows = []
    for key, runs in sorted(groups.items()):
        runs.sort()
        acc = np.array([r[1] for r in runs])
        rows.append((*key, len(runs), acc.mean(), acc.std(), runs))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (each with metrics.json)")
    args = p.parse_args(argv)
    print(f"{'model':6} {'method':22} {'sparsity':10} {'data':14} {'seeds':>5} "
          f"{'mean %':>7} {'std':>5}  per seed (epochs, active neurons)")
    for model, method, sparsity, data, n, mean, std, runs in summarise(args.runs):
        detail = ", ".join(f"s{s}: {a:.2f} ({e} ep, {an if an is not None else 'all'})"
                           for s, a, e, an in runs)
        print(f"{model:6} {method:22} {sparsity:10} {data:14} {n:5d} {mean:7.2f} {std:5.2f}  "
              f"{detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
