"""The reference update of the conformance kit, in either reading (``srigl_reference``).

"srigl_np" is ``dst.srigl_update`` itself; "authors" runs dst's own steps
(``srigl_np.dst.steps``) with the authors' rules of ``srigl_np.dst.authors`` for step 2
(the γ_sal threshold, the fewest and most active neurons) and step 3 (the fan-in). See
the package notes for the table of rules.
"""

import numpy as np

from .. import dst
from ..dst import authors

__all__ = ["METHODS", "READINGS", "reference_update", "srigl_reference"]

READINGS = ("srigl_np", "authors")
METHODS = ("srigl", "rigl")


def srigl_reference(weight, mask, grad, *, drop_fraction, sparsity, gamma_sal=0.3,
                    ablation=True, reading="srigl_np", trace=False):
    """``dst.srigl_update`` under ``reading`` (see the module notes): "srigl_np" is
    dst.srigl_update itself, "authors" swaps in the authors' γ_sal threshold, minimum
    number of active neurons and fan-in rule. Returns a dst.UpdateResult; ``trace=True``
    fills its ``trace`` (a dst.UpdateTrace: n_keep, n_prune, salient counts, threshold,
    k, ...) in either reading."""
    _check_choice("reading", reading, READINGS)
    kwargs = dict(drop_fraction=drop_fraction, sparsity=sparsity, gamma_sal=gamma_sal,
                  ablation=ablation, trace=trace)
    if reading == "srigl_np":
        return dst.srigl_update(weight, mask, grad, **kwargs)
    return _srigl_by_reading(weight, mask, grad, reading=reading, **kwargs)


def reference_update(inputs, *, method="srigl", reading="srigl_np", trace=False):
    """The reference result for ``UpdateInputs``: srigl_reference, or dst.rigl_update
    (``trace=True``: with its dst.UpdateTrace)."""
    _check_choice("method", method, METHODS)
    if method == "rigl":
        if reading != "srigl_np":
            raise ValueError(f"reading {reading!r} applies to method 'srigl' only")
        return dst.rigl_update(inputs.weight, inputs.mask, inputs.grad,
                               trace=trace, **inputs.kwargs("rigl"))
    return srigl_reference(inputs.weight, inputs.mask, inputs.grad, reading=reading,
                           trace=trace, **inputs.kwargs("srigl"))



def _srigl_by_reading(weight, mask, grad, *, drop_fraction, sparsity, gamma_sal, ablation,
                      reading, trace=False):
    """dst.srigl_update's steps, with step 2's rule and step 3's fan-in under ``reading``.

    Every ranking and tie-break is dst's (the same step functions); only the numbers of
    ``_ablation_rule`` and ``_fan_in`` depend on the reading.
    """
    rows, row_mask, row_grad = dst.check_update_args(weight, mask, grad, drop_fraction,
                                                     sparsity=sparsity, gamma_sal=gamma_sal)
    grow_score = np.abs(row_grad)
    kept = dst.magnitude_keep(rows, row_mask, drop_fraction)
    rule = (_ablation_rule(reading, weight.shape, sparsity, kept.n_ones, gamma_sal)
            if ablation else None)
    neurons = dst.ablate(kept, grow_score, rule)
    fan_in = _fan_in(reading, weight.shape, sparsity, neurons.active)
    cap = dst.cap_fan_in(rows, kept, neurons.active, fan_in)
    growth = dst.regrow(grow_score, row_mask, cap, neurons.active, fan_in)
    steps = None
    if trace:
        budget = dst.layer_budget(weight.shape, sparsity)
        k = dst.NewFanIn(budget, budget // rows.shape[0], int(neurons.active.sum()),
                               fan_in)
        steps = dst.UpdateTrace("srigl", drop_fraction, kept, growth, gamma_sal, neurons, k,
                                cap)
    return dst.update_result(weight, mask, growth.mask, growth.regrown,
                             ablated=neurons.ablated, fan_in=fan_in, trace=steps)


def _ablation_rule(reading, shape, sparsity, nnz, gamma_sal):
    """Step 2's dst.AblationRule under ``reading`` (None: no ablation)."""
    n, dense_fan_in = shape[0], int(np.prod(shape[1:]))
    if reading == "srigl_np":
        return dst.ablation_rule(n, dense_fan_in, dst.layer_budget(shape, sparsity), gamma_sal)
    return authors.ablation_rule(n, dense_fan_in, nnz, gamma_sal)


def _fan_in(reading, shape, sparsity, active):
    """Step 3's fan-in under ``reading``; the authors' clipped to F (their fallback when
    k > F, re-ablating neurons, is not modelled: the package notes)."""
    n, dense_fan_in = shape[0], int(np.prod(shape[1:]))
    n_active = int(active.sum())
    if reading == "srigl_np":
        return dst.fan_in_of_budget(dst.layer_budget(shape, sparsity), n_active, dense_fan_in)
    return min(dense_fan_in, authors.fan_in(shape, sparsity, n - n_active))


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, "
                         f"got {value!r}")
