"""What the bench prints: a table per row, the summary, the development targets, the
header line of this machine's limits, and the paper's figures to read them against.
"""

from .comparison import OURS

DEFAULT_SHAPES = ((768, 3072), (3072, 768), (4096, 4096))
PAPER_FIGURES = ("SRigL paper (Lasby et al. 2024, Fig. 4), condensed at 90% sparsity: "
                 "CPU batch 1 3.4x vs dense and 2.5x vs CSR; CPU batch 256 0.48x vs dense; "
                 "GPU batch 256 1.7x vs dense (13x vs CSR).")
# The project's own development targets (issue 12), printed only with --targets:
# batch -> minimum speedup of condensed vs (NumPy dense, best CSR), at 2 threads, float32,
# 90% sparsity, on DEFAULT_SHAPES.
TARGETS = {1: (3.5, 2.0), 256: (4.0, 2.5)}
# GPU targets at batch 256 (vs cuBLAS dense, vs cuSPARSE CSR) and batch 1 (vs dense).
GPU_TARGETS = {256: (2.0, 15.0), 1: (1.0, None)}

# From this batch on a row's limit is compute (GFLOP/s against sgemm); below it, reading
# the weights dominates (GB/s against the read test).
GFLOPS_FROM_BATCH = 16


def sparsity_label(record):
    """'sparsity 90%', or the built sparsity with the requested one beside it when the
    layer could not hold the request (tiny shapes, extreme sparsities)."""
    requested = record["sparsity"]
    built = record.get("built_sparsity", requested)
    if abs(built - requested) <= 1e-9:
        return f"sparsity {requested:.0%}"
    return f"sparsity {built:.2%} (requested {requested:.2%})"


def _ratio(value, trusted=True):
    if value is None:
        return "-"
    return f"{value:.2f}x" + ("" if trusted else "?")


def comparison_line(record):
    """'condensed vs best alternative mkl-csr (0.1140 ms): 1.42x; ...' for the condensed
    record of a row; ratios of a flagged row end in '?'."""
    trusted = not record.get("load_flags")
    parts = [f"condensed vs best alternative {record['best_alternative']}: "
             f"{_ratio(record['speedup_vs_best_alternative'], trusted)}"]
    for kind in ("dense", "csr"):
        if record.get(f"best_{kind}") is not None:
            parts.append(f"vs best {kind} ({record[f'best_{kind}']}): "
                         f"{_ratio(record[f'speedup_vs_best_{kind}'], trusted)}")
    return "; ".join(parts)


def limit_line(record):
    """The condensed record's achieved figure against the machine's, or None: GB/s of
    its reads below GFLOPS_FROM_BATCH, GFLOP/s from it on."""
    if record.get("achieved_gb_s") is None:
        return None
    threads = record["threads"]
    where = f"{threads} thread{'s' if threads != 1 else ''}" if record["device"] == "cpu" \
        else record["device"]
    if record["batch"] < GFLOPS_FROM_BATCH:
        text = (f"limit: condensed reads {record['bytes_read'] / 1e6:.3g} MB per call "
                f"(values+indices+x) at {record['achieved_gb_s']:.1f} GB/s")
        if record.get("machine_read_gb_s"):
            text += (f" = {record['read_fraction']:.0%} of this machine's "
                     f"{record['machine_read_gb_s']:.1f} GB/s read ({where})")
        if record.get("llc_bytes") and record["bytes_read"] <= record["llc_bytes"]:
            # Repeated calls find these bytes in cache, so memory is not the bound.
            text += (f"; they fit in the {record['llc_bytes'] / 2**20:.0f} MiB last-level "
                     "cache, which can beat memory")
        return text
    text = (f"limit: condensed runs {record['achieved_gflop_s']:.1f} GFLOP/s "
            f"(2*nnz*batch per call)")
    if record.get("machine_sgemm_gflop_s"):
        text += (f" = {record['sgemm_fraction']:.0%} of dense sgemm's "
                 f"{record['machine_sgemm_gflop_s']:.1f} GFLOP/s ({where})")
    return text


def format_case(case):
    first = case[0]
    n_in, n_out = first["shape"]
    where = (f"threads {first['threads']}" if first["device"] == "cpu"
             else f"device {first['device']}")
    if first.get("batch1_kernel"):
        where += f"  condensed kernel {first['batch1_kernel']}"
    lines = [f"\n{n_in}->{n_out}  {sparsity_label(first)}  batch {first['batch']}  "
             f"{where}",
             f"  {'implementation':<15}{'median ms':>11}{'vs dense':>10}{'vs csr':>9}"
             f"{'IQR':>6}  note"]
    for r in case:
        iqr = r.get("iqr_over_median")
        lines.append(f"  {r['implementation']:<15}{r['median_s'] * 1e3:>11.4f}"
                     f"{r['speedup_vs_dense']:>9.2f}x{r['speedup_vs_csr']:>8.2f}x"
                     f"{'-' if iqr is None else f'{iqr:.0%}':>6}  {r['note']}")
    ours = next((r for r in case if r["implementation"] == OURS), None)
    if ours is not None and "best_alternative" in ours:
        lines.append("  " + comparison_line(ours))
        limit = limit_line(ours)
        if limit:
            lines.append("  " + limit)
    if first.get("load_flags"):
        lines.append(f"  ! {'; '.join(first['load_flags'])}: this row's ratios are "
                     "distorted; rerun on an idle machine")
    return "\n".join(lines)


def summary_lines(records):
    """One line per row: condensed's time, the best alternative, the ratios, the limit
    figure and any load flag."""
    rows = [r for r in records if r["implementation"] == OURS]
    if not rows:
        return []
    lines = [f"  {'layer':<12}{'batch':>6}{'threads':>8}{'condensed ms':>14}  "
             f"{'best alternative':<24}{'ratio':>8}{'vs best dense':>15}{'vs best CSR':>13}  "
             f"{'of limit':<32}flags"]
    for r in rows:
        n_in, n_out = r["shape"]
        trusted = not r.get("load_flags")
        best = "-"
        if r.get("best_alternative"):
            best_ms = r["median_s"] * r["speedup_vs_best_alternative"] * 1e3
            best = f"{r['best_alternative']} {best_ms:.4f}"
        if r.get("read_fraction") is not None and r["batch"] < GFLOPS_FROM_BATCH:
            limit = f"{r['read_fraction']:.0%} of read GB/s"
            if r.get("llc_bytes") and r["bytes_read"] <= r["llc_bytes"]:
                limit += " (in cache)"
        elif r.get("sgemm_fraction") is not None and r["batch"] >= GFLOPS_FROM_BATCH:
            limit = f"{r['sgemm_fraction']:.0%} of sgemm GFLOP/s"
        else:
            limit = "-"
        threads = r["threads"] if r["device"] == "cpu" else r["device"]
        lines.append(f"  {f'{n_in}->{n_out}':<12}{r['batch']:>6}{threads:>8}"
                     f"{r['median_s'] * 1e3:>14.4f}  {best:<24}"
                     f"{_ratio(r.get('speedup_vs_best_alternative'), trusted):>8}"
                     f"{_ratio(r.get('speedup_vs_best_dense'), trusted):>15}"
                     f"{_ratio(r.get('speedup_vs_best_csr'), trusted):>13}  {limit:<32}"
                     + ", ".join(r.get("load_flags") or []))
    return lines


def target_lines(records):
    """The project's development targets (TARGETS, GPU_TARGETS) next to the measured
    ratios: CPU rows of DEFAULT_SHAPES at 2 threads and 90% sparsity, condensed vs NumPy
    dense and vs the best CSR."""
    lines = []
    for r in records:
        if r["implementation"] == "condensed" and r["device"] != "cpu" and (
                abs(r["sparsity"] - 0.9) < 1e-9 and r["batch"] in GPU_TARGETS):
            need_dense, need_csr = GPU_TARGETS[r["batch"]]
            met = r["speedup_vs_dense"] >= need_dense and (
                need_csr is None or r["speedup_vs_csr"] >= need_csr)
            n_in, n_out = r["shape"]
            lines.append(f"  GPU {n_in}->{n_out} batch {r['batch']}: vs dense "
                         f"{r['speedup_vs_dense']:.2f}x (target >= {need_dense}x), vs csr "
                         f"{r['speedup_vs_csr']:.2f}x" + (f" (target >= {need_csr}x)"
                                                          if need_csr else "")
                         + f"  {'met' if met else 'NOT met'}")
            continue
        if (r["implementation"] != "condensed" or r["device"] != "cpu" or r["threads"] != 2
                or abs(r["sparsity"] - 0.9) > 1e-9 or r["batch"] not in TARGETS
                or tuple(r["shape"]) not in DEFAULT_SHAPES):
            continue
        n_in, n_out = r["shape"]
        need_dense, need_csr = TARGETS[r["batch"]]
        vs_csr = r.get("speedup_vs_best_csr") or r["speedup_vs_csr"]
        met = r["speedup_vs_dense"] >= need_dense and vs_csr >= need_csr
        flags = f"  [{'; '.join(r['load_flags'])}]" if r.get("load_flags") else ""
        lines.append(f"  {n_in}->{n_out} batch {r['batch']}: vs dense {r['speedup_vs_dense']:.2f}x"
                     f" (target >= {need_dense}x), vs best csr ({r.get('best_csr', 'csr')}) "
                     f"{vs_csr:.2f}x (target >= {need_csr}x)  {'met' if met else 'NOT met'}"
                     + flags)
    return lines


def limits_line(limits):
    """'this machine now: 1 thread: read 20.1 GB/s, sgemm 95.0 GFLOP/s; ...'."""
    parts = []
    for threads, figures in limits.items():
        flags = f" [{'; '.join(figures['load_flags'])}]" if figures["load_flags"] else ""
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}: read "
                     f"{figures['read_gb_s']:.1f} GB/s, sgemm "
                     f"{figures['sgemm_gflop_s']:.1f} GFLOP/s{flags}")
    first = next(iter(limits.values()))
    return (f"this machine now (read: sum of a {first['read_bytes'] / 2**20:.0f} MiB float32 "
            f"array; sgemm: float32 {first['sgemm_n']}^3): " + "; ".join(parts))
