"""What a grid is: the presets, their runs, each run's directory name and trainer command.

A run is a dict of model, method, sparsity, gamma_sal, loop, seed, epochs, lr (plain
values: it is pickled to Dask workers and Slurm jobs). Its directory is
``OUT/<model>-<method>-s<sparsity>-g<gamma>[-skip]-seed<seed>`` and its command the
``python -m srigl_np.train`` argument list ``train_command`` gives; ``requested_config``
is the config that command records, what a run directory already there is checked
against.
"""

import itertools
import sys

from ..train_config import config_from_args, make_parser

METHODS = ("dense", "static", "set", "rigl", "srigl-noabl", "srigl")
PRESETS = {
    # (model, epochs, lr, methods, sparsities, gammas, loops, seeds); a loop is the
    # trainer's --optimizer-on-update. The reproduction grid was run with "skip", the
    # trainer's only loop before the authors' one became its default, and stays so.
    "reproduction": [
        ("mlp", 20, 0.1, METHODS, (0.8, 0.9, 0.95, 0.99), (0.3,), ("skip",), (0, 1, 2)),
        ("mlp", 20, 0.1, ("srigl",), (0.95, 0.99), (0.5, 0.7, 0.95), ("skip",), (0, 1, 2)),
        ("cnn", 10, 0.05, METHODS, (0.9, 0.95, 0.99), (0.3,), ("skip",), (0, 1, 2)),
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
# Config keys that say where and how fast a run trains, not what it computes: a run
# directory may differ from the request in these and still be the requested run.
WHERE_NOT_WHAT = ("out", "threads", "device", "data_path", "resumes")


def grid(preset, epochs=None, seeds=None):
    """The runs of a preset, seed-major: dicts of model, method, sparsity, gamma_sal,
    loop, seed, epochs, lr. Dense runs are listed once per seed and loop (they have no
    sparsity or γ_sal). ``epochs`` replaces every run's epochs, ``seeds`` (a sequence)
    the preset's seeds."""
    runs, seen = [], set()
    for model, preset_epochs, lr, methods, sparsities, gammas, loops, preset_seeds \
            in PRESETS[preset]:
        for method, sparsity, gamma, loop, seed in itertools.product(
                methods, sparsities, gammas, loops,
                preset_seeds if seeds is None else seeds):
            if method == "dense":
                sparsity, gamma = 0.0, None
            elif not method.startswith("srigl"):
                gamma = None
            if method in ("dense", "static"):
                loop = None   # no update step, so no loop to choose
            run = {"model": model, "method": method, "sparsity": sparsity,
                   "gamma_sal": gamma, "loop": loop, "seed": seed,
                   "epochs": preset_epochs if epochs is None else epochs, "lr": lr}
            key = run_name(run)
            if key not in seen:
                seen.add(key)
                runs.append(run)
    return sorted(runs, key=lambda run: run["seed"])   # stable: grid order within a seed


def preset_models(preset):
    return sorted({entry[0] for entry in PRESETS[preset]})


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


def requested_config(run, dataset):
    """The config the trainer records for ``run`` on ``dataset`` (as its command line
    makes it), less WHERE_NOT_WHAT."""
    args = make_parser().parse_args(train_command(run, "out", dataset, 0)[3:])
    config = config_from_args(args)
    return {k: v for k, v in config.items() if k not in WHERE_NOT_WHAT}
