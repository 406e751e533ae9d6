"""The bar chart of ``--plot``: speedups over NumPy dense, one panel per layer shape."""

import numpy as np

from .comparison import OURS
from .report import sparsity_label


def _case_label(batch, threads, device):
    if device != "cpu":
        return f"batch {batch}\n{device}"
    return f"batch {batch}\n{threads} thread{'s' if threads != 1 else ''}"


def plot_figure(records, machine=None):
    """The figure of ``plot``: one panel per layer shape; in each, one group of bars per
    (sparsity, batch size, threads) and one bar per implementation giving its speedup
    over NumPy dense (log scale), a dashed line at 1x (dense itself), rows flagged busy
    or unstable marked under their group, and a title naming the CPU, its vector ISA,
    the threads, dtype and sparsity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    machine = machine or {}
    shapes = list(dict.fromkeys(tuple(r["shape"]) for r in records))
    names = [n for n in dict.fromkeys(r["implementation"] for r in records) if n != "dense"]
    sparsities = sorted({r["sparsity"] for r in records})
    fig, axes = plt.subplots(1, len(shapes), figsize=(max(5.0, 4.2 * len(shapes)), 4.6),
                             sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, shape in zip(axes[0], shapes):
        rows = [r for r in records if tuple(r["shape"]) == shape]
        cases = sorted({(r["sparsity"], r["batch"], r["threads"]) for r in rows})
        width = 0.8 / max(1, len(names))
        for j, name in enumerate(names):
            speedups = [next((r["speedup_vs_dense"] for r in rows
                              if r["implementation"] == name
                              and (r["sparsity"], r["batch"], r["threads"]) == c), np.nan)
                        for c in cases]
            ax.bar(np.arange(len(cases)) + j * width, speedups, width,
                   label=name + (" (ours)" if name == OURS else ""),
                   color=colors[j % len(colors)], edgecolor="black" if name == OURS else None)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1,
                   label="NumPy dense = 1x")
        labels = []
        for c in cases:
            row = next(r for r in rows if (r["sparsity"], r["batch"], r["threads"]) == c)
            label = _case_label(c[1], c[2], row["device"])
            if len(sparsities) > 1:
                label += f"\nsparsity {c[0]:.0%}"
            if row.get("load_flags"):
                label += "".join(f"\n({f.split(':')[0]})" for f in row["load_flags"])
            labels.append(label)
        ax.set_xticks(np.arange(len(cases)) + width * (len(names) - 1) / 2)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_xlabel("batch size, threads")
        ax.set_title(f"layer {shape[0]} -> {shape[1]} (inputs -> outputs)", fontsize=10)
        ax.set_yscale("log")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0][0].set_ylabel("speedup over NumPy dense (x, log scale)\nhigher is faster")
    handles, legend_labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, legend_labels, loc="lower center", ncol=min(len(handles), 5),
               fontsize=8, frameon=False)
    threads = sorted({r["threads"] for r in records if r["device"] == "cpu"})
    where = (f"threads {', '.join(map(str, threads))}" if threads
             else f"GPU {machine.get('gpu', records[0]['device'])}")
    sparsity = ", ".join(sparsity_label({"sparsity": s}).split()[-1] for s in sparsities)
    cpu = machine.get("cpu", "this machine")
    isa = f", {machine['vector_isa']}" if machine.get("vector_isa") else ""
    fig.suptitle(f"Condensed inference vs baselines: {cpu}{isa}\n{where}; float32; "
                 f"sparsity {sparsity}", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot(records, path, machine=None):
    """``plot_figure`` written atomically to ``path`` (its suffix gives the format; PNG by
    default; ``cli.image_format`` refuses one matplotlib cannot write)."""
    import matplotlib.pyplot as plt

    from ..cli import image_format
    from ..fileio import atomic_write

    suffix = image_format(path)
    fig = plot_figure(records, machine)
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=120, format=suffix))
    finally:
        plt.close(fig)
