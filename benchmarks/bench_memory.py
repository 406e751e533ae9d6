"""Train a layer of 2*10^9 dense weights at 99% sparsity, topology updates included, in
under 2 GB: the condensed path's memory, measured.

    PYTHONPATH=. python benchmarks/bench_memory.py                  # 40000 -> 50000, k 400
    PYTHONPATH=. python benchmarks/bench_memory.py --n-in 4000 --n-out 5000 --k 40  # quick

The model: x[batch, n_in] -> a constant fan-in Linear n_in -> n_out (values[n_out, k] +
int32 indices[n_out, k] + bias; Kaiming-normal values, std sqrt(2/k)) -> ReLU -> a
dense Linear n_out -> classes -> softmax cross-entropy, on synthetic data (standard
normal x labelled by a fixed random linear teacher, argmax(x T); one fresh batch a step
from a seeded Generator). Its dense form
would be n_out*n_in float32 weights (8 GB at the default shape) and as much again for
the gradient and the momentum; this script never creates an array of that size: the
sparse layer is drawn directly in the condensed form (each row's k distinct columns
from a numpy Generator, in row blocks), trained with ``srigl_np.training_kernels``
(linear_forward / linear_backward on values + indices, SGD with momentum on the values
by ``sgd_step``), and rewired by ``dst.condensed_update.srigl_update_rows``, whose
dense gradient rows are computed block by block from that step's kept x and output
gradient (``dy[:, r0:r1].T @ x``). The momentum follows the rewiring (kept slots keep
theirs, grown ones start at 0).

Each update is checked (rows ascending, every active row exactly k distinct ascending
columns, ablated rows absent, k*n_active within the budget), then training goes on. It
prints progress as it goes, then the peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``,
the whole process: interpreter, NumPy and every array) and the time per training step
and per update, with the CPU model, kernel path and thread counts. A measurement, never
a test; exit status 1 if the peak RSS exceeds --limit-gb.
"""

import argparse
import math
import os
import resource
import statistics
import sys
import time

import numpy as np

from srigl_np import training_kernels as tk
from srigl_np.bench.machine import machine_info
from srigl_np.dst import default_block_rows, layer_budget
from srigl_np.dst.condensed_update import srigl_update_rows
from srigl_np.dst.sparsity import DynamicSparsity, train_step
from srigl_np.nn.layers import Linear, ReLU, Sequential
from srigl_np.nn.optim import SGD


def rss_mb():
    """(current RSS, peak RSS) of this process in MB (1e6 bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6   # KiB on Linux
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    return current, peak


def say(text):
    current, peak = rss_mb()
    print(f"[{time.strftime('%H:%M:%S')}] {text}  (RSS {current:.0f} MB, peak {peak:.0f} MB)",
          flush=True)


def random_columns(rng, n_rows, n_in, k, block_rows, dtype):
    """int (n_rows, k): each row k distinct columns of [0, n_in), ascending, a uniform
    random k-subset drawn row block by row block (never an (n_rows, n_in) array).

    A row takes the first k distinct values of k + extra i.i.d. uniform draws (sampling
    without replacement by rejection, so the subset is uniform); the rare row with fewer
    than k distinct draws is drawn again."""
    extra = max(8, 4 * math.ceil(k * k / n_in))
    out = np.empty((n_rows, k), dtype=dtype)
    for r0 in range(0, n_rows, block_rows):
        todo = np.arange(r0, min(n_rows, r0 + block_rows))
        while todo.size:
            draws = rng.integers(0, n_in, size=(todo.size, k + extra))
            order = np.argsort(draws, axis=1, kind="stable")   # equal values: first drawn first
            ordered = np.take_along_axis(draws, order, axis=1)
            repeat = np.zeros(draws.shape, dtype=bool)
            repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
            first = np.empty_like(repeat)
            np.put_along_axis(first, order, ~repeat, axis=1)   # a value's first draw
            enough = first.sum(axis=1) >= k
            take = first & (np.cumsum(first, axis=1) <= k)
            chosen = draws[enough][take[enough]].reshape(-1, k)
            out[todo[enough]] = np.sort(chosen, axis=1)
            todo = todo[~enough]
    return out


class Model:
    """The condensed sparse Linear + ReLU + dense head, with SGD momentum state."""

    def __init__(self, rng, n_in, n_out, k, classes, block_rows):
        self.n_in, self.n_out, self.classes = n_in, n_out, classes
        self.rows = np.arange(n_out, dtype=np.int64)
        self.indices = random_columns(rng, n_out, n_in, k, block_rows,
                                      np.int16 if n_in <= 32768 else np.int32)
        self.values = np.empty((n_out, k), dtype=np.float32)
        for r0 in range(0, n_out, block_rows):   # in blocks: no float64 copy of all values
            r1 = min(n_out, r0 + block_rows)
            self.values[r0:r1] = rng.standard_normal((r1 - r0, k)) * math.sqrt(2.0 / k)
        self.bias = np.zeros(n_out, np.float32)
        self.head = (rng.standard_normal((classes, n_out)) / math.sqrt(n_out)).astype(np.float32)
        self.head_bias = np.zeros(classes, np.float32)
        self.params = [self.values, self.bias, self.head, self.head_bias]
        self.momentum = [np.zeros_like(p) for p in self.params]

    def step(self, x, labels, lr, momentum):
        """One training step; returns (loss, dy) with dy[batch, n_out] the sparse layer's
        output gradient (every neuron's, ablated ones included: the dense gradient rows
        dy[:, r].T @ x of an ablated neuron are its grow score)."""
        batch = x.shape[0]
        y_active, x_columns = tk.linear_forward(self.values, self.indices, x,
                                                self.bias[self.rows], keep_columns=True)
        if self.rows.size == self.n_out:
            y = y_active
        else:   # an ablated neuron outputs its bias
            y = np.broadcast_to(self.bias, (batch, self.n_out)).copy()
            y[:, self.rows] = y_active
        h = np.maximum(y, 0)
        logits = h @ self.head.T + self.head_bias
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        loss = float(-np.log(p[np.arange(batch), labels]).mean())
        dlogits = p
        dlogits[np.arange(batch), labels] -= 1
        dlogits /= batch
        grads = [None, None, dlogits.T @ h, dlogits.sum(axis=0)]
        dy = (dlogits @ self.head) * (y > 0)
        _, grads[0] = tk.linear_backward(self.values, self.indices, x,
                                         np.ascontiguousarray(dy[:, self.rows]),
                                         input_grad=False, x_columns=x_columns)
        grads[1] = dy.sum(axis=0)
        for p_, g, buf in zip(self.params, grads, self.momentum):
            tk.sgd_step(p_, g, buf, lr=lr, momentum=momentum)
        return loss, dy

    def rewire(self, update):
        """Take the update's layout; the momentum follows the values' slots."""
        self.momentum[0] = update.take(self.momentum[0])
        self.rows, self.indices, self.values = update.rows, update.indices, update.values
        self.params[0] = self.values


class GradientRows:
    """grad_block for srigl_update_rows: the dense gradient rows [r0, r1) of the sparse
    layer, dy[:, r0:r1]^T x (float32), computed on demand; reports each pass over the
    rows at every tenth of them."""

    def __init__(self, x, dy):
        self.x, self.dy = x, dy
        self.passes, self.next_report = 0, 0.0
        self.started = time.perf_counter()

    def __call__(self, r0, r1):
        n_out = self.dy.shape[1]
        if r0 == 0:
            self.passes += 1
            self.next_report = 0.1
        if r1 / n_out >= self.next_report:
            say(f"  update: gradient pass {self.passes}, rows {r1}/{n_out}, "
                f"{time.perf_counter() - self.started:.1f} s into the update")
            self.next_report += 0.1
        return self.dy[:, r0:r1].T @ self.x


def check_layout(model, update, budget):
    """The invariants of a SRigL layer after an update (AssertionError otherwise)."""
    n_active, k = model.values.shape
    assert k == update.fan_in and model.indices.shape == (n_active, k)
    assert (np.diff(model.rows) > 0).all()
    assert np.intersect1d(model.rows, update.ablated).size == 0
    assert model.rows.size + update.ablated.size == model.n_out
    assert k == 1 or (np.diff(model.indices, axis=1) > 0).all()   # k distinct, ascending
    assert int(model.indices.min()) >= 0 and int(model.indices.max()) < model.n_in
    assert n_active * k <= max(budget, n_active)
    assert np.isfinite(model.values).all()


def train_with_dynamic_sparsity(args, rng, teacher):
    """--trainer: the same model trained as a user would train it, with srigl_np's own
    layers, SGD and DynamicSparsity(compute="condensed"): the sparse Linear is built with
    init=False (its dense weight is zeros never written, so never in memory) and
    DynamicSparsity draws it straight into its condensed form; updates every
    --update-every steps. Returns (step times, update times, losses, records)."""
    n_in, n_out = args.n_in, args.n_out
    model = Sequential(Linear(n_in, n_out, init=False), ReLU(),
                       Linear(n_out, args.classes, rng=rng))
    optimizer = SGD(model.named_parameters(), lr=args.lr, momentum=args.momentum)
    say("built the model (the sparse layer's dense weight and gradient: untouched zeros)")
    started = time.perf_counter()
    # The global sparsity that leaves the sparse layer k per neuron beside the dense head;
    # t_end far off, so the drop fraction stays --drop-fraction as in the kernels' run.
    head = n_out * args.classes
    global_sparsity = 1.0 - (args.k * n_out + head) / (n_in * n_out + head)
    sparsity = DynamicSparsity(model, optimizer, method="srigl", sparsity=global_sparsity,
                               distribution="uniform", dense_layers=(1,),
                               delta=args.update_every, t_end=10**9,
                               alpha=args.drop_fraction, seed=args.seed, compute="condensed")
    layer = sparsity.plan()[0]
    say(f"DynamicSparsity drew the sparse layer in {time.perf_counter() - started:.1f} s: "
        f"{layer['compute']}, fan-in {layer['fan_in'][1]}, sparsity {layer['sparsity']:.5f}")
    step_times, update_times, losses, records = [], [], [], []
    for step in range(args.steps + 1):   # updates at the multiples of --update-every
        x = rng.standard_normal((args.batch, n_in), dtype=np.float32)
        labels = np.argmax(x @ teacher, axis=1)
        started = time.perf_counter()
        loss, done = train_step(model, optimizer, sparsity, x, labels, step)
        seconds = time.perf_counter() - started
        losses.append(float(loss))
        if not done:
            step_times.append(seconds)
            say(f"step {step}: loss {loss:.4f}, {seconds:.3f} s")
            continue
        update_times.append(seconds)
        records += done
        record = done[0]
        say(f"step {step} with its update: {seconds:.1f} s, fan-in {record['fan_in_after']}, "
            f"active {record['active_neurons']}, pruned {record['pruned']}, grown "
            f"{record['grown']}, regrown {record['regrown']}, invariants "
            f"{record['invariants']}, ITOP {record['itop']:.5f}")
    return step_times, update_times, losses, records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-in", type=int, default=40000)
    parser.add_argument("--n-out", type=int, default=50000)
    parser.add_argument("--k", type=int, default=400, help="fan-in (99%% sparse at 400/40000)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="training steps in all")
    parser.add_argument("--update-every", type=int, default=3,
                        help="a topology update after every this many steps")
    parser.add_argument("--drop-fraction", type=float, default=0.3)
    parser.add_argument("--block-rows", type=int, default=None,
                        help="rows per gradient block (default: about 4M entries)")
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-speculate", dest="speculate", action="store_false",
                        help="read the gradient twice at every update (srigl_update_rows's "
                             "speculate=False: the cost when a neuron is ablated or returns)")
    parser.add_argument("--limit-gb", type=float, default=2.0)
    parser.add_argument("--trainer", action="store_true",
                        help="train through DynamicSparsity(compute='condensed') and "
                             "srigl_np's layers and SGD instead of the kernels directly")
    args = parser.parse_args(argv)

    info = machine_info()
    n_in, n_out, k = args.n_in, args.n_out, args.k
    sparsity = 1.0 - k / n_in
    budget = layer_budget((n_out, n_in), sparsity)
    print(f"CPU {info['cpu']}, {info['cores']} CPUs, {info['vector_isa']}, kernel path "
          f"{info['cpu_path']}, OpenMP threads {info['max_threads']}, BLAS {info['blas']}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average "
          f"{os.getloadavg()[0]:.2f} (1 min)", flush=True)
    print(f"sparse Linear {n_in} -> {n_out}: {n_in * n_out:.3g} dense weights "
          f"({n_in * n_out * 4 / 1e9:.1f} GB float32 dense), k {k}, sparsity {sparsity:.4g}, "
          f"nnz {n_out * k:.3g} (budget {budget}); head {n_out} -> {args.classes} dense; "
          f"float32, batch {args.batch}, SGD lr {args.lr} momentum {args.momentum}",
          flush=True)
    rng = np.random.default_rng(args.seed)
    block_rows = args.block_rows or default_block_rows(n_in)
    # Labels from a fixed random linear teacher, so there is something to learn.
    teacher = rng.standard_normal((n_in, args.classes), dtype=np.float32)
    say("start")
    if args.trainer:
        step_times, update_times, losses, _ = train_with_dynamic_sparsity(args, rng, teacher)
        return report(args, step_times, update_times, losses)
    started = time.perf_counter()
    model = Model(rng, n_in, n_out, k, args.classes, block_rows)
    say(f"built the condensed layer in {time.perf_counter() - started:.1f} s: values "
        f"{model.values.nbytes / 1e6:.0f} MB, indices {model.indices.nbytes / 1e6:.0f} MB "
        f"({model.indices.dtype})")

    step_times, update_times, losses = [], [], []
    for step in range(1, args.steps + 1):
        x = rng.standard_normal((args.batch, n_in), dtype=np.float32)
        labels = np.argmax(x @ teacher, axis=1)
        started = time.perf_counter()
        loss, dy = model.step(x, labels, args.lr, args.momentum)
        step_times.append(time.perf_counter() - started)
        losses.append(loss)
        say(f"step {step}: loss {loss:.4f}, {step_times[-1]:.3f} s")
        if step % args.update_every:
            continue
        started = time.perf_counter()
        update = srigl_update_rows(
            model.values, model.rows, model.indices, n_out, n_in, GradientRows(x, dy),
            drop_fraction=args.drop_fraction, sparsity=sparsity, ablation=True,
            block_rows=block_rows, speculate=args.speculate)
        model.rewire(update)
        update_times.append(time.perf_counter() - started)
        check_layout(model, update, budget)
        say(f"update after step {step}: {update_times[-1]:.1f} s, k {update.fan_in}, "
            f"active {model.rows.size}, ablated {update.ablated.size}, pruned "
            f"{update.pruned}, grown {update.grown}, regrown {update.regrown}, "
            f"gradient passes {update.gradient_passes}; layout checked")
        del update   # its source index (nnz int64) is no longer needed
    return report(args, step_times, update_times, losses)


def report(args, step_times, update_times, losses):
    """Print the peak RSS and times; the exit status (1 past --limit-gb)."""
    if not update_times:
        print("no topology update ran: --steps must reach --update-every", file=sys.stderr)
        return 2
    _, peak = rss_mb()
    print(f"\npeak RSS {peak:.0f} MB ({peak / 1e3:.2f} GB; limit {args.limit_gb} GB); "
          f"step median {statistics.median(step_times):.3f} s (min {min(step_times):.3f}, "
          f"{len(step_times)} steps); update median {statistics.median(update_times):.1f} s "
          f"({len(update_times)} updates); loss {losses[0]:.4f} -> {losses[-1]:.4f}; load "
          f"average {os.getloadavg()[0]:.2f} (1 min)", flush=True)
    return 0 if peak <= args.limit_gb * 1e3 else 1


if __name__ == "__main__":
    sys.exit(main())
