"""The grow score of a layer's next topology update, kept as the terms it is made of.

RigL and SRigL grow where the dense gradient is largest, averaged over the last
``window`` mini-batches (``DynamicSparsity``'s ``grad_accumulation``). A masked layer's
backward pass computes that dense gradient anyway. A condensed Linear computes only the
stored positions' gradient, and its dense gradient ``dy^T x`` would be the one array of
the layer's dense size on its step. ``GrowScore`` keeps what the score is made of
instead: a dense gradient where one exists (``add``: masked layers, a condensed Conv2d,
whose dense weight is small beside its im2col'd input), the step's ``(dy, x)`` for a
condensed Linear (``add_product``). The score is computed when the update asks for it:
whole (``dense()``: srigl_update, rigl_update) or in row blocks (``rows(r0, r1)``:
``srigl_update_rows``, whose memory then stays O(nnz + block)).

Arithmetic: with a window of one, the score is the step's gradient itself; with a
window of n, it is ``((0 + g_1 / n) + g_2 / n) + ...`` in the order the steps came, the
masked path's running sum. A product term's rows [r0, r1) are ``dy[:, r0:r1].T @ x``, a
GEMM whose bits may depend on the rows it is given, so the score is read over fixed
blocks: ``default_block_rows(F)`` rows each, the blocks ``srigl_update_rows`` reads and
``dense()`` stacks. A partial sum saved in a checkpoint (``dense()``) and loaded back
(``load``) therefore continues with the bits an uninterrupted run has, and a layer of
one block (every layer of the mlp and cnn) gets the full product ``dy.T @ x``, as the
masked layer computes its gradient.
"""

import numpy as np

from ..backend import array_module
from .masks import default_block_rows

__all__ = ["GrowScore"]


class GrowScore:
    """The grow score of one layer: its dense gradient summed over a window of steps.

    shape: the weight's dense shape (n, *fan_in_dims); dtype: its float dtype; window:
    the number of steps the score averages (>= 1). Empty until a term is added, and
    again after ``clear()``.
    """

    def __init__(self, shape, dtype, window):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.window = int(window)
        self.n_out = self.shape[0]
        self.dense_fan_in = int(np.prod(self.shape[1:]))
        self.block_rows = default_block_rows(self.dense_fan_in)
        self.clear()

    def clear(self):
        """Forget every term: the next window starts from zero."""
        self._sum = None       # the dense terms summed (and the window's scaling applied)
        self._products = []    # (dy, x) of each later step, in order

    def __bool__(self):
        return self._sum is not None or bool(self._products)

    def add(self, grad):
        """Add one step's dense gradient (the weight's shape; NumPy or CuPy). Copied, so
        the caller may mask it in place afterwards."""
        if self._products:   # a dense term after a product one would change the order
            raise RuntimeError("a dense gradient cannot follow a (dy, x) term in one window")
        if self.window == 1 and self:
            raise RuntimeError("a window of one step holds one gradient")
        if self.window == 1:
            self._sum = grad.copy()
            return
        if self._sum is None:
            self._sum = array_module(grad).zeros(self.shape, dtype=grad.dtype)
        self._sum += grad / self.window

    def add_product(self, dy, x):
        """Add one step's gradient of a Linear as its factors: dy (batch, n) and x (batch,
        F), NumPy, the weight's dtype; the gradient is ``dy.T @ x``. Kept, not copied:
        the caller hands over arrays nothing writes into afterwards."""
        if dy.shape[1:] != (self.n_out,) or x.shape[1:] != (self.dense_fan_in,) \
                or dy.shape[0] != x.shape[0]:
            raise ValueError(f"add_product: dy (batch, {self.n_out}) and x (batch, "
                             f"{self.dense_fan_in}) expected, got {dy.shape} and {x.shape}")
        if self.window == 1 and self:
            raise RuntimeError("a window of one step holds one gradient")
        self._products.append((dy, x))

    def load(self, dense):
        """Start from a saved partial sum (``dense()`` of an earlier run), the weight's
        shape, NumPy or CuPy."""
        self.clear()
        self._sum = dense.copy()

    def rows(self, r0, r1):
        """The score's rows [r0, r1) as a NumPy (r1 - r0, F) array (a fresh one); of the
        same bits as ``dense()``'s when [r0, r1) is one of the fixed blocks (module
        notes)."""
        products = self._products
        if self._sum is None and not products:
            raise RuntimeError("the grow score is empty: no step of its window was added")
        if self.window == 1 and not products:
            return np.array(self._sum.reshape(self.n_out, -1)[r0:r1])
        if self.window == 1:
            dy, x = products[0]
            return dy[:, r0:r1].T @ x
        if self._sum is None:
            block = np.zeros((r1 - r0, self.dense_fan_in), dtype=self.dtype)
        else:
            block = np.array(self._sum.reshape(self.n_out, -1)[r0:r1])
        for dy, x in products:
            term = dy[:, r0:r1].T @ x
            term /= self.window
            block += term
        return block

    def dense(self):
        """The whole score in the weight's shape: zeros when empty; the stored array
        itself when it is held whole (a dense term, no product after it)."""
        if not self._products:
            if self._sum is None:
                return np.zeros(self.shape, dtype=self.dtype)
            return self._sum
        out = np.empty((self.n_out, self.dense_fan_in), dtype=self.dtype)
        for r0 in range(0, self.n_out, self.block_rows):
            r1 = min(self.n_out, r0 + self.block_rows)
            out[r0:r1] = self.rows(r0, r1)
        return out.reshape(self.shape)
