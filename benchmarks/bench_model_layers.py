"""Every layer of torchvision ResNet-50 and ViT-B/16, condensed at 90% sparsity, against torch.

    python benchmarks/bench_model_layers.py                      # both networks, batch 1 and 32
    python benchmarks/bench_model_layers.py --nets vit_b_16 --batch-sizes 1 --rounds 7

For each distinct layer shape of the network (with how often it occurs), one random
constant fan-in layer (k = round(0.1 * fan_in) of each output's fan_in inputs kept, all
outputs active) is timed two ways in one process, in interleaved rounds (each variant one
turn per round; a turn's time is the median of its calls, see ``sample``), medians over
the rounds in ms:

    torch   torch.nn.functional.conv2d / linear with the dense masked weight and bias,
            torch.set_num_threads(threads), under torch.inference_mode()
    ours    the kernel the condensed graph calls: convolutions
            ``kernels.condensed_conv`` (NCHW in and out, bias and ReLU fused where
            the network has them; the residual add fused into the block's last 1x1
            convolution), linear layers ``kernels.condensed_product`` on rows
            (ViT: 197 tokens x batch rows; the heads: batch rows)

The first convolution of ResNet-50 is timed both condensed and dense (k = fan_in, as a
network that keeps its stem dense would run it); the totals use the condensed one, and
a second total line uses the dense stem. Totals weight each shape by its count. The
paper's layer, ViT encoder_layer_11.mlp.3 (3072 -> 768), is also timed on one token
row and on 197 rows (the paper: 43.6 us, 3.4x dense, at batch 1).

The machine line (CPU from /proc/cpuinfo, the kernels' CPU path, threads, dtype) heads
the output; each table carries the bench's load flags (``bench.LoadMeter``: its ratios
then end in "?" or name the flag) and each is reported on stderr as it starts. Speeds
are for reading, not for tests.
"""

import argparse
import time

import numpy as np
import torch

from srigl_np import bench, kernels
from srigl_np.bench.machine import _cpuinfo

SPARSITY = 0.9


def resnet50_layers():
    """(name, kind, c_in, c_out, kernel, stride, padding, in_size, count, relu, residual)
    for every convolution of torchvision's ResNet-50 (v1.5: the stride on the 3x3) at
    224 x 224, then the fc layer as kind "linear" (rows = batch)."""
    layers = [("conv1 7x7/2", "conv", 3, 64, 7, 2, 3, 224, 1, True, False)]
    size, c_in = 56, 64
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), 1):
        stride = 1 if stage == 1 else 2
        out = 4 * width
        out_size = size // stride
        name = f"layer{stage}"
        # block 0: the strided 3x3 and the strided downsample
        layers += [
            (f"{name}.0.conv1 1x1", "conv", c_in, width, 1, 1, 0, size, 1, True, False),
            (f"{name}.0.conv2 3x3/{stride}", "conv", width, width, 3, stride, 1, size, 1,
             True, False),
            (f"{name}.0.conv3 1x1", "conv", width, out, 1, 1, 0, out_size, 1, True, True),
            (f"{name}.0.downsample 1x1/{stride}", "conv", c_in, out, 1, stride, 0, size, 1,
             False, False),
        ]
        if blocks > 1:
            layers += [
                (f"{name}.k.conv1 1x1", "conv", out, width, 1, 1, 0, out_size, blocks - 1,
                 True, False),
                (f"{name}.k.conv2 3x3", "conv", width, width, 3, 1, 1, out_size, blocks - 1,
                 True, False),
                (f"{name}.k.conv3 1x1", "conv", width, out, 1, 1, 0, out_size, blocks - 1,
                 True, True),
            ]
        size, c_in = out_size, out
    layers.append(("fc", "linear", 2048, 1000, 0, 0, 0, 1, 1, False, False))
    return layers


def vit_b_16_layers():
    """The layers of torchvision's ViT-B/16 at 224 x 224 in the same tuples: the patch
    convolution, then per encoder layer (12) the attention's in_proj and out_proj and
    the MLP's two linears on 197 token rows per image, then the head (rows = batch)."""
    tokens = 197
    return [
        ("conv_proj 16x16/16", "conv", 3, 768, 16, 16, 0, 224, 1, False, False),
        ("in_proj 768->2304", "linear", 768, 2304, 0, 0, 0, tokens, 12, False, False),
        ("out_proj 768->768", "linear", 768, 768, 0, 0, 0, tokens, 12, False, False),
        ("mlp.0 768->3072", "linear", 768, 3072, 0, 0, 0, tokens, 12, False, False),
        ("mlp.3 3072->768", "linear", 3072, 768, 0, 0, 0, tokens, 12, False, False),
        ("heads 768->1000", "linear", 768, 1000, 0, 0, 0, 1, 1, False, False),
    ]


NETWORKS = {"resnet50": resnet50_layers, "vit_b_16": vit_b_16_layers}


def constant_fan_in(rng, n_out, fan_in, k):
    """(values[n_out, k] float32, indices[n_out, k] int16/int32 sorted, dense[n_out, fan_in])."""
    indices = np.sort(np.argsort(rng.random((n_out, fan_in)), axis=1)[:, :k], axis=1)
    values = (rng.standard_normal((n_out, k)) / np.sqrt(k)).astype(np.float32)
    dense = np.zeros((n_out, fan_in), np.float32)
    np.put_along_axis(dense, indices, values, axis=1)
    dtype = np.int16 if fan_in <= np.iinfo(np.int16).max else np.int32
    return values, indices.astype(dtype), dense


class Layer:
    """One layer shape at one batch size: ``torch()`` and ``ours()`` compute its output."""

    def __init__(self, spec, batch, rng, threads, dense=False, rows=None):
        (self.name, self.kind, c_in, c_out, kernel, stride, padding, size, self.count,
         relu, residual) = spec
        fan_in = c_in * kernel * kernel if self.kind == "conv" else c_in
        k = fan_in if dense else max(1, round((1 - SPARSITY) * fan_in))
        self.k = k
        values, indices, weight = constant_fan_in(rng, c_out, fan_in, k)
        bias = (rng.standard_normal(c_out) * 0.1).astype(np.float32)
        self.weights = kernels.CondensedWeights(values, indices, fan_in)
        self.bias = bias
        bias_t = torch.from_numpy(bias)
        if self.kind == "conv":
            x = rng.standard_normal((batch, c_in, size, size)).astype(np.float32)
            weight_t = torch.from_numpy(weight.reshape(c_out, c_in, kernel, kernel))
            x_t = torch.from_numpy(x)
            out_size = (size + 2 * padding - kernel) // stride + 1
            res = (rng.standard_normal((batch, c_out, out_size, out_size)).astype(np.float32)
                   if residual else None)
            res_t = None if res is None else torch.from_numpy(res)

            def torch_call():
                y = torch.nn.functional.conv2d(x_t, weight_t, bias_t, stride, padding)
                if res_t is not None:
                    y += res_t
                return torch.relu_(y) if relu else y

            def ours_call():
                return kernels.condensed_conv(
                    self.weights, x, (kernel, kernel), stride, padding, bias=bias,
                    relu=relu, residual=res, threads=threads)

            self.shape = f"{c_in}->{c_out} @{size}"
        else:
            n_rows = (rows if rows is not None else size) * batch
            x = rng.standard_normal((n_rows, c_in)).astype(np.float32)
            weight_t, x_t = torch.from_numpy(weight), torch.from_numpy(x)

            def torch_call():
                return torch.nn.functional.linear(x_t, weight_t, bias_t)

            def ours_call():
                return kernels.condensed_product(self.weights, x, bias, threads)

            self.shape = f"{n_rows} rows"
        self.torch, self.ours = torch_call, ours_call
        if dense:
            self.name += " (dense)"

    def check(self):
        expected, got = self.torch().numpy(), self.ours()
        scale = max(1.0, float(np.abs(expected).max()))
        error = float(np.abs(expected - got).max()) / scale
        if error > 1e-3:
            raise AssertionError(f"{self.name}: ours differs from torch by {error:.2e}")


def sample(call, least_seconds=0.02, least_calls=3):
    """Seconds per call in one turn: the median of the calls made in least_seconds (at
    least least_calls). Per-call medians rather than the mean: on a shared 2-vCPU
    machine a call whose second thread is descheduled takes a whole time slice (10-40x
    a quiet call, for torch and ours alike), and a mean over a turn keeps those."""
    times = []
    start = time.perf_counter()
    while len(times) < least_calls or time.perf_counter() - start < least_seconds:
        begin = time.perf_counter()
        call()
        times.append(time.perf_counter() - begin)
    return float(np.median(times))


def time_layers(layers, rounds):
    """{layer: (torch samples, ours samples)} in seconds, one sample per round,
    interleaved rounds."""
    times = {layer: ([], []) for layer in layers}
    for layer in layers:   # warm-up: caches, lookup layouts, torch's primitives
        layer.check()
        layer.torch()
        layer.ours()
    for _ in range(rounds):
        for layer in layers:
            times[layer][0].append(sample(layer.torch))
            times[layer][1].append(sample(layer.ours))
    return times


def flag_line(flags):
    """The line under a table timed beside other load ("" when nothing was noticed)."""
    return (f"\n! {'; '.join(flags)}: these ratios do not compare (rerun on an idle "
            "machine)" if flags else "")


def report(net, batch, layers, samples, dense_stem=None, flags=()):
    """The per-layer table (medians over the rounds) and the weighted totals, then the
    load flags of its timing (``bench.row_flags``) when it has any; returns
    (torch total, ours total) of the medians and of the best rounds (each layer's
    fastest round: on a shared machine, the estimate least touched by other jobs)."""
    best = {layer: (min(t), min(o)) for layer, (t, o) in samples.items()}
    medians = {layer: (float(np.median(t)), float(np.median(o)))
               for layer, (t, o) in samples.items()}
    print(f"\n## {net}, batch {batch}\n")
    print("| layer | shape | k | count | torch ms | ours ms | torch/ours |")
    print("|---|---|---|---|---|---|---|")
    total_t = total_o = 0.0
    for layer in layers:
        t, o = medians[layer]
        print(f"| {layer.name} | {layer.shape} | {layer.k} | {layer.count} | {1e3 * t:.3f} | "
              f"{1e3 * o:.3f} | {t / o:.2f} |")
        if not layer.name.endswith("(dense)"):
            total_t += layer.count * t
            total_o += layer.count * o
    print(f"| **total (weighted)** | | | | **{1e3 * total_t:.2f}** | **{1e3 * total_o:.2f}** "
          f"| **{total_t / total_o:.2f}** |")
    if dense_stem is not None:
        sparse_stem, dense = dense_stem
        t_s, o_s = medians[sparse_stem]
        t_d, o_d = medians[dense]
        tt, oo = total_t - t_s + t_d, total_o - o_s + o_d
        print(f"| total, dense stem | | | | {1e3 * tt:.2f} | {1e3 * oo:.2f} | {tt / oo:.2f} |")
    if flags:
        print(flag_line(flags))
    best_t = sum(layer.count * best[layer][0] for layer in layers
                 if not layer.name.endswith("(dense)"))
    best_o = sum(layer.count * best[layer][1] for layer in layers
                 if not layer.name.endswith("(dense)"))
    return total_t, total_o, best_t, best_o


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", choices=sorted(NETWORKS),
                        default=["resnet50", "vit_b_16"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    progress = bench.Progress()
    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, "blas")
    model, _ = _cpuinfo()
    print(f"CPU: {model}; kernels' CPU path: {kernels.cpu_path()}; threads: "
          f"{args.threads} (torch.set_num_threads and the kernels' threads); "
          f"dtype: float32; torch {torch.__version__}; {args.rounds} interleaved rounds, "
          f"medians")
    rng = np.random.default_rng(args.seed)
    summary = []
    with torch.inference_mode():
        if "vit_b_16" in args.nets:
            spec = ("encoder_layer_11.mlp.3 3072->768", "linear", 3072, 768, 0, 0, 0, 1, 1,
                    False, False)
            paper = [Layer(spec, 1, rng, args.threads, rows=1),
                     Layer(spec, 1, rng, args.threads, rows=197)]
            progress("the paper's layer ...")
            with bench.LoadMeter() as meter:
                samples = time_layers(paper, max(args.rounds, 7))
            flags = bench.row_flags(meter)
            print("\n## the paper's layer (paper: 43.6 us, 3.4x dense, batch 1)\n")
            print("| layer | rows | torch us | ours us | torch/ours |\n|---|---|---|---|---|")
            for layer in paper:
                t, o = (float(np.median(v)) for v in samples[layer])
                print(f"| {layer.name} | {layer.shape} | {1e6 * t:.1f} | {1e6 * o:.1f} | "
                      f"{t / o:.2f}{'?' * bool(flags)} |")
            if flags:
                print(flag_line(flags))
        for net in args.nets:
            for batch in args.batch_sizes:
                specs = NETWORKS[net]()
                layers = [Layer(spec, batch, rng, args.threads) for spec in specs]
                stem = None
                if net == "resnet50":
                    dense = Layer(specs[0], batch, rng, args.threads, dense=True)
                    dense.count = 0
                    layers.insert(1, dense)
                    stem = (layers[0], dense)
                progress(f"{net}, batch {batch} ...")
                with bench.LoadMeter() as meter:
                    samples = time_layers(layers, args.rounds)
                flags = bench.row_flags(meter)
                summary.append((net, batch) + report(net, batch, layers, samples, stem, flags)
                               + (flags,))
    print("\n## totals (medians over the rounds; best rounds)\n")
    print("| network | batch | torch ms | ours ms | torch/ours | best: torch ms | ours ms "
          "| torch/ours | flags |")
    print("|---|---|---|---|---|---|---|---|---|")
    for net, batch, t, o, bt, bo, flags in summary:
        print(f"| {net} | {batch} | {1e3 * t:.2f} | {1e3 * o:.2f} | "
              f"{bench.flagged(f'{t / o:.2f}', flags)} | {1e3 * bt:.2f} | {1e3 * bo:.2f} | "
              f"{bench.flagged(f'{bt / bo:.2f}', flags)} | {'; '.join(flags) or '-'} |")


if __name__ == "__main__":
    main()
