"""DynamicSparsity: the thin stateful wrapper that plugs ``srigl_np.dst`` into training.

It owns one boolean mask per sparse parameter (each layer's ``sparse_weights``: the
weight of every Linear and Conv2d, attention's projections, the squeeze-and-excitation
convolutions; biases and norms stay dense), starting from ``dst.constant_fan_in_mask`` for SRigL and
``dst.random_mask`` for static/SET/RigL, with weights from ``layers.kaiming_normal``
scaled by each neuron's actual fan-in. Around each optimizer step the trainer does:

    if ds.before_step(step, grads):   # keeps the dense gradient for the grow score,
        optimizer.step(grads)         # then masks the gradients
    ds.after_step(step, grads)        # re-masks the weights; on an update step runs the
                                      # topology update with the *dense* gradient

Weights are stored densely with zeros outside the mask, so the gradient the backward
pass computes for a weight is already the dense gradient the grow criterion needs.
Update steps are the positive multiples of ΔT below ``t_end``, for the dynamic methods
only. What happens on an update step is an explicit choice, ``optimizer_on_update``:

* ``"step"`` (the default, the SRigL authors' ``train_rigl.py``): the optimizer steps
  on every step, update steps included, with the masked gradient; the topology update
  then runs on the stepped weights, with the step's dense gradient as the grow score.
* ``"skip"`` (RigL's paper, Evci et al. 2020, and this package before it had the
  option): the optimizer does not step on an update step; the update replaces it.

Either way grown weights start at 0 and their optimizer state is cleared. The grow
score is the dense gradient averaged over the last ``grad_accumulation`` mini-batches up
to and including the update step (the authors' ``grad_accumulation_n``; 1, the default,
is that step's gradient alone). The authors count an update after their ΔT-th optimizer
step; here the update comes at the step whose index (steps taken before it) is a
multiple of ΔT: the same drop fractions, one mini-batch later.

Each layer's update clears the optimizer state where its mask changed, is checked by
``dst.check_invariants`` (a condensed layer's new layout by
``dst.check_condensed_invariants``, before it is taken) and appends one
``srigl_np.dst.trail.make_record`` record to ``audit_records``; the record counts the
weights dropped and grown back in the same update (``regrown``) and the zeros inside
the new mask. A failed check raises
``dst.InvariantError`` out of ``after_step``; the layers updated before it in that step
already have their records. Before training, ``plan()`` says what the schedule will do:
per layer its shape, sparsity, fan-in and number of updates, and why a layer the
distribution keeps dense (``kept_dense()``) is dense.

Two compute paths (``compute``). "masked", the reference the tutorial teaches: every
weight is a dense array with zeros outside the mask, the layers run dense products and
the masks are multiplied in around each optimizer step. "condensed": SRigL's sparse
Linear and groups-1 Conv2d layers are trained as ``values[n_active, k]`` +
``indices[n_active, k]`` (``srigl_np.nn.condensed_compute``); their gradient exists only
at the stored positions, the optimizer's state is stored the same way, and nothing of a
layer's dense size is read or written on a step outside a grow-score window. The
trainer calls ``before_forward(step)`` first, so that on the steps of a window the
layers also keep what the dense gradient is made of (a Linear its dy and x, a Conv2d
dy^T im2col(x)) for the layer's ``GrowScore``. An update step runs SRigL on the
condensed arrays (``dst.srigl_update_rows``: ``srigl_update``'s decisions bit for bit,
the grow score read in row blocks, so no float array of the layer's dense size exists):
kept weights keep their value and optimizer state, grown ones start at 0 with zero
state, ablated neurons leave the arrays and come back when they return. Such a layer
starts condensed too (its mask and init drawn in row blocks, the masked path's bit for
bit: ``_start_condensed``), its mask is its layout (``masks[name]`` makes the bool array
when asked) and its ever-active record is kept one bit per position, so that nothing
of its dense size exists (docs/training.md, "Memory"). The masks stay the record of the
topology, so checkpoints (written inside ``dense_view()``, where every layer is dense),
the trail, ITOP and every command read runs of either path alike. RigL, SET and static
have unstructured masks (each neuron its own fan-in): their layers run condensed on the
same kernels, padded to the layer's largest fan-in (``condensed_compute``'s "Padded
layout": padding slots hold 0, get no gradient and keep zero optimizer state), so a step
costs n_active * k, not nnz; their update runs on the expanded dense weight; ``plan()``
gives each layer's padding. A padded layer runs condensed only while that is cheaper
than masked (``condensed_compute.worth_padding``: its slots within ``PADDED_SLOT_LIMIT``
of the dense size), decided from the mask alone at the start, at every update (a layer
may switch path there, its weights and optimizer state carried over) and after a
checkpoint is loaded. Other layers (grouped convolutions, attention's projections,
arrays on a GPU) run masked.

Random decisions draw from Generators derived from ``(seed, purpose, step)``, never
from carried state, so a run resumed from a checkpoint repeats an uninterrupted run
bit for bit.

Devices: masks and ever-active masks live beside the weights (CuPy arrays for a model
moved to the GPU before DynamicSparsity is built), so the per-step masking of grads and
weights stays on the device. Initial masks and weights are drawn on the host with
numpy Generators and copied over, so a seed gives the same start on every device. The
topology update (every ΔT steps) runs on the host: ``srigl_np.dst`` copies the layer's
weight, mask and gradient to NumPy, ranks there, and returns the new mask and weight
on the device. That is a few megabytes per layer per ΔT steps; porting the rankings
(partition, stable sorts, documented tie-breaks) to CuPy would buy little and give a
second implementation to keep identical. ``ablated`` neuron lists stay on the host.
"""

import contextlib
import math
from collections.abc import MutableMapping

import numpy as np

from .. import dst
from ..backend import on_device_of, to_numpy
from ..nn import condensed_compute
from ..nn.layers import Linear, kaiming_normal, kaiming_normal_at, prefixed
from ..nn.losses import softmax_cross_entropy
from ..validation import positive_int
from .grow_score import GrowScore
from .trail import make_record

METHODS = ("dense", "static", "set", "rigl", "srigl")
OPTIMIZER_ON_UPDATE = ("step", "skip")   # see the module docstring
DYNAMIC_METHODS = ("set", "rigl", "srigl")
DISTRIBUTIONS = ("uniform", "erk")
COMPUTES = ("condensed", "masked")   # see "Two compute paths" above
DISTRIBUTION_NAMES = {"uniform": "uniform", "erk": "ERK"}   # as the paper writes them

# Purposes for derived random streams: (seed, purpose, ...) -> Generator.
_RNG_MASK, _RNG_INIT, _RNG_SET = 10, 11, 12


def sparse_parameter_names(model):
    """Names of the parameters that get masks, in forward order: each layer's
    ``sparse_weights`` (the Linear and Conv2d weights, attention's projections, the
    squeeze-and-excitation 1x1 convolutions), inside blocks too."""
    return [prefixed(prefix, name) for prefix, layer in model.named_layers()
            for name in layer.sparse_weights]


def _neuron_counts(mask):
    return mask.reshape(mask.shape[0], -1).sum(axis=1)


class DynamicSparsity:
    """Masks, topology updates, optimizer-state clearing, ITOP and the audit trail.

    Parameters
    ----------
    model : Sequential
    optimizer : SGD or AdamW (its public ``state`` is cleared where masks change)
    method : one of METHODS. "dense" keeps no masks; "static" keeps the initial mask.
    sparsity : global target sparsity in [0, 1).
    distribution : "erk" or "uniform" per-layer sparsities (dst.erk_sparsities, ...).
    delta : steps between topology updates (ΔT).
    alpha : initial drop fraction; decays as dst.cosine_drop_fraction.
    t_end : no update at or after this step; required for the dynamic methods (set, rigl,
        srigl), unused by dense and static. The paper stops at 75% of training.
    gamma_sal : SRigL ablation threshold γ_sal.
    ablation : SRigL neuron ablation on/off (never applied to the output layer).
    dense_layers : indices into sparse_parameter_names(model) kept dense.
    seed : int; every random choice derives from it.
    optimizer_on_update : "step" (the authors' loop: the optimizer also steps on an
        update step, before the update) or "skip" (RigL's: it does not); see above.
    grad_accumulation : the grow score is the dense gradient averaged over this many
        mini-batches ending at the update step, in [1, delta] (the authors'
        ``grad_accumulation_n``).
    compute : "masked" (dense weights with zeros, masked each step) or "condensed"
        (the sparse Linear and groups-1 Conv2d layers on NumPy arrays trained as values
        + indices, padded for the unstructured methods; every other layer masked): see
        "Two compute paths" above.

    State: ``masks``, ``ever_active`` (mappings name -> bool array of the weight's shape;
    a layout-backed layer's made on demand, to read), ``shapes`` (each sparse weight's
    dense shape), ``ablated`` (int64 indices, per
    layer), ``grow_scores`` (RigL, SRigL: a ``GrowScore`` per updated layer, empty outside
    a grow-score window; a checkpoint holds its partial sum as ``dense_grad/<name>`` when
    ``grad_accumulation`` > 1) and
    ``audit_records``, the run's audit trail (a trainer resuming a run puts
    the records its checkpoint covers back there).
    """

    def __init__(self, model, optimizer, method="srigl", sparsity=0.9, distribution="erk",
                 delta=100, alpha=0.3, t_end=None, gamma_sal=0.3, ablation=True,
                 dense_layers=(), seed=0, optimizer_on_update="step", grad_accumulation=1,
                 compute="masked"):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        if int(delta) < 1:
            raise ValueError(f"delta must be >= 1, got {delta}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if t_end is None and method in DYNAMIC_METHODS:
            raise ValueError(f"t_end is required for method {method!r}: the step at which "
                             f"topology updates stop (the paper uses 75% of the training "
                             f"steps)")
        if t_end is not None and t_end < 0:
            raise ValueError(f"t_end must be >= 0, got {t_end}")
        if optimizer_on_update not in OPTIMIZER_ON_UPDATE:
            raise ValueError(f"optimizer_on_update must be one of {OPTIMIZER_ON_UPDATE}, "
                             f"got {optimizer_on_update!r}")
        if compute not in COMPUTES:
            raise ValueError(f"compute must be one of {COMPUTES}, got {compute!r}")
        grad_accumulation = positive_int("grad_accumulation", grad_accumulation)
        if method in DYNAMIC_METHODS and grad_accumulation > int(delta):
            raise ValueError(f"grad_accumulation must be <= delta ({int(delta)}): the "
                             f"windows of two updates would overlap, got {grad_accumulation}")
        self.model = model
        self.optimizer = optimizer
        self.method = method
        self.sparsity = float(sparsity)
        self.distribution = distribution
        self.delta = int(delta)
        self.alpha = float(alpha)
        self.t_end = 0 if t_end is None else int(t_end)
        self.gamma_sal = float(gamma_sal)
        self.ablation = bool(ablation)
        self.seed = int(seed)
        self.optimizer_on_update = optimizer_on_update
        self.grad_accumulation = grad_accumulation
        if isinstance(dense_layers, (str, bytes)) or not hasattr(dense_layers, "__iter__"):
            raise TypeError(f"dense_layers must be a sequence of layer indices, got "
                            f"{dense_layers!r}")
        self.dense_layers = tuple(dense_layers)   # the entries: checked by spread() below
        self.params = model.named_parameters()
        self.names = [] if method == "dense" else sparse_parameter_names(model)
        # Each sparse weight's dense shape (a condensed layer's params hold its values).
        self.shapes = {n: tuple(self.params[n].shape) for n in self.names}
        spread = dst.erk_sparsities if distribution == "erk" else dst.uniform_sparsities
        self.layer_sparsity = dict(zip(self.names, spread(list(self.shapes.values()),
                                                          self.sparsity,
                                                          dense_layers=self.dense_layers)))
        self.compute = compute
        # name -> CondensedCompute of the layers trained condensed.
        self.condensed = {}
        # The bool mask and ever-active record of each layer: dense arrays, except for a
        # layer held at constant fan-in (condensed SRigL), whose mask is its layout and
        # whose record is kept one bit per weight (see masks / ever_active below).
        self._masks, self._ever = {}, {}
        self.masks, self.ever_active = _Masks(self), _EverActive(self)
        self.ablated = {n: np.zeros(0, dtype=np.int64) for n in self.names}
        # SRigL's condensed layers start condensed: no dense weight or mask is made.
        start_condensed = set(self.condensed_candidates()) if method == "srigl" else set()
        for i, name in enumerate(self.names):
            rng = np.random.default_rng([self.seed, _RNG_MASK, i])
            init_rng = np.random.default_rng([self.seed, _RNG_INIT, i])
            if name in start_condensed:
                self._start_condensed(name, rng, init_rng)
                continue
            weight = self.params[name]
            s = self.layer_sparsity[name]
            # SRigL starts from constant fan-in (paper §4); the unstructured methods
            # start from a uniformly random unstructured mask of the same size.
            mask = (dst.constant_fan_in_mask(weight.shape, s, rng) if method == "srigl"
                    else dst.random_mask(weight.shape, s, rng))
            # Sparse-aware init: Kaiming scale from the fan-in each neuron actually has.
            init = kaiming_normal(mask.shape, np.maximum(_neuron_counts(mask), 1), init_rng,
                                  weight.dtype)
            init[~mask] = 0
            weight[...] = on_device_of(init, weight)
            self._masks[name] = on_device_of(mask, weight)
            self._ever[name] = self._masks[name].copy()
        # The grow score of each layer an update regrows by gradient (RigL, SRigL), kept
        # as its window's terms; a checkpoint carries a window longer than one step.
        self.grow_scores = {}
        if method in ("rigl", "srigl"):
            self.grow_scores = {n: GrowScore(self.shapes[n], self.params[n].dtype,
                                             grad_accumulation)
                                for n in self.names if self.layer_sparsity[n] > 0.0}
        self.audit_records = []
        for name in self.condensed_candidates():   # none unless compute is "condensed"
            if name not in self.condensed and self._worth_condensing(name):
                self._attach(name, self.params[name])

    def _start_condensed(self, name, rng, init_rng):
        """SRigL's start for a layer trained condensed, in its condensed form: the mask
        ``dst.constant_fan_in_mask`` draws from ``rng`` and the init ``kaiming_normal``
        draws from ``init_rng`` (the masked path's start, bit for bit), each made in row
        blocks (``dst.constant_fan_in_columns``, ``kaiming_normal_at``), so that neither
        the layer's dense weight nor its mask is ever made."""
        shape = self.shapes[name]
        n, dense_fan_in = shape[0], math.prod(shape[1:])
        columns = dst.constant_fan_in_columns(
            shape, self.layer_sparsity[name], rng,
            index_dtype=condensed_compute.index_dtype(dense_fan_in))
        values = kaiming_normal_at(shape, np.full(n, columns.shape[1]), init_rng, columns,
                                   self.params[name].dtype,
                                   block_rows=dst.default_block_rows(dense_fan_in))
        compute = condensed_compute.attach_layout(self._weight_layers()[name], shape,
                                                  np.arange(n, dtype=np.int64), columns,
                                                  values)
        self.condensed[name] = compute
        self._rebind(name, compute, None)
        self._ever[name] = _PackedRows.of_layout(n, dense_fan_in, compute.rows,
                                                 compute.indices)

    # -- the compute paths ---------------------------------------------------------
    def condensed_candidates(self):
        """The sparse parameters that ``compute="condensed"`` may train condensed: those
        of a Linear or a groups-1 Conv2d on NumPy arrays
        (``condensed_compute.condensable``), SRigL's at their constant fan-in, the
        unstructured methods' padded to each layer's largest while that pays
        (``_worth_condensing``). Of the layers the distribution keeps dense (fan-in F),
        the Conv2d are condensed too (the direct convolution of k = F taps beats im2col
        + GEMM on the cnn's 1-channel first layer) and the Linear are not: a dense GEMM
        is the fastest product there is for them (the mlp's 100->10 output layer: 0.01
        against 0.02 ms forward, 0.02 against 0.05 ms backward at batch 128, Zen 5, one
        thread: docs/training.md), and their all-True mask costs one multiply a step."""
        if self.compute != "condensed":
            return []
        layers = self._weight_layers()
        return [name for name in self.names
                if name in layers and condensed_compute.condensable(layers[name])
                and not (isinstance(layers[name], Linear) and self.layer_sparsity[name] == 0)]

    def _worth_condensing(self, name):
        """Whether the candidate ``name`` trains condensed under its mask now: a function
        of the mask alone, so a resumed run decides as an uninterrupted one."""
        return condensed_compute.worth_padding(self._weight_layers()[name],
                                               to_numpy(self.masks[name]))

    def compute_of(self, name):
        """"condensed" or "masked": how the sparse parameter ``name`` is trained."""
        return "condensed" if name in self.condensed else "masked"

    def _weight_layers(self):
        """{"<prefix>.weight": layer} over the model's layers."""
        return {prefixed(prefix, "weight"): layer for prefix, layer in self.model.named_layers()}

    def _layout_backed(self, name):
        """Whether ``name`` is held as a constant fan-in layout (condensed, no padding):
        its mask is then the layout's, made on demand."""
        compute = self.condensed.get(name)
        return compute is not None and not compute.padded

    def _layout_mask(self, name):
        compute = self.condensed[name]
        mask = np.zeros((compute.shape[0], math.prod(compute.shape[1:])), dtype=bool)
        mask[compute.rows[:, None], compute.indices] = True
        return mask.reshape(compute.shape)

    def _counts(self, name):
        """Each neuron's number of weights now, NumPy int64 (n,)."""
        if not self._layout_backed(name):
            return to_numpy(_neuron_counts(self._masks[name])).astype(np.int64)
        compute = self.condensed[name]
        counts = np.zeros(compute.shape[0], dtype=np.int64)
        counts[compute.rows] = compute.indices.shape[1]
        return counts

    def _ever_count(self, name):
        ever = self._ever[name]
        return ever.count() if isinstance(ever, _PackedRows) else int(ever.sum())

    def _attach(self, name, weight, state=None):
        """Condense parameter ``name`` from the dense ``weight`` under its mask; the
        optimizer's state from the dense ``state`` ({key: array}; zeros when None)."""
        compute = condensed_compute.attach(self._weight_layers()[name], weight,
                                           to_numpy(self.masks[name]),
                                           padded=self.method != "srigl")
        self.condensed[name] = compute
        self._rebind(name, compute, state)
        if not compute.padded:   # the layout is the mask from now on
            del self._masks[name]
            self._ever[name] = _PackedRows.of_dense(
                to_numpy(self._ever[name]).reshape(compute.shape[0], -1))

    def _rebind(self, name, compute, state):
        values = compute.layer.params["weight"]
        self.params[name] = values
        self.optimizer.rebind(name, values, None if state is None else
                              {key: compute.gather(a) for key, a in state.items()})

    def _detach(self, name, weight=None, state=None):
        """Back to masked compute with the dense ``weight`` and ``state`` ({key: dense
        array}); by default the condensed values and state expanded."""
        if self._layout_backed(name):   # the mask and record become dense arrays again
            self._masks[name] = self._layout_mask(name)
            self._ever[name] = self._ever[name].dense().reshape(self.shapes[name])
        compute = self.condensed.pop(name)
        if state is None:
            state = {key: compute.expand(a) for key, a in self.optimizer.state[name].items()}
        weight = condensed_compute.detach(compute.layer, weight)
        self.params[name] = weight
        self.optimizer.rebind(name, weight, state)

    @contextlib.contextmanager
    def dense_view(self):
        """Within the block every condensed layer holds its dense weight, gradient and
        optimizer state (zeros outside the mask), as the masked path does: what
        checkpoints save and load. Afterwards the layers are condensed again as the
        masks then (a loaded checkpoint's) call for, values and state gathered."""
        for name in list(self.condensed):
            self._detach(name)
        try:
            yield
        finally:
            for name in self.condensed_candidates():
                if self._worth_condensing(name):
                    self._attach(name, self.params[name], dict(self.optimizer.state[name]))

    # -- what the schedule will do -----------------------------------------------
    def update_steps(self):
        """The steps with a topology update: positive multiples of ΔT below t_end (a range;
        empty for dense and static)."""
        if self.method not in DYNAMIC_METHODS:
            return range(0)
        return range(self.delta, self.t_end, self.delta)

    def kept_dense(self):
        """{name: why} of the sparse layers the distribution gives sparsity 0 (no mask
        changes, no updates), e.g. ERK's densest layers: "ERK gives it density 1"."""
        reasons = {}
        for i, name in enumerate(self.names):
            if self.layer_sparsity[name] > 0.0:
                continue
            if i in self.dense_layers:
                reasons[name] = "listed in dense_layers"
            elif self.sparsity == 0.0:
                reasons[name] = "the global sparsity is 0"
            else:   # only ERK densifies a layer by itself
                reasons[name] = f"{DISTRIBUTION_NAMES[self.distribution]} gives it density 1"
        return reasons

    def plan(self):
        """One dict per sparse layer, in order: layer, shape, sparsity (of its mask now),
        fan_in ([min, max] over active neurons; min == max for SRigL's constant k),
        updates (how many the schedule will make), kept_dense (the reason, or None),
        compute ("condensed" or "masked"), and for a layer that may train condensed
        (``condensed_candidates``) padding and slots: the share of the n_active * k
        slots that are padding (0.0 at constant fan-in) and n_active * k over the dense
        size, for a masked one what they would be (None for the other layers)."""
        kept_dense, n_updates = self.kept_dense(), len(self.update_steps())
        candidates = self.condensed_candidates()
        plan = []
        for name in self.names:
            counts, size = self._counts(name), math.prod(self.shapes[name])
            low, k = _count_range(counts)
            n_active = int((counts > 0).sum())
            slots = padding = None
            if name in candidates:
                slots = n_active * k / size
                padding = 1.0 - int(counts.sum()) / max(n_active * k, 1)
            plan.append({"layer": name, "shape": list(self.shapes[name]),
                         "sparsity": 1.0 - int(counts.sum()) / size,
                         "fan_in": [low, k],
                         "updates": 0 if name in kept_dense else n_updates,
                         "kept_dense": kept_dense.get(name),
                         "compute": self.compute_of(name), "padding": padding,
                         "slots": slots})
        return plan

    # -- the training-loop hooks ------------------------------------------------
    def before_forward(self, step):
        """Before the forward pass of ``step``: the condensed layers compute the dense
        gradient in their backward pass only when the step counts towards a grow score."""
        wanted = self.accumulates(step)
        for compute in self.condensed.values():
            compute.want_dense_grad = wanted

    def is_update_step(self, step):
        """True when a topology update happens at ``step`` (mini-batches trained so far):
        ``step in self.update_steps()``."""
        return (self.method in DYNAMIC_METHODS and step > 0
                and step % self.delta == 0 and step < self.t_end)

    def accumulates(self, step):
        """True when ``step``'s dense gradient counts towards the next update's grow score:
        an update step comes within the next ``grad_accumulation`` steps, this one
        included."""
        if self.method not in DYNAMIC_METHODS or self.method == "set":
            return False   # SET grows at random: no gradient is needed
        next_update = max(step, 1) + (-max(step, 1)) % self.delta
        return next_update < self.t_end and next_update - step < self.grad_accumulation

    def before_step(self, step, grads):
        """Keep the dense gradient the next update needs, then mask gradients in place.

        Returns whether the optimizer steps: False only on an update step with
        ``optimizer_on_update="skip"`` (the gradients are then left unmasked).
        """
        if self.accumulates(step):
            for name, score in self.grow_scores.items():
                compute = self.condensed.get(name)
                if compute is None:
                    score.add(grads[name])   # copied: masked in place below
                    continue
                try:
                    compute.add_grow_term(score)
                except RuntimeError as error:
                    raise RuntimeError(f"{name}: {error}") from None
        if self.is_update_step(step) and self.optimizer_on_update == "skip":
            return False
        for name in self._masked():   # a condensed gradient has only the kept positions
            grads[name] *= self.masks[name]
        return True

    def _masked(self):
        return [name for name in self.names if name not in self.condensed]

    def after_step(self, step, grads):
        """Re-mask weights; on an update step, run the topology update of every sparse layer
        (on the weights as the optimizer left them, with the dense gradient kept by
        ``before_step`` as the grow score).

        Returns the step's audit records (also appended to ``audit_records``). Raises
        dst.InvariantError, naming the layer, if an updated layer fails its check.
        """
        for name in self._masked():
            self.params[name] *= self.masks[name]
        if not self.is_update_step(step):
            return []
        drop_fraction = dst.cosine_drop_fraction(step, self.alpha, self.t_end)
        first = len(self.audit_records)
        for name in self._updated_layers():
            # SET grows at random and keeps no gradient (score None).
            score = self.grow_scores.get(name)
            self.audit_records.append(self._update_layer(name, step, drop_fraction, score))
            if score is not None:
                score.clear()   # the next window starts from zero
        return self.audit_records[first:]

    def _updated_layers(self):
        return [name for name in self.names if self.layer_sparsity[name] > 0.0]

    # -- one layer's update -----------------------------------------------------
    def _update_layer(self, name, step, drop_fraction, score):
        compute = self.condensed.get(name)
        if self._layout_backed(name):
            return self._update_condensed(name, compute, step, drop_fraction, score)
        # A padded layer's update (RigL, SET, static) runs on its dense weight and is then
        # applied to the condensed arrays by rewiring.
        grad = None if score is None else score.dense()
        weight = self.params[name] if compute is None else compute.dense_weight()
        mask = self.masks[name]
        is_output = name == self.names[-1]
        counts_before = _neuron_counts(mask)
        if self.method == "srigl":
            result = dst.srigl_update(weight, mask, grad, drop_fraction=drop_fraction,
                                      sparsity=self.layer_sparsity[name],
                                      gamma_sal=self.gamma_sal,
                                      ablation=self.ablation and not is_output)
        elif self.method == "rigl":
            result = dst.rigl_update(weight, mask, grad, drop_fraction=drop_fraction)
        else:
            rng = np.random.default_rng([self.seed, _RNG_SET, step, self.names.index(name)])
            result = dst.set_update(weight, mask, drop_fraction=drop_fraction, rng=rng)
        weight[...] = result.weight
        mask[...] = result.mask
        changed = result.pruned | result.grown
        if compute is None:
            for buffer in self.optimizer.state.get(name, {}).values():
                buffer[changed] = 0
        else:   # kept weights keep value and state; grown ones start at 0, zero state
            state = {key: compute.expand(a) for key, a in self.optimizer.state[name].items()}
            for buffer in state.values():
                buffer[changed] = 0
        self.ever_active[name] |= mask
        self.ablated[name] = np.asarray(result.ablated, dtype=np.int64)

        dst.check_invariants(weight, mask,
                             fan_in=result.fan_in if self.method == "srigl" else None,
                             ablated=self.ablated[name], layer=name,
                             budget=dst.layer_budget(mask.shape, self.layer_sparsity[name]))
        # Once the topology is known to hold: the path its new mask calls for.
        if compute is not None and self._worth_condensing(name):
            compute.rewire(weight, mask)
            self._rebind(name, compute, state)
        elif compute is not None:
            self._detach(name, weight, state)
        elif name in self.condensed_candidates() and self._worth_condensing(name):
            self._attach(name, weight, dict(self.optimizer.state[name]))
        counts_after = _neuron_counts(mask)
        return make_record(
            step=step, layer=name, method=self.method, drop_fraction=drop_fraction,
            pruned=result.pruned.sum(), grown=result.grown.sum(),
            regrown=result.regrown.sum(),
            fan_in_before=_count_range(counts_before), fan_in_after=_count_range(counts_after),
            active_neurons=(counts_after > 0).sum(), neurons=mask.shape[0],
            ablated=self.ablated[name], nnz=mask.sum(),
            zeros_in_mask=(mask & (weight == 0)).sum(), size=mask.size,
            itop=self.ever_active[name].mean())

    def _update_condensed(self, name, compute, step, drop_fraction, score):
        """SRigL's update of a condensed layer on its condensed arrays
        (``dst.srigl_update_rows``: srigl_update's decisions bit for bit, the grow score
        read in row blocks), so no float array of the layer's dense size exists: kept
        weights keep value and optimizer state (``CondensedUpdate.take``), grown ones
        start at 0 with zero state, ablated neurons leave the arrays. The new layout is
        the layer's mask from then on; its positions join the packed ever-active record."""
        values = compute.layer.params["weight"]
        n_out, k_before = compute.shape[0], values.shape[1]
        size = math.prod(compute.shape)
        update = dst.srigl_update_rows(
            values, compute.rows, compute.indices, n_out, size // n_out,
            score.rows, drop_fraction=drop_fraction,
            sparsity=self.layer_sparsity[name], gamma_sal=self.gamma_sal,
            ablation=self.ablation and name != self.names[-1])
        dst.check_condensed_invariants(update.rows, update.indices, compute.shape,
                                       fan_in=update.fan_in, ablated=update.ablated,
                                       layer=name, budget=dst.layer_budget(
                                           compute.shape, self.layer_sparsity[name]))
        state = {key: update.take(a) for key, a in self.optimizer.state[name].items()}
        compute.set_layout(update.rows, update.indices, update.values)
        self.params[name] = update.values
        self.optimizer.rebind(name, update.values, state)
        self._ever[name].set(update.rows, update.indices)
        self.ablated[name] = update.ablated
        k = update.fan_in
        return make_record(
            step=step, layer=name, method=self.method, drop_fraction=drop_fraction,
            pruned=update.pruned, grown=update.grown, regrown=update.regrown,
            fan_in_before=[k_before, k_before], fan_in_after=[k, k],
            active_neurons=update.rows.size, neurons=n_out, ablated=update.ablated,
            nnz=update.values.size, zeros_in_mask=np.count_nonzero(update.values == 0),
            size=size, itop=self._ever_count(name) / size)

    # -- summaries ----------------------------------------------------------------
    def summary(self):
        """Global sparsity reached, active/total neurons and ITOP over the sparse layers."""
        if not self.names:
            return {"sparsity": 0.0, "active_neurons": None, "neurons": None, "itop": 1.0}
        counts = [self._counts(name) for name in self.names]
        size = sum(math.prod(shape) for shape in self.shapes.values())
        nnz = sum(int(c.sum()) for c in counts)
        active = sum(int((c > 0).sum()) for c in counts)
        neurons = sum(c.size for c in counts)
        ever = sum(self._ever_count(name) for name in self.names)
        return {"sparsity": 1.0 - nnz / size, "active_neurons": active,
                "neurons": neurons, "itop": ever / size}

    # -- checkpointing ------------------------------------------------------------
    def state_dict(self):
        state = {}
        for name in self.names:
            state[f"mask/{name}"] = self.masks[name].copy()
            state[f"ever_active/{name}"] = self.ever_active[name].copy()
            state[f"ablated/{name}"] = self.ablated[name].copy()
        # A window of one step never spans a checkpoint; a longer one's partial sum does.
        for name, score in self.grow_scores.items() if self.grad_accumulation > 1 else ():
            state[f"dense_grad/{name}"] = score.dense().copy()
        return state

    def load_state_dict(self, state):
        for name in self.names:
            for key, stored in (("mask", self._masks), ("ever_active", self._ever)):
                array = to_numpy(state[f"{key}/{name}"])
                if array.shape != self.shapes[name] or array.dtype != bool:
                    raise ValueError(f"{key}/{name}: expected bool {self.shapes[name]}, "
                                     f"got {array.dtype} {array.shape}")
                if self._layout_backed(name):
                    raise RuntimeError(f"{key}/{name}: the layer is held condensed: load a "
                                       f"checkpoint inside dense_view()")
                stored[name][...] = on_device_of(array, stored[name])
            self.ablated[name] = np.asarray(to_numpy(state[f"ablated/{name}"]),
                                            dtype=np.int64)
        for name, score in self.grow_scores.items() if self.grad_accumulation > 1 else ():
            array = to_numpy(state[f"dense_grad/{name}"])
            if array.shape != score.shape or array.dtype != score.dtype:
                raise ValueError(f"dense_grad/{name}: expected {score.dtype} {score.shape}, "
                                 f"got {array.dtype} {array.shape}")
            score.load(on_device_of(array, self._masks[name]))
            if not array.any():
                score.clear()   # saved outside a window: nothing to add to


def train_step(model, optimizer, sparsity, x, labels, step):
    """One mini-batch of softmax cross-entropy training with the hooks in the order the
    module notes give: ``before_forward``, forward, backward, ``before_step``, the
    optimizer's step (unless ``before_step`` declines it), ``after_step``. ``sparsity``
    None trains dense. Returns (loss, the step's audit records). ``srigl_np.train``'s
    loop is this with its divergence and invariant reports between the calls."""
    if sparsity is not None:
        sparsity.before_forward(step)
    loss, grad = softmax_cross_entropy(model.forward(x, training=True), labels)
    model.backward(grad, input_grad=False)
    grads = model.named_grads()
    if sparsity is None or sparsity.before_step(step, grads):
        optimizer.step(grads)
    return loss, ([] if sparsity is None else sparsity.after_step(step, grads))


def _count_range(counts):
    """[min, max] fan-in over the active neurons ([0, 0] when none is active)."""
    active = counts[counts > 0]
    if active.size == 0:
        return [0, 0]
    return [int(active.min()), int(active.max())]


class _Masks(MutableMapping):
    """``DynamicSparsity.masks``: name -> bool mask of the weight's shape. A layer held at
    constant fan-in (``_layout_backed``) has no stored mask: its layout is the mask, made
    on demand (a fresh array each time; set masks through the layout, or inside
    ``dense_view()``, where every layer is dense)."""

    def __init__(self, owner):
        self._owner = owner

    def __getitem__(self, name):
        if self._owner._layout_backed(name):
            return self._owner._layout_mask(name)
        return self._owner._masks[name]

    def __setitem__(self, name, mask):
        if self._owner._layout_backed(name):
            raise RuntimeError(f"{name} is held condensed: its mask is its layout")
        self._owner._masks[name] = mask

    def __delitem__(self, name):
        raise TypeError("a sparse layer's mask cannot be removed")

    def __iter__(self):
        return iter(self._owner.names)

    def __len__(self):
        return len(self._owner.names)


class _EverActive(_Masks):
    """``DynamicSparsity.ever_active``: name -> bool, every position that has held a
    weight since the start (ITOP). A layer held at constant fan-in keeps it one bit per
    position (``_PackedRows``), unpacked on demand."""

    def __getitem__(self, name):
        ever = self._owner._ever[name]
        if isinstance(ever, _PackedRows):
            return ever.dense().reshape(self._owner.shapes[name])
        return ever

    def __setitem__(self, name, ever):
        if self._owner._layout_backed(name):
            raise RuntimeError(f"{name} is held condensed: its ever-active record is packed")
        self._owner._ever[name] = ever


class _PackedRows:
    """A bool (n, F) array held one bit per entry (``numpy.packbits`` along each row):
    1/8 of the bool array's memory, for the ever-active record of a layer that exists
    only as its layout. Set from a layout in row blocks (``dst.default_block_rows``);
    counted with ``numpy.bitwise_count``."""

    def __init__(self, bits, dense_fan_in):
        self.bits, self.dense_fan_in = bits, dense_fan_in

    @classmethod
    def of_dense(cls, rows):
        """From a bool (n, F) array."""
        return cls(np.packbits(rows, axis=1), rows.shape[1])

    @classmethod
    def of_layout(cls, n, dense_fan_in, rows, indices):
        """The positions of a layout (rows (n_active,), indices (n_active, k))."""
        packed = cls(np.zeros((n, (dense_fan_in + 7) // 8), dtype=np.uint8), dense_fan_in)
        packed.set(rows, indices)
        return packed

    def set(self, rows, indices):
        """Set every position of the layout (rows, indices) to True."""
        step = dst.default_block_rows(max(indices.shape[1], 1))
        for r0 in range(0, rows.size, step):
            columns = indices[r0:r0 + step].astype(np.int64)
            bits = (np.uint8(0x80) >> (columns & 7).astype(np.uint8)).astype(np.uint8)
            np.bitwise_or.at(self.bits, (rows[r0:r0 + step, None], columns >> 3), bits)

    def count(self):
        return int(np.bitwise_count(self.bits).sum(dtype=np.int64))

    def dense(self):
        """The bool (n, F) array."""
        return np.unpackbits(self.bits, axis=1, count=self.dense_fan_in).view(bool)
