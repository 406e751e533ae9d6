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

``audit_layer`` then reports, per layer: shape, nnz, sparsity, whether the fan-in is
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
    shape (n_out, *fan_in_dims) as NumPy; claimed: names that claim constant fan-in;
    structure: where the masks came from; notes: sentences for the report; arrays:
    {name: array} of every array the source holds (weights, biases, normalisation
    statistics), checked for NaN and infinity by ``not_finite``."""
    path: str
    kind: str
    layers: list
    claimed: set
    structure: str
    notes: list
    arrays: dict = dataclasses.field(default_factory=dict)


def open_source(path):
    """The Source at ``path`` (see the module docstring); ValueError, one line, when the
    path is missing or its contents are none of the known kinds."""
    path = os.fspath(path)
    kind = source_kind(path)
    if kind == "run":
        source = _our_checkpoint(os.path.join(path, "checkpoint.npz"))
        source.kind, source.path = "run", path
        return source
    return {"condensed": _condensed_file, "checkpoint": _our_checkpoint,
            "scipy": _scipy_file, "torch": _torch_file}[kind](path)


def _our_checkpoint(path):
    from .formats.checkpoint import load_model

    run = load_model(path)
    claims = run.config.get("method") == "srigl"
    params = run.model.named_parameters()
    layers = [(name, params[name], mask) for name, mask in run.masks.items()]
    notes = [run_note(run)]
    return Source(path, "checkpoint", layers, {n for n, _, m in layers if claims and
                                               not m.all()}, "mask", notes,
                  {**run.model.named_parameters(), **run.model.named_buffers()})


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
    return Source(path, "condensed", layers, claimed, "stored entries", notes)


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
                  [SCIPY_NOTE])


def _torch_file(path):
    from .formats.importing import read_torch_checkpoint

    imported = read_torch_checkpoint(path)
    # The authors' constant fan-in scheduler (SRigL) is RigLConstFanScheduler.
    claims = imported.meta.get("pruner_class") == "RigLConstFanScheduler"
    layers = [(key, imported.state_dict[key], mask) for key, mask in imported.masks.items()]
    structure = "weight != 0" if imported.mask_source == "zeros" else "mask"
    return Source(path, "torch", layers, {n for n, _, _ in layers} if claims else set(),
                  structure, list(imported.notes), imported.state_dict)


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


def format_audits(audits):
    """A table of the layer audits, then one line per violation."""
    if not audits:
        return "no sparse layers"
    rows = [{
        "layer": a["layer"], "shape": "x".join(map(str, a["shape"])),
        "nnz": str(a["nnz"]), "sparsity": f"{100 * a['sparsity']:.1f}%",
        "fan-in": (f"k={a['k']}" if a["constant_fan_in"] else
                   "ragged {}-{}".format(*a["fan_in_range"])),
        "active": f"{a['active_neurons']}/{a['neurons']}",
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
