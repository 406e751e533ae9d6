"""Auditing a sparse model from any source: per layer, the structure SRigL promises.

``open_source(path)`` reads what a user brings and returns a ``Source``: its kind, the
sparse layers (name, weight, mask or None) and which of them claim constant fan-in:

    run         a directory of ``python -m srigl_np.train`` (its checkpoint.npz; the
                audit trail beside it is read by ``audit.py``)
    checkpoint  a srigl_np checkpoint .npz: masks from its DynamicSparsity; an SRigL run
                claims constant fan-in for every masked layer
    condensed   a condensed model file (``CondensedModel.save``): every condensed layer
                claims constant fan-in by construction; its stored entries are the mask
    torch       a PyTorch checkpoint or state_dict
                (``formats.importing.read_torch_checkpoint``): masks from the SRigL
                authors' pruner state, prune's weight_mask pairs, or ``weight != 0``;
                the authors' constant fan-in scheduler claims it
    scipy       a scipy.sparse matrix saved with ``scipy.sparse.save_npz``: its stored
                entries are the mask (explicit zeros count); no claim

Each source also names its model (``Source.model``, ``model_line``: for a PyTorch file
the architecture ``formats.model_map.identify`` recognises from its keys and shapes, or
the one line saying why there is none and so nothing to condense) and where its masks
came from (``mask_source``). ``summarise_model`` then gives the model as a whole: active
neurons in all and per weighted layer (count and %), each layer's k, and every layer
that is not constant fan-in with its fan-in range and how many rows are off.

``audit_layer`` reports, per layer: shape, nnz, sparsity, whether the fan-in is
constant over the active neurons, k, the ablated neurons, zeros inside the mask,
weights outside it, and every violated invariant (``dst.invariant_violations``, with
the first offending neuron and its count). A NaN or infinite value is a violation
wherever it is, claimed or not (condense refuses such a model): in a layer's weights
(``audit_layer``) or in any other array of the source (``not_finite``).

The audit holds each layer's weights densely: a scipy matrix or a condensed layer whose
dense form would exceed ``MAX_DENSE_WEIGHTS`` is refused before anything is allocated.
Nothing in a file is executed: npz files are read by ``formats.npz.read_npz`` (no
pickles, every member checked before it is inflated), PyTorch files by
``formats.torch_format``'s restricted reader.
"""

import dataclasses
import math
import os

import numpy as np

from . import dst
from .formats.sniff import source_kind


# The most weights a layer's dense form may hold in the audit (256 MiB as float32; the
# audit's peak is a few times that).
MAX_DENSE_WEIGHTS = 2**26


@dataclasses.dataclass
class Source:
    """What ``open_source`` found. layers: [(name, weight, mask or None)], weights of
    shape (n_out, *fan_in_dims) as NumPy, every weighted layer (a dense one with a full
    mask); claimed: names that claim constant fan-in; structure: where the masks came
    from, in a word; notes: sentences for the report; arrays: {name: array} of every
    array the source holds (weights, biases, normalisation statistics), checked for NaN
    and infinity by ``not_finite``; model: the model's name (e.g. "resnet50", "cnn") or
    None; model_line: one line on the model and its sizes, or on why there is no model
    to condense; mask_source: where the masks came from, as a phrase."""
    path: str
    kind: str
    layers: list
    claimed: set
    structure: str
    notes: list
    arrays: dict = dataclasses.field(default_factory=dict)
    model: object = None
    model_line: str = ""
    mask_source: str = ""


# How each PyTorch mask source (importing.MASK_SOURCES) reads in a report.
TORCH_MASK_SOURCES = {
    "pruner": "the authors' pruner (its backward_masks)",
    "masks": "masks saved in the file",
    "weight_mask": "torch.nn.utils.prune's weight_mask pairs",
    "zeros": "weight != 0 (none recorded: a weight at exactly 0 counts as pruned, so "
             "active counts are lower bounds)",
}


def open_source(path, *, arch=None):
    """The Source at ``path`` (see the module docstring); ValueError, one line, when the
    path is missing or its contents are none of the known kinds.

    arch: for a PyTorch file, the architecture (``formats.layouts.ARCHITECTURE_NAMES``)
    to read it as, instead of recognising it; refused for other kinds.
    """
    path = os.fspath(path)
    kind = source_kind(path)
    if arch is not None and kind != "torch":
        raise ValueError(f"an architecture (--arch {arch}) is named for PyTorch files only; "
                         f"{path} is a srigl_np {kind}, which records its own model")
    if kind == "run":
        source = _our_checkpoint(os.path.join(path, "checkpoint.npz"))
        source.kind, source.path = "run", path
        return source
    if kind == "torch":
        return _torch_file(path, arch)
    return {"condensed": _condensed_file, "checkpoint": _our_checkpoint,
            "scipy": _scipy_file}[kind](path)


def _our_checkpoint(path):
    from .formats.checkpoint import load_model

    run = load_model(path)
    claims = run.config.get("method") == "srigl"
    params = run.model.named_parameters()
    layers = [(name, params[name], mask) for name, mask in run.masks.items()]
    notes = [run_note(run)]
    return Source(path, "checkpoint", layers, {n for n, _, m in layers if claims and
                                               not m.all()}, "mask", notes,
                  {**run.model.named_parameters(), **run.model.named_buffers()},
                  model=run.config.get("model"), model_line=run_note(run),
                  mask_source="the run's masks (DynamicSparsity)")


def check_dense_size(path, name, shape):
    """Refuse (ValueError, one line) a layer whose dense form would hold more than
    MAX_DENSE_WEIGHTS weights, before the audit allocates it."""
    size = math.prod(shape)
    if size > MAX_DENSE_WEIGHTS:
        raise ValueError(f"{path}: {name} of shape {'x'.join(map(str, shape))} is too large "
                         f"to audit: its dense form holds {size} weights ({4 * size / 2**30:.1f} "
                         f"GiB as float32), and the audit holds each layer densely, at most "
                         f"{MAX_DENSE_WEIGHTS} weights")


def run_note(run):
    """One line on what a loaded run (checkpoint.load_model) is."""
    return (f"{run.config.get('model')} trained with method {run.config.get('method')!r} "
            f"at sparsity {run.config.get('sparsity')}")


SCIPY_NOTE = "a scipy.sparse matrix: rows are neurons, stored entries the mask"


def _condensed_file(path):
    from .inference.condensed import CondensedConv2d, CondensedLinear
    from .inference.condensed_model import DenseConv2d, DenseLinear, load

    model = load(path)
    layers, claimed = [], set()
    for where, stage in model.named_stages():   # residual bodies, gates, attention too
        name = f"stage{where}"
        if isinstance(stage, (CondensedLinear, CondensedConv2d)):
            check_dense_size(path, name, stage.shape)
            weight = stage.to_dense()
            mask = np.zeros(weight.shape[0:1] + (int(np.prod(weight.shape[1:])),), bool)
            mask[np.asarray(stage.active)[:, None], np.asarray(stage.indices)] = True
            layers.append((name, weight, mask.reshape(weight.shape)))
            claimed.add(name)
        elif isinstance(stage, (DenseLinear, DenseConv2d)):
            layers.append((name, stage.weight, None))
    notes = ["a condensed model: condensed layers hold their active neurons only "
             "(ablated ones were removed when it was condensed)"]
    return Source(path, "condensed", layers, claimed, "stored entries", notes,
                  model="condensed", model_line=f"a condensed model of {len(model.stages)} "
                                                f"stages", mask_source="the stored entries")


def _scipy_file(path):
    import scipy.sparse

    from .formats.scipy_npz import load_sparse_npz

    matrix = load_sparse_npz(path)
    check_dense_size(path, "the matrix", matrix.shape)
    csr = scipy.sparse.csr_array(matrix)
    csr.sum_duplicates()
    weight = csr.toarray()
    mask = np.zeros(csr.shape, dtype=bool)
    mask[np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr)), csr.indices] = True
    return Source(path, "scipy", [("matrix", weight, mask)], set(), "stored entries",
                  [SCIPY_NOTE], model_line=SCIPY_NOTE, mask_source="the stored entries")


def _torch_file(path, arch=None):
    from .formats.importing import read_torch_checkpoint, sparse_weight_keys
    from .formats.model_map import identify

    imported = read_torch_checkpoint(path)
    state, masks = imported.state_dict, imported.masks
    # The authors' constant fan-in scheduler (SRigL) is RigLConstFanScheduler.
    claims = imported.meta.get("pruner_class") == "RigLConstFanScheduler"
    # A weighted layer without a mask is dense: every weight counts, an exact 0 too.
    layers = [(key, state[key], masks[key] if key in masks else np.ones(state[key].shape, bool))
              for key in sparse_weight_keys(state)]
    layers += [(key, state[key], mask) for key, mask in masks.items()
               if key not in {name for name, _, _ in layers}]
    structure = "weight != 0" if imported.mask_source == "zeros" else "mask"
    layout = identify(state, arch=arch)
    line = layout.describe() + (f" (named by --arch {arch})" if arch and layout.name else "")
    return Source(path, "torch", layers, set(masks) if claims else set(), structure,
                  list(imported.notes) + list(layout.notes), state, model=layout.name,
                  model_line=line, mask_source=TORCH_MASK_SOURCES[imported.mask_source])


def audit_layer(name, weight, mask=None, *, claimed=False):
    """One layer's audit as a dict of plain values (JSON-ready).

    weight: (n_out, *fan_in_dims); mask: bool of that shape, or None (then the structure
    is ``weight != 0``); claimed: the source says this layer has constant fan-in.
    Keys: layer, shape, size, nnz, sparsity, structure, neurons, active_neurons,
    ablated (indices of neurons without weights), constant_fan_in, k (the fan-in when
    constant, else None), fan_in_range ([min, max] over active neurons), zeros_in_mask,
    outside_mask (non-zero weights outside the mask), claimed, violations ([{kind,
    neuron, count, message}]: every broken invariant, fan-in judged against the most
    common count, and "not_finite" for NaN or infinite weights), ok (False when a
    claimed layer breaks an invariant or is ragged, and for any layer with a NaN or
    infinite weight).
    """
    weight = np.asarray(weight)
    structure = "mask" if mask is not None else "weight != 0"
    if mask is None:
        mask = weight != 0
    n = weight.shape[0]
    rows, row_mask = weight.reshape(n, -1), np.asarray(mask).reshape(n, -1)
    counts = row_mask.sum(axis=1)
    live = counts[counts > 0]
    constant = np.unique(live).size <= 1
    violations = [{"kind": v.kind, "neuron": v.neuron, "count": v.count,
                   "message": v.message}
                  for v in dst.invariant_violations(weight, np.asarray(mask), fan_in="infer",
                                                    ablated="infer")]
    bad = _first_not_finite(rows)
    if bad is not None:
        total, (neuron, column), value = bad
        violations.append({"kind": "not_finite", "neuron": neuron, "count": total,
                           "message": f"{total} weights are NaN or infinite; first at "
                                      f"neuron {neuron}, input {column}: {value!r}"})
    nnz = int(row_mask.sum())
    return {
        "layer": name, "shape": list(weight.shape), "size": int(weight.size), "nnz": nnz,
        "sparsity": 1.0 - nnz / weight.size if weight.size else 0.0,
        "structure": structure, "neurons": int(n), "active_neurons": int(live.size),
        "ablated": np.flatnonzero(counts == 0).tolist(),
        "constant_fan_in": bool(constant), "k": int(live[0]) if constant and live.size else None,
        "fan_in_range": [int(live.min()), int(live.max())] if live.size else [0, 0],
        "zeros_in_mask": int((row_mask & (rows == 0)).sum()),
        "outside_mask": int(((rows != 0) & ~row_mask).sum()),
        "claimed": bool(claimed),
        "violations": violations,
        "ok": bad is None and not (claimed and (violations or not constant)),
    }


def _first_not_finite(array):
    """(count, index of the first, its value) of the NaN and infinite values of a float
    array; None when every value is finite (or it holds no floats)."""
    array = np.asarray(array)
    if array.dtype.kind != "f":
        return None
    bad = ~np.isfinite(array)
    if not bad.any():
        return None
    index = np.unravel_index(int(np.argmax(bad)), array.shape)
    return (int(np.count_nonzero(bad)), tuple(int(i) for i in index),
            float(array[index]))


def not_finite(source, audits=()):
    """The NaN and infinite values of the source's arrays that ``audits`` (the layer
    audits) do not already report, as [{array, count, size, index, message}] (JSON-ready):
    the dense layers audit_source leaves out, biases and normalisation statistics.
    condense refuses a model with any of them."""
    audited = {a["layer"] for a in audits}
    problems = []
    for name, array in {**source.arrays, **{n: w for n, w, _ in source.layers}}.items():
        bad = None if name in audited else _first_not_finite(array)
        if bad is not None:
            total, index, value = bad
            size = int(np.asarray(array).size)
            problems.append({"array": name, "count": total, "size": size,
                             "index": list(index),
                             "message": f"{name}: {total} of {size} values are NaN or "
                                        f"infinite; first at index {list(index)}: {value!r}"})
    return problems


def audit_source(source):
    """Audits of the source's sparse layers (a layer with every weight in its mask is
    dense and left out), in the source's order."""
    audits = []
    for name, weight, mask in source.layers:
        if mask is not None and np.asarray(mask).all() or mask is None and not (
                np.asarray(weight) == 0).any():
            continue
        audits.append(audit_layer(name, weight, mask, claimed=name in source.claimed))
    return audits


def layer_summary(name, weight, mask=None):
    """One weighted layer, dense or sparse, as the model summary counts it (JSON-ready).

    Keys: layer, shape, size, nnz, neurons, active_neurons, active_percent, dense (every
    weight in the mask), fan_in (the dense fan-in, weights per row), k (the fan-in of
    every active row, or None when they differ), k_most_common (the most common active
    fan-in; ties: the larger), fan_in_range ([min, max] over active rows),
    constant_fan_in, off_rows (active rows whose fan-in is not k_most_common),
    first_off_row (the first of them, or None). A row is a neuron; one without
    weights is ablated, not active.
    """
    weight = np.asarray(weight)
    mask = weight != 0 if mask is None else np.asarray(mask)
    n = weight.shape[0]
    rows = mask.reshape(n, math.prod(weight.shape[1:]))   # (0, fan_in) too
    counts = np.count_nonzero(rows, axis=1)
    live = counts[counts > 0]
    if live.size:
        values, times = np.unique(live, return_counts=True)
        most_common = int(values[times == times.max()].max())
    else:
        most_common = 0
    off = np.flatnonzero((counts > 0) & (counts != most_common))
    return {
        "layer": name, "shape": list(weight.shape), "size": int(weight.size),
        "nnz": int(counts.sum()), "neurons": int(n), "active_neurons": int(live.size),
        "active_percent": 100.0 * live.size / n if n else 0.0,
        "dense": bool(rows.all()), "fan_in": int(rows.shape[1]),
        "k": most_common if live.size and not off.size else None,
        "k_most_common": most_common,
        "fan_in_range": [int(live.min()), int(live.max())] if live.size else [0, 0],
        "constant_fan_in": not off.size, "off_rows": int(off.size),
        "first_off_row": int(off[0]) if off.size else None,
    }


def summarise_model(source):
    """The source's model as a whole (JSON-ready): name, description (``model_line``),
    mask_source, weighted_layers, sparse_layers, dense_layers, neurons, active_neurons,
    active_percent, size, nnz, sparsity over every weighted layer; layers (each
    ``layer_summary``, in the source's order); not_constant (the sparse layers whose
    active rows differ in fan-in: layer, fan_in_range, k_most_common, off_rows,
    first_off_row, active_neurons) and constant_fan_in (no such layer)."""
    layers = [layer_summary(name, weight, mask) for name, weight, mask in source.layers]
    neurons = sum(layer["neurons"] for layer in layers)
    active = sum(layer["active_neurons"] for layer in layers)
    size, nnz = sum(layer["size"] for layer in layers), sum(layer["nnz"] for layer in layers)
    not_constant = [{key: layer[key] for key in ("layer", "fan_in_range", "k_most_common",
                                                 "off_rows", "first_off_row",
                                                 "active_neurons")}
                    for layer in layers if not layer["constant_fan_in"]]
    dense = sum(layer["dense"] for layer in layers)
    return {
        "name": source.model, "description": source.model_line,
        "mask_source": source.mask_source, "weighted_layers": len(layers),
        "sparse_layers": len(layers) - dense, "dense_layers": dense,
        "neurons": neurons, "active_neurons": active,
        "active_percent": 100.0 * active / neurons if neurons else 0.0,
        "size": size, "nnz": nnz, "sparsity": 1.0 - nnz / size if size else 0.0,
        "constant_fan_in": not not_constant, "not_constant": not_constant,
        "layers": layers,
    }


def format_model(summary, *, dense_shown=6):
    """The model summary as short lines: the model, its masks, active neurons in all,
    the dense layers, and one line per layer that is not constant fan-in."""
    lines = [f"model: {summary['description'] or 'unknown'}",
             f"masks: from {summary['mask_source']}",
             f"active neurons: {summary['active_neurons']} of {summary['neurons']} "
             f"({summary['active_percent']:.1f}%) in {summary['weighted_layers']} weighted "
             f"layers ({summary['sparse_layers']} sparse, {summary['dense_layers']} dense); "
             f"weights {summary['nnz']} of {summary['size']} "
             f"({100 * summary['sparsity']:.1f}% sparse)"]
    dense = [f"{layer['layer']} (k={layer['fan_in']})" for layer in summary["layers"]
             if layer["dense"]]
    if dense:
        more = f", and {len(dense) - dense_shown} more" if len(dense) > dense_shown else ""
        lines.append(f"dense layers: {', '.join(dense[:dense_shown])}{more}")
    if summary["constant_fan_in"]:
        lines.append("fan-in: constant in every sparse layer")
        return lines
    lines.append(f"fan-in: not constant in {len(summary['not_constant'])} of "
                 f"{summary['sparse_layers']} sparse layers")
    for layer in summary["not_constant"]:
        low, high = layer["fan_in_range"]
        lines.append(f"  {layer['layer']}: fan-in {low}-{high}; {layer['off_rows']} of "
                     f"{layer['active_neurons']} active rows are not at k="
                     f"{layer['k_most_common']} (first: row {layer['first_off_row']})")
    return lines


def format_audits(audits):
    """A table of the layer audits, then one line per violation."""
    if not audits:
        return "no sparse layers"
    rows = [{
        "layer": a["layer"], "shape": "x".join(map(str, a["shape"])),
        "nnz": str(a["nnz"]), "sparsity": f"{100 * a['sparsity']:.1f}%",
        "fan-in": (f"k={a['k']}" if a["constant_fan_in"] else
                   "ragged {}-{}".format(*a["fan_in_range"])),
        "active": f"{a['active_neurons']}/{a['neurons']} "
                  f"({100 * a['active_neurons'] / a['neurons']:.0f}%)",
        "zeros in mask": str(a["zeros_in_mask"]), "outside mask": str(a["outside_mask"]),
        "structure": a["structure"], "claim": "constant fan-in" if a["claimed"] else "-",
        "check": "ok" if a["ok"] else "VIOLATED"} for a in audits]
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns),
             "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in rows]
    for a in audits:
        lines += [f"{a['layer']}: {v['message']}" for v in a["violations"]]
    return "\n".join(lines)
