"""The condensed training products of single layers against the dense GEMMs of the masked layer.

    python benchmarks/bench_training_products.py                      # the default table
    python benchmarks/bench_training_products.py --threads 1 --rounds 5 --no-conv

For each layer (the mlp's 784->300 and 300->100, the cnn's 9216->128 and, unless
--no-conv, the cnn's second convolution 32->64 3x3 on 26x26 images), each sparsity and
each thread count, one round times, interleaved, the dense masked layer (float32 W with
zeros: forward x W^T + b, input gradient dy W, weight gradient dy^T x, by NumPy's BLAS;
im2col / col2im around them for the convolution, as nn.Conv2d computes) and the condensed
layer (srigl_np.training_kernels: linear_forward, linear_input_grad, linear_weight_grad,
and the training step: forward with keep_columns, then linear_backward on the kept
columns, as a layer runs them, against the dense layer that likewise keeps its im2col; the
input gradient both as a scatter and as a gather over ``transposed_index``, whose build,
once per topology update, is timed on its own row; the convolution both straight from the
images, the default, and through the column matrix).
Medians over the rounds are printed as a Markdown table with the condensed/dense ratios,
headed by the CPU model, vector ISA, BLAS, and the load average before and after; each
row carries the bench's load flags (``bench.LoadMeter``: a ratio measured beside other
load ends in "?") and each case is reported on stderr as it starts. A timing, never a
test.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from srigl_np import bench, kernels, training_kernels as tk
from srigl_np.bench.machine import machine_info

LINEAR_LAYERS = (("mlp 784->300", 784, 300), ("mlp 300->100", 300, 100),
                 ("cnn 9216->128", 9216, 128))
# The cnn's second convolution: 32 -> 64 channels, 3x3, on the first one's 26x26 output.
CONV_LAYER = ("cnn conv 32->64 3x3 @26x26", 32, 64, 3, 26)


def layer_arrays(rng, n_out, n_in, sparsity):
    """Condensed (values, indices) at constant fan-in k = round((1 - sparsity) n_in) and
    the dense masked float32 W[n_out, n_in]."""
    k = max(1, round((1.0 - sparsity) * n_in))
    indices = np.sort(np.argsort(rng.random((n_out, n_in)), axis=1)[:, :k], axis=1)
    indices = indices.astype(np.int16 if n_in <= 32768 else np.int32)
    values = (rng.standard_normal((n_out, k)) / np.sqrt(k)).astype(np.float32)
    weight = np.zeros((n_out, n_in), np.float32)
    np.put_along_axis(weight, indices.astype(np.int64), values, axis=1)
    return values, indices, weight


def linear_step(values, indices, x, dy, bias, threads, transposed=None):
    """A training step's three products, as a layer runs them: the forward keeps x's
    columns for the backward."""
    y, x_columns = tk.linear_forward(values, indices, x, bias, threads, keep_columns=True)
    return y, tk.linear_backward(values, indices, x, dy, threads, transposed=transposed,
                                 x_columns=x_columns)


def conv_step(values, indices, x, dy, bias, threads, transposed=None):
    """The column lowering's step: the forward keeps its column matrix for the backward."""
    y, cols = tk.conv2d_forward(values, indices, x, 3, bias=bias, threads=threads,
                                lowering="columns", keep_columns=True)
    return y, tk.conv2d_backward(values, indices, x, dy, 3, threads=threads,
                                 lowering="columns", transposed=transposed, x_columns=cols)


def direct_conv_step(values, indices, x, dy, bias, threads):
    return (tk.conv2d_forward(values, indices, x, 3, bias=bias, threads=threads),
            tk.conv2d_backward(values, indices, x, dy, 3, threads=threads))


def linear_operations(values, indices, weight, x, dy, bias, threads):
    """{name: (dense callable, condensed callable)} of one Linear layer."""
    n_in = x.shape[1]
    transposed = tk.transposed_index(indices, n_in)
    return {
        "forward": (lambda: x @ weight.T + bias,
                    lambda: tk.linear_forward(values, indices, x, bias, threads)),
        "input grad": (lambda: dy @ weight,
                       lambda: tk.linear_input_grad(values, indices, dy, n_in, threads)),
        "input grad, gather": (
            lambda: dy @ weight,
            lambda: tk.linear_input_grad(values, indices, dy, n_in, threads, transposed)),
        "weight grad": (lambda: dy.T @ x,
                        lambda: tk.linear_weight_grad(indices, x, dy, threads)),
        "step (all three)": (
            lambda: (x @ weight.T + bias, dy @ weight, dy.T @ x),
            lambda: linear_step(values, indices, x, dy, bias, threads)),
        "step (all three), gather": (
            lambda: (x @ weight.T + bias, dy @ weight, dy.T @ x),
            lambda: linear_step(values, indices, x, dy, bias, threads, transposed)),
        "transposed_index (once per update)": (
            lambda: None, lambda: tk.transposed_index(indices, n_in)),
    }


def conv_operations(values, indices, weight, x, dy, bias, threads):
    """{name: (dense callable, condensed callable)} of one 3x3 stride-1 Conv2d."""
    batch, _, height, width = x.shape
    n_out = weight.shape[0]
    transposed = tk.transposed_index(indices, weight.shape[1])

    def dense_forward():
        cols = kernels.im2col(x, 3, 3, 1, 0, threads)
        y = (cols @ weight.T + bias).reshape(batch, height - 2, width - 2, n_out)
        return y.transpose(0, 3, 1, 2), cols

    def dense_backward(cols=None):
        if cols is None:
            cols = kernels.im2col(x, 3, 3, 1, 0, threads)
        rows = dy.transpose(0, 2, 3, 1).reshape(-1, n_out)
        return rows.T @ cols, kernels.col2im(rows @ weight, x.shape, 3, 3, 1, 0, threads)

    def dense_step():
        y, cols = dense_forward()        # nn.Conv2d keeps its im2col for the backward
        return y, dense_backward(cols)

    return {
        "forward, direct": (
            dense_forward,
            lambda: tk.conv2d_forward(values, indices, x, 3, bias=bias, threads=threads)),
        "forward, columns": (
            dense_forward,
            lambda: tk.conv2d_forward(values, indices, x, 3, bias=bias, threads=threads,
                                      lowering="columns")),
        "backward (both), direct": (
            dense_backward,
            lambda: tk.conv2d_backward(values, indices, x, dy, 3, threads=threads)),
        "backward (both), columns + gather": (
            dense_backward,
            lambda: tk.conv2d_backward(values, indices, x, dy, 3, threads=threads,
                                       lowering="columns", transposed=transposed)),
        "step (all three), direct": (
            dense_step, lambda: direct_conv_step(values, indices, x, dy, bias, threads)),
        "step (all three), columns + gather": (
            dense_step, lambda: conv_step(values, indices, x, dy, bias, threads, transposed)),
    }


def time_once(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(operations, rounds):
    """{name: (dense median s, condensed median s)}: every round runs each operation's
    dense and condensed callables one after the other (warm-up round discarded)."""
    samples = {name: ([], []) for name in operations}
    for round_index in range(rounds + 1):
        for name, (dense, condensed) in operations.items():
            d, c = time_once(dense), time_once(condensed)
            if round_index:
                samples[name][0].append(d)
                samples[name][1].append(c)
    return {name: (statistics.median(d), statistics.median(c))
            for name, (d, c) in samples.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.99])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--conv-rounds", type=int, default=5)
    parser.add_argument("--no-conv", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    progress = bench.Progress()
    info = machine_info()
    load_before = os.getloadavg()
    print(f"# {info['cpu']}, {info['cores']} cores; vectors {info['vector_isa']}; BLAS "
          f"{info['blas']}; OpenMP {info['openmp']}; float32, batch {args.batch}; "
          f"load average before {load_before[0]:.2f}")
    print()
    print("| layer | sparsity | threads | operation | dense ms | condensed ms | condensed/dense "
          "| flags |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(args.seed)
    cases = [("linear",) + layer for layer in LINEAR_LAYERS]
    if not args.no_conv:
        cases.append(("conv",) + CONV_LAYER)
    for case in cases:
        kind, label = case[0], case[1]
        for sparsity in args.sparsities:
            if kind == "linear":
                _, _, n_in, n_out = case
                values, indices, weight = layer_arrays(rng, n_out, n_in, sparsity)
                x = rng.standard_normal((args.batch, n_in)).astype(np.float32)
                dy = rng.standard_normal((args.batch, n_out)).astype(np.float32)
                build, rounds = linear_operations, args.rounds
            else:
                _, _, c_in, n_out, size, side = case
                values, indices, weight = layer_arrays(rng, n_out, c_in * size * size, sparsity)
                x = rng.standard_normal((args.batch, c_in, side, side)).astype(np.float32)
                dy = rng.standard_normal((args.batch, n_out, side - 2, side - 2)).astype(
                    np.float32)
                build, rounds = conv_operations, args.conv_rounds
            bias = rng.standard_normal(n_out).astype(np.float32)
            for threads in args.threads:
                progress(f"{label}, {sparsity:.0%}, {threads} threads ...")
                with threadpool_limits(limits=threads, user_api="blas"), \
                        bench.LoadMeter() as meter:
                    medians = measure(build(values, indices, weight, x, dy, bias, threads),
                                      rounds)
                flags = bench.row_flags(meter)
                for name, (dense, condensed) in medians.items():
                    once = name.startswith("transposed_index")
                    ratio = "-" if once else f"{condensed / dense:.3f}" + "?" * bool(flags)
                    print(f"| {label} | {sparsity:.0%} | {threads} | {name} | "
                          f"{'-' if once else f'{dense * 1e3:.3f}'} | {condensed * 1e3:.3f} | "
                          f"{ratio} | {'; '.join(flags) or '-'} |")
                sys.stdout.flush()
    load_after = os.getloadavg()
    print()
    print(f"load average after {load_after[0]:.2f} on {os.cpu_count()} CPUs"
          + ("  (LOADED: other processes shared the CPUs; ratios are indicative)"
             if max(load_before[0], load_after[0]) > 0.5 * (os.cpu_count() or 1) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
