"""A sparse run's audit trail: the record schema, and ``python -m srigl_np.audit RUN_DIR``.

A run's ``audit.jsonl`` holds one JSON object per line, one per layer per topology
update. This module owns the record's schema, ``FIELDS`` (key, kind and meaning, in the
order the keys are written): ``DynamicSparsity`` builds every record with
``make_record``, and ``read_trail`` checks every record it reads back with
``check_record``, so writer and reader cannot drift apart. Every key is always written;
``ADDED_KEYS`` are the ones trails written before they existed lack, optional when
reading.

The command prints, per layer, the number of updates, weights pruned/grown (net) and
regrown in total, how the count of ablated neurons moved over training, the fan-in
range, density, zeros inside the mask, ITOP and any failed invariant check; then the
layers the distribution kept dense (they have no records; the run's checkpoint says
which and why). ``--plot FILE`` draws the trail over training steps (matplotlib). A
trail written now holds only checked updates (``"invariants": "ok"``; a failed check
stops training with ``dst.InvariantError``). Older trails recorded a failure as its
message in that field; those are still read and reported, with exit status 1.
"""

import argparse
import json
import os
import sys

import numpy as np

# (key, kind, meaning). Kinds: "int", "number" (int or float), "str", "int pair"
# ([low, high]), "int list".
FIELDS = (
    ("step", "int", "optimizer steps taken when the update ran"),
    ("layer", "str", "parameter name, e.g. '3.weight'"),
    ("method", "str", "'set', 'rigl' or 'srigl'"),
    ("drop_fraction", "number", "the cosine-decayed drop fraction of the update"),
    ("pruned", "int", "weights in the old mask but not the new one"),
    ("grown", "int", "weights in the new mask but not the old one"),
    ("regrown", "int", "weights dropped and grown back in the same update (counted in "
                       "neither pruned nor grown; they keep their old value)"),
    ("fan_in_before", "int pair", "[min, max] fan-in over active neurons, before"),
    ("fan_in_after", "int pair", "[min, max] fan-in over active neurons, after"),
    ("active_neurons", "int", "neurons with at least one weight, after"),
    ("neurons", "positive int", "neurons of the layer"),
    ("ablated", "int list", "indices of the ablated neurons, after (SRigL)"),
    ("nnz", "int", "active weights, after"),
    ("zeros_in_mask", "int", "weights inside the mask that are exactly 0, after (grown "
                             "weights start at 0)"),
    ("size", "positive int", "weights of the dense layer"),
    ("itop", "number", "fraction of weights ever active (in-time over-parameterisation)"),
    ("invariants", "str", "'ok' (older trails: the failed check's message)"),
)
KEYS = tuple(key for key, _, _ in FIELDS)
# Keys added after trails were first written: always written, optional when reading
# (a record without them reads, and the table shows "-").
ADDED_KEYS = ("regrown", "zeros_in_mask")
_MADE_KEYS = tuple(key for key in KEYS if key != "invariants")

_KIND_TEXT = {"int": "an integer", "positive int": "an integer > 0", "number": "a number",
              "str": "a string",
              "int pair": "a list of 2 integers", "int list": "a list of integers"}


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


_KIND_CHECK = {
    "int": _is_int,
    "positive int": lambda v: _is_int(v) and v > 0,
    "number": lambda v: _is_int(v) or isinstance(v, float),
    "str": lambda v: isinstance(v, str),
    "int pair": lambda v: isinstance(v, list) and len(v) == 2 and all(map(_is_int, v)),
    "int list": lambda v: isinstance(v, list) and all(map(_is_int, v)),
}

# Python values of each kind from the update's numbers (NumPy scalars and arrays too).
_KIND_CONVERT = {
    "int": int, "positive int": int, "number": float, "str": str,
    "int pair": lambda v: [int(v[0]), int(v[1])],
    "int list": lambda v: [int(i) for i in v],
}


def make_record(**values):
    """The audit record of one checked layer update, keys in ``FIELDS`` order.

    ``values`` gives every key of ``FIELDS`` but "invariants" (a record is only made once
    ``dst.check_invariants`` passed, so it is "ok"), as Python or NumPy numbers; they are
    converted to plain JSON values. TypeError names a missing or unknown key.
    """
    missing = [key for key in _MADE_KEYS if key not in values]
    unknown = [key for key in values if key not in _MADE_KEYS]
    if missing or unknown:
        raise TypeError(f"make_record takes the keys {list(_MADE_KEYS)}; missing {missing}, "
                        f"unknown {unknown}")
    values = {**values, "invariants": "ok"}
    record = {key: _KIND_CONVERT[kind](values[key]) for key, kind, _ in FIELDS}
    check_record(record, "make_record")
    return record


def check_record(record, where):
    """Raise ValueError, prefixed with ``where`` (e.g. 'run/audit.jsonl:3'), unless
    ``record`` is a dict holding every key of ``FIELDS`` (``ADDED_KEYS`` may be absent)
    with a value of its kind.

    Keys beyond ``FIELDS`` are allowed, so a newer writer's trail stays readable.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in KEYS if key not in record and key not in ADDED_KEYS]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    for key, kind, _ in FIELDS:
        if key in record and not _KIND_CHECK[kind](record[key]):
            raise ValueError(f"{where}: {key!r} must be {_KIND_TEXT[kind]}, "
                             f"got {record[key]!r}")


def read_trail(path):
    """The records of an audit.jsonl file, each checked by ``check_record``.

    An empty file is an empty trail (a static run, or one that ended before its first
    update). Raises FileNotFoundError for a missing file and ValueError naming
    ``path:line`` for a blank line, a line that is not JSON, or a bad record.
    """
    try:
        trail = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (python -m srigl_np.train writes "
                                f"it for sparse methods)") from None
    records = []
    with trail:
        for number, line in enumerate(trail, start=1):
            where = f"{path}:{number}"
            if not line.strip():
                raise ValueError(f"{where}: blank line, expected one JSON record per line")
            try:
                record = json.loads(line)
            except ValueError as exc:   # JSONDecodeError, or bytes that are not UTF-8
                raise ValueError(f"{where}: not JSON ({getattr(exc, 'msg', exc)})") from None
            check_record(record, where)
            records.append(record)
    _check_no_gap(records, path)
    return records


def _check_no_gap(records, path):
    """Refuse a trail with a hole in it: each layer's update steps must be equally spaced
    (every ΔT), as an uninterrupted run writes them. A trail that lost records (a crash
    between writing and checkpointing, a hand edit) would otherwise read as a clean,
    shorter run."""
    steps_of = {}
    for r in records:
        steps_of.setdefault(r["layer"], []).append(r["step"])
    for layer, steps in steps_of.items():
        steps = np.unique(steps)
        gaps = np.diff(steps)
        if gaps.size and (gaps != gaps.min()).any():
            at = int(np.flatnonzero(gaps != gaps.min())[0])
            raise ValueError(f"{path}: the trail has a gap: layer {layer!r} has no update "
                             f"between step {steps[at]} and step {steps[at + 1]}, while its "
                             f"others are {int(gaps.min())} steps apart")


def _fan_in_text(pair):
    low, high = pair
    return str(low) if low == high else f"{low}-{high}"


def _ablation_timeline(records, points=5):
    """Ablated-neuron counts at up to ``points`` evenly spaced updates, e.g. '0 → 3 → 5'."""
    counts = [len(r["ablated"]) for r in records]
    if len(counts) <= points:
        picks = counts
    else:
        picks = [counts[round(i * (len(counts) - 1) / (points - 1))] for i in range(points)]
    return " → ".join(str(c) for c in picks)


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
    for layer, rs in _by_layer(records).items():
        last = rs[-1]
        failed = sum(r["invariants"] != "ok" for r in rs)
        rows.append({
            "layer": layer,
            "method": last["method"],
            "updates": str(len(rs)),
            "pruned": str(sum(r["pruned"] for r in rs)),
            "grown": str(sum(r["grown"] for r in rs)),
            "regrown": _total(rs, "regrown"),
            "ablated over time": _ablation_timeline(rs),
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
)


def format_table(rows):
    """Rows (dicts of display strings, the same keys) as aligned columns under a header."""
    if not rows:
        return "no topology updates recorded"
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns),
             "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


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
             format_table(rows)]
    if rows:
        lines += TABLE_NOTES
    if any(r["regrown"] == "-" or r["zeros in mask"] == "-" for r in rows):
        lines.append("-: not in this trail (written before regrown and zeros_in_mask "
                     "were recorded)")
    lines += _kept_dense_lines(kept or {})
    failures = [r for r in records if r["invariants"] != "ok"]
    lines += [f"step {r['step']} {r['layer']}: {r['invariants']}" for r in failures[:5]]
    return lines, 1 if failures else 0


PLOT_PANELS = ("active neurons", "fan-in k (min-max)", "ITOP %",
               "pruned / grown / regrown per update")


def plot_trail(records, path):
    """Draw a trail over training steps into ``path``, written atomically; its format comes
    from the suffix (PNG without one).

    One row of small panels per layer, one panel per quantity of ``PLOT_PANELS``: active
    neurons (a dotted line at the layer's neurons), the fan-in after each update (the
    band from min to max; one line for SRigL's constant k), ITOP, and the weights
    pruned, grown and regrown by each update. Returns (rows, columns). ImportError
    saying how to install matplotlib without it; ValueError for an empty trail or an
    unknown format.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install matplotlib "
                          "(or srigl_np[plot])") from None
    from .fileio import atomic_write

    if not records:
        raise ValueError(f"nothing to plot into {path}: the trail records no topology update")
    by_layer = _by_layer(records)
    fig = Figure(figsize=(3.2 * len(PLOT_PANELS), 2.2 * len(by_layer) + 0.6))
    image_format = os.path.splitext(path)[1][1:].lower() or "png"
    formats = fig.canvas.get_supported_filetypes()
    if image_format not in formats:
        raise ValueError(f"--plot {path}: unknown image format {image_format!r}; the suffix "
                         f"must be one of {', '.join(sorted(formats))}")
    axes = fig.subplots(len(by_layer), len(PLOT_PANELS), squeeze=False, sharex=True)
    for row, (layer, rs) in zip(axes, by_layer.items()):
        steps = [r["step"] for r in rs]
        active, fan_in, itop, changes = row
        active.plot(steps, [r["active_neurons"] for r in rs], marker=".")
        active.axhline(rs[-1]["neurons"], linestyle=":", color="grey")
        active.set_ylabel(layer)
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
    axes[0][-1].legend(fontsize=7)
    for ax in axes.flat:
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format=image_format, dpi=100))
    return axes.shape


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m srigl_np.audit",
        description="Audit a sparse model. For a run directory of python -m srigl_np.train: "
                    "its audit trail (audit.jsonl), one row per layer: updates, weights "
                    "pruned, grown and regrown, ablated neurons over time, fan-in, density, "
                    "zeros inside the mask, ITOP (in-time over-parameterisation: the "
                    "fraction of weights ever active) and failed invariant checks, then the "
                    "layers the distribution kept dense. For any model (that run's "
                    "checkpoint, a srigl_np checkpoint .npz, a condensed model file, a "
                    "PyTorch checkpoint or state_dict, or a scipy.sparse .npz): per sparse "
                    "layer its shape, nnz, sparsity, fan-in (constant or not, k), ablated "
                    "neurons, zeros inside the mask, weights outside it, and every violated "
                    "invariant with the first offending neuron. Exit status 1 when a file "
                    "cannot be read, a trail records a failed check, or a layer that claims "
                    "constant fan-in (SRigL) breaks it; 0 otherwise.")
    parser.add_argument("path", metavar="PATH",
                        help="a run directory, or a model file of one of the kinds above")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (source, layers, trail summary, layers "
                             "kept dense) instead")
    parser.add_argument("--plot", metavar="FILE", default=None,
                        help="also draw a run's trail over training steps into FILE (.png, "
                             ".pdf, .svg, ...; needs matplotlib): per layer, active neurons, "
                             "fan-in, ITOP and weights pruned/grown/regrown per update "
                             "(default: no plot)")
    args = parser.parse_args(argv)
    from .model_audit import audit_source, format_audits, open_source

    status, out, trail_records, kept = 0, [], None, {}
    try:
        is_run = os.path.isdir(args.path)
        trail = os.path.join(args.path, "audit.jsonl")
        has_checkpoint = os.path.isfile(os.path.join(args.path, "checkpoint.npz"))
        if is_run and (os.path.exists(trail) or not has_checkpoint):
            trail_records = read_trail(trail)
            kept = kept_dense(args.path)
            lines, status = _trail_lines(trail, trail_records, kept)
            out += lines
        source = None
        if not is_run or has_checkpoint:
            source = open_source(args.path)
            audits = audit_source(source)
        if args.plot is not None:
            if trail_records is None:
                raise ValueError(f"--plot draws a run's audit trail, and {args.path} has none"
                                 + (" (a dense run)" if is_run else
                                    ": give the run directory, not a model file"))
            rows, columns = plot_trail(trail_records, args.plot)
            out.append(f"plot: {args.plot} ({rows} layers x {columns} panels: "
                       f"{', '.join(PLOT_PANELS)})")
    except (OSError, ValueError, TypeError, ImportError) as exc:
        print(f"python -m srigl_np.audit: error: {exc}", file=sys.stderr)
        return 1
    trail_summary = None if trail_records is None else summarise(trail_records)
    kept_json = {name: {"shape": shape, "reason": why} for name, (shape, why) in kept.items()}
    if source is not None:
        status = max(status, 0 if all(a["ok"] for a in audits) else 1)
        if args.json:
            print(json.dumps({"path": args.path, "kind": source.kind,
                              "structure": source.structure, "notes": source.notes,
                              "layers": audits, "trail": trail_summary,
                              "kept_dense": kept_json, "status": status}))
            return status
        out += [f"{source.path}: {source.kind}, structure from {source.structure}"]
        out += [f"  note: {note}" for note in source.notes]
        out.append(format_audits(audits))
    elif args.json:
        print(json.dumps({"path": args.path, "kind": "trail", "layers": [],
                          "trail": trail_summary, "kept_dense": kept_json,
                          "status": status}))
        return status
    print("\n".join(out))
    return status


if __name__ == "__main__":
    sys.exit(main())
