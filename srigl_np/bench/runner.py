"""One bench run: the layers, and each row timed, compared and checked against this
machine's limits and the load while it ran.

Layer construction (``dst.constant_fan_in_mask``): see ``constant_fan_in_weight`` and
the docstring of bench.command.
"""

import numpy as np

from .. import dst
from .comparison import add_limits, add_load, compare
from .cpu_baselines import implementations, set_library_threads
from .gpu import gpu_implementations, gpu_sample_seconds
from .load import LoadMeter
from .machine import batch1_kernel, kernel_cpu_path
from .report import format_case
from .timing import ROUNDS, sample_seconds, time_all


def ablated_count(ablated_frac, n_out):
    """The neurons ``ablated_frac`` of ``n_out`` ablates: round(ablated_frac * n_out)."""
    return int(round(ablated_frac * n_out))


def constant_fan_in_weight(n_in, n_out, sparsity, ablated_frac, rng):
    """A (n_out, n_in) float32 weight with constant fan-in and round(ablated_frac * n_out)
    random neurons ablated: ``dst.constant_fan_in_mask`` with ablated=, so the live
    neurons share the layer's whole budget (k = dst.fan_in_after_ablation), and
    standard-normal values on the mask (never exactly 0)."""
    n_ablated = ablated_count(ablated_frac, n_out)
    if n_ablated >= n_out:
        raise ValueError(f"ablated_frac must leave a neuron active, got {ablated_frac}")
    ablated = rng.choice(n_out, n_ablated, replace=False)
    mask = dst.constant_fan_in_mask((n_out, n_in), sparsity, rng, ablated=ablated)
    values = rng.standard_normal((n_out, n_in), dtype=np.float32)
    values[values == 0] = 1.0
    return np.where(mask, values, np.float32(0))


def built_sparsity(layer, size):
    """The sparsity the layer really has, 1 - nnz/size: small layers cannot always hold
    the requested one (k is at least 1 and a whole number per neuron)."""
    return 1.0 - layer.nnz / size


def run_case(weight, layer, batch, threads, min_time, rng, device="cpu", rounds=ROUNDS,
             min_repeats=None):
    """Time every implementation at one (layer, batch, threads); records without speedups.
    On "cuda" the GPU rows are timed with CUDA events and ``threads`` is not used.
    ``rounds``, ``min_repeats``: as for ``time_all``."""
    if device != "cpu":
        return time_all(gpu_implementations(weight, layer.to(device), batch, rng),
                        gpu_sample_seconds, min_time, rounds, min_repeats)
    from threadpoolctl import threadpool_limits

    set_library_threads(threads)
    with threadpool_limits(limits=threads):
        return time_all(implementations(weight, layer, batch, threads, rng),
                        sample_seconds, min_time, rounds, min_repeats)


def run(shapes, sparsities, batch_sizes, thread_counts, *, ablated_frac=0.0, min_time=0.5,
        seed=0, device="cpu", log=print, rounds=ROUNDS, min_repeats=None, limits=None,
        meter=None):
    """All records: one per implementation/shape/sparsity/batch/threads.

    ``rounds``, ``min_repeats``: as for ``time_all``; ``limits``: threads -> the
    machine's figures (``measure_limits``), put beside each row's achieved ones;
    ``meter``: a LoadMeter factory (injectable for tests)."""
    from ..inference.condensed import CondensedLinear

    meter = meter or LoadMeter
    path = kernel_cpu_path() if device == "cpu" else None
    rng = np.random.default_rng(seed)
    records = []
    for n_in, n_out in shapes:
        for sparsity in sparsities:
            weight = constant_fan_in_weight(n_in, n_out, sparsity, ablated_frac, rng)
            layer = CondensedLinear.from_dense(weight)
            built = built_sparsity(layer, weight.size)
            for batch in batch_sizes:
                for threads in thread_counts:
                    load = meter()
                    with load:
                        case = run_case(weight, layer, batch, threads, min_time, rng,
                                        device, rounds, min_repeats)
                    kernel = batch1_kernel(layer.weights) \
                        if device == "cpu" and batch == 1 else None
                    for record in case:
                        record.update(
                            shape=[n_in, n_out], sparsity=sparsity,
                            built_sparsity=built, batch=batch,
                            threads=threads, device=device, ablated_frac=ablated_frac,
                            batch1_kernel=kernel)
                    compare(case)
                    add_limits(case, layer, (limits or {}).get(threads), path)
                    add_load(case, load)
                    records.extend(case)
                    log(format_case(case))
    return records
