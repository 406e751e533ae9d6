"""``python -m srigl_np.erk_table``: ERK's per-layer allocation for ``mlp`` and ``cnn``,
side by side with the SRigL authors' rule for the same shapes.

For each model (``srigl_np.nn.models.build``) and global sparsity, one row per sparse
layer (every Linear/Conv2d weight, as ``DynamicSparsity`` masks them; biases are never
counted, by either side): its shape, weights N, the sparsity ``dst.erk_sparsities``
gives it, its budget B = ``dst.layer_budget`` (the nnz of the unstructured methods),
SRigL's constant fan-in k = ``dst.fan_in_after_ablation(shape, s, 0)`` and the k·n
weights SRigL actually holds (k·n <= B: the floor of B/n leaves the remainder unused),
whether ERK keeps the layer dense, and the same figures by the authors' rule.

The authors' rule is ``srigl_np.dst.authors`` (their code, calgaryml/condensed-sparsity
at commit 3052bb8, read, not copied): ``erk_sparsities``, ``budget``, ``fan_in`` and
``unstructured_nnz``, each naming the lines it follows.
docs/erk_allocation.md holds the table this prints and classifies every difference.
"""

import math
import sys

import numpy as np

from . import dst
from .cli import command, create_parser, fraction, shape_text
from .dst import authors
from .dst.sparsity import sparse_parameter_names
from .nn.layers import Conv2d
from .nn.models import MODEL_NAMES, build

SPARSITIES = (0.9, 0.95, 0.99)


def sparse_layers(model_name):
    """[(parameter name, kind, shape)] of the weights ``DynamicSparsity`` masks in
    ``build(model_name)``, in layer order; kind is "Conv2d" or "Linear"."""
    model = build(model_name, rng=np.random.default_rng(0))
    params = model.named_parameters()
    layers = []
    layers_by_name = dict(model.named_layers())
    for name in sparse_parameter_names(model):
        layer = layers_by_name[name.rpartition(".")[0]]
        layers.append((name, "Conv2d" if isinstance(layer, Conv2d) else "Linear",
                       tuple(params[name].shape)))
    return layers


# -- the table --------------------------------------------------------------------------

def layer_rows(model_name, sparsity):
    """One dict per sparse layer of ``model_name`` at global ``sparsity``: layer, kind,
    shape, weights (N), sparsity, budget, fan_in (k), srigl_nnz (k*n; N for a dense
    layer), dense (bool), and authors_sparsity, authors_budget (their constant fan-in
    count int(N*(1 - s))), authors_fan_in, authors_nnz (their unstructured start),
    authors_dense, and authors_failure. The authors are given dense_allocation = 1 -
    sparsity rounded to 12 decimals, the value their config would hold (0.1, not
    0.09999999999999998).

    Where the authors' code fails (their ERK makes every layer dense at a tiny sparsity;
    their fan-in is 0 when the budget is below the neurons, as at 99.9%), the figures
    it would not give are None and authors_failure says why (None where it works)."""
    layers = sparse_layers(model_name)
    shapes = [shape for _, _, shape in layers]
    ours = dst.erk_sparsities(shapes, sparsity)
    try:
        theirs, failure = authors.erk_sparsities(shapes, round(1.0 - sparsity, 12)), None
    except ValueError as exc:
        theirs, failure = [None] * len(layers), f"their ERK fails: {exc}"
    rows = []
    for (name, kind, shape), s, a in zip(layers, ours, theirs):
        n, size = shape[0], math.prod(shape)
        fan_in = dst.fan_in_after_ablation(shape, s, 0)
        row = {
            "layer": name, "kind": kind, "shape": shape, "weights": size, "sparsity": s,
            "budget": dst.layer_budget(shape, s), "fan_in": fan_in,
            "srigl_nnz": fan_in * n if s > 0 else size, "dense": s == 0.0,
            "authors_sparsity": a, "authors_budget": None, "authors_fan_in": None,
            "authors_nnz": None, "authors_dense": None, "authors_failure": failure}
        if a is not None:
            row.update(authors_budget=authors.budget(shape, a),
                       authors_nnz=authors.unstructured_nnz(shape, a), authors_dense=a == 0.0)
            try:
                row["authors_fan_in"] = authors.fan_in(shape, a) if a > 0 else size // n
            except ValueError as exc:
                row["authors_failure"] = str(exc)
        rows.append(row)
    return rows


def totals(rows, sparsity):
    """The model's totals at ``sparsity``: weights, target ((1 - s)*weights), budget (the
    sum of the layers' budgets: RigL's nnz), srigl_nnz, and the sparsity each reaches."""
    weights = sum(r["weights"] for r in rows)
    budget = sum(r["budget"] for r in rows)
    srigl = sum(r["srigl_nnz"] for r in rows)
    return {"weights": weights, "target": (1.0 - sparsity) * weights, "budget": budget,
            "srigl_nnz": srigl, "rigl_sparsity": 1.0 - budget / weights,
            "srigl_sparsity": 1.0 - srigl / weights}


# What the table prints for a figure the authors' code does not give (see the footnotes).
MISSING = "—"


def _authors_cell(value, text, note):
    """``text`` of an authors' figure, or MISSING and its footnote mark when it is None."""
    return text if value is not None else f"{MISSING} [{note}]"


def markdown(models=MODEL_NAMES, sparsities=SPARSITIES):
    """The per-layer table (markdown) of ``models`` at ``sparsities``, then the totals;
    footnotes under the table say why an authors' figure is MISSING."""
    notes = {}   # why the authors' code failed -> its footnote number
    lines = ["| model | sparsity | layer | shape | weights | ERK sparsity | budget B | "
             "fan-in k | SRigL k·n | authors' sparsity | authors' B | authors' k |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = ["| model | sparsity | weights | target (1-s)·N | Σ B (RigL nnz) | "
               "SRigL nnz | RigL sparsity | SRigL sparsity |",
               "|---|---|---|---|---|---|---|---|"]
    for model in models:
        for sparsity in sparsities:
            rows = layer_rows(model, sparsity)
            for r in rows:
                ours = "dense (ERK)" if r["dense"] else f"{r['sparsity']:.6f}"
                note = (notes.setdefault(r["authors_failure"], len(notes) + 1)
                        if r["authors_failure"] else None)
                a = r["authors_sparsity"]
                theirs = _authors_cell(a, "dense" if r["authors_dense"] else f"{a or 0:.6f}",
                                       note)
                budget = _authors_cell(r["authors_budget"], str(r["authors_budget"]), note)
                a_fan_in = _authors_cell(r["authors_fan_in"], str(r["authors_fan_in"]), note)
                lines.append(
                    f"| {model} | {100 * sparsity:g}% | {r['layer']} ({r['kind']}) | "
                    f"{shape_text(r['shape'])} | {r['weights']} | {ours} | {r['budget']} | "
                    f"{r['fan_in']} | {r['srigl_nnz']} | {theirs} | {budget} | {a_fan_in} |")
            t = totals(rows, sparsity)
            summary.append(
                f"| {model} | {100 * sparsity:g}% | {t['weights']} | {t['target']:.1f} | "
                f"{t['budget']} | {t['srigl_nnz']} | {100 * t['rigl_sparsity']:.3f}% | "
                f"{100 * t['srigl_sparsity']:.3f}% |")
    footnotes = [f"[{number}] {MISSING}: the authors' code gives no figure here: {why}"
                 for why, number in notes.items()]
    return "\n".join(lines + ([""] + footnotes if footnotes else [])) + "\n\n" + \
        "\n".join(summary)


PROG = "python -m srigl_np.erk_table"


def make_parser():
    parser = create_parser(PROG, __doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--model", choices=MODEL_NAMES, nargs="+", default=list(MODEL_NAMES),
                        help="models to tabulate (default: all)")
    parser.add_argument("--sparsity", type=fraction(low_open=True, high_open=True), nargs="+",
                        default=list(SPARSITIES), help="global sparsities")
    return parser


@command(PROG)
def main(argv=None):
    args = make_parser().parse_args(argv)
    print(markdown(args.model, args.sparsity))
    return 0


if __name__ == "__main__":
    sys.exit(main())
