"""SRigL's update on the condensed form, in row blocks: O(nnz + block) memory.

``srigl_update`` reads a layer's dense weight, mask and gradient, (n, F) each: for a
layer of 2*10^9 dense weights that is 8 GB apiece in float32, though at 99% sparsity the
layer itself is values[n_active, k] + indices[n_active, k], 160 MB. ``srigl_update_rows``
makes exactly srigl_update's decisions (same new mask, same kept values, same ablated
neurons, same fan-in, same tie-breaks) from the condensed arrays and a callable that
returns the dense gradient rows [r0, r1) on demand (e.g. ``dy[:, r0:r1].T @ x``), so
no array of the layer's dense size ever exists.

Layout (canonical, as ``srigl_np.nn.condensed_compute.condense_rows``): ``rows``
int64[n_active] strictly ascending, the neurons that hold weights; ``indices``
int16/int32[n_active, k], each row's columns strictly ascending; ``values``
float32/float64[n_active, k]. In this layout the flattened values are in the dense
row-major (flat index) order, which is what lets the steps below keep srigl_update's
"ties: lower flat index" without ever forming a flat index of the dense layer, except
for the gradient ranking of step 2, which is over the whole (n, F).

The steps (``srigl_np.dst.steps``), and how each runs here:

1. prune by magnitude: ``magnitude_keep`` itself, on the (n_active, k) values with an
   all-True mask (position order = flat order, so its tie-break is srigl_update's).
2. saliency and ablation: the salient set needs the n_prune largest |G| of the whole
   layer. One pass over the gradient in row blocks keeps a running exact top n_prune
   (``top_gradient_positions``): a candidate set in flat-index order, cut back to its
   n_prune best with ``top_per_row`` whenever it doubles; once it holds n_prune, a new
   position (always a higher flat index) enters only if its |G| is strictly above the
   set's smallest, since at equal |G| every member (lower flat index) outranks it. The
   counts per neuron then go through ``active_neurons`` (the same rule and ties).
3. new fan-in: ``new_fan_in`` itself.
4. per-neuron cap: ``cap_fan_in`` itself on the condensed values (a row's slot order is
   its column order, so "ties: lower column" is the same).
5. regrow by gradient: ``regrow`` itself on each block's dense rows (it ranks each row
   alone), written straight into the new layout; skipped for a block where no neuron
   misses a weight.

With ablation, step 5 also runs during step 2's pass, on the guess that the active
neurons and k stay what they were (the usual case once training settles: ``speculate``):
then the cap removes nothing and regrow sees exactly the inputs it sees after steps 2-4,
so that result stands and the gradient is read once. When the guess fails (a neuron
ablated or returning, k changed) a second pass recomputes step 5 with the real inputs.
Without ablation step 2 needs no gradient and there is one pass. ``gradient_passes`` in
the result says which happened.

Peak memory beyond the input: a few nnz-sized arrays (the step records, the new layout
and ``source``; the guessed layout too while it is built), the n_prune candidates of
step 2 (twice over at most), and a few (block_rows, F) arrays.
"""

from dataclasses import dataclass

import numpy as np

from ..validation import FLOATING, check_array
from .masks import _check_sparsity, default_block_rows, layer_budget
from .ranking import top_per_row
from .steps import (FanInCap, ablation_rule, active_neurons, cap_fan_in, magnitude_keep,
                    new_fan_in, regrow)

__all__ = ["CondensedUpdate", "srigl_update_rows", "top_gradient_positions"]


@dataclass(frozen=True, eq=False)
class CondensedUpdate:
    """The outcome of ``srigl_update_rows``: the new layer in the canonical layout.

    rows:    int64 (n_active,), the active neurons, ascending.
    indices: (n_active, fan_in), the input dtype; each row's columns ascending.
    values:  (n_active, fan_in), the input dtype: the old value where the position was in
             the old layout (kept, or dropped and grown back in this update, as
             srigl_update's ``regrown``), 0 where grown (a -0.0 kept becomes +0.0, as in
             ``update_result``).
    source:  int64 (n_active, fan_in), the flat slot of ``values`` (old layout) each new
             slot came from, -1 for a grown one: the optimizer state follows it
             (``state.reshape(-1)[source]``, 0 where -1), as DynamicSparsity's masked
             path keeps state on every position outside pruned | grown.
    ablated: int64, the neurons with no weights, ascending; fan_in: the new k.
    pruned, grown, regrown: the counts of srigl_update's pruned, grown and regrown masks.
    n_keep, n_prune: step 1's numbers (n_prune after its raise for zero weights), as
             srigl_update's trace.
    gradient_passes: how many times each gradient block was read (1 or 2: module notes).
    """

    rows: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    source: np.ndarray
    ablated: np.ndarray
    fan_in: int
    pruned: int
    grown: int
    regrown: int
    n_keep: int
    n_prune: int
    gradient_passes: int

    def take(self, old):
        """An old per-slot array (e.g. a momentum buffer, shaped like the old values) in
        the new layout: the old entry where a slot came from one, 0 where grown."""
        return _take(old, self.source)


def _block_rows(block_rows, dense_fan_in):
    if block_rows is None:
        return default_block_rows(dense_fan_in)
    if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) \
            or block_rows < 1:
        raise ValueError(f"block_rows must be an int >= 1, got {block_rows!r}")
    return int(block_rows)


def _gradient(grad_block, r0, r1, dense_fan_in):
    """grad_block(r0, r1), checked: (r1 - r0, F) finite floats (as srigl_update's grad)."""
    block = grad_block(r0, r1)
    check_array("grad_block(r0, r1)", block, dtypes=FLOATING, shape=(r1 - r0, dense_fan_in),
                finite=True, device="cpu")
    return block


class _TopScores:
    """A running exact top ``count`` of scores fed in ascending flat-index order (see the
    module notes): ``add`` each block's |G|, then ``positions_found()``."""

    def __init__(self, count):
        self.count = count
        # The candidates, in ascending flat order: a tie in the ranking then goes to the
        # lower position, which is the lower flat index.
        self.positions, self.scores = [], []
        self.held = 0
        self.floor = None   # the smallest score of a full set (``count`` held), None before

    def add(self, score, offset):
        """score: the flat |G| of one block, whose first entry has flat index ``offset``."""
        count = self.count
        if count <= 0:
            return
        # At a score equal to the floor a new position loses to every member (all have a
        # lower flat index), so only strictly larger ones can enter.
        if self.floor is not None:
            chosen = np.flatnonzero(score > self.floor)
        elif self.held + score.size > count:   # the block's own best, before the set is full
            chosen = np.flatnonzero(top_per_row(score.reshape(1, -1),
                                                np.array([min(count, score.size)]))[0])
        else:
            chosen = np.arange(score.size)
        if chosen.size == 0:
            return
        self.positions.append(chosen + offset)
        self.scores.append(score[chosen])
        self.held += chosen.size
        if self.held >= 2 * count:
            self._cut()

    def _cut(self):
        """Keep the ``count`` best candidates (order kept); the floor is their smallest."""
        positions, scores = np.concatenate(self.positions), np.concatenate(self.scores)
        best = top_per_row(scores.reshape(1, -1), np.array([self.count]))[0]
        self.positions, self.scores = [positions[best]], [scores[best]]
        self.held = self.count
        self.floor = self.scores[0].min()

    def positions_found(self):
        """int64, ascending: the flat indices of the ``count`` best scores."""
        if self.held > self.count:
            self._cut()
        return np.concatenate(self.positions) if self.positions else np.zeros(0, np.int64)


def top_gradient_positions(grad_block, n_out, dense_fan_in, count, block_rows=None):
    """int64, ascending: the flat indices (r*F + c) of the ``count`` largest |G| of the
    whole (n_out, F) gradient, ties to the lower flat index, exactly the positions that
    ``top_per_row(abs(G).reshape(1, -1), [count])`` marks, read in row blocks from
    ``grad_block(r0, r1)`` (see the module notes). Memory O(count + block)."""
    block_rows = _block_rows(block_rows, dense_fan_in)
    top = _TopScores(count)
    if count > 0:
        for r0 in range(0, n_out, block_rows):
            r1 = min(n_out, r0 + block_rows)
            top.add(np.abs(_gradient(grad_block, r0, r1, dense_fan_in)).reshape(-1),
                    r0 * dense_fan_in)
    return top.positions_found()


class _Layout:
    """The new layout being written, block by block, by step 5 (``regrow`` on each block's
    dense rows): rows ``new_rows`` (ascending) of fan-in k, and each slot's old slot."""

    def __init__(self, rows, indices, new_rows, k, n_out, dense_fan_in, block_rows):
        self.rows, self.indices, self.new_rows, self.k = rows, indices, new_rows, k
        self.dense_fan_in = dense_fan_in
        self.new_indices = np.empty((new_rows.size, k), dtype=indices.dtype)
        self.source = np.empty((new_rows.size, k), dtype=np.int64)
        edges = np.arange(0, n_out + block_rows, block_rows)
        self.starts = np.searchsorted(rows, edges)          # old rows per block
        self.new_starts = np.searchsorted(new_rows, edges)  # new rows per block

    def block(self, b, r0, r1, keep_slots, kept_counts, active, grow_score):
        """Write the new rows in [r0, r1) (block ``b``): each active neuron keeps the old
        slots where ``keep_slots`` (bool, indices' shape) is True and grows its missing
        k - kept_counts at its largest ``grow_score`` ((r1 - r0, F) |G|, or a callable
        returning it, called only when a neuron misses weights) among the positions it
        does not keep: ``regrow``, whose ties are srigl_update's."""
        rows, indices, k, dense_fan_in = self.rows, self.indices, self.k, self.dense_fan_in
        i0, i1 = self.starts[b], self.starts[b + 1]
        j0, j1 = self.new_starts[b], self.new_starts[b + 1]
        if j0 == j1:
            return
        local = rows[i0:i1] - r0
        old_mask = np.zeros((r1 - r0, dense_fan_in), dtype=bool)
        old_mask[local[:, None], indices[i0:i1]] = True
        keep = np.zeros_like(old_mask)
        keep[local[:, None], indices[i0:i1]] = keep_slots[i0:i1]
        if np.any(active & (kept_counts < k)):
            grow_score = grow_score() if callable(grow_score) else grow_score
            new_mask = regrow(grow_score, old_mask, FanInCap(keep, kept_counts, None),
                              active, k).mask
        else:
            new_mask = keep
        _, columns = np.nonzero(new_mask[self.new_rows[j0:j1] - r0])
        self.new_indices[j0:j1] = columns.reshape(j1 - j0, k)
        # Each new position's old slot, by its key in the block (both layouts ascending).
        old_keys = (local[:, None] * dense_fan_in + indices[i0:i1]).reshape(-1)
        new_keys = ((self.new_rows[j0:j1, None] - r0) * dense_fan_in
                    + self.new_indices[j0:j1]).reshape(-1)
        at = np.minimum(np.searchsorted(old_keys, new_keys), max(old_keys.size - 1, 0))
        found = old_keys[at] == new_keys if old_keys.size else np.zeros(new_keys.size, bool)
        self.source[j0:j1] = np.where(found, at + i0 * indices.shape[1], -1
                                      ).reshape(j1 - j0, k)


def _check_layout(values, rows, indices, n_out, dense_fan_in):
    check_array("values", values, dtypes=(np.float32, np.float64), ndim=2, finite=True,
                device="cpu")
    check_array("indices", indices, dtypes=(np.int16, np.int32, np.int64), shape=values.shape,
                device="cpu")
    check_array("rows", rows, dtypes=(np.int16, np.int32, np.int64), ndim=1, device="cpu")
    for name, value in (("n_out", n_out), ("dense_fan_in", dense_fan_in)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    n_active, k = values.shape
    if rows.size != n_active or n_active == 0 or k == 0:
        raise ValueError(f"rows must hold one neuron per row of values {values.shape} (at "
                         f"least one, with k >= 1), got {rows.size}")
    if rows[0] < 0 or rows[-1] >= n_out or (np.diff(rows) <= 0).any():
        raise ValueError(f"rows must be strictly ascending in [0, n_out={n_out})")
    if indices.min() < 0 or indices.max() >= dense_fan_in \
            or (k > 1 and (np.diff(indices, axis=1) <= 0).any()):
        raise ValueError(f"indices must be strictly ascending along each row, in "
                         f"[0, dense_fan_in={dense_fan_in})")


def srigl_update_rows(values, rows, indices, n_out, dense_fan_in, grad_block, *,
                      drop_fraction, sparsity, gamma_sal=0.3, ablation=True,
                      block_rows=None, speculate=True):
    """One SRigL update of a condensed layer: ``srigl_update``'s decisions, row-blocked.

    values[n_active, k] float32/float64, rows int[n_active], indices int[n_active, k]:
    the layer in the canonical layout (module notes) of a dense (n_out, dense_fan_in)
    weight; dense_fan_in is F (in_features, or channels*kh*kw). ``grad_block(r0, r1)``
    returns the dense gradient rows [r0, r1) as an (r1 - r0, F) float array (it is
    called with r0 < r1 ascending, once or twice per block: see the module notes);
    ``block_rows`` rows per call (default: ``default_block_rows(F)``, about 4M entries).
    drop_fraction, sparsity, gamma_sal, ablation: as srigl_update's. ``speculate``: run
    step 5 during step 2's pass on the guess that the active neurons and k stay (module
    notes); the result is the same either way. Returns a CondensedUpdate; inputs
    untouched.

    Equality: expanding the result to dense gives srigl_update(W, M, G, ...)'s mask and
    weight bit for bit, its ablated neurons and fan_in, for W, M the dense form of the
    input and G the stacked blocks.
    """
    _check_layout(values, rows, indices, n_out, dense_fan_in)
    if not 0.0 <= drop_fraction <= 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1], got {drop_fraction}")
    _check_sparsity(sparsity)
    if not 0.0 <= gamma_sal <= 1.0:
        raise ValueError(f"gamma_sal must be in [0, 1], got {gamma_sal}")
    block_rows = _block_rows(block_rows, dense_fan_in)
    rows = rows.astype(np.int64, copy=False)
    n_old, k_old = values.shape
    budget = layer_budget((n_out, dense_fan_in), sparsity)

    # Step 1 on the values: slot order is flat order, so the ties are srigl_update's.
    kept = magnitude_keep(values, np.ones(values.shape, dtype=bool), drop_fraction)
    kept_counts = np.zeros(n_out, dtype=np.int64)
    kept_counts[rows] = np.count_nonzero(kept.keep, axis=1)
    old_active = np.zeros(n_out, dtype=bool)
    old_active[rows] = True
    blocks = [(b, r0, min(n_out, r0 + block_rows))
              for b, r0 in enumerate(range(0, n_out, block_rows))]
    guess = None
    # Step 2: one pass over the gradient for the top n_prune |G| of the layer.
    if ablation:
        rule = ablation_rule(n_out, dense_fan_in, budget, gamma_sal)
        top = _TopScores(kept.n_prune)
        # Step 5 runs on this pass too, on the guess that the active neurons and k stay
        # (the usual case once training settles): then the cap (step 4) removes nothing
        # and regrow gets exactly these inputs, so its result stands and the gradient is
        # not read again; otherwise it is recomputed below.
        if speculate:
            guess = _Layout(rows, indices, rows, k_old, n_out, dense_fan_in, block_rows)
        for b, r0, r1 in blocks:
            score = np.abs(_gradient(grad_block, r0, r1, dense_fan_in))
            top.add(score.reshape(-1), r0 * dense_fan_in)
            if guess is not None:
                guess.block(b, r0, r1, kept.keep, kept_counts[r0:r1], old_active[r0:r1],
                            score)
            del score
        top = top.positions_found()
        # A top |G| adds to its neuron's count only where magnitude did not keep it.
        not_kept = ~_in_layout(top, rows, indices, kept.keep, dense_fan_in)
        salient = kept_counts + np.bincount(top[not_kept] // dense_fan_in, minlength=n_out)
        del top, not_kept
        active, _ = active_neurons(salient, rule)
    else:
        active = np.ones(n_out, dtype=bool)
    # Steps 3 and 4: the cap ranks condensed rows (slot order = column order).
    k = new_fan_in(budget, active, dense_fan_in).fan_in
    cap = cap_fan_in(values, kept, active[rows], k)
    n_keep, n_prune = kept.n_keep, kept.n_prune
    del kept
    # Step 5, block by block, writing straight into the new layout.
    if guess is not None and k == k_old and np.array_equal(active, old_active):
        layout, passes = guess, 1
    else:
        del guess
        layout = _Layout(rows, indices, np.flatnonzero(active).astype(np.int64), k, n_out,
                         dense_fan_in, block_rows)
        kept_counts[rows] = cap.kept_counts
        for b, r0, r1 in blocks:
            layout.block(b, r0, r1, cap.keep, kept_counts[r0:r1], active[r0:r1],
                         lambda: np.abs(_gradient(grad_block, r0, r1, dense_fan_in)))
        passes = 1 + ablation
    new_rows, new_indices, source = layout.new_rows, layout.new_indices, layout.source
    del layout
    new_values = _take(values, source)
    new_values += 0   # -0.0 -> +0.0, as update_result's
    survived = int(np.count_nonzero(source >= 0))
    kept_total = int(cap.kept_counts.sum())
    return CondensedUpdate(
        rows=new_rows, indices=new_indices, values=new_values, source=source,
        ablated=np.flatnonzero(~active).astype(np.int64), fan_in=int(k),
        pruned=n_old * k_old - survived, grown=source.size - survived,
        regrown=survived - kept_total, n_keep=int(n_keep), n_prune=int(n_prune),
        gradient_passes=passes)


def _take(old, source):
    """old's flat entries at ``source`` (its shape), 0 where source is -1; "clip" maps
    -1 to entry 0 without an nnz-sized index copy, then those are zeroed."""
    taken = np.take(old.reshape(-1), source, mode="clip")
    taken[source < 0] = 0
    return taken


def _in_layout(flat, rows, indices, chosen, dense_fan_in):
    """bool per ascending dense flat index in ``flat``: whether it is a slot of the layout
    (rows, indices) where ``chosen`` (bool, indices' shape) is True. O(nnz + flat.size):
    one searchsorted over the layout's keys slot*F + column (ascending in the canonical
    layout)."""
    result = np.zeros(flat.size, dtype=bool)
    neuron = flat // dense_fan_in
    slot = np.minimum(np.searchsorted(rows, neuron), rows.size - 1)
    where = np.flatnonzero(rows[slot] == neuron)
    if where.size == 0:
        return result
    span = np.int64(dense_fan_in)
    keys = (np.arange(rows.size, dtype=np.int64)[:, None] * span + indices).reshape(-1)
    wanted = slot[where] * span + flat[where] % dense_fan_in
    at = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)
    hit = keys[at] == wanted
    result[where[hit]] = chosen.reshape(-1)[at[hit]]
    return result
