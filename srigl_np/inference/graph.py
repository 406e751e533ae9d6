"""The stages that hold stages: a condensed model is a graph, not only a chain.

    run_pipeline(stages, x)   a list of stages applied in order (a model, a residual
                              body, a gate, a projection)
    Residual                  body(x) + shortcut(x), the shortcut a pipeline or the identity
    SqueezeExcite             x * gate(mean_hw(x)), the gate a pipeline on the pooled map
    Attention                 multi-head self-attention whose in_proj and out_proj are
                              pipelines (a condensed product, perhaps a Scatter)

Each sub-graph is a plain list of ``condensed.Stage``s, saved nested (``model_file``) and
moved with its stage (``Stage.to``). The condensed products inside them run through
``CondensedLinear`` / ``CondensedConv2d``, the one place that calls the kernels.
"""

import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np

from ..backend import array_module
from ..kernels import max_threads, softmax
from ..thread_policy import resolve_threads
from ..validation import positive_int
from .condensed import CondensedConv2d, Stage
from .stages import Gelu, Relu


def check_pipeline(name, stages):
    """``stages`` as a list of Stage instances (TypeError naming ``name`` otherwise)."""
    if not isinstance(stages, (list, tuple)):
        raise TypeError(f"{name} must be a list of stages, got {type(stages).__name__}")
    for i, stage in enumerate(stages):
        if not isinstance(stage, Stage):
            raise TypeError(f"{name}[{i}] must be a Stage, got {type(stage).__name__}")
    return list(stages)


def run_pipeline(stages, x, threads=0):
    """x through ``stages`` in order. A ReLU right after a condensed convolution or a
    residual block is fused into its last kernel call (``kernels.condensed_conv``'s
    epilogue); another ReLU, or a GELU, overwrites its input when that is an array a
    stage of this pipeline made (never the caller's x, which a residual's shortcut or
    the caller still reads)."""
    xp = array_module(x)
    given = x
    i = 0
    while i < len(stages):
        stage = stages[i]
        fuse = i + 1 < len(stages) and isinstance(stages[i + 1], Relu)
        if fuse and isinstance(stage, (CondensedConv2d, Residual)):
            x = stage.forward(x, threads, relu=True)
            i += 2
            continue
        if isinstance(stage, (Relu, Gelu)) and not xp.may_share_memory(x, given):
            x = stage.forward(x, threads, out=x)
        else:
            x = stage.forward(x, threads)
        i += 1
    return x


class Residual(Stage):
    """y = body(x) + shortcut(x), the shortcut the identity when it is None (He et al.,
    2016). Both pipelines give the full output, so the add sees every channel: a
    channel whose neuron was ablated at the block's output stays, restored to its
    constant by a Scatter at the pipeline's end."""

    kind = "residual"
    PIPELINES = ("body", "shortcut")
    OPTIONAL_PIPELINES = ("shortcut",)

    def __init__(self, body, shortcut=None):
        self.body = check_pipeline("body", body)   # empty: an identity body (x + x)
        self.shortcut = None if shortcut is None else check_pipeline("shortcut", shortcut)

    def forward(self, x, threads=0, *, relu=False):
        """body(x) + shortcut(x) (then max(., 0) with ``relu``). When the body ends in a
        condensed convolution, the add (and the ReLU) are its kernel's epilogue, written
        into the shortcut's own output where the shortcut made one."""
        xp = array_module(x)
        other = x if self.shortcut is None else run_pipeline(self.shortcut, x, threads)
        last = self.body[-1] if self.body else None
        if isinstance(last, CondensedConv2d):
            inner = run_pipeline(self.body[:-1], x, threads)
            owned = other is not x and not xp.may_share_memory(other, x)
            return last.forward(inner, threads, relu=relu, residual=other,
                                out=other if owned and xp is np else None)
        y = run_pipeline(self.body, x, threads)
        if y.shape != other.shape:
            raise ValueError(f"the residual body gives {y.shape}, the shortcut {other.shape}")
        if xp.may_share_memory(y, x):   # an empty body: y is x
            y = y + other
        else:
            y += other
        return xp.maximum(y, 0, out=y) if relu else y

    def __repr__(self):
        inner = ", ".join(repr(stage) for stage in self.body)
        short = ("identity" if self.shortcut is None
                 else ", ".join(repr(stage) for stage in self.shortcut))
        return f"Residual(body=[{inner}], shortcut=[{short}])"


class SqueezeExcite(Stage):
    """x * gate(mean_hw(x))[:, :, None, None] for x (batch, C, H, W) (MobileNet-V3): the
    ``gate`` pipeline maps the pooled (batch, C) to (batch, C) (fc1, ReLU, fc2, the
    hard sigmoid, condensed)."""

    kind = "squeeze_excite"
    PIPELINES = ("gate",)

    def __init__(self, gate):
        self.gate = check_pipeline("gate", gate)

    def forward(self, x, threads=0):
        if x.ndim != 4:
            raise ValueError(f"x must have shape (batch, channels, height, width), got {x.shape}")
        scale = run_pipeline(self.gate, x.mean(axis=(2, 3), dtype=x.dtype), threads)
        if scale.shape != x.shape[:2]:
            raise ValueError(f"the gate gives {scale.shape} for x of shape {x.shape}")
        return x * scale[:, :, None, None]

    def __repr__(self):
        return f"SqueezeExcite(gate=[{', '.join(repr(stage) for stage in self.gate)}])"


# The attention's per-head products are small GEMMs (length x head_dim x length: 197 x 64
# x 197 for ViT-B/16, batch*heads of them per layer). Woken for each right after the
# kernels' OpenMP team ran, BLAS's threads cost far more than they give: ViT-B/16 at
# batch 2 on 2 threads (2-core Xeon), q k^T over the 12 layers took 600 ms with BLAS on 2
# threads and 25 ms on 1 (scores @ v 57 and 22 ms). So they run on one BLAS thread; a
# cached controller makes the switch cost ~7 us (threadpool_limits: ~100 us).
_BLAS = []
# The scores (and their softmax) go by blocks of heads of about this many bytes, which
# stay in the caches: ViT-B/16 at batch 32, one layer's q k^T, softmax and scores @ v
# took 155-219 ms on the whole (384, 197, 197) and 79 ms by blocks of 12 heads (2-core
# Xeon, 1 BLAS thread; 2 threads over the blocks gained nothing more).
SCORES_BLOCK_BYTES = 2 * 2**20
# With threads >= 2 the heads split in two halves, the second on a helper thread (NumPy
# releases the GIL in its products and ufuncs; BLAS stays on one thread in each): each
# head's scores are computed the same way in either half, so the result does not depend
# on the thread count.
_HELPER = []


def _helper_thread():
    """The one helper thread of the attention cores, made on first use."""
    if not _HELPER:
        _HELPER.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="srigl-attention"))
    return _HELPER[0]


def _attention_heads(xp, q, k, v, context, first, last, step):
    """context[h] = softmax(q[h] k[h]^T) v[h] for heads first..last-1 (q pre-scaled), by
    blocks of ``step`` heads; the softmax on NumPy by the compiled ``kernels.softmax``
    (one (12, 197, 197) block: 0.46 ms against 1.06 ms for NumPy's five passes, which
    broadcast the row's max and sum; 2-core Xeon, one thread)."""
    for start in range(first, last, step):
        block = slice(start, min(start + step, last))
        scores = q[block] @ k[block].transpose(0, 2, 1)
        if xp is np:
            softmax(scores, 1, out=scores)      # this thread's half, on this thread
        else:
            scores -= scores.max(axis=-1, keepdims=True)
            xp.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
        xp.matmul(scores, v[block], out=context[block])


def _one_blas_thread(xp):
    """A context in which NumPy's BLAS runs on one thread (nothing for CuPy)."""
    if xp is not np:
        return nullcontext()
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


class Attention(Stage):
    """Multi-head self-attention over tokens x (batch, length, embed_dim):
    [q, k, v] = in_proj(x), softmax(q_h k_h^T / sqrt(d)) v_h per head, out_proj of the
    heads' concatenation. ``in_proj`` maps (rows, embed_dim) -> (rows, 3*embed_dim) (the
    stacked in_proj_weight, constant fan-in per row, condensed), ``out_proj`` (rows,
    embed_dim) -> (rows, embed_dim); num_heads divides embed_dim."""

    kind = "attention"
    PIPELINES = ("in_proj", "out_proj")
    SETTINGS = ("num_heads",)

    def __init__(self, in_proj, out_proj, num_heads):
        self.in_proj = check_pipeline("in_proj", in_proj)
        self.out_proj = check_pipeline("out_proj", out_proj)
        self.num_heads = positive_int("num_heads", num_heads)

    def forward(self, x, threads=0):
        if x.ndim != 3:
            raise ValueError(f"x must have shape (batch, length, embed_dim), got {x.shape}")
        xp = array_module(x)
        batch, length, dim = x.shape
        heads = self.num_heads
        if dim % heads:
            raise ValueError(f"num_heads {heads} does not divide the embedding {dim}")
        qkv = run_pipeline(self.in_proj, x.reshape(batch * length, dim), threads)
        if qkv.shape != (batch * length, 3 * dim):
            raise ValueError(f"in_proj gives {qkv.shape}, not (rows, {3 * dim})")
        # (batch*heads, length, head_dim) copies of the projection's three parts: the
        # batched products run on contiguous heads (a strided view was ~15% slower).
        parts = qkv.reshape(batch, length, 3, heads, dim // heads).transpose(2, 0, 3, 1, 4)
        q, k, v = (xp.ascontiguousarray(part).reshape(batch * heads, length, -1)
                   for part in parts)
        q *= xp.float32(1 / math.sqrt(dim // heads))
        context = xp.empty_like(q)
        step = (q.shape[0] if xp is not np
                else max(1, SCORES_BLOCK_BYTES // max(1, 4 * length * length)))
        n_heads = q.shape[0]
        split = n_heads
        if xp is np and n_heads > 1:
            count = resolve_threads(threads, max_threads())
            split = n_heads // 2 if count > 1 else n_heads
        with _one_blas_thread(xp):
            other = (_helper_thread().submit(_attention_heads, xp, q, k, v, context, split,
                                             n_heads, step) if split < n_heads else None)
            _attention_heads(xp, q, k, v, context, 0, split, step)
            if other is not None:
                other.result()
        context = context.reshape(batch, heads, length, -1).transpose(0, 2, 1, 3).reshape(
            batch * length, dim)
        y = run_pipeline(self.out_proj, context, threads)
        return y.reshape(batch, length, y.shape[-1])

    def __repr__(self):
        return (f"Attention(num_heads={self.num_heads}, in_proj=[{', '.join(map(repr, self.in_proj))}"
                f"], out_proj=[{', '.join(map(repr, self.out_proj))}])")
