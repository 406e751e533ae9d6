"""A grid's summary: accuracy over seeds per setting, SRigL's neuron ablation, the plot.

``summarise`` groups finished runs by every setting but the seed (runs whose settings
differ are never pooled as seeds; a run directory holding another configuration than
the grid's is left out) and gives the final test accuracy as mean ± sample std over
the seeds, the seeds' count and the active neurons at the end; ``ablation_rows`` gives,
per SRigL setting and layer, the neurons left at the end and the first update that
ablated one (from each run's audit trail). ``markdown``, ``ablation_markdown`` and
``plot`` (one panel per model; needs matplotlib) draw them.
"""

import os

import numpy as np

from ..fileio import atomic_write
from .grid import METHODS, run_name
from .runs import config_difference, is_finished, read_metrics


def summarise(runs, root, dataset=None):
    """One row per setting (all but the seed), in grid order. With ``dataset``, a run
    whose directory holds another configuration than ``run`` on ``dataset`` is left
    out."""
    groups = {}
    for run in runs:
        key = tuple((k, run[k]) for k in ("model", "method", "sparsity", "gamma_sal",
                                          "loop", "epochs", "lr"))
        groups.setdefault(key, []).append(run)
    rows = []
    for key, members in groups.items():
        accuracies, active, seeds = [], [], []
        for run in members:
            out = os.path.join(root, run_name(run))
            if not is_finished(run, out):   # an interrupted run is not a result
                continue
            if dataset is not None and config_difference(run, out, dataset):
                continue                     # nor is another configuration's
            metrics = read_metrics(out)
            accuracies.append(100 * metrics["test_accuracy"])
            seeds.append(run["seed"])
            last = metrics["epochs"][-1]
            if last.get("active_neurons") is not None:
                active.append(f"{last['active_neurons']}/{last['neurons']}")
        row = dict(key)
        row.update(seeds=seeds, accuracies=accuracies,
                   mean=float(np.mean(accuracies)) if accuracies else None,
                   std=float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else None,
                   active_neurons=sorted(set(active)))
        rows.append(row)
    return rows


def ablation_rows(runs, root, dataset=None):
    """Per SRigL setting and layer (audit trail): neurons at the end (each seed's active
    count) and the first update step that ablated a neuron (per seed; "-" for none);
    ``dataset`` as in ``summarise``."""
    from ..dst.trail import read_trail

    table = {}
    for run in runs:
        if run["method"] != "srigl":
            continue
        out = os.path.join(root, run_name(run))
        if not is_finished(run, out) or (
                dataset is not None and config_difference(run, out, dataset)):
            continue
        try:
            records = read_trail(os.path.join(out, "audit.jsonl"))
        except (OSError, ValueError):
            continue
        setting = (run["model"], run["sparsity"], run["gamma_sal"], run["loop"])
        for layer in dict.fromkeys(r["layer"] for r in records):
            mine = [r for r in records if r["layer"] == layer]
            first = next((r["step"] for r in mine if r["ablated"]), None)
            entry = table.setdefault(setting + (layer,), {"active": [], "first": [],
                                                           "neurons": mine[-1]["neurons"]})
            entry["active"].append(mine[-1]["active_neurons"])
            entry["first"].append(first)
    return [{"model": k[0], "sparsity": k[1], "gamma_sal": k[2], "loop": k[3],
             "layer": k[4], **v} for k, v in table.items()]


def ablation_markdown(rows):
    lines = ["| model | sparsity | γ_sal | loop | layer | active neurons at the end "
             "(per seed) | first update that ablated (step, per seed) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        first = ", ".join("-" if f is None else str(f) for f in r["first"])
        active = ", ".join(f"{a}/{r['neurons']}" for a in r["active"])
        lines.append(f"| {r['model']} | {100 * r['sparsity']:g}% | {r['gamma_sal']:g} | "
                     f"{r['loop']} | {r['layer']} | {active} | {first} |")
    return "\n".join(lines) + "\n"


def markdown(rows):
    lines = ["| model | method | sparsity | γ_sal | loop | epochs | test accuracy % "
             "(mean ± std) | seeds | active neurons at the end |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["mean"] is None:
            accuracy = "not run"
        elif r["std"] is None:
            accuracy = f"{r['mean']:.2f}"
        else:
            accuracy = f"{r['mean']:.2f} ± {r['std']:.2f}"
        sparsity = "-" if r["method"] == "dense" else f"{100 * r['sparsity']:g}%"
        gamma = "-" if r["gamma_sal"] is None else f"{r['gamma_sal']:g}"
        active = ", ".join(r["active_neurons"]) or "-"
        loop = r["loop"] or "-"
        lines.append(f"| {r['model']} | {r['method']} | {sparsity} | {gamma} | {loop} "
                     f"| {r['epochs']} | {accuracy} | {len(r['seeds'])} | {active} |")
    return "\n".join(lines) + "\n"


def plot(rows, path):
    """Accuracy against sparsity per method (γ_sal 0.3 for SRigL), one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model and r["mean"] is not None]
        for method in METHODS:
            points = sorted((r["sparsity"], r["mean"], r["std"] or 0.0) for r in mine
                            if r["method"] == method and r["gamma_sal"] in (None, 0.3))
            if not points:
                continue
            if method == "dense":
                ax.axhline(points[0][1], color="gray", linestyle="--", label="dense")
                continue
            s, mean, std = (np.array(v) for v in zip(*points))
            ax.errorbar(100 * s, mean, yerr=std, marker="o", capsize=3, label=method)
        ax.set_title(f"{model}, Fashion-MNIST")
        ax.set_xlabel("sparsity %")
        ax.set_ylabel("test accuracy %")
        ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    finally:
        plt.close(fig)
