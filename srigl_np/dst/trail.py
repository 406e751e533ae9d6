"""A sparse run's audit trail: the record schema, its writer's and its reader's one source.

A run's ``audit.jsonl`` holds one JSON object per line, one per layer per topology
update. ``FIELDS`` is the record's schema (key, kind and meaning, in the order the keys
are written): ``DynamicSparsity`` builds every record with ``make_record``, and
``read_trail`` checks every record it reads back with ``check_record`` (and refuses a
trail with a gap), so writer and reader cannot drift apart. Every key is always written;
``ADDED_KEYS`` are the ones trails written before they existed lack, optional when
reading. A trail written now holds only checked updates (``"invariants": "ok"``; a
failed check stops training with ``dst.InvariantError``); older trails recorded a
failure as its message in that field, and those still read.

This module is a leaf: of the package it imports only ``fileio`` (the bounds on reading
JSON), so the trainer's sparsity wrapper, the trainer, the experiment runner and
``python -m srigl_np.audit`` can all import it without importing each other.
"""

import json
import math
import os

import numpy as np

# The longest line read (as fileio.MAX_JSON_CHARS, which this leaf does not import): a
# record of a layer of half a million neurons, every one ablated, fits; a longer line is
# refused before it is read whole, so parsing one holds at most ~100 MB.
MAX_LINE_CHARS = 4 * 2**20

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

_KIND_TEXT = {"int": "an integer", "positive int": "an integer > 0",
              "number": "a finite number",
              "str": "a string",
              "int pair": "a list of 2 integers", "int list": "a list of integers"}


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


_KIND_CHECK = {
    "int": _is_int,
    "positive int": lambda v: _is_int(v) and v > 0,
    "number": lambda v: _is_int(v) or isinstance(v, float) and math.isfinite(v),
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
    ``path:line`` for a blank line, a line that is not JSON (or longer than
    ``MAX_LINE_CHARS``, or nested too deeply), a bad record, a record whose step is below
    the one before (the trainer writes them in step order) or a second record of one
    layer at one step; ValueError naming ``path`` for a trail with a gap
    (``_check_no_gap``).
    """
    if os.path.exists(path) and not os.path.isfile(path):   # a FIFO would block the open
        raise ValueError(f"{path}: not a regular file")
    try:
        trail = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (python -m srigl_np.train writes "
                                f"it for sparse methods)") from None
    records = []
    lines_of_step = {}   # {layer: line} of the records at the current step
    with trail:
        # readline's limit: a line is never read whole past MAX_LINE_CHARS.
        for number, line in enumerate(iter(lambda: trail.readline(MAX_LINE_CHARS + 2), b""),
                                      start=1):
            where = f"{path}:{number}"
            if not line.strip():
                raise ValueError(f"{where}: blank line, expected one JSON record per line")
            if len(line) > MAX_LINE_CHARS + 1:
                raise ValueError(f"{where}: a line of more than {MAX_LINE_CHARS} characters, "
                                 f"longer than any record the trainer writes")
            try:
                record = json.loads(line)
            except RecursionError:   # a record is flat: this is no record
                raise ValueError(f"{where}: JSON nested too deeply for a record") from None
            except ValueError as exc:   # JSONDecodeError, or bytes that are not UTF-8
                raise ValueError(f"{where}: not JSON ({getattr(exc, 'msg', exc)})") from None
            check_record(record, where)
            step, layer = record["step"], record["layer"]
            if records and step < records[-1]["step"]:
                raise ValueError(f"{where}: step {step} after step {records[-1]['step']}: "
                                 f"the records must be in step order, as the trainer "
                                 f"writes them")
            if records and step > records[-1]["step"]:
                lines_of_step = {}
            if layer in lines_of_step:
                raise ValueError(f"{where}: a second record of layer {layer!r} at step "
                                 f"{step} (the first is line {lines_of_step[layer]})")
            lines_of_step[layer] = number
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
