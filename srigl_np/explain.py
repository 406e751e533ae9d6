"""``python -m srigl_np.explain``: one topology update of one layer, step by step.

Runs one ``dst.srigl_update`` (or ``rigl_update``, ``set_update``) with ``trace=True``
and prints what each step of the paper's §4 decided, with its numbers: the drop
fraction, the prune by magnitude, the saliency counts and the ablation threshold
γ_sal·k0, the new fan-in k, the regrowth by gradient magnitude per neuron and the
per-neuron cap; then the masks before and after as character grids. Every decision is
read from the update's own trace (``dst.UpdateTrace``), recorded on the code path that
made the result; this module only prints it, with the formulas that gave its numbers.

The layer is, by default, a seeded random one as a previous SRigL update left it:
--ablated-before neurons empty, every other neuron at the constant fan-in, standard
normal weights on the mask, and a seeded standard normal gradient standing in for
dL/dW. The defaults are chosen so that all of §4 happens at once: a neuron is
ablated, three return, so k drops from 3 to 2 and the neurons that kept 3 weights are
capped, and a dropped weight is regrown. --checkpoint RUN_DIR
--layer NAME takes a layer of a run of ``python -m srigl_np.train`` instead, with its
target sparsity, γ_sal, α, method and schedule: the update at the checkpoint's step
(the run's last update step when the checkpoint is past T_end, as a finished run's is)
with that step's drop fraction, and as gradient one backward pass on --images training
images of the run's own dataset (the embedded subset, said so, when it is not on this
machine; or --gradient random). --plot FILE draws
|W|, |G| and the decisions as one picture (needs matplotlib).
"""

import math
import os
import sys
from dataclasses import dataclass

import numpy as np

from . import cli, dst
from .cli import command, create_parser, fraction, integer, parse_shape
from .explain_text import (ABLATED, ABSENT, CAPPED, GROWN, KEPT, MAX_COLS, MAX_ROWS,
                           METHOD_NAMES, PRUNED, REGROWN, as_rows, explain, position_codes,
                           shape_text)

PROG = "python -m srigl_np.explain"
METHODS = ("srigl", "rigl", "set")
GRADIENTS = ("random", "backward")
# The most weights the random layer may have: it, its gradient and the update's copies
# take about 40 bytes a weight (2**24: under a second per million weights, 0.7 GB).
MAX_RANDOM_WEIGHTS = 2**24
DEFAULTS = {"shape": "10x12", "sparsity": 0.8, "ablated_before": 3, "gamma_sal": 0.3,
            "alpha": 0.3, "step": 0, "t_end": 100, "seed": 69, "method": "srigl",
            "images": 64, "max_rows": MAX_ROWS, "max_cols": MAX_COLS}


@dataclass
class Layer:
    """What one explained update starts from.

    weight, mask, grad: (n, *fan_in_dims), the grad dense; sparsity: the layer's target;
    gamma_sal, alpha, method: the update's settings; ablation_off: None when SRigL may
    ablate, else why not ("the output layer", ...); title, gradient_note, before, notes:
    the header's lines; t_end: the schedule's T_end unless --t-end is given; step: the
    schedule's step unless --step is given (a checkpoint's: ``checkpoint_step``).
    """

    weight: np.ndarray
    mask: np.ndarray
    grad: np.ndarray
    sparsity: float
    gamma_sal: float
    alpha: float
    method: str
    ablation_off: str | None
    title: str
    gradient_note: str
    before: str = ""
    notes: tuple = ()
    t_end: int = DEFAULTS["t_end"]
    step: int = DEFAULTS["step"]


# -- the layer to explain ---------------------------------------------------------------

def random_layer(shape, sparsity, ablated_before, rng):
    """(weight, mask, grad, ablated) of a seeded layer as a previous SRigL update left it.

    ``ablated_before`` neurons (drawn from ``rng``) have no weights, the others the
    constant fan-in ``dst.fan_in_after_ablation(shape, sparsity, ablated_before)``;
    weights standard normal on the mask, gradient standard normal everywhere, float32.
    """
    n = shape[0]
    ablated = np.sort(rng.choice(n, size=ablated_before, replace=False)).astype(np.int64)
    mask = dst.constant_fan_in_mask(shape, sparsity, rng, ablated=ablated)
    weight = (rng.standard_normal(shape) * mask).astype(np.float32)
    grad = rng.standard_normal(shape).astype(np.float32)
    return weight, mask, grad, ablated


def checkpoint_layer(run_dir, name, *, gradient, images, seed):
    """(weight, mask, grad, run, layer sparsity, is_output, gradient note) of layer ``name``
    of a run, the gradient from one backward pass (or seeded random)."""
    from .dst.sparsity import sparse_parameter_names
    from .formats.checkpoint import check_finite, check_masks_cover_weights, load_model
    from .train_config import checked_config

    run = load_model(run_dir)
    # Trusted no further than --resume trusts it: its config as the trainer's flags
    # check it, its weights finite, its masks covering its weights. (load_model itself
    # reads a non-finite weight, so the audit can report it.)
    source = os.path.join(run_dir, "checkpoint.npz") if os.path.isdir(run_dir) else run_dir
    run.config = checked_config(run.config, source)
    for what, arrays in (("parameter", run.model.named_parameters()),
                         ("buffer", run.model.named_buffers())):
        for key, value in arrays.items():
            check_finite(source, what, key, value)
    check_masks_cover_weights(source, run.model.named_parameters(), run.masks)
    sparse = [key for key in sparse_parameter_names(run.model) if key in run.masks]
    if name not in sparse:
        raise ValueError(f"--layer must be one of the run's sparse layers "
                         f"({', '.join(sparse)}), got {name!r}")
    params = run.model.named_parameters()
    weight, mask = params[name].copy(), run.masks[name]
    sparsity = run.meta.get("layer_sparsity", {}).get(name)
    if sparsity is None:   # a checkpoint from before the meta recorded it: derive it
        config = run.config
        spread = (dst.erk_sparsities if config.get("distribution") == "erk"
                  else dst.uniform_sparsities)
        shapes = [params[key].shape for key in sparse]
        sparsity = dict(zip(sparse, spread(shapes, float(config.get("sparsity", 0.9)))))[name]
    rng = np.random.default_rng([seed, 1])
    if gradient == "random":
        grad = rng.standard_normal(weight.shape).astype(weight.dtype)
        note = f"seeded standard normal (seed {seed}), a stand-in for dL/dW"
    else:
        grad, note = _backward_gradient(run, name, images, rng)
    return weight, mask, grad, run, sparsity, name == sparse[-1], note


def run_dataset(run):
    """(dataset, what) of the data the run trained on: the dataset its meta names, looked
    for where its config's --data-path says (or the usual places); the embedded subset,
    with a sentence saying so, when that dataset is not on this machine."""
    from .data import load_dataset

    name = (run.meta.get("data") or {}).get("name") or run.config.get("dataset", "embedded")
    if name == "embedded":
        return load_dataset("embedded"), "the run's embedded Fashion-MNIST subset"
    try:
        return load_dataset(name, run.config.get("data_path")), f"the run's {name}"
    except FileNotFoundError:
        return (load_dataset("embedded"), f"the embedded Fashion-MNIST subset (the run's "
                f"{name} is not found on this machine)")


def _backward_gradient(run, name, images, rng):
    """dL/dW of ``name`` from one training-mode backward pass on ``images`` training
    images of the run's own dataset (``run_dataset``)."""
    from .data import channel_stats, normalize
    from .nn.losses import softmax_cross_entropy

    dataset, what = run_dataset(run)
    count = min(images, len(dataset.x_train))
    chosen = np.sort(rng.choice(len(dataset.x_train), size=count, replace=False))
    mean, std = run.input_stats or channel_stats(dataset.x_train)
    x = normalize(dataset.x_train[chosen], mean, std)
    run.model.set_rng(rng)   # dropout, as in training, from the seed
    logits = run.model.forward(x, training=True)
    loss, grad_logits = softmax_cross_entropy(logits, dataset.y_train[chosen])
    run.model.backward(grad_logits, input_grad=False)
    grad = run.model.named_grads()[name].copy()
    return grad, (f"one backward pass on {count} training images of {what} (loss "
                  f"{loss:.3f}; dense: it has values off the mask too)")


def build_layer(args):
    """The Layer the arguments describe (ValueError with a one-line message)."""
    if args.checkpoint is None:
        return _random_layer_from(args)
    return _checkpoint_layer_from(args)


def _random_layer_from(args):
    if args.layer is not None:
        raise ValueError("--layer needs --checkpoint RUN_DIR")
    if args.gradient == "backward":
        raise ValueError("--gradient backward needs --checkpoint (a model to run); the "
                         "random layer's gradient is seeded random")
    shape = args.shape
    size = math.prod(shape)
    if size > MAX_RANDOM_WEIGHTS:
        raise ValueError(f"--shape {'x'.join(map(str, shape))} has {size} weights, more "
                         f"than the {MAX_RANDOM_WEIGHTS} the random layer may have (the "
                         f"update is shown neuron by neuron: a small layer shows all of it)")
    sparsity = DEFAULTS["sparsity"] if args.sparsity is None else args.sparsity
    if args.ablated_before is None:   # the default, as many as the layer can spare
        ablated_before = min(DEFAULTS["ablated_before"], shape[0] - 1)
    elif args.ablated_before >= shape[0]:
        raise ValueError(f"--ablated-before must leave one of the {shape[0]} neurons "
                         f"active, got {args.ablated_before}")
    else:
        ablated_before = args.ablated_before
    weight, mask, grad, ablated = random_layer(shape, sparsity, ablated_before,
                                               np.random.default_rng(args.seed))
    fan_in = int(as_rows(mask).sum(axis=1).max())
    before = (f"neurons {ablated.tolist()} ablated, fan-in {fan_in} elsewhere"
              if ablated.size else f"every neuron at fan-in {fan_in}")
    return Layer(
        weight, mask, grad, sparsity,
        gamma_sal=DEFAULTS["gamma_sal"] if args.gamma_sal is None else args.gamma_sal,
        alpha=DEFAULTS["alpha"] if args.alpha is None else args.alpha,
        method=args.method or DEFAULTS["method"],
        ablation_off="--no-ablation" if args.no_ablation else None,
        title=f"a seeded random layer (seed {args.seed}), {shape_text(shape)}",
        gradient_note=f"seeded standard normal (seed {args.seed}), a stand-in for dL/dW",
        before=f"as a previous update left it: {before}")


def _checkpoint_layer_from(args):
    if args.layer is None:
        raise ValueError("--checkpoint needs --layer NAME (a sparse layer of the run, e.g. "
                         "1.weight)")
    if args.ablated_before is not None:
        raise ValueError("--ablated-before shapes the random layer; a checkpoint's layer "
                         "comes as the run left it")
    weight, mask, grad, run, sparsity, is_output, note = checkpoint_layer(
        args.checkpoint, args.layer, gradient=args.gradient or "backward",
        images=args.images, seed=args.seed)
    config, notes = run.config, []
    if args.sparsity is not None:
        sparsity = args.sparsity
    elif sparsity == 0.0:
        why = run.meta.get("kept_dense", {}).get(args.layer, "its sparsity is 0")
        notes.append(f"the run keeps {args.layer} dense ({why}), so training never "
                     f"updates it")
    run_method = config.get("method", "dense")
    method = args.method or (run_method if run_method in METHODS else "srigl")
    ablation_off = ("--no-ablation" if args.no_ablation else
                    "the output layer" if is_output else
                    "the run trained with --no-ablation" if config.get("no_ablation") else None)
    if is_output and method == "srigl":
        notes.append(f"{args.layer} is the output layer: never ablated (as in training)")
    epoch = run.meta.get("epoch")
    t_end = _run_t_end(run) or DEFAULTS["t_end"]
    step, step_note = checkpoint_step(run, t_end)
    if args.step is None and args.drop_fraction is None:
        notes.append(f"step: {step_note}")
    return Layer(
        weight, mask, grad, float(sparsity),
        gamma_sal=(float(config.get("gamma_sal", DEFAULTS["gamma_sal"]))
                   if args.gamma_sal is None else args.gamma_sal),
        alpha=float(config.get("alpha", DEFAULTS["alpha"])) if args.alpha is None else args.alpha,
        method=method, ablation_off=ablation_off,
        title=(f"layer {args.layer} of {args.checkpoint} ({run_method} run"
               + (f", epoch {epoch}" if epoch is not None else "")
               + f"), {shape_text(weight.shape)}"),
        gradient_note=note, notes=tuple(notes), t_end=t_end, step=step)


def checkpoint_step(run, t_end):
    """(step, note) of the update a checkpoint replays: the checkpoint's own step when an
    update could run there (below T_end), else the run's last update step (the largest
    multiple of its ΔT below T_end), since the schedule stops at T_end."""
    step = int(run.meta.get("step", 0))
    if step < t_end:
        return step, f"the update at the checkpoint's step {step}"
    delta = int(run.config.get("delta", 100))
    last = max(0, (t_end - 1) // delta * delta)
    return last, (f"the checkpoint is at step {step}, past T_end = {t_end} where updates "
                  f"stop: the run's last update step, {last}, replayed on the "
                  f"checkpoint's weights")


def _run_t_end(run):
    """The run's T_end (its last update step bound), None when its files do not say."""
    config, data = run.config, run.meta.get("data")
    try:
        steps_per_epoch = -(-int(data["n_train"]) // int(config["batch_size"]))
        return max(1, int(float(config["t_end_frac"]) * steps_per_epoch * int(config["epochs"])))
    except (KeyError, TypeError, ValueError):
        return None


def run_update(layer, drop_fraction, seed):
    """The traced UpdateResult of ``layer``'s method."""
    if layer.method == "srigl":
        return dst.srigl_update(layer.weight, layer.mask, layer.grad,
                                drop_fraction=drop_fraction, sparsity=layer.sparsity,
                                gamma_sal=layer.gamma_sal, ablation=layer.ablation_off is None,
                                trace=True)
    if layer.method == "rigl":
        return dst.rigl_update(layer.weight, layer.mask, layer.grad,
                               drop_fraction=drop_fraction, trace=True)
    return dst.set_update(layer.weight, layer.mask, drop_fraction=drop_fraction,
                          rng=np.random.default_rng([seed, 2]), trace=True)


# -- the picture ----------------------------------------------------------------------------

CODE_ORDER = (ABSENT, KEPT, PRUNED, CAPPED, GROWN, REGROWN, ABLATED)
CODE_NAMES = ("absent", "kept", "pruned", "removed by the cap", "grown", "regrown", "ablated")
CODE_COLORS = ("#ffffff", "#4c72b0", "#dd8452", "#c44e52", "#55a868", "#8172b3", "#8c8c8c")


@dataclass
class RowFacts:
    """What the figure's right-hand panel shows per neuron (row), all (n,) NumPy arrays.

    fan_in_before, fan_in_after: int64, weights in the mask before and after the update;
    salient: int64 salient weights (SRigL with ablation), None otherwise; threshold: the
    salient count a neuron needed (``threshold_used``), None without ablation; ablated:
    bool, no weights after; returned: bool, no weights before and some after (an ablated
    neuron given weights again); newly_ablated: bool, weights before and none after.
    """

    fan_in_before: np.ndarray
    fan_in_after: np.ndarray
    salient: np.ndarray | None
    threshold: int | None
    ablated: np.ndarray
    returned: np.ndarray
    newly_ablated: np.ndarray


def row_facts(layer, result):
    """The RowFacts of ``result``, the update of ``layer``."""
    before = as_rows(layer.mask).sum(axis=1).astype(np.int64)
    after = as_rows(result.mask).sum(axis=1).astype(np.int64)
    trace = result.trace
    return RowFacts(before, after, trace.salient_counts, trace.threshold_used,
                    ablated=after == 0, returned=(before == 0) & (after > 0),
                    newly_ablated=(before > 0) & (after == 0))


ROW_COLORS = {"active": "#4c72b0", "ablated": "#8c8c8c", "newly ablated": "#c44e52",
              "returned": "#55a868"}


def row_status(facts):
    """Each row's key of ROW_COLORS: returned, newly ablated, ablated (before and after)
    or active."""
    return np.where(facts.returned, "returned",
                    np.where(facts.newly_ablated, "newly ablated",
                             np.where(facts.ablated, "ablated", "active")))


def plot(path, layer, result):
    """Draw |W| before, |G|, the decisions (kept, pruned, capped, grown, regrown,
    ablated) and, per neuron, its salient count against the threshold with its fan-in
    before → after (``row_facts``; returned and newly ablated neurons coloured and marked
    on the axis) into ``path``, written atomically; the format comes from the suffix (PNG
    without one). ImportError saying how to install matplotlib without it; ValueError for
    an unknown format (``cli.image_format``)."""
    file_format = cli.image_format(path)
    try:
        from matplotlib import colormaps
        from matplotlib.colors import BoundaryNorm, ListedColormap
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install matplotlib "
                          "(or srigl_np[plot])") from None
    from .fileio import atomic_write

    n = layer.weight.shape[0]
    codes = position_codes(layer, result, result.trace)
    index = np.zeros(codes.shape, dtype=np.int64)
    for value, code in enumerate(CODE_ORDER):
        index[codes == code] = value
    panel_width = min(5.0, max(3.0, 0.3 * codes.shape[1]))   # inches, colour bars aside
    fig = Figure(figsize=(3 * panel_width + 6.0, 2.0 + min(8.0, 0.3 * n)))
    axes = fig.subplots(1, 4, sharey=True, width_ratios=(1, 1, 1, 0.8))
    off_mask = ~as_rows(layer.mask)
    panels = [(np.ma.masked_where(off_mask, np.abs(as_rows(layer.weight))),
               "|W| before (blank: off the mask)", "viridis"),
              (np.abs(as_rows(layer.grad)), "|G| (dense)", "magma")]
    for ax, (values, title, cmap) in zip(axes, panels):
        image = ax.imshow(values, cmap=colormaps[cmap].with_extremes(bad="white"),
                          aspect="auto", interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.05)
        ax.set_title(title, fontsize=9)
    colors = ListedColormap(CODE_COLORS)
    axes[2].imshow(index, cmap=colors, norm=BoundaryNorm(np.arange(len(CODE_ORDER) + 1) - 0.5,
                                                         len(CODE_ORDER)),
                   aspect="auto", interpolation="nearest")
    axes[2].set_title(f"{METHOD_NAMES[layer.method]} update"
                      + (f": k = {result.fan_in}" if result.fan_in is not None else ""),
                      fontsize=9)
    present = [value for value in range(len(CODE_ORDER)) if (index == value).any()]
    axes[2].legend(handles=[Patch(facecolor=CODE_COLORS[v], edgecolor="black", linewidth=0.5,
                                  label=CODE_NAMES[v]) for v in present],
                   fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    facts = row_facts(layer, result)
    _plot_rows(axes[3], facts, n)
    axes[0].set_ylabel("neuron")
    if n <= 32:   # each neuron named, a returned one and a newly ablated one marked
        status = row_status(facts)
        marks = {"returned": " returns", "newly ablated": " ablated"}
        axes[0].set_yticks(range(n), [f"{i}{marks.get(s, '')}" for i, s in enumerate(status)])
        for label, s in zip(axes[0].get_yticklabels(), status):
            label.set_color(ROW_COLORS[s] if s in marks else "black")
    for ax in axes[:3]:
        ax.set_xlabel("input")
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format=file_format, dpi=100))


def _plot_rows(ax, facts, n):
    """Per neuron: salient count as a bar (coloured by ``row_status``) against the
    threshold's line, and 'fan-in before→after' written beside it (rows of up to 40)."""
    status = row_status(facts)
    colors = [ROW_COLORS[s] for s in status]
    values = facts.salient if facts.salient is not None else facts.fan_in_after
    ax.barh(np.arange(n), values, color=colors, height=0.7)
    if facts.threshold is not None:
        ax.axvline(facts.threshold, color="black", linestyle="--", linewidth=1)
    labelled = n <= 40   # beyond, the labels would overlap
    ax.set_title(("salient weights vs threshold (dashed)" if facts.salient is not None
                  else "fan-in after") + ("\nfan-in before→after" if labelled else ""),
                 fontsize=9)
    if labelled:
        right = max(1, int(values.max())) * 1.08
        ax.set_xlim(0, right * 1.3)
        for i in range(n):
            ax.text(right, i, f"{facts.fan_in_before[i]}→{facts.fan_in_after[i]}",
                    va="center", fontsize=7)
    ax.set_xlabel("weights")
    ax.tick_params(labelsize=7)
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(facecolor=ROW_COLORS[key], label=key)
                       for key in ROW_COLORS if (status == key).any()],
              fontsize=7, loc="best")


# -- the command line ---------------------------------------------------------------------

def make_parser():
    d = DEFAULTS
    about = __doc__.split("\n\n", 1)[1].replace("``", "")
    p = create_parser(PROG, "One topology update of one layer, step by step.\n\n" + about)
    layer = p.add_argument_group("the random layer")
    layer.add_argument("--shape", type=parse_shape, default=parse_shape(d["shape"]),
                       metavar="NxF", help=f"neurons x dense fan-in, or NxCxHxW for a conv "
                                           f"layer, at most {MAX_RANDOM_WEIGHTS} weights "
                                           f"(default: {d['shape']})")
    layer.add_argument("--ablated-before", type=integer(0, 10**6),
                       metavar="A", help=f"neurons a previous update left ablated, fewer "
                                         f"than N; N-1 for a layer of fewer than "
                                         f"{d['ablated_before'] + 1} neurons when not given "
                                         f"(default: {d['ablated_before']})")
    run = p.add_argument_group("or a layer of a training run")
    run.add_argument("--checkpoint", metavar="RUN_DIR", type=cli.path,
                     help="a run directory of python -m srigl_np.train (or its "
                          "checkpoint.npz) (default: none, the random layer)")
    run.add_argument("--layer", metavar="NAME",
                     help="the sparse layer to update, e.g. 1.weight (default: none; "
                          "required with --checkpoint)")
    run.add_argument("--gradient", choices=GRADIENTS,
                     help="'backward': one backward pass on --images training images of "
                          "the run's dataset (the embedded subset when it is not found); "
                          "'random': seeded standard normal (default: backward with "
                          "--checkpoint, random for the random layer)")
    run.add_argument("--images", type=integer(1, 10**6), default=d["images"],
                     help=f"images of the backward pass (default: {d['images']})")
    update = p.add_argument_group("the update")
    update.add_argument("--method", choices=METHODS,
                        help=f"the update (default: {d['method']}; with --checkpoint the "
                             f"run's, srigl for a dense or static run)")
    update.add_argument("--sparsity", type=fraction(high_open=True),
                        help=f"the layer's target sparsity (default: {d['sparsity']}; with "
                             f"--checkpoint the layer's share of the run's)")
    update.add_argument("--gamma-sal", type=fraction(),
                        help=f"SRigL's ablation threshold γ_sal (default: {d['gamma_sal']}; "
                             f"with --checkpoint the run's)")
    update.add_argument("--no-ablation", action="store_true",
                        help="SRigL without neuron ablation, as for an output layer "
                             "(default: ablation on)")
    update.add_argument("--drop-fraction", type=fraction(),
                        help="the drop fraction d, instead of the schedule (default: the "
                             "schedule α/2·(1 + cos(π·t/T_end)))")
    update.add_argument("--alpha", type=fraction(),
                        help=f"the schedule's initial drop fraction α (default: {d['alpha']}; "
                             f"with --checkpoint the run's)")
    update.add_argument("--step", type=integer(0, 10**9),
                        metavar="T", help=f"the schedule's step t (default: {d['step']}; with "
                                          f"--checkpoint the checkpoint's step, or the run's "
                                          f"last update step when that is past T_end)")
    update.add_argument("--t-end", type=integer(1, 10**9), metavar="T_END",
                        help=f"the schedule's T_end, where updates stop (default: "
                             f"{d['t_end']}; with --checkpoint the run's)")
    update.add_argument("--seed", type=integer(0), default=d["seed"],
                        help=f"seed of the random layer, the random gradient, the images and "
                             f"SET's growth (default: {d['seed']})")
    shown = p.add_argument_group("the output")
    shown.add_argument("--max-rows", type=integer(1, 10**6),
                       default=d["max_rows"], metavar="R",
                       help=f"neurons shown in the grids, those where something happened "
                            f"first (default: {d['max_rows']})")
    shown.add_argument("--max-cols", type=integer(1, 10**6),
                       default=d["max_cols"], metavar="C",
                       help=f"inputs per grid row; a wider layer shows only each neuron's "
                            f"inputs before or after (default: {d['max_cols']})")
    shown.add_argument("--plot", metavar="FILE", type=cli.path,
                       help="also draw |W|, |G| and the decisions into FILE (.png, .pdf, "
                            ".svg; needs matplotlib) (default: no plot)")
    return p


@command(PROG, errors=(ImportError,))
def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.plot is not None:   # before the update, not after it
        problem = cli.check_output_file("--plot", args.plot, image=True)
        if problem:
            raise ValueError(problem)
    layer = build_layer(args)
    t_end = layer.t_end if args.t_end is None else args.t_end
    step = layer.step if args.step is None else args.step
    if step > t_end:
        raise ValueError(f"--step must be <= T_end = {t_end} (--t-end), got {step}")
    given = args.drop_fraction is not None
    drop_fraction = (args.drop_fraction if given else
                     dst.cosine_drop_fraction(step, layer.alpha, t_end))
    result = run_update(layer, drop_fraction, args.seed)
    lines = explain(layer, result, (layer.alpha, step, t_end, drop_fraction, given),
                    args.max_rows, args.max_cols)
    if args.plot is not None:
        plot(args.plot, layer, result)
        lines.append(f"\nplot: {args.plot}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
