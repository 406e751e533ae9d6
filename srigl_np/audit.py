"""A sparse run's audit trail: the record schema, and ``python -m srigl_np.audit RUN_DIR``.

A run's ``audit.jsonl`` holds one JSON object per line, one per layer per topology
update. This module owns the record's schema, ``FIELDS`` (key, kind and meaning, in the
order the keys are written): ``DynamicSparsity`` builds every record with
``make_record``, and ``read_trail`` checks every record it reads back with
``check_record``, so writer and reader cannot drift apart.

The command prints, per layer, the number of updates, weights pruned/grown in total, how
the count of ablated neurons moved over training, the fan-in range, density, ITOP and
any failed invariant check. A trail written now holds only checked updates
(``"invariants": "ok"``; a failed check stops training with ``dst.InvariantError``).
Older trails recorded a failure as its message in that field; those are still read and
reported, with exit status 1.
"""

import argparse
import json
import os
import sys

# (key, kind, meaning). Kinds: "int", "number" (int or float), "str", "int pair"
# ([low, high]), "int list".
FIELDS = (
    ("step", "int", "optimizer steps taken when the update ran"),
    ("layer", "str", "parameter name, e.g. '3.weight'"),
    ("method", "str", "'set', 'rigl' or 'srigl'"),
    ("drop_fraction", "number", "the cosine-decayed drop fraction of the update"),
    ("pruned", "int", "weights in the old mask but not the new one"),
    ("grown", "int", "weights in the new mask but not the old one"),
    ("fan_in_before", "int pair", "[min, max] fan-in over active neurons, before"),
    ("fan_in_after", "int pair", "[min, max] fan-in over active neurons, after"),
    ("active_neurons", "int", "neurons with at least one weight, after"),
    ("neurons", "int", "neurons of the layer"),
    ("ablated", "int list", "indices of the ablated neurons, after (SRigL)"),
    ("nnz", "int", "active weights, after"),
    ("size", "int", "weights of the dense layer"),
    ("itop", "number", "fraction of weights ever active (in-time over-parameterisation)"),
    ("invariants", "str", "'ok' (older trails: the failed check's message)"),
)
KEYS = tuple(key for key, _, _ in FIELDS)
_MADE_KEYS = tuple(key for key in KEYS if key != "invariants")

_KIND_TEXT = {"int": "an integer", "number": "a number", "str": "a string",
              "int pair": "a list of 2 integers", "int list": "a list of integers"}


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


_KIND_CHECK = {
    "int": _is_int,
    "number": lambda v: _is_int(v) or isinstance(v, float),
    "str": lambda v: isinstance(v, str),
    "int pair": lambda v: isinstance(v, list) and len(v) == 2 and all(map(_is_int, v)),
    "int list": lambda v: isinstance(v, list) and all(map(_is_int, v)),
}

# Python values of each kind from the update's numbers (NumPy scalars and arrays too).
_KIND_CONVERT = {
    "int": int, "number": float, "str": str,
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
    ``record`` is a dict holding every key of ``FIELDS`` with a value of its kind.

    Keys beyond ``FIELDS`` are allowed, so a newer writer's trail stays readable.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in KEYS if key not in record]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    for key, kind, _ in FIELDS:
        if not _KIND_CHECK[kind](record[key]):
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
    return records


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


def summarise(records):
    """One row per layer (in first-seen order) as a dict of display strings."""
    by_layer = {}
    for r in records:
        by_layer.setdefault(r["layer"], []).append(r)
    rows = []
    for layer, rs in by_layer.items():
        last = rs[-1]
        failed = sum(r["invariants"] != "ok" for r in rs)
        rows.append({
            "layer": layer,
            "method": last["method"],
            "updates": str(len(rs)),
            "pruned": str(sum(r["pruned"] for r in rs)),
            "grown": str(sum(r["grown"] for r in rs)),
            "ablated over time": _ablation_timeline(rs),
            "active": f"{last['active_neurons']}/{last['neurons']}",
            "fan-in": f"{_fan_in_text(rs[0]['fan_in_before'])} → "
                      f"{_fan_in_text(last['fan_in_after'])}",
            "density": f"{100 * last['nnz'] / last['size']:.1f}%",
            "ITOP": f"{100 * last['itop']:.1f}%",
            "checks": "ok" if failed == 0 else f"{failed} FAILED",
        })
    return rows


def format_table(rows):
    if not rows:
        return "no topology updates recorded"
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns),
             "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _trail_lines(path):
    """(lines, status) for the audit trail at ``path``; ValueError/OSError if unreadable."""
    records = read_trail(path)
    steps = sorted({r["step"] for r in records})
    lines = [f"{path}: {len(records)} records, {len(steps)} updates"
             + (f" (steps {steps[0]}..{steps[-1]})" if steps else ""),
             format_table(summarise(records))]
    failures = [r for r in records if r["invariants"] != "ok"]
    lines += [f"step {r['step']} {r['layer']}: {r['invariants']}" for r in failures[:5]]
    return lines, records, 1 if failures else 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m srigl_np.audit",
        description="Audit a sparse model. For a run directory of python -m srigl_np.train: "
                    "its audit trail (audit.jsonl), one row per layer: updates, weights "
                    "pruned and grown, ablated neurons over time, fan-in, density, ITOP and "
                    "failed invariant checks. For any model (that run's checkpoint, a "
                    "srigl_np checkpoint .npz, a condensed model file, a PyTorch checkpoint "
                    "or state_dict, or a scipy.sparse .npz): per sparse layer its shape, "
                    "nnz, sparsity, fan-in (constant or not, k), ablated neurons, zeros "
                    "inside the mask, weights outside it, and every violated invariant with "
                    "the first offending neuron. Exit status 1 when a file cannot be read, "
                    "a trail records a failed check, or a layer that claims constant fan-in "
                    "(SRigL) breaks it; 0 otherwise.")
    parser.add_argument("path", metavar="PATH",
                        help="a run directory, or a model file of one of the kinds above")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (source, layers, trail summary) instead")
    args = parser.parse_args(argv)
    from .model_audit import audit_source, format_audits, open_source

    status, out, trail_records = 0, [], None
    try:
        trail = os.path.join(args.path, "audit.jsonl")
        has_checkpoint = os.path.isfile(os.path.join(args.path, "checkpoint.npz"))
        if os.path.isdir(args.path) and (os.path.exists(trail) or not has_checkpoint):
            lines, trail_records, status = _trail_lines(trail)
            out += lines
        source = None
        if not os.path.isdir(args.path) or has_checkpoint:
            source = open_source(args.path)
            audits = audit_source(source)
    except (OSError, ValueError, TypeError) as exc:
        print(f"python -m srigl_np.audit: error: {exc}", file=sys.stderr)
        return 1
    if source is not None:
        status = max(status, 0 if all(a["ok"] for a in audits) else 1)
        if args.json:
            print(json.dumps({"path": args.path, "kind": source.kind,
                              "structure": source.structure, "notes": source.notes,
                              "layers": audits, "trail": None if trail_records is None
                              else summarise(trail_records), "status": status}))
            return status
        out += [f"{source.path}: {source.kind}, structure from {source.structure}"]
        out += [f"  note: {note}" for note in source.notes]
        out.append(format_audits(audits))
    elif args.json:
        print(json.dumps({"path": args.path, "kind": "trail", "layers": [],
                          "trail": summarise(trail_records), "status": status}))
        return status
    print("\n".join(out))
    return status


if __name__ == "__main__":
    sys.exit(main())
