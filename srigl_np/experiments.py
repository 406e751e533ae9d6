"""``python -m srigl_np.experiments``: grids of training runs, resumable, summarised over seeds.

A grid is model × method × sparsity × γ_sal × training loop × seed (``--preset
reproduction`` is the one behind docs/reproduction.md, ``--preset cnn-gap`` the cnn 99%
study in it). Each run is ``python -m srigl_np.train`` in its own process and directory
``OUT/<model>-<method>-s<sparsity>-g<gamma>[-skip]-seed<seed>`` ("srigl-noabl" is SRigL
without ablation; dense runs have no sparsity or γ_sal; "-skip" marks a run whose
optimizer skips update steps, ``--optimizer-on-update skip``, RigL's loop, against the
authors' loop, the trainer's default). Runs go seed-major: every setting's first seed
before any setting's second, so a grid cut short has each setting at its first seeds.
A run whose
metrics.json holds all its epochs is skipped; one with a checkpoint but fewer epochs is
continued with ``--resume`` (bit-identical to an uninterrupted run); one without is
started afresh. ``--jobs N`` runs N at a time. A runner holds ``OUT``'s lock (``.lock``)
while it trains: a second one on the same ``OUT`` is refused, naming the first's PID.

The summary groups runs by every setting but the seed (runs whose settings differ are
never pooled as seeds) and gives the final test accuracy as mean ± sample std over the
seeds, the seeds' count, and the active neurons at the end; for SRigL a second table
gives, per layer, the neurons left at the end and the first update that ablated one (from
each run's audit trail). ``--report DIR`` writes ``results.md``, ``results.json`` and
``accuracy_vs_sparsity.png`` (one panel per model; needs matplotlib) there, each
atomically.
"""

import concurrent.futures
import importlib.util
import itertools
import os
import subprocess
import sys

import numpy as np

from . import cli
from .cli import command, create_parser
from .data import DATASET_NAMES
from .fileio import (MAX_JSON_CHARS, atomic_write, file_kind, lock_directory, not_a_file,
                     parse_json, write_json)
from .validation import check_thread_flag

METHODS = ("dense", "static", "set", "rigl", "srigl-noabl", "srigl")
PRESETS = {
    # (model, epochs, lr, methods, sparsities, gammas, loops, seeds); a loop is the
    # trainer's --optimizer-on-update. The reproduction grid was run with "skip", the
    # trainer's only loop before the authors' one became its default, and stays so.
    "reproduction": [
        ("mlp", 20, 0.1, METHODS, (0.8, 0.9, 0.95, 0.99), (0.3,), ("skip",), (0, 1, 2)),
        ("mlp", 20, 0.1, ("srigl",), (0.95, 0.99), (0.5, 0.7, 0.95), ("skip",), (0, 1, 2)),
        ("cnn", 3, 0.05, METHODS, (0.9, 0.99), (0.3,), ("skip",), (0,)),
    ],
    # The cnn 99% gap: every method in the authors' loop, RigL and SRigL in both loops.
    "cnn-gap": [
        ("cnn", 3, 0.05, ("static", "rigl", "srigl-noabl", "srigl"), (0.99,), (0.3,),
         ("step",), (0, 1, 2)),
        ("cnn", 3, 0.05, ("srigl",), (0.99,), (0.7, 0.95), ("step",), (0, 1, 2)),
        ("cnn", 3, 0.05, ("rigl", "srigl"), (0.99,), (0.3,), ("skip",), (0, 1, 2)),
    ],
    "smoke": [("mlp", 1, 0.1, ("dense", "srigl"), (0.9,), (0.3,), ("step",), (0,))],
}


def grid(preset):
    """The runs of a preset, seed-major: dicts of model, method, sparsity, gamma_sal, loop,
    seed, epochs, lr. Dense runs are listed once per seed and loop (they have no sparsity
    or γ_sal)."""
    runs, seen = [], set()
    for model, epochs, lr, methods, sparsities, gammas, loops, seeds in PRESETS[preset]:
        for method, sparsity, gamma, loop, seed in itertools.product(
                methods, sparsities, gammas, loops, seeds):
            if method == "dense":
                sparsity, gamma = 0.0, None
            elif not method.startswith("srigl"):
                gamma = None
            if method in ("dense", "static"):
                loop = None   # no update step, so no loop to choose
            run = {"model": model, "method": method, "sparsity": sparsity,
                   "gamma_sal": gamma, "loop": loop, "seed": seed, "epochs": epochs,
                   "lr": lr}
            key = run_name(run)
            if key not in seen:
                seen.add(key)
                runs.append(run)
    return sorted(runs, key=lambda run: run["seed"])   # stable: grid order within a seed


def run_name(run):
    name = f"{run['model']}-{run['method']}"
    if run["method"] != "dense":
        name += f"-s{run['sparsity']:g}"
    if run["gamma_sal"] is not None:
        name += f"-g{run['gamma_sal']:g}"
    if run["loop"] == "skip":
        name += "-skip"
    return name + f"-seed{run['seed']}"


def train_command(run, out, dataset, threads):
    """The ``python -m srigl_np.train`` argument list of ``run`` writing to ``out``."""
    method = "srigl" if run["method"].startswith("srigl") else run["method"]
    command = [sys.executable, "-m", "srigl_np.train", "--model", run["model"],
               "--method", method, "--epochs", str(run["epochs"]), "--lr", str(run["lr"]),
               "--seed", str(run["seed"]), "--dataset", dataset, "--batch-size", "128",
               "--progress", "off", "--threads", str(threads), "--out", out]
    if run["loop"] is not None:
        command += ["--optimizer-on-update", run["loop"]]
    if method != "dense":
        command += ["--sparsity", str(run["sparsity"]), "--distribution", "erk"]
    if run["gamma_sal"] is not None:
        command += ["--gamma-sal", str(run["gamma_sal"])]
    if run["method"] == "srigl-noabl":
        command.append("--no-ablation")
    return command


def _metrics(out):
    path = os.path.join(out, "metrics.json")
    if file_kind(path) != "a regular file":   # missing, or a FIFO that would block a read
        return None
    try:
        with open(path, "rb") as f:
            return parse_json(f.read(MAX_JSON_CHARS + 1), path)   # bounded: deep or huge
    except (OSError, ValueError):                                 # is no metrics either
        return None


def is_finished(run, out):
    """metrics.json says the run finished (older trainers: it holds every epoch)."""
    metrics = _metrics(out)
    if not metrics:
        return False
    return metrics.get("finished", len(metrics.get("epochs", ())) >= run["epochs"]) is True


def execute(run, root, dataset, threads):
    """Train ``run`` under ``root`` unless finished; returns (name, status text)."""
    out = os.path.join(root, run_name(run))
    if is_finished(run, out):
        return run_name(run), "done before"
    if os.path.exists(os.path.join(out, "checkpoint.npz")):
        command = [sys.executable, "-m", "srigl_np.train", "--resume", out]
    else:   # a fresh start; --overwrite clears what a run that died in its first epoch left
        command = train_command(run, out, dataset, threads) + (
            ["--overwrite"] if os.path.isdir(out) else [])
    log_path = os.path.join(root, run_name(run) + ".log")
    if not_a_file(log_path):   # a FIFO would block the open, a device take the log
        return run_name(run), f"FAILED ({log_path}: {not_a_file(log_path)})"
    with open(log_path, "w") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    return run_name(run), "finished" if status == 0 and is_finished(run, out) \
        else f"FAILED (exit {status}, see {run_name(run)}.log)"


def summarise(runs, root):
    """One row per setting (all but the seed), in grid order."""
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
            metrics = _metrics(out)
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


def ablation_rows(runs, root):
    """Per SRigL setting and layer (audit trail): neurons at the end (each seed's active
    count) and the first update step that ablated a neuron (per seed; "-" for none)."""
    from .dst.trail import read_trail

    table = {}
    for run in runs:
        if run["method"] != "srigl":
            continue
        out = os.path.join(root, run_name(run))
        if not is_finished(run, out):
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


PROG = "python -m srigl_np.experiments"
# What --report DIR receives.
REPORT_FILES = ("results.md", "results.json", "accuracy_vs_sparsity.png")


def make_parser():
    parser = create_parser(PROG, __doc__.replace("``", ""))
    parser.add_argument("--preset", choices=sorted(PRESETS), default="reproduction",
                        help="the grid (default: %(default)s)")
    parser.add_argument("--out", default="runs/reproduction", type=cli.path,
                        help="directory of the runs (default: %(default)s)")
    parser.add_argument("--dataset", default="fashion-mnist", choices=DATASET_NAMES,
                        help="--dataset of every run (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time, at most the CPUs this process may use "
                             "(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="--threads of every run, at most the CPUs this process may "
                             "use; 0: library default (default: %(default)s)")
    parser.add_argument("--models", nargs="+", help="only these models (default: all)")
    parser.add_argument("--report", metavar="DIR", type=cli.path,
                        help="write results.md, results.json and the plot there")
    parser.add_argument("--summary-only", action="store_true",
                        help="train nothing; summarise what is finished")
    return parser


@command(PROG)
def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        check_thread_flag("--jobs", args.jobs, minimum=1)
        check_thread_flag("--threads", args.threads)
    except ValueError as exc:
        parser.error(str(exc))
    runs = [r for r in grid(args.preset) if not args.models or r["model"] in args.models]
    if not runs:
        models = sorted({r["model"] for r in grid(args.preset)})
        parser.error(f"--models {' '.join(args.models)}: --preset {args.preset} has no run of "
                     f"these models (its models: {', '.join(models)})")
    # Output places are checked before hours of training, not after.
    for flag, directory in (("--out", args.out), ("--report", args.report)):
        if directory is None:
            continue
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            parser.error(f"{flag} {directory}: {exc.strerror or exc}")
        if not os.access(directory, os.W_OK):
            parser.error(f"{flag} {directory} is not writable")
    for name in REPORT_FILES if args.report is not None else ():
        problem = cli.check_output_file("--report", os.path.join(args.report, name))
        if problem:
            parser.error(problem)
    if not args.summary_only:
        # One runner per --out: a second would fail every run its twin is training and
        # truncate its logs. Each run's directory has its trainer's own lock besides.
        with lock_directory(args.out, PROG, advice="wait for it or choose another --out"), \
                concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            jobs = [pool.submit(execute, run, args.out, args.dataset, args.threads)
                    for run in runs]
            for done, job in enumerate(concurrent.futures.as_completed(jobs), start=1):
                name, status = job.result()
                print(f"[{done}/{len(runs)}] {name}: {status}", flush=True)
    rows, ablation = summarise(runs, args.out), ablation_rows(runs, args.out)
    table = (f"Generated by `python -m srigl_np.experiments --preset {args.preset}` "
             f"({len(runs)} runs).\n\n## Test accuracy\n\n" + markdown(rows)
             + "\n## Neuron ablation (SRigL)\n\n" + ablation_markdown(ablation))
    print(table)
    if args.report:
        markdown_file, json_file, plot_file = (os.path.join(args.report, name)
                                               for name in REPORT_FILES)
        atomic_write(markdown_file, lambda f: f.write(table.encode()))
        write_json(json_file, {"preset": args.preset, "rows": rows, "ablation": ablation})
        if importlib.util.find_spec("matplotlib") is None:
            print("plot skipped: it needs matplotlib (pip install matplotlib)")
        else:
            plot(rows, plot_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
