"""Budgets, masks, per-layer sparsities and the drop schedule: what a sparse layer starts
from and how much it may hold (module conventions: ``srigl_np.dst``).

The argument checks every dst module shares (shapes, sparsities, masks, ablated neuron
lists, generators) live here too, beside the budget they guard.
"""

import math

import numpy as np

from ..validation import check_array
from .ranking import top_per_row

__all__ = [
    "constant_fan_in_columns", "constant_fan_in_mask", "cosine_drop_fraction",
    "default_block_rows", "erk_sparsities",
    "fan_in_after_ablation", "fan_in_of_budget", "layer_budget", "random_mask",
    "uniform_sparsities",
]


# Entries of one row block when a layer is drawn or scored block by block (16 MB in
# float32, 32 MB of float64 keys): what keeps those passes from making an (n, F) array.
_BLOCK_ENTRIES = 1 << 22


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
    return fan_in_of_budget(layer_budget(shape, sparsity), shape[0] - n_ablated,
                            math.prod(shape[1:]))


def fan_in_of_budget(budget, n_active, dense_fan_in):
    """The constant fan-in ``budget`` weights give ``n_active`` neurons of dense fan-in F:
    min(F, max(1, floor(budget / n_active))). The floor of 1 is srigl_np's (docs/tutorial.md,
    "Where srigl_np departs"); ``srigl_np.dst.authors.fan_in`` is the authors' rule."""
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
    return top_per_row(keys, counts).reshape(shape)


def default_block_rows(dense_fan_in):
    """Rows of one block of a layer of dense fan-in F, drawn or scored block by block:
    about 4M entries, at least one row."""
    return max(1, _BLOCK_ENTRIES // dense_fan_in)


def constant_fan_in_columns(shape, sparsity, rng, *, index_dtype=np.int64):
    """``constant_fan_in_mask(shape, sparsity, rng)``'s mask (no neuron ablated) as each
    neuron's columns: ``index_dtype`` (n, k), each row ascending, the condensed layout.

    Made in row blocks of ``default_block_rows(F)`` rows, so no (n, F) array exists:
    the blocks' draws are the one (n, F) draw's rows in turn (a Generator's stream does
    not depend on how it is cut), and each row takes its k best keys alone, so the
    columns are those of the mask bit for bit.
    """
    shape = _check_shape(shape)
    _check_rng(rng)
    n, dense_fan_in = shape[0], math.prod(shape[1:])
    k = fan_in_after_ablation(shape, sparsity, 0)
    columns = np.empty((n, k), dtype=index_dtype)
    block = default_block_rows(dense_fan_in)
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        keys = -rng.random((r1 - r0, dense_fan_in))
        _, chosen = np.nonzero(top_per_row(keys, np.full(r1 - r0, k)))
        columns[r0:r1] = chosen.reshape(r1 - r0, k)
    return columns


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


# -- argument checks shared by the dst modules ------------------------------------------

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


