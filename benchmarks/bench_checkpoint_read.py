"""Read a full-size ResNet-50 checkpoint (~100 MB) without torch: time and peak memory.

    python benchmarks/bench_checkpoint_read.py [--dir DIR] [--repeats 3] [--json FILE]

Writes, with torch, the state_dict the SRigL authors publish for ImageNet
(``resnet50_srigl_sparsity-0.90_...pt``: a bare torchvision ``state_dict``, no masks):
random weights under 90% constant fan-in masks in every Conv/Linear layer, BatchNorm
statistics that are not the identity, ``torch.save(state_dict)``. Then each round reads
it in a fresh Python process (so its peak is its own) with
``formats.importing.read_torch_checkpoint`` (masks from ``weight != 0``) and reports:

    seconds          wall time of the read, median over the rounds
    tracemalloc      peak bytes NumPy and Python allocated during the read
    rss delta        peak resident set (VmHWM) minus the resident set before the read
    /tensor bytes    each peak over the bytes of the file's tensors (what the read must
                     hold anyway); the reader's bound is ~2x

The bytes of the masks it infers (one bool per weight, a quarter of float32) are part of
the read's result and of its peak. torch is needed to write the file only. The timed
reads carry the bench's load flags (``bench.LoadMeter``, the reading children's CPU
counted as ours), and each read is reported on stderr as it starts.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

from srigl_np import bench
from srigl_np.bench.load import own_cpu_seconds

_CHILD = r"""
import json, resource, sys, time, tracemalloc
import numpy as np
from srigl_np.formats.importing import read_torch_checkpoint

def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

def peak_rss_bytes():
    # VmHWM: this process image's peak; ru_maxrss would also count the parent's
    # resident set at the fork (Linux carries it across exec).
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

path, trace = sys.argv[1], sys.argv[2] == "1"
before = rss_bytes()
if trace:
    tracemalloc.start()
start = time.perf_counter()
imported = read_torch_checkpoint(path)
seconds = time.perf_counter() - start
peak = tracemalloc.get_traced_memory()[1] if trace else None
maxrss = peak_rss_bytes()
print(json.dumps({
    "seconds": seconds, "tracemalloc_peak": peak, "rss_before": before,
    "rss_delta": maxrss - before,
    "tensor_bytes": sum(v.nbytes for v in imported.state_dict.values()),
    "mask_bytes": sum(m.nbytes for m in imported.masks.values()),
    "tensors": len(imported.state_dict), "masks": len(imported.masks),
    "mask_source": imported.mask_source,
    "constant_fan_in_layers": sum(low == high for low, high in imported.meta["fan_in"].values())}))
"""


def write_checkpoint(path, sparsity=0.9, seed=0, width=64):
    """torch.save a ResNet-50 state_dict at ``path`` (full size at width 64; constant
    fan-in masks at ``sparsity`` in every Conv/Linear weight, no weight exactly 0 inside
    them, so ``weight != 0`` gives the masks back); returns its tensor bytes."""
    import torch

    from srigl_np import dst
    from srigl_np.formats.layouts import resnet50

    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in resnet50(width=width, layers=(3, 4, 6, 3), num_classes=1000).items():
        if key.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            value = rng.standard_normal(shape, dtype=np.float32)
        if key.endswith(".weight") and len(shape) >= 2:
            value[value == 0] = 1.0
            value *= dst.constant_fan_in_mask(shape, sparsity, rng)
        state[key] = torch.from_numpy(value)
        if key.endswith("running_var"):
            state[key.replace("running_var", "num_batches_tracked")] = torch.tensor(1000)
    torch.save(state, path)
    return sum(t.numel() * t.element_size() for t in state.values())


def measure(path, trace):
    """One read of ``path`` in a fresh process -> its record (see _CHILD)."""
    done = subprocess.run([sys.executable, "-c", _CHILD, path, "1" if trace else "0"],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return json.loads(done.stdout)


def own_and_children_cpu_seconds():
    """CPU seconds of this process and of its finished children (the reads run in
    children, so the load meter must not count them as other load)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own_cpu_seconds() + children.ru_utime + children.ru_stime


def run(directory, repeats=3, width=64, progress=lambda text: None):
    """The record of ``repeats`` timed reads and one traced read (see the module
    docstring) of a ResNet-50 checkpoint written into ``directory``, with the bench's
    load flags of the timed reads ("flags"); ``progress(text)`` is told each read."""
    path = os.path.join(directory, "resnet50_srigl_sparsity-0.90.pt")
    progress("writing the checkpoint ...")
    written = write_checkpoint(path, width=width)
    timed = []
    with bench.LoadMeter(own_cpu=own_and_children_cpu_seconds) as meter:
        for i in range(repeats):
            progress(f"read {i + 1}/{repeats} ...")
            timed.append(measure(path, trace=False))
    progress("traced read ...")
    traced = measure(path, trace=True)
    tensor_bytes = timed[0]["tensor_bytes"]
    return {
        "file_bytes": os.path.getsize(path), "tensor_bytes": tensor_bytes,
        "written_tensor_bytes": written, "mask_bytes": timed[0]["mask_bytes"],
        "tensors": timed[0]["tensors"], "masks": timed[0]["masks"],
        "mask_source": timed[0]["mask_source"],
        "seconds_median": statistics.median(r["seconds"] for r in timed),
        "seconds": [r["seconds"] for r in timed],
        "rss_delta_max": max(r["rss_delta"] for r in timed),
        "rss_delta_over_tensors": max(r["rss_delta"] for r in timed) / tensor_bytes,
        "tracemalloc_peak": traced["tracemalloc_peak"],
        "tracemalloc_over_tensors": traced["tracemalloc_peak"] / tensor_bytes,
        "seconds_with_tracemalloc": traced["seconds"],
        "constant_fan_in_layers": traced["constant_fan_in_layers"],
        "flags": bench.row_flags(meter),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="where to write the checkpoint (default: a "
                                      "temporary directory, removed after)")
    parser.add_argument("--repeats", type=int, default=3, help="timed reads (default: 3)")
    parser.add_argument("--json", metavar="FILE", help="also write the record here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.dir:
        record = run(args.dir, args.repeats, progress=bench.Progress())
    else:
        with tempfile.TemporaryDirectory() as directory:
            record = run(directory, args.repeats, progress=bench.Progress())
    mb = 1e6
    print(f"ResNet-50 state_dict: {record['tensors']} tensors, "
          f"{record['tensor_bytes'] / mb:.1f} MB of tensors, file "
          f"{record['file_bytes'] / mb:.1f} MB; masks from {record['mask_source']} "
          f"({record['masks']} layers, {record['constant_fan_in_layers']} constant fan-in, "
          f"{record['mask_bytes'] / mb:.1f} MB)")
    print(f"read: {record['seconds_median']:.3f} s median of {len(record['seconds'])} "
          f"({', '.join(f'{s:.3f}' for s in record['seconds'])})"
          + (f" [{'; '.join(record['flags'])}: beside other load]" if record["flags"] else ""))
    print(f"peak memory: rss delta {record['rss_delta_max'] / mb:.1f} MB "
          f"({record['rss_delta_over_tensors']:.2f}x the tensors), tracemalloc "
          f"{record['tracemalloc_peak'] / mb:.1f} MB ({record['tracemalloc_over_tensors']:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
