"""Dynamic sparse training as pure functions: masks, layer sparsities, schedule, updates.

Every function here depends only on its arguments and never writes into them; the state
(masks, ablated neurons, optimizer buffers) lives in ``srigl_np.sparsity.DynamicSparsity``.

Conventions shared by every function (and by tests/test_dst.py)
----------------------------------------------------------------
* A weight of shape ``(n, *fan_in_dims)`` is a matrix of ``n`` neurons (rows) by
  ``F = prod(fan_in_dims)`` dense fan-in: a Linear weight ``(out, in)`` has ``F = in``, a
  Conv2d weight ``(out, in, kh, kw)`` has one row per filter, ``F = in*kh*kw``. Results
  come back in the original shape.
* The budget of a layer is ``layer_budget(shape, s) = floor(N*(1 - s))``, ``N = n*F``.
* "Top r by score" picks the r largest scores; at equal score the lower flat index wins
  (inside one row: the lower column). Rankings are deterministic, so the updates are too.
* Fan-in is never 0: ``k = min(F, max(1, floor(budget / n_active)))``. A layer whose
  budget is smaller than its neuron count therefore keeps one weight per neuron without
  ablation (nnz = n > budget), and ablates down to ``budget`` neurons with it.
* Where these rules (and the others of srigl_update) depart from the authors' code, and
  why: docs/tutorial.md, "Where srigl_np departs", which also works the updates below
  through by hand as doctests.

Devices: the updates and check_invariants also accept CuPy arrays. They copy them to
the host, compute with NumPy, and return the weight-shaped results (mask, weight,
pruned, grown, regrown) on the input's device; ``ablated`` stays a host index array and
a ``trace`` holds host arrays. An update runs once per layer every ΔT steps, so the
copies cost little, and one implementation of the rankings and tie-breaks gives the
same masks on both devices.

SRigL is Lasby et al., "Dynamic Sparse Training with Structured Sparsity" (ICLR 2024,
arXiv 2305.02299), §4; RigL is Evci et al. (ICML 2020); SET is Mocanu et
al. (2018).
"""

import functools
import math
from dataclasses import dataclass, replace

import numpy as np

from .backend import is_cupy_array, on_device_of, to_numpy
from .validation import FLOATING, check_array

__all__ = [
    "InvariantError", "UpdateResult", "UpdateTrace", "Violation", "check_invariants",
    "constant_fan_in_mask", "cosine_drop_fraction", "erk_sparsities",
    "fan_in_after_ablation", "invariant_violations", "layer_budget", "random_mask",
    "rigl_update", "set_update", "srigl_update", "uniform_sparsities",
]


@dataclass(frozen=True)
class Violation:
    """One broken invariant of a layer, as ``invariant_violations`` reports it.

    kind:     "outside_mask" (a non-zero weight where the mask is False), "ablated_active"
              (a neuron listed as ablated holds weights), "no_active_neuron" (every neuron
              is ablated), "fan_in" (an active neuron's count differs from the fan-in) or
              "budget" (nnz outside the budget's range).
    neuron:   the first (lowest) offending neuron, None for a layer-wide violation.
    expected: what that neuron (or the layer) should have: 0, the fan-in, a range text.
    got:      what it has: a weight value, a count, nnz.
    count:    how many weights ("outside_mask") or neurons (the others) offend.
    message:  one line naming all of the above, without the layer name.
    """

    kind: str
    neuron: int | None
    expected: object
    got: object
    count: int
    message: str


class InvariantError(AssertionError):
    """A sparse layer breaks an invariant (constant fan-in, ablation, mask, budget).

    An AssertionError because it reports a broken internal guarantee, not a bad
    argument; unlike a bare ``assert`` it is raised under ``python -O`` too.
    ``violations`` holds the ``Violation`` records behind the message (empty when the
    error was raised with a message only).
    """

    def __init__(self, message="", violations=()):
        super().__init__(message)
        self.violations = list(violations)


@dataclass(frozen=True, eq=False)
class UpdateTrace:
    """The decisions of one update, step by step: ``srigl_update(..., trace=True)``.

    Recorded by the update itself on its own code path (no second implementation), so
    every number here is the one that made the result. Host NumPy arrays; ``(n,)`` is
    one entry per neuron, ``(n, F)`` one per weight, rows as in the module conventions.
    A field that is not part of a method (ablation for RigL/SET, the cap without
    SRigL) is None.

    method:        "srigl", "rigl" or "set"; drop_fraction: the update's argument.
    Step 1, prune by magnitude (every method):
    n_ones:        nnz of the old mask; n_prune = n_ones - n_keep, n_keep =
                   min(n_ones - floor(n_ones*drop_fraction), n_nonzero).
    n_nonzero:     active weights that are non-zero, the only ones magnitude can keep.
    kept_by_magnitude: bool (n, F), the n_keep largest |W| layer-wide (before ablation
                   and the cap; SRigL's saliency counts these).
    budget, k0:    layer_budget(shape, sparsity) and floor(budget/n) (SRigL).
    gamma_sal:     the argument (SRigL).
    Step 2, saliency and ablation (SRigL with ablation; None with ablation=False):
    salient:       bool (n, F), kept_by_magnitude united with the n_prune largest |G|.
    salient_counts: int64 (n,), salient weights per neuron.
    threshold:     max(1, floor(gamma_sal*k0)), the salient weights a neuron needs.
    threshold_used: the threshold applied: lowered to the min_active-th largest count
                   when fewer than min_active neurons reach ``threshold``.
    min_active, max_active: min(n, floor(budget/F) + 1) and max(1, budget), the fewest
                   and the most neurons that stay active (see docs/tutorial.md, "Where
                   srigl_np departs").
    Steps 3-5:
    active:        bool (n,), the neurons that stay (SRigL; all True without ablation).
    fan_in:        the new constant fan-in k (SRigL).
    removed_by_cap: bool (n, F), kept weights a neuron over k dropped (its smallest
                   |W|) (SRigL).
    kept_counts:   int64 (n,), weights each neuron keeps from the old mask (after the cap).
    capped_counts: int64 (n,), weights the cap removed per neuron (SRigL).
    grown_counts:  int64 (n,), weights grown per neuron by |G| (SRigL: k - kept for an
                   active neuron) or at random (SET), regrown positions included.
    """

    method: str
    drop_fraction: float
    n_ones: int
    n_keep: int
    n_prune: int
    n_nonzero: int
    kept_by_magnitude: np.ndarray
    kept_counts: np.ndarray
    grown_counts: np.ndarray
    budget: int | None = None
    k0: int | None = None
    gamma_sal: float | None = None
    salient: np.ndarray | None = None
    salient_counts: np.ndarray | None = None
    threshold: int | None = None
    threshold_used: int | None = None
    min_active: int | None = None
    max_active: int | None = None
    active: np.ndarray | None = None
    fan_in: int | None = None
    removed_by_cap: np.ndarray | None = None
    capped_counts: np.ndarray | None = None

    @property
    def threshold_lowered(self):
        """True when the threshold was lowered to keep min_active neurons (None: no ablation)."""
        return None if self.threshold is None else self.threshold_used < self.threshold

    @property
    def ablated(self):
        """int64, the neurons not in ``active`` (empty without SRigL ablation)."""
        return (np.zeros(0, np.int64) if self.active is None
                else np.flatnonzero(~self.active).astype(np.int64))


@dataclass(frozen=True, eq=False)
class UpdateResult:
    """The outcome of one topology update; every array has the weight's shape.

    mask:    bool, the new mask.
    weight:  the new weight (input dtype): old values where kept, 0 elsewhere. A position
             dropped and grown back in the same update keeps its old value, as in the
             SRigL authors' code (only connections absent from the old mask start at 0).
    pruned:  bool, old mask & ~new mask.      grown: bool, new mask & ~old mask (all 0).
    ablated: int64, sorted indices of neurons with no weights (SRigL only, else empty).
    fan_in:  the constant fan-in k of the active neurons (SRigL), None for RigL/SET.
    regrown: bool, positions dropped (not kept by magnitude, or removed by ablation or the
             cap) and grown back in the same update: in both masks, so counted in neither
             ``pruned`` nor ``grown``, and they keep their old value. The updates always
             set it; None only in a result built by hand without it.
    trace:   an UpdateTrace with ``trace=True``, else None.
    """

    mask: np.ndarray
    weight: np.ndarray
    pruned: np.ndarray
    grown: np.ndarray
    ablated: np.ndarray
    fan_in: int | None
    regrown: np.ndarray | None = None
    trace: UpdateTrace | None = None


# -- budgets, masks and schedules ----------------------------------------------------

def layer_budget(shape, sparsity):
    """Weights a layer of ``shape`` may hold at ``sparsity``: floor(N*(1 - sparsity)).

    The floor forgives a 1e-9 relative rounding error, so 100 weights at sparsity 0.9
    give 10 (binary floating point computes 100*(1 - 0.9) = 9.999999999999998; the
    authors' code gives 9: docs/tutorial.md, "Where srigl_np departs").
    """
    _check_sparsity(sparsity)
    exact = math.prod(_check_shape(shape)) * (1.0 - sparsity)
    nearest = round(exact)
    return int(nearest) if abs(exact - nearest) <= 1e-9 * max(1.0, exact) else math.floor(exact)


def fan_in_after_ablation(shape, sparsity, n_ablated):
    """Constant fan-in with ``n_ablated`` of the ``n = shape[0]`` neurons ablated.

    floor(budget / (n - n_ablated)), clipped to [1, F] (see the module conventions; the
    clip only acts when budget < n - n_ablated, or on a dense layer). The floor of 1 is
    srigl_np's: see docs/tutorial.md, "Where srigl_np departs".
    """
    shape = _check_shape(shape)
    n_ablated = int(n_ablated)
    if not 0 <= n_ablated < shape[0]:
        raise ValueError(f"n_ablated must be in [0, {shape[0]}) for shape {shape}, "
                         f"got {n_ablated}")
    return _fan_in(layer_budget(shape, sparsity), shape[0] - n_ablated, math.prod(shape[1:]))


def _fan_in(budget, n_active, dense_fan_in):
    return min(dense_fan_in, max(1, budget // n_active))


def constant_fan_in_mask(shape, sparsity, rng, *, ablated=()):
    """Boolean mask of ``shape`` where every neuron not in ``ablated`` has k active inputs.

    shape: (n, *fan_in_dims); ablated: distinct neuron (row) indices in [0, n), fewer
    than n, that get no weights. k = fan_in_after_ablation(shape, sparsity,
    len(ablated)): the other neurons share the layer's budget. Each neuron's k inputs
    are drawn uniformly at random (without replacement) from its F, independently per
    neuron. Returns bool of ``shape``.

    ``rng`` draws the same (n, F) keys whatever ``ablated`` is, and each neuron takes its
    k best: with ablated=() this is the mask SRigL starts from (paper §4), and ablating
    neurons changes the other rows only through k.
    """
    shape = _check_shape(shape)
    _check_rng(rng)
    n, dense_fan_in = shape[0], math.prod(shape[1:])
    ablated = _check_ablated(ablated, n)
    k = fan_in_after_ablation(shape, sparsity, ablated.size)
    counts = np.full(n, k)
    counts[ablated] = 0
    # The k smallest of F i.i.d. uniforms are a uniform random k-subset.
    keys = -rng.random((n, dense_fan_in))
    return _top_per_row(keys, counts).reshape(shape)


def random_mask(shape, sparsity, rng):
    """Unstructured boolean mask of ``shape`` with exactly layer_budget(shape, sparsity) ones.

    shape: (n, *fan_in_dims). The active positions are a uniform random subset of the
    N = n*F positions (the first ``budget`` of one permutation drawn from ``rng``), so
    the neurons' fan-ins vary: the start of the unstructured methods (static, SET,
    RigL). Returns bool of ``shape``.
    """
    shape = _check_shape(shape)
    _check_rng(rng)
    size = math.prod(shape)
    mask = np.zeros(size, dtype=bool)
    mask[rng.permutation(size)[:layer_budget(shape, sparsity)]] = True
    return mask.reshape(shape)


def cosine_drop_fraction(step, alpha, t_end):
    """Drop fraction at ``step``: alpha/2 * (1 + cos(pi*step/t_end)) (RigL eq. 1)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not t_end > 0:
        raise ValueError(f"t_end must be > 0, got {t_end}")
    if not 0 <= step <= t_end:
        raise ValueError(f"step must be in [0, t_end={t_end}], got {step}")
    return alpha / 2.0 * (1.0 + math.cos(math.pi * step / t_end))


# -- per-layer sparsities -----------------------------------------------------------

def uniform_sparsities(shapes, sparsity, dense_layers=()):
    """One sparsity for every layer not in ``dense_layers``, keeping the global budget.

    Layers listed in ``dense_layers`` (indices into ``shapes``) get 0.0; the rest share
    the sparsity s' that makes sum((1 - s_i)*N_i) = (1 - sparsity)*sum(N_i), i.e. the
    dense layers' weights come out of the others' budget. ValueError when the dense
    layers alone exceed the global budget. Returns a list of floats in layer order.
    """
    sizes, dense = _check_distribution_args(shapes, sparsity, dense_layers)
    rest = ~dense
    if sparsity == 0.0 or not rest.any():
        return [0.0] * len(sizes)
    rest_budget = _rest_budget(sizes, sparsity, dense)
    rest_sparsity = 1.0 - rest_budget / sizes[rest].sum()
    return np.where(dense, 0.0, rest_sparsity).tolist()


def erk_sparsities(shapes, sparsity, power_scale=1.0, dense_layers=()):
    """Erdős–Rényi-Kernel sparsities (RigL §3, ``get_sparsities_erdos_renyi``).

    Layer i gets density eps * ((sum(shape_i) / prod(shape_i)) ** power_scale), one eps
    solved so the global budget (1 - sparsity)*sum(N_i) is kept. While the densest layer
    would exceed density 1 it is made dense and eps is re-solved over the rest, exactly
    as RigL does. ``dense_layers`` are dense from the start; power_scale=0 gives uniform.
    Returns a list of floats in layer order.
    """
    sizes, dense = _check_distribution_args(shapes, sparsity, dense_layers)
    if not (math.isfinite(power_scale) and power_scale >= 0):
        raise ValueError(f"power_scale must be finite and >= 0, got {power_scale}")
    if sparsity == 0.0:
        return [0.0] * len(sizes)
    raw = np.array([(sum(s) / math.prod(s)) ** power_scale for s in shapes])
    while True:
        rest = ~dense
        if not rest.any():
            return [0.0] * len(sizes)
        eps = _rest_budget(sizes, sparsity, dense) / (raw[rest] * sizes[rest]).sum()
        if eps * raw[rest].max() <= 1.0:
            break
        # RigL densifies only the layers with the largest raw density, then re-solves.
        dense = dense | (rest & (raw == raw[rest].max()))
    density = np.where(dense, 1.0, eps * raw)
    return np.clip(1.0 - density, 0.0, np.nextafter(1.0, 0.0)).tolist()


def _rest_budget(sizes, sparsity, dense):
    budget = (1.0 - sparsity) * sizes.sum() - sizes[dense].sum()
    if budget <= 0:
        raise ValueError(f"dense_layers {np.flatnonzero(dense).tolist()} hold "
                         f"{int(sizes[dense].sum())} weights, no fewer than the global "
                         f"budget {(1.0 - sparsity) * sizes.sum():.0f} at sparsity {sparsity}")
    return budget


def _check_distribution_args(shapes, sparsity, dense_layers):
    _check_sparsity(sparsity)
    sizes = np.array([math.prod(_check_shape(s)) for s in shapes], dtype=np.float64)
    dense = np.zeros(len(sizes), dtype=bool)
    if isinstance(dense_layers, (str, bytes)) or not hasattr(dense_layers, "__iter__"):
        raise TypeError(f"dense_layers must be a sequence of layer indices, got "
                        f"{dense_layers!r}")
    for index in dense_layers:
        # A bool is an int to Python, but True as "layer 1" is a mask mistaken for indices.
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"dense_layers must hold integer layer indices (not booleans), "
                            f"got {index!r}")
        if not 0 <= index < len(sizes):
            raise ValueError(f"dense_layers must hold layer indices in [0, {len(sizes)}), "
                             f"got {index!r}")
        if dense[index]:
            raise ValueError(f"dense_layers must not repeat a layer index, got {index!r} "
                             f"twice")
        dense[index] = True
    return sizes, dense


# -- the updates -----------------------------------------------------------------------

def _host_round_trip(update):
    """Let a NumPy ``update(weight, mask, ...)`` take CuPy arrays (see the module notes)."""
    @functools.wraps(update)
    def wrapper(weight, mask, *args, **kwargs):
        if not is_cupy_array(weight):
            return update(weight, mask, *args, **kwargs)
        def host(a):
            return to_numpy(a) if is_cupy_array(a) else a
        result = update(weight.get(), host(mask), *map(host, args),
                        **{key: host(value) for key, value in kwargs.items()})
        return replace(result, **{field: on_device_of(getattr(result, field), weight)
                                  for field in ("mask", "weight", "pruned", "grown",
                                                "regrown")})
    return wrapper


@_host_round_trip
def srigl_update(weight, mask, grad, *, drop_fraction, sparsity, gamma_sal=0.3, ablation=True,
                 trace=False):
    """One SRigL topology update of one layer (paper §4).

    weight: (n, *fan_in_dims) float32/float64, 0 outside ``mask``; mask: same shape, bool;
    grad: same shape, the dense (unmasked) gradient. With N = n*F and
    budget = layer_budget(weight.shape, sparsity):

    1. n_ones = nnz(mask), n_prune = floor(n_ones*drop_fraction), n_keep = n_ones - n_prune;
       with fewer than n_keep non-zero active weights, all of those are kept.
    2. Saliency: top n_keep active weights by |W| united with the top n_prune positions by
       |G|, both layer-wide. A neuron with fewer than max(1, floor(gamma_sal*k0)) salient
       weights, k0 = floor(budget/n), is ablated; the threshold is lowered so the
       min(n, floor(budget/F) + 1) most salient neurons stay active (enough to hold the
       budget at fan-in <= F), and at most max(1, budget) neurons stay active (fan-in >= 1;
       ties: lower neuron index stays). Decided afresh each update, so neurons can return.
    3. k = fan_in_after_ablation(shape, sparsity, n_ablated).
    4. Keep the top n_keep active weights by |W| outside ablated neurons; a neuron with
       more than k keeps its k largest.
    5. Each active neuron grows its missing weights at its largest |G| among positions not
       kept (a position pruned in 4 may come back, with its old value: ``regrown``); new
       weights are 0.

    Afterwards every active neuron has exactly k weights and ablated neurons none.
    ``ablation=False`` keeps every neuron; the caller passes it for the output layer, which
    is never ablated (DynamicSparsity does). The k0 denominator, the fewest and most
    active neurons, the fan-in floor of 1 and the cap's choice are srigl_np's readings of
    §4: see docs/tutorial.md, "Where srigl_np departs". ``trace=True`` also records each
    step's numbers in ``result.trace`` (an UpdateTrace); the result is the same either way.
    Returns an UpdateResult; inputs are untouched.
    """
    rows, row_mask, row_grad = _check_update_args(weight, mask, grad, drop_fraction)
    _check_sparsity(sparsity)
    if not 0.0 <= gamma_sal <= 1.0:
        raise ValueError(f"gamma_sal must be in [0, 1], got {gamma_sal}")
    n, dense_fan_in = rows.shape
    budget = layer_budget(weight.shape, sparsity)
    index, magnitude = _keep_candidates(rows, row_mask)
    n_keep, n_prune = _keep_and_prune_counts(row_mask, index.size, drop_fraction)
    keep = _top_positions(index, magnitude, n_keep, rows.shape)
    grow_score = np.abs(row_grad)
    n_nonzero = index.size
    recorded = {}   # what trace=True reports, filled in as the steps run

    active = np.ones(n, dtype=bool)
    if ablation:
        top_grad = _top_per_row(grow_score.reshape(1, -1), np.array([n_prune]))
        salient = keep | top_grad.reshape(rows.shape)
        salient_counts = np.count_nonzero(salient, axis=1)
        threshold, min_active, max_active = _ablation_rule(n, dense_fan_in, budget, gamma_sal)
        active, threshold_used = _active_neurons(salient_counts, threshold, min_active,
                                                 max_active)
        if trace:
            recorded.update(salient=salient, salient_counts=salient_counts.astype(np.int64),
                            threshold=threshold, threshold_used=threshold_used,
                            min_active=min_active, max_active=max_active)
    fan_in = _fan_in(budget, int(active.sum()), dense_fan_in)
    if trace:
        recorded["kept_by_magnitude"] = keep.copy()

    if not active.all():
        # Step 4 ranks again without the ablated neurons, so their share of the n_keep
        # goes to the next-largest weights of active neurons.
        in_active = active[index // dense_fan_in]
        index, magnitude = index[in_active], magnitude[in_active]
        keep = _top_positions(index, magnitude, min(n_keep, index.size), rows.shape)
    kept_counts = np.count_nonzero(keep, axis=1)
    over = np.flatnonzero(kept_counts > fan_in)
    removed_by_cap = np.zeros(rows.shape, dtype=bool) if trace else None
    if over.size:
        # The cap keeps a neuron's k largest |W| (see docs/tutorial.md, "Where srigl_np
        # departs": the authors' code drops an arbitrary surplus).
        capped_score = np.where(keep[over], np.abs(rows[over]), -np.inf)
        capped = _top_per_row(capped_score, np.full(over.size, fan_in))
        if trace:
            removed_by_cap[over] = keep[over] & ~capped
        keep[over] = capped
        kept_counts[over] = fan_in

    new_mask = keep
    missing = np.where(active, fan_in - kept_counts, 0)
    short = np.flatnonzero(missing > 0)
    if short.size == n:   # the usual case: a slice avoids copying every row twice
        short = slice(None)
    regrown = np.zeros(rows.shape, dtype=bool)
    if missing.any():
        grow_score[keep] = -np.inf   # grow only where nothing is kept
        growth = _top_per_row(grow_score[short], missing[short])
        regrown[short] = growth & row_mask[short]
        new_mask[short] |= growth
    steps = None
    if trace:
        steps = UpdateTrace(
            method="srigl", drop_fraction=drop_fraction, n_ones=n_keep + n_prune,
            n_keep=n_keep, n_prune=n_prune, n_nonzero=int(n_nonzero),
            kept_counts=kept_counts.astype(np.int64), grown_counts=missing.astype(np.int64),
            budget=budget, k0=budget // n, gamma_sal=gamma_sal, active=active, fan_in=fan_in,
            removed_by_cap=removed_by_cap,
            capped_counts=np.count_nonzero(removed_by_cap, axis=1).astype(np.int64),
            **recorded)
    return _result(weight, mask, rows, row_mask, new_mask,
                   np.flatnonzero(~active).astype(np.int64), fan_in, regrown=regrown,
                   trace=steps)


@_host_round_trip
def rigl_update(weight, mask, grad, *, drop_fraction, trace=False):
    """One RigL update of one layer: drop the smallest |W|, grow the largest |G|.

    Steps 1 and 4 of srigl_update layer-wide without a per-neuron cap, then the top
    n_prune positions by |G| among those not kept are grown (a dropped one may come
    back: ``regrown``). nnz is unchanged. Shapes and dtypes as in srigl_update; fan_in
    is None. ``trace=True`` records steps 1 and 5 in ``result.trace``.
    """
    rows, row_mask, row_grad = _check_update_args(weight, mask, grad, drop_fraction)
    keep, n_keep, n_grow = _magnitude_keep(rows, row_mask, drop_fraction)
    grow_score = np.abs(row_grad)
    grow_score[keep] = -np.inf   # grow only where nothing is kept
    growth = _top_per_row(grow_score.reshape(1, -1), np.array([n_grow])).reshape(rows.shape)
    new_mask = keep | growth
    return _result(weight, mask, rows, row_mask, new_mask, np.zeros(0, np.int64), None,
                   regrown=growth & row_mask,
                   trace=_unstructured_trace("rigl", drop_fraction, rows, row_mask, keep,
                                             n_keep, n_grow, growth) if trace else None)


@_host_round_trip
def set_update(weight, mask, *, drop_fraction, rng, trace=False):
    """One SET update of one layer: drop the smallest |W|, grow uniformly at random.

    As rigl_update, but the n_prune grown positions are a uniform random subset of the
    positions not kept, drawn from ``rng`` (a numpy.random.Generator). nnz is unchanged.
    ``trace=True`` records steps 1 and 5 in ``result.trace``.
    """
    rows, row_mask, _ = _check_update_args(weight, mask, None, drop_fraction)
    _check_rng(rng)
    keep, n_keep, n_grow = _magnitude_keep(rows, row_mask, drop_fraction)
    growth = np.zeros(keep.size, dtype=bool)
    growth[rng.choice(np.flatnonzero(~keep.reshape(-1)), size=n_grow, replace=False)] = True
    growth = growth.reshape(rows.shape)
    return _result(weight, mask, rows, row_mask, keep | growth, np.zeros(0, np.int64), None,
                   regrown=growth & row_mask,
                   trace=_unstructured_trace("set", drop_fraction, rows, row_mask, keep,
                                             n_keep, n_grow, growth) if trace else None)


def _unstructured_trace(method, drop_fraction, rows, row_mask, keep, n_keep, n_grow, growth):
    """The UpdateTrace of a RigL or SET update (steps 1 and 5; no ablation, no cap)."""
    return UpdateTrace(
        method=method, drop_fraction=drop_fraction, n_ones=n_keep + n_grow, n_keep=n_keep,
        n_prune=n_grow, n_nonzero=int(np.count_nonzero(rows[row_mask])),
        kept_by_magnitude=keep.copy(),
        kept_counts=np.count_nonzero(keep, axis=1).astype(np.int64),
        grown_counts=np.count_nonzero(growth, axis=1).astype(np.int64))


def _keep_candidates(rows, row_mask):
    """Flat indices (ascending) and |W| of the active non-zero weights: the only keepable ones.

    Ranking these compressed values rather than a full (n, F) score with -inf elsewhere
    matters: np.partition slows down about tenfold on an array that is 90% one value.
    """
    index = np.flatnonzero(row_mask)
    magnitude = np.abs(rows.reshape(-1)[index])
    nonzero = magnitude != 0
    return index[nonzero], magnitude[nonzero]


def _keep_and_prune_counts(row_mask, n_candidates, drop_fraction):
    """Step 1: (n_keep, n_prune); only the n_candidates non-zero active weights can be kept."""
    n_ones = int(np.count_nonzero(row_mask))
    n_keep = min(n_ones - math.floor(n_ones * drop_fraction), n_candidates)
    return n_keep, n_ones - n_keep


def _magnitude_keep(rows, row_mask, drop_fraction):
    """Steps 1 and 4 without ablation or cap: (keep mask (n, F), n_keep, number to grow)."""
    index, magnitude = _keep_candidates(rows, row_mask)
    n_keep, n_prune = _keep_and_prune_counts(row_mask, index.size, drop_fraction)
    return _top_positions(index, magnitude, n_keep, rows.shape), n_keep, n_prune


def _top_positions(index, values, count, shape):
    """bool ``shape``: True at the flat ``index`` entries holding the ``count`` largest
    ``values`` (index ascending, so ties go to the lower flat index)."""
    chosen = np.zeros(math.prod(shape), dtype=bool)
    chosen[index[_top_per_row(values.reshape(1, -1), np.array([count]))[0]]] = True
    return chosen.reshape(shape)


def _ablation_rule(n, dense_fan_in, budget, gamma_sal):
    """Step 2's numbers: (threshold, min_active, max_active).

    threshold = max(1, floor(gamma_sal*k0)) with k0 = floor(budget/n); at least
    min(n, floor(budget/F) + 1) neurons stay, enough to hold the budget at fan-in <= F;
    at most max(1, budget), so the fan-in stays >= 1. All three are srigl_np's readings
    (docs/tutorial.md, "Where srigl_np departs").
    """
    return (max(1, math.floor(gamma_sal * (budget // n))),
            min(n, budget // dense_fan_in + 1), max(1, budget))


def _active_neurons(salient_counts, threshold, min_active, max_active):
    """Step 2: (bool (n,) the neurons that stay active, the threshold applied).

    The neurons with at least ``threshold`` salient weights stay, the threshold lowered
    so ``min_active`` stay, at most ``max_active`` (ties: the lower neuron stays).
    """
    n = salient_counts.size
    order = np.argsort(-salient_counts, kind="stable")   # most salient first, ties: low index
    threshold = min(threshold, int(salient_counts[order[min_active - 1]]))
    n_active = min(int(np.count_nonzero(salient_counts >= threshold)), max_active)
    active = np.zeros(n, dtype=bool)
    active[order[:n_active]] = True
    return active, threshold


def _top_per_row(score, counts):
    """bool (m, F): in row i, the counts[i] largest entries of score (ties: lower column).

    score: (m, F) float, -inf marks positions that may not be chosen; counts: (m,) ints
    with 0 <= counts[i] <= the row's finite entries. O(m*F) via np.partition: the
    counts[i]-th largest value is the row's threshold, and ties at the threshold are
    broken by their order along the row.
    """
    m, width = score.shape
    counts = np.asarray(counts, dtype=np.int64)
    widest = int(counts.max()) if m else 0
    if widest == 0:
        return np.zeros(score.shape, dtype=bool)
    top = np.partition(score, width - widest, axis=1)[:, width - widest:]
    if np.all(counts == widest):
        threshold = top[:, 0]
    else:
        top.sort(axis=1)
        position = np.clip(widest - counts, 0, widest - 1)
        threshold = np.where(counts > 0, top[np.arange(m), position], np.inf)
    threshold = threshold[:, None]
    # Row i holds at least counts[i] entries >= its threshold; exactly that many in
    # every row (no tie straddles a threshold) iff the totals agree.
    chosen = score >= threshold
    if np.count_nonzero(chosen) == counts.sum():
        return chosen
    above = score > threshold
    at_threshold = chosen & ~above
    still_needed = counts - np.count_nonzero(above, axis=1)
    rank = np.cumsum(at_threshold, axis=1, dtype=np.int32)
    return above | (at_threshold & (rank <= still_needed[:, None]))


def _result(weight, mask, rows, row_mask, new_mask, ablated, fan_in, *, regrown, trace=None):
    """The UpdateResult in the weight's shape; ``regrown``: bool (n, F), see UpdateResult."""
    survived = new_mask & row_mask
    # rows*survived is 2-3x faster than np.where on a scattered mask; adding +0.0 turns
    # the -0.0 of dropped negative weights into +0.0 and leaves every other value exact.
    new_weight = np.multiply(rows, survived, dtype=rows.dtype)
    new_weight += 0
    return UpdateResult(
        mask=new_mask.reshape(weight.shape), weight=new_weight.reshape(weight.shape),
        pruned=(row_mask ^ survived).reshape(weight.shape),
        grown=(new_mask ^ survived).reshape(weight.shape),
        ablated=ablated, fan_in=fan_in, regrown=regrown.reshape(weight.shape), trace=trace)


# -- validation --------------------------------------------------------------------------

def _check_update_args(weight, mask, grad, drop_fraction):
    """Validate, then return (weight, mask, grad) viewed as (n, F) rows (grad may be None)."""
    check_array("weight", weight, dtypes=(np.float32, np.float64), device="cpu")
    _check_mask(mask, weight.shape)
    if not 0.0 <= drop_fraction <= 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1], got {drop_fraction}")
    n = _check_shape(weight.shape)[0]
    check_array("weight", weight, finite=True)
    row_grad = None
    if grad is not None:
        check_array("grad", grad, dtypes=FLOATING, shape=weight.shape, finite=True,
                    device="cpu")
        row_grad = grad.reshape(n, -1)
    return weight.reshape(n, -1), mask.reshape(n, -1), row_grad


def _check_mask(mask, shape):
    check_array("mask", mask, dtypes=(bool,), shape=shape, device="cpu")


def _check_shape(shape):
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape must be (n_out, *fan_in_dims) with every dimension >= 1, "
                         f"got {shape}")
    return shape


def _check_sparsity(sparsity):
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")


def _check_ablated(ablated, n):
    """``ablated`` as sorted int64 neuron indices: distinct, in [0, n), fewer than n."""
    indices = np.asarray(ablated)
    if indices.size == 0:
        return np.zeros(0, dtype=np.int64)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"ablated must be a sequence of integer neuron indices, got "
                         f"{indices.tolist()!r}")
    if indices.min() < 0 or indices.max() >= n:
        raise ValueError(f"ablated must hold neuron indices in [0, {n}), got "
                         f"{indices.tolist()}")
    unique = np.unique(indices)
    if unique.size != indices.size:
        raise ValueError(f"ablated must not repeat a neuron, got {indices.tolist()}")
    if unique.size == n:
        raise ValueError(f"ablated must leave at least one of the {n} neurons, got all of them")
    return unique.astype(np.int64)


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


# -- invariants ----------------------------------------------------------------------------

INFER = "infer"


def invariant_violations(weight, mask, fan_in=None, ablated=(), *, budget=None):
    """Every invariant the layer breaks, as a list of ``Violation`` (empty: valid).

    weight: (n, *fan_in_dims), mask: same shape, bool. The checks, in this order:
    * "outside_mask": no weight is non-zero outside the mask;
    * "ablated_active": every neuron in ``ablated`` has no active weight;
      ``ablated="infer"`` takes the neurons whose mask row is empty (so this never fires);
    * "no_active_neuron": at least one neuron is not ablated (unless ``budget`` is 0);
    * "fan_in": with ``fan_in``, every neuron not ablated has exactly ``fan_in`` active
      weights; ``fan_in="infer"`` expects the most common count among the non-ablated
      neurons that have any (ties: the larger count), 1 if none has any;
    * "budget": with ``budget``, budget - n_active < nnz <= budget, n_active counting
      neurons with any weight, or nnz == budget (so a budget of 0 takes no weights);
      nnz may exceed the budget only when every active neuron
      has one weight (the fan-in floor of 1) and fall short only when every active
      neuron is dense.
    ``ablated`` is a sequence of neuron indices in [0, n) (repeats are harmless); a
    boolean array is refused (TypeError), since NumPy would read it as indices 0 and 1.
    Vectorised: one pass over the mask, no loop over neurons. CuPy arrays are checked
    on the host.
    """
    if is_cupy_array(weight) or is_cupy_array(mask):
        weight, mask = to_numpy(weight), to_numpy(mask)
    if not isinstance(weight, np.ndarray):
        raise TypeError(f"weight must be a numpy array, got {type(weight).__name__}")
    _check_mask(mask, weight.shape)
    n = _check_shape(weight.shape)[0]
    rows, row_mask = weight.reshape(n, -1), mask.reshape(n, -1)
    counts = np.count_nonzero(row_mask, axis=1)
    is_ablated = _ablated_flags(ablated, counts)
    violations = []

    outside = (rows != 0) & ~row_mask
    if outside.any():
        neuron, column = (int(i) for i in np.argwhere(outside)[0])
        value, total = rows[neuron, column], int(np.count_nonzero(outside))
        violations.append(Violation(
            "outside_mask", neuron, 0, value.item(), total,
            f"{total} weights are non-zero outside the mask; first at neuron {neuron}, "
            f"input {column}: {value.item()!r}"))

    holding = np.flatnonzero(is_ablated & (counts > 0))
    if holding.size:
        neuron = int(holding[0])
        violations.append(Violation(
            "ablated_active", neuron, 0, int(counts[neuron]), holding.size,
            f"ablated neuron {neuron} has {counts[neuron]} active weights, expected 0 "
            f"({holding.size} of {int(is_ablated.sum())} ablated neurons hold weights)"))

    live = ~is_ablated
    if not live.any() and budget != 0:   # a budget of 0 leaves every neuron ablated
        violations.append(Violation(
            "no_active_neuron", None, ">= 1", 0, n,
            f"no neuron is active (all {n} ablated), expected at least one"))

    if fan_in is not None and live.any():
        inferred = isinstance(fan_in, str)
        if inferred and fan_in != INFER:
            raise ValueError(f"fan_in must be an integer, None or {INFER!r}, got {fan_in!r}")
        expected = _most_common_count(counts[live]) if inferred else int(fan_in)
        wrong = np.flatnonzero(live & (counts != expected))
        if wrong.size:
            neuron = int(wrong[0])
            how = "the most common count; " if inferred else ""
            violations.append(Violation(
                "fan_in", neuron, expected, int(counts[neuron]), wrong.size,
                f"neuron {neuron} has {counts[neuron]} active weights, expected fan-in "
                f"{expected} ({how}{wrong.size} of {int(live.sum())} active neurons "
                f"differ)"))

    if budget is not None:
        nnz, dense_fan_in = int(counts.sum()), rows.shape[1]
        active_counts = counts[counts > 0]
        n_active = active_counts.size
        too_many = nnz > budget and not np.all(active_counts == 1)
        # nnz == budget is always right: a budget of 0 (an all-sparse small layer) leaves
        # no weight and no active neuron, where budget - n_active < nnz cannot hold.
        too_few = (nnz < budget and nnz <= budget - n_active
                   and not (n_active and np.all(active_counts == dense_fan_in)))
        if too_many or too_few:
            violations.append(Violation(
                "budget", None, f"{budget - n_active} < nnz <= {budget}", nnz, 1,
                f"nnz {nnz} leaves the budget: expected {budget - n_active} < nnz <= "
                f"{budget} for budget {budget} with {n_active} active neurons"))
    return violations


def check_invariants(weight, mask, fan_in=None, ablated=(), *, layer="", budget=None):
    """Raise InvariantError unless the layer is a valid sparse layer.

    The checks and arguments are those of ``invariant_violations`` (``fan_in`` and
    ``ablated`` may be "infer"). The error reports every violation at once, one line
    each, prefixed by the layer's name: the first offending neuron and the counts; its
    ``violations`` attribute holds the records. CuPy arrays are checked on the host.
    """
    violations = invariant_violations(weight, mask, fan_in, ablated, budget=budget)
    if violations:
        where = f"layer {layer!r}: " if layer else ""
        raise InvariantError("\n".join(where + v.message for v in violations), violations)


def _ablated_flags(ablated, counts):
    """bool (n,): the neurons ``ablated`` names ("infer": those with no active weight)."""
    n = counts.size
    if isinstance(ablated, str):
        if ablated != INFER:
            raise ValueError(f"ablated must be neuron indices or {INFER!r}, got {ablated!r}")
        return counts == 0
    indices = np.asarray(ablated)
    if indices.dtype == bool:
        raise TypeError(f"ablated must hold neuron indices, not a boolean array (it would "
                        f"read as indices 0 and 1); pass np.flatnonzero(...), got "
                        f"{indices.tolist()!r}")
    indices = indices.astype(np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise ValueError(f"ablated must hold neuron indices in [0, {n}), got {indices.tolist()}")
    flags = np.zeros(n, dtype=bool)
    flags[indices] = True
    return flags


def _most_common_count(counts):
    """The most common positive entry of ``counts`` (ties: the larger), 1 if none is."""
    tally = np.bincount(counts[counts > 0])
    if not tally.size:
        return 1
    return int(tally.size - 1 - np.argmax(tally[::-1]))
