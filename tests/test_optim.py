"""SGD and AdamW against hand-worked steps (and PyTorch when installed), their public
state, (de)serialisation and argument checks; the learning-rate schedules."""

import math

import numpy as np
import pytest

from srigl_np.nn.optim import SGD, AdamW, CosineSchedule, StepSchedule


def _one_param(value=1.0, dtype=np.float64):
    return {"w": np.array([value], dtype=dtype)}


@pytest.mark.parametrize("nesterov, expected", [(False, [0.85, 0.4725]),
                                                (True, [0.715, 0.145575])])
def test_sgd_momentum_weight_decay_hand_worked(nesterov, expected):
    # lr 0.5, momentum 0.9, weight decay 0.1, p0 = 1, gradients 0.2 then 0.4:
    # plain:    d1 = 0.3, buf1 = 0.3, p1 = 0.85; d2 = 0.485, buf2 = 0.755, p2 = 0.4725
    # nesterov: step 1 moves by 0.3 + 0.9*0.3 = 0.57 -> 0.715; d2 = 0.4715,
    #           buf2 = 0.7415, move 0.4715 + 0.9*0.7415 = 1.13885 -> 0.145575
    params = _one_param()
    opt = SGD(params, lr=0.5, momentum=0.9, nesterov=nesterov, weight_decay=0.1)
    for g, p_expected in zip([0.2, 0.4], expected):
        opt.step({"w": np.array([g])})
        assert params["w"][0] == pytest.approx(p_expected, rel=1e-12)
    assert opt.step_count == 2


def test_sgd_without_momentum_has_no_state_and_takes_plain_steps():
    params = _one_param()
    opt = SGD(params, lr=0.1)
    assert opt.state == {"w": {}}
    opt.step({"w": np.array([2.0])})
    assert params["w"][0] == pytest.approx(0.8)


def adamw_reference(p, grads, lr, beta1, beta2, eps, weight_decay):
    """Loshchilov & Hutter's AdamW with bias correction, written out in float64."""
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * weight_decay)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
        p = p - lr * m_hat / (math.sqrt(v_hat) + eps)
    return p


def test_adamw_first_step_hand_worked():
    # p = 1, g = 0.5: decay to 0.999, then m_hat = 0.5, v_hat = 0.25: move lr * 0.5/0.5.
    params = _one_param()
    opt = AdamW(params, lr=0.1, weight_decay=0.01)
    opt.step({"w": np.array([0.5])})
    assert params["w"][0] == pytest.approx(0.999 - 0.1, rel=1e-7)
    np.testing.assert_allclose(opt.state["w"]["exp_avg"], [0.05])
    np.testing.assert_allclose(opt.state["w"]["exp_avg_sq"], [0.00025])


def test_adamw_matches_reference_over_several_steps():
    grads = [0.3, -1.2, 0.05, 2.0, -0.4]
    params = _one_param(0.7)
    opt = AdamW(params, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    for g in grads:
        opt.step({"w": np.array([g])})
    expected = adamw_reference(0.7, grads, 0.05, 0.8, 0.99, 1e-6, 0.1)
    assert params["w"][0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("make", [
    lambda p: SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    lambda p: AdamW(p, lr=1e-3),
])
def test_updates_are_in_place_and_stay_float32(make):
    rng = np.random.default_rng(0)
    params = {"a": rng.standard_normal((3, 4)).astype(np.float32),
              "b": rng.standard_normal(5).astype(np.float32)}
    arrays = dict(params)
    opt = make(params)
    before = {k: v.copy() for k, v in params.items()}
    opt.step({k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()})
    for name, p in params.items():
        assert p is arrays[name] and p.dtype == np.float32
        assert not np.array_equal(p, before[name])
        for buffer in opt.state[name].values():
            assert buffer.dtype == np.float32 and buffer.shape == p.shape


def test_state_is_allocated_eagerly_as_zeros():
    params = {"w": np.ones((2, 3), np.float32)}
    sgd = SGD(params, lr=0.1, momentum=0.9)
    assert list(sgd.state["w"]) == ["momentum_buffer"]
    assert not sgd.state["w"]["momentum_buffer"].any()
    adam = AdamW(params, lr=0.1)
    assert sorted(adam.state["w"]) == ["exp_avg", "exp_avg_sq"]
    assert sgd.step_count == adam.step_count == 0


def test_state_dict_round_trip_reproduces_the_trajectory():
    rng = np.random.default_rng(1)
    grads = [{"w": rng.standard_normal(4)} for _ in range(6)]
    params = {"w": np.ones(4)}
    opt = AdamW(params, lr=0.01)
    for g in grads[:3]:
        opt.step(g)
    saved_params, saved = params["w"].copy(), opt.state_dict()
    assert saved["state"]["w"]["exp_avg"] is not opt.state["w"]["exp_avg"]
    for g in grads[3:]:
        opt.step(g)
    expected = params["w"].copy()

    params2 = {"w": saved_params}
    opt2 = AdamW(params2, lr=0.5)
    buffer = opt2.state["w"]["exp_avg"]
    opt2.load_state_dict(saved)
    assert opt2.state["w"]["exp_avg"] is buffer            # loaded in place
    assert opt2.step_count == 3 and opt2.lr == 0.01
    for g in grads[3:]:
        opt2.step(g)
    np.testing.assert_array_equal(params2["w"], expected)


def test_load_state_dict_validates():
    opt = SGD({"w": np.ones(3)}, lr=0.1, momentum=0.9)
    bad = opt.state_dict()
    bad["state"]["w"]["momentum_buffer"] = np.ones(4)
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad)
    other = SGD({"v": np.ones(3)}, lr=0.1, momentum=0.9).state_dict()
    with pytest.raises(ValueError, match="do not match"):
        opt.load_state_dict(other)


@pytest.mark.parametrize("make, fragment", [
    (lambda p: SGD(p, lr=0), "lr must be"),
    (lambda p: SGD(p, lr=-1), "lr must be"),
    (lambda p: SGD(p, lr=float("nan")), "lr must be"),
    (lambda p: SGD(p, lr=0.1, momentum=1.0), "momentum"),
    (lambda p: SGD(p, lr=0.1, momentum=-0.1), "momentum"),
    (lambda p: SGD(p, lr=0.1, nesterov=True), "nesterov"),
    (lambda p: SGD(p, lr=0.1, weight_decay=-1), "weight_decay"),
    (lambda p: AdamW(p, lr=0.1, betas=(0.9, 1.0)), r"betas\[1\]"),
    (lambda p: AdamW(p, lr=0.1, betas=(0.9,)), "pair"),
    (lambda p: AdamW(p, lr=0.1, eps=-1e-8), "eps"),
    (lambda p: SGD({}, lr=0.1), "non-empty dict"),
])
def test_invalid_arguments_raise(make, fragment):
    with pytest.raises(ValueError, match=fragment):
        make({"w": np.ones(2)})


def test_step_checks_gradients():
    opt = SGD({"w": np.ones(2)}, lr=0.1)
    with pytest.raises(KeyError, match="'w'"):
        opt.step({})
    with pytest.raises(ValueError, match="shape"):
        opt.step({"w": np.ones(3)})
    with pytest.raises(TypeError, match="float"):
        SGD({"w": np.ones(2, dtype=np.int64)}, lr=0.1)


@pytest.mark.parametrize("kind", ["sgd", "sgd-nesterov", "adamw"])
def test_matches_torch_optimizers(kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    p0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(5)]
    params = {"w": p0.copy()}
    tp = torch.nn.Parameter(torch.tensor(p0))
    if kind == "adamw":
        ours = AdamW(params, lr=0.01, betas=(0.85, 0.99), eps=1e-7, weight_decay=0.05)
        theirs = torch.optim.AdamW([tp], lr=0.01, betas=(0.85, 0.99), eps=1e-7, weight_decay=0.05)
    else:
        nesterov = kind == "sgd-nesterov"
        ours = SGD(params, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=1e-2)
        theirs = torch.optim.SGD([tp], lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=1e-2)
    for g in grads:
        ours.step({"w": g})
        tp.grad = torch.tensor(g)
        theirs.step()
    np.testing.assert_allclose(params["w"], tp.detach().numpy(), rtol=1e-12, atol=1e-14)


# -- schedules -------------------------------------------------------------------------

def test_cosine_schedule_warmup_and_decay():
    s = CosineSchedule(0.1, total_steps=110, warmup_steps=10, final_lr=0.001)
    assert s(0) == pytest.approx(0.01)          # linear warm-up starts above 0
    assert s(9) == pytest.approx(0.1)
    assert s(10) == pytest.approx(0.1)
    assert s(60) == pytest.approx(0.001 + 0.5 * 0.099)   # half way: the mean
    assert s(110) == pytest.approx(0.001)
    assert s(500) == pytest.approx(0.001)
    lrs = [s(t) for t in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_cosine_schedule_without_warmup():
    s = CosineSchedule(1.0, total_steps=4)
    assert [s(t) for t in range(5)] == pytest.approx([1.0, 0.853553, 0.5, 0.146447, 0.0],
                                                     abs=1e-6)


def test_step_schedule():
    s = StepSchedule(1.0, step_size=3, gamma=0.5)
    assert [s(t) for t in range(7)] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


@pytest.mark.parametrize("make, fragment", [
    (lambda: CosineSchedule(0, 10), "base_lr"),
    (lambda: CosineSchedule(0.1, 0), "total_steps"),
    (lambda: CosineSchedule(0.1, 10, warmup_steps=11), "warmup_steps"),
    (lambda: CosineSchedule(0.1, 10, final_lr=0.2), "final_lr"),
    (lambda: StepSchedule(0.1, 0), "step_size"),
    (lambda: StepSchedule(0.1, 5, gamma=0), "gamma"),
    (lambda: CosineSchedule(0.1, 10)(-1), "step"),
])
def test_schedule_arguments_are_validated(make, fragment):
    with pytest.raises(ValueError, match=fragment):
        make()
