"""``python -m srigl_np.audit PATH``: audit a sparse model.

For a run directory of python -m srigl_np.train: its audit trail (audit.jsonl), one row
per layer: updates, weights pruned, grown and regrown, ablated neurons (first and last,
neurons newly ablated and returned; then a row per update with both), fan-in,
density, zeros inside the mask, ITOP (in-time over-parameterisation: the fraction of
weights ever active) and failed invariant checks, then the layers the distribution kept
dense (they have no records; the run's checkpoint says which and why). For any model
(that run's checkpoint, a srigl_np checkpoint .npz, a condensed model file, a PyTorch
checkpoint or state_dict, or a scipy.sparse .npz): per sparse layer its shape, nnz,
sparsity, fan-in (constant or not, k), ablated neurons, zeros inside the mask, weights
outside it, and every violated invariant with the first offending neuron; every NaN or
infinite value it holds (condense refuses them); then the model as a whole: its
architecture and sizes (a PyTorch file's recognised from its keys and shapes, or named
with --arch; for an unknown one, why it cannot be condensed), where its masks came
from, active neurons in all and per layer, the dense layers, and each layer that is not
constant fan-in with its fan-in range and rows off. Exit status 1 when a file cannot be
read, a trail records a failed check (older trainers wrote one), a layer that claims
constant fan-in (SRigL, or every sparse layer under --expect-constant-fan-in) breaks
it, or a value is NaN or infinite; 0 otherwise.

The trail's schema and reader are ``srigl_np.dst.trail``; this module summarises it.
"""

import json
import os
import sys

import numpy as np

from . import cli
from .cli import command, create_parser, format_table
from .dst.trail import read_trail
from .formats.layouts import ARCHITECTURE_NAMES


def _fan_in_text(pair):
    low, high = pair
    return str(low) if low == high else f"{low}-{high}"


def ablation_events(records):
    """Per layer, what each update did to its ablated neurons, from the trail's ``ablated``
    lists: {layer: {"steps": [step], "ablated": [count after], "newly_ablated": [[ids]],
    "returned": [[ids]], "timeline": {id: {"ablated": [steps], "returned": [steps]}}}},
    one entry per update (every update, none skipped), layers in first-seen order.

    A neuron is newly ablated at an update when it is in that record's ``ablated`` and not
    in the layer's record before; returned when the reverse. Before a layer's first record
    no neuron is ablated (every mask starts at the constant fan-in k0, and the trail holds
    a run's updates from its first, resumed runs included). ``timeline`` lists only the
    neurons that were ever ablated; its keys are the neuron indices as strings (JSON's).
    """
    events = {}
    for layer, rs in _by_layer(records).items():
        before, entry = set(), {"steps": [], "ablated": [], "newly_ablated": [],
                                "returned": [], "timeline": {}}
        for r in rs:
            after = set(r["ablated"])
            new, back = sorted(after - before), sorted(before - after)
            entry["steps"].append(r["step"])
            entry["ablated"].append(len(after))
            entry["newly_ablated"].append(new)
            entry["returned"].append(back)
            for what, ids in (("ablated", new), ("returned", back)):
                for i in ids:
                    entry["timeline"].setdefault(
                        str(i), {"ablated": [], "returned": []})[what].append(r["step"])
            before = after
        entry["timeline"] = dict(sorted(entry["timeline"].items(), key=lambda kv: int(kv[0])))
        events[layer] = entry
    return events


def ablation_counts(entry):
    """([newly ablated], [returned]) counts per update of one layer's ``ablation_events``
    entry: what the plot's ablation panel draws."""
    return [len(ids) for ids in entry["newly_ablated"]], [len(ids) for ids in entry["returned"]]


def _ablation_cell(count, new, back):
    """'68', '69 +69' or '68 +1 -2': ablated after the update, newly ablated, returned."""
    return (str(count) + (f" +{len(new)}" if new else "")
            + (f" -{len(back)}" if back else ""))


def ablation_rows(events):
    """One row per update step (every one), one column per layer of ``ablation_events``:
    the neurons ablated after that update, '+N' newly ablated and '-N' returned by it."""
    steps = sorted({step for e in events.values() for step in e["steps"]})
    rows = {step: {"step": str(step)} for step in steps}
    for layer, e in events.items():
        for row in rows.values():
            row[layer] = "-"
        for step, count, new, back in zip(e["steps"], e["ablated"], e["newly_ablated"],
                                          e["returned"]):
            rows[step][layer] = _ablation_cell(count, new, back)
    return list(rows.values())


def _by_layer(records):
    """{layer: [records]} in first-seen order."""
    by_layer = {}
    for r in records:
        by_layer.setdefault(r["layer"], []).append(r)
    return by_layer


def _total(records, key):
    """The sum of an ``ADDED_KEYS`` count: '-' when no record has it, '>=N' when only some do
    (a run resumed with a newer trainer)."""
    known = [r[key] for r in records if key in r]
    if not known:
        return "-"
    return str(sum(known)) if len(known) == len(records) else f">={sum(known)}"


def summarise(records):
    """One row per layer (in first-seen order) as a dict of display strings."""
    rows = []
    events = ablation_events(records)
    for layer, rs in _by_layer(records).items():
        last, ablation = rs[-1], events[layer]
        failed = sum(r["invariants"] != "ok" for r in rs)
        rows.append({
            "layer": layer,
            "method": last["method"],
            "updates": str(len(rs)),
            "pruned": str(sum(r["pruned"] for r in rs)),
            "grown": str(sum(r["grown"] for r in rs)),
            "regrown": _total(rs, "regrown"),
            "ablated": f"{ablation['ablated'][0]} → {ablation['ablated'][-1]}",
            "newly ablated": str(sum(map(len, ablation["newly_ablated"]))),
            "returned": str(sum(map(len, ablation["returned"]))),
            "active": f"{last['active_neurons']}/{last['neurons']}",
            "fan-in": f"{_fan_in_text(rs[0]['fan_in_before'])} → "
                      f"{_fan_in_text(last['fan_in_after'])}",
            "density": f"{100 * last['nnz'] / last['size']:.1f}%",
            "zeros in mask": str(last.get("zeros_in_mask", "-")),
            "ITOP": f"{100 * last['itop']:.1f}%",
            "checks": "ok" if failed == 0 else f"{failed} FAILED",
        })
    return rows


# What the table's columns mean, printed under it.
TABLE_NOTES = (
    "pruned, grown: net of regrown (a weight dropped and grown back in the same update "
    "counts as regrown only)",
    "zeros in mask: weights inside the mask that are exactly 0 after the last update "
    "(grown weights start at 0)",
    "ITOP: in-time over-parameterisation, the fraction of weights ever active",
    "ablated: neurons ablated after the first update → after the last; newly ablated, "
    "returned: neurons ablated, and neurons given weights again, by all updates together "
    "(per update below)",
)
ABLATION_NOTE = ("ablated neurons after each update (every update): +N newly ablated by "
                 "it, -N returned by it (--json: the neuron ids, and per neuron the steps "
                 "it was ablated and returned)")


def kept_dense(run_dir):
    """{layer: (shape, why)} of the layers a run's layer-sparsity distribution kept dense
    (sparsity 0: a full mask, no updates, no records), from its checkpoint.

    The trainer records them with the reason in the checkpoint's meta ("kept_dense",
    from ``DynamicSparsity.kept_dense``); for a checkpoint written before it did, they
    are the layers whose mask holds every weight. {} for a dense run or a directory
    without a checkpoint; ValueError for a checkpoint that cannot be read.
    """
    from .formats.checkpoint import load_model

    checkpoint = os.path.join(run_dir, "checkpoint.npz")
    if not os.path.isfile(checkpoint):
        return {}
    run = load_model(checkpoint)
    if run.config.get("method", "dense") == "dense":
        return {}
    params = run.model.named_parameters()
    reasons = run.meta.get("kept_dense")
    if reasons is None:
        why = ("the global sparsity is 0" if run.config.get("sparsity") == 0 else
               "ERK gives it density 1" if run.config.get("distribution") == "erk" else
               "its mask holds every weight")
        reasons = {name: why for name, mask in run.masks.items() if mask.all()}
    if not isinstance(reasons, dict) or not all(
            name in params and isinstance(why, str) for name, why in reasons.items()):
        raise ValueError(f"{checkpoint}: meta 'kept_dense' must map parameter names to "
                         f"reasons, got {reasons!r}")
    return {name: (list(params[name].shape), why) for name, why in reasons.items()}


def _kept_dense_lines(kept):
    if not kept:
        return []
    rows = [(name, "x".join(map(str, shape)), why) for name, (shape, why) in kept.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return ["kept dense by the distribution (no updates, no records):"] + [
        f"  {name.ljust(widths[0])}  {shape.ljust(widths[1])}  {why}"
        for name, shape, why in rows]


def _trail_lines(path, records, kept=None):
    """(lines, status) for the audit trail ``records`` read from ``path``."""
    steps = sorted({r["step"] for r in records})
    rows = summarise(records)
    lines = [f"{path}: {len(records)} records, {len(steps)} updates"
             + (f" (steps {steps[0]}..{steps[-1]})" if steps else ""),
             format_table(rows, empty="no topology updates recorded")]
    if rows:
        lines += TABLE_NOTES
    if any(r["regrown"] == "-" or r["zeros in mask"] == "-" for r in rows):
        lines.append("-: not in this trail (written before regrown and zeros_in_mask "
                     "were recorded)")
    if rows:
        lines += ["", ABLATION_NOTE, format_table(ablation_rows(ablation_events(records)))]
    lines += _kept_dense_lines(kept or {})
    failures = [r for r in records if r["invariants"] != "ok"]
    lines += [f"step {r['step']} {r['layer']}: {r['invariants']}" for r in failures[:5]]
    return lines, 1 if failures else 0


PLOT_PANELS = ("active neurons", "neurons newly ablated (up) / returned (down)",
               "fan-in k (min-max)", "ITOP %", "pruned / grown / regrown per update")


def plot_trail(records, path):
    """Draw a trail over training steps into ``path``, written atomically; its format comes
    from the suffix (PNG without one).

    One row of small panels per layer, one panel per quantity of ``PLOT_PANELS``: active
    neurons (a dotted line at the layer's neurons), the fan-in after each update (the
    band from min to max; one line for SRigL's constant k), ITOP, and the weights
    pruned, grown and regrown by each update; between the first two, one bar per update
    of the neurons it newly ablated (up) and returned (down, ``ablation_counts``). Returns (rows, columns). ImportError
    saying how to install matplotlib without it; ValueError for an empty trail or an
    unknown format (``cli.image_format``).
    """
    file_format = cli.image_format(path)
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install matplotlib "
                          "(or srigl_np[plot])") from None
    from .fileio import atomic_write

    if not records:
        raise ValueError(f"nothing to plot into {path}: the trail records no topology update")
    by_layer, events = _by_layer(records), ablation_events(records)
    fig = Figure(figsize=(3.2 * len(PLOT_PANELS), 2.2 * len(by_layer) + 0.6))
    axes = fig.subplots(len(by_layer), len(PLOT_PANELS), squeeze=False, sharex=True)
    for row, (layer, rs) in zip(axes, by_layer.items()):
        steps = [r["step"] for r in rs]
        active, ablation, fan_in, itop, changes = row
        active.plot(steps, [r["active_neurons"] for r in rs], marker=".")
        active.axhline(rs[-1]["neurons"], linestyle=":", color="grey")
        active.set_ylabel(layer)
        new, back = ablation_counts(events[layer])
        # One bar per update, every update: returns drawn below zero so they cannot hide
        # behind an equal number of new ablations (the net count would show neither).
        width = 0.6 * (min(np.diff(steps)) if len(steps) > 1 else 1)
        ablation.bar(steps, new, width=width, color="C3", label="newly ablated")
        ablation.bar(steps, [-b for b in back], width=width, color="C2", label="returned")
        ablation.axhline(0, color="grey", linewidth=0.5)
        low, high = ([r["fan_in_after"][i] for r in rs] for i in (0, 1))
        fan_in.fill_between(steps, low, high, alpha=0.3)
        fan_in.plot(steps, low, marker=".", color="C0")
        if low != high:
            fan_in.plot(steps, high, marker=".", color="C0")
        itop.plot(steps, [100 * r["itop"] for r in rs], marker=".")
        # grown dashed: SRigL often grows as many as it prunes, and both should show.
        for key, style in (("pruned", "-"), ("grown", "--"), ("regrown", ":")):
            known = [r for r in rs if key in r]
            if known:
                changes.plot([r["step"] for r in known], [r[key] for r in known],
                             marker=".", linestyle=style, label=key)
    for ax, title in zip(axes[0], PLOT_PANELS):
        ax.set_title(title, fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    axes[0][1].legend(fontsize=7)
    axes[0][-1].legend(fontsize=7)
    for ax in axes.flat:
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format=file_format, dpi=100))
    return axes.shape


PROG = "python -m srigl_np.audit"


def make_parser():
    parser = create_parser(PROG, __doc__.rsplit("\n\n", 1)[0].replace("``", ""))
    parser.add_argument("path", metavar="PATH", type=cli.path,
                        help="a run directory, or a model file of one of the kinds above")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (source, layers, model summary, trail "
                             "summary, ablation per update with a per-neuron timeline, "
                             "layers kept dense) instead")
    parser.add_argument("--arch", choices=ARCHITECTURE_NAMES, default=None,
                        help="read a PyTorch file as this architecture instead of "
                             "recognising it from its keys and shapes (default: recognise)")
    parser.add_argument("--expect-constant-fan-in", action="store_true",
                        help="claim constant fan-in for every sparse layer, as SRigL's own "
                             "files do, so a layer that is not fails the audit (exit 1); "
                             "for files that carry no claim, such as bare state_dicts")
    parser.add_argument("--plot", metavar="FILE", default=None, type=cli.path,
                        help="also draw a run's trail over training steps into FILE (.png, "
                             ".pdf, .svg, ...; needs matplotlib): per layer, active neurons, "
                             "neurons newly ablated and returned, fan-in, ITOP and weights "
                             "pruned/grown/regrown per update "
                             "(default: no plot)")
    return parser


@command(PROG, errors=(TypeError, ImportError))
def main(argv=None):
    args = make_parser().parse_args(argv)
    from .model_audit import (audit_source, format_audits, format_model, not_finite,
                              open_source, summarise_model)

    if args.plot is not None:   # before the audit, not after it
        if not os.path.isdir(args.path):
            raise ValueError(f"--plot draws a run's audit trail, and {args.path} has none: "
                             f"give the run directory, not a model file")
        problem = cli.check_output_file("--plot", args.plot, image=True)
        if problem:
            raise ValueError(problem)

    status, out, trail_records, kept = 0, [], None, {}
    is_run = os.path.isdir(args.path)
    trail = os.path.join(args.path, "audit.jsonl")
    has_checkpoint = os.path.isfile(os.path.join(args.path, "checkpoint.npz"))
    if is_run and (os.path.exists(trail) or not has_checkpoint):
        trail_records = read_trail(trail)
        kept = kept_dense(args.path)
        lines, status = _trail_lines(trail, trail_records, kept)
        out += lines
    source = None
    if args.arch is not None and is_run:
        raise ValueError(f"--arch names the architecture of a PyTorch file; {args.path} is a "
                         f"run directory, whose checkpoint records its model")
    if not is_run or has_checkpoint:
        source = open_source(args.path, arch=args.arch)
        if args.expect_constant_fan_in:
            source.claimed = {name for name, _, _ in source.layers}
            source.notes.append("constant fan-in expected in every sparse layer "
                                "(--expect-constant-fan-in)")
        audits = audit_source(source)
        problems = not_finite(source, audits)
        model = summarise_model(source)
    if args.plot is not None:
        if trail_records is None:
            raise ValueError(f"--plot draws a run's audit trail, and {args.path} has none"
                             + (" (a dense run)" if is_run else
                                ": give the run directory, not a model file"))
        rows, columns = plot_trail(trail_records, args.plot)
        out.append(f"plot: {args.plot} ({rows} layers x {columns} panels: "
                   f"{', '.join(PLOT_PANELS)})")
    trail_summary = None if trail_records is None else summarise(trail_records)
    ablation = None if trail_records is None else ablation_events(trail_records)
    kept_json = {name: {"shape": shape, "reason": why} for name, (shape, why) in kept.items()}
    if source is not None:
        status = max(status, 0 if all(a["ok"] for a in audits) and not problems else 1)
        if args.json:
            print(json.dumps({"path": args.path, "kind": source.kind,
                              "structure": source.structure, "notes": source.notes,
                              "layers": audits, "not_finite": problems, "model": model,
                              "expect_constant_fan_in": args.expect_constant_fan_in,
                              "trail": trail_summary, "ablation": ablation,
                              "kept_dense": kept_json, "status": status}))
            return status
        out += [f"{source.path}: {source.kind}, structure from {source.structure}"]
        out += [f"  note: {note}" for note in source.notes]
        out.append(format_audits(audits))
        out += [problem["message"] for problem in problems]
        out += format_model(model)
    elif args.json:
        print(json.dumps({"path": args.path, "kind": "trail", "layers": [], "model": None,
                          "trail": trail_summary, "ablation": ablation,
                          "kept_dense": kept_json, "status": status}))
        return status
    print("\n".join(out))
    return status


if __name__ == "__main__":
    sys.exit(main())
