"""SGD (momentum, Nesterov, L2 weight decay) and AdamW, with PyTorch's update rules,
and the learning-rate schedules the trainer uses.

An optimizer holds a dict of parameter arrays (``Sequential.named_parameters()``) and
updates them in place from a dict of gradients with the same keys. Its per-parameter
state lives in the public ``state[name]`` dict of arrays shaped like the parameter,
allocated eagerly as zeros: dynamic sparse training zeroes it where a mask changes.
The trainer sets ``lr`` before every step.

Device: state and scratch arrays are allocated with the parameters' array module, so
an optimizer built over CuPy parameters (a model moved with ``Sequential.to("cuda")``
first) steps on the GPU with the same code.
"""

import math

import numpy as np

from ..backend import array_module, on_device_of
from ..training_kernels import adamw_update, sgd_update


def _check_positive(name, value):
    if not (isinstance(value, (int, float, np.number)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_range(name, value, low, high, high_open=True):
    ok = isinstance(value, (int, float, np.number)) and (
        low <= value < high if high_open else low <= value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value!r}")
    return float(value)


def _check_params(params):
    if not isinstance(params, dict) or not params:
        raise ValueError("params must be a non-empty dict name -> array "
                         "(e.g. model.named_parameters())")
    for name, p in params.items():
        if not hasattr(p, "dtype") or p.dtype.kind != "f":
            raise TypeError(f"params[{name!r}] must be a float array, got "
                            f"{getattr(p, 'dtype', type(p).__name__)}")
    return params


class _Optimizer:
    """Shared bookkeeping: params, per-parameter state, step_count, (de)serialisation."""

    state_keys = ()

    def __init__(self, params, lr):
        self.params = _check_params(params)
        self.lr = _check_positive("lr", lr)
        self.step_count = 0
        # zeros, not zeros_like: untouched pages take no memory, so the state of a weight
        # that is rebound condensed before the first step never does.
        self.state = {name: {key: array_module(p).zeros(p.shape, dtype=p.dtype)
                             for key in self.state_keys}
                      for name, p in self.params.items()}

    def _grad(self, grads, name):
        if name not in grads:
            raise KeyError(f"grads has no entry for parameter {name!r}")
        g = grads[name]
        p = self.params[name]
        if g.shape != p.shape:
            raise ValueError(f"grads[{name!r}] must have shape {p.shape}, got {g.shape}")
        return g

    def rebind(self, name, param, state=None):
        """Point parameter ``name`` at a new array ``param`` (a weight whose storage changed
        shape: condensed training's rewiring), with its state arrays ``state`` ({key:
        array of param's shape}; zeros when None)."""
        if name not in self.params:
            raise KeyError(f"the optimizer has no parameter {name!r}")
        xp = array_module(param)
        state = {} if state is None else state
        if set(state) - set(self.state_keys):
            raise ValueError(f"state keys {sorted(state)} are not among {self.state_keys}")
        self.params[name] = param
        self.state[name] = {key: state[key] if key in state else xp.zeros(param.shape,
                                                                          dtype=param.dtype)
                            for key in self.state_keys}
        if hasattr(self, "_scratch"):
            self._scratch[name] = xp.empty_like(param)

    def state_dict(self):
        """Copies of the state: {"step_count", "lr", "state": {name: {key: array}}}."""
        return {"step_count": self.step_count, "lr": self.lr,
                "state": {name: {k: v.copy() for k, v in s.items()}
                          for name, s in self.state.items()}}

    def load_state_dict(self, state_dict):
        """Copy a state_dict() into this optimizer's existing arrays (in place)."""
        saved = state_dict["state"]
        if set(saved) != set(self.state):
            raise ValueError(f"state_dict parameters {sorted(saved)} do not match the "
                             f"optimizer's {sorted(self.state)}")
        for name, buffers in self.state.items():
            if set(saved[name]) != set(buffers):
                raise ValueError(f"state_dict[{name!r}] keys {sorted(saved[name])} are not "
                                 f"{sorted(buffers)}")
            for key, buffer in buffers.items():
                if saved[name][key].shape != buffer.shape:
                    raise ValueError(f"state_dict[{name!r}][{key!r}] must have shape "
                                     f"{buffer.shape}, got {saved[name][key].shape}")
        for name, buffers in self.state.items():
            for key, buffer in buffers.items():
                buffer[...] = on_device_of(saved[name][key], buffer)
        self.step_count = int(state_dict["step_count"])
        self.lr = float(state_dict["lr"])


class SGD(_Optimizer):
    """Stochastic gradient descent, PyTorch semantics (dampening 0).

        d   = g + weight_decay * p
        buf = momentum * buf + d                      (state "momentum_buffer")
        d   = d + momentum * buf   if nesterov else   buf
        p  -= lr * d

    With momentum 0 there is no buffer and ``state[name]`` is empty.
    """

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.momentum = _check_range("momentum", momentum, 0.0, 1.0)
        self.weight_decay = _check_range("weight_decay", weight_decay, 0.0, math.inf)
        if nesterov and self.momentum == 0.0:
            raise ValueError("nesterov momentum needs momentum > 0, got momentum 0")
        self.nesterov = bool(nesterov)
        self.state_keys = ("momentum_buffer",) if self.momentum > 0 else ()
        super().__init__(params, lr)
        # One scratch array per parameter keeps every step allocation-free.
        self._scratch = {name: array_module(p).empty_like(p) for name, p in self.params.items()}

    def step(self, grads):
        """Update every parameter in place from ``grads`` (same keys as params)."""
        self.step_count += 1
        lr = float(self.lr)
        for name, p in self.params.items():
            sgd_update(p, self._grad(grads, name), self._scratch[name],
                       self.state[name].get("momentum_buffer"), lr=lr,
                       momentum=self.momentum, nesterov=self.nesterov,
                       weight_decay=self.weight_decay)


class AdamW(_Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), PyTorch semantics.

        p   *= 1 - lr * weight_decay
        m    = beta1 * m + (1 - beta1) * g            (state "exp_avg")
        v    = beta2 * v + (1 - beta2) * g^2          (state "exp_avg_sq")
        p   -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    with t = step_count after the increment (1 on the first step).
    """

    state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair, got {betas!r}")
        self.betas = (_check_range("betas[0]", betas[0], 0.0, 1.0),
                      _check_range("betas[1]", betas[1], 0.0, 1.0))
        self.eps = _check_range("eps", eps, 0.0, math.inf)
        self.weight_decay = _check_range("weight_decay", weight_decay, 0.0, math.inf)
        super().__init__(params, lr)
        self._scratch = {name: array_module(p).empty_like(p) for name, p in self.params.items()}

    def step(self, grads):
        """Update every parameter in place from ``grads`` (same keys as params)."""
        self.step_count += 1
        lr = float(self.lr)
        for name, p in self.params.items():
            state = self.state[name]
            adamw_update(p, self._grad(grads, name), self._scratch[name], state["exp_avg"],
                         state["exp_avg_sq"], step=self.step_count, lr=lr, betas=self.betas,
                         eps=self.eps, weight_decay=self.weight_decay)


class CosineSchedule:
    """Linear warm-up to ``base_lr``, then cosine decay to ``final_lr`` at ``total_steps``.

    lr(step) = base_lr * (step + 1) / warmup_steps                  for step < warmup_steps
             = final + (base - final) * (1 + cos(pi * progress)) / 2  after, where
    progress = (step - warmup_steps) / (total_steps - warmup_steps), clipped to [0, 1].
    """

    def __init__(self, base_lr, total_steps, warmup_steps=0, final_lr=0.0):
        self.base_lr = _check_positive("base_lr", base_lr)
        if int(total_steps) != total_steps or total_steps < 1:
            raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
        if int(warmup_steps) != warmup_steps or not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be an integer in [0, total_steps={total_steps}], "
                             f"got {warmup_steps!r}")
        self.final_lr = _check_range("final_lr", final_lr, 0.0, self.base_lr, high_open=False)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final_lr + (self.base_lr - self.final_lr) * cosine


class StepSchedule:
    """lr(step) = base_lr * gamma ** (step // step_size)."""

    def __init__(self, base_lr, step_size, gamma=0.1):
        self.base_lr = _check_positive("base_lr", base_lr)
        if int(step_size) != step_size or step_size < 1:
            raise ValueError(f"step_size must be an integer >= 1, got {step_size!r}")
        self.step_size = int(step_size)
        self.gamma = _check_range("gamma", gamma, 0.0, 1.0, high_open=False)
        if self.gamma == 0.0:
            raise ValueError("gamma must be in (0, 1], got 0")

    def __call__(self, step):
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return self.base_lr * self.gamma ** (step // self.step_size)
