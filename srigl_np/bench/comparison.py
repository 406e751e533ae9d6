"""Within a row: the best alternative, the achieved figures against this machine's,
and the load.

Each function adds fields to a row's records in place: ``compare`` the speedups over
dense, CSR and the fastest of ALTERNATIVES / DENSE_KINDS / CSR_KINDS; ``add_limits`` the
bytes, flops and their fractions of the machine's read bandwidth and sgemm;
``add_load`` the other load and the spread of the timings, as flags.
"""

import numpy as np

from .load import load_flags

OURS = "condensed"
DENSE_KINDS = ("dense", "structured", "torch-dense")
CSR_KINDS = ("csr", "torch-csr", "mkl-csr")
ALTERNATIVES = DENSE_KINDS + CSR_KINDS


def best_of(medians, names):
    """(name, seconds) of the fastest of ``names`` in ``medians`` (implementation ->
    median seconds), or (None, None) when none of them ran."""
    present = [name for name in names if name in medians]
    if not present:
        return None, None
    name = min(present, key=medians.get)
    return name, medians[name]


def compare(case):
    """Adds the row's comparisons to each of its records (in place): speedup_vs_dense,
    speedup_vs_csr, the names best_alternative / best_dense / best_csr (the fastest of
    ALTERNATIVES / DENSE_KINDS / CSR_KINDS that ran; None if none did) and
    speedup_vs_best_alternative / _best_dense / _best_csr: that one's median over the
    record's (> 1: the record's implementation is faster)."""
    medians = {r["implementation"]: r["median_s"] for r in case}
    best = {"alternative": best_of(medians, ALTERNATIVES),
            "dense": best_of(medians, DENSE_KINDS), "csr": best_of(medians, CSR_KINDS)}
    for record in case:
        seconds = record["median_s"]
        record["speedup_vs_dense"] = medians["dense"] / seconds
        record["speedup_vs_csr"] = medians["csr"] / seconds
        for kind, (name, best_s) in best.items():
            record[f"best_{kind}"] = name
            record[f"speedup_vs_best_{kind}"] = None if name is None else best_s / seconds
    return case


def condensed_traffic(nnz, index_bytes, n_in, batch):
    """(bytes read, flops) of one condensed product: the nnz values (4 bytes each) and
    indices (``index_bytes`` each, 2 for int16, 4 for int32), and the input x (4 * n_in
    * batch bytes); 2 * nnz * batch flops (a multiply and an add per weight and input).
    The output's writes are not counted."""
    return 4 * nnz + index_bytes * nnz + 4 * n_in * batch, 2 * nnz * batch


def dense_traffic(n_in, n_out, batch):
    """(bytes read, flops) of one dense product x (batch, n_in) @ W.T (n_in, n_out)."""
    return 4 * n_in * n_out + 4 * n_in * batch, 2 * n_in * n_out * batch


def achieved(nbytes, flops, seconds):
    """(GB/s, GFLOP/s) of moving ``nbytes`` and doing ``flops`` in ``seconds``."""
    return nbytes / seconds / 1e9, flops / seconds / 1e9


def add_limits(case, layer, limits, cpu_path=None):
    """Adds to each record (in place) the machine's figures at the row's thread count
    (machine_read_gb_s, machine_sgemm_gflop_s, llc_bytes: None when not measured), the
    kernels' cpu_path and, for the
    condensed and dense records, bytes_read, flops, achieved_gb_s, achieved_gflop_s and
    their fractions of the machine's figures (read_fraction, sgemm_fraction)."""
    first = case[0]
    (n_in, n_out), batch = first["shape"], first["batch"]
    traffic = {OURS: condensed_traffic(layer.nnz, np.dtype(layer.indices.dtype).itemsize,
                                       n_in, batch),
               "dense": dense_traffic(n_in, n_out, batch)}
    limits = limits or {}
    for record in case:
        record["cpu_path"] = cpu_path
        record["machine_read_gb_s"] = limits.get("read_gb_s")
        record["machine_sgemm_gflop_s"] = limits.get("sgemm_gflop_s")
        record["llc_bytes"] = limits.get("llc_bytes")
        if record["implementation"] not in traffic:
            continue
        nbytes, flops = traffic[record["implementation"]]
        gb_s, gflop_s = achieved(nbytes, flops, record["median_s"])
        record.update(bytes_read=nbytes, flops=flops, achieved_gb_s=gb_s,
                      achieved_gflop_s=gflop_s,
                      read_fraction=(gb_s / limits["read_gb_s"]
                                     if limits.get("read_gb_s") else None),
                      sgemm_fraction=(gflop_s / limits["sgemm_gflop_s"]
                                      if limits.get("sgemm_gflop_s") else None))
    return case


def add_load(case, meter):
    """Adds the row's load figures to each record (in place): other_cpus (None where
    not measured), row_spread / row_spread_of (the least stable implementation) and
    load_flags (a list; empty when nothing was noticed)."""
    spreads = {r["implementation"]: r["iqr_over_median"] for r in case
               if r.get("iqr_over_median") is not None}
    worst = max(spreads, key=spreads.get) if spreads else None
    flags = load_flags(meter.other_cpus, meter.resolution,
                       spreads.get(worst), worst)
    for record in case:
        record.update(other_cpus=meter.other_cpus, row_spread=spreads.get(worst),
                      row_spread_of=worst, load_flags=flags)
    return case
