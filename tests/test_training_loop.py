"""The training loop around a topology update, and ERK's per-layer allocation.

Part 1 pins each loop choice of ``DynamicSparsity`` (``optimizer_on_update`` "step" and
"skip", ``grad_accumulation``) against ``_HandLoop``: the loop as issue 14 states it,
worked in plain NumPy (forward and backward of a 1-hidden-layer MLP, SGD with momentum
and weight decay, the drop schedule, the window of gradients), run in lockstep with the
trainer's loop body on the same mini-batches and compared after every step. The
topology rules it calls are written here too for RigL and for SRigL without ablation;
only the ablating SRigL case borrows ``dst.srigl_update`` for the rule (pinned in
tests/test_dst.py), so that what it checks is the loop around the rule. Then the
checkpoint in the middle of an accumulation window, SET with accumulation, and the CLI.

Part 2 pins the ERK table of docs/erk_allocation.md (``srigl_np.erk_table``) for ``mlp``
and ``cnn`` at 90/95/99%, and the comparison with the authors' rule.
"""

import json
import math
import pathlib
import re

import numpy as np
import pytest

from srigl_np import dst, erk_table
from srigl_np.dst import authors
from srigl_np import train as train_module
from srigl_np import train_config
from srigl_np.formats.checkpoint import load_checkpoint, read_meta, save_checkpoint
from srigl_np.nn.layers import Linear, ReLU, Sequential
from srigl_np.nn.optim import SGD
from srigl_np.dst.sparsity import DynamicSparsity, train_step
from train_cli import ERROR, StopAfterFirstEpoch, run_main, stop_after_first_epoch

IN, HIDDEN, OUT, BATCH = 10, 16, 4, 12
LR, MOMENTUM, DECAY = 0.1, 0.9, 5e-4
# Updates at steps 3, 6 and 9 (positive multiples of ΔT below t_end); 11 steps run past
# the last one. Sparsity 0.5 makes every budget exact: 80 of W1's 160, 32 of W2's 64.
DELTA, T_END, ALPHA, SPARSITY, GAMMA = 3, 10, 0.5, 0.5, 0.95
STEPS = 11
UPDATES = (3, 6, 9)
# The hand loop's names for the model's parameters.
NAMES = {"W1": "0.weight", "b1": "0.bias", "W2": "2.weight", "b2": "2.bias"}
SPARSE = ("W1", "W2")


def _model(seed=0):
    # float64, so that the hand loop's arithmetic agrees to ~1e-15 and no ranking flips.
    rng = np.random.default_rng(seed)
    return Sequential(Linear(IN, HIDDEN, rng=rng, dtype=np.float64), ReLU(),
                      Linear(HIDDEN, OUT, rng=rng, dtype=np.float64))


def _batch(step):
    """A different mini-batch per step, so that averaging a window changes the score."""
    rng = np.random.default_rng([7, step])
    return rng.standard_normal((BATCH, IN)), rng.integers(0, OUT, BATCH)


def _setup(method, model_seed=0, **kwargs):
    model = _model(model_seed)
    optimizer = SGD(model.named_parameters(), lr=LR, momentum=MOMENTUM, weight_decay=DECAY)
    options = {"sparsity": SPARSITY, "distribution": "uniform", "delta": DELTA,
               "alpha": ALPHA, "t_end": T_END, "gamma_sal": GAMMA, "seed": 3, **kwargs}
    return model, optimizer, DynamicSparsity(model, optimizer, method=method, **options)


def _trainer_step(model, optimizer, ds, step):
    """srigl_np.train's loop body for one mini-batch; returns the step's audit records."""
    x, y = _batch(step)
    return train_step(model, optimizer, ds, x, y, step)[1]


# -- the topology rules, by hand ------------------------------------------------------------
# Ties go to the lower flat index (within a row, the lower column), dst's documented rule:
# a stable sort of the negated score.

def _first(score, count):
    """Flat indices of the ``count`` largest entries of a 1-D ``score``."""
    return np.argsort(-score, kind="stable")[:count]


def _row_ranks(score):
    """rank[i, j]: the place of score[i, j] in row i, largest first."""
    order = np.argsort(-score, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(score.shape[1])[None, :], axis=1)
    return ranks


def _magnitude_keep(w, mask, drop):
    """RigL's drop: n_ones - floor(n_ones*drop) of the active non-zero weights, by |W|."""
    n_ones = int(mask.sum())
    candidates = np.flatnonzero(mask.ravel() & (w.ravel() != 0))   # a zero is never kept
    n_keep = min(n_ones - math.floor(n_ones * drop), candidates.size)
    keep = np.zeros(w.size, dtype=bool)
    keep[candidates[_first(np.abs(w.ravel()[candidates]), n_keep)]] = True
    return keep.reshape(w.shape), n_ones - n_keep


def _rigl_rule(w, mask, score, drop, is_output):
    """Drop the smallest |W|, grow as many at the largest |score| among the rest."""
    keep, n_grow = _magnitude_keep(w, mask, drop)
    free = np.flatnonzero(~keep.ravel())
    new = keep.ravel().copy()
    new[free[_first(np.abs(score.ravel()[free]), n_grow)]] = True
    return new.reshape(w.shape)


def _srigl_rule(w, mask, score, drop, is_output):
    """SRigL without ablation: RigL's drop, a neuron over k keeps its k largest |W|,
    every neuron grows back to k at its largest |score| among the positions not kept."""
    n, fan_in = w.shape
    k = min(fan_in, max(1, int(w.size * (1 - SPARSITY)) // n))
    keep, _ = _magnitude_keep(w, mask, drop)
    keep &= _row_ranks(np.where(keep, np.abs(w), -np.inf)) < k
    missing = k - keep.sum(axis=1)
    grow = ~keep & (_row_ranks(np.where(keep, -np.inf, np.abs(score))) < missing[:, None])
    return keep | grow


def _srigl_dst_rule(w, mask, score, drop, is_output):
    """SRigL with ablation: the rule is dst's (tests/test_dst.py pins it); the output
    layer is never ablated."""
    return dst.srigl_update(w, mask, score, drop_fraction=drop, sparsity=SPARSITY,
                            gamma_sal=GAMMA, ablation=not is_output).mask


class _HandLoop:
    """The loop of issue 14 in plain NumPy, from the model's weights and masks at step 0.

    Per step t (update steps: the positive multiples of ΔT below t_end):
    1. dense gradients g of the mini-batch, by hand (softmax cross-entropy, ReLU MLP);
    2. if t is one of the ``grad_accumulation`` steps u-n+1..u of an update u, g's
       weight gradients join the window;
    3. unless t is an update step and the loop is "skip": SGD with momentum and L2 on
       the masked weight gradients (biases unmasked): buf = m*buf + g + wd*p, p -= lr*buf;
    4. weights re-masked;
    5. on an update step, per layer: new mask = rule(the weights as step 3 left them,
       the mask, the mean of the window, drop fraction alpha/2*(1 + cos(pi*t/t_end)));
       weights kept where the old and new masks agree (grown weights start at 0),
       momentum cleared where the mask changed; the window starts afresh.
    """

    def __init__(self, model, ds, rule, optimizer_on_update, grad_accumulation=1):
        params = model.named_parameters()
        self.p = {k: params[name].copy() for k, name in NAMES.items()}
        self.mask = {k: ds.masks[NAMES[k]].copy() for k in SPARSE}
        self.buf = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.rule, self.loop, self.n = rule, optimizer_on_update, grad_accumulation
        self.window = []
        self.optimizer_steps = 0

    def gradients(self, step):
        x, y = _batch(step)
        p = self.p
        hidden = x @ p["W1"].T + p["b1"]
        active = np.maximum(hidden, 0)
        logits = active @ p["W2"].T + p["b2"]
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        prob[np.arange(BATCH), y] -= 1
        d_logits = prob / BATCH
        d_hidden = (d_logits @ p["W2"]) * (hidden > 0)
        return {"W2": d_logits.T @ active, "b2": d_logits.sum(axis=0),
                "W1": d_hidden.T @ x, "b1": d_hidden.sum(axis=0)}

    def step(self, t):
        """Run step t; returns True on an update step."""
        g = self.gradients(t)
        update = t in UPDATES
        if any(u - self.n < t <= u for u in UPDATES):
            self.window.append({k: g[k] for k in SPARSE})
        if not (update and self.loop == "skip"):
            for k in self.p:
                grad = g[k] * self.mask[k] if k in self.mask else g[k]
                self.buf[k] = MOMENTUM * self.buf[k] + (grad + DECAY * self.p[k])
                self.p[k] = self.p[k] - LR * self.buf[k]
            self.optimizer_steps += 1
        for k in SPARSE:
            self.p[k] = self.p[k] * self.mask[k]
        if update:
            assert len(self.window) == self.n
            drop = ALPHA / 2 * (1 + math.cos(math.pi * t / T_END))
            for k in SPARSE:
                score = np.mean([w[k] for w in self.window], axis=0)
                new = self.rule(self.p[k], self.mask[k], score, drop, k == SPARSE[-1])
                self.p[k] = self.p[k] * (new & self.mask[k])
                self.buf[k][new ^ self.mask[k]] = 0
                self.mask[k] = new
            self.window = []
        return update

    def window_sum(self, k):
        """What DynamicSparsity's running sum should hold now: sum(window) / n."""
        return sum(w[k] for w in self.window) / self.n if self.window else 0.0


def _assert_agree(model, optimizer, ds, hand, step):
    params = model.named_parameters()
    for k, name in NAMES.items():
        np.testing.assert_allclose(params[name], hand.p[k], rtol=1e-10, atol=1e-13,
                                   err_msg=f"{name} after step {step}")
        np.testing.assert_allclose(optimizer.state[name]["momentum_buffer"], hand.buf[k],
                                   rtol=1e-10, atol=1e-13,
                                   err_msg=f"momentum of {name} after step {step}")
    for k in SPARSE:
        assert np.array_equal(ds.masks[NAMES[k]], hand.mask[k]), f"{k} after step {step}"
    assert optimizer.step_count == hand.optimizer_steps


def _run_lockstep(method, rule, optimizer_on_update, grad_accumulation=1, **kwargs):
    model, optimizer, ds = _setup(method, optimizer_on_update=optimizer_on_update,
                                  grad_accumulation=grad_accumulation, **kwargs)
    hand = _HandLoop(model, ds, rule, optimizer_on_update, grad_accumulation)
    changed = {k: 0 for k in SPARSE}
    for step in range(STEPS):
        before = {k: ds.masks[NAMES[k]].copy() for k in SPARSE}
        records = _trainer_step(model, optimizer, ds, step)
        assert hand.step(step) == bool(records) == (step in UPDATES)
        _assert_agree(model, optimizer, ds, hand, step)
        for k in SPARSE:
            name = NAMES[k]
            moved = before[k] ^ ds.masks[name]
            changed[k] += int(moved.sum())
            # Stated directly on the system under test, not only through the hand loop.
            assert np.all(model.named_parameters()[name][ds.masks[name] & ~before[k]] == 0)
            assert np.all(optimizer.state[name]["momentum_buffer"][moved] == 0)
            if grad_accumulation > 1:   # the running sum: the window so far, then zero
                np.testing.assert_allclose(ds.grow_scores[name].dense(), hand.window_sum(k),
                                           rtol=1e-10, atol=1e-15)
    # The updates did move the topology, so the mask comparisons had something to check.
    assert all(changed.values()), changed
    return model, optimizer, ds, hand


RULES = [("rigl", _rigl_rule, {}),
         ("srigl", _srigl_rule, {"ablation": False}),
         ("srigl", _srigl_dst_rule, {"ablation": True})]
RULE_IDS = ["rigl", "srigl-no-ablation", "srigl-ablation"]


@pytest.mark.parametrize("optimizer_on_update", ["step", "skip"])
@pytest.mark.parametrize("method, rule, kwargs", RULES, ids=RULE_IDS)
def test_every_step_agrees_with_the_hand_worked_loop(method, rule, kwargs, optimizer_on_update):
    _, optimizer, _, _ = _run_lockstep(method, rule, optimizer_on_update, **kwargs)
    # "step" steps the optimizer on all 11 mini-batches; "skip" on all but the 3 updates.
    assert optimizer.step_count == (STEPS if optimizer_on_update == "step"
                                    else STEPS - len(UPDATES))


@pytest.mark.parametrize("method, rule, kwargs", RULES, ids=RULE_IDS)
def test_the_two_loops_part_on_the_first_update_step_and_not_before(method, rule, kwargs):
    """Both loops are one loop until the first update; there "step" updates the stepped
    weights, so a swapped or ignored option cannot pass the lockstep test above."""
    runs = {loop: _setup(method, optimizer_on_update=loop, **kwargs) for loop in ("step", "skip")}
    hands = {loop: _HandLoop(runs[loop][0], runs[loop][2], rule, loop) for loop in runs}
    for step in range(UPDATES[0]):
        for loop, (model, optimizer, ds) in runs.items():
            _trainer_step(model, optimizer, ds, step)
            hands[loop].step(step)
    a, b = (runs[loop][0].named_parameters() for loop in ("step", "skip"))
    assert all(np.array_equal(a[name], b[name]) for name in a)
    biases = {name: a[name].copy() for name in ("0.bias", "2.bias")}
    for loop, (model, optimizer, ds) in runs.items():
        _trainer_step(model, optimizer, ds, UPDATES[0])
        hands[loop].step(UPDATES[0])
        _assert_agree(model, optimizer, ds, hands[loop], UPDATES[0])
    assert not np.allclose(a["0.weight"], b["0.weight"])
    # No mask touches the biases: "skip" leaves them as step 2 did, "step" moves them.
    for name, before in biases.items():
        assert np.array_equal(b[name], before) and not np.array_equal(a[name], before)


@pytest.mark.parametrize("grad_accumulation", [2, 3])
@pytest.mark.parametrize("optimizer_on_update", ["step", "skip"])
@pytest.mark.parametrize("method, rule", [("rigl", _rigl_rule), ("srigl", _srigl_rule)],
                         ids=["rigl", "srigl-no-ablation"])
def test_grad_accumulation_scores_with_the_mean_of_the_window(method, rule,
                                                              optimizer_on_update,
                                                              grad_accumulation):
    _run_lockstep(method, rule, optimizer_on_update, grad_accumulation,
                  **({"ablation": False} if method == "srigl" else {}))
    # The window matters: the same loop scored with the update step's gradient alone
    # ends on other masks, so a grow score that ignored the window would fail above.
    model, _, ds = _setup(method, optimizer_on_update=optimizer_on_update, ablation=False)
    alone, window = (_HandLoop(model, ds, rule, optimizer_on_update, n)
                     for n in (1, grad_accumulation))
    for step in range(STEPS):
        alone.step(step)
        window.step(step)
    assert any(not np.array_equal(alone.mask[k], window.mask[k]) for k in SPARSE)


def test_the_steps_that_count_towards_an_update():
    """Window u-n+1..u of each update u; none after the last update below t_end."""
    def counted(n, t_end, method="rigl"):
        _, _, ds = _setup(method, grad_accumulation=n, t_end=t_end)
        return [s for s in range(15) if ds.accumulates(s)]

    assert counted(1, 10) == [3, 6, 9]
    assert counted(2, 10) == [2, 3, 5, 6, 8, 9]
    assert counted(3, 10) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert counted(2, 9) == [2, 3, 5, 6]   # 9 is not below t_end: no update, no window
    assert counted(2, 10, "set") == counted(2, 10, "static") == []   # SET grows at random


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"grad_accumulation": DELTA + 1}, ValueError,
     f"grad_accumulation must be <= delta ({DELTA})"),
    ({"grad_accumulation": 0}, ValueError, "grad_accumulation must be a positive integer"),
    # a value of the wrong kind is a TypeError, as srigl_np.validation promises
    ({"grad_accumulation": 1.5}, TypeError, "grad_accumulation must be a positive integer"),
    ({"optimizer_on_update": "never"}, ValueError, "optimizer_on_update must be one of"),
])
def test_bad_loop_options_are_refused(kwargs, error, fragment):
    with pytest.raises(error, match="^" + re.escape(fragment)):
        _setup("rigl", **kwargs)
    _setup("rigl", grad_accumulation=DELTA)   # a window as long as ΔT is allowed


# -- checkpoints and SET ----------------------------------------------------------------

def _dynamic_state(model, optimizer, ds):
    state = {f"param/{k}": v for k, v in model.named_parameters().items()}
    state.update({f"optim/{k}": v["momentum_buffer"] for k, v in optimizer.state.items()})
    state.update({f"dst/{k}": v for k, v in ds.state_dict().items()})
    return state


@pytest.mark.parametrize("method", ["rigl", "srigl"])
def test_a_checkpoint_inside_an_accumulation_window_resumes_bit_identically(tmp_path, method):
    n, cut = 3, 5   # steps 4, 5, 6 score the update at 6: the cut falls after step 4
    full = _setup(method, grad_accumulation=n)
    records_full = [r for step in range(STEPS) for r in _trainer_step(*full, step)]

    model, optimizer, ds = _setup(method, grad_accumulation=n)
    records_cut = [r for step in range(cut) for r in _trainer_step(model, optimizer, ds, step)]
    saved = ds.state_dict()
    assert {k for k in saved if k.startswith("dense_grad/")} == {
        "dense_grad/0.weight", "dense_grad/2.weight"}
    assert all(np.any(saved[f"dense_grad/{name}"] != 0) for name in ds.names)
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, {"epoch": 0, "step": cut,
                           "optimizer_step_count": optimizer.step_count},
                    model, optimizer, ds)

    def resumed(forget_window=False):
        # Other initial weights: everything that matters must come from the checkpoint.
        run = _setup(method, model_seed=99, grad_accumulation=n)
        assert load_checkpoint(path, *run)["step"] == cut
        if forget_window:
            for score in run[2].grow_scores.values():
                score.clear()
        records = [r for step in range(cut, STEPS) for r in _trainer_step(*run, step)]
        return run, records

    run, records = resumed()
    assert records_cut + records == records_full
    expected, got = _dynamic_state(*full), _dynamic_state(*run)
    assert expected.keys() == got.keys()
    for key in expected:
        assert np.array_equal(expected[key], got[key]), key
    assert run[1].step_count == full[1].step_count
    # Without the window's first gradient the update at 6 chooses other weights: the
    # running sum is what carries the window across the checkpoint.
    forgot, _ = resumed(forget_window=True)
    assert any(not np.array_equal(forgot[2].masks[name], full[2].masks[name])
               for name in full[2].names)


def test_train_step_without_sparsity_is_one_plain_sgd_step():
    """train_step(..., sparsity=None): the dense step, W -= lr * (momentum buffer), no
    records."""
    model = _model()
    optimizer = SGD(model.named_parameters(), lr=LR)
    before = {k: v.copy() for k, v in model.named_parameters().items()}
    x, y = _batch(0)
    loss, records = train_step(model, optimizer, None, x, y, 0)
    assert records == [] and math.isfinite(float(loss))
    grads = model.named_grads()
    for name, value in model.named_parameters().items():
        np.testing.assert_allclose(value, before[name] - LR * grads[name], rtol=1e-12,
                                   atol=1e-15)


def test_without_accumulation_the_checkpoint_holds_no_gradient():
    """Checkpoints written before the option existed load as they are."""
    _, _, ds = _setup("rigl")
    assert not any(k.startswith("dense_grad/") for k in ds.state_dict())


def test_set_with_grad_accumulation_runs_and_ignores_the_window():
    """SET grows at random: accumulation keeps no buffer and changes nothing."""
    runs = {n: _setup("set", grad_accumulation=n) for n in (1, 3)}
    records = {n: [r for step in range(STEPS) for r in _trainer_step(*run, step)]
               for n, run in runs.items()}
    assert records[1] == records[3]
    assert [r["step"] for r in records[3]] == [3, 3, 6, 6, 9, 9]
    assert all(r["invariants"] == "ok" for r in records[3])
    assert sum(r["pruned"] for r in records[3]) > 0
    assert runs[3][2].grow_scores == {}
    assert not any(k.startswith("dense_grad/") for k in runs[3][2].state_dict())
    a, b = (run[0].named_parameters() for run in runs.values())
    assert all(np.array_equal(a[name], b[name]) for name in a)


# -- the CLI ----------------------------------------------------------------------------

# The embedded subset: 5000 images, 20 mini-batches of 256 an epoch.
_QUICK = ["--dataset", "embedded", "--model", "mlp", "--batch-size", "256", "--lr", "0.05",
          "--delta", "5", "--progress", "off"]


def _arrays(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files if k != "meta"}


def test_the_cli_defaults_to_the_authors_loop():
    args = train_module.make_parser().parse_args([])
    config = train_config.config_from_args(args)
    assert (config["optimizer_on_update"], config["grad_accumulation"]) == ("step", 1)


def test_the_cli_records_the_loop_in_the_config(tmp_path, capsys):
    out = tmp_path / "run"
    status, lines, err = run_main(capsys, *_QUICK, "--epochs", "1", "--optimizer-on-update",
                               "skip", "--grad-accumulation", "3", "--out", out)
    assert status == 0, err
    assert ("update step: the optimizer skips an update step (RigL's loop); grow score the "
            "dense gradient averaged over 3 mini-batches") in lines
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["finished"] is True
    for config in (metrics["config"], read_meta(out / "checkpoint.npz")["config"]):
        assert (config["optimizer_on_update"], config["grad_accumulation"]) == ("skip", 3)
    # t_end = 15 of 20 steps: updates at 5 and 10, where a skipping optimizer rests.
    assert read_meta(out / "checkpoint.npz")["optimizer_step_count"] == 18
    # ERK keeps the 10x100 output layer dense at 90%: no window for it.
    assert sorted(k for k in _arrays(out / "checkpoint.npz") if "dense_grad" in k) == [
        "dst/dense_grad/1.weight", "dst/dense_grad/3.weight"]


@pytest.mark.parametrize("args, fragment", [
    (["--delta", "5", "--grad-accumulation", "6"],
     "--grad-accumulation 6 must be at most --delta 5: two updates' windows would overlap"),
    (["--grad-accumulation", "0"], "argument --grad-accumulation: must be a positive integer"),
    (["--optimizer-on-update", "never"], "argument --optimizer-on-update: invalid choice"),
])
def test_the_cli_refuses_bad_loop_options_in_one_line(capsys, tmp_path, args, fragment):
    status, _, line = run_main(capsys, "--dataset", "embedded", "--out", tmp_path / "x", *args)
    assert status == 2 and line.startswith(ERROR) and fragment in line, line
    assert not (tmp_path / "x").exists()


def _forget_loop_options(path):
    """Rewrite a checkpoint as a trainer without the loop options wrote it."""
    with np.load(path, allow_pickle=False) as saved:
        arrays = {k: saved[k] for k in saved.files}
    meta = json.loads(str(arrays["meta"]))
    for key in ("optimizer_on_update", "grad_accumulation"):
        del meta["config"][key]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


def test_an_old_config_without_the_loop_options_resumes_skipping(tmp_path, capsys):
    """Runs from before the options trained "skip" with one mini-batch; resumed, they
    continue so, bit-identical to an uninterrupted "skip" run."""
    def config(out):
        args = train_module.make_parser().parse_args(
            [*_QUICK, "--epochs", "2", "--optimizer-on-update", "skip", "--out", str(out)])
        return train_config.config_from_args(args)

    train_module.train(config(tmp_path / "full"), log=lambda line: None)
    with pytest.raises(StopAfterFirstEpoch):
        train_module.train(config(tmp_path / "old"), log=stop_after_first_epoch)
    _forget_loop_options(tmp_path / "old" / "checkpoint.npz")
    assert "optimizer_on_update" not in read_meta(tmp_path / "old" / "checkpoint.npz")["config"]

    status, lines, err = run_main(capsys, "--resume", tmp_path / "old", "--progress", "off")
    assert status == 0, err
    assert ("update step: the optimizer skips an update step (RigL's loop); grow score that "
            "step's dense gradient") in lines
    # 40 steps, t_end 30: updates at 5, 10, ..., 25 (two of them in the resumed epoch).
    assert read_meta(tmp_path / "old" / "checkpoint.npz")["optimizer_step_count"] == 35
    a, b = (_arrays(tmp_path / run / "checkpoint.npz") for run in ("full", "old"))
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key


# -- part 2: ERK per layer -----------------------------------------------------------------
# (layer, shape, ERK sparsity, budget B, fan-in k, authors' sparsity, authors' B) per model
# and global sparsity; sparsity 0.0 is a layer ERK keeps dense. Every k agrees with the
# authors' (checked below), so it is listed once.
ERK_TABLE = {
    ("mlp", 0.9): [
        ("1.weight", (300, 784), 0.9204322294955718, 18714, 62, 0.9204322294955718, 18714),
        ("3.weight", (100, 300), 0.769811320754717, 6905, 69, 0.7698113207547169, 6905),
        ("5.weight", (10, 100), 0.0, 1000, 100, 0.0, 1000)],
    ("mlp", 0.95): [
        ("1.weight", (300, 784), 0.9615158673256002, 9051, 30, 0.9615158673256002, 9051),
        ("3.weight", (100, 300), 0.8886658301965704, 3340, 33, 0.8886658301965704, 3340),
        ("5.weight", (10, 100), 0.08149309912170566, 918, 91, 0.08149309912170644, 918)],
    ("mlp", 0.99): [
        ("1.weight", (300, 784), 0.9923031734651201, 1810, 6, 0.9923031734651201, 1810),
        ("3.weight", (100, 300), 0.977733166039314, 668, 6, 0.977733166039314, 668),
        ("5.weight", (10, 100), 0.8162986198243412, 183, 18, 0.8162986198243413, 183)],
    ("cnn", 0.9): [
        ("0.weight", (32, 1, 3, 3), 0.0, 288, 9, 0.0, 288),
        ("2.weight", (64, 32, 3, 3), 0.9306382992801185, 1278, 19, 0.9306375962709084, 1278),
        ("7.weight", (128, 9216), 0.9007175656362482, 117118, 914, 0.9007165593681629, 117119),
        ("10.weight", (10, 128), 0.0, 1280, 128, 0.0, 1280)],
    ("cnn", 0.95): [
        ("0.weight", (32, 1, 3, 3), 0.15591638089299875, 243, 7, 0.15589386539194294, 243),
        ("2.weight", (64, 32, 3, 3), 0.9655061982576466, 635, 9, 0.9655052781530361, 635),
        ("7.weight", (128, 9216), 0.9506265190746706, 58243, 455, 0.9506252020621889, 58244),
        ("10.weight", (10, 128), 0.3279795801725027, 860, 86, 0.3279616543697391, 860)],
    ("cnn", 0.99): [
        ("0.weight", (32, 1, 3, 3), 0.8311832761785998, 48, 1, 0.8311618864525963, 48),
        ("2.weight", (64, 32, 3, 3), 0.9931012396515293, 127, 1, 0.9931003655521493, 127),
        ("7.weight", (128, 9216), 0.9901253038149341, 11648, 91, 0.9901240526530766, 11650),
        ("10.weight", (10, 128), 0.8655959160345006, 172, 17, 0.8655788865218746, 172)],
}


@pytest.mark.parametrize("model, sparsity", list(ERK_TABLE), ids=lambda v: str(v))
def test_the_erk_table(model, sparsity):
    rows = erk_table.layer_rows(model, sparsity)
    got = [(r["layer"], r["shape"], r["sparsity"], r["budget"], r["fan_in"],
            r["authors_sparsity"], r["authors_budget"]) for r in rows]
    expected = ERK_TABLE[model, sparsity]
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    for g, e in zip(got, expected):
        assert g[2] == pytest.approx(e[2], abs=1e-12) and g[5] == pytest.approx(e[5], abs=1e-12)
        assert (g[3], g[4], g[6]) == (e[3], e[4], e[6]), g[0]
    # The table is dst's: the sparsities DynamicSparsity would use, k from the budget.
    shapes = [r["shape"] for r in rows]
    assert [r["sparsity"] for r in rows] == dst.erk_sparsities(shapes, sparsity)
    for r in rows:
        n = r["shape"][0]
        assert r["budget"] == dst.layer_budget(r["shape"], r["sparsity"])
        assert r["fan_in"] == (r["weights"] // n if r["dense"] else max(1, r["budget"] // n))
        assert r["srigl_nnz"] == r["fan_in"] * n <= r["budget"]
    # ERK itself, by hand: the global budget is kept, and the sparse layers' densities
    # are one eps times sum(shape)/prod(shape), below 1, each dense layer's above.
    sizes = np.array([r["weights"] for r in rows], dtype=float)
    density = 1.0 - np.array([r["sparsity"] for r in rows])
    assert (density * sizes).sum() == pytest.approx((1.0 - sparsity) * sizes.sum(), rel=1e-12)
    raw = np.array([sum(s) / math.prod(s) for s in shapes])
    dense = np.array([r["dense"] for r in rows])
    eps = density[~dense] / raw[~dense]
    assert np.allclose(eps, eps[0], rtol=1e-12) and np.all(eps[0] * raw[~dense] < 1)
    assert np.all(eps[0] * raw[dense] > 1)


@pytest.mark.parametrize("model, sparsity", list(ERK_TABLE), ids=lambda v: str(v))
def test_the_authors_rule_differs_only_by_its_rounding(model, sparsity):
    """The same dense layers and the same fan-in k in every layer; sparsities within
    3e-5 and budgets within 2 weights (the authors round each layer before solving)."""
    for r in erk_table.layer_rows(model, sparsity):
        assert r["dense"] == r["authors_dense"]
        assert r["fan_in"] == r["authors_fan_in"]
        assert abs(r["sparsity"] - r["authors_sparsity"]) < 3e-5
        assert abs(r["budget"] - r["authors_budget"]) <= 2
        # Their unstructured start keeps N - int(s*N): at most one weight more than B.
        assert 0 <= r["authors_nnz"] - r["authors_budget"] <= 1


def test_the_authors_rule_without_rounding_is_dsts():
    """Where every N*(1 - d) is a whole number their rounding does nothing, and their
    one-layer-at-a-time densifying, with two tied layers, ends where dst's does."""
    shapes = [(10, 10), (10, 10), (20, 50), (100, 100)]   # two tied small layers
    for sparsity in (0.5, 0.75, 0.25):
        ours = dst.erk_sparsities(shapes, sparsity)
        theirs = authors.erk_sparsities(shapes, 1.0 - sparsity)
        assert theirs == pytest.approx(ours, abs=1e-14)
    assert dst.erk_sparsities(shapes, 0.5)[:2] == [0.0, 0.0]   # the tie did densify
    # ... and their rounding is what moves the cnn's figures.
    cnn = [shape for _, _, shape in erk_table.sparse_layers("cnn")]
    assert authors.erk_sparsities(cnn, 0.01) != pytest.approx(
        dst.erk_sparsities(cnn, 0.99), abs=1e-6)


def test_the_authors_fan_in_raises_where_dst_floors_at_one():
    assert authors.fan_in((64, 100), 0.99) == 1     # int(64.00000000000006) // 64
    with pytest.raises(ValueError, match="fan-in after ablation is 0"):
        authors.fan_in((64, 100), 0.995)             # int(32.00000000000003) // 64
    assert dst.fan_in_after_ablation((64, 100), 0.995, 0) == 1


def test_the_command_prints_the_table_and_the_docs_hold_it(capsys):
    assert erk_table.main(["--model", "cnn", "--sparsity", "0.99"]) == 0
    out = capsys.readouterr().out
    assert ("| cnn | 99% | 2.weight (Conv2d) | 64x32x3x3 | 18432 | 0.993101 | 127 | 1 | 64 | "
            "0.993100 | 127 | 1 |") in out.splitlines()
    assert "| cnn | 99% | 1199648 | 11996.5 | 11995 | 11914 | 99.000% | 99.007% |" in out
    page = pathlib.Path(__file__).resolve().parents[1] / "docs" / "erk_allocation.md"
    assert erk_table.markdown() in page.read_text(encoding="utf-8")
