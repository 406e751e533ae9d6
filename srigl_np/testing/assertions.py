"""Assertion helpers that report every broken invariant of a layer, or of one update, at
once: ``assert_constant_fan_in``, ``assert_valid_update`` and ``update_violations``,
built on ``dst.invariant_violations``."""

import math

import numpy as np

from .. import dst
from .reference import _check_choice

__all__ = ["assert_constant_fan_in", "assert_valid_update", "update_violations"]


def assert_constant_fan_in(weight, mask, fan_in="infer", ablated="infer", *, budget=None,
                           sparsity=None, layer=""):
    """Raise dst.InvariantError listing every invariant the layer breaks, else return.

    weight: (n, *fan_in_dims), mask: same shape, bool. By default the fan-in is the most
    common count and the ablated neurons are those with no weight (pass integers / index
    sequences to require specific ones); ``budget`` (or ``sparsity``, which gives it)
    adds the budget check. See dst.invariant_violations for the checks.
    """
    if sparsity is not None:
        if budget is not None:
            raise ValueError("pass budget or sparsity, not both")
        budget = dst.layer_budget(weight.shape, sparsity)
    dst.check_invariants(weight, mask, fan_in, ablated, layer=layer, budget=budget)


def update_violations(before, after, *, method="srigl", sparsity=None, drop_fraction=None):
    """Every rule one update breaks, as a list of dst.Violation (empty: a valid update).

    before: the layer before, ``(weight, mask)`` or an object with ``.weight``, ``.mask``;
    after: the same for the layer after, e.g. a dst.UpdateResult (its ``fan_in``,
    ``ablated``, ``pruned`` and ``grown``, when present, are checked too). Checks:
    * the layer after: dst.invariant_violations with its fan-in and ablated neurons
      (inferred when not given; method "srigl" only), and with ``sparsity`` the budget;
    * "kept_weight": a position in both masks keeps its old value;
    * "grown_weight": a position new to the mask starts at 0;
    * "pruned_record" / "grown_record": ``after.pruned`` / ``after.grown`` are exactly
      old & ~new / new & ~old;
    * RigL/SET ("rigl", "set"): "nnz": nnz is unchanged; with ``drop_fraction``,
      "pruned_count": at most n_prune positions left the mask, n_prune =
      n_ones - min(n_ones - floor(n_ones*drop_fraction), non-zero active weights);
    * SRigL with ``drop_fraction``: "kept_by_magnitude": every neuron active after keeps
      the min(k, m_i) largest |W| of its m_i weights among step 1's n_keep largest
      (dst.magnitude_keep; ties: the lower index). Its pruned count is not bounded by
      n_prune: the per-neuron cap and ablation prune more, by design.
    """
    _check_choice("method", method, ("srigl", "rigl", "set"))
    weight, mask = _weight_and_mask("before", before)
    new_weight, new_mask = _weight_and_mask("after", after)
    if new_weight.shape != weight.shape:
        raise ValueError(f"after must have the shape of before {weight.shape}, got "
                         f"{new_weight.shape}")
    budget = None if sparsity is None else dst.layer_budget(weight.shape, sparsity)
    if method == "srigl":
        fan_in = getattr(after, "fan_in", None)
        ablated = getattr(after, "ablated", None)
        violations = dst.invariant_violations(
            new_weight, new_mask, "infer" if fan_in is None else fan_in,
            "infer" if ablated is None else ablated, budget=budget)
    else:
        violations = dst.invariant_violations(new_weight, new_mask)

    n = weight.shape[0]
    kept, grown = mask & new_mask, new_mask & ~mask
    changed = kept & (new_weight != weight)
    violations += _position_violations(
        "kept_weight", changed, n, lambda i: f"before {weight.flat[i].item()!r}, after "
                                             f"{new_weight.flat[i].item()!r}",
        "kept weights changed value")
    violations += _position_violations(
        "grown_weight", grown & (new_weight != 0), n,
        lambda i: repr(new_weight.flat[i].item()),
        "grown weights are non-zero (a new weight starts at 0)")
    for name, expected in (("pruned", mask & ~new_mask), ("grown", grown)):
        record = getattr(after, name, None)
        if record is not None:
            wrong = np.asarray(record).astype(bool).reshape(weight.shape) != expected
            violations += _position_violations(
                f"{name}_record", wrong, n, lambda i, e=expected: f"expected {bool(e.flat[i])}",
                f"positions of after.{name} are wrong")

    if method == "srigl" and drop_fraction is not None:
        violations += _kept_by_magnitude(weight, mask, new_mask, drop_fraction,
                                         getattr(after, "fan_in", None))
    if method != "srigl":
        nnz_before, nnz_after = int(mask.sum()), int(new_mask.sum())
        if nnz_after != nnz_before:
            violations.append(dst.Violation(
                "nnz", None, nnz_before, nnz_after, 1,
                f"nnz changed from {nnz_before} to {nnz_after}, expected it unchanged"))
        if drop_fraction is not None:
            n_ones = nnz_before
            nonzero = int(np.count_nonzero(mask & (weight != 0)))
            n_prune = n_ones - min(n_ones - math.floor(n_ones * drop_fraction), nonzero)
            n_pruned = int(np.count_nonzero(mask & ~new_mask))
            if n_pruned > n_prune:
                violations.append(dst.Violation(
                    "pruned_count", None, f"<= {n_prune}", n_pruned, 1,
                    f"{n_pruned} positions left the mask, expected at most n_prune = "
                    f"{n_prune} (drop_fraction {drop_fraction}, {n_ones} ones)"))
    return violations


def assert_valid_update(before, after, *, method="srigl", sparsity=None, drop_fraction=None,
                        layer=""):
    """Raise dst.InvariantError listing every rule the update breaks (update_violations),
    one line each, prefixed by ``layer``; its ``violations`` holds the records."""
    violations = update_violations(before, after, method=method, sparsity=sparsity,
                                   drop_fraction=drop_fraction)
    if violations:
        where = f"layer {layer!r}: " if layer else ""
        raise dst.InvariantError("\n".join(where + v.message for v in violations), violations)


def _kept_by_magnitude(weight, mask, new_mask, drop_fraction, fan_in):
    """SRigL's "kept_by_magnitude" records (see update_violations); k is ``fan_in``, else
    the most common count of the neurons active after."""
    n = weight.shape[0]
    rows, row_mask = weight.reshape(n, -1), mask.reshape(n, -1)
    new_rows = new_mask.reshape(n, -1)
    dst.check_update_args(weight, mask, None, drop_fraction)
    counts_after = new_rows.sum(axis=1)
    active = counts_after > 0
    if not active.any():
        return []
    if fan_in is None:
        fan_in = int(np.bincount(counts_after[active]).argmax())
    keep = dst.magnitude_keep(rows, row_mask, drop_fraction).keep
    required = np.where(active, np.minimum(keep.sum(axis=1), fan_in), 0)
    largest = dst.top_per_row(np.where(keep, np.abs(rows), -np.inf), required)
    return _position_violations(
        "kept_by_magnitude", (largest & ~new_rows).reshape(weight.shape), n,
        lambda i: f"|W| {abs(weight.flat[i].item())!r}",
        f"weights among the n_keep largest |W| (drop_fraction {drop_fraction}) left a "
        f"neuron active at fan-in {fan_in}")


def _weight_and_mask(name, layer):
    """(weight, mask) as NumPy arrays from a (weight, mask) pair or a .weight/.mask object."""
    if hasattr(layer, "weight") and hasattr(layer, "mask"):
        weight, mask = layer.weight, layer.mask
    else:
        try:
            weight, mask = layer
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a (weight, mask) pair or have .weight and "
                            f".mask, got {type(layer).__name__}") from None
    weight, mask = np.asarray(weight), np.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"{name}: the mask must be bool, got {mask.dtype} (pairs are "
                        f"(weight, mask))")
    if mask.shape != weight.shape:
        raise ValueError(f"{name}: mask shape {mask.shape} differs from weight shape "
                         f"{weight.shape}")
    return weight, mask


def _position_violations(kind, wrong, n, detail, what):
    """[] or one Violation for the positions flagged in ``wrong`` (weight-shaped bool)."""
    flat = np.flatnonzero(wrong)
    if not flat.size:
        return []
    first = int(flat[0])
    neuron, column = divmod(first, wrong.size // n)
    return [dst.Violation(kind, neuron, None, detail(first), flat.size,
                          f"{flat.size} {what}; first at neuron {neuron}, input {column}: "
                          f"{detail(first)}")]
