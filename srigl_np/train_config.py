"""The trainer's configuration: its flags, and a saved run's config checked as they are.

``make_parser`` is ``python -m srigl_np.train``'s command line; ``config_from_args``
turns parsed flags into a run's config (the dict a checkpoint's meta records), with the
checks that span flags; ``checked_config`` trusts a saved config (``--resume``,
``python -m srigl_np.explain --checkpoint``) no further than the same flags would:
each value through its flag's type or choices, then the same cross-checks.
"""

import argparse
import os

from .backend import parse_device
from .cli import create_parser, fraction, integer, number
from .cli import path as path_flag
from .dst.sparsity import (COMPUTES, DISTRIBUTIONS, DYNAMIC_METHODS, METHODS,
                           OPTIMIZER_ON_UPDATE)
from .nn.models import MODEL_NAMES

DATASETS = ("auto", "fashion-mnist", "mnist", "embedded")
DEFAULT_SPARSITY = 0.9   # of the sparse methods; a dense run records 0
# Peak learning rates that train each model well with SGD (momentum 0.9, cosine): the
# cnn at 0.1 sits at chance for ~80 batches (dense, 76.85% after one Fashion-MNIST
# epoch); at 0.05 the dense cnn reaches 89.70% in 3 (docs/reproduction.md).
DEFAULT_LR = {"mlp": 0.1, "cnn": 0.05}
# Flags a resumed run may change: how long and where it runs, not what it computes.
# Every other flag is part of the run's meaning and is refused with --resume.
RESUMABLE_FLAGS = ("epochs", "threads", "device", "data_path", "progress")
# Config keys trainers before them did not record, and the value such a run trained with.
LEGACY_CONFIG = {"optimizer_on_update": "skip", "grad_accumulation": 1, "device": "cpu",
                 "compute": "masked"}
# Flags that are not part of a run's config.
_NOT_CONFIG = ("help", "resume", "progress", "overwrite")
MAX_EPOCHS = 10**6   # past it a run's step count no longer fits the schedule's floats


PROG = "python -m srigl_np.train"


def _device(text):
    try:
        parse_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text.strip().lower()


def make_parser():
    p = create_parser(PROG, __doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("--model", choices=MODEL_NAMES, default="mlp", help="architecture")
    p.add_argument("--dataset", choices=DATASETS, default="auto",
                   help="'auto': full Fashion-MNIST when found, else the embedded subset")
    p.add_argument("--data-path", default=None, type=path_flag,
                   help="directory with the IDX files, searched before $SRIGL_NP_DATA, "
                        "~/.cache/srigl_np and /usr/share/datasets (default: only those)")
    p.add_argument("--epochs", type=integer(1), default=20,
                   help="training epochs; with --resume, the total to train to")
    p.add_argument("--batch-size", type=integer(1), default=128, help="mini-batch size")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                   help="SGD with momentum, or AdamW")
    p.add_argument("--lr", type=number(0, low_open=True), default=None,
                   help="peak learning rate, per model (default: "
                        + ", ".join(f"{m} {lr:g}" for m, lr in DEFAULT_LR.items())
                        + "; the dense cnn at 0.1 stays at chance for its first ~80 "
                          "batches)")
    p.add_argument("--momentum", type=fraction(high_open=True), default=0.9, help="SGD momentum")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    p.add_argument("--weight-decay", type=number(0), default=5e-4,
                   help="L2 (SGD) or decoupled (AdamW) weight decay")
    p.add_argument("--schedule", choices=("cosine", "step"), default="cosine",
                   help="cosine with linear warm-up, or step decay (x0.1 every 25%% of training)")
    p.add_argument("--warmup-epochs", type=number(0), default=0.0,
                   help="linear warm-up length")
    p.add_argument("--seed", type=integer(0), default=0,
                   help="seed of every random stream")
    p.add_argument("--threads", type=integer(0), default=0,
                   help="BLAS/OpenMP threads, at most the CPUs this process may use "
                        "(0: library default)")
    p.add_argument("--device", type=_device, default="cpu",
                   help="'cpu' (NumPy + Cython), or 'cuda'/'cuda:N' (CuPy on an NVIDIA GPU)")
    p.add_argument("--out", default=None, type=path_flag,
                   help="run directory, created if missing; one that holds a run is "
                        "refused without --overwrite (default: runs/<model>-<method>-s<seed>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out: its checkpoint, metrics and audit trail "
                        "are deleted first")
    p.add_argument("--resume", metavar="DIR", default=None, type=path_flag,
                   help="continue the run saved in DIR with its saved configuration; "
                        "only --epochs, --threads, --device, --data-path and --progress "
                        "may be given with it (default: start a new run)")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar on stderr ('auto': when stderr is a terminal)")
    g = p.add_argument_group("sparsity")
    g.add_argument("--method", choices=METHODS, default="srigl",
                   help="'srigl': constant fan-in with neuron ablation; 'rigl', 'set': "
                        "unstructured dynamic; 'static': the initial mask; 'dense': no masks")
    # SUPPRESS leaves the attribute unset when the flag is absent, so an explicit
    # --sparsity with --method dense can be told from the default and refused.
    g.add_argument("--sparsity", type=fraction(high_open=True), default=argparse.SUPPRESS,
                   help=f"global target sparsity of the sparse methods; refused with "
                        f"--method dense (default: {DEFAULT_SPARSITY})")
    g.add_argument("--distribution", choices=DISTRIBUTIONS, default="erk",
                   help="per-layer sparsity distribution")
    g.add_argument("--delta", type=integer(1), default=100, help="steps between updates (ΔT)")
    g.add_argument("--alpha", type=fraction(), default=0.3,
                   help="initial drop fraction, cosine-decayed")
    g.add_argument("--gamma-sal", type=fraction(), default=0.3,
                   help="SRigL ablation threshold γ_sal")
    g.add_argument("--no-ablation", action="store_true", help="SRigL without neuron ablation")
    g.add_argument("--optimizer-on-update", choices=OPTIMIZER_ON_UPDATE, default="step",
                   help="on a topology-update step the optimizer steps first, as in the "
                        "SRigL authors' loop (step), or is skipped, as in RigL's paper (skip)")
    g.add_argument("--grad-accumulation", type=integer(1), default=1,
                   help="average the dense gradient of the grow score over this many "
                        "mini-batches ending at the update step (at most --delta)")
    g.add_argument("--compute", choices=COMPUTES, default="condensed",
                   help="'condensed': the sparse Linear and Conv2d layers train as "
                        "values + indices, at the cost of their sparsity (on the CPU; "
                        "RigL, SET and static padded to each layer's largest fan-in; GPU "
                        "runs masked, as the plan says); 'masked': dense weights with "
                        "zeros, the reference the tutorial teaches")
    g.add_argument("--t-end-frac", type=fraction(), default=0.75,
                   help="stop topology updates after this fraction of training")
    return p


def config_from_args(args):
    """The run's config from parsed flags. ValueError for --sparsity with --method dense
    (a dense run records sparsity 0) and for a warm-up longer than the run."""
    config = {k: v for k, v in vars(args).items()
              if k not in ("resume", "progress", "overwrite")}
    if args.method == "dense":
        if "sparsity" in config:
            raise ValueError(f"--sparsity {config['sparsity']} does not apply to --method "
                             f"dense (a dense run has no masks): drop --sparsity, or pick a "
                             f"sparse method such as --method srigl")
        config["sparsity"] = 0.0
    config.setdefault("sparsity", DEFAULT_SPARSITY)
    if config.get("lr") is None:
        config["lr"] = DEFAULT_LR[config["model"]]
    if config["method"] in DYNAMIC_METHODS and config["grad_accumulation"] > config["delta"]:
        raise ValueError(f"--grad-accumulation {config['grad_accumulation']} must be at most "
                         f"--delta {config['delta']}: two updates' windows would overlap")
    if config["warmup_epochs"] > config["epochs"]:
        raise ValueError(f"--warmup-epochs {config['warmup_epochs']:g} is longer than the "
                         f"run (--epochs {config['epochs']})")
    if config["out"] is None:
        config["out"] = os.path.join("runs", f"{args.model}-{args.method}-s{args.seed}")
    return config


def checked_config(config, source):
    """A run's saved ``config`` (read from ``source``, which errors name), checked as the
    command line checks the same flags: each value through its flag's type or choices (a
    switch must be true or false, --out a path, --data-path a path or null), then the
    cross-checks of ``config_from_args``. Keys older trainers did not record get
    LEGACY_CONFIG's value; any other missing key is an error; keys no flag has are left
    as they are. Returns the completed config; one ValueError naming the file, the key
    and its flag otherwise. What ``--resume`` and ``python -m srigl_np.explain
    --checkpoint`` trust of a checkpoint's config."""
    if not isinstance(config, dict):
        raise ValueError(f"{source}: meta 'config' must be a JSON object, got "
                         f"{type(config).__name__}")
    config = {**LEGACY_CONFIG, **config}
    for action in make_parser()._actions:
        if not action.option_strings or action.dest in _NOT_CONFIG:
            continue
        where = f"{source}: meta 'config' {action.dest!r} ({action.option_strings[-1]})"
        if action.dest not in config:
            raise ValueError(f"{where} is missing")
        problem = _value_problem(action, config[action.dest])
        if action.dest == "epochs" and not problem:
            problem = epochs_problem(config["epochs"])
        if problem:
            raise ValueError(f"{where} {problem}")
    resumes = config.get("resumes", [])
    if not (isinstance(resumes, list) and all(isinstance(r, dict) for r in resumes)):
        raise ValueError(f"{source}: meta 'config' 'resumes' must be a list of records")
    if config["method"] == "dense" and config["sparsity"] != 0:
        raise ValueError(f"{source}: meta 'config' of a dense run must record sparsity 0, "
                         f"got {config['sparsity']}")
    flags = {k: v for k, v in config.items() if k != "sparsity" or v != 0}
    try:
        config_from_args(argparse.Namespace(**flags))
    except ValueError as exc:
        raise ValueError(f"{source}: meta 'config': {exc}") from None
    return config


def _value_problem(action, value):
    """Why ``value`` is not one the flag of ``action`` gives (a phrase), or None."""
    if isinstance(action, argparse._StoreTrueAction):
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if action.choices is not None:
        return (None if isinstance(value, str) and value in action.choices else
                f"must be one of {', '.join(action.choices)}, got {value!r}"[:200])
    if action.type in (None, _device, path_flag):   # text: --out, --data-path, --device
        if value is None and action.default is None and action.dest != "out":
            return None
        if not isinstance(value, str) or not value:
            return f"must be a string, got {value!r}"[:200]
        return None if action.type is None else _type_problem(action.type, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, got {value!r}"[:200]
    return _type_problem(action.type, str(value))


def epochs_problem(epochs):
    return f"must be at most {MAX_EPOCHS}, got {epochs}" if epochs > MAX_EPOCHS else None


def _type_problem(parse, text):
    try:
        parse(text)
    except argparse.ArgumentTypeError as exc:
        return str(exc).removeprefix("device ")[:200]   # parse_device names its value
    return None


def given_flags(parser, argv):
    """{dest: option string} of the flags ``argv`` gives (not those left at their default)."""
    probe = make_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    flags = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings}
    return {dest: flags[dest] for dest in vars(probe.parse_args(argv))}
