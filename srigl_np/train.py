"""``python -m srigl_np.train``: train an SRigL (the default), RigL, SET, static or dense model.

Before the first step it prints what the run will do: per sparse layer its shape,
sparsity, fan-in (SRigL's constant k; min-max for the others) and number of topology
updates, the layers the distribution keeps dense and why, and a warning when the
schedule makes no update at all (ΔT not below t_end). ``--sparsity`` with
``--method dense`` is refused: a dense run has no masks.

Writes into ``--out``: ``metrics.json`` (``finished``: false until the last epoch is
done, so an interrupted or crashed run says so; final ``test_accuracy``, per-epoch
figures, the full config and the data used; ``train_accuracy`` is the running accuracy
over the epoch's mini-batches in training mode, so dropout is active), written before
the first epoch and after every epoch, ``checkpoint.npz`` after every epoch (its meta
also records each sparse layer's sparsity and the layers kept dense, with the reason,
for ``srigl_np.audit``), and for sparse methods ``audit.jsonl`` (one line per layer per
topology update, see ``srigl_np.audit``; empty for static). All three are written
atomically.
``--out`` is checked before any data is read: it is created if missing and must be
writable, and one that already holds a run (any of ``RUN_FILES``) is refused unless
``--overwrite`` (which deletes those files and the trainer's ``.tmp-*`` temporaries
first) or ``--resume`` is asked for. A run, new or resumed, holds the directory's lock
(``.lock``, see ``fileio.lock_directory``) from before that check to its end: a second
trainer on the same directory is refused at once, naming the holder's PID, and
deletes nothing; the lock dies with its process.
``--resume DIR`` continues a run from its last checkpoint with the saved configuration
and ends bit-identical to an uninterrupted run: every random stream is derived from
``(seed, purpose, epoch)``, not carried from one epoch to the next. It deletes the
temporaries a kill during a write left, refuses to continue on data other than the
checkpoint's (its "data": counts and SHA-256 of the raw arrays; an older checkpoint
without them resumes with a note), refuses by name every flag that would change the
run, and honours ``RESUMABLE_FLAGS`` (``--epochs`` to train longer, ``--threads``,
``--device``, ``--data-path``, ``--progress``), recording each change in the config's
"resumes". A loss that becomes NaN or infinite (or a weight, checked at the end of
each epoch) stops training with a one-line error and status 1, before anything is
written for that step, so the last checkpoint is the last good epoch; a checkpoint
that holds NaN or Inf is refused by name (``formats.checkpoint``), as is a saved
config or progress record no trainer writes (``checked_config``: each value as its
flag checks it). An empty train or test set is an error. A topology update
that fails its invariant check (``dst.InvariantError``) stops training: the audit trail
up to that update is written, and the command exits with status 1 and a one-line error
naming the step and layer.

``--compute`` picks how the sparse layers are trained (``dst.sparsity``, "Two compute
paths"): ``condensed`` (the default) trains SRigL's sparse Linear and Conv2d layers as
values + indices, so a step costs in proportion to the weights kept; ``masked`` trains
dense weights with zeros, the transparent reference. Both make the same decisions and
end at the same weights up to float rounding; the plan says per layer which path runs
(RigL, SET, static and the GPU run masked), the config records it, and checkpoints
are the same dense arrays either way.

``--device cuda`` (or ``cuda:N``) trains on an NVIDIA GPU through CuPy with the same
code: the normalised data set is copied to the GPU once, the model is moved there
before the optimizer and DynamicSparsity are built, and evaluation runs there too.
Shuffling, dropout masks and topology-update rankings still come from the host
(see ``srigl_np.nn.layers.Dropout`` and ``srigl_np.dst.sparsity``). A resumed run uses the
device saved in its configuration.
"""

import contextlib
import hashlib
import math
import os
import re
import sys
import tempfile
import time

from . import thread_waits

# Before NumPy loads OpenBLAS: see thread_waits.
thread_waits.set_training_defaults()

import numpy as np
from threadpoolctl import threadpool_limits

from . import data as data_module
from .backend import array_module, on_device_of, select
from .cli import command, format_table
from .dst import InvariantError
from .dst.sparsity import DISTRIBUTION_NAMES, DYNAMIC_METHODS, DynamicSparsity
from .dst.trail import read_trail
from .fileio import lock_directory, write_json, write_jsonl
from .formats.checkpoint import check_data, load_checkpoint, read_meta, save_checkpoint
from .nn import condensed_compute
from .nn.losses import softmax_cross_entropy
from .nn.models import build
from .nn.optim import SGD, AdamW, CosineSchedule, StepSchedule
from .train_config import (PROG, RESUMABLE_FLAGS, checked_config, config_from_args,
                           epochs_problem, given_flags, make_parser)
from .validation import check_thread_flag, usable_cpus

# Purposes for derived random streams: (seed, purpose, epoch) -> Generator.
_RNG_MODEL, _RNG_SHUFFLE, _RNG_DROPOUT = 0, 1, 2
# What the trainer writes into a run directory; fileio.atomic_write's temporaries beside
# them are named by tempfile.mkstemp: ".tmp-" and 8 random characters.
RUN_FILES = ("checkpoint.npz", "metrics.json", "audit.jsonl")
_TEMPORARY = re.compile(r"\.tmp-[a-z0-9_]{8}")


class DivergedError(ValueError):
    """The training loss became NaN or infinite."""


def prepare_out(out, flag="--out", overwrite=False, resume=False):
    """Take the run directory for this run, before any work: it is created if missing,
    locked (``fileio.lock_directory``: one trainer per directory, another is refused
    with the holder's PID, before anything in it is read or deleted) and must be
    writable. A new run refuses one that holds a run (RUN_FILES) unless ``overwrite``,
    which deletes those files and the trainer's temporaries; a resumed run deletes the
    temporaries a kill during a write left. Returns the DirectoryLock, to hold for the
    whole run; ValueError (one line) otherwise, with the lock let go."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{flag} {out} is not a directory (a file is in the way)")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot write in {flag} {out}: {exc.strerror or exc}") from None
    advice = ("wait for it to finish" if resume else
              f"wait for it or choose another {flag}")
    lock = lock_directory(out, PROG, advice=advice)
    try:
        _clear_out(out, flag, overwrite, resume)
    except BaseException:
        lock.release()
        raise
    return lock


def _clear_out(out, flag, overwrite, resume):
    """prepare_out's checks and deletions in the locked ``out``."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-", dir=out)
        os.close(fd)
        os.unlink(probe)
        names = sorted(os.listdir(out))
    except OSError as exc:
        raise ValueError(f"cannot write in {flag} {out}: {exc.strerror or exc}") from None
    found = [n for n in RUN_FILES if n in names]
    if found and not (overwrite or resume):
        raise ValueError(f"{flag} {out} already holds a run ({', '.join(found)}): pass "
                         f"--overwrite to replace it, or --resume {out} to continue it")
    stale = [n for n in names if _TEMPORARY.fullmatch(n)] + (found if overwrite else [])
    try:
        for name in stale:
            os.unlink(os.path.join(out, name))
    except OSError as exc:
        raise ValueError(f"cannot delete {os.path.join(out, name)}: "
                         f"{exc.strerror or exc}") from None


def _resume_config(args, given):
    """The saved config of the run in ``args.resume``, with the RESUMABLE_FLAGS the user
    gave applied and recorded in its "resumes" list; returns (config, lines to print)."""
    checkpoint = os.path.join(args.resume, "checkpoint.npz")
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"no checkpoint to resume at {checkpoint}")
    meta = read_meta(checkpoint)
    if "config" not in meta:
        raise ValueError(f"{checkpoint}: meta 'config' is missing")
    # Runs from before the loop options trained "skip" with one mini-batch: the config
    # records it (LEGACY_CONFIG).
    config = checked_config(meta["config"], checkpoint)
    _check_progress(checkpoint, meta)
    config["out"] = args.resume
    changed = {}
    for dest in RESUMABLE_FLAGS:
        if dest in given and dest in config and config[dest] != getattr(args, dest):
            changed[dest] = [config[dest], getattr(args, dest)]
            config[dest] = getattr(args, dest)
    cpus = usable_cpus()
    if config["threads"] > cpus:   # a run saved on a machine with more CPUs than this one
        raise ValueError(f"{checkpoint}: the run was started with --threads "
                         f"{config['threads']}, more than this process may use ({cpus} "
                         f"CPU{'s' * (cpus != 1)}): resume it with --threads 0 to {cpus}")
    done = meta["epoch"]
    if config["epochs"] < done:
        raise ValueError(f"--epochs {config['epochs']}: the run in {args.resume} has already "
                         f"trained {done} epochs; give --epochs {done} or more")
    if changed:
        config.setdefault("resumes", []).append({"epoch": done, "changed": changed})
    return config, [f"resume: {given[dest]} {old} -> {new}"
                    for dest, (old, new) in changed.items()]


def _check_progress(checkpoint, meta):
    """The meta's record of how far the run got, as the trainer writes it: "epoch" and
    "step" integers, and "history" one record per epoch done, each with its epoch number
    and a test accuracy in [0, 1]."""
    for key in ("epoch", "step"):
        if key not in meta:
            raise ValueError(f"{checkpoint}: meta {key!r} is missing")
    history, done = meta.get("history"), meta["epoch"]
    if not (isinstance(history, list) and len(history) == done and all(
            isinstance(record, dict) and record.get("epoch") == epoch
            and isinstance(record.get("test_accuracy"), (int, float))
            and not isinstance(record.get("test_accuracy"), bool)
            and 0 <= record["test_accuracy"] <= 1
            for epoch, record in enumerate(history, start=1))):
        raise ValueError(f"{checkpoint}: meta 'history' must hold one record per epoch "
                         f"done ({done}), each with its 'epoch' and a 'test_accuracy' in "
                         f"[0, 1]")
    if done and meta["step"] < done:
        raise ValueError(f"{checkpoint}: meta 'step' {meta['step']} is fewer than the "
                         f"{done} epochs done")


def _clock(seconds):
    """'m:ss', or 'h:mm:ss' from an hour on."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class _Progress:
    """A one-line progress bar on stderr, redrawn at most 5 times a second, with the time
    elapsed since it was made and the run's ETA: the steps left at the average time per
    step so far (evaluation and checkpoints included)."""

    def __init__(self, enabled, start_step, total_steps):
        self.enabled = enabled
        self.last = 0.0
        self.started = time.monotonic()
        self.start_step, self.total_steps = start_step, total_steps
        self.width = 0

    def update(self, epoch, epochs, batch, n_batches, step, loss, rate):
        """``step``: optimizer steps taken so far in the whole run."""
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and batch < n_batches):
            return
        self.last = now
        width = 24
        filled = int(width * batch / n_batches)
        elapsed = now - self.started
        done = step - self.start_step
        eta = _clock(elapsed / done * (self.total_steps - step)) if done > 0 else "?"
        line = (f"epoch {epoch}/{epochs} [{'#' * filled}{'.' * (width - filled)}] "
                f"{batch}/{n_batches} loss {loss:.4f} {rate:,.0f} img/s "
                f"elapsed {_clock(elapsed)} ETA {eta}")
        sys.stderr.write("\r" + line.ljust(self.width))
        self.width = len(line)
        sys.stderr.flush()

    def close(self):
        if self.enabled and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()
            self.width = 0


def evaluate(model, x, y, batch_size=1000):
    """Accuracy of ``model`` (eval mode) on x[N, ...], y[N] (all on the model's device)."""
    if len(x) == 0:
        raise ValueError("no images to evaluate on: accuracy of an empty set is undefined")
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model.forward(x[start:start + batch_size], training=False)
        correct += int((logits.argmax(axis=1) == y[start:start + batch_size]).sum())
    return correct / max(len(x), 1)


def _build_run(config):
    """Data, model, optimizer, schedule and DynamicSparsity for a config (no training).

    Data and model live on config["device"] (absent in older configs: "cpu"); the model
    is moved before the optimizer and DynamicSparsity take references to its arrays.
    """
    device = config.get("device", "cpu")
    xp = select(device)   # fails here, before any data is read, without CuPy or a GPU
    dataset = data_module.load_dataset(config["dataset"], path=config["data_path"])
    for split in ("train", "test"):
        if len(getattr(dataset, f"x_{split}")) == 0:
            raise ValueError(f"{dataset.name} from {dataset.source} has no {split} images")
    mean, std = data_module.channel_stats(dataset.x_train)
    x_train = xp.asarray(data_module.normalize(dataset.x_train, mean, std))
    x_test = xp.asarray(data_module.normalize(dataset.x_test, mean, std))
    y_train, y_test = xp.asarray(dataset.y_train), xp.asarray(dataset.y_test)
    model = build(config["model"], rng=np.random.default_rng([config["seed"], _RNG_MODEL]),
                  device=device)
    params = model.named_parameters()
    if config["optimizer"] == "sgd":
        optimizer = SGD(params, lr=config["lr"], momentum=config["momentum"],
                        nesterov=config["nesterov"], weight_decay=config["weight_decay"])
    else:
        optimizer = AdamW(params, lr=config["lr"], weight_decay=config["weight_decay"])
    steps_per_epoch = -(-len(x_train) // config["batch_size"])
    total_steps = steps_per_epoch * config["epochs"]
    if config["schedule"] == "cosine":
        schedule = CosineSchedule(config["lr"], max(total_steps, 1),
                                  warmup_steps=int(config["warmup_epochs"] * steps_per_epoch))
    else:
        schedule = StepSchedule(config["lr"], max(total_steps // 4, 1), gamma=0.1)
    sparsity = None
    if config["method"] != "dense":
        sparsity = DynamicSparsity(
            model, optimizer, method=config["method"], sparsity=config["sparsity"],
            distribution=config["distribution"], delta=config["delta"], alpha=config["alpha"],
            t_end=int(config["t_end_frac"] * total_steps), gamma_sal=config["gamma_sal"],
            ablation=not config["no_ablation"], seed=config["seed"],
            # Configs written before these options existed ran "skip" with one batch.
            optimizer_on_update=config.get("optimizer_on_update", "skip"),
            grad_accumulation=config.get("grad_accumulation", 1),
            compute=config.get("compute", "masked"))
    data_info = {"name": dataset.name, "source": dataset.source, "n_train": len(x_train),
                 "n_test": len(x_test), "mean": float(mean), "std": float(std),
                 "sha256": data_fingerprint(dataset)}
    return (x_train, y_train, x_test, y_test, data_info, model, optimizer,
            schedule, sparsity, steps_per_epoch)


def data_fingerprint(dataset):
    """SHA-256 (hex) of the raw train and test images and labels (as uint8), with their
    shapes, in that order: what a checkpoint records of the data it was trained on."""
    digest = hashlib.sha256()
    for array in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
        array = np.ascontiguousarray(array, dtype=np.uint8)
        digest.update(repr(array.shape).encode())
        digest.update(array.data)
    return digest.hexdigest()


def _epochs(config):
    return f"{config['epochs']} epoch" + ("" if config["epochs"] == 1 else "s")


def plan_lines(config, sparsity, steps_per_epoch):
    """What the run of ``config`` will do, as lines to print before its first step: the
    schedule, one row per sparse layer (shape, sparsity, fan-in, updates), the layers the
    distribution keeps dense and why, and a warning when no update will happen."""
    if sparsity is None:
        return ["method dense: every weight is trained, no masks"]
    updates = sparsity.update_steps()
    lines = [f"method {sparsity.method}: {100 * sparsity.sparsity:.1f}% global sparsity, "
             f"{DISTRIBUTION_NAMES[sparsity.distribution]} per layer"]
    if sparsity.method in DYNAMIC_METHODS:
        lines.append(
            f"schedule: a topology update every ΔT = {sparsity.delta} steps below t_end = "
            f"{sparsity.t_end} ({100 * config['t_end_frac']:g}% of {_epochs(config)} x "
            f"{steps_per_epoch} steps): {len(updates)} updates"
            + (f" (steps {updates[0]}..{updates[-1]})" if updates else ""))
        loop = ("the optimizer also steps on an update step, before it (the authors' loop)"
                if sparsity.optimizer_on_update == "step" else
                "the optimizer skips an update step (RigL's loop)")
        window = ("that step's dense gradient" if sparsity.grad_accumulation == 1 else
                  f"the dense gradient averaged over {sparsity.grad_accumulation} mini-batches")
        lines.append(f"update step: {loop}; grow score {window}")
    else:
        lines.append("schedule: static, the initial masks are kept (no topology updates)")
    plan = sparsity.plan()
    lines.append(_compute_line(config, sparsity))
    rows = [{"layer": p["layer"], "shape": "x".join(map(str, p["shape"])),
             "sparsity": f"{100 * p['sparsity']:.1f}%",
             "fan-in": (f"k={p['fan_in'][0]}" if sparsity.method == "srigl"
                        else "{}-{}".format(*p["fan_in"])),
             "updates": str(p["updates"]), "compute": _compute_cell(p)}
            for p in plan if p["kept_dense"] is None]
    if rows:
        lines += ["  " + line for line in format_table(rows).splitlines()]
    lines += [f"kept dense: {p['layer']} {'x'.join(map(str, p['shape']))} ({p['kept_dense']})"
              for p in plan if p["kept_dense"] is not None]
    if sparsity.method in DYNAMIC_METHODS and not updates:
        lines.append(
            f"warning: the schedule makes no topology update: ΔT = {sparsity.delta} is not "
            f"below t_end = {sparsity.t_end} ({100 * config['t_end_frac']:g}% of "
            f"{_epochs(config)} x {steps_per_epoch} steps), so the masks stay as initialised; "
            f"lower --delta or train for more epochs")
    return lines


def train(config, resume=False, progress=False, log=print):
    """Run (or continue) training for ``config``; returns the metrics dict."""
    out = config["out"]
    (x_train, y_train, x_test, y_test, data_info, model, optimizer, schedule, sparsity,
     steps_per_epoch) = _build_run(config)
    log(f"data: {data_info['name']} from {data_info['source']} "
        f"({data_info['n_train']} train / {data_info['n_test']} test images)")
    history, start_epoch, step = [], 0, 0
    checkpoint_path = os.path.join(out, "checkpoint.npz")
    audit_path = os.path.join(out, "audit.jsonl")
    if resume:
        note = check_data(checkpoint_path, read_meta(checkpoint_path).get("data"), data_info)
        if note:
            log(note)
        with _dense(sparsity):
            meta = load_checkpoint(checkpoint_path, model, optimizer, sparsity)
        start_epoch, step, history = meta["epoch"], meta["step"], meta["history"]
        if sparsity is not None and os.path.exists(audit_path):
            # Updates at or after the checkpoint's step (written by a run that failed an
            # invariant check or crashed after its last checkpoint) are run again.
            sparsity.audit_records[:] = [r for r in read_trail(audit_path) if r["step"] < step]
        log(f"resumed from {checkpoint_path} at epoch {start_epoch} (step {step})")
    for line in plan_lines(config, sparsity, steps_per_epoch):
        log(line)
    sparse_meta = {} if sparsity is None else {
        "layer_sparsity": sparsity.layer_sparsity, "kept_dense": sparsity.kept_dense()}
    # Written before the first epoch too, so a run that stops early says it did not finish.
    write_json(os.path.join(out, "metrics.json"), _metrics(config, data_info, history))
    bar = _Progress(progress, step, steps_per_epoch * config["epochs"])
    for epoch in range(start_epoch, config["epochs"]):
        model.set_rng(np.random.default_rng([config["seed"], _RNG_DROPOUT, epoch]))
        order = data_module.batches(len(x_train), config["batch_size"],
                                    np.random.default_rng([config["seed"], _RNG_SHUFFLE, epoch]))
        started, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        for batch, idx in enumerate(order, start=1):
            optimizer.lr = schedule(step)
            idx = on_device_of(idx, x_train)   # the shuffle is drawn on the host
            if sparsity is not None:
                sparsity.before_forward(step)
            logits = model.forward(x_train[idx], training=True)
            loss, grad_logits = softmax_cross_entropy(logits, y_train[idx])
            if not math.isfinite(float(loss)):
                bar.close()
                raise DivergedError(f"training diverged: the loss is {float(loss)} at step "
                                    f"{step} (epoch {epoch + 1}, batch {batch}); "
                                    f"{_kept(epoch, checkpoint_path)}; try a lower --lr")
            model.backward(grad_logits, input_grad=False)
            grads = model.named_grads()
            if sparsity is None or sparsity.before_step(step, grads):
                optimizer.step(grads)
            if sparsity is not None:
                try:
                    sparsity.after_step(step, grads)
                except InvariantError as exc:
                    bar.close()
                    write_jsonl(audit_path, sparsity.audit_records)
                    raise InvariantError(f"invariant check failed at step {step}: {exc} "
                                         f"(audit trail up to here in {audit_path})") from exc
            step += 1
            loss_sum += loss * len(idx)
            correct += int((logits.argmax(axis=1) == y_train[idx]).sum())
            seen += len(idx)
            bar.update(epoch + 1, config["epochs"], batch, steps_per_epoch, step, loss,
                       seen / (time.perf_counter() - started))
        bar.close()
        # The epoch's last step may have left a weight non-finite with a finite loss:
        # never checkpointed, so the last checkpoint stays the last good epoch.
        for name, param in model.named_parameters().items():
            if not bool(array_module(param).isfinite(param).all()):
                raise DivergedError(f"training diverged: parameter {name!r} holds NaN or "
                                    f"Inf after step {step} (the end of epoch {epoch + 1}); "
                                    f"{_kept(epoch, checkpoint_path)}; try a lower --lr")
        seconds = time.perf_counter() - started
        record = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_accuracy": correct / seen,
                  "test_accuracy": evaluate(model, x_test, y_test), "seconds": seconds,
                  "step": step, "lr": float(optimizer.lr)}
        line = (f"epoch {epoch + 1:3d}/{config['epochs']}  loss {record['loss']:.4f}  "
                f"train {100 * record['train_accuracy']:.2f}%  "
                f"test {100 * record['test_accuracy']:.2f}%  {seconds:.1f}s")
        if sparsity is not None:
            s = sparsity.summary()
            record.update(s)
            line += (f"  sparsity {100 * s['sparsity']:.1f}%  "
                     f"active neurons {s['active_neurons']}/{s['neurons']}  "
                     f"ITOP {100 * s['itop']:.1f}%")
        history.append(record)
        meta = {"epoch": epoch + 1, "step": step, "config": config, "history": history,
                "optimizer_step_count": int(optimizer.step_count), "data": data_info,
                **sparse_meta}
        # The trail before the checkpoint: a crash between the two leaves it ahead, and
        # a resume drops what the checkpoint does not cover.
        if sparsity is not None:
            write_jsonl(audit_path, sparsity.audit_records)
        with _dense(sparsity):
            save_checkpoint(checkpoint_path, meta, model, optimizer, sparsity)
        write_json(os.path.join(out, "metrics.json"), _metrics(config, data_info, history))
        log(line)
    return _metrics(config, data_info, history)


def _compute_line(config, sparsity):
    if config.get("compute", "masked") == "masked":
        return "compute: masked (dense weights with zeros; --compute masked)"
    kept = sparsity.kept_dense()
    rest = [name for name in sparsity.names if name not in sparsity.condensed]
    masked = [name for name in rest if name not in kept]
    dense = [name for name in rest if name in kept]
    others = ((f"; masked: {', '.join(masked)}" if masked else "")
              + (f"; dense GEMM (kept dense): {', '.join(dense)}" if dense else ""))
    if sparsity.method != "srigl" and sparsity.condensed_candidates():
        return (f"compute: condensed, {len(sparsity.condensed)} of {len(sparsity.names)} "
                f"layers as values + indices, rows padded to the layer's largest fan-in "
                f"with slots that hold 0 and never train (a step costs in proportion to "
                f"the slots); a layer runs masked while its slots would pass "
                f"{_limits()} of its dense size, decided again at every update" + others)
    if sparsity.condensed:
        return (f"compute: condensed, {len(sparsity.condensed)} of {len(sparsity.names)} "
                f"layers as values + indices (a step costs in proportion to the weights "
                f"kept)" + others)
    return "compute: masked (no sparse layer is a Linear or Conv2d on the CPU)"


def _limits():
    return " / ".join(f"{100 * limit:g}% ({kind.__name__})"
                      for kind, limit in condensed_compute.PADDED_SLOT_LIMIT.items())


def _compute_cell(layer_plan):
    """The plan table's compute column: a padded layer's k, share of padding slots and,
    when masked, its slots' share of the dense size."""
    if not layer_plan["padding"]:
        return layer_plan["compute"]
    k, padding = layer_plan["fan_in"][1], 100 * layer_plan["padding"]
    if layer_plan["compute"] == "condensed":
        return f"condensed, padded: k={k}, {padding:.0f}% padding"
    return (f"masked (padded to k={k}: {100 * layer_plan['slots']:.0f}% of dense, "
            f"{padding:.0f}% padding)")


def _dense(sparsity):
    """Checkpoints hold every run's dense weights and state, whichever path trained it."""
    return contextlib.nullcontext() if sparsity is None else sparsity.dense_view()


def _kept(epoch, checkpoint_path):
    """What a run that stops in ``epoch`` (0-based) leaves, for its error message."""
    return (f"the last good checkpoint (epoch {epoch}) is kept in {checkpoint_path}"
            if epoch else "no checkpoint was written")


def _metrics(config, data_info, history):
    done = history[-1]["epoch"] if history else 0
    return {"finished": done >= config["epochs"],
            "test_accuracy": history[-1]["test_accuracy"] if history else None,
            "epochs": history, "config": config, "data": data_info}


@command(PROG, errors=(InvariantError,))
def main(argv=None):
    parser = make_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    given = given_flags(parser, argv)
    if args.resume:
        refused = [flag for dest, flag in given.items()
                   if dest not in RESUMABLE_FLAGS + ("resume",)]
        if refused:
            parser.error(f"{', '.join(refused)} cannot be given with --resume: the run keeps "
                         f"the configuration it was started with (only --epochs, "
                         f"--threads, --device, --data-path and --progress may change)")
    else:
        try:
            config = config_from_args(args)
        except ValueError as exc:
            parser.error(str(exc))
    try:
        check_thread_flag("--threads", args.threads)
    except ValueError as exc:
        parser.error(str(exc))
    if epochs_problem(args.epochs):
        parser.error(f"--epochs {epochs_problem(args.epochs)}")
    if args.resume:
        config, changes = _resume_config(args, given)
    # The device first: a run that cannot start leaves no directory behind.
    select(config.get("device") or "cpu")
    if args.resume:
        lock = prepare_out(args.resume, flag="--resume", resume=True)
        for line in changes:
            print(line)
    else:
        lock = prepare_out(config["out"], overwrite=args.overwrite)
    progress = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    try:
        with lock, threadpool_limits(limits=config["threads"] or None):
            metrics = train(config, resume=bool(args.resume), progress=progress)
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130
    if metrics["test_accuracy"] is not None:
        print(f"final test accuracy {100 * metrics['test_accuracy']:.2f}%  "
              f"(metrics in {os.path.join(config['out'], 'metrics.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
