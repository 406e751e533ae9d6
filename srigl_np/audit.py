"""``python -m srigl_np.audit RUN_DIR``: read a run's ``audit.jsonl`` back as tables.

The trail has one JSON record per layer per topology update (written by
DynamicSparsity through the trainer): step, layer, method, drop fraction, counts
pruned and grown, fan-in range before/after, active and ablated neurons, nnz, ITOP
and the result of the invariant check. This prints, per layer, the number of updates,
weights pruned/grown in total, how the count of ablated neurons moved over training,
the final fan-in and ITOP, and any failed invariant check.
"""

import argparse
import json
import os
import sys

REQUIRED_KEYS = ("step", "layer", "method", "drop_fraction", "pruned", "grown",
                 "fan_in_before", "fan_in_after", "active_neurons", "neurons", "ablated",
                 "nnz", "size", "itop", "invariants")


def read_trail(path):
    """Records of an audit.jsonl file, validated; raises ValueError naming the bad line."""
    records = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
            missing = [k for k in REQUIRED_KEYS if k not in record]
            if missing:
                raise ValueError(f"{path}:{number}: missing keys {missing}")
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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m srigl_np.audit", description=__doc__)
    parser.add_argument("run_dir", help="a run directory written by python -m srigl_np.train")
    args = parser.parse_args(argv)
    path = os.path.join(args.run_dir, "audit.jsonl")
    try:
        records = read_trail(path)
    except (OSError, ValueError) as exc:
        print(f"python -m srigl_np.audit: error: {exc}", file=sys.stderr)
        return 1
    steps = sorted({r["step"] for r in records})
    print(f"{path}: {len(records)} records, {len(steps)} updates"
          + (f" (steps {steps[0]}..{steps[-1]})" if steps else ""))
    print(format_table(summarise(records)))
    failures = [r for r in records if r["invariants"] != "ok"]
    for r in failures[:5]:
        print(f"step {r['step']} {r['layer']}: {r['invariants']}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
