"""The GPU rows of ``--device cuda``: the implementations on the GPU (cuBLAS dense,
structured, cuSPARSE CSR, the CUDA condensed kernel), their timer (CUDA events around
each call) and the GPU's name.
"""

import numpy as np


def gpu_sample_seconds(fn, min_time, min_repeats=5, max_repeats=10_000):
    """GPU times of fn() (a list; CUDA events around each call) over at least min_time
    s of GPU time and min_repeats calls, after one warm-up call."""
    from ..backend import cupy

    cp = cupy()
    fn()
    cp.cuda.Stream.null.synchronize()
    start_event, stop_event = cp.cuda.Event(), cp.cuda.Event()
    times, spent = [], 0.0
    while len(times) < min_repeats or (spent < min_time and len(times) < max_repeats):
        start_event.record()
        fn()
        stop_event.record()
        stop_event.synchronize()
        seconds = cp.cuda.get_elapsed_time(start_event, stop_event) / 1e3
        times.append(seconds)
        spent += seconds
    return times


def gpu_implementations(weight, layer, batch, rng):
    """name -> (callable, note) for one layer on the GPU (``layer`` already moved there):
    cuBLAS dense, structured, cuSPARSE CSR (both orientations; the bench keeps the
    faster) and condensed (ours)."""
    from ..backend import cupy

    cp = cupy()
    import cupyx.scipy.sparse

    x = cp.asarray(rng.standard_normal((batch, weight.shape[1]), dtype=np.float32))
    x_t = cp.ascontiguousarray(x.T)
    w = cp.asarray(weight)
    w_active = cp.asarray(np.ascontiguousarray(weight[layer.active]))
    csr = cupyx.scipy.sparse.csr_matrix(w)
    csr_t = cupyx.scipy.sparse.csr_matrix(cp.ascontiguousarray(w.T))
    return {
        "dense": (lambda: x @ w.T, f"cuBLAS (CuPy {cp.__version__})"),
        "structured": (lambda: x @ w_active.T, f"{layer.n_active} active rows"),
        "csr": {"(W_csr @ x.T).T": lambda: (csr @ x_t).T,
                "(W_csc @ x.T).T": lambda: (csr_t.T @ x_t).T},
        "condensed": (lambda: layer.forward(x),
                      f"k={layer.k}, {layer.indices.dtype}"),
    }


def gpu_name():
    """The current GPU's name, for the bench's machine line."""
    from ..backend import cupy

    cp = cupy()
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)
