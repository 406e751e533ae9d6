"""Single condensed layers against the strongest baselines, as one Markdown table.

    python benchmarks/bench_kernels.py --threads 2                 # run the bench, then the table
    python benchmarks/bench_kernels.py --from-json bench.json      # the table of a saved run

Without --from-json every other argument goes to ``python -m srigl_np.bench`` (shapes,
--batch-sizes, --threads, --quick, ...), whose full report prints first; the table
follows: per row the median milliseconds of each implementation that ran (NumPy dense,
scipy CSR, torch dense and CSR, MKL CSR: see the bench's docstring), condensed, the
best alternative and condensed's speedups over it, over the best dense and over the
best CSR, the achieved figure against this machine's own (GB/s at batch < 16, GFLOP/s
from 16 on), and any load flag. Ratios of flagged rows end in "?". The machine line
(CPU, vector ISA, the kernels' CPU path, threads) heads the table, so that no figure
is quoted without it.
"""

import argparse
import json
import os
import sys
import tempfile

from srigl_np import bench

COLUMNS = (("dense", "numpy dense"), ("csr", "scipy CSR"), ("torch-dense", "torch dense"),
           ("torch-csr", "torch CSR"), ("mkl-csr", "MKL CSR"), ("condensed", "condensed"))


def _ms(seconds):
    return "-" if seconds is None else f"{seconds * 1e3:.3g}"


def _x(ratio, trusted):
    return "-" if ratio is None else f"{ratio:.2f}x" + ("" if trusted else "?")


def markdown_table(report):
    """The table (a list of lines) of a bench report {"machine", "records"}: one row per
    (shape, sparsity, batch, threads), in the order the bench ran them."""
    machine, records = report.get("machine", {}), report["records"]
    rows = {}
    for r in records:
        key = (tuple(r["shape"]), r["sparsity"], r["batch"], r["threads"])
        rows.setdefault(key, {})[r["implementation"]] = r
    present = [(name, title) for name, title in COLUMNS
               if any(name in row for row in rows.values())]
    lines = [f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores; vectors "
             f"{machine.get('vector_isa', '?')}; condensed kernel path "
             f"{machine.get('cpu_path', '?')}; float32",
             "",
             "| layer (in→out), sparsity, batch, threads | "
             + " | ".join(f"{title} ms" for _, title in present)
             + " | best alternative | vs best | vs best dense | vs best CSR "
               "| condensed achieved | flags |",
             "|---" * (len(present) + 7) + "|"]
    for (shape, sparsity, batch, threads), row in rows.items():
        ours = row.get(bench.OURS)
        if ours is None:
            continue
        trusted = not ours.get("load_flags")
        if batch < bench.GFLOPS_FROM_BATCH and ours.get("achieved_gb_s") is not None:
            limit = f"{ours['achieved_gb_s']:.1f} GB/s"
            if ours.get("read_fraction") is not None:
                limit += f" ({ours['read_fraction']:.0%} of read)"
        elif ours.get("achieved_gflop_s") is not None:
            limit = f"{ours['achieved_gflop_s']:.1f} GFLOP/s"
            if ours.get("sgemm_fraction") is not None:
                limit += f" ({ours['sgemm_fraction']:.0%} of sgemm)"
        else:
            limit = "-"
        where = f"{threads}" if ours.get("device", "cpu") == "cpu" else ours["device"]
        built = ours.get("built_sparsity", sparsity)   # tiny layers cannot hold every request
        cells = [f"{shape[0]}→{shape[1]}, {built:.0%}, {batch}, {where}"]
        cells += [_ms(row[name]["median_s"]) if name in row else "-" for name, _ in present]
        cells += [ours.get("best_alternative") or "-",
                  _x(ours.get("speedup_vs_best_alternative"), trusted),
                  _x(ours.get("speedup_vs_best_dense"), trusted),
                  _x(ours.get("speedup_vs_best_csr"), trusted), limit,
                  "; ".join(ours.get("load_flags") or [])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [--from-json PATH] [bench arguments ...]")
    parser.add_argument("--from-json", metavar="PATH",
                        help="a report written by python -m srigl_np.bench --json")
    args, rest = parser.parse_known_args(argv)
    if args.from_json:
        if rest:
            parser.error(f"--from-json takes no bench arguments, got {' '.join(rest)}")
        try:
            with open(args.from_json) as f:
                report = json.load(f)
        except (OSError, ValueError) as exc:
            parser.error(f"--from-json {args.from_json}: {exc}")
        if not isinstance(report, dict) or "records" not in report:
            parser.error(f"--from-json {args.from_json}: not a bench report (no records)")
    else:
        if "--json" in rest:
            parser.error("--json: give it to python -m srigl_np.bench, then --from-json here")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "bench.json")
            status = bench.main(rest + ["--json", path])
            if status:
                return status
            with open(path) as f:
                report = json.load(f)
        print()
    print("\n".join(markdown_table(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
