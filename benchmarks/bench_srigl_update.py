"""Time one SRigL (and RigL) topology update next to one dense matmul of the same layer.

    python benchmarks/bench_srigl_update.py --threads 1 --repeats 20

The layer is a 3072x768 weight (a transformer MLP's up-projection) at 90% sparsity with
constant fan-in; the matmul is a batch of 256: (256x768) @ (768x3072) in float32, the
forward GEMM of that layer. An update runs once every ΔT (100s of) steps, so a ratio of
a few matmuls means the update costs well under 1% of training. The update is pure NumPy
(no Python loop over neurons); the thread limit applies to BLAS (the matmul) and any
OpenMP pool, via threadpoolctl. The bench's load flags (``bench.LoadMeter``) follow
the ratios, and each timing is reported on stderr as it starts.
"""

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from srigl_np import bench, dst
from srigl_np.validation import check_thread_flag


def _median_seconds(function, repeats):
    function()   # warm-up: page in the arrays, let BLAS spin up its threads
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def run(n_out=3072, n_in=768, batch=256, sparsity=0.9, drop_fraction=0.3, repeats=20,
        threads=1, seed=0, progress=lambda text: None):
    """Return a dict of the shapes, settings, timings (seconds) and the bench's load
    flags ("flags", ``bench.row_flags``); ``progress(text)`` is told each timing."""
    rng = np.random.default_rng(seed)
    shape = (n_out, n_in)
    mask = dst.constant_fan_in_mask(shape, sparsity, rng)
    weight = rng.standard_normal(shape, dtype=np.float32) * mask
    grad = rng.standard_normal(shape, dtype=np.float32)
    x = rng.standard_normal((batch, n_in), dtype=np.float32)
    weight_t = np.ascontiguousarray(weight.T)   # (768, 3072): the GEMM the issue names

    result = dst.srigl_update(weight, mask, grad, drop_fraction=drop_fraction,
                              sparsity=sparsity)
    with threadpool_limits(limits=threads), bench.LoadMeter() as meter:
        progress(f"srigl_update x {repeats} ...")
        srigl = _median_seconds(lambda: dst.srigl_update(
            weight, mask, grad, drop_fraction=drop_fraction, sparsity=sparsity), repeats)
        progress(f"rigl_update x {repeats} ...")
        rigl = _median_seconds(lambda: dst.rigl_update(
            weight, mask, grad, drop_fraction=drop_fraction), repeats)
        progress(f"matmul x {repeats} ...")
        matmul = _median_seconds(lambda: x @ weight_t, repeats)
    blas = [f"{p.get('internal_api')} {p.get('version')}" for p in threadpool_info()
            if p.get("user_api") == "blas"]
    return {
        "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
        "cpu_count": os.cpu_count(), "threads": threads, "numpy": np.__version__,
        "blas": blas, "weight_shape": list(shape), "dtype": "float32",
        "sparsity": sparsity, "drop_fraction": drop_fraction, "fan_in": result.fan_in,
        "ablated": int(result.ablated.size), "changed": int(result.grown.sum()),
        "matmul_shape": f"({batch}x{n_in}) @ ({n_in}x{n_out})", "repeats": repeats,
        "srigl_update_s": srigl[0], "srigl_update_min_s": srigl[1],
        "rigl_update_s": rigl[0], "rigl_update_min_s": rigl[1],
        "matmul_s": matmul[0], "matmul_min_s": matmul[1],
        "srigl_over_matmul": srigl[0] / matmul[0], "rigl_over_matmul": rigl[0] / matmul[0],
        "flags": bench.row_flags(meter),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs (median shown)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--drop-fraction", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be >= 1")
    try:
        check_thread_flag("--threads", args.threads, minimum=1)
    except ValueError as exc:
        parser.error(str(exc))
    report = run(batch=args.batch, sparsity=args.sparsity, drop_fraction=args.drop_fraction,
                 repeats=args.repeats, threads=args.threads, seed=args.seed,
                 progress=bench.Progress())
    if args.json:
        print(json.dumps(report))
        return
    print(f"machine {report['machine']}, {report['cpu_count']} CPUs, threads "
          f"{report['threads']}, numpy {report['numpy']}, BLAS {', '.join(report['blas'])}")
    print(f"weight {report['weight_shape'][0]}x{report['weight_shape'][1]} float32, sparsity "
          f"{report['sparsity']}, drop fraction {report['drop_fraction']}: fan-in "
          f"{report['fan_in']}, {report['ablated']} ablated, {report['changed']} grown")
    print(f"median of {report['repeats']} (min in brackets):")
    for label, key in [("srigl_update", "srigl_update"), ("rigl_update", "rigl_update"),
                       (f"matmul {report['matmul_shape']}", "matmul")]:
        print(f"  {label:32s} {report[key + '_s'] * 1e3:8.2f} ms "
              f"({report[key + '_min_s'] * 1e3:.2f})")
    flags = report["flags"]
    srigl = bench.flagged(f"{report['srigl_over_matmul']:.1f}", flags)
    rigl = bench.flagged(f"{report['rigl_over_matmul']:.1f}", flags)
    print(f"  srigl_update / matmul = {srigl}, rigl_update / matmul = {rigl}")
    if flags:
        print(f"  ! {'; '.join(flags)}: these ratios do not compare (rerun on an idle machine)")


if __name__ == "__main__":
    main()
